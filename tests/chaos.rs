//! Chaos, bounded in time, with real processes: 50 clients keep writing and reading values of
//! their own while backends are killed and restarted, stopped (slow), the config is reloaded
//! with another server list, and a Redis Cluster fails over (CLUSTER FAILOVER, then a primary
//! killed). Pass: no client ever gets a reply meant for another request or client; every failed
//! request gets a clear error; no client is disconnected; once the faults stop, every client
//! recovers within seconds.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{redis_cli, Cluster, Keygate, Raw, Redis};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const CLIENTS: usize = 50;

/// What the clients saw, all together.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    errors: AtomicU64,
}

/// One client's loop: SET a value only it writes, GET it back, INCR its own counter, and check
/// every reply's type and owner. Stops when `stop` is set; returns its last error, if any.
fn client(mut raw: Raw, id: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            let key = format!("{{c{id}}}:k{}", seq % 8);
            let value = format!("c{id}:k{}:{seq}", seq % 8);
            let set = call(&mut raw, &[b"SET", key.as_bytes(), value.as_bytes()], id).await;
            check(&set, id, |r| r == b"+OK\r\n", &tally);
            let mine = format!("c{id}:k{}:", seq % 8);
            let get = call(&mut raw, &[b"GET", key.as_bytes()], id).await;
            check(
                &get,
                id,
                |r| {
                    // Its own value (possibly an older one, after a server restarted or keys
                    // moved), or nil; never another key's or another client's.
                    r == b"$-1\r\n"
                        || (r.starts_with(b"$")
                            && String::from_utf8_lossy(r).contains(&mine)
                            && String::from_utf8_lossy(r).matches("c").count() == 1)
                },
                &tally,
            );
            let counter = format!("{{c{id}}}:n");
            let incr = call(&mut raw, &[b"INCR", counter.as_bytes()], id).await;
            check(&incr, id, |r| r.starts_with(b":"), &tally);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

async fn call(raw: &mut Raw, args: &[&[u8]], id: usize) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    let args: Vec<bytes::Bytes> = args
        .iter()
        .map(|a| bytes::Bytes::copy_from_slice(a))
        .collect();
    keygate::resp::encode_request(&args, &mut out);
    raw.send(&out).await;
    raw.reply()
        .await
        .unwrap_or_else(|| panic!("client {id} was disconnected"))
}

