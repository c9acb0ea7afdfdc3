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
    /// The busiest tenants (`[admin] tenant_series`) and any over a quota.
    tenants: Vec<TenantStatus>,
    /// The other tenants, summed (none: every tenant is listed).
    other_tenants: Option<OtherTenants>,
    samples: Vec<Sample>,
}

#[derive(Serialize)]
struct OtherTenants {
    count: usize,
    connections: usize,
    requests: u64,
    errors: u64,
    rate_limited: u64,
}

/// A tenant's quotas and usage (tenants with `max_memory` or `max_keys`).
#[derive(Serialize)]
struct QuotaStatus {
    /// Estimated (see tenant::quota), and as last measured.
    memory_bytes: u64,
    measured_memory_bytes: u64,
    max_memory: Option<u64>,
    keys: u64,
    max_keys: Option<u64>,
    over: bool,
    refused: u64,
}

#[derive(Serialize)]
struct BackendStatus {
    addr: String,
    /// The named upstream it serves (`[upstreams.NAME]`); absent: the main one.
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<String>,
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
    quota: Option<QuotaStatus>,
}

/// `/status.json`.
pub fn json(proxy: &Proxy) -> String {
    let topologies = proxy.topologies();
    let topology = topologies[0].1.clone();
    let backends = topologies
        .iter()
        .flat_map(|(upstream, topology)| {
            let replicas = topology.replicas.iter().flatten().map(|b| (b, "replica"));
            topology
                .backends
                .iter()
                .map(|b| (b, "primary"))
                .chain(replicas)
                .map(move |(b, role)| BackendStatus {
                    addr: b.addr.to_string(),
                    upstream: (!upstream.is_empty()).then(|| upstream.clone()),
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
        })
        .collect();
    let samples = proxy.samples.lock().unwrap_or_else(|e| e.into_inner());
    let recent: std::collections::HashMap<&str, &crate::samples::TenantSample> = samples
        .tenants
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    let all = proxy.tenants.load();
    let (shown, rest) = crate::tenant::busiest(&all, proxy.config.load().tenant_series());
    let tenants = shown
        .iter()
        .map(|t| {
            let sample = recent.get(t.config.name.as_str());
            TenantStatus {
                name: t.config.name.clone(),
                connections: t.connections(),
                ops_per_sec: sample.map_or(0, |s| s.ops),
                p99_ms: sample.and_then(|s| s.p99_ms),
                requests: t.requests.load(Relaxed),
                errors: t.errors.load(Relaxed),
                rate_limited: t.rate_limited.load(Relaxed),
                quota: t.usage.as_ref().map(|u| {
                    let (memory_bytes, keys) = u.estimate();
                    let (max_memory, max_keys) = u.limits();
                    QuotaStatus {
                        memory_bytes,
                        measured_memory_bytes: u.measured().0,
                        max_memory,
                        keys,
                        max_keys,
                        over: u.over(),
                        refused: u.refused.load(Relaxed),
                    }
                }),
            }
        })
        .collect();
    let other_tenants = (!rest.is_empty()).then(|| OtherTenants {
        count: rest.len(),
        connections: rest.iter().map(|t| t.connections()).sum(),
        requests: rest.iter().map(|t| t.requests.load(Relaxed)).sum(),
        errors: rest.iter().map(|t| t.errors.load(Relaxed)).sum(),
        rate_limited: rest.iter().map(|t| t.rate_limited.load(Relaxed)).sum(),
    });
    let status = Status {
        version: crate::VERSION,
        git_sha1: crate::GIT_SHA1,
        uptime_seconds: proxy.started.elapsed().as_secs(),
        upstream: topology.kind.name(),
        topology_epoch: topology.epoch,
        clients: proxy.metrics.clients_connected.load(Relaxed),
        backends,
        tenants,
        other_tenants,
        samples: samples.history.iter().cloned().collect(),
    };
    serde_json::to_string(&status).unwrap_or_else(|_| "{}".into())
}
