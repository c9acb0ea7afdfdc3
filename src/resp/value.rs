//! Decoded RESP values, for the few replies keygate must read rather than forward: topology
//! (`CLUSTER SLOTS`), and the parts of a split command whose replies are merged.
//!
//! RESP3 replies (from connections that speak it for RESP3 clients) read as their RESP2
//! counterparts: a map as an array of its keys and values, a set or push as an array, null as a
//! nil bulk, a double or big number as a simple string, a verbatim string as a bulk of its text.
//!
//! Depth is capped (these replies are shallow), so a hostile backend cannot make the recursion
//! deep. `elements` splits an array reply into its elements' raw bytes without copying, which is
//! all that merging MGET or KEYS replies needs.

use bytes::Bytes;

use super::parse_int;
use super::reply::Scanner;

const MAX_DEPTH: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Simple(Bytes),
    Error(Bytes),
    Int(i64),
    Bulk(Option<Bytes>),
    Array(Option<Vec<Value>>),
}

/// Decode one complete reply (`frame` holds exactly one). `None` if malformed or too deep.
pub fn parse(frame: &Bytes) -> Option<Value> {
    let (value, used) = parse_at(frame, 0, 0)?;
    (used == frame.len()).then_some(value)
}

fn line(frame: &Bytes, at: usize) -> Option<(&[u8], usize)> {
    let end = memchr::memchr(b'\r', frame.get(at..)?)? + at;
    (frame.get(end + 1) == Some(&b'\n')).then(|| (&frame[at..end], end + 2))
}

fn parse_at(frame: &Bytes, at: usize, depth: usize) -> Option<(Value, usize)> {
    if depth > MAX_DEPTH {
        return None;
    }
    let (header, next) = line(frame, at)?;
    let (&kind, rest) = header.split_first()?;
    let rest_bytes = || frame.slice(at + 1..at + 1 + rest.len());
    match kind {
        b'+' => Some((Value::Simple(rest_bytes()), next)),
        b'-' => Some((Value::Error(rest_bytes()), next)),
        b':' => Some((Value::Int(parse_int(rest)?), next)),
        b',' | b'(' => Some((Value::Simple(rest_bytes()), next)),
        b'#' => match rest {
            b"t" => Some((Value::Int(1), next)),
            b"f" => Some((Value::Int(0), next)),
            _ => None,
        },
        b'_' if rest.is_empty() => Some((Value::Bulk(None), next)),
        b'$' | b'=' | b'!' => match parse_int(rest)? {
            -1 if kind == b'$' => Some((Value::Bulk(None), next)),
            n if n >= 0 => {
                let end = next.checked_add(n as usize)?;
                let body = frame.get(next..end)?;
                if frame.get(end..end + 2)? != b"\r\n" {
                    return None;
                }
                let value = match kind {
                    b'$' => Value::Bulk(Some(frame.slice(next..end))),
                    // "txt:" or "mkd:" then the text.
                    b'=' if body.get(3) == Some(&b':') => {
                        Value::Bulk(Some(frame.slice(next + 4..end)))
                    }
                    b'!' => Value::Error(frame.slice(next..end)),
                    _ => return None,
                };
                Some((value, end + 2))
            }
            _ => None,
        },
        b'*' | b'~' | b'>' | b'%' => match parse_int(rest)? {
            -1 if kind == b'*' => Some((Value::Array(None), next)),
            n if n >= 0 => {
                let n = if kind == b'%' { n.checked_mul(2)? } else { n };
                let mut items = Vec::with_capacity((n as usize).min(1024));
                let mut at = next;
                for _ in 0..n {
                    let (item, after) = parse_at(frame, at, depth + 1)?;
                    items.push(item);
                    at = after;
                }
                Some((Value::Array(Some(items)), at))
            }
            _ => None,
        },
        _ => None,
    }
}

/// The raw bytes of each element of an array reply, without copying. `None` if `frame` is not
/// a (non-null) array.
///
/// RESP3 sets and pushes count as arrays, and a map as the array of its keys and values.
pub fn elements(frame: &Bytes) -> Option<Vec<Bytes>> {
    let (header, mut at) = line(frame, 0)?;
    let count = match header.split_first()? {
        (b'*' | b'~' | b'>', n) => parse_int(n)?,
        (b'%', n) => parse_int(n)?.checked_mul(2)?,
        _ => return None,
    };
    if count < 0 {
        return None;
    }
    let mut items = Vec::with_capacity((count as usize).min(1024));
    for _ in 0..count {
        let len = Scanner::new(usize::MAX).scan(&frame[at..]).ok()??.len;
        items.push(frame.slice(at..at + len));
        at += len;
    }
    (at == frame.len()).then_some(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_replies() {
        let frame = Bytes::from_static(b"*3\r\n:1\r\n$2\r\nab\r\n*2\r\n+OK\r\n$-1\r\n");
        assert_eq!(
            parse(&frame),
            Some(Value::Array(Some(vec![
                Value::Int(1),
                Value::Bulk(Some(Bytes::from_static(b"ab"))),
                Value::Array(Some(vec![
                    Value::Simple(Bytes::from_static(b"OK")),
                    Value::Bulk(None)
                ])),
            ])))
        );
        assert_eq!(parse(&Bytes::from_static(b"$3\r\nab\r\n")), None);
        let deep = Bytes::from(
            b"*1\r\n"
                .repeat(100)
                .into_iter()
                .chain(b":1\r\n".iter().copied())
                .collect::<Vec<u8>>(),
        );
        assert_eq!(parse(&deep), None);
    }

    #[test]
    fn splits_array_elements() {
        let frame = Bytes::from_static(b"*3\r\n$1\r\na\r\n$-1\r\n*1\r\n:5\r\n");
        let items = elements(&frame).unwrap();
        assert_eq!(
            items,
            vec![
                Bytes::from_static(b"$1\r\na\r\n"),
                Bytes::from_static(b"$-1\r\n"),
                Bytes::from_static(b"*1\r\n:5\r\n"),
            ]
        );
        assert_eq!(elements(&Bytes::from_static(b"+OK\r\n")), None);
    }

    #[test]
    fn reads_resp3_as_resp2() {
        let b = |s: &'static [u8]| Bytes::from_static(s);
        assert_eq!(
            parse(&b(b"%1\r\n$1\r\nk\r\n,1.5\r\n")),
            Some(Value::Array(Some(vec![
                Value::Bulk(Some(b(b"k"))),
                Value::Simple(b(b"1.5"))
            ])))
        );
        assert_eq!(parse(&b(b"_\r\n")), Some(Value::Bulk(None)));
        assert_eq!(parse(&b(b"#t\r\n")), Some(Value::Int(1)));
        assert_eq!(
            parse(&b(b"=8\r\ntxt:abcd\r\n")),
            Some(Value::Bulk(Some(b(b"abcd"))))
        );
        assert_eq!(
            parse(&b(b">2\r\n$1\r\na\r\n:1\r\n")),
            Some(Value::Array(Some(vec![
                Value::Bulk(Some(b(b"a"))),
                Value::Int(1)
            ])))
        );
        assert_eq!(elements(&b(b"%1\r\n$1\r\nk\r\n:2\r\n")).unwrap().len(), 2);
        assert_eq!(elements(&b(b"~1\r\n:2\r\n")).unwrap().len(), 1);
    }
}
