//! Routing: where a command goes. Pure: `plan` decides, `dispatch` acts.
//!
//! - standalone: everything to the one backend;
//! - ketama: by the ketama ring over each key (twemproxy's placement);
//! - cluster: by the slot of each key.
//!
//! A command whose keys all live on one shard (for a cluster: one slot, as Redis Cluster itself
//! demands) goes there whole. MGET, MSET, DEL, UNLINK, EXISTS and TOUCH are split per shard and
//! their replies merged into exactly the reply one Redis would give. Any other command whose keys
//! span shards is refused with `-CROSSSLOT`. Commands over the whole keyspace (KEYS, SCAN, DBSIZE,
//! FLUSHDB, ...) visit every shard. Commands without keys go to the first shard.

pub mod merge;

use bytes::Bytes;

use crate::command::{flags, keys, Command};
use crate::error::Error;
use crate::topology::{Placement, Topology};

pub use merge::Merge;

pub use crate::placement::Target;

/// One piece of a split command.
#[derive(Debug)]
pub struct Part {
    pub target: Target,
    pub args: Vec<Bytes>,
    /// For each key in this part, its position among the original command's keys.
    pub keys: Vec<usize>,
}

#[derive(Debug)]
pub enum Plan {
    /// The command, whole, to one backend.
    One(Target),
    /// Pieces to several backends, replies merged.
    Split { parts: Vec<Part>, merge: Merge },
    /// The same request to every backend, replies merged.
    All { args: Vec<Bytes>, merge: Merge },
    /// One step of a keyspace-wide SCAN: this backend, this command, this cursor to re-encode.
    Scan {
        target: Target,
        args: Vec<Bytes>,
        shard: usize,
        epoch: u64,
    },
}

/// How a splittable command's arguments are grouped: key, or key and value.
fn split_kind(name: &str) -> Option<(usize, Merge)> {
    Some(match name {
        "mget" => (1, Merge::Values),
        "mset" => (2, Merge::AllOk),
        "del" | "unlink" | "exists" | "touch" => (1, Merge::Sum),
        _ => return None,
    })
}

pub fn plan(cmd: &Command, topology: &Topology) -> Result<Plan, Error> {
    let spec = cmd.spec.expect("planned commands are known");
    if topology.backends.is_empty() {
        // A sentinel topology before any sentinel named the primary; a cluster before discovery
        // has its seeds.
        return Err(Error::NoPrimary);
    }
    // INFO gets keygate's own section in every mode.
    if matches!(topology.placement, Placement::Single) && spec.name != "info" {
        return Ok(Plan::One(Target {
            backend: 0,
            slot: None,
        }));
    }
    if let Some(plan) = keyspace_wide(cmd, topology)? {
        return Ok(plan);
    }
    // A command learned from the servers whose keys its specifications cannot all locate could
    // land on a shard that does not hold them.
    if spec.has(flags::LEARNED) && keys::learned_keys_unknown(spec, &cmd.args) {
        return Err(Error::Refused {
            command: spec.name.replace('|', " ").to_ascii_uppercase(),
            reason: "has key specifications that do not say where every key is, so keygate cannot tell which shard to send it to; it works with a single server behind keygate",
        });
    }
    let positions = keys::positions(spec, &cmd.args);
    let Some(&first) = positions.first() else {
        return Ok(Plan::One(Target {
            backend: 0,
            slot: None,
        }));
    };
    let first = topology.target_of(&cmd.args[first])?;
    let mut same = true;
    for &at in &positions[1..] {
        let target = topology.target_of(&cmd.args[at])?;
        // A cluster wants one slot, not merely one node: the node refuses otherwise.
        if target != first {
            same = false;
            break;
        }
    }
    if same {
        return Ok(Plan::One(first));
    }
    let Some((width, merge)) = split_kind(cmd.name()) else {
        return Err(Error::CrossSlot);
    };
    // MSET with a key but no value: Redis's arity error, as one server would answer.
    if (cmd.args.len() - 1) % width != 0 {
        return Err(Error::WrongArity(spec.name));
    }
    let mut parts: Vec<Part> = Vec::new();
    for (ordinal, &at) in positions.iter().enumerate() {
        let target = topology.target_of(&cmd.args[at])?;
        let part = match parts.iter_mut().position(|p| p.target == target) {
            Some(i) => &mut parts[i],
            None => {
                parts.push(Part {
                    target,
                    args: vec![cmd.args[0].clone()],
                    keys: Vec::new(),
                });
                parts.last_mut().expect("just pushed")
            }
        };
        part.args.extend(cmd.args[at..at + width].iter().cloned());
        part.keys.push(ordinal);
    }
    Ok(Plan::Split { parts, merge })
}

/// Commands over the whole keyspace, in sharded modes.
fn keyspace_wide(cmd: &Command, topology: &Topology) -> Result<Option<Plan>, Error> {
    let spec = cmd.spec.expect("known");
    let merge = match spec.name {
        "keys" => Merge::Concat,
        "dbsize" => Merge::Sum,
        "flushdb" | "flushall" | "script|flush" => Merge::AllOk,
        "script|load" => Merge::Same,
        "randomkey" => Merge::AnyValue,
        "info" => {
            // keygate's own section, then the first shard's sections with the keyspace summed
            // over the shards.
            return Ok(Some(Plan::All {
                args: cmd.args.clone(),
                merge: Merge::Info,
            }));
        }
        "scan" => return scan(cmd, topology).map(Some),
        _ => return Ok(None),
    };
    Ok(Some(Plan::All {
        args: cmd.args.clone(),
        merge,
    }))
}

/// SCAN over every shard in turn, with one cursor. keygate's cursor packs the shard's own cursor,
/// the shard's index and the topology's epoch:
/// `cursor = shard_cursor << 20 | (epoch mod 1024) << 10 | shard`. A cursor from another
/// topology is refused rather than silently skipping or repeating keys.
pub const SCAN_SHARD_BITS: u32 = 10;
pub const SCAN_EPOCH_BITS: u32 = 10;

fn scan(cmd: &Command, topology: &Topology) -> Result<Plan, Error> {
    let Some(cursor) = std::str::from_utf8(&cmd.args[1])
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return Err(Error::Invalid("invalid cursor"));
    };
    let epoch = topology.epoch % (1 << SCAN_EPOCH_BITS);
    let shard = (cursor & ((1 << SCAN_SHARD_BITS) - 1)) as usize;
    let cursor_epoch = (cursor >> SCAN_SHARD_BITS) & ((1 << SCAN_EPOCH_BITS) - 1);
    let inner = cursor >> (SCAN_SHARD_BITS + SCAN_EPOCH_BITS);
    if cursor != 0 && (cursor_epoch != epoch || shard >= topology.backends.len()) {
        return Err(Error::StaleCursor);
    }
    let mut args = cmd.args.clone();
    args[1] = Bytes::from(inner.to_string());
    Ok(Plan::Scan {
        target: Target {
            backend: shard,
            slot: None,
        },
        args,
        shard,
        epoch,
    })
}

/// The client's cursor for continuing at `shard` with that shard's cursor `inner`.
pub fn scan_cursor(inner: u64, shard: usize, epoch: u64) -> Option<u64> {
    if inner >> (64 - SCAN_SHARD_BITS - SCAN_EPOCH_BITS) != 0 {
        return None;
    }
    Some(inner << (SCAN_SHARD_BITS + SCAN_EPOCH_BITS) | epoch << SCAN_SHARD_BITS | shard as u64)
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
