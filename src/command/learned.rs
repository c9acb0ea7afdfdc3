//! Commands learned from the servers behind keygate: what `COMMAND` tells about the commands
//! keygate's built-in table (Redis 7.0.15's) does not know, so that a newer server's commands
//! (hash field expiration, vector sets, DELIFEQ...) and modules' commands are forwarded, routed
//! and prefixed by the server's own key specifications instead of refused as unknown.
//!
//! Pure: `parse_command_reply` reads one server's `COMMAND` reply, `Table::build` keeps the
//! commands every primary has (the built-in table taking precedence for the names it knows),
//! and `key_positions` finds a request's keys by the key specifications, as Redis's
//! `getKeysUsingKeySpecs` does. Fetching the replies is `crate::learn`'s job.
//!
//! Learned commands live as long as the process: each distinct definition is stored once
//! (`intern`), so the same server answering again, or a reload, adds nothing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use super::{flags, lookup, Spec};
use crate::resp::parse_int;
use crate::resp::value::Value;

/// Where a key specification starts looking for keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Begin {
    /// At this argument.
    Index(usize),
    /// After the first argument equal to `keyword` (lower case), searching from `start_from`
    /// (negative: from the end, backwards).
    Keyword { keyword: Box<[u8]>, start_from: i64 },
    /// A kind keygate does not know: the keys cannot be found.
    Unknown,
}

/// How a key specification finds its keys once it has begun.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Find {
    /// Keys from the beginning to `last` (negative: from the end; with `limit`, a part of the
    /// rest), every `step`.
    Range {
        last: i64,
        step: usize,
        limit: usize,
    },
    /// The number of keys at `index` (after the beginning), the first key `first` after the
    /// beginning, every `step`.
    Keynum {
        index: usize,
        first: usize,
        step: usize,
    },
    /// A kind keygate does not know.
    Unknown,
}

/// One key specification of a command, as Redis 7 reports it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeySpec {
    pub begin: Begin,
    pub find: Find,
    /// The server says this specification may not find every key (`incomplete`).
    pub incomplete: bool,
}

/// What a server told about one command (or subcommand, named `container|sub`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Facts {
    pub name: String,
    pub arity: i32,
    pub flags: u32,
    pub first_key: i32,
    pub last_key: i32,
    pub key_step: i32,
    pub key_specs: Vec<KeySpec>,
    /// ACL categories, without the `@`.
    pub categories: Vec<String>,
}

#[cfg(test)]
impl Facts {
    /// A write command named `name` with these key specifications (for tests).
    pub(crate) fn sample(name: &str, key_specs: Vec<KeySpec>) -> Facts {
        Facts {
            name: name.into(),
            arity: -2,
            flags: 0,
            first_key: 0,
            last_key: 0,
            key_step: 0,
            key_specs,
            categories: vec!["write".into()],
        }
    }
}

/// Redis's command flags, as `COMMAND` names them, and keygate's bits for them.
const FLAG_NAMES: &[(&str, u32)] = &[
    ("write", flags::WRITE),
    ("readonly", flags::READONLY),
    ("denyoom", flags::DENYOOM),
    ("admin", flags::ADMIN),
    ("pubsub", flags::PUBSUB),
    ("noscript", flags::NOSCRIPT),
    ("blocking", flags::BLOCKING),
    ("loading", flags::LOADING),
    ("stale", flags::STALE),
    ("fast", flags::FAST),
    ("no_auth", flags::NO_AUTH),
    ("movablekeys", flags::MOVABLEKEYS),
    ("no_multi", flags::NO_MULTI),
    ("may_replicate", flags::MAY_REPLICATE),
];

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Simple(b) | Value::Bulk(Some(b)) => {
            Some(String::from_utf8_lossy(b).to_ascii_lowercase())
        }
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::Simple(b) | Value::Bulk(Some(b)) => parse_int(b),
        _ => None,
    }
}

fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(Some(items)) => items,
        _ => &[],
    }
}

/// A RESP2 map (an array of names and values) as pairs; RESP3 maps read the same way.
fn field<'a>(map: &'a Value, name: &str) -> Option<&'a Value> {
    items(map)
        .chunks(2)
        .find(|pair| pair.len() == 2 && text(&pair[0]).as_deref() == Some(name))
        .map(|pair| &pair[1])
}

