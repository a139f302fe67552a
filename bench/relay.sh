#!/usr/bin/env bash
# Relays (issue 20 item 6): upstream requests per downstream consumer, and propagation from
# a publish to every consumer through one and two relay hops.
#
#   bench/relay.sh [consumers per relay, default 1000] [publishes, default 20]
#
# Starts the server (fresh database on the embedded Postgres, scratch IMPRINT_HOME), a relay
# on it (relay 1) and a relay on relay 1 (relay 2); N raw HTTP long-polling consumers on each
# relay (bench/relay_driver.py, Python 3 standard library only), four label sets; then
# publishes a small version every second and measures when each consumer's long poll answers
# with it. Binaries: IMPRINT_SERVER_BIN (default target/release/imprint-server) and
# IMPRINT_AGENT_BIN (default target/release/imprint-agent); debug builds work (slower).
# Prints Markdown for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${1:-1000}
PUBLISHES=${2:-20}
PORT=3903
TOKEN=bench-token-0123456789abcdefghijk
SCRATCH=${BENCH_DIR:-$PWD/target/bench-relay}
SERVER=${IMPRINT_SERVER_BIN:-target/release/imprint-server}
AGENT=${IMPRINT_AGENT_BIN:-target/release/imprint-agent}
[[ -x $SERVER && -x $AGENT ]] || { echo "build them first: cargo build --release -p imprint-server -p imprint-agent (or set IMPRINT_SERVER_BIN / IMPRINT_AGENT_BIN)" >&2; exit 1; }
ulimit -n 20000 2>/dev/null || true

source bench/server.sh
rm -rf "$SCRATCH"
mkdir -p "$SCRATCH/r1" "$SCRATCH/r2"
server=
trap 'kill ${server:-} $(cat "$SCRATCH"/r*/pid 2>/dev/null) 2>/dev/null || true' EXIT
bench_server relay "$PORT" "$SCRATCH/home"
DB=$BENCH_DB
RELAY_TOKEN=$(DATABASE_URL=$DB "$SERVER" token create bench-relay --relay 2>/dev/null)
curl -fsS -X POST "http://127.0.0.1:$PORT/api/v1/topics" -H "authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' -d '{"name": "bench.relay"}' >/dev/null

# start_relay NAME UPSTREAM: prints the relay's URL.
start_relay() {
  cat >"$SCRATCH/$1/relay.toml" <<TOML
server = "$2"
state_dir = "$SCRATCH/$1/state"
listen = "127.0.0.1:0"
instance = "bench-$1"

[relay]
token = "$RELAY_TOKEN"
max_polls = 100000
TOML
  RUST_LOG=warn "$AGENT" --config "$SCRATCH/$1/relay.toml" >"$SCRATCH/$1/out" 2>"$SCRATCH/$1/log" &
  echo $! >"$SCRATCH/$1/pid"
  for _ in $(seq 1 100); do [[ -s $SCRATCH/$1/out ]] && break; sleep 0.1; done
  head -1 "$SCRATCH/$1/out" | awk '{print $NF}'
}
R1=$(start_relay r1 "http://127.0.0.1:$PORT")
R2=$(start_relay r2 "$R1")
echo "server http://127.0.0.1:$PORT, relay 1 $R1, relay 2 $R2" >&2

echo "### Relays: $N consumers per hop ($(nproc) cores, $(uname -m), $(basename "$SERVER") / $(basename "$AGENT"))"
echo
python3 bench/relay_driver.py --server "http://127.0.0.1:$PORT" --token "$TOKEN" --topic bench.relay \
  --relay "$R1" --relay "$R2" --consumers "$N" --publishes "$PUBLISHES"
