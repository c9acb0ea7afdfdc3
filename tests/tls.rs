//! TLS (rustls) both ways. Clients: `[tls] listen`, with `redis-cli --tls` and a rustls client
//! in the test: one-way TLS, mutual TLS where a client without a certificate from `client_ca` is
//! refused, and a client certificate's CN choosing a tenant. Backends: a TLS-only redis-server
//! (Debian's build, `tls-port`), with and without client certificates it requires. Certificates
//! are made with the `openssl` command for each run.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::{free_port, openssl, redis_cli, self_signed, Keygate, Raw, Redis};
use redis::AsyncCommands;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
fn certificates(dir: &Path) {
    certificates_named(dir, "keygate test CA");
}

fn certificates_named(dir: &Path, ca_name: &str) {
    self_signed(dir, "ca", &format!("/CN={ca_name}"));
    issue(
        dir,
        "server",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1",
    );
    issue(dir, "client", "/CN=acme", CLIENT_EXT);
}

/// What a client certificate is for.
const CLIENT_EXT: &str = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth";

/// `name.pem` and `name.key`: a certificate for `subject`, signed by the CA in `dir`.
fn issue(dir: &Path, name: &str, subject: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), format!("{ext}\n")).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// keygate's `[tls]` section on `port` with the server certificate in `dir`; `mutual`: clients
/// must present a certificate from the CA in `dir`.
fn tls_section(dir: &Path, port: u16, mutual: bool) -> String {
    let path = |name: &str| dir.join(name).display().to_string();
    let mut section = format!(
        "[tls]\nlisten = \"127.0.0.1:{port}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        path("server.pem"),
        path("server.key")
    );
    if mutual {
        section += &format!("client_ca = \"{}\"\n", path("ca.pem"));
    }
    section
}

/// redis-cli over TLS to `port`, with extra arguments; its stdout and stderr together.
fn redis_cli_tls(dir: &Path, port: u16, extra: &[&str], command: &[&str]) -> String {
    let ca = dir.join("ca.pem");
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert", ca.to_str().unwrap(), "-h", "127.0.0.1"])
        .args(["-p", &port.to_string()])
        .args(extra)
        .args(command)
        .output()
        .expect("redis-cli is missing");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_over_tls_and_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let path = |name: &str| dir.path().join(name).display().to_string();
    let backend = Redis::start();
    let tls_port = free_port();
    let kg = Keygate::start_with(&backend.addr(), &tls_section(dir.path(), tls_port, false)).await;
    assert_eq!(
        redis_cli_tls(dir.path(), tls_port, &[], &["SET", "k", "over-tls"]).trim(),
        "OK"
    );
    assert_eq!(
        redis_cli_tls(dir.path(), tls_port, &[], &["GET", "k"]).trim(),
        "over-tls"
    );
    // The plain port still serves, and it is the same keyspace.
    assert_eq!(redis_cli(kg.addr.port(), &["GET", "k"]).trim(), "over-tls");
    drop(kg);

    // Mutual TLS: only clients with a certificate from client_ca.
    let tls_port = free_port();
    let _kg = Keygate::start_with(&backend.addr(), &tls_section(dir.path(), tls_port, true)).await;
    let refused = redis_cli_tls(dir.path(), tls_port, &[], &["PING"]);
    assert!(
        !refused.contains("PONG"),
        "a client without a certificate got in: {refused}"
    );
    let client = ["--cert", &path("client.pem"), "--key", &path("client.key")];
    let client: Vec<&str> = client.iter().map(|s| s.as_ref()).collect();
    assert_eq!(
        redis_cli_tls(dir.path(), tls_port, &client, &["PING"]).trim(),
        "PONG"
    );
}

/// Certificates reload with the config: new files, then POST /reload, and new TLS clients get
/// the new certificate (trusting only the old CA no longer works).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_with_the_config() {
    let live = tempfile::tempdir().unwrap();
    let old = tempfile::tempdir().unwrap();
    certificates_named(old.path(), "old CA");
    for name in ["server.pem", "server.key"] {
        std::fs::copy(old.path().join(name), live.path().join(name)).unwrap();
    }
    let backend = Redis::start();
    let tls_port = free_port();
    let config = live.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"standalone\"\nservers = [\"{}\"]\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n[tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            backend.addr(),
            live.path().join("server.pem").display(),
            live.path().join("server.key").display()
        ),
    )
    .unwrap();
    let kg = Keygate::start_file(&config).await;
    assert_eq!(
        redis_cli_tls(old.path(), tls_port, &[], &["PING"]).trim(),
        "PONG"
    );
    let new = tempfile::tempdir().unwrap();
    certificates_named(new.path(), "new CA");
    for name in ["server.pem", "server.key"] {
        std::fs::copy(new.path().join(name), live.path().join(name)).unwrap();
    }
    let (status, body) = common::http(kg.admin, "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        redis_cli_tls(new.path(), tls_port, &[], &["PING"]).trim(),
        "PONG"
    );
    let stale = redis_cli_tls(old.path(), tls_port, &[], &["PING"]);
    assert!(
        !stale.contains("PONG"),
        "the old certificate is still served: {stale}"
    );
}

