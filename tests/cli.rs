//! The `keygate` binary: config checking, running, and graceful shutdown on signals.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bulk, free_port, http_get, wait_for_port, Keygate, Raw, Redis};

const KEYGATE: &str = env!("CARGO_BIN_EXE_keygate");

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

/// Run the keygate binary on a config file, with `configure` adding flags, environment and
/// stderr handling, and wait for it to listen on `port`.
fn spawn_keygate(
    config: &std::path::Path,
    port: u16,
    configure: impl FnOnce(&mut Command),
) -> std::process::Child {
    let mut command = Command::new(KEYGATE);
    command.arg("--config").arg(config);
    configure(&mut command);
    let child = command.spawn().unwrap();
    wait_for_port(port);
    child
}

fn check(text: &str) -> (bool, String) {
    let file = config_file(text);
    let out = Command::new(KEYGATE)
        .args(["--check", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (
        out.status.success(),
        text.replace(&file.path().display().to_string(), "FILE"),
    )
}

const VALID: &str = "listen = \"127.0.0.1:6380\"\n[upstream]\nkind = \"standalone\"\nservers = [\"127.0.0.1:6379\"]\nconnect_timeout = \"500ms\"\n";

#[test]
fn check_accepts_a_valid_config_and_the_example() {
    let (ok, out) = check(VALID);
    assert!(ok, "{out}");
    assert!(out.contains("configuration is valid"), "{out}");
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml")).unwrap();
    let (ok, out) = check(&example);
    assert!(ok, "proxy.toml must be valid: {out}");
}

#[test]
fn check_names_file_key_and_reason() {
    let cases = [
        (
            VALID.to_string()
                + "[tls]\nlisten = \"127.0.0.1:6390\"\ncert = \"/nonexistent.pem\"\nkey = \"/nonexistent.key\"\n",
            "FILE: tls.cert: cannot read /nonexistent.pem",
        ),
        (
            VALID.replace("\"500ms\"", "\"500\""),
            "FILE: upstream.connect_timeout: invalid duration \"500\"",
        ),
        (
            VALID.replace("kind =", "colour = 1\nkind ="),
            "FILE: upstream.colour: unknown field `colour`",
        ),
        (
            VALID.replace("servers = [\"127.0.0.1:6379\"]\n", ""),
            "FILE: upstream: missing field `servers`",
        ),
        (
            VALID.replace("[\"127.0.0.1:6379\"]", "[]"),
            "FILE: upstream.servers: the server list is empty",
        ),
        (
            VALID.replace("127.0.0.1:6380", "nowhere"),
            "FILE: listen: invalid address \"nowhere\"",
        ),
        ("listen = ".to_string(), "FILE: "),
    ];
    for (text, want) in cases {
        let (ok, out) = check(&text);
        assert!(!ok, "should be refused: {text}");
        assert!(out.contains(want), "want {want:?} in {out:?}");
    }
    // Tenants are validated too.
    let (ok, out) = check(&format!(
        "{VALID}[[tenants]]\nname = \"a\"\npassword = \"p\"\nprefix = \"a*\"\n"
    ));
    assert!(!ok && out.contains("FILE: tenants[0].prefix"), "{out}");
    let out = Command::new(KEYGATE)
        .args(["--check", "--config", "/no/such/file.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/file.toml: cannot read"));
}

/// SIGTERM and SIGINT: stop accepting, finish what is in flight, exit 0.
#[tokio::test]
async fn signals_drain_in_flight_requests_and_exit_cleanly() {
    let backend = Redis::start_with(&["--enable-debug-command", "yes"]);
    for signal in ["TERM", "INT"] {
        let port = free_port();
        let file = config_file(&format!(
            "listen = \"127.0.0.1:{port}\"\ndrain_timeout = \"5s\"\n[upstream]\nkind = \"standalone\"\nservers = [\"{}\"]\n",
            backend.addr()
        ));
        let mut child = spawn_keygate(file.path(), port, |c| {
            c.stderr(Stdio::piped());
        });
        let mut raw = Raw::connect(format!("127.0.0.1:{port}").parse().unwrap()).await;
        assert_eq!(raw.call(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
        raw.send(
            b"*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n$3\r\n0.5\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        // In-flight requests still get their replies, then the connection closes.
        assert_eq!(raw.reply().await.unwrap(), b"+OK\r\n");
        assert_eq!(raw.reply().await.unwrap(), bulk("v"));
        raw.expect_closed().await;
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "SIG{signal}: exit status {status}");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "still accepting after SIG{signal}"
        );
    }
}

#[tokio::test]
async fn admin_endpoints() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut raw = kg.raw().await;
    raw.call(&[b"SET", b"k", b"v"]).await;
    raw.call(&[b"GET", b"k"]).await;
    raw.call(&[b"GET", b"k", b"extra"]).await;
    raw.call(&[b"LPUSH", b"k", b"x"]).await;
    raw.call(&[b"NOSUCH"]).await;
    assert_eq!(
        http_get(kg.admin, "/health").await,
        (200, "ok\n".to_string())
    );
    assert_eq!(http_get(kg.admin, "/ready").await.0, 200);
    assert_eq!(http_get(kg.admin, "/nothing").await.0, 404);
    let (status, metrics) = http_get(kg.admin, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "keygate_requests_total{command=\"get\"} 2",
        "keygate_requests_total{command=\"set\"} 1",
        "keygate_requests_total{command=\"unknown\"} 1",
        "keygate_request_errors_total{command=\"get\"} 1",
        "keygate_request_errors_total{command=\"lpush\"} 1",
        "keygate_request_errors_total{command=\"unknown\"} 1",
        "keygate_client_connections 1",
        &format!(
            "keygate_backend_connections{{server=\"{}\"}} 1",
            backend.addr()
        ),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    // Every sample line has a TYPE line for its family (a histogram's samples are its
    // family's _bucket, _sum and _count).
    for sample in metrics.lines().filter(|l| !l.starts_with('#')) {
        let name = sample.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|f| metrics.contains(&format!("# TYPE {f} histogram")))
            })
            .unwrap_or(name);
        assert!(
            metrics.contains(&format!("# TYPE {family} ")),
            "no TYPE for {family}"
        );
    }
    // And the reference parser (Prometheus's Python client) reads all of it.
    assert_parsed(
        &metrics,
        &[
            "keygate_requests",
            "keygate_request_duration_seconds",
            "keygate_backend_request_duration_seconds",
            "keygate_client_read_bytes",
            "keygate_backend_breaker_state",
        ],
    );
}

