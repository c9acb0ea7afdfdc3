//! CLIENT TRACKING through keygate: invalidation push messages for keys the client read and
//! any client wrote, from every shard, a tenant's only and without its prefix; REDIRECT to
//! another keygate client (RESP2 subscribers of `__redis__:invalidate`); Redis's option checks
//! and replies.

mod common;

use common::{as_tenant, bulk, Keygate, Raw, Redis};

fn text(reply: Vec<u8>) -> String {
    String::from_utf8_lossy(&reply).into_owned()
}

/// The invalidation push for `keys`, as Redis sends it.
fn invalidate(keys: &[&str]) -> Vec<u8> {
    let mut push = format!(">2\r\n$10\r\ninvalidate\r\n*{}\r\n", keys.len()).into_bytes();
    for key in keys {
        push.extend(bulk(key));
    }
    push
}

async fn resp3_tracking(raw: &mut Raw, options: &[&[u8]]) {
    assert!(raw.call(&[b"HELLO", b"3"]).await.starts_with(b"%"));
    let mut args: Vec<&[u8]> = vec![b"CLIENT", b"TRACKING", b"ON"];
    args.extend_from_slice(options);
    assert_eq!(raw.call(&args).await, b"+OK\r\n");
}

/// A cache in front of a ketama set: a read, a write by another client, the invalidation (from
/// either shard); OFF stops them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_from_every_shard() {
    let shards = [Redis::start(), Redis::start()];
    let kg = Keygate::start_ketama(&shards, "").await;
    let mut cache = kg.raw().await;
    let mut writer = kg.raw().await;
    resp3_tracking(&mut cache, &[]).await;
    let info = text(cache.call(&[b"CLIENT", b"TRACKINGINFO"]).await);
    assert!(
        info.starts_with("%3\r\n$5\r\nflags\r\n~1\r\n$2\r\non\r\n"),
        "{info}"
    );
    assert_eq!(cache.call(&[b"CLIENT", b"GETREDIR"]).await, b":0\r\n");
    // Keys until both shards hold one: each write is invalidated.
    let mut written = Vec::new();
    for i in 0..64 {
        let key = format!("key{i}");
        assert_eq!(cache.call(&[b"GET", key.as_bytes()]).await, b"_\r\n");
        assert_eq!(
            writer.call(&[b"SET", key.as_bytes(), b"v"]).await,
            b"+OK\r\n"
        );
        assert_eq!(cache.reply().await.unwrap(), invalidate(&[&key]));
        written.push(key);
        if shards
            .iter()
            .all(|s| !common::redis_cli(s.port, &["DBSIZE"]).starts_with('0'))
        {
            break;
        }
    }
    assert!(written.len() >= 2);
    assert_eq!(
        cache.call(&[b"CLIENT", b"TRACKING", b"OFF"]).await,
        b"+OK\r\n"
    );
    assert_eq!(writer.call(&[b"SET", b"key0", b"w"]).await, b"+OK\r\n");
    assert_eq!(cache.call(&[b"PING"]).await, b"+PONG\r\n");
    assert_eq!(cache.call(&[b"CLIENT", b"GETREDIR"]).await, b":-1\r\n");
}

