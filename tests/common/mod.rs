//! Test harness: real `redis-server` processes on free loopback ports (killed on drop), keygate
//! started in-process in front of them, and a raw RESP client for byte-level checks.
//!
//! A missing `redis-server` binary fails the test with a clear message; nothing is skipped.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use keygate::config::Config;
use keygate::resp::reply::Scanner;
use keygate::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    // Below the kernel's ephemeral range (32768 and up by default), so no outgoing connection
    // takes it between this check and the bind; never handed out twice in one test binary.
    pick_port(
        |port| port_free(port) && port_free_to_listen(port),
        10000..20000,
    )
}

/// A free port whose cluster bus port (port + 10000) is free too.
pub fn free_cluster_port() -> u16 {
    pick_port(
        |port| port_free(port) && port_free_to_listen(port) && port_free_to_listen(port + 10000),
        20000..22700,
    )
}

fn port_free(port: u16) -> bool {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    if given.contains(&port) {
        return false;
    }
    given.push(port);
    true
}

fn port_free_to_listen(port: u16) -> bool {
    StdListener::bind(("127.0.0.1", port)).is_ok()
}

/// A random port in `range` that `free` accepts. Ports are chosen at random (not from port 0)
/// because tests run in parallel and in several processes: the kernel hands out freed
/// ephemeral ports again at once, and outgoing connections take them too.
fn pick_port(free: impl Fn(u16) -> bool, range: std::ops::Range<u16>) -> u16 {
    loop {
        let port = fastrand::u16(range.clone());
        if free(port) {
            return port;
        }
    }
}

/// A real Redis Cluster of `n` primaries, made with `redis-cli --cluster create`.
pub struct Cluster {
    pub nodes: Vec<Redis>,
}

impl Cluster {
    pub fn start(n: usize) -> Cluster {
        Cluster::start_replicated(n, 0)
    }

