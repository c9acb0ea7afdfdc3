//! What a tenant may do with each Redis command: exactly one rule per command in the table.
//!
//! The match below has no catch-all arm for known names: `rule` returns `None` for a name it
//! does not list, and a test walks the whole generated table, so a command added to the table
//! (a newer Redis) without a rule fails the build's tests instead of slipping through. Commands
//! learned from the servers (modules, newer servers; see `command::learned`) get
//! `learned_rule`, which opens one only when its key specifications place every key.

/// A tenant's treatment of one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// No keys, channels or server-wide state: forwarded as it is.
    Pass,
    /// Keys at the table's fixed positions get the tenant's prefix.
    Keys,
    /// Keys found by keygate's own parser for the command (numkeys, STREAMS, STORE, DB options),
    /// which follows how Redis executes it rather than its key specs.
    Custom,
    /// Channel names get the tenant's prefix, both ways.
    Channel,
    /// Answered for the tenant alone (KEYS, SCAN, DBSIZE, FLUSHDB, INFO, RANDOMKEY, ...).
    Emulate,
    /// Connection state, answered by keygate's session for every client.
    Local,
    /// Refused for tenants, unless the tenant's `allow_commands` names it; the reason says why.
    Deny(&'static str),
}

use std::sync::OnceLock;

use crate::command::{flags, Spec, COMMANDS};

const SERVER: &str = "acts on the whole server, which tenants share";
const CONNECTION: &str = "would change a backend connection's state";
const OTHER_DB: &str = "reaches outside the tenant's keyspace";
const UNSAFE: &str = "can crash or corrupt the server for every tenant";

/// The rule for `COMMANDS[index]`. Computed once for the whole table: `rule` compares names
/// one by one, too slow to run on every request.
pub fn rule_at(index: usize) -> Option<Rule> {
    static RULES: OnceLock<Vec<Option<Rule>>> = OnceLock::new();
    RULES.get_or_init(|| COMMANDS.iter().map(|spec| rule(spec.name)).collect())[index]
}

/// The rule for a command: a learned one's from what the server said of it (`learned_rule`), a
/// built-in one's by its index in `COMMANDS`.
pub fn rule_of(spec: &Spec, index: usize) -> Option<Rule> {
    if spec.has(flags::LEARNED) {
        Some(learned_rule(spec))
    } else {
        rule_at(index)
    }
}

/// Tenants stay closed by default to commands keygate learned from the servers: one is
/// available only when its key specifications say where every key is (so each gets the
/// prefix) and it acts on nothing else the tenants share.
pub fn learned_rule(spec: &Spec) -> Rule {
    use Rule::*;
    if spec.name.starts_with("client|") {
        // CLIENT's newer subcommands: answered or refused by the session for every client.
        Local
    } else if spec.name == "waitaof" {
        // As WAIT: it waits on the whole server's replication and persistence.
        Deny(SERVER)
    } else if spec.has(flags::CONNECTION) {
        Deny(CONNECTION)
    } else if spec.has(flags::ADMIN) {
        Deny(SERVER)
    } else if spec.has(flags::PUBSUB) {
        Deny("is a pub/sub command keygate cannot confine to the tenant's channels")
    } else if spec.has(flags::KEYS_INCOMPLETE) {
        Deny("has key specifications that do not say where every key is, so keygate cannot prefix them")
    } else if spec.key_specs.is_empty() {
        Deny("names no key keygate could prefix, so it may reach what other tenants share")
    } else {
        Keys
    }
}

