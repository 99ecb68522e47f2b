#!/usr/bin/env bash
# Overhead benchmark, in one run against the same mock upstream:
#   direct  - straight to bench/mock-upstream,
#   nginx   - through Debian nginx as a plain keep-alive proxy_pass (bench/nginx.conf.tmpl),
#   floor   - through bench/floor.rs: actix-web + awc relaying, nothing else (what the
#             framework costs before any gateway feature),
#   gateway - through target/release/inference-gateway.
# Everything listens on 127.0.0.1; every process started here is stopped on exit (Ctrl-C too).
#
# usage: bench/run.sh [--quick]
#   --quick    one repeat of 3 s runs (smoke test)
# env:
#   REPEAT=3 DURATION=10 CONNS=64 RATE=500 STREAM_REQUESTS=200 STREAM_CHUNKS=20
#   BENCH_TARGETS="direct nginx floor gateway"   which rows to measure
#   BENCH_API_KEY                          sent as `Authorization: Bearer ...` when set
#   GATEWAY_ARGS                           extra arguments for inference-gateway
#   GATEWAY__...                           passed through to the gateway's config
#   NGINX_WORKERS=1                        nginx's worker_processes (Debian's own default
#                                          config says auto: one per core)
#   BENCH_MAX_SECONDS=900                  no step starts later than this after the builds
#   BENCH_QUIET_WAIT=0                     seconds, in all, to wait for other CPU load to end
#   BENCH_SKIP_BUILD=1                     use the release binaries already built
# Output: a Markdown table on stdout; raw JSON under bench/results/<timestamp>/.
set -euo pipefail

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h | --help)
            sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

REPEAT=${REPEAT:-3}
DURATION=${DURATION:-10}
STREAM_REQUESTS=${STREAM_REQUESTS:-200}
if [[ $QUICK == 1 ]]; then
    REPEAT=1
    DURATION=3
    STREAM_REQUESTS=50
fi
CONNS=${CONNS:-64}
RATE=${RATE:-500}
STREAM_CHUNKS=${STREAM_CHUNKS:-20}
BENCH_TARGETS=${BENCH_TARGETS:-direct nginx floor gateway}
BENCH_MAX_SECONDS=${BENCH_MAX_SECONDS:-900}

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/quotas.sh
. "$BENCH_DIR/quotas.sh"
ROOT=$(cd "$BENCH_DIR/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
MOCK_BIN=$TARGET_DIR/release/mock-upstream
GW_BIN=$TARGET_DIR/release/inference-gateway
FLOOR_BIN=$TARGET_DIR/release/examples/floor

BODY='{"model":"mock-model","messages":[{"role":"user","content":"hi"}],"max_tokens":8}'
STREAM_BODY='{"model":"mock-stream","messages":[{"role":"user","content":"hi"}],"max_tokens":20,"stream":true}'
PATH_CHAT=/v1/chat/completions

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
has_target() { [[ " $BENCH_TARGETS " == *" $1 "* ]]; }

# ---------------------------------------------------------------- processes and cleanup
TMP=
PIDS=()  # long-running servers
CHILD=   # the bounded command running now
DEADLINE= # epoch seconds after which no new measurement starts

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $CHILD ]] && kill -TERM "$CHILD" 2>/dev/null
    local pid alive
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Up to 5 s for a clean stop, then KILL what is left, by PID.
    for _ in $(seq 50); do
        alive=0
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [[ $alive == 0 ]] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            log "killing $pid (did not stop on TERM)"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    wait 2>/dev/null || true
    [[ -n $TMP && -d $TMP ]] && rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# sleep, in the background, so a signal to this script is handled at once.
nap() {
    sleep "$1" &
    CHILD=$!
    wait "$CHILD" || true
    CHILD=
}

# Runs a command with a time limit, in the background so Ctrl-C interrupts the wait at once.
bounded() {
    local secs=$1
    shift
    if [[ -n $DEADLINE ]] && (($(date +%s) > DEADLINE)); then
        die "over BENCH_MAX_SECONDS=$BENCH_MAX_SECONDS, stopping"
    fi
    timeout -k 5 "$secs" "$@" &
    CHILD=$!
    local rc=0
    wait "$CHILD" || rc=$?
    CHILD=
    return "$rc"
}

