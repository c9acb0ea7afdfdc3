//! Today's servers behind keygate: the commands a server has beyond keygate's built-in table
//! (Redis 7.0.15's) are learned from it (`COMMAND`) and forwarded, routed and prefixed by its
//! own key specifications. Run against whatever `redis-server` is first on PATH:
//! scripts/test.sh runs this file against Debian's Redis 7.0.15, Redis 8.2.3 and Valkey 9.1.2,
//! and each test checks what that server offers, byte for byte against the server itself.

mod common;

use std::time::{Duration, Instant};

use common::{as_tenant, http_get, Cluster, Keygate, Raw, Redis};

/// The server as "redis 7.0.15" or "valkey 9.1.2".
async fn server_name(redis: &Redis) -> String {
    common::server_name(redis.addr().parse().unwrap(), b"").await
}

/// `HSETEX key EX 100 FIELDS 1 f v` through `raw`: one field set.
async fn hsetex(raw: &mut Raw, key: &str) -> Vec<u8> {
    raw.call(&[
        b"HSETEX",
        key.as_bytes(),
        b"EX",
        b"100",
        b"FIELDS",
        b"1",
        b"f",
        b"v",
    ])
    .await
}

/// Commands learned: the gauge in /metrics.
async fn learned(kg: &Keygate) -> usize {
    let (_, metrics) = http_get(kg.admin, "/metrics").await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("keygate_learned_commands "))
        .unwrap()
        .parse()
        .unwrap()
}

