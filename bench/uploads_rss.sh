#!/usr/bin/env bash
# Peak RSS of the gateway while N clients upload a SIZE_MB file each to POST /v1/files at
# once (issue: uploads must stream to disk, not sit in memory). Loopback only, bounded:
# each curl has a 120 s cap. A benchmark, not a test.
#   N=24 SIZE_MB=99 GATEWAY_BIN=target/release/inference-gateway bench/uploads_rss.sh
set -euo pipefail
N="${N:-24}"
SIZE_MB="${SIZE_MB:-99}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${GATEWAY_BIN:-$ROOT/target/release/inference-gateway}"
WORK="$(mktemp -d)"
trap 'kill "$GW_PID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"

python3 - "$WORK/upload.jsonl" "$SIZE_MB" <<'PY'
import json, sys
path, mb = sys.argv[1], int(sys.argv[2])
line = json.dumps({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": "m", "messages": [{"role": "user", "content": "a" * 900}]}}) + "\n"
with open(path, "w") as f:
    f.write(line * (mb * 1024 * 1024 // len(line)))
PY
mkdir -p "$WORK/fixtures"
echo '[]' > "$WORK/fixtures/endpoints.json"
GATEWAY__SERVER__BIND="127.0.0.1:$PORT" GATEWAY__FIXTURES__DIR="$WORK/fixtures" \
  GATEWAY__STORAGE__DATA_DIR="$WORK/data" GATEWAY__LOGGING__LEVEL=warning \
  "$BIN" > "$WORK/gateway.log" 2>&1 &
GW_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
rss() { awk '/^VmRSS/ {print $2}' "/proc/$GW_PID/status"; }
echo "idle RSS: $(( $(rss) / 1024 )) MB; $N uploads of $(du -m "$WORK/upload.jsonl" | cut -f1) MB"
for i in $(seq "$N"); do
  curl -s -o /dev/null -w '%{http_code}\n' --max-time 120 \
    -F purpose=batch -F "file=@$WORK/upload.jsonl" "http://127.0.0.1:$PORT/v1/files" \
    >> "$WORK/codes" &
done
wait $(jobs -p | grep -v "^$GW_PID$") 2>/dev/null || true
echo "answers: $(sort "$WORK/codes" | uniq -c | tr '\n' ' ')"
echo "peak RSS (VmHWM): $(( $(awk '/^VmHWM/ {print $2}' "/proc/$GW_PID/status") / 1024 )) MB; RSS after: $(( $(rss) / 1024 )) MB"
