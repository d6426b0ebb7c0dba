#!/usr/bin/env bash
# Load benchmark of waverify on this machine: builds the release binary,
# starts it in sandbox mode on a throw-away data directory and a free
# loopback port, and drives three scenarios with wrk from a second process:
#
#   ceiling     GET /healthz, a route that does next to nothing
#   webhook     POST /webhook with signed status bodies for real verifications
#   check-code  POST /v1/verifications/{id}/check with a wrong code
#
# then the ceiling once more, and prints one table. wrk and the server share
# the machine's cores, so the ceiling is what server and client reach
# together, and the other rows are read as a share of the mean of its two
# runs.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/bench.sh [options]

Builds waverify (cargo build --release), starts it in sandbox mode on a
temporary data directory and a free 127.0.0.1 port, creates verifications,
and measures three scenarios with wrk, one after the other:

  ceiling     GET /healthz (does nothing: the most server and client can do)
  webhook     POST /webhook, signed Meta status bodies (0.6-3.9 KB; sent, delivered,
              read, failed; 15% batches) for the verifications created
  check-code  POST /v1/verifications/{id}/check with a wrong code, round robin
              over the verifications (each answers 200 twenty times, then 409)

and then the ceiling again: the ratios are to the mean of its two rates.

Options:
  -d, --duration SECONDS       length of each scenario (default 10)
  -c, --connections N          concurrent connections (default 64)
  -t, --threads N              wrk threads (default 2, one per core)
  -n, --verifications N        verifications created before the runs (default 10000);
                               check-code stays on real 200 checks for 20*N requests
  -p, --pool N                 distinct signed webhook bodies (default 40000); a
                               status changes a verification the first time its kind
                               arrives for it, later passes over the pool send
                               duplicates that change nothing
  -s, --store STORE            sled, redis, or both (default both): with both, the whole
                               benchmark runs once on each store, one after the other, and
                               a side-by-side table ends the output. On redis, a
                               redis-server of its own (apt-get install redis-server when
                               missing) runs on a free 127.0.0.1 port with appendonly yes,
                               appendfsync always: every write fsynced before it is answered
  -v, --verbose                also print wrk's own report of each scenario
  -h, --help                   this text

The build goes to CARGO_TARGET_DIR when it is set, otherwise to the
repository's target/. A first build from nothing takes several minutes;
after that a default run takes about a minute.

Needs cargo, python3, curl and wrk; wrk is installed with apt-get when
missing. Only the server this script starts is loaded, on 127.0.0.1; it is
stopped and its data directory removed on exit, error or Ctrl-C.
EOF
}

die() {
  printf 'bench: %s\n' "$1" >&2
  exit "${2:-1}"
}

duration=10
connections=64
threads=2
verifications=10000
pool=40000
verbose=0
store=both
all_args=("$@")

need_value() {
  (($2 >= 2)) || die "$1 needs a value" 2
}

while (($# > 0)); do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    -d | --duration) need_value "$1" $# && duration="$2" && shift 2 ;;
    -c | --connections) need_value "$1" $# && connections="$2" && shift 2 ;;
    -t | --threads) need_value "$1" $# && threads="$2" && shift 2 ;;
    -n | --verifications) need_value "$1" $# && verifications="$2" && shift 2 ;;
    -p | --pool) need_value "$1" $# && pool="$2" && shift 2 ;;
    --duration=*) duration="${1#*=}" && shift ;;
    --connections=*) connections="${1#*=}" && shift ;;
    --threads=*) threads="${1#*=}" && shift ;;
    --verifications=*) verifications="${1#*=}" && shift ;;
    --pool=*) pool="${1#*=}" && shift ;;
    -s | --store) need_value "$1" $# && store="$2" && shift 2 ;;
    --store=*) store="${1#*=}" && shift ;;
    -v | --verbose) verbose=1 && shift ;;
    *)
      usage >&2
      die "unknown argument: $1" 2
      ;;
  esac
done

for pair in "duration:$duration" "connections:$connections" "threads:$threads" \
  "verifications:$verifications" "pool:$pool"; do
  [[ "${pair#*:}" =~ ^[1-9][0-9]*$ ]] || die "--${pair%%:*} must be a positive whole number" 2
