-- wrk script: batch polls from many simulated instances, each asking about 10 topics.
-- Each instance holds a fixed version of each topic (some current, some behind, some
-- none), as real nodes do between updates, so answers mix "no update" and "update with
-- payload", and the audit sees 10,000 distinct nodes × 10 topics.
local regions = {"eu-west-1", "us-east-1", "ap-south-1"}
local counter = 0

request = function()
  counter = counter + 1
  local n = math.random(0, 9999)
  local topics = {}
  for t = 0, 9 do
    local held = (n + t) % 4
    topics[#topics + 1] = string.format('"bench.topic-%d": %s', t, held == 0 and "null" or tostring(held))
  end
  local body = string.format(
    '{"consumer": {"instance": "node-%d", "labels": {"region": "%s", "app": "app-%d"}}, "topics": {%s}}',
    n, regions[(n % 3) + 1], n % 20, table.concat(topics, ", "))
  return wrk.format("POST", "/api/v1/poll", {["Content-Type"] = "application/json"}, body)
end
