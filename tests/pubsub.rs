//! Pub/sub through keygate: RESP2 subscribed mode, RESP3 push frames, shard channels in a
//! cluster, tenants' channels kept apart, and a subscriber never left silently deaf.

mod common;

use std::time::Duration;

use common::{as_tenant, bulk, redis_cli, Cluster, Keygate, Raw, Redis};
use futures_util::StreamExt;

fn text(reply: Vec<u8>) -> String {
    String::from_utf8_lossy(&reply).into_owned()
}

/// `*3 kind channel :count` (RESP2) or `>3 ...` (RESP3).
fn confirm(header: &str, kind: &str, channel: &str, count: i64) -> Vec<u8> {
    [
        format!("{header}3\r\n").into_bytes(),
        bulk(kind),
        bulk(channel),
        format!(":{count}\r\n").into_bytes(),
    ]
    .concat()
}

fn message(header: &str, channel: &str, payload: &str) -> Vec<u8> {
    [
        format!("{header}3\r\n").into_bytes(),
        bulk("message"),
        bulk(channel),
        bulk(payload),
    ]
    .concat()
}

/// No frame arrives within a short while.
async fn silent(raw: &mut Raw) {
    let got = tokio::time::timeout(Duration::from_millis(200), raw.reply()).await;
    assert!(
        got.is_err(),
        "unexpected frame: {:?}",
        got.map(|r| r.map(text))
    );
}

#[tokio::test]
async fn resp2_subscribed_mode_as_redis() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut sub = kg.raw().await;
    let mut other = kg.raw().await;
    let mut publisher = kg.raw().await;
    sub.send(b"SUBSCRIBE news sports\r\n").await;
    assert_eq!(
        sub.reply().await.unwrap(),
        confirm("*", "subscribe", "news", 1)
    );
    assert_eq!(
        sub.reply().await.unwrap(),
        confirm("*", "subscribe", "sports", 2)
    );
    assert_eq!(
        other.call(&[b"SUBSCRIBE", b"weather"]).await,
        confirm("*", "subscribe", "weather", 1)
    );
    assert_eq!(
        publisher.call(&[b"PUBLISH", b"news", b"hello"]).await,
        b":1\r\n"
    );
    assert_eq!(sub.reply().await.unwrap(), message("*", "news", "hello"));
    // Only subscribers get a message.
    silent(&mut other).await;
    // Subscribed mode: only the subscribe commands, PING, QUIT and RESET.
    assert_eq!(
        sub.call(&[b"GET", b"k"]).await,
        b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n"
    );
    assert_eq!(
        sub.call(&[b"PING"]).await,
        [b"*2\r\n".to_vec(), bulk("pong"), bulk("")].concat()
    );
    assert_eq!(
        sub.call(&[b"PSUBSCRIBE", b"n*"]).await,
        confirm("*", "psubscribe", "n*", 3)
    );
    assert_eq!(
        publisher.call(&[b"PUBLISH", b"news", b"again"]).await,
        b":2\r\n"
    );
    let mut got = vec![sub.reply().await.unwrap(), sub.reply().await.unwrap()];
    got.sort();
    let pmessage = [
        b"*4\r\n".to_vec(),
        bulk("pmessage"),
        bulk("n*"),
        bulk("news"),
        bulk("again"),
    ]
    .concat();
    let mut want = vec![message("*", "news", "again"), pmessage];
    want.sort();
    assert_eq!(got, want);
    // PUBSUB sees the subscriptions.
    assert_eq!(
        publisher.call(&[b"PUBSUB", b"NUMSUB", b"news"]).await,
        [b"*2\r\n".to_vec(), bulk("news"), b":1\r\n".to_vec()].concat()
    );
    // Unsubscribing from everything leaves subscribed mode.
    sub.send(b"UNSUBSCRIBE\r\n").await;
    // Redis drops them in its own order, counting down what is left (the pattern stays).
    let first = sub.reply().await.unwrap();
    let second = sub.reply().await.unwrap();
    let in_order = |a: &str, b: &str| {
        first == confirm("*", "unsubscribe", a, 2) && second == confirm("*", "unsubscribe", b, 1)
    };
    assert!(
        in_order("news", "sports") || in_order("sports", "news"),
        "{} {}",
        text(first),
        text(second)
    );
    // A GET pipelined behind the last unsubscribe runs once it is answered, as in Redis.
    sub.send(b"PUNSUBSCRIBE n*\r\nGET k\r\n").await;
    assert_eq!(
        sub.reply().await.unwrap(),
        confirm("*", "punsubscribe", "n*", 0)
    );
    assert_eq!(sub.reply().await.unwrap(), b"$-1\r\n");
    assert_eq!(
        publisher.call(&[b"PUBLISH", b"news", b"x"]).await,
        b":0\r\n"
    );
    // UNSUBSCRIBE without subscriptions, as Redis answers it.
    assert_eq!(
        sub.call(&[b"UNSUBSCRIBE"]).await,
        [
            b"*3\r\n".to_vec(),
            bulk("unsubscribe"),
            b"$-1\r\n:0\r\n".to_vec()
        ]
        .concat()
    );
    // RESET leaves subscribed mode too.
    assert_eq!(other.call(&[b"RESET"]).await, b"+RESET\r\n");
    assert_eq!(other.call(&[b"GET", b"k"]).await, b"$-1\r\n");
    assert_eq!(
        publisher.call(&[b"PUBLISH", b"weather", b"x"]).await,
        b":0\r\n"
    );
}

