#!/usr/bin/env bash
# What the request log costs in throughput: the gateway's rps@64 (the core benchmark's
# throughput step: oha -c 64, POST /v1/chat/completions to the mock upstream) with
# `logging.request_log` on and off, alternating, each run on a fresh gateway and data
# directory, so slow drift of a shared machine hits both settings alike.
#
# usage: bench/log_cost.sh
# env: ROUNDS=6 (pairs) DURATION=5 (seconds per run) CONNS=64, GATEWAY__... passed on
#      (e.g. GATEWAY__DATABASE__URL=postgres://... to measure PostgreSQL).
# Needs oha and the release binaries (cargo build --release --workspace --bins). Quota
# limits are lifted as in bench/run.sh. Everything listens on 127.0.0.1 and stops on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-5}
CONNS=${CONNS:-64}
for tool in oha curl python3; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[[ -x $BIN/inference-gateway && -x $BIN/mock-upstream ]] ||
    { echo "build first: cargo build --release --workspace --bins" >&2; exit 1; }

TMP=$(mktemp -d /tmp/igw-logcost.XXXXXX)
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
BODY='{"model":"mock-model","messages":[{"role":"user","content":"hi"}],"max_tokens":8}'
URL=http://127.0.0.1:$GP/v1/chat/completions
export GATEWAY__QUOTAS__USER__REQUESTS_PER_SECOND=${GATEWAY__QUOTAS__USER__REQUESTS_PER_SECOND:-10000000}
export GATEWAY__QUOTAS__USER__BURST=${GATEWAY__QUOTAS__USER__BURST:-10000000}
export GATEWAY__QUOTAS__USER__REQUESTS_PER_DAY=${GATEWAY__QUOTAS__USER__REQUESTS_PER_DAY:-0}
export GATEWAY__QUOTAS__USER__TOKENS_PER_DAY=${GATEWAY__QUOTAS__USER__TOKENS_PER_DAY:-0}
export GATEWAY__QUOTAS__USER__TOKENS_PER_MONTH=${GATEWAY__QUOTAS__USER__TOKENS_PER_MONTH:-0}
export GATEWAY__QUOTAS__USER__MAX_IN_FLIGHT=${GATEWAY__QUOTAS__USER__MAX_IN_FLIGHT:-0}

# One run: prints "rps cpu_us_per_request".
run() {
    local log=$1 data=$TMP/data-$RANDOM
    GATEWAY__LOGGING__REQUEST_LOG=$log GATEWAY__STORAGE__DATA_DIR=$data \
        GATEWAY__SERVER__BIND=127.0.0.1:$GP GATEWAY__FIXTURES__DIR=$TMP/fixtures \
        "$BIN/inference-gateway" >/dev/null 2>"$TMP/gateway.err" &
    local gw=$!
    for _ in $(seq 150); do
        curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$GP/health" && break
        sleep 0.2
    done
    timeout 30 oha -z 1s -c "$CONNS" --no-tui -m POST -H 'content-type: application/json' \
        -d "$BODY" "$URL" >/dev/null
    local before after
    before=$(awk '{print $14 + $15}' "/proc/$gw/stat")
    timeout $((DURATION + 30)) oha -z "${DURATION}s" -c "$CONNS" --no-tui --output-format json \
        -m POST -H 'content-type: application/json' -d "$BODY" "$URL" >"$TMP/oha.json"
    after=$(awk '{print $14 + $15}' "/proc/$gw/stat")
    kill -INT "$gw"
    wait "$gw" 2>/dev/null || true
    rm -rf "$data"
    python3 - "$TMP/oha.json" "$before" "$after" "$(getconf CLK_TCK)" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
ok = sum(n for code, n in s["statusCodeDistribution"].items() if code.startswith("2"))
bad = sum(s["statusCodeDistribution"].values()) - ok
secs = s["summary"]["total"]
cpu = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4])
print(f"{ok / secs:.0f} {cpu * 1e6 / max(ok, 1):.1f}" + (f" ({bad} non-2xx)" if bad else ""))
PY
}

echo "| round | log on rps | log on CPU µs/req | log off rps | log off CPU µs/req |"
echo "| ---: | ---: | ---: | ---: | ---: |"
ON=() OFF=()
for r in $(seq "$ROUNDS"); do
    # Alternate which setting goes first, so neither always runs on a warmer machine.
    if ((r % 2)); then on=$(run true); off=$(run false); else off=$(run false); on=$(run true); fi
    ON+=("${on%% *}") OFF+=("${off%% *}")
    echo "| $r | ${on%% *} | ${on#* } | ${off%% *} | ${off#* } |"
done
python3 - "${ON[*]}" "${OFF[*]}" <<'PY'
import statistics, sys
on = [float(x) for x in sys.argv[1].split()]
off = [float(x) for x in sys.argv[2].split()]
m_on, m_off = statistics.median(on), statistics.median(off)
print(f"\nmedian rps: log on {m_on:.0f}, log off {m_off:.0f}: the log costs {100 * (1 - m_on / m_off):.1f}%")
PY
