-- GET /api/v1/vms/{id} cycling over the VMs in BENCH_VM_IDS (comma-separated).
-- The bearer header comes from -H.
local ids = {}
for id in string.gmatch(os.getenv("BENCH_VM_IDS") or "", "[^,]+") do
  table.insert(ids, id)
end
local reqs = {}
init = function(args)
  for _, id in ipairs(ids) do
    table.insert(reqs, wrk.format("GET", "/api/v1/vms/" .. id,
      {["Authorization"] = wrk.headers["Authorization"], ["Host"] = wrk.host}))
  end
end
local n = 0
request = function()
  n = n + 1
  return reqs[(n - 1) % #reqs + 1]
end