/// A redis-server listening for TLS on the returned port (its plain port is for the test's own
/// checks), with the certificate `server` from `dir`; `auth_clients`: it requires a client
/// certificate signed by the CA in `dir`.
fn tls_redis(dir: &Path, server: &str, auth_clients: bool) -> (Redis, u16) {
    let tls_port = free_port();
    let path = |name: &str| dir.join(name).display().to_string();
    let redis = Redis::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &path(&format!("{server}.pem")),
        "--tls-key-file",
        &path(&format!("{server}.key")),
        "--tls-ca-cert-file",
        &path("ca.pem"),
        "--tls-auth-clients",
        if auth_clients { "yes" } else { "no" },
    ]);
    (redis, tls_port)
}

/// A standalone keygate config for the server at `127.0.0.1:port`, with `upstream` lines added
/// to `[upstream]` and `rest` after.
fn config(port: u16, upstream: &str, rest: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"standalone\"\nservers = [\"127.0.0.1:{port}\"]\n\
         connect_timeout = \"1s\"\nrequest_timeout = \"2s\"\nfailures_to_open = 0\n{upstream}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n{rest}"
    )
}

/// keygate's connections to `redis` that arrived on its TLS port.
fn connections_on(redis: &Redis, tls_port: u16) -> usize {
    let laddr = format!("laddr=127.0.0.1:{tls_port} ");
    redis_cli(redis.port, &["CLIENT", "LIST"])
        .lines()
        .filter(|line| line.contains(&laddr))
        .count()
}

