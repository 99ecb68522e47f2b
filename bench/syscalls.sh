#!/usr/bin/env bash
# System calls and context switches per request, the floor relay (bench/floor.rs) against
# the gateway, under the core benchmark's throughput load (oha -c 64, POST
# /v1/chat/completions to the mock upstream): what the kernel does per request that
# instruction counts (bench/instructions.sh) cannot see. Counted by `perf stat` on the
# syscalls tracepoints of the relay process (all its threads) while oha runs.
#
# usage: bench/syscalls.sh
# env: DURATION=5 (seconds counted) CONNS=64, GATEWAY__... passed to the gateway.
# Needs oha, perf with tracepoint access (root, or perf_event_paranoid <= 1) and the release
# binaries (cargo build --release --workspace --bins && cargo build --release --example
# floor). Everything listens on 127.0.0.1 and stops on exit.
set -euo pipefail
DURATION=${DURATION:-5}
CONNS=${CONNS:-64}
BENCH_NAME=syscalls
TOOLS="oha perf"
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lift_quotas
FLOOR_BIN=$BIN/examples/floor
[[ -x $FLOOR_BIN ]] || { echo "build first: cargo build --release --example floor" >&2; exit 1; }
EVENTS=syscalls:sys_enter_futex,syscalls:sys_enter_write,syscalls:sys_enter_epoll_wait
EVENTS=$EVENTS,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,context-switches

# measure NAME PID: warms PID's listener up, counts EVENTS over one oha run, prints a row.
measure() {
    local name=$1 pid=$2
    post_load 1 >/dev/null
    timeout $((DURATION + 30)) perf stat -x, -e "$EVENTS" -p "$pid" -o "$TMP/$name.stat" \
        -- sleep "$DURATION" &
    local perf_pid=$!
    post_load "$DURATION" --output-format json >"$TMP/$name.json"
    wait "$perf_pid" || { echo "perf stat failed for $name (see $TMP/$name.stat)" >&2; exit 1; }
    python3 - "$name" "$TMP/$name.json" "$TMP/$name.stat" <<'PY'
import json, sys
name, oha, stat = sys.argv[1:]
s = json.load(open(oha))
n = sum(s["statusCodeDistribution"].values())
counts = {}
for line in open(stat):
    f = line.strip().split(",")
    if len(f) > 2 and f[0].isdigit():
        counts[f[2].removeprefix("syscalls:sys_enter_")] = int(f[0])
cols = ["futex", "write", "epoll_wait", "sendto", "recvfrom", "context-switches"]
print(f"| {name} | {s['summary']['requestsPerSec']:.0f} | "
      + " | ".join(f"{counts.get(c, 0) / max(n, 1):.3f}" for c in cols) + " |")
PY
}

echo "| relay | rps | futex | write | epoll_wait | sendto | recvfrom | context switches |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
FLOOR_BIND=127.0.0.1:$GP FLOOR_UPSTREAM=http://127.0.0.1:$MP "$FLOOR_BIN" \
    >/dev/null 2>"$TMP/floor.err" &
FLOOR=$!
PIDS+=("$FLOOR")
wait_gateway
measure floor "$FLOOR"
kill "$FLOOR"
wait "$FLOOR" 2>/dev/null || true

GATEWAY__STORAGE__DATA_DIR=$TMP/data GATEWAY__SERVER__BIND=127.0.0.1:$GP \
GATEWAY__FIXTURES__DIR=$TMP/fixtures \
    "$BIN/inference-gateway" >/dev/null 2>"$TMP/gateway.err" &
GW=$!
PIDS+=("$GW")
wait_gateway
measure gateway "$GW"
echo
echo "Per request (responses counted by oha), all threads of the relay process."
