#!/usr/bin/env bash
# Checks that .ci/apt.sh waits for another apt instead of failing: holds
# /var/lib/apt/lists/lock (as a running `apt-get update` does, with fcntl) for 12 s and
# runs `apt_get update` meanwhile. Plain `apt-get update` fails at once with exit 100
# here. Needs root and the network; run by hand: bash .ci/apt_test.sh
set -euo pipefail
. "$(dirname "$0")/apt.sh"
python3 - <<'PY' &
import fcntl, time
f = open("/var/lib/apt/lists/lock", "w")
fcntl.lockf(f, fcntl.LOCK_EX)
time.sleep(12)
PY
HOLDER=$!
sleep 1
if apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null 2>&1; then
  echo "FAIL: plain apt-get update succeeded while the lock was held: the test proves nothing"
  exit 1
fi
start=$(date +%s)
apt_get update -q 2>/dev/null
took=$(($(date +%s) - start))
wait "$HOLDER"
[ "$took" -ge 5 ] || { echo "FAIL: apt_get returned after ${took}s, before the lock was free"; exit 1; }
echo "ok: apt_get update waited ${took}s for the lists lock, then succeeded"
