//! Exactly Redis: what Redis's own test suite and redis-py's found keygate doing differently
//! (scripts/redis-suites.sh runs both). Each test sends the same bytes to keygate and to the
//! Redis behind it and compares the replies byte for byte, or checks the one thing that matters
//! (no hang, no lie, no ghost subscriber).

mod common;

use std::time::{Duration, Instant};

use common::{as_tenant, http_get, Keygate, Raw, Redis};

const TENANTS: &str = "[[tenants]]\nname = \"acme\"\npassword = \"acme-pw\"\nprefix = \"acme:\"\n\
    allow_scripts = true\n";

fn text(reply: Vec<u8>) -> String {
    String::from_utf8_lossy(&reply).into_owned()
}

/// Send `bytes` to both and read for `wait`: everything each sent back must be the same.
async fn same_bytes(through: &mut Raw, direct: &mut Raw, bytes: &[u8], wait: Duration) {
    through.send(bytes).await;
    direct.send(bytes).await;
    let (a, b) = (drain(through, wait).await, drain(direct, wait).await);
    assert_eq!(
        text(a),
        text(b),
        "keygate vs Redis for {:?}",
        String::from_utf8_lossy(bytes)
    );
}

/// Every reply that arrives within `wait`.
async fn drain(raw: &mut Raw, wait: Duration) -> Vec<u8> {
    let mut all = Vec::new();
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, raw.reply()).await {
            Ok(Some(reply)) => all.extend_from_slice(&reply),
            _ => return all,
        }
    }
}

