//! Isolation by instance: a tenant with `upstream = "NAME"` has its keys on servers of its own
//! (`[upstreams.NAME]`: standalone, ketama or cluster) behind the same keygate address and
//! credentials, and a reload moves it between upstreams.

mod common;

use common::{as_tenant, bulk, http, http_get, redis_cli, Cluster, Keygate, Redis};

fn text(reply: Vec<u8>) -> String {
    String::from_utf8_lossy(&reply).into_owned()
}

fn tenants(vip_upstream: Option<&str>) -> String {
    let upstream = vip_upstream.map_or(String::new(), |u| format!("upstream = \"{u}\"\n"));
    format!(
        "[[tenants]]\nname = \"shared\"\npassword = \"shared-pw\"\nprefix = \"shared:\"\n\
         [[tenants]]\nname = \"vip\"\npassword = \"vip-pw\"\nprefix = \"vip:\"\n{upstream}"
    )
}

/// The main upstream on `main`, `[upstreams.premium]` on `premium`, tenants as `tenants`.
fn config(main: &Redis, premium: &Redis, tenants: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"standalone\"\nservers = [\"{}\"]\n\
         [upstreams.premium]\nkind = \"standalone\"\nservers = [\"{}\"]\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n{tenants}",
        main.addr(),
        premium.addr()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_an_upstream_of_its_own_reaches_only_its_servers() {
    let main = Redis::start();
    let premium = Redis::start();
    let kg = Keygate::start_config(&config(&main, &premium, &tenants(Some("premium")))).await;
    let mut shared = as_tenant(&kg, "shared").await;
    let mut vip = as_tenant(&kg, "vip").await;
    assert_eq!(vip.call(&[b"SET", b"k", b"vip"]).await, b"+OK\r\n");
    assert_eq!(shared.call(&[b"SET", b"k", b"shared"]).await, b"+OK\r\n");
    assert_eq!(redis_cli(premium.port, &["GET", "vip:k"]).trim(), "vip");
    assert_eq!(redis_cli(main.port, &["GET", "vip:k"]).trim(), "");
    assert_eq!(redis_cli(main.port, &["GET", "shared:k"]).trim(), "shared");
    assert_eq!(redis_cli(premium.port, &["DBSIZE"]).trim(), "1");
    // Every path a request takes: keyspace emulation, transactions, scripts, pub/sub.
    assert_eq!(vip.call(&[b"DBSIZE"]).await, b":1\r\n");
    assert_eq!(vip.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(vip.call(&[b"INCR", b"n"]).await, b"+QUEUED\r\n");
    assert_eq!(vip.call(&[b"EXEC"]).await, b"*1\r\n:1\r\n");
    assert_eq!(redis_cli(premium.port, &["GET", "vip:n"]).trim(), "1");
    let mut listener = as_tenant(&kg, "vip").await;
    assert!(text(listener.call(&[b"SUBSCRIBE", b"news"]).await).contains("subscribe"));
    assert_eq!(vip.call(&[b"PUBLISH", b"news", b"hi"]).await, b":1\r\n");
    assert!(text(listener.reply().await.unwrap()).contains("hi"));
    // The same connection, re-authenticated as the other tenant, follows it.
    assert_eq!(
        vip.call(&[b"AUTH", b"shared", b"shared-pw"]).await,
        b"+OK\r\n"
    );
    assert_eq!(vip.call(&[b"GET", b"k"]).await, bulk("shared"));
    assert_eq!(vip.call(&[b"AUTH", b"vip", b"vip-pw"]).await, b"+OK\r\n");
    assert_eq!(vip.call(&[b"GET", b"k"]).await, bulk("vip"));
    // Its servers in /metrics and on the status page, labelled.
    let metrics = http_get(kg.admin, "/metrics").await.1;
    let line = format!(
        "keygate_backend_connections{{server=\"{}\",upstream=\"premium\"}}",
        premium.addr()
    );
    assert!(metrics.contains(&line), "{metrics}");
    let status = http_get(kg.admin, "/status.json").await.1;
    assert!(status.contains("\"upstream\":\"premium\""), "{status}");
    assert_eq!(http_get(kg.admin, "/ready").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_upstreams_may_be_a_ketama_set_or_a_cluster() {
    let main = Redis::start();
    let ring = [Redis::start(), Redis::start(), Redis::start()];
    let cluster = Cluster::start(3);
    let list = ring
        .iter()
        .map(|s| format!("\"{}\"", s.addr()))
        .collect::<Vec<_>>()
        .join(", ");
    let kg = Keygate::start_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"standalone\"\nservers = [\"{}\"]\n\
         [upstreams.ring]\nkind = \"ketama\"\nservers = [{list}]\n\
         [upstreams.big]\nkind = \"cluster\"\nservers = [\"{}\"]\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [[tenants]]\nname = \"r\"\npassword = \"r-pw\"\nprefix = \"r:\"\nupstream = \"ring\"\n\
         [[tenants]]\nname = \"c\"\npassword = \"c-pw\"\nprefix = \"c:\"\nupstream = \"big\"\n",
        main.addr(),
        cluster.nodes[0].addr()
    ))
    .await;
    for (tenant, ports) in [
        ("r", ring.iter().map(|s| s.port).collect::<Vec<_>>()),
        ("c", cluster.nodes.iter().map(|n| n.port).collect()),
    ] {
        let mut raw = as_tenant(&kg, tenant).await;
        for i in 0..60 {
            let key = format!("key{i}");
            assert_eq!(raw.call(&[b"SET", key.as_bytes(), b"v"]).await, b"+OK\r\n");
        }
        // MSET over keys on several servers, split and merged there.
        assert_eq!(
            raw.call(&[b"MSET", b"a", b"1", b"b", b"2", b"c", b"3"])
                .await,
            b"+OK\r\n"
        );
        assert_eq!(
            raw.call(&[b"MGET", b"a", b"b", b"c"]).await,
            b"*3\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n"
        );
        assert_eq!(raw.call(&[b"DBSIZE"]).await, b":63\r\n");
        let held: Vec<usize> = ports
            .iter()
            .map(|&p| {
                redis_cli(p, &["--scan", "--pattern", &format!("{tenant}:*")])
                    .lines()
                    .count()
            })
            .collect();
        assert_eq!(held.iter().sum::<usize>(), 63, "{tenant}: {held:?}");
        // (fnv1a_64, twemproxy's default, spreads keys this alike unevenly.)
        let servers_used = held.iter().filter(|&&n| n > 0).count();
        assert!(servers_used >= 2, "{tenant}: spread {held:?}");
    }
    assert_eq!(redis_cli(main.port, &["DBSIZE"]).trim(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_a_tenant_between_upstreams_and_closes_its_connections() {
    let main = Redis::start();
    let premium = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, config(&main, &premium, &tenants(None))).unwrap();
    let kg = Keygate::start_file(&path).await;
    let mut vip = as_tenant(&kg, "vip").await;
    let mut shared = as_tenant(&kg, "shared").await;
    assert_eq!(vip.call(&[b"SET", b"k", b"before"]).await, b"+OK\r\n");
    assert_eq!(redis_cli(main.port, &["GET", "vip:k"]).trim(), "before");

    std::fs::write(&path, config(&main, &premium, &tenants(Some("premium")))).unwrap();
    let (status, body) = http(kg.admin, "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    // Its connection made before the move is closed; the other tenant's stays.
    vip.expect_closed().await;
    assert_eq!(shared.call(&[b"PING"]).await, b"+PONG\r\n");
    // A new connection reaches the new servers, which hold none of its old data (keygate
    // copies nothing).
    let mut vip = as_tenant(&kg, "vip").await;
    assert_eq!(vip.call(&[b"GET", b"k"]).await, b"$-1\r\n");
    assert_eq!(vip.call(&[b"SET", b"k", b"after"]).await, b"+OK\r\n");
    assert_eq!(redis_cli(premium.port, &["GET", "vip:k"]).trim(), "after");
    assert_eq!(redis_cli(main.port, &["GET", "vip:k"]).trim(), "before");

    // An unknown upstream is refused, and the running config stays.
    std::fs::write(&path, config(&main, &premium, &tenants(Some("nowhere")))).unwrap();
    let (status, body) = http(kg.admin, "POST", "/reload").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("tenants[1].upstream"), "{body}");
    assert_eq!(vip.call(&[b"GET", b"k"]).await, bulk("after"));
}
