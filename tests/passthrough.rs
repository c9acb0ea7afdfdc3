//! Through keygate, a client sees the same Redis: the same replies to the same commands, in
//! order, with many clients sharing the backend connections.

mod common;

use common::{bulk, Keygate, Raw, Redis};
use redis::AsyncCommands;

/// Commands of every data type, run against keygate and against a second, identical Redis
/// directly: the replies must be byte-for-byte the same. (Only commands whose replies are
/// deterministic on a fresh server are used: no random iteration orders.)
const SCRIPT: &[&[&str]] = &[
    // strings
    &["SET", "s", "hello"],
    &["GET", "s"],
    &["APPEND", "s", " world"],
    &["GETRANGE", "s", "0", "4"],
    &["STRLEN", "s"],
    &["SETNX", "s", "x"],
    &["SET", "n", "10"],
    &["INCR", "n"],
    &["INCRBY", "n", "5"],
    &["DECR", "n"],
    &["INCRBYFLOAT", "n", "1.5"],
    &["MSET", "a", "1", "b", "2", "c", "3"],
    &["MGET", "a", "b", "nosuch", "c"],
    &["GETDEL", "c"],
    &["GETSET", "a", "9"],
    &["SET", "e", "v", "EX", "100"],
    &["TTL", "e"],
    &["PERSIST", "e"],
    &["TTL", "e"],
    &["EXISTS", "a", "b", "nosuch"],
    &["TYPE", "s"],
    &["INCR", "s"],
    // lists
    &["RPUSH", "l", "a", "b", "c", "d"],
    &["LPUSH", "l", "z"],
    &["LRANGE", "l", "0", "-1"],
    &["LLEN", "l"],
    &["LINDEX", "l", "2"],
    &["LPOP", "l"],
    &["RPOP", "l", "2"],
    &["LINSERT", "l", "BEFORE", "b", "x"],
    &["LRANGE", "l", "0", "-1"],
    &["LMOVE", "l", "l2", "LEFT", "RIGHT"],
    &["LRANGE", "l2", "0", "-1"],
    &["LPOS", "l", "b"],
    &["GET", "l"],
    // hashes
    &["HSET", "h", "f1", "v1", "f2", "v2"],
    &["HGET", "h", "f1"],
    &["HGETALL", "h"],
    &["HMGET", "h", "f1", "nosuch", "f2"],
    &["HINCRBY", "h", "n", "3"],
    &["HLEN", "h"],
    &["HDEL", "h", "f1"],
    &["HEXISTS", "h", "f1"],
    &["HKEYS", "h"],
    // sets (integer sets iterate in order)
    &["SADD", "set1", "1", "2", "3", "4"],
    &["SADD", "set2", "3", "4", "5"],
    &["SCARD", "set1"],
    &["SISMEMBER", "set1", "2"],
    &["SMISMEMBER", "set1", "2", "9"],
    &["SINTER", "set1", "set2"],
    &["SINTERSTORE", "set3", "set1", "set2"],
    &["SMEMBERS", "set3"],
    &["SREM", "set1", "1"],
    &["ZRANDMEMBER", "nosuch"],
    &["LPOS", "set1", "nosuch"],
    &["CONFIG", "GET", "maxmemory-policy"],
    // sorted sets
    &["ZADD", "z", "1", "one", "2", "two", "3", "three"],
    &["ZRANGE", "z", "0", "-1", "WITHSCORES"],
    &["ZSCORE", "z", "two"],
    &["ZINCRBY", "z", "2.5", "one"],
    &["ZRANK", "z", "one"],
    &["ZRANGEBYSCORE", "z", "2", "+inf"],
    &["ZREVRANGE", "z", "0", "0"],
    &["ZPOPMIN", "z"],
    &["ZCARD", "z"],
    &["ZADD", "z", "NX", "GT", "1", "x"],
    // streams (explicit ids keep replies deterministic)
    &["XADD", "st", "1-1", "f", "v"],
    &["XADD", "st", "2-1", "f", "w"],
    &["XLEN", "st"],
    &["XRANGE", "st", "-", "+"],
    &["XREAD", "COUNT", "5", "STREAMS", "st", "0"],
    &["XGROUP", "CREATE", "st", "g", "0"],
    &[
        "XREADGROUP",
        "GROUP",
        "g",
        "c",
        "COUNT",
        "1",
        "STREAMS",
        "st",
        ">",
    ],
    &["XACK", "st", "g", "1-1"],
    &["XDEL", "st", "1-1"],
    // geo
    &[
        "GEOADD",
        "geo",
        "13.361389",
        "38.115556",
        "Palermo",
        "15.087269",
        "37.502669",
        "Catania",
    ],
    &["GEODIST", "geo", "Palermo", "Catania", "km"],
    &["GEOPOS", "geo", "Palermo"],
    &[
        "GEOSEARCH",
        "geo",
        "FROMLONLAT",
        "15",
        "37",
        "BYRADIUS",
        "200",
        "km",
        "ASC",
    ],
    // HyperLogLog
    &["PFADD", "hll", "a", "b", "c", "d"],
    &["PFCOUNT", "hll"],
    &["PFADD", "hll2", "c", "d", "e"],
    &["PFMERGE", "hll3", "hll", "hll2"],
    &["PFCOUNT", "hll3"],
    // bitmaps
    &["SETBIT", "bits", "7", "1"],
    &["GETBIT", "bits", "7"],
    &["BITCOUNT", "bits"],
    &["BITPOS", "bits", "1"],
    &["BITOP", "NOT", "bits2", "bits"],
    &["GET", "bits2"],
    &[
        "BITFIELD", "bf", "INCRBY", "u8", "0", "200", "GET", "u8", "0",
    ],
    // keys and scripts
    &["RENAME", "a", "a2"],
    &["EXPIRE", "a2", "1000"],
    &["EXPIRETIME", "nosuch"],
    &["DEL", "a2", "b", "nosuch"],
    &["UNLINK", "s"],
    &["EVAL", "return {KEYS[1], ARGV[1], 3}", "1", "k", "arg"],
    &["EVAL", "return redis.call('get', KEYS[1])", "1", "n"],
    &["OBJECT", "ENCODING", "l"],
    &["DBSIZE"],
    // errors from Redis itself are passed through
    &["LPUSH", "h", "x"],
    &["SET", "k", "v", "BADOPTION"],
    &["GET"],
    &["SET", "onlykey"],
    &["ECHO", "echoed"],
    &["PING", "pong-arg"],
];