/// Wait until keygate has learned the servers' commands: some for a server newer than the
/// built-in table; for Redis 7.0 (all of whose commands are built in), none, after a moment.
async fn wait_learned(kg: &Keygate, server: &str) -> usize {
    if server.starts_with("redis 7.0") {
        tokio::time::sleep(Duration::from_millis(500)).await;
        return learned(kg).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = learned(kg).await;
        if n > 0 {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "{server}: nothing learned in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn line(text: &str) -> Vec<&[u8]> {
    text.split(' ').map(str::as_bytes).collect()
}

/// Newer servers' commands, each valid on the servers that have it: hash field expiration (7.4,
/// Valkey 9), vector sets (Redis 8), stream XACKDEL (8.2), DELIFEQ and MSETEX (Valkey 9),
/// WAITAOF (7.2). Where a server lacks one, its own "unknown command" error is the reply.
const NEWER: &[&str] = &[
    "HSET h f1 v1 f2 v2",
    "HEXPIRE h 100 FIELDS 2 f1 nosuch",
    "HTTL h FIELDS 1 f1",
    "HPERSIST h FIELDS 1 f1",
    "HPEXPIRE h 100000 NX FIELDS 1 f2",
    "HEXPIRETIME h FIELDS 1 nosuch",
    "HSETEX h2 EX 100 FIELDS 2 a 1 b 2",
    "HGETEX h2 PERSIST FIELDS 1 a",
    "HGETDEL h2 FIELDS 1 b",
    "HGETALL h2",
    "VADD v VALUES 2 1 0 e1",
    "VADD v VALUES 2 0 1 e2",
    "VCARD v",
    "VDIM v",
    "VISMEMBER v e1",
    "VSIM v ELE e1 COUNT 1",
    "XADD s 1-1 f v",
    "XGROUP CREATE s g 0",
    "XREADGROUP GROUP g c STREAMS s >",
    "XACKDEL s g IDS 1 1-1",
    "SET k v",
    "DELIFEQ k nope",
    "DELIFEQ k v",
    "MSETEX 2 a 1 b 2 EX 100",
    "MGET a b",
    "WAITAOF 0 0 0",
    "HSETEX",
    "HGETEX h2 FIELDS x a",
];

/// Every newer command through keygate answers as the server itself answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_commands_pass_through_as_the_server_answers() {
    let redis = Redis::start();
    let server = server_name(&redis).await;
    let kg = Keygate::start(&redis.addr()).await;
    let learned = wait_learned(&kg, &server).await;
    let mut through = kg.raw().await;
    let mut got = Vec::new();
    for text in NEWER {
        got.push(String::from_utf8(through.call(&line(text)).await).unwrap());
    }
    let mut direct = Raw::connect(redis.addr().parse().unwrap()).await;
    direct.call(&[b"FLUSHALL"]).await;
    for (text, got) in NEWER.iter().zip(&got) {
        let want = String::from_utf8(direct.call(&line(text)).await).unwrap();
        assert_eq!(got, &want, "{server}: {text}");
    }
    // And they did run where the server has them (not refused by both alike).
    let ran = |text: &str| {
        let at = NEWER.iter().position(|t| *t == text).unwrap();
        !got[at].starts_with('-')
    };
    let newer_redis = server.starts_with("redis 8");
    let valkey = server.starts_with("valkey");
    assert_eq!(
        ran("HSETEX h2 EX 100 FIELDS 2 a 1 b 2"),
        newer_redis || valkey,
        "{server}"
    );
    assert_eq!(ran("VCARD v"), newer_redis, "{server}");
    assert_eq!(ran("DELIFEQ k v"), valkey, "{server}");
    assert_eq!(
        learned > 0,
        newer_redis || valkey,
        "{server}: {learned} learned"
    );
    // HELLO names the server's own version.
    let hello = String::from_utf8(through.call(&[b"HELLO", b"2"]).await).unwrap();
    let version = server.split(' ').nth(1).unwrap();
    assert!(
        hello.contains(&format!(
            "$7\r\nversion\r\n${}\r\n{version}\r\n",
            version.len()
        )),
        "{hello}"
    );
    kg.stop().await;
}

/// Keys written in the ketama routing test.
const KEYS: usize = 200;

/// In a ketama set, a learned command's key goes where keygate sends the same key's built-in
/// commands: `{tag}h` (HSETEX) and `{tag}s` (SET) always end up on the same server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learned_commands_are_routed_by_their_key_specifications() {
    let shards = [Redis::start(), Redis::start()];
    let server = server_name(&shards[0]).await;
    let kg = Keygate::start_ketama(&shards, "").await;
    if wait_learned(&kg, &server).await == 0 {
        return; // Redis 7.0: nothing beyond the built-in table to route.
    }
    let mut through = kg.raw().await;
    // Tags that differ from their first character: twemproxy's fnv1a_64 spreads keys that
    // differ only at the end poorly (`{t1}` .. `{t59}` can all land on one server).
    let tag = |i: usize| format!("{{{}:t}}", i * 7919);
    for i in 0..KEYS {
        let (h, s) = (format!("{}h", tag(i)), format!("{}s", tag(i)));
        let reply = hsetex(&mut through, &h).await;
        assert_eq!(reply, b":1\r\n", "{server}");
        assert_eq!(
            through.call(&[b"SET", s.as_bytes(), b"v"]).await,
            b"+OK\r\n"
        );
    }
    let mut counts = Vec::new();
    for shard in &shards {
        let mut raw = Raw::connect(shard.addr().parse().unwrap()).await;
        let mut here = 0;
        for i in 0..KEYS {
            let (h, s) = (format!("{}h", tag(i)), format!("{}s", tag(i)));
            let found = raw.call(&[b"EXISTS", h.as_bytes(), s.as_bytes()]).await;
            assert!(
                found == b":0\r\n" || found == b":2\r\n",
                "{server}: {i} split: {found:?}"
            );
            here += usize::from(found == b":2\r\n");
        }
        counts.push(here);
    }
    assert_eq!(counts.iter().sum::<usize>(), KEYS);
    assert!(
        counts.iter().all(|&n| n > 0),
        "both servers hold keys: {counts:?}"
    );
    kg.stop().await;
}

