-- POST /v1/verifications/{id}/check with a wrong code, cycling over every
-- verification in BENCH_IDS (one "<verification id> <message id>" a line).
--
-- Round robin, not twenty tries in a row each: concurrent checks of one
-- verification would mostly measure compare-and-swap retries, and a login
-- backend does not hammer one verification from 64 connections either.
-- Every verification therefore answers 200 until the whole list has been
-- walked BENCH_MAX_ATTEMPTS times, and 409 after that.

package.path = assert(os.getenv("BENCH_LUA_DIR"), "BENCH_LUA_DIR is not set")
   .. "/?.lua;" .. package.path
local common = require("common")

setup = common.setup
done = common.done

local requests = {}
local next_request = 1

function init(_)
   local headers = {
      ["Authorization"] = "Bearer "
         .. assert(os.getenv("WAVERIFY_API_KEY"), "WAVERIFY_API_KEY is not set"),
      ["Content-Type"] = "application/json",
   }
   -- Six digits, so the server does run the check (a malformed code gets
   -- 400 without using an attempt). It matches a verification's real code
   -- one time in a million; such a verification is approved and answers 409
   -- afterwards, which shows up in the non-2xx count and changes nothing
   -- else.
   local body = '{"code":"000000"}'
   local ids = assert(os.getenv("BENCH_IDS"), "BENCH_IDS is not set")
   local index = 0
   for line in io.lines(ids) do
      local id = line:match("^(%x+) ")
      assert(id, "malformed line in BENCH_IDS: " .. line)
      if index % thread_total == thread_index then
         requests[#requests + 1] =
            wrk.format("POST", "/v1/verifications/" .. id .. "/check", headers, body)
      end
      index = index + 1
   end
   assert(#requests > 0, "BENCH_IDS has no verification for thread " .. thread_index)
end

function request()
   local r = requests[next_request]
   next_request = next_request % #requests + 1
   return r
end
