#!/usr/bin/env bash
# Tenant mode against plain pass-through, side by side in one run.
#
# ../shared/bench cannot measure tenant mode (its redis-benchmark runs do not AUTH), so this
# script does the equivalent: one redis-server, two keygate processes in front of it (one plain,
# one with a tenant), redis-benchmark alternating between them (the tenant run authenticating
# with --user/-a), CPU per request read from /proc for each keygate. Prints the median of REPS
# runs per cell and the tenant/pass-through ratios.
#
# Usage: scripts/bench-tenant.sh            (REPS=3 by default; builds target/release/keygate)
# Needs redis-server, redis-benchmark, python3, taskset.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
cargo build --release --locked --quiet
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
spare_port() {
  local port=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  echo "$port"
}
# Two cores: keygate on cpu 1, everything else on cpu 0 (as ../shared/bench's "split").
pin_proxy="taskset -c 1"; pin_rest="taskset -c 0"
[ "$(nproc)" -ge 2 ] || { pin_proxy=""; pin_rest=""; }

redis_port=$(spare_port 17400)
$pin_rest redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$work" --logfile "$work/redis.log" & pids+=($!)
pass_port=$(spare_port 17500)
tenant_port=$(spare_port $((pass_port + 1)))
cat > "$work/pass.toml" <<TOML
listen = "127.0.0.1:$pass_port"
[upstream]
kind = "standalone"
servers = ["127.0.0.1:$redis_port"]
TOML
sed "s/:$pass_port\"/:$tenant_port\"/" "$work/pass.toml" > "$work/tenant.toml"
cat >> "$work/tenant.toml" <<TOML
[[tenants]]
name = "bench"
password = "bench-pw"
prefix = "bench:"
TOML
$pin_proxy target/release/keygate --config "$work/pass.toml" 2>"$work/pass.log" & pids+=($!); pass_pid=$!
$pin_proxy target/release/keygate --config "$work/tenant.toml" 2>"$work/tenant.log" & pids+=($!); tenant_pid=$!
sleep 1

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() { # label pid port auth test pipeline requests
  local before after out
  before=$(ticks "$2")
  # shellcheck disable=SC2086
  out=$($pin_rest redis-benchmark -p "$3" $4 -t "$5" -P "$6" -n "$7" -c 50 -d 32 -r 100000 -q 2>/dev/null \
    | tr '\r' '\n' | grep "requests per second" | tail -1)
  after=$(ticks "$2")
  echo "$1 $5 P$6 $(echo "$out" | grep -oE '[0-9.]+ requests' | cut -d' ' -f1) $(( (after - before) * 10000 )) $7"
}
for rep in $(seq "$REPS"); do
  for test in set get; do
    for pipeline in 1 16; do
      n=$([ "$pipeline" = 1 ] && echo 200000 || echo 1000000)
      run pass "$pass_pid" "$pass_port" "" "$test" "$pipeline" "$n"
      run tenant "$tenant_pid" "$tenant_port" "--user bench -a bench-pw" "$test" "$pipeline" "$n"
    done
  done
done > "$work/runs.txt"
python3 - "$work/runs.txt" <<'PY'
import statistics, sys
cells = {}
for line in open(sys.argv[1]):
    label, test, pipeline, rps, cpu_us, n = line.split()
    cells.setdefault((test, pipeline), {}).setdefault(label, []).append((float(rps), int(cpu_us) / int(n)))
print("| workload | pass rps | tenant rps | rps ratio | pass CPU us/req | tenant CPU us/req | CPU ratio |")
print("|---|---:|---:|---:|---:|---:|---:|")
for (test, pipeline), by in sorted(cells.items()):
    p_rps = statistics.median(r for r, _ in by["pass"]); t_rps = statistics.median(r for r, _ in by["tenant"])
    p_cpu = statistics.median(c for _, c in by["pass"]); t_cpu = statistics.median(c for _, c in by["tenant"])
    print(f"| {test}_{pipeline.lower()}_d32 | {p_rps:,.0f} | {t_rps:,.0f} | {t_rps / p_rps:.2f} | {p_cpu:.2f} | {t_cpu:.2f} | {t_cpu / p_cpu:.2f} |")
PY
