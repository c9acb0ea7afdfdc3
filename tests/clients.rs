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
