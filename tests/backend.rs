//! When a backend fails, every request gets exactly one clear error, never a hang and never a
//! reply meant for another request; keygate reconnects by itself.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::{bulk, http_get, Keygate, Redis};
use keygate::resp::request::{Decoder, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Poll `GET key` through keygate until it answers `want` (the backend is back).
async fn until_answers(kg: &Keygate, key: &[u8], want: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut raw = kg.raw().await;
    loop {
        if raw.call(&[b"GET", key]).await == want {
            return;
        }
        assert!(Instant::now() < deadline, "backend never came back");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn backend_killed_mid_pipeline_fails_pending_requests_then_recovers() {
    let mut backend = Redis::start_with(&["--enable-debug-command", "yes"]);
    let kg = Keygate::start(&backend.addr()).await;
    let mut raw = kg.raw().await;
    assert_eq!(raw.call(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");

    // A pipeline stuck behind a slow command when the server dies.
    let mut pipeline = b"*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n$3\r\n0.5\r\n".to_vec();
    for _ in 0..500 {
        pipeline.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }
    raw.send(&pipeline).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    backend.kill();
    for i in 0..501 {
        let reply = String::from_utf8(raw.reply().await.expect("a reply")).unwrap();
        assert!(
            reply.starts_with(&format!(
                "-ERR keygate: connection to backend {} lost",
                backend.addr()
            )),
            "reply {i}: {reply}"
        );
    }
    // While it is down: a fast, clear error and /ready says so.
    let started = Instant::now();
    let reply = String::from_utf8(raw.call(&[b"GET", b"k"]).await).unwrap();
    assert!(
        reply.starts_with(&format!(
            "-ERR keygate: backend {} is unavailable",
            backend.addr()
        )),
        "{reply}"
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    let (status, body) = http_get(kg.admin, "/ready").await;
    assert_eq!(status, 503, "{body}");

    backend.restart();
    until_answers(&kg, b"k", b"$-1\r\n").await;
    kg.wait_ready().await;
    // The same client connection is still usable.
    assert_eq!(raw.call(&[b"SET", b"k", b"again"]).await, b"+OK\r\n");
    assert_eq!(raw.call(&[b"GET", b"k"]).await, bulk("again"));
}

#[tokio::test]
async fn a_backend_that_stops_answering_times_out_and_late_replies_go_nowhere() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut raw = kg.raw().await;
    raw.call(&[b"SET", b"x", b"for-x"]).await;
    raw.call(&[b"SET", b"y", b"for-y"]).await;

    backend.signal("STOP");
    let started = Instant::now();
    let reply = String::from_utf8(raw.call(&[b"GET", b"x"]).await).unwrap();
    backend.signal("CONT");
    assert!(
        reply.starts_with(&format!(
            "-ERR keygate: backend {} did not answer within 1s",
            backend.addr()
        )),
        "{reply}"
    );
    // The GET was sent: the error must not claim it did not run.
    assert!(
        reply.contains("the command was sent and may have run"),
        "{reply}"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    // The server now answers the GET x it had read; that reply must never reach GET y.
    until_answers(&kg, b"y", &bulk("for-y")).await;
    assert_eq!(raw.call(&[b"GET", b"y"]).await, bulk("for-y"));
    assert_eq!(raw.call(&[b"GET", b"x"]).await, bulk("for-x"));
}

#[tokio::test]
async fn backend_authentication() {
    let backend = Redis::start_with(&["--requirepass", "s3cret"]);
    let kg = Keygate::start_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"standalone\"\nservers = [\"{}\"]\npassword = \"s3cret\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        backend.addr()
    ))
    .await;
    let mut raw = kg.raw().await;
    assert_eq!(raw.call(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_eq!(raw.call(&[b"GET", b"k"]).await, bulk("v"));

    // A wrong password: never ready, and requests say why.
    let config = format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"standalone\"\nservers = [\"{}\"]\npassword = \"wrong\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        backend.addr()
    );
    let server =
        keygate::server::Server::bind(keygate::config::Config::parse(&config, "t").unwrap())
            .await
            .unwrap();
    let (addr, admin) = (server.local_addr(), server.admin_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));
    let mut raw = common::Raw::connect(addr).await;
    let reply = String::from_utf8(raw.call(&[b"GET", b"k"]).await).unwrap();
    assert!(reply.contains("AUTH refused: WRONGPASS"), "{reply}");
    assert_eq!(http_get(admin, "/ready").await.0, 503);
    stop.cancel();
}

/// What the fake backend does with one request.
enum Act {
    Reply(Vec<u8>),
    Close,
}

/// A scripted backend for misbehaviour no real Redis shows: `script(connection, request, args)`
/// decides each answer. Returns its address and a count of connections accepted.
async fn fake_backend(
    script: impl Fn(usize, usize, &[bytes::Bytes]) -> Act + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let script = Arc::new(script);
    let counter = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let script = script.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut decoder = Decoder::new(Limits::default());
                let mut buf = BytesMut::new();
                let mut n = 0;
                // Numbered when its first request is not keygate learning the server's
                // commands (COMMAND, INFO on a one-off connection: see keygate's `learn`),
                // which gets an empty table and is not counted.
                let mut conn = None;
                loop {
                    while let Ok(Some(args)) = decoder.decode(&mut buf) {
                        if conn.is_none()
                            && (args[0].eq_ignore_ascii_case(b"command")
                                || args[0].eq_ignore_ascii_case(b"info"))
                        {
                            let empty: &[u8] = if args[0].eq_ignore_ascii_case(b"command") {
                                b"*0\r\n"
                            } else {
                                b"$0\r\n\r\n"
                            };
                            if stream.write_all(empty).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        let conn =
                            *conn.get_or_insert_with(|| counter.fetch_add(1, Ordering::SeqCst));
                        match script(conn, n, &args) {
                            Act::Reply(bytes) => {
                                if stream.write_all(&bytes).await.is_err() {
                                    return;
                                }
                            }
                            Act::Close => return,
                        }
                        n += 1;
                    }
                    if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections)
}

/// A well-behaved answer: GET k -> "k", anything else -> +OK.
fn normal(args: &[bytes::Bytes]) -> Vec<u8> {
    if args[0].eq_ignore_ascii_case(b"get") {
        bulk(std::str::from_utf8(&args[1]).unwrap())
    } else {
        b"+OK\r\n".to_vec()
    }
}

#[tokio::test]
async fn garbage_from_the_backend_poisons_only_that_connection() {
    let (addr, connections) = fake_backend(|conn, _, args| match (conn, &args[1][..]) {
        (0, b"bad") => Act::Reply(b"?garbage\r\n".to_vec()),
        _ => Act::Reply(normal(args)),
    })
    .await;
    let kg = Keygate::start(&addr).await;
    let mut raw = kg.raw().await;
    assert_eq!(raw.call(&[b"GET", b"a"]).await, bulk("a"));
    let reply = String::from_utf8(raw.call(&[b"GET", b"bad"]).await).unwrap();
    assert!(
        reply.starts_with("-ERR keygate: connection to backend")
            && reply.contains("protocol error in reply"),
        "{reply}"
    );
    until_answers(&kg, b"b", &bulk("b")).await;
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_unsolicited_extra_reply_poisons_the_connection() {
    let (addr, connections) = fake_backend(|conn, _, args| match (conn, &args[1][..]) {
        (0, b"twice") => Act::Reply(b"$5\r\ntwice$4\r\nevil\r\n".to_vec()),
        _ => Act::Reply(normal(args)),
    })
    .await;
    let kg = Keygate::start(&addr).await;
    let mut raw = kg.raw().await;
    // The malformed double answer is caught (bad CRLF) ...
    let reply = String::from_utf8(raw.call(&[b"GET", b"twice"]).await).unwrap();
    assert!(
        reply.starts_with("-ERR keygate: connection to backend"),
        "{reply}"
    );
    until_answers(&kg, b"next", &bulk("next")).await;
    assert_eq!(connections.load(Ordering::SeqCst), 2);

    // ... and so is a well-formed reply nobody asked for.
    let (addr, connections) = fake_backend(|conn, _, args| match (conn, &args[1][..]) {
        (0, b"twice") => Act::Reply(b"$5\r\ntwice\r\n$4\r\nevil\r\n".to_vec()),
        _ => Act::Reply(normal(args)),
    })
    .await;
    let kg = Keygate::start(&addr).await;
    let mut raw = kg.raw().await;
    assert_eq!(raw.call(&[b"GET", b"twice"]).await, bulk("twice"));
    // "evil" must never be taken as the answer to the next request.
    until_answers(&kg, b"next", &bulk("next")).await;
    assert_eq!(raw.call(&[b"GET", b"after"]).await, bulk("after"));
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn deeply_nested_replies_are_refused_without_losing_step() {
    let (addr, connections) = fake_backend(|_, _, args| match &args[1][..] {
        b"deep" => {
            let mut reply = b"*1\r\n".repeat(20_000);
            reply.extend_from_slice(b":1\r\n");
            Act::Reply(reply)
        }
        _ => Act::Reply(normal(args)),
    })
    .await;
    let kg = Keygate::start(&addr).await;
    let mut raw = kg.raw().await;
    raw.send(b"*2\r\n$3\r\nGET\r\n$4\r\ndeep\r\n*2\r\n$3\r\nGET\r\n$5\r\nafter\r\n")
        .await;
    assert_eq!(
        raw.reply().await.unwrap(),
        b"-ERR keygate: the reply nests deeper than 10000 levels and was not forwarded\r\n"
    );
    assert_eq!(raw.reply().await.unwrap(), bulk("after"));
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "the connection stayed in step"
    );
}

#[tokio::test]
async fn a_truncated_reply_then_eof_is_an_error() {
    let (addr, _) = fake_backend(|conn, _, args| match (conn, &args[1][..]) {
        (0, b"cut") => Act::Reply(b"$10\r\nabc".to_vec()),
        (0, b"close") => Act::Close,
        _ => Act::Reply(normal(args)),
    })
    .await;
    let kg = Keygate::start(&addr).await;
    let mut raw = kg.raw().await;
    raw.send(b"*2\r\n$3\r\nGET\r\n$3\r\ncut\r\n*2\r\n$3\r\nGET\r\n$5\r\nclose\r\n")
        .await;
    for _ in 0..2 {
        let reply = String::from_utf8(raw.reply().await.unwrap()).unwrap();
        assert!(
            reply.starts_with("-ERR keygate: connection to backend")
                && reply.contains("closed by server"),
            "{reply}"
        );
    }
    until_answers(&kg, b"fine", &bulk("fine")).await;
}

/// The gauge line for one server's breaker in /metrics.
async fn breaker_state(kg: &Keygate, addr: &str) -> String {
    let (_, metrics) = http_get(kg.admin, "/metrics").await;
    let prefix = format!("keygate_backend_breaker_state{{server=\"{addr}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or("missing")
        .to_string()
}

/// The breaker opens after consecutive failures (requests then fail at once with an error naming
/// the backend), a probe closes it once the server is back; error replies never count.
#[tokio::test]
async fn circuit_breaker_opens_fails_fast_and_closes_after_a_probe() {
    let mut backend = Redis::start();
    let kg = Keygate::start_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"standalone\"\nservers = [\"{}\"]\n\
         connect_timeout = \"200ms\"\nfailures_to_open = 3\nopen_for = \"700ms\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        backend.addr()
    ))
    .await;
    let mut raw = kg.raw().await;
    // Error replies are the server working: they never open the breaker.
    raw.call(&[b"SET", b"s", b"x"]).await;
    for _ in 0..20 {
        assert!(
            String::from_utf8_lossy(&raw.call(&[b"LPUSH", b"s", b"x"]).await)
                .starts_with("-WRONGTYPE")
        );
    }
    assert_eq!(breaker_state(&kg, &backend.addr()).await, "0");
    backend.kill();
    // Reconnect attempts fail; after three the breaker is open and requests fail at once.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = String::from_utf8_lossy(&raw.call(&[b"GET", b"s"]).await).into_owned();
        assert!(reply.starts_with("-ERR keygate: backend "), "{reply}");
        if reply.contains("circuit breaker open after 3 consecutive failures") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the breaker never opened: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_ne!(breaker_state(&kg, &backend.addr()).await, "0");
    let started = Instant::now();
    for _ in 0..100 {
        raw.call(&[b"GET", b"s"]).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "requests did not fail fast"
    );
    backend.restart();
    // (The restarted server is empty.)
    until_answers(&kg, b"s", b"$-1\r\n").await;
    assert_eq!(breaker_state(&kg, &backend.addr()).await, "0");
    let (_, metrics) = http_get(kg.admin, "/metrics").await;
    let opened = format!(
        "keygate_backend_breaker_opened_total{{server=\"{}\"}} 1",
        backend.addr()
    );
    assert!(metrics.lines().any(|l| l == opened), "{metrics}");
}

/// A backend that accepts connections and closes them at once, while 50 clients keep sending:
/// reconnects back off (and the breaker stops requests), so connection attempts per second stay
/// bounded; no reconnect storm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_causes_no_reconnect_storm() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::Relaxed);
            drop(stream);
        }
    });
    let kg = Keygate::start_unready(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"standalone\"\nservers = [\"{addr}\"]\n\
         connections_per_server = 4\n[admin]\nlisten = \"127.0.0.1:0\"\n"
    ))
    .await;
    let stop = Instant::now() + Duration::from_secs(3);
    let mut clients = Vec::new();
    for _ in 0..50 {
        let mut raw = kg.raw().await;
        clients.push(tokio::spawn(async move {
            let mut errors = 0;
            while Instant::now() < stop {
                let reply = raw.call(&[b"GET", b"k"]).await;
                assert!(reply.starts_with(b"-ERR keygate: "), "{reply:?}");
                errors += 1;
            }
            errors
        }));
    }
    let mut requests = 0;
    for client in clients {
        requests += client.await.unwrap();
    }
    let attempts = accepted.load(Ordering::Relaxed);
    println!("{requests} requests failed cleanly in 3 s; {attempts} connection attempts");
    assert!(requests > 1000, "{requests}");
    // 4 connection slots backing off from 10 ms (doubling, with jitter) for 3 s: a few dozen at
    // most; a storm would be thousands.
    assert!(attempts < 60, "{attempts} connection attempts in 3 s");
}

