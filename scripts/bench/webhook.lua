-- POST /webhook with pre-signed status bodies, cycled.
--
-- BENCH_WEBHOOK_POOL names a file of records, each "<signature header
-- value> <body length>\n" followed by exactly that many body bytes. Bodies
-- are sent byte for byte as they were signed: any change, even a trailing
-- newline, would make the server refuse them with 403.

package.path = assert(os.getenv("BENCH_LUA_DIR"), "BENCH_LUA_DIR is not set")
   .. "/?.lua;" .. package.path
local common = require("common")

setup = common.setup
done = common.done

local requests = {}
local next_request = 1

function init(_)
   local pool = assert(os.getenv("BENCH_WEBHOOK_POOL"), "BENCH_WEBHOOK_POOL is not set")
   local data = common.slurp(pool)
   local position, index = 1, 0
   while position <= #data do
      local _, header_end, signature, length = data:find("^(%S+) (%d+)\n", position)
      assert(header_end, "malformed pool record at byte " .. position)
      local body_end = header_end + tonumber(length)
      -- Keep only this thread's share: record k goes to thread k mod n.
      if index % thread_total == thread_index then
         local body = data:sub(header_end + 1, body_end)
         assert(#body == tonumber(length), "truncated pool record at byte " .. position)
         -- Formatted once here, so each request costs the client nothing
         -- but a send.
         requests[#requests + 1] = wrk.format("POST", nil, {
            ["Content-Type"] = "application/json",
            ["User-Agent"] = "facebookexternalua",
            ["X-Hub-Signature-256"] = signature,
         }, body)
      end
      index = index + 1
      position = body_end + 1
   end
   assert(#requests > 0, "the webhook pool has no record for thread " .. thread_index)
end

function request()
   local r = requests[next_request]
   next_request = next_request % #requests + 1
   return r
end