/// The per-tenant families, latency histogram included, parse too.
#[tokio::test]
async fn tenant_metrics_parse() {
    let backend = Redis::start();
    let kg = Keygate::start_with(
        &backend.addr(),
        "[[tenants]]\nname = \"acme\"\npassword = \"acme-pw\"\nprefix = \"acme:\"\n",
    )
    .await;
    let mut acme = common::as_tenant(&kg, "acme").await;
    acme.call(&[b"SET", b"k", b"v"]).await;
    let (_, metrics) = http_get(kg.admin, "/metrics").await;
    assert_parsed(
        &metrics,
        &[
            "keygate_tenant_connections",
            "keygate_tenant_requests",
            "keygate_tenant_request_duration_seconds",
        ],
    );
}

/// Prometheus's own parser reads `metrics`, and finds each of `families` in it.
fn assert_parsed(metrics: &str, families: &[&str]) {
    let parsed = prometheus_families(metrics);
    for family in families {
        assert!(
            parsed.lines().any(|l| l == *family),
            "{family} not parsed: {parsed}"
        );
    }
}

/// The metric families Prometheus's own Python client parses out of `text`, one per line.
fn prometheus_families(text: &str) -> String {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.parser import text_string_to_metric_families\n\
             for f in text_string_to_metric_families(sys.stdin.read()): print(f.name)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is missing (scripts/test.sh installs it with prometheus_client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// SIGHUP reloads the config file (here unchanged, so only SIGHUP can have reloaded it: the
/// file watcher reloads changed files only), and clients stay connected.
#[tokio::test]
async fn sighup_reloads_the_config() {
    let backend = Redis::start();
    let port = free_port();
    let admin = free_port();
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\n[upstream]\nkind = \"standalone\"\nservers = [\"{}\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        backend.addr()
    );
    let file = config_file(&text);
    let mut child = spawn_keygate(file.path(), port, |c| {
        c.stderr(Stdio::null());
    });
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let reloads = |metrics: &str, result: &str| {
        let prefix = format!("keygate_config_reloads_total{{result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(String::from))
            .unwrap_or_default()
    };
    let mut raw = Raw::connect(format!("127.0.0.1:{port}").parse().unwrap()).await;
    for (round, expected_ok) in [(1, "1"), (2, "2")] {
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (_, metrics) = http_get(admin, "/metrics").await;
            if reloads(&metrics, "ok") == expected_ok {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "SIGHUP {round} did not reload"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(raw.call(&[b"PING"]).await, b"+PONG\r\n");
    }
    child.kill().unwrap();
    let _ = child.wait();
}

/// `--log-format json`: one JSON object per line; events of a client carry its span (id,
/// address, tenant); passwords never appear, even at debug level.
#[tokio::test]
async fn json_logs_carry_the_client_span_and_no_secrets() {
    let backend = Redis::start();
    let port = free_port();
    let file = config_file(&format!(
        "listen = \"127.0.0.1:{port}\"\n[upstream]\nkind = \"standalone\"\nservers = [\"{}\"]\n\
         [[tenants]]\nname = \"acme\"\npassword = \"s3cret-pw\"\nprefix = \"acme:\"\n",
        backend.addr()
    ));
    let mut child = spawn_keygate(file.path(), port, |c| {
        c.args(["--log-format", "json"]);
        c.env("RUST_LOG", "debug");
        c.stderr(Stdio::piped());
    });
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut raw = Raw::connect(addr).await;
    assert!(raw
        .call(&[b"AUTH", b"acme", b"wrong-s3cret"])
        .await
        .starts_with(b"-"));
    assert_eq!(
        raw.call(&[b"AUTH", b"acme", b"s3cret-pw"]).await,
        b"+OK\r\n"
    );
    // A protocol error is logged (debug) inside the client's span.
    raw.send(b"*1\r\n$x\r\n").await;
    let _ = raw.reply().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut text).unwrap();
        child.wait().unwrap();
        text
    })
    .await
    .unwrap();
    assert!(
        !out.contains("s3cret"),
        "a password reached the log:\n{out}"
    );
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "not a JSON line: {line}"
        );
    }
    let protocol = lines
        .iter()
        .find(|l| l.contains("protocol error"))
        .unwrap_or_else(|| panic!("no protocol error event in:\n{out}"));
    assert!(
        protocol.contains("\"name\":\"client\"")
            && protocol.contains("\"tenant\":\"acme\"")
            && protocol.contains("\"peer\":\"127.0.0.1:"),
        "{protocol}"
    );
}

