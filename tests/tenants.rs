//! Tenants sharing one Redis (and one ketama set, and one Redis Cluster): each sees only its own
//! keys, and every attempt to reach another's is contained.

mod common;

use common::{as_tenant, bulk, Cluster, Keygate, Raw, Redis};

const TENANTS: &str = "[policy]\ndeny_commands = [\"lastsave\"]\n\
    [[tenants]]\nname = \"acme\"\npassword = \"acme-pw\"\nprefix = \"acme:\"\nmax_connections = 3\nallow_scripts = true\n\
    [[tenants]]\nname = \"globex\"\npassword = \"globex-pw\"\nprefix = \"globex:\"\nallow_scripts = true\n\
    [[tenants]]\nname = \"tiny\"\npassword = \"tiny-pw\"\nprefix = \"tiny:\"\nmax_ops_per_sec = 5\n\
    allow_commands = [\"get\", \"set\", \"ping\", \"auth\", \"dbsize\"]\n\
    [[tenants]]\nname = \"initech\"\npassword = \"initech-pw\"\nprefix = \"initech:\"\n";

/// The keys a KEYS reply lists.
async fn con_keys(raw: &mut Raw, pattern: &[u8]) -> Vec<String> {
    match redis::parse_redis_value(&raw.call(&[b"KEYS", pattern]).await) {
        Ok(redis::Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                redis::Value::BulkString(k) => String::from_utf8(k).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect(),
        other => panic!("{other:?}"),
    }
}

fn text(reply: Vec<u8>) -> String {
    String::from_utf8_lossy(&reply).into_owned()
}

/// Same key names, every common data type: each tenant sees its own values only.
async fn isolation(kg: &Keygate) {
    let mut a = as_tenant(kg, "acme").await;
    let mut g = as_tenant(kg, "globex").await;
    for (who, raw) in [("acme", &mut a), ("globex", &mut g)] {
        let v = who.as_bytes();
        assert_eq!(raw.call(&[b"SET", b"k", v]).await, b"+OK\r\n");
        assert_eq!(raw.call(&[b"HSET", b"h", b"f", v]).await, b":1\r\n");
        assert_eq!(raw.call(&[b"RPUSH", b"l", v]).await, b":1\r\n");
        assert_eq!(raw.call(&[b"SADD", b"s", v]).await, b":1\r\n");
        assert_eq!(raw.call(&[b"ZADD", b"z", b"1", v]).await, b":1\r\n");
        assert_eq!(
            raw.call(&[b"XADD", b"x", b"1-1", b"f", v]).await,
            bulk("1-1")
        );
        assert_eq!(raw.call(&[b"PFADD", b"p", v]).await, b":1\r\n");
        assert_eq!(raw.call(&[b"SETBIT", b"b", b"3", b"1"]).await, b":0\r\n");
        assert_eq!(
            raw.call(&[b"GEOADD", b"geo", b"13.36", b"38.11", v]).await,
            b":1\r\n"
        );
        assert_eq!(
            raw.call(&[b"MSET", b"{u}a", v, b"{u}b", v]).await,
            b"+OK\r\n"
        );
    }
    for (who, raw) in [("acme", &mut a), ("globex", &mut g)] {
        assert_eq!(raw.call(&[b"GET", b"k"]).await, bulk(who));
        assert_eq!(raw.call(&[b"HGET", b"h", b"f"]).await, bulk(who));
        assert_eq!(
            raw.call(&[b"LRANGE", b"l", b"0", b"-1"]).await,
            [b"*1\r\n".to_vec(), bulk(who)].concat()
        );
        assert_eq!(
            raw.call(&[b"SMEMBERS", b"s"]).await,
            [b"*1\r\n".to_vec(), bulk(who)].concat()
        );
        assert_eq!(
            raw.call(&[b"ZRANGE", b"z", b"0", b"-1"]).await,
            [b"*1\r\n".to_vec(), bulk(who)].concat()
        );
        assert_eq!(raw.call(&[b"XLEN", b"x"]).await, b":1\r\n");
        assert_eq!(raw.call(&[b"PFCOUNT", b"p"]).await, b":1\r\n");
        assert_eq!(raw.call(&[b"BITCOUNT", b"b"]).await, b":1\r\n");
        // The member's position (a two-element array), not a nil.
        let position = text(raw.call(&[b"GEOPOS", b"geo", who.as_bytes()]).await);
        assert!(position.starts_with("*1\r\n*2\r\n$"), "{who}: {position}");
        assert_eq!(
            raw.call(&[b"MGET", b"{u}a", b"{u}b", b"k"]).await,
            [b"*3\r\n".to_vec(), bulk(who), bulk(who), bulk(who)].concat()
        );
        // Scripts see the tenant's own keys through KEYS[]; PUBLISH reaches its own channel.
        assert_eq!(
            raw.call(&[b"EVAL", b"return redis.call('get', KEYS[1])", b"1", b"k"])
                .await,
            bulk(who)
        );
        assert_eq!(raw.call(&[b"PUBLISH", b"news", b"hello"]).await, b":0\r\n");
        // Hash tags keep a tenant's keys together, so multi-key commands on them work.
        assert_eq!(
            raw.call(&[b"SUNIONSTORE", b"{u}c", b"{u}d"]).await,
            b":0\r\n"
        );
        // The other tenant's prefix, spelled out, only reaches this tenant's own namespace.
        let other = if who == "acme" { "globex:k" } else { "acme:k" };
        assert_eq!(raw.call(&[b"GET", other.as_bytes()]).await, b"$-1\r\n");
        assert_eq!(
            raw.call(&[b"EXISTS", other.as_bytes(), b"k"]).await,
            b":1\r\n"
        );
        // KEYS and SCAN show only this tenant's keys, without the prefix.
        let keys = text(raw.call(&[b"KEYS", b"*"]).await);
        assert!(
            keys.starts_with("*11\r\n") && !keys.contains("acme:") && !keys.contains("globex:"),
            "{who}: {keys}"
        );
        // A SCAN loop (sharded modes scan one shard per page) finds the same keys.
        let mut scanned = String::new();
        let mut cursor = b"0".to_vec();
        loop {
            let reply = raw.call(&[b"SCAN", &cursor, b"COUNT", b"1000"]).await;
            let Ok(redis::Value::Array(parts)) = redis::parse_redis_value(&reply) else {
                panic!("{}", text(reply))
            };
            let redis::Value::BulkString(next) = &parts[0] else {
                panic!()
            };
            scanned.push_str(&text(reply.clone()));
            if next == b"0" {
                break;
            }
            cursor = next.clone();
        }
        assert!(
            !scanned.contains("acme:")
                && !scanned.contains("globex:")
                && scanned.contains("\r\n$1\r\nk\r\n"),
            "{who}: {scanned}"
        );
        // Keyspace-wide commands count and pick only this tenant's keys, on every shard.
        assert_eq!(raw.call(&[b"DBSIZE"]).await, b":11\r\n", "{who}");
        let random = text(raw.call(&[b"RANDOMKEY"]).await);
        assert!(
            random.starts_with('$') && !random.contains(':'),
            "{who}: {random}"
        );
    }
    // One tenant's FLUSHDB leaves the other's keys alone.
    assert_eq!(a.call(&[b"FLUSHDB"]).await, b"+OK\r\n");
    assert_eq!(a.call(&[b"DBSIZE"]).await, b":0\r\n");
    assert_eq!(g.call(&[b"DBSIZE"]).await, b":11\r\n");
    assert_eq!(g.call(&[b"GET", b"k"]).await, bulk("globex"));
}

#[tokio::test]
async fn tenants_are_isolated_on_one_redis() {
    let backend = Redis::start();
    let kg = Keygate::start_with(&backend.addr(), TENANTS).await;
    isolation(&kg).await;
    // On the server, every key carries its tenant's prefix.
    let mut direct = Raw::connect(format!("127.0.0.1:{}", backend.port).parse().unwrap()).await;
    let all = text(direct.call(&[b"KEYS", b"*"]).await);
    for line in all
        .lines()
        .filter(|l| !l.starts_with('*') && !l.starts_with('$'))
    {
        assert!(
            line.starts_with("acme:") || line.starts_with("globex:"),
            "unprefixed key {line:?}"
        );
    }
}

#[tokio::test]
async fn tenants_are_isolated_on_ketama() {
    let shards: Vec<Redis> = (0..3).map(|_| Redis::start()).collect();
    let kg = Keygate::start_ketama(&shards, TENANTS).await;
    isolation(&kg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_on_a_cluster() {
    let cluster = Cluster::start(3);
    let kg = Keygate::start_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"cluster\"\nservers = [\"{}\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n{TENANTS}",
        cluster.nodes[0].addr()
    ))
    .await;
    isolation(&kg).await;
}

#[tokio::test]
async fn authentication() {
    let backend = Redis::start();
    let kg = Keygate::start_with(&backend.addr(), TENANTS).await;
    let mut raw = kg.raw().await;
    assert_eq!(
        raw.call(&[b"GET", b"k"]).await,
        b"-NOAUTH Authentication required.\r\n"
    );
    assert_eq!(
        raw.call(&[b"PING"]).await,
        b"-NOAUTH Authentication required.\r\n"
    );
    assert!(text(raw.call(&[b"HELLO", b"2"]).await).starts_with("-NOAUTH HELLO must be called"));
    assert_eq!(
        raw.call(&[b"NOSUCH"]).await,
        b"-ERR unknown command 'NOSUCH', with args beginning with: \r\n"
    );
    let wrong = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
    assert_eq!(raw.call(&[b"AUTH", b"nope"]).await, wrong);
    assert_eq!(raw.call(&[b"AUTH", b"globex", b"acme-pw"]).await, wrong);
    assert_eq!(raw.call(&[b"AUTH", b"acme-pw"]).await, b"+OK\r\n");
    assert_eq!(raw.call(&[b"SET", b"k", b"a"]).await, b"+OK\r\n");
    // A failed AUTH leaves the identity as it was.
    assert_eq!(raw.call(&[b"AUTH", b"globex", b"wrong"]).await, wrong);
    assert_eq!(raw.call(&[b"GET", b"k"]).await, bulk("a"));
    assert!(text(raw.call(&[b"CLIENT", b"INFO"]).await).contains(" user=acme "));
    // Pipelined identity switches apply to exactly the commands after them.
    raw.send(b"AUTH globex globex-pw\r\nGET k\r\nSET k g\r\nAUTH acme acme-pw\r\nGET k\r\n")
        .await;
    assert_eq!(raw.reply().await.unwrap(), b"+OK\r\n");
    assert_eq!(raw.reply().await.unwrap(), b"$-1\r\n");
    assert_eq!(raw.reply().await.unwrap(), b"+OK\r\n");
    assert_eq!(raw.reply().await.unwrap(), b"+OK\r\n");
    assert_eq!(raw.reply().await.unwrap(), bulk("a"));
    // HELLO with AUTH, and RESET forgetting the identity.
    let mut h = kg.raw().await;
    assert!(text(
        h.call(&[b"HELLO", b"2", b"AUTH", b"globex", b"globex-pw"])
            .await
    )
    .starts_with("*14\r\n"));
    assert_eq!(h.call(&[b"GET", b"k"]).await, bulk("g"));
    assert_eq!(h.call(&[b"RESET"]).await, b"+RESET\r\n");
    assert_eq!(
        h.call(&[b"GET", b"k"]).await,
        b"-NOAUTH Authentication required.\r\n"
    );
}

/// Attempts to reach outside the tenant's keyspace, each contained.
#[tokio::test]
async fn escape_attempts_are_contained() {
    let backend = Redis::start_with(&["--enable-debug-command", "yes"]);
    let kg = Keygate::start_with(&backend.addr(), TENANTS).await;
    let mut g = as_tenant(&kg, "globex").await;
    assert_eq!(
        g.call(&[b"SET", b"secret", b"globex-data"]).await,
        b"+OK\r\n"
    );
    let mut a = as_tenant(&kg, "acme").await;
    assert_eq!(a.call(&[b"SET", b"mine", b"1"]).await, b"+OK\r\n");
    assert_eq!(g.call(&[b"RPUSH", b"l", b"x"]).await, b":1\r\n");
    assert_eq!(a.call(&[b"RPUSH", b"nums", b"1"]).await, b":1\r\n");
    // KEYS * and KEYS [a-z]* show exactly this tenant's two keys (in any order), unprefixed.
    for pattern in [&b"*"[..], b"[a-z]*"] {
        let mut mine = con_keys(&mut a, pattern).await;
        mine.sort();
        assert_eq!(mine, ["mine", "nums"]);
    }
    // A tenant without allow_scripts cannot run a script that reaches an undeclared key.
    let mut i = as_tenant(&kg, "initech").await;
    for script in [
        &[
            &b"EVAL"[..],
            b"return redis.call('get', 'globex:secret')",
            b"0",
        ][..],
        &[
            b"EVAL",
            b"return redis.call('get', 'globex:secret')",
            b"1",
            b"k",
        ],
        &[b"SCRIPT", b"LOAD", b"return 1"],
        &[b"FCALL", b"f", b"0"],
    ] {
        let got = text(i.call(script).await);
        assert!(
            got.starts_with("-NOPERM keygate:") && got.contains("allow_scripts"),
            "{got}"
        );
    }
    let empty = b"*0\r\n".to_vec();
    // Each case: the command, and the exact reply, or None for "refused" (checked below).
    type Case<'a> = (&'a [&'a [u8]], Option<Vec<u8>>);
    let nil = b"$-1\r\n".to_vec();
    let cases: Vec<Case> = vec![
        (&[b"KEYS", b"\\*"], Some(empty.clone())),
        (
            &[b"KEYS", b"[m]*"],
            Some([b"*1\r\n".to_vec(), bulk("mine")].concat()),
        ),
        (&[b"KEYS", b"globex:*"], Some(empty.clone())),
        (&[b"KEYS", b"*secret*"], Some(empty.clone())),
        (&[b"KEYS", b"../*"], Some(empty.clone())),
        (&[b"GET", b"globex:secret"], Some(nil.clone())),
        (&[b"GET", b"../globex:secret"], Some(nil.clone())),
        (&[b"EXISTS", b"globex:secret"], Some(b":0\r\n".to_vec())),
        (&[b"TYPE", b"globex:secret"], Some(b"+none\r\n".to_vec())),
        (
            &[b"OBJECT", b"ENCODING", b"globex:secret"],
            Some(nil.clone()),
        ),
        (&[b"DUMP", b"globex:secret"], Some(nil.clone())),
        (
            &[b"RENAME", b"globex:secret", b"stolen"],
            Some(b"-ERR no such key\r\n".to_vec()),
        ),
        (
            &[b"COPY", b"globex:secret", b"stolen"],
            Some(b":0\r\n".to_vec()),
        ),
        (&[b"COPY", b"mine", b"stolen", b"DB", b"1"], None),
        // Declared keys are prefixed (a script's undeclared keys are why scripts need
        // allow_scripts): the declared key here reaches acme's own namespace only.
        (
            &[
                b"EVAL",
                b"return redis.call('get', KEYS[1])",
                b"1",
                b"globex:secret",
            ],
            Some(nil.clone()),
        ),
        (&[b"EVAL", b"return 1", b"5", b"k"], None),
        (
            &[
                b"SORT",
                b"nums",
                b"BY",
                b"globex:*",
                b"GET",
                b"globex:secret",
            ],
            Some([b"*1\r\n".to_vec(), nil.clone()].concat()),
        ),
        (
            &[b"SORT", b"nums", b"STORE", b"a", b"STORE", b"globex:x"],
            None,
        ),
        (
            &[b"XREAD", b"STREAMS", b"globex:s", b"0"],
            Some(b"*-1\r\n".to_vec()),
        ),
        (
            &[b"ZUNIONSTORE", b"d", b"1", b"globex:z"],
            Some(b":0\r\n".to_vec()),
        ),
        (&[b"ZUNIONSTORE", b"d", b"3", b"globex:z"], None),
        (
            &[b"LMPOP", b"1", b"globex:l", b"LEFT"],
            Some(b"*-1\r\n".to_vec()),
        ),
        // Emulated for the tenant alone: acme has `mine` and `nums`.
        (&[b"DBSIZE"], Some(b":2\r\n".to_vec())),
        (&[b"ACL", b"WHOAMI"], Some(bulk("acme"))),
        (&[b"FLUSHALL"], Some(b"+OK\r\n".to_vec())),
        (&[b"DBSIZE"], Some(b":0\r\n".to_vec())),
        (&[b"FLUSHDB", b"ASYNC"], Some(b"+OK\r\n".to_vec())),
        (&[b"RANDOMKEY"], Some(nil.clone())),
        (&[b"CONFIG", b"GET", b"*"], None),
        (&[b"DEBUG", b"OBJECT", b"globex:secret"], None),
        (&[b"MONITOR"], None),
        (&[b"SWAPDB", b"0", b"1"], None),
        (&[b"SELECT", b"1"], None),
        (&[b"MOVE", b"mine", b"1"], None),
        (
            &[
                b"MIGRATE",
                b"127.0.0.1",
                b"1",
                b"globex:secret",
                b"0",
                b"10",
            ],
            None,
        ),
        (&[b"RESTORE", b"k", b"0", b"x"], None),
        (&[b"SUBSCRIBE", b"__keyspace@0__:globex:secret"], None),
        (&[b"PUBSUB", b"CHANNELS"], Some(empty.clone())),
        (&[b"PUBSUB", b"CHANNELS", b"*"], Some(empty.clone())),
        (
            &[b"PUBSUB", b"NUMSUB", b"globex:news"],
            Some([b"*2\r\n".to_vec(), bulk("globex:news"), b":0\r\n".to_vec()].concat()),
        ),
        (&[b"PUBSUB", b"NUMSUB", b"__keyspace@0__:x"], None),
        (&[b"PUBLISH", b"__keyspace@0__:globex:secret", b"x"], None),
        (&[b"PUBSUB", b"NUMPAT"], None),
        // Only the tenant's own view of the script cache (see commands_with_moving_keys).
        (&[b"SCRIPT", b"FLUSH"], Some(b"+OK\r\n".to_vec())),
        (&[b"FUNCTION", b"LIST"], None),
        (&[b"ACL", b"LIST"], None),
        (&[b"LASTSAVE"], None),
        (&[b"MEMORY", b"STATS"], None),
        (&[b"CLUSTER", b"INFO"], None),
        (&[b"KEYS", b"*a*b*c*d*e*f*g*h*i"], None),
        (
            &[b"SCAN", b"0", b"MATCH", b"*", b"MATCH", b"globex:*"],
            None,
        ),
    ];
    for (args, want) in &cases {
        let got = a.call(args).await;
        let shown: Vec<_> = args.iter().map(|x| String::from_utf8_lossy(x)).collect();
        match want {
            Some(want) => assert_eq!(text(got), text(want.clone()), "{shown:?}"),
            None if args[0] == b"SCAN" => {
                let got = text(got);
                assert!(!got.contains("secret"), "{shown:?}: {got}");
            }
            None => {
                let got = text(got);
                assert!(
                    got.starts_with('-') && !got.contains("globex-data"),
                    "{shown:?} should be refused: {got}"
                );
            }
        }
    }
    // INFO is synthetic: this tenant's figures only.
    for args in [&[&b"INFO"[..]][..], &[b"INFO", b"keyspace"]] {
        let info = text(a.call(args).await);
        assert!(
            info.contains("tenant:acme") && info.contains("db0:keys=0") && !info.contains("globex"),
            "{info}"
        );
    }
    // The other tenant's data is untouched (even by acme's FLUSHALL) and still only theirs.
    assert_eq!(g.call(&[b"GET", b"secret"]).await, bulk("globex-data"));
    let theirs = text(g.call(&[b"KEYS", b"*"]).await);
    assert!(
        theirs.starts_with("*2\r\n") && theirs.contains("secret"),
        "{theirs}"
    );
    assert!(cases.len() >= 40, "{} escape attempts", cases.len());
}

#[tokio::test]
async fn limits_and_command_lists() {
    let backend = Redis::start();
    let kg = Keygate::start_with(&backend.addr(), TENANTS).await;
    // max_connections = 3 for acme.
    let _c1 = as_tenant(&kg, "acme").await;
    let _c2 = as_tenant(&kg, "acme").await;
    let mut c3 = as_tenant(&kg, "acme").await;
    let mut c4 = kg.raw().await;
    assert_eq!(
        c4.call(&[b"AUTH", b"acme", b"acme-pw"]).await,
        b"-ERR keygate: tenant 'acme' already has its maximum of 3 connections\r\n"
    );
    drop(_c1);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while c4.call(&[b"AUTH", b"acme", b"acme-pw"]).await != b"+OK\r\n" {
        assert!(tokio::time::Instant::now() < deadline, "seat never freed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The global policy and the tenant's allow list.
    assert!(text(c3.call(&[b"LASTSAVE"]).await)
        .starts_with("-NOPERM keygate: 'lastsave' is denied by keygate's policy"));
    let mut tiny = as_tenant(&kg, "tiny").await;
    assert!(text(tiny.call(&[b"INCR", b"n"]).await)
        .starts_with("-NOPERM keygate: 'incr' is not in this tenant's allow_commands"));
    // max_ops_per_sec = 5: a burst beyond it is refused with a clear error, not delayed.
    let mut refused = 0;
    for _ in 0..20 {
        if text(tiny.call(&[b"GET", b"k"]).await)
            .starts_with("-ERR keygate: tenant 'tiny' is over its limit of 5 requests per second")
        {
            refused += 1;
        }
    }
    assert!(refused >= 10, "{refused} refused");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(tiny.call(&[b"GET", b"k"]).await, b"$-1\r\n");
    // Both limits are visible per tenant in /metrics.
    let (_, metrics) = common::http_get(kg.admin, "/metrics").await;
    assert!(
        metrics.contains("keygate_tenant_connections{tenant=\"acme\"} 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "keygate_tenant_rate_limited_total{{tenant=\"tiny\"}} {refused}\n"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("keygate_tenant_requests_total{tenant=\"tiny\"} 22\n"),
        "{metrics}"
    );
}

/// Commands whose keys keygate finds itself: keys confined, keys in replies un-prefixed.
#[tokio::test]
async fn commands_with_moving_keys() {
    let backend = Redis::start();
    let kg = Keygate::start_with(&backend.addr(), TENANTS).await;
    let mut a = as_tenant(&kg, "acme").await;
    let mut g = as_tenant(&kg, "globex").await;
    // Scripts: declared keys prefixed; EVALSHA and SCRIPT EXISTS see only the tenant's own.
    assert_eq!(a.call(&[b"SET", b"k", b"a-value"]).await, b"+OK\r\n");
    let sha = a
        .call(&[b"SCRIPT", b"LOAD", b"return redis.call('get', KEYS[1])"])
        .await;
    let sha = redis::parse_redis_value(&sha)
        .map(|v| match v {
            redis::Value::BulkString(s) => s,
            other => panic!("{other:?}"),
        })
        .unwrap();
    assert_eq!(
        a.call(&[b"EVALSHA", &sha, b"1", b"k"]).await,
        bulk("a-value")
    );
    assert_eq!(
        g.call(&[b"EVALSHA", &sha, b"1", b"k"]).await,
        b"-NOSCRIPT No matching script. Please use EVAL.\r\n"
    );
    assert_eq!(
        g.call(&[b"SCRIPT", b"EXISTS", &sha, b"ffff"]).await,
        b"*2\r\n:0\r\n:0\r\n"
    );
    assert_eq!(a.call(&[b"SCRIPT", b"EXISTS", &sha]).await, b"*1\r\n:1\r\n");
    // SCRIPT FLUSH empties the tenant's own view, not the server's cache (nor others' views).
    let theirs = g.call(&[b"SCRIPT", b"LOAD", b"return 7"]).await;
    let theirs = text(theirs).lines().nth(1).unwrap().to_string();
    assert_eq!(
        a.call(&[b"SCRIPT", b"FLUSH", b"LATER"]).await,
        b"-ERR SCRIPT FLUSH only support SYNC|ASYNC option\r\n"
    );
    assert_eq!(a.call(&[b"SCRIPT", b"FLUSH", b"ASYNC"]).await, b"+OK\r\n");
    assert_eq!(a.call(&[b"SCRIPT", b"EXISTS", &sha]).await, b"*1\r\n:0\r\n");
    assert_eq!(
        a.call(&[b"EVALSHA", &sha, b"1", b"k"]).await,
        b"-NOSCRIPT No matching script. Please use EVAL.\r\n"
    );
    assert_eq!(
        g.call(&[b"SCRIPT", b"EXISTS", theirs.as_bytes()]).await,
        b"*1\r\n:1\r\n"
    );
    assert_eq!(
        common::redis_cli(
            backend.port,
            &["SCRIPT", "EXISTS", std::str::from_utf8(&sha).unwrap()]
        )
        .trim(),
        "1"
    );
    assert_eq!(a.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert!(text(a.call(&[b"SCRIPT", b"FLUSH"]).await).contains("cannot run inside MULTI"));
    assert!(text(a.call(&[b"EXEC"]).await).starts_with("-EXECABORT"));
    let mut tiny = as_tenant(&kg, "tiny").await;
    assert!(text(tiny.call(&[b"EVAL", b"return 1", b"0"]).await).starts_with("-NOPERM"));
    // LMPOP / XREAD: the key in the reply is the tenant's name for it.
    assert_eq!(a.call(&[b"RPUSH", b"l", b"x", b"y"]).await, b":2\r\n");
    assert_eq!(
        a.call(&[b"LMPOP", b"2", b"none", b"l", b"LEFT"]).await,
        [b"*2\r\n".to_vec(), bulk("l"), b"*1\r\n".to_vec(), bulk("x")].concat()
    );
    assert_eq!(
        a.call(&[b"XADD", b"s", b"1-1", b"f", b"v"]).await,
        bulk("1-1")
    );
    let read = text(
        a.call(&[b"XREAD", b"COUNT", b"5", b"STREAMS", b"s", b"0"])
            .await,
    );
    assert!(
        read.starts_with("*1\r\n*2\r\n$1\r\ns\r\n") && !read.contains("acme:"),
        "{read}"
    );
    // SORT with STORE, GEORADIUS with STORE, ZUNIONSTORE, COPY: destinations stay inside.
    assert_eq!(
        a.call(&[b"RPUSH", b"nums", b"3", b"1", b"2"]).await,
        b":3\r\n"
    );
    assert_eq!(
        a.call(&[b"SORT", b"nums", b"STORE", b"sorted"]).await,
        b":3\r\n"
    );
    assert_eq!(
        a.call(&[b"LRANGE", b"sorted", b"0", b"-1"]).await,
        [b"*3\r\n".to_vec(), bulk("1"), bulk("2"), bulk("3")].concat()
    );
    assert_eq!(
        a.call(&[b"GEOADD", b"geo", b"13.36", b"38.11", b"p"]).await,
        b":1\r\n"
    );
    assert_eq!(
        a.call(&[
            b"GEORADIUS",
            b"geo",
            b"13.36",
            b"38.11",
            b"10",
            b"km",
            b"STORE",
            b"near"
        ])
        .await,
        b":1\r\n"
    );
    assert_eq!(a.call(&[b"ZADD", b"z1", b"1", b"m"]).await, b":1\r\n");
    assert_eq!(
        a.call(&[b"ZUNIONSTORE", b"zu", b"2", b"z1", b"near"]).await,
        b":2\r\n"
    );
    assert_eq!(a.call(&[b"COPY", b"k", b"k2"]).await, b":1\r\n");
    let mut direct = Raw::connect(format!("127.0.0.1:{}", backend.port).parse().unwrap()).await;
    for key in ["acme:sorted", "acme:near", "acme:zu", "acme:k2"] {
        assert_eq!(
            direct.call(&[b"EXISTS", key.as_bytes()]).await,
            b":1\r\n",
            "{key}"
        );
    }
    assert_eq!(direct.call(&[b"KEYS", b"near"]).await, b"*0\r\n");
}

/// PUBLISH reaches only the tenant's own channel; PUBSUB shows only the tenant's channels.
#[tokio::test]
async fn publish_and_pubsub_introspection() {
    let backend = Redis::start();
    let kg = Keygate::start_with(&backend.addr(), TENANTS).await;
    // A subscriber straight on the server, on both tenants' "news".
    let mut subscriber = Raw::connect(format!("127.0.0.1:{}", backend.port).parse().unwrap()).await;
    subscriber
        .send(b"SUBSCRIBE acme:news globex:news\r\n")
        .await;
    subscriber.reply().await.unwrap();
    subscriber.reply().await.unwrap();
    let mut a = as_tenant(&kg, "acme").await;
    let mut g = as_tenant(&kg, "globex").await;
    assert_eq!(
        a.call(&[b"PUBLISH", b"news", b"from-acme"]).await,
        b":1\r\n"
    );
    let message = text(subscriber.reply().await.unwrap());
    assert!(
        message.contains("$9\r\nacme:news\r\n$9\r\nfrom-acme"),
        "{message}"
    );
    assert_eq!(
        a.call(&[b"PUBSUB", b"NUMSUB", b"news", b"other"]).await,
        [
            b"*4\r\n".to_vec(),
            bulk("news"),
            b":1\r\n".to_vec(),
            bulk("other"),
            b":0\r\n".to_vec()
        ]
        .concat()
    );
    assert_eq!(
        a.call(&[b"PUBSUB", b"CHANNELS"]).await,
        [b"*1\r\n".to_vec(), bulk("news")].concat()
    );
    assert_eq!(
        g.call(&[b"PUBSUB", b"CHANNELS", b"n*"]).await,
        [b"*1\r\n".to_vec(), bulk("news")].concat()
    );
    assert_eq!(g.call(&[b"PUBSUB", b"CHANNELS", b"acme*"]).await, b"*0\r\n");
}

/// A RESP3 tenant: replies keygate rewrites (maps included) come back in RESP3, without the
/// prefix.
#[tokio::test]
async fn resp3_tenant_replies_lose_the_prefix() {
    let backend = Redis::start();
    let kg = Keygate::start_with(&backend.addr(), TENANTS).await;
    let mut a = kg.raw().await;
    let hello = a
        .call(&[b"HELLO", b"3", b"AUTH", b"acme", b"acme-pw"])
        .await;
    assert!(hello.starts_with(b"%7\r\n"), "{}", text(hello));
    assert_eq!(a.call(&[b"RANDOMKEY"]).await, b"_\r\n");
    assert_eq!(a.call(&[b"CLIENT", b"GETNAME"]).await, b"_\r\n");
    assert_eq!(
        a.call(&[b"XADD", b"s", b"1-1", b"f", b"v"]).await,
        bulk("1-1")
    );
    assert_eq!(
        text(a.call(&[b"XREAD", b"STREAMS", b"s", b"0"]).await),
        text(
            [
                b"%1\r\n".to_vec(),
                bulk("s"),
                b"*1\r\n*2\r\n".to_vec(),
                bulk("1-1"),
                b"*2\r\n".to_vec(),
                bulk("f"),
                bulk("v")
            ]
            .concat()
        )
    );
    assert_eq!(a.call(&[b"ZADD", b"z", b"1.5", b"m"]).await, b":1\r\n");
    assert_eq!(
        text(a.call(&[b"BZPOPMIN", b"z", b"0"]).await),
        text(
            [
                b"*3\r\n".to_vec(),
                bulk("z"),
                bulk("m"),
                b",1.5\r\n".to_vec()
            ]
            .concat()
        )
    );
    assert_eq!(
        text(a.call(&[b"PUBSUB", b"NUMSUB", b"news"]).await),
        // Redis 7.0 answers an array here in RESP3 too.
        text([b"*2\r\n".to_vec(), bulk("news"), b":0\r\n".to_vec()].concat())
    );
    assert_eq!(
        text(a.call(&[b"KEYS", b"*"]).await),
        text([b"*1\r\n".to_vec(), bulk("s")].concat())
    );
    assert_eq!(a.call(&[b"DBSIZE"]).await, b":1\r\n");
}

/// A tenant's blocking pop waits on its own key: another tenant's push to the same name does not
/// wake it, its own does, and the reply names the key without the prefix.
#[tokio::test]
async fn tenant_blocking_pops_wait_on_their_own_keys() {
    let backend = Redis::start();
    let kg = Keygate::start_with(&backend.addr(), TENANTS).await;
    let mut waiting = as_tenant(&kg, "acme").await;
    let mut acme = as_tenant(&kg, "acme").await;
    let mut globex = as_tenant(&kg, "globex").await;
    waiting.send(b"BLPOP jobs 0\r\n").await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(
        globex.call(&[b"RPUSH", b"jobs", b"theirs"]).await,
        b":1\r\n"
    );
    let early = tokio::time::timeout(std::time::Duration::from_millis(200), waiting.reply()).await;
    assert!(early.is_err(), "woken by another tenant's push");
    assert_eq!(acme.call(&[b"RPUSH", b"jobs", b"ours"]).await, b":1\r\n");
    assert_eq!(
        waiting.reply().await.unwrap(),
        [b"*2\r\n".to_vec(), bulk("jobs"), bulk("ours")].concat()
    );
    assert_eq!(globex.call(&[b"LLEN", b"jobs"]).await, b":1\r\n");
}

/// Address lists (CIDR), global at connect and per tenant at AUTH, and a per-address limit on
/// failed AUTH attempts.
#[tokio::test]
async fn access_lists_and_failed_auth_limits() {
    let backend = Redis::start();
    // Loopback denied outright: refused with a reason, then closed.
    for access in [
        "[access]\ndeny = [\"127.0.0.0/8\"]\n",
        "[access]\nallow = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n",
    ] {
        let kg = Keygate::start_with(&backend.addr(), access).await;
        let mut raw = kg.raw().await;
        assert_eq!(
            raw.reply().await.unwrap(),
            b"-ERR keygate: connections from this address are not allowed\r\n"
        );
        raw.expect_closed().await;
    }
    let kg = Keygate::start_with(
        &backend.addr(),
        "[access]\nallow = [\"127.0.0.1\"]\nmax_auth_failures = 3\n\
         [[tenants]]\nname = \"acme\"\npassword = \"acme-pw\"\nprefix = \"acme:\"\nallow_from = [\"127.0.0.0/8\"]\n\
         [[tenants]]\nname = \"globex\"\npassword = \"globex-pw\"\nprefix = \"globex:\"\nallow_from = [\"10.0.0.0/8\"]\n\
         [[tenants]]\nname = \"initech\"\npassword = \"initech-pw\"\nprefix = \"initech:\"\n",
    )
    .await;
    let mut raw = kg.raw().await;
    // globex may only AUTH from 10/8: from here its right password is "wrong".
    assert_eq!(
        raw.call(&[b"AUTH", b"globex", b"globex-pw"]).await,
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(raw.call(&[b"AUTH", b"acme", b"acme-pw"]).await, b"+OK\r\n");
    // Three failures as acme: this address's AUTHs as acme are refused unchecked for a minute.
    for _ in 0..3 {
        assert!(text(raw.call(&[b"AUTH", b"acme", b"guess"]).await).starts_with("-WRONGPASS"));
    }
    let locked =
        "-ERR keygate: too many failed AUTH attempts for this name from this address; try again in a minute\r\n";
    let mut other = kg.raw().await;
    assert_eq!(
        text(other.call(&[b"AUTH", b"acme", b"acme-pw"]).await),
        locked
    );
    // Another tenant's correct credentials from the same address still work, by name and by
    // password alone: one misconfigured application locks out only the name it guessed.
    assert_eq!(
        other.call(&[b"AUTH", b"initech", b"initech-pw"]).await,
        b"+OK\r\n"
    );
    let mut third = kg.raw().await;
    assert_eq!(third.call(&[b"AUTH", b"initech-pw"]).await, b"+OK\r\n");
    // Password-only guesses count as one more name: they lock out password-only AUTH, not
    // AUTH by name.
    for _ in 0..3 {
        assert!(text(third.call(&[b"AUTH", b"guess"]).await).starts_with("-WRONGPASS"));
    }
    assert_eq!(text(third.call(&[b"AUTH", b"initech-pw"]).await), locked);
    assert_eq!(
        third.call(&[b"AUTH", b"initech", b"initech-pw"]).await,
        b"+OK\r\n"
    );
    // The authenticated client keeps working.
    assert_eq!(raw.call(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    // Counted in /metrics.
    let metrics = common::http_get(kg.admin, "/metrics").await.1;
    assert!(
        metrics.contains("keygate_auth_failures_total 7"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keygate_auth_locked_out_total 2"),
        "{metrics}"
    );
}

/// CLIENT LIST and CLIENT KILL see a tenant's own clients only: another tenant's cannot be
/// listed, counted or killed, whatever the filter.
#[tokio::test]
async fn client_list_and_kill_stay_within_the_tenant() {
    let backend = Redis::start();
    let kg = Keygate::start_with(&backend.addr(), TENANTS).await;
    let mut acme = as_tenant(&kg, "acme").await;
    let mut acme2 = as_tenant(&kg, "acme").await;
    let mut globex = as_tenant(&kg, "globex").await;
    let id = |reply: Vec<u8>| {
        String::from_utf8(reply)
            .unwrap()
            .trim_matches([':', '\r', '\n'])
            .to_string()
    };
    let acme2_id = id(acme2.call(&[b"CLIENT", b"ID"]).await);
    let globex_id = id(globex.call(&[b"CLIENT", b"ID"]).await);
    let list = String::from_utf8(acme.call(&[b"CLIENT", b"LIST"]).await).unwrap();
    assert_eq!(list.matches("id=").count(), 2, "{list}");
    assert_eq!(list.matches(" user=acme ").count(), 2, "{list}");
    assert!(!list.contains("globex"), "{list}");
    let by_id = acme
        .call(&[b"CLIENT", b"LIST", b"ID", globex_id.as_bytes()])
        .await;
    assert_eq!(by_id, b"$0\r\n\r\n");
    for args in [
        &[&b"CLIENT"[..], b"KILL", b"USER", b"globex"][..],
        &[b"CLIENT", b"KILL", b"ID", globex_id.as_bytes()],
        &[b"CLIENT", b"KILL", b"TYPE", b"normal", b"USER", b"globex"],
    ] {
        assert_eq!(acme.call(args).await, b":0\r\n", "{args:?}");
    }
    assert_eq!(globex.call(&[b"PING"]).await, b"+PONG\r\n");
    assert_eq!(
        acme.call(&[b"CLIENT", b"KILL", b"ID", acme2_id.as_bytes()])
            .await,
        b":1\r\n"
    );
    acme2.expect_closed().await;
    assert_eq!(globex.call(&[b"PING"]).await, b"+PONG\r\n");
}

/// A tenant's INFO counts its own clients waiting in blocking commands (what Redis's test
/// suite waits for before it pushes), never another tenant's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_info_counts_its_own_blocked_clients() {
    let backend = Redis::start();
    let kg = Keygate::start_with(&backend.addr(), TENANTS).await;
    let mut a = as_tenant(&kg, "acme").await;
    let mut g_blocked = as_tenant(&kg, "globex").await;
    g_blocked.send(b"BLPOP q 0\r\n").await;
    let blocked = |info: String| {
        info.lines()
            .find_map(|l| l.strip_prefix("blocked_clients:"))
            .map(|n| n.trim().to_string())
            .unwrap_or_else(|| panic!("no blocked_clients in {info}"))
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(blocked(text(a.call(&[b"INFO", b"clients"]).await)), "0");
    let mut a_blocked = as_tenant(&kg, "acme").await;
    a_blocked.send(b"BLPOP q 0\r\n").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while blocked(text(a.call(&[b"INFO"]).await)) != "1" {
        assert!(std::time::Instant::now() < deadline, "never counted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(a.call(&[b"RPUSH", b"q", b"x"]).await, b":1\r\n");
    assert_eq!(
        text(a_blocked.reply().await.unwrap()),
        "*2\r\n$1\r\nq\r\n$1\r\nx\r\n"
    );
    assert_eq!(blocked(text(a.call(&[b"INFO"]).await)), "0");
}