/// A reply is either what `good` expects or a clear error (keygate's own, or a cluster's
/// transient state); anything else is a reply meant for someone else.
fn check(reply: &[u8], id: usize, good: impl Fn(&[u8]) -> bool, tally: &Tally) {
    if good(reply) {
        tally.ok.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let text = String::from_utf8_lossy(reply);
    let clear = text.starts_with("-ERR keygate: ")
        || text.starts_with("-TRYAGAIN")
        || text.starts_with("-CLUSTERDOWN")
        || text.starts_with("-LOADING")
        || text.starts_with("-MASTERDOWN")
        || text.starts_with("-READONLY");
    assert!(clear, "client {id} got a reply not meant for it: {text:?}");
    tally.errors.fetch_add(1, Ordering::Relaxed);
}

/// Start the clients; run `faults`; stop; then every client must get 20 good round trips in a
/// row within 15 s.
async fn under_chaos(kg: &Keygate, faults: impl std::future::Future<Output = ()>) -> (u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        tasks.push(client(kg.raw().await, id, stop.clone(), tally.clone()));
    }
    faults.await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("a client failed");
    }
    let (ok, errors) = (
        tally.ok.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
    );
    // Recovery: fresh connections and the old ones alike.
    let started = Instant::now();
    let mut recovering = Vec::new();
    for id in 0..CLIENTS {
        let mut raw = kg.raw().await;
        recovering.push(tokio::spawn(async move {
            let mut good = 0;
            let deadline = Instant::now() + Duration::from_secs(15);
            while good < 20 {
                assert!(Instant::now() < deadline, "client {id} did not recover");
                let key = format!("{{c{id}}}:after");
                let set = call(&mut raw, &[b"SET", key.as_bytes(), b"x"], id).await;
                let get = call(&mut raw, &[b"GET", key.as_bytes()], id).await;
                if set == b"+OK\r\n" && get == b"$1\r\nx\r\n" {
                    good += 1;
                } else {
                    good = 0;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for task in recovering {
        task.await.expect("a client did not recover");
    }
    println!(
        "{ok} good replies, {errors} clear errors; every client recovered within {:?}",
        started.elapsed()
    );
    (ok, errors)
}

fn ketama_config(servers: &[&Redis]) -> String {
    ketama_config_of(&servers.iter().map(|s| s.addr()).collect::<Vec<_>>())
}

fn ketama_config_of(servers: &[String]) -> String {
    let list = servers
        .iter()
        .map(|addr| format!("\"{addr}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"ketama\"\nhash_tag = \"{{}}\"\nservers = [{list}]\n\
         connections_per_server = 2\nconnect_timeout = \"300ms\"\nrequest_timeout = \"500ms\"\n\
         failures_to_open = 3\nopen_for = \"1s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
    )
}

/// Sharded standalone servers: one killed and restarted, one stopped then resumed (slow),
/// and two reloads with a changed server list. Which server is killed and which stopped is
/// chosen from where the clients' keys landed (ketama places them by the servers' random
/// ports), so the faults always hit clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ketama_backends_die_stall_and_change_under_load() {
    let mut servers = [Redis::start(), Redis::start(), Redis::start()];
    let d = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.toml");
    let all: Vec<&Redis> = servers.iter().collect();
    std::fs::write(&path, ketama_config(&all)).unwrap();
    let kg = Keygate::start_file(&path).await;
    // Each client's keys share its hash tag: find each tag's server, busiest first.
    let mut probe = kg.raw().await;
    for id in 0..CLIENTS {
        let key = format!("{{c{id}}}:probe");
        assert_eq!(
            probe.call(&[b"SET", key.as_bytes(), b"1"]).await,
            b"+OK\r\n"
        );
    }
    let mut order: Vec<(usize, usize)> = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        order.push((common::dbsize(server).await, i));
    }
    order.sort_unstable_by(|x, y| y.cmp(x));
    let (killed, stalled, kept) = match order[1].0 {
        // Everything on one server: fault that one twice.
        0 => (order[0].1, order[0].1, order[1].1),
        _ => (order[0].1, order[1].1, order[2].1),
    };
    println!("clients per server: {order:?}; killed {killed}, stalled {stalled}");
    let reload = |servers: Vec<String>| {
        let text = ketama_config_of(&servers);
        std::fs::write(&path, text).unwrap();
        let admin = kg.admin;
        async move {
            let (status, body) = common::http(admin, "POST", "/reload").await;
            assert_eq!(status, 200, "{body}");
        }
    };
    let addr = |i: usize| servers[i].addr();
    let four = vec![addr(0), addr(1), addr(2), d.addr()];
    let three = vec![addr(killed), addr(kept), d.addr()];
    let (ok, errors) = under_chaos(&kg, async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        servers[killed].kill();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        servers[killed].restart();
        tokio::time::sleep(Duration::from_millis(500)).await;
        servers[stalled].signal("STOP");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        servers[stalled].signal("CONT");
        tokio::time::sleep(Duration::from_millis(500)).await;
        reload(four).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        reload(three).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
    })
    .await;
    assert!(ok > 1000, "{ok}");
    assert!(
        errors > 0,
        "the faults caused no errors at all: were they real?"
    );
}

/// A Redis Cluster with a replica per primary: a manual failover, then a primary killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_fails_over_under_load() {
    let mut cluster = Cluster::start_replicated(3, 1);
    let seeds = cluster
        .nodes
        .iter()
        .map(|n| format!("\"{}\"", n.addr()))
        .collect::<Vec<_>>()
        .join(", ");
    let kg = Keygate::start_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"cluster\"\nservers = [{seeds}]\n\
         refresh_interval = \"500ms\"\nconnect_timeout = \"300ms\"\nrequest_timeout = \"1s\"\n\
         failures_to_open = 3\nopen_for = \"1s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
    ))
    .await;
    let role = |node: &Redis| redis_cli(node.port, &["ROLE"]);
    let (ok, _) = under_chaos(&kg, async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        // A replica takes over from its primary, cleanly.
        let replica = (0..cluster.nodes.len())
            .find(|&i| role(&cluster.nodes[i]).starts_with("slave"))
            .expect("a replica");
        // A manual failover gives up after 5 s if the replica cannot catch up (a loaded
        // machine): ask again, with FORCE the second time.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut attempt = 0;
        'failover: while Instant::now() < deadline {
            let mut ask = vec!["CLUSTER", "FAILOVER"];
            if attempt > 0 {
                ask.push("FORCE");
            }
            attempt += 1;
            assert_eq!(redis_cli(cluster.nodes[replica].port, &ask).trim(), "OK");
            let retry_at = Instant::now() + Duration::from_secs(6);
            while Instant::now() < retry_at {
                if role(&cluster.nodes[replica]).starts_with("master") {
                    break 'failover;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        assert!(
            role(&cluster.nodes[replica]).starts_with("master"),
            "CLUSTER FAILOVER never completed"
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
        // A primary dies; its replica is promoted once the cluster notices (node timeout 3 s).
        let victim = (0..cluster.nodes.len())
            .find(|&i| i != replica && role(&cluster.nodes[i]).starts_with("master"))
            .expect("another primary");
        cluster.nodes[victim].kill();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = cluster
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != victim)
                .all(|(_, n)| redis_cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "the cluster never failed over");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    })
    .await;
    assert!(ok > 1000, "{ok}");
}
