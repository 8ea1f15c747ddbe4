-- wrk script for bench/run. $BENCH_COOKIES names a file of Cookie header
-- values, one per line: with one line every request carries that session
-- (one hot session); with more, each request picks one at random (many
-- distinct sessions). At the end it prints one JSON line of results.

local cookies = {}
for line in io.lines(os.getenv("BENCH_COOKIES")) do
  if line ~= "" then cookies[#cookies + 1] = line end
end

if #cookies == 1 then
  wrk.headers["Cookie"] = cookies[1]
else
  local counter = 0
  function setup(thread)
    counter = counter + 1
    thread:set("seed", counter)
  end
  function init(args)
    math.randomseed(seed or 1)
  end
  function request()
    return wrk.format(nil, nil, { Cookie = cookies[math.random(#cookies)] })
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