/// In a Redis Cluster, a learned command goes to the node of its key's slot at once: no MOVED
/// is ever needed to get it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learned_commands_reach_the_slots_node_in_a_cluster() {
    let cluster = Cluster::start(3);
    let server = server_name(&cluster.nodes[0]).await;
    let kg = Keygate::start_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"cluster\"\nservers = [\"{}\"]\n\
         connect_timeout = \"300ms\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        cluster.nodes[0].addr()
    ))
    .await;
    kg.wait_ready().await;
    if wait_learned(&kg, &server).await == 0 {
        return;
    }
    let mut through = kg.raw().await;
    for i in 0..100 {
        let key = format!("key:{i}");
        let reply = hsetex(&mut through, &key).await;
        assert_eq!(reply, b":1\r\n", "{server}: {key}");
    }
    let (_, metrics) = http_get(kg.admin, "/metrics").await;
    let moved = metrics
        .lines()
        .find_map(|l| l.strip_prefix("keygate_cluster_redirections_total{kind=\"moved\"} "))
        .unwrap();
    assert_eq!(moved, "0", "{server}");
    kg.stop().await;
}

async fn call(raw: &mut Raw, text: &str) -> String {
    String::from_utf8(raw.call(&line(text)).await).unwrap()
}

const TENANTS: &str = "[[tenants]]\nname = \"acme\"\npassword = \"acme-pw\"\nprefix = \"acme:\"\n";

/// Tenants stay closed by default: a learned command is theirs only when its key
/// specifications place every key, which then gets the prefix; keyless and administrative
/// ones are refused, naming the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_get_learned_commands_only_with_every_key_prefixed() {
    let redis = Redis::start();
    let server = server_name(&redis).await;
    let kg = Keygate::start_with(&redis.addr(), TENANTS).await;
    if wait_learned(&kg, &server).await == 0 {
        return;
    }
    let mut tenant = as_tenant(&kg, "acme").await;
    let mut direct = Raw::connect(redis.addr().parse().unwrap()).await;
    assert_eq!(
        call(&mut tenant, "HSETEX h EX 100 FIELDS 1 f v").await,
        ":1\r\n"
    );
    assert_eq!(
        call(&mut tenant, "HGETEX h PERSIST FIELDS 1 f").await,
        "*1\r\n$1\r\nv\r\n"
    );
    assert_eq!(
        call(&mut direct, "EXISTS acme:h h").await,
        ":1\r\n",
        "{server}"
    );
    assert_eq!(
        call(&mut tenant, "WAITAOF 0 0 0").await,
        "-NOPERM keygate: 'waitaof' acts on the whole server, which tenants share\r\n"
    );
    assert_eq!(
        call(&mut tenant, "SCRIPT SHOW abc").await,
        if server.starts_with("valkey") {
            "-NOPERM keygate: 'script show' names no key keygate could prefix, so it may reach what other tenants share\r\n"
        } else {
            "-NOPERM keygate: 'script' has no subcommand by that name that keygate knows\r\n"
        }
    );
    if server.starts_with("valkey") {
        // A key count keygate follows, and one it cannot.
        assert_eq!(call(&mut tenant, "MSETEX 2 a 1 b 2 EX 100").await, ":1\r\n");
        assert_eq!(
            call(&mut direct, "EXISTS acme:a acme:b a b").await,
            ":2\r\n"
        );
        assert!(call(&mut tenant, "MSETEX x a 1").await.starts_with(
            "-NOPERM keygate: 'msetex' was sent with key arguments keygate cannot find"
        ));
        assert!(call(&mut tenant, "DELIFEQ a 1").await == ":1\r\n");
        assert_eq!(call(&mut direct, "EXISTS acme:a").await, ":0\r\n");
        assert!(call(&mut tenant, "COMMANDLOG GET 1 slow")
            .await
            .starts_with("-NOPERM"));
    } else {
        assert_eq!(call(&mut tenant, "VADD v VALUES 2 1 0 e1").await, ":1\r\n");
        assert_eq!(call(&mut direct, "EXISTS acme:v v").await, ":1\r\n");
    }
    kg.stop().await;
}

