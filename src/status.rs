//! The status page at the admin port's `/`: one self-contained HTML page (src/status.html, no
//! external assets) that polls `/status.json` every second and shows backends with their breaker
//! states, tenants with ops/s and connections, and a chart of ops/s and p99 latency over the
//! last five minutes.
//!
//! A sampler task takes one sample a second from the metrics (requests counted, and the latency
//! histogram's change over that second for the p99), keeping `HISTORY` of them.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::backend::BreakerState;
use crate::proxy::Proxy;
use crate::samples::Sample;

pub const PAGE: &str = include_str!("status.html");

/// Take a sample every second until shutdown (the first tick only sets the baseline).
pub async fn sample(proxy: Arc<Proxy>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let tenants = proxy.tenants.load();
        let mut samples = proxy.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.record(&proxy.metrics, &tenants);
    }
}

#[derive(Serialize)]
struct Status {
    version: &'static str,
    /// The git commit keygate was built from; empty when unknown.
    git_sha1: &'static str,
    uptime_seconds: u64,
    upstream: &'static str,
    topology_epoch: u64,
    clients: u64,
    backends: Vec<BackendStatus>,
    tenants: Vec<TenantStatus>,
    samples: Vec<Sample>,
}

#[derive(Serialize)]
struct BackendStatus {
    addr: String,
    role: &'static str,
    breaker: &'static str,
    connections: usize,
    in_flight: usize,
    pinned: usize,
}

#[derive(Serialize)]
struct TenantStatus {
    name: String,
    connections: usize,
    ops_per_sec: u64,
    /// Over the last second (an upper bound, as the chart's); null without requests.
    p99_ms: Option<f64>,
    requests: u64,
    errors: u64,
    rate_limited: u64,
}

/// `/status.json`.
pub fn json(proxy: &Proxy) -> String {
    let topology = proxy.topology.load();
    let replicas = topology.replicas.iter().flatten().map(|b| (b, "replica"));
    let backends = topology
        .backends
        .iter()
        .map(|b| (b, "primary"))
        .chain(replicas)
        .map(|(b, role)| BackendStatus {
            addr: b.addr.to_string(),
            role,
            breaker: match b.breaker().state() {
                BreakerState::Closed => "closed",
                BreakerState::Open => "open",
                BreakerState::HalfOpen => "half-open",
            },
            connections: b.connections_up(),
            in_flight: b.in_flight(),
            pinned: b.pinned(),
        })
        .collect();
    let samples = proxy.samples.lock().unwrap_or_else(|e| e.into_inner());
    let tenants = proxy
        .tenants
        .load()
        .iter()
        .map(|t| {
            let sample = samples.tenants.iter().find(|s| s.name == t.config.name);
            (t, sample)
        })
        .map(|(t, sample)| TenantStatus {
            name: t.config.name.clone(),
            connections: t.connections(),
            ops_per_sec: sample.map_or(0, |s| s.ops),
            p99_ms: sample.and_then(|s| s.p99_ms),
            requests: t.requests.load(Relaxed),
            errors: t.errors.load(Relaxed),
            rate_limited: t.rate_limited.load(Relaxed),
        })
        .collect();
    let status = Status {
        version: crate::VERSION,
        git_sha1: crate::GIT_SHA1,
        uptime_seconds: proxy.started.elapsed().as_secs(),
        upstream: topology.kind.name(),
        topology_epoch: topology.epoch,
        clients: proxy.metrics.clients_connected.load(Relaxed),
        backends,
        tenants,
        samples: samples.history.iter().cloned().collect(),
    };
    serde_json::to_string(&status).unwrap_or_else(|_| "{}".into())
}
