# Sourced by the bench scripts: the server on a fresh database of the embedded Postgres.
#
#   bench_server NAME PORT HOME   starts "$SERVER" serve on 127.0.0.1:PORT against a fresh
#                                 database imprint_bench_NAME (BENCH_DB: its URL), with
#                                 IMPRINT_HOME=HOME and the admin token $TOKEN; sets
#                                 `server` to its pid and waits until it is ready (log:
#                                 HOME/../server.log). The caller's trap stops it.
#                                 SERVER_WRAPPER (e.g. `taskset -c 0`) goes in front of it.
bench_server() {
  local name=$1 port=$2 home=$3
  eval "$(./dev pg-start)"
  BENCH_PG=${DATABASE_URL%/*}
  BENCH_DB=$BENCH_PG/imprint_bench_$name
  PSQL_BIN=$(command -v psql || echo /usr/lib/postgresql/15/bin/psql)
  "$PSQL_BIN" "$BENCH_PG/postgres" -qc "DROP DATABASE IF EXISTS imprint_bench_$name WITH (FORCE)" \
    -c "CREATE DATABASE imprint_bench_$name" >&2
  mkdir -p "$home"
  DATABASE_URL=$BENCH_DB IMPRINT_ADDR=127.0.0.1:$port IMPRINT_BOOTSTRAP_TOKEN=$TOKEN IMPRINT_HOME="$home" \
    RUST_LOG=warn ${SERVER_WRAPPER:-} "$SERVER" serve >"$home/../server.log" 2>&1 &
  server=$!
  for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "the server did not get ready; its log: $home/../server.log" >&2
  return 1
}