/// A subcommand's table name sent as the command (`CLIENT|ID x`) is an unknown command, as in
/// Redis, in pass-through and tenant mode; it once reached an `unreachable!` and killed the
/// session (and left `keygate_client_connections` one too high).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subcommand_names_sent_as_commands_are_unknown() {
    let redis = Redis::start();
    for tenants in ["", TENANTS] {
        let kg = Keygate::start_with(&redis.addr(), tenants).await;
        let mut through = match tenants {
            "" => kg.raw().await,
            _ => as_tenant(&kg, "acme").await,
        };
        let mut direct = Raw::connect(redis.addr().parse().unwrap()).await;
        for line in [
            "CLIENT|ID x",
            "CLIENT|LIST x",
            "CLIENT|GETNAME x",
            "SLOWLOG|GET x",
            "SLOWLOG|LEN x",
            "CONFIG|GET GET_XX",
            "OBJECT|ENCODING k",
            "XINFO|STREAM",
            "client|id",
        ] {
            let request = format!("{line}\r\n");
            same_bytes(
                &mut through,
                &mut direct,
                request.as_bytes(),
                Duration::from_millis(100),
            )
            .await;
        }
        assert_eq!(through.call(&[b"PING"]).await, b"+PONG\r\n");
        drop(through);
        // Every connection is counted out again.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, metrics) = http_get(kg.admin, "/metrics").await;
            if metrics.contains("\nkeygate_client_connections 0\n") {
                assert!(metrics.contains("\nkeygate_session_panics_total 0\n"));
                break;
            }
            assert!(Instant::now() < deadline, "{metrics}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// CLIENT REPLY: ON is answered right after SKIP; with OFF or SKIP, (un)subscribe confirmations
/// still arrive (Redis 7 sends them), in RESP2 and RESP3. Clients waiting for them used to hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reply_modes_never_swallow_what_redis_sends() {
    let redis = Redis::start();
    let kg = Keygate::start(&redis.addr()).await;
    let wait = Duration::from_millis(300);
    for hello in ["HELLO 2\r\n", "HELLO 3\r\n"] {
        for script in [
            "CLIENT REPLY SKIP\r\nCLIENT REPLY ON\r\nPING\r\n",
            "CLIENT REPLY SKIP\r\nPING\r\nPING\r\n",
            "CLIENT REPLY OFF\r\nSET k v\r\nSUBSCRIBE a b\r\nPSUBSCRIBE p*\r\nUNSUBSCRIBE\r\nPUNSUBSCRIBE\r\nCLIENT REPLY ON\r\nPING\r\n",
            "CLIENT REPLY SKIP\r\nSUBSCRIBE a\r\nUNSUBSCRIBE a\r\nPING\r\n",
            "CLIENT REPLY OFF\r\nUNSUBSCRIBE x\r\nCLIENT REPLY ON\r\n",
        ] {
            let mut through = kg.raw().await;
            let mut direct = Raw::connect(redis.addr().parse().unwrap()).await;
            // HELLO's reply describes the server: compared by its first byte only.
            through.send(hello.as_bytes()).await;
            direct.send(hello.as_bytes()).await;
            let (a, b) = (drain(&mut through, wait).await, drain(&mut direct, wait).await);
            assert_eq!(a.first(), b.first());
            same_bytes(&mut through, &mut direct, script.as_bytes(), wait).await;
        }
    }
}

/// A script running longer than `request_timeout` gets its reply (scripts have no timeout);
/// any other command that does gets an error that says it may have run (it did), and the
/// client's next command is served at once: a slow command is not a broken server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_command_is_never_reported_as_not_run() {
    let redis = Redis::start_with(&["--enable-debug-command", "yes"]);
    let kg = Keygate::start(&redis.addr()).await; // request_timeout 1s
    let mut raw = kg.raw().await;
    let reply = text(
        raw.call(&[
            b"EVAL",
            b"local t = redis.call('time') local start = t[1] * 1e6 + t[2] \
              repeat t = redis.call('time') until t[1] * 1e6 + t[2] - start > 1500000 \
              redis.call('set', KEYS[1], 'done') return 1",
            b"1",
            b"k",
        ])
        .await,
    );
    assert_eq!(reply, ":1\r\n");
    let reply = text(raw.call(&[b"DEBUG", b"SLEEP", b"1.5"]).await);
    assert!(
        reply.contains("did not answer within 1s")
            && reply.contains("the command was sent and may have run"),
        "{reply}"
    );
    // The next command is served (after the server wakes), not refused as unavailable.
    let started = Instant::now();
    assert_eq!(raw.call(&[b"GET", b"k"]).await, b"$4\r\ndone\r\n");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// Subscribers that disconnect are gone from the server before keygate forwards a PUBLISH (or
/// PUBSUB NUMSUB) that would count them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_subscribers_are_never_counted() {
    let redis = Redis::start();
    let kg = Keygate::start(&redis.addr()).await;
    let mut publisher = kg.raw().await;
    let mut counted = 0;
    for round in 0..50 {
        let mut a = kg.raw().await;
        let mut b = kg.raw().await;
        assert!(text(a.call(&[b"SUBSCRIBE", b"ch"]).await).contains("subscribe"));
        assert!(text(b.call(&[b"PSUBSCRIBE", b"c*"]).await).contains("psubscribe"));
        drop(a);
        drop(b);
        if std::env::var("FIDELITY_SLEEP").is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let reply = match round % 2 {
            0 => publisher.call(&[b"PUBLISH", b"ch", b"x"]).await,
            _ => publisher.call(&[b"PUBSUB", b"NUMSUB", b"ch"]).await,
        };
        if reply != b":0\r\n" && reply != b"*2\r\n$2\r\nch\r\n:0\r\n" {
            counted += 1;
        }
    }
    assert_eq!(counted, 0, "closed subscribers counted in {counted} of 50");
}

