-- wrk script for benchmarks/serve_load.py: POST /v1/generate with n samples, every request its own
-- seed; counts responses by status and prints them with the latency percentiles when done.
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  n = tonumber(args[1] or "16")
  pause = tonumber(args[2] or "0")  -- ms each connection waits between requests (offered load)
  seed = id * 100000000
  statuses = {}
end

function request()
  seed = seed + 1
  local body = string.format('{"n": %d, "seed": %d, "format": "npz"}', n, seed)
  return wrk.format("POST", "/v1/generate", {["Content-Type"] = "application/json"}, body)
end

function delay()
  return pause
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + count
    end
  end
  for status, count in pairs(counts) do
    io.write(string.format("STATUS %d %d\n", status, count))
  end
  io.write(string.format("RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d socket_errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
