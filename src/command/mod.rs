//! Commands: what a request is, from its first argument, looked up in ONE table.
//!
//! `table.rs` holds Redis's own facts about every command (arity, flags, key positions), generated
//! from a real server's `COMMAND INFO`. `policy()` below gives each command keygate's treatment:
//! forwarded, answered by keygate itself, or refused with a reason. Everything that needs to know
//! about a command (session, router, metrics) reads it from the `Command` built here.

#[rustfmt::skip]
mod table;

pub mod keys;
pub mod learned;
pub mod script;

use bytes::Bytes;

pub use table::{COMMANDS, REDIS_VERSION};

/// Redis command flags kept from `COMMAND INFO` (see scripts/gen_command_table.py).
pub mod flags {
    pub const WRITE: u32 = 1 << 0;
    pub const READONLY: u32 = 1 << 1;
    pub const DENYOOM: u32 = 1 << 2;
    pub const ADMIN: u32 = 1 << 3;
    pub const PUBSUB: u32 = 1 << 4;
    pub const NOSCRIPT: u32 = 1 << 5;
    pub const BLOCKING: u32 = 1 << 6;
    pub const LOADING: u32 = 1 << 7;
    pub const STALE: u32 = 1 << 8;
    pub const FAST: u32 = 1 << 9;
    pub const NO_AUTH: u32 = 1 << 10;
    pub const MOVABLEKEYS: u32 = 1 << 11;
    pub const NO_MULTI: u32 = 1 << 12;
    pub const MAY_REPLICATE: u32 = 1 << 13;
    /// keygate's own: learned from a server (see `learned`), not in the built-in table.
    pub const LEARNED: u32 = 1 << 14;
    /// keygate's own: a learned command whose keys cannot all be found by its specifications.
    pub const KEYS_INCOMPLETE: u32 = 1 << 15;
    /// keygate's own: a learned command in Redis's `@connection` category.
    pub const CONNECTION: u32 = 1 << 16;
}

/// One command's facts, as Redis reports them.
#[derive(Debug)]
pub struct Spec {
    /// Lower case; subcommands as `container|sub`.
    pub name: &'static str,
    /// Redis arity: N means exactly N arguments (name included), -N at least N.
    pub arity: i32,
    pub flags: u32,
    /// Legacy key positions: first and last key argument and the step between keys (last -1:
    /// up to the last argument). 0 for commands without keys at fixed positions.
    pub first_key: i32,
    pub last_key: i32,
    pub key_step: i32,
    /// Redis 7 key specifications, for learned commands (see `learned`); empty in the built-in
    /// table, whose commands keygate's own parsers (`keys`) read.
    pub key_specs: &'static [learned::KeySpec],
    /// Redis's ACL categories, without the `@` (`policy.deny_categories`).
    pub categories: &'static [&'static str],
}

impl Spec {
    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    /// Does a request with `argc` arguments (name included) satisfy the arity?
    pub fn arity_ok(&self, argc: usize) -> bool {
        let arity = self.arity.unsigned_abs() as usize;
        if self.arity >= 0 {
            argc == arity
        } else {
            argc >= arity
        }
    }
}

/// Index of a top-level command in `COMMANDS`; `UNKNOWN` for names Redis 7 does not know.
/// Metrics are kept per `CommandId`, so unknown names collapse into one label.
pub type CommandId = u16;
pub const UNKNOWN: CommandId = u16::MAX;
/// The id of every learned command (see `learned`): its metrics are kept together, under the
/// label "learned", so a server's table cannot grow the metrics' label set.
pub const LEARNED_ID: CommandId = u16::MAX - 1;

