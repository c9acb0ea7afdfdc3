//! What keygate talks to: the backends, built from the config and replaced whole.
//!
//! The proxy keeps one `Topology` behind one `ArcSwap`. A request loads the snapshot once and
//! uses only it, so it can never see half of an old topology and half of a new one; a new
//! topology is built off to the side and stored in one step.

use std::sync::Arc;

use crate::backend::{Backend, Options};
use crate::config::{Config, UpstreamKind};

pub struct Topology {
    pub kind: UpstreamKind,
    pub backends: Vec<Backend>,
}

impl Topology {
    /// Build the topology a config describes and start its connections (on the current runtime).
    pub fn start(config: &Config) -> Topology {
        let opts = Arc::new(Options::new(
            &config.upstream,
            config.limits.max_reply_depth,
        ));
        let backends = config
            .upstream
            .servers
            .iter()
            .map(|addr| Backend::start(addr, config.upstream.connections_per_server, opts.clone()))
            .collect();
        Topology {
            kind: config.upstream.kind,
            backends,
        }
    }

    /// Every backend has at least one live connection.
    pub fn ready(&self) -> bool {
        self.backends.iter().all(|b| b.connections_up() > 0)
    }
}