/// The frames a misbehaving server sends for `GET k1` after leaving `GET cue` unanswered: `extra`
/// (a push or an attribute), the answer to `cue`, then the answer to `k1`. Replies matched
/// blindly would hand the client asking for k1 the value of cue.
fn cue_then(
    extra: &'static [u8],
    cue: &'static str,
    k1: &'static str,
) -> impl Fn(usize, usize, &[bytes::Bytes]) -> Act {
    move |_, _, args| {
        if args[0].eq_ignore_ascii_case(b"hello") {
            return Act::Reply(b"%1\r\n+server\r\n+fake\r\n".to_vec());
        }
        if !args[0].eq_ignore_ascii_case(b"get") {
            return Act::Reply(b"+OK\r\n".to_vec());
        }
        match &args[1][..] {
            key if key == cue.as_bytes() => Act::Reply(Vec::new()),
            key if key == k1.as_bytes() => {
                let mut out = extra.to_vec();
                out.extend_from_slice(&bulk(cue));
                out.extend_from_slice(&bulk(k1));
                Act::Reply(out)
            }
            _ => Act::Reply(normal(args)),
        }
    }
}

const PUSH: &[u8] = b">2\r\n$7\r\nmessage\r\n$5\r\nhello\r\n";
const ATTRIBUTE: &[u8] = b"|1\r\n+key-popularity\r\n*0\r\n";

