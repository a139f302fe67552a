#!/usr/bin/env bash
# Unchanged Spring Cloud Config clients against a running Imprint: config-client (PyPI)
# and cloud-config-client (npm) each read a topic bound to a Spring application (nested
# YAML, flattened), see the value scoped to their profile, and see a publish when they
# fetch again. The topic is restricted: they authenticate with Basic auth, a token as the
# password (an anonymous request must not see it).
#   end2end/spring/run.sh BASE_URL ADMIN_TOKEN VENV_DIR NPM_DIR
set -euo pipefail
base=$1 token=$2 venv=$3 npm_dir=$4
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly PY_PKG="config-client==1.5.0"
readonly NPM_PKG="cloud-config-client@1.6.2"

if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import config.spring' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$PY_PKG"
fi
if ! grep -qs '"version": "1.6.2"' "$npm_dir/node_modules/cloud-config-client/package.json"; then
  mkdir -p "$npm_dir"
  (cd "$npm_dir" && npm install --silent --no-save --no-audit --no-fund --no-package-lock "$NPM_PKG" >/dev/null)
fi

api() { # api METHOD PATH JSON
  local out code
  out=$(curl -sS -X "$1" "$base$2" -H "Authorization: Bearer $token" -H 'content-type: application/json' \
    --data "$3" -w '\n%{http_code}')
  code=${out##*$'\n'}
  if [[ $code != 2* ]]; then
    echo "spring e2e: $1 $2 → $code: ${out%$'\n'*}" >&2
    return 1
  fi
}

run_case() { # run_case NAME COMMAND… (the client check, which prints "ready" before its refetch)
  local name=$1 app="e2e-$1-$RANDOM$RANDOM"
  shift
  local topic="spring.e2e.$app"
  api POST /api/v1/topics "{\"name\": \"$topic\", \"owner\": \"e2e\", \"restricted\": true, \"spring\": {\"application\": \"$app\"}}"
  api POST "/api/v1/topics/$topic/versions" '{"data": "greeting: hello\nserver:\n  port: 8080\n"}'
  api POST "/api/v1/topics/$topic/versions" '{"data": "greeting: hola\nserver:\n  port: 8080\n", "scopes": [{"profile": "prod"}]}'
  # Without the token the restricted topic is not there.
  local anon
  anon=$(curl -sS -o /dev/null -w '%{http_code}' "$base/spring/$app/dev")
  if [[ $anon != 404 ]]; then
    echo "spring e2e ($name): FAILED: an anonymous request got $anon, not 404" >&2
    return 1
  fi
  local out=$IMPRINT_SPRING_TMP/$name.json err=$IMPRINT_SPRING_TMP/$name.err
  "$@" "$app" "dev:greeting=hello" "dev:server.port=8080" "prod:greeting=hola" >"$out" 2>"$err" &
  local pid=$! waited=0
  until grep -qs ready "$err" || ! kill -0 "$pid" 2>/dev/null || ((waited >= 300)); do
    sleep 0.1
    waited=$((waited + 1))
  done
  api POST "/api/v1/topics/$topic/versions" '{"data": "greeting: hi there\nserver:\n  port: 8080\n"}'
  if wait "$pid"; then
    echo "spring e2e ($name): ok $(cat "$out")"
  else
    echo "spring e2e ($name): FAILED $(cat "$out") $(tail -5 "$err")" >&2
    return 1
  fi
}

py_client() { # py_client APP EXPECT…
  local app=$1
  shift
  local args=()
  for e in "$@"; do args+=(--expect "$e"); done
  "$venv/bin/python" "$here/client_check.py" --url "$base/spring" --app "$app" --token "$token" "${args[@]}" \
    --then-expect "dev:greeting=hi there" --timeout 30
}

js_client() { # js_client APP EXPECT…
  local app=$1
  shift
  node "$here/client_check.js" "$npm_dir" "$base/spring" "$app" "$token" "$@" --then "dev:greeting=hi there"
}

IMPRINT_SPRING_TMP=$(mktemp -d)
trap 'rm -rf "$IMPRINT_SPRING_TMP"' EXIT
failed=0
run_case python py_client || failed=$((failed + 1))
run_case node js_client || failed=$((failed + 1))
echo "spring: $((2 - failed)) passed, $failed failed"
exit $((failed > 0))