/// What keygate does with a command. Every command has exactly one policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Sent to the backend unchanged.
    Forward,
    /// Answered by keygate: the command touches connection state that must not reach a backend
    /// connection shared with other clients.
    Local,
    /// Refused with this reason.
    Refuse(&'static str),
    /// A transaction command (MULTI, EXEC, DISCARD, WATCH, UNWATCH): run on a connection pinned
    /// to the client (see session::transaction).
    Transaction,
    /// A blocking command (BLPOP, XREAD BLOCK, WAIT...): run on a backend connection of its own
    /// (see dispatch::blocking). SCRIPT KILL and FUNCTION KILL too, so they reach the server at
    /// once, whatever the shared connections are waiting for.
    Blocking,
    /// A script or function call (EVAL, EVALSHA, FCALL and their read-only forms): run on the
    /// script lane, pipelined connections for scripts only (`Flavor::scripts`), so a long
    /// script never holds up the connections other commands share: other clients get `-BUSY`
    /// from the server, as on Redis, and `SCRIPT KILL` gets through.
    Script,
    /// SUBSCRIBE and its kin: run on the client's subscriber connection (see session::pubsub).
    Subscribe,
    /// Close the connection without a reply: `POST` and `Host:` mean someone is speaking HTTP to
    /// the RESP port (a cross-protocol attack from a browser, as Redis itself treats them).
    Close,
}

const NEEDS_PINNED: &str =
    "takes over a backend connection for replication, which keygate does not offer";
const CONNECTION_STATE: &str =
    "would change the state of a backend connection shared with other clients";

/// keygate's treatment of a command, by name (subcommands as `container|sub`).
fn policy(spec: &Spec) -> Policy {
    match spec.name {
        // PING and ECHO go to the server (Policy::Forward): a PING tells whether the server
        // answers (`-BUSY` while a script runs, `-LOADING`), as clients and Redis's tests use it.
        "quit" | "select" | "auth" | "hello" | "reset" => Policy::Local,
        // CLIENT acts on the connection: keygate answers it, refusing the subcommands that would
        // act on shared backend connections (see session::local).
        "client" => Policy::Local,
        // keygate's own slowlog (see slowlog): the backend's would mix every client's commands.
        "slowlog" => Policy::Local,
        name if name.starts_with("slowlog|") => Policy::Local,
        name if name.starts_with("client|") => Policy::Local,
        "multi" | "exec" | "discard" | "watch" | "unwatch" => Policy::Transaction,
        "subscribe" | "unsubscribe" | "psubscribe" | "punsubscribe" | "ssubscribe"
        | "sunsubscribe" => Policy::Subscribe,
        // MONITOR: connections of the client's own to every primary (see session::feeds).
        "monitor" => Policy::Local,
        "sync" | "psync" | "replconf" => Policy::Refuse(NEEDS_PINNED),
        // XREAD/XREADGROUP block only with BLOCK; `Command::parse` refines them.
        "xread" | "xreadgroup" => Policy::Forward,
        "wait" | "script|kill" | "function|kill" => Policy::Blocking,
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro" => Policy::Script,
        "readonly" | "readwrite" | "asking" => Policy::Refuse(CONNECTION_STATE),
        _ if spec.has(flags::BLOCKING) => Policy::Blocking,
        _ => Policy::Forward,
    }
}

/// keygate's treatment of a learned command: forwarded (on a connection of its own if the
/// server says it blocks), or refused where forwarding could break what keygate keeps per
/// client (connection state, subscriptions).
fn learned_policy(spec: &Spec) -> Policy {
    if spec.name == "waitaof" {
        // Redis 7.2's WAITAOF, handled as WAIT is (see dispatch::blocking).
        Policy::Blocking
    } else if spec.has(flags::CONNECTION) {
        Policy::Refuse(CONNECTION_STATE)
    } else if spec.has(flags::PUBSUB) {
        Policy::Refuse("is a pub/sub command keygate does not know how to keep per client")
    } else if spec.has(flags::BLOCKING) {
        Policy::Blocking
    } else {
        Policy::Forward
    }
}

/// Whether a command may write or be propagated to replicas: Redis's `write` and
/// `may-replicate` flags (COMMAND INFO in Redis 7.0 does not report the latter, so the table
/// lacks it: these are the commands Redis 7.0 marks so).
pub fn may_replicate(spec: &Spec) -> bool {
    spec.has(flags::WRITE | flags::MAY_REPLICATE)
        || matches!(
            spec.name,
            "eval" | "evalsha" | "fcall" | "pfcount" | "publish" | "spublish"
        )
}

/// Find a command (or `container|sub`) by its lower-case name.
pub fn lookup(lower: &[u8]) -> Option<usize> {
    COMMANDS
        .binary_search_by(|spec| spec.name.as_bytes().cmp(lower))
        .ok()
}

