#!/usr/bin/env python3
"""CPU per request of keygate at threads = 1 and 2, beside Redis itself and twemproxy (sidecar).

One redis-server; in front of it twemproxy (nutcracker, one server) and keygate processes (by
default threads = 1 and threads = 2 over TCP, and threads = 1 over Unix sockets on both sides).
redis-benchmark GET with 50 clients at pipeline 1 and 16 drives each target in turn, interleaved,
REPS times. For each run: requests per second, and the CPU the target's process spent (utime +
stime from /proc, in µs per request; for `direct`, Redis's own). Then one more run per cell under
`perf stat -e raw_syscalls:sys_enter -p PID` for system calls per request (skipped without perf).
Prints medians as a markdown table.

Usage: scripts/bench-cores.py [--reps N] [--requests N] [--targets direct,nutcracker,...]
                              [--before PATH]   (targets before-t1, before-t2: another keygate)
Needs redis-server, redis-benchmark, nutcracker, target/release/keygate (cargo build --release).
"""

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYGATE = os.path.join(ROOT, "target", "release", "keygate")
TICK = os.sysconf("SC_CLK_TCK")
# The system calls that send on a socket (one per client reply at P1; the rest are backend writes).
WRITES = ["syscalls:sys_enter_write", "syscalls:sys_enter_writev", "syscalls:sys_enter_sendto",
          "syscalls:sys_enter_sendmsg"]