/// The resident memory of a process, in KiB (from /proc).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// 10 000 connected clients (each having sent a request) cost keygate a bounded, small amount
/// of memory each, and it keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_clients_in_bounded_memory() {
    const CLIENTS: usize = 10_000;
    let backend = Redis::start();
    let port = free_port();
    let file = config_file(&format!(
        "listen = \"127.0.0.1:{port}\"\nthreads = 1\n[upstream]\nkind = \"standalone\"\nservers = [\"{}\"]\n\
         [limits]\nmax_clients = 20000\n",
        backend.addr()
    ));
    let mut child = spawn_keygate(file.path(), port, |c| {
        c.stderr(Stdio::null());
    });
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut first = Raw::connect(addr).await;
    assert_eq!(first.call(&[b"PING"]).await, b"+PONG\r\n");
    let before = rss_kib(child.id());
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let mut raw = Raw::connect(addr).await;
        let key = format!("k{i}");
        assert_eq!(raw.call(&[b"SET", key.as_bytes(), b"v"]).await, b"+OK\r\n");
        clients.push(raw);
    }
    let after = rss_kib(child.id());
    let per_client = (after.saturating_sub(before)) * 1024 / CLIENTS as u64;
    println!(
        "keygate RSS: {before} KiB with 1 client, {after} KiB with {} ({per_client} bytes per client)",
        CLIENTS + 1
    );
    assert!(per_client < 24 * 1024, "{per_client} bytes per idle client");
    // Everyone is still served.
    for (i, raw) in clients.iter_mut().enumerate().step_by(997) {
        let key = format!("k{i}");
        assert_eq!(raw.call(&[b"GET", key.as_bytes()]).await, b"$1\r\nv\r\n");
    }
    child.kill().unwrap();
    let _ = child.wait();
}

