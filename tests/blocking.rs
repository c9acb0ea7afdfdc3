//! Blocking commands through keygate: each on a backend connection of its own, so the shared
//! connections keep serving everyone else; a per-server cap; a client that leaves while blocked
//! takes its backend connection with it.

mod common;

use std::time::{Duration, Instant};

use common::{bulk, redis_cli, Keygate, Redis};
use redis::AsyncCommands;

fn text(reply: Vec<u8>) -> String {
    String::from_utf8_lossy(&reply).into_owned()
}

/// Backend connections of Redis blocked in `command` right now.
fn blocked_in(redis: &Redis, command: &str) -> usize {
    let list = redis_cli(redis.port, &["CLIENT", "LIST"]);
    list.lines()
        .filter(|l| l.contains(&format!("cmd={command} ")))
        .count()
}

/// A blocking command, the command that unblocks it, and the reply expected.
type Case = (Vec<&'static [u8]>, Vec<&'static [u8]>, String);

#[tokio::test]
async fn every_blocking_command_waits_without_stalling_others() {
    let backend = Redis::start();
    // One shared connection: a blocking command on it would stall every other client.
    let kg = Keygate::start(&backend.addr()).await;
    let mut other = kg.raw().await;
    let cases: Vec<Case> = vec![
        (
            vec![b"BLPOP", b"l1", b"l2", b"0"],
            vec![b"RPUSH", b"l2", b"a"],
            [b"*2\r\n".to_vec(), bulk("l2"), bulk("a")]
                .concat()
                .pipe(text),
        ),
        (
            vec![b"BRPOP", b"l1", b"0"],
            vec![b"RPUSH", b"l1", b"x", b"y"],
            [b"*2\r\n".to_vec(), bulk("l1"), bulk("y")]
                .concat()
                .pipe(text),
        ),
        (
            vec![b"BLMOVE", b"src", b"dst", b"LEFT", b"RIGHT", b"0"],
            vec![b"RPUSH", b"src", b"m"],
            text(bulk("m")),
        ),
        (
            vec![b"BRPOPLPUSH", b"src2", b"dst", b"0"],
            vec![b"RPUSH", b"src2", b"n"],
            text(bulk("n")),
        ),
        (
            vec![b"BLMPOP", b"0", b"1", b"l3", b"LEFT", b"COUNT", b"2"],
            vec![b"RPUSH", b"l3", b"p", b"q", b"r"],
            [
                b"*2\r\n".to_vec(),
                bulk("l3"),
                b"*2\r\n".to_vec(),
                bulk("p"),
                bulk("q"),
            ]
            .concat()
            .pipe(text),
        ),
        (
            vec![b"BZPOPMIN", b"z1", b"0"],
            vec![b"ZADD", b"z1", b"1", b"one", b"2", b"two"],
            [b"*3\r\n".to_vec(), bulk("z1"), bulk("one"), bulk("1")]
                .concat()
                .pipe(text),
        ),
        (
            vec![b"BZPOPMAX", b"z2", b"0"],
            vec![b"ZADD", b"z2", b"1", b"one", b"2", b"two"],
            [b"*3\r\n".to_vec(), bulk("z2"), bulk("two"), bulk("2")]
                .concat()
                .pipe(text),
        ),
        (
            vec![b"BZMPOP", b"0", b"1", b"z3", b"MIN"],
            vec![b"ZADD", b"z3", b"5", b"five"],
            [
                b"*2\r\n".to_vec(),
                bulk("z3"),
                b"*1\r\n*2\r\n".to_vec(),
                bulk("five"),
                bulk("5"),
            ]
            .concat()
            .pipe(text),
        ),
        (
            vec![b"XREAD", b"BLOCK", b"0", b"STREAMS", b"s1", b"$"],
            vec![b"XADD", b"s1", b"7-1", b"f", b"v"],
            [
                b"*1\r\n*2\r\n".to_vec(),
                bulk("s1"),
                b"*1\r\n*2\r\n".to_vec(),
                bulk("7-1"),
                b"*2\r\n".to_vec(),
                bulk("f"),
                bulk("v"),
            ]
            .concat()
            .pipe(text),
        ),
        (
            vec![
                b"XREADGROUP",
                b"GROUP",
                b"g",
                b"c1",
                b"BLOCK",
                b"0",
                b"STREAMS",
                b"s2",
                b">",
            ],
            vec![b"XADD", b"s2", b"9-1", b"f", b"w"],
            [
                b"*1\r\n*2\r\n".to_vec(),
                bulk("s2"),
                b"*1\r\n*2\r\n".to_vec(),
                bulk("9-1"),
                b"*2\r\n".to_vec(),
                bulk("f"),
                bulk("w"),
            ]
            .concat()
            .pipe(text),
        ),
    ];
    assert_eq!(
        other
            .call(&[b"XGROUP", b"CREATE", b"s2", b"g", b"$", b"MKSTREAM"])
            .await,
        b"+OK\r\n"
    );
    for (blocking, unblock, expected) in cases {
        let mut blocked = kg.raw().await;
        let mut out = bytes::BytesMut::new();
        let args: Vec<bytes::Bytes> = blocking
            .iter()
            .map(|a| bytes::Bytes::copy_from_slice(a))
            .collect();
        keygate::resp::encode_request(&args, &mut out);
        blocked.send(&out).await;
        // Blocked on the server (timeout 0 means forever)...
        let deadline = Instant::now() + Duration::from_secs(5);
        let name = String::from_utf8_lossy(blocking[0]).to_ascii_lowercase();
        while blocked_in(&backend, &name) == 0 {
            assert!(Instant::now() < deadline, "{name} never blocked");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // ...while another client's requests pass on the shared connection.
        assert_eq!(other.call(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
        assert_eq!(other.call(&[b"GET", b"k"]).await, bulk("v"));
        other.call(&unblock).await;
        assert_eq!(text(blocked.reply().await.unwrap()), expected, "{name}");
        // The connection goes on as usual.
        assert_eq!(blocked.call(&[b"PING"]).await, b"+PONG\r\n");
    }
    // A timeout, and a blocking command inside MULTI (which Redis runs without blocking).
    let mut raw = kg.raw().await;
    assert_eq!(raw.call(&[b"BLPOP", b"none", b"0.05"]).await, b"*-1\r\n");
    assert_eq!(raw.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(raw.call(&[b"BLPOP", b"none", b"0"]).await, b"+QUEUED\r\n");
    assert_eq!(raw.call(&[b"EXEC"]).await, b"*1\r\n*-1\r\n");
    // WAIT: no replicas here, so 0 at once (and, with a timeout, after it).
    assert_eq!(raw.call(&[b"WAIT", b"0", b"0"]).await, b":0\r\n");
    assert_eq!(raw.call(&[b"WAIT", b"1", b"50"]).await, b":0\r\n");
    // Wrong type and syntax errors come back as Redis sends them.
    raw.call(&[b"SET", b"str", b"x"]).await;
    assert!(text(raw.call(&[b"BLPOP", b"str", b"0"]).await).starts_with("-WRONGTYPE"));
    assert_eq!(
        raw.call(&[b"BLPOP", b"l", b"notanumber"]).await,
        b"-ERR timeout is not a float or out of range\r\n"
    );
}

/// Requests pipelined behind a blocking command wait for it, as they would on one Redis
/// connection, and replies keep their order.
#[tokio::test]
async fn requests_behind_a_blocked_one_keep_their_order() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut raw = kg.raw().await;
    let mut other = kg.raw().await;
    raw.send(b"SET a 1\r\nBLPOP q 0\r\nGET a\r\nINCR a\r\n")
        .await;
    assert_eq!(raw.reply().await.unwrap(), b"+OK\r\n");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // INCR has not run: the client is blocked.
    assert_eq!(other.call(&[b"GET", b"a"]).await, bulk("1"));
    other.call(&[b"RPUSH", b"q", b"go"]).await;
    assert_eq!(
        raw.reply().await.unwrap(),
        [b"*2\r\n".to_vec(), bulk("q"), bulk("go")].concat()
    );
    assert_eq!(raw.reply().await.unwrap(), bulk("1"));
    assert_eq!(raw.reply().await.unwrap(), b":2\r\n");
}

#[tokio::test]
async fn blocking_connections_are_capped_per_server() {
    let backend = Redis::start();
    let kg = Keygate::start_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"standalone\"\nservers = [\"{}\"]\nblocking_connections_per_server = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        backend.addr()
    ))
    .await;
    let mut a = kg.raw().await;
    let mut b = kg.raw().await;
    let mut c = kg.raw().await;
    a.send(b"BLPOP qa 0\r\n").await;
    b.send(b"BLPOP qb 0\r\n").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while blocked_in(&backend, "blpop") < 2 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, metrics) = common::http_get(kg.admin, "/metrics").await;
    let gauge = format!(
        "keygate_backend_dedicated_connections{{server=\"{}\",kind=\"blocking\"}} 2",
        backend.addr()
    );
    assert!(metrics.lines().any(|l| l == gauge), "{metrics}");
    let refused = text(c.call(&[b"BLPOP", b"qc", b"0"]).await);
    assert!(
        refused.starts_with("-ERR keygate: all 2 blocking connections to backend")
            && refused.contains("blocking_connections_per_server"),
        "{refused}"
    );
    // The refused client carries on; a freed connection serves the next blocking command.
    assert_eq!(c.call(&[b"PING"]).await, b"+PONG\r\n");
    c.call(&[b"RPUSH", b"qa", b"1"]).await;
    assert_eq!(
        a.reply().await.unwrap(),
        [b"*2\r\n".to_vec(), bulk("qa"), bulk("1")].concat()
    );
    assert_eq!(c.call(&[b"BLPOP", b"qa", b"0.01"]).await, b"*-1\r\n");
}

