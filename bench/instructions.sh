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
CONNS=${CONNS:-8}
SECONDS_MEASURED=${SECONDS_MEASURED:-8}
BENCH_NAME=instr
TOOLS="valgrind callgrind_control callgrind_annotate wrk"
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lift_quotas

cat >"$TMP/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"model":"mock-model","messages":[{"role":"user","content":"hi"}],"max_tokens":8}'
wrk.headers["Content-Type"] = "application/json"
LUA
OUT=$ROOT/bench/results/callgrind.$$.out
mkdir -p "$ROOT/bench/results"
GATEWAY__STORAGE__DATA_DIR=$TMP/data GATEWAY__SERVER__BIND=127.0.0.1:$GP \
GATEWAY__FIXTURES__DIR=$TMP/fixtures \
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT" \
    "$BIN/inference-gateway" >"$TMP/gateway.log" 2>"$TMP/valgrind.log" &
GW=$!
PIDS+=("$GW")
wait_gateway
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
# A count that includes failing log writes would mislead: say how many rows were stored.
if command -v sqlite3 >/dev/null && [[ -f $TMP/data/gateway.db ]]; then
    echo "request-log rows stored: $(sqlite3 "$TMP/data/gateway.db" 'SELECT count(*) FROM request_log')"
fi
if grep -q '"level":"ERRO"\|"level":"WARN"' "$TMP/gateway.log"; then
    echo "the gateway logged warnings or errors:"
    grep '"level":"ERRO"\|"level":"WARN"' "$TMP/gateway.log" | head -n 3
fi
if [[ $KEEP == 1 ]]; then echo "callgrind output: $OUT"; else rm -f "$OUT"; fi
