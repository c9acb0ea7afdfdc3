//! The tenant's prefix, applied: to keys on the way in, to patterns (so KEYS and SCAN stay in the
//! tenant's namespace), and taken off keys in replies. Pure functions; the session applies them.

use bytes::{BufMut, Bytes, BytesMut};

use crate::command::{flags, keys, learned, Spec};

/// Patterns longer than this are refused: matching cost grows with pattern size.
pub const MAX_PATTERN_LEN: usize = 256;
/// Patterns with more `*` than this are refused: each one can multiply Redis's matching work.
pub const MAX_PATTERN_STARS: usize = 8;

/// Why a pattern or a reply key could not be confined to the tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    PatternTooLong,
    PatternTooWild,
    /// A key at a known key position in a reply lacks the tenant's prefix: never passed on.
    ForeignKey,
}

/// Prefix every key at the command's fixed key positions (a learned command's: where its key
/// specifications say). `false` when a learned command's keys cannot be found in this request
/// (a key count that is not a number): nothing is prefixed, and it must not be sent.
pub fn prefix_keys(spec: &Spec, args: &mut [Bytes], prefix: &[u8]) -> bool {
    if spec.has(flags::LEARNED) {
        let Some(positions) = learned::key_positions(spec, args) else {
            return false;
        };
        for at in positions {
            args[at] = prefixed(prefix, &args[at]);
        }
        return true;
    }
    for at in keys::fixed_positions(spec, args.len()) {
        args[at] = prefixed(prefix, &args[at]);
    }
    true
}

/// `prefix` + `key`.
pub fn prefixed(prefix: &[u8], key: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(prefix.len() + key.len());
    out.put_slice(prefix);
    out.put_slice(key);
    out.freeze()
}

/// The pattern that confines a tenant's KEYS or SCAN MATCH: the prefix, escaped as a glob, then
/// the client's own pattern (`None`: everything). The client's pattern replaces whatever matching
/// it asked for; it is never appended as a second MATCH, which Redis would let override ours.
pub fn confine_pattern(prefix: &[u8], pattern: Option<&[u8]>) -> Result<Bytes, Refusal> {
    let pattern = pattern.unwrap_or(b"*");
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(Refusal::PatternTooLong);
    }
    if pattern.iter().filter(|&&c| c == b'*').count() > MAX_PATTERN_STARS {
        return Err(Refusal::PatternTooWild);
    }
    let mut out = BytesMut::with_capacity(prefix.len() * 2 + pattern.len());
    for &c in prefix {
        // Prefixes are validated to hold no glob characters; escape anyway, so a future change
        // to validation cannot open the namespace.
        if matches!(c, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.put_u8(b'\\');
        }
        out.put_u8(c);
    }
    out.put_slice(pattern);
    Ok(out.freeze())
}

/// A key from a reply, without the tenant's prefix.
pub fn strip(prefix: &[u8], key: &Bytes) -> Result<Bytes, Refusal> {
    if key.starts_with(prefix) {
        Ok(key.slice(prefix.len()..))
    } else {
        Err(Refusal::ForeignKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;

    fn cmd(line: &str) -> Command {
        Command::parse(
            line.split(' ')
                .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                .collect(),
        )
    }

    fn prefixed_line(line: &str) -> String {
        let mut c = cmd(line);
        let spec = c.spec.unwrap();
        assert!(prefix_keys(spec, &mut c.args, b"t1:"));
        c.args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn keys_get_the_prefix_values_do_not() {
        assert_eq!(prefixed_line("SET k v"), "SET t1:k v");
        assert_eq!(prefixed_line("MSET a 1 b 2"), "MSET t1:a 1 t1:b 2");
        assert_eq!(prefixed_line("BLPOP a b 0"), "BLPOP t1:a t1:b 0");
        assert_eq!(
            prefixed_line("LMOVE a b LEFT RIGHT"),
            "LMOVE t1:a t1:b LEFT RIGHT"
        );
        assert_eq!(prefixed_line("BITOP AND d a b"), "BITOP AND t1:d t1:a t1:b");
        assert_eq!(prefixed_line("OBJECT ENCODING k"), "OBJECT ENCODING t1:k");
        assert_eq!(
            prefixed_line("XGROUP CREATE s g $"),
            "XGROUP CREATE t1:s g $"
        );
        assert_eq!(prefixed_line("HSET t2:k f t2:v"), "HSET t1:t2:k f t2:v");
        // A hash tag in the client's key still decides placement: it is kept intact.
        assert_eq!(prefixed_line("GET {u}a"), "GET t1:{u}a");
    }

    #[test]
    fn patterns_are_confined() {
        assert_eq!(
            confine_pattern(b"t1:", None).unwrap(),
            Bytes::from_static(b"t1:*")
        );
        assert_eq!(
            confine_pattern(b"t1:", Some(b"user:*")).unwrap(),
            Bytes::from_static(b"t1:user:*")
        );
        // The client cannot climb out: its pattern only ever follows the prefix.
        assert_eq!(
            confine_pattern(b"t1:", Some(b"*")).unwrap(),
            Bytes::from_static(b"t1:*")
        );
        assert_eq!(
            confine_pattern(b"a*b", Some(b"x")).unwrap(),
            Bytes::from_static(b"a\\*bx")
        );
        assert_eq!(
            confine_pattern(b"t", Some(&[b'x'; 300])),
            Err(Refusal::PatternTooLong)
        );
        assert_eq!(
            confine_pattern(b"t", Some(b"*a*b*c*d*e*f*g*h*i")),
            Err(Refusal::PatternTooWild)
        );
    }

    #[test]
    fn reply_keys_lose_the_prefix_or_are_refused() {
        assert_eq!(
            strip(b"t1:", &Bytes::from_static(b"t1:k")),
            Ok(Bytes::from_static(b"k"))
        );
        assert_eq!(
            strip(b"t1:", &Bytes::from_static(b"t2:k")),
            Err(Refusal::ForeignKey)
        );
        assert_eq!(
            strip(b"t1:", &Bytes::from_static(b"t1")),
            Err(Refusal::ForeignKey)
        );
    }
}
