//! Thread-per-core and Unix sockets (issue 18), against the keygate binary with several worker
//! threads: clients spread over workers keep their replies in order and to themselves, the state
//! that must stay exact across the process (CLIENT LIST/KILL, MONITOR, a tenant's connection
//! limit) does, each worker has its own backend connections, and both sides speak Unix sockets.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, http_get, wait_for_port, Binary, Raw, Redis, KEYGATE};
use tokio::net::UnixStream;

/// The keygate binary with `threads` workers on a TCP port in front of `redis`; `extra` is TOML
/// appended after `[upstream]` (its own keys, then any sections). Returns it, its address, and
/// the directory holding its config.
fn start_tcp(
    redis: &Redis,
    threads: usize,
    extra: &str,
) -> (Binary, std::net::SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let kg = Binary::start(
        dir.path(),
        &format!(
            "listen = \"127.0.0.1:{port}\"\nthreads = {threads}\n[upstream]\n\
             kind = \"standalone\"\nservers = [\"{}\"]\n{extra}",
            redis.addr()
        ),
    );
    wait_for_port(port);
    (kg, format!("127.0.0.1:{port}").parse().unwrap(), dir)
}

fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).into_owned()
}

/// A metric's value summed over every series whose line starts with `prefix`.
fn metric(body: &str, prefix: &str) -> u64 {
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_spread_over_workers_keep_their_own_replies_in_order() {
    let redis = Redis::start();
    let admin = free_port();
    let (_kg, addr, _dir) = start_tcp(
        &redis,
        4,
        &format!("connections_per_server = 2\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"),
    );
    // 40 clients, each pipelining SET and GET of its own keys with values naming it: a reply
    // that reached the wrong client, or overtook another, shows as a wrong value.
    let mut tasks = Vec::new();
    for client in 0..40 {
        tasks.push(tokio::spawn(async move {
            let mut raw = Raw::connect(addr).await;
            for round in 0..20 {
                let mut batch = Vec::new();
                for i in 0..25 {
                    let (key, value) = (
                        format!("c{client}:k{i}"),
                        format!("c{client}:r{round}:v{i}"),
                    );
                    batch.extend_from_slice(
                        format!(
                            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                            key.len(),
                            value.len()
                        )
                        .as_bytes(),
                    );
                    batch.extend_from_slice(
                        format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).as_bytes(),
                    );
                }
                raw.send(&batch).await;
                for i in 0..25 {
                    assert_eq!(raw.reply().await.unwrap(), b"+OK\r\n");
                    let value = format!("c{client}:r{round}:v{i}");
                    let want = format!("${}\r\n{value}\r\n", value.len());
                    assert_eq!(text(&raw.reply().await.unwrap()), want);
                }
            }
            raw
        }));
    }
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await.unwrap());
    }
    // Every worker that served a client has its own pool: 4 workers × 2 connections.
    let (_, body) = http_get(format!("127.0.0.1:{admin}").parse().unwrap(), "/metrics").await;
    assert_eq!(
        metric(&body, "keygate_backend_connections{"),
        8,
        "one pool per worker:\n{body}"
    );
    let info = text(&redis_cli_info(redis.port));
    assert!(
        info.contains("connected_clients:9"),
        "8 pooled + redis-cli: {info}"
    );

    // CLIENT LIST sees every client, whichever worker serves it; CLIENT KILL reaches any.
    let list = text(&clients[0].call(&[b"CLIENT", b"LIST"]).await);
    assert_eq!(list.matches("id=").count(), 40, "{list}");
    let id = text(&clients[39].call(&[b"CLIENT", b"ID"]).await);
    let id = id.trim_start_matches(':').trim();
    let killed = clients[0]
        .call(&[b"CLIENT", b"KILL", b"ID", id.as_bytes()])
        .await;
    assert_eq!(killed, b":1\r\n");
    clients[39].expect_closed().await;

    // MONITOR on one client sees what clients on the other workers send.
    let mut monitor = Raw::connect(addr).await;
    assert_eq!(monitor.call(&[b"MONITOR"]).await, b"+OK\r\n");
    for (i, client) in clients.iter_mut().take(8).enumerate() {
        let key = format!("seen-{i}");
        client.call(&[b"GET", key.as_bytes()]).await;
    }
    let mut seen = String::new();
    while (0..8).any(|i| !seen.contains(&format!("\"seen-{i}\""))) {
        seen.push_str(&text(&monitor.reply().await.unwrap()));
    }
}

