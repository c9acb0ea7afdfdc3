//! The status page at the admin port's `/`: one self-contained HTML page (src/status.html, no
//! external assets) that polls `/status.json` every second and shows backends with their breaker
//! states, tenants with ops/s and connections, and a chart of ops/s and p99 latency over the
//! last five minutes.
//!
//! A sampler task takes one sample a second from the metrics (requests counted, and the latency
//! histogram's change over that second for the p99), keeping `HISTORY` of them.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::backend::BreakerState;
use crate::histogram::{self, BOUNDS_US};
use crate::server::Proxy;

/// Samples kept: five minutes, one a second.
const HISTORY: usize = 300;

pub const PAGE: &str = include_str!("status.html");

#[derive(Clone, Serialize)]
pub struct Sample {
    /// Unix seconds.
    pub t: u64,
    pub ops: u64,
    /// p99 latency over that second, end to end in keygate, in milliseconds (an upper bound:
    /// the histogram bucket holding it); null when there were no requests.
    pub p99_ms: Option<f64>,
}

/// What the sampler keeps between ticks.
#[derive(Default)]
pub struct Samples {
    history: VecDeque<Sample>,
    /// Per tenant, as of the last tick.
    tenants: Vec<TenantSample>,
}

/// A tenant's figures at the last tick.
struct TenantSample {
    name: String,
    /// Its request count and latency histogram then (for the next tick's differences).
    requests: u64,
    latency: [u64; BOUNDS_US.len() + 1],
    /// Over the second before it.
    ops: u64,
    p99_ms: Option<f64>,
}

pub type Shared = Mutex<Samples>;

/// Take a sample every second until shutdown.
pub async fn sample(proxy: Arc<Proxy>, shutdown: CancellationToken) {
    let mut last_requests = proxy.metrics.requests_total();
    let mut last_latency = proxy.metrics.latency_snapshot();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let requests = proxy.metrics.requests_total();
        let latency = proxy.metrics.latency_snapshot();
        let delta: [u64; BOUNDS_US.len() + 1] =
            std::array::from_fn(|i| latency[i].saturating_sub(last_latency[i]));
        let sample = Sample {
            t: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            ops: requests.saturating_sub(last_requests),
            p99_ms: histogram::quantile_us(&delta, 0.99).map(|us| us as f64 / 1000.0),
        };
        (last_requests, last_latency) = (requests, latency);
        let tenants = proxy.tenants.load();
        let mut samples = proxy.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.history.push_back(sample);
        while samples.history.len() > HISTORY {
            samples.history.pop_front();
        }
        let previous = std::mem::take(&mut samples.tenants);
        samples.tenants = tenants
            .iter()
            .map(|t| {
                let requests = t.requests.load(Relaxed);
                let latency = t.latency.snapshot();
                let before = previous.iter().find(|p| p.name == t.config.name);
                let (ops, p99_ms) = match before {
                    Some(before) => {
                        let delta: [u64; BOUNDS_US.len() + 1] =
                            std::array::from_fn(|i| latency[i].saturating_sub(before.latency[i]));
                        (
                            requests.saturating_sub(before.requests),
                            histogram::quantile_us(&delta, 0.99).map(|us| us as f64 / 1000.0),
                        )
                    }
                    None => (0, None),
                };
                TenantSample {
                    name: t.config.name.clone(),
                    requests,
                    latency,
                    ops,
                    p99_ms,
                }
            })
            .collect();
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
