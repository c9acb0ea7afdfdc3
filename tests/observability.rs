//! What operators see: INFO's keygate section, keygate's own SLOWLOG, MONITOR, and /metrics
//! figures (latency histograms, bytes, pinned connections, per-tenant errors).

mod common;

use common::{as_tenant, http_get, redis_cli, Keygate, Raw, Redis};

fn text(reply: Vec<u8>) -> String {
    String::from_utf8_lossy(&reply).into_owned()
}

/// The value of one sample line in /metrics.
fn sample(metrics: &str, line_start: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn info_starts_with_keygates_section() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut raw = kg.raw().await;
    raw.call(&[b"SET", b"k", b"v"]).await;
    let info = text(raw.call(&[b"INFO"]).await);
    let body = info.split_once("\r\n").unwrap().1;
    assert!(body.starts_with("# keygate\r\nkeygate_version:"), "{info}");
    for field in [
        "uptime_in_seconds:",
        "connected_clients:1\r\n",
        "upstream_kind:standalone\r\n",
        &format!(
            "backend0:addr={},role=primary,connections=1,breaker=closed",
            backend.addr()
        ),
        "\r\n\r\n# Server\r\nredis_version:",
        "# Keyspace\r\ndb0:keys=1,expires=0",
    ] {
        assert!(info.contains(field), "{field:?} missing in {info}");
    }
    // One section asked for: only that section, as Redis answers.
    let server = text(raw.call(&[b"INFO", b"server"]).await);
    assert!(
        !server.contains("# keygate") && server.contains("# Server"),
        "{server}"
    );
    // RESP3: the backend's verbatim string, read and answered.
    raw.call(&[b"HELLO", b"3"]).await;
    let info3 = text(raw.call(&[b"INFO"]).await);
    assert!(
        info3.contains("# keygate\r\n") && info3.contains("# Server"),
        "{info3}"
    );
}

#[tokio::test]
async fn slowlog_is_keygates_own() {
    let backend = Redis::start_with(&["--enable-debug-command", "yes"]);
    let kg = Keygate::start_with(
        &backend.addr(),
        "[slowlog]\nthreshold = \"50ms\"\nmax_len = 2\n",
    )
    .await;
    let mut raw = kg.raw().await;
    assert_eq!(raw.call(&[b"SLOWLOG", b"RESET"]).await, b"+OK\r\n");
    raw.call(&[b"GET", b"fast"]).await;
    raw.call(&[b"DEBUG", b"SLEEP", b"0.1"]).await;
    assert_eq!(raw.call(&[b"SLOWLOG", b"LEN"]).await, b":1\r\n");
    let entries = redis::parse_redis_value(&raw.call(&[b"SLOWLOG", b"GET"]).await).unwrap();
    let redis::Value::Array(entries) = entries else {
        panic!("{entries:?}")
    };
    let redis::Value::Array(entry) = &entries[0] else {
        panic!("{entries:?}")
    };
    assert_eq!(entry.len(), 6, "{entry:?}");
    let redis::Value::Int(micros) = entry[2] else {
        panic!("{entry:?}")
    };
    assert!(micros >= 100_000, "{micros}");
    assert_eq!(
        entry[3],
        redis::Value::Array(vec![
            redis::Value::BulkString(b"DEBUG".to_vec()),
            redis::Value::BulkString(b"SLEEP".to_vec()),
            redis::Value::BulkString(b"... (1 more arguments)".to_vec()),
        ])
    );
    // At most max_len entries, newest first.
    for _ in 0..3 {
        raw.call(&[b"DEBUG", b"SLEEP", b"0.06"]).await;
    }
    assert_eq!(raw.call(&[b"SLOWLOG", b"LEN"]).await, b":2\r\n");
    assert_eq!(raw.call(&[b"SLOWLOG", b"RESET"]).await, b"+OK\r\n");
    assert_eq!(raw.call(&[b"SLOWLOG", b"LEN"]).await, b":0\r\n");
    assert_eq!(raw.call(&[b"SLOWLOG", b"GET"]).await, b"*0\r\n");
}