# ---------------------------------------------------------------- tools
ensure_tools() {
    if ! command -v nginx >/dev/null; then
        log "installing nginx-light and wrk"
        apt-get install -y nginx-light wrk >/dev/null ||
            { apt-get update >/dev/null && apt-get install -y nginx-light wrk >/dev/null; } ||
            die "cannot install nginx-light"
    fi
    if ! command -v oha >/dev/null; then
        log "installing oha (cargo install oha --locked, about 8 minutes)"
        cargo install oha --locked >&2 || die "cannot install oha"
    fi
    command -v python3 >/dev/null || die "python3 is needed"
    command -v curl >/dev/null || die "curl is needed"
}

# ---------------------------------------------------------------- helpers
# N distinct free loopback ports, below the kernel's ephemeral range so that no outgoing
# connection takes one between this check and the server's bind.
free_ports() {
    python3 - "$1" <<'EOF'
import random, socket, sys
lo = 20000
try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        eph = int(f.read().split()[0])
except (OSError, ValueError):
    eph = 32768
hi = max(lo + 1000, min(eph, 32768))
ports = []
for _ in range(1000):
    if len(ports) == int(sys.argv[1]):
        break
    p = random.randrange(lo, hi)
    if p in ports:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        ports.append(p)
    except OSError:
        pass
    finally:
        s.close()
print(" ".join(map(str, ports)))
EOF
}

AUTH_HEADERS=()
if [[ -n ${BENCH_API_KEY:-} ]]; then
    AUTH_HEADERS=(-H "authorization: Bearer $BENCH_API_KEY")
fi

# wait_http NAME PID URL: GET URL until 200, at most 10 s, while PID lives.
wait_http() {
    local name=$1 pid=$2 url=$3
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 1
        if curl -fsS -o /dev/null --max-time 1 "${AUTH_HEADERS[@]}" "$url" 2>/dev/null; then
            return 0
        fi
        nap 0.1
    done
    log "$name did not answer $url within 10 s"
    return 1
}

# probe_chat NAME BASE: POST a chat completion until 200, at most 10 s.
probe_chat() {
    local name=$1 base=$2 code=
    for _ in $(seq 50); do
        code=$(curl -sS -o "$TMP/probe-$name.out" -w '%{http_code}' --max-time 2 \
            "${AUTH_HEADERS[@]}" -H 'content-type: application/json' \
            -d "$BODY" "$base$PATH_CHAT" 2>/dev/null) || code=000
        [[ $code == 200 ]] && return 0
        nap 0.2
    done
    log "$name: POST $PATH_CHAT answered $code: $(head -c 300 "$TMP/probe-$name.out" 2>/dev/null)"
    return 1
}

# CPU ticks (utime + stime, all threads) summed over PIDs.
cpu_ticks() {
    local pid total=0 t
    for pid in "$@"; do
        t=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}') || t=0
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

# VmRSS in kB summed over PIDs.
rss_kb() {
    local pid total=0 r
    for pid in "$@"; do
        r=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || r=0
        total=$((total + ${r:-0}))
    done
    echo "$total"
}

nginx_pids() {
    echo "$NGX_PID"
    pgrep -P "$NGX_PID" || true
}

# Processes that serve TARGET (the proxy, or the mock for direct), one per line.
target_pids() {
    case "$1" in
        direct) echo "$MOCK_PID" ;;
        nginx) nginx_pids ;;
        floor) echo "$FLOOR_PID" ;;
        gateway) echo "$GW_PID" ;;
    esac
}

# oha_run URL OUT [oha args...]: one timed oha run, JSON to OUT.
oha_run() {
    local url=$1 out=$2
    shift 2
    load_mark
    bounded $((DURATION + 30)) oha --no-tui --output-format json -z "${DURATION}s" \
        -m POST -T application/json -d "$BODY" "${AUTH_HEADERS[@]}" "$@" "$url" >"$out" ||
        log "oha failed for $url (see $out)"
    load_report "${out%.json}.load.json"
    settle
}

