#!/usr/bin/env bash
# Every test, on every store: starts a throw-away redis-server and a
# three-node Redis Cluster on free 127.0.0.1 ports, runs `cargo test` (unit
# tests, and the integration suite on sled, plus the tests of several
# instances on one Redis), then runs the integration suite again with Redis
# as the store, and once more on the cluster. Arguments go to every
# `cargo test` run, e.g. a test name to run only the tests that match.
# Without arguments, the tests that plain `cargo test` leaves out run last:
# two that wait out timeouts, and the power-loss tests (sled on a FUSE
# filesystem that forgets what was not synced, scripts/lossyfs.py).
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  printf 'test: %s\n' "$1" >&2
  exit 1
}

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test: installing redis-server (Debian's package)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    die "redis-server is needed: install it (sudo apt-get install redis-server) and run this again"
  fi
fi

dir=$(mktemp -d)
pid=
cluster_pids=()
cleanup() {
  for p in $pid "${cluster_pids[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

# A free port: ask the kernel for one, then hand it to redis-server. Tried
# again should another process take it in between.
for _ in 1 2 3 4 5; do
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # Every write fsynced before it is answered, as a production setup that
  # wants acknowledged statuses to survive power loss runs it.
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly yes \
    --appendfsync always --dir "$dir" --logfile "$dir/redis.log" &
  pid=$!
  for _ in $(seq 100); do
    if redis-cli -p "$port" ping >/dev/null 2>&1; then break 2; fi
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.05
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=
done
[ -n "$pid" ] || die "redis-server did not start; its log: $(cat "$dir/redis.log" 2>/dev/null)"
echo "test: redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') on 127.0.0.1:$port"
export WAVERIFY_TEST_REDIS="redis://127.0.0.1:$port"

# The cluster: three primaries, no replicas. Each node also listens on its
# port + 10000 for the cluster bus, so both must be free.
cluster_ports=$(python3 - <<'PY'
import socket
ports = []
while len(ports) < 3:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    if p + 10000 > 65535 or p in ports:
        continue
    try:
        b = socket.socket(); b.bind(("127.0.0.1", p + 10000)); b.close()
    except OSError:
        continue
    ports.append(p)
print(" ".join(map(str, ports)))
PY
)
nodes=()
for p in $cluster_ports; do
  mkdir -p "$dir/cluster-$p"
  redis-server --bind 127.0.0.1 --port "$p" --cluster-enabled yes \
    --cluster-config-file "$dir/cluster-$p/nodes.conf" --save '' --appendonly yes \
    --appendfsync always --dir "$dir/cluster-$p" --logfile "$dir/cluster-$p/redis.log" &
  cluster_pids+=($!)
  nodes+=("127.0.0.1:$p")
done
for p in $cluster_ports; do
  for _ in $(seq 100); do
    redis-cli -p "$p" ping >/dev/null 2>&1 && break
    sleep 0.05
  done
done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/cluster-create.log" 2>&1 ||
  die "the Redis Cluster was not created: $(cat "$dir/cluster-create.log")"
for _ in $(seq 200); do
  if redis-cli -p "${nodes[0]##*:}" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; then
    break
  fi
  sleep 0.05
done
redis-cli -p "${nodes[0]##*:}" cluster info | grep -q 'cluster_state:ok' ||
  die "the Redis Cluster does not become ready"
WAVERIFY_TEST_REDIS_CLUSTER="$(printf 'redis://%s,' "${nodes[@]}")"
export WAVERIFY_TEST_REDIS_CLUSTER="${WAVERIFY_TEST_REDIS_CLUSTER%,}"
echo "test: a Redis Cluster of three nodes on ${nodes[*]}"

# Each run takes about half a minute once built. One that has not ended
# after 15 is stopped with its tests (timeout signals the whole process
# group) and fails: sled 0.34 can deadlock under heavy load (see Durability
# in the README), and a hung run would otherwise never end.
bounded() {
  local status=0
  timeout --kill-after=10 15m "$@" || status=$?
  if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    die "the tests had not finished after 15 minutes and were stopped (sled 0.34 can deadlock under heavy load: see Durability in the README)"
  fi
  return "$status"
}

echo "test: building the tests"
cargo test --locked --no-run "$@"
echo "test: == unit tests, and the integration suite on sled"
bounded cargo test --locked "$@"
echo "test: == the integration suite on Redis"
WAVERIFY_TEST_STORE=redis bounded cargo test --locked --test api "$@"
echo "test: == the integration suite on a Redis Cluster"
WAVERIFY_TEST_STORE=redis-cluster bounded cargo test --locked --test api "$@"

# Last, the tests left out of plain `cargo test` (`#[ignore]`): two that wait
# out timeouts, and the power-loss tests. Those need FUSE (/dev/fuse and the
# right to mount), libfuse2 and python3's fusepy; the last two are installed
# here when missing. A machine where FUSE cannot mount at all skips the
# power-loss tests, and says so.
if [ "$#" -gt 0 ]; then
  echo "test: the slow and power-loss tests were not run: arguments were given"
  exit 0
fi
echo "test: == the slow tests, and the power-loss tests (sled on scripts/lossyfs.py)"
if ! python3 -c 'import fuse' >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test: installing libfuse2 (Debian's package) and fusepy (PyPI)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfuse2 >/dev/null 2>&1 ||
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfuse2t64 >/dev/null
    python3 -m pip install -q --disable-pip-version-check fusepy==3.0.1 >/dev/null 2>&1 ||
      die "fusepy could not be installed: python3 -m pip install fusepy==3.0.1"
  fi
  python3 -c 'import fuse' >/dev/null 2>&1 ||
    die "the power-loss tests need libfuse2 and python3's fusepy: apt-get install libfuse2; python3 -m pip install fusepy==3.0.1"
fi
# Whether FUSE mounts here at all: a mount of lossyfs, then unmounted.
mkdir -p "$dir/probe/backing" "$dir/probe/mount"
python3 scripts/lossyfs.py "$dir/probe/backing" "$dir/probe/mount" >"$dir/probe/log" 2>&1 &
probe=$!
for _ in $(seq 100); do
  grep -q 'lossyfs: mounted' "$dir/probe/log" 2>/dev/null && break
  kill -0 "$probe" 2>/dev/null || break
  sleep 0.05
done
mounted=0
grep -q 'lossyfs: mounted' "$dir/probe/log" 2>/dev/null && mounted=1
kill -9 "$probe" 2>/dev/null || true
wait "$probe" 2>/dev/null || true
if [ "$mounted" = 1 ]; then
  umount -l "$dir/probe/mount" 2>/dev/null || fusermount -uz "$dir/probe/mount"
  bounded cargo test --locked --test api -- --ignored
else
  echo "test: *** power-loss tests NOT RUN: FUSE does not mount on this machine: $(tr '\n' ' ' <"$dir/probe/log")"
  bounded cargo test --locked --test api -- --ignored --skip power_loss
fi
