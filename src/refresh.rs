//! Keeping a cluster's slot map (or a sentinel's primary, see `sentinel`) current: discovery at
//! start, then a rebuild every `refresh_interval` and soon after any redirection (or
//! `+switch-master`), in the background. Requests never wait for
//! it; they keep using the snapshot they loaded, and the next ones see the new map.
//!
//! Discovery asks `CLUSTER SLOTS` of the known primaries first, then of each seed, on a one-off
//! connection, so one node being down (even the first seed) does not stop it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backend::{query_once, Options};
use crate::config::{Config, UpstreamKind};
use crate::placement::slots;
use crate::proxy::Proxy;
use crate::resp::value;
use crate::sentinel;
use crate::topology::Topology;

/// At most one refresh per this long, however many redirections ask for one.
const MIN_GAP: Duration = Duration::from_millis(100);

/// The background refresher of a cluster topology.
pub async fn run(proxy: Arc<Proxy>, shutdown: CancellationToken) {
    loop {
        let interval = proxy.config.load().upstream.refresh_interval;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = time::sleep(interval) => {}
            _ = proxy.refresh.notified() => {}
        }
        if !matches!(
            proxy.config.load().upstream.kind,
            UpstreamKind::Cluster | UpstreamKind::Sentinel
        ) {
            continue;
        }
        if let Err(e) = refresh(&proxy).await {
            warn!(error = %e, "cluster slot map refresh failed");
        }
        time::sleep(MIN_GAP).await;
    }
}

/// Fetch the slot map from the first node that answers, and swap in a new topology if it changed.
pub async fn refresh(proxy: &Proxy) -> Result<(), String> {
    // Not while a reload swaps the config and topology.
    let _one_at_a_time = proxy.reloading.lock().await;
    let current = proxy.topology.load_full();
    let config = proxy.config.load_full();
    let next = match config.upstream.kind {
        UpstreamKind::Sentinel => sentinel::discover(&config, &current, false).await?,
        _ => discover(&config, &current, false).await?,
    };
    if let Some(next) = next {
        proxy.swap_topology(next);
    }
    Ok(())
}

/// The topology `config`'s cluster has now, from the first node that answers `CLUSTER SLOTS`
/// (`current`'s primaries first, then the seeds), reusing `current`'s backends where they fit.
/// `None` if the slot map is the same as `current`'s and `force` is off.
pub async fn discover(
    config: &Config,
    current: &Topology,
    force: bool,
) -> Result<Option<Topology>, String> {
    let opts = Options::new(&config.upstream, config.limits.max_reply_depth);
    let mut candidates: Vec<String> = current
        .backends
        .iter()
        .map(|b| b.addr.to_string())
        .collect();
    for seed in &config.upstream.servers {
        if !candidates.contains(&seed.addr) {
            candidates.push(seed.addr.clone());
        }
    }
    let request = [Bytes::from_static(b"CLUSTER"), Bytes::from_static(b"SLOTS")];
    let mut errors = Vec::new();
    for addr in candidates {
        let shards = match query_once(&addr, &opts, &request).await {
            Ok(reply) => {
                let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
                value::parse(&reply)
                    .ok_or_else(|| "unreadable CLUSTER SLOTS reply".to_string())
                    .and_then(|v| slots::parse_cluster_slots(&v, host))
            }
            Err(e) => Err(e.to_string()),
        };
        match shards {
            Ok(shards) if !shards.is_empty() => {
                if !force && shards == current.shards {
                    return Ok(None);
                }
                let next = Topology::cluster(shards, current, config);
                info!(
                    epoch = next.epoch,
                    primaries = next.backends.len(),
                    from = %addr,
                    "cluster slot map updated"
                );
                return Ok(Some(next));
            }
            Ok(_) => errors.push(format!("{addr}: no slots assigned")),
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    Err(errors.join("; "))
}

/// ketama `auto_eject_hosts`: keep the ring in step with the breakers, checked every
/// `EJECT_CHECK`: a server whose breaker opened leaves the ring (its keys go to the others, as in
/// twemproxy), and comes back when it closes.
pub async fn eject(proxy: Arc<Proxy>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EJECT_CHECK) => {}
        }
        let config = proxy.config.load_full();
        let topology = proxy.topology.load_full();
        if topology.kind != UpstreamKind::Ketama || !config.upstream.auto_eject_hosts {
            continue;
        }
        let open = topology.open_breakers();
        if open != topology.ejected {
            let next = topology.ejecting(&config, open);
            let names: Vec<&str> = next
                .ejected
                .iter()
                .map(|&i| &*next.backends[i].addr)
                .collect();
            warn!(ejected = ?names, epoch = next.epoch, "ketama ring rebuilt");
            proxy.swap_topology(next);
        }
    }
}

const EJECT_CHECK: std::time::Duration = std::time::Duration::from_millis(100);
