//! No client, tenant or backend can hurt another: each test plays the hostile tenant, the client
//! that never reads, the flood of connections or the misbehaving server, and checks that
//! everyone else is unaffected. (Scripted misbehaving backends are in tests/backend.rs.)

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{as_tenant, bulk, Keygate, Raw, Redis};

const TENANTS: &str = "[[tenants]]\nname = \"acme\"\npassword = \"acme-pw\"\nprefix = \"acme:\"\n\
    [[tenants]]\nname = \"globex\"\npassword = \"globex-pw\"\nprefix = \"globex:\"\n";

fn text(reply: Vec<u8>) -> String {
    String::from_utf8_lossy(&reply).into_owned()
}

const EXECABORT: &[u8] = b"-EXECABORT Transaction discarded because of previous errors.\r\n";

/// Emulated keyspace commands never run before EXEC: refused at queue time, aborting the
/// transaction, and a DISCARD leaves no trace.
async fn emulations_never_run_early(raw: &mut Raw) {
    assert_eq!(raw.call(&[b"SET", b"keepme", b"1"]).await, b"+OK\r\n");
    for command in [
        &[&b"FLUSHDB"[..]][..],
        &[b"FLUSHALL"],
        &[b"DBSIZE"],
        &[b"RANDOMKEY"],
        &[b"INFO"],
    ] {
        for end in [&b"DISCARD"[..], b"EXEC"] {
            assert_eq!(raw.call(&[b"MULTI"]).await, b"+OK\r\n");
            assert_eq!(raw.call(&[b"SET", b"other", b"x"]).await, b"+QUEUED\r\n");
            let queued = text(raw.call(command).await);
            assert!(
                queued.starts_with("-ERR keygate: '")
                    && queued.contains("cannot run inside MULTI for a tenant"),
                "{command:?}: {queued}"
            );
            let ended = raw.call(&[end]).await;
            match end {
                b"EXEC" => assert_eq!(ended, EXECABORT, "{command:?}"),
                _ => assert_eq!(ended, b"+OK\r\n"),
            }
            assert_eq!(raw.call(&[b"EXISTS", b"keepme"]).await, b":1\r\n");
            assert_eq!(raw.call(&[b"EXISTS", b"other"]).await, b":0\r\n");
        }
    }
}

#[tokio::test]
async fn tenant_transactions_queue_everything_and_run_nothing_early() {
    let backend = Redis::start();
    let kg = Keygate::start_with(&backend.addr(), TENANTS).await;
    let mut acme = as_tenant(&kg, "acme").await;
    emulations_never_run_early(&mut acme).await;
    assert_eq!(common::dbsize(&backend).await, 1, "only acme:keepme");
}

