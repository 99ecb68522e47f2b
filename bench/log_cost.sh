#!/usr/bin/env bash
# What the request log costs in throughput: the gateway's rps@64 (the core benchmark's
# throughput step: oha -c 64, POST /v1/chat/completions to the mock upstream) with
# `logging.request_log` on and off, alternating, each run on a fresh gateway and data
# directory, so slow drift of a shared machine hits both settings alike.
#
# usage: bench/log_cost.sh
# Prints each pair (rps, the gateway's CPU per request), the CPU per request split by thread
# name, and the medians.
# env: ROUNDS=6 (pairs) DURATION=5 (seconds per run) CONNS=64, GATEWAY__... passed on
#      (e.g. GATEWAY__DATABASE__URL=postgres://... to measure PostgreSQL).
# Needs oha and the release binaries (cargo build --release --workspace --bins). Quota
# limits are lifted as in bench/run.sh. Everything listens on 127.0.0.1 and stops on exit.
set -euo pipefail
ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-5}
CONNS=${CONNS:-64}
BENCH_NAME=logcost
TOOLS=oha
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lift_quotas

# One run: prints "rps cpu_us_per_request".
run() {
    local log=$1 data=$TMP/data-$RANDOM
    GATEWAY__LOGGING__REQUEST_LOG=$log GATEWAY__STORAGE__DATA_DIR=$data \
        GATEWAY__SERVER__BIND=127.0.0.1:$GP GATEWAY__FIXTURES__DIR=$TMP/fixtures \
        "$BIN/inference-gateway" >/dev/null 2>"$TMP/gateway.err" &
    # Not local: the trap runs after run() returns. run() is a command substitution's
    # subshell, so this is its own gateway, stopped however the subshell ends.
    gw=$!
    trap 'kill "$gw" 2>/dev/null || true' EXIT
    wait_gateway
    post_load 1 >/dev/null
    local before after
    before=$(awk '{print $14 + $15}' "/proc/$gw/stat")
    threads "$gw" >"$TMP/threads.before"
    post_load "$DURATION" --output-format json >"$TMP/oha.json"
    # The request log writes every flush_interval_ms (500): let the last batch land.
    sleep 0.6
    after=$(awk '{print $14 + $15}' "/proc/$gw/stat")
    threads "$gw" >"$TMP/threads.after"
    kill -INT "$gw"
    wait "$gw" 2>/dev/null || true
    rm -rf "$data"
    python3 - "$TMP/oha.json" "$before" "$after" "$(getconf CLK_TCK)" \
        "$TMP/threads.before" "$TMP/threads.after" <<'PY'
import collections, json, sys
s = json.load(open(sys.argv[1]))
ok = sum(n for code, n in s["statusCodeDistribution"].items() if code.startswith("2"))
bad = sum(s["statusCodeDistribution"].values()) - ok
secs = s["summary"]["total"]
tck = int(sys.argv[4])
cpu = (int(sys.argv[3]) - int(sys.argv[2])) / tck
# Per thread name: each thread's ticks after minus before (a thread started during the
# run counts from zero).
def read(path):
    return {tid: (name, int(t)) for tid, name, t in (l.split() for l in open(path))}
b, a = read(sys.argv[5]), read(sys.argv[6])
by_name = collections.Counter()
for tid, (name, t) in a.items():
    by_name[name] += t - b.get(tid, (name, 0))[1]
split = " / ".join(f"{name} {n / tck * 1e6 / max(ok, 1):.1f}"
                   for name, n in sorted(by_name.items(), key=lambda kv: -kv[1]) if n > 0)
print(f"{ok / secs:.0f} {cpu * 1e6 / max(ok, 1):.1f}" + (f" ({bad} non-2xx)" if bad else "")
      + f"|{split}")
PY
}

# threads PID: one line per thread: tid, name (spaces made _, | made :), utime+stime ticks.
threads() {
    local t
    for t in /proc/"$1"/task/*; do
        echo "${t##*/} $(tr ' |' '_:' <"$t/comm") $(awk '{print $14 + $15}' "$t/stat")"
    done
}

echo "| round | log on rps | log on CPU µs/req | log off rps | log off CPU µs/req |"
echo "| ---: | ---: | ---: | ---: | ---: |"
ON=() OFF=() SPLITS=()
for r in $(seq "$ROUNDS"); do
    # Alternate which setting goes first, so neither always runs on a warmer machine.
    if ((r % 2)); then on=$(run true); off=$(run false); else off=$(run false); on=$(run true); fi
    SPLITS+=("| $r | ${on#*|} | ${off#*|} |")
    on=${on%%|*} off=${off%%|*}
    ON+=("${on%% *}") OFF+=("${off%% *}")
    echo "| $r | ${on%% *} | ${on#* } | ${off%% *} | ${off#* } |"
done
echo
echo "CPU µs per request by thread name (actix-rt:system: the HTTP workers; tokio-rt-worker:"
echo "the blocking pool, where the SQLite writes run; inference-gatew: the main thread, with"
echo "the LogWriter; log-flush: the stdout writer):"
echo
echo "| round | log on | log off |"
echo "| ---: | --- | --- |"
printf '%s\n' "${SPLITS[@]}"
python3 - "${ON[*]}" "${OFF[*]}" <<'PY'
import statistics, sys
on = [float(x) for x in sys.argv[1].split()]
off = [float(x) for x in sys.argv[2].split()]
m_on, m_off = statistics.median(on), statistics.median(off)
print(f"\nmedian rps: log on {m_on:.0f}, log off {m_off:.0f}: the log costs {100 * (1 - m_on / m_off):.1f}%")
PY