/// Error texts keygate writes itself are Redis's: SLOWLOG GET's count, HELLO's protocol, and a
/// tenant's malformed numkeys (keygate checks them before it prefixes keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_texts_are_redis_texts() {
    let redis = Redis::start();
    let mut direct = Raw::connect(redis.addr().parse().unwrap()).await;
    let wait = Duration::from_millis(100);
    let kg = Keygate::start(&redis.addr()).await;
    let mut through = kg.raw().await;
    for line in ["SLOWLOG GET -2", "SLOWLOG GET abc", "HELLO 4", "HELLO x"] {
        let request = format!("{line}\r\n");
        same_bytes(&mut through, &mut direct, request.as_bytes(), wait).await;
    }
    let kg = Keygate::start_with(&redis.addr(), TENANTS).await;
    let mut tenant = as_tenant(&kg, "acme").await;
    assert_eq!(
        text(direct.call(&[b"FUNCTION", b"LOAD", b"#!lua name=fidelity\nredis.register_function('f', function(k, a) return 1 end)"]).await),
        "$8\r\nfidelity\r\n"
    );
    for line in [
        "SINTERCARD 0 a",
        "SINTERCARD x a",
        "SINTERCARD 3 a",
        "ZINTERCARD 0 a",
        "ZINTERCARD x a",
        "ZINTERCARD 3 a",
        "ZUNION 0 a",
        "ZINTER x a",
        "ZDIFF 3 a",
        "ZUNIONSTORE d 0 a",
        "ZINTERSTORE d 3 a",
        "ZDIFFSTORE d x a",
        "LMPOP 0 a LEFT",
        "LMPOP x a LEFT",
        "LMPOP 5 a LEFT",
        "ZMPOP 2 a MIN",
        "EVAL return 3 a",
        "EVAL return x a",
        "EVAL return -1 a",
        "EVALSHA e0e1f9fabfc9d4800c877a703b823ac0578ff8db 3 a",
        "FCALL f 3 a",
        "FCALL f x a",
        "FCALL f -1 a",
        "FCALL_RO f 2",
    ] {
        let request = format!("{line}\r\n");
        same_bytes(&mut tenant, &mut direct, request.as_bytes(), wait).await;
    }
}

/// SELECT while WATCHing or inside MULTI, as in Redis: on the transaction's connection, and the
/// client's database follows once the server ran it (WATCH remembers the database of its key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_inside_transactions_as_redis() {
    let (behind, beside) = (Redis::start(), Redis::start());
    let kg = Keygate::start(&behind.addr()).await;
    let mut through = kg.raw().await;
    let mut direct = Raw::connect(beside.addr().parse().unwrap()).await;
    let script = [
        "SELECT 5",
        "SET x 30",
        "WATCH x",
        "SELECT 1",
        "SET x 10",
        "SELECT 5",
        "MULTI",
        "PING",
        "EXEC",
        "GET x",
        "MULTI",
        "SELECT 2",
        "SET y 1",
        "EXEC",
        "GET y",
        "SELECT 0",
        "GET y",
        "WATCH x",
        "SELECT 7",
        "UNWATCH",
        "SET z 1",
        "SELECT 0",
        "GET z",
        "SELECT 7",
        "GET z",
        "MULTI",
        "SELECT abc",
        "EXEC",
        "SELECT 3",
        "MULTI",
        "SELECT 99999",
        "SET w 1",
        "EXEC",
        "GET w",
    ];
    for line in script {
        let request = format!("{line}\r\n");
        same_bytes(
            &mut through,
            &mut direct,
            request.as_bytes(),
            Duration::from_millis(50),
        )
        .await;
    }
}

