-- The action + GET round trip: suspend, GET, resume, GET, ... on the VMs named in
-- BENCH_VM_IDS (comma-separated; thread n starts on VM n). Suspending a paused VM and
-- resuming a running one are no-ops in the simulator (as in QEMU's driver), so
-- concurrent connections never see a 409. The bearer header comes from -H.
local counter = 0
local ids = {}
for id in string.gmatch(os.getenv("BENCH_VM_IDS") or "", "[^,]+") do
  table.insert(ids, id)
end

local reqs = {}

setup = function(thread)
  counter = counter + 1
  thread:set("thread_no", counter)
end

init = function(args)
  local auth = wrk.headers["Authorization"]
  local id = ids[((thread_no or 1) - 1) % #ids + 1]
  local post = function(action)
    return wrk.format("POST", "/api/v1/vms/" .. id .. "/action",
      {["Authorization"] = auth, ["Content-Type"] = "application/json", ["Host"] = wrk.host},
      '{"action":"' .. action .. '"}')
  end
  local get = wrk.format("GET", "/api/v1/vms/" .. id,
    {["Authorization"] = auth, ["Host"] = wrk.host})
  reqs = {post("suspend"), get, post("resume"), get}
end

local n = 0
request = function()
  n = n + 1
  return reqs[(n - 1) % 4 + 1]
end
