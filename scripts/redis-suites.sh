#!/usr/bin/env bash
# Redis's own TCL unit tests (Redis 7.0.15, Debian's source package) and redis-py 5.0.8's test
# suite, run through keygate in front of one redis-server with nothing sent around it, in
# pass-through mode and in tenant mode. Prints the counts per unit and the failing tests.
# Not part of CI (it takes 15–30 minutes); see the README, "Differences from Redis".
#
#   scripts/redis-suites.sh [pass|tenant|both|direct] [tcl|py|both] [unit ...]
#
# `direct` runs the suites against the redis-server itself, for the counts to compare with.
#
# Needs: tclsh 8.6, python3 with venv, redis-server and redis-cli (Debian), deb-src sources
# for `apt-get source` (added here when run as root), and network access to PyPI and Debian.
# Work files go to target/suites (sources cached there between runs).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
modes=${1:-both}
suites=${2:-both}
shift $(($# > 2 ? 2 : $#)) || true
units=("$@")
work=$root/target/suites
mkdir -p "$work"

# --- sources ------------------------------------------------------------------------------
tcl_dir=$work/redis-7.0.15
if [ ! -d "$tcl_dir" ]; then
  if ! ls /etc/apt/sources.list.d/*src* >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
      >/etc/apt/sources.list.d/debian-src.sources
    apt-get update -qq
  fi
  (cd "$work" && apt-get source --download-only redis >/dev/null 2>&1 && tar xzf redis_7.0.15.orig.tar.gz)
  # The suite runs redis-cli and redis-benchmark from src/ for some tests.
  mkdir -p "$tcl_dir/src"
  ln -sf "$(command -v redis-cli)" "$tcl_dir/src/redis-cli"
  ln -sf "$(command -v redis-benchmark)" "$tcl_dir/src/redis-benchmark"
  ln -sf "$(command -v redis-server)" "$tcl_dir/src/redis-server"
  # Tenant mode: the suite's client has no AUTH for an external server; with KEYGATE_AUTH set,
  # every connection it opens authenticates first (inline AUTH, its +OK read and dropped).
  python3 - "$tcl_dir/tests/support/redis.tcl" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
anchor = "    fconfigure $fd -translation binary\n    set id [incr ::redis::id]"
auth = (
    "    fconfigure $fd -translation binary\n"
    "    if {[info exists ::env(KEYGATE_AUTH)]} {\n"
    '        puts -nonewline $fd "AUTH $::env(KEYGATE_AUTH)\\r\\n"\n'
    "        flush $fd\n"
    "        gets $fd\n"
    "    }\n"
    "    set id [incr ::redis::id]"
)
assert anchor in text
open(path, "w").write(text.replace(anchor, auth, 1))
PY
fi
# Tenant mode: a tenant may not FLUSH the server's functions nor CONFIG SET the server, which
# the harness does before each external-server test group; there (KEYGATE_AUTH set) it tries
# them and goes on, so each test meets keygate's refusal itself and is counted.
python3 - "$tcl_dir/tests/support/server.tcl" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
if "KEYGATE_AUTH" not in text:
    tenant = "[info exists ::env(KEYGATE_AUTH)]"
    for line in [
        "    r function flush\n",
        "        dict set saved_config $param [lindex [r config get $param] 1]\n",
        "        r config set $param $val\n",
    ]:
        assert line in text, line
        indent = line[: len(line) - len(line.lstrip())]
        cmd = line.strip()
        text = text.replace(
            line,
            f"{indent}if {{{tenant}}} {{ catch {{{cmd}}} }} else {{ {cmd} }}\n",
        )
    open(path, "w").write(text)
PY
py_dir=$work/redis-5.0.8
if [ ! -d "$py_dir" ]; then
  (cd "$work" && python3 -m pip download -q --no-binary :all: --no-deps redis==5.0.8 && tar xzf redis-5.0.8.tar.gz)
fi
if [ ! -x "$work/venv/bin/pytest" ]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q redis==5.0.8 pytest pytest-asyncio==0.23.8 pytest-timeout mock packaging numpy
fi

cargo build --release --locked -q
keygate=$root/target/release/keygate

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- servers --------------------------------------------------------------------------------
pids=()
stop_servers() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap stop_servers EXIT

start_redis() {
  redis_port=$(free_port)
  mkdir -p "$work/redis-data"
  redis-server --port "$redis_port" --save '' --appendonly no --dir "$work/redis-data" \
    --enable-debug-command yes --enable-module-command yes --enable-protected-configs yes \
    --daemonize no >"$work/redis.log" 2>&1 &
  pids+=($!)
  until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done
}

start_keygate() { # $1: mode
  if [ "$1" = direct ]; then kg_port=$redis_port; return; fi
  kg_port=$(free_port)
  admin_port=$(free_port)
  local config=$work/keygate-$1.toml
  {
    echo "listen = \"127.0.0.1:$kg_port\""
    echo "[upstream]"
    echo "kind = \"standalone\""
    echo "servers = [\"127.0.0.1:$redis_port\"]"
    echo "[admin]"
    echo "listen = \"127.0.0.1:$admin_port\""
    if [ "$1" = tenant ]; then
      echo "[[tenants]]"
      echo "name = \"suite\""
      echo "password = \"suite-pass\""
      echo "prefix = \"suite:\""
      echo "allow_scripts = true"
    fi
  } >"$config"
  "$keygate" --config "$config" >"$work/keygate-$1.log" 2>&1 &
  local pid=$!
  pids+=($pid)
  until redis-cli -p "$kg_port" ping >/dev/null 2>&1; do
    kill -0 $pid 2>/dev/null || { cat "$work/keygate-$1.log"; exit 1; }
    sleep 0.1
  done
}

# --- the TCL suite --------------------------------------------------------------------------
run_tcl() { # $1: mode
  local mode=$1 list total_ok=0 total_err=0
  if [ ${#units[@]} -gt 0 ]; then list=("${units[@]}"); else
    list=($(cd "$tcl_dir/tests" && ls unit/*.tcl unit/type/*.tcl | sed 's/\.tcl$//'))
  fi
  # A tenant sees database 0 only: --singledb (no SELECT 9), and every connection AUTHs.
  local extra=() auth=(KEYGATE_SUITE=1)
  # One test is skipped in tenant mode: "Script return recursive object" switches the harness's
  # connection to raw replies and, its FUNCTION LOAD refused, fails before switching back, so
  # the rest of unit/scripting reads garbage and times out (counted as a failure in the README).
  if [ "$mode" = tenant ]; then
    extra=(--singledb --skiptest "Script return recursive object")
    auth=(KEYGATE_AUTH="suite suite-pass")
  fi
  for unit in "${list[@]}"; do
    # Each unit on a fresh server and keygate: a unit that leaves a script running forever (its
    # test failed before its SCRIPT KILL) would fail every later unit.
    stop_servers
    start_redis
    start_keygate "$mode"
    local log=$work/tcl-$mode-${unit//\//_}.log
    (cd "$tcl_dir" && env "${auth[@]}" timeout 900 ./runtest --host 127.0.0.1 --port "$kg_port" --single "$unit" \
      --timeout 120 --clients 1 --no-latency --durable "${extra[@]}" >"$log" 2>&1) || true
    sed -i 's/\x1b\[[0-9;]*m//g' "$log"
    local ok err
    ok=$(grep -c '^\[ok\]' "$log" || true)
    # A unit that stops answering ([TIMEOUT]) counts as one more failure: a hung test.
    err=$(grep -cE '^\[(err|exception|TIMEOUT)\]' "$log" || true)
    total_ok=$((total_ok + ok)); total_err=$((total_err + err))
    printf '%-8s tcl %-32s ok %4d  failed %4d\n' "$mode" "$unit" "$ok" "$err"
    grep -E '^\[(err|exception|TIMEOUT)\]' "$log" | sed 's/^/           /' | head -40 || true
    grep -E 'IN PROGRESS' "$log" | head -1 | sed 's/^.*(IN PROGRESS)/           hung in:/' || true
  done
  printf '%-8s tcl TOTAL ok %d failed %d\n' "$mode" "$total_ok" "$total_err"
}

# --- redis-py's suite ---------------------------------------------------------------------
run_py() { # $1: mode
  local mode=$1 url="redis://127.0.0.1:$kg_port"
  [ "$mode" = tenant ] && url="redis://suite:suite-pass@127.0.0.1:$kg_port"
  local xml=$work/py-$mode.xml
  (cd "$py_dir" && timeout 3600 "$work/venv/bin/pytest" tests -p no:cacheprovider -q \
    --timeout 60 -o asyncio_mode=auto --redis-url="$url" -m 'not onlycluster and not redismod and not ssl' \
    --ignore=tests/test_cluster.py --ignore=tests/test_asyncio/test_cluster.py \
    --ignore=tests/test_ssl.py --ignore=tests/test_asyncio/test_ssl.py \
    --junitxml="$xml" >"$work/py-$mode.log" 2>&1) || true
  python3 - "$xml" "$mode" <<'EOF'
import sys, collections, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
per = collections.defaultdict(lambda: [0, 0, 0])
failed = []
for case in root.iter("testcase"):
    module = case.get("classname", "").split(".")[1] if "." in case.get("classname", "") else case.get("classname")
    bad = case.find("failure") is not None or case.find("error") is not None
    skip = case.find("skipped") is not None
    per[module][2 if skip else 1 if bad else 0] += 1
    if bad:
        failed.append(f'{case.get("classname")}::{case.get("name")}')
tot = [0, 0, 0]
for module, (ok, bad, skip) in sorted(per.items()):
    print(f"{sys.argv[2]:<8} py  {module:<32} ok {ok:4d}  failed {bad:4d}  skipped {skip:4d}")
    tot = [a + b for a, b in zip(tot, (ok, bad, skip))]
for name in failed:
    print("           " + name)
print(f"{sys.argv[2]:<8} py  TOTAL ok {tot[0]} failed {tot[1]} skipped {tot[2]}")
EOF
}

for mode in pass tenant direct; do
  [ "$modes" = "$mode" ] || { [ "$modes" = both ] && [ "$mode" != direct ]; } || continue
  if [ "$suites" = both ] || [ "$suites" = tcl ]; then run_tcl "$mode"; fi
  if [ "$suites" = both ] || [ "$suites" = py ]; then
    stop_servers
    start_redis
    start_keygate "$mode"
    run_py "$mode"
  fi
done
