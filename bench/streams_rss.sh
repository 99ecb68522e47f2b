#!/usr/bin/env bash
# Holds N concurrent SSE streams through the gateway against the mock upstream (loopback)
# and reports the gateway's RSS per stream: RSS with every stream open and its first event
# received, minus RSS after a warm-up with nothing open, divided by N. A benchmark, not a
# test: run it by hand (and record the numbers in docs/PERFORMANCE.md).
#
#   bench/streams_rss.sh [N...]          default: 1000 5000 9800
#
# Environment:
#   BIN            directory holding inference-gateway and mock-upstream (default
#                  target/release; build first: cargo build --release --workspace --bins)
#   WORKERS        gateway HTTP workers (default 2)
#   POOL_LIMIT     upstream.pool_limit_per_worker for the run (default: the built-in default)
#   HOLD_SECS      how long each stream lasts upstream (default 60; bounded by the run)
#   OPEN_TIMEOUT   seconds allowed to open all N streams (default 120)
# Each stream costs 2 descriptors in the gateway and 2 here: N up to about ulimit -n / 2.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
WORKERS=${WORKERS:-2}
HOLD_SECS=${HOLD_SECS:-60}
OPEN_TIMEOUT=${OPEN_TIMEOUT:-120}
COUNTS=("$@")
[[ ${#COUNTS[@]} -gt 0 ]] || COUNTS=(1000 5000 9800)

for tool in python3 curl; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[[ -x $BIN/inference-gateway && -x $BIN/mock-upstream ]] ||
    { echo "no binaries in $BIN: cargo build --release --workspace --bins" >&2; exit 1; }

MAX=0
for n in "${COUNTS[@]}"; do ((n > MAX)) && MAX=$n; done
need=$((2 * MAX + 200))
ulimit -n "$need" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if (($(ulimit -n) < need)); then
    echo "ulimit -n is $(ulimit -n); $MAX streams need $need descriptors" >&2
    exit 1
fi

TMP=$(mktemp -d /tmp/igw-streams-rss.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

read -r MP GP < <(python3 -c 'import socket
def f():
    s=socket.socket(); s.bind(("127.0.0.1",0)); p=s.getsockname()[1]; s.close(); return p
print(f(), f())')

# Streams of 60 events, one a second: every stream stays open for the measurement.
"$BIN/mock-upstream" --port "$MP" --workers 2 --chunks "$HOLD_SECS" --chunk-delay-ms 1000 \
    --keep-alive-secs 120 --no-record 2>"$TMP/mock.log" &
PIDS+=($!)
mkdir -p "$TMP/fixtures"
cat >"$TMP/fixtures/endpoints.json" <<JSON
[{"model":"resource_server.endpoint","pk":1,"fields":{"endpoint_slug":"bench-mock","cluster":"bench","framework":"mock","model":"mock-model","base_url":"http://127.0.0.1:$MP"}}]
JSON

wait_health() {
    for _ in $(seq 150); do
        curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$1/health" && return 0
        sleep 0.2
    done
    echo "nothing answered on 127.0.0.1:$1" >&2
    return 1
}
wait_health "$MP"

env_pool=()
[[ -n ${POOL_LIMIT:-} ]] && env_pool=(GATEWAY__UPSTREAM__POOL_LIMIT_PER_WORKER="$POOL_LIMIT")
env GATEWAY__SERVER__BIND="127.0.0.1:$GP" GATEWAY__SERVER__WORKERS="$WORKERS" \
    GATEWAY__FIXTURES__DIR="$TMP/fixtures" GATEWAY__STORAGE__DATA_DIR="$TMP/data" \
    GATEWAY__HEALTH__PATH="" GATEWAY__LOGGING__LEVEL=warning GATEWAY__QUOTAS__ENABLED=false \
    "${env_pool[@]}" "$BIN/inference-gateway" serve >"$TMP/gateway.log" 2>&1 &
GW=$!
PIDS+=($GW)
wait_health "$GP"

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$GW/status"; }

# Warm-up: a few streams opened and finished, so the baseline holds the allocator's and
# the workers' first arenas.
python3 "$ROOT/bench/streams_hold.py" --port "$GP" --streams 50 --hold 0 --timeout 30 >/dev/null

printf '%-8s %-10s %-12s %-12s %-14s %-10s\n' streams opened "rss_idle_MB" "rss_held_MB" "KB_per_stream" "open_s"
for n in "${COUNTS[@]}"; do
    sleep 2
    idle=$(rss_kb)
    # Opens n streams, reads each one's first event, then waits for "measure" on stdin
    # (bounded by --timeout) before closing them all.
    coproc HOLD { python3 "$ROOT/bench/streams_hold.py" --port "$GP" --streams "$n" \
        --hold 1 --timeout "$OPEN_TIMEOUT"; }
    read -r opened secs <&"${HOLD[0]}"
    held=$(rss_kb)
    echo measure >&"${HOLD[1]}"
    wait "$HOLD_PID" 2>/dev/null || true
    per=$(awk -v h="$held" -v i="$idle" -v n="$opened" 'BEGIN { if (n > 0) printf "%.1f", (h - i) / n; else print "-" }')
    printf '%-8s %-10s %-12.1f %-12.1f %-14s %-10s\n' "$n" "$opened" \
        "$(awk -v k="$idle" 'BEGIN{print k/1024}')" "$(awk -v k="$held" 'BEGIN{print k/1024}')" \
        "$per" "$secs"
done
grep -i -m 3 'wait for one' "$TMP/gateway.log" >&2 || true
