#!/usr/bin/env bash
# An unchanged Apollo client (apollo-client-python from PyPI) against a running Imprint:
# it reads a value from a topic bound to an Apollo namespace, then sees a published change
# through its own long poll — once unsigned, once with the app's secret.
#   end2end/apollo/run.sh BASE_URL ADMIN_TOKEN VENV_DIR
set -euo pipefail
base=$1 token=$2 venv=$3
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly PKG="apollo-client-python==0.2.5"

if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import apollo' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$PKG"
fi

api() { # api METHOD PATH JSON
  local out code
  out=$(curl -sS -X "$1" "$base$2" -H "Authorization: Bearer $token" -H 'content-type: application/json' \
    --data "$3" -w '\n%{http_code}')
  code=${out##*$'\n'}
  if [[ $code != 2* ]]; then
    echo "apollo e2e: $1 $2 → $code: ${out%$'\n'*}" >&2
    return 1
  fi
}

run_case() { # run_case NAME APP_ID SECRET
  local name=$1 app=$2 secret=$3 topic="apollo.e2e.$1.$RANDOM$RANDOM"
  local binding="{\"app_id\": \"$app\", \"namespace\": \"application\"${secret:+, \"secret\": \"$secret\"}}"
  api POST /api/v1/topics "{\"name\": \"$topic\", \"owner\": \"e2e\", \"apollo\": $binding}"
  api POST "/api/v1/topics/$topic/versions" '{"data": "{\"greeting\": \"hello\", \"timeout\": 100}"}'
  local out=$IMPRINT_APOLLO_TMP/$name.json
  "$venv/bin/python" "$here/client_check.py" --url "$base/apollo" --app-id "$app" --cluster default \
    --namespace application --key greeting --expect hello ${secret:+--secret "$secret"} \
    --then-expect "hi there" --timeout 40 >"$out" &
  local pid=$!
  sleep 4
  api POST "/api/v1/topics/$topic/versions" '{"data": "{\"greeting\": \"hi there\", \"timeout\": 100}"}'
  if wait "$pid"; then
    echo "apollo e2e ($name): ok $(cat "$out")"
  else
    echo "apollo e2e ($name): FAILED $(cat "$out")" >&2
    return 1
  fi
}

IMPRINT_APOLLO_TMP=$(mktemp -d)
trap 'rm -rf "$IMPRINT_APOLLO_TMP"' EXIT
failed=0
run_case unsigned "e2e-shop-$RANDOM" "" || failed=$((failed + 1))
run_case signed "e2e-vault-$RANDOM" "e2e-s3cr3t" || failed=$((failed + 1))
echo "apollo: $((2 - failed)) passed, $failed failed"
exit $((failed > 0))