done
# wrk gives each thread connections/threads of them; fewer than one each
# would leave threads idle and the count silently lower than asked.
((connections >= threads)) || die "--connections must be at least --threads" 2
# Bounds that keep a run finite and the machine usable.
((duration <= 600)) || die "--duration is at most 600 seconds" 2
((connections <= 10000)) || die "--connections is at most 10000" 2
((verifications <= 200000)) || die "--verifications is at most 200000" 2
((pool <= 200000)) || die "--pool is at most 200000" 2

case "$store" in
  sled | redis) ;;
  both)
    # One run per store, then the figures side by side.
    side_dir="$(mktemp -d "${TMPDIR:-/tmp}/waverify-bench-both.XXXXXX")"
    trap 'rm -rf -- "$side_dir"' EXIT
    for one in sled redis; do
      echo "bench: ===== store: $one"
      "${BASH_SOURCE[0]}" "${all_args[@]}" --store "$one" | tee "$side_dir/$one.txt"
      status=${PIPESTATUS[0]}
      ((status == 0)) || exit "$status"
      echo
    done
    echo "both stores, one after the other in this run (ratios are to each run's own ceiling):"
    printf '%-11s | %9s %7s %7s %7s | %9s %7s %7s %7s\n' scenario 'sled r/s' p50 p99 'vs ceil' \
      'redis r/s' p50 p99 'vs ceil'
    for name in ceiling webhook check-code; do
      a="$(grep -m1 "^$name " "$side_dir/sled.txt")"
      b="$(grep -m1 "^$name " "$side_dir/redis.txt")"
      awk -v name="$name" -v a="$a" -v b="$b" 'BEGIN {
        n = split(a, x, " +"); m = split(b, y, " +")
        # A row: name requests req/s p50 p99 non2xx (share%) sock ratio% ...; the
        # ratio is the first field that ends in "%" without a parenthesis.
        for (i = 6; i <= n; i++) if (x[i] ~ /^[0-9.]+%$/) { rx = x[i]; break }
        for (i = 6; i <= m; i++) if (y[i] ~ /^[0-9.]+%$/) { ry = y[i]; break }
        printf "%-11s | %9s %7s %7s %7s | %9s %7s %7s %7s\n", name, x[3], x[4], x[5], rx, \
          y[3], y[4], y[5], ry
      }'
    done
    exit 0
    ;;
  *) die "--store must be sled, redis or both" 2 ;;
esac

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lua_dir="$repo/scripts/bench"

command -v cargo >/dev/null 2>&1 || die "cargo is required"
command -v python3 >/dev/null 2>&1 || die "python3 is required"
command -v curl >/dev/null 2>&1 || die "curl is required"
if ! command -v wrk >/dev/null 2>&1; then
  echo "bench: installing wrk (apt-get install -y wrk)"
  # The package lists may be missing on a fresh machine: update only then.
  apt-get install -y wrk >/dev/null 2>&1 ||
    { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; } ||
    die "could not install wrk with apt-get"
fi

if [[ "$store" == redis ]] && ! command -v redis-server >/dev/null 2>&1; then
  echo "bench: installing redis-server (apt-get install -y redis-server)"
  apt-get install -y redis-server >/dev/null 2>&1 ||
    { apt-get update >/dev/null && apt-get install -y redis-server >/dev/null; } ||
    die "could not install redis-server with apt-get"
fi

# --- supervision ------------------------------------------------------------

work=""
server_pid=""
child_pid=""
redis_pid=""

# Runs a step in the background and waits for it. Run in the foreground,
# a child that handles SIGINT itself (wrk prints its report and exits 0)
# would leave bash's INT trap unrun and the script going on to the next
# step; `wait` is interrupted by the signal at once. A background child
# ignores SIGINT, so cleanup ends it.
supervise() {
  "$@" &
  child_pid=$!
  local status=0
  wait "$child_pid" || status=$?
  child_pid=""
  return "$status"
}

