#!/usr/bin/env bash
# Fair serving under overload (issue 23): one application floods the server with short polls
# (FLOOD_CONNS connections, closed loop, retrying at once on 429 — it ignores Retry-After)
# while another polls at a modest CALM_RATE; the calm application's p50/p99 with the flood
# and without it (the baseline), and the flood's answers by status. Then the same flood with
# fair serving off (IMPRINT_FAIR_ENABLED=false), for comparison. Then BURST identical
# concurrent version lists (one connection each): the Postgres queries they cost
# (imprint_coalesced_queries_total).
#
#   bench/fairness.sh
#   FLOOD_CONNS=256 CALM_RATE=100 SECONDS_EACH=30 bench/fairness.sh
#
# Uses the release server ($IMPRINT_SERVER_BIN, default target/release/imprint-server:
# `cargo build --release -p imprint-server`) on a fresh database of the embedded Postgres
# (bench/server.sh), roles api,publish,worker, no per-address connection cap; the load
# generator bench/loadgen (`fair` and `burst`; built when missing or older than its source,
# CARGO_TARGET_DIR=$LOADGEN_TARGET_DIR, default /work/bench-target). Everything on loopback:
# the load generator shares the machine's cores with the server.
# Knobs: FLOOD_CONNS (128), CALM_RATE (50 polls/s), CALM_CONNS (4), SECONDS_EACH (20),
# BURST (1000), BENCH_PORT (3930), SERVER_CPUS (0) and LOADGEN_CPUS (1): on a machine of two
# or more cores the server and the load generator are pinned to different cores (taskset), so
# what the flood costs the calm application is the server's doing, not the load generator's
# taking the server's core (`SERVER_CPUS= LOADGEN_CPUS=` shares every core, as before).
{
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
SERVER=${IMPRINT_SERVER_BIN:-target/release/imprint-server}
[[ $SERVER == /* ]] || SERVER=$ROOT/$SERVER
LOADGEN_TARGET_DIR=${LOADGEN_TARGET_DIR:-/work/bench-target}
LOADGEN=${LOADGEN_BIN:-$LOADGEN_TARGET_DIR/release/imprint-loadgen}
FLOOD_CONNS=${FLOOD_CONNS:-128}
CALM_RATE=${CALM_RATE:-50}
CALM_CONNS=${CALM_CONNS:-4}
SECONDS_EACH=${SECONDS_EACH:-20}
BURST=${BURST:-1000}
PORT=${BENCH_PORT:-3930}
if (( $(nproc) >= 2 )) && command -v taskset >/dev/null; then
  SERVER_CPUS=${SERVER_CPUS-0} LOADGEN_CPUS=${LOADGEN_CPUS-1}
else
  SERVER_CPUS='' LOADGEN_CPUS=''
fi
SERVER_WRAPPER=${SERVER_CPUS:+taskset -c $SERVER_CPUS}
LOADGEN_WRAPPER=${LOADGEN_CPUS:+taskset -c $LOADGEN_CPUS}
URL=http://127.0.0.1:$PORT
TOKEN=fair-bench-token-0123456789abcdefghijk
SCRATCH=${FAIR_SCRATCH:-/tmp/imprint-fair-bench}

[[ -x $SERVER ]] || { echo "no release server at $SERVER (cargo build --release -p imprint-server)" >&2; exit 1; }
if [[ ! -x $LOADGEN || bench/loadgen/src/fair.rs -nt $LOADGEN ]]; then
  CARGO_TARGET_DIR=$LOADGEN_TARGET_DIR cargo build --release --manifest-path bench/loadgen/Cargo.toml >&2
fi
ulimit -n 40000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
rm -rf "$SCRATCH" && mkdir -p "$SCRATCH"
# shellcheck source=bench/server.sh
source bench/server.sh
server=
trap '[[ -n $server ]] && kill "$server" 2>/dev/null; wait 2>/dev/null || true' EXIT
export IMPRINT_ROLES=api,publish,worker IMPRINT_MAX_CONNS_PER_IP=0
api() {
  curl -fsS -X "$1" "$URL$2" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' --data "$3" >/dev/null
}
kv() { grep "^$1=" "$2" | cut -d= -f2; }
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GB; load $(cut -d' ' -f1-3 /proc/loadavg); server on cpus ${SERVER_CPUS:-all}, load generator on cpus ${LOADGEN_CPUS:-all}" >&2
rows=()

# start_server NAME: a fresh server and database; topic fair.cfg with one version, two
# consumer tokens (calm, flood).
start_server() {
  [[ -n $server ]] && { kill "$server"; wait "$server" 2>/dev/null || true; server=; }
  bench_server "$1" "$PORT" "$SCRATCH/$1/home"
  api POST /api/v1/topics '{"name": "fair.cfg", "owner": "bench"}'
  api POST /api/v1/topics/fair.cfg/versions '{"data": "v1"}'
  CALM=$(DATABASE_URL=$BENCH_DB IMPRINT_HOME=$SCRATCH/$1/home "$SERVER" token create calm --consumer 2>/dev/null)
  FLOOD=$(DATABASE_URL=$BENCH_DB IMPRINT_HOME=$SCRATCH/$1/home "$SERVER" token create flood --consumer 2>/dev/null)
}
# measure LABEL FLOOD_CONNS
measure() {
  local out=$SCRATCH/$1.txt
  # Halfway through a flood: the buckets' limits and requests in flight, from /metrics.
  if (( $2 > 0 )); then
    (sleep "$((SECONDS_EACH / 2))"; curl -fsS "$URL/metrics" | grep -E '^imprint_fair_(limit|in_flight|runtime)' | sed "s/^/$1: halfway: /" >&2 || true) &
  fi
  $LOADGEN_WRAPPER "$LOADGEN" fair --url "$URL" --topic fair.cfg --calm-token "$CALM" --flood-token "$FLOOD" \
    --calm-rate "$CALM_RATE" --calm-conns "$CALM_CONNS" --flood-conns "$2" --seconds "$SECONDS_EACH" >"$out"
  sed "s/^/$1: /" "$out" >&2
  rows+=("| $1 | $(kv calm_requests "$out") | $(kv calm_p50_ms "$out") | $(kv calm_p99_ms "$out") | $(kv calm_max_ms "$out") | $(kv calm_timed_out_or_failed "$out") | $(kv flood_requests_per_s "$out") | $(kv flood_ok_per_s "$out") | $(kv flood_429 "$out") | $(kv flood_timed_out_or_failed "$out") |")
}

start_server fair
measure "fair serving on, calm alone" 0
measure "fair serving on, with the flood" "$FLOOD_CONNS"
measure "fair serving on, calm alone again" 0
burst_out=$SCRATCH/burst.txt
$LOADGEN_WRAPPER "$LOADGEN" burst --url "$URL" --path /api/v1/topics/fair.cfg/versions --requests "$BURST" >"$burst_out"
sed "s/^/burst: /" "$burst_out" >&2
export IMPRINT_FAIR_ENABLED=false
start_server unfair
measure "fair serving off, calm alone" 0
measure "fair serving off, with the flood" "$FLOOD_CONNS"

echo
echo "Server on cpus ${SERVER_CPUS:-all}, load generator on cpus ${LOADGEN_CPUS:-all}."
echo "Calm: $CALM_RATE polls/s over $CALM_CONNS connections; flood: $FLOOD_CONNS connections, closed loop, retrying at once; ${SECONDS_EACH} s each."
echo
echo "| run | calm polls | calm p50 ms | calm p99 ms | calm max ms | calm timed out | flood req/s | flood served/s | flood 429s | flood timed out |"
echo "|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "$BURST identical concurrent GET /api/v1/topics/fair.cfg/versions: $(kv ok "$burst_out") answered 200 in $(kv wall_ms "$burst_out") ms, $(kv postgres_queries "$burst_out") Postgres queries."
exit 0
}