/// Redis's option checks and texts; BCAST with prefixes; REDIRECT to a client that does not
/// exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_are_checked_as_redis_checks_them() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut raw = kg.raw().await;
    assert!(raw.call(&[b"HELLO", b"3"]).await.starts_with(b"%"));
    for (args, want) in [
        (&[&b"CLIENT"[..], b"TRACKING", b"ON", b"PREFIX", b"a"][..], "-ERR PREFIX option requires BCAST mode to be enabled\r\n"),
        (&[b"CLIENT", b"TRACKING", b"ON", b"OPTIN", b"OPTOUT"], "-ERR You can't specify both OPTIN mode and OPTOUT mode\r\n"),
        (&[b"CLIENT", b"TRACKING", b"ON", b"BCAST", b"OPTIN"], "-ERR OPTIN and OPTOUT are not compatible with BCAST\r\n"),
        (&[b"CLIENT", b"TRACKING", b"ON", b"FOO"], "-ERR syntax error\r\n"),
        (&[b"CLIENT", b"TRACKING", b"MAYBE"], "-ERR syntax error\r\n"),
        (&[b"CLIENT", b"TRACKING", b"ON", b"BCAST", b"PREFIX", b"a", b"PREFIX", b"ab"], "-ERR Prefix 'a' overlaps with another provided prefix 'ab'. Prefixes for a single client must not overlap.\r\n"),
        (&[b"CLIENT", b"CACHING", b"yes"], "-ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled\r\n"),
    ] {
        assert_eq!(text(raw.call(args).await), want, "{args:?}");
    }
    assert_eq!(
        text(
            raw.call(&[b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", b"5000"])
                .await
        ),
        "-ERR The client ID you want redirect to does not exist\r\n"
    );
    // OPTIN: CLIENT CACHING as Redis allows it.
    assert_eq!(
        raw.call(&[b"CLIENT", b"TRACKING", b"ON", b"OPTIN"]).await,
        b"+OK\r\n"
    );
    assert_eq!(raw.call(&[b"CLIENT", b"CACHING", b"yes"]).await, b"+OK\r\n");
    assert_eq!(
        text(raw.call(&[b"CLIENT", b"CACHING", b"no"]).await),
        "-ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.\r\n"
    );
    assert_eq!(
        text(raw.call(&[b"CLIENT", b"TRACKING", b"ON", b"BCAST"]).await),
        "-ERR You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling it with a different mode.\r\n"
    );
    assert_eq!(
        raw.call(&[b"CLIENT", b"TRACKING", b"OFF"]).await,
        b"+OK\r\n"
    );
    // BCAST with a prefix: only keys under it.
    assert_eq!(
        raw.call(&[b"CLIENT", b"TRACKING", b"ON", b"BCAST", b"PREFIX", b"user:"])
            .await,
        b"+OK\r\n"
    );
    let mut writer = kg.raw().await;
    writer.call(&[b"SET", b"other", b"x"]).await;
    writer.call(&[b"SET", b"user:1", b"x"]).await;
    assert_eq!(raw.reply().await.unwrap(), invalidate(&["user:1"]));
    let info = text(raw.call(&[b"CLIENT", b"TRACKINGINFO"]).await);
    assert!(
        info.contains("~2\r\n$2\r\non\r\n$5\r\nbcast\r\n")
            && info.ends_with("*1\r\n$5\r\nuser:\r\n"),
        "{info}"
    );
}

/// Keygate in front of `backend` with tenants acme and globex (passwords `<name>-pw`).
async fn two_tenants(backend: &Redis) -> Keygate {
    Keygate::start_with(
        &backend.addr(),
        "[[tenants]]\nname = \"acme\"\npassword = \"acme-pw\"\nprefix = \"acme:\"\n\
         [[tenants]]\nname = \"globex\"\npassword = \"globex-pw\"\nprefix = \"globex:\"\n",
    )
    .await
}

/// A tenant's cache hears of its own keys only, named as it names them; another tenant writing
/// the same key name sends it nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_hear_of_their_own_keys_only() {
    let backend = Redis::start();
    let kg = two_tenants(&backend).await;
    let mut cache = as_tenant(&kg, "acme").await;
    resp3_tracking(&mut cache, &[]).await;
    assert_eq!(cache.call(&[b"GET", b"k"]).await, b"_\r\n");
    let mut globex = as_tenant(&kg, "globex").await;
    let mut acme = as_tenant(&kg, "acme").await;
    assert_eq!(globex.call(&[b"SET", b"k", b"theirs"]).await, b"+OK\r\n");
    assert_eq!(acme.call(&[b"SET", b"k", b"mine"]).await, b"+OK\r\n");
    assert_eq!(cache.reply().await.unwrap(), invalidate(&["k"]));
    assert_eq!(cache.call(&[b"PING"]).await, b"+PONG\r\n");
    // Switching tenant would leave the feed on the old one's keys: refused.
    let switch = text(cache.call(&[b"AUTH", b"globex", b"globex-pw"]).await);
    assert!(switch.contains("turn CLIENT TRACKING off"), "{switch}");
}

