use super::*;
use crate::resp::value;

/// `COMMAND INFO hgetex lmpop xread vsim georadius migrate` from redis-server 8.2.3, as it
/// answered.
const REDIS8: &[u8] = include_bytes!("testdata/command_info_redis8.resp");

fn facts() -> Vec<Facts> {
    let reply = value::parse(&Bytes::from_static(REDIS8)).expect("a valid reply");
    parse_command_reply(&reply)
}

fn args(line: &str) -> Vec<Bytes> {
    line.split(' ')
        .map(|a| Bytes::copy_from_slice(a.as_bytes()))
        .collect()
}

fn spec_of(name: &str) -> &'static Spec {
    let f = facts().into_iter().find(|f| f.name == name).unwrap();
    intern(f).unwrap()
}

#[test]
fn a_command_reply_reads_as_facts() {
    let facts = facts();
    let names: Vec<&str> = facts.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["hgetex", "lmpop", "xread", "vsim", "georadius", "migrate"]
    );
    let hgetex = &facts[0];
    assert_eq!(hgetex.arity, -5);
    assert_eq!(hgetex.flags, flags::WRITE | flags::FAST);
    assert_eq!(hgetex.categories, ["write", "hash", "fast"]);
    assert_eq!(
        hgetex.key_specs,
        [KeySpec {
            begin: Begin::Index(1),
            find: Find::Range {
                last: 0,
                step: 1,
                limit: 0
            },
            incomplete: false
        }]
    );
    let xread = &facts[2];
    assert_eq!(
        xread.key_specs[0].begin,
        Begin::Keyword {
            keyword: b"streams"[..].into(),
            start_from: 1
        }
    );
}

#[test]
fn keys_are_found_as_redis_finds_them() {
    let positions = |name: &str, line: &str| key_positions(spec_of(name), &args(line));
    assert_eq!(
        positions("hgetex", "HGETEX h EX 10 FIELDS 1 f"),
        Some(vec![1])
    );
    assert_eq!(positions("lmpop", "LMPOP 2 a b LEFT"), Some(vec![2, 3]));
    // A key count that is not a number: the keys cannot be found.
    assert_eq!(positions("lmpop", "LMPOP x a b LEFT"), None);
    // A count larger than the arguments: the ones there are (the server answers the error).
    assert_eq!(positions("lmpop", "LMPOP 5 a LEFT"), Some(vec![2, 3]));
    assert_eq!(
        positions("xread", "XREAD COUNT 1 STREAMS s1 s2 0 0"),
        Some(vec![4, 5])
    );
    assert_eq!(positions("vsim", "VSIM v ELE e"), Some(vec![1]));
}

#[test]
fn incomplete_specifications_find_nothing() {
    // MIGRATE's KEYS specification is marked incomplete by the server.
    let migrate = spec_of("migrate");
    assert!(migrate.has(flags::KEYS_INCOMPLETE));
    assert_eq!(
        key_positions(migrate, &args("MIGRATE h 1 \"\" 0 5 KEYS a b")),
        None
    );
    // GEORADIUS's STORE specifications are keywords searched from argument 6.
    let georadius = spec_of("georadius");
    assert!(!georadius.has(flags::KEYS_INCOMPLETE));
    assert_eq!(
        key_positions(georadius, &args("GEORADIUS g 0 0 1 km STORE d")),
        Some(vec![1, 7])
    );
}

#[test]
fn only_what_every_primary_has_and_the_built_in_table_lacks() {
    let first = facts();
    let second: Vec<Facts> = facts().into_iter().filter(|f| f.name != "vsim").collect();
    let table = Table::build(vec![first, second], Some("8.2.3".into()));
    // lmpop, xread and georadius are built in; vsim is missing from the second server.
    assert_eq!(table.names(), ["hgetex"]);
    assert!(table.get(b"hgetex").is_some_and(|s| s.has(flags::LEARNED)));
    assert!(table.get(b"vsim").is_none());
    // The same definition learned twice is the same spec.
    assert!(std::ptr::eq(spec_of("hgetex"), spec_of("hgetex")));
}

#[test]
fn hostile_replies_learn_nothing_harmful() {
    for reply in [
        Value::Int(1),
        Value::Array(Some(vec![Value::Int(1)])),
        Value::Array(Some(vec![Value::Array(Some(vec![Value::Bulk(None)]))])),
    ] {
        assert!(parse_command_reply(&reply).is_empty());
    }
    // Key specifications of kinds keygate does not know make the command incomplete.
    let odd = Facts::sample(
        "odd",
        vec![KeySpec {
            begin: Begin::Unknown,
            find: Find::Unknown,
            incomplete: false,
        }],
    );
    assert!(intern(odd).unwrap().has(flags::KEYS_INCOMPLETE));
}
