#!/usr/bin/env bash
# The OpenFeature SDKs with their OFREP providers, unchanged from their registries (Python:
# openfeature-sdk + openfeature-provider-ofrep from PyPI; JavaScript: @openfeature/server-sdk +
# @openfeature/ofrep-provider from npm), against a running Imprint. Both read a flag's value,
# see a scoped release reach only the matching context, then a pin; and the evaluations appear
# in the consumer audit under their targetingKey.
#   end2end/ofrep/run.sh BASE_URL ADMIN_TOKEN VENV_DIR NPM_DIR
set -euo pipefail
base=$1 token=$2 venv=$3 npm_dir=$4
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly PY_PKGS=("openfeature-sdk==0.10.0" "openfeature-provider-ofrep==0.3.0")
# @openfeature/ofrep-provider 0.1.3 wants @openfeature/ofrep-core ^0.1.4 beside it.
readonly NPM_PKGS=("@openfeature/server-sdk@1.23.0" "@openfeature/ofrep-provider@0.1.3" "@openfeature/ofrep-core@0.1.4")

if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import openfeature.contrib.provider.ofrep' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${PY_PKGS[@]}"
fi
if [[ ! -d $npm_dir/node_modules/@openfeature/ofrep-provider ]]; then
  mkdir -p "$npm_dir"
  [[ -f $npm_dir/package.json ]] || echo '{"name": "imprint-ofrep-e2e", "private": true}' >"$npm_dir/package.json"
  (cd "$npm_dir" && npm install --silent --no-audit --no-fund --save-exact "${NPM_PKGS[@]}")
fi

api() { # api METHOD PATH JSON → body on stdout
  local out code
  out=$(curl -sS -X "$1" "$base$2" -H "Authorization: Bearer $token" -H 'content-type: application/json' \
    ${3:+--data "$3"} -w '\n%{http_code}')
  code=${out##*$'\n'}
  if [[ $code != 2* ]]; then
    echo "ofrep e2e: $1 $2 → $code: ${out%$'\n'*}" >&2
    return 1
  fi
  printf '%s' "${out%$'\n'*}"
}

sfx=$RANDOM$RANDOM
topic="ofrep.e2e.$sfx" flag="e2e-greeting-$sfx"
api POST /api/v1/topics "{\"name\": \"$topic\", \"owner\": \"e2e\", \"ofrep\": {\"flag_key\": \"$flag\", \"field\": \"greeting\"}}" >/dev/null
api POST "/api/v1/topics/$topic/versions" '{"data": "{\"greeting\": \"hello\"}"}' >/dev/null
api POST "/api/v1/topics/$topic/versions" '{"data": "{\"greeting\": \"bonjour\"}", "scopes": [{"region": "eu"}]}' >/dev/null

failed=0 checked=0
run_clients() { # run_clients WHAT CHECKS_JSON
  local what=$1 checks=$2
  checked=$((checked + 2))
  if "$venv/bin/python" "$here/check.py" --url "$base" --token "$token" --flag "$flag" --checks "$checks"; then
    echo "ofrep e2e (python, $what): ok"
  else
    echo "ofrep e2e (python, $what): FAILED" >&2
    failed=$((failed + 1))
  fi
  if NODE_PATH="$npm_dir/node_modules" node "$here/check.cjs" "$base" "$token" "$flag" "$checks"; then
    echo "ofrep e2e (javascript, $what): ok"
  else
    echo "ofrep e2e (javascript, $what): FAILED" >&2
    failed=$((failed + 1))
  fi
}

# The value, and the scoped release seen by the matching context only.
run_clients "value and scoped release" '[
  {"context": {"targetingKey": "e2e-us-1", "region": "us"},
   "expect": {"value": "hello", "reason": "STATIC", "variant": "v1", "pinned": false}},
  {"context": {"targetingKey": "e2e-eu-1", "region": "eu"},
   "expect": {"value": "bonjour", "reason": "TARGETING_MATCH", "variant": "v2", "pinned": false}}]'
# A pin holds region=eu at version 1: both clients see it, and that it is pinned.
api PUT "/api/v1/topics/$topic/pins" '{"selector": {"region": "eu"}, "version": 1, "reason": "e2e"}' >/dev/null
run_clients "pin" '[
  {"context": {"targetingKey": "e2e-eu-1", "region": "eu"},
   "expect": {"value": "hello", "reason": "TARGETING_MATCH", "variant": "v1", "pinned": true}},
  {"context": {"targetingKey": "e2e-us-1", "region": "us"},
   "expect": {"value": "hello", "reason": "STATIC", "variant": "v1", "pinned": false}}]'

# The targeting keys are consumers in the audit (flushed within a few seconds).
checked=$((checked + 1))
seen=""
for _ in $(seq 1 30); do
  seen=$(api GET "/api/v1/topics/$topic/consumers" "" || true)
  if [[ $seen == *'"instance":"e2e-eu-1"'* && $seen == *'"instance":"e2e-us-1"'* ]]; then break; fi
  sleep 0.5
done
if [[ $seen == *'"instance":"e2e-eu-1"'* && $seen == *'"instance":"e2e-us-1"'* ]]; then
  echo "ofrep e2e (consumer audit): ok, e2e-eu-1 and e2e-us-1 recorded"
else
  echo "ofrep e2e (consumer audit): FAILED: $seen" >&2
  failed=$((failed + 1))
fi
echo "ofrep: $((checked - failed)) passed, $failed failed"
exit $((failed > 0))