# The machine is shared: how much CPU did others use during a run? /proc/stat's
# user+nice+system over the run, minus what this benchmark's processes used (servers, and
# through this shell's cutime the load generators it waited for), as a share of all CPUs;
# steal (the hypervisor) separately.
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4, $9; exit}' /proc/stat; }
own_ticks() {
    local pids=("${PIDS[@]}") self servers
    [[ -n $NGX_PID ]] && mapfile -t -O "${#pids[@]}" pids < <(pgrep -P "$NGX_PID" || true)
    servers=$(cpu_ticks "${pids[@]}")
    self=$(sed 's/.*) //' "/proc/$$/stat" | awk '{print $12 + $13 + $14 + $15}')
    echo $((servers + self))
}
# With BENCH_QUIET_WAIT=S, before each run wait (S seconds at most over the whole
# benchmark) until processes outside the benchmark use under 10% of the CPUs for a second.
QUIET_WAITED=0
wait_quiet() {
    local b0 o0 b1 o1 foreign cap
    cap=$((CLK_TCK * $(nproc)))
    while ((QUIET_WAITED < ${BENCH_QUIET_WAIT:-0})); do
        read -r b0 _ < <(machine_ticks)
        o0=$(own_ticks)
        nap 1
        read -r b1 _ < <(machine_ticks)
        o1=$(own_ticks)
        foreign=$((b1 - b0 - (o1 - o0)))
        ((foreign * 10 < cap)) && return 0
        QUIET_WAITED=$((QUIET_WAITED + 1))
        ((QUIET_WAITED % 15 == 1)) && log "machine busy (others use $((foreign * 100 / cap))% CPU): waiting"
    done
    return 0
}
load_mark() {
    wait_quiet
    read -r LOAD_BUSY0 LOAD_STEAL0 < <(machine_ticks)
    LOAD_OWN0=$(own_ticks)
    LOAD_T0=$(date +%s%N)
}
load_report() {
    local busy steal own t1
    read -r busy steal < <(machine_ticks)
    own=$(own_ticks)
    t1=$(date +%s%N)
    python3 -c '
import json, sys
b0, s0, o0, t0, b1, s1, o1, t1, tck, ncpu = map(int, sys.argv[2:])
cap = (t1 - t0) / 1e9 * tck * ncpu
json.dump({"wall_s": (t1 - t0) / 1e9, "busy_ticks": b1 - b0, "own_ticks": o1 - o0,
           "steal_ticks": s1 - s0,
           "foreign_pct": max(0, b1 - b0 - (o1 - o0)) / cap * 100 if cap else None,
           "steal_pct": (s1 - s0) / cap * 100 if cap else None}, open(sys.argv[1], "w"))
' "$1" "$LOAD_BUSY0" "$LOAD_STEAL0" "$LOAD_OWN0" "$LOAD_T0" "$busy" "$steal" "$own" "$t1" \
        "$CLK_TCK" "$(nproc)" || true
}

# Between runs: write back the logs the last run produced (the gateway logs a line per
# request) so the next run does not pay for it, and let the CPUs go idle.
settle() {
    bounded 30 sync || true
    nap 1
}

stream_run() {
    local url=$1 out=$2 n=$3
    local hdr=()
    [[ -n ${BENCH_API_KEY:-} ]] && hdr=("authorization: Bearer $BENCH_API_KEY")
    bounded 150 python3 "$BENCH_DIR/stream_ttfb.py" "$url" "$STREAM_BODY" "$n" "$out" "${hdr[@]}" ||
        log "stream measurement failed for $url (see $out)"
}

# ---------------------------------------------------------------- build
ensure_tools
cd "$ROOT"
declare -A SKIPPED=()
if [[ -n ${BENCH_SKIP_BUILD:-} ]]; then
    log "BENCH_SKIP_BUILD set: using the binaries in $TARGET_DIR/release as they are"
    [[ -x $MOCK_BIN ]] || die "$MOCK_BIN is missing"
    has_target gateway && [[ ! -x $GW_BIN ]] && SKIPPED[gateway]="binary missing"
    has_target floor && [[ ! -x $FLOOR_BIN ]] && SKIPPED[floor]="binary missing"
else
    log "building mock-upstream (release)"
    bounded 1800 cargo build --release -p mock-upstream --bin mock-upstream >&2 ||
        die "mock-upstream build failed"
    if has_target gateway; then
        log "building inference-gateway (release)"
        if ! bounded 1800 cargo build --release --bin inference-gateway >&2; then
            SKIPPED[gateway]="build failed"
            log "gateway build failed: measuring without it"
        fi
    fi
    if has_target floor; then
        log "building the floor relay (release)"
        if ! bounded 1800 cargo build --release --example floor >&2; then
            SKIPPED[floor]="build failed"
            log "floor build failed: measuring without it"
        fi
    fi
