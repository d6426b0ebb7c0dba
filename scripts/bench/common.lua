-- Shared by every scenario. Each scenario script finds this file through
-- package.path, which it extends with BENCH_LUA_DIR (set by bench.sh).

local common = {}

-- wrk runs one Lua state per thread plus one for the main thread; setup()
-- runs in the main one, once per thread, before that thread starts. Giving
-- each thread its index (and the count, from BENCH_THREADS) lets it walk
-- its own slice of a shared list, so two threads never send the same
-- request at the same moment and one pass covers every item once.
local created = 0

function common.setup(thread)
   thread:set("thread_index", created)
   thread:set("thread_total", tonumber(os.getenv("BENCH_THREADS")) or 1)
   created = created + 1
end

-- Reads a file whole; a missing file stops the run with a clear message.
function common.slurp(path)
   local file = assert(io.open(path, "rb"))
   local data = file:read("*a")
   file:close()
   return data
end

-- One machine-readable line, printed once by the main thread after the run
-- and parsed by bench.sh. wrk counts an answer as a status error when its
-- code is 400 or more; no scenario expects a 1xx or 3xx, so that count is
-- the number of non-2xx answers.
function common.done(summary, latency, _)
   local seconds = summary.duration / 1e6
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d seconds=%.3f rps=%.1f p50_us=%d p99_us=%d max_us=%d "
         .. "non2xx=%d connect_errors=%d read_errors=%d write_errors=%d timeouts=%d\n",
      summary.requests, seconds, summary.requests / seconds,
      latency:percentile(50), latency:percentile(99), latency.max,
      e.status, e.connect, e.read, e.write, e.timeout))
end

return common