stop_server() {
  [[ -n "$server_pid" ]] || return 0
  if kill -0 "$server_pid" 2>/dev/null; then
    # SIGTERM lets actix drain and sled flush; the server's own shutdown
    # timeout is 10 s, so give it a little more before forcing it.
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 150); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n "$child_pid" ]]; then
    kill -TERM "$child_pid" 2>/dev/null || true
    wait "$child_pid" 2>/dev/null || true
  fi
  stop_server
  if [[ -n "$redis_pid" ]]; then
    kill -TERM "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  fi
  if [[ -n "$work" ]]; then
    rm -rf -- "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
# Exit through the EXIT trap, with the usual codes of a signalled shell.
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build ------------------------------------------------------------------

echo "bench: building the release binary"
supervise cargo build --release --quiet --manifest-path "$repo/Cargo.toml" ||
  die "cargo build --release failed"
# cargo metadata knows where the binary went, whether CARGO_TARGET_DIR is
# set, relative, or configured elsewhere.
target_dir="$(cargo metadata --format-version 1 --no-deps --manifest-path "$repo/Cargo.toml" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
binary="$target_dir/release/waverify"
[[ -x "$binary" ]] || die "no binary at $binary after the build"

# --- server -----------------------------------------------------------------

work="$(mktemp -d "${TMPDIR:-/tmp}/waverify-bench.XXXXXX")"

random_hex() {
  od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'
}
# Fresh secrets each run: nothing to leak, and the development defaults are
# never what is measured.
api_key="bench-$(random_hex 24)"
app_secret="$(random_hex 32)"
code_key="$(random_hex 32)"
verify_token="$(random_hex 16)"

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"

# Abuse limits are there for many clients behind one service; this
# benchmark is one client, one key and one address sending tens of
# thousands of calls a minute, so with the defaults it would measure 429
# answers. Raise each limit the binary knows (its --help lists them) past
# anything a run can reach; the counting itself still runs on every call.
raised_limits=()
server_help="$("$binary" --help 2>&1 || true)"
for setting in WAVERIFY_CLIENT_REQUESTS_PER_MINUTE=10000000 \
  WAVERIFY_DAILY_SEND_BUDGET=1000000 \
  WAVERIFY_NUMBER_FAILED_CHECKS_PER_HOUR=10000; do
  if grep -q "^ *${setting%%=*} " <<<"$server_help"; then
    raised_limits+=("$setting")
  fi
done

store_url=""
data_dir="$work/data"
if [[ "$store" == redis ]]; then
  data_dir="$work/redis"
  mkdir -p "$data_dir"
  redis_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly yes \
    --appendfsync always --dir "$data_dir" --logfile "$work/redis.log" &
  redis_pid=$!
  for _ in $(seq 1 100); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 || die "redis-server did not start"
  store_url="redis://127.0.0.1:$redis_port"
  echo "bench: redis-server on 127.0.0.1:$redis_port (appendfsync always, data in $data_dir)"
fi

echo "bench: starting waverify (sandbox mode, store $store, data in $data_dir)"
(
  # Nothing from the caller's environment may switch the server to live
  # mode or change its limits: drop every WAVERIFY_ variable, then set ours.
  while IFS= read -r name; do
    unset "$name"
  done < <(compgen -e | grep '^WAVERIFY_' || true)
  export WAVERIFY_API_KEY="$api_key" WAVERIFY_APP_SECRET="$app_secret" \
    WAVERIFY_CODE_KEY="$code_key" WAVERIFY_VERIFY_TOKEN="$verify_token" \
    WAVERIFY_MAX_ATTEMPTS=20 WAVERIFY_LOG=warn
  for setting in "${raised_limits[@]}"; do
    export "${setting?}"
  done
  if [[ -n "$store_url" ]]; then
    export WAVERIFY_STORE="$store_url"
  fi
  # Port 0: the kernel picks a free port, and the start-up line names it.
  exec "$binary" --bind 127.0.0.1:0 --data-dir "$work/data"
) >"$work/server.log" 2>&1 &
server_pid=$!

