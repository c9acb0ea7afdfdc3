//! What keygate talks to: the backends and how keys are placed on them, built from the config
//! (or, for a cluster, from its slot map) and replaced whole.
//!
//! # Concurrency note
//!
//! The proxy keeps one `Topology` behind one `ArcSwap`. A request loads the snapshot once and
//! uses only it, so it never sees half of an old topology and half of a new one; a new topology
//! is built off to the side and stored in one step. Backends are shared (`Arc`) between
//! successive topologies, so a node that stays keeps its connections across a refresh, and
//! requests already sent on a snapshot finish on the connections they started on.

use std::sync::Arc;

use crate::backend::{Backend, Options};
use crate::config::{Config, ReadFrom, UpstreamKind};
use crate::error::Error;
use crate::placement::ketama::{Node, Ring};
use crate::placement::slots::{self, Shard, SLOTS};
use crate::placement::Target;

/// How keys map to backends.
pub enum Placement {
    /// One backend holds everything.
    Single,
    /// twemproxy's ketama ring; server index = backend index.
    Ring(Ring),
    /// Redis Cluster: slot → backend index, `UNASSIGNED` where no primary serves it.
    Slots(Box<[u16]>),
}

pub const UNASSIGNED: u16 = u16::MAX;

pub struct Topology {
    pub kind: UpstreamKind,
    /// Standalone: the server; ketama: the servers in config order; cluster: the primaries,
    /// sorted by address.
    pub backends: Vec<Arc<Backend>>,
    pub placement: Placement,
    /// Cluster: the shards this map was built from (to tell whether a refresh changed anything).
    pub shards: Vec<Shard>,
    /// Bumped whenever placement changes; carried in SCAN cursors.
    pub epoch: u64,
    /// ketama with `auto_eject_hosts`: the backends left off the ring (breaker open).
    pub ejected: Vec<usize>,
    /// cluster, sentinel: each backend's replicas (empty when reads stay on primaries).
    pub replicas: Vec<Vec<Arc<Backend>>>,
    pub read_from: ReadFrom,
}

impl Topology {
    /// Build the topology a config describes and start its connections (on the current
    /// runtime). A cluster starts with its seeds and no slot map until discovery fills it in.
    pub fn start(config: &Config) -> Topology {
        Topology::rebuild(config, None)
    }

    /// The topology `config` describes, keeping `previous`'s backends (and so their
    /// connections) for servers reached the same way. A cluster starts with its seeds and no
    /// slot map until discovery fills it in.
    pub fn rebuild(config: &Config, previous: Option<&Topology>) -> Topology {
        let opts = Arc::new(Options::new(
            &config.upstream,
            config.limits.max_reply_depth,
        ));
        let up = &config.upstream;
        // A sentinel's servers are the sentinels: the primary is found by discovery.
        let data_servers = match up.kind {
            UpstreamKind::Sentinel => &[][..],
            _ => &up.servers[..],
        };
        let backends: Vec<Arc<Backend>> = data_servers
            .iter()
            .map(|s| match previous {
                Some(previous) => previous.reuse(&s.addr, &opts),
                None => Arc::new(Backend::start(&s.addr, opts.clone())),
            })
            .collect();
        let placement = match up.kind {
            UpstreamKind::Standalone | UpstreamKind::Sentinel => Placement::Single,
            UpstreamKind::Ketama => ring(config, &[]),
            UpstreamKind::Cluster => Placement::Slots(vec![UNASSIGNED; SLOTS].into_boxed_slice()),
        };
        Topology {
            kind: up.kind,
            backends,
            placement,
            shards: Vec::new(),
            epoch: previous.map_or(0, |p| p.epoch + 1),
            ejected: Vec::new(),
            replicas: Vec::new(),
            read_from: config.upstream.read_from,
        }
    }

    /// The primary `addr` the sentinels named, keeping `previous`'s backend for it if it had it.
    pub fn sentinel(
        addr: &str,
        replicas: &[String],
        previous: &Topology,
        config: &Config,
    ) -> Topology {
        let opts = Arc::new(Options::new(
            &config.upstream,
            config.limits.max_reply_depth,
        ));
        let replicas = match config.upstream.read_from {
            ReadFrom::Primary => Vec::new(),
            _ => vec![replicas.iter().map(|r| previous.reuse(r, &opts)).collect()],
        };
        Topology {
            kind: UpstreamKind::Sentinel,
            backends: vec![previous.reuse(addr, &opts)],
            placement: Placement::Single,
            shards: Vec::new(),
            epoch: previous.epoch + 1,
            ejected: Vec::new(),
            replicas,
            read_from: config.upstream.read_from,
        }
    }

    /// This topology's backend for `addr` if it is reached with `opts`, else a new one.
    fn reuse(&self, addr: &str, opts: &Arc<Options>) -> Arc<Backend> {
        let known = self.backends.iter().chain(self.replicas.iter().flatten());
        match known.into_iter().find(|b| b.same_as(addr, opts)) {
            Some(backend) => backend.clone(),
            None => Arc::new(Backend::start(addr, opts.clone())),
        }
    }

