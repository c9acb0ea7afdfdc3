//! Placement: where a key lives, without I/O. twemproxy's ketama ring (`ketama`) and Redis
//! Cluster's slots (`slots`, with the parsers for CLUSTER SLOTS and MOVED/ASK). The topology keeps
//! one of them; `route` plans requests with it.

pub mod ketama;
pub mod slots;

/// Where one request is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// Index into the topology's backends.
    pub backend: usize,
    /// The slot, in cluster mode (for following redirections).
    pub slot: Option<u16>,
}
