use super::*;

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
    let e = error_of(&GOOD.replace("standalone", "ketama"));
    assert!(
        e.starts_with("t.toml: upstream.kind: kind \"ketama\" is not supported yet"),
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
