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

/// MONITOR shows the commands keygate sends to every server (both shards of a ketama set), in
/// Redis's own line format; a monitoring client may PING but not touch keys, shows as `flags=O`,
/// leaves MONITOR with RESET, and is disconnected when a monitor connection breaks.
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
    for key in &keys {
        let line = monitor_until(&mut monitor, &format!("\"SET\" \"{key}\" \"v\"")).await;
        assert!(
            line.starts_with('+') && line.contains(" [0 127.0.0.1:"),
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
