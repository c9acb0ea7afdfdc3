use super::*;
use sha2::{Digest, Sha256};

const GOOD: &str = r#"
listen = "127.0.0.1:6380"
[upstream]
kind = "standalone"
servers = ["127.0.0.1:6379"]
connect_timeout = "250ms"
[admin]
listen = "127.0.0.1:9121"
[limits]
max_request_bytes = "1MiB"
client_idle_timeout = "5m"
"#;

fn error_of(text: &str) -> String {
    Config::parse(text, "t.toml").unwrap_err().to_string()
}

#[test]
fn loads_a_good_file_with_defaults() {
    let c = Config::parse(GOOD, "t.toml").unwrap();
    assert_eq!(c.upstream.connect_timeout, Duration::from_millis(250));
    assert_eq!(c.upstream.request_timeout, Duration::from_secs(2));
    assert_eq!(c.limits.max_request_bytes, 1 << 20);
    assert_eq!(c.limits.client_idle_timeout, Some(Duration::from_secs(300)));
    assert_eq!(c.upstream.connections_per_server, 1);
    assert_eq!(c.admin.unwrap().listen.port(), 9121);
}

#[test]
fn errors_name_file_key_and_reason() {
    let e = error_of(&GOOD.replace("\"250ms\"", "\"250\""));
    assert!(
        e.starts_with("t.toml: upstream.connect_timeout: invalid duration \"250\""),
        "{e}"
    );
    let e = error_of(&GOOD.replace("kind =", "colour = \"red\"\nkind ="));
    assert!(
        e.starts_with("t.toml: upstream.colour: unknown field `colour`"),
        "{e}"
    );
    let e = error_of(&GOOD.replace("servers = [\"127.0.0.1:6379\"]", ""));
    assert!(
        e.contains("upstream") && e.contains("missing field `servers`"),
        "{e}"
    );
    let e = error_of(&GOOD.replace("[\"127.0.0.1:6379\"]", "[]"));
    assert_eq!(e, "t.toml: upstream.servers: the server list is empty");
    let e = error_of(&GOOD.replace("127.0.0.1:6379", "nohost"));
    assert!(
        e.starts_with("t.toml: upstream.servers[0]: invalid server"),
        "{e}"
    );
    let e = error_of(&GOOD.replace("\"1MiB\"", "\"lots\""));
    assert!(
        e.starts_with("t.toml: limits.max_request_bytes: invalid size"),
        "{e}"
    );
    let e = error_of(&GOOD.replace("standalone", "sentinel"));
    assert!(
        e.starts_with("t.toml: upstream.master: kind \"sentinel\" needs the name"),
        "{e}"
    );
    let e = error_of(&GOOD.replace("connect_timeout", "master = \"m\"\nconnect_timeout"));
    assert!(
        e.starts_with("t.toml: upstream.master: only applies to kind \"sentinel\""),
        "{e}"
    );
    let sentinel = GOOD
        .replace("standalone", "sentinel")
        .replace("connect_timeout", "master = \"m\"\nconnect_timeout");
    assert!(Config::parse(&sentinel, "t.toml").is_ok());
    let e = error_of(&GOOD.replace(
        "connect_timeout",
        "auto_eject_hosts = true\nconnect_timeout",
    ));
    assert!(
        e.starts_with("t.toml: upstream.auto_eject_hosts: only applies to kind \"ketama\""),
        "{e}"
    );
    let e = error_of(&GOOD.replace("connect_timeout", "hash = \"md5\"\nconnect_timeout"));
    assert!(
        e.starts_with("t.toml: upstream.hash: only applies to kind \"ketama\""),
        "{e}"
    );
    let e = error_of("listen = \"x\"\n[upstream]\nkind=\"standalone\"\nservers=[\"a:1\"]\n");
    assert!(e.starts_with("t.toml: listen: invalid address"), "{e}");
}

#[test]
fn sizes_take_units() {
    assert_eq!(parse_size("64KiB"), Some(65536));
    assert_eq!(parse_size("512MiB"), Some(512 << 20));
    assert_eq!(parse_size("100"), Some(100));
    assert_eq!(parse_size("1 GB"), Some(1 << 30));
    assert_eq!(parse_size("5 parsecs"), None);
}

