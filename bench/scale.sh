#!/usr/bin/env bash
# Scale benchmarks (the scale issue): one Markdown row per goal, measured in one run.
#
#   bench/scale.sh [parked] [cpu] [publish] [bigstate] [console] [wakeups]   (default: all)
#
#   parked    publish → 10 000 parked long polls answered (p99 from the publish request's
#             start; one connection per poll, median of PARK_ROUNDS rounds) and server RSS
#             per parked long poll                                  (rows 1, 2)
#   cpu       no-change poll of 7 topics, and poll with one ≤ 1 KB inline update: server CPU
#             per request ÷ a bare axum JSON handler's (`imprint-loadgen bare-server`), both
#             loaded by the same wrk script (bench/scale-poll.lua; or CPU_LOAD=rate), CPU
#             from /proc/<pid>/stat utime+stime, rounds alternating   (rows 3, 4); for the
#             one-update poll the bare handler answers the same JSON Imprint answers
#             (the ratio to its empty answer is printed too)
#   publish   small JSON publishes per second against Postgres     (row 5)
#   bigstate  50 000 topics × 20 versions (small inline payloads) and 200 000 consumers,
#             seeded in SQL: poll CPU per request ÷ the same with 100 topics (same request
#             mix, fixed rate by default), and server RSS (peak, VmHWM)   (rows 6, 7)
#   console   server-rendered console page of a topic with 10 000 versions (signed-in curl,
#             no JavaScript; p50/p95 of 20 fetches after a warm-up)  (row 8)
#   wakeups   10 000 long polls parked on topic A, 100 on topic B; publish to B: how many
#             of A's polls answer, and imprint_long_poll_wakeups_total beyond B's waiters (row 9)
#
# Uses the release server (cargo leptos build --release): $IMPRINT_SERVER_BIN, default
# target/release/imprint-server, and its site, $IMPRINT_SITE_ROOT, default the `site`
# directory of the same target dir (target/site). The load generator is bench/loadgen
# (built here when missing: cargo build --release, CARGO_TARGET_DIR=$LOADGEN_TARGET_DIR,
# default /work/bench-target), plus wrk. Each measure starts the server on a fresh database
# of the embedded Postgres (./dev pg-start), with `ulimit -n 20000`,
# IMPRINT_MAX_LONG_POLLS=20000 and RUST_LOG=warn; large states are written straight in SQL
# before the server starts (it loads them at start). Server logs: $SCALE_SCRATCH.
#
# One run at a time (a lock next to the scratch directory; the ports must be free).
# Raw figures go to stderr as they are measured, the table to stdout at the end:
#   bench/scale.sh 2>&1 | tee bench/scale-baseline.txt
# KB, MB and GB are decimal (30 KB = 30 000 bytes, 1 GB = 10^9 bytes).
#
# Every measure first reports how busy the machine is (other builds skew all figures, the
# latencies most); QUIET_WAIT=<seconds> waits up to that long for it to calm down.
#
# CPU per request depends on the load: CPU_LOAD picks it for rows 3-4, BIG_LOAD for row 6.
#   wrk   closed loop (wrk -t$WRK_THREADS -c$CPU_CONNS): each server as fast as it goes; the
#         stricter figure for rows 3-4 (per-request overheads amortise at saturation), but
#         ±10-15% from run to run.
#   rate  the loadgen's own client at a fixed CPU_RATE requests/s over CPU_CONNS
#         connections: both servers see exactly the same load. Default for row 6, where a
#         closed loop is dominated by the big server's stalls during its 30 s safety-net
#         reloads (1.2-1.7× from run to run); at a fixed rate such background work is
#         charged per request at that rate.
#
# Knobs (environment): PARK_POLLS (10000), PARK_ROUNDS (3), WAKE_POLLS (10000),
# CPU_LOAD (wrk), BIG_LOAD (rate), CPU_RATE (3000), CPU_CONNS (16), WRK_THREADS (1),
# ROUNDS (5: rows 3-4, Imprint and the bare handler alternating; the median of the rounds'
# ratios), CPU_SECONDS (10), BIG_ROUNDS (3), BIG_SECONDS (30: one safety-net reload period),
# BIG_TOPICS (50000), BIG_VERSIONS (20), BIG_CONSUMERS (200000), PUBLISH_SECONDS (15),
# PUBLISH_CONCURRENCY (16), CONSOLE_VERSIONS (10000), CONSOLE_REQUESTS (20), SCALE_PORT (3910),
# BARE_PORT (3911). SERVER_WRAPPER: a command the server runs under, to profile it (e.g.
# SERVER_WRAPPER='valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p'; the figures
# of such a run mean nothing, the profile does).