port=""
for _ in $(seq 1 200); do
  kill -0 "$server_pid" 2>/dev/null || {
    cat "$work/server.log" >&2
    die "waverify exited during start-up"
  }
  line="$(grep -o 'address=127\.0\.0\.1:[0-9]*' "$work/server.log" | head -n 1 || true)"
  if [[ -n "$line" ]]; then
    port="${line##*:}"
    break
  fi
  sleep 0.1
done
[[ -n "$port" ]] || {
  cat "$work/server.log" >&2
  die "waverify did not say which port it listens on within 20 s"
}
base="http://127.0.0.1:$port"
curl --silent --fail --max-time 5 "$base/healthz" >/dev/null ||
  die "GET $base/healthz did not answer 200"

rss_kib() {
  awk '/^VmRSS:/ { print $2 }' "/proc/$server_pid/status"
}
dir_kib() {
  du -sk "$data_dir" | cut -f1
}
rss_start="$(rss_kib)"

# --- setup ------------------------------------------------------------------

echo "bench: creating $verifications verifications, one number each"
setup_started="$(date +%s)"
WAVERIFY_API_KEY="$api_key" supervise python3 "$lua_dir/create_verifications.py" \
  "$base" "$verifications" "$work/ids.txt" || die "could not create the verifications"
# Microseconds, from bash itself: SECONDS counts whole seconds only.
created_at=${EPOCHREALTIME/./}

echo "bench: signing $pool webhook bodies"
WAVERIFY_APP_SECRET="$app_secret" supervise python3 "$lua_dir/webhook_pool.py" \
  "$work/ids.txt" "$pool" "$work/pool.bin" "$setup_started" >"$work/pool.txt" ||
  die "could not generate the webhook bodies"
cat "$work/pool.txt"

# Every send was made once its message id was known. The sandbox reports
# sent, delivered and read within 3 s of a send; let the last of those land
# before measuring, so that they are not counted in a run.
while ((${EPOCHREALTIME/./} - created_at < 4000000)); do
  sleep 0.2
done
rss_setup="$(rss_kib)"
dir_setup="$(dir_kib)"

# --- runs -------------------------------------------------------------------

export BENCH_LUA_DIR="$lua_dir" BENCH_THREADS="$threads" \
  BENCH_IDS="$work/ids.txt" BENCH_WEBHOOK_POOL="$work/pool.bin"

# CPU time the server used, in clock ticks (utime + stime): with the
# request count it gives the server's own cost per request, apart from
# wrk's, which shares the cores.
server_ticks() {
  awk '{ print $14 + $15 }' "/proc/$server_pid/stat"
}
# Busy ticks of the whole machine: less the server's and wrk's, what other
# processes took from the cores (other builds disturb the figures).
machine_busy_ticks() {
  awk '/^cpu / { for (i = 2; i <= 9; i++) if (i != 5 && i != 6) busy += $i; print busy }' /proc/stat
}
# CPU seconds of this shell's finished children (bash's `times`, second
# line, "XmS.SSSs XmS.SSSs"): around a run, that is wrk's own. `times` must
# run in this shell, not in a command substitution's subshell, whose
# children are not these: hence the file.
children_seconds() {
  times >"$work/times"
  awk 'NR == 2 {
    for (i = 1; i <= 2; i++) { split($i, t, "m"); total += t[1] * 60 + t[2] }
    print total
  }' "$work/times"
}