    /// `primaries` primaries with `replicas` replicas each.
    pub fn start_replicated(primaries: usize, replicas: usize) -> Cluster {
        let nodes: Vec<Redis> = (0..primaries * (1 + replicas))
            .map(|_| {
                Redis::start_at(
                    free_cluster_port(),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "3000",
                    ],
                )
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(node.addr());
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli is missing: install redis-tools");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Cluster { nodes };
        cluster.wait_stable();
        cluster
    }

    /// Wait until every node says the cluster is ok and agrees all slots are served.
    pub fn wait_stable(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self.nodes.iter().all(|node| {
                let info = redis_cli(node.port, &["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
            }) && redis_cli(
                self.nodes[0].port,
                &["--cluster", "check", &self.nodes[0].addr()],
            )
            .contains("[OK] All 16384 slots covered");
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "cluster never became stable");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn node_id(&self, i: usize) -> String {
        redis_cli(self.nodes[i].port, &["CLUSTER", "MYID"])
            .trim()
            .to_string()
    }
}

/// GET calls a server has served (from INFO commandstats).
pub fn gets_served(node: &Redis) -> u64 {
    redis_cli(node.port, &["INFO", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Run redis-cli against a port; its stdout.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli is missing: install redis-tools");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A real redis-server on a free port; killed when dropped.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    /// The server binary: `redis-server` from PATH, or a path.
    program: String,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Redis {
        Redis::start_at(free_port(), extra)
    }

    pub fn start_at(port: u16, extra: &[&str]) -> Redis {
        Redis::start_program("redis-server", port, extra)
    }

    /// A server started from the program named by the environment variable `var` (set by
    /// scripts/test.sh: KEYGATE_TEST_REDIS8, KEYGATE_TEST_VALKEY), for tests that need two
    /// different servers at once. A missing variable fails the test.
    pub fn start_from_env(var: &str) -> Redis {
        let program = std::env::var(var).unwrap_or_else(|_| {
            panic!("{var} is not set: it names a server binary (scripts/test.sh sets it)")
        });
        Redis::start_program(&program, free_port(), &[])
    }

    fn start_program(program: &str, port: u16, extra: &[&str]) -> Redis {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut redis = Redis {
            port,
            child: None,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            program: program.to_string(),
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.program)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", self.dir.path().to_str().unwrap()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): install it (apt-get install redis-server)",
                    self.program
                )
            });
        self.child = Some(child);
        wait_for_port(self.port);
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kill the server (SIGKILL) and wait until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Send SIGSTOP / SIGCONT: a server that accepts connections but never answers.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// A direct redis-rs connection to this server, bypassing keygate.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://{}/", self.addr())).unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// keygate running in-process; shut down when dropped.
pub struct Keygate {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    /// To check, when the test ends, that no client session panicked.
    proxy: std::sync::Arc<keygate::proxy::Proxy>,
}

impl Keygate {
    /// keygate in front of `backend` with the default config.
    pub async fn start(backend: &str) -> Keygate {
        Keygate::start_with(backend, "").await
    }

    /// keygate in front of `backend`; `extra` is TOML appended after the `[admin]` section (for
    /// `[limits]` and the like).
    pub async fn start_with(backend: &str, extra: &str) -> Keygate {
        Keygate::start_config(&format!(
            "listen = \"127.0.0.1:0\"\n\
             drain_timeout = \"2s\"\n\
             [upstream]\nkind = \"standalone\"\nservers = [\"{backend}\"]\n\
             connect_timeout = \"300ms\"\nrequest_timeout = \"1s\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n{extra}"
        ))
        .await
    }

    /// keygate over `shards` placed by ketama (hash tag `{}`); `extra` is appended TOML.
    pub async fn start_ketama(shards: &[Redis], extra: &str) -> Keygate {
        let list = shards
            .iter()
            .map(|s| format!("\"{}\"", s.addr()))
            .collect::<Vec<_>>()
            .join(", ");
        Keygate::start_config(&format!(
            "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"ketama\"\nhash_tag = \"{{}}\"\nservers = [{list}]\n[admin]\nlisten = \"127.0.0.1:0\"\n{extra}"
        ))
        .await
    }

    pub async fn start_config(text: &str) -> Keygate {
        let kg = Keygate::start_unready(text).await;
        kg.wait_ready().await;
        kg
    }

    /// keygate from a config text, without waiting for its backends.
    pub async fn start_unready(text: &str) -> Keygate {
        let config = Config::parse(text, "test.toml").expect("valid test config");
        let server = Server::bind(config).await.expect("keygate binds");
        Keygate::run(server)
    }

    /// keygate from a config file it reloads (on `POST /reload` and when the file changes).
    pub async fn start_file(path: &std::path::Path) -> Keygate {
        let config = Config::load(path).expect("valid test config");
        let server = Server::bind(config)
            .await
            .expect("keygate binds")
            .reload_from(path.to_path_buf());
        let kg = Keygate::run(server);
        kg.wait_ready().await;
        kg
    }

    fn run(server: Server) -> Keygate {
        let addr = server.local_addr();
        let admin = server.admin_addr().unwrap();
        let proxy = server.proxy();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Keygate {
            addr,
            admin,
            shutdown,
            task: Some(task),
            proxy,
        }
    }

    /// Wait until /ready says every backend is connected.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, _) = http_get(self.admin, "/ready").await;
            if status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "keygate never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://{}/", self.addr)).unwrap()
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        multiplexed(&self.client()).await
    }

    pub async fn raw(&self) -> Raw {
        Raw::connect(self.addr).await
    }

    /// Stop keygate and wait for it to finish draining.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for Keygate {
    fn drop(&mut self) {
        self.shutdown.cancel();
        // A panic in a session closes only that client's connection, which a test may not
        // notice: every test fails loudly on one instead.
        let panics = self
            .proxy
            .metrics
            .session_panics
            .load(std::sync::atomic::Ordering::Relaxed);
        if panics > 0 && !std::thread::panicking() {
            panic!("{panics} keygate client session(s) panicked (see the ERROR log above)");
        }
    }
}

/// A raw RESP connection: send bytes, read whole replies. Over TCP, or any stream (TLS).
pub struct Raw<S = TcpStream> {
    pub stream: S,
    buf: BytesMut,
}

impl Raw {
    /// The address this connection is connected to.
    pub fn peer(&self) -> SocketAddr {
        self.stream.peer_addr().unwrap()
    }

    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw::over(TcpStream::connect(addr).await.expect("connect"))
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Raw<S> {
    pub fn over(stream: S) -> Raw<S> {
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
        self.stream.flush().await.expect("send");
    }

    /// Read one complete reply (any RESP type), within 10 s; `None` on EOF.
    pub async fn reply(&mut self) -> Option<Vec<u8>> {
        let mut scanner = Scanner::new(100_000);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(frame) = scanner.scan(&self.buf).expect("well-formed reply") {
                return Some(self.buf.split_to(frame.len).to_vec());
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .expect("a reply within 10 s")
                .expect("read");
            if read == 0 {
                return None;
            }
        }
    }

    /// Send a command (re-encoded as multibulk) and read its reply.
    pub async fn call(&mut self, args: &[&[u8]]) -> Vec<u8> {
        let mut out = BytesMut::new();
        let args: Vec<bytes::Bytes> = args
            .iter()
            .map(|a| bytes::Bytes::copy_from_slice(a))
            .collect();
        keygate::resp::encode_request(&args, &mut out);
        self.send(&out).await;
        self.reply().await.expect("a reply, not EOF")
    }

    /// The server closed the connection (EOF, or reset) within 10 s, after any pending replies.
    pub async fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        let deadline = Duration::from_secs(10);
        match tokio::time::timeout(deadline, self.stream.read_to_end(&mut rest)).await {
            Ok(_) => {}
            Err(_) => panic!("connection still open"),
        }
        assert!(
            self.buf.is_empty() && rest.is_empty(),
            "unexpected bytes before close: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

/// GET a path on the admin port; returns (status, body).
/// A raw connection authenticated as tenant `name` (password `<name>-pw`).
pub async fn as_tenant(kg: &Keygate, name: &str) -> Raw {
    let mut raw = kg.raw().await;
    let password = format!("{name}-pw");
    assert_eq!(
        raw.call(&[b"AUTH", name.as_bytes(), password.as_bytes()])
            .await,
        b"+OK\r\n"
    );
    raw
}

pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path).await
}

/// An HTTP request with an empty body; status and body.
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Multi-key commands over `keys` (chosen to span shards), each key with its own value: for
/// comparing keygate's split-and-merge with one Redis.
pub fn multi_key_script(keys: &[String]) -> Vec<Vec<String>> {
    let cmd = |name: &str, args: &[String]| {
        let mut line = vec![name.to_string()];
        line.extend(args.iter().cloned());
        line
    };
    let n = keys.len();
    let pairs: Vec<String> = keys
        .iter()
        .flat_map(|k| [k.clone(), format!("v-{k}")])
        .collect();
    let with_missing: Vec<String> = keys
        .iter()
        .cloned()
        .chain(["missing".to_string(), keys[3].clone()])
        .collect();
    vec![
        cmd("MSET", &pairs),
        cmd("MGET", &with_missing),
        cmd("EXISTS", &with_missing[n / 2..]),
        cmd("TOUCH", &keys[2..n - 2]),
        cmd(
            "DEL",
            &with_missing[..4]
                .iter()
                .cloned()
                .chain(["missing".to_string()])
                .collect::<Vec<_>>(),
        ),
        cmd("MGET", keys),
        cmd("UNLINK", &keys[4..n / 2]),
        cmd("DBSIZE", &[]),
        cmd("MGET", keys),
    ]
}

/// Run `script` through both connections: every reply must be the same, byte for byte.
pub async fn assert_same_replies(through: &mut Raw, direct: &mut Raw, script: &[Vec<String>]) {
    for line in script {
        let args: Vec<&[u8]> = line.iter().map(|a| a.as_bytes()).collect();
        let got = through.call(&args).await;
        let want = direct.call(&args).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{line:?}"
        );
    }
}

/// Every key a client's SCAN loop returns (COUNT `count`), sorted.
pub async fn scan_all(con: &mut redis::aio::MultiplexedConnection, count: usize) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(count)
            .query_async(con)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys
}

