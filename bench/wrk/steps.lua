-- One-step session calls: request k POSTs {"inputs": [[1.0]]} to
-- /v1/sessions/<id>/steps with id number (k mod n) of $SESSION_IDS (comma-separated, created
-- beforehand by bench/http.py), as the peer's stream.lua spreads requests over its sequences.
dofile(os.getenv("LUA_DIR") .. "/common.lua")

local ids = {}
for id in string.gmatch(assert(os.getenv("SESSION_IDS"), "SESSION_IDS not set"), "[^,]+") do
  ids[#ids + 1] = id
end
local body = '{"inputs": [[1.0]]}'
local reqs = {}
local i = 0

function init(args)
  for k, id in ipairs(ids) do
    reqs[k] = wrk.format("POST", "/v1/sessions/" .. id .. "/steps", {
      ["Host"] = wrk.headers["Host"],
      ["Content-Type"] = "application/json",
    }, body)
  end
end

function request()
  i = i % #reqs + 1
  return reqs[i]
end

-- With $DELAY_MS set, each connection waits a random time (exponential, that mean, in whole
-- milliseconds as wrk counts them) before each request: paced load below the peak
-- (bench/http.sh --latency). wrk's latency is from send to reply, the wait not included.
local mean = tonumber(os.getenv("DELAY_MS") or "")
if mean then
  math.randomseed(os.time())
  function delay()
    return math.floor(-mean * math.log(1 - math.random()) + 0.5)
  end
end