/// A transaction's connection that breaks is never reopened: what the client queues after that
/// fails, EXEC answers EXECABORT, and nothing of the transaction runs outside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_transaction_never_runs_outside_multi() {
    let redis = Redis::start();
    let kg = Keygate::start(&redis.addr()).await;
    let mut raw = kg.raw().await;
    assert_eq!(raw.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(raw.call(&[b"SET", b"a", b"1"]).await, b"+QUEUED\r\n");
    // Every connection keygate has is killed, the pinned one among them.
    let killed = common::redis_cli(redis.port, &["CLIENT", "KILL", "TYPE", "normal"]);
    assert!(killed.trim().parse::<u32>().unwrap() >= 1, "{killed}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reply = text(raw.call(&[b"SET", b"b", b"2"]).await);
    assert!(reply.starts_with("-ERR keygate:"), "{reply}");
    assert_eq!(
        raw.call(&[b"EXEC"]).await,
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_eq!(raw.call(&[b"EXISTS", b"a", b"b"]).await, b":0\r\n");
}

/// CLIENT PAUSE WRITE holds keygate's clients' writes (and what each sent after one), never
/// their reads, until CLIENT UNPAUSE or the timeout; INFO counts the held clients; ALL holds
/// every command but CLIENT UNPAUSE. Tenants may not pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pause_holds_keygates_clients() {
    let redis = Redis::start();
    let kg = Keygate::start(&redis.addr()).await;
    let mut admin = kg.raw().await;
    let mut writer = kg.raw().await;
    let mut reader = kg.raw().await;
    assert_eq!(writer.call(&[b"SET", b"k", b"before"]).await, b"+OK\r\n");
    assert_eq!(
        admin.call(&[b"CLIENT", b"PAUSE", b"60000", b"WRITE"]).await,
        b"+OK\r\n"
    );
    writer.send(b"SET k during\r\nGET k\r\n").await;
    // PUBLISH and PFCOUNT may replicate: held too.
    let mut publisher = kg.raw().await;
    publisher.send(b"PUBLISH ch x\r\n").await;
    assert_eq!(reader.call(&[b"GET", b"k"]).await, b"$6\r\nbefore\r\n");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), writer.reply())
            .await
            .is_err(),
        "a write went through a pause"
    );
    let info = text(admin.call(&[b"INFO", b"keygate"]).await);
    assert!(info.contains("\r\nblocked_clients:2\r\n"), "{info}");
    assert_eq!(admin.call(&[b"CLIENT", b"UNPAUSE"]).await, b"+OK\r\n");
    assert_eq!(publisher.reply().await.unwrap(), b":0\r\n");
    assert_eq!(writer.reply().await.unwrap(), b"+OK\r\n");
    assert_eq!(writer.reply().await.unwrap(), b"$6\r\nduring\r\n");

    // ALL, ended by its timeout; CLIENT UNPAUSE is never held.
    let started = Instant::now();
    assert_eq!(
        admin.call(&[b"CLIENT", b"PAUSE", b"300", b"ALL"]).await,
        b"+OK\r\n"
    );
    assert_eq!(reader.call(&[b"GET", b"k"]).await, b"$6\r\nduring\r\n");
    assert!(started.elapsed() >= Duration::from_millis(280));
    assert_eq!(
        admin.call(&[b"CLIENT", b"PAUSE", b"60000", b"ALL"]).await,
        b"+OK\r\n"
    );
    reader.send(b"PING\r\n").await;
    assert_eq!(admin.call(&[b"CLIENT", b"UNPAUSE"]).await, b"+OK\r\n");
    assert_eq!(reader.reply().await.unwrap(), b"+PONG\r\n");
    assert_eq!(
        text(admin.call(&[b"CLIENT", b"PAUSE", b"-1"]).await),
        "-ERR timeout is negative\r\n"
    );

    let kg = Keygate::start_with(&redis.addr(), TENANTS).await;
    let mut tenant = as_tenant(&kg, "acme").await;
    let reply = text(tenant.call(&[b"CLIENT", b"PAUSE", b"1000"]).await);
    assert!(
        reply.contains("is not available through keygate"),
        "{reply}"
    );
}

/// CONFIG SET slowlog-log-slower-than / slowlog-max-len change keygate's slowlog as they change
/// the server's (what Redis's own slowlog tests do).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slowlog_follows_config_set() {
    let redis = Redis::start();
    let kg = Keygate::start(&redis.addr()).await;
    let mut raw = kg.raw().await;
    let set = |name: &'static str, value: &'static str| {
        [&b"CONFIG"[..], b"SET", name.as_bytes(), value.as_bytes()]
    };
    assert_eq!(
        raw.call(&set("slowlog-log-slower-than", "0")).await,
        b"+OK\r\n"
    );
    assert_eq!(raw.call(&set("slowlog-max-len", "3")).await, b"+OK\r\n");
    for _ in 0..10 {
        assert_eq!(raw.call(&[b"PING"]).await, b"+PONG\r\n");
    }
    assert_eq!(raw.call(&[b"SLOWLOG", b"LEN"]).await, b":3\r\n");
    assert_eq!(
        raw.call(&set("slowlog-log-slower-than", "-1")).await,
        b"+OK\r\n"
    );
    assert_eq!(raw.call(&[b"SLOWLOG", b"RESET"]).await, b"+OK\r\n");
    assert_eq!(raw.call(&[b"PING"]).await, b"+PONG\r\n");
    assert_eq!(raw.call(&[b"SLOWLOG", b"LEN"]).await, b":0\r\n");
    // The server took them too.
    let got = common::redis_cli(redis.port, &["CONFIG", "GET", "slowlog-max-len"]);
    assert!(got.contains('3'), "{got}");
}

