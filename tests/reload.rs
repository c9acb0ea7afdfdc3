//! Hot reload: a new config is validated and swapped in while clients stay connected; a bad one
//! is refused and the running one keeps serving; unchanged backends keep their connections.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{bulk, http, http_get, redis_cli, Keygate, Redis};
use tokio::time::Instant;

fn config(servers: &[&Redis], extra: &str) -> String {
    let list = servers
        .iter()
        .map(|s| format!("\"{}\"", s.addr()))
        .collect::<Vec<_>>()
        .join(", ");
    let kind = if servers.len() == 1 {
        "standalone"
    } else {
        "ketama"
    };
    format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"{kind}\"\nservers = [{list}]\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n{extra}"
    )
}

/// The ids of the connections a Redis has from keygate (every client but redis-cli itself).
fn connection_ids(redis: &Redis) -> Vec<String> {
    let mut ids: Vec<String> = redis_cli(redis.port, &["CLIENT", "LIST"])
        .lines()
        .filter(|l| !l.contains("cmd=client|list"))
        .filter_map(|l| l.split(' ').next().map(String::from))
        .collect();
    ids.sort();
    ids
}

fn metric(metrics: &str, name: &str) -> String {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or("missing")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_config_while_clients_stay_connected() {
    let a = Redis::start();
    let b = Redis::start();
    redis_cli(a.port, &["SET", "where", "on-a"]);
    redis_cli(b.port, &["SET", "where", "on-b"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, config(&[&a], "")).unwrap();
    let kg = Keygate::start_file(&path).await;

    // A client busy all along: every reply is a real one, never an error or a closed connection.
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let stop = stop.clone();
        let mut raw = kg.raw().await;
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let v = n.to_string();
                assert_eq!(raw.call(&[b"SET", b"busy", v.as_bytes()]).await, b"+OK\r\n");
                // A SET and its GET may straddle a switch of servers: any value, never an error.
                let got = raw.call(&[b"GET", b"busy"]).await;
                assert!(got.starts_with(b"$"), "{got:?}");
                n += 1;
            }
            n
        })
    };
    let mut client = kg.raw().await;
    assert_eq!(client.call(&[b"GET", b"where"]).await, bulk("on-a"));
    let before = connection_ids(&a);
    assert!(!before.is_empty());

    // A change that keeps the server: its connections stay.
    std::fs::write(&path, config(&[&a], "[limits]\nmax_clients = 500\n")).unwrap();
    let (status, body) = http(kg.admin, "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("1 kept with their connections, 0 new, 0 dropped"),
        "{body}"
    );
    assert_eq!(connection_ids(&a), before);

    // Another server: the same client connection now reaches it.
    std::fs::write(&path, config(&[&b], "")).unwrap();
    let (status, body) = http(kg.admin, "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("0 kept with their connections, 1 new, 1 dropped"),
        "{body}"
    );
    assert_eq!(client.call(&[b"GET", b"where"]).await, bulk("on-b"));

    // A bad config is refused with its reason; the running one keeps serving.
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"standalone\"\n",
    )
    .unwrap();
    let (status, body) = http(kg.admin, "POST", "/reload").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("missing field `servers`"), "{body}");
    assert_eq!(client.call(&[b"GET", b"where"]).await, bulk("on-b"));

    // Writing the file is enough: it is watched.
    std::fs::write(&path, config(&[&a], "")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.call(&[b"GET", b"where"]).await != bulk("on-a") {
        assert!(
            Instant::now() < deadline,
            "the file change was never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    stop.store(true, Ordering::Relaxed);
    assert!(busy.await.unwrap() > 10);

    // Tenants reload too: turning them on makes every client AUTH, connected ones included.
    std::fs::write(
        &path,
        config(
            &[&a],
            "[[tenants]]\nname = \"acme\"\npassword = \"acme-pw\"\nprefix = \"acme:\"\n",
        ),
    )
    .unwrap();
    let (status, body) = http(kg.admin, "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        client.call(&[b"GET", b"where"]).await,
        b"-NOAUTH Authentication required.\r\n"
    );
    assert_eq!(
        client.call(&[b"AUTH", b"acme", b"acme-pw"]).await,
        b"+OK\r\n"
    );
    assert_eq!(client.call(&[b"GET", b"where"]).await, b"$-1\r\n");

    let (_, metrics) = http_get(kg.admin, "/metrics").await;
    assert_eq!(
        metric(&metrics, "keygate_config_reloads_total{result=\"ok\"}"),
        "4"
    );
    assert_eq!(
        metric(&metrics, "keygate_config_reloads_total{result=\"error\"}"),
        "1"
    );
    assert_ne!(
        metric(&metrics, "keygate_config_last_reload_timestamp_seconds"),
        "0"
    );
}

/// Requests in flight when the topology changes finish where they started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_on_the_topology_they_started_on() {
    let a = Redis::start_with(&["--enable-debug-command", "yes"]);
    let b = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, config(&[&a], "")).unwrap();
    let kg = Keygate::start_file(&path).await;
    let mut raw = kg.raw().await;
    raw.send(b"DEBUG SLEEP 0.5\r\nSET k from-before\r\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(&path, config(&[&b], "")).unwrap();
    let (status, body) = http(kg.admin, "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(raw.reply().await.unwrap(), b"+OK\r\n");
    assert_eq!(raw.reply().await.unwrap(), b"+OK\r\n");
    assert_eq!(redis_cli(a.port, &["GET", "k"]).trim(), "from-before");
    assert_eq!(raw.call(&[b"SET", b"k", b"after"]).await, b"+OK\r\n");
    assert_eq!(redis_cli(b.port, &["GET", "k"]).trim(), "after");
}
