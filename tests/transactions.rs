//! MULTI/EXEC/DISCARD/WATCH/UNWATCH through keygate: on a connection pinned to the client, with
//! Redis's replies, never leaking into the shared connections.

mod common;

use common::{bulk, Keygate, Redis};

fn text(reply: Vec<u8>) -> String {
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test]
async fn transactions_answer_as_redis() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut raw = kg.raw().await;
    assert_eq!(raw.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(raw.call(&[b"SET", b"k", b"1"]).await, b"+QUEUED\r\n");
    assert_eq!(raw.call(&[b"INCR", b"k"]).await, b"+QUEUED\r\n");
    assert_eq!(raw.call(&[b"GET", b"k"]).await, b"+QUEUED\r\n");
    assert_eq!(
        raw.call(&[b"MULTI"]).await,
        b"-ERR MULTI calls can not be nested\r\n"
    );
    assert_eq!(
        raw.call(&[b"EXEC"]).await,
        [b"*3\r\n+OK\r\n:2\r\n".to_vec(), bulk("2")].concat()
    );
    assert_eq!(raw.call(&[b"EXEC"]).await, b"-ERR EXEC without MULTI\r\n");
    assert_eq!(
        raw.call(&[b"DISCARD"]).await,
        b"-ERR DISCARD without MULTI\r\n"
    );
    // DISCARD drops what was queued.
    assert_eq!(raw.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(
        raw.call(&[b"SET", b"k", b"discarded"]).await,
        b"+QUEUED\r\n"
    );
    assert_eq!(raw.call(&[b"DISCARD"]).await, b"+OK\r\n");
    assert_eq!(raw.call(&[b"GET", b"k"]).await, bulk("2"));
    // An error while queueing aborts the transaction.
    assert_eq!(raw.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(raw.call(&[b"SET", b"k", b"x"]).await, b"+QUEUED\r\n");
    assert_eq!(
        raw.call(&[b"SET", b"k"]).await,
        b"-ERR wrong number of arguments for 'set' command\r\n"
    );
    assert!(text(raw.call(&[b"SUBSCRIBE", b"l"]).await).starts_with("-ERR"));
    assert_eq!(
        raw.call(&[b"EXEC"]).await,
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_eq!(raw.call(&[b"GET", b"k"]).await, bulk("2"));
    // Runtime errors are in EXEC's array, as in Redis.
    assert_eq!(raw.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(raw.call(&[b"LPUSH", b"k", b"x"]).await, b"+QUEUED\r\n");
    let exec = text(raw.call(&[b"EXEC"]).await);
    assert!(exec.starts_with("*1\r\n-WRONGTYPE"), "{exec}");
    // Empty transaction, and UNWATCH without WATCH.
    assert_eq!(raw.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(raw.call(&[b"EXEC"]).await, b"*0\r\n");
    assert_eq!(raw.call(&[b"UNWATCH"]).await, b"+OK\r\n");
}

/// A WATCH race between two clients: the watcher's EXEC fails when the key changed.
#[tokio::test]
async fn watch_race_between_two_clients() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut a = kg.raw().await;
    let mut b = kg.raw().await;
    assert_eq!(a.call(&[b"SET", b"balance", b"10"]).await, b"+OK\r\n");
    assert_eq!(a.call(&[b"WATCH", b"balance"]).await, b"+OK\r\n");
    assert_eq!(a.call(&[b"GET", b"balance"]).await, bulk("10"));
    assert_eq!(b.call(&[b"SET", b"balance", b"99"]).await, b"+OK\r\n");
    assert_eq!(a.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(a.call(&[b"SET", b"balance", b"11"]).await, b"+QUEUED\r\n");
    assert_eq!(a.call(&[b"EXEC"]).await, b"*-1\r\n");
    assert_eq!(a.call(&[b"GET", b"balance"]).await, bulk("99"));
    // Without interference the same sequence commits.
    assert_eq!(a.call(&[b"WATCH", b"balance"]).await, b"+OK\r\n");
    assert_eq!(a.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(a.call(&[b"INCR", b"balance"]).await, b"+QUEUED\r\n");
    assert_eq!(a.call(&[b"EXEC"]).await, b"*1\r\n:100\r\n");
    // UNWATCH ends a WATCH.
    assert_eq!(a.call(&[b"WATCH", b"balance"]).await, b"+OK\r\n");
    assert_eq!(a.call(&[b"UNWATCH"]).await, b"+OK\r\n");
    assert_eq!(b.call(&[b"SET", b"balance", b"1"]).await, b"+OK\r\n");
    assert_eq!(a.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(a.call(&[b"INCR", b"balance"]).await, b"+QUEUED\r\n");
    assert_eq!(a.call(&[b"EXEC"]).await, b"*1\r\n:2\r\n");
}

/// Pipelined around a transaction, replies stay in order and reads see earlier writes.
#[tokio::test]
async fn pipelined_transactions_keep_order() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut raw = kg.raw().await;
    raw.send(b"SET k before\r\nMULTI\r\nGET k\r\nSET k inside\r\nEXEC\r\nGET k\r\nSET k after\r\nGET k\r\n").await;
    for want in [
        b"+OK\r\n".to_vec(),
        b"+OK\r\n".to_vec(),
        b"+QUEUED\r\n".to_vec(),
        b"+QUEUED\r\n".to_vec(),
        [b"*2\r\n".to_vec(), bulk("before"), b"+OK\r\n".to_vec()].concat(),
        bulk("inside"),
        b"+OK\r\n".to_vec(),
        bulk("after"),
    ] {
        assert_eq!(text(raw.reply().await.unwrap()), text(want));
    }
    // A real client library's atomic pipeline (MULTI/EXEC).
    let mut con = kg.connection().await;
    let (a, b): (i64, i64) = redis::pipe()
        .atomic()
        .incr("n", 1)
        .incr("n", 1)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!((a, b), (1, 2));
}

/// A client that leaves mid-transaction leaves nothing behind for others.
#[tokio::test]
async fn abandoned_transactions_do_not_leak() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut a = kg.raw().await;
    assert_eq!(a.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(a.call(&[b"SET", b"k", b"from-a"]).await, b"+QUEUED\r\n");
    drop(a);
    let mut b = kg.raw().await;
    assert_eq!(b.call(&[b"GET", b"k"]).await, b"$-1\r\n");
    assert_eq!(b.call(&[b"SET", b"k", b"b"]).await, b"+OK\r\n");
    assert_eq!(b.call(&[b"EXEC"]).await, b"-ERR EXEC without MULTI\r\n");
    // RESET inside MULTI also ends it.
    assert_eq!(b.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(b.call(&[b"SET", b"k", b"x"]).await, b"+QUEUED\r\n");
    assert_eq!(b.call(&[b"RESET"]).await, b"+RESET\r\n");
    assert_eq!(b.call(&[b"GET", b"k"]).await, bulk("b"));
}

/// Sharded: a transaction's keys must live on one shard; hash tags keep them together.
#[tokio::test]
async fn sharded_transactions_stay_on_one_shard() {
    let shards: Vec<Redis> = (0..3).map(|_| Redis::start()).collect();
    let kg = Keygate::start_ketama(&shards, "").await;
    let mut raw = kg.raw().await;
    assert_eq!(raw.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(raw.call(&[b"SET", b"{u}a", b"1"]).await, b"+QUEUED\r\n");
    assert_eq!(raw.call(&[b"INCR", b"{u}b"]).await, b"+QUEUED\r\n");
    assert_eq!(raw.call(&[b"EXEC"]).await, b"*2\r\n+OK\r\n:1\r\n");
    // Keys on different shards: CROSSSLOT, and the transaction is aborted.
    let keys: Vec<String> = (0..12).map(|i| format!("{i}key")).collect();
    assert_eq!(raw.call(&[b"MULTI"]).await, b"+OK\r\n");
    let mut crossed = false;
    for k in &keys {
        let reply = raw.call(&[b"SET", k.as_bytes(), b"v"]).await;
        if reply.starts_with(b"-CROSSSLOT") {
            crossed = true;
            break;
        }
        assert_eq!(reply, b"+QUEUED\r\n");
    }
    assert!(crossed, "12 keys should span shards");
    assert_eq!(
        raw.call(&[b"EXEC"]).await,
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_eq!(raw.call(&[b"GET", keys[0].as_bytes()]).await, b"$-1\r\n");
}

/// On a real cluster, for a tenant: keys prefixed, hash tags keep the transaction in one slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_transactions_for_a_tenant() {
    let cluster = common::Cluster::start(3);
    let kg = Keygate::start_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"cluster\"\nservers = [\"{}\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[tenants]]\nname = \"acme\"\npassword = \"pw\"\nprefix = \"acme:\"\n",
        cluster.nodes[0].addr()
    ))
    .await;
    let mut raw = kg.raw().await;
    assert_eq!(raw.call(&[b"AUTH", b"pw"]).await, b"+OK\r\n");
    assert_eq!(raw.call(&[b"WATCH", b"{acct}balance"]).await, b"+OK\r\n");
    assert_eq!(raw.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(
        raw.call(&[b"INCRBY", b"{acct}balance", b"5"]).await,
        b"+QUEUED\r\n"
    );
    assert_eq!(
        raw.call(&[b"RPUSH", b"{acct}log", b"+5"]).await,
        b"+QUEUED\r\n"
    );
    assert_eq!(raw.call(&[b"EXEC"]).await, b"*2\r\n:5\r\n:1\r\n");
    assert_eq!(raw.call(&[b"GET", b"{acct}balance"]).await, bulk("5"));
    // Another slot inside the same transaction is refused and aborts it.
    assert_eq!(raw.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(raw.call(&[b"INCR", b"{acct}balance"]).await, b"+QUEUED\r\n");
    assert!(raw
        .call(&[b"INCR", b"{other}x"])
        .await
        .starts_with(b"-CROSSSLOT"));
    assert_eq!(
        raw.call(&[b"EXEC"]).await,
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_eq!(raw.call(&[b"GET", b"{acct}balance"]).await, bulk("5"));
    // On the server the keys carry the tenant's prefix.
    let seen = common::redis_cli(cluster.nodes[0].port, &["-c", "GET", "acme:{acct}balance"]);
    assert_eq!(seen.trim(), "5");
}