/// DBSIZE of a server, asked directly.
pub async fn dbsize(redis: &Redis) -> usize {
    let mut con = multiplexed(&redis.client()).await;
    redis::cmd("DBSIZE").query_async(&mut con).await.unwrap()
}

/// A redis-rs multiplexed connection with room for slow replies: redis-rs 1.x gives up after
/// 500 ms by default, which a 100 MiB value or a loaded test machine can exceed. Tests keep
/// their own deadlines.
pub async fn multiplexed(client: &redis::Client) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(30)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect")
}

/// `$len\r\ndata\r\n`
pub fn bulk(data: &str) -> Vec<u8> {
    format!("${}\r\n{data}\r\n", data.len()).into_bytes()
}

/// Run `openssl` in `dir` with `args`; it must succeed.
pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is missing: install it (scripts/test.sh does)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `name.pem` and `name.key` in `dir`: a self-signed certificate (usable as a CA) for `subject`,
/// valid for two days.
pub fn self_signed(dir: &std::path::Path, name: &str, subject: &str) {
    let (key, cert) = (format!("{name}.key"), format!("{name}.pem"));
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &cert,
            "-days", "2", "-subj", subject,
        ],
    );
}

/// The server at `addr` as "redis 7.0.15" or "valkey 9.1.2" (INFO server, on a connection of
/// its own; `password` if it asks for one).
pub async fn server_name(addr: SocketAddr, password: &[u8]) -> String {
    let mut raw = Raw::connect(addr).await;
    let mut info = String::from_utf8_lossy(&raw.call(&[b"INFO", b"server"]).await).into_owned();
    if info.starts_with("-NOAUTH") {
        raw.call(&[b"AUTH", password]).await;
        info = String::from_utf8_lossy(&raw.call(&[b"INFO", b"server"]).await).into_owned();
    }
    let field = |name: &str| {
        info.split(&format!("\r\n{name}:"))
            .nth(1)
            .and_then(|rest| rest.split("\r\n").next())
            .map(str::to_string)
    };
    match field("valkey_version") {
        Some(version) => format!("valkey {version}"),
        None => format!(
            "redis {}",
            field("redis_version").expect("INFO names redis_version")
        ),
    }
}

pub const KEYGATE: &str = env!("CARGO_BIN_EXE_keygate");

/// The keygate binary on `config` (written to `dir`); killed when dropped.
pub struct Binary(pub std::process::Child);

impl Binary {
    pub fn start(dir: &std::path::Path, config: &str) -> Binary {
        let file = dir.join("keygate.toml");
        std::fs::write(&file, config).unwrap();
        let child = std::process::Command::new(KEYGATE)
            .arg("--config")
            .arg(&file)
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap();
        Binary(child)
    }

    pub fn terminate(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
