//! Tenant rewriting for the commands whose keys move: each parser follows how Redis *executes*
//! the command (options consumed in order, option arguments skipped, the last one winning), not
//! its key specs, which Redis 7.0 itself gets wrong for tricks like
//! `SORT src STORE LIMIT STORE victim`, `GEORADIUS ... STOREDIST STORE STORE victim` or
//! `XREADGROUP COUNT 1 GROUP STREAMS c STREAMS victim >`. Where Redis is ambiguous keygate is
//! stricter (a second STORE is refused), and the argument list it emits is the one it checked.

use bytes::Bytes;

use super::rewrite::prefixed;
use crate::resp::parse_int;

/// What the reply needs on the way back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyFix {
    None,
    /// `[key, elements]` or nil (LMPOP, ZMPOP): un-prefix the key.
    PoppedKey,
    /// `[[key, entries], ...]` or nil (XREAD, XREADGROUP): un-prefix each stream key.
    Streams,
    /// The reply is a script's SHA1 (SCRIPT LOAD): remember it as this tenant's.
    RecordScript,
}

/// Why a command was not rewritten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Scripts are off for this tenant.
    Scripts,
    /// EVALSHA of a script this tenant did not load.
    NoScript,
    /// An option that reaches outside the keyspace (COPY ... DB n).
    OtherDb,
    /// Malformed key arguments, with Redis's kind of message.
    Syntax(&'static str),
}

/// Rewrite `args` (the whole command) for a tenant with `prefix`.
pub fn rewrite(
    name: &str,
    args: &mut [Bytes],
    prefix: &[u8],
    allow_scripts: bool,
    known_script: impl Fn(&[u8]) -> bool,
) -> Result<ReplyFix, Refused> {
    let key = |args: &mut [Bytes], at: usize| args[at] = prefixed(prefix, &args[at]);
    match name {
        "eval" | "eval_ro" | "fcall" | "fcall_ro" | "evalsha" | "evalsha_ro" => {
            if !allow_scripts {
                return Err(Refused::Scripts);
            }
            // Redis checks numkeys before it looks the script up.
            let keys = counted(args, 2, name)?;
            if name.starts_with("evalsha") && !known_script(&args[1].to_ascii_lowercase()) {
                return Err(Refused::NoScript);
            }
            for at in keys {
                key(args, at);
            }
            Ok(ReplyFix::None)
        }
        "script|load" => {
            if !allow_scripts {
                return Err(Refused::Scripts);
            }
            Ok(ReplyFix::RecordScript)
        }
        "zunion" | "zinter" | "zdiff" | "sintercard" | "zintercard" => {
            for at in counted(args, 1, name)? {
                key(args, at);
            }
            Ok(ReplyFix::None)
        }
        "lmpop" | "zmpop" => {
            for at in counted(args, 1, name)? {
                key(args, at);
            }
            Ok(ReplyFix::PoppedKey)
        }
        "blpop" | "brpop" | "bzpopmin" | "bzpopmax" => {
            // BLPOP k1 k2 ... timeout: every argument but the first and the last is a key.
            for at in 1..args.len() - 1 {
                key(args, at);
            }
            Ok(ReplyFix::PoppedKey)
        }
        "blmpop" | "bzmpop" => {
            for at in counted(args, 2, name)? {
                key(args, at);
            }
            Ok(ReplyFix::PoppedKey)
        }
        "zunionstore" | "zinterstore" | "zdiffstore" => {
            key(args, 1);
            for at in counted(args, 2, name)? {
                key(args, at);
            }
            Ok(ReplyFix::None)
        }
        "xread" | "xreadgroup" => {
            for at in streams(args, name == "xreadgroup")? {
                key(args, at);
            }
            Ok(ReplyFix::Streams)
        }
        "sort" | "sort_ro" => {
            sort(args, prefix, name == "sort")?;
            Ok(ReplyFix::None)
        }
        "georadius" | "georadiusbymember" => {
            key(args, 1);
            let options = if name == "georadius" { 6 } else { 5 };
            georadius_stores(args, options, prefix)?;
            Ok(ReplyFix::None)
        }
        "copy" => {
            if args[3..].iter().any(|a| a.eq_ignore_ascii_case(b"db")) {
                return Err(Refused::OtherDb);
            }
            key(args, 1);
            key(args, 2);
            Ok(ReplyFix::None)
        }
        _ => Err(Refused::Syntax("command not handled")),
    }
}

