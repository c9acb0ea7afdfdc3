//! Client TLS (rustls) on `[tls] listen`, with `redis-cli --tls` as the client: one-way TLS, and
//! mutual TLS where a client without a certificate from `client_ca` is refused. Certificates are
//! made with the `openssl` command for each run.

mod common;

use std::path::Path;
use std::process::Command;

use common::{free_port, redis_cli, Keygate, Redis};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
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

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
fn certificates(dir: &Path) {
    certificates_named(dir, "keygate test CA");
}

fn certificates_named(dir: &Path, ca_name: &str) {
    let ca_subject = format!("/CN={ca_name}");
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    let days = "2";
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            days,
            "-subj",
            &ca_subject,
        ],
    );
    for (name, subject) in [("server", "/CN=127.0.0.1"), ("client", "/CN=acme")] {
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
                days,
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
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
    let kg = Keygate::start_with(
        &backend.addr(),
        &format!(
            "[tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            path("server.pem"),
            path("server.key")
        ),
    )
    .await;
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
    let _kg = Keygate::start_with(
        &backend.addr(),
        &format!(
            "[tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
            path("server.pem"),
            path("server.key"),
            path("ca.pem")
        ),
    )
    .await;
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