/// Policy by ACL category, as Redis operators think: `[policy] deny_categories` for every
/// tenant, `tenants[].deny_categories` for one, over built-in and learned commands alike (their
/// categories as the server reports them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_categories_deny_commands_to_tenants() {
    let redis = Redis::start();
    let server = server_name(&redis).await;
    let kg = Keygate::start_with(
        &redis.addr(),
        "[policy]\ndeny_categories = [\"@scripting\"]\n\
         [[tenants]]\nname = \"acme\"\npassword = \"acme-pw\"\nprefix = \"acme:\"\n\
         allow_scripts = true\ndeny_categories = [\"@dangerous\", \"@hash\"]\n\
         [[tenants]]\nname = \"globex\"\npassword = \"globex-pw\"\nprefix = \"globex:\"\n\
         allow_scripts = true\n",
    )
    .await;
    let learned = wait_learned(&kg, &server).await;
    let mut acme = as_tenant(&kg, "acme").await;
    let mut globex = as_tenant(&kg, "globex").await;
    let denied = |command: &str| {
        format!("-NOPERM keygate: '{command}' is in an ACL category keygate's policy denies\r\n")
    };
    assert_eq!(call(&mut acme, "SET k v").await, "+OK\r\n");
    assert_eq!(call(&mut acme, "KEYS *").await, denied("keys"));
    assert_eq!(call(&mut acme, "FLUSHALL").await, denied("flushall"));
    assert_eq!(call(&mut acme, "HSET h f v").await, denied("hset"));
    assert_eq!(call(&mut acme, "EVAL return(1) 0").await, denied("eval"));
    assert_eq!(call(&mut globex, "EVAL return(1) 0").await, denied("eval"));
    assert_eq!(call(&mut globex, "HSET h f v").await, ":1\r\n");
    assert_eq!(call(&mut globex, "KEYS *").await, "*1\r\n$1\r\nh\r\n");
    if learned > 0 {
        // A learned command's categories are the server's (HSETEX is @hash).
        assert_eq!(
            call(&mut acme, "HSETEX h2 EX 100 FIELDS 1 f v").await,
            denied("hsetex")
        );
        assert_eq!(
            call(&mut globex, "HSETEX h2 EX 100 FIELDS 1 f v").await,
            ":1\r\n"
        );
    }
    kg.stop().await;
}

/// Names in a COMMAND LIST reply.
fn names(reply: &str) -> Vec<String> {
    reply
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with(['*', '$']))
        .map(str::to_ascii_lowercase)
        .collect()
}

/// COMMAND and its listing forms describe what keygate offers this client: the server's own
/// entries, without what keygate refuses, and for a tenant without what its rules refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_describes_what_keygate_offers() {
    let redis = Redis::start();
    let server = server_name(&redis).await;
    let kg = Keygate::start_with(&redis.addr(), "").await;
    let learned = wait_learned(&kg, &server).await;
    let mut through = kg.raw().await;
    let mut direct = Raw::connect(redis.addr().parse().unwrap()).await;
    let listed = names(&call(&mut through, "COMMAND LIST").await);
    for refused in ["sync", "psync", "readonly", "readwrite", "asking"] {
        assert!(
            !listed.iter().any(|n| n == refused),
            "{server}: {refused} listed"
        );
    }
    assert!(listed.iter().any(|n| n == "get"));
    assert_eq!(
        listed.iter().any(|n| n == "hsetex"),
        learned > 0,
        "{server}"
    );
    let count = call(&mut through, "COMMAND COUNT").await;
    assert_eq!(count, format!(":{}\r\n", listed.len()), "{server}");
    let all = names(&call(&mut direct, "COMMAND LIST").await);
    assert!(
        listed.len() < all.len(),
        "{server}: {} of {}",
        listed.len(),
        all.len()
    );
    // INFO: a nil where keygate does not offer the command, the server's own entry otherwise.
    let info = call(&mut through, "COMMAND INFO sync get").await;
    let get = call(&mut direct, "COMMAND INFO get").await;
    assert_eq!(
        info,
        format!("*2\r\n*-1\r\n{}", &get["*1\r\n".len()..]),
        "{server}"
    );
    assert_eq!(
        call(&mut through, "COMMAND DOCS sync").await,
        "*0\r\n",
        "{server}"
    );
    let bare = call(&mut through, "COMMAND").await;
    assert!(
        bare.starts_with(&format!("*{}\r\n", listed.len())),
        "{server}"
    );
    kg.stop().await;

    // A tenant's view: what its rules refuse is not there.
    let kg = Keygate::start_with(&redis.addr(), TENANTS).await;
    wait_learned(&kg, &server).await;
    let mut tenant = as_tenant(&kg, "acme").await;
    let mine = names(&call(&mut tenant, "COMMAND LIST").await);
    for refused in ["config", "debug", "monitor", "sync", "swapdb"] {
        assert!(
            !mine.iter().any(|n| n == refused),
            "{server}: {refused} offered"
        );
    }
    for offered in ["get", "keys", "flushall", "client"] {
        assert!(
            mine.iter().any(|n| n == offered),
            "{server}: {offered} missing"
        );
    }
    assert!(mine.len() < listed.len());
    assert_eq!(
        call(&mut tenant, "COMMAND INFO config").await,
        "*1\r\n*-1\r\n"
    );
    kg.stop().await;
}

