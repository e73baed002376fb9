-- The migrate + poll loop: read the VM, POST /vms/{id}/migrate to the other host, GET
-- /migrations/{id} until the job ends, read the VM again, and so on. While the POST or
-- the read is in flight, the other connections read the VM too. BENCH_MIGRATIONS is
-- "vm:host_a:host_b,..." (thread n takes entry n). The bearer header comes from -H.
-- All connections of a wrk thread share its Lua state, so a thread has one migration in
-- flight at a time; reading the VM first (where is it, is it still migrating from the
-- previous run?) means no request ever gets a 409.
local specs = {}
for item in string.gmatch(os.getenv("BENCH_MIGRATIONS") or "", "[^,]+") do
  local vm, a, b = string.match(item, "([^:]+):([^:]+):([^:]+)")
  table.insert(specs, {vm = vm, a = a, b = b})
end

local counter = 0
setup = function(thread)
  counter = counter + 1
  thread:set("thread_no", counter)
end

local spec, auth, dest
local state = "probe"  -- probe: learn where the VM is; post: migrate it; poll: watch the job
local current = nil    -- the migration being polled
local pending = false  -- the POST is in flight

init = function(args)
  spec = specs[((thread_no or 1) - 1) % #specs + 1]
  auth = wrk.headers["Authorization"]
end

local function get(path)
  return wrk.format("GET", path, {["Authorization"] = auth, ["Host"] = wrk.host})
end

request = function()
  if state == "post" and not pending then
    pending = true
    return wrk.format("POST", "/api/v1/vms/" .. spec.vm .. "/migrate",
      {["Authorization"] = auth, ["Content-Type"] = "application/json", ["Host"] = wrk.host},
      '{"destination_host_id":"' .. dest .. '"}')
  end
  if state == "poll" then
    return get("/api/v1/migrations/" .. current)
  end
  return get("/api/v1/vms/" .. spec.vm)
end

response = function(status, headers, body)
  if pending and (status == 202 or status >= 400) then
    pending = false
    if status == 202 then
      current = string.match(body, '"migration_id"%s*:%s*"([^"]+)"')
      state = "poll"
    else
      state = "probe"  -- counted as an error by wrk, which voids the run
    end
    return
  end
  if status ~= 200 then
    return
  end
  if state == "probe" then
    local id = string.match(body, '"id"%s*:%s*"([^"]+)"')
    if id ~= spec.vm then
      return
    end
    local job = string.match(body, '"migration_id"%s*:%s*"([^"]+)"')
    if job then
      current, state = job, "poll"
    else
      local host = string.match(body, '"host_id"%s*:%s*"([^"]+)"')
      if host == spec.a then dest = spec.b else dest = spec.a end
      state = "post"
    end
  elseif state == "poll" then
    local id = string.match(body, '"id"%s*:%s*"([^"]+)"')
    local s = string.match(body, '"status"%s*:%s*"(%a+)"')
    if id == current and (s == "completed" or s == "failed" or s == "cancelled") then
      current, state = nil, "probe"
    end
  end
end