/// A client that disconnects while blocked: its backend connection is closed at once (Redis
/// sees it go), so a later push is not swallowed by a ghost pop.
#[tokio::test]
async fn a_client_that_leaves_while_blocked_closes_its_backend_connection() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut blocked = kg.raw().await;
    blocked.send(b"BLPOP jobs 0\r\n").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while blocked_in(&backend, "blpop") == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(blocked);
    let deadline = Instant::now() + Duration::from_secs(5);
    while blocked_in(&backend, "blpop") > 0 {
        assert!(
            Instant::now() < deadline,
            "the blocked backend connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut con = kg.connection().await;
    let _: () = con.rpush("jobs", "j1").await.unwrap();
    let left: Vec<String> = con.lrange("jobs", 0, -1).await.unwrap();
    assert_eq!(left, vec!["j1".to_string()]);
}

/// redis-rs: blocking pops over a multiplexed connection while the same connection keeps
/// serving other commands of the same client... in order, as Redis would.
#[tokio::test]
async fn redis_rs_blocking_pops() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut consumer = kg.connection().await;
    let mut producer = kg.connection().await;
    let popper = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..3 {
            let (_, v): (String, String) = consumer.blpop("work", 0.0).await.unwrap();
            got.push(v);
        }
        let none: Option<(String, String)> = consumer.brpop("work", 0.05).await.unwrap();
        assert!(none.is_none());
        got
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..3 {
        let _: () = producer.rpush("work", format!("job{i}")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(popper.await.unwrap(), vec!["job0", "job1", "job2"]);
}

/// 100 clients blocked in BLPOP while 100 others run GET/SET: the latter's latency, measured
/// against the same run with nobody blocked, is printed (not asserted: shared machines are
/// noisy; the point is that nothing queues behind the blocked ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_blocked_clients_do_not_slow_the_others() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let quiet = latencies(&kg).await;
    let mut blocked = Vec::new();
    for i in 0..100 {
        let mut raw = kg.raw().await;
        raw.send(format!("BLPOP idle{i} 0\r\n").as_bytes()).await;
        blocked.push(raw);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while blocked_in(&backend, "blpop") < 100 {
        assert!(Instant::now() < deadline, "not all 100 blocked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let busy = latencies(&kg).await;
    println!(
        "GET/SET latency, 100 clients x 200 requests: p50 {:?} / p99 {:?} with nobody blocked; p50 {:?} / p99 {:?} with 100 clients blocked in BLPOP",
        quiet.0, quiet.1, busy.0, busy.1
    );
    // Every blocked client is still there and gets its value.
    let mut con = kg.connection().await;
    for i in 0..100 {
        let _: () = con.rpush(format!("idle{i}"), i).await.unwrap();
    }
    for (i, raw) in blocked.iter_mut().enumerate() {
        assert_eq!(
            raw.reply().await.unwrap(),
            [
                b"*2\r\n".to_vec(),
                bulk(&format!("idle{i}")),
                bulk(&i.to_string())
            ]
            .concat()
        );
    }
}

/// p50 and p99 of GET/SET round trips from 100 concurrent clients.
async fn latencies(kg: &Keygate) -> (Duration, Duration) {
    let mut tasks = Vec::new();
    for c in 0..100 {
        let mut raw = kg.raw().await;
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::with_capacity(200);
            for i in 0..100 {
                let key = format!("k{c}");
                let value = format!("{c}-{i}");
                let start = Instant::now();
                raw.call(&[b"SET", key.as_bytes(), value.as_bytes()]).await;
                times.push(start.elapsed());
                let start = Instant::now();
                assert_eq!(raw.call(&[b"GET", key.as_bytes()]).await, bulk(&value));
                times.push(start.elapsed());
            }
            times
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    (all[all.len() / 2], all[all.len() * 99 / 100])
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

/// As in Redis, the idle timeout never closes a client blocked in a command or subscribed.
#[tokio::test]
async fn idle_timeout_spares_blocked_and_subscribed_clients() {
    let backend = Redis::start();
    let kg = Keygate::start_with(
        &backend.addr(),
        "[limits]\nclient_idle_timeout = \"200ms\"\n",
    )
    .await;
    let mut blocked = kg.raw().await;
    let mut subscribed = kg.raw().await;
    let mut idle = kg.raw().await;
    assert_eq!(idle.call(&[b"PING"]).await, b"+PONG\r\n");
    blocked.send(b"BLPOP slow 0\r\n").await;
    subscribed.call(&[b"SUBSCRIBE", b"quiet"]).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    idle.expect_closed().await;
    let mut con = kg.connection().await;
    let _: () = con.rpush("slow", "x").await.unwrap();
    let _: () = con.publish("quiet", "still here").await.unwrap();
    assert_eq!(
        blocked.reply().await.unwrap(),
        [b"*2\r\n".to_vec(), bulk("slow"), bulk("x")].concat()
    );
    assert_eq!(blocked.call(&[b"PING"]).await, b"+PONG\r\n");
    assert_eq!(
        subscribed.reply().await.unwrap(),
        [
            b"*3\r\n".to_vec(),
            bulk("message"),
            bulk("quiet"),
            bulk("still here")
        ]
        .concat()
    );
}