const TENANTS: &str = "[slowlog]\nthreshold = \"0s\"\n\
    [[tenants]]\nname = \"acme\"\npassword = \"acme-pw\"\nprefix = \"acme:\"\n\
    [[tenants]]\nname = \"globex\"\npassword = \"globex-pw\"\nprefix = \"globex:\"\n";

/// A tenant's SLOWLOG holds its own requests only, with keys as it named them; its errors are
/// counted per tenant.
#[tokio::test]
async fn tenants_see_their_own_slowlog_and_errors() {
    let backend = Redis::start();
    let kg = Keygate::start_with(&backend.addr(), TENANTS).await;
    let mut acme = as_tenant(&kg, "acme").await;
    let mut globex = as_tenant(&kg, "globex").await;
    acme.call(&[b"SLOWLOG", b"RESET"]).await;
    globex.call(&[b"SLOWLOG", b"RESET"]).await;
    acme.call(&[b"SET", b"acme-key", b"v"]).await;
    globex.call(&[b"SET", b"globex-key", b"v"]).await;
    globex.call(&[b"LPUSH", b"globex-key", b"x"]).await;
    let mine = text(acme.call(&[b"SLOWLOG", b"GET", b"-1"]).await);
    assert!(
        mine.contains("acme-key") && !mine.contains("globex"),
        "{mine}"
    );
    assert!(!mine.contains("acme:acme-key"), "the prefix leaked: {mine}");
    let (_, metrics) = http_get(kg.admin, "/metrics").await;
    assert_eq!(
        sample(
            &metrics,
            "keygate_tenant_request_errors_total{tenant=\"globex\"} "
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "keygate_tenant_request_errors_total{tenant=\"acme\"} "
        ),
        Some(0.0)
    ); // Each tenant's requests in its own latency histogram (AUTH, SLOWLOG and data commands).
    for tenant in ["acme", "globex"] {
        let count = sample(
            &metrics,
            &format!("keygate_tenant_request_duration_seconds_count{{tenant=\"{tenant}\"}} "),
        );
        assert!(count.is_some_and(|n| n >= 3.0), "{tenant}: {count:?}");
    }
}

#[tokio::test]
async fn metrics_show_latency_bytes_and_pinned_connections() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut raw = kg.raw().await;
    for _ in 0..10 {
        raw.call(&[b"SET", b"k", b"v"]).await;
        raw.call(&[b"GET", b"k"]).await;
    }
    raw.call(&[b"MULTI"]).await;
    raw.call(&[b"SET", b"k", b"in-multi"]).await;
    let (_, metrics) = http_get(kg.admin, "/metrics").await;
    let server = backend.addr();
    assert_eq!(
        sample(
            &metrics,
            &format!("keygate_backend_pinned_connections{{server=\"{server}\"}} ")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "keygate_request_duration_seconds_count{command=\"get\"} "
        ),
        Some(10.0)
    );
    assert!(
        sample(
            &metrics,
            "keygate_request_duration_seconds_bucket{command=\"get\",le=\"+Inf\"} "
        ) == Some(10.0)
    );
    let backend_count = sample(
        &metrics,
        &format!("keygate_backend_request_duration_seconds_count{{server=\"{server}\"}} "),
    )
    .unwrap();
    assert!(backend_count >= 20.0, "{backend_count}");
    assert!(sample(&metrics, "keygate_client_read_bytes_total ").unwrap() > 200.0);
    assert!(sample(&metrics, "keygate_client_written_bytes_total ").unwrap() > 50.0);
    raw.call(&[b"EXEC"]).await;
    let (_, metrics) = http_get(kg.admin, "/metrics").await;
    assert_eq!(
        sample(
            &metrics,
            &format!("keygate_backend_pinned_connections{{server=\"{server}\"}} ")
        ),
        Some(0.0)
    );
}