fi

# ---------------------------------------------------------------- start everything
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench/results/$STAMP
mkdir -p "$OUT"
TMP=$(mktemp -d /tmp/igw-bench.XXXXXX)
chmod 755 "$TMP" # nginx workers may run as another user

DEADLINE=$(($(date +%s) + BENCH_MAX_SECONDS))

read -r MOCK_PORT MOCK_STREAM_PORT NGX_PORT NGX_STREAM_PORT GW_PORT FLOOR_PORT FLOOR_STREAM_PORT \
    < <(free_ports 7)

log "starting mocks on :$MOCK_PORT (8 chunks) and :$MOCK_STREAM_PORT ($STREAM_CHUNKS chunks)"
"$MOCK_BIN" --port "$MOCK_PORT" --workers 1 --chunks 8 --keep-alive-secs 120 --no-record \
    2>"$TMP/mock.log" &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
"$MOCK_BIN" --port "$MOCK_STREAM_PORT" --workers 1 --chunks "$STREAM_CHUNKS" --keep-alive-secs 120 \
    --no-record 2>"$TMP/mock-stream.log" &
MOCK_STREAM_PID=$!
PIDS+=("$MOCK_STREAM_PID")
wait_http mock "$MOCK_PID" "http://127.0.0.1:$MOCK_PORT/health" || die "mock did not start: $(cat "$TMP/mock.log")"
wait_http mock-stream "$MOCK_STREAM_PID" "http://127.0.0.1:$MOCK_STREAM_PORT/health" ||
    die "stream mock did not start: $(cat "$TMP/mock-stream.log")"

declare -A BASE=() STREAM_BASE=()
BASE[direct]=http://127.0.0.1:$MOCK_PORT
STREAM_BASE[direct]=http://127.0.0.1:$MOCK_STREAM_PORT

NGX_PID=
if has_target nginx; then
    log "starting nginx on :$NGX_PORT and :$NGX_STREAM_PORT"
    sed -e "s|@TMP@|$TMP|g" -e "s|@PORT@|$NGX_PORT|g" -e "s|@STREAM_PORT@|$NGX_STREAM_PORT|g" \
        -e "s|@MOCK_PORT@|$MOCK_PORT|g" -e "s|@MOCK_STREAM_PORT@|$MOCK_STREAM_PORT|g" \
        -e "s|@WORKERS@|${NGINX_WORKERS:-1}|g" \
        "$BENCH_DIR/nginx.conf.tmpl" >"$TMP/nginx.conf"
    cp "$TMP/nginx.conf" "$OUT/nginx.conf"
    nginx -p "$TMP" -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" -g 'daemon off;' \
        2>"$TMP/nginx-stderr.log" &
    NGX_PID=$!
    PIDS+=("$NGX_PID")
    if wait_http nginx "$NGX_PID" "http://127.0.0.1:$NGX_PORT/health" &&
        wait_http nginx-stream "$NGX_PID" "http://127.0.0.1:$NGX_STREAM_PORT/health"; then
        BASE[nginx]=http://127.0.0.1:$NGX_PORT
        STREAM_BASE[nginx]=http://127.0.0.1:$NGX_STREAM_PORT
    else
        cat "$TMP/nginx-stderr.log" "$TMP/nginx-error.log" >&2 2>/dev/null || true
        SKIPPED[nginx]="did not start"
    fi
fi

FLOOR_PID=
if has_target floor && [[ -z ${SKIPPED[floor]:-} ]]; then
    # Two, like nginx's two listeners: one per mock. The stream one is not measured for
    # CPU or RSS.
    log "starting the floor relay on :$FLOOR_PORT and :$FLOOR_STREAM_PORT"
    FLOOR_BIND=127.0.0.1:$FLOOR_PORT FLOOR_UPSTREAM=http://127.0.0.1:$MOCK_PORT \
        "$FLOOR_BIN" >"$TMP/floor.log" 2>&1 &
    FLOOR_PID=$!
    PIDS+=("$FLOOR_PID")
    FLOOR_BIND=127.0.0.1:$FLOOR_STREAM_PORT FLOOR_UPSTREAM=http://127.0.0.1:$MOCK_STREAM_PORT \
        "$FLOOR_BIN" >>"$TMP/floor.log" 2>&1 &
    PIDS+=($!)
    if wait_http floor "$FLOOR_PID" "http://127.0.0.1:$FLOOR_PORT/health" &&
        probe_chat floor "http://127.0.0.1:$FLOOR_PORT"; then
        BASE[floor]=http://127.0.0.1:$FLOOR_PORT
        STREAM_BASE[floor]=http://127.0.0.1:$FLOOR_STREAM_PORT
    else
        SKIPPED[floor]="did not answer (see floor.log)"
    fi
