//! Merging the replies of a command that went to several shards into the one reply a single
//! Redis would have given. Pure: replies in, reply out.
//!
//! If any shard answered with an error, the merged reply is that error: a partial result is
//! never passed off as a whole one.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

use crate::resp::{self, value};

/// How replies combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// MGET: each shard's array holds the values of its keys; put them back in key order.
    Values,
    /// DEL, UNLINK, EXISTS, TOUCH, DBSIZE: add the integers.
    Sum,
    /// MSET, FLUSHDB, FLUSHALL, SCRIPT FLUSH: `+OK` when every shard said so.
    AllOk,
    /// KEYS: all the arrays' elements.
    Concat,
    /// SCRIPT LOAD: every shard must give the same reply.
    Same,
    /// RANDOMKEY: any shard's non-nil reply.
    AnyValue,
    /// INFO: keygate's section, then `# Keyspace` summed over the shards.
    Info,
}

/// Combine `replies` (one per part, in part order). `layout[i]` lists, for `Values`, the original
/// key ordinals answered by reply `i`. `info_header` is keygate's own INFO section.
pub fn combine(merge: Merge, replies: &[Bytes], layout: &[Vec<usize>], info_header: &str) -> Bytes {
    if let Some(error) = replies.iter().find(|r| r.first() == Some(&b'-')) {
        return error.clone();
    }
    let malformed =
        || resp::error("ERR keygate: a shard sent an unexpected reply to a split command");
    match merge {
        Merge::Values => {
            let total: usize = layout.iter().map(Vec::len).sum();
            let mut slots: Vec<Option<Bytes>> = vec![None; total];
            for (reply, ordinals) in replies.iter().zip(layout) {
                let Some(items) = value::elements(reply) else {
                    return malformed();
                };
                if items.len() != ordinals.len() {
                    return malformed();
                }
                for (item, &ordinal) in items.into_iter().zip(ordinals) {
                    slots[ordinal] = Some(item);
                }
            }
            let mut out = BytesMut::new();
            resp::put_header(&mut out, b'*', total as i64);
            for item in slots {
                match item {
                    Some(item) => out.put_slice(&item),
                    None => return malformed(),
                }
            }
            out.freeze()
        }
        Merge::Sum => {
            let mut sum: i64 = 0;
            for reply in replies {
                let Some(n) = reply
                    .strip_prefix(b":")
                    .and_then(|r| r.strip_suffix(b"\r\n"))
                    .and_then(resp::parse_int)
                else {
                    return malformed();
                };
                sum = sum.saturating_add(n);
            }
            resp::integer(sum)
        }
        Merge::AllOk => match replies.iter().find(|r| &r[..] != b"+OK\r\n") {
            Some(_) => malformed(),
            None => resp::simple("OK"),
        },
        Merge::Concat => {
            let mut items = Vec::new();
            for reply in replies {
                let Some(part) = value::elements(reply) else {
                    return malformed();
                };
                items.extend(part);
            }
            let mut out = BytesMut::new();
            resp::put_header(&mut out, b'*', items.len() as i64);
            for item in items {
                out.put_slice(&item);
            }
            out.freeze()
        }
        Merge::Same => {
            if replies.windows(2).all(|w| w[0] == w[1]) {
                replies.first().cloned().unwrap_or_else(malformed)
            } else {
                resp::error("ERR keygate: the shards answered differently")
            }
        }
        Merge::AnyValue => {
            let start = if replies.is_empty() {
                0
            } else {
                fastrand::usize(..replies.len())
            };
            let rotated = replies[start..].iter().chain(&replies[..start]);
            rotated
                .clone()
                .find(|r| !matches!(&r[..], b"$-1\r\n" | b"_\r\n"))
                .or_else(|| rotated.clone().next())
                .cloned()
                .unwrap_or_else(|| resp::bulk(None))
        }
        Merge::Info => {
            // The first shard's sections but its keyspace, then every shard's keyspace summed.
            let mut texts = Vec::with_capacity(replies.len());
            for reply in replies {
                let Some(value::Value::Bulk(Some(text))) = value::parse(reply) else {
                    return malformed();
                };
                texts.push(String::from_utf8_lossy(&text).into_owned());
            }
            // db -> (keys, expires)
            let mut dbs: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
            let mut keyspace = false;
            for text in &texts {
                for line in text.lines() {
                    if line.starts_with("# Keyspace") {
                        keyspace = true;
                    }
                    let Some((db, fields)) = line.split_once(':') else {
                        continue;
                    };
                    let Some(db) = db.strip_prefix("db").and_then(|n| n.parse::<u32>().ok()) else {
                        continue;
                    };
                    let entry = dbs.entry(db).or_default();
                    for field in fields.split(',') {
                        match field.split_once('=') {
                            Some(("keys", n)) => entry.0 += n.parse::<u64>().unwrap_or(0),
                            Some(("expires", n)) => entry.1 += n.parse::<u64>().unwrap_or(0),
                            _ => {}
                        }
                    }
                }
            }
            let mut text = String::from(info_header);
            let mut in_keyspace = false;
            for line in texts.first().map_or("", String::as_str).lines() {
                if line.starts_with('#') {
                    in_keyspace = line.starts_with("# Keyspace");
                }
                if !in_keyspace {
                    // Sections are separated by a blank line.
                    if line.starts_with('#') && !text.is_empty() && !text.ends_with("\r\n\r\n") {
                        text.push_str("\r\n");
                    }
                    text.push_str(line);
                    text.push_str("\r\n");
                }
            }
            if keyspace {
                while text.ends_with("\r\n\r\n") {
                    text.truncate(text.len() - 2);
                }
                text.push_str("\r\n# Keyspace\r\n");
                for (db, (keys, expires)) in dbs {
                    text.push_str(&format!(
                        "db{db}:keys={keys},expires={expires},avg_ttl=0\r\n"
                    ));
                }
            }
            resp::bulk(Some(text.as_bytes()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn values_return_in_key_order() {
        let replies = [b("*2\r\n$1\r\na\r\n$-1\r\n"), b("*1\r\n$1\r\nb\r\n")];
        let got = combine(Merge::Values, &replies, &[vec![0, 2], vec![1]], "");
        assert_eq!(got, b("*3\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n"));
    }

    #[test]
    fn sums_oks_and_errors() {
        assert_eq!(
            combine(Merge::Sum, &[b(":2\r\n"), b(":3\r\n")], &[], ""),
            b(":5\r\n")
        );
        assert_eq!(
            combine(Merge::AllOk, &[b("+OK\r\n"), b("+OK\r\n")], &[], ""),
            b("+OK\r\n")
        );
        assert_eq!(
            combine(Merge::Sum, &[b(":2\r\n"), b("-ERR boom\r\n")], &[], ""),
            b("-ERR boom\r\n")
        );
        assert!(combine(Merge::Sum, &[b("+OK\r\n")], &[], "").starts_with(b"-ERR keygate"));
    }

    #[test]
    fn info_sums_keyspaces() {
        let one = resp::bulk(Some(b"# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=5\r\n"));
        let two = resp::bulk(Some(b"# Keyspace\r\ndb0:keys=4,expires=0,avg_ttl=0\r\n"));
        let got = combine(Merge::Info, &[one, two], &[], "# keygate\r\nversion:1\r\n");
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(
            text.contains(
                "# keygate\r\nversion:1\r\n\r\n# Keyspace\r\ndb0:keys=7,expires=1,avg_ttl=0\r\n"
            ),
            "{text}"
        );
    }
}
