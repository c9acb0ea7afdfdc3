#!/usr/bin/env python3
"""What many tenants cost keygate: config load (keygate --check), start, a reload, a /metrics
scrape and a /status.json, and the process's memory, at 10 000 and 100 000 tenants.

    scripts/bench-tenants-scale.py [--tenants 10000,100000] [--binary target/release/keygate]
                                   [--busy 200]

Each tenant gets a password, a prefix, max_connections and max_ops_per_sec (and every tenth a
max_keys quota); `--busy` of them send one request each before the scrapes, so /metrics has
busy and idle tenants as it would in use. Medians of 5 timings.
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from bench_ports import free_port, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



def config(n, port, admin, redis_port, comment="", quotas=True):
    lines = [
        f'listen = "127.0.0.1:{port}"', "threads = 1",
        "[upstream]", 'kind = "standalone"', f'servers = ["127.0.0.1:{redis_port}"]',
        "[admin]", f'listen = "127.0.0.1:{admin}"', f"# {comment}",
    ]
    for i in range(n):
        lines += [
            "[[tenants]]", f'name = "t{i}"', f'password = "pw{i}"', f'prefix = "t{i}:"',
            "max_connections = 100", "max_ops_per_sec = 1000",
        ]
        if quotas and i % 10 == 0:
            lines.append("max_keys = 100000")
    return "\n".join(lines) + "\n"


def timed(f, reps=5):
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def get(port, path, method="GET"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    return urllib.request.urlopen(req, timeout=120).read()


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def auth_and_ping(port, name, password):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"AUTH {name} {password}\r\nPING\r\n".encode())
    data = b""
    while data.count(b"\r\n") < 2:
        data += s.recv(4096)
    s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", default="10000,100000")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "keygate"))
    ap.add_argument("--busy", type=int, default=200)
    ap.add_argument("--no-quotas", action="store_true",
                    help="no max_keys (for a build before quotas existed)")
    args = ap.parse_args()
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", ""],
                             stdout=subprocess.DEVNULL)
    wait_port(redis_port)
    try:
        for n in [int(x) for x in args.tenants.split(",")]:
            port, admin = free_port(), free_port()
            d = tempfile.mkdtemp()
            path = os.path.join(d, "keygate.toml")
            with open(path, "w") as f:
                f.write(config(n, port, admin, redis_port, quotas=not args.no_quotas))
            size = os.path.getsize(path)
            check, _ = timed(lambda: subprocess.run(
                [args.binary, "--check", "--config", path], check=True,
                stdout=subprocess.DEVNULL), reps=3)
            t0 = time.perf_counter()
            kg = subprocess.Popen([args.binary, "--config", path],
                                  env={**os.environ, "RUST_LOG": "warn"})
            wait_port(port, 120)
            wait_port(admin)
            start = time.perf_counter() - t0
            for i in range(0, n, max(1, n // args.busy)):
                auth_and_ping(port, f"t{i}", f"pw{i}")
            time.sleep(1.5)
            scrape, body = timed(lambda: get(admin, "/metrics"))
            status, sbody = timed(lambda: get(admin, "/status.json"))

            def reload():
                with open(path, "w") as f:
                    f.write(config(n, port, admin, redis_port, comment=str(time.time()),
                                   quotas=not args.no_quotas))
                return get(admin, "/reload", "POST")

            reloaded, _ = timed(reload, reps=3)
            lines = body.count(b"\n")
            print(f"{n} tenants (config {size / 1e6:.1f} MB): check {check * 1000:.0f} ms, "
                  f"start to listening {start * 1000:.0f} ms, reload {reloaded * 1000:.0f} ms, "
                  f"/metrics {scrape * 1000:.1f} ms ({len(body) / 1e3:.0f} kB, "
                  f"{lines} lines), /status.json {status * 1000:.1f} ms "
                  f"({len(sbody) / 1e3:.0f} kB), RSS {rss_mb(kg.pid):.0f} MB")
            sys.stdout.flush()
            kg.kill()
            kg.wait()
    finally:
        redis.kill()


if __name__ == "__main__":
    main()
