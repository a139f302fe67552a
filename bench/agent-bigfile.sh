#!/usr/bin/env bash
# A large payload through the agent: publish a file, and measure what the agent's memory
# does while it downloads, verifies, copies and swaps it in (issue 20: "a 1 GiB payload
# reaches disk with the agent's RSS growing < 64 MiB").
#
#   bench/agent-bigfile.sh [size in MiB, default 1024]
#
# Binaries: IMPRINT_SERVER_BIN (default target/release/imprint-server) and IMPRINT_AGENT_BIN
# (default target/release/imprint-agent); debug builds work too (slower, same memory story).
# The server runs against a fresh database on the embedded Postgres with its local object
# store under a scratch IMPRINT_HOME. Prints Markdown for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MIB=${1:-1024}
PORT=3902
TOKEN=bench-token-0123456789abcdefghijk
SCRATCH=${BENCH_DIR:-$PWD/target/bench-agent}
SERVER=${IMPRINT_SERVER_BIN:-target/release/imprint-server}
AGENT=${IMPRINT_AGENT_BIN:-target/release/imprint-agent}
[[ -x $SERVER && -x $AGENT ]] || { echo "build them first: cargo build --release -p imprint-server -p imprint-agent (or set IMPRINT_SERVER_BIN / IMPRINT_AGENT_BIN)" >&2; exit 1; }

source bench/server.sh
rm -rf "$SCRATCH"
mkdir -p "$SCRATCH/agent"
file=$SCRATCH/payload.bin
echo "writing a ${MIB} MiB random file …" >&2
head -c "$((MIB << 20))" /dev/urandom >"$file"
sha=$(sha256sum "$file" | cut -d' ' -f1)

server=
agent=
trap 'kill ${server:-} ${agent:-} 2>/dev/null || true' EXIT
bench_server agent "$PORT" "$SCRATCH/home"
curl -fsS -X POST "http://127.0.0.1:$PORT/api/v1/topics" -H "authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' -d '{"name": "bench.big"}' >/dev/null
# A small first version, so the agent is running and holding something before the big one.
curl -fsS -X POST "http://127.0.0.1:$PORT/api/v1/topics/bench.big/versions" -H "authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' -d '{"data": "small"}' >/dev/null

cat >"$SCRATCH/agent.toml" <<TOML
server = "http://127.0.0.1:$PORT"
token = "$TOKEN"
state_dir = "$SCRATCH/agent/state"
listen = "127.0.0.1:0"

[[subscription]]
topic = "bench.big"
path = "$SCRATCH/agent/out/big.bin"
keep = 1
TOML
RUST_LOG=warn "$AGENT" --config "$SCRATCH/agent.toml" >"$SCRATCH/agent.out" 2>"$SCRATCH/agent.log" &
agent=$!
for _ in $(seq 1 100); do [[ -s $SCRATCH/agent/out/big.bin ]] && break; sleep 0.1; done
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$agent/status"; }
rss_before=$(rss_kb)

secs() { date +%s.%N; }
t0=$(secs)
curl -fsS -o /dev/null -X POST -T "$file" "http://127.0.0.1:$PORT/api/v1/topics/bench.big/versions" \
  -H "authorization: Bearer $TOKEN" -H 'content-type: application/octet-stream' -H "x-imprint-sha256: $sha"
t1=$(secs)
peak=$rss_before
while :; do
  r=$(rss_kb); (( r > peak )) && peak=$r
  if [[ $(stat -c %s "$SCRATCH/agent/out/big.bin" 2>/dev/null || echo 0) == $((MIB << 20)) ]]; then break; fi
  sleep 0.05
done
t2=$(secs)
[[ $(sha256sum "$SCRATCH/agent/out/big.bin" | cut -d' ' -f1) == "$sha" ]] || { echo "the installed file differs" >&2; exit 1; }
hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$agent/status")
publish_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
install_s=$(awk -v a="$t1" -v b="$t2" 'BEGIN { print b - a }')
cat <<MD
| measure | value |
|---|---|
| payload | ${MIB} MiB random bytes, SHA-256 checked on the installed file |
| binaries | $SERVER, $AGENT |
| publish (curl -T) | ${publish_s} s |
| publish → installed by the agent (download, verify, copy into the state dir with hashing, swap) | ${install_s} s |
| agent RSS before / peak while installing | $((rss_before / 1024)) / $((peak / 1024)) MiB (growth $(((peak - rss_before) / 1024)) MiB) |
| agent VmHWM (peak RSS of the process) | $((hwm / 1024)) MiB |
MD
rm -rf "$SCRATCH"