#[test]
fn ketama_servers_are_written_as_twemproxy_writes_them() {
    let c = Config::parse(
        "listen = \"127.0.0.1:6380\"\n[upstream]\nkind = \"ketama\"\nhash = \"md5\"\nhash_tag = \"{}\"\n\
         servers = [\"10.0.0.1:6379:2 alpha\", \"10.0.0.2:6379\", \"cache:11211:1\"]\n",
        "t.toml",
    )
    .unwrap();
    let s = &c.upstream.servers;
    assert_eq!(
        (s[0].addr.as_str(), s[0].weight, s[0].name.as_str()),
        ("10.0.0.1:6379", 2, "alpha")
    );
    assert_eq!(
        (s[1].addr.as_str(), s[1].weight, s[1].name.as_str()),
        ("10.0.0.2:6379", 1, "10.0.0.2:6379")
    );
    assert_eq!(
        (s[2].addr.as_str(), s[2].name.as_str()),
        ("cache:11211", "cache")
    );
    assert_eq!(c.upstream.hash_tag, Some(*b"{}"));
    for (bad, want) in [
        ("\"h:1:0\"", "the weight must be at least 1"),
        ("\"h:1:x\"", "invalid server"),
        ("\"h:1 a b\"", "invalid server"),
        ("\"h:1 a\", \"g:1 a\"", "the name \"a\" is used twice"),
        ("\"h:1\", \"h:1\"", "\"h:1\" is listed twice"),
    ] {
        let e = error_of(&format!(
            "listen = \"127.0.0.1:6380\"\n[upstream]\nkind = \"ketama\"\nservers = [{bad}]\n"
        ));
        assert!(e.contains(want), "{bad}: {e}");
    }
}

const TENANTS: &str = r#"
listen = "127.0.0.1:6380"
[upstream]
kind = "standalone"
servers = ["127.0.0.1:6379"]
[policy]
deny_commands = ["CONFIG", "client kill"]
[[tenants]]
name = "acme"
password = "s3cret"
prefix = "acme:"
deny_commands = ["flushall"]
max_connections = 10
max_ops_per_sec = 1000
[[tenants]]
name = "globex"
password_sha256 = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
prefix = "globex:"
allow_commands = ["get", "set"]
allow_scripts = true
"#;

#[test]
fn tenants_load_and_validate() {
    let c = Config::parse(TENANTS, "t.toml").unwrap();
    assert_eq!(c.tenants.len(), 2);
    assert_eq!(c.deny_commands, vec!["config", "client|kill"]);
    assert_eq!(
        c.tenants[0].password_sha256,
        Some(<[u8; 32]>::from(Sha256::digest(b"s3cret")))
    );
    // sha256("secret")
    assert_eq!(
        c.tenants[1].password_sha256,
        Some(<[u8; 32]>::from(Sha256::digest(b"secret")))
    );
    assert_eq!(
        c.tenants[1].allow_commands.as_deref(),
        Some(&["get".to_string(), "set".to_string()][..])
    );
    assert!(c.tenants[1].allow_scripts && !c.tenants[0].allow_scripts);
    for (from, to, want) in [
        (
            "prefix = \"globex:\"",
            "prefix = \"acme:prod:\"",
            "tenants[1].prefix: \"acme:prod:\" and tenant \"acme\"'s \"acme:\": one is a prefix",
        ),
        (
            "prefix = \"globex:\"",
            "prefix = \"g*\"",
            "tenants[1].prefix: \"g*\" must be",
        ),
        (
            "prefix = \"globex:\"",
            "prefix = \"{g}\"",
            "tenants[1].prefix",
        ),
        (
            "name = \"globex\"",
            "name = \"acme\"",
            "tenants[1].name: \"acme\" is used twice",
        ),
        (
            "password_sha256 = \"2bb8",
            "password_sha256 = \"zz",
            "tenants[1].password_sha256: must be 64",
        ),
        (
            "password = \"s3cret\"",
            "",
            "tenants[0].password: a non-empty password",
        ),
        (
            "[\"get\", \"set\"]",
            "[\"get\", \"nosuch\"]",
            "tenants[1].allow_commands: unknown command \"nosuch\"",
        ),
        (
            "max_connections = 10",
            "max_connections = 0",
            "tenants[0].max_connections: must be at least 1",
        ),
        (
            "max_connections = 10",
            "max_connections = 10\ndeny_categories = [\"dangerous\"]",
            "tenants[0].deny_categories: \"dangerous\" is not an ACL category: write it as Redis does, e.g. \"@dangerous\"",
        ),
        (
            "max_connections = 10",
            "max_connections = 10\ndeny_categories = [\"@ bad\"]",
            "tenants[0].deny_categories: \"@ bad\" is not an ACL category name",
        ),
    ] {
        let e = error_of(&TENANTS.replace(from, to));
        assert!(e.contains(want), "{to}: {e}");
    }
    let with = TENANTS.replace(
        "max_connections = 10",
        "max_connections = 10\ndeny_categories = [\"@Dangerous\", \"@admin\"]",
    );
    let c = Config::parse(&with, "t.toml").unwrap();
    assert_eq!(c.tenants[0].deny_categories, ["dangerous", "admin"]);
}

