//! Client libraries in other languages through keygate, as applications use them: redis-py
//! (tests/clients/redis_py.py) in RESP2 and RESP3; node-redis in RESP2 and RESP3 and ioredis
//! (tests/clients/node_clients.mjs) in front of one Redis, as a tenant, and in front of a Redis
//! Cluster. The interpreters and the libraries must be installed (scripts/test.sh installs
//! redis-py with pip and the Node.js libraries with `npm ci`); a missing one fails the test.

mod common;

use std::process::Command;

use common::{Cluster, Keygate, Redis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_handshake_data_transactions_pubsub_and_blocking_pops() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let port = kg.addr.port().to_string();
    let stdout = run(
        "python3",
        vec!["redis_py.py".into(), "127.0.0.1".into(), port],
    )
    .await;
    assert!(stdout.contains("ok"), "{stdout}");
}

/// Where the client scripts are.
const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");

/// Run a client script in tests/clients with `program`; its output, or a panic showing it when
/// the script failed.
async fn run(program: &'static str, args: Vec<String>) -> String {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(program)
            .args(&args)
            .current_dir(SCRIPTS)
            .output()
            .unwrap_or_else(|e| panic!("{program} is missing ({e}): scripts/test.sh installs it"))
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{program} client script through keygate failed:\n{stdout}\n{stderr}"
    );
    println!("{}", stdout.trim());
    stdout
}

/// Run tests/clients/node_clients.mjs against keygate at `port`, with `AUTH user password`
/// when given; panics with the script's output when it fails.
async fn node_clients(port: u16, auth: Option<(&str, &str)>) {
    let modules = std::path::Path::new(SCRIPTS).join("node_modules");
    assert!(
        modules.join("ioredis").exists() && modules.join("redis").exists(),
        "node-redis and ioredis are missing: run `npm ci --prefix tests/clients` (scripts/test.sh does)"
    );
    let mut args = vec![
        "node_clients.mjs".to_string(),
        "127.0.0.1".into(),
        port.to_string(),
    ];
    if let Some((user, password)) = auth {
        args.extend([user.to_string(), password.to_string()]);
    }
    let stdout = run("node", args).await;
    for want in ["node-redis RESP2 ok", "node-redis RESP3 ok", "ioredis ok"] {
        assert!(stdout.contains(want), "{stdout}");
    }
}

/// node-redis and ioredis with their own handshakes (HELLO 3, CLIENT SETINFO, SETNAME, ioredis's
/// INFO ready check), automatic pipelining, MULTI, a WATCH race, pub/sub and blocking pops, in
/// front of one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_redis_and_ioredis() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    node_clients(kg.addr.port(), None).await;
}

/// The same as a tenant: the libraries authenticate (AUTH, or HELLO 3 AUTH), and every key they
/// wrote carries the tenant's prefix on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_redis_and_ioredis_as_a_tenant() {
    let backend = Redis::start();
    let kg = Keygate::start_with(
        &backend.addr(),
        "[[tenants]]\nname = \"app\"\npassword = \"app-pw\"\nprefix = \"app:\"\n",
    )
    .await;
    node_clients(kg.addr.port(), Some(("app", "app-pw"))).await;
    let keys = common::redis_cli(backend.port, &["KEYS", "*"]);
    assert!(keys.lines().count() > 400, "{keys}");
    assert!(keys.lines().all(|k| k.starts_with("app:")), "{keys}");
}

/// The same in front of a Redis Cluster: the libraries see one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_redis_and_ioredis_over_a_cluster() {
    let cluster = Cluster::start(3);
    let kg = Keygate::start_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"cluster\"\nservers = [\"{}\"]\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        cluster.nodes[0].addr()
    ))
    .await;
    node_clients(kg.addr.port(), None).await;
}