#[tokio::test]
async fn resp3_push_frames_alongside_commands() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut sub = kg.raw().await;
    let mut resp2 = kg.raw().await;
    assert!(sub.call(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
    assert_eq!(
        sub.call(&[b"SUBSCRIBE", b"ch"]).await,
        confirm(">", "subscribe", "ch", 1)
    );
    // Other commands work while subscribed, with RESP3 replies...
    assert_eq!(sub.call(&[b"GET", b"nothing"]).await, b"_\r\n");
    assert_eq!(sub.call(&[b"HSET", b"h", b"f", b"v"]).await, b":1\r\n");
    assert_eq!(
        sub.call(&[b"HGETALL", b"h"]).await,
        [b"%1\r\n".to_vec(), bulk("f"), bulk("v")].concat()
    );
    assert_eq!(sub.call(&[b"PING"]).await, b"+PONG\r\n");
    // ...while a RESP2 client on the same backend gets RESP2.
    assert_eq!(
        resp2.call(&[b"HGETALL", b"h"]).await,
        [b"*2\r\n".to_vec(), bulk("f"), bulk("v")].concat()
    );
    assert_eq!(resp2.call(&[b"GET", b"nothing"]).await, b"$-1\r\n");
    assert_eq!(resp2.call(&[b"PUBLISH", b"ch", b"hi"]).await, b":1\r\n");
    assert_eq!(sub.reply().await.unwrap(), message(">", "ch", "hi"));
    assert_eq!(
        sub.call(&[b"UNSUBSCRIBE", b"ch"]).await,
        confirm(">", "unsubscribe", "ch", 0)
    );
    // Back to RESP2 on the same connection.
    assert!(sub.call(&[b"HELLO", b"2"]).await.starts_with(b"*14\r\n"));
    assert_eq!(sub.call(&[b"GET", b"nothing"]).await, b"$-1\r\n");
}

/// When a subscriber's backend connection dies, the client is disconnected (its library then
/// reconnects and subscribes again), never left waiting for messages that cannot come.
#[tokio::test]
async fn a_subscriber_whose_backend_connection_dies_is_disconnected() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut sub = kg.raw().await;
    let mut bystander = kg.raw().await;
    assert_eq!(
        sub.call(&[b"SUBSCRIBE", b"ch"]).await,
        confirm("*", "subscribe", "ch", 1)
    );
    let killed = redis_cli(backend.port, &["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed.trim(), "1");
    sub.expect_closed().await;
    // Nobody else was touched.
    assert_eq!(bystander.call(&[b"PING"]).await, b"+PONG\r\n");
    assert_eq!(bystander.call(&[b"GET", b"x"]).await, b"$-1\r\n");
}

#[tokio::test]
async fn subscriber_connections_are_capped_per_server() {
    let backend = Redis::start();
    let kg = Keygate::start_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"standalone\"\nservers = [\"{}\"]\nsubscriber_connections_per_server = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        backend.addr()
    ))
    .await;
    let mut a = kg.raw().await;
    let mut b = kg.raw().await;
    assert_eq!(
        a.call(&[b"SUBSCRIBE", b"x"]).await,
        confirm("*", "subscribe", "x", 1)
    );
    let refused = text(b.call(&[b"SUBSCRIBE", b"y"]).await);
    assert!(
        refused.starts_with("-ERR keygate: all 1 subscriber connections"),
        "{refused}"
    );
    assert_eq!(b.call(&[b"GET", b"k"]).await, b"$-1\r\n");
    assert_eq!(
        a.call(&[b"UNSUBSCRIBE"]).await,
        confirm("*", "unsubscribe", "x", 0)
    );
    // Released once a has none left.
    let mut tries = 0;
    loop {
        let reply = b.call(&[b"SUBSCRIBE", b"y"]).await;
        if reply == confirm("*", "subscribe", "y", 1) {
            break;
        }
        tries += 1;
        assert!(tries < 50, "{}", text(reply));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const TENANTS: &str = "[[tenants]]\nname = \"acme\"\npassword = \"acme-pw\"\nprefix = \"acme:\"\n\
    [[tenants]]\nname = \"globex\"\npassword = \"globex-pw\"\nprefix = \"globex:\"\n";

/// Tenants use the same channel names without ever hearing each other.
#[tokio::test]
async fn tenants_channels_are_their_own() {
    let backend = Redis::start();
    let kg = Keygate::start_with(&backend.addr(), TENANTS).await;
    let mut acme = as_tenant(&kg, "acme").await;
    let mut acme_pub = as_tenant(&kg, "acme").await;
    let mut globex = as_tenant(&kg, "globex").await;
    let mut globex_pub = as_tenant(&kg, "globex").await;
    assert_eq!(
        acme.call(&[b"SUBSCRIBE", b"news"]).await,
        confirm("*", "subscribe", "news", 1)
    );
    assert_eq!(
        globex.call(&[b"PSUBSCRIBE", b"*"]).await,
        confirm("*", "psubscribe", "*", 1)
    );
    // On the server, each tenant's channel carries its prefix.
    let channels = redis_cli(backend.port, &["PUBSUB", "CHANNELS"]);
    assert_eq!(channels.trim(), "acme:news");
    assert_eq!(
        globex_pub
            .call(&[b"PUBLISH", b"news", b"from globex"])
            .await,
        b":1\r\n"
    );
    assert_eq!(
        globex.reply().await.unwrap(),
        [
            b"*4\r\n".to_vec(),
            bulk("pmessage"),
            bulk("*"),
            bulk("news"),
            bulk("from globex")
        ]
        .concat()
    );
    silent(&mut acme).await;
    assert_eq!(
        acme_pub.call(&[b"PUBLISH", b"news", b"from acme"]).await,
        b":1\r\n"
    );
    assert_eq!(
        acme.reply().await.unwrap(),
        message("*", "news", "from acme")
    );
    // globex's "*" only ever matches globex's channels.
    silent(&mut globex).await;
    assert_eq!(
        acme_pub.call(&[b"PUBSUB", b"CHANNELS"]).await,
        [b"*1\r\n".to_vec(), bulk("news")].concat()
    );
    // The server's keyspace notifications are not a tenant's.
    assert!(text(acme_pub.call(&[b"SUBSCRIBE", b"__keyspace@0__:k"]).await).starts_with("-NOPERM"));
}

/// Cluster: SSUBSCRIBE follows its shard channel's node, PUBLISH reaches subscribers wherever
/// it is published, blocking pops go to their key's node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_shard_channels_broadcast_and_blocking_pops() {
    let cluster = Cluster::start(3);
    let seeds = format!("\"{}\"", cluster.nodes[0].addr());
    let kg = Keygate::start_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"cluster\"\nservers = [{seeds}]\n[admin]\nlisten = \"127.0.0.1:0\"\n"
    ))
    .await;
    // Shard channels on each of the three nodes (slots of "a", "b", "c" are 15495, 3300, 7365).
    for channel in ["{a}ch", "{b}ch", "{c}ch"] {
        let mut sub = kg.raw().await;
        let mut publisher = kg.raw().await;
        assert_eq!(
            sub.call(&[b"SSUBSCRIBE", channel.as_bytes()]).await,
            confirm("*", "ssubscribe", channel, 1)
        );
        assert_eq!(
            publisher
                .call(&[b"SPUBLISH", channel.as_bytes(), b"hi"])
                .await,
            b":1\r\n"
        );
        assert_eq!(
            sub.reply().await.unwrap(),
            [
                b"*3\r\n".to_vec(),
                bulk("smessage"),
                bulk(channel),
                bulk("hi")
            ]
            .concat()
        );
    }
    let mut sub = kg.raw().await;
    assert_eq!(
        text(sub.call(&[b"SSUBSCRIBE", b"{a}x", b"{b}x"]).await),
        "-CROSSSLOT Keys in request don't hash to the same slot\r\n"
    );
    // Blocking pops on each node, woken through keygate; SELECT is for database 0 only.
    for key in ["{a}q", "{b}q", "{c}q"] {
        let mut blocked = kg.raw().await;
        let mut pusher = kg.raw().await;
        blocked.send(format!("BLPOP {key} 0\r\n").as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            pusher.call(&[b"RPUSH", key.as_bytes(), b"v"]).await,
            b":1\r\n"
        );
        assert_eq!(
            blocked.reply().await.unwrap(),
            [b"*2\r\n".to_vec(), bulk(key), bulk("v")].concat()
        );
    }
    assert_eq!(
        text(sub.call(&[b"BLPOP", b"{a}q", b"{b}q", b"0"]).await),
        "-CROSSSLOT Keys in request don't hash to the same slot\r\n"
    );
    assert_eq!(sub.call(&[b"SELECT", b"0"]).await, b"+OK\r\n");
    assert_eq!(
        sub.call(&[b"SELECT", b"1"]).await,
        b"-ERR SELECT is not allowed in cluster mode\r\n"
    );
    // PUBLISH anywhere in the cluster reaches a subscriber through keygate.
    assert_eq!(
        sub.call(&[b"SUBSCRIBE", b"global"]).await,
        confirm("*", "subscribe", "global", 1)
    );
    for node in &cluster.nodes {
        // Each node counts only its own subscribers; the message reaches ours anyway.
        redis_cli(node.port, &["PUBLISH", "global", "x"]);
        assert_eq!(sub.reply().await.unwrap(), message("*", "global", "x"));
    }
}