/// Replies inside EXEC lose the tenant's prefix exactly as they do outside a transaction, in
/// RESP2 and RESP3; keygate's own answers (ACL WHOAMI) take their place in EXEC's reply.
#[tokio::test]
async fn replies_inside_exec_are_unprefixed_as_outside() {
    let backend = Redis::start();
    let kg = Keygate::start_with(&backend.addr(), TENANTS).await;
    for resp3 in [false, true] {
        let mut acme = as_tenant(&kg, "acme").await;
        if resp3 {
            assert_eq!(acme.call(&[b"HELLO", b"3"]).await[0], b'%');
        }
        assert_eq!(acme.call(&[b"FLUSHDB"]).await, b"+OK\r\n");
        let script: &[&[&[u8]]] = &[
            &[b"SET", b"canary", b"1"],
            &[b"RPUSH", b"q", b"x"],
            &[b"KEYS", b"*"],
            &[b"SCAN", b"0", b"COUNT", b"100"],
            &[b"ACL", b"WHOAMI"],
            &[b"BLPOP", b"q", b"0"],
            &[b"LMPOP", b"1", b"q", b"LEFT"],
            &[b"GET", b"canary"],
        ];
        // Outside a transaction (on a copy of the data), then inside one.
        let mut outside = Vec::new();
        for args in script {
            outside.push(acme.call(args).await);
        }
        assert_eq!(acme.call(&[b"FLUSHDB"]).await, b"+OK\r\n");
        assert_eq!(acme.call(&[b"MULTI"]).await, b"+OK\r\n");
        for args in script {
            assert_eq!(acme.call(args).await, b"+QUEUED\r\n", "{args:?}");
        }
        let exec = acme.call(&[b"EXEC"]).await;
        let expected = [
            format!("*{}\r\n", script.len()).into_bytes(),
            outside.concat(),
        ]
        .concat();
        assert_eq!(text(exec), text(expected), "resp3 = {resp3}");
        let all = text(acme.call(&[b"KEYS", b"*"]).await);
        assert!(!all.contains("acme:"), "{all}");
    }
    // A WATCHing client's commands run on its pinned connection: unprefixed too.
    let mut acme = as_tenant(&kg, "acme").await;
    assert_eq!(acme.call(&[b"WATCH", b"canary"]).await, b"+OK\r\n");
    assert_eq!(
        acme.call(&[b"KEYS", b"canary"]).await,
        [b"*1\r\n".to_vec(), bulk("canary")].concat()
    );
    assert_eq!(acme.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(acme.call(&[b"KEYS", b"can*"]).await, b"+QUEUED\r\n");
    assert_eq!(
        acme.call(&[b"EXEC"]).await,
        [b"*1\r\n*1\r\n".to_vec(), bulk("canary")].concat()
    );
    // A transaction aborted by a WATCHed key: nil, as Redis answers.
    let mut other = as_tenant(&kg, "acme").await;
    assert_eq!(acme.call(&[b"WATCH", b"canary"]).await, b"+OK\r\n");
    assert_eq!(other.call(&[b"SET", b"canary", b"2"]).await, b"+OK\r\n");
    assert_eq!(acme.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(acme.call(&[b"KEYS", b"*"]).await, b"+QUEUED\r\n");
    assert_eq!(acme.call(&[b"ACL", b"WHOAMI"]).await, b"+QUEUED\r\n");
    assert_eq!(acme.call(&[b"EXEC"]).await, b"*-1\r\n");
}

/// A command refused while queueing (CROSSSLOT across shards) aborts the transaction even
/// when nothing was sent to a server yet: EXEC answers EXECABORT, never an empty array.
#[tokio::test]
async fn a_refused_command_aborts_a_transaction_in_sharded_modes() {
    let shards = [Redis::start(), Redis::start()];
    for tenants in ["", TENANTS] {
        // md5 spreads these one-letter keys over both shards (fnv1a_64, the default, hashes
        // them to neighbouring points of the ring: all on one shard).
        let kg = Keygate::start_config(&format!(
            "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"ketama\"\nhash = \"md5\"\n\
             servers = [\"{}\", \"{}\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n{tenants}",
            shards[0].addr(),
            shards[1].addr()
        ))
        .await;
        let mut raw = match tenants {
            "" => kg.raw().await,
            _ => as_tenant(&kg, "acme").await,
        };
        assert_eq!(raw.call(&[b"MULTI"]).await, b"+OK\r\n");
        let keys = text(raw.call(&[b"KEYS", b"*"]).await);
        assert!(keys.starts_with("-CROSSSLOT"), "{keys}");
        assert_eq!(raw.call(&[b"EXEC"]).await, EXECABORT, "tenants: {tenants}");
        // And after a command that was queued on a shard.
        assert_eq!(raw.call(&[b"MULTI"]).await, b"+OK\r\n");
        assert_eq!(raw.call(&[b"SET", b"a", b"1"]).await, b"+QUEUED\r\n");
        // Twelve keys on two shards: all on one would be a 1 in 2048 chance for any two ports.
        let mget: Vec<&[u8]> = std::iter::once(&b"MGET"[..])
            .chain(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"].map(str::as_bytes))
            .collect();
        let reply = text(raw.call(&mget).await);
        assert!(reply.starts_with("-CROSSSLOT"), "{reply}");
        assert_eq!(raw.call(&[b"EXEC"]).await, EXECABORT);
        assert_eq!(raw.call(&[b"EXISTS", b"a"]).await, b":0\r\n");
    }
}

/// A raw connection to keygate from loopback address `from` (127.0.0.x): another client host.
async fn raw_from(kg: &Keygate, from: [u8; 4]) -> Raw {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind a loopback address");
    Raw::over(socket.connect(kg.addr).await.expect("connect"))
}

/// keygate's /metrics value of `name` (a counter without labels).
async fn metric(kg: &Keygate, name: &str) -> u64 {
    let text = common::http_get(kg.admin, "/metrics").await.1;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Thousands of idle unauthenticated connections from one address (the defaults: 100 may wait
/// to authenticate per address) lock out neither other addresses nor the clients already in.
#[tokio::test]
async fn a_connection_flood_from_one_address_locks_nobody_else_out() {
    let backend = Redis::start();
    let kg = Keygate::start_with(&backend.addr(), TENANTS).await;
    let mut inside = as_tenant(&kg, "acme").await;
    let mut flood = Vec::new();
    for _ in 0..2_000 {
        flood.push(raw_from(&kg, [127, 0, 0, 9]).await);
    }
    // The first 100 wait for their AUTH; every later one is refused with a reason and closed.
    let mut refused = 0;
    for raw in flood.iter_mut().skip(100) {
        let reply = raw.reply().await;
        assert_eq!(
            reply.as_deref(),
            Some(&b"-ERR keygate: too many unauthenticated connections from this address\r\n"[..])
        );
        refused += 1;
    }
    assert_eq!(refused, 1_900);
    assert_eq!(
        metric(
            &kg,
            "keygate_client_connections_unauthenticated_refused_total"
        )
        .await,
        1_900
    );
    // Another address connects and authenticates; the client already in is served.
    let mut neighbour = raw_from(&kg, [127, 0, 0, 10]).await;
    assert_eq!(
        neighbour.call(&[b"AUTH", b"globex", b"globex-pw"]).await,
        b"+OK\r\n"
    );
    assert_eq!(neighbour.call(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_eq!(inside.call(&[b"GET", b"k"]).await, b"$-1\r\n");
    // A connection from the flooding address that authenticates frees its place at once.
    let mut waiting = flood.swap_remove(0);
    assert_eq!(
        waiting.call(&[b"AUTH", b"acme", b"acme-pw"]).await,
        b"+OK\r\n"
    );
    let mut next = raw_from(&kg, [127, 0, 0, 9]).await;
    assert_eq!(
        next.call(&[b"PING"]).await,
        b"-NOAUTH Authentication required.\r\n"
    );
    // Authenticated connections never count: many from one address (a sidecar) are fine.
    let mut many = Vec::new();
    for _ in 0..150 {
        let mut raw = raw_from(&kg, [127, 0, 0, 11]).await;
        assert_eq!(raw.call(&[b"AUTH", b"acme", b"acme-pw"]).await, b"+OK\r\n");
        many.push(raw);
    }
    assert_eq!(many[149].call(&[b"PING"]).await, b"+PONG\r\n");
}

/// At `max_clients`, a new connection takes the place of the oldest one still waiting to
/// authenticate, so idle connections from many addresses cannot keep clients out; clients that
/// authenticated are never displaced.
#[tokio::test]
async fn at_max_clients_unauthenticated_connections_make_room() {
    let backend = Redis::start();
    let kg = Keygate::start_with(
        &backend.addr(),
        &format!("[limits]\nmax_clients = 40\n{TENANTS}"),
    )
    .await;
    let mut authenticated = Vec::new();
    for _ in 0..10 {
        authenticated.push(as_tenant(&kg, "acme").await);
    }
    // 30 idle connections from 30 addresses fill keygate up.
    let mut idle = Vec::new();
    for i in 0..30u8 {
        idle.push(raw_from(&kg, [127, 0, 1, i + 1]).await);
    }
    // The proxy sees all 40 before the next one arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut newcomer = kg.raw().await;
    assert_eq!(
        newcomer.call(&[b"AUTH", b"globex", b"globex-pw"]).await,
        b"+OK\r\n"
    );
    // The oldest idle connection was closed to make room.
    idle[0].expect_closed().await;
    assert_eq!(
        metric(
            &kg,
            "keygate_client_connections_unauthenticated_displaced_total"
        )
        .await,
        1
    );
    for raw in authenticated.iter_mut() {
        assert_eq!(raw.call(&[b"PING"]).await, b"+PONG\r\n");
    }
    // With only authenticated clients left at the limit, a new one is refused as Redis does.
    drop(idle);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut full = Vec::new();
    for _ in 0..29 {
        full.push(as_tenant(&kg, "acme").await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut late = kg.raw().await;
    assert_eq!(
        late.reply().await.as_deref(),
        Some(&b"-ERR max number of clients reached\r\n"[..])
    );
}

/// A tenant's COMMAND GETKEYS names exactly the arguments keygate prefixes (not Redis's own
/// extraction of the unprefixed command), and GETKEYSANDFLAGS gives them the server's flags.
#[tokio::test]
async fn command_getkeys_answers_what_keygate_prefixes() {
    let backend = Redis::start();
    let kg = Keygate::start_with(
        &backend.addr(),
        &TENANTS.replace(
            "prefix = \"acme:\"\n",
            "prefix = \"acme:\"\nallow_scripts = true\n",
        ),
    )
    .await;
    let mut acme = as_tenant(&kg, "acme").await;
    let keys = |names: &[&str]| {
        let mut out = format!("*{}\r\n", names.len()).into_bytes();
        for name in names {
            out.extend(bulk(name));
        }
        out
    };
    let cases: &[(&[&[u8]], Vec<u8>)] = &[
        (&[b"SET", b"a", b"b"], keys(&["a"])),
        (&[b"MSET", b"a", b"1", b"b", b"2"], keys(&["a", "b"])),
        (
            &[b"EVAL", b"return 1", b"2", b"k1", b"k2", b"arg"],
            keys(&["k1", "k2"]),
        ),
        // Keys are optional for scripts: none is an empty list, as from Redis.
        (&[b"EVAL", b"return 1", b"0"], b"*0\r\n".to_vec()),
        (
            &[b"MIGRATE", b"h", b"6379", b"k", b"0", b"5000"],
            b"-NOPERM keygate: 'migrate' reaches outside the tenant's keyspace\r\n".to_vec(),
        ),
        // SORT's BY and GET patterns name keys too, and keygate prefixes them.
        (
            &[
                b"SORT", b"s", b"BY", b"w_*", b"GET", b"#", b"GET", b"o_*", b"LIMIT", b"0", b"5",
                b"STORE", b"dest",
            ],
            keys(&["s", "w_*", "o_*", "dest"]),
        ),
        (
            &[b"PING", b"x"],
            b"-ERR The command has no key arguments\r\n".to_vec(),
        ),
        (
            &[b"KEYS", b"*"],
            b"-ERR The command has no key arguments\r\n".to_vec(),
        ),
        (
            &[b"NOSUCH", b"x"],
            b"-ERR Invalid command specified\r\n".to_vec(),
        ),
        (
            &[b"GET", b"a", b"b"],
            b"-ERR Invalid number of arguments specified for command\r\n".to_vec(),
        ),
        // What keygate refuses to run, it names no keys for.
        (
            &[b"SORT", b"s", b"STORE", b"LIMIT", b"STORE", b"v"],
            b"-ERR more than one STORE option\r\n".to_vec(),
        ),
    ];
    for (command, expected) in cases {
        let args: Vec<&[u8]> = [&b"COMMAND"[..], b"GETKEYS"]
            .into_iter()
            .chain(command.iter().copied())
            .collect();
        assert_eq!(
            text(acme.call(&args).await),
            text(expected.clone()),
            "{command:?}"
        );
    }
    let flags = acme
        .call(&[
            b"COMMAND",
            b"GETKEYSANDFLAGS",
            b"LMOVE",
            b"a",
            b"b",
            b"LEFT",
            b"RIGHT",
        ])
        .await;
    let expected = [
        b"*2\r\n*2\r\n".to_vec(),
        bulk("a"),
        b"*3\r\n+RW\r\n+access\r\n+delete\r\n*2\r\n".to_vec(),
        bulk("b"),
        b"*2\r\n+RW\r\n+insert\r\n".to_vec(),
    ]
    .concat();
    assert_eq!(text(flags), text(expected));
    // Nothing ran: no key was made, no script recorded.
    assert_eq!(common::dbsize(&backend).await, 0);
    assert_eq!(
        text(
            acme.call(&[
                b"EVALSHA",
                b"e0e1f9fabfc9d4800c877a703b823ac0578ff8db",
                b"0"
            ])
            .await
        ),
        "-NOSCRIPT No matching script. Please use EVAL.\r\n"
    );
}

/// A tenant's SLOWLOG ids count its own slow requests only: they tell nothing of others'.
#[tokio::test]
async fn slowlog_ids_are_numbered_per_tenant() {
    let backend = Redis::start();
    let kg = Keygate::start_with(
        &backend.addr(),
        &format!("[slowlog]\nthreshold = \"0s\"\nmax_len = 100\n{TENANTS}"),
    )
    .await;
    let mut acme = as_tenant(&kg, "acme").await;
    let mut globex = as_tenant(&kg, "globex").await;
    for _ in 0..5 {
        globex.call(&[b"SET", b"k", b"v"]).await;
    }
    acme.call(&[b"SET", b"k", b"v"]).await;
    acme.call(&[b"GET", b"k"]).await;
    let log = acme.call(&[b"SLOWLOG", b"GET"]).await;
    let ids: Vec<String> = text(log)
        .split("\r\n*6\r\n:")
        .skip(1)
        .map(|entry| entry.split("\r\n").next().unwrap().to_string())
        .collect();
    // SLOWLOG GET itself is not in yet; AUTH was acme's first request.
    assert_eq!(ids, ["2", "1", "0"], "acme's own numbering, newest first");
}

/// A script that never ends (until killed).
const ENDLESS: &[u8] = b"while true do end";

/// The breaker state of the one server, from /metrics.
async fn breaker_opened(kg: &Keygate) -> String {
    let text = common::http_get(kg.admin, "/metrics").await.1;
    text.lines()
        .find(|l| l.starts_with("keygate_backend_breaker_opened_total"))
        .unwrap()
        .to_string()
}

/// A long script through keygate behaves as on Redis: other clients get `-BUSY` promptly (their
/// requests never wait behind the script on a shared connection), SCRIPT KILL gets through at
/// once, and the breaker stays closed, even while the server answers nobody before its
/// busy-reply-threshold.
#[tokio::test]
async fn a_busy_script_answers_busy_and_can_be_killed() {
    let backend = Redis::start_with(&["--busy-reply-threshold", "300"]);
    let kg = Keygate::start_with(&backend.addr(), "").await;
    let mut runner = kg.raw().await;
    runner
        .send(b"*3\r\n$4\r\nEVAL\r\n$17\r\nwhile true do end\r\n$1\r\n0\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut other = kg.raw().await;
    let started = tokio::time::Instant::now();
    let busy = text(other.call(&[b"GET", b"k"]).await);
    assert!(busy.starts_with("-BUSY"), "{busy}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "-BUSY took {:?}",
        started.elapsed()
    );
    let mut killer = kg.raw().await;
    assert_eq!(killer.call(&[b"SCRIPT", b"KILL"]).await, b"+OK\r\n");
    let killed = text(runner.reply().await.unwrap());
    assert!(killed.contains("killed by user"), "{killed}");
    assert_eq!(other.call(&[b"GET", b"k"]).await, b"$-1\r\n");
    assert!(breaker_opened(&kg).await.ends_with(" 0"));

    // A script longer than request_timeout, before the server's busy-reply-threshold: the
    // server answers nobody for a while; requests time out, the breaker stays closed.
    let backend = Redis::start_with(&["--busy-reply-threshold", "5000"]);
    let kg = Keygate::start_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"standalone\"\nservers = [\"{}\"]\n\
         connect_timeout = \"200ms\"\nrequest_timeout = \"300ms\"\nfailures_to_open = 2\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        backend.addr()
    ))
    .await;
    let mut runner = kg.raw().await;
    let two_seconds =
        b"local function now() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end \
        local s = now() while now() - s < 2000000 do end return 'done'";
    runner.send(&request(&[b"EVAL", two_seconds, b"0"])).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut other = kg.raw().await;
    // (Within the script's two seconds: a timeout, then reconnects whose PING is not answered.)
    for _ in 0..3 {
        let reply = text(other.call(&[b"GET", b"k"]).await);
        assert!(reply.starts_with("-ERR keygate: backend"), "{reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(runner.reply().await.unwrap(), bulk("done"));
    assert!(
        breaker_opened(&kg).await.ends_with(" 0"),
        "{}",
        breaker_opened(&kg).await
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while other.call(&[b"GET", b"k"]).await != b"$-1\r\n" {
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A request encoded as RESP multibulk.
fn request(args: &[&[u8]]) -> Vec<u8> {
    let args: Vec<bytes::Bytes> = args
        .iter()
        .map(|a| bytes::Bytes::copy_from_slice(a))
        .collect();
    let mut out = bytes::BytesMut::new();
    keygate::resp::encode_request(&args, &mut out);
    out.to_vec()
}

/// A tenant may kill a script only while the oldest script in flight, the one the server runs,
/// is its own.
#[tokio::test]
async fn a_tenant_kills_only_its_own_script() {
    let backend = Redis::start_with(&["--busy-reply-threshold", "500"]);
    let scripts = TENANTS
        .replace(
            "prefix = \"acme:\"\n",
            "prefix = \"acme:\"\nallow_scripts = true\n",
        )
        .replace(
            "prefix = \"globex:\"\n",
            "prefix = \"globex:\"\nallow_scripts = true\n",
        );
    let kg = Keygate::start_with(&backend.addr(), &scripts).await;
    let mut acme = as_tenant(&kg, "acme").await;
    let mut acme2 = as_tenant(&kg, "acme").await;
    let mut globex = as_tenant(&kg, "globex").await;
    let mut globex2 = as_tenant(&kg, "globex").await;
    assert_eq!(
        acme2.call(&[b"SCRIPT", b"KILL"]).await,
        b"-NOTBUSY No scripts in execution right now.\r\n"
    );
    acme.send(&request(&[b"EVAL", ENDLESS, b"0"])).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // globex has no script running: it cannot kill acme's.
    assert_eq!(
        globex.call(&[b"SCRIPT", b"KILL"]).await,
        b"-NOTBUSY No scripts in execution right now.\r\n"
    );
    // A script of globex's waits behind acme's: globex still may not kill, acme's is oldest.
    globex2.send(&request(&[b"EVAL", b"return 1", b"0"])).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = text(globex.call(&[b"SCRIPT", b"KILL"]).await);
    assert!(
        refused.starts_with("-ERR keygate: another client's script"),
        "{refused}"
    );
    // Past the server's busy-reply-threshold, other commands get -BUSY at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = text(globex.call(&[b"GET", b"k"]).await);
    assert!(busy.starts_with("-BUSY"), "{busy}");
    assert_eq!(acme2.call(&[b"SCRIPT", b"KILL"]).await, b"+OK\r\n");
    let killed = text(acme.reply().await.unwrap());
    assert!(killed.contains("killed by user"), "{killed}");
    assert_eq!(globex2.reply().await.unwrap(), b":1\r\n");
    assert_eq!(globex.call(&[b"GET", b"k"]).await, b"$-1\r\n");
}

/// With `upstream.tenant_acl = "scripts"` a tenant's scripts run as a backend ACL user confined
/// to its prefix: whatever a script's code names, the server refuses other tenants' keys and
/// channels and commands over the whole keyspace. keygate creates the users it manages; an
/// operator's own user works too.
#[tokio::test]
async fn tenant_scripts_run_as_a_confined_backend_user() {
    let backend = Redis::start();
    common::redis_cli(
        backend.port,
        &[
            "ACL",
            "SETUSER",
            "globex-app",
            "on",
            ">globex-secret",
            "~globex:*",
            "&globex:*",
            "+@all",
        ],
    );
    let kg = Keygate::start_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"standalone\"\nservers = [\"{}\"]\n\
         tenant_acl = \"scripts\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[tenants]]\nname = \"acme\"\npassword = \"acme-pw\"\nprefix = \"acme:\"\nallow_scripts = true\n\
         [[tenants]]\nname = \"globex\"\npassword = \"globex-pw\"\nprefix = \"globex:\"\nallow_scripts = true\n\
         backend_user = \"globex-app\"\nbackend_password = \"globex-secret\"\n",
        backend.addr()
    ))
    .await;
    let mut acme = as_tenant(&kg, "acme").await;
    let mut globex = as_tenant(&kg, "globex").await;
    assert_eq!(
        globex.call(&[b"SET", b"k", b"globex-secret-value"]).await,
        b"+OK\r\n"
    );
    assert_eq!(acme.call(&[b"SET", b"k", b"acme-value"]).await, b"+OK\r\n");
    // Its own keys, by KEYS[] (prefixed by keygate) or by their real name.
    assert_eq!(
        eval(&mut acme, ("return redis.call('GET', KEYS[1])", &["k"])).await,
        text(bulk("acme-value"))
    );
    assert_eq!(
        eval(
            &mut acme,
            ("return redis.call('SET', 'acme:own', 'x')", &[])
        )
        .await,
        "+OK\r\n"
    );
    // Everything outside its prefix is refused by the server itself.
    for body in [
        "return redis.call('GET', 'globex:k')",
        "return redis.call('SET', 'globex:k', 'stolen')",
        "return redis.call('KEYS', '*')",
        "return redis.call('SCAN', '0')",
        "return redis.call('RANDOMKEY')",
        "return redis.call('FLUSHALL')",
        "return redis.call('PUBLISH', 'globex:ch', 'x')",
        "return redis.call('SELECT', '1')",
    ] {
        let reply = eval(&mut acme, (body, &[])).await;
        // (Redis 7.0's texts, then Redis 8 / Valkey 9's "ACL failure in script: ...".)
        let refused = [
            "can't access",
            "can't run",
            "can't publish",
            "NOPERM",
            "ACL failure",
        ]
        .iter()
        .any(|why| reply.contains(why));
        assert!(reply.starts_with('-') && refused, "{body}: {reply}");
    }
    // The operator's own user for globex: the same confinement.
    let reply = eval(&mut globex, ("return redis.call('GET', 'acme:k')", &[])).await;
    assert!(reply.starts_with('-'), "{reply}");
    assert_eq!(
        eval(&mut globex, ("return redis.call('GET', KEYS[1])", &["k"])).await,
        text(bulk("globex-secret-value"))
    );
    // Nothing of globex's changed; keygate made the user it manages, and only that one.
    assert_eq!(
        globex.call(&[b"GET", b"k"]).await,
        bulk("globex-secret-value")
    );
    let users = common::redis_cli(backend.port, &["ACL", "USERS"]);
    assert!(users.contains("keygate:acme"), "{users}");
    assert!(!users.contains("keygate:globex"), "{users}");
    // Inside a transaction a script would not run as the tenant's user: refused.
    assert_eq!(acme.call(&[b"MULTI"]).await, b"+OK\r\n");
    let refused = text(acme.call(&[b"EVAL", b"return 1", b"0"]).await);
    assert!(
        refused.contains("cannot run inside a transaction"),
        "{refused}"
    );
    assert_eq!(acme.call(&[b"EXEC"]).await, EXECABORT);
}

/// EVAL `body` with `keys` on `raw`; the reply as text.
async fn eval(raw: &mut Raw, (body, keys): (&str, &[&str])) -> String {
    let numkeys = keys.len().to_string();
    let mut args: Vec<&[u8]> = vec![b"EVAL", body.as_bytes(), numkeys.as_bytes()];
    args.extend(keys.iter().map(|k| k.as_bytes()));
    text(raw.call(&args).await)
}

/// `isolation = "database"`: a tenant with a database of its own gets the server's own DBSIZE,
/// RANDOMKEY and FLUSHDB, costing its keys at most, whatever other tenants hold; they queue in
/// transactions like any command. (Timings are printed, not asserted.)
#[tokio::test]
async fn a_tenant_with_a_database_of_its_own_pays_for_its_keys_only() {
    let backend = Redis::start_with(&["--enable-debug-command", "yes"]);
    // 200 000 keys of others, in database 0.
    common::redis_cli(
        backend.port,
        &["DEBUG", "POPULATE", "200000", "globex:other"],
    );
    let kg = Keygate::start_with(
        &backend.addr(),
        &TENANTS.replace(
            "prefix = \"acme:\"\n",
            "prefix = \"acme:\"\nisolation = \"database\"\ndatabase = 3\n",
        ),
    )
    .await;
    let mut acme = as_tenant(&kg, "acme").await;
    let mut globex = as_tenant(&kg, "globex").await;
    for i in 0..10 {
        let key = format!("k{i}");
        assert_eq!(acme.call(&[b"SET", key.as_bytes(), b"v"]).await, b"+OK\r\n");
    }
    let timed = |what: &'static str| {
        let started = std::time::Instant::now();
        move || println!("{what}: {:?}", started.elapsed())
    };
    let done = timed("DBSIZE, tenant with its own database (10 keys)");
    assert_eq!(acme.call(&[b"DBSIZE"]).await, b":10\r\n");
    done();
    let done = timed("DBSIZE, tenant by prefix (200 000 keys of its own)");
    assert_eq!(globex.call(&[b"DBSIZE"]).await, b":200000\r\n");
    done();
    let key = text(acme.call(&[b"RANDOMKEY"]).await);
    assert!(key.starts_with("$2\r\nk"), "{key}");
    // Its keys live in its database, under its prefix.
    assert_eq!(
        common::redis_cli(backend.port, &["-n", "3", "DBSIZE"]).trim(),
        "10"
    );
    assert_eq!(
        common::redis_cli(backend.port, &["-n", "3", "EXISTS", "acme:k1"]).trim(),
        "1"
    );
    // SELECT 0 is its own database; others are refused.
    assert_eq!(acme.call(&[b"SELECT", b"0"]).await, b"+OK\r\n");
    assert_eq!(acme.call(&[b"GET", b"k1"]).await, bulk("v"));
    assert!(text(acme.call(&[b"SELECT", b"1"]).await).starts_with("-ERR"));
    // In a transaction they queue and run at EXEC.
    assert_eq!(acme.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(acme.call(&[b"DBSIZE"]).await, b"+QUEUED\r\n");
    assert_eq!(acme.call(&[b"FLUSHDB"]).await, b"+QUEUED\r\n");
    assert_eq!(acme.call(&[b"RANDOMKEY"]).await, b"+QUEUED\r\n");
    assert_eq!(acme.call(&[b"EXEC"]).await, b"*3\r\n:10\r\n+OK\r\n$-1\r\n");
    let done = timed("FLUSHALL, tenant with its own database");
    assert_eq!(acme.call(&[b"FLUSHALL"]).await, b"+OK\r\n");
    done();
    assert_eq!(acme.call(&[b"DBSIZE"]).await, b":0\r\n");
    // Nobody else's keys were touched.
    assert_eq!(common::dbsize(&backend).await, 200_000);
    assert_eq!(globex.call(&[b"DBSIZE"]).await, b":200000\r\n");
}

/// Over a Redis Cluster with a replica per primary and `read_from = "replica"`, keygate creates a
/// tenant's managed user on each node its scripts reach, replicas included (ACLs are not
/// replicated), and every node refuses what is outside the tenant's prefix.
#[tokio::test]
async fn tenant_users_are_made_on_every_node_a_script_reaches() {
    let cluster = common::Cluster::start_replicated(3, 1);
    let kg = Keygate::start_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"cluster\"\nservers = [\"{}\"]\n\
         tenant_acl = \"scripts\"\nread_from = \"replica\"\nrefresh_interval = \"300ms\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [[tenants]]\nname = \"acme\"\npassword = \"acme-pw\"\nprefix = \"acme:\"\nallow_scripts = true\n",
        cluster.nodes[0].addr()
    ))
    .await;
    // The replicas join the slot map after the cluster is made: wait until all are connected.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = common::http_get(kg.admin, "/metrics").await.1;
        let connected = |n: &Redis| {
            metrics.contains(&format!(
                "keygate_backend_connections{{server=\"{}\"}} 1",
                n.addr()
            ))
        };
        if cluster.nodes.iter().all(connected) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicas never connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut acme = as_tenant(&kg, "acme").await;
    // Keys over every slot range: writes reach every primary, read-only scripts every replica.
    for i in 0..30 {
        let key = format!("k{i}");
        let wrote = eval(
            &mut acme,
            ("return redis.call('SET', KEYS[1], 'v')", &[&key]),
        )
        .await;
        assert_eq!(wrote, "+OK\r\n", "{key}");
        let read = text(
            acme.call(&[
                b"EVAL_RO",
                b"return redis.call('GET', KEYS[1])",
                b"1",
                key.as_bytes(),
            ])
            .await,
        );
        assert_eq!(read, text(bulk("v")), "{key}");
        let stolen = eval(
            &mut acme,
            ("return redis.call('GET', 'globex:' .. KEYS[1])", &[&key]),
        )
        .await;
        assert!(
            stolen.contains("can't access") || stolen.contains("ACL failure"),
            "{stolen}"
        );
    }
    // Every node that ran a script of acme's has its user, replicas among them.
    let mut replicas_reached = 0;
    for node in &cluster.nodes {
        let stats = common::redis_cli(node.port, &["INFO", "commandstats"]);
        if !stats.contains("cmdstat_eval") {
            continue;
        }
        let users = common::redis_cli(node.port, &["ACL", "USERS"]);
        assert!(
            users.contains("keygate:acme"),
            "node {}: {users}",
            node.port
        );
        if common::redis_cli(node.port, &["ROLE"]).starts_with("slave") {
            replicas_reached += 1;
        }
    }
    assert!(replicas_reached > 0, "no replica ran a script");
}