fi

GW_PID=
if has_target gateway && [[ -z ${SKIPPED[gateway]:-} ]]; then
    mkdir -p "$TMP/fixtures"
    cat >"$TMP/fixtures/endpoints.json" <<EOF
[{"model":"resource_server.endpoint","pk":1,"fields":{"endpoint_slug":"bench-mock","cluster":"bench","framework":"mock","model":"mock-model","base_url":"http://127.0.0.1:$MOCK_PORT"}},
 {"model":"resource_server.endpoint","pk":2,"fields":{"endpoint_slug":"bench-mock-stream","cluster":"bench","framework":"mock","model":"mock-stream","base_url":"http://127.0.0.1:$MOCK_STREAM_PORT"}}]
EOF
    cp "$TMP/fixtures/endpoints.json" "$OUT/endpoints.json"
    log "starting gateway on :$GW_PORT"
    # A fresh data directory (no counters or log rows from earlier runs) and the per-user
    # limits lifted (the quota check still runs on every request); both can be set.
    lift_quotas
    # shellcheck disable=SC2086 # GATEWAY_ARGS is a word list on purpose
    GATEWAY__STORAGE__DATA_DIR=${GATEWAY__STORAGE__DATA_DIR:-$TMP/data} \
        GATEWAY__SERVER__BIND=127.0.0.1:$GW_PORT GATEWAY__FIXTURES__DIR=$TMP/fixtures \
        "$GW_BIN" ${GATEWAY_ARGS:-} >"$TMP/gateway.log" 2>&1 &
    GW_PID=$!
    PIDS+=("$GW_PID")
    if wait_http gateway "$GW_PID" "http://127.0.0.1:$GW_PORT/health" &&
        probe_chat gateway "http://127.0.0.1:$GW_PORT"; then
        BASE[gateway]=http://127.0.0.1:$GW_PORT
        STREAM_BASE[gateway]=http://127.0.0.1:$GW_PORT
    else
        kill -0 "$GW_PID" 2>/dev/null || log "gateway exited"
        log "gateway log (tail):"
        tail -n 20 "$TMP/gateway.log" >&2 || true
        SKIPPED[gateway]="did not answer (see gateway.log)"
    fi
fi
probe_chat direct "${BASE[direct]}" || die "the mock does not answer chat completions"
[[ -n ${BASE[nginx]:-} ]] && { probe_chat nginx "${BASE[nginx]}" || die "nginx does not proxy"; }

TARGETS=()
for t in direct nginx floor gateway; do
    has_target "$t" && [[ -n ${BASE[$t]:-} ]] && TARGETS+=("$t")
done
log "measuring: ${TARGETS[*]}; REPEAT=$REPEAT DURATION=${DURATION}s CONNS=$CONNS RATE=$RATE"

# ---------------------------------------------------------------- idle state and metadata
declare -A RSS_IDLE=()
for t in "${TARGETS[@]}"; do
    mapfile -t pids < <(target_pids "$t")
    RSS_IDLE[$t]=$(rss_kb "${pids[@]}")