/// While a script runs, a client whose database needs a new connection gets the server's own
/// -BUSY (not "unavailable"), and SCRIPT KILL gets through from any database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_server_answers_busy_to_new_connections() {
    let redis = Redis::start_with(&["--busy-reply-threshold", "50"]);
    let kg = Keygate::start(&redis.addr()).await;
    let mut other = kg.raw().await;
    assert_eq!(other.call(&[b"SELECT", b"5"]).await, b"+OK\r\n");
    let mut looping = kg.raw().await;
    looping.send(b"EVAL \"while true do end\" 0\r\n").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // As from the server itself (Redis refuses SELECT while a script runs; Valkey 9 takes it),
    // and a command that needs a connection in the new database gets the server's -BUSY.
    let mut direct = Raw::connect(redis.addr().parse().unwrap()).await;
    for command in [&[&b"SELECT"[..], b"6"][..], &[b"GET", b"k"], &[b"PING"]] {
        let reply = text(other.call(command).await);
        assert_eq!(reply, text(direct.call(command).await), "{command:?}");
        if command[0] != b"SELECT" {
            assert!(reply.starts_with("-BUSY"), "{reply}");
        }
    }
    assert_eq!(other.call(&[b"SCRIPT", b"KILL"]).await, b"+OK\r\n");
    let reply = text(looping.reply().await.unwrap());
    assert!(reply.contains("Script killed by user"), "{reply}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(other.call(&[b"GET", b"k"]).await, b"$-1\r\n");
}

/// CLIENT UNBLOCK with keygate's client id: keygate has the server unblock the connection the
/// client waits on, and the client gets what Redis sends (nil, or -UNBLOCKED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_unblock_by_keygates_id() {
    let redis = Redis::start();
    let kg = Keygate::start(&redis.addr()).await;
    let mut blocked = kg.raw().await;
    let mut other = kg.raw().await;
    let id = text(blocked.call(&[b"CLIENT", b"ID"]).await);
    let id = id.trim_start_matches(':').trim_end().to_string();
    assert_eq!(
        other.call(&[b"CLIENT", b"UNBLOCK", id.as_bytes()]).await,
        b":0\r\n"
    );
    for (mode, expected) in [
        (&b"TIMEOUT"[..], "*-1\r\n"),
        (
            b"ERROR",
            "-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n",
        ),
    ] {
        blocked.send(b"BLPOP nothing-here 0\r\n").await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let reply = other
                .call(&[b"CLIENT", b"UNBLOCK", id.as_bytes(), mode])
                .await;
            if reply == b":1\r\n" {
                break;
            }
            assert!(Instant::now() < deadline, "never blocked");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(text(blocked.reply().await.unwrap()), expected);
    }
    assert_eq!(
        text(
            other
                .call(&[b"CLIENT", b"UNBLOCK", id.as_bytes(), b"NOW"])
                .await
        ),
        "-ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR\r\n"
    );
    assert_eq!(blocked.call(&[b"PING"]).await, b"+PONG\r\n");
}

