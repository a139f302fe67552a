-- wrk script for bench/scale.sh: batch polls of SCALE_PER_POLL topics (default 7) from
-- SCALE_INSTANCES simulated instances (default 10 000, named node-<n>). Instance n asks
-- about topics <SCALE_PREFIX><(n*7+k) mod SCALE_TOPICS>, k = 0..6, holding version
-- SCALE_HELD of each (the newest: nothing to send back). With SCALE_UPDATE=1 it holds
-- SCALE_HELD-1 of its first topic, so every answer carries exactly one update (with its
-- inline payload). Requests are built once per wrk thread, in init, so the load generator
-- spends its CPU on sending, not on Lua. Used for Imprint and the bare handler alike.
local topics    = tonumber(os.getenv("SCALE_TOPICS") or "100")
local instances = tonumber(os.getenv("SCALE_INSTANCES") or "10000")
local per       = tonumber(os.getenv("SCALE_PER_POLL") or "7")
local held      = tonumber(os.getenv("SCALE_HELD") or "20")
local update    = (os.getenv("SCALE_UPDATE") or "0") == "1"
local prefix    = os.getenv("SCALE_PREFIX") or "scale.t-"
local regions   = {"eu-west-1", "us-east-1", "ap-south-1"}
local reqs      = {}

function init(args)
  for n = 0, instances - 1 do
    local parts = {}
    for k = 0, per - 1 do
      local v = held
      if update and k == 0 then v = held - 1 end
      parts[#parts + 1] = string.format('"%s%d": %d', prefix, (n * per + k) % topics, v)
    end
    local body = string.format(
      '{"consumer": {"instance": "node-%d", "labels": {"region": "%s", "app": "app-%d"}}, "topics": {%s}}',
      n, regions[(n % 3) + 1], n % 20, table.concat(parts, ", "))
    reqs[n + 1] = wrk.format("POST", "/api/v1/poll", {["Content-Type"] = "application/json"}, body)
  end
end

function request()
  return reqs[math.random(1, #reqs)]
end
