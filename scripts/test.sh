#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests against real redis-server
# processes, and a build check of the fuzz targets. This is what CI runs (.ci/run).
#
# Needs redis-server (Debian: apt-get install redis-server); when it is missing and we are root,
# it is installed. Tests start their own servers on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing redis-server" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
  else
    echo "test.sh: redis-server is missing: install it (apt-get install redis-server)" >&2
    exit 1
  fi
fi

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test
# The fuzz targets are their own crate (built by cargo-fuzz); make sure they still compile.
cargo check --quiet --manifest-path fuzz/Cargo.toml --bins
