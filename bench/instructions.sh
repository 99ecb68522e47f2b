#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: repeatable whatever else the
# machine is doing (unlike seconds), so it shows what a change costs on a noisy machine.
# Kernel time (system calls, loopback TCP) is not counted: pair it with bench/run.sh.
#
# usage: bench/instructions.sh [--keep]
#   --keep   keep the callgrind output (bench/results/callgrind.<pid>.out) for
#            `callgrind_annotate --inclusive=yes FILE | head -60`
# env: GATEWAY__... passed to the gateway; CONNS=8 SECONDS_MEASURED=8
# Needs valgrind and wrk (apt-get install valgrind wrk) and the release binaries
# (cargo build --release --workspace --bins). Everything listens on 127.0.0.1 and stops
# on exit.
set -euo pipefail
KEEP=0
[[ ${1:-} == --keep ]] && KEEP=1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
CONNS=${CONNS:-8}
SECONDS_MEASURED=${SECONDS_MEASURED:-8}
for tool in valgrind callgrind_control callgrind_annotate wrk curl; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[[ -x $BIN/inference-gateway && -x $BIN/mock-upstream ]] ||
    { echo "build first: cargo build --release --workspace --bins" >&2; exit 1; }

TMP=$(mktemp -d /tmp/igw-instr.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
read -r MP GP < <(python3 -c 'import socket
def f():
    s=socket.socket(); s.bind(("127.0.0.1",0)); p=s.getsockname()[1]; s.close(); return p
print(f(), f())')

"$BIN/mock-upstream" --port "$MP" --workers 1 --chunks 8 --keep-alive-secs 120 --no-record \
    2>"$TMP/mock.log" &
PIDS+=($!)
mkdir -p "$TMP/fixtures"
cat >"$TMP/fixtures/endpoints.json" <<JSON
[{"model":"resource_server.endpoint","pk":1,"fields":{"endpoint_slug":"bench-mock","cluster":"bench","framework":"mock","model":"mock-model","base_url":"http://127.0.0.1:$MP"}}]
JSON
cat >"$TMP/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"model":"mock-model","messages":[{"role":"user","content":"hi"}],"max_tokens":8}'
wrk.headers["Content-Type"] = "application/json"
LUA
OUT=$ROOT/bench/results/callgrind.$$.out
mkdir -p "$ROOT/bench/results"
# The default per-user limits (50 requests/s) would refuse most of the load.
GATEWAY__QUOTAS__USER__REQUESTS_PER_SECOND=${GATEWAY__QUOTAS__USER__REQUESTS_PER_SECOND:-10000000} \
GATEWAY__QUOTAS__USER__BURST=${GATEWAY__QUOTAS__USER__BURST:-10000000} \
GATEWAY__QUOTAS__USER__REQUESTS_PER_DAY=${GATEWAY__QUOTAS__USER__REQUESTS_PER_DAY:-0} \
GATEWAY__QUOTAS__USER__TOKENS_PER_DAY=${GATEWAY__QUOTAS__USER__TOKENS_PER_DAY:-0} \
GATEWAY__QUOTAS__USER__TOKENS_PER_MONTH=${GATEWAY__QUOTAS__USER__TOKENS_PER_MONTH:-0} \
GATEWAY__QUOTAS__USER__MAX_IN_FLIGHT=${GATEWAY__QUOTAS__USER__MAX_IN_FLIGHT:-0} \
GATEWAY__STORAGE__DATA_DIR=$TMP/data GATEWAY__SERVER__BIND=127.0.0.1:$GP \
GATEWAY__FIXTURES__DIR=$TMP/fixtures \
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT" \
    "$BIN/inference-gateway" >"$TMP/gateway.log" 2>"$TMP/valgrind.log" &
GW=$!
PIDS+=("$GW")
for _ in $(seq 150); do
    curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$GP/health" && break
    sleep 0.2
done
URL=http://127.0.0.1:$GP/v1/chat/completions
timeout 60 wrk -t1 -c"$CONNS" -d3s -s "$TMP/post.lua" "$URL" >/dev/null # warm up
sleep 1
callgrind_control -i on "$GW" >/dev/null
timeout 120 wrk -t1 -c"$CONNS" -d"${SECONDS_MEASURED}s" -s "$TMP/post.lua" "$URL" >"$TMP/wrk.txt"
# The request log writes every 500 ms: let the last batch land inside the window.
sleep 1.2
callgrind_control -i off "$GW" >/dev/null
N=$(awk '/requests in/ {print $1}' "$TMP/wrk.txt")
NON2XX=$(awk '/Non-2xx/ {print $NF}' "$TMP/wrk.txt")
kill -INT "$GW"
wait "$GW" 2>/dev/null || true
IR=$(callgrind_annotate "$OUT" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "requests: $N (non-2xx: ${NON2XX:-0}); instructions: $IR; per request: $((IR / N))"
if [[ $KEEP == 1 ]]; then echo "callgrind output: $OUT"; else rm -f "$OUT"; fi
