#!/usr/bin/env bash
# gRPC Watch fan-out beside the HTTP long poll (issue 21): N Watch streams (distinct
# instances, over WATCH_CONNECTIONS HTTP/2 connections) on one topic, then one publish:
# every stream's answer timed from the publish request's start (p50/p99/max), and the
# server's RSS per stream; then the same with N HTTP long polls (imprint-loadgen park, one
# connection each) on the same server, for the side-by-side figures.
#
#   bench/grpc.sh                    # WATCH_STREAMS=10000 by default
#   WATCH_STREAMS=2000 bench/grpc.sh
#
# Uses the release server ($IMPRINT_SERVER_BIN, default target/release/imprint-server:
# `cargo build --release -p imprint-server`) on a fresh database of the embedded Postgres
# (bench/server.sh), roles api,publish,worker, IMPRINT_MAX_LONG_POLLS=20000, no per-address
# caps (IMPRINT_MAX_CONNS_PER_IP=0: the HTTP half opens one connection per poll), ulimit -n
# 40000; the load generator bench/loadgen (built when missing, CARGO_TARGET_DIR=
# $LOADGEN_TARGET_DIR, default /work/bench-target). Everything on loopback.
# Knobs: WATCH_STREAMS (10000), WATCH_CONNECTIONS (20), ROUNDS (3), HTTP_POLLS
# (= WATCH_STREAMS; 0 skips the HTTP half), FIRST (watch | http: which half runs first in a
# round; the first round's RSS per stream is the clean one), BENCH_PORT (3920),
# BENCH_GRPC_PORT (3921).
{
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
SERVER=${IMPRINT_SERVER_BIN:-target/release/imprint-server}
[[ $SERVER == /* ]] || SERVER=$ROOT/$SERVER
LOADGEN_TARGET_DIR=${LOADGEN_TARGET_DIR:-/work/bench-target}
LOADGEN=${LOADGEN_BIN:-$LOADGEN_TARGET_DIR/release/imprint-loadgen}
STREAMS=${WATCH_STREAMS:-10000}
CONNS=${WATCH_CONNECTIONS:-20}
ROUNDS=${ROUNDS:-3}
HTTP_POLLS=${HTTP_POLLS:-$STREAMS}
PORT=${BENCH_PORT:-3920}
GRPC_PORT=${BENCH_GRPC_PORT:-3921}
URL=http://127.0.0.1:$PORT
TOKEN=grpc-bench-token-0123456789abcdefghij
SCRATCH=${GRPC_SCRATCH:-/tmp/imprint-grpc-bench}

[[ -x $SERVER ]] || { echo "no release server at $SERVER (cargo build --release -p imprint-server)" >&2; exit 1; }
if [[ ! -x $LOADGEN || bench/loadgen/src/watch.rs -nt $LOADGEN ]]; then
  CARGO_TARGET_DIR=$LOADGEN_TARGET_DIR cargo build --release --manifest-path bench/loadgen/Cargo.toml >&2
fi
ulimit -n 40000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
rm -rf "$SCRATCH" && mkdir -p "$SCRATCH"
# shellcheck source=bench/server.sh
source bench/server.sh
server=
trap '[[ -n $server ]] && kill "$server" 2>/dev/null; wait 2>/dev/null || true' EXIT
export IMPRINT_GRPC_ADDR=127.0.0.1:$GRPC_PORT IMPRINT_ROLES=api,publish,worker IMPRINT_MAX_LONG_POLLS=20000 IMPRINT_MAX_CONNS_PER_IP=0 \
  IMPRINT_MAX_LONG_POLLS_PER_ADDRESS=20000
bench_server grpc "$PORT" "$SCRATCH/home"
api() {
  curl -fsS -X "$1" "$URL$2" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' --data "$3" >/dev/null
}
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GB; load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
kv() { grep "^$1=" "$2" | cut -d= -f2; }
rows=()
watch_round() { # watch_round ROUND
  local topic=bench.watch.$1 out=$SCRATCH/watch-$1.txt
  api POST /api/v1/topics "{\"name\": \"$topic\", \"owner\": \"bench\"}"
  api POST "/api/v1/topics/$topic/versions" '{"data": "v1"}'
  "$LOADGEN" watch --url "$URL" --grpc "http://127.0.0.1:$GRPC_PORT" --topic "$topic" --streams "$STREAMS" \
    --connections "$CONNS" --token "$TOKEN" --pid "$server" >"$out"
  cat "$out" >&2
  rows+=("| gRPC Watch, round $1 | $(kv started "$out") | $(kv p50_ms "$out") | $(kv p99_ms "$out") | $(kv max_ms "$out") | $(kv rss_per_stream_bytes "$out") | $(kv unanswered "$out") |")
  sleep 2
}
http_round() { # http_round ROUND
  [[ $HTTP_POLLS -gt 0 ]] || return 0
  local topic=bench.park.$1 out=$SCRATCH/park-$1.txt
  api POST /api/v1/topics "{\"name\": \"$topic\", \"owner\": \"bench\"}"
  api POST "/api/v1/topics/$topic/versions" '{"data": "v1"}'
  "$LOADGEN" park --url "$URL" --topic "$topic" --polls "$HTTP_POLLS" --token "$TOKEN" --pid "$server" >"$out"
  cat "$out" >&2
  rows+=("| HTTP long poll, round $1 | $(kv polls "$out") | $(kv p50_ms "$out") | $(kv p99_ms "$out") | $(kv max_ms "$out") | $(kv rss_per_poll_bytes "$out") | $(kv unanswered "$out") |")
  sleep 2
}
# The RSS per stream/poll of the first round is the clean one (later rounds reuse memory the
# allocator kept): FIRST=http runs the HTTP half first in every round.
for r in $(seq 1 "$ROUNDS"); do
  if [[ ${FIRST:-watch} == http ]]; then
    http_round "$r"
    watch_round "$r"
  else
    watch_round "$r"
    http_round "$r"
  fi
done
echo "| what | held | p50 ms | p99 ms | max ms | server RSS per held stream/poll (bytes) | unanswered |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
exit 0
}