/// A client request, its command identified.
#[derive(Debug)]
pub struct Command {
    pub args: Vec<Bytes>,
    /// The top-level command, for metrics; `UNKNOWN` if Redis does not know it.
    pub id: CommandId,
    /// The command or subcommand spec that decides policy and arity; `None` if unknown.
    pub spec: Option<&'static Spec>,
    /// `spec`'s index in `COMMANDS` (meaningless when `spec` is `None`).
    pub spec_index: usize,
    pub policy: Policy,
}

impl Command {
    /// Identify a request by the built-in table alone. Never fails: unknown commands are
    /// `Command`s with no spec, answered with Redis's "unknown command" error by the caller.
    pub fn parse(args: Vec<Bytes>) -> Command {
        Command::parse_with(args, None)
    }

    /// Identify a request by the built-in table, then, for a name it does not know, by the
    /// commands learned from the servers (`learned`, read only then: the built-in table's
    /// commands cost one binary search, as before).
    pub fn parse_with(
        args: Vec<Bytes>,
        learned: Option<&arc_swap::ArcSwap<learned::Table>>,
    ) -> Command {
        let mut name = [0u8; 32];
        // `container|sub` names exist only as subcommands: sent as the command itself
        // (`CLIENT|ID`) they are unknown, as in Redis.
        let lower = lower_into(&args[0], &mut name).filter(|name| !name.contains(&b'|'));
        let Some(id) = lower.and_then(lookup) else {
            if let (Some(lower), Some(learned)) = (lower, learned) {
                if let Some(command) = Command::learned(&args, lower, &learned.load()) {
                    return Command { args, ..command };
                }
            }
            let policy = match lower {
                Some(b"post" | b"host:") => Policy::Close,
                _ => Policy::Forward,
            };
            return Command {
                args,
                id: UNKNOWN,
                spec: None,
                spec_index: 0,
                policy,
            };
        };
        let mut spec = &COMMANDS[id];
        let mut spec_index = id;
        // Container commands (CLIENT, CONFIG, ...) have arity -2 and subcommands in the table;
        // COMMAND alone also runs bare (arity -1).
        if args.len() >= 2 && (spec.arity == -2 || spec.name == "command") {
            let mut full = [0u8; 64];
            let n = spec.name.len();
            full[..n].copy_from_slice(spec.name.as_bytes());
            full[n] = b'|';
            let sub_len = lower_into(&args[1], &mut full[n + 1..]).map(|sub| sub.len());
            if let Some(sub_len) = sub_len {
                let full = &full[..n + 1 + sub_len];
                if let Some(sub_id) = lookup(full) {
                    spec = &COMMANDS[sub_id];
                    spec_index = sub_id;
                } else if let Some(sub) = learned.and_then(|l| l.load().get(full)) {
                    // A subcommand a newer server added (CLIENT NO-TOUCH): its policy comes
                    // from its container's name below, like the built-in subcommands'.
                    spec = sub;
                }
            }
        }
        let mut policy = policy(spec);
        if matches!(spec.name, "xread" | "xreadgroup") && has_block_option(&args) {
            policy = Policy::Blocking;
        }
        Command {
            args,
            id: id as CommandId,
            spec: Some(spec),
            spec_index,
            policy,
        }
    }

    /// A command the built-in table does not know, found among the learned ones (with its
    /// learned subcommand, if any). Its `args` are left empty for the caller to fill.
    fn learned(args: &[Bytes], lower: &[u8], table: &learned::Table) -> Option<Command> {
        let mut spec = table.get(lower)?;
        if args.len() >= 2 && table.is_container(lower) {
            let mut full = lower.to_vec();
            full.push(b'|');
            full.extend(args[1].iter().map(u8::to_ascii_lowercase));
            if let Some(sub) = table.get(&full) {
                spec = sub;
            }
        }
        Some(Command {
            args: Vec::new(),
            id: LEARNED_ID,
            spec: Some(spec),
            spec_index: 0,
            policy: learned_policy(spec),
        })
    }

