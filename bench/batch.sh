#!/usr/bin/env bash
# Batch throughput: one N-line chat batch (default 10,000) through the release gateway
# against the release bench/mock-upstream, from `POST /v1/batches` to `completed`.
# Everything listens on 127.0.0.1; every process started here is stopped on exit.
#
# usage: bench/batch.sh
# env:
#   LINES=10000 REPEAT=3          lines per batch, batches run one after another
#   GATEWAY__...                  passed through to the gateway's config (e.g.
#                                 GATEWAY__BATCHES__CONCURRENCY_PER_BATCH=64)
#   BENCH_SKIP_BUILD=1            use the release binaries already built
#   BENCH_MAX_SECONDS=300         a batch not done by then fails the run
# Output: one line per batch (lines/s) and the median, on stdout.
set -euo pipefail

LINES=${LINES:-10000}
REPEAT=${REPEAT:-3}
BENCH_MAX_SECONDS=${BENCH_MAX_SECONDS:-300}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
die() {
    log "!!! $*"
    exit 1
}

if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
    log "building release binaries"
    (cd "$ROOT" && timeout 1800 cargo build --release --bin inference-gateway >&2 &&
        timeout 1800 cargo build --release -p mock-upstream --bin mock-upstream >&2) ||
        die "build failed"
fi
BENCH_NAME=batch
TOOLS=
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

GATEWAY__SERVER__BIND=127.0.0.1:$GP GATEWAY__FIXTURES__DIR=$TMP/fixtures \
    GATEWAY__STORAGE__DATA_DIR=$TMP/data GATEWAY__LOGGING__LEVEL=warning \
    GATEWAY__QUOTAS__USER__REQUESTS_PER_SECOND=${GATEWAY__QUOTAS__USER__REQUESTS_PER_SECOND:-100000} \
    GATEWAY__QUOTAS__USER__BURST=${GATEWAY__QUOTAS__USER__BURST:-100000} \
    GATEWAY__QUOTAS__MODEL__REQUESTS_PER_SECOND=${GATEWAY__QUOTAS__MODEL__REQUESTS_PER_SECOND:-100000} \
    GATEWAY__QUOTAS__MODEL__BURST=${GATEWAY__QUOTAS__MODEL__BURST:-100000} \
    GATEWAY__BATCHES__POLL_INTERVAL_MS=${GATEWAY__BATCHES__POLL_INTERVAL_MS:-50} \
    "$BIN/inference-gateway" serve >"$TMP/gateway.log" 2>&1 &
PIDS+=($!)
wait_gateway
GW=http://127.0.0.1:$GP

python3 - "$LINES" >"$TMP/in.jsonl" <<'EOF'
import json, sys
for i in range(int(sys.argv[1])):
    print(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "mock-model", "max_tokens": 8,
                               "messages": [{"role": "user", "content": f"line {i}"}]}}))
EOF

field() { python3 -c "import json,sys; v=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

RATES=()
for ((r = 1; r <= REPEAT; r++)); do
    file_id=$(curl -fsS "$GW/v1/files" -F purpose=batch -F "file=@$TMP/in.jsonl" | field 'v["id"]')
    start=$(date +%s.%N)
    batch=$(curl -fsS "$GW/v1/batches" -H 'content-type: application/json' \
        -d "{\"input_file_id\":\"$file_id\",\"endpoint\":\"/v1/chat/completions\",\"completion_window\":\"24h\"}" |
        field 'v["id"]')
    deadline=$(($(date +%s) + BENCH_MAX_SECONDS))
    while :; do
        status=$(curl -fsS "$GW/v1/batches/$batch" | field 'v["status"] + " " + str(v["request_counts"]["completed"])')
        case $status in
            completed*) break ;;
            failed* | cancelled* | expired*) die "batch $batch ended $status" ;;
        esac
        (($(date +%s) < deadline)) || die "batch $batch not done after ${BENCH_MAX_SECONDS}s ($status)"
        sleep 0.05
    done
    end=$(date +%s.%N)
    done_lines=${status#completed }
    [[ $done_lines == "$LINES" ]] || die "batch $batch completed $done_lines of $LINES lines"
    out=$(curl -fsS "$GW/v1/batches/$batch" | field 'v["output_file_id"]')
    n_out=$(curl -fsS "$GW/v1/files/$out/content" | python3 -c "import sys, json; ids=[json.loads(l)['custom_id'] for l in sys.stdin]; assert len(ids)==len(set(ids)); print(len(ids))")
    [[ $n_out == "$LINES" ]] || die "output has $n_out lines"
    rate=$(python3 -c "print(f'{$LINES/($end-$start):.0f}')")
    secs=$(python3 -c "print(f'{$end-$start:.2f}')")
    echo "batch $r: $LINES lines in ${secs}s = $rate lines/s"
    RATES+=("$rate")
done
median=$(printf '%s\n' "${RATES[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "median: $median lines/s ($REPEAT batches of $LINES lines)"