    /// The same ketama backends with `ejected` left off the ring (all of them ejected: none
    /// is, since there would be nowhere to put keys; their breakers fail requests anyway).
    pub fn ejecting(&self, config: &Config, ejected: Vec<usize>) -> Topology {
        let ejected = if ejected.len() == self.backends.len() {
            Vec::new()
        } else {
            ejected
        };
        Topology {
            kind: self.kind,
            backends: self.backends.clone(),
            placement: ring(config, &ejected),
            shards: Vec::new(),
            epoch: self.epoch + 1,
            ejected,
            replicas: Vec::new(),
            read_from: self.read_from,
        }
    }

    /// A cluster topology for `shards`, reusing `previous`'s backends for nodes it already had.
    pub fn cluster(shards: Vec<Shard>, previous: &Topology, config: &Config) -> Topology {
        let opts = Arc::new(Options::new(
            &config.upstream,
            config.limits.max_reply_depth,
        ));
        let replica_opts = Arc::new(Options {
            readonly: true,
            ..(*opts).clone()
        });
        let mut map = vec![UNASSIGNED; SLOTS].into_boxed_slice();
        let mut backends = Vec::with_capacity(shards.len());
        let mut replicas = Vec::with_capacity(shards.len());
        for (index, shard) in shards.iter().enumerate() {
            let backend = previous.reuse(&shard.primary, &opts);
            backends.push(backend);
            replicas.push(match config.upstream.read_from {
                ReadFrom::Primary => Vec::new(),
                _ => shard
                    .replicas
                    .iter()
                    .map(|r| previous.reuse(r, &replica_opts))
                    .collect(),
            });
            for &(start, end) in &shard.ranges {
                for slot in start..=end {
                    map[slot as usize] = index as u16;
                }
            }
        }
        Topology {
            kind: UpstreamKind::Cluster,
            backends,
            placement: Placement::Slots(map),
            shards,
            epoch: previous.epoch + 1,
            ejected: Vec::new(),
            replicas,
            read_from: config.upstream.read_from,
        }
    }

    /// The backend a read-only command for `primary`'s keys goes to, per `read_from`: one of
    /// its healthy replicas (breaker closed, connected), chosen by client so a client's reads
    /// stay in order on one, or the primary itself when none is healthy.
    pub fn reader(&self, primary: usize, client: u64) -> &Arc<Backend> {
        let Some(replicas) = self.replicas.get(primary).filter(|r| !r.is_empty()) else {
            return &self.backends[primary];
        };
        let healthy = |b: &&Arc<Backend>| b.breaker().allows() && b.connections_up() > 0;
        let count = replicas.iter().filter(healthy).count();
        if count == 0 {
            return &self.backends[primary];
        }
        let pick = (client % count as u64) as usize;
        replicas
            .iter()
            .filter(healthy)
            .nth(pick)
            .expect("counted above")
    }

    /// Every backend: primaries (or standalone servers), then replicas.
    pub fn all_backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.backends.iter().chain(self.replicas.iter().flatten())
    }

    /// The ketama backends whose breakers are open now (what `ejected` should be).
    pub fn open_breakers(&self) -> Vec<usize> {
        (0..self.backends.len())
            .filter(|&i| !self.backends[i].breaker().allows())
            .collect()
    }

    /// Where a key lives.
    pub fn target_of(&self, key: &[u8]) -> Result<Target, Error> {
        match &self.placement {
            Placement::Single if self.backends.is_empty() => Err(Error::NoPrimary),
            Placement::Single => Ok(Target {
                backend: 0,
                slot: None,
            }),
            Placement::Ring(ring) => Ok(Target {
                backend: ring.server_of(key),
                slot: None,
            }),
            Placement::Slots(map) => {
                let slot = slots::slot_of(key);
                match map[slot as usize] {
                    UNASSIGNED => Err(Error::SlotUnserved(slot)),
                    backend => Ok(Target {
                        backend: backend as usize,
                        slot: Some(slot),
                    }),
                }
            }
        }
    }

    pub fn backend_by_addr(&self, addr: &str) -> Option<usize> {
        self.backends.iter().position(|b| &*b.addr == addr)
    }

    /// Every backend has at least one live connection (and a cluster has a slot map).
    pub fn ready(&self) -> bool {
        let mapped = match &self.placement {
            Placement::Slots(map) => map.iter().all(|&b| b != UNASSIGNED),
            _ => true,
        };
        mapped && !self.backends.is_empty() && self.backends.iter().all(|b| b.connections_up() > 0)
    }
}

/// The ketama ring of the config's servers but `ejected`.
fn ring(config: &Config, ejected: &[usize]) -> Placement {
    let up = &config.upstream;
    let nodes: Vec<Node> = up
        .servers
        .iter()
        .map(|s| Node {
            name: s.name.clone(),
            weight: s.weight,
        })
        .collect();
    Placement::Ring(Ring::without(&nodes, ejected, up.hash, up.hash_tag))
}
