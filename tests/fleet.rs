//! Limits shared by a fleet (`[fleet] shared_limits`): three keygate processes in front of one
//! Redis hold a tenant to its `max_ops_per_sec` and `max_connections` together, and a keygate
//! that dies gives its connections back within `instance_ttl` and a heartbeat.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{free_port, wait_for_port, Binary, Raw, Redis};

/// A keygate process sharing its limits, with a tenant `acme` limited by `limits` (TOML keys).
fn start(redis: &Redis, shared: bool, limits: &str) -> (Binary, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let kg = Binary::start(
        dir.path(),
        &format!(
            "listen = \"127.0.0.1:{port}\"\nthreads = 1\n[upstream]\nkind = \"standalone\"\n\
             servers = [\"{}\"]\n[fleet]\nshared_limits = {shared}\ninstance_ttl = \"2s\"\n\
             [[tenants]]\nname = \"acme\"\npassword = \"acme-pw\"\nprefix = \"acme:\"\n{limits}",
            redis.addr()
        ),
    );
    wait_for_port(port);
    (kg, format!("127.0.0.1:{port}").parse().unwrap(), dir)
}

async fn auth(addr: SocketAddr) -> (Raw, Vec<u8>) {
    let mut raw = Raw::connect(addr).await;
    let reply = raw.call(&[b"AUTH", b"acme", b"acme-pw"]).await;
    (raw, reply)
}

/// One client per keygate sending GETs flat out (10 pipelined) for `run`; the requests
/// answered (not refused for the rate) between `skip` and `run`, per second, all together.
async fn combined_rate(addrs: &[SocketAddr], skip: Duration, run: Duration) -> f64 {
    let mut clients = Vec::new();
    for &addr in addrs {
        clients.push(tokio::spawn(async move {
            let (mut raw, reply) = auth(addr).await;
            assert_eq!(reply, b"+OK\r\n");
            let start = Instant::now();
            let mut counted = 0u64;
            let batch = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".repeat(10);
            while start.elapsed() < run {
                raw.send(&batch).await;
                for _ in 0..10 {
                    let reply = raw.reply().await.expect("a reply");
                    if reply.starts_with(b"$") && start.elapsed() >= skip {
                        counted += 1;
                    } else if !reply.starts_with(b"$") {
                        assert!(
                            String::from_utf8_lossy(&reply).contains("requests per second"),
                            "{}",
                            String::from_utf8_lossy(&reply)
                        );
                    }
                }
            }
            counted
        }));
    }
    let mut total = 0;
    for client in clients {
        total += client.await.unwrap();
    }
    total as f64 / (run - skip).as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_keygates_hold_a_tenant_to_its_rate_together() {
    let redis = Redis::start();
    let limits = "max_ops_per_sec = 300\n";
    let fleet: Vec<_> = (0..3).map(|_| start(&redis, true, limits)).collect();
    let addrs: Vec<SocketAddr> = fleet.iter().map(|(_, addr, _)| *addr).collect();
    // The first second spends the bucket's burst (one second's worth); then the rate holds.
    let rate = combined_rate(&addrs, Duration::from_secs(1), Duration::from_secs(5)).await;
    eprintln!("shared: combined {rate:.0} requests/s for a limit of 300");
    assert!((270.0..=330.0).contains(&rate), "combined {rate:.0}/s");

    // Without sharing, each keygate enforces the limit on its own: three times it.
    let alone: Vec<_> = (0..3).map(|_| start(&redis, false, limits)).collect();
    let addrs: Vec<SocketAddr> = alone.iter().map(|(_, addr, _)| *addr).collect();
    let rate = combined_rate(&addrs, Duration::from_secs(1), Duration::from_secs(3)).await;
    eprintln!("not shared: combined {rate:.0} requests/s");
    assert!(rate > 800.0, "combined {rate:.0}/s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_keygates_hold_a_tenant_to_its_connections_and_release_a_dead_ones() {
    let redis = Redis::start();
    let limits = "max_connections = 4\n";
    let mut fleet: Vec<_> = (0..3).map(|_| start(&redis, true, limits)).collect();
    let addrs: Vec<SocketAddr> = fleet.iter().map(|(_, addr, _)| *addr).collect();
    // Nine attempts, round robin over the three: four admitted in all.
    let mut admitted = Vec::new();
    for i in 0..9 {
        let (mut raw, reply) = auth(addrs[i % 3]).await;
        if reply == b"+OK\r\n" {
            assert_eq!(raw.call(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
            admitted.push((i % 3, raw));
        } else {
            let text = String::from_utf8_lossy(&reply).into_owned();
            assert!(text.contains("maximum of 4 connections"), "{text}");
            // A refused connection does not act as the tenant.
            assert_eq!(
                raw.call(&[b"GET", b"k"]).await,
                b"-NOAUTH Authentication required.\r\n"
            );
        }
    }
    assert_eq!(admitted.len(), 4);
    // One closed connection frees its place within a heartbeat (instance_ttl / 3).
    let (_, closed) = admitted.pop().unwrap();
    drop(closed);
    let freed = Instant::now();
    loop {
        let (raw, reply) = auth(addrs[2]).await;
        if reply == b"+OK\r\n" {
            admitted.push((2, raw));
            break;
        }
        assert!(freed.elapsed() < Duration::from_secs(3), "never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Kill the first keygate (holding one or two of the four): its count expires within
    // instance_ttl (2 s) plus a heartbeat, and the others admit again.
    let held_by_first = admitted.iter().filter(|(k, _)| *k == 0).count();
    assert!(held_by_first >= 1);
    fleet[0].0 .0.kill().unwrap();
    let killed = Instant::now();
    let mut again = Vec::new();
    while again.len() < held_by_first {
        let (raw, reply) = auth(addrs[1]).await;
        if reply == b"+OK\r\n" {
            again.push(raw);
            continue;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(4),
            "a dead keygate's connections were not released"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "a dead keygate's {held_by_first} connections released after {:?}",
        killed.elapsed()
    );
    let (_, reply) = auth(addrs[2]).await;
    assert!(String::from_utf8_lossy(&reply).contains("maximum of 4"));
}
