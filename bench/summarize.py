#!/usr/bin/env python3
"""Summarise one bench/run.sh results directory: medians over repeats, as a Markdown table
plus the latency each proxy adds over going direct. Standard library only.

usage: summarize.py RESULTS_DIR   (writes RESULTS_DIR/summary.json, prints Markdown)

Layout read: RESULTS_DIR/meta.json, RESULTS_DIR/rep<N>/<target>/{thr,q500,c1}.json (oha
JSON), stream.json (stream_ttfb.py), proc.json (CPU ticks and RSS from /proc).
"""

import json
import os
import statistics
import sys

TARGETS = ["direct", "nginx", "floor", "gateway"]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def oha_served(d):
    return sum(int(v) for v in (d.get("statusCodeDistribution") or {}).values())


def oha_non_2xx(d):
    return sum(
        int(v)
        for k, v in (d.get("statusCodeDistribution") or {}).items()
        if not k.startswith("2")
    )


def oha_errors(d):
    """Transport errors, leaving out requests cut by the end of a timed run."""
    return {
        k: v
        for k, v in (d.get("errorDistribution") or {}).items()
        if k != "aborted due to deadline"
    }


def per_rep(rep_dir, target):
    base = os.path.join(rep_dir, target)
    if not os.path.isdir(base):
        return None
    thr, q500, c1 = (load(os.path.join(base, f"{n}.json")) for n in ("thr", "q500", "c1"))
    stream = load(os.path.join(base, "stream.json"))
    proc = load(os.path.join(base, "proc.json")) or {}
    r = {"problems": []}

    def lat(d, p):
        return (d or {}).get("latencyPercentiles", {}).get(p)

    if thr:
        r["rps"] = thr["summary"]["requestsPerSec"]
        served = oha_served(thr)
        r["served"] = served
        ticks = proc.get("cpu_ticks_after", 0) - proc.get("cpu_ticks_before", 0)
        if served and proc.get("clk_tck"):
            r["cpu_us_per_req"] = ticks / proc["clk_tck"] * 1e6 / served
        mock_ticks = proc.get("mock_cpu_ticks_after", 0) - proc.get("mock_cpu_ticks_before", 0)
        if served and proc.get("clk_tck"):
            r["mock_cpu_us_per_req"] = mock_ticks / proc["clk_tck"] * 1e6 / served
    for name, d in (("thr", thr), ("q500", q500), ("c1", c1)):
        if d is None:
            r["problems"].append(f"{name}: no result")
            continue
        if oha_non_2xx(d):
            r["problems"].append(f"{name}: {oha_non_2xx(d)} non-2xx {d['statusCodeDistribution']}")
        if oha_errors(d):
            r["problems"].append(f"{name}: errors {oha_errors(d)}")
    if q500:
        r["q500_p50"], r["q500_p99"] = lat(q500, "p50"), lat(q500, "p99")
        r["q500_rps"] = q500["summary"]["requestsPerSec"]
    if c1:
        r["c1_p50"], r["c1_p99"] = lat(c1, "p50"), lat(c1, "p99")
    if stream:
        r["ttfb_p50"], r["ttfb_p99"] = stream.get("ttfb_p50"), stream.get("ttfb_p99")
        r["stream_total_p50"] = stream.get("total_p50")
        if stream.get("errors"):
            r["problems"].append(f"stream: errors {stream['errors']}")
    else:
        r["problems"].append("stream: no result")
    r["rss_after_kb"] = proc.get("rss_after_kb")
    return r


def fmt_us(seconds):
    return "n/a" if seconds is None else f"{seconds * 1e6:.0f}"


def fmt_pair(a, b):
    return f"{fmt_us(a)} / {fmt_us(b)}"


def fmt_mb(kb):
    return "n/a" if kb is None else f"{kb / 1024:.1f}"


