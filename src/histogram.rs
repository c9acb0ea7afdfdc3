//! A latency histogram of fixed buckets, lock-free: one atomic add per observation (and one for
//! the sum). Buckets are Prometheus-style upper bounds, from 100 µs to 5 s.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds, in microseconds; a last, implicit bucket holds everything slower.
pub const BOUNDS_US: [u64; 15] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];

pub struct Histogram {
    /// Per bucket (not cumulative); the last is +Inf.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        let at = BOUNDS_US.partition_point(|&bound| bound < us);
        self.buckets[at].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// The per-bucket counts now.
    pub fn snapshot(&self) -> [u64; BOUNDS_US.len() + 1] {
        std::array::from_fn(|i| self.buckets[i].load(Relaxed))
    }

    /// Prometheus text: `name_bucket{labels,le=...}`, `name_sum`, `name_count`, in seconds.
    /// `labels` is `key="value",...` or empty. Nothing for a histogram never observed.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let counts = self.snapshot();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return;
        }
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, count) in counts.iter().enumerate() {
            cumulative += count;
            let le = match BOUNDS_US.get(i) {
                Some(us) => format!("{}", *us as f64 / 1e6),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {total}");
    }
}

/// Observations gathered locally (no atomics), to add to a `Histogram` in one go.
#[derive(Default)]
pub struct Timings {
    buckets: [u64; BOUNDS_US.len() + 1],
    sum_us: u64,
}

impl Timings {
    pub fn add(&mut self, took: Duration) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        self.buckets[BOUNDS_US.partition_point(|&bound| bound < us)] += 1;
        self.sum_us += us;
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

impl Histogram {
    /// Add locally gathered observations: one atomic add per bucket used.
    /// Add another histogram's observations (to sum per-worker histograms for reading).
    pub fn add(&self, other: &Histogram) {
        for (bucket, n) in self.buckets.iter().zip(other.snapshot()) {
            bucket.fetch_add(n, Relaxed);
        }
        self.sum_us.fetch_add(other.sum_us.load(Relaxed), Relaxed);
    }

    pub fn merge(&self, timings: &Timings) {
        for (bucket, &n) in self.buckets.iter().zip(&timings.buckets) {
            if n > 0 {
                bucket.fetch_add(n, Relaxed);
            }
        }
        if timings.sum_us > 0 {
            self.sum_us.fetch_add(timings.sum_us, Relaxed);
        }
    }
}

/// The upper bound (µs) of the bucket holding quantile `q` of the observations counted in
/// `delta` (per-bucket counts over some interval); `None` if there were none. The last bucket's
/// bound is reported as the largest finite one.
pub fn quantile_us(delta: &[u64; BOUNDS_US.len() + 1], q: f64) -> Option<u64> {
    let total: u64 = delta.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, count) in delta.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(*BOUNDS_US.get(i).unwrap_or(&BOUNDS_US[BOUNDS_US.len() - 1]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_sums_and_quantiles() {
        let h = Histogram::default();
        for us in [50, 100, 101, 900, 3_000, 7_000_000] {
            h.observe(Duration::from_micros(us));
        }
        let counts = h.snapshot();
        assert_eq!(counts[0], 2); // 50, 100 (<= 100 µs)
        assert_eq!(counts[1], 1); // 101
        assert_eq!(counts[3], 1); // 900
        assert_eq!(counts[5], 1); // 3 000
        assert_eq!(counts[15], 1); // +Inf
        assert_eq!(h.count(), 6);
        assert_eq!(quantile_us(&counts, 0.5), Some(250));
        assert_eq!(quantile_us(&counts, 0.99), Some(5_000_000));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "command=\"get\"");
        assert!(
            out.contains("x_seconds_bucket{command=\"get\",le=\"0.0001\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{command=\"get\",le=\"+Inf\"} 6\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_count{command=\"get\"} 6\n"),
            "{out}"
        );
    }
}