done
CLK_TCK=$(getconf CLK_TCK)
{
    printf '{"stamp":"%s","repeat":%s,"duration_s":%s,"conns":%s,"rate":%s,' \
        "$STAMP" "$REPEAT" "$DURATION" "$CONNS" "$RATE"
    printf '"stream_requests":%s,"stream_chunks":%s,"clk_tck":%s,"nproc":%s,' \
        "$STREAM_REQUESTS" "$STREAM_CHUNKS" "$CLK_TCK" "$(nproc)"
    printf '"oha":"%s","nginx":"%s","kernel":"%s","git_rev":"%s",' \
        "$(oha --version | head -1)" "$(nginx -v 2>&1 | sed 's/.*\///')" "$(uname -r)" \
        "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)"
    printf '"body":%s,"stream_body":%s,"rss_idle_kb":{' "$BODY" "$STREAM_BODY"
    sep=
    for t in "${TARGETS[@]}"; do
        printf '%s"%s":%s' "$sep" "$t" "${RSS_IDLE[$t]}"
        sep=,
    done
    printf '},"rss_idle_stream_mock_kb":%s,"skipped":{' "$(rss_kb "$MOCK_STREAM_PID")"
    sep=
    for t in "${!SKIPPED[@]}"; do
        printf '%s"%s":"%s"' "$sep" "$t" "${SKIPPED[$t]}"
        sep=,
    done
    printf '}}\n'
} >"$OUT/meta.json"

# ---------------------------------------------------------------- warm-up
log "warm-up"
for t in "${TARGETS[@]}"; do
    DURATION=1 oha_run "${BASE[$t]}$PATH_CHAT" "$TMP/warm-$t.json" -c "$CONNS"
    stream_run "${STREAM_BASE[$t]}$PATH_CHAT" "$TMP/warm-stream-$t.json" 20
done

# ---------------------------------------------------------------- measure
# Interleaved: each kind of measurement runs for every target before the next kind, so
# drift on this noisy machine spreads over all rows; the order of the targets rotates from
# one repeat to the next, so no row always follows the same one.
for rep in $(seq "$REPEAT"); do
    R=$OUT/rep$rep
    ORDER=()
    for i in "${!TARGETS[@]}"; do
        ORDER+=("${TARGETS[$(((i + rep - 1) % ${#TARGETS[@]}))]}")
    done
    for t in "${ORDER[@]}"; do mkdir -p "$R/$t"; done

    for t in "${ORDER[@]}"; do
        log "rep $rep/$REPEAT $t: throughput, $CONNS connections"
        mapfile -t pids < <(target_pids "$t")
        before=$(cpu_ticks "${pids[@]}")
        mock_before=$(cpu_ticks "$MOCK_PID")
        oha_run "${BASE[$t]}$PATH_CHAT" "$R/$t/thr.json" -c "$CONNS"
        after=$(cpu_ticks "${pids[@]}")
        mock_after=$(cpu_ticks "$MOCK_PID")
        printf '{"clk_tck":%s,"cpu_ticks_before":%s,"cpu_ticks_after":%s,"mock_cpu_ticks_before":%s,"mock_cpu_ticks_after":%s,"pids":"%s"' \
            "$CLK_TCK" "$before" "$after" "$mock_before" "$mock_after" "${pids[*]}" >"$R/$t/proc.part"
    done
    for t in "${ORDER[@]}"; do
        log "rep $rep/$REPEAT $t: latency at $RATE req/s"
        oha_run "${BASE[$t]}$PATH_CHAT" "$R/$t/q500.json" -c "$CONNS" -q "$RATE" --latency-correction
    done
    for t in "${ORDER[@]}"; do
        log "rep $rep/$REPEAT $t: latency at 1 connection"
        oha_run "${BASE[$t]}$PATH_CHAT" "$R/$t/c1.json" -c 1
    done
    for t in "${ORDER[@]}"; do
        log "rep $rep/$REPEAT $t: stream TTFB, $STREAM_REQUESTS requests"
        stream_run "${STREAM_BASE[$t]}$PATH_CHAT" "$R/$t/stream.json" "$STREAM_REQUESTS"
    done
    for t in "${ORDER[@]}"; do
        mapfile -t pids < <(target_pids "$t")
        printf '%s,"rss_after_kb":%s}\n' "$(cat "$R/$t/proc.part")" "$(rss_kb "${pids[@]}")" \
            >"$R/$t/proc.json"
        rm -f "$R/$t/proc.part"
    done
done

# ---------------------------------------------------------------- report
for f in mock.log mock-stream.log floor.log gateway.log nginx-error.log; do
    [[ -f $TMP/$f ]] && tail -c 200000 "$TMP/$f" >"$OUT/$f"
done
python3 "$BENCH_DIR/summarize.py" "$OUT" | tee "$OUT/summary.md"
log "raw results: $OUT"
