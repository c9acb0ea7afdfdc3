//! Redis Cluster placement: key → slot (CRC16 with hash tags, exactly as Redis computes it),
//! slot → node from `CLUSTER SLOTS`, and the redirections a node answers with.

use bytes::Bytes;

use crate::resp::value::Value;

pub const SLOTS: usize = 16384;

/// The slot of a key: CRC16-XMODEM of the key, or of the part between the first `{` and the
/// first `}` after it when that part is not empty, modulo 16384.
pub fn slot_of(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS as u16
}

/// One primary's slot ranges, as `CLUSTER SLOTS` reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    /// `host:port` of the primary.
    pub primary: String,
    pub ranges: Vec<(u16, u16)>,
    /// `host:port` of its replicas, sorted.
    pub replicas: Vec<String>,
}

/// Parse a `CLUSTER SLOTS` reply. `default_host` stands in for an empty host (a node that
/// does not know its own address reports ""). Shards are returned sorted by address.
pub fn parse_cluster_slots(reply: &Value, default_host: &str) -> Result<Vec<Shard>, String> {
    let Value::Array(Some(entries)) = reply else {
        return Err(format!("CLUSTER SLOTS: expected an array, got {reply:?}"));
    };
    let mut shards: Vec<Shard> = Vec::new();
    for entry in entries {
        let Value::Array(Some(fields)) = entry else {
            return Err("CLUSTER SLOTS: an entry is not an array".into());
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(Some(node)))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return Err("CLUSTER SLOTS: malformed entry".into());
        };
        if !(0..SLOTS as i64).contains(start) || !(*start..SLOTS as i64).contains(end) {
            return Err(format!("CLUSTER SLOTS: bad range {start}-{end}"));
        }
        let primary = node_addr(node, default_host)?;
        let mut replicas = Vec::new();
        for replica in &fields[3..] {
            let Value::Array(Some(replica)) = replica else {
                return Err("CLUSTER SLOTS: malformed replica".into());
            };
            replicas.push(node_addr(replica, default_host)?);
        }
        replicas.sort();
        let range = (*start as u16, *end as u16);
        match shards.iter_mut().find(|s| s.primary == primary) {
            Some(shard) => shard.ranges.push(range),
            None => shards.push(Shard {
                primary,
                ranges: vec![range],
                replicas,
            }),
        }
    }
    shards.sort_by(|a, b| a.primary.cmp(&b.primary));
    Ok(shards)
}

/// A node entry's `host:port` (`[host]:port` for IPv6).
fn node_addr(node: &[Value], default_host: &str) -> Result<String, String> {
    let (Some(Value::Bulk(Some(host))), Some(Value::Int(port))) = (node.first(), node.get(1))
    else {
        return Err("CLUSTER SLOTS: malformed node".into());
    };
    let host = match std::str::from_utf8(host) {
        Ok("") => default_host,
        Ok(h) => h,
        Err(_) => return Err("CLUSTER SLOTS: host is not text".into()),
    };
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// A redirection in a node's error reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redirect {
    /// `-MOVED slot host:port`: the slot lives there now; update the map.
    Moved { slot: u16, addr: String },
    /// `-ASK slot host:port`: for this one request, ask there (after ASKING).
    Ask { slot: u16, addr: String },
}

/// Parse `-MOVED 3999 127.0.0.1:6381\r\n` or `-ASK ...`; `None` for any other reply.
pub fn parse_redirect(reply: &[u8]) -> Option<Redirect> {
    let text = reply.strip_prefix(b"-")?.strip_suffix(b"\r\n")?;
    let text = std::str::from_utf8(text).ok()?;
    let mut words = text.split(' ');
    let kind = words.next()?;
    let slot = words
        .next()?
        .parse::<u16>()
        .ok()
        .filter(|s| (*s as usize) < SLOTS)?;
    let addr = words.next()?.to_string();
    if words.next().is_some() {
        return None;
    }
    match kind {
        "MOVED" => Some(Redirect::Moved { slot, addr }),
        "ASK" => Some(Redirect::Ask { slot, addr }),
        _ => None,
    }
}

/// Is this a transient cluster error worth retrying (`-TRYAGAIN`, `-CLUSTERDOWN`)?
pub fn is_transient(reply: &Bytes) -> bool {
    reply.starts_with(b"-TRYAGAIN") || reply.starts_with(b"-CLUSTERDOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on a real Redis 7.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"bar"), 5061);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"));
        assert_ne!(slot_of(b"foo{}{bar}"), slot_of(b"bar"));
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
        assert_eq!(slot_of(b"foo{bar}{zap}"), slot_of(b"bar"));
        assert_eq!(slot_of(b""), 0);
    }

    #[test]
    fn redirects() {
        assert_eq!(
            parse_redirect(b"-MOVED 3999 127.0.0.1:6381\r\n"),
            Some(Redirect::Moved {
                slot: 3999,
                addr: "127.0.0.1:6381".into()
            })
        );
        assert_eq!(
            parse_redirect(b"-ASK 1 10.0.0.1:7000\r\n"),
            Some(Redirect::Ask {
                slot: 1,
                addr: "10.0.0.1:7000".into()
            })
        );
        assert_eq!(parse_redirect(b"-MOVED 99999 h:1\r\n"), None);
        assert_eq!(parse_redirect(b"-ERR x\r\n"), None);
        assert_eq!(parse_redirect(b"+OK\r\n"), None);
    }
}
