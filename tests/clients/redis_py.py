"""redis-py through keygate: handshake, data, a transaction and a WATCH race, pub/sub, blocking
pops and SELECT, in RESP2 and RESP3. Run by tests/clients.rs as `python3 redis_py.py HOST PORT`;
any failed check raises, and the exit status says so."""

import sys
import threading
import time

import redis

HOST, PORT = sys.argv[1], int(sys.argv[2])


def client(protocol, **kw):
    return redis.Redis(host=HOST, port=PORT, protocol=protocol, socket_timeout=10,
                       client_name=f"py{protocol}", **kw)


def check(protocol):
    r = client(protocol)
    other = client(protocol)
    # The handshake (HELLO, CLIENT SETINFO, CLIENT SETNAME) went through cleanly.
    assert r.ping() is True
    name = r.client_getname()
    assert (name.decode() if isinstance(name, bytes) else name) == f"py{protocol}", name
    info = r.client_info()
    assert info.get("lib-name", "redis-py").startswith("redis-py"), info
    assert int(info["resp"]) == protocol, info

    p = f"p{protocol}:"
    assert r.set(p + "k", "v") is True
    assert r.get(p + "k") == b"v"
    assert r.get(p + "missing") is None
    r.hset(p + "h", mapping={"a": "1", "b": "2"})
    assert r.hgetall(p + "h") == {b"a": b"1", b"b": b"2"}
    r.zadd(p + "z", {"m": 1.5})
    assert r.zscore(p + "z", "m") == 1.5
    assert r.zrange(p + "z", 0, -1, withscores=True) in ([(b"m", 1.5)], [[b"m", 1.5]])

    # A transaction.
    pipe = r.pipeline(transaction=True)
    pipe.set(p + "t", 1).incr(p + "t").get(p + "t")
    assert pipe.execute() == [True, 2, b"2"]

    # A WATCH race: the other client's write aborts the transaction.
    r.set(p + "bal", 10)
    with r.pipeline() as pipe:
        pipe.watch(p + "bal")
        assert int(pipe.get(p + "bal")) == 10
        other.set(p + "bal", 99)
        pipe.multi()
        pipe.set(p + "bal", 11)
        try:
            pipe.execute()
            raise AssertionError("EXEC should have failed after the WATCHed key changed")
        except redis.WatchError:
            pass
    assert r.get(p + "bal") == b"99"

    # A pub/sub round trip.
    ps = r.pubsub()
    ps.subscribe(p + "ch")
    ps.psubscribe(p + "c*")
    confirmations = [ps.get_message(timeout=5) for _ in range(2)]
    assert [m["type"] for m in confirmations] == ["subscribe", "psubscribe"], confirmations
    assert other.publish(p + "ch", "hi") == 2
    got = [ps.get_message(timeout=5) for _ in range(2)]
    assert sorted(m["type"] for m in got) == ["message", "pmessage"], got
    assert all(m["data"] == b"hi" and m["channel"] == (p + "ch").encode() for m in got), got
    ps.unsubscribe()
    ps.punsubscribe()
    ps.close()

    # Blocking pops: one woken by a push from another client, one timing out.
    def push():
        time.sleep(0.2)
        other.rpush(p + "q", "job")

    threading.Thread(target=push).start()
    got = r.blpop([p + "q"], timeout=5)
    assert tuple(got) == ((p + "q").encode(), b"job"), got
    assert r.brpop([p + "q"], timeout=0.1) is None

    # Another database, chosen by the client's connection.
    r1 = client(protocol, db=1)
    r1.set(p + "db", "one")
    assert r.get(p + "db") is None
    assert r1.get(p + "db") == b"one"


for protocol in (2, 3):
    check(protocol)
print("redis-py", redis.__version__, "ok")