declare -A result
run() {
  local name="$1" script="$2" path="$3" out="$work/wrk-$1.txt" bench
  local server_before busy_before wrk_before server_after busy_after wrk_after
  echo "bench: $name: $connections connections, ${duration} s"
  server_before="$(server_ticks)"
  busy_before="$(machine_busy_ticks)"
  children_seconds >"$work/wrk-before"
  # A 5 s timeout: slower answers are counted as timeouts, not latencies,
  # and would show in their own column.
  WAVERIFY_API_KEY="$api_key" supervise wrk --threads "$threads" --connections "$connections" \
    --duration "${duration}s" --timeout 5s --latency \
    --script "$lua_dir/$script" "$base$path" >"$out" 2>&1 ||
    {
      cat "$out" >&2
      die "wrk failed in scenario $name"
    }
  server_after="$(server_ticks)"
  busy_after="$(machine_busy_ticks)"
  children_seconds >"$work/wrk-after"
  wrk_before="$(<"$work/wrk-before")"
  wrk_after="$(<"$work/wrk-after")"
  if ((verbose)); then
    sed 's/^/    /' "$out"
  fi
  bench="$(grep '^BENCH ' "$out" | tail -n 1)"
  [[ -n "$bench" ]] || {
    cat "$out" >&2
    die "wrk printed no summary in scenario $name"
  }
  result[$name]="$bench server_ticks=$((server_after - server_before))"
  result[$name]+=" busy_ticks=$((busy_after - busy_before))"
  result[$name]+=" wrk_seconds=$(awk -v a="$wrk_before" -v b="$wrk_after" 'BEGIN { print b - a }')"
}

run ceiling ceiling.lua /healthz
# Resident memory and store size before the webhook run and at every tenth
# of it: a long run (-d 60 and more) shows whether they level off.
rss_webhook_before="$(rss_kib)"
dir_webhook_before="$(dir_kib)"
tenth="$(awk -v d="$duration" 'BEGIN { print d / 10 }')"
(
  for _ in 1 2 3 4 5 6 7 8 9; do
    sleep "$tenth"
    echo "$(rss_kib) $(dir_kib)"
  done >"$work/samples"
) &
sampler=$!
run webhook webhook.lua /webhook
wait "$sampler" 2>/dev/null || true
rss_webhook_after="$(rss_kib)"
dir_webhook_after="$(dir_kib)"
echo "$rss_webhook_after $dir_webhook_after" >>"$work/samples"
run check-code check.lua /
# The ceiling again: its rate moves more than the others' from minute to
# minute on a shared machine, so the ratios are to the mean of the two.
run ceiling-again ceiling.lua /healthz

rss_end="$(rss_kib)"
dir_end="$(dir_kib)"
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- report -----------------------------------------------------------------

# field NAME "BENCH k=v k=v ...": the value of key NAME.
field() {
  local pair
  for pair in $2; do
    [[ "$pair" == "$1="* ]] && {
      printf '%s' "${pair#*=}"
      return
    }
  done
  printf '0'
}

ceiling_rps="$(awk -v a="$(field rps "${result[ceiling]}")" \
  -v b="$(field rps "${result[ceiling-again]}")" 'BEGIN { print (a + b) / 2 }')"

echo
echo "store: $store"
echo "waverify $(cd "$repo" && git describe --always --dirty 2>/dev/null || echo '?'), $(nproc) cores" \
  "shared by server and wrk; $threads wrk threads, $connections connections, ${duration} s each"