# The whole script is one block: bash parses it completely before running it, so editing
# this file while a run is going cannot derail that run (bash otherwise reads a script as
# it goes).
{
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

BIN=${IMPRINT_SERVER_BIN:-target/release/imprint-server}
[[ $BIN == /* ]] || BIN=$ROOT/$BIN
SITE=${IMPRINT_SITE_ROOT:-$(dirname "$(dirname "$BIN")")/site}
LOADGEN_TARGET_DIR=${LOADGEN_TARGET_DIR:-/work/bench-target}
LOADGEN=${LOADGEN_BIN:-$LOADGEN_TARGET_DIR/release/imprint-loadgen}
PORT=${SCALE_PORT:-3910}
BARE_PORT=${BARE_PORT:-3911}
HOST=127.0.0.1:$PORT
URL=http://$HOST
BARE_URL=http://127.0.0.1:$BARE_PORT
TOKEN=scale-bench-token-0123456789abcde
PASSWORD=scale-admin-password
SCRATCH=${SCALE_SCRATCH:-/tmp/imprint-scale}

PARK_POLLS=${PARK_POLLS:-10000}
PARK_ROUNDS=${PARK_ROUNDS:-3}
WAKE_POLLS=${WAKE_POLLS:-10000}
ROUNDS=${ROUNDS:-5}
CPU_SECONDS=${CPU_SECONDS:-10}
CPU_CONNS=${CPU_CONNS:-16}
WRK_THREADS=${WRK_THREADS:-1}
CPU_LOAD=${CPU_LOAD:-wrk}
BIG_LOAD=${BIG_LOAD:-rate}
CPU_RATE=${CPU_RATE:-3000}
BIG_ROUNDS=${BIG_ROUNDS:-3}
LOAD=$CPU_LOAD
BIG_SECONDS=${BIG_SECONDS:-30}
BIG_TOPICS=${BIG_TOPICS:-50000}
BIG_VERSIONS=${BIG_VERSIONS:-20}
BIG_CONSUMERS=${BIG_CONSUMERS:-200000}
PUBLISH_SECONDS=${PUBLISH_SECONDS:-15}
PUBLISH_CONCURRENCY=${PUBLISH_CONCURRENCY:-16}
CONSOLE_VERSIONS=${CONSOLE_VERSIONS:-10000}
CONSOLE_REQUESTS=${CONSOLE_REQUESTS:-20}

MEASURES=("$@")
[[ ${#MEASURES[@]} -gt 0 ]] || MEASURES=(parked cpu publish bigstate console wakeups)
for m in "${MEASURES[@]}"; do
  case $m in parked | cpu | publish | bigstate | console | wakeups) ;; *) echo "unknown measure: $m" >&2; exit 2 ;; esac
done

log() { printf '%s\n' "$*" >&2; }
indent() { sed 's/^/    /' >&2; }
# kv KEY: the value of `KEY=value` in stdin
kv() { awk -v k="$1" 'index($0, k "=") == 1 { print substr($0, length(k) + 2); exit }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
yes_no() { if awk "BEGIN { exit !($1) }"; then echo yes; else echo no; fi; }

# ------------------------------------------------------------------ setup ----
command -v wrk >/dev/null || { log "wrk is missing (apt-get install wrk)"; exit 1; }
[[ -x $BIN ]] || { log "no server binary at $BIN: cargo leptos build --release, or set IMPRINT_SERVER_BIN"; exit 1; }
[[ -d $SITE ]] || log "warning: no site directory at $SITE (set IMPRINT_SITE_ROOT); console pages may lack assets"
if [[ ! -x $LOADGEN ]]; then
  log "building the load generator (bench/loadgen) into $LOADGEN_TARGET_DIR …"
  CARGO_TARGET_DIR=$LOADGEN_TARGET_DIR cargo build --release --manifest-path bench/loadgen/Cargo.toml >&2
fi
# One run at a time: runs share the scratch directory, the ports and the databases.
mkdir -p "$(dirname "$SCRATCH")"
exec 9>"$SCRATCH.lock"
flock -w 20 9 || { log "another bench/scale.sh holds $SCRATCH.lock: wait for it to finish"; exit 1; }
for p in "$PORT" "$BARE_PORT"; do
  ! curl -sS -o /dev/null "http://127.0.0.1:$p/" 2>/dev/null || { log "port $p is in use (SCALE_PORT / BARE_PORT)"; exit 1; }
done
eval "$(./dev pg-start)"
BASE=${DATABASE_URL%/*}
rm -rf "$SCRATCH"; mkdir -p "$SCRATCH/home"

SERVER_PID='' BARE_PID=''
cleanup() {
  [[ -z $SERVER_PID ]] || kill "$SERVER_PID" 2>/dev/null || true
  [[ -z $BARE_PID ]] || kill "$BARE_PID" 2>/dev/null || true
}
trap cleanup EXIT

log "# bench/scale.sh ${MEASURES[*]}"
log "date: $(date -u +%FT%TZ); machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
log "server: $BIN (built $(stat -c %y "$BIN" | cut -d. -f1)); repository HEAD now: $(git rev-parse --short HEAD 2>/dev/null || echo '?') (not necessarily the binary's)"
log "site: $SITE; loadgen: $LOADGEN; wrk: $(wrk -v 2>&1 | head -1)"
log "postgres: $(psql "$BASE/postgres" -tAc 'SHOW server_version') (fsync $(psql "$BASE/postgres" -tAc 'SHOW fsync'), synchronous_commit $(psql "$BASE/postgres" -tAc 'SHOW synchronous_commit'))"

fresh_db() {
  PGOPTIONS='-c client_min_messages=warning' psql "$BASE/postgres" -qc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1" >&2
}

# Creates the schema by starting the server once (its migrations), then stops it.
migrate_db() {
  start_server "$1"
  stop_server
}

# start_server DB [VAR=value …]: the release server on a fresh scratch home, in the background.
start_server() {
  local db=$1; shift
  ! curl -fsS "$URL/healthz" >/dev/null 2>&1 || { log "something already answers on $URL (SCALE_PORT)"; exit 1; }
  (
    exec 9>&- # the run's lock stays with the run
    ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    exec env DATABASE_URL="$BASE/$db" IMPRINT_ADDR=$HOST IMPRINT_BOOTSTRAP_TOKEN=$TOKEN \
      IMPRINT_ADMIN_PASSWORD=$PASSWORD IMPRINT_HOME="$SCRATCH/home" IMPRINT_MAX_LONG_POLLS=20000 IMPRINT_MAX_CONNS_PER_IP=0 IMPRINT_MAX_LONG_POLLS_PER_ADDRESS=0 \
      LEPTOS_SITE_ROOT="$SITE" LEPTOS_SITE_PKG_DIR=pkg LEPTOS_OUTPUT_NAME=imprint LEPTOS_SITE_ADDR=$HOST \
      LEPTOS_ENV=PROD RUST_LOG=${RUST_LOG:-warn} "$@" ${SERVER_WRAPPER:-} "$BIN" serve
  ) >>"$SCRATCH/server-$db.log" 2>&1 &
  SERVER_PID=$!
  local started=$SECONDS
  until curl -fsS "$URL/readyz" >/dev/null 2>&1; do
    kill -0 "$SERVER_PID" 2>/dev/null || { log "server died; log:"; tail -20 "$SCRATCH/server-$db.log" >&2; exit 1; }
    ((SECONDS - started < 900)) || { log "server not ready after 900 s"; exit 1; }
    sleep 0.2
  done
  log "  server pid $SERVER_PID ready after $((SECONDS - started)) s (database $db)"
}

stop_server() {
  [[ -n $SERVER_PID ]] || return 0
  kill "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=''
  server_log_summary
}

# What the server logged at warn/error level so far (per database log), one line per kind.
server_log_summary() {
  local f
  for f in "$SCRATCH"/server-*.log; do
    [[ -s $f ]] || continue
    [[ ${LOG_SEEN[$f]:-0} -lt $(wc -l <"$f") ]] || continue
    tail -n +"$((${LOG_SEEN[$f]:-0} + 1))" "$f" | sed 's/\x1b\[[0-9;]*m//g' | awk '
      / (WARN|ERROR) / { lvl = ($0 ~ / ERROR /) ? "ERROR" : "WARN"; msg = $0; sub(/^[^ ]+ +(WARN|ERROR) +/, "", msg)
                         sub(/ db\.statement=.*/, "", msg); n[lvl ": " substr(msg, 1, 160)]++ }
      END { for (k in n) printf "  server log: %d × %s\n", n[k], k }' >&2
    LOG_SEEN[$f]=$(wc -l <"$f")
  done
}
declare -A LOG_SEEN