fn redis_cli_info(port: u16) -> Vec<u8> {
    Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "clients"])
        .output()
        .unwrap()
        .stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_connection_limit_holds_across_workers() {
    let redis = Redis::start();
    let (_kg, addr, _dir) = start_tcp(
        &redis,
        4,
        "[[tenants]]\nname = \"acme\"\npassword = \"acme-pw\"\nprefix = \"acme:\"\nmax_connections = 3\n",
    );
    let mut admitted = Vec::new();
    let mut refused = 0;
    for _ in 0..8 {
        let mut raw = Raw::connect(addr).await;
        let reply = text(&raw.call(&[b"AUTH", b"acme", b"acme-pw"]).await);
        match reply.as_str() {
            "+OK\r\n" => admitted.push(raw),
            _ => {
                assert!(
                    reply.contains("max_connections") || reply.contains("connections"),
                    "{reply}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!((admitted.len(), refused), (3, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_sockets_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let redis_sock = dir.path().join("redis.sock");
    let redis = Redis::start_with(&[
        "--unixsocket",
        redis_sock.to_str().unwrap(),
        "--unixsocketperm",
        "700",
    ]);
    wait_for_file(&redis_sock);
    let sock = dir.path().join("keygate.sock");
    // A stale socket file from an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let admin = free_port();
    let mut kg = Binary::start(
        dir.path(),
        &format!(
            "listen = \"unix:{}\"\nlisten_mode = \"0600\"\nthreads = 2\n[upstream]\n\
             kind = \"standalone\"\nservers = [\"unix:{}\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
            sock.display(),
            redis_sock.display()
        ),
    );
    wait_for_port(admin);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut raw = Raw::over(UnixStream::connect(&sock).await.unwrap());
    assert_eq!(raw.call(&[b"SET", b"k", b"over unix"]).await, b"+OK\r\n");
    assert_eq!(raw.call(&[b"GET", b"k"]).await, b"$9\r\nover unix\r\n");
    // It reached Redis over its Unix socket: Redis lists keygate's connection with no port.
    let clients = Command::new("redis-cli")
        .args(["-s", redis_sock.to_str().unwrap(), "CLIENT", "LIST"])
        .output()
        .unwrap()
        .stdout;
    assert!(text(&clients).contains("addr=/"), "{}", text(&clients));
    assert_eq!(
        Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "GET", "k"])
            .output()
            .unwrap()
            .stdout,
        b"over unix\n"
    );
    // A Unix socket client counts as 127.0.0.1:0.
    let list = text(&raw.call(&[b"CLIENT", b"LIST"]).await);
    assert!(list.contains("addr=127.0.0.1:0"), "{list}");
    // Many clients over the socket, spread over both workers.
    let mut tasks = Vec::new();
    for c in 0..20 {
        let sock = sock.clone();
        tasks.push(tokio::spawn(async move {
            let mut raw = Raw::over(UnixStream::connect(&sock).await.unwrap());
            for i in 0..50 {
                let (key, value) = (format!("u{c}:{i}"), format!("v{c}:{i}"));
                raw.call(&[b"SET", key.as_bytes(), value.as_bytes()]).await;
                let got = raw.call(&[b"GET", key.as_bytes()]).await;
                assert_eq!(text(&got), format!("${}\r\n{value}\r\n", value.len()));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Stopping removes the socket file.
    drop(raw);
    kg.terminate();
    assert!(!sock.exists(), "the socket file outlived keygate");
}

#[test]
fn a_file_in_the_way_of_the_socket_is_never_removed() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("keygate.sock");
    std::fs::write(&sock, "precious").unwrap();
    let out = Command::new(KEYGATE)
        .arg("--config")
        .arg({
            let file = dir.path().join("k.toml");
            std::fs::write(
                &file,
                format!(
                    "listen = \"unix:{}\"\n[upstream]\nkind = \"standalone\"\nservers = [\"127.0.0.1:1\"]\n",
                    sock.display()
                ),
            )
            .unwrap();
            file
        })
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "precious");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_rate_and_the_slowlog_hold_across_workers() {
    let redis = Redis::start();
    let (_kg, addr, _dir) = start_tcp(
        &redis,
        4,
        "[slowlog]\nthreshold = \"0ms\"\nmax_len = 1000\n[[tenants]]\nname = \"acme\"\n\
         password = \"acme-pw\"\nprefix = \"acme:\"\nmax_ops_per_sec = 200\n",
    );
    // Eight connections (spread over the four workers) send as fast as they can for a second.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut raw = Raw::connect(addr).await;
            assert_eq!(raw.call(&[b"AUTH", b"acme", b"acme-pw"]).await, b"+OK\r\n");
            let key = format!("slow-{c}");
            let (mut ok, mut limited) = (0, 0);
            while started.elapsed() < Duration::from_secs(1) {
                let batch = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).repeat(20);
                raw.send(batch.as_bytes()).await;
                for _ in 0..20 {
                    let reply = text(&raw.reply().await.unwrap());
                    match reply.as_str() {
                        "$-1\r\n" => ok += 1,
                        r if r.contains("over its limit of 200 requests per second") => {
                            limited += 1
                        }
                        r => panic!("unexpected reply {r}"),
                    }
                }
            }
            (ok, limited, raw)
        }));
    }
    let (mut ok, mut limited, mut clients) = (0, 0, Vec::new());
    for task in tasks {
        let (o, l, raw) = task.await.unwrap();
        (ok, limited) = (ok + o, limited + l);
        clients.push(raw);
    }
    let elapsed = started.elapsed().as_secs_f64();
    // One bucket for the tenant, whichever worker serves each connection: a second's burst
    // plus the rate (5 % for the clock's grain), not four times it.
    assert!(
        (ok as f64) <= 200.0 * (elapsed + 1.0) * 1.05 && ok >= 100,
        "{ok} requests admitted, {limited} refused, in {elapsed:.2}s"
    );
    assert!(limited > 0);
    // Every connection's commands are in the one slowlog (threshold 0: everything), once the
    // bucket has refilled for the SLOWLOG request itself.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let log = text(&clients[0].call(&[b"SLOWLOG", b"GET", b"1000"]).await);
    for c in 0..8 {
        assert!(
            log.contains(&format!("slow-{c}")),
            "slow-{c} missing from {log}"
        );
    }
}

/// A client per worker floods its loop with pipelined commands as fast as keygate answers (one
/// of them never reads its replies at all): the clients sharing those loops with them are still
/// answered, each request in turn. A loop serves its clients in turns; no client owns it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_does_not_starve_its_workers_other_clients() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = Redis::start();
    let (_kg, addr, _dir) = start_tcp(&redis, 2, "");
    let stop = tokio_util::sync::CancellationToken::new();
    // Two floods, one per worker (each new client goes to the worker with the fewest): one
    // reads everything, one reads nothing.
    for reads in [true, false] {
        let stop = stop.clone();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::spawn(async move {
            let (mut rd, mut wr) = stream.into_split();
            if reads {
                tokio::spawn(async move {
                    let mut sink = vec![0u8; 1 << 16];
                    while rd.read(&mut sink).await.is_ok_and(|n| n > 0) {}
                });
            }
            let flood = b"*3\r\n$3\r\nSET\r\n$5\r\nflood\r\n$2\r\nxx\r\n".repeat(10_000);
            while !stop.is_cancelled() {
                if wr.write_all(&flood).await.is_err() {
                    return;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Bystanders on both workers: every request answered, in order, while the floods go on.
    let mut tasks = Vec::new();
    for c in 0..6 {
        tasks.push(tokio::spawn(async move {
            let mut raw = Raw::connect(addr).await;
            for i in 0..100 {
                let value = format!("b{c}-{i}");
                let key = format!("by{c}");
                assert_eq!(
                    raw.call(&[b"SET", key.as_bytes(), value.as_bytes()]).await,
                    b"+OK\r\n"
                );
                let got = raw.call(&[b"GET", key.as_bytes()]).await;
                assert_eq!(text(&got), format!("${}\r\n{value}\r\n", value.len()));
            }
        }));
    }
    let all = async {
        for task in tasks {
            task.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("bystanders starved by a flooding client");
    stop.cancel();
}