async fn run_script(raw: &mut Raw, resp3: bool) -> Vec<Vec<u8>> {
    let mut replies = Vec::new();
    if resp3 {
        let hello = raw.call(&[b"HELLO", b"3"]).await;
        assert!(hello.starts_with(b"%7\r\n"), "{hello:?}");
    }
    for args in SCRIPT {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        replies.push(raw.call(&args).await);
    }
    replies
}

#[tokio::test]
async fn every_data_type_round_trips_exactly_as_redis_answers() {
    same_as_redis(false).await;
}

/// The same in RESP3: maps, sets, doubles and nulls exactly as Redis sends them to a RESP3
/// client, while a RESP2 client shares the backend.
#[tokio::test]
async fn every_data_type_round_trips_exactly_as_redis_answers_in_resp3() {
    same_as_redis(true).await;
}

async fn same_as_redis(resp3: bool) {
    let backend = Redis::start();
    let reference = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    // A client of the other protocol, busy on the same backend meanwhile.
    let mut other = kg.raw().await;
    let busy = tokio::spawn(async move {
        let null: &[u8] = if resp3 { b"$-1\r\n" } else { b"_\r\n" };
        if !resp3 {
            other.call(&[b"HELLO", b"3"]).await;
        }
        for _ in 0..300 {
            assert_eq!(other.call(&[b"GET", b"nosuch-other"]).await, null);
        }
    });
    let through = run_script(&mut kg.raw().await, resp3).await;
    busy.await.unwrap();
    let direct = run_script(
        &mut Raw::connect(format!("127.0.0.1:{}", reference.port).parse().unwrap()).await,
        resp3,
    )
    .await;
    for ((args, got), want) in SCRIPT.iter().zip(&through).zip(&direct) {
        assert_eq!(
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(want),
            "reply to {args:?} differs"
        );
    }
}