/// A client pipelines 100 GETs of a 10 MB value and never reads. With the default limits it is
/// disconnected at its output limit, keygate's memory stays far below 256 MiB, every other
/// client is served without an error the whole time, and the server's breaker stays closed.
///
/// `request_timeout` is raised from its 2 s default: Redis itself spends about two seconds
/// building the 1 GB of replies before it sends any (measured here), and a bystander whose
/// request shares the hostile client's backend connection waits behind that. With 2 s that wait
/// can end in a timeout error for the bystander; it then no longer counts against the server
/// (the next connection proves it alive with a PING), which the breaker check below covers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_large_replies_hurts_nobody() {
    let backend = Redis::start();
    let mut setup = backend
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let big = vec![b'x'; 10 * 1024 * 1024];
    let _: () = redis::cmd("SET")
        .arg("big")
        .arg(&big)
        .query_async(&mut setup)
        .await
        .unwrap();
    let port = free_port();
    let admin = free_port();
    let file = config_file(&format!(
        "listen = \"127.0.0.1:{port}\"\nthreads = 1\n[upstream]\nkind = \"standalone\"\nservers = [\"{}\"]\n\
         request_timeout = \"10s\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        backend.addr()
    ));
    let child = Killed(spawn_keygate(file.path(), port, |c| {
        c.stderr(Stdio::null());
    }));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let mut bystander = Raw::connect(addr).await;
    assert_eq!(bystander.call(&[b"SET", b"small", b"v"]).await, b"+OK\r\n");
    let before = rss_kib(child.0.id());

    // The hostile client: 100 pipelined GETs of 10 MB, never read.
    let mut hostile = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(100);
    tokio::io::AsyncWriteExt::write_all(&mut hostile, &request)
        .await
        .unwrap();

    // Meanwhile others keep working, and keygate's memory is sampled, until the hostile client
    // is gone (within 20 s) and a second after.
    let pid = child.0.id();
    let connected = move || async move {
        let (_, metrics) = http_get(admin, "/metrics").await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("keygate_client_connections "))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap()
    };
    let start = std::time::Instant::now();
    let mut served = 0;
    let mut peak = 0;
    let mut gone_at = None;
    while gone_at.is_none_or(|at: std::time::Instant| at.elapsed() < Duration::from_secs(1)) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the hostile client was never cut off"
        );
        assert_eq!(
            bystander.call(&[b"GET", b"small"]).await,
            bulk("v"),
            "after {served}"
        );
        served += 1;
        peak = peak.max(rss_kib(pid));
        if gone_at.is_none() && connected().await == 1 {
            gone_at = Some(std::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let grew = peak.saturating_sub(before) / 1024;
    println!(
        "keygate RSS {before} KiB before, peak {peak} KiB (+{grew} MiB); hostile client cut off after {:?}; {served} bystander GETs served",
        gone_at.unwrap() - start
    );
    assert!(grew < 256, "keygate grew by {grew} MiB");
    let (_, metrics) = http_get(admin, "/metrics").await;
    // The server's breaker never opened.
    let opened = metrics
        .lines()
        .find(|l| l.starts_with("keygate_backend_breaker_opened_total"))
        .unwrap();
    assert!(opened.ends_with(" 0"), "{opened}");
}

/// A child process killed when dropped, so a failing test leaves no keygate running.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A client streams PINGs (which keygate answers itself) and never reads the replies: keygate
/// stops reading it once its output backs up, so neither the requests nor the replies pile up
/// in keygate's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_streaming_pings_it_never_reads_stays_bounded() {
    let backend = Redis::start();
    let port = free_port();
    let file = config_file(&format!(
        "listen = \"127.0.0.1:{port}\"\nthreads = 1\n[upstream]\nkind = \"standalone\"\nservers = [\"{}\"]\n",
        backend.addr()
    ));
    let child = Killed(spawn_keygate(file.path(), port, |c| {
        c.stderr(Stdio::null());
    }));
    let before = rss_kib(child.0.id());
    let mut hostile = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let chunk = b"*1\r\n$4\r\nPING\r\n".repeat(10_000);
    let mut sent = 0usize;
    let start = std::time::Instant::now();
    // Up to 3 million PINGs, for at most three seconds (writes block once keygate stops reading).
    while sent < 300 && start.elapsed() < Duration::from_secs(3) {
        let write = tokio::io::AsyncWriteExt::write_all(&mut hostile, &chunk);
        match tokio::time::timeout(Duration::from_millis(500), write).await {
            Ok(result) => {
                result.unwrap();
                sent += 1;
            }
            Err(_) => break,
        }
    }
    let grew = rss_kib(child.0.id()).saturating_sub(before);
    println!(
        "{} PINGs written before keygate stopped reading; keygate +{grew} KiB",
        sent * 10_000
    );
    assert!(
        sent < 300,
        "keygate read all 3 million PINGs of a client that reads nothing"
    );
    assert!(grew < 16 * 1024, "keygate grew by {grew} KiB");
    // Another client is served meanwhile.
    let mut other = Raw::connect(format!("127.0.0.1:{port}").parse().unwrap()).await;
    assert_eq!(other.call(&[b"PING"]).await, b"+PONG\r\n");
}

