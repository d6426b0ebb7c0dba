#!/usr/bin/env bash
# Every test, on both stores: starts a throw-away redis-server on a free
# 127.0.0.1 port, runs `cargo test` (unit tests, and the integration suite
# on sled, plus the tests of several instances on one Redis), then runs the
# integration suite again with Redis as the store. Arguments go to both
# `cargo test` runs, e.g. a test name to run only the tests that match.
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
cleanup() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
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

echo "test: == unit tests, and the integration suite on sled"
cargo test --locked "$@"
echo "test: == the integration suite on Redis"
WAVERIFY_TEST_STORE=redis cargo test --locked --test api "$@"
