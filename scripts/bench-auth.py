#!/usr/bin/env python3
# keygate CPU per AUTH with 10 000 tenants configured (issue 14): by name, password only, wrong.
# Usage: scripts/bench-auth.py BINARY PORT REDIS_PORT   (N=requests, B=pipeline batch; keygate on cpu 1)
import os, socket, subprocess, sys, time
binary, port, redis_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conf = f"/tmp/keygate-bench-auth-{port}.toml"
with open(conf, "w") as f:
    f.write(f'listen = "127.0.0.1:{port}"\nthreads = 1\n[upstream]\nkind = "standalone"\nservers = ["127.0.0.1:{redis_port}"]\n[access]\nmax_auth_failures = 0\n')
    for i in range(10000):
        f.write(f'[[tenants]]\nname = "t{i}"\npassword = "pw{i}"\nprefix = "t{i}:"\n')
p = subprocess.Popen(["taskset", "-c", "1", binary, "--config", conf], stderr=subprocess.DEVNULL)
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", port)).close(); break
    except OSError:
        time.sleep(0.1)
def cpu():
    f = open(f"/proc/{p.pid}/stat").read().split(")")[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
def run(cmd, n=int(os.environ.get("N", "20000")), batch=int(os.environ.get("B", "500"))):
    s = socket.create_connection(("127.0.0.1", port))
    def enc(args): return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    req = enc(cmd) * batch
    c0 = cpu(); t0 = time.time()
    for _ in range(n // batch):
        s.sendall(req)
        need = batch; buf = b""
        while need:
            buf += s.recv(1 << 20)
            need = batch - buf.count(b"\r\n")
    dt = cpu() - c0
    s.close()
    return dt / n * 1e6
for label, cmd in [("AUTH t9999 pw9999", [b"AUTH", b"t9999", b"pw9999"]),
                   ("AUTH pw9999 (password only)", [b"AUTH", b"pw9999"]),
                   ("AUTH t9999 wrong", [b"AUTH", b"t9999", b"wrong"]),
                   ("AUTH wrong (password only)", [b"AUTH", b"wrong"])]:
    print(f"{label}: {run(cmd):.1f} us keygate CPU per AUTH")
p.kill()