/// A tenant's RESP2 cache redirects to a client of its own subscribed to
/// `__redis__:invalidate`, as redis-py and the Redis test suite do: it hears of its own keys,
/// named as it names them, and of no other tenant's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_resp2_redirect_hears_its_own_keys() {
    let backend = Redis::start();
    let kg = two_tenants(&backend).await;
    let mut sink = as_tenant(&kg, "acme").await;
    let id = text(sink.call(&[b"CLIENT", b"ID"]).await);
    let id = id.trim_start_matches(':').trim_end().to_string();
    let confirmed = text(sink.call(&[b"SUBSCRIBE", b"__redis__:invalidate"]).await);
    assert_eq!(
        confirmed,
        "*3\r\n$9\r\nsubscribe\r\n$20\r\n__redis__:invalidate\r\n:1\r\n"
    );
    let mut cache = as_tenant(&kg, "acme").await;
    assert_eq!(
        cache
            .call(&[b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", id.as_bytes()])
            .await,
        b"+OK\r\n"
    );
    cache.call(&[b"GET", b"k"]).await;
    let mut globex = as_tenant(&kg, "globex").await;
    assert_eq!(globex.call(&[b"SET", b"k", b"theirs"]).await, b"+OK\r\n");
    let mut acme = as_tenant(&kg, "acme").await;
    assert_eq!(acme.call(&[b"SET", b"k", b"mine"]).await, b"+OK\r\n");
    assert_eq!(
        text(sink.reply().await.unwrap()),
        "*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$1\r\nk\r\n"
    );
    // Other `__` channels stay the server's.
    let refused = text(acme.call(&[b"SUBSCRIBE", b"__keyspace@0__:k"]).await);
    assert!(refused.starts_with("-NOPERM"), "{refused}");
}

/// A hostile tenant cannot aim its invalidations at another tenant's client, nor keep them
/// flowing to a client of its own that has since authenticated as another tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_never_crosses_tenants() {
    let backend = Redis::start();
    let kg = two_tenants(&backend).await;
    let client_id = |reply: Vec<u8>| text(reply).trim_start_matches(':').trim_end().to_string();
    let mut victim = as_tenant(&kg, "globex").await;
    let victim_id = client_id(victim.call(&[b"CLIENT", b"ID"]).await);
    let mut cache = as_tenant(&kg, "acme").await;
    let redirect = [&b"CLIENT"[..], b"TRACKING", b"ON", b"REDIRECT"];
    assert_eq!(
        text(
            cache
                .call(&[&redirect[..], &[victim_id.as_bytes()]].concat())
                .await
        ),
        "-ERR The client ID you want redirect to does not exist\r\n"
    );
    // A sink of acme's own (RESP3, so it gets pushes unsubscribed), then it becomes globex.
    let mut sink = as_tenant(&kg, "acme").await;
    assert!(sink.call(&[b"HELLO", b"3"]).await.starts_with(b"%"));
    let sink_id = client_id(sink.call(&[b"CLIENT", b"ID"]).await);
    assert_eq!(
        cache
            .call(&[&redirect[..], &[sink_id.as_bytes()]].concat())
            .await,
        b"+OK\r\n"
    );
    assert_eq!(
        sink.call(&[b"AUTH", b"globex", b"globex-pw"]).await,
        b"+OK\r\n"
    );
    cache.call(&[b"GET", b"secret-name"]).await;
    let mut acme = as_tenant(&kg, "acme").await;
    assert_eq!(acme.call(&[b"SET", b"secret-name", b"1"]).await, b"+OK\r\n");
    assert_eq!(acme.call(&[b"FLUSHALL"]).await, b"+OK\r\n");
    // Nothing of acme's reached it: its next reply is its PING's.
    assert_eq!(sink.call(&[b"PING"]).await, b"+PONG\r\n");
    assert_eq!(
        text(cache.call(&[b"CLIENT", b"GETREDIR"]).await),
        format!(":{sink_id}\r\n")
    );
}

