//! Routing: which backend a command goes to. Pure: it decides, `dispatch` acts.
//!
//! A standalone upstream has one backend, so every forwarded command goes there. Sharded kinds
//! (ketama, cluster) will plan here from the command table's key positions.

use crate::command::Command;
use crate::topology::Topology;

/// Where a command is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// To the backend with this index in the topology.
    One(usize),
}

pub fn plan(_cmd: &Command, _topology: &Topology) -> Plan {
    Plan::One(0)
}
