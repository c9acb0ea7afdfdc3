#!/usr/bin/env python3
# keygate CPU per EVAL and backend connections for T tenants (one client each, C=clients per
# tenant), with or without upstream.tenant_acl (issue 14). The python client limits the rate.
# Usage: scripts/bench-tenant-scripts.py BINARY PORT REDIS_PORT TENANTS scripts|none SECONDS
import asyncio, os, socket, subprocess, sys, time
binary, port, redis_port, tenants, acl, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], float(sys.argv[6])
clients_per = int(os.environ.get("C", "1"))
conf = f"/tmp/keygate-bench-eval-{port}.toml"
with open(conf, "w") as f:
    f.write(f'listen = "127.0.0.1:{port}"\nthreads = 1\n[upstream]\nkind = "standalone"\nservers = ["127.0.0.1:{redis_port}"]\n')
    if acl != "none":
        f.write(f'tenant_acl = "{acl}"\n')
    f.write('[access]\nmax_unauthenticated_per_address = 0\n')
    for i in range(tenants):
        f.write(f'[[tenants]]\nname = "t{i}"\npassword = "pw{i}"\nprefix = "t{i}:"\nallow_scripts = true\n')
p = subprocess.Popen(["taskset", "-c", "1", binary, "--config", conf], stderr=subprocess.DEVNULL)
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", port)).close(); break
    except OSError:
        time.sleep(0.1)
def cpu():
    f = open(f"/proc/{p.pid}/stat").read().split(")")[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
def enc(args): return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
EVAL = enc([b"EVAL", b"return redis.call('INCR', KEYS[1])", b"1", b"k"])
count = 0
async def client(i, stop):
    global count
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(enc([b"AUTH", b"t%d" % i, b"pw%d" % i])); await w.drain(); await r.readline()
    w.write(EVAL); await w.drain(); await r.readline()  # warm-up
    while time.time() < stop:
        w.write(EVAL); await w.drain()
        line = await r.readline()
        assert line.startswith(b":"), line
        count += 1
    w.close()
def backend_connections():
    out = subprocess.run(["redis-cli", "-p", str(redis_port), "CLIENT", "LIST"], capture_output=True, text=True).stdout
    return len([l for l in out.splitlines() if "cmd=client" not in l])
async def main():
    global count
    stop = time.time() + 1.0
    await asyncio.gather(*[client(i % tenants, stop) for i in range(tenants * clients_per)])
    count = 0
    c0 = cpu(); t0 = time.time(); stop = t0 + secs
    task = asyncio.gather(*[client(i % tenants, stop) for i in range(tenants * clients_per)])
    await asyncio.sleep(secs / 2)
    conns = backend_connections()
    await task
    dt = cpu() - c0; el = time.time() - t0
    print(f"{binary.split('/')[-1]} tenants={tenants} clients={tenants*clients_per} acl={acl}: {count/el:.0f} EVAL/s, {dt/count*1e6:.1f} us keygate CPU per EVAL, {conns} backend connections mid-run")
asyncio.run(main())
p.kill()