    /// The top-level command's name, lower case, or "unknown".
    pub fn name(&self) -> &'static str {
        name_of(self.id)
    }

    /// The subcommand argument, lower-cased, if there is one.
    pub fn sub_lower(&self) -> Option<String> {
        self.args
            .get(1)
            .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
    }
}

/// Metric label for a command id.
pub fn name_of(id: CommandId) -> &'static str {
    if id == UNKNOWN {
        "unknown"
    } else if id == LEARNED_ID {
        "learned"
    } else {
        COMMANDS[id as usize].name
    }
}

/// Lower-case `name` into `out`, returning the written part; `None` if it does not fit (no
/// Redis command name is that long).
fn lower_into<'a>(name: &[u8], out: &'a mut [u8]) -> Option<&'a [u8]> {
    let out = out.get_mut(..name.len())?;
    for (o, c) in out.iter_mut().zip(name) {
        *o = c.to_ascii_lowercase();
    }
    Some(out)
}

/// XREAD/XREADGROUP: is there a BLOCK option before STREAMS?
fn has_block_option(args: &[Bytes]) -> bool {
    for arg in &args[1..] {
        if arg.eq_ignore_ascii_case(b"streams") {
            return false;
        }
        if arg.eq_ignore_ascii_case(b"block") {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Command {
        Command::parse(
            args.iter()
                .map(|a| Bytes::copy_from_slice(a.as_bytes()))
                .collect(),
        )
    }

    #[test]
    fn table_is_sorted_and_complete() {
        assert!(COMMANDS.windows(2).all(|w| w[0].name < w[1].name));
        assert!(COMMANDS.len() > 200);
        assert!(COMMANDS.len() < UNKNOWN as usize);
    }

    #[test]
    fn lookups_are_case_insensitive_and_find_subcommands() {
        let c = cmd(&["gEt", "k"]);
        assert_eq!(c.name(), "get");
        assert_eq!(c.policy, Policy::Forward);
        let c = cmd(&["CLIENT", "SetName", "x"]);
        assert_eq!(c.name(), "client");
        assert_eq!(c.spec.unwrap().name, "client|setname");
        assert_eq!(c.policy, Policy::Local);
        assert_eq!(cmd(&["nosuchcommand"]).id, UNKNOWN);
        assert_eq!(cmd(&["x".repeat(100).as_str()]).id, UNKNOWN);
        // A subcommand's table name sent as the command is unknown, as in Redis.
        for name in [
            "CLIENT|ID",
            "client|list",
            "SLOWLOG|GET",
            "config|get",
            "xinfo|stream",
        ] {
            let c = cmd(&[name, "x"]);
            assert_eq!(c.id, UNKNOWN, "{name}");
            assert!(c.spec.is_none(), "{name}");
        }
    }

    #[test]
    fn fuzz_dictionary_lists_every_command() {
        let dict = include_str!("../../fuzz/commands.dict");
        for spec in COMMANDS {
            let lower = format!("\"{}\"", spec.name);
            let upper = lower.to_ascii_uppercase();
            assert!(dict.lines().any(|l| l == lower), "{lower} missing");
            assert!(dict.lines().any(|l| l == upper), "{upper} missing");
        }
    }

    #[test]
    fn stateful_commands_get_connections_of_their_own() {
        for args in [
            &["blpop", "k", "0"][..],
            &["xread", "block", "0", "streams", "s", "$"],
            &["wait", "1", "0"],
            &["bzmpop", "0", "1", "z", "min"],
        ] {
            assert_eq!(cmd(args).policy, Policy::Blocking, "{args:?}");
        }
        assert_eq!(cmd(&["ssubscribe", "c"]).policy, Policy::Subscribe);
        assert!(matches!(cmd(&["psync"]).policy, Policy::Refuse(_)));
        assert_eq!(
            cmd(&["xread", "count", "1", "streams", "block", "0"]).policy,
            Policy::Forward
        );
    }

    #[test]
    fn arity_follows_redis() {
        let get = &COMMANDS[lookup(b"get").unwrap()];
        assert!(get.arity_ok(2));
        assert!(!get.arity_ok(3));
        let del = &COMMANDS[lookup(b"del").unwrap()];
        assert!(!del.arity_ok(1));
        assert!(del.arity_ok(5));
    }
}
