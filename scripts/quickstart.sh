#!/usr/bin/env bash
# Quick start: build keygate, start a real Redis on a spare port, and run keygate in front of it.
# On a fresh Debian machine with Rust installed; installs redis-server with apt-get if missing
# (as root, or with sudo). Ctrl-C stops keygate and the Redis it started.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "quickstart: installing redis-server" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server redis-tools >/dev/null
fi

# The first port from $1 up that nothing listens on.
spare_port() {
  local port=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  echo "$port"
}

cargo build --release --locked
redis_port=$(spare_port 16379)
proxy_port=$(spare_port 6380)
admin_port=$(spare_port 9121)
workdir=$(mktemp -d)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$workdir" --daemonize yes --pidfile "$workdir/redis.pid" --logfile "$workdir/redis.log"
trap 'kill "$(cat "$workdir/redis.pid")" 2>/dev/null; rm -rf "$workdir"' EXIT

sed -e "s/^listen = \"127.0.0.1:6380\"/listen = \"127.0.0.1:$proxy_port\"/" \
    -e "s/^servers = \[\"127.0.0.1:6379\"\]/servers = [\"127.0.0.1:$redis_port\"]/" \
    -e "s/^listen = \"127.0.0.1:9121\"/listen = \"127.0.0.1:$admin_port\"/" \
    proxy.toml > "$workdir/keygate.toml"

cat <<MSG

  Redis   is running on 127.0.0.1:$redis_port
  keygate is starting on 127.0.0.1:$proxy_port, in front of it.

  Connect:  redis-cli -p $proxy_port
  Metrics:  curl http://127.0.0.1:$admin_port/metrics

  Ctrl-C stops keygate and this Redis.

MSG
target/release/keygate --config "$workdir/keygate.toml"