#[tokio::test]
async fn typed_values_through_a_real_client_library() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut con = kg.connection().await;
    let _: () = con.set("greeting", "hi").await.unwrap();
    let got: String = con.get("greeting").await.unwrap();
    assert_eq!(got, "hi");
    let _: () = con
        .hset_multiple("user", &[("name", "ada"), ("lang", "rust")])
        .await
        .unwrap();
    let name: String = con.hget("user", "name").await.unwrap();
    assert_eq!(name, "ada");
    let _: () = con.rpush("queue", &[1, 2, 3]).await.unwrap();
    let items: Vec<i64> = con.lrange("queue", 0, -1).await.unwrap();
    assert_eq!(items, vec![1, 2, 3]);
    let _: () = con.zadd("board", "x", 5).await.unwrap();
    let score: f64 = con.zscore("board", "x").await.unwrap();
    assert_eq!(score, 5.0);
    let missing: Option<String> = con.get("nothing-here").await.unwrap();
    assert_eq!(missing, None);
    let err = redis::cmd("LPUSH")
        .arg("greeting")
        .arg("x")
        .query_async::<i64>(&mut con)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("WRONGTYPE"));
    // The connection stays usable after an error.
    let n: i64 = con.incr("counter", 2).await.unwrap();
    assert_eq!(n, 2);
}

#[tokio::test]
async fn thousand_deep_pipelines_are_answered_in_order() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;

    // Raw bytes: one write carrying 2 000 commands.
    let mut raw = kg.raw().await;
    let mut batch = Vec::new();
    for i in 0..1000 {
        let key = format!("p:{i}");
        let value = format!("value-{i}");
        batch.extend_from_slice(b"*3\r\n$3\r\nSET\r\n");
        batch.extend_from_slice(&bulk(&key));
        batch.extend_from_slice(&bulk(&value));
        batch.extend_from_slice(b"*2\r\n$3\r\nGET\r\n");
        batch.extend_from_slice(&bulk(&key));
    }
    raw.send(&batch).await;
    for i in 0..1000 {
        assert_eq!(raw.reply().await.unwrap(), b"+OK\r\n");
        assert_eq!(raw.reply().await.unwrap(), bulk(&format!("value-{i}")));
    }

    // A real client library's pipeline.
    let mut con = kg.connection().await;
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.incr(format!("c:{}", i % 10), 1);
    }
    let counts: Vec<i64> = pipe.query_async(&mut con).await.unwrap();
    let want: Vec<i64> = (0..1000).map(|i| i / 10 + 1).collect();
    assert_eq!(counts, want);
}

