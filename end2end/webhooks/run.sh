#!/usr/bin/env bash
# Imprint's webhooks against receivers written with the libraries users would use:
# standardwebhooks (verification) and cloudevents (parsing), both from PyPI. A global
# subscription (an admin's, allow_private: the receiver is on loopback) gets one event of
# every type, caused through the HTTP API; then the receiver goes down, three publishes
# queue up, it comes back, and the backlog arrives in order. Every delivery must verify.
#   end2end/webhooks/run.sh BASE_URL ADMIN_TOKEN VENV_DIR
set -euo pipefail
base=$1 token=$2 venv=$3
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly PKGS=("standardwebhooks==1.1.0" "cloudevents==2.2.0")

if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import standardwebhooks, cloudevents.core' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${PKGS[@]}"
fi

tmp=$(mktemp -d)
receiver_pid=''
hook_id=''
cleanup() {
  [[ -n $receiver_pid ]] && kill "$receiver_pid" 2>/dev/null || true
  [[ -n $hook_id ]] && curl -sS -o /dev/null -X DELETE "$base/api/v1/webhooks/$hook_id" -H "Authorization: Bearer $token" || true
  rm -rf "$tmp"
}
trap cleanup EXIT

api() { # api METHOD PATH [JSON]: prints the answer's body
  local out code
  out=$(curl -sS -X "$1" "$base$2" -H "Authorization: Bearer $token" -H 'content-type: application/json' \
    ${3:+--data "$3"} -w '\n%{http_code}')
  code=${out##*$'\n'}
  if [[ $code != 2* ]]; then
    echo "webhooks e2e: $1 $2 → $code: ${out%$'\n'*}" >&2
    return 1
  fi
  printf '%s' "${out%$'\n'*}"
}
field() { "$venv/bin/python" -c "import json,sys; print(json.load(sys.stdin)$1)"; }

port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
topic="webhooks.e2e.$RANDOM$RANDOM"
hook=$(api POST /api/v1/webhooks "{\"url\": \"http://127.0.0.1:$port/hook\", \"allow_private\": true, \"description\": \"e2e\"}")
hook_id=$(field "['id']" <<<"$hook")
secret=$(field "['secret']" <<<"$hook")

"$venv/bin/python" "$here/receiver.py" serve --port "$port" --secret "$secret" --log "$tmp/events.jsonl" \
  --down-flag "$tmp/down" &
receiver_pid=$!
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done

# One change of each kind (docs/webhooks.md lists the events each one emits).
plan='{"stages": [{"selector": {"region": "eu"}, "wait_s": 3600}, {"selector": {}, "wait_s": 0}]}'
api POST /api/v1/topics "{\"name\": \"$topic\", \"owner\": \"e2e\"}" >/dev/null
api POST "/api/v1/topics/$topic/versions" '{"data": "v1"}' >/dev/null
api POST "/api/v1/topics/$topic/versions/1/scopes" '{"selector": {"region": "eu"}}' >/dev/null
api PUT "/api/v1/topics/$topic/pins" '{"selector": {"region": "eu"}, "version": 1}' >/dev/null
api DELETE "/api/v1/topics/$topic/pins?selector=region%3Deu" >/dev/null
api PATCH "/api/v1/topics/$topic" '{"description": "changed"}' >/dev/null
rollout=$(api POST "/api/v1/topics/$topic/versions" "{\"data\": \"v2\", \"rollout\": $plan}" | field "['rollout']['id']")
for action in pause resume advance; do
  api POST "/api/v1/topics/$topic/rollouts/$rollout/$action" >/dev/null
done
rollout=$(api POST "/api/v1/topics/$topic/versions" "{\"data\": \"v3\", \"rollout\": $plan}" | field "['rollout']['id']")
api POST "/api/v1/topics/$topic/rollouts/$rollout/cancel" '{"rollback": false}' >/dev/null
expect=(topic.created version.published scope.added pin.set pin.removed topic.changed
  rollout.started rollout.advanced version.published rollout.paused rollout.resumed rollout.advanced rollout.completed
  rollout.started rollout.advanced version.published rollout.cancelled)
"$venv/bin/python" "$here/receiver.py" check --log "$tmp/events.jsonl" --expect "${expect[@]}" --timeout 60 >/dev/null

# Down for a while: the backlog waits, then arrives in order.
touch "$tmp/down"
for v in 4 5 6; do api POST "/api/v1/topics/$topic/versions" "{\"data\": \"v$v\", \"rollout\": null}" >/dev/null; done
for _ in $(seq 100); do grep -q refused "$tmp/events.jsonl" && break; sleep 0.1; done
sleep 2
rm "$tmp/down"
expect+=(version.published version.published version.published)
"$venv/bin/python" "$here/receiver.py" check --log "$tmp/events.jsonl" --expect "${expect[@]}" --timeout 90 --min-refused 1
versions=$("$venv/bin/python" -c "
import json, sys
v = [e['data']['version'] for e in map(json.loads, open('$tmp/events.jsonl')) if e.get('type') == 'io.imprint.version.published']
print(' '.join(map(str, v)))")
if [[ $versions != "1 2 3 4 5 6" ]]; then
  echo "webhooks e2e: FAILED: versions arrived as $versions" >&2
  exit 1
fi
echo "webhooks: passed"