/// Bug reports need the commit: `keygate --version` names the one it was built from (the tests
/// run in a checkout), and INFO's keygate section shows the same.
#[tokio::test]
async fn version_names_the_git_commit() {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("git is needed to check the commit keygate names");
        assert!(out.status.success(), "git {args:?} failed");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let head = git(&["rev-parse", "--short=12", "HEAD"]);
    let out = Command::new(KEYGATE).arg("--version").output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    // The binary may have been built before the last commit only if nothing rebuilt it since,
    // which cargo test does not allow: build.rs reruns when HEAD moves.
    assert!(
        line.starts_with(&format!(
            "keygate {} (git {head}",
            env!("CARGO_PKG_VERSION")
        )),
        "{line:?} should name commit {head}"
    );
    // ", modified" follows when tracked files differed at build time (not checked here: a file
    // build.rs does not watch, such as the README, may have changed since).
    let dirty = line.contains("modified");

    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut raw = kg.raw().await;
    let info = String::from_utf8(raw.call(&[b"INFO", b"keygate"]).await).unwrap();
    assert!(
        info.contains(&format!("\r\nkeygate_git_sha1:{head}\r\n")),
        "{info}"
    );
    assert!(
        info.contains(&format!("\r\nkeygate_git_dirty:{}\r\n", u8::from(dirty))),
        "{info}"
    );
    kg.stop().await;
}