/// redis-rs's pub/sub connection through keygate.
#[tokio::test]
async fn redis_rs_pubsub_round_trip() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut pubsub = kg.client().get_async_pubsub().await.unwrap();
    pubsub.subscribe("orders").await.unwrap();
    pubsub.psubscribe("order*").await.unwrap();
    let mut con = kg.connection().await;
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg("orders")
        .arg("o-1")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(receivers, 2);
    let mut stream = pubsub.on_message();
    let mut got = Vec::new();
    for _ in 0..2 {
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap();
        got.push((
            msg.get_channel_name().to_string(),
            msg.get_payload::<String>().unwrap(),
        ));
    }
    assert_eq!(
        got,
        vec![
            ("orders".to_string(), "o-1".to_string()),
            ("orders".to_string(), "o-1".to_string())
        ]
    );
}

/// A subscriber that never reads: keygate stops reading for it once its output is full, Redis's
/// own pub/sub output limit closes the backend connection, and keygate then closes the client.
/// Memory stays bounded all along; other clients carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_cut_off_not_buffered() {
    let backend = Redis::start_with(&["--client-output-buffer-limit", "pubsub 4mb 1mb 1"]);
    let kg = Keygate::start(&backend.addr()).await;
    let mut sub = kg.raw().await;
    assert_eq!(
        sub.call(&[b"SUBSCRIBE", b"firehose"]).await,
        confirm("*", "subscribe", "firehose", 1)
    );
    let mut publisher = kg.raw().await;
    let payload = vec![b'x'; 64 * 1024];
    let mut delivered_to_none = false;
    for _ in 0..2000 {
        let reply = publisher.call(&[b"PUBLISH", b"firehose", &payload]).await;
        if reply == b":0\r\n" {
            delivered_to_none = true;
            break;
        }
    }
    assert!(delivered_to_none, "Redis never dropped the slow subscriber");
    // The client is closed once what was buffered for it is read.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), sub.reply()).await {
            Ok(Some(_)) => assert!(std::time::Instant::now() < deadline),
            Ok(None) => break,
            Err(_) => panic!("the slow subscriber was left open and silent"),
        }
    }
    assert_eq!(publisher.call(&[b"PING"]).await, b"+PONG\r\n");
}