/// MONITOR lines until one contains `want` (within the reply deadline of `Raw::reply`).
async fn monitor_until(monitor: &mut Raw, want: &str) -> String {
    loop {
        let line = text(monitor.reply().await.expect("the MONITOR feed"));
        if line.contains(want) {
            return line;
        }
    }
}

/// MONITOR shows the commands clients send, whichever server (both shards of a ketama set) they
/// go to, in Redis's own line format with the client's own address; a monitoring client may
/// PING but not touch keys, shows as `flags=O`, leaves MONITOR with RESET, and is disconnected
/// when a monitor connection breaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_shows_every_servers_commands() {
    let shards = [Redis::start(), Redis::start()];
    let kg = Keygate::start_ketama(&shards, "").await;
    let mut monitor = kg.raw().await;
    let mut other = kg.raw().await;
    assert_eq!(monitor.call(&[b"MONITOR"]).await, b"+OK\r\n");
    // Keys until both shards got one.
    let mut keys = Vec::new();
    for i in 0..64 {
        let key = format!("key{i}");
        assert_eq!(
            other.call(&[b"SET", key.as_bytes(), b"v"]).await,
            b"+OK\r\n"
        );
        keys.push(key);
        if shards
            .iter()
            .all(|s| !redis_cli(s.port, &["DBSIZE"]).starts_with('0'))
        {
            break;
        }
    }
    let client = other.stream.local_addr().unwrap();
    for key in &keys {
        let line = monitor_until(&mut monitor, &format!("\"SET\" \"{key}\" \"v\"")).await;
        assert!(
            line.starts_with('+') && line.contains(&format!(" [0 {client}] ")),
            "{line}"
        );
    }
    // Replies come among the lines (the test's own DBSIZE checks show up too).
    monitor.send(b"PING\r\n").await;
    monitor_until(&mut monitor, "PONG").await;
    monitor.send(b"GET key0\r\n").await;
    assert_eq!(
        monitor_until(&mut monitor, "-ERR").await,
        "-ERR Replica can't interact with the keyspace\r\n"
    );
    let list = text(other.call(&[b"CLIENT", b"LIST"]).await);
    assert_eq!(list.matches(" flags=O ").count(), 1, "{list}");
    // RESET leaves MONITOR: nothing more arrives.
    monitor.send(b"RESET\r\n").await;
    monitor_until(&mut monitor, "+RESET").await;
    assert_eq!(other.call(&[b"SET", b"after", b"x"]).await, b"+OK\r\n");
    assert_eq!(monitor.call(&[b"PING"]).await, b"+PONG\r\n");

    // A monitor connection killed on the server: the client is told by a disconnect.
    assert_eq!(monitor.call(&[b"MONITOR"]).await, b"+OK\r\n");
    let killed = redis_cli(
        shards[0].port,
        &["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"],
    );
    assert!(killed.trim().parse::<u32>().unwrap() >= 1, "{killed}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut monitor.stream, &mut rest),
    )
    .await;
    assert!(
        closed.is_ok(),
        "still connected after its MONITOR connection died"
    );
}