/// `numkeys` at `at` (an integer no larger than the number of arguments after it), then that
/// many key positions. A bad count gets the error `name` gets from Redis 7 for it.
fn counted(args: &[Bytes], at: usize, name: &str) -> Result<std::ops::Range<usize>, Refused> {
    let n = args.get(at).and_then(|a| parse_int(a));
    let rest = args.len() - at - 1;
    let (not_integer, too_few, too_many) = match name {
        "eval" | "eval_ro" | "evalsha" | "evalsha_ro" => (
            NOT_INTEGER,
            "Number of keys can't be negative",
            TOO_MANY_KEYS,
        ),
        "fcall" | "fcall_ro" => (
            "Bad number of keys provided",
            "Number of keys can't be negative",
            TOO_MANY_KEYS,
        ),
        "sintercard" => (NUMKEYS, NUMKEYS, TOO_MANY_KEYS),
        "lmpop" | "zmpop" | "blmpop" | "bzmpop" => (NUMKEYS, NUMKEYS, "syntax error"),
        "zunion" | "zinter" | "zdiff" | "zintercard" | "zunionstore" | "zinterstore"
        | "zdiffstore" => (NOT_INTEGER, at_least_one(name), "syntax error"),
        _ => (
            "numkeys is not an integer",
            "numkeys is negative",
            "syntax error",
        ),
    };
    // Scripts may take no keys; the others need one at least.
    let least = if name.starts_with("eval") || name.starts_with("fcall") {
        0
    } else {
        1
    };
    match n {
        None => Err(Refused::Syntax(not_integer)),
        Some(n) if n < least => Err(Refused::Syntax(too_few)),
        Some(n) if n as u64 > rest as u64 => Err(Refused::Syntax(too_many)),
        Some(n) => Ok(at + 1..at + 1 + n as usize),
    }
}

const NOT_INTEGER: &str = "value is not an integer or out of range";
const NUMKEYS: &str = "numkeys should be greater than 0";
const TOO_MANY_KEYS: &str = "Number of keys can't be greater than number of args";

/// Redis's error for a sorted-set operation given no input key.
fn at_least_one(name: &str) -> &'static str {
    match name {
        "zunion" => "at least 1 input key is needed for 'zunion' command",
        "zinter" => "at least 1 input key is needed for 'zinter' command",
        "zdiff" => "at least 1 input key is needed for 'zdiff' command",
        "zintercard" => "at least 1 input key is needed for 'zintercard' command",
        "zunionstore" => "at least 1 input key is needed for 'zunionstore' command",
        "zinterstore" => "at least 1 input key is needed for 'zinterstore' command",
        _ => "at least 1 input key is needed for 'zdiffstore' command",
    }
}

/// XREAD [COUNT n] [BLOCK ms] STREAMS k.. id..; XREADGROUP GROUP g c [COUNT n] [BLOCK ms]
/// [NOACK] STREAMS k.. id.. — options read in order, as Redis reads them.
fn streams(args: &[Bytes], group: bool) -> Result<std::ops::Range<usize>, Refused> {
    let mut i = 1;
    while i < args.len() {
        let arg = &args[i];
        let needs = |n: usize| {
            if i + n < args.len() {
                Ok(n)
            } else {
                Err(Refused::Syntax("syntax error"))
            }
        };
        if arg.eq_ignore_ascii_case(b"count") || arg.eq_ignore_ascii_case(b"block") {
            i += 1 + needs(1)?;
        } else if group && arg.eq_ignore_ascii_case(b"group") {
            i += 1 + needs(2)?;
        } else if group && arg.eq_ignore_ascii_case(b"noack") {
            i += 1;
        } else if arg.eq_ignore_ascii_case(b"streams") {
            let rest = args.len() - i - 1;
            if rest == 0 || rest % 2 != 0 {
                return Err(Refused::Syntax("Unbalanced STREAMS list"));
            }
            return Ok(i + 1..i + 1 + rest / 2);
        } else {
            return Err(Refused::Syntax("syntax error"));
        }
    }
    Err(Refused::Syntax("syntax error"))
}

