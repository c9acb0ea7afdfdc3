//! Where a command's keys are: the argument positions a sharded router hashes.
//!
//! Fixed positions come from the table (first, last, step). Commands whose keys move (numkeys,
//! STREAMS, STORE options) get a small parser each, following how Redis reads the command.
//! Malformed key arguments (a numkeys that lies) yield the keys that do exist; the server then
//! answers with its own error, so keygate never invents one.

use bytes::Bytes;

use super::{flags, Spec};
use crate::resp::parse_int;

/// Positions of the keys of `args`, in argument order.
pub fn positions(spec: &Spec, args: &[Bytes]) -> Vec<usize> {
    if spec.has(flags::LEARNED) {
        // Callers that must have every key (sharded routing, tenants) refuse a learned command
        // whose keys cannot all be found before asking.
        return super::learned::key_positions(spec, args).unwrap_or_default();
    }
    if spec.has(flags::MOVABLEKEYS) {
        return movable(spec.name, args);
    }
    fixed(spec, args)
}

/// A learned command whose keys cannot all be found in this request (see `learned`).
pub fn learned_keys_unknown(spec: &Spec, args: &[Bytes]) -> bool {
    super::learned::key_positions(spec, args).is_none()
}

fn fixed(spec: &Spec, args: &[Bytes]) -> Vec<usize> {
    fixed_positions(spec, args.len()).collect()
}

/// The table's fixed key positions for a request of `argc` arguments, without allocating (the
/// tenant rewriter runs this on every request). Empty for commands without fixed keys.
pub fn fixed_positions(spec: &Spec, argc: usize) -> impl Iterator<Item = usize> {
    let (first, step) = if spec.first_key <= 0 || spec.key_step <= 0 {
        (1, 1)
    } else {
        (spec.first_key as i64, spec.key_step as usize)
    };
    let last = if spec.first_key <= 0 || spec.key_step <= 0 {
        0
    } else if spec.last_key < 0 {
        argc as i64 + spec.last_key as i64
    } else {
        spec.last_key as i64
    };
    let last = last.min(argc as i64 - 1);
    (first..=last).step_by(step).map(|i| i as usize)
}

fn movable(name: &str, args: &[Bytes]) -> Vec<usize> {
    match name {
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro" => counted(args, 2),
        "zunion" | "zinter" | "zdiff" | "sintercard" | "zintercard" | "lmpop" | "zmpop" => {
            counted(args, 1)
        }
        "blmpop" | "bzmpop" => counted(args, 2),
        "zunionstore" | "zinterstore" | "zdiffstore" => {
            let mut keys = vec![1];
            keys.extend(counted(args, 2));
            keys
        }
        "xread" | "xreadgroup" => streams(args),
        "sort" | "sort_ro" => with_store(
            args,
            2,
            &[(b"by", 1), (b"limit", 2), (b"get", 1)],
            &[b"store"],
        ),
        "georadius" => with_store(args, 6, &[(b"count", 1)], &[b"store", b"storedist"]),
        "georadiusbymember" => with_store(args, 5, &[(b"count", 1)], &[b"store", b"storedist"]),
        "migrate" => migrate(args),
        _ => Vec::new(),
    }
}

/// `numkeys` at `at`, then that many keys.
fn counted(args: &[Bytes], at: usize) -> Vec<usize> {
    let Some(n) = args.get(at).and_then(|a| parse_int(a)) else {
        return Vec::new();
    };
    let n = n.clamp(0, (args.len() - at - 1) as i64) as usize;
    (at + 1..at + 1 + n).collect()
}

/// XREAD/XREADGROUP: after the options, `STREAMS k1 .. kn id1 .. idn`.
fn streams(args: &[Bytes]) -> Vec<usize> {
    let mut i = 1;
    while i < args.len() {
        let arg = args[i].to_ascii_lowercase();
        match arg.as_slice() {
            b"count" | b"block" => i += 2,
            b"group" => i += 3,
            b"noack" => i += 1,
            b"streams" => {
                let rest = args.len() - i - 1;
                return (i + 1..i + 1 + rest / 2).collect();
            }
            _ => return Vec::new(),
        }
    }
    Vec::new()
}

/// A key at 1, then options from `from`: `skip` lists options and how many arguments they take;
/// each of `stores` takes one destination key.
fn with_store(
    args: &[Bytes],
    from: usize,
    skip: &[(&[u8], usize)],
    stores: &[&[u8]],
) -> Vec<usize> {
    let mut keys = vec![1];
    let mut i = from;
    while i < args.len() {
        let arg = args[i].to_ascii_lowercase();
        if stores.contains(&arg.as_slice()) {
            if i + 1 < args.len() {
                keys.push(i + 1);
            }
            i += 2;
        } else if let Some((_, n)) = skip.iter().find(|(name, _)| *name == arg.as_slice()) {
            i += 1 + n;
        } else {
            i += 1;
        }
    }
    keys
}

/// MIGRATE host port key|"" db timeout [COPY] [REPLACE] [AUTH pw] [AUTH2 user pw] [KEYS k ...]
fn migrate(args: &[Bytes]) -> Vec<usize> {
    if args.len() > 3 && !args[3].is_empty() {
        return vec![3];
    }
    match args.iter().position(|a| a.eq_ignore_ascii_case(b"keys")) {
        Some(at) if at >= 6 => (at + 1..args.len()).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Command;

    fn keys(line: &str) -> Vec<String> {
        let cmd = Command::parse(
            line.split(' ')
                .map(|s| bytes::Bytes::copy_from_slice(s.as_bytes()))
                .collect(),
        );
        super::positions(cmd.spec.unwrap(), &cmd.args)
            .into_iter()
            .map(|i| String::from_utf8_lossy(&cmd.args[i]).into_owned())
            .collect()
    }

    #[test]
    fn fixed_positions() {
        assert_eq!(keys("GET a"), ["a"]);
        assert_eq!(keys("MSET a 1 b 2"), ["a", "b"]);
        assert_eq!(keys("DEL a b c"), ["a", "b", "c"]);
        assert_eq!(keys("BLPOP a b 0"), ["a", "b"]);
        assert_eq!(keys("LMOVE a b LEFT RIGHT"), ["a", "b"]);
        assert_eq!(keys("OBJECT ENCODING a"), ["a"]);
        assert!(keys("PING").is_empty());
        assert_eq!(keys("BITOP AND d a b"), ["d", "a", "b"]);
    }

    #[test]
    fn movable_positions() {
        assert_eq!(keys("EVAL s 2 a b x"), ["a", "b"]);
        assert_eq!(keys("EVAL s 9 a"), ["a"]);
        assert!(keys("EVAL s x a").is_empty());
        assert_eq!(keys("ZUNIONSTORE d 2 a b WEIGHTS 1 2"), ["d", "a", "b"]);
        assert_eq!(keys("ZINTER 2 a b"), ["a", "b"]);
        assert_eq!(keys("XREAD COUNT 2 STREAMS a b 0 0"), ["a", "b"]);
        assert_eq!(
            keys("XREADGROUP GROUP streams c COUNT 1 STREAMS a >"),
            ["a"]
        );
        assert_eq!(
            keys("SORT a BY w_* LIMIT 0 5 GET STORE STORE d"),
            ["a", "d"]
        );
        assert_eq!(
            keys("GEORADIUS a 1 2 3 km COUNT 5 STORE d STOREDIST e"),
            ["a", "d", "e"]
        );
        assert_eq!(keys("MIGRATE h 1  0 5 KEYS a b"), ["a", "b"]);
        assert_eq!(keys("MIGRATE h 1 k 0 5"), ["k"]);
    }
}