/// A reload that changes the primaries disconnects a tracking client (its feed would miss the
/// new server's writes, and its library then drops its cache); one that keeps them does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_primary_set_disconnects_tracking_clients() {
    let (a, b) = (Redis::start(), Redis::start());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.toml");
    let config = |servers: &[&Redis]| {
        let list: Vec<String> = servers
            .iter()
            .map(|s| format!("\"{}\"", s.addr()))
            .collect();
        format!(
            "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"ketama\"\nservers = [{}]\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n",
            list.join(", ")
        )
    };
    std::fs::write(&path, config(&[&a])).unwrap();
    let kg = Keygate::start_file(&path).await;
    let mut cache = kg.raw().await;
    resp3_tracking(&mut cache, &[]).await;
    // Same primaries (the file rewritten unchanged): still tracking.
    std::fs::write(&path, config(&[&a]) + "\n").unwrap();
    let (status, body) = common::http(kg.admin, "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cache.call(&[b"PING"]).await, b"+PONG\r\n");
    // Another primary: disconnected.
    std::fs::write(&path, config(&[&a, &b])).unwrap();
    let (status, body) = common::http(kg.admin, "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    cache.expect_closed().await;
}

/// Default tracking as Redis keeps it: only keys the client read are invalidated, each once
/// until read again; NOLOOP spares its own writes; OPTIN tracks only after CLIENT CACHING YES.
/// A RESP2 client redirects its invalidations to another keygate client subscribed to
/// `__redis__:invalidate`; a flush invalidates everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_tracking_and_redirect_as_redis() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut writer = kg.raw().await;
    // RESP2, redirected to a subscriber.
    let mut sink = kg.raw().await;
    let id = text(sink.call(&[b"CLIENT", b"ID"]).await);
    let id = id.trim_start_matches(':').trim_end().to_string();
    assert!(text(sink.call(&[b"SUBSCRIBE", b"__redis__:invalidate"]).await).contains("subscribe"));
    let mut cache = kg.raw().await;
    assert_eq!(
        cache
            .call(&[b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", id.as_bytes()])
            .await,
        b"+OK\r\n"
    );
    assert_eq!(
        text(cache.call(&[b"CLIENT", b"GETREDIR"]).await),
        format!(":{id}\r\n")
    );
    writer.call(&[b"MSET", b"a", b"1", b"b", b"1"]).await;
    cache.call(&[b"GET", b"a"]).await;
    writer.call(&[b"INCR", b"b"]).await; // never read: no invalidation
    writer.call(&[b"INCR", b"a"]).await;
    let message =
        |keys: &str| format!("*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n{keys}");
    assert_eq!(
        text(sink.reply().await.unwrap()),
        message("*1\r\n$1\r\na\r\n")
    );
    // Invalidated once: not again until read again.
    writer.call(&[b"INCR", b"a"]).await;
    cache.call(&[b"GET", b"b"]).await;
    writer.call(&[b"INCR", b"b"]).await;
    assert_eq!(
        text(sink.reply().await.unwrap()),
        message("*1\r\n$1\r\nb\r\n")
    );
    cache.call(&[b"GET", b"a"]).await;
    writer.call(&[b"FLUSHALL"]).await;
    assert_eq!(text(sink.reply().await.unwrap()), message("*-1\r\n"));

    // RESP3, NOLOOP: its own write is not invalidated for it, another client's is.
    let mut own = kg.raw().await;
    resp3_tracking(&mut own, &[b"NOLOOP"]).await;
    own.call(&[b"GET", b"x"]).await;
    assert_eq!(own.call(&[b"SET", b"x", b"1"]).await, b"+OK\r\n");
    own.call(&[b"GET", b"x"]).await;
    writer.call(&[b"SET", b"x", b"2"]).await;
    assert_eq!(own.reply().await.unwrap(), invalidate(&["x"]));

    // OPTIN: only the read right after CLIENT CACHING YES.
    let mut optin = kg.raw().await;
    resp3_tracking(&mut optin, &[b"OPTIN"]).await;
    optin.call(&[b"GET", b"p"]).await;
    assert_eq!(
        optin.call(&[b"CLIENT", b"CACHING", b"YES"]).await,
        b"+OK\r\n"
    );
    optin.call(&[b"GET", b"q"]).await;
    writer.call(&[b"SET", b"p", b"1"]).await;
    writer.call(&[b"SET", b"q", b"1"]).await;
    assert_eq!(optin.reply().await.unwrap(), invalidate(&["q"]));
}

/// As Redis: BCAST prefixes are added to (never overlapping), NOLOOP in BCAST mode spares the
/// client's own writes, and a script's declared keys are tracked (so a cache that read through
/// a script hears of the write, where keygate once sent nothing and the cache waited forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bcast_prefixes_noloop_and_scripts_as_redis() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut writer = kg.raw().await;
    let mut cache = kg.raw().await;
    resp3_tracking(&mut cache, &[b"BCAST", b"PREFIX", b"a:", b"PREFIX", b"b:"]).await;
    assert_eq!(
        cache
            .call(&[b"CLIENT", b"TRACKING", b"ON", b"BCAST", b"PREFIX", b"c:"])
            .await,
        b"+OK\r\n"
    );
    for (prefix, existing) in [("a", "a:"), ("c:x", "c:")] {
        let reply = text(
            cache
                .call(&[
                    b"CLIENT",
                    b"TRACKING",
                    b"ON",
                    b"BCAST",
                    b"PREFIX",
                    prefix.as_bytes(),
                ])
                .await,
        );
        assert_eq!(
            reply,
            format!("-ERR Prefix '{prefix}' overlaps with an existing prefix '{existing}'. Prefixes for a single client must not overlap.\r\n")
        );
    }
    writer.call(&[b"SET", b"c:1", b"v"]).await;
    assert_eq!(cache.reply().await.unwrap(), invalidate(&["c:1"]));
    writer.call(&[b"SET", b"a:1", b"v"]).await;
    assert_eq!(cache.reply().await.unwrap(), invalidate(&["a:1"]));
    writer.call(&[b"SET", b"z:1", b"v"]).await; // no prefix of the client's
    assert_eq!(cache.call(&[b"PING"]).await, b"+PONG\r\n");

    // NOLOOP in BCAST mode: its own write is not invalidated for it, another's is.
    let mut own = kg.raw().await;
    resp3_tracking(&mut own, &[b"BCAST", b"NOLOOP"]).await;
    assert_eq!(own.call(&[b"SET", b"loopkey", b"1"]).await, b"+OK\r\n");
    writer.call(&[b"SET", b"otherkey", b"1"]).await;
    assert_eq!(own.reply().await.unwrap(), invalidate(&["otherkey"]));

    // A script's declared keys are tracked for it.
    let mut scripted = kg.raw().await;
    resp3_tracking(&mut scripted, &[]).await;
    scripted
        .call(&[b"EVAL", b"return redis.call('get', KEYS[1])", b"1", b"s1"])
        .await;
    writer.call(&[b"SET", b"s1", b"2"]).await;
    assert_eq!(scripted.reply().await.unwrap(), invalidate(&["s1"]));
}

/// Default mode gets one message per key, as from Redis (the feed's BCAST connections get them
/// batched); the tables keygate keeps are bounded by `tracking-table-max-keys` (followed from
/// CONFIG SET): lowering it evicts keys at once, each invalidated, and a client reading ever
/// more keys keeps no more than the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_are_bounded_and_keys_invalidated_one_by_one() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut writer = kg.raw().await;
    let mut cache = kg.raw().await;
    resp3_tracking(&mut cache, &[]).await;
    cache.call(&[b"MGET", b"k1", b"k2"]).await;
    writer.call(&[b"MSET", b"k1", b"1", b"k2", b"2"]).await;
    let mut got = vec![cache.reply().await.unwrap(), cache.reply().await.unwrap()];
    got.sort();
    assert_eq!(got, vec![invalidate(&["k1"]), invalidate(&["k2"])]);

    cache.call(&[b"MGET", b"k1", b"k2"]).await;
    assert_eq!(
        writer
            .call(&[b"CONFIG", b"SET", b"tracking-table-max-keys", b"1"])
            .await,
        b"+OK\r\n"
    );
    let evicted = cache.reply().await.unwrap();
    assert!(
        evicted == invalidate(&["k1"]) || evicted == invalidate(&["k2"]),
        "{}",
        text(evicted)
    );
    // Reading many more keys: each past the bound evicts one, invalidated (before or after
    // the read's reply: the eviction is keygate's, the reply the server's).
    for i in 0..50 {
        let key = format!("many{i}");
        let mut frames = vec![
            text(cache.call(&[b"GET", key.as_bytes()]).await),
            text(cache.reply().await.unwrap()),
        ];
        frames.sort();
        assert!(
            frames[0].starts_with(">2\r\n$10\r\ninvalidate\r\n*1\r\n") && frames[1] == "_\r\n",
            "{frames:?}"
        );
    }
    assert_eq!(cache.call(&[b"PING"]).await, b"+PONG\r\n");
}