/// MONITOR shows what the client sent, as Redis would: commands keygate answers itself too
/// (PING, ECHO, CLIENT, SELECT, HELLO), a transaction as the client wrote it, credentials
/// redacted, nothing for a command refused before it runs, and the commands a script calls as
/// the server reports them (`[0 lua]`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_shows_what_the_client_sent() {
    let redis = Redis::start();
    let kg = Keygate::start(&redis.addr()).await;
    let mut monitor = kg.raw().await;
    let mut client = kg.raw().await;
    let addr = client.stream.local_addr().unwrap();
    assert_eq!(monitor.call(&[b"MONITOR"]).await, b"+OK\r\n");
    let script: &[&[&[u8]]] = &[
        &[b"PING"],
        &[b"ECHO", b"hi"],
        &[b"CLIENT", b"SETNAME", b"app"],
        &[b"nosuchcommand", b"x"],
        &[b"GET"],
        &[b"AUTH", b"secret"],
        &[b"HELLO", b"2", b"AUTH", b"default", b"secret"],
        &[b"MULTI"],
        &[b"SET", b"k", b"a b\n"],
        &[b"EXEC"],
        &[b"SELECT", b"1"],
        &[b"SET", b"in-1", b"x"],
        &[b"EVAL", b"return redis.call('get', KEYS[1])", b"1", b"in-1"],
    ];
    for args in script {
        client.call(args).await;
    }
    let mut lines = Vec::new();
    loop {
        let line = text(monitor.reply().await.expect("the MONITOR feed"));
        let done = line.contains("lua]");
        lines.push(line);
        if done {
            break;
        }
    }
    let own = |db: u32| format!("[{db} {addr}]");
    let expected = [
        format!("{} \"PING\"", own(0)),
        format!("{} \"ECHO\" \"hi\"", own(0)),
        format!("{} \"CLIENT\" \"SETNAME\" \"app\"", own(0)),
        format!("{} \"AUTH\" \"(redacted)\"", own(0)),
        format!(
            "{} \"HELLO\" \"2\" \"AUTH\" \"(redacted)\" \"(redacted)\"",
            own(0)
        ),
        format!("{} \"MULTI\"", own(0)),
        format!("{} \"SET\" \"k\" \"a b\\n\"", own(0)),
        format!("{} \"EXEC\"", own(0)),
        "\"SELECT\" \"1\"".to_string(),
        format!("{} \"SET\" \"in-1\" \"x\"", own(1)),
        format!("{} \"EVAL\"", own(1)),
        "[1 lua] \"get\" \"in-1\"".to_string(),
    ];
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for (line, want) in lines.iter().zip(&expected) {
        assert!(line.starts_with('+') && line.ends_with("\r\n"), "{line}");
        assert!(line.contains(want.as_str()), "{line} lacks {want}");
    }
    // keygate's own commands to the server (its MULTI on a pinned connection, SELECT at
    // connect) never show: only what the client sent.
    assert_eq!(lines.iter().filter(|l| l.contains("MULTI")).count(), 1);
}

/// A monitor that never reads hurts nobody: the client it watches goes on being answered, and
/// once it falls `monitor::BEHIND` bytes behind it is disconnected at once (not when it reads
/// again), so keygate holds no more than that for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_that_never_reads_is_disconnected() {
    use tokio::io::AsyncReadExt;
    let redis = Redis::start();
    let kg = Keygate::start(&redis.addr()).await;
    let mut monitor = kg.raw().await;
    assert_eq!(monitor.call(&[b"MONITOR"]).await, b"+OK\r\n");
    let mut client = kg.raw().await;
    let value = vec![b'v'; 1000];
    let mut batch = bytes::BytesMut::new();
    for _ in 0..1000 {
        keygate::resp::encode_request(
            &[
                bytes::Bytes::from_static(b"SET"),
                bytes::Bytes::from_static(b"k"),
                bytes::Bytes::from(value.clone()),
            ],
            &mut batch,
        );
    }
    // Twice BEHIND in lines: more than the monitor's queue and both sockets' buffers hold.
    let rounds = 2 * keygate::monitor::BEHIND / (1000 * 1000) + 1;
    for _ in 0..rounds {
        client.send(&batch).await;
        for _ in 0..1000 {
            assert_eq!(client.reply().await.unwrap(), b"+OK\r\n");
        }
    }
    assert_eq!(client.call(&[b"PING"]).await, b"+PONG\r\n");
    // Closed already: what it reads now is what sat in the sockets, then EOF (or a reset).
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        monitor.stream.read_to_end(&mut rest),
    )
    .await
    .expect("the monitor was disconnected");
    let _ = read;
    assert!(
        rest.len() < rounds * 1000 * 1000,
        "it got {} bytes: every line",
        rest.len()
    );
}
