-- GET /healthz: a route that does next to nothing, so its rate is the most
-- this server, this client and these two cores can do together.

package.path = assert(os.getenv("BENCH_LUA_DIR"), "BENCH_LUA_DIR is not set")
   .. "/?.lua;" .. package.path
local common = require("common")

setup = common.setup
done = common.done