#[test]
fn tls_settings_are_checked_where_they_apply() {
    let upstream =
        |extra: &str| GOOD.replace("connect_timeout", &format!("{extra}\nconnect_timeout"));
    let e = error_of(&upstream("tls_ca = \"ca.pem\""));
    assert!(
        e.contains("upstream.tls_ca: only applies with upstream.tls = true"),
        "{e}"
    );
    let e = error_of(&upstream("tls = true\ntls_ca = \"/nonexistent/ca.pem\""));
    assert!(
        e.contains("upstream.tls_ca: cannot read /nonexistent/ca.pem"),
        "{e}"
    );
    let e = error_of(&upstream("sentinel_password = \"pw\""));
    assert!(
        e.contains("upstream.sentinel_password: only applies to kind \"sentinel\""),
        "{e}"
    );
    let e = error_of(&upstream("tls = true\ntls_key = \"k.pem\""));
    assert!(
        e.contains("upstream.tls_cert: required with tls_key"),
        "{e}"
    );
    let tenant =
        format!("{GOOD}\n[[tenants]]\nname = \"a\"\nprefix = \"a:\"\nclient_cert_cn = \"app-a\"\n");
    let e = error_of(&tenant);
    assert!(
        e.contains("tenants[0].client_cert_cn: needs mutual TLS: set [tls] client_ca"),
        "{e}"
    );
    let e = error_of(&tenant.replace(
        "client_cert_cn = \"app-a\"",
        "client_cert_san = \"spiffe://x/a\"",
    ));
    assert!(
        e.contains("tenants[0].client_cert_san: needs mutual TLS: set [tls] client_ca"),
        "{e}"
    );
}

#[test]
fn unix_sockets_for_clients_and_servers() {
    let listen = |l: &str| GOOD.replace("listen = \"127.0.0.1:6380\"", l);
    let c = Config::parse(
        &listen("listen = \"unix:/run/kg.sock\"\nlisten_mode = \"0600\""),
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        c.listen,
        Listen::Unix {
            path: "/run/kg.sock".into(),
            mode: 0o600
        }
    );
    assert_eq!(c.listen.to_string(), "unix:/run/kg.sock");
    let c = Config::parse(&listen("listen = \"unix:/run/kg.sock\""), "t.toml").unwrap();
    assert!(matches!(c.listen, Listen::Unix { mode: 0o660, .. }));
    let e = error_of(&listen(
        "listen = \"127.0.0.1:6380\"\nlisten_mode = \"0600\"",
    ));
    assert!(
        e.contains("listen_mode: only applies with listen = \"unix:/path\""),
        "{e}"
    );
    let e = error_of(&listen(
        "listen = \"unix:/run/kg.sock\"\nlisten_mode = \"0999\"",
    ));
    assert!(
        e.contains("listen_mode: \"0999\" is not a file mode"),
        "{e}"
    );
    let e = error_of(&listen("listen = \"unix:run/kg.sock\""));
    assert!(e.contains("expected unix:/absolute/path"), "{e}");

    let c = Config::parse(
        &GOOD.replace("\"127.0.0.1:6379\"", "\"unix:/run/redis.sock\""),
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.upstream.servers[0].addr, "unix:/run/redis.sock");
    let ketama = GOOD
        .replace("kind = \"standalone\"", "kind = \"ketama\"")
        .replace(
            "[\"127.0.0.1:6379\"]",
            "[\"unix:/run/a.sock:2 alpha\", \"unix:/run/b.sock\"]",
        );
    let c = Config::parse(&ketama, "t.toml").unwrap();
    let s = &c.upstream.servers;
    assert_eq!(
        (s[0].addr.as_str(), s[0].weight, s[0].name.as_str()),
        ("unix:/run/a.sock", 2, "alpha")
    );
    assert_eq!(
        (s[1].addr.as_str(), s[1].weight, s[1].name.as_str()),
        ("unix:/run/b.sock", 1, "/run/b.sock")
    );
    let e = error_of(
        &GOOD
            .replace("kind = \"standalone\"", "kind = \"cluster\"")
            .replace("\"127.0.0.1:6379\"", "\"unix:/run/redis.sock\""),
    );
    assert!(
        e.contains("a cluster's nodes announce TCP addresses"),
        "{e}"
    );
    let e = error_of(
        &GOOD
            .replace("\"127.0.0.1:6379\"", "\"unix:/run/redis.sock\"")
            .replace("connect_timeout", "tls = true\nconnect_timeout"),
    );
    assert!(e.contains("TLS is for TCP servers"), "{e}");
}

