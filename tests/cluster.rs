//! kind = "cluster": a real three-primary Redis Cluster behind keygate. Clients need no cluster
//! support and never see MOVED or ASK, also while slots move.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{free_port, http_get, Cluster, Keygate, Raw, Redis};
use redis::AsyncCommands;

/// keygate in front of `cluster`, its first seed a port where nothing listens.
async fn keygate(cluster: &Cluster) -> Keygate {
    let seeds = format!(
        "\"127.0.0.1:{}\", \"{}\"",
        free_port(),
        cluster.nodes[1].addr()
    );
    Keygate::start_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"cluster\"\nservers = [{seeds}]\n\
         connect_timeout = \"300ms\"\nrefresh_interval = \"1s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_commands_answer_as_one_redis() {
    let cluster = Cluster::start(3);
    let kg = keygate(&cluster).await;
    let reference = Redis::start();
    let mut through = kg.raw().await;
    let mut direct = Raw::connect(format!("127.0.0.1:{}", reference.port).parse().unwrap()).await;
    let keys: Vec<String> = (0..20).map(|i| format!("key:{i}")).collect();
    let mut script = common::multi_key_script(&keys);
    for line in [
        "MSETNX {u}a 1 {u}b 2",
        "SUNIONSTORE {u}s {u}x",
        "RPUSH {u}l a b",
        "LMOVE {u}l {u}m LEFT RIGHT",
        "HSET h f v",
        "HGETALL h",
        "DBSIZE",
    ] {
        script.push(line.split(' ').map(String::from).collect());
    }
    script.push(
        ["EVAL", "return redis.call('get', KEYS[1])", "1", "{u}a"]
            .map(String::from)
            .to_vec(),
    );
    for i in 0..200 {
        script.push(vec!["SET".into(), format!("s{i}"), format!("{i}")]);
        script.push(vec!["GET".into(), format!("s{i}")]);
    }
    common::assert_same_replies(&mut through, &mut direct, &script).await;
    // Keys in different slots cannot be used together by other commands (Redis Cluster's rule).
    assert_eq!(
        through.call(&[b"RENAME", b"key:10", b"key:11"]).await,
        b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"
    );

    // Keyspace-wide commands cover every primary.
    let mut con = kg.connection().await;
    let size: usize = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
    assert_eq!(size, common::dbsize(&reference).await);
    let mut all: Vec<String> = con.keys("*").await.unwrap();
    all.sort();
    assert_eq!(common::scan_all(&mut con, 20).await, all);
    assert_eq!(all.len(), size);
    let info: String = redis::cmd("INFO").query_async(&mut con).await.unwrap();
    assert!(
        info.contains("upstream_kind:cluster") && info.contains("shards:3"),
        "{info}"
    );
    assert_eq!(http_get(kg.admin, "/ready").await.0, 200);
}