/// A RESP3 client whose redirect client is gone hears `tracking-redir-broken`, as from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_redirect_is_reported() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut sink = kg.raw().await;
    let id = text(sink.call(&[b"CLIENT", b"ID"]).await);
    let id = id.trim_start_matches(':').trim_end().to_string();
    let mut cache = kg.raw().await;
    resp3_tracking(&mut cache, &[b"REDIRECT", id.as_bytes()]).await;
    cache.call(&[b"GET", b"k"]).await;
    assert_eq!(sink.call(&[b"QUIT"]).await, b"+OK\r\n");
    sink.expect_closed().await;
    let mut writer = kg.raw().await;
    // The registry forgets the client as its session ends: try until the write meets that.
    let broken = format!(">2\r\n$21\r\ntracking-redir-broken\r\n:{id}\r\n");
    for round in 0.. {
        writer.call(&[b"SET", b"k", b"v"]).await;
        let first = text(cache.call(&[b"PING"]).await);
        if first == broken {
            assert_eq!(cache.reply().await.unwrap(), b"+PONG\r\n");
            break;
        }
        assert_eq!(first, "+PONG\r\n");
        assert!(round < 50, "no tracking-redir-broken");
        cache.call(&[b"GET", b"k"]).await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The order of invalidations and replies, as on Redis's one connection (keygate hears them on
/// two): an invalidation the server sent before a reply comes before it (another client's
/// write the command followed, a key evicted to make room for the command), one of a key the
/// command itself touched comes after it, and a transaction's write of a key it then reads is
/// no invalidation at all. Each is tried many times: the two connections race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_and_replies_keep_redis_order() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut writer = kg.raw().await;
    let mut cache = kg.raw().await;
    resp3_tracking(&mut cache, &[]).await;
    for i in 0..30 {
        let key = format!("k{i}");
        let hash = format!("h{i}");
        // Another client's write, answered before this client's PING was sent.
        cache.call(&[b"GET", key.as_bytes()]).await;
        writer.call(&[b"SET", key.as_bytes(), b"1"]).await;
        assert_eq!(cache.call(&[b"PING"]).await, invalidate(&[&key]));
        assert_eq!(cache.reply().await.unwrap(), b"+PONG\r\n");
        // Its own write: the reply first.
        cache.call(&[b"HSET", hash.as_bytes(), b"f", b"1"]).await;
        cache.call(&[b"HGET", hash.as_bytes(), b"f"]).await;
        assert_eq!(
            cache.call(&[b"HDEL", hash.as_bytes(), b"f"]).await,
            b":1\r\n"
        );
        assert_eq!(cache.reply().await.unwrap(), invalidate(&[&hash]));
    }
    // A transaction: EXEC's reply, then the invalidation of the key it wrote (read before);
    // a key it wrote and then read is tracked from the read, with no invalidation.
    cache.call(&[b"SET", b"a", b"1"]).await;
    cache.call(&[b"GET", b"a"]).await;
    cache.call(&[b"MULTI"]).await;
    cache.call(&[b"INCR", b"a"]).await;
    cache.call(&[b"SET", b"b", b"1"]).await;
    cache.call(&[b"GET", b"b"]).await;
    assert_eq!(
        text(cache.call(&[b"EXEC"]).await),
        "*3\r\n:2\r\n+OK\r\n$1\r\n1\r\n"
    );
    assert_eq!(cache.reply().await.unwrap(), invalidate(&["a"]));
    assert_eq!(cache.call(&[b"PING"]).await, b"+PONG\r\n");
    writer.call(&[b"SET", b"b", b"2"]).await;
    assert_eq!(cache.reply().await.unwrap(), invalidate(&["b"]));
    // FLUSHDB inside MULTI: EXEC's reply, then the flush's invalidation.
    cache.call(&[b"GET", b"a"]).await;
    cache.call(&[b"MULTI"]).await;
    cache.call(&[b"FLUSHDB"]).await;
    assert_eq!(cache.call(&[b"EXEC"]).await, b"*1\r\n+OK\r\n");
    assert_eq!(
        cache.reply().await.unwrap(),
        b">2\r\n$10\r\ninvalidate\r\n_\r\n"
    );

    // A key the server evicts to make room for the command: before the command's reply.
    let used: u64 = common::redis_cli(backend.port, &["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory");
    let limit = (used + 100 * 1024).to_string();
    common::redis_cli(
        backend.port,
        &["CONFIG", "SET", "maxmemory-policy", "volatile-random"],
    );
    common::redis_cli(backend.port, &["CONFIG", "SET", "maxmemory", &limit]);
    cache.call(&[b"SETEX", b"volatile", b"10000", b"x"]).await;
    cache.call(&[b"GET", b"volatile"]).await;
    cache.call(&[b"SETBIT", b"big", b"1600000", b"0"]).await;
    assert_eq!(
        cache.call(&[b"GETBIT", b"big", b"0"]).await,
        invalidate(&["volatile"])
    );
    assert_eq!(cache.reply().await.unwrap(), b":0\r\n");
    common::redis_cli(backend.port, &["CONFIG", "SET", "maxmemory", "0"]);
}

/// Scripts as Redis tracks them: the declared keys of a script that reads, not of one that only
/// writes; with NOLOOP a script's own write is not invalidated for it. And CLIENT TRACKINGINFO
/// shows CLIENT CACHING's pending answer, the empty BCAST prefix and a broken redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_and_trackinginfo_as_redis() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut writer = kg.raw().await;
    let mut cache = kg.raw().await;
    resp3_tracking(&mut cache, &[]).await;
    cache
        .call(&[b"EVAL", b"redis.call('set', 'other', 'bar')", b"1", b"w"])
        .await;
    writer.call(&[b"SET", b"w", b"1"]).await;
    assert_eq!(cache.call(&[b"PING"]).await, b"+PONG\r\n");
    cache
        .call(&[b"EVAL", b"return redis.call('get', 'other')", b"1", b"r"])
        .await;
    writer.call(&[b"SET", b"r", b"1"]).await;
    assert_eq!(cache.reply().await.unwrap(), invalidate(&["r"]));

    let mut own = kg.raw().await;
    resp3_tracking(&mut own, &[b"NOLOOP"]).await;
    own.call(&[b"SET", b"key1", b"1"]).await;
    own.call(&[b"GET", b"key1"]).await;
    own.call(&[
        b"EVAL",
        b"return redis.call('set', KEYS[1], '2')",
        b"1",
        b"key1",
    ])
    .await;
    assert_eq!(own.call(&[b"GET", b"key1"]).await, b"$1\r\n2\r\n");

    let mut optin = kg.raw().await;
    resp3_tracking(&mut optin, &[b"OPTIN"]).await;
    optin.call(&[b"CLIENT", b"CACHING", b"YES"]).await;
    let info = text(optin.call(&[b"CLIENT", b"TRACKINGINFO"]).await);
    assert!(
        info.contains("~3\r\n$2\r\non\r\n$5\r\noptin\r\n$11\r\ncaching-yes\r\n"),
        "{info}"
    );
    let mut bcast = kg.raw().await;
    resp3_tracking(&mut bcast, &[b"BCAST"]).await;
    let info = text(bcast.call(&[b"CLIENT", b"TRACKINGINFO"]).await);
    assert!(
        info.ends_with("$8\r\nprefixes\r\n*1\r\n$0\r\n\r\n"),
        "{info}"
    );
}