#[test]
fn quotas_upstreams_and_fleet_settings() {
    let tenant = "[[tenants]]\nname = \"a\"\npassword = \"p\"\nprefix = \"a:\"\n";
    let c = Config::parse(
        &format!(
            "{GOOD}\n[upstreams.premium]\nkind = \"cluster\"\nservers = [\"10.0.0.1:7000\"]\n\
             {tenant}max_memory = \"100MiB\"\nmax_keys = 5000\nupstream = \"premium\"\n"
        ),
        "t.toml",
    )
    .unwrap();
    let t = &c.tenants[0];
    assert_eq!(t.max_memory, Some(100 << 20));
    assert_eq!(t.max_keys, Some(5000));
    assert_eq!(t.upstream.as_deref(), Some("premium"));
    assert_eq!(c.upstreams["premium"].kind, UpstreamKind::Cluster);
    assert_eq!(c.quota.scan_rate, 20_000);
    assert!(!c.fleet.shared_limits);
    assert_eq!(c.tenant_series(), 100);

    let e = error_of(&format!("{GOOD}\n{tenant}upstream = \"nope\"\n"));
    assert!(
        e.contains("tenants[0].upstream: no [upstreams.nope] is defined"),
        "{e}"
    );
    // A named upstream is checked like the main one, under its own name.
    let e = error_of(&format!(
        "{GOOD}\n[upstreams.x]\nkind = \"standalone\"\nservers = [\"a:1\", \"b:2\"]\n"
    ));
    assert!(
        e.contains("upstreams.x.servers: kind \"standalone\" takes exactly one server"),
        "{e}"
    );
    let e = error_of(&format!(
        "{GOOD}\n[upstreams.x]\nkind = \"cluster\"\nservers = [\"a:1\"]\n\
         {tenant}isolation = \"database\"\ndatabase = 2\nupstream = \"x\"\n"
    ));
    assert!(e.contains("tenants[0].isolation"), "{e}");
    let e = error_of(&format!("{GOOD}\n{tenant}max_keys = 0\n"));
    assert!(e.contains("tenants[0].max_keys: must be at least 1"), "{e}");
    let e = error_of(&format!("{GOOD}\n{tenant}max_memory = \"lots\"\n"));
    assert!(e.contains("max_memory"), "{e}");
    let e = error_of(&format!("{GOOD}\n[quota]\nscan_rate = 0\n"));
    assert!(e.contains("quota.scan_rate: must be at least 1"), "{e}");
    // The fleet's keys must be out of every tenant's reach.
    let e = error_of(&format!(
        "{GOOD}\n[fleet]\nshared_limits = true\nnamespace = \"a:fleet:\"\n{tenant}"
    ));
    assert!(
        e.contains("tenants[0].prefix: \"a:\" and fleet.namespace \"a:fleet:\""),
        "{e}"
    );
    let e = error_of(&format!("{GOOD}\n[fleet]\nnamespace = \"{{kg}}\"\n"));
    assert!(e.contains("fleet.namespace"), "{e}");
}
