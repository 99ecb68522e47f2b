#!/usr/bin/env python3
"""Time to the first SSE event of streaming requests, sequentially on one keep-alive
connection (reopened when the server closes it). Standard library only.

usage: stream_ttfb.py URL BODY_JSON N OUT_JSON [HEADER ...]

For every request it records, in seconds from sending the request:
  head  - response head received,
  first - first `data:` line of the body received (the "time to first token"),
  total - `data: [DONE]` received.
Bounded: N requests, 10 s socket timeout each, 120 s in total.
"""

import http.client
import json
import sys
import time
import urllib.parse

SOCKET_TIMEOUT_S = 10.0
TOTAL_BUDGET_S = 120.0


def percentile(values, p):
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100.0 * (len(s) - 1))))
    return s[k]


def main():
    url, body, n, out = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), sys.argv[4]
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    for h in sys.argv[5:]:
        k, _, v = h.partition(":")
        headers[k.strip()] = v.strip()
    u = urllib.parse.urlsplit(url)
    conn = None
    heads, firsts, totals = [], [], []
    errors = {}
    reconnects = 0
    deadline = time.monotonic() + TOTAL_BUDGET_S

    for _ in range(n):
        if time.monotonic() > deadline:
            errors["budget exceeded"] = errors.get("budget exceeded", 0) + 1
            break
        if conn is None:
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=SOCKET_TIMEOUT_S)
            reconnects += 1
        try:
            t0 = time.perf_counter()
            conn.request("POST", u.path or "/", body=body, headers=headers)
            resp = conn.getresponse()
            t_head = time.perf_counter()
            if resp.status != 200:
                resp.read()
                key = f"status {resp.status}"
                errors[key] = errors.get(key, 0) + 1
                if resp.will_close:
                    conn.close()
                    conn = None
                continue
            t_first = None
            done = False
            for _ in range(100_000):
                line = resp.readline()
                if not line:
                    break
                if line.startswith(b"data:"):
                    if t_first is None:
                        t_first = time.perf_counter()
                    if line.strip() == b"data: [DONE]":
                        done = True
            resp.read()
            t_end = time.perf_counter()
            if t_first is None or not done:
                key = "stream ended without [DONE]" if t_first else "no data event"
                errors[key] = errors.get(key, 0) + 1
                conn.close()
                conn = None
                continue
            heads.append(t_head - t0)
            firsts.append(t_first - t0)
            totals.append(t_end - t0)
            if resp.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as e:
            key = type(e).__name__
            errors[key] = errors.get(key, 0) + 1
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()

    result = {
        "requests": n,
        "ok": len(firsts),
        "errors": errors,
        "connections": reconnects,
        "ttfb_p50": percentile(firsts, 50),
        "ttfb_p99": percentile(firsts, 99),
        "head_p50": percentile(heads, 50),
        "head_p99": percentile(heads, 99),
        "total_p50": percentile(totals, 50),
        "total_p99": percentile(totals, 99),
        "ttfb": firsts,
    }
    with open(out, "w") as f:
        json.dump(result, f)
    return 0 if firsts else 1


if __name__ == "__main__":
    sys.exit(main())
