#!/usr/bin/env bash
# The Consumers tab of a topic with many consumers, server-rendered (no JavaScript): the
# time to the whole page, grouped by a label and not, next to the same page of a topic
# with 100 consumers (a reference measured in the same run).
#
#   bench/consumers.sh [consumers, default 20000] [requests per page, default 20]
#
# Uses the release server built by `./dev run` (or `cargo leptos build --release`),
# started against a fresh database on the embedded Postgres. Consumers are written
# straight into the audit table (labels: 10 regions × 50 clusters, versions 1-3 held,
# some lagging, some failed), then a signed-in curl fetches each page.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${1:-20000}
REQUESTS=${2:-20}
PORT=3903
TOKEN=bench-token-0123456789abcdefghijk
PASSWORD=bench-admin-password
HOST=127.0.0.1:$PORT
SCRATCH=$PWD/target/bench-consumers

eval "$(./dev pg-start)"
BASE=${DATABASE_URL%/*}
[[ -x target/release/imprint-server ]] || { echo "build it first: cargo leptos build --release (or ./dev run)" >&2; exit 1; }
rm -rf "$SCRATCH"; mkdir -p "$SCRATCH/home"

psql "$BASE/postgres" -qc "DROP DATABASE IF EXISTS imprint_bench_consumers WITH (FORCE)" \
  -c "CREATE DATABASE imprint_bench_consumers" >&2
DATABASE_URL="$BASE/imprint_bench_consumers" IMPRINT_ADDR=$HOST IMPRINT_BOOTSTRAP_TOKEN=$TOKEN \
  IMPRINT_ADMIN_PASSWORD=$PASSWORD IMPRINT_HOME="$SCRATCH/home" LEPTOS_SITE_ROOT=target/site \
  RUST_LOG=warn target/release/imprint-server serve >"$SCRATCH/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -fsS "http://$HOST/readyz" >/dev/null 2>&1 && break; sleep 0.2; done

api() { curl -fsS -X "$1" "http://$HOST$2" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' ${3:+-d "$3"} >/dev/null; }
for t in bench.big bench.small; do
  api POST /api/v1/topics "{\"name\": \"$t\"}"
  for v in 1 2 3; do api POST "/api/v1/topics/$t/versions" "{\"data\": \"{\\\"v\\\": $v}\"}"; done
done
seed() { # seed TOPIC COUNT
  psql "$BASE/imprint_bench_consumers" -q <<SQL
INSERT INTO consumers (topic_id, instance, labels, version, version_since, expected_version, first_seen, last_seen,
                       last_applied_version, last_applied_ok, last_error, last_applied_at)
SELECT t.id, 'node-' || g,
       jsonb_build_object('region', 'region-' || (g % 10), 'cluster', 'cluster-' || (g % 50), 'app', 'shop'),
       CASE WHEN g % 20 = 0 THEN 2 ELSE 3 END, now() - interval '1 hour', 3, now() - interval '1 day',
       now() - (g % 600) * interval '1 second',
       CASE WHEN g % 97 = 0 THEN 3 END, CASE WHEN g % 97 = 0 THEN false END,
       CASE WHEN g % 97 = 0 THEN 'bad model' END, CASE WHEN g % 97 = 0 THEN now() END
FROM topics t, generate_series(1, $2) g WHERE t.name = '$1';
SQL
}
seed bench.big "$N"
seed bench.small 100

# Sign in as a browser without JavaScript would.
jar=$SCRATCH/cookies
action=$(curl -fsS -c "$jar" "http://$HOST/login" | grep -o 'action="/console/fn/sign_in[^"]*"' | head -1 | cut -d'"' -f2)
curl -fsS -b "$jar" -c "$jar" -o /dev/null -H "origin: http://$HOST" -H 'accept: text/html' \
  --data-urlencode username=admin --data-urlencode password=$PASSWORD --data-urlencode next=/ "http://$HOST$action"

# time_page PATH: prints "p50 p95 max" in ms over REQUESTS fetches (after one warm-up).
time_page() {
  local path=$1 times=()
  curl -fsS -b "$jar" -o "$SCRATCH/page.html" "http://$HOST$path"
  grep -q 'table class="consumers"' "$SCRATCH/page.html" || { echo "not the consumers page: $path" >&2; exit 1; }
  for _ in $(seq 1 "$REQUESTS"); do
    times+=("$(curl -fsS -b "$jar" -o /dev/null -w '%{time_total}' "http://$HOST$path")")
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 * 1000 } END {
    printf "%.0f | %.0f | %.0f", a[int((NR + 1) / 2)], a[int(NR * 0.95 + 0.5)], a[NR] }'
}

echo "| page | consumers | p50 ms | p95 ms | max ms |"
echo "|---|---|---|---|---|"
for spec in "bench.small 100" "bench.big $N"; do
  set -- $spec
  echo "| Consumers tab | $2 | $(time_page "/topics/$1/consumers") |"
  echo "| Consumers tab, grouped by region | $2 | $(time_page "/topics/$1/consumers?group_by=region") |"
  echo "| Consumers tab, lagging only | $2 | $(time_page "/topics/$1/consumers?lagging=true") |"
done
rm -rf "$SCRATCH"