/// Under CLIENT PAUSE WRITE, as in Redis: a script whose shebang says `no-writes` runs, by
/// EVAL or (its body seen by keygate) EVALSHA, and so does FCALL of a function the server marks
/// `no-writes`; a function that may write is held. (Redis's own pause unit hung on these.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_pause_lets_read_only_scripts_and_functions_run() {
    let redis = Redis::start();
    let kg = Keygate::start(&redis.addr()).await;
    let mut admin = kg.raw().await;
    let library = b"#!lua name=lib\nredis.register_function{function_name='ro', callback=function() return 'hello' end, flags={'no-writes'}}\nredis.register_function('rw', function() return redis.call('set', 'k', 'v') end)";
    assert_eq!(
        admin.call(&[b"FUNCTION", b"LOAD", library]).await,
        b"$3\r\nlib\r\n"
    );
    let script = b"#!lua flags=no-writes\nreturn 2";
    let sha = text(admin.call(&[b"SCRIPT", b"LOAD", script]).await);
    let sha = sha.lines().nth(1).unwrap().to_string();
    assert_eq!(
        admin.call(&[b"CLIENT", b"PAUSE", b"60000", b"WRITE"]).await,
        b"+OK\r\n"
    );
    let mut client = kg.raw().await;
    assert_eq!(
        client
            .call(&[b"EVAL", b"#!lua flags=no-writes\nreturn 'unique'", b"0"])
            .await,
        b"$6\r\nunique\r\n"
    );
    assert_eq!(
        client.call(&[b"EVALSHA", sha.as_bytes(), b"0"]).await,
        b":2\r\n"
    );
    assert_eq!(
        client.call(&[b"FCALL", b"ro", b"0"]).await,
        b"$5\r\nhello\r\n"
    );
    client.send(b"FCALL rw 0\r\n").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), client.reply())
            .await
            .is_err(),
        "a writing function went through a pause"
    );
    assert_eq!(admin.call(&[b"CLIENT", b"UNPAUSE"]).await, b"+OK\r\n");
    assert_eq!(client.reply().await.unwrap(), b"+OK\r\n");
}

/// Each line (arguments split on spaces) sent as a request to both, one at a time, on the
/// connections given: every reply the same, byte for byte.
/// Texts that differ between the servers keygate is tested against, where keygate's own text
/// can be only one of them: `(line, the server, its text, keygate's)`. Listed in the README's
/// "Differences from Redis".
const SERVERS_DIFFER: &[(&str, &str, &str, &str)] = &[
    // Redis 7.2 and later (and Valkey) name the protocol argument; keygate gives today's text.
    (
        "HELLO 3",
        "redis 7.0",
        "the HELLO AUTH <user>",
        "the HELLO <proto> AUTH <user>",
    ),
    // keygate's command table is Redis 7.0's, where COMMAND GETKEYS needs a key argument
    // (arity -4); newer servers take none and look at the command.
    (
        "COMMAND GETKEYS get",
        "redis 8|valkey",
        "Invalid number of arguments specified for command",
        "wrong number of arguments for 'command|getkeys' command",
    ),
    (
        "COMMAND GETKEYS ping",
        "redis 8|valkey",
        "The command has no key arguments",
        "wrong number of arguments for 'command|getkeys' command",
    ),
    // Valkey's own wording (keygate gives Redis's).
    (
        "CLIENT KILL ID x",
        "valkey",
        "syntax error",
        "client-id should be greater than 0",
    ),
    (
        "CLIENT LIST ID x",
        "valkey",
        "syntax error",
        "Invalid client ID",
    ),
    (
        "MULTI",
        "valkey",
        "Command 'multi' not allowed inside a transaction",
        "MULTI calls can not be nested",
    ),
    (
        "WATCH k",
        "valkey",
        "Command 'watch' not allowed inside a transaction",
        "WATCH inside MULTI is not allowed",
    ),
    (
        "EVALSHA e0e1f9fabfc9d4800c877a703b823ac0578ff8db 0",
        "valkey",
        "No matching script.",
        "No matching script. Please use EVAL.",
    ),
];