def main():
    out = sys.argv[1]
    meta = load(os.path.join(out, "meta.json")) or {}
    reps = sorted(
        (d for d in os.listdir(out) if d.startswith("rep")), key=lambda d: int(d[3:])
    )
    summary = {"meta": meta, "targets": {}}
    for t in TARGETS:
        runs = [x for x in (per_rep(os.path.join(out, rep), t) for rep in reps) if x]
        if not runs:
            continue
        keys = sorted({k for r in runs for k in r if k != "problems"})
        med = {k: median([r.get(k) for r in runs]) for k in keys}
        med["repeats"] = len(runs)
        med["problems"] = [p for r in runs for p in r["problems"]]
        med["rss_idle_kb"] = (meta.get("rss_idle_kb") or {}).get(t)
        summary["targets"][t] = med
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)

    s = summary["targets"]
    lines = []
    lines.append(
        f"Medians of {meta.get('repeat', '?')} run(s); {meta.get('duration_s', '?')} s per oha run; "
        f"stream: {meta.get('stream_requests', '?')} sequential requests, "
        f"{meta.get('stream_chunks', '?')} chunks. Latencies in µs."
    )
    lines.append("")
    lines.append(
        "| target | rps@64 | p50 / p99 @500rps | p50 / p99 @1conn | stream TTFB p50 / p99 "
        "| RSS idle / after (MB) | CPU µs/req |"
    )
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for t in TARGETS:
        m = s.get(t)
        if m is None:
            reason = (meta.get("skipped") or {}).get(t, "not run")
            lines.append(f"| {t} | {reason} | | | | | |")
            continue
        rps = "n/a" if m.get("rps") is None else f"{m['rps']:.0f}"
        cpu = "n/a" if m.get("cpu_us_per_req") is None else f"{m['cpu_us_per_req']:.1f}"
        lines.append(
            f"| {t} | {rps} | {fmt_pair(m.get('q500_p50'), m.get('q500_p99'))} "
            f"| {fmt_pair(m.get('c1_p50'), m.get('c1_p99'))} "
            f"| {fmt_pair(m.get('ttfb_p50'), m.get('ttfb_p99'))} "
            f"| {fmt_mb(m.get('rss_idle_kb'))} / {fmt_mb(m.get('rss_after_kb'))} | {cpu} |"
        )
    lines.append("")
    lines.append(
        "CPU µs/req: direct = the mock itself; nginx = master + worker; floor, gateway = the "
        "process (all threads). The mock's own share is excluded from the proxy rows. "
        "RSS: direct = the mock."
    )
    d = s.get("direct")
    if d:
        lines.append("")
        lines.append("Added latency vs direct (difference of medians, µs):")
        lines.append("")
        lines.append("| via | p50 @1conn | p99 @1conn | p50 @500rps | p99 @500rps | TTFB p50 | TTFB p99 | rps vs direct |")
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for t in ("nginx", "floor", "gateway"):
            m = s.get(t)
            if not m:
                continue
            cells = []
            for k in ("c1_p50", "c1_p99", "q500_p50", "q500_p99", "ttfb_p50", "ttfb_p99"):
                a, b = m.get(k), d.get(k)
                cells.append("n/a" if a is None or b is None else f"{(a - b) * 1e6:+.0f}")
            ratio = (
                "n/a"
                if not m.get("rps") or not d.get("rps")
                else f"{m['rps'] / d['rps'] * 100:.0f}%"
            )
            lines.append(f"| {t} | " + " | ".join(cells) + f" | {ratio} |")
    loads = []
    for rep in reps:
        for t in TARGETS:
            for kind in ("thr", "q500", "c1"):
                ld = load(os.path.join(out, rep, t, f"{kind}.load.json"))
                if ld and ld.get("foreign_pct") is not None:
                    loads.append((ld["foreign_pct"], ld.get("steal_pct") or 0.0, rep, t, kind))
    if loads:
        worst = max(loads)
        lines.append("")
        lines.append(
            f"Other load on the machine during the oha runs (CPU used by processes outside "
            f"this benchmark, share of all CPUs): median {median([x[0] for x in loads]):.1f}%, "
            f"max {worst[0]:.1f}% ({worst[2]} {worst[3]} {worst[4]}); "
            f"hypervisor steal max {max(x[1] for x in loads):.1f}%."
        )
        summary["load"] = [
            {"foreign_pct": f, "steal_pct": st, "rep": r, "target": t, "kind": k}
            for f, st, r, t, k in loads
        ]
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
    notes = [f"{t}: {p}" for t in TARGETS for p in (s.get(t) or {}).get("problems", [])]
    notes += [
        f"{r} {t} {k}: other processes used {f:.0f}% of the CPUs (numbers disturbed)"
        for f, _, r, t, k in loads
        if f > 10
    ]
    notes += [f"{t} skipped: {why}" for t, why in (meta.get("skipped") or {}).items()]
    if notes:
        lines.append("")
        lines.append("Problems seen:")
        lines.extend(f"- {n}" for n in notes)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
