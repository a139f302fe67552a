#!/usr/bin/env bash
# Issue 22: each client's idle CPU and memory with 100 subscribed topics, and the
# propagation time from a publish to the client's listener, all four clients in one run
# on the same server binary and machine.
#
#   bench/clients.sh [idle seconds, default 60] [publishes, default 30]
#
# The Rust client runs as a release example (client/examples/idle_and_propagation.rs)
# against a server this script starts; the Python, TypeScript and Go benches start theirs
# as their tests do (clients/python/bench/, clients/typescript/bench/, clients/go/bench_test.go).
# Needs what `./dev test` installs (the pytest venv, the TypeScript build, Go). Server
# binary: IMPRINT_SERVER_BIN (default target/debug/imprint-server). Output: each client's
# figures, then where the raw output is.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
IDLE_S=${1:-60}
ROUNDS=${2:-30}
PORT=3905
TOKEN=bench-token-0123456789abcdefghijk
SCRATCH=${BENCH_DIR:-$PWD/target/bench-clients}
SERVER=$(realpath "${IMPRINT_SERVER_BIN:-target/debug/imprint-server}")
[[ -x $SERVER ]] || { echo "build it first: cargo build -p imprint-server (or set IMPRINT_SERVER_BIN)" >&2; exit 1; }
RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }--cfg erase_components" \
  cargo build --release -q -p imprint-client --example idle_and_propagation >&2

source bench/server.sh
rm -rf "$SCRATCH"
# The Rust client's server: a fresh database, a scratch home.
server=
trap 'kill ${server:-} 2>/dev/null || true' EXIT
bench_server clients "$PORT" "$SCRATCH/home"
export IMPRINT_SERVER_BIN=$SERVER IMPRINT_TEST_PG_URL=$BENCH_PG/postgres IMPRINT_TEST_PSQL=$PSQL_BIN

echo "== rust" >&2
IMPRINT_URL=http://127.0.0.1:$PORT IMPRINT_TOKEN=$TOKEN IDLE_S=$IDLE_S ROUNDS=$ROUNDS \
  target/release/examples/idle_and_propagation >"$SCRATCH/rust.json"
kill "$server" && wait "$server" 2>/dev/null || true
server=

echo "== python" >&2
IDLE_S=$IDLE_S ROUNDS=$ROUNDS .imprint/pyclient-venv/bin/python clients/python/bench/idle_and_propagation.py \
  >"$SCRATCH/python.json"

echo "== typescript" >&2
(cd clients/typescript && IDLE_S=$IDLE_S ROUNDS=$ROUNDS node bench/idle-and-propagation.mjs) >"$SCRATCH/typescript.json"

echo "== go" >&2
(cd clients/go && IMPRINT_GO_BENCH=1 IMPRINT_GO_BENCH_IDLE_S=$IDLE_S IMPRINT_GO_BENCH_PUBLISHES=$ROUNDS \
  GOFLAGS=-mod=mod GOPROXY=off GOCACHE=$PWD/../../.imprint/go-build \
  go test -count=1 -run TestRealBenchIdleAndPropagation -v .) >"$SCRATCH/go.txt"

for c in rust python typescript; do
  echo "-- $c"
  cat "$SCRATCH/$c.json"
done
echo "-- go"
grep -E "go client|idle|propagation" "$SCRATCH/go.txt"
echo "(raw output in $SCRATCH)"
