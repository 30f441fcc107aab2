-- wrk script for bench.ingest: one unique, valid Bytescale job object per request.
--   wrk ... -s bench/jobs.lua URL -- PREFIX TERMINAL_PERCENT
-- PREFIX: 12 chars [0-9A-Z], new for every wrk run, so no jobId repeats across runs on one database.
-- jobId = PREFIX .. thread number (2 digits) .. per-thread counter (12 digits) = 26 chars [0-9A-Z].
-- TERMINAL_PERCENT: share of requests carrying a terminal status (0 = Created/Pending/Running only;
-- 25 = every 4th request, alternately Failed with an error and Succeeded).
-- Every thread counts 2xx and non-2xx responses; done() prints one "bench-result" line.

local threads = {}
local thread_count = 0

function setup(thread)
   thread:set("tid", thread_count)
   thread_count = thread_count + 1
   table.insert(threads, thread)
end

local prefix
local terminal_percent
local counter = 0
local terminals = 0
local in_flight = { "Created", "Pending", "Running" }

ok = 0
non2xx = 0
first_bad = 0

function init(args)
   prefix = args[1] or ""
   terminal_percent = tonumber(args[2] or "0")
   if #prefix ~= 12 or prefix:find("[^0-9A-Z]") then
      error("PREFIX must be 12 characters [0-9A-Z], got '" .. prefix .. "'")
   end
   if terminal_percent == nil or terminal_percent < 0 or terminal_percent > 100 then
      error("TERMINAL_PERCENT must be 0..100")
   end
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
end

function request()
   local job_id = string.format("%s%02d%012d", prefix, tid, counter)
   local status, extra
   if (counter * terminal_percent) % 100 < terminal_percent then
      if terminals % 2 == 0 then
         status = "Failed"
         extra = ',"error":{"code":"bench_failure","message":"simulated"}'
      else
         status = "Succeeded"
         extra = ""
      end
      terminals = terminals + 1
   else
      status = in_flight[counter % 3 + 1]
      extra = ""
   end
   counter = counter + 1
   local body = '{"accountId":"A623uY2","attempts":0,"created":1700000000000,"jobId":"' .. job_id
      .. '","jobType":"CopyFileBatchJob","lastUpdated":1700000000123,"status":"' .. status .. '"'
      .. extra .. ',"summary":{}}'
   return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
   if status >= 200 and status < 300 then
      ok = ok + 1
   else
      non2xx = non2xx + 1
      if first_bad == 0 then
         first_bad = status
      end
   end
end

function done(summary, latency, requests)
   local total_ok, total_bad, bad = 0, 0, 0
   for _, thread in ipairs(threads) do
      total_ok = total_ok + thread:get("ok")
      total_bad = total_bad + thread:get("non2xx")
      if bad == 0 then
         bad = thread:get("first_bad")
      end
   end
   io.write(string.format("bench-result ok=%d non2xx=%d first_non2xx_status=%d\n", total_ok, total_bad, bad))
end