/// Every kind of backend connection over TLS to a TLS-only server: the shared pool, a RESP3
/// pool, a connection pinned for MULTI, a blocking one, a subscriber; and pipelined values large
/// enough that TLS cannot write them in one go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let (redis, tls_port) = tls_redis(dir.path(), "server", false);
    let ca = dir.path().join("ca.pem").display().to_string();
    let kg = Keygate::start_config(&config(
        tls_port,
        &format!("tls = true\ntls_ca = \"{ca}\""),
        "",
    ))
    .await;

    let mut con = kg.connection().await;
    let _: () = con.set("k", "over tls to the backend").await.unwrap();
    let got: String = con.get("k").await.unwrap();
    assert_eq!(got, "over tls to the backend");
    // 40 values of 512 KiB each way, pipelined.
    let values: Vec<Vec<u8>> = (0..40u8).map(|i| vec![b'a' + i % 26; 512 * 1024]).collect();
    let mut pipe = redis::pipe();
    for (i, v) in values.iter().enumerate() {
        pipe.set(format!("big{i}"), v).ignore();
    }
    let _: () = pipe.query_async(&mut con).await.unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("big{i}")).collect();
    let back: Vec<Vec<u8>> = con.mget(&keys).await.unwrap();
    assert!(back == values, "large values came back different");

    // RESP3: a pool of its own, set up with HELLO 3 over TLS.
    let mut raw = kg.raw().await;
    assert!(raw.call(&[b"HELLO", b"3"]).await.starts_with(b"%"));
    assert_eq!(
        raw.call(&[b"HGETALL", b"nohash"]).await,
        b"%0\r\n",
        "a RESP3 map from Redis itself"
    );
    // A transaction on a pinned connection.
    let mut raw = kg.raw().await;
    assert_eq!(raw.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(raw.call(&[b"INCR", b"n"]).await, b"+QUEUED\r\n");
    assert_eq!(raw.call(&[b"EXEC"]).await, b"*1\r\n:1\r\n");

    // A blocking pop on a connection of its own, woken by another client.
    let mut blocked = kg.raw().await;
    blocked
        .send(b"*3\r\n$5\r\nBLPOP\r\n$1\r\nq\r\n$1\r\n0\r\n")
        .await;
    // A subscriber, and a message published through keygate.
    let mut sub = kg.raw().await;
    assert_eq!(
        sub.call(&[b"SUBSCRIBE", b"news"]).await,
        b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let _: () = con.rpush("q", "woken").await.unwrap();
    assert_eq!(
        blocked.reply().await.unwrap(),
        b"*2\r\n$1\r\nq\r\n$5\r\nwoken\r\n"
    );
    let receivers: i64 = con.publish("news", "hello").await.unwrap();
    assert_eq!(receivers, 1);
    assert_eq!(
        sub.reply().await.unwrap(),
        b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n"
    );
    // Shared RESP2 and RESP3 pools, the blocking connection and the subscriber: all on the
    // TLS port (the server's plain port has only the test's own CLIENT LIST).
    assert!(
        connections_on(&redis, tls_port) >= 4,
        "{}",
        redis_cli(redis.port, &["CLIENT", "LIST"])
    );
}

/// The server's certificate is checked (a CA that did not sign it, a name it does not carry),
/// and a client certificate is presented to a server that requires one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_certificates_are_checked_and_presented() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    issue(
        dir.path(),
        "named",
        "/CN=redis.test",
        "subjectAltName=DNS:redis.test",
    );
    let other = tempfile::tempdir().unwrap();
    certificates_named(other.path(), "some other CA");
    let path = |name: &str| dir.path().join(name).display().to_string();
    let (_strict, strict_port) = tls_redis(dir.path(), "server", true);

    // Without a client certificate, the server ends the handshake: a clear error per request.
    let kg = Keygate::start_unready(&config(
        strict_port,
        &format!("tls = true\ntls_ca = \"{}\"", path("ca.pem")),
        "",
    ))
    .await;
    let reply = String::from_utf8(kg.raw().await.call(&[b"GET", b"k"]).await).unwrap();
    assert!(
        reply.starts_with(&format!(
            "-ERR keygate: backend 127.0.0.1:{strict_port} is unavailable"
        )) || reply.starts_with(&format!(
            "-ERR keygate: connection to backend 127.0.0.1:{strict_port} lost"
        )),
        "{reply}"
    );
    assert!(reply.contains("CertificateRequired"), "{reply}");
    drop(kg);

    // With one, it works.
    let kg = Keygate::start_config(&config(
        strict_port,
        &format!(
            "tls = true\ntls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
            path("ca.pem"),
            path("client.pem"),
            path("client.key")
        ),
        "",
    ))
    .await;
    assert_eq!(kg.raw().await.call(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    drop(kg);

    // A CA that did not sign the server's certificate.
    let kg = Keygate::start_unready(&config(
        strict_port,
        &format!(
            "tls = true\ntls_ca = \"{}\"",
            other.path().join("ca.pem").display()
        ),
        "",
    ))
    .await;
    let reply = String::from_utf8(kg.raw().await.call(&[b"GET", b"k"]).await).unwrap();
    assert!(
        reply.contains("is unavailable (TLS handshake failed: invalid peer certificate"),
        "{reply}"
    );
    drop(kg);

    // A certificate for redis.test, not for 127.0.0.1: refused unless tls_server_name says so.
    let (_named, named_port) = tls_redis(dir.path(), "named", false);
    let tls = format!("tls = true\ntls_ca = \"{}\"", path("ca.pem"));
    let kg = Keygate::start_unready(&config(named_port, &tls, "")).await;
    let reply = String::from_utf8(kg.raw().await.call(&[b"GET", b"k"]).await).unwrap();
    assert!(
        reply.contains("TLS handshake failed: invalid peer certificate"),
        "{reply}"
    );
    drop(kg);
    let kg = Keygate::start_config(&config(
        named_port,
        &format!("{tls}\ntls_server_name = \"redis.test\""),
        "",
    ))
    .await;
    assert_eq!(kg.raw().await.call(&[b"PING"]).await, b"+PONG\r\n");
}

/// A TLS connection to keygate's `port`, trusting the CA in `dir`, presenting the certificate
/// `client` from `dir` if given.
async fn tls_raw(dir: &Path, port: u16, client: Option<&str>) -> Raw<TlsStream<TcpStream>> {
    let pem = |name: &str| {
        let file = std::fs::File::open(dir.join(name)).unwrap();
        rustls_pemfile::certs(&mut std::io::BufReader::new(file))
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem("ca.pem") {
        roots.add(cert).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        Some(name) => {
            let file = std::fs::File::open(dir.join(format!("{name}.key"))).unwrap();
            let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(file))
                .unwrap()
                .unwrap();
            builder
                .with_client_auth_cert(pem(&format!("{name}.pem")), key)
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with keygate");
    Raw::over(stream)
}

/// With mutual TLS, a client certificate whose CN is a tenant's `client_cert_cn` is that
/// tenant's connection without AUTH; any other certificate still needs AUTH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_choose_tenants() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    issue(dir.path(), "globex", "/CN=globex", CLIENT_EXT);
    issue(dir.path(), "stranger", "/CN=stranger", CLIENT_EXT);
    let backend = Redis::start();
    let tls_port = free_port();
    let kg = Keygate::start_config(&config(
        backend.port,
        "",
        &(tls_section(dir.path(), tls_port, true)
            + "[[tenants]]\nname = \"acme\"\nprefix = \"acme:\"\nclient_cert_cn = \"acme\"\nmax_connections = 1\n\
               [[tenants]]\nname = \"globex\"\nprefix = \"globex:\"\npassword = \"globex-pw\"\nclient_cert_cn = \"globex\"\n"),
    ))
    .await;

    // acme's certificate: acme's keyspace, no AUTH.
    let mut acme = tls_raw(dir.path(), tls_port, Some("client")).await;
    assert_eq!(acme.call(&[b"SET", b"k", b"acme's"]).await, b"+OK\r\n");
    assert_eq!(acme.call(&[b"KEYS", b"*"]).await, b"*1\r\n$1\r\nk\r\n");
    assert_eq!(redis_cli(backend.port, &["GET", "acme:k"]).trim(), "acme's");
    // acme may hold one connection: a second acme certificate is told why, and closed.
    let mut second = tls_raw(dir.path(), tls_port, Some("client")).await;
    assert_eq!(
        second.reply().await.unwrap(),
        b"-ERR keygate: tenant 'acme' already has its maximum of 1 connections\r\n"
    );
    second.expect_closed().await;
    // acme has no password: AUTH cannot become acme.
    let mut plain = kg.raw().await;
    assert!(plain
        .call(&[b"AUTH", b"acme", b""])
        .await
        .starts_with(b"-WRONGPASS"));

    // globex's certificate: globex's keyspace.
    let mut globex = tls_raw(dir.path(), tls_port, Some("globex")).await;
    assert_eq!(globex.call(&[b"GET", b"k"]).await, b"$-1\r\n");
    assert_eq!(globex.call(&[b"SET", b"k", b"globex's"]).await, b"+OK\r\n");

    // A certificate that names no tenant: verified, but AUTH is still needed.
    let mut stranger = tls_raw(dir.path(), tls_port, Some("stranger")).await;
    assert!(stranger.call(&[b"GET", b"k"]).await.starts_with(b"-NOAUTH"));
    assert_eq!(
        stranger.call(&[b"AUTH", b"globex", b"globex-pw"]).await,
        b"+OK\r\n"
    );
    assert_eq!(stranger.call(&[b"GET", b"k"]).await, b"$8\r\nglobex's\r\n");
    // The plain port has no certificates: AUTH as ever.
    assert!(plain.call(&[b"GET", b"k"]).await.starts_with(b"-NOAUTH"));

    // Once acme's first connection is gone, its certificate gets in again.
    drop(acme);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut again = tls_raw(dir.path(), tls_port, Some("client")).await;
    assert_eq!(again.call(&[b"GET", b"k"]).await, b"$6\r\nacme's\r\n");
}

/// A Redis Cluster speaking only TLS to clients and on its bus (`tls-cluster yes`): keygate
/// learns the slot map over TLS (Redis then names the nodes' TLS ports) and reaches every node
/// over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let path = |name: &str| dir.path().join(name).display().to_string();
    let nodes: Vec<(Redis, u16)> = (0..3)
        .map(|_| {
            let tls_port = common::free_cluster_port();
            let redis = Redis::start_with(&[
                "--tls-port",
                &tls_port.to_string(),
                "--tls-cert-file",
                &path("server.pem"),
                "--tls-key-file",
                &path("server.key"),
                "--tls-ca-cert-file",
                &path("ca.pem"),
                "--tls-auth-clients",
                "no",
                "--tls-cluster",
                "yes",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]);
            (redis, tls_port)
        })
        .collect();
    let mut create = Command::new("redis-cli");
    create.args(["--tls", "--cacert", &path("ca.pem"), "--cluster", "create"]);
    for (_, tls_port) in &nodes {
        create.arg(format!("127.0.0.1:{tls_port}"));
    }
    let out = create.arg("--cluster-yes").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !nodes
        .iter()
        .all(|(redis, _)| redis_cli(redis.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    {
        assert!(std::time::Instant::now() < deadline, "cluster never ok");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    let kg = Keygate::start_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"cluster\"\nservers = [\"127.0.0.1:{}\"]\n\
         tls = true\ntls_ca = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        nodes[0].1,
        path("ca.pem")
    ))
    .await;
    let mut con = kg.connection().await;
    let keys: Vec<String> = (0..60).map(|i| format!("key{i}")).collect();
    for key in &keys {
        let _: () = con.set(key, format!("{key}-value")).await.unwrap();
    }
    let values: Vec<String> = con.mget(&keys).await.unwrap();
    let want: Vec<String> = keys.iter().map(|k| format!("{k}-value")).collect();
    assert_eq!(values, want);
    for (redis, tls_port) in &nodes {
        assert!(
            common::dbsize(redis).await > 0,
            "node {tls_port} got no key"
        );
        assert!(
            connections_on(redis, *tls_port) >= 1,
            "no TLS connection to {tls_port}"
        );
    }
}

/// A server's certificate renewed under a new CA: keygate's existing TLS connections carry on;
/// new ones are refused until keygate's `tls_ca` is renewed too and the config reloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_certificates_reload_with_the_config() {
    let old = tempfile::tempdir().unwrap();
    certificates_named(old.path(), "old CA");
    let live = tempfile::tempdir().unwrap();
    std::fs::copy(old.path().join("ca.pem"), live.path().join("ca.pem")).unwrap();
    let (redis, tls_port) = tls_redis(old.path(), "server", false);
    let file = live.path().join("keygate.toml");
    std::fs::write(
        &file,
        config(
            tls_port,
            &format!(
                "tls = true\ntls_ca = \"{}\"",
                live.path().join("ca.pem").display()
            ),
            "",
        ),
    )
    .unwrap();
    let kg = Keygate::start_file(&file).await;
    let mut client = kg.raw().await;
    assert_eq!(client.call(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");

    // The server moves to a certificate from a new CA.
    let new = tempfile::tempdir().unwrap();
    certificates_named(new.path(), "new CA");
    let path = |name: &str| new.path().join(name).display().to_string();
    assert_eq!(
        redis_cli(
            redis.port,
            &[
                "CONFIG",
                "SET",
                "tls-cert-file",
                &path("server.pem"),
                "tls-key-file",
                &path("server.key"),
                "tls-ca-cert-file",
                &path("ca.pem"),
            ],
        )
        .trim(),
        "OK"
    );
    assert_eq!(client.call(&[b"GET", b"k"]).await, b"$1\r\nv\r\n");
    // Its connections cut: keygate, trusting only the old CA, cannot reconnect.
    redis_cli(
        redis.port,
        &["CLIENT", "KILL", "LADDR", &format!("127.0.0.1:{tls_port}")],
    );
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let reply = String::from_utf8(client.call(&[b"GET", b"k"]).await).unwrap();
    assert!(reply.contains("invalid peer certificate"), "{reply}");

    // keygate's CA file renewed and the config reloaded: connected again, same client.
    std::fs::copy(new.path().join("ca.pem"), live.path().join("ca.pem")).unwrap();
    let (status, body) = common::http(kg.admin, "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let reply = client.call(&[b"GET", b"k"]).await;
        if reply == b"$1\r\nv\r\n" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&reply)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// kind = "sentinel" over TLS: the sentinel is asked over TLS, names its primary's TLS port,
/// and keygate reaches the primary and watches the sentinel (+switch-master) over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let path = |name: &str| dir.path().join(name).display().to_string();
    let (primary, primary_tls) = tls_redis(dir.path(), "server", false);
    let sentinel_port = free_port();
    let sentinel_tls = free_port();
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sentinel_port}\nbind 127.0.0.1\ndir {}\ntls-port {sentinel_tls}\n\
             tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients no\n\
             tls-replication yes\nsentinel monitor mymaster 127.0.0.1 {primary_tls} 1\n",
            dir.path().display(),
            path("server.pem"),
            path("server.key"),
            path("ca.pem"),
        ),
    )
    .unwrap();
    let mut sentinel = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server is missing");
    common::wait_for_port(sentinel_port);

    let kg = Keygate::start_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"sentinel\"\nmaster = \"mymaster\"\n\
         servers = [\"127.0.0.1:{sentinel_tls}\"]\ntls = true\ntls_ca = \"{}\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        path("ca.pem")
    ))
    .await;
    let mut client = kg.raw().await;
    assert_eq!(client.call(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_eq!(redis_cli(primary.port, &["GET", "k"]).trim(), "v");
    assert!(connections_on(&primary, primary_tls) >= 1);
    // keygate's +switch-master watch, on the sentinel's TLS port.
    let laddr = format!("laddr=127.0.0.1:{sentinel_tls} ");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !redis_cli(sentinel_port, &["CLIENT", "LIST"])
        .lines()
        .any(|line| line.contains(&laddr) && line.contains("sub=1"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no subscription on the sentinel's TLS port: {}",
            redis_cli(sentinel_port, &["CLIENT", "LIST"])
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = sentinel.kill();
    let _ = sentinel.wait();
}

/// Hostile clients on the TLS port: plaintext RESP, HTTP, silence, and a handshake that stops
/// after its first byte are each closed (the last two at `handshake_timeout`), while a TLS
/// client connected before and after is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_on_the_tls_port() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let backend = Redis::start();
    let tls_port = free_port();
    let _kg = Keygate::start_config(&config(
        backend.port,
        "",
        &(tls_section(dir.path(), tls_port, false) + "handshake_timeout = \"300ms\"\n"),
    ))
    .await;
    let mut bystander = tls_raw(dir.path(), tls_port, None).await;
    assert_eq!(bystander.call(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");

    let cases: [(&str, &[u8]); 5] = [
        ("plaintext RESP", b"*1\r\n$4\r\nPING\r\n"),
        ("an inline command", b"PING\r\n"),
        ("HTTP", b"GET / HTTP/1.1\r\nHost: keygate\r\n\r\n"),
        ("silence", b""),
        ("the first byte of a ClientHello", b"\x16"),
    ];
    for (what, bytes) in cases {
        let started = std::time::Instant::now();
        let mut stream = TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read_to_end(&mut got),
        )
        .await;
        assert!(read.is_ok(), "{what}: still open after 5 s");
        assert!(
            !String::from_utf8_lossy(&got).contains("PONG"),
            "{what}: answered in plaintext"
        );
        if bytes.len() <= 1 {
            // Nothing to refuse yet: closed by the handshake deadline, not before.
            assert!(
                started.elapsed() >= std::time::Duration::from_millis(250),
                "{what}: closed after {:?}",
                started.elapsed()
            );
        }
        assert_eq!(
            bystander.call(&[b"GET", b"k"]).await,
            b"$1\r\nv\r\n",
            "after {what}"
        );
    }
    let mut later = tls_raw(dir.path(), tls_port, None).await;
    assert_eq!(later.call(&[b"GET", b"k"]).await, b"$1\r\nv\r\n");
}

/// A certificate's subject alternative name chooses a tenant too (here a SPIFFE id in a URI
/// SAN, whatever the CN says); a certificate with another SAN still needs AUTH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_sans_choose_tenants() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    issue(
        dir.path(),
        "workload",
        "/CN=pod-7f9c",
        &format!("{CLIENT_EXT}\nsubjectAltName=URI:spiffe://example.org/ns/prod/sa/initech"),
    );
    issue(
        dir.path(),
        "elsewhere",
        "/CN=pod-1234",
        &format!("{CLIENT_EXT}\nsubjectAltName=URI:spiffe://example.org/ns/dev/sa/initech"),
    );
    let backend = Redis::start();
    let tls_port = free_port();
    let _kg = Keygate::start_config(&config(
        backend.port,
        "",
        &(tls_section(dir.path(), tls_port, true)
            + "[[tenants]]\nname = \"initech\"\nprefix = \"initech:\"\n\
               client_cert_san = \"spiffe://example.org/ns/prod/sa/initech\"\n"),
    ))
    .await;
    let mut workload = tls_raw(dir.path(), tls_port, Some("workload")).await;
    assert_eq!(workload.call(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_eq!(redis_cli(backend.port, &["GET", "initech:k"]).trim(), "v");
    let mut elsewhere = tls_raw(dir.path(), tls_port, Some("elsewhere")).await;
    assert!(elsewhere
        .call(&[b"GET", b"k"])
        .await
        .starts_with(b"-NOAUTH"));
}