/// Two clients on one backend connection: `a` asks for cue (left unanswered), then `b` for k1.
async fn cue_and_k1(
    kg: &Keygate,
    hello: bool,
    a_auth: &[&[u8]],
    b_auth: &[&[u8]],
) -> (Vec<u8>, Vec<u8>) {
    let mut a = kg.raw().await;
    let mut b = kg.raw().await;
    for (raw, auth) in [(&mut a, a_auth), (&mut b, b_auth)] {
        if !auth.is_empty() {
            assert_eq!(raw.call(auth).await, b"+OK\r\n");
        }
        if hello {
            assert_eq!(raw.call(&[b"HELLO", b"3"]).await.first(), Some(&b'%'));
        }
    }
    a.send(b"*2\r\n$3\r\nGET\r\n$3\r\ncue\r\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.send(b"*2\r\n$3\r\nGET\r\n$2\r\nk1\r\n").await;
    (a.reply().await.unwrap(), b.reply().await.unwrap())
}

#[tokio::test]
async fn a_push_or_attribute_on_a_resp2_connection_poisons_it_and_no_reply_crosses() {
    for (what, extra) in [("push", PUSH), ("attribute", ATTRIBUTE)] {
        let (addr, connections) = fake_backend(cue_then(extra, "cue", "k1")).await;
        // One connection per server (the default): both clients share it.
        let kg = Keygate::start(&addr).await;
        let (a, b) = cue_and_k1(&kg, false, &[], &[]).await;
        for (who, reply) in [("a", &a), ("b", &b)] {
            let text = String::from_utf8_lossy(reply);
            assert!(
                text.starts_with("-ERR keygate: connection to backend")
                    && text.contains(&format!("a RESP3 {what} frame on a RESP2 connection")),
                "{what}: client {who} got {text:?}"
            );
        }
        // The next request goes to a new connection, answered correctly.
        until_answers(&kg, b"next", &bulk("next")).await;
        assert_eq!(connections.load(Ordering::SeqCst), 2, "{what}");
    }
}

#[tokio::test]
async fn a_push_on_a_resp3_connection_is_never_taken_for_a_reply() {
    let (addr, connections) = fake_backend(cue_then(PUSH, "cue", "k1")).await;
    let kg = Keygate::start(&addr).await;
    let (a, b) = cue_and_k1(&kg, true, &[], &[]).await;
    assert_eq!(a, bulk("cue"));
    assert_eq!(b, bulk("k1"));
    // The RESP3 pool's one connection and the RESP2 pool's: nothing was poisoned.
    assert!(connections.load(Ordering::SeqCst) <= 2);
}

#[tokio::test]
async fn no_value_crosses_between_tenants_when_a_backend_sends_an_unexpected_frame() {
    let tenants = "[[tenants]]\nname = \"a\"\npassword = \"a-pw\"\nprefix = \"a:\"\n\
        [[tenants]]\nname = \"b\"\npassword = \"b-pw\"\nprefix = \"b:\"\n";
    for extra in [PUSH, ATTRIBUTE] {
        let (addr, _) = fake_backend(cue_then(extra, "a:cue", "b:k1")).await;
        let kg = Keygate::start_with(&addr, tenants).await;
        let (a, b) = cue_and_k1(
            &kg,
            false,
            &[b"AUTH", b"a", b"a-pw"],
            &[b"AUTH", b"b", b"b-pw"],
        )
        .await;
        for reply in [&a, &b] {
            assert!(
                reply.starts_with(b"-ERR keygate: connection to backend"),
                "{:?}",
                String::from_utf8_lossy(reply)
            );
        }
        // Tenant b never sees tenant a's value.
        assert!(!String::from_utf8_lossy(&b).contains("a:cue"));
    }
}

/// Timeouts alone never open the breaker: a server that leaves some requests unanswered but
/// answers a new connection's PING is busy, not gone. A server that answers nothing at all
/// (stopped with SIGSTOP) still opens it, through the PING its next connection fails.
#[tokio::test]
async fn timeouts_open_the_breaker_only_for_a_server_that_answers_nothing() {
    // Every `GET slow` goes unanswered; everything else is answered.
    let (addr, connections) = fake_backend(|_, _, args| match args {
        [get, key] if get.eq_ignore_ascii_case(b"get") && &key[..] == b"slow" => {
            Act::Reply(Vec::new())
        }
        _ if args[0].eq_ignore_ascii_case(b"ping") => Act::Reply(b"+PONG\r\n".to_vec()),
        _ => Act::Reply(normal(args)),
    })
    .await;
    let config = |addr: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"standalone\"\nservers = [\"{addr}\"]\n\
             connect_timeout = \"200ms\"\nrequest_timeout = \"200ms\"\nfailures_to_open = 2\n\
             open_for = \"5s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
        )
    };
    let kg = Keygate::start_config(&config(&addr)).await;
    let mut raw = kg.raw().await;
    for _ in 0..6 {
        let reply = String::from_utf8_lossy(&raw.call(&[b"GET", b"slow"]).await).into_owned();
        assert!(reply.contains("did not answer within 200ms"), "{reply}");
        // (Requests sent while it reconnects fail at once: give it the time to reconnect.)
        until_answers(&kg, b"k", &bulk("k")).await;
    }
    assert_eq!(breaker_state(&kg, &addr).await, "0");
    let opened = connections.load(Ordering::SeqCst);
    assert!(opened >= 6, "each timeout reconnects: {opened}");

    let backend = Redis::start();
    let kg = Keygate::start_config(&config(&backend.addr())).await;
    let mut raw = kg.raw().await;
    assert_eq!(raw.call(&[b"PING"]).await, b"+PONG\r\n");
    backend.signal("STOP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = String::from_utf8_lossy(&raw.call(&[b"GET", b"k"]).await).into_owned();
        if reply.contains("circuit breaker open") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the breaker never opened: {reply}"
        );
    }
    backend.signal("CONT");
}