/// The rule for a command or subcommand (`container|sub`), by its lower-case name.
pub fn rule(name: &str) -> Option<Rule> {
    use Rule::*;
    Some(match name {
        // Connection state keygate keeps per client.
        "auth" | "hello" | "quit" | "reset" | "select" | "ping" | "echo" | "client" => Local,
        name if name.starts_with("client|") => Local,
        // keygate's own slowlog, which shows a tenant only its own entries.
        "slowlog" => Local,
        name if name.starts_with("slowlog|") => Local,

        // Keys at fixed positions.
        "append"
        | "bitcount"
        | "bitfield"
        | "bitfield_ro"
        | "bitop"
        | "bitpos"
        | "blmove"
        | "brpoplpush"
        | "decr"
        | "decrby"
        | "del"
        | "dump"
        | "exists"
        | "expire"
        | "expireat"
        | "expiretime"
        | "geoadd"
        | "geodist"
        | "geohash"
        | "geopos"
        | "georadius_ro"
        | "georadiusbymember_ro"
        | "geosearch"
        | "geosearchstore"
        | "get"
        | "getbit"
        | "getdel"
        | "getex"
        | "getrange"
        | "getset"
        | "hdel"
        | "hexists"
        | "hget"
        | "hgetall"
        | "hincrby"
        | "hincrbyfloat"
        | "hkeys"
        | "hlen"
        | "hmget"
        | "hmset"
        | "hrandfield"
        | "hscan"
        | "hset"
        | "hsetnx"
        | "hstrlen"
        | "hvals"
        | "incr"
        | "incrby"
        | "incrbyfloat"
        | "lcs"
        | "lindex"
        | "linsert"
        | "llen"
        | "lmove"
        | "lpop"
        | "lpos"
        | "lpush"
        | "lpushx"
        | "lrange"
        | "lrem"
        | "lset"
        | "ltrim"
        | "mget"
        | "mset"
        | "msetnx"
        | "persist"
        | "pexpire"
        | "pexpireat"
        | "pexpiretime"
        | "pfadd"
        | "pfcount"
        | "pfmerge"
        | "psetex"
        | "pttl"
        | "rename"
        | "renamenx"
        | "rpop"
        | "rpoplpush"
        | "rpush"
        | "rpushx"
        | "sadd"
        | "scard"
        | "sdiff"
        | "sdiffstore"
        | "set"
        | "setbit"
        | "setex"
        | "setnx"
        | "setrange"
        | "sinter"
        | "sinterstore"
        | "sismember"
        | "smembers"
        | "smismember"
        | "smove"
        | "spop"
        | "srandmember"
        | "srem"
        | "sscan"
        | "strlen"
        | "substr"
        | "sunion"
        | "sunionstore"
        | "touch"
        | "ttl"
        | "type"
        | "unlink"
        | "watch"
        | "xack"
        | "xadd"
        | "xautoclaim"
        | "xclaim"
        | "xdel"
        | "xlen"
        | "xpending"
        | "xrange"
        | "xrevrange"
        | "xsetid"
        | "xtrim"
        | "zadd"
        | "zcard"
        | "zcount"
        | "zincrby"
        | "zlexcount"
        | "zmscore"
        | "zpopmax"
        | "zpopmin"
        | "zrandmember"
        | "zrange"
        | "zrangebylex"
        | "zrangebyscore"
        | "zrangestore"
        | "zrank"
        | "zrem"
        | "zremrangebylex"
        | "zremrangebyrank"
        | "zremrangebyscore"
        | "zrevrange"
        | "zrevrangebylex"
        | "zrevrangebyscore"
        | "zrevrank"
        | "zscan"
        | "zscore"
        | "object|encoding"
        | "object|freq"
        | "object|idletime"
        | "object|refcount"
        | "memory|usage"
        | "xgroup|create"
        | "xgroup|createconsumer"
        | "xgroup|delconsumer"
        | "xgroup|destroy"
        | "xgroup|setid"
        | "xinfo|consumers"
        | "xinfo|groups"
        | "xinfo|stream" => Keys,

        // Keys that move: parsed by keygate. Scripts also need `allow_scripts`.
        // Blocking pops: their reply names the key popped from.
        "blpop" | "brpop" | "bzpopmin" | "bzpopmax" => Custom,
        "eval" | "eval_ro" | "evalsha" | "evalsha_ro" | "fcall" | "fcall_ro" | "zunion"
        | "zinter" | "zdiff" | "zunionstore" | "zinterstore" | "zdiffstore" | "sintercard"
        | "zintercard" | "lmpop" | "blmpop" | "zmpop" | "bzmpop" | "xread" | "xreadgroup"
        | "sort" | "sort_ro" | "georadius" | "georadiusbymember" | "copy" | "script|load"
        | "script|exists" => Custom,
        // Only while the scripts in flight are all the tenant's (see session::tenancy).
        "script|kill" | "function|kill" => Custom,
        // Forgets the tenant's own scripts (keygate's record of them), not the server's cache.
        "script|flush" => Custom,

        // Pub/sub: channels are namespaced like keys.
        "publish"
        | "spublish"
        | "subscribe"
        | "unsubscribe"
        | "psubscribe"
        | "punsubscribe"
        | "ssubscribe"
        | "sunsubscribe"
        | "pubsub|channels"
        | "pubsub|numsub"
        | "pubsub|shardchannels"
        | "pubsub|shardnumsub" => Channel,

        // The whole keyspace, seen as the tenant's alone.
        "keys" | "scan" | "randomkey" | "dbsize" | "flushdb" | "flushall" | "info"
        | "acl|whoami" | "pubsub|numpat" => Emulate,

        // Nothing of anyone's: forwarded.
        "time"
        | "lolwut"
        | "multi"
        | "exec"
        | "discard"
        | "unwatch"
        | "command"
        | "command|count"
        | "command|docs"
        | "command|getkeys"
        | "command|getkeysandflags"
        | "command|help"
        | "command|info"
        | "command|list"
        | "object|help"
        | "xgroup|help"
        | "xinfo|help"
        | "pubsub|help"
        | "memory|help"
        | "script|help" => Pass,

        // A container's own rule applies only to subcommands missing from this table, which a
        // newer server might know: refused rather than forwarded unconfined.
        "object" | "xgroup" | "xinfo" | "pubsub" | "memory" | "script" => {
            Deny("has no subcommand by that name that keygate knows")
        }

        // Refused.
        "acl" | "acl|cat" | "acl|deluser" | "acl|dryrun" | "acl|genpass" | "acl|getuser"
        | "acl|help" | "acl|list" | "acl|load" | "acl|log" | "acl|save" | "acl|setuser"
        | "acl|users" => Deny("manages the server's users"),
        "config"
        | "config|get"
        | "config|help"
        | "config|resetstat"
        | "config|rewrite"
        | "config|set"
        | "debug"
        | "shutdown"
        | "bgrewriteaof"
        | "bgsave"
        | "save"
        | "lastsave"
        | "role"
        | "replicaof"
        | "slaveof"
        | "failover"
        | "sync"
        | "psync"
        | "replconf"
        | "monitor"
        | "module"
        | "module|help"
        | "module|list"
        | "module|load"
        | "module|loadex"
        | "module|unload"
        | "latency"
        | "latency|doctor"
        | "latency|graph"
        | "latency|help"
        | "latency|histogram"
        | "latency|history"
        | "latency|latest"
        | "latency|reset"
        | "memory|doctor"
        | "memory|malloc-stats"
        | "memory|purge"
        | "memory|stats"
        | "script|debug"
        | "function"
        | "function|delete"
        | "function|dump"
        | "function|flush"
        | "function|help"
        | "function|list"
        | "function|load"
        | "function|restore"
        | "function|stats"
        | "pfdebug"
        | "pfselftest"
        | "wait" => Deny(SERVER),
        "swapdb" | "move" | "migrate" => Deny(OTHER_DB),
        "restore" | "restore-asking" => Deny(UNSAFE),
        "asking" | "readonly" | "readwrite" => Deny(CONNECTION),
        "cluster" => Deny(SERVER),
        name if name.starts_with("cluster|") => Deny(SERVER),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::flags;

    #[test]
    fn every_command_has_exactly_one_rule() {
        let missing: Vec<&str> = COMMANDS
            .iter()
            .map(|c| c.name)
            .filter(|n| rule(n).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "commands without a tenant rule: {missing:?}"
        );
        assert_eq!(rule("nosuchcommand"), None);
    }

    #[test]
    fn no_command_with_keys_passes_unrewritten() {
        for spec in COMMANDS {
            let has_keys = spec.first_key > 0 || spec.has(flags::MOVABLEKEYS);
            let r = rule(spec.name).unwrap();
            // Shard channels are declared as keys (for slot routing); Channel prefixes them too.
            assert!(
                !(has_keys && matches!(r, Rule::Pass | Rule::Local)),
                "{} has keys but rule {r:?}",
                spec.name
            );
            if spec.has(flags::MOVABLEKEYS) {
                assert!(
                    matches!(r, Rule::Custom | Rule::Deny(_) | Rule::Emulate),
                    "{} has movable keys but rule {r:?}",
                    spec.name
                );
            }
        }
    }
}
