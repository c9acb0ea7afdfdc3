//! kind = "sentinel": keygate finds the primary through Redis Sentinel, verifies it, and follows
//! a failover (announced with +switch-master) without any client reconnecting.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{bulk, free_port, gets_served, http_get, redis_cli, wait_for_port, Keygate, Redis};
use tokio::time::Instant;

/// A real Redis Sentinel (redis-server --sentinel) monitoring `master` as "mymaster".
struct Sentinel {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(master: &Redis) -> Sentinel {
        Sentinel::start_at(free_port(), master)
    }

    fn start_at(port: u16, master: &Redis) -> Sentinel {
        Sentinel::start_configured(port, master, "")
    }

    /// With `extra` lines in its sentinel.conf.
    fn start_configured(port: u16, master: &Redis, extra: &str) -> Sentinel {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 3000\n{extra}",
                dir.path().display(),
                master.port
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (with --sentinel) is missing: install redis-server");
        wait_for_port(port);
        Sentinel {
            port,
            child,
            _dir: dir,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn role(redis: &Redis) -> String {
    redis_cli(redis.port, &["ROLE"])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A primary with one replica, in sync.
fn primary_and_replica() -> (Redis, Redis) {
    let primary = Redis::start();
    let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !redis_cli(replica.port, &["INFO", "replication"]).contains("master_link_status:up") {
        assert!(std::time::Instant::now() < deadline, "replica never synced");
        std::thread::sleep(Duration::from_millis(50));
    }
    (primary, replica)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_failover_without_client_reconnects() {
    let (primary, replica) = primary_and_replica();
    let sentinels = [Sentinel::start(&primary), Sentinel::start(&primary)];
    // The first sentinel listed is down: discovery goes on to the next.
    let list = format!(
        "\"127.0.0.1:{}\", \"{}\", \"{}\"",
        free_port(),
        sentinels[0].addr(),
        sentinels[1].addr()
    );
    // A long refresh interval: following the failover must come from +switch-master.
    let kg = Keygate::start_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"sentinel\"\nmaster = \"mymaster\"\n\
         servers = [{list}]\nrefresh_interval = \"60s\"\nconnect_timeout = \"300ms\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n"
    ))
    .await;
    let mut raw = kg.raw().await;
    assert_eq!(raw.call(&[b"SET", b"k", b"before"]).await, b"+OK\r\n");
    assert_eq!(redis_cli(primary.port, &["GET", "k"]).trim(), "before");

    // Clients keep working throughout: no reconnects; errors only while the switch happens.
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let mut busy = Vec::new();
    for c in 0..10 {
        let mut client = kg.raw().await;
        let (stop, errors) = (stop.clone(), errors.clone());
        busy.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("c{c}");
                let v = n.to_string();
                let set = client.call(&[b"SET", key.as_bytes(), v.as_bytes()]).await;
                if set != b"+OK\r\n" {
                    assert!(set.starts_with(b"-"), "{set:?}");
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        redis_cli(sentinels[0].port, &["SENTINEL", "FAILOVER", "mymaster"]).trim(),
        "OK"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !redis_cli(
        sentinels[0].port,
        &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"],
    )
    .contains(&replica.port.to_string())
    {
        assert!(Instant::now() < deadline, "the failover never happened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each attempt writes a new value: only one written on the new primary can be read there.
    for attempt in 0.. {
        let value = format!("after-{attempt}");
        let reply = raw.call(&[b"SET", b"k", value.as_bytes()]).await;
        if reply == b"+OK\r\n"
            && role(&replica) == "master"
            && redis_cli(replica.port, &["GET", "k"]).trim() == value
        {
            assert_eq!(raw.call(&[b"GET", b"k"]).await, bulk(&value));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "keygate never moved to the new primary: {}",
            String::from_utf8_lossy(&reply)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut requests = 0;
    for task in busy {
        requests += task.await.unwrap();
    }
    println!(
        "{requests} requests from 10 clients across the failover, {} answered with an error",
        errors.load(Ordering::Relaxed)
    );
    let (_, metrics) = http_get(kg.admin, "/metrics").await;
    let server = format!(
        "keygate_backend_connections{{server=\"{}\"}}",
        replica.addr()
    );
    assert!(metrics.contains(&server), "{metrics}");
}

/// No sentinel answers: keygate starts anyway, says why on every request, keeps the
/// connection open, and picks the primary up once a sentinel appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sentinel_yet_means_a_clear_error_then_recovery() {
    let primary = Redis::start();
    let port = free_port();
    let kg = Keygate::start_unready(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"sentinel\"\nmaster = \"mymaster\"\n\
         servers = [\"127.0.0.1:{port}\"]\nrefresh_interval = \"200ms\"\nconnect_timeout = \"200ms\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n"
    ))
    .await;
    let mut raw = kg.raw().await;
    assert_eq!(
        raw.call(&[b"GET", b"k"]).await,
        b"-ERR keygate: no primary is known yet: no sentinel has named one (see the log)\r\n"
    );
    let (status, _) = http_get(kg.admin, "/ready").await;
    assert_eq!(status, 503);
    // A sentinel on the configured port.
    let _sentinel = Sentinel::start_at(port, &primary);
    let deadline = Instant::now() + Duration::from_secs(10);
    while raw.call(&[b"SET", b"k", b"v"]).await != b"+OK\r\n" {
        assert!(Instant::now() < deadline, "never found the primary");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(redis_cli(primary.port, &["GET", "k"]).trim(), "v");
}

/// Sentinels that require a password (`requirepass` in sentinel.conf): without
/// `sentinel_password` keygate says why on every request; with it, it finds the primary (which
/// has no password: the sentinels' credentials are theirs alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_with_a_password() {
    let primary = Redis::start();
    let sentinel = Sentinel::start_configured(free_port(), &primary, "requirepass sentinel-pw\n");
    let config = |auth: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"sentinel\"\nmaster = \"mymaster\"\n\
             servers = [\"{}\"]\n{auth}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            sentinel.addr()
        )
    };
    let kg = Keygate::start_unready(&config("")).await;
    assert_eq!(
        kg.raw().await.call(&[b"GET", b"k"]).await,
        b"-ERR keygate: no primary is known yet: no sentinel has named one (see the log)\r\n"
    );
    drop(kg);
    let kg = Keygate::start_config(&config("sentinel_password = \"sentinel-pw\"")).await;
    assert_eq!(kg.raw().await.call(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_eq!(redis_cli(primary.port, &["GET", "k"]).trim(), "v");
}

/// keygate over a sentinel-managed primary and replica, reading per `read_from`, once the
/// replica is known (the sentinel learns of it from the primary) and connected.
async fn reading_keygate(sentinel: &Sentinel, replica: &Redis, read_from: &str) -> Keygate {
    let kg = Keygate::start_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"sentinel\"\nmaster = \"mymaster\"\n\
         servers = [\"{}\"]\nread_from = \"{read_from}\"\nrefresh_interval = \"300ms\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        sentinel.addr()
    ))
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = format!(
        "keygate_backend_connections{{server=\"{}\"}} 1",
        replica.addr()
    );
    loop {
        let (_, metrics) = http_get(kg.admin, "/metrics").await;
        if metrics.contains(&line) {
            return kg;
        }
        assert!(
            Instant::now() < deadline,
            "the replica was never used: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `read_from = "replica"`: reads go to the replica the sentinels list as in sync; writes to
/// the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_the_sentinels_replica() {
    let (primary, replica) = primary_and_replica();
    let sentinel = Sentinel::start(&primary);
    let kg = reading_keygate(&sentinel, &replica, "replica").await;
    let mut raw = kg.raw().await;
    assert_eq!(raw.call(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    let before = (gets_served(&primary), gets_served(&replica));
    let deadline = Instant::now() + Duration::from_secs(5);
    while raw.call(&[b"GET", b"k"]).await != bulk("v") {
        assert!(Instant::now() < deadline, "never replicated");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gets_served(&primary), before.0, "the primary served a read");
    assert!(gets_served(&replica) > before.1);
    assert_eq!(redis_cli(primary.port, &["GET", "k"]).trim(), "v");
}

/// `read_from = "prefer_replica"`: a client that just wrote reads from the primary (its own
/// writes), and from the replica again a second later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_replica_reads_your_own_writes() {
    let (primary, replica) = primary_and_replica();
    let sentinel = Sentinel::start(&primary);
    let kg = reading_keygate(&sentinel, &replica, "prefer_replica").await;
    let mut raw = kg.raw().await;
    assert_eq!(raw.call(&[b"SET", b"k", b"mine"]).await, b"+OK\r\n");
    let before = (gets_served(&primary), gets_served(&replica));
    assert_eq!(raw.call(&[b"GET", b"k"]).await, bulk("mine"));
    assert_eq!(gets_served(&primary), before.0 + 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(raw.call(&[b"GET", b"k"]).await, bulk("mine"));
    assert_eq!(gets_served(&replica), before.1 + 1);
}