def spare_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """utime + stime of a process and all its threads, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_ready(port=None, path=None, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            family = socket.AF_UNIX if path else socket.AF_INET
            with socket.socket(family) as s:
                s.connect(path if path else ("127.0.0.1", port))
                s.sendall(b"*1\r\n$4\r\nPING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"target on {path or port} did not answer PING")


class Target:
    def __init__(self, name, argv, port=None, path=None, pid_of=None):
        self.name, self.port, self.path = name, port, path
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) if argv else None
        self.pid = pid_of or self.proc.pid
        wait_ready(port, path)

    def bench_args(self):
        return ["-s", self.path] if self.path else ["-h", "127.0.0.1", "-p", str(self.port)]


def run_benchmark(target, pipeline, requests, perf=False):
    args = ["redis-benchmark", *target.bench_args(), "-c", "50", "-n", str(requests),
            "-P", str(pipeline), "-t", "get", "-r", "100000", "--csv"]
    before = cpu_seconds(target.pid)
    perf_proc = None
    if perf:
        perf_proc = subprocess.Popen(
            ["perf", "stat", "-x,", "-e", ",".join(WRITES + ["raw_syscalls:sys_enter"]),
             "-p", str(target.pid)],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        time.sleep(0.2)
    started = time.time()
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    elapsed = time.time() - started
    used = cpu_seconds(target.pid) - before
    syscalls = None
    if perf_proc:
        perf_proc.send_signal(2)
        err = perf_proc.communicate()[1]
        counts = {m.group(2): int(m.group(1))
                  for m in re.finditer(r"^(\d+),,([\w:]+)", err, re.M)}
        if "raw_syscalls:sys_enter" in counts:
            syscalls = (counts["raw_syscalls:sys_enter"] / requests,
                        sum(counts.get(w, 0) for w in WRITES) / requests)
    rps = float(re.findall(r'"([\d.]+)"', out.splitlines()[-1])[0])
    return rps, used * 1e6 / requests, syscalls, elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--targets", default="direct,nutcracker,keygate-t1,keygate-t2,keygate-t1-unix")
    ap.add_argument("--before", help="another keygate binary, for targets before-t1, before-t2")
    ap.add_argument("--shards", type=int, default=1,
                    help="servers behind the proxies (more than 1: ketama, as ../shared/bench)")
    opts = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-cores-")
    procs = []
    try:
        redis_port = spare_port()
        redis_sock = os.path.join(work, "redis.sock")
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                  "--unixsocket", redis_sock, "--unixsocketperm", "700",
                                  "--save", "", "--appendonly", "no", "--dir", work],
                                 stdout=subprocess.DEVNULL)
        procs.append(redis)
        wait_ready(redis_port)
        subprocess.run(["redis-benchmark", "-p", str(redis_port), "-t", "set", "-n", "100000",
                        "-r", "100000", "-q"], check=True, capture_output=True)
        # More servers for the proxies (the first is `direct`'s too); TCP and socket addresses.
        shards = [(redis_port, redis_sock)]
        for i in range(1, opts.shards):
            port, sock = spare_port(), os.path.join(work, f"shard{i}.sock")
            procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--unixsocket", sock,
                 "--save", "", "--appendonly", "no", "--dir", work], stdout=subprocess.DEVNULL))
            wait_ready(port)
            shards.append((port, sock))
        kind = "ketama" if opts.shards > 1 else "standalone"
        targets = []
        for name in opts.targets.split(","):
            if name == "direct":
                targets.append(Target("direct (Redis)", None, port=redis_port, pid_of=redis.pid))
            elif name == "nutcracker":
                port = spare_port()
                conf = os.path.join(work, "nutcracker.yml")
                with open(conf, "w") as f:
                    f.write(f"alpha:\n  listen: 127.0.0.1:{port}\n  hash: fnv1a_64\n"
                            f"  distribution: ketama\n  redis: true\n  server_connections: 1\n"
                            f"  servers:\n" + "".join(f"   - 127.0.0.1:{p}:1\n" for p, _ in shards))
                t = Target("twemproxy", ["nutcracker", "-c", conf, "-s", str(spare_port())], port=port)
                procs.append(t.proc)
                targets.append(t)
            elif name.startswith("keygate-t") or name.startswith("before-t"):
                binary = opts.before if name.startswith("before") else KEYGATE
                threads = int(name.split("-t")[1].split("-")[0])
                unix = name.endswith("-unix")
                port = spare_port()
                listen = f"unix:{work}/{name}.sock" if unix else f"127.0.0.1:{port}"
                servers = ", ".join(f'"unix:{sock}"' if unix else f'"127.0.0.1:{port}"'
                                    for port, sock in shards)
                conf = os.path.join(work, f"{name}.toml")
                with open(conf, "w") as f:
                    f.write(f'listen = "{listen}"\nthreads = {threads}\n[upstream]\n'
                            f'kind = "{kind}"\nservers = [{servers}]\n')
                label = "keygate before" if binary != KEYGATE else "keygate"
                t = Target(f"{label} threads={threads}" + (" unix" if unix else ""),
                           [binary, "--config", conf],
                           port=None if unix else port, path=f"{work}/{name}.sock" if unix else None)
                procs.append(t.proc)
                targets.append(t)
            else:
                raise SystemExit(f"unknown target {name}")
        have_perf = subprocess.run(["which", "perf"], capture_output=True).returncode == 0
        results = {}
        for pipeline in (1, 16):
            n = opts.requests * (5 if pipeline > 1 else 1)
            for rep in range(opts.reps):
                for t in targets:
                    rps, cpu, _, _ = run_benchmark(t, pipeline, n)
                    results.setdefault((t.name, pipeline), {"rps": [], "cpu": []})
                    results[(t.name, pipeline)]["rps"].append(rps)
                    results[(t.name, pipeline)]["cpu"].append(cpu)
                    print(f"P{pipeline} rep {rep + 1} {t.name}: {rps:.0f} req/s, {cpu:.2f} µs CPU/req",
                          file=sys.stderr)
            for t in targets:
                if have_perf:
                    _, _, sc, _ = run_benchmark(t, pipeline, n, perf=True)
                    results[(t.name, pipeline)]["sys"] = sc
        print("| target | P | req/s | µs CPU/request | × Redis | × twemproxy | syscalls/request "
              "| socket writes/request |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for pipeline in (1, 16):
            base = {}
            for t in targets:
                r = results[(t.name, pipeline)]
                base[t.name] = statistics.median(r["cpu"])
            for t in targets:
                r = results[(t.name, pipeline)]
                cpu = statistics.median(r["cpu"])
                redis_x = cpu / base["direct (Redis)"] if "direct (Redis)" in base else float("nan")
                nc_x = cpu / base["twemproxy"] if "twemproxy" in base else float("nan")
                sc = r.get("sys")
                print(f"| {t.name} | {pipeline} | {statistics.median(r['rps']):.0f} | {cpu:.2f} "
                      f"| {redis_x:.2f} | {nc_x:.2f} | {'' if sc is None else f'{sc[0]:.2f}'} "
                      f"| {'' if sc is None else f'{sc[1]:.2f}'} |")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
