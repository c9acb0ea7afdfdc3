//! kind = "ketama": keys land exactly where twemproxy (nutcracker 0.5.0) puts them, and commands
//! spanning shards answer exactly as one Redis would.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, wait_for_port, Keygate, Raw, Redis};
use redis::AsyncCommands;

/// A real nutcracker in front of `servers` (twemproxy's own server syntax); killed on drop.
struct Nutcracker {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nutcracker {
    fn start(servers: &[String], hash: &str) -> Nutcracker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut yaml = format!(
            "pool:\n  listen: 127.0.0.1:{port}\n  hash: {hash}\n  hash_tag: \"{{}}\"\n  distribution: ketama\n  \
             redis: true\n  auto_eject_hosts: false\n  server_connections: 1\n  servers:\n"
        );
        for s in servers {
            yaml.push_str(&format!("    - {s}\n"));
        }
        let conf = dir.path().join("nutcracker.yml");
        std::fs::write(&conf, yaml).unwrap();
        let binary = ["nutcracker", "/usr/sbin/nutcracker"]
            .into_iter()
            .find(|b| {
                Command::new(b)
                    .arg("-V")
                    .stderr(Stdio::null())
                    .status()
                    .is_ok()
            })
            .expect("nutcracker is missing: install it (apt-get install nutcracker)");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .args(["-s", &free_port().to_string(), "-a", "127.0.0.1"])
            .arg("-o")
            .arg(dir.path().join("nutcracker.log"))
            .arg("-p")
            .arg(dir.path().join("nutcracker.pid"))
            .spawn()
            .unwrap();
        wait_for_port(port);
        Nutcracker {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Nutcracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 10 000 keys: plain, hash-tagged, and with bytes >= 0x80 (twemproxy hashes signed chars).
fn keys(prefix: &str) -> Vec<Vec<u8>> {
    (0..10_000)
        .map(|i| match i % 4 {
            0 => format!("{prefix}:plain:{i}").into_bytes(),
            1 => format!("{prefix}:{{tag{}}}:{i}", i % 97).into_bytes(),
            2 => {
                let mut k = format!("{prefix}:bin:{i}:").into_bytes();
                k.extend_from_slice(&[0x80, 0xc3, 0xa9, 0xff, (i % 256) as u8]);
                k
            }
            _ => format!("{prefix}:{{}}empty-tag:{i}").into_bytes(),
        })
        .collect()
}

/// Pipelined SET key=key over a raw connection (nutcracker closes connections on the
/// CLIENT SETINFO that client libraries send first, so no library is used here).
async fn write_all(con: &mut Raw, keys: &[Vec<u8>]) {
    for chunk in keys.chunks(500) {
        let mut batch = Vec::new();
        for key in chunk {
            batch.extend_from_slice(&request(&[b"SET", key, key]));
        }
        con.send(&batch).await;
        for _ in chunk {
            assert_eq!(con.reply().await.unwrap(), b"+OK\r\n");
        }
    }
}

/// How many keys read back (pipelined GETs) with their own name as value.
async fn read_all(con: &mut Raw, keys: &[Vec<u8>]) -> usize {
    let mut found = 0;
    for chunk in keys.chunks(500) {
        let mut batch = Vec::new();
        for key in chunk {
            batch.extend_from_slice(&request(&[b"GET", key]));
        }
        con.send(&batch).await;
        for key in chunk {
            let mut want = format!("${}\r\n", key.len()).into_bytes();
            want.extend_from_slice(key);
            want.extend_from_slice(b"\r\n");
            if con.reply().await.unwrap() == want {
                found += 1;
            }
        }
    }
    found
}

fn request(args: &[&[u8]]) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    let args: Vec<bytes::Bytes> = args
        .iter()
        .map(|a| bytes::Bytes::copy_from_slice(a))
        .collect();
    keygate::resp::encode_request(&args, &mut out);
    out.to_vec()
}

/// Placement identical to twemproxy's, both ways, for mixed weights and names, for every hash
/// function keygate offers.
#[tokio::test]
async fn placement_matches_nutcracker_both_ways() {
    let shards: Vec<Redis> = (0..3).map(|_| Redis::start()).collect();
    for hash in ["fnv1a_64", "md5", "fnv1_64", "fnv1a_32", "fnv1_32"] {
        for shard in &shards {
            let mut con = common::multiplexed(&shard.client()).await;
            let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
        }
        let servers = vec![
            format!("127.0.0.1:{}:1 alpha", shards[0].port),
            format!("127.0.0.1:{}:2", shards[1].port),
            format!("127.0.0.1:{}:3 gamma", shards[2].port),
        ];
        let nutcracker = Nutcracker::start(&servers, hash);
        let list = servers
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let kg = Keygate::start_config(&format!(
            "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"ketama\"\nhash = \"{hash}\"\nhash_tag = \"{{}}\"\n\
             servers = [{list}]\n[admin]\nlisten = \"127.0.0.1:0\"\n"
        ))
        .await;
        let mut via_nutcracker =
            Raw::connect(format!("127.0.0.1:{}", nutcracker.port).parse().unwrap()).await;
        let mut via_keygate = kg.raw().await;

        let first = keys("nc");
        write_all(&mut via_nutcracker, &first).await;
        assert_eq!(
            read_all(&mut via_keygate, &first).await,
            first.len(),
            "{hash}: written by nutcracker, read by keygate"
        );

        let second = keys("kg");
        write_all(&mut via_keygate, &second).await;
        assert_eq!(
            read_all(&mut via_nutcracker, &second).await,
            second.len(),
            "{hash}: written by keygate, read by nutcracker"
        );

        // Every shard holds keys; with md5, a share growing with its weight (1:2:3).
        let mut sizes = Vec::new();
        for shard in &shards {
            sizes.push(common::dbsize(shard).await);
        }
        assert!(sizes.iter().all(|&n| n > 0), "{hash}: {sizes:?}");
        if hash == "md5" {
            // md5 spreads evenly enough to see the weights; fnv1a_64 skews (in twemproxy too).
            assert!(
                sizes[0] < sizes[1] && sizes[1] < sizes[2],
                "{hash}: {sizes:?}"
            );
        }
    }
}

async fn ketama_keygate(shards: &[Redis]) -> Keygate {
    Keygate::start_ketama(shards, "").await
}

/// Multi-key commands across shards answer byte-for-byte as one Redis holding the same data.
#[tokio::test]
async fn cross_shard_commands_answer_as_one_redis() {
    let shards: Vec<Redis> = (0..3).map(|_| Redis::start()).collect();
    let reference = Redis::start();
    let kg = ketama_keygate(&shards).await;
    let mut through = kg.raw().await;
    let mut direct = Raw::connect(format!("127.0.0.1:{}", reference.port).parse().unwrap()).await;
    let keys: Vec<String> = (0..12).map(|i| format!("{i}key")).collect();
    let mut script = common::multi_key_script(&keys);
    for line in [
        "MSET {t}a 1 {t}b 2",
        "MSETNX {t}c 3 {t}d 4",
        "SUNIONSTORE {t}s {t}x {t}y",
        "RENAME {t}a {t}e",
        "MGET {t}a {t}b {t}c {t}e",
        "DEL {t}b 11key",
        "DBSIZE",
        // Malformed across shards: answered as Redis answers it.
        "MSET 0key 1 1key 2 2key",
        "MGET 0key 1key",
        "MGET nothing",
    ] {
        script.push(line.split(' ').map(String::from).collect());
    }
    common::assert_same_replies(&mut through, &mut direct, &script).await;
    // The same again from RESP3 clients: merged replies carry RESP3 elements (nulls).
    let mut through3 = kg.raw().await;
    let mut direct3 = Raw::connect(format!("127.0.0.1:{}", reference.port).parse().unwrap()).await;
    for raw in [&mut through3, &mut direct3] {
        assert!(raw.call(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
    }
    common::assert_same_replies(&mut through3, &mut direct3, &script).await;
    // Commands whose keys must be together are refused across shards.
    let mut msetnx: Vec<Vec<u8>> = vec![b"MSETNX".to_vec()];
    for i in 0..12 {
        msetnx.push(format!("{i}key").into_bytes());
        msetnx.push(b"1".to_vec());
    }
    let reply = through
        .call(&msetnx.iter().map(|a| &a[..]).collect::<Vec<_>>())
        .await;
    assert_eq!(
        reply,
        b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"
    );
}

/// KEYS, SCAN, DBSIZE, RANDOMKEY, FLUSHDB and INFO cover every shard. (Keys vary in their first
/// characters: twemproxy's truncated FNV-1a hardly spreads keys that differ only at the end, and
/// keygate places keys exactly as twemproxy does.)
#[tokio::test]
async fn keyspace_wide_commands_cover_every_shard() {
    let shards: Vec<Redis> = (0..3).map(|_| Redis::start()).collect();
    let kg = ketama_keygate(&shards).await;
    let mut con = kg.connection().await;
    let all: Vec<String> = (0..1000).map(|i| format!("{i}:item")).collect();
    let mut pipe = redis::pipe();
    for k in &all {
        pipe.set(k, 1).ignore();
    }
    let _: () = pipe.query_async(&mut con).await.unwrap();
    // The ring depends on the servers' (random) ports; any real share proves the shard is used.
    for shard in &shards {
        assert!(
            common::dbsize(shard).await > 10,
            "keys should spread over every shard"
        );
    }
    let size: usize = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
    assert_eq!(size, 1000);
    let mut listed: Vec<String> = con.keys("*:item").await.unwrap();
    listed.sort();
    let mut want = all.clone();
    want.sort();
    assert_eq!(listed, want);

    // A client's SCAN loop sees every key exactly once.
    assert_eq!(
        common::scan_all(&mut con, 50).await,
        want,
        "every key exactly once"
    );
    // With MATCH and TYPE options passed through.
    let mut iter: redis::AsyncIter<String> = con.scan_match("1*").await.unwrap();
    let mut matched = Vec::new();
    while let Some(k) = iter.next_item().await {
        matched.push(k);
    }
    drop(iter);
    assert_eq!(
        matched.len(),
        all.iter().filter(|k| k.starts_with('1')).count()
    );

    let random: String = redis::cmd("RANDOMKEY").query_async(&mut con).await.unwrap();
    assert!(random.ends_with(":item"));
    let info: String = redis::cmd("INFO").query_async(&mut con).await.unwrap();
    assert!(
        info.starts_with("# keygate\r\n")
            && info.contains("upstream_kind:ketama")
            && info.contains("db0:keys=1000,"),
        "{info}"
    );

    let mut raw = kg.raw().await;
    let stale = raw.call(&[b"SCAN", b"5"]).await;
    assert!(
        stale.starts_with(b"-ERR keygate: this SCAN cursor was made before the topology changed"),
        "{}",
        String::from_utf8_lossy(&stale)
    );
    assert_eq!(raw.call(&[b"SCAN", b"x"]).await, b"-ERR invalid cursor\r\n");

    let _: () = redis::cmd("FLUSHDB").query_async(&mut con).await.unwrap();
    let size: usize = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
    assert_eq!(size, 0);
    let none: Option<String> = redis::cmd("RANDOMKEY").query_async(&mut con).await.unwrap();
    assert_eq!(none, None);
}

/// A shard that is down makes a split command fail as a whole, with a clear error.
#[tokio::test]
async fn a_failed_shard_fails_the_whole_split_command() {
    let mut shards: Vec<Redis> = (0..3).map(|_| Redis::start()).collect();
    let kg = ketama_keygate(&shards).await;
    let mut raw = kg.raw().await;
    let keys: Vec<String> = (0..30).map(|i| format!("{i}f")).collect();
    let mut mset: Vec<&[u8]> = vec![b"MSET"];
    for k in &keys {
        mset.push(k.as_bytes());
        mset.push(b"v");
    }
    assert_eq!(raw.call(&mset).await, b"+OK\r\n");
    // Ring positions derive from the servers' names (with their random ports): kill a shard that
    // holds some of these keys.
    let mut victim = 0;
    for (i, shard) in shards.iter().enumerate() {
        if common::dbsize(shard).await > 0 {
            victim = i;
        }
    }
    shards[victim].kill();
    let mut mget: Vec<&[u8]> = vec![b"MGET"];
    mget.extend(keys.iter().map(|k| k.as_bytes()));
    let reply = String::from_utf8(raw.call(&mget).await).unwrap();
    assert!(
        reply.starts_with("-ERR keygate:") && reply.contains(&shards[victim].addr()),
        "{reply}"
    );
    shards[victim].restart();
}

/// `auto_eject_hosts`: while a shard's breaker is open its keys go to the other shards (the ring
/// rebuilt without it, as twemproxy does), the other shards' keys stay where they are, and the
/// shard gets its keys back once its breaker closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_eject_hosts_moves_a_failed_shards_keys_and_back() {
    let mut shards: Vec<Redis> = (0..3).map(|_| Redis::start()).collect();
    let list = shards
        .iter()
        .map(|s| format!("\"{}\"", s.addr()))
        .collect::<Vec<_>>()
        .join(", ");
    let kg = Keygate::start_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkind = \"ketama\"\nhash = \"md5\"\nservers = [{list}]\n\
         connect_timeout = \"200ms\"\nfailures_to_open = 2\nopen_for = \"500ms\"\nauto_eject_hosts = true\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n"
    ))
    .await;
    let mut con = kg.connection().await;
    let keys: Vec<String> = (0..300).map(|i| format!("key:{i}")).collect();
    for k in &keys {
        let _: () = con.set(k, "before").await.unwrap();
    }
    let mut placement = Vec::new();
    for k in &keys {
        let mut on = None;
        for (i, shard) in shards.iter().enumerate() {
            let mut direct = common::multiplexed(&shard.client()).await;
            let exists: bool = direct.exists(k).await.unwrap();
            if exists {
                on = Some(i);
            }
        }
        placement.push(on.expect("every key is on a shard"));
    }
    // The victim: the first key's shard (placement depends on the random ports).
    let victim = placement[0];
    let victim_key = &keys[0];
    shards[victim].kill();
    // Until the victim is ejected its keys fail; then they are written to the other shards.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let set: redis::RedisResult<()> = con.set(victim_key, "moved").await;
        if set.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never ejected: {set:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got: String = con.get(victim_key).await.unwrap();
    assert_eq!(got, "moved");
    // Keys of the live shards did not move.
    for (k, &p) in keys.iter().zip(&placement) {
        if p != victim {
            let v: String = con.get(k).await.unwrap();
            assert_eq!(v, "before", "{k} moved");
        }
    }
    // Back: the probe closes the breaker, the ring is whole again, the key is on the victim again (empty
    // after its restart).
    shards[victim].restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v: Option<String> = con.get(victim_key).await.unwrap_or(Some("err".into()));
        if v.is_none() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never came back: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
