//! The status page's history: one sample a second of the request rate and p99 latency, for
//! keygate and per tenant, kept for five minutes. `status::sample` records; `/status.json` reads.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::histogram::{self, BOUNDS_US};
use crate::metrics::Metrics;
use crate::tenant::TenantState;

/// Samples kept: five minutes, one a second.
const HISTORY: usize = 300;

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
    pub history: VecDeque<Sample>,
    /// Per tenant, as of the last tick.
    pub tenants: Vec<TenantSample>,
    /// keygate's request count and latency histogram at the last tick.
    last: Option<(u64, [u64; BOUNDS_US.len() + 1])>,
}

/// A tenant's figures at the last tick.
pub struct TenantSample {
    pub name: String,
    /// Its request count and latency histogram then (for the next tick's differences).
    requests: u64,
    latency: [u64; BOUNDS_US.len() + 1],
    /// Over the second before it.
    pub ops: u64,
    pub p99_ms: Option<f64>,
}

pub type Shared = Mutex<Samples>;

impl Samples {
    /// Take this second's sample: the change since the last one.
    pub fn record(&mut self, metrics: &Metrics, tenants: &[Arc<TenantState>]) {
        let requests = metrics.requests_total();
        let latency = metrics.latency_snapshot();
        if let Some((last_requests, last_latency)) = self.last {
            let delta: [u64; BOUNDS_US.len() + 1] =
                std::array::from_fn(|i| latency[i].saturating_sub(last_latency[i]));
            self.history.push_back(Sample {
                t: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                ops: requests.saturating_sub(last_requests),
                p99_ms: p99_ms(&delta),
            });
            while self.history.len() > HISTORY {
                self.history.pop_front();
            }
        }
        self.last = Some((requests, latency));
        let previous = std::mem::take(&mut self.tenants);
        let previous: std::collections::HashMap<&str, &TenantSample> =
            previous.iter().map(|p| (p.name.as_str(), p)).collect();
        self.tenants = tenants
            .iter()
            .map(|t| {
                let requests = t.requests.load(Relaxed);
                let latency = t.latency.snapshot();
                let before = previous.get(t.config.name.as_str());
                let (ops, p99_ms) = match before {
                    Some(before) => {
                        let delta: [u64; BOUNDS_US.len() + 1] =
                            std::array::from_fn(|i| latency[i].saturating_sub(before.latency[i]));
                        (requests.saturating_sub(before.requests), p99_ms(&delta))
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

fn p99_ms(buckets: &[u64; BOUNDS_US.len() + 1]) -> Option<f64> {
    histogram::quantile_us(buckets, 0.99).map(|us| us as f64 / 1000.0)
}