fn key_spec(v: &Value) -> KeySpec {
    let incomplete = field(v, "flags")
        .map(|f| {
            items(f)
                .iter()
                .any(|f| text(f).as_deref() == Some("incomplete"))
        })
        .unwrap_or(false);
    let begin = field(v, "begin_search")
        .and_then(|b| {
            let spec = field(b, "spec")?;
            Some(match text(field(b, "type")?)?.as_str() {
                "index" => Begin::Index(usize::try_from(int(field(spec, "index")?)?).ok()?),
                "keyword" => Begin::Keyword {
                    keyword: text(field(spec, "keyword")?)?.into_bytes().into(),
                    start_from: int(field(spec, "startfrom")?)?,
                },
                _ => Begin::Unknown,
            })
        })
        .unwrap_or(Begin::Unknown);
    let find = field(v, "find_keys")
        .and_then(|f| {
            let spec = field(f, "spec")?;
            let count = |name| usize::try_from(int(field(spec, name)?)?).ok();
            Some(match text(field(f, "type")?)?.as_str() {
                "range" => Find::Range {
                    last: int(field(spec, "lastkey")?)?,
                    step: count("keystep")?,
                    limit: count("limit")?,
                },
                "keynum" => Find::Keynum {
                    index: count("keynumidx")?,
                    first: count("firstkey")?,
                    step: count("keystep")?,
                },
                _ => Find::Unknown,
            })
        })
        .unwrap_or(Find::Unknown);
    KeySpec {
        begin,
        find,
        incomplete,
    }
}

/// One entry of a `COMMAND` (or `COMMAND INFO`) reply, and its subcommands after it.
fn entry(v: &Value, container: Option<&str>, out: &mut Vec<Facts>) {
    let e = items(v);
    let (Some(name), Some(arity)) = (e.first().and_then(text), e.get(1).and_then(int)) else {
        return;
    };
    // Subcommands are named `container|sub` by Redis 7 already; older servers never reach here
    // (they have no subcommands in the reply).
    let name = match container {
        Some(c) if !name.contains('|') => format!("{c}|{name}"),
        _ => name,
    };
    let mut bits = 0;
    for flag in e.get(2).map(items).unwrap_or(&[]) {
        if let Some(bit) = text(flag).and_then(|f| {
            FLAG_NAMES
                .iter()
                .find(|(n, _)| *n == f)
                .map(|(_, bit)| *bit)
        }) {
            bits |= bit;
        }
    }
    let position = |i: usize| e.get(i).and_then(int).unwrap_or(0) as i32;
    let categories = e
        .get(6)
        .map(items)
        .unwrap_or(&[])
        .iter()
        .filter_map(text)
        .map(|c| c.trim_start_matches('@').to_string())
        .collect();
    let key_specs = e
        .get(8)
        .map(items)
        .unwrap_or(&[])
        .iter()
        .map(key_spec)
        .collect();
    out.push(Facts {
        name: name.clone(),
        arity: arity as i32,
        flags: bits,
        first_key: position(3),
        last_key: position(4),
        key_step: position(5),
        key_specs,
        categories,
    });
    for sub in e.get(9).map(items).unwrap_or(&[]) {
        entry(sub, Some(&name), out);
    }
}

/// Every command and subcommand in a server's `COMMAND` reply.
pub fn parse_command_reply(reply: &Value) -> Vec<Facts> {
    let mut out = Vec::new();
    for v in items(reply) {
        entry(v, None, &mut out);
    }
    out
}

/// Can keygate find every key of a request by these facts? Key specifications of kinds it
/// knows, none of them `incomplete`. A command without keys is complete.
fn complete(f: &Facts) -> bool {
    f.key_specs
        .iter()
        .all(|s| !s.incomplete && s.begin != Begin::Unknown && s.find != Find::Unknown)
        && (f.flags & flags::MOVABLEKEYS == 0 || !f.key_specs.is_empty())
}

/// Most distinct learned definitions kept over the life of the process: a server (or a hostile
/// backend) that keeps answering with new ones stops being learned from past it.
const MAX_INTERNED: usize = 65_536;

/// The `Spec` for learned facts, made once per distinct definition and kept for the life of the
/// process (commands are `&'static` throughout keygate); `None` past `MAX_INTERNED`.
fn intern(f: Facts) -> Option<&'static Spec> {
    static SEEN: OnceLock<Mutex<HashMap<Facts, &'static Spec>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .expect("intern lock");
    if let Some(spec) = seen.get(&f) {
        return Some(spec);
    }
    if seen.len() >= MAX_INTERNED {
        return None;
    }
    let mut bits = f.flags | flags::LEARNED;
    if !complete(&f) {
        bits |= flags::KEYS_INCOMPLETE;
    }
    if f.categories.iter().any(|c| c == "connection") {
        bits |= flags::CONNECTION;
    }
    let spec: &'static Spec = Box::leak(Box::new(Spec {
        name: Box::leak(f.name.clone().into_boxed_str()),
        arity: f.arity,
        flags: bits,
        first_key: f.first_key,
        last_key: f.last_key,
        key_step: f.key_step,
        key_specs: Box::leak(f.key_specs.clone().into_boxed_slice()),
        categories: Box::leak(
            f.categories
                .iter()
                .map(|c| &*Box::leak(c.clone().into_boxed_str()))
                .collect::<Vec<&'static str>>()
                .into_boxed_slice(),
        ),
    }));
    seen.insert(f, spec);
    Some(spec)
}

