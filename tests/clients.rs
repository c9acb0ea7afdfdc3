//! Client libraries in other languages through keygate, as applications use them: redis-py
//! (tests/clients/redis_py.py) in RESP2 and RESP3. The interpreter and the library must be
//! installed (scripts/test.sh installs redis-py); a missing one fails the test.

mod common;

use std::process::Command;

use common::{Keygate, Redis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_handshake_data_transactions_pubsub_and_blocking_pops() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/redis_py.py");
    let port = kg.addr.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script, "127.0.0.1", &port])
            .output()
            .expect("python3 is missing: install it (scripts/test.sh does)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "redis-py through keygate failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ok"), "{stdout}");
    println!("{}", stdout.trim());
}