/// SORT key [BY pattern] [LIMIT offset count] [GET pattern ...] [ASC|DESC] [ALPHA] [STORE dest]:
/// the key, BY and GET patterns (except `#`) and the destination get the prefix.
fn sort(args: &mut [Bytes], prefix: &[u8], can_store: bool) -> Result<(), Refused> {
    args[1] = prefixed(prefix, &args[1]);
    let mut stored = false;
    let mut i = 2;
    while i < args.len() {
        let option = args[i].to_ascii_lowercase();
        let next = i + 1 < args.len();
        match option.as_slice() {
            b"by" | b"get" if next => {
                if &args[i + 1][..] != b"#" {
                    args[i + 1] = prefixed(prefix, &args[i + 1]);
                }
                i += 2;
            }
            b"limit" if i + 2 < args.len() => i += 3,
            b"store" if next && can_store => {
                if stored {
                    return Err(Refused::Syntax("more than one STORE option"));
                }
                stored = true;
                args[i + 1] = prefixed(prefix, &args[i + 1]);
                i += 2;
            }
            b"asc" | b"desc" | b"alpha" => i += 1,
            _ => return Err(Refused::Syntax("syntax error")),
        }
    }
    Ok(())
}

/// GEORADIUS options from `from`: STORE/STOREDIST take a key; COUNT takes a number; the rest are
/// flags. As Redis reads them, an option's argument is consumed even if it looks like an option.
fn georadius_stores(args: &mut [Bytes], from: usize, prefix: &[u8]) -> Result<(), Refused> {
    let mut stored = false;
    let mut i = from;
    while i < args.len() {
        let option = args[i].to_ascii_lowercase();
        let next = i + 1 < args.len();
        match option.as_slice() {
            b"store" | b"storedist" if next => {
                if stored {
                    return Err(Refused::Syntax("more than one STORE or STOREDIST option"));
                }
                stored = true;
                args[i + 1] = prefixed(prefix, &args[i + 1]);
                i += 2;
            }
            b"count" if next => i += 2,
            _ => i += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(line: &str, scripts: bool) -> Result<(String, ReplyFix), Refused> {
        let mut args: Vec<Bytes> = line
            .split(' ')
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect();
        let cmd = crate::command::Command::parse(args.clone());
        let name = cmd.spec.unwrap().name;
        let fix = rewrite(name, &mut args, b"t:", scripts, |sha| sha == b"abc")?;
        let text = args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        Ok((text, fix))
    }

    fn line(l: &str) -> String {
        run(l, true).unwrap().0
    }

    #[test]
    fn numkeys_commands() {
        assert_eq!(line("EVAL s 2 a b x"), "EVAL s 2 t:a t:b x");
        assert_eq!(line("EVALSHA abc 1 a"), "EVALSHA abc 1 t:a");
        assert_eq!(run("EVALSHA other 1 a", true), Err(Refused::NoScript));
        assert_eq!(run("EVAL s 0", false), Err(Refused::Scripts));
        assert_eq!(
            line("ZUNIONSTORE d 2 a b WEIGHTS 1 2"),
            "ZUNIONSTORE t:d 2 t:a t:b WEIGHTS 1 2"
        );
        assert_eq!(line("ZINTER 2 a b"), "ZINTER 2 t:a t:b");
        assert_eq!(line("LMPOP 2 a b LEFT"), "LMPOP 2 t:a t:b LEFT");
        assert_eq!(
            run("LMPOP 2 a b LEFT", true).unwrap().1,
            ReplyFix::PoppedKey
        );
        // Numkeys that lie are refused, not guessed at.
        assert!(run("EVAL s 5 a", true).is_err());
        assert!(run("ZINTER -1 a", true).is_err());
        assert!(run("ZINTER x a", true).is_err());
        assert!(run("ZINTER 01 a", true).is_err());
        // With Redis 7's own texts, command by command.
        let error = |l: &str| match run(l, true) {
            Err(Refused::Syntax(text)) => text,
            other => panic!("{l}: {other:?}"),
        };
        let too_many = "Number of keys can't be greater than number of args";
        let numkeys = "numkeys should be greater than 0";
        let not_integer = "value is not an integer or out of range";
        assert_eq!(error("EVAL s 3 a"), too_many);
        assert_eq!(error("EVAL s x a"), not_integer);
        assert_eq!(error("EVAL s -1 a"), "Number of keys can't be negative");
        assert_eq!(error("EVALSHA other 3 a"), too_many);
        assert_eq!(error("FCALL f x a"), "Bad number of keys provided");
        assert_eq!(error("FCALL_RO f 2"), too_many);
        assert_eq!(error("SINTERCARD 0 a"), numkeys);
        assert_eq!(error("SINTERCARD x a"), numkeys);
        assert_eq!(error("SINTERCARD 3 a"), too_many);
        assert_eq!(error("LMPOP 0 a LEFT"), numkeys);
        assert_eq!(error("LMPOP 5 a LEFT"), "syntax error");
        assert_eq!(error("ZINTERCARD x a"), not_integer);
        assert_eq!(error("ZINTERCARD 3 a"), "syntax error");
        assert_eq!(
            error("ZUNIONSTORE d 0 a"),
            "at least 1 input key is needed for 'zunionstore' command"
        );
        assert_eq!(
            error("ZINTER -1 a"),
            "at least 1 input key is needed for 'zinter' command"
        );
    }

    #[test]
    fn streams_follow_redis_option_order() {
        assert_eq!(
            line("XREAD COUNT 2 STREAMS a b 0 0"),
            "XREAD COUNT 2 STREAMS t:a t:b 0 0"
        );
        // Redis 7.0's key specs name `victim` wrongly here; execution order says GROUP takes
        // "STREAMS" and "c" as its arguments.
        assert_eq!(
            line("XREADGROUP COUNT 1 GROUP STREAMS c STREAMS victim >"),
            "XREADGROUP COUNT 1 GROUP STREAMS c STREAMS t:victim >"
        );
        assert!(run("XREAD STREAMS a b 0", true).is_err());
    }

    #[test]
    fn sort_and_georadius_stores() {
        assert_eq!(
            line("SORT src BY w_* LIMIT 0 5 GET # GET o_*->f STORE d"),
            "SORT t:src BY t:w_* LIMIT 0 5 GET # GET t:o_*->f STORE t:d"
        );
        // GET consumes "STORE" as its pattern, as Redis does; then the real STORE.
        assert_eq!(
            line("SORT src GET STORE STORE victim"),
            "SORT t:src GET t:STORE STORE t:victim"
        );
        assert!(run("SORT src STORE a STORE b", true).is_err());
        assert!(run("SORT_RO src STORE a", true).is_err());
        assert_eq!(
            line("GEORADIUS k 1 2 3 km COUNT 5 STOREDIST d"),
            "GEORADIUS t:k 1 2 3 km COUNT 5 STOREDIST t:d"
        );
        // STOREDIST takes "STORE" as its key, then a second store option: refused, where Redis
        // would quietly keep the last one.
        assert!(run("GEORADIUS k 1 2 3 km STOREDIST STORE STORE victim", true).is_err());
    }

    #[test]
    fn blocking_pops_name_their_key_in_the_reply() {
        assert_eq!(
            run("BLPOP a b 0", true).unwrap(),
            ("BLPOP t:a t:b 0".to_string(), ReplyFix::PoppedKey)
        );
        assert_eq!(line("BZPOPMIN z 1.5"), "BZPOPMIN t:z 1.5");
    }

    #[test]
    fn copy_stays_in_the_database() {
        assert_eq!(line("COPY a b REPLACE"), "COPY t:a t:b REPLACE");
        assert_eq!(run("COPY a b DB 1", true), Err(Refused::OtherDb));
    }
}
