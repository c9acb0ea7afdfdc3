#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests against real redis-server
# processes, and a build check of the fuzz targets. This is what CI runs (.ci/run).
#
# Needs redis-server, redis-cli and nutcracker (Debian packages redis-server, redis-tools,
# nutcracker); when one is missing and we are root, they are installed. Tests start their own
# servers on free loopback ports.
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

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test
# The fuzz targets are their own crate (built by cargo-fuzz); make sure they still compile.
cargo check --quiet --manifest-path fuzz/Cargo.toml --bins