start_bare() {
  [[ -z $BARE_PID ]] || return 0
  "$LOADGEN" bare-server --addr "127.0.0.1:$BARE_PORT" ${BARE_ANSWER:+--answer "$BARE_ANSWER"} 2>>"$SCRATCH/bare.log" 9>&- &
  BARE_PID=$!
  for _ in $(seq 1 100); do
    curl -fsS -X POST -H 'content-type: application/json' -d '{}' "$BARE_URL/api/v1/poll" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  log "the bare server did not start"; exit 1
}

stop_bare() {
  [[ -n $BARE_PID ]] || return 0
  kill "$BARE_PID" 2>/dev/null || true
  wait "$BARE_PID" 2>/dev/null || true
  BARE_PID=''
}

api() { curl -fsS -X "$1" "$URL$2" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' ${3:+-d "$3"}; }
HZ=$(getconf CLK_TCK)
# proc_ticks PID…: user+system clock ticks used so far by these processes (gone ones: 0).
proc_ticks() {
  local t=0 p v
  for p in "$@"; do
    v=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null) || v=0
    t=$((t + ${v:-0}))
  done
  echo "$t"
}
# busy_ticks: clock ticks the whole machine was busy so far (all CPUs, minus idle and iowait).
busy_ticks() { awk 'NR == 1 { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

# seed_topics DB PREFIX COUNT VERSIONS PADDING: COUNT topics <PREFIX><n> with VERSIONS
# versions each, released to everyone, inline JSON payloads of ~PADDING+50 bytes — the rows
# a publish writes (topics.latest_version and change_seq as after VERSIONS publishes).
seed_topics() {
  psql "$BASE/$1" -v ON_ERROR_STOP=1 -q -v prefix="$2" -v n="$3" -v v="$4" -v pad="$5" <<'SQL'
BEGIN;
CREATE TEMP TABLE new_topics ON COMMIT DROP AS
WITH ins AS (
  INSERT INTO topics (name, description, owner, latest_version, last_published_at, created_at, created_by, updated_at, change_seq)
  SELECT :'prefix' || g, 'scale benchmark', '', :v, now() - interval '1 hour', now() - interval '2 days', 'token:bootstrap',
         now() - interval '1 hour', :v + 1
  FROM generate_series(0, :n - 1) g
  RETURNING id
) SELECT id FROM ins;
INSERT INTO versions (topic_id, version, created_at, created_by, message, metadata, content_type, size, sha256, storage, inline_data)
SELECT t.id, v, now() - interval '1 hour' - (:v - v) * interval '1 minute', 'token:bootstrap', 'seeded', '{}'::jsonb,
       'application/json', length(d.data), encode(sha256(d.data), 'hex'), 'inline', d.data
FROM new_topics t
CROSS JOIN generate_series(1, :v) v
CROSS JOIN LATERAL (SELECT convert_to(format('{"topic": %s, "version": %s, "padding": "%s"}', t.id, v, repeat('x', :pad)), 'UTF8') AS data) d;
INSERT INTO scopes (topic_id, version, selector, selector_key, added_at, added_by)
SELECT v.topic_id, v.version, '{}'::jsonb, '*', v.created_at, v.created_by
FROM versions v JOIN new_topics t ON t.id = v.topic_id;
COMMIT;
ANALYZE topics; ANALYZE versions; ANALYZE scopes;
SQL
}

# seed_consumers DB PREFIX TOPICS COUNT: COUNT known consumers node-<g> (labels as
# bench/scale-poll.lua sends them), each on its first topic <PREFIX><(g*7) mod TOPICS>,
# holding the newest version, seen within the last 10 minutes.
seed_consumers() {
  psql "$BASE/$1" -v ON_ERROR_STOP=1 -q -v prefix="$2" -v topics="$3" -v n="$4" <<'SQL'
INSERT INTO consumers (topic_id, instance, labels, version, version_since, expected_version, first_seen, last_seen)
SELECT t.id, 'node-' || g,
       jsonb_build_object('region', (ARRAY['eu-west-1', 'us-east-1', 'ap-south-1'])[g % 3 + 1], 'app', 'app-' || (g % 20)),
       t.latest_version, now() - interval '1 hour', t.latest_version, now() - interval '1 day',
       now() - (g % 600) * interval '1 second'
FROM generate_series(0, :n - 1) g
JOIN topics t ON t.name = :'prefix' || ((g * 7) % :topics);
ANALYZE consumers;
SQL
}

# cpu_run PID URL SECONDS [VAR=value …]: one load run against URL with the request mix of
# bench/scale-poll.lua; prints the loadgen's `key=value` results (server CPU per request).
# LOAD (CPU_LOAD or BIG_LOAD) wrk: closed loop (each connection sends its next request when
# the answer arrives), its report to stderr. LOAD=rate: the loadgen's own HTTP/1.1
# client at a fixed CPU_RATE requests/s over CPU_CONNS connections, so both servers see
# exactly the same request rate.
cpu_run() {
  local pid=$1 url=$2 secs=$3; shift 3
  if [[ $LOAD == rate ]]; then
    env "$@" "$LOADGEN" load --url "$url" --pid "$pid" --rate "$CPU_RATE" --connections "$CPU_CONNS" --seconds "$secs"
  else
    env "$@" "$LOADGEN" cpu --pid "$pid" -- wrk -t"$WRK_THREADS" -c"$CPU_CONNS" -d"${secs}s" --latency \
      -s bench/scale-poll.lua "$url" 2> >(grep -E 'requests in|Requests/sec|Non-2xx|Socket errors|99%' | indent)
  fi
}

load_desc() {
  if [[ $LOAD == rate ]]; then echo "loadgen at $CPU_RATE req/s over $CPU_CONNS connections"
  else echo "wrk -t$WRK_THREADS -c$CPU_CONNS, closed loop"; fi
}

# cpu_once LABEL PID URL SECONDS [VAR=value …]: one measured run; sets ONE_US (server CPU µs
# per request), ONE_ERR (non-2xx answers) and ONE_P99 (latency), logs the loadgen's figures.
cpu_once() {
  local label=$1 pid=$2 url=$3 secs=$4; shift 4
  local out
  out=$(cpu_run "$pid" "$url" "$secs" "$@")
  ONE_US=$(kv cpu_us_per_request <<<"$out")
  ONE_ERR=$(kv non_2xx <<<"$out")
  ONE_P99=$(kv p99_ms <<<"$out")
  local o; o=$(kv others_cpu_s <<<"$out"); o=${o:-0}
  OTHERS_MAX=$(awk -v a="${OTHERS_MAX:-0}" -v b="$o" 'BEGIN { print (b > a) ? b : a }')
  log "  $label: $(tr '\n' ' ' <<<"$out")"
}

# warm URL [VAR=value …]: 3 s of the same load, unmeasured.
warm() {
  local url=$1; shift
  if [[ $LOAD == rate ]]; then
    env "$@" "$LOADGEN" load --url "$url" --rate "$CPU_RATE" --connections "$CPU_CONNS" --seconds 3 >/dev/null
  else
    env "$@" wrk -t"$WRK_THREADS" -c"$CPU_CONNS" -d3s -s bench/scale-poll.lua "$url" >/dev/null
  fi
}

# busy_pct SECONDS: how busy the whole machine was (all CPUs, %) over the next SECONDS.
busy_pct() {
  local a b
  a=$(awk 'NR == 1 { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
  sleep "$1"
  b=$(awk 'NR == 1 { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); busy = y[1] - x[1]; idle = y[2] - x[2];
    printf "%.0f", (busy + idle > 0) ? 100 * busy / (busy + idle) : 0 }'
}

# quiet: before a measure, how busy the machine is without us (other builds skew every
# figure here, the latencies most). QUIET_WAIT=seconds waits up to that long for it to be
# under QUIET_MAX_BUSY % (default 15).
quiet() {
  local pct waited=0
  pct=$(busy_pct 2)
  while ((pct > ${QUIET_MAX_BUSY:-15} && waited < ${QUIET_WAIT:-0})); do
    ((waited == 0)) && log "  machine ${pct}% busy before the measure (busiest: $(ps -eo pcpu=,comm= --sort=-pcpu | awk '$2 != "ps" && n++ < 3 { printf "%s%s (%s%% since start)", (n > 1 ? ", " : ""), $2, $1 }')); waiting for it to calm down …"
    sleep 8; waited=$((waited + 10))
    pct=$(busy_pct 2)
  done
  log "  machine ${pct}% busy (all cores) before the measure; load average $(cut -d' ' -f1-3 /proc/loadavg)"
  ((pct <= ${QUIET_MAX_BUSY:-15})) || log "  WARNING: the machine is busy with other work: the figures below are skewed"
}

declare -A ROW
row() { # row N MEASURE GOAL MEASURED REACHED
  ROW[$1]="| $2 | $3 | $4 | $5 |"
  log "RESULT ${ROW[$1]}"
}

# --------------------------------------------------------------- measures ----
measure_parked() {
  log ""
  log "## parked: $PARK_POLLS long polls answered after one publish; RSS per parked poll"
  quiet
  fresh_db imprint_scale_parked
  start_server imprint_scale_parked
  api POST /api/v1/topics '{"name": "scale.parked"}' >/dev/null
  api POST /api/v1/topics/scale.parked/versions '{"data": "{\"v\": 1}"}' >/dev/null
  # warm-up: a few short polls and a metrics scrape, so lazily built state is in the baseline
  for i in $(seq 1 20); do
    curl -fsS -X POST "$URL/api/v1/poll" -H 'content-type: application/json' \
      -d "{\"consumer\": {\"instance\": \"warm-$i\"}, \"topics\": {\"scale.parked\": null}}" >/dev/null
  done
  curl -fsS "$URL/metrics" >/dev/null
  # PARK_ROUNDS rounds on the same server, each with fresh instances holding the newest
  # version; the p99 reported is the median of the rounds' p99s; the other details and RSS
  # per poll are the first round's (later rounds start from a heap that already held
  # 10 000 polls).
  local out r p99s=() first='' p99 all='' others=''
  for r in $(seq 1 "$PARK_ROUNDS"); do
    ((r == 1)) || sleep 3
    out=$("$LOADGEN" park --url "$URL" --topic scale.parked --polls "$PARK_POLLS" --token "$TOKEN" --pid "$SERVER_PID" \
      --settle-s 2 --instance-prefix "park$r")
    log "  round $r:"
    indent <<<"$out"
    [[ -n $first ]] || first=$out
    p99=$(kv p99_ms <<<"$out")
    if [[ $(kv answered_with_update <<<"$out") != "$PARK_POLLS" ]]; then p99=1e9; fi # an unanswered poll fails the round
    p99s+=("$p99"); all+="${all:+, }$(kv p99_ms <<<"$out")"; others+="${others:+, }$(kv others_ms <<<"$out")"
  done
  p99=$(median "${p99s[@]}")
  local per_poll timed
  timed=$(kv timed_polls <<<"$first")
  per_poll=$(kv rss_per_poll_bytes <<<"$first")
  local reached=no
  awk "BEGIN { exit !($p99 < 1e9) }" && reached=$(yes_no "$p99 < 250")
  row 1 "publish → $PARK_POLLS parked long polls answered, p99 from the publish request" "< 250 ms" \
    "p99 $( [[ $p99 == 1e9 ]] && echo 'unanswered polls' || echo "$p99 ms") (median of $PARK_ROUNDS rounds: $all ms; first round p50 $(kv p50_ms <<<"$first"), max $(kv max_ms <<<"$first"), CPU until the last answer: server $(kv server_cpu_ms <<<"$first") ms, loadgen $(kv loadgen_cpu_ms <<<"$first") ms; other processes per round: $others ms)" "$reached"
  row 2 "server RSS per parked long poll" "< 30 KB" \
    "$(calc '%.1f' "$per_poll / 1000") KB ($(calc '%.0f' "$(kv rss_before_kb <<<"$first") / 1000") → $(calc '%.0f' "$(kv rss_parked_kb <<<"$first") / 1000") MB for $timed parked)" \
    "$(yes_no "$per_poll < 30000 && $timed == $PARK_POLLS")"
  stop_server
}

measure_cpu() {
  LOAD=$CPU_LOAD
  log ""
  log "## cpu: server CPU per poll ÷ a bare axum JSON handler's ($(load_desc), ${CPU_SECONDS}s × $ROUNDS rounds each)"
  quiet
  fresh_db imprint_scale_cpu
  migrate_db imprint_scale_cpu
  # 100 topics × 20 versions, payloads ~950 bytes (≤ 1 KB) so the one-update answer carries one
  seed_topics imprint_scale_cpu scale.t- 100 20 900
  start_server imprint_scale_cpu
  start_bare
  local body
  body=$(curl -fsS -X POST "$URL/api/v1/poll" -H 'content-type: application/json' -d '{"consumer": {"instance": "node-1", "labels": {"region": "us-east-1", "app": "app-1"}}, "topics": {"scale.t-7": 20, "scale.t-8": 20, "scale.t-9": 20, "scale.t-10": 20, "scale.t-11": 20, "scale.t-12": 20, "scale.t-13": 20}}')
  log "  no-change answer (${#body} bytes): $body"
  [[ $(jq '.updates | length' <<<"$body") == 0 && $(jq '.missing | length' <<<"$body") == 0 ]] || { log "unexpected no-change answer"; exit 1; }
  body=$(curl -fsS -X POST "$URL/api/v1/poll" -H 'content-type: application/json' -d '{"consumer": {"instance": "node-1", "labels": {"region": "us-east-1", "app": "app-1"}}, "topics": {"scale.t-7": 19, "scale.t-8": 20, "scale.t-9": 20, "scale.t-10": 20, "scale.t-11": 20, "scale.t-12": 20, "scale.t-13": 20}}')
  log "  one-update answer: ${#body} bytes, payload $(jq '.updates[].size' <<<"$body") bytes inline"
  printf '%s' "$body" >"$SCRATCH/one-update.json"
  [[ $(jq '.updates | length' <<<"$body") == 1 && $(jq '[.updates[].data_base64 | length] | .[0] > 0' <<<"$body") == true ]] || { log "unexpected update answer"; exit 1; }
  log "  bare handler answer: $(curl -fsS -X POST "$BARE_URL/api/v1/poll" -H 'content-type: application/json' -d '{"topics": {}}')"

  local ratio errors case i a b label update goal empty_b=''
  for case in no-change one-update; do
    update=0; [[ $case == one-update ]] && update=1
    if [[ $case == one-update ]]; then
      # The reference answers what Imprint answers (the same ~1.5 KB JSON, serialised per
      # request): on loopback the receiving side's kernel work is charged to the sender,
      # so an empty reference answer would bill Imprint for the bytes themselves.
      stop_bare
      BARE_ANSWER="$SCRATCH/one-update.json" start_bare
    fi
    warm "$URL" SCALE_TOPICS=100 SCALE_UPDATE=$update
    warm "$BARE_URL" SCALE_TOPICS=100 SCALE_UPDATE=$update
    a=() b=() errors=0 OTHERS_MAX=0
    local ratios=()
    for i in $(seq 1 "$ROUNDS"); do # alternating, so drift (other work on the machine) hits both alike
      cpu_once "$case round $i imprint" "$SERVER_PID" "$URL" "$CPU_SECONDS" SCALE_TOPICS=100 SCALE_UPDATE=$update
      a+=("$ONE_US"); errors=$((errors + ONE_ERR))
      cpu_once "$case round $i bare axum" "$BARE_PID" "$BARE_URL" "$CPU_SECONDS" SCALE_TOPICS=100 SCALE_UPDATE=$update
      b+=("$ONE_US"); errors=$((errors + ONE_ERR))
      ratios+=("$(calc '%.2f' "${a[-1]} / ${b[-1]}")")
    done
    # the median of the rounds' ratios (each round's two runs are next to each other in time)
    ratio=$(median "${ratios[@]}")
    a=$(median "${a[@]}"); b=$(median "${b[@]}")
    if [[ $case == no-change ]]; then
      empty_b=$b
      row 3 "no-change poll of 7 topics: server CPU per request ÷ bare axum JSON handler's" "≤ 1.15×" \
        "${ratio}× (median of $ROUNDS rounds' ratios: ${ratios[*]}; medians $a µs vs $b µs per request; $(load_desc); other processes ≤ ${OTHERS_MAX} s CPU per ${CPU_SECONDS} s run; $errors non-2xx)" \
        "$(yes_no "$ratio <= 1.15 && $errors == 0")"
    else
      row 4 "poll with one update (≤ 1 KB inline payload): the same ratio" "≤ 1.3×" \
        "${ratio}× (median of $ROUNDS rounds' ratios: ${ratios[*]}; medians $a µs vs $b µs per request, the bare handler answering the same $(stat -c %s "$SCRATCH/one-update.json") bytes; vs its empty answer of the no-change runs ($empty_b µs): $(calc '%.2f' "$a / $empty_b")×; $(load_desc); other processes ≤ ${OTHERS_MAX} s CPU per ${CPU_SECONDS} s run; $errors non-2xx)" \
        "$(yes_no "$ratio <= 1.3 && $errors == 0")"
    fi
  done
  stop_bare
  stop_server
}

measure_publish() {
  log ""
  log "## publish: small JSON publishes for ${PUBLISH_SECONDS}s, $PUBLISH_CONCURRENCY in flight, 8 topics"
  quiet
  fresh_db imprint_scale_publish
  start_server imprint_scale_publish
  local out s0 p0 m0 s1 p1 m1 n
  # Where the CPU of a publish goes: the server, Postgres (every process of the cluster),
  # the whole machine (the load generator is the rest).
  s0=$(proc_ticks "$SERVER_PID") p0=$(proc_ticks $(pgrep -x postgres)) m0=$(busy_ticks)
  out=$("$LOADGEN" publish-rate --url "$URL" --token "$TOKEN" --topics 8 --seconds "$PUBLISH_SECONDS" \
    --concurrency "$PUBLISH_CONCURRENCY" --payload-bytes 200)
  s1=$(proc_ticks "$SERVER_PID") p1=$(proc_ticks $(pgrep -x postgres)) m1=$(busy_ticks)
  indent <<<"$out"
  local rate
  rate=$(kv publishes_per_s <<<"$out")
  n=$(kv publishes <<<"$out")
  if [[ -n $n && $n -gt 0 ]]; then
    log "  CPU per publish: server $(calc '%.2f' "($s1 - $s0) * 1000 / $HZ / $n") ms," \
      "postgres $(calc '%.2f' "($p1 - $p0) * 1000 / $HZ / $n") ms, whole machine $(calc '%.2f' "($m1 - $m0) * 1000 / $HZ / $n") ms" \
      "(2 cores: $(calc '%.1f' "2000 / (($m1 - $m0) * 1000 / $HZ / $n)") publishes/s if CPU were the limit)"
  fi
  row 5 "small publishes per second against Postgres" "≥ 500" \
    "$rate/s ($PUBLISH_CONCURRENCY in flight; p50 $(kv p50_ms <<<"$out") ms, p99 $(kv p99_ms <<<"$out") ms; $(kv errors <<<"$out") errors)" \
    "$(yes_no "$rate >= 500 && $(kv errors <<<"$out") == 0")"
  stop_server
}

measure_bigstate() {
  LOAD=$BIG_LOAD
  log ""
  log "## bigstate: $BIG_TOPICS topics × $BIG_VERSIONS versions, $BIG_CONSUMERS consumers vs 100 topics ($(load_desc), ${BIG_SECONDS}s × $BIG_ROUNDS rounds each)"
  quiet
  local t0
  # the reference: 100 topics × the same versions, consumers at the same density per topic
  fresh_db imprint_scale_ref
  migrate_db imprint_scale_ref
  seed_topics imprint_scale_ref scale.t- 100 "$BIG_VERSIONS" 60
  seed_consumers imprint_scale_ref scale.t- 100 $((BIG_CONSUMERS * 100 / BIG_TOPICS))
  # the big state
  fresh_db imprint_scale_big
  migrate_db imprint_scale_big
  t0=$SECONDS
  seed_topics imprint_scale_big scale.t- "$BIG_TOPICS" "$BIG_VERSIONS" 60
  seed_consumers imprint_scale_big scale.t- "$BIG_TOPICS" "$BIG_CONSUMERS"
  log "  seeded in $((SECONDS - t0)) s: $(psql "$BASE/imprint_scale_big" -tAc "SELECT (SELECT count(*) FROM topics) || ' topics, ' || (SELECT count(*) FROM versions) || ' versions, ' || (SELECT count(*) FROM consumers) || ' consumers, database ' || pg_size_pretty(pg_database_size(current_database()))")"

  # One server at a time (an idle big server's safety-net reloads would load the reference's
  # runs); the same wrk script, 7 topics per poll from 10 000 instances, topics spread over
  # the whole state (SCALE_TOPICS), every one held at its newest version.
  local a=() b=() al=() bl=() errors=0 i
  OTHERS_MAX=0
  start_server imprint_scale_ref
  log "  reference (100 topics) RSS $(( $(rss_kb "$SERVER_PID") / 1000 )) MB"
  warm "$URL" SCALE_TOPICS=100 SCALE_HELD="$BIG_VERSIONS"
  for i in $(seq 1 "$BIG_ROUNDS"); do
    cpu_once "100 topics round $i" "$SERVER_PID" "$URL" "$BIG_SECONDS" SCALE_TOPICS=100 SCALE_HELD="$BIG_VERSIONS"
    b+=("$ONE_US"); errors=$((errors + ONE_ERR)); bl+=("$ONE_P99")
  done
  log "  reference RSS after the poll runs $(( $(rss_kb "$SERVER_PID") / 1000 )) MB, VmHWM $(( $(hwm_kb "$SERVER_PID") / 1000 )) MB"
  stop_server
  t0=$SECONDS
  start_server imprint_scale_big
  local rss_loaded; rss_loaded=$(rss_kb "$SERVER_PID")
  # RSS every 0.5 s while the polls run (the safety-net full reload every 30 s is in there)
  ( while kill -0 "$SERVER_PID" 2>/dev/null; do echo "$SECONDS $(rss_kb "$SERVER_PID" 2>/dev/null || echo 0)"; sleep 0.5; done ) >"$SCRATCH/rss-big.txt" &
  local sampler=$!
  log "  big state loaded in $((SECONDS - t0)) s; RSS $((rss_loaded / 1000)) MB, VmHWM $(( $(hwm_kb "$SERVER_PID") / 1000 )) MB"
  warm "$URL" SCALE_TOPICS="$BIG_TOPICS" SCALE_HELD="$BIG_VERSIONS"
  for i in $(seq 1 "$BIG_ROUNDS"); do
    cpu_once "$BIG_TOPICS topics round $i" "$SERVER_PID" "$URL" "$BIG_SECONDS" SCALE_TOPICS="$BIG_TOPICS" SCALE_HELD="$BIG_VERSIONS"
    a+=("$ONE_US"); errors=$((errors + ONE_ERR)); al+=("$ONE_P99")
  done
  local rss_after hwm rss_max
  rss_after=$(rss_kb "$SERVER_PID"); hwm=$(hwm_kb "$SERVER_PID")
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
  rss_max=$(awk '$2 > m { m = $2 } END { print m + 0 }' "$SCRATCH/rss-big.txt")
  log "  big state RSS while serving polls, every 10 s (MB): $(awk -v t0="$(head -1 "$SCRATCH/rss-big.txt" | cut -d' ' -f1)" '($1 - t0) % 10 == 0 && !seen[$1]++ { printf "%d ", $2 / 1000 }' "$SCRATCH/rss-big.txt"); max $((rss_max / 1000)) MB"
  log "  big state RSS after the poll runs $((rss_after / 1000)) MB, VmHWM $((hwm / 1000)) MB; imprint_topics_loaded $(curl -fsS "$URL/metrics" | awk '$1 == "imprint_topics_loaded" {print $2}')"
  stop_server
  local a_all b_all
  a_all=$(printf '%s ' "${a[@]}"); b_all=$(printf '%s ' "${b[@]}")
  a=$(median "${a[@]}"); b=$(median "${b[@]}")
  local ratio
  ratio=$(calc '%.2f' "$a / $b")
  row 6 "$BIG_TOPICS topics and $BIG_CONSUMERS known consumers: poll CPU per request ÷ with 100 topics" "≤ 1.2×" \
    "${ratio}× ($a µs vs $b µs per request, median of $BIG_ROUNDS × ${BIG_SECONDS}s, $(load_desc); rounds ${a_all% } vs ${b_all% }; poll p99 $(median "${al[@]}") vs $(median "${bl[@]}") ms; other processes (Postgres included) ≤ ${OTHERS_MAX} s CPU per ${BIG_SECONDS} s run; $errors non-2xx)" \
    "$(yes_no "$ratio <= 1.2 && $errors == 0")"
  row 7 "server RSS with $BIG_TOPICS topics × $BIG_VERSIONS versions (small inline payloads)" "< 1 GB" \
    "peak $(calc '%.0f' "$hwm / 1000") MB (VmHWM; $((rss_loaded / 1000)) MB after loading, up to $((rss_max / 1000)) MB while serving polls, $((rss_after / 1000)) MB at the end)" \
    "$(yes_no "$hwm * 1024 < 1000000000")"
}

measure_console() {
  log ""
  log "## console: /topics/<name> of a topic with $CONSOLE_VERSIONS versions, server-rendered"
  quiet
  fresh_db imprint_scale_console
  migrate_db imprint_scale_console
  seed_topics imprint_scale_console scale.console- 1 "$CONSOLE_VERSIONS" 60
  seed_topics imprint_scale_console scale.small- 1 20 60
  start_server imprint_scale_console
  # Sign in as a browser without JavaScript would (as bench/consumers.sh does).
  local jar=$SCRATCH/cookies action
  action=$(curl -fsS -c "$jar" "$URL/login" | grep -o 'action="/console/fn/sign_in[^"]*"' | head -1 | cut -d'"' -f2)
  curl -fsS -b "$jar" -c "$jar" -o /dev/null -H "origin: $URL" -H 'accept: text/html' \
    --data-urlencode username=admin --data-urlencode password=$PASSWORD --data-urlencode next=/ "$URL$action"
  time_page() { # time_page PATH → "p50 p95 max" (ms)
    local path=$1 times=()
    curl -fsS -b "$jar" -o "$SCRATCH/page.html" "$URL$path"
    grep -q 'class="versions"' "$SCRATCH/page.html" || { log "not a topic page with versions: $path"; exit 1; }
    log "  $path: $(wc -c <"$SCRATCH/page.html") bytes, $(grep -o '<li' "$SCRATCH/page.html" | wc -l) list items"
    for _ in $(seq 1 "$CONSOLE_REQUESTS"); do
      times+=("$(curl -fsS -b "$jar" -o /dev/null -w '%{time_total}' "$URL$path")")
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 * 1000 } END {
      printf "%.0f %.0f %.0f", a[int((NR + 1) / 2)], a[int(NR * 0.95 + 0.5)], a[NR] }'
  }
  local small big
  small=$(time_page /topics/scale.small-0)
  log "  topic with 20 versions: p50/p95/max $small ms"
  big=$(time_page /topics/scale.console-0)
  log "  topic with $CONSOLE_VERSIONS versions: p50/p95/max $big ms"
  set -- $big
  row 8 "console topic page of a topic with $CONSOLE_VERSIONS versions, server-rendered" "< 150 ms" \
    "p95 $2 ms (p50 $1, max $3; $CONSOLE_REQUESTS fetches; 20-version topic p50 ${small%% *} ms)" "$(yes_no "$2 < 150")"
  stop_server
}

measure_wakeups() {
  log ""
  log "## wakeups: $WAKE_POLLS long polls on topic A, 100 on topic B; publish to B"
  quiet
  fresh_db imprint_scale_wakeups
  start_server imprint_scale_wakeups
  for t in scale.wake-a scale.wake-b; do
    api POST /api/v1/topics "{\"name\": \"$t\"}" >/dev/null
    api POST "/api/v1/topics/$t/versions" '{"data": "{\"v\": 1}"}' >/dev/null
  done
  local out
  out=$("$LOADGEN" park --url "$URL" --topic scale.wake-a --change-topic scale.wake-b --change-polls 100 \
    --polls "$WAKE_POLLS" --token "$TOKEN" --pid "$SERVER_PID" --observe-ms 3000 --instance-prefix wake)
  indent <<<"$out"
  local woken
  woken=$(kv others_woken <<<"$out")
  row 9 "a change to one topic: long polls waiting on other topics woken" "0" \
    "$woken ($(kv other_topic_answered <<<"$out") of $(kv other_topic_parked <<<"$out") on A answered; $(kv changed_topic_answered <<<"$out") of $(kv changed_topic_parked <<<"$out") on B answered; wakeups counter +$(kv wakeups_delta <<<"$out"))" \
    "$(yes_no "$woken == 0 && $(kv changed_topic_answered <<<"$out") == $(kv changed_topic_parked <<<"$out")")"
  stop_server
}

for m in "${MEASURES[@]}"; do
  "measure_$m"
done

echo "| measure | goal | measured | reached? |"
echo "|---|---|---|---|"
for n in 1 2 3 4 5 6 7 8 9; do
  [[ -z ${ROW[$n]:-} ]] || echo "${ROW[$n]}"
done
exit 0
}