/// While 20 clients write and read back their own keys, half of one primary's slots move to
/// another (`redis-cli --cluster reshard`): no client sees an error, every read returns the
/// value last written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_under_load_loses_nothing() {
    let cluster = Cluster::start(3);
    let kg = keygate(&cluster).await;
    let done = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..20 {
        let client = kg.client();
        let done = done.clone();
        clients.push(tokio::spawn(async move {
            let mut con = common::multiplexed(&client).await;
            let mut last: HashMap<String, String> = HashMap::new();
            let mut errors = Vec::new();
            let mut round = 0u64;
            while !done.load(Ordering::Relaxed) || round < 200 {
                let key = format!("c{c}:k{}", round % 64);
                let value = format!("{c}-{round}");
                match con.set::<_, _, ()>(&key, &value).await {
                    Ok(()) => {
                        last.insert(key.clone(), value);
                    }
                    Err(e) => errors.push(format!("SET {key}: {e}")),
                }
                match con.get::<_, Option<String>>(&key).await {
                    Ok(got) if got.as_ref() == last.get(&key) => {}
                    Ok(got) => {
                        errors.push(format!("GET {key}: {got:?}, want {:?}", last.get(&key)))
                    }
                    Err(e) => errors.push(format!("GET {key}: {e}")),
                }
                if round % 16 == 0 {
                    // A split MGET over this client's keys, checked against what it wrote.
                    let keys: Vec<&String> = last.keys().take(8).collect();
                    match con.mget::<_, Vec<Option<String>>>(&keys).await {
                        Ok(values) => {
                            for (k, v) in keys.iter().zip(values) {
                                if v.as_ref() != last.get(*k) {
                                    errors
                                        .push(format!("MGET {k}: {v:?}, want {:?}", last.get(*k)));
                                }
                            }
                        }
                        Err(e) => errors.push(format!("MGET: {e}")),
                    }
                }
                round += 1;
            }
            (errors, round)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A SCAN cursor taken before the slots move.
    let mut scanner = kg.raw().await;
    let first = scanner.call(&[b"SCAN", b"0", b"COUNT", b"5"]).await;
    let old_cursor = redis::parse_redis_value(&first)
        .ok()
        .and_then(|v| match v {
            redis::Value::Array(items) => match items.first() {
                Some(redis::Value::BulkString(c)) => Some(c.clone()),
                _ => None,
            },
            _ => None,
        })
        .expect("a SCAN reply");
    assert_ne!(old_cursor, b"0");
    let from = cluster.node_id(0);
    let to = cluster.node_id(1);
    let slots = redis_slots_of(&cluster, 0) / 2;
    let addr = cluster.nodes[0].addr();
    let reshard = tokio::task::spawn_blocking(move || {
        Command::new("redis-cli")
            .args([
                "--cluster",
                "reshard",
                &addr,
                "--cluster-from",
                &from,
                "--cluster-to",
                &to,
            ])
            .args([
                "--cluster-slots",
                &slots.to_string(),
                "--cluster-yes",
                "--cluster-pipeline",
                "20",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        reshard.status.success(),
        "reshard failed: {}",
        String::from_utf8_lossy(&reshard.stdout)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, Ordering::Relaxed);
    let mut total = 0;
    for client in clients {
        let (errors, rounds) = client.await.unwrap();
        assert!(
            errors.is_empty(),
            "{} errors, first: {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
        total += rounds;
    }
    assert!(
        redis_slots_of(&cluster, 0) < 5461 / 2 + 10,
        "the slots did move"
    );
    let (_, metrics) = http_get(kg.admin, "/metrics").await;
    let count = |kind: &str| -> u64 {
        let prefix = format!("keygate_cluster_redirections_total{{kind=\"{kind}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap()
            .parse()
            .unwrap()
    };
    let (moved, ask) = (count("moved"), count("ask"));
    assert!(moved > 0, "clients must have been redirected: {metrics}");
    eprintln!("resharding: {slots} slots moved, {total} client rounds, 0 errors, {moved} MOVED and {ask} ASK followed");
    // keygate's map followed the move, and an old SCAN cursor is refused, not misread.
    let stale = scanner.call(&[b"SCAN", &old_cursor]).await;
    assert!(
        stale.starts_with(b"-ERR keygate: this SCAN cursor was made before the topology changed"),
        "{}",
        String::from_utf8_lossy(&stale)
    );
    let mut con = kg.connection().await;
    let info: String = redis::cmd("INFO").query_async(&mut con).await.unwrap();
    assert!(!info.contains("topology_epoch:1\r\n"), "{info}");
}

/// How many slots node `i` serves, from CLUSTER SLOTS on that node.
fn redis_slots_of(cluster: &Cluster, i: usize) -> u32 {
    let text = common::redis_cli(cluster.nodes[i].port, &["CLUSTER", "NODES"]);
    let line = text.lines().find(|l| l.contains("myself")).unwrap();
    line.split(' ')
        .skip(8)
        .filter(|r| !r.starts_with('['))
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<u32>().unwrap() - a.parse::<u32>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

/// `read_from = "replica"`: read-only commands go to the key's primary's replicas (READONLY
/// connections), writes to primaries; with every replica down, reads fall back to the primaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_replicas_and_fall_back_to_primaries() {
    let mut cluster = Cluster::start_replicated(3, 1);
    let seeds = format!("\"{}\"", cluster.nodes[0].addr());
    let kg = Keygate::start_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"cluster\"\nservers = [{seeds}]\n\
         read_from = \"replica\"\nrefresh_interval = \"300ms\"\nconnect_timeout = \"200ms\"\nfailures_to_open = 2\nopen_for = \"60s\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n"
    ))
    .await;
    // Until the replicas are in the slot map (they join after the cluster is created) and
    // connected, reads fall back to primaries: wait for them.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = http_get(kg.admin, "/metrics").await;
        let up = cluster
            .nodes
            .iter()
            .filter(|n| {
                metrics.contains(&format!(
                    "keygate_backend_connections{{server=\"{}\"}} 1",
                    n.addr()
                ))
            })
            .count();
        if up == cluster.nodes.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replicas never connected: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut con = kg.connection().await;
    let keys: Vec<String> = (0..60).map(|i| format!("rk{i}")).collect();
    for k in &keys {
        let _: () = con.set(k, format!("v-{k}")).await.unwrap();
    }
    let is_replica = |node: &Redis| common::redis_cli(node.port, &["ROLE"]).starts_with("slave");
    let before: Vec<u64> = cluster.nodes.iter().map(common::gets_served).collect();
    // Replication is asynchronous: read until each value has arrived.
    for k in &keys {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let v: Option<String> = con.get(k).await.unwrap();
            if v.as_deref() == Some(format!("v-{k}").as_str()) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{k} never replicated");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut by_replicas = 0;
    for (node, before) in cluster.nodes.iter().zip(&before) {
        let served = common::gets_served(node) - before;
        if is_replica(node) {
            by_replicas += served;
        } else {
            assert_eq!(served, 0, "a primary served reads");
        }
    }
    assert!(by_replicas >= keys.len() as u64, "{by_replicas}");
    // Every replica down: reads fall back to the primaries.
    let replicas: Vec<usize> = (0..cluster.nodes.len())
        .filter(|&i| is_replica(&cluster.nodes[i]))
        .collect();
    for &i in &replicas {
        cluster.nodes[i].kill();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for k in &keys {
        loop {
            let v: redis::RedisResult<Option<String>> = con.get(k).await;
            if let Ok(Some(v)) = v {
                assert_eq!(v, format!("v-{k}"));
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no fallback for {k}: {v:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
