#!/usr/bin/env bash
# A large payload through the object store: publish and download a file with curl, and
# compare with `cp` of the same file on the same disk, in the same run.
#
#   bench/objects.sh [size in MiB, default 1024]
#
# Uses the release server built by `./dev run` (or `cargo leptos build --release`),
# started against a fresh database on the embedded Postgres with the default local
# object store under a scratch IMPRINT_HOME on this disk. Measures:
# - publish (curl -T, streamed) and download (curl -o) wall time → MB/s, next to `cp`;
# - the server's RSS before and its peak during each transfer (sampled every 50 ms,
#   and VmHWM at the end): the growth must stay flat whatever the size.
# Prints Markdown for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MIB=${1:-1024}
PORT=3901
TOKEN=bench-token-0123456789abcdefghijk
SCRATCH=${BENCH_DIR:-$PWD/target/bench-objects}

eval "$(./dev pg-start)"
BASE=${DATABASE_URL%/*}
[[ -x target/release/imprint-server ]] || { echo "build it first: cargo leptos build --release (or ./dev run)" >&2; exit 1; }

rm -rf "$SCRATCH"
mkdir -p "$SCRATCH/home"
file=$SCRATCH/payload.bin
echo "writing a ${MIB} MiB random file …" >&2
head -c "$((MIB << 20))" /dev/urandom >"$file"
sha=$(sha256sum "$file" | cut -d' ' -f1)
sync

secs() { date +%s.%N; }
rate() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / s / 1048576 }'; }

# cp on the same disk, as the reference (page cache warm for both: the file was just written).
t0=$(secs); cp "$file" "$SCRATCH/copy.bin"; sync; t1=$(secs)
cp_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
rm -f "$SCRATCH/copy.bin"

psql "$BASE/postgres" -qc "DROP DATABASE IF EXISTS imprint_bench_objects WITH (FORCE)" \
  -c "CREATE DATABASE imprint_bench_objects" >&2
DATABASE_URL="$BASE/imprint_bench_objects" IMPRINT_ADDR=127.0.0.1:$PORT IMPRINT_BOOTSTRAP_TOKEN=$TOKEN \
  IMPRINT_HOME="$SCRATCH/home" RUST_LOG=warn target/release/imprint-server serve >"$SCRATCH/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS -X POST "http://127.0.0.1:$PORT/api/v1/topics" -H "authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' -d '{"name": "bench.dataset"}' >/dev/null

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$pid/status"; }
# peak_during CMD…: runs CMD while sampling the server's RSS; prints the peak (KiB).
peak_during() {
  local peak_file=$SCRATCH/peak
  echo 0 >"$peak_file"
  ( peak=0; while :; do r=$(rss_kb); (( r > peak )) && { peak=$r; echo "$peak" >"$peak_file"; }; sleep 0.05; done ) &
  local sampler=$!
  "$@"
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
  cat "$peak_file"
}

rss_before=$(rss_kb)
t0=$(secs)
publish_peak=$(peak_during curl -fsS -o "$SCRATCH/published.json" -X POST -T "$file" \
  "http://127.0.0.1:$PORT/api/v1/topics/bench.dataset/versions" -H "authorization: Bearer $TOKEN" \
  -H 'content-type: application/octet-stream' -H "x-imprint-sha256: $sha")
sync
t1=$(secs)
publish_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
grep -q '"storage":"object"' "$SCRATCH/published.json" || { cat "$SCRATCH/published.json" >&2; exit 1; }

t0=$(secs)
download_peak=$(peak_during curl -fsS -o "$SCRATCH/downloaded.bin" \
  "http://127.0.0.1:$PORT/api/v1/topics/bench.dataset/versions/1/data" -H "authorization: Bearer $TOKEN")
sync
t1=$(secs)
download_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
[[ $(sha256sum "$SCRATCH/downloaded.bin" | cut -d' ' -f1) == "$sha" ]] || { echo "download differs" >&2; exit 1; }
hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")

bytes=$((MIB << 20))
cat <<EOF
| measure | value |
|---|---|
| payload | ${MIB} MiB random bytes, SHA-256 verified both ways |
| \`cp\` on the same disk | ${cp_s} s ($(rate "$bytes" "$cp_s") MiB/s) |
| publish (curl -T, streamed to the local object store) | ${publish_s} s ($(rate "$bytes" "$publish_s") MiB/s, $(awk -v a="$cp_s" -v b="$publish_s" 'BEGIN { printf "%.2f", a / b }')× cp) |
| download (curl -o) | ${download_s} s ($(rate "$bytes" "$download_s") MiB/s, $(awk -v a="$cp_s" -v b="$download_s" 'BEGIN { printf "%.2f", a / b }')× cp) |
| server RSS before | $((rss_before / 1024)) MiB |
| server RSS peak during publish / download | $((publish_peak / 1024)) / $((download_peak / 1024)) MiB (growth $(((publish_peak - rss_before) / 1024)) / $(((download_peak - rss_before) / 1024)) MiB) |
| server VmHWM (peak RSS of the process) | $((hwm / 1024)) MiB |
EOF
rm -rf "$SCRATCH"