/// The commands learned from the primaries, beyond the built-in table.
#[derive(Default)]
pub struct Table {
    commands: HashMap<Box<[u8]>, &'static Spec>,
    /// Top-level learned commands that have learned subcommands.
    containers: HashSet<Box<[u8]>>,
    /// The first primary's version as it gives it in HELLO (Valkey's own version for Valkey).
    pub version: Option<Arc<str>>,
    /// The first primary's `redis_version` (INFO), for a tenant's INFO.
    pub redis_version: Option<Arc<str>>,
}

impl Table {
    /// The commands every one of `servers` reported and the built-in table lacks, with the
    /// first server's facts; `version` is reported by HELLO.
    pub fn build(servers: Vec<Vec<Facts>>, version: Option<Arc<str>>) -> Table {
        let mut servers = servers.into_iter();
        let Some(first) = servers.next() else {
            return Table::default();
        };
        let others: Vec<HashSet<String>> = servers
            .map(|facts| facts.into_iter().map(|f| f.name).collect())
            .collect();
        let mut table = Table {
            version,
            ..Table::default()
        };
        for f in first {
            if lookup(f.name.as_bytes()).is_some()
                || !others.iter().all(|names| names.contains(&f.name))
            {
                continue;
            }
            if let Some((container, _)) = f.name.split_once('|') {
                table.containers.insert(container.as_bytes().into());
            }
            let name: Box<[u8]> = f.name.as_bytes().into();
            if let Some(spec) = intern(f) {
                table.commands.insert(name, spec);
            }
        }
        table
    }

    /// A learned command (or `container|sub`) by its lower-case name.
    pub fn get(&self, lower: &[u8]) -> Option<&'static Spec> {
        self.commands.get(lower).copied()
    }

    /// Whether this top-level name has learned subcommands.
    pub fn is_container(&self, lower: &[u8]) -> bool {
        self.containers.contains(lower)
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Every learned name, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.commands.values().map(|s| s.name).collect();
        names.sort_unstable();
        names
    }
}

/// The positions of a request's keys by a learned command's key specifications, as Redis finds
/// them; `None` when they cannot all be found (a specification of a kind keygate does not know,
/// one the server marks incomplete, a keyword or key count that is not there).
pub fn key_positions(spec: &Spec, args: &[Bytes]) -> Option<Vec<usize>> {
    if spec.has(flags::KEYS_INCOMPLETE) {
        return None;
    }
    let argc = args.len() as i64;
    let mut keys = Vec::new();
    for ks in spec.key_specs {
        let first = match &ks.begin {
            Begin::Index(i) => *i as i64,
            Begin::Keyword {
                keyword,
                start_from,
            } => {
                let (start, end) = if *start_from > 0 {
                    (*start_from, argc - 1)
                } else {
                    (argc + start_from, 0)
                };
                let mut i = start;
                let mut found = None;
                while i >= 1 && i < argc {
                    if args[i as usize].eq_ignore_ascii_case(keyword) {
                        found = Some(i + 1);
                        break;
                    }
                    if i == end {
                        break;
                    }
                    i += if start <= end { 1 } else { -1 };
                }
                // The keyword is optional (XREAD without STREAMS gets the server's error).
                match found {
                    Some(first) => first,
                    None => continue,
                }
            }
            Begin::Unknown => return None,
        };
        let (first, last, step) = match ks.find {
            Find::Range { last, step, limit } => {
                let last = if last >= 0 {
                    first + last
                } else if limit <= 1 {
                    argc + last
                } else {
                    first + (argc - first) / limit as i64 + last
                };
                (first, last, step as i64)
            }
            Find::Keynum {
                index,
                first: fk,
                step,
            } => {
                let n = args
                    .get((first + index as i64) as usize)
                    .and_then(|a| parse_int(a))
                    .filter(|n| *n >= 0)?;
                let first = first + fk as i64;
                (first, first + n - 1, step as i64)
            }
            Find::Unknown => return None,
        };
        if step <= 0 {
            return None;
        }
        let mut i = first;
        while i <= last {
            // Past the arguments: the server will answer with its own arity or syntax error.
            if i >= argc || i < 1 {
                break;
            }
            keys.push(i as usize);
            i += step;
        }
    }
    keys.sort_unstable();
    keys.dedup();
    Some(keys)
}

#[cfg(test)]
#[path = "learned_tests.rs"]
mod tests;
