//! RESP on the wire, without I/O: the client request decoder, the backend reply scanner, and
//! the encoders for what keygate writes itself.
//!
//! Why not the `redis-protocol` crate here: a proxy needs three things from its codec that a
//! general frame decoder does not give. Requests must be decoded *resumably* (a decoder that
//! restarts from the first byte each time a TCP piece arrives costs O(n²) on a million-argument
//! command sent in small pieces), Redis's inline syntax must be parsed exactly as Redis parses it,
//! and replies must be *delimited* rather than decoded (their bytes are forwarded untouched, so
//! building a tree of frames would be wasted work) by a scanner that never recurses, whatever
//! depth a Lua script makes Redis nest a reply to.
//!
//! Measured against the crate on the same inputs (`cargo bench --bench codec_choice`, 2-core
//! shared machine, 2026-12-03; requests decoded from a `BytesMut` into `Vec<Bytes>` arguments,
//! replies delimited with the crate's zero-copy `decode_range`):
//!
//! | input | keygate | redis-protocol 6.0 | allocations per item, keygate / crate |
//! |---|---:|---:|---:|
//! | 100 pipelined SETs, 32 B values | 21.3 µs | 23.5 µs | 1.02 / 3.02 |
//! | 4 SETs of 512 KiB | 54.9 µs | 52.4 µs | 1.50 / 3.50 |
//! | 10 MGETs of 1000 keys | 597 µs | 614 µs | 1.20 / 3.20 |
//! | reply: 100 bulks of 32 B | 1.54 µs | 4.71 µs | 0 / 0 |
//! | reply: one 1 MiB bulk | 31 ns | 65 ns | 0 / 0 |
//! | reply: an array of 1000 bulks | 12.9 µs | 37.8 µs | 1 / 1 |
//! | reply: 10 arrays nested 100 deep | 18.6 µs | 55.7 µs | 6 / 100 |
//!
//! Large bulks are a copy either way; on the small requests of the hot path keygate is ~10 %
//! faster with a third of the allocations, and the reply scanner is ~3× faster (the crate's
//! range decoder also recurses, one allocation per level). So the hand-written parts stay.

pub mod reply;
pub mod request;
pub mod value;

use bytes::{BufMut, Bytes, BytesMut};

/// Append `*N\r\n$len\r\narg\r\n...` for `args` to `out`: how every request leaves keygate.
/// Client bytes are never forwarded as received; they are re-encoded from the parsed arguments.
pub fn encode_request(args: &[Bytes], out: &mut BytesMut) {
    let size: usize = args.iter().map(|a| a.len() + 16).sum::<usize>() + 16;
    out.reserve(size);
    put_header(out, b'*', args.len() as i64);
    for arg in args {
        put_header(out, b'$', arg.len() as i64);
        out.put_slice(arg);
        out.put_slice(b"\r\n");
    }
}

/// How many bytes `encode_request` writes for `args` (a request's size in a query buffer).
pub fn request_len(args: &[Bytes]) -> usize {
    let header = |n: usize| 3 + n.to_string().len();
    header(args.len())
        + args
            .iter()
            .map(|a| header(a.len()) + a.len() + 2)
            .sum::<usize>()
}

/// `+text\r\n`
pub fn simple(text: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 3);
    out.put_u8(b'+');
    out.put_slice(text.as_bytes());
    out.put_slice(b"\r\n");
    out.freeze()
}

/// `-text\r\n`; `text` must start with an error code such as `ERR`. CR and LF in it are replaced
/// by spaces, as Redis does, so an error can never break the framing.
pub fn error(text: &str) -> Bytes {
    error_bytes(text.as_bytes())
}

/// `error` for text that need not be UTF-8 (it may echo client bytes).
pub fn error_bytes(text: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 3);
    out.put_u8(b'-');
    out.extend(
        text.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.put_slice(b"\r\n");
    out.freeze()
}

/// `:n\r\n`
pub fn integer(n: i64) -> Bytes {
    let mut out = BytesMut::with_capacity(24);
    put_header(&mut out, b':', n);
    out.freeze()
}

/// `$len\r\ndata\r\n`, or the null bulk `$-1\r\n` for `None`.
pub fn bulk(data: Option<&[u8]>) -> Bytes {
    let mut out = BytesMut::new();
    put_bulk(&mut out, data);
    out.freeze()
}

/// A null: RESP3's own, or RESP2's null bulk.
pub fn null(resp3: bool) -> Bytes {
    Bytes::from_static(if resp3 { b"_\r\n" } else { b"$-1\r\n" })
}

/// Append a bulk string (or the null bulk) to `out`.
pub fn put_bulk(out: &mut BytesMut, data: Option<&[u8]>) {
    match data {
        Some(d) => {
            out.reserve(d.len() + 24);
            put_header(out, b'$', d.len() as i64);
            out.put_slice(d);
            out.put_slice(b"\r\n");
        }
        None => out.put_slice(b"$-1\r\n"),
    }
}

/// Append `<kind><n>\r\n`: an array, bulk or integer header.
pub fn put_header(out: &mut BytesMut, kind: u8, n: i64) {
    let mut digits = itoa::Buffer::new();
    out.put_u8(kind);
    out.put_slice(digits.format(n).as_bytes());
    out.put_slice(b"\r\n");
}

/// Parse a RESP length or integer exactly as Redis's `string2ll` does: an optional `-`, then
/// digits with no leading zero (except `0` itself), no sign on zero, no spaces, no overflow.
pub fn parse_int(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    match digits {
        [] => return None,
        [b'0'] if !negative => return Some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    if digits.len() > 19 {
        return None;
    }
    let mut value: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        if value > i64::MAX as u64 + 1 {
            return None;
        }
        Some((value as i64).wrapping_neg())
    } else {
        i64::try_from(value).ok()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_len_counts_the_encoding() {
        let args = [
            bytes::Bytes::from_static(b"client"),
            bytes::Bytes::from_static(b"list"),
        ];
        let mut out = bytes::BytesMut::new();
        super::encode_request(&args, &mut out);
        assert_eq!(super::request_len(&args), out.len());
        assert_eq!(out.len(), 26);
    }

    use super::*;

    #[test]
    fn parse_int_follows_string2ll() {
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"123"), Some(123));
        assert_eq!(parse_int(b"-1"), Some(-1));
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"01",
            b"+1",
            b" 1",
            b"1 ",
            b"1a",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_int(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn encodes_requests_and_replies() {
        let mut out = BytesMut::new();
        encode_request(
            &[Bytes::from_static(b"GET"), Bytes::from_static(b"k")],
            &mut out,
        );
        assert_eq!(&out[..], b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        assert_eq!(&error("ERR a\r\nb")[..], b"-ERR a  b\r\n");
        assert_eq!(&bulk(None)[..], b"$-1\r\n");
        assert_eq!(&integer(-5)[..], b":-5\r\n");
    }
}
