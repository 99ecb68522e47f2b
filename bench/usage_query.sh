#!/usr/bin/env bash
# How fast `/admin/usage` answers on a large request log, on SQLite and on PostgreSQL: the
# admin console's charts (bucket=minute|hour|day) and the plain per-model report, over the
# whole log and for one user and one org.
#
# usage: bench/usage_query.sh
# env: ROWS=1000000 (rows in the log, spread over the last 30 days: 1,000 users in 20 orgs,
#      8 models, 2% errors), REPEAT=5 (timed calls per query; the median is printed),
#      DATABASE_TEST_URL (a PostgreSQL server the script may create a database on; without
#      it only SQLite is measured), EXTRA_SQL (run on both after the fill: an index to
#      try, say).
# Needs the release binary (cargo build --release --bin inference-gateway), sqlite3, psql
# (for PostgreSQL), curl and python3. The log is filled with SQL (not through the gateway),
# then a gateway on 127.0.0.1 serves it; everything stops and is removed on exit.
set -euo pipefail
ROWS=${ROWS:-1000000}
REPEAT=${REPEAT:-5}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/inference-gateway
[[ -x $BIN ]] || { echo "build first: cargo build --release --bin inference-gateway" >&2; exit 1; }
for tool in sqlite3 curl python3; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done

TMP=$(mktemp -d /tmp/igw-usage.XXXXXX)
GW=""
PGDB=""
cleanup() {
    [[ -n $GW ]] && kill "$GW" 2>/dev/null && wait "$GW" 2>/dev/null
    [[ -n $PGDB ]] && psql "$DATABASE_TEST_URL" -qc "DROP DATABASE IF EXISTS $PGDB" >/dev/null 2>&1
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export BENCH_ADMIN_KEY=bench-admin-key-0123456789abcdef
NOW_MS=$(($(date +%s) * 1000))
SPAN_MS=$((30 * 86400 * 1000))

# The rows, as one INSERT ... SELECT over a generated sequence (`$1` is that sequence's
# FROM clause, `$2` its counter column). Spread evenly over the last 30 days.
fill_sql() {
    cat <<SQL
INSERT INTO request_log (id, request_id, created_at, user_id, org_id, model, cluster,
  framework, target, route, status, error_code, prompt_tokens, completion_tokens,
  total_tokens, tokens_estimated, latency_ms, ttft_ms, client_ip, stream, attempts, ending)
SELECT 'row-' || $2, 'req-' || $2, $NOW_MS - $SPAN_MS + ($2 * $SPAN_MS / $ROWS),
  'user' || ($2 % 1000), 'org' || ($2 % 20), 'model-' || ($2 % 8), 'local', 'vllm',
  'target-' || ($2 % 8), 'chat', CASE WHEN $2 % 50 = 0 THEN 502 ELSE 200 END,
  CASE WHEN $2 % 50 = 0 THEN 'upstream_error' END, 20 + $2 % 100, 50 + $2 % 200,
  70 + $2 % 100 + $2 % 200, false, 120.5, 30.25, '127.0.0.1', ($2 % 2 = 0), 1, 'complete'
FROM $1;
SQL
}

serve() {
    GATEWAY__DATABASE__URL=$1 GATEWAY__SERVER__BIND=127.0.0.1:$PORT \
        GATEWAY__AUTH__ADMIN_KEY_ENV=BENCH_ADMIN_KEY GATEWAY__STORAGE__DATA_DIR=$TMP/data \
        "$BIN" >/dev/null 2>"$TMP/gateway.err" &
    GW=$!
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$PORT/health" >/dev/null && return 0
        sleep 0.1
    done
    cat "$TMP/gateway.err" >&2
    exit 1
}

stop() {
    kill -INT "$GW"
    wait "$GW" 2>/dev/null || true
    GW=""
}

# Median wall time of REPEAT calls to one query, after one untimed call (warm cache).
measure() {
    local label=$1 query=$2 out
    out=$(curl -fsS -H "Authorization: Bearer $BENCH_ADMIN_KEY" \
        "http://127.0.0.1:$PORT/admin/usage?$query")
    local times=()
    for _ in $(seq "$REPEAT"); do
        times+=("$(curl -fsS -o /dev/null -w '%{time_total}' \
            -H "Authorization: Bearer $BENCH_ADMIN_KEY" \
            "http://127.0.0.1:$PORT/admin/usage?$query")")
    done
    python3 - "$label" "$query" "$out" "${times[@]}" <<'PY'
import json, statistics, sys
label, query, out, times = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4:]
ms = statistics.median(float(t) for t in times) * 1000
print(f"  {label:<8} {query:<34} {ms:8.1f} ms   requests={out['totals']['requests']}")
PY
}

queries() {
    measure "$1" "bucket=minute"
    measure "$1" "bucket=hour"
    measure "$1" "bucket=day"
    measure "$1" "bucket=day&user=user17"
    measure "$1" "bucket=day&org=org3"
    measure "$1" "bucket=hour&user=user17"
    measure "$1" ""
}

echo "== SQLite, $ROWS rows"
DB=$TMP/usage.db
GATEWAY__DATABASE__URL=sqlite://$DB "$BIN" migrate >/dev/null
start=$(date +%s)
{
    echo "WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n + 1 < $ROWS)"
    fill_sql seq n
    echo "${EXTRA_SQL:-}"
} | sqlite3 "$DB"
echo "  filled in $(($(date +%s) - start)) s ($(du -h "$DB" | cut -f1))"
serve "sqlite://$DB"
queries sqlite
stop

if [[ -n ${DATABASE_TEST_URL:-} ]] && command -v psql >/dev/null; then
    echo "== PostgreSQL, $ROWS rows"
    PGDB=igw_usage_bench_$$
    psql "$DATABASE_TEST_URL" -qc "CREATE DATABASE $PGDB" >/dev/null
    PGURL=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$DATABASE_TEST_URL" "$PGDB")
    GATEWAY__DATABASE__URL=$PGURL "$BIN" migrate >/dev/null
    start=$(date +%s)
    { fill_sql "generate_series(0, $ROWS - 1) AS g(n)" n; echo "${EXTRA_SQL:-}"; } | psql "$PGURL" -q
    psql "$PGURL" -qc "VACUUM ANALYZE request_log" >/dev/null
    echo "  filled in $(($(date +%s) - start)) s"
    serve "$PGURL"
    queries postgres
    stop
else
    echo "== PostgreSQL not measured: DATABASE_TEST_URL is not set"
fi