/// redis-rs 1.x's own handshake (CLIENT SETINFO; HELLO 3 when asked for RESP3), then data
/// through its multiplexed connection, in both protocols.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rs_handshake_in_both_protocols() {
    use redis::AsyncCommands;
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    for (query, resp) in [("", "2"), ("?protocol=resp3", "3")] {
        let client = redis::Client::open(format!("redis://{}/{query}", kg.addr)).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("CLIENT")
            .arg("INFO")
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(info.contains("lib-name=redis-rs"), "{info}");
        assert!(info.contains(&format!("resp={resp}")), "{info}");
        let _: () = con.hset_multiple("h", &[("a", 1), ("b", 2)]).await.unwrap();
        let map: std::collections::HashMap<String, i64> = con.hgetall("h").await.unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(map["b"], 2);
    }
}

/// fred (a Rust client built on redis-protocol): its handshake (HELLO 3 for RESP3, CLIENT
/// SETNAME, CLIENT ID), data, a pipeline, a transaction, pub/sub on a client of its own and a
/// blocking pop, in both protocols.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_in_both_protocols() {
    use fred::prelude::*;
    use fred::types::RespVersion;
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    for version in [RespVersion::RESP2, RespVersion::RESP3] {
        let p = format!("{version:?}:");
        let config = Config {
            version: version.clone(),
            ..Config::from_url(&format!("redis://{}", kg.addr)).unwrap()
        };
        let client = Builder::from_config(config.clone())
            .build()
            .expect("fred client");
        client.init().await.expect("fred connects through keygate");
        let id: i64 = client.client_id().await.unwrap();
        assert!(id > 0);
        let _: () = client
            .set(format!("{p}k"), "v", None, None, false)
            .await
            .unwrap();
        let v: String = client.get(format!("{p}k")).await.unwrap();
        assert_eq!(v, "v");
        let _: () = client
            .hset(format!("{p}h"), [("a", 1), ("b", 2)])
            .await
            .unwrap();
        let map: std::collections::HashMap<String, i64> =
            client.hgetall(format!("{p}h")).await.unwrap();
        assert_eq!(map.len(), 2);

        let pipeline = client.pipeline();
        for _ in 0..100 {
            let _: () = pipeline.incr(format!("{p}n")).await.unwrap();
        }
        let counts: Vec<i64> = pipeline.all().await.unwrap();
        assert_eq!(counts.last(), Some(&100));

        let tx = client.multi();
        let _: () = tx.set(format!("{p}t"), 1, None, None, false).await.unwrap();
        let _: () = tx.incr(format!("{p}t")).await.unwrap();
        let (set, incr): (String, i64) = tx.exec(true).await.unwrap();
        assert_eq!((set.as_str(), incr), ("OK", 2));

        let subscriber = Builder::from_config(config.clone()).build().unwrap();
        subscriber.init().await.unwrap();
        let mut messages = subscriber.message_rx();
        subscriber.subscribe(format!("{p}ch")).await.unwrap();
        // fred's subscribe() returns once SUBSCRIBE is written, not when Redis confirms it, and
        // keygate opens the subscriber's backend connection at its first SUBSCRIBE: wait until
        // the subscription is live, as Redis's own semantics require before relying on it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let (_, n): (String, i64) = client.pubsub_numsub(format!("{p}ch")).await.unwrap();
            if n == 1 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never subscribed");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let receivers: i64 = client.publish(format!("{p}ch"), "hello").await.unwrap();
        assert_eq!(receivers, 1);
        let message = tokio::time::timeout(std::time::Duration::from_secs(5), messages.recv())
            .await
            .expect("a message within 5 s")
            .unwrap();
        assert_eq!(message.value.as_string().as_deref(), Some("hello"));

        let blocked = client.clone_new();
        blocked.init().await.unwrap();
        let pop = tokio::spawn({
            let blocked = blocked.clone();
            let key = format!("{p}q");
            async move {
                let got: (String, String) = blocked.blpop(key, 0.0).await.unwrap();
                got
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let _: () = client.rpush(format!("{p}q"), "x").await.unwrap();
        assert_eq!(pop.await.unwrap(), (format!("{p}q"), "x".to_string()));
        for c in [client, subscriber, blocked] {
            let _: () = c.quit().await.unwrap();
        }
    }
}
