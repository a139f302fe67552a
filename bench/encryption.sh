#!/usr/bin/env bash
# The cost of encryption (docs/encryption.md): publish and download of one payload through
# the CLI, plain vs end-to-end encrypted (age, one X25519 recipient) vs encrypted at rest by
# the server (AES-256-GCM chunks under a data key of the local keyring).
#
#   bench/encryption.sh [size in MiB, default 1024]
#
# Binaries: IMPRINT_SERVER_BIN (default target/release/imprint-server) and IMPRINT_CLI_BIN
# (default target/release/imprint); age-keygen (Debian's `age` package) makes the key.
# The server runs against a fresh database on the embedded Postgres with its local object
# store under a scratch IMPRINT_HOME. Prints Markdown for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MIB=${1:-1024}
PORT=3905
TOKEN=bench-token-0123456789abcdefghijk
SCRATCH=${BENCH_DIR:-$PWD/target/bench-encryption}
SERVER=${IMPRINT_SERVER_BIN:-target/release/imprint-server}
CLI=${IMPRINT_CLI_BIN:-target/release/imprint}
[[ -x $SERVER && -x $CLI ]] || { echo "build them first: cargo build --release -p imprint-server -p imprint-cli (or set IMPRINT_SERVER_BIN / IMPRINT_CLI_BIN)" >&2; exit 1; }
command -v age-keygen >/dev/null || { echo "age-keygen is missing: apt-get install -y age" >&2; exit 1; }

source bench/server.sh
rm -rf "$SCRATCH"
mkdir -p "$SCRATCH"
file=$SCRATCH/payload.bin
echo "writing a ${MIB} MiB random file …" >&2
head -c "$((MIB << 20))" /dev/urandom >"$file"
age-keygen -o "$SCRATCH/key.txt" 2>/dev/null
recipient=$(age-keygen -y "$SCRATCH/key.txt")

server=
trap 'kill ${server:-} 2>/dev/null || true' EXIT
"$SERVER" keys --home "$SCRATCH/home" create bench >/dev/null
bench_server encryption "$PORT" "$SCRATCH/home"
export IMPRINT_URL=http://127.0.0.1:$PORT IMPRINT_TOKEN=$TOKEN
"$CLI" topics create bench.plain --max-size 20GiB >/dev/null
"$CLI" topics create bench.e2e --max-size 20GiB --recipient "$recipient" >/dev/null
curl -fsS -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' "$IMPRINT_URL/api/v1/topics" \
  -d '{"name": "bench.at_rest", "max_size_bytes": 21474836480, "encryption": {"mode": "at_rest", "key": "bench"}}' >/dev/null

seconds() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
rate() { echo "scale=1; $MIB / $1" | bc; }

pub_plain=$(seconds "$CLI" publish bench.plain "$file" -q)
pub_e2e=$(seconds "$CLI" publish bench.e2e "$file" -q)
get_plain=$(seconds "$CLI" get bench.plain --version 1 -o "$SCRATCH/out.plain")
get_e2e=$(seconds "$CLI" get bench.e2e --version 1 --identity "$SCRATCH/key.txt" -o "$SCRATCH/out.e2e")
pub_rest=$(seconds "$CLI" publish bench.at_rest "$file" -q)
get_rest=$(seconds "$CLI" get bench.at_rest --version 1 -o "$SCRATCH/out.rest")
for out in plain e2e rest; do
  cmp -s "$file" "$SCRATCH/out.$out" || { echo "the $out download differs from the payload" >&2; exit 1; }
done

echo "| ${MIB} MiB through the CLI (local object store) | publish s (MiB/s) | download s (MiB/s) |"
echo "|---|---|---|"
printf '| plain | %.1f (%s) | %.1f (%s) |\n' "$pub_plain" "$(rate "$pub_plain")" "$get_plain" "$(rate "$get_plain")"
printf '| end-to-end (age, 1 recipient) | %.1f (%s) | %.1f (%s) |\n' "$pub_e2e" "$(rate "$pub_e2e")" "$get_e2e" "$(rate "$get_e2e")"
printf '| at rest (AES-256-GCM, local keyring) | %.1f (%s) | %.1f (%s) |\n' "$pub_rest" "$(rate "$pub_rest")" "$get_rest" "$(rate "$get_rest")"
echo
echo "machine: $(nproc) cores, $(uname -m); $("$CLI" --version 2>/dev/null || echo imprint)"