#[tokio::test]
async fn hundred_concurrent_clients_each_see_only_their_own_values() {
    let backend = Redis::start();
    // A pool of four shared connections: clients spread over them, each keeping its order.
    let kg = Keygate::start_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"standalone\"\nservers = [\"{}\"]\n\
         connections_per_server = 4\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        backend.addr()
    ))
    .await;
    let mut tasks = Vec::new();
    for client in 0..100 {
        let redis_client = kg.client();
        tasks.push(tokio::spawn(async move {
            let mut con = common::multiplexed(&redis_client).await;
            for round in 0..50 {
                let key = format!("client:{client}:{}", round % 5);
                let value = format!("{client}-{round}-{}", "x".repeat(client % 7 * 100));
                let mut pipe = redis::pipe();
                pipe.set(&key, &value)
                    .ignore()
                    .get(&key)
                    .append(&key, "!")
                    .get(&key);
                let (got, _, appended): (String, i64, String) =
                    pipe.query_async(&mut con).await.unwrap();
                assert_eq!(got, value);
                assert_eq!(appended, format!("{value}!"));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let (_, metrics) = common::http_get(kg.admin, "/metrics").await;
    let line = format!(
        "keygate_backend_connections{{server=\"{}\"}} 4",
        backend.addr()
    );
    assert!(metrics.lines().any(|l| l == line), "{metrics}");
}

#[tokio::test]
async fn hundred_mebibyte_values_pass_through() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut con = kg.connection().await;
    let value: Vec<u8> = (0..100 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let _: () = con.set("big", &value).await.unwrap();
    let got: Vec<u8> = con.get("big").await.unwrap();
    assert!(got == value, "100 MiB value came back different");
    let len: usize = con.strlen("big").await.unwrap();
    assert_eq!(len, value.len());
}

/// What today's client libraries send before their first real command, each answered cleanly
/// on a connection that stays open.
#[tokio::test]
async fn client_handshakes_get_clean_answers_on_an_open_connection() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut raw = kg.raw().await;
    let hello = raw.call(&[b"HELLO", b"3"]).await;
    assert!(
        hello.starts_with(b"%7\r\n$6\r\nserver\r\n$7\r\nkeygate\r\n")
            && hello.windows(11).any(|w| w == b"proto\r\n:3\r\n"),
        "{}",
        String::from_utf8_lossy(&hello)
    );
    assert_eq!(
        raw.call(&[b"HELLO", b"4"]).await,
        b"-NOPROTO unsupported protocol version\r\n"
    );
    let hello = raw.call(&[b"HELLO", b"2", b"SETNAME", b"app"]).await;
    assert!(
        hello.starts_with(b"*14\r\n$6\r\nserver\r\n$7\r\nkeygate\r\n"),
        "{}",
        String::from_utf8_lossy(&hello)
    );
    assert_eq!(raw.call(&[b"CLIENT", b"GETNAME"]).await, bulk("app"));
    assert_eq!(
        raw.call(&[b"CLIENT", b"SETINFO", b"LIB-NAME", b"redis-py"])
            .await,
        b"+OK\r\n"
    );
    assert_eq!(
        raw.call(&[b"CLIENT", b"SETINFO", b"LIB-VER", b"5.2.1"])
            .await,
        b"+OK\r\n"
    );
    assert_eq!(
        raw.call(&[
            b"CLIENT",
            b"MAINT_NOTIFICATIONS",
            b"on",
            b"moving-endpoint-type",
            b"internal-ip"
        ])
        .await,
        b"-ERR unknown subcommand 'MAINT_NOTIFICATIONS'. Try CLIENT HELP.\r\n"
    );
    let id = raw.call(&[b"CLIENT", b"ID"]).await;
    assert!(id.starts_with(b":"), "{id:?}");
    let info = raw.call(&[b"INFO", b"server"]).await;
    assert!(info.starts_with(b"$") && String::from_utf8_lossy(&info).contains("redis_version"));
    let client_info = String::from_utf8_lossy(&raw.call(&[b"CLIENT", b"INFO"]).await).into_owned();
    assert!(
        client_info.contains("name=app") && client_info.contains("lib-name=redis-py"),
        "{client_info}"
    );
    raw.send(b"PING\r\n").await;
    assert_eq!(raw.reply().await.unwrap(), b"+PONG\r\n");
    raw.send(b"set inline \"two words\"\r\nget inline\r\n")
        .await;
    assert_eq!(raw.reply().await.unwrap(), b"+OK\r\n");
    assert_eq!(raw.reply().await.unwrap(), bulk("two words"));
    assert_eq!(
        raw.call(&[b"NOSUCHCOMMAND", b"a"]).await,
        b"-ERR unknown command 'NOSUCHCOMMAND', with args beginning with: 'a' \r\n"
    );
    assert_eq!(raw.call(&[b"GET", b"inline"]).await, bulk("two words"));
}

#[tokio::test]
async fn connection_state_is_kept_per_client_and_never_leaks() {
    let backend = Redis::start();
    // One backend connection shared by both clients.
    let kg = Keygate::start(&backend.addr()).await;
    let mut a = kg.raw().await;
    let mut b = kg.raw().await;
    assert_eq!(a.call(&[b"CLIENT", b"SETNAME", b"alice"]).await, b"+OK\r\n");
    assert_eq!(b.call(&[b"CLIENT", b"GETNAME"]).await, b"$-1\r\n");
    assert_eq!(a.call(&[b"CLIENT", b"GETNAME"]).await, bulk("alice"));
    assert_ne!(
        a.call(&[b"CLIENT", b"ID"]).await,
        b.call(&[b"CLIENT", b"ID"]).await
    );
    assert_eq!(
        a.call(&[b"CLIENT", b"SETNAME", b"bad name"]).await,
        b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
    );

    // SELECT: per client, on backend connections of that database; Redis decides what exists.
    assert_eq!(a.call(&[b"SELECT", b"0"]).await, b"+OK\r\n");
    assert_eq!(a.call(&[b"SELECT", b"1"]).await, b"+OK\r\n");
    assert_eq!(a.call(&[b"SET", b"db", b"one"]).await, b"+OK\r\n");
    assert_eq!(b.call(&[b"GET", b"db"]).await, b"$-1\r\n");
    assert_eq!(
        a.call(&[b"SELECT", b"16"]).await,
        b"-ERR DB index is out of range\r\n"
    );
    assert_eq!(a.call(&[b"GET", b"db"]).await, bulk("one"));
    assert_eq!(b.call(&[b"SELECT", b"1"]).await, b"+OK\r\n");
    assert_eq!(b.call(&[b"GET", b"db"]).await, bulk("one"));
    assert_eq!(b.call(&[b"SELECT", b"0"]).await, b"+OK\r\n");
    // Pipelined: the SET after SELECT 2 lands in database 2, the one before it in 1.
    a.send(b"SET p before\r\nSELECT 2\r\nSET p after\r\nSELECT 1\r\nGET p\r\n")
        .await;
    for expected in [
        &b"+OK\r\n"[..],
        b"+OK\r\n",
        b"+OK\r\n",
        b"+OK\r\n",
        &bulk("before"),
    ] {
        assert_eq!(a.reply().await.unwrap(), expected);
    }
    assert_eq!(a.call(&[b"SELECT", b"2"]).await, b"+OK\r\n");
    assert_eq!(a.call(&[b"GET", b"p"]).await, bulk("after"));
    assert_eq!(a.call(&[b"SELECT", b"0"]).await, b"+OK\r\n");
    assert_eq!(a.call(&[b"GET", b"db"]).await, b"$-1\r\n");
    assert_eq!(
        a.call(&[b"SELECT", b"x"]).await,
        b"-ERR value is not an integer or out of range\r\n"
    );

    assert_eq!(
        a.call(&[b"AUTH", b"secret"]).await,
        b"-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n"
    );
    assert_eq!(
        a.call(&[b"AUTH", b"default", b"anything"]).await,
        b"+OK\r\n"
    );
    assert_eq!(
        a.call(&[b"AUTH", b"bob", b"pw"]).await,
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );

    // CLIENT REPLY OFF silences only this client.
    a.send(b"*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$3\r\nOFF\r\n*3\r\n$3\r\nSET\r\n$1\r\nq\r\n$1\r\n1\r\n").await;
    assert_eq!(b.call(&[b"GET", b"q"]).await, bulk("1"));
    assert_eq!(a.call(&[b"CLIENT", b"REPLY", b"ON"]).await, b"+OK\r\n");
    a.send(b"*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$4\r\nSKIP\r\n*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n").await;
    assert_eq!(a.reply().await.unwrap(), bulk("hi"));

    assert_eq!(a.call(&[b"RESET"]).await, b"+RESET\r\n");
    assert_eq!(a.call(&[b"CLIENT", b"GETNAME"]).await, b"$-1\r\n");

    // Commands that would take over a shared connection are refused cleanly, and the
    // connection stays usable.
    for cmd in [&[&b"PSYNC"[..], b"?", b"-1"][..], &[b"READONLY"]] {
        let reply = a.call(cmd).await;
        assert!(
            reply.starts_with(b"-ERR '")
                && String::from_utf8_lossy(&reply).contains("is not available through keygate"),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&reply)
        );
    }
    assert_eq!(a.call(&[b"GET", b"q"]).await, bulk("1"));

    assert_eq!(a.call(&[b"QUIT"]).await, b"+OK\r\n");
    a.expect_closed().await;
    assert_eq!(b.call(&[b"PING"]).await, b"+PONG\r\n");
}

/// A client's id, from CLIENT ID.
async fn id_of(raw: &mut Raw) -> String {
    let reply = String::from_utf8(raw.call(&[b"CLIENT", b"ID"]).await).unwrap();
    reply.trim_start_matches(':').trim_end().to_string()
}

/// CLIENT LIST shows keygate's own clients (name, protocol, database, subscriber flag, last
/// command); CLIENT KILL closes them by id, address or type, a blocked one included, with
/// Redis's replies and errors.
#[tokio::test]
async fn client_list_and_kill_act_on_keygates_clients() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut a = kg.raw().await;
    let mut b = kg.raw().await;
    let mut c = kg.raw().await;
    let mut blocked = kg.raw().await;
    let (a_id, b_id, blocked_id) = (
        id_of(&mut a).await,
        id_of(&mut b).await,
        id_of(&mut blocked).await,
    );
    assert_eq!(a.call(&[b"CLIENT", b"SETNAME", b"alice"]).await, b"+OK\r\n");
    assert!(b.call(&[b"HELLO", b"3"]).await.starts_with(b"%"));
    assert_eq!(b.call(&[b"SELECT", b"2"]).await, b"+OK\r\n");
    assert_eq!(b.call(&[b"GET", b"k"]).await, b"_\r\n");
    assert!(c.call(&[b"SUBSCRIBE", b"ch"]).await.starts_with(b"*3"));
    blocked
        .send(b"*3\r\n$5\r\nBLPOP\r\n$1\r\nq\r\n$1\r\n0\r\n")
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let list = String::from_utf8(a.call(&[b"CLIENT", b"LIST"]).await).unwrap();
    let lines: Vec<&str> = list.lines().skip(1).filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 4, "{list}");
    let line_of = |id: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(&format!("id={id} ")))
            .unwrap_or_else(|| panic!("no client {id} in {list}"))
    };
    let mine = line_of(&a_id);
    assert!(
        mine.contains(" name=alice ") && mine.contains(" cmd=client|list "),
        "{mine}"
    );
    let theirs = line_of(&b_id);
    assert!(
        theirs.contains(" resp=3") && theirs.contains(" db=2 ") && theirs.contains(" cmd=get "),
        "{theirs}"
    );
    assert!(line_of(&blocked_id).contains(" cmd=blpop "), "{list}");
    let pubsub =
        String::from_utf8(a.call(&[b"CLIENT", b"LIST", b"TYPE", b"pubsub"]).await).unwrap();
    assert_eq!(
        pubsub.lines().filter(|l| l.contains("flags=P")).count(),
        1,
        "{pubsub}"
    );
    let one =
        String::from_utf8(a.call(&[b"CLIENT", b"LIST", b"ID", b_id.as_bytes()]).await).unwrap();
    assert!(
        one.contains(&format!("id={b_id} ")) && one.matches("id=").count() == 1,
        "{one}"
    );
    assert_eq!(
        a.call(&[b"CLIENT", b"LIST", b"TYPE", b"bogus"]).await,
        b"-ERR Unknown client type 'bogus'\r\n"
    );

    // Errors as Redis words them; nothing killed.
    for (args, want) in [
        (
            &[&b"CLIENT"[..], b"KILL", b"ID", b"0"][..],
            &b"-ERR client-id should be greater than 0\r\n"[..],
        ),
        (
            &[b"CLIENT", b"KILL", b"10.9.8.7:6"],
            b"-ERR No such client\r\n",
        ),
        (
            &[b"CLIENT", b"KILL", b"USER", b"nobody"],
            b"-ERR No such user 'nobody'\r\n",
        ),
        (
            &[b"CLIENT", b"KILL", b"ID", b"5", b"TYPE"],
            b"-ERR syntax error\r\n",
        ),
        (&[b"CLIENT", b"KILL", b"ID"], b"-ERR No such client\r\n"),
        (
            &[b"CLIENT", b"LIST", b"ID", b"abc"],
            b"-ERR Invalid client ID\r\n",
        ),
        (&[b"CLIENT", b"LIST", b"ID", b"0"], b"$0\r\n\r\n"),
        (&[b"CLIENT", b"LIST", b"FOO"], b"-ERR syntax error\r\n"),
        (&[b"CLIENT", b"KILL", b"ADDR", b"10.9.8.7:6"], b":0\r\n"),
    ] {
        assert_eq!(a.call(args).await, want, "{args:?}");
    }
    // By id, by the old address form, a blocked client, and by type.
    assert_eq!(
        a.call(&[b"CLIENT", b"KILL", b"ID", b_id.as_bytes()]).await,
        b":1\r\n"
    );
    b.expect_closed().await;
    let c_addr = c.stream.local_addr().unwrap().to_string();
    assert_eq!(
        a.call(&[b"CLIENT", b"KILL", c_addr.as_bytes()]).await,
        b"+OK\r\n"
    );
    c.expect_closed().await;
    assert_eq!(
        a.call(&[b"CLIENT", b"KILL", b"ID", blocked_id.as_bytes()])
            .await,
        b":1\r\n"
    );
    blocked.expect_closed().await;
    // SKIPME (default yes) spares the caller; with SKIPME no it goes too, after its reply.
    assert_eq!(
        a.call(&[b"CLIENT", b"KILL", b"TYPE", b"normal"]).await,
        b":0\r\n"
    );
    assert_eq!(
        a.call(&[b"CLIENT", b"KILL", b"TYPE", b"normal", b"SKIPME", b"no"])
            .await,
        b":1\r\n"
    );
    a.expect_closed().await;
    let list = String::from_utf8(kg.raw().await.call(&[b"CLIENT", b"LIST"]).await).unwrap();
    assert_eq!(list.matches("id=").count(), 1, "{list}");
}