/// A client blocked forever on a key that others keep writing: its BCAST invalidations of that
/// key wait for the blocked command's reply (as Redis sends them after it), but no more than
/// 1024 of them: past that the oldest go at once, so keygate holds a bounded number for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_waiting_for_a_blocked_reply_are_bounded() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut writer = kg.raw().await;
    let mut blocked = kg.raw().await;
    resp3_tracking(&mut blocked, &[b"BCAST"]).await;
    blocked
        .send(b"*3\r\n$5\r\nBLPOP\r\n$1\r\nk\r\n$1\r\n0\r\n")
        .await;
    // The BLPOP is in: another client's LPUSH would now be taken by it.
    assert_eq!(writer.call(&[b"PING"]).await, b"+PONG\r\n");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let writes = 3000;
    for i in 0..writes {
        let value = i.to_string();
        assert_eq!(
            writer.call(&[b"SET", b"k", value.as_bytes()]).await,
            b"+OK\r\n"
        );
    }
    for _ in 0..writes - 1024 {
        assert_eq!(blocked.reply().await.unwrap(), invalidate(&["k"]));
    }
    let more = tokio::time::timeout(std::time::Duration::from_millis(300), blocked.reply()).await;
    assert!(
        more.is_err(),
        "only 1024 wait: {:?}",
        more.map(|r| r.map(text))
    );
    // Unblocked: its reply, and every invalidation that waited.
    writer.call(&[b"DEL", b"k"]).await;
    writer.call(&[b"LPUSH", b"k", b"v"]).await;
    let mut invalidations = writes - 1024;
    loop {
        let frame = blocked.reply().await.unwrap();
        if frame == invalidate(&["k"]) {
            invalidations += 1;
        } else {
            assert_eq!(text(frame), "*2\r\n$1\r\nk\r\n$1\r\nv\r\n");
            break;
        }
    }
    while invalidations < writes + 1 {
        assert_eq!(blocked.reply().await.unwrap(), invalidate(&["k"]));
        invalidations += 1;
    }
}