/// Each line (arguments split on spaces) sent as a request to both, one at a time, on the
/// connections given; every reply that differs (beyond SERVERS_DIFFER) is added to `failures`.
async fn same_replies(
    through: &mut Raw,
    direct: &mut Raw,
    failures: &mut Vec<String>,
    lines: &[&str],
) {
    let server = common::server_name(direct.peer(), b"acme-pw").await;
    for line in lines {
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        let (got, want) = (
            text(through.call(&args).await),
            text(direct.call(&args).await),
        );
        let known = SERVERS_DIFFER.iter().any(|(l, which, theirs, ours)| {
            l == line
                && which.split('|').any(|w| server.starts_with(w))
                && want.replace(theirs, ours) == got
        });
        if got != want && !known {
            failures.push(format!(
                "{server}: {line:?}: keygate {got:?}, the server {want:?}"
            ));
        }
    }
}

/// Every error text keygate makes itself that is meant to be the server's own (the README's
/// "Differences from Redis" lists the ones that are not), sent to keygate and to the server
/// behind it: pass-through, an unauthenticated client against a server with `requirepass`, and
/// an authenticated tenant. scripts/test.sh runs this against Valkey 9 and Redis 8 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_keygate_makes_are_the_servers_own() {
    let redis = Redis::start();
    let kg = Keygate::start(&redis.addr()).await;
    let addr = redis.addr().parse().unwrap();
    // Each group on fresh connections, since some change the connection's state.
    let mut failures = Vec::new();
    let groups: &[&[&str]] = &[
        // Unknown commands and subcommands, arity.
        &[
            "NOSUCH a b",
            "GET",
            "CLIENT NOSUCH",
            "CLIENT SETNAME",
            "CLIENT ID x",
            "SELECT",
        ],
        // AUTH without a password configured, HELLO.
        &[
            "AUTH secret",
            "AUTH a b c",
            "AUTH someone secret",
            "HELLO 4",
            "HELLO x",
            "HELLO 3 AUTH",
            "HELLO 3 AUTH someone secret",
            "HELLO 3 SETNAME",
            "HELLO 3 NOSUCH",
        ],
        // SELECT.
        &[
            "SELECT x",
            "SELECT -1",
            "SELECT 99999",
            "SELECT 1",
            "SELECT 0",
        ],
        // CLIENT's arguments.
        &[
            "CLIENT SETNAME a\nb",
            "CLIENT REPLY MAYBE",
            "CLIENT NO-EVICT MAYBE",
            "CLIENT PAUSE -1",
            "CLIENT PAUSE x",
            "CLIENT PAUSE 10 NOSUCH",
            "CLIENT KILL 1.2.3.4:5",
            "CLIENT KILL ID x",
            "CLIENT KILL ID 0",
            "CLIENT KILL USER nobody",
            "CLIENT KILL TYPE nosuch",
            "CLIENT KILL NOSUCH x",
            "CLIENT KILL ID 99999",
            "CLIENT LIST TYPE nosuch",
            "CLIENT LIST ID x",
            "CLIENT LIST NOSUCH",
            "CLIENT UNBLOCK x",
            "CLIENT UNBLOCK 99999 NOSUCH",
            "CLIENT UNBLOCK 99999",
            "CLIENT GETREDIR x",
        ],
        // CLIENT TRACKING's option checks (none of these turns tracking on).
        &[
            "CLIENT TRACKING MAYBE",
            "CLIENT TRACKING ON PREFIX a",
            "CLIENT TRACKING ON OPTIN OPTOUT",
            "CLIENT TRACKING ON BCAST OPTIN",
            "CLIENT TRACKING ON REDIRECT x",
            "CLIENT TRACKING ON REDIRECT 99999",
            "CLIENT TRACKING ON NOSUCH",
            "CLIENT CACHING YES",
            "CLIENT CACHING MAYBE",
            "CLIENT TRACKINGINFO",
            "CLIENT GETREDIR",
        ],
        // CLIENT CACHING while tracking in each mode, switching BCAST on.
        &[
            "CLIENT TRACKING ON",
            "CLIENT CACHING YES",
            "CLIENT CACHING NO",
            "CLIENT CACHING MAYBE",
            "CLIENT TRACKING ON BCAST",
            "CLIENT TRACKING OFF",
            "CLIENT TRACKING ON OPTIN",
            "CLIENT CACHING NO",
            "CLIENT CACHING YES",
            "CLIENT TRACKING OFF",
            "CLIENT TRACKING ON OPTOUT",
            "CLIENT CACHING YES",
            "CLIENT CACHING NO",
            "CLIENT TRACKING OFF",
            "CLIENT TRACKING ON BCAST PREFIX a PREFIX ab",
        ],
        // Transactions.
        &[
            "EXEC",
            "DISCARD",
            "MULTI",
            "MULTI",
            "WATCH k",
            "NOSUCH",
            "SET k v",
            "EXEC",
            "MULTI",
            "SELECT x",
            "SELECT 99999",
            "DISCARD",
        ],
        // SCAN's cursor.
        &["SCAN x", "SCAN -1", "SCAN 0 COUNT 0"],
    ];
    for group in groups {
        let mut through = kg.raw().await;
        let mut direct = Raw::connect(addr).await;
        same_replies(&mut through, &mut direct, &mut failures, group).await;
    }
    // RESP2 subscribed mode refuses other commands with the server's text.
    let mut through = kg.raw().await;
    let mut direct = Raw::connect(addr).await;
    let wait = Duration::from_millis(200);
    for line in ["SUBSCRIBE ch", "GET k", "SELECT 1", "UNSUBSCRIBE"] {
        same_bytes(
            &mut through,
            &mut direct,
            format!("{line}\r\n").as_bytes(),
            wait,
        )
        .await;
    }

    // A client that has not authenticated, against a server with requirepass.
    let locked = Redis::start_with(&["--requirepass", "acme-pw"]);
    let kg_tenants = Keygate::start_with(&redis.addr(), TENANTS).await;
    let mut through = kg_tenants.raw().await;
    let mut direct = Raw::connect(locked.addr().parse().unwrap()).await;
    same_replies(
        &mut through,
        &mut direct,
        &mut failures,
        &[
            "GET k",
            "HELLO 3",
            "CLIENT ID",
            "AUTH wrong",
            "AUTH acme wrong",
            "AUTH nobody acme-pw",
            "HELLO 3 AUTH acme wrong",
            "HELLO 4",
        ],
    )
    .await;

    // An authenticated tenant against the server itself (default user, all keys).
    let mut tenant = as_tenant(&kg_tenants, "acme").await;
    let mut direct = Raw::connect(addr).await;
    same_replies(
        &mut tenant,
        &mut direct,
        &mut failures,
        &[
            "EVALSHA e0e1f9fabfc9d4800c877a703b823ac0578ff8db 0",
            "SCRIPT KILL",
            "SCRIPT FLUSH NOSUCH",
            "COMMAND GETKEYS",
            "COMMAND GETKEYS nosuch a",
            "COMMAND GETKEYS get",
            "COMMAND GETKEYS ping",
            "SCAN x",
            "SCAN 0 MATCH",
            "KEYS",
            "CLIENT KILL ID x",
            "CLIENT KILL 1.2.3.4:5",
            "MULTI",
            "WATCH k",
            "DISCARD",
            "SELECT x",
        ],
    )
    .await;

    // At max_clients, the next client is told as Redis tells it (maxclients).
    let full = Redis::start_with(&["--maxclients", "1"]);
    // The server may not have seen its readiness probe leave yet: the first client is the one
    // that gets its PING answered.
    let mut _first = Raw::connect(full.addr().parse().unwrap()).await;
    while _first.call(&[b"PING"]).await != b"+PONG\r\n" {
        tokio::time::sleep(Duration::from_millis(20)).await;
        _first = Raw::connect(full.addr().parse().unwrap()).await;
    }
    let mut direct = Raw::connect(full.addr().parse().unwrap()).await;
    let kg_full = Keygate::start_with(&redis.addr(), "[limits]\nmax_clients = 1\n").await;
    let _first_client = kg_full.raw().await;
    let mut through = kg_full.raw().await;
    let (got, want) = (through.reply().await, direct.reply().await);
    assert_eq!(got.map(text), want.map(text));
    kg_full.stop().await;
    kg_tenants.stop().await;
    kg.stop().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
