#!/usr/bin/env bash
# Poll-path throughput, with the consumer audit on and off (issue: audit costs < 10%).
#
#   bench/poll.sh [seconds] [connections]
#
# Uses the release server built by `./dev run` (or `cargo leptos build --release`; a
# plain `cargo build --release` would rebuild everything with other flags), starts it
# against a fresh database on the embedded
# Postgres, creates 10 topics with 3 versions each (one scoped to a region), then runs
# wrk with bench/poll.lua: batch polls of 10 topics from 10,000 simulated instances.
# Prints a Markdown table row per mode; paste them into BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DURATION=${1:-15}
CONNS=${2:-32}
PORT=3900
TOKEN=bench-token-0123456789abcdefghijk

command -v wrk >/dev/null || { echo "installing wrk …" >&2; apt-get install -y wrk >/dev/null; }
eval "$(./dev pg-start)"
BASE=${DATABASE_URL%/*}
[[ -x target/release/imprint-server ]] || { echo "build it first: cargo leptos build --release (or ./dev run)" >&2; exit 1; }

run_mode() {
  local audit=$1
  psql "$BASE/postgres" -qc "DROP DATABASE IF EXISTS imprint_bench WITH (FORCE)" -c "CREATE DATABASE imprint_bench" >&2
  DATABASE_URL="$BASE/imprint_bench" IMPRINT_ADDR=127.0.0.1:$PORT IMPRINT_BOOTSTRAP_TOKEN=$TOKEN IMPRINT_AUDIT=$audit \
    RUST_LOG=warn target/release/imprint-server serve >/tmp/imprint-bench.log 2>&1 &
  local pid=$!
  trap 'kill $pid 2>/dev/null || true' RETURN
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
  for t in $(seq 0 9); do
    curl -fsS -X POST "http://127.0.0.1:$PORT/api/v1/topics" -H "authorization: Bearer $TOKEN" \
      -H 'content-type: application/json' -d "{\"name\": \"bench.topic-$t\"}" >/dev/null
    for v in 1 2 3; do
      local scopes='[{}]'
      [[ $v == 3 ]] && scopes='[{"region": "eu-west-1"}]'
      curl -fsS -X POST "http://127.0.0.1:$PORT/api/v1/topics/bench.topic-$t/versions" -H "authorization: Bearer $TOKEN" \
        -H 'content-type: application/json' \
        -d "{\"data\": \"{\\\"topic\\\": $t, \\\"version\\\": $v, \\\"padding\\\": \\\"$(printf 'x%.0s' $(seq 1 200))\\\"}\", \"scopes\": $scopes}" >/dev/null
    done
  done
  # warm-up, then the measured run
  wrk -t2 -c"$CONNS" -d3s -s bench/poll.lua "http://127.0.0.1:$PORT" >/dev/null
  local out
  out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s bench/poll.lua "http://127.0.0.1:$PORT")
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  local rows=0
  if [[ $audit == true ]]; then
    sleep 2
    rows=$(psql "$BASE/imprint_bench" -tAc "SELECT count(*) FROM consumers")
  fi
  printf '| audit %-5s | %s | %s | %s | %s |\n' "$audit" "$rps" "$p50" "$p99" "$rows"
  kill $pid; wait $pid 2>/dev/null || true
}

echo "| mode | polls/s | p50 | p99 | consumer rows written |"
echo "|---|---|---|---|---|"
for _ in $(seq 1 "${ROUNDS:-3}"); do
  run_mode true
  run_mode false
done