echo "load average before: $load_before   after: $load_after"
if ((${#raised_limits[@]} > 0)); then
  echo "limits raised: ${raised_limits[*]}"
fi
echo
clock_ticks="$(getconf CLK_TCK)"
printf '%-13s %9s %8s %7s %7s %17s %5s %7s   %s\n' \
  scenario requests 'req/s' 'p50 ms' 'p99 ms' 'non-2xx' 'sock' 'vs ceil' \
  'cores: srv  wrk other  srv us/req'
for name in ceiling webhook check-code ceiling-again; do
  r="${result[$name]}"
  requests="$(field requests "$r")"
  non2xx="$(field non2xx "$r")"
  socket_errors=$(($(field connect_errors "$r") + $(field read_errors "$r") +
    $(field write_errors "$r") + $(field timeouts "$r")))
  awk -v name="$name" -v requests="$requests" -v rps="$(field rps "$r")" \
    -v p50="$(field p50_us "$r")" -v p99="$(field p99_us "$r")" -v non2xx="$non2xx" \
    -v sock="$socket_errors" -v ceiling="$ceiling_rps" -v seconds="$(field seconds "$r")" \
    -v server="$(field server_ticks "$r")" -v busy="$(field busy_ticks "$r")" \
    -v wrk="$(field wrk_seconds "$r")" -v hz="$clock_ticks" 'BEGIN {
      # Computed apart: in awk, ">" among print arguments is a redirection.
      share = (requests > 0) ? 100 * non2xx / requests : 0
      ratio = (ceiling > 0) ? 100 * rps / ceiling : 0
      server_cores = (seconds > 0) ? server / hz / seconds : 0
      wrk_cores = (seconds > 0) ? wrk / seconds : 0
      other_cores = (seconds > 0) ? (busy - server) / hz / seconds - wrk_cores : 0
      if (other_cores < 0) other_cores = 0
      per_request = (requests > 0) ? 1e6 * server / hz / requests : 0
      printf "%-13s %9d %8.0f %7.2f %7.2f %8d (%5.1f%%) %5d %6.1f%%   %10.2f %4.2f %5.2f %11.1f\n",
        name, requests, rps, p50 / 1000, p99 / 1000, non2xx, share, sock, ratio,
        server_cores, wrk_cores, other_cores, per_request
    }'
done
echo
webhook_requests="$(field requests "${result[webhook]}")"
check_requests="$(field requests "${result[check-code]}")"
echo "sock: socket errors and timeouts (5 s). cores: how many cores the server, wrk and"
echo "the rest of the machine kept busy during the run; the rest includes kernel threads"
echo "writing the server's data, but well above 0 on the ceiling row it means other work"
echo "shared the cores and the figures are disturbed. srv us/req: the server's CPU time"
echo "per request, all its threads (sled's I/O threads included). vs ceil: the share of"
echo "the mean of the two ceiling runs, one before the others and one after: $(printf '%.0f' "$ceiling_rps")/s."
echo
# The pool summary is "pool: N bodies of A-B bytes (median M) with S statuses: ...".
echo "webhook:    $(sed 's/^pool: //; s/ with /,\n            /' "$work/pool.txt")"
awk -v pool="$pool" -v sent="$webhook_requests" -v n="$verifications" \
  -v checks="$check_requests" 'BEGIN {
    printf "            %.2f passes over the pool; after the first, statuses are duplicates:\n", \
      sent / pool
    printf "            verified, parsed, looked up and committed, but they change nothing\n"
    printf "check-code: %d verifications x 20 tries = %d possible 200s; %d requests sent\n", \
      n, 20 * n, checks
    printf "            (every check sends 000000; the rare verification whose code it is,\n"
    printf "            one in a million, is approved once and then answers 409)\n"
    if (checks > 20 * n)
      printf "            NOTE: more checks than tries: the later ones were 409s, so the\n" \
        "            check-code row does not measure real checks; raise -n to %d or more\n", \
        int((checks + 19) / 20)
  }'
# The start-up line is a warning too; anything else the server warned about
# (a refused sandbox webhook, a failed flush) bears on the figures.
warnings="$(grep -E ' (WARN|ERROR) ' "$work/server.log" | grep -vc 'waverify listening' || true)"
echo "server log: $warnings warnings or errors after start-up"
if ((warnings > 0)); then
  grep -E ' (WARN|ERROR) ' "$work/server.log" | grep -v 'waverify listening' | head -n 3 |
    cut -c1-200 | sed 's/^/    /'
fi
awk -v a="$rss_start" -v b="$rss_setup" -v c="$rss_end" \
  -v d="$dir_setup" -v e="$dir_end" 'BEGIN {
    printf "server RSS: %.1f MiB at start, %.1f MiB after setup, %.1f MiB at the end\n", \
      a / 1024, b / 1024, c / 1024
    printf "data dir:   %.1f MiB after setup, %.1f MiB at the end\n", d / 1024, e / 1024
  }'
awk -v n="$(field requests "${result[webhook]}")" -v a="$rss_webhook_before" \
  -v c="$dir_webhook_before" '
    { rss = rss sprintf(" %.1f", $1 / 1024); dir = dir sprintf(" %.1f", $2 / 1024) }
    END {
      printf "webhook run (%d requests), MiB before it and at each tenth of it:\n", n
      printf "    server RSS %.1f |%s\n", a / 1024, rss
      printf "    data dir   %.1f |%s\n", c / 1024, dir
    }' "$work/samples"
