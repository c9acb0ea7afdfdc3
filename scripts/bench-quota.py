#!/usr/bin/env python3
"""Tenant quotas, measured: how far over its quota a tenant writing as fast as it can gets
before -OOM stops it, how long a delete takes to count (the accounting's lag), and what the
accounting costs the server.

Runs a fresh redis-server and the release keygate (target/release/keygate) per case, on free
ports, with redis-py (tests/requirements.txt). Usage:

    scripts/bench-quota.py [--keys 10000,1000000] [--value 100] [--scan-rate 20000]

For each key count N it runs, in order:
  keys    a tenant with max_keys = N pipelines SETs of new keys (100 per round trip) until the
          first -OOM; then the keys the server holds under its prefix, against N.
  memory  a tenant with max_memory = N x (MEMORY USAGE of one such key): the same, with the
          memory the server counts (MEMORY USAGE summed over its keys), against the quota.
  lag     the same tenant deletes a tenth of its keys; the time until a write is accepted
          again (one accounting pass), and that pass's duration as /metrics reports it.
  restart a new keygate (the old one's figures saved on the server) with the tenant writing
          flat out at once: how far over it gets before its own first pass completes.
  cost    the server's CPU (INFO cpu) and commands per second while the accounting runs,
          against the same time idle.
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from bench_ports import free_port, wait_port

import redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYGATE = os.path.join(ROOT, "target", "release", "keygate")



class Server:
    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        wait_port(self.port)
        self.r = redis.Redis(port=self.port)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Keygate:
    def __init__(self, server, quota, scan_rate):
        self.port, self.admin = free_port(), free_port()
        self.dir = tempfile.mkdtemp()
        path = os.path.join(self.dir, "keygate.toml")
        with open(path, "w") as f:
            f.write(
                f'listen = "127.0.0.1:{self.port}"\nthreads = 1\n'
                f'[upstream]\nkind = "standalone"\nservers = ["127.0.0.1:{server.port}"]\n'
                f'[admin]\nlisten = "127.0.0.1:{self.admin}"\n'
                f"[quota]\nscan_rate = {scan_rate}\n"
                f'[[tenants]]\nname = "t"\npassword = "pw"\nprefix = "t:"\n{quota}\n'
            )
        self.proc = subprocess.Popen([KEYGATE, "--config", path], env={**os.environ, "RUST_LOG": "warn"})
        wait_port(self.port)
        self.r = redis.Redis(port=self.port, username="t", password="pw")

    def metric(self, name):
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics").read().decode()
        for line in body.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def wait_passes(self, n=1, timeout=600):
        key = 'keygate_quota_passes_total{result="complete"}'
        start = self.metric(key) or 0
        end = time.time() + timeout
        while (self.metric(key) or 0) < start + n:
            if time.time() > end:
                sys.exit("no accounting pass completed")
            time.sleep(0.05)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def fill(r, value, start=0, batch=100):
    """SET new keys k<start>, k<start+1>, ... pipelined until the first refusal; returns
    (accepted, seconds)."""
    accepted, i, t0 = 0, start, time.time()
    while True:
        p = r.pipeline(transaction=False)
        for j in range(i, i + batch):
            p.set(f"k{j}", value)
        replies = p.execute(raise_on_error=False)
        for reply in replies:
            if reply is True:
                accepted += 1
            elif isinstance(reply, redis.exceptions.OutOfMemoryError):
                return accepted, time.time() - t0
            else:
                sys.exit(f"unexpected reply {reply!r}")
        i += batch


def held(server):
    """Keys and MEMORY USAGE bytes under t: on the server (one script per 1000 keys)."""
    script = (
        "local page = redis.call('SCAN', ARGV[1], 'MATCH', 't:*', 'COUNT', 1000) local b = 0 "
        "for _, k in ipairs(page[2]) do b = b + (redis.call('MEMORY', 'USAGE', k) or 0) end "
        "return {page[1], #page[2], b}"
    )
    cursor, keys, memory = "0", 0, 0
    while True:
        cursor, n, b = server.r.eval(script, 0, cursor)
        keys, memory = keys + n, memory + b
        if cursor in (b"0", "0"):
            return keys, memory


def cpu(server):
    info = server.r.info("cpu")
    return info["used_cpu_sys"] + info["used_cpu_user"]


def commands(server):
    return server.r.info("stats")["total_commands_processed"]


def case(n, value, scan_rate):
    out = {}
    # Keys.
    server = Server()
    kg = Keygate(server, f"max_keys = {n}", scan_rate)
    accepted, took = fill(kg.r, value)
    keys, _ = held(server)
    out["keys"] = (accepted, keys, took)
    kg.stop()
    server.stop()

    # Memory: the quota for n keys as the server counts one.
    server = Server()
    server.r.set("t:probe", value)
    per_key = server.r.memory_usage("t:probe")
    server.r.delete("t:probe")
    quota = n * per_key
    kg = Keygate(server, f"max_memory = {quota}", scan_rate)
    accepted, took = fill(kg.r, value)
    keys, memory = held(server)
    out["memory"] = (quota, per_key, accepted, memory, took)

    # Lag: put the tenant 10 % over its quota behind keygate's back (straight on the server),
    # wait until a completed pass has measured it over, then delete a tenth of its keys through
    # keygate and time until writes are accepted again.
    p = server.r.pipeline(transaction=False)
    for j in range(n // 10):
        p.set(f"t:extra{j}", value)
        if j % 1000 == 999:
            p.execute()
    p.execute()
    kg.wait_passes(2)
    try:
        kg.r.set("probe", value)
        sys.exit("a tenant measured over its quota was not refused")
    except redis.exceptions.OutOfMemoryError:
        pass
    p = kg.r.pipeline(transaction=False)
    for j in range(0, accepted // 10):
        p.delete(f"k{j}")
        if j % 1000 == 999:
            p.execute()
    p.execute()
    t0 = time.time()
    while True:
        try:
            kg.r.set("again", value)
            break
        except redis.exceptions.OutOfMemoryError:
            if time.time() - t0 > 600:
                sys.exit("still refused 600 s after the deletes")
            time.sleep(0.01)
    out["lag"] = (time.time() - t0, kg.metric("keygate_quota_last_pass_seconds"))

    # Cost: the server's CPU and commands while passes run, against idle.
    kg.stop()
    time.sleep(0.5)
    c0, n0, t0 = cpu(server), commands(server), time.time()
    time.sleep(10)
    idle = ((cpu(server) - c0) / (time.time() - t0), (commands(server) - n0) / (time.time() - t0))
    kg = Keygate(server, f"max_memory = {quota}", scan_rate)
    kg.wait_passes(1)
    c0, n0, t0 = cpu(server), commands(server), time.time()
    s0, e0 = kg.metric("keygate_quota_scripts_total"), kg.metric("keygate_quota_keys_examined_total")
    time.sleep(10)
    dt = time.time() - t0
    busy = ((cpu(server) - c0) / dt, (commands(server) - n0) / dt)
    scripts = (kg.metric("keygate_quota_scripts_total") - s0) / dt
    examined = (kg.metric("keygate_quota_keys_examined_total") - e0) / dt
    out["cost"] = (idle, busy, scripts, examined)
    kg.stop()

    # Restart: a new keygate (the old one's figures saved on the server) and the tenant writing
    # flat out at once, before the new keygate's own first pass completes.
    kg = Keygate(server, f"max_memory = {quota}", scan_rate)
    accepted, took = fill(kg.r, value, start=10 * n)
    _, memory = held(server)
    out["restart"] = (accepted, memory, quota, kg.metric('keygate_quota_passes_total{result="complete"}'))
    kg.stop()
    server.stop()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", default="10000,1000000")
    ap.add_argument("--value", type=int, default=100)
    ap.add_argument("--scan-rate", type=int, default=20000)
    args = ap.parse_args()
    value = b"x" * args.value
    for n in [int(k) for k in args.keys.split(",")]:
        r = case(n, value, args.scan_rate)
        accepted, keys, took = r["keys"]
        print(f"N={n} value={args.value} B scan_rate={args.scan_rate}")
        print(f"  keys:    max_keys {n}: accepted {accepted}, server holds {keys} "
              f"({keys - n:+d}, {100 * (keys - n) / n:+.3f} %) in {took:.1f} s")
        quota, per_key, accepted, memory, took = r["memory"]
        print(f"  memory:  max_memory {quota} ({per_key} B/key): accepted {accepted} keys, "
              f"server counts {memory} B ({100 * (memory - quota) / quota:+.2f} %) in {took:.1f} s")
        lag, last_pass = r["lag"]
        print(f"  lag:     writes accepted again {lag:.2f} s after deleting a tenth; "
              f"last pass {last_pass:.2f} s")
        accepted, memory, quota, passes = r["restart"]
        print(f"  restart: {accepted} new keys accepted, server counts {memory} B "
              f"({100 * (memory - quota) / quota:+.2f} % of the quota); the new keygate's "
              f"completed passes then: {passes:.0f}")
        (icpu, icmd), (bcpu, bcmd), scripts, examined = r["cost"]
        print(f"  cost:    server CPU {100 * icpu:.2f} % idle -> {100 * bcpu:.2f} % with passes "
              f"(+{100 * (bcpu - icpu):.2f} % of a core); commands/s {icmd:.1f} -> {bcmd:.1f}; "
              f"scripts/s {scripts:.1f}, keys examined/s {examined:.0f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
