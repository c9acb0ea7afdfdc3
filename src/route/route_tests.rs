use super::*;
use crate::command::Command;
use crate::config::Config;
use crate::placement::slots::{slot_of, Shard};

fn cmd(line: &str) -> Command {
    Command::parse(
        line.split(' ')
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect(),
    )
}

fn ketama() -> Topology {
    let config = Config::parse(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"ketama\"\nhash_tag = \"{}\"\n\
         servers = [\"127.0.0.1:1:1 a\", \"127.0.0.1:2:1 b\", \"127.0.0.1:3:1 c\"]\n",
        "t",
    )
    .unwrap();
    Topology::start(&config)
}

fn cluster() -> Topology {
    let config = Config::parse(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"cluster\"\nservers = [\"127.0.0.1:1\"]\n",
        "t",
    )
    .unwrap();
    let seed = Topology::start(&config);
    let shards = vec![
        Shard {
            primary: "127.0.0.1:1".into(),
            ranges: vec![(0, 5460)],
            replicas: Vec::new(),
        },
        Shard {
            primary: "127.0.0.1:2".into(),
            ranges: vec![(5461, 10922)],
            replicas: Vec::new(),
        },
        Shard {
            primary: "127.0.0.1:3".into(),
            ranges: vec![(10923, 16383)],
            replicas: Vec::new(),
        },
    ];
    Topology::cluster(shards, &seed, &config)
}

/// Keys that land on distinct backends.
fn spread(topology: &Topology) -> Vec<String> {
    let mut seen = Vec::new();
    let mut keys = Vec::new();
    for i in 0.. {
        let key = format!("k{i}");
        let t = topology.target_of(key.as_bytes()).unwrap();
        if !seen.contains(&t.backend) {
            seen.push(t.backend);
            keys.push(key);
        }
        if keys.len() == 3 {
            return keys;
        }
    }
    unreachable!()
}

#[tokio::test]
async fn single_shard_commands_go_whole() {
    for topology in [ketama(), cluster()] {
        let [a, ..] = &spread(&topology)[..] else {
            unreachable!()
        };
        match plan(&cmd(&format!("GET {a}")), &topology).unwrap() {
            Plan::One(t) => assert_eq!(t, topology.target_of(a.as_bytes()).unwrap()),
            other => panic!("{other:?}"),
        }
        // Hash tags keep keys together.
        assert!(matches!(
            plan(&cmd("SUNIONSTORE {u}d {u}a {u}b"), &topology).unwrap(),
            Plan::One(_)
        ));
        // Keyless commands go to the first shard.
        assert!(matches!(
            plan(&cmd("TIME"), &topology).unwrap(),
            Plan::One(Target { backend: 0, .. })
        ));
    }
}

#[tokio::test]
async fn multi_key_commands_split_or_refuse() {
    for topology in [ketama(), cluster()] {
        let keys = spread(&topology);
        let (a, b, c) = (&keys[0], &keys[1], &keys[2]);
        let Plan::Split { parts, merge } =
            plan(&cmd(&format!("MGET {a} {b} {a} {c}")), &topology).unwrap()
        else {
            panic!("MGET should split")
        };
        assert_eq!(merge, Merge::Values);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].keys, vec![0, 2]);
        assert_eq!(parts[0].args.len(), 3);
        let Plan::Split { parts, merge } =
            plan(&cmd(&format!("MSET {a} 1 {b} 2")), &topology).unwrap()
        else {
            panic!("MSET should split")
        };
        assert_eq!(merge, Merge::AllOk);
        assert_eq!(
            parts[1].args.iter().map(|a| a.to_vec()).collect::<Vec<_>>(),
            vec![b"MSET".to_vec(), b.as_bytes().to_vec(), b"2".to_vec()]
        );
        // A key without its value, across shards: Redis's arity error, not a split.
        assert!(matches!(
            plan(&cmd(&format!("MSET {a} 1 {b} 2 {c}")), &topology),
            Err(Error::WrongArity("mset"))
        ));
        for refused in [
            format!("MSETNX {a} 1 {b} 2"),
            format!("RENAME {a} {b}"),
            format!("EVAL s 2 {a} {b}"),
            format!("SUNIONSTORE {a} {b}"),
        ] {
            assert!(
                matches!(plan(&cmd(&refused), &topology), Err(Error::CrossSlot)),
                "{refused}"
            );
        }
    }
}

#[tokio::test]
async fn cluster_needs_one_slot_not_just_one_node() {
    let topology = cluster();
    // Two keys on the same node but in different slots.
    let a = "k1";
    let node = topology.target_of(a.as_bytes()).unwrap().backend;
    let b = (2..)
        .map(|i| format!("k{i}"))
        .find(|k| {
            let t = topology.target_of(k.as_bytes()).unwrap();
            t.backend == node && t.slot != Some(slot_of(a.as_bytes()))
        })
        .unwrap();
    assert!(matches!(
        plan(&cmd(&format!("RENAME {a} {b}")), &topology),
        Err(Error::CrossSlot)
    ));
}

#[test]
fn scan_cursors_round_trip() {
    let c = scan_cursor(12345, 2, 7).unwrap();
    assert_eq!(c & 1023, 2);
    assert_eq!((c >> 10) & 1023, 7);
    assert_eq!(c >> 20, 12345);
    assert_eq!(scan_cursor(1 << 50, 0, 0), None);
    assert_ne!(scan_cursor(0, 1, 0), Some(0));
}

/// Commands learned from the servers route by their key specifications; one whose keys they do
/// not place is refused where it could land on the wrong shard, and forwarded to a single
/// server.
#[tokio::test]
async fn learned_commands_route_by_their_key_specifications() {
    use crate::command::learned::{Begin, Facts, Find, KeySpec, Table};
    let facts = |name: &str, begin: Begin| {
        let find = Find::Range {
            last: 0,
            step: 1,
            limit: 0,
        };
        let spec = KeySpec {
            begin,
            find,
            incomplete: false,
        };
        Facts::sample(name, vec![spec])
    };
    let table = arc_swap::ArcSwap::from_pointee(Table::build(
        vec![vec![
            facts("newkeyed", Begin::Index(1)),
            facts("newvague", Begin::Unknown),
        ]],
        None,
    ));
    let learned = |line: &str| {
        Command::parse_with(
            line.split(' ')
                .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                .collect(),
            Some(&table),
        )
    };
    for topology in [ketama(), cluster()] {
        let [a, ..] = &spread(&topology)[..] else {
            unreachable!()
        };
        match plan(&learned(&format!("NEWKEYED {a} x")), &topology).unwrap() {
            Plan::One(t) => assert_eq!(t, topology.target_of(a.as_bytes()).unwrap()),
            other => panic!("{other:?}"),
        }
        let refused = plan(&learned(&format!("NEWVAGUE {a}")), &topology).unwrap_err();
        assert!(
            String::from_utf8_lossy(&refused.to_reply()).contains("cannot tell which shard"),
            "{refused:?}"
        );
    }
    let standalone = Topology::start(
        &Config::parse(
            "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"standalone\"\nservers = [\"127.0.0.1:1\"]\n",
            "t",
        )
        .unwrap(),
    );
    assert!(matches!(
        plan(&learned("NEWVAGUE k"), &standalone),
        Ok(Plan::One(_))
    ));
}
