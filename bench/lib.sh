# Shared by bench/instructions.sh, bench/log_cost.sh and bench/batch.sh (sourced, not
# run): checks, a temporary directory removed on exit with every process in PIDS, two free
# 127.0.0.1 ports (MP for the mock, GP for the gateway), the mock upstream answering on MP, a
# fixture directory naming it as model `mock-model`; `lift_quotas`, `wait_gateway`,
# `post_load`.
# Set before sourcing: BENCH_NAME (for the temp dir) and TOOLS (commands needed).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
for tool in $TOOLS curl python3; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[[ -x $BIN/inference-gateway && -x $BIN/mock-upstream ]] ||
    { echo "build first: cargo build --release --workspace --bins" >&2; exit 1; }

TMP=$(mktemp -d "/tmp/igw-$BENCH_NAME.XXXXXX")
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

"$BIN/mock-upstream" --port "$MP" --workers 1 --chunks 8 --keep-alive-secs 120 --no-record \
    2>"$TMP/mock.log" &
PIDS+=($!)
mkdir -p "$TMP/fixtures"
cat >"$TMP/fixtures/endpoints.json" <<JSON
[{"model":"resource_server.endpoint","pk":1,"fields":{"endpoint_slug":"bench-mock","cluster":"bench","framework":"mock","model":"mock-model","base_url":"http://127.0.0.1:$MP"}}]
JSON
BODY='{"model":"mock-model","messages":[{"role":"user","content":"hi"}],"max_tokens":8}'
URL=http://127.0.0.1:$GP/v1/chat/completions

# shellcheck source=bench/quotas.sh
. "$ROOT/bench/quotas.sh"

# Waits (30 s at most) until 127.0.0.1:PORT answers /health.
wait_health() {
    for _ in $(seq 150); do
        curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$1/health" && return 0
        sleep 0.2
    done
    echo "nothing answered on 127.0.0.1:$1" >&2
    return 1
}

wait_gateway() { wait_health "$GP"; }

# post_load SECONDS [oha args...]: oha POSTs BODY to URL for SECONDS over CONNS connections
# (set by the script; stopped 30 s past its time at most), its output on stdout.
post_load() {
    local secs=$1
    shift
    timeout $((secs + 30)) oha -z "${secs}s" -c "$CONNS" --no-tui -m POST \
        -H 'content-type: application/json' -d "$BODY" "$@" "$URL"
}

wait_health "$MP" || { cat "$TMP/mock.log" >&2; exit 1; }
