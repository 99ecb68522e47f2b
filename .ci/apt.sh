# Sourced by .ci/run and tests/llama/build.sh: apt-get that waits for another apt.
# DPkg::Lock::Timeout makes apt wait for the dpkg lock, but `apt-get update` fails at once
# ("Could not get lock /var/lib/apt/lists/lock") while another update holds the lists
# lock, as happens when a machine's own updater runs at boot. So every call is retried
# while the lock is held, for up to APT_LOCK_WAIT seconds (default 600).
# Test: bash .ci/apt_test.sh (needs root and the network).

# apt_get ARGS...: apt-get ARGS, retried while another apt holds one of its locks.
apt_get() {
  local waited=0 out rc
  while :; do
    out=$(mktemp)
    rc=0
    timeout 900 apt-get -o DPkg::Lock::Timeout=300 "$@" >"$out" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ] || ! grep -q 'Could not get lock' "$out" ||
      [ "$waited" -ge "${APT_LOCK_WAIT:-600}" ]; then
      cat "$out" >&2
      rm -f "$out"
      return "$rc"
    fi
    rm -f "$out"
    [ "$waited" -eq 0 ] && echo "apt-get $1: another apt holds its lock; waiting" >&2
    sleep 5
    waited=$((waited + 5))
  done
}

APT_UPDATED=0
# apt_install PACKAGES...: install with apt, updating the package lists once first.
apt_install() {
  command -v apt-get >/dev/null || { echo "apt-get not available to install: $*" >&2; return 1; }
  if [ "$APT_UPDATED" -eq 0 ]; then
    apt_get update -q
    APT_UPDATED=1
  fi
  apt_get install -y -q "$@"
}