/// Servers of different versions behind one keygate: a command is offered only if every
/// primary has it. A ketama set of the server first on PATH and a Valkey 9.1: DELIFEQ (Valkey's
/// own) only when the first is Valkey too, VADD (Redis 8's) never, HSETEX when the first has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_servers_offer_only_what_every_primary_has() {
    let shards = [Redis::start(), Redis::start_from_env("KEYGATE_TEST_VALKEY")];
    let first = server_name(&shards[0]).await;
    assert!(server_name(&shards[1]).await.starts_with("valkey"));
    let kg = Keygate::start_ketama(&shards, "").await;
    let both_have_more = !first.starts_with("redis 7.0");
    let learned = wait_learned(&kg, &first).await;
    assert_eq!(learned > 0, both_have_more, "{first}: {learned}");
    let mut through = kg.raw().await;
    let unknown = |name: &str| format!("-ERR unknown command '{name}', with args beginning with: ");
    let delifeq = call(&mut through, "DELIFEQ {k}a v").await;
    assert_eq!(
        delifeq.starts_with(&unknown("DELIFEQ")),
        !first.starts_with("valkey"),
        "{first}: {delifeq}"
    );
    let vadd = call(&mut through, "VADD {k}v VALUES 2 1 0 e").await;
    assert!(vadd.starts_with(&unknown("VADD")), "{first}: {vadd}");
    let hsetex = call(&mut through, "HSETEX {k}h EX 100 FIELDS 1 f v").await;
    if both_have_more {
        assert_eq!(hsetex, ":1\r\n", "{first}");
    } else {
        assert!(hsetex.starts_with(&unknown("HSETEX")), "{first}: {hsetex}");
    }
    kg.stop().await;
}

/// CLIENT's newer subcommands, per client: CAPA (Valkey) accepted where the server has it,
/// NO-TOUCH refused where the server has it (it would act on the shared connections); where
/// the server lacks one, its own "unknown subcommand".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_client_subcommands_are_kept_per_client_or_refused() {
    let redis = Redis::start();
    let server = server_name(&redis).await;
    let kg = Keygate::start(&redis.addr()).await;
    let learned = wait_learned(&kg, &server).await;
    let mut through = kg.raw().await;
    let mut direct = Raw::connect(redis.addr().parse().unwrap()).await;
    let capa = call(&mut through, "CLIENT CAPA redirect").await;
    assert_eq!(
        capa,
        call(&mut direct, "CLIENT CAPA redirect").await,
        "{server}"
    );
    let touch = call(&mut through, "CLIENT NO-TOUCH ON").await;
    if learned > 0 {
        assert_eq!(
            touch,
            "-ERR 'CLIENT NO-TOUCH' is not available through keygate: it would act on keygate's backend connections, which are shared by many clients, not on yours\r\n"
        );
    } else {
        assert_eq!(
            touch,
            call(&mut direct, "CLIENT NO-TOUCH ON").await,
            "{server}"
        );
    }
    kg.stop().await;
}
