//! What a Lua script runs, read from its body: the commands it names as string literals in
//! `redis.call`/`redis.pcall` (or `server.call`/`server.pcall`). CLIENT TRACKING needs it
//! (see session::feeds): Redis tracks a script's declared keys only when the script runs a
//! read-only command, and with NOLOOP keeps back the invalidations of the script's own writes.
//! keygate does not run Lua; where a body names a command any other way (a variable, an alias
//! of `redis.call`), nothing is known and the caller assumes the script both reads and writes.

use super::{flags, lookup, COMMANDS};

/// Whether a script runs read-only commands, and commands that write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calls {
    pub reads: bool,
    pub writes: bool,
}

impl Calls {
    /// Nothing known: it may do anything.
    pub const ANY: Calls = Calls {
        reads: true,
        writes: true,
    };
}

/// The commands a script body calls, or `None` when a call does not name its command as a
/// string literal.
pub fn calls(body: &[u8]) -> Option<Calls> {
    let mut found = Calls {
        reads: false,
        writes: false,
    };
    let mut at = 0;
    while let Some(start) = next_call(body, at) {
        let (name, end) = literal_argument(body, start)?;
        at = end;
        let lower = name.to_ascii_lowercase();
        if lower.contains(&b'|') {
            // Not a command Redis would run.
            continue;
        }
        let Some(id) = lookup(&lower) else {
            continue;
        };
        let spec = &COMMANDS[id];
        // A container (CLIENT, OBJECT, ...): its subcommand decides, which may not be a literal.
        if spec.arity == -2 && spec.flags == 0 {
            return Some(Calls::ANY);
        }
        found.reads |= spec.has(flags::READONLY);
        found.writes |= spec.has(flags::WRITE);
    }
    Some(found)
}

/// Where the text after the next `redis.call`/`redis.pcall`/`server.call`/`server.pcall`
/// (from `from`) begins.
fn next_call(body: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < body.len() {
        let rest = &body[i..];
        let after_object = rest
            .strip_prefix(b"redis.")
            .or_else(|| rest.strip_prefix(b"server."));
        if let Some(after) = after_object {
            // A longer identifier ending in `redis` (e.g. `myredis.call`) is not it.
            let word_start = i == 0 || !is_ident(body[i - 1]);
            let method = after
                .strip_prefix(b"pcall")
                .or_else(|| after.strip_prefix(b"call"));
            if let (true, Some(tail)) = (word_start, method) {
                if tail.first().is_none_or(|&c| !is_ident(c)) {
                    return Some(body.len() - tail.len());
                }
            }
        }
        i += 1;
    }
    None
}

/// The string literal that must open a call's arguments at `at` (`(` then a quoted name), and
/// where it ends; `None` if the call is not made that way.
fn literal_argument(body: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let mut i = skip_space(body, at);
    if body.get(i) != Some(&b'(') {
        return None;
    }
    i = skip_space(body, i + 1);
    let quote = *body.get(i).filter(|&&c| c == b'\'' || c == b'"')?;
    let start = i + 1;
    let len = body[start..].iter().position(|&c| c == quote)?;
    let name = &body[start..start + len];
    // An escape inside the name: not a plain literal.
    if name.contains(&b'\\') || name.contains(&b'\n') {
        return None;
    }
    Some((name, start + len + 1))
}

fn skip_space(body: &[u8], mut i: usize) -> usize {
    while body.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(reads: bool, writes: bool) -> Option<Calls> {
        Some(Calls { reads, writes })
    }

    #[test]
    fn literal_calls_are_read() {
        assert_eq!(calls(b"redis.call('set', 'k', 'v')"), of(false, true));
        assert_eq!(
            calls(b"return redis.call(\"GET\", KEYS[1])"),
            of(true, false)
        );
        assert_eq!(calls(b"redis.pcall ( 'ping' )"), of(false, false));
        assert_eq!(
            calls(b"server.call('get','a') redis.call('del','a')"),
            of(true, true)
        );
        assert_eq!(calls(b"return 1"), of(false, false));
        // Not Redis's object.
        assert_eq!(calls(b"myredis.call(x)"), of(false, false));
        // An unknown command runs nothing.
        assert_eq!(calls(b"redis.call('nosuch')"), of(false, false));
    }

    #[test]
    fn anything_else_is_unknown() {
        assert_eq!(calls(b"redis.call(ARGV[1], KEYS[1])"), None);
        assert_eq!(calls(b"local c = redis.call; return c('get', 'k')"), None);
        assert_eq!(calls(b"redis.call('ge\\116', 'k')"), None);
        assert_eq!(calls(b"redis.call('get"), None);
        assert_eq!(calls(b"redis.call('client', 'id')"), Some(Calls::ANY));
    }
}
