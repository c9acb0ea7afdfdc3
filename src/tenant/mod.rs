//! Multi-tenancy: each tenant sees a private Redis inside a shared one. Keys and channels get the
//! tenant's prefix on the way in (before routing, so placement is computed on the real key and a
//! hash tag inside the client's key still decides it), and lose it on the way out.
//!
//! What a tenant may run is decided by `rules` (one rule per Redis command), the global
//! `[policy] deny_commands`, and the tenant's own allow/deny lists. Commands whose tenant
//! handling is not built yet (keyword/numkeys parsers, emulated DBSIZE/FLUSHDB/INFO/RANDOMKEY,
//! channel subscriptions) are refused with NOPERM, never forwarded unconfined.

pub mod custom;
pub mod rewrite;
pub mod rules;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::config::Tenant;
use crate::histogram::Histogram;

/// A tenant at run time: its config, and the state its limits keep.
pub struct TenantState {
    pub config: Tenant,
    /// Connections authenticated as this tenant now.
    connections: AtomicUsize,
    /// Requests this tenant sent, and those refused for `max_ops_per_sec` (for /metrics).
    pub requests: AtomicU64,
    pub rate_limited: AtomicU64,
    /// Error replies sent to this tenant's clients.
    pub errors: AtomicU64,
    /// Its requests' end-to-end latency in keygate (arrival to reply leaving).
    pub latency: Histogram,
    /// SHA1s (lower-case hex) of the scripts this tenant loaded or ran: EVALSHA and SCRIPT
    /// EXISTS see only these, so a tenant cannot run, or detect, another's scripts.
    scripts: Mutex<HashSet<Vec<u8>>>,
    /// `max_ops_per_sec` as a token bucket holding at most one second's worth.
    bucket: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl TenantState {
    pub fn new(config: Tenant) -> TenantState {
        let tokens = config.max_ops_per_sec.unwrap_or(0) as f64;
        TenantState {
            config,
            connections: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: Histogram::default(),
            scripts: Mutex::new(HashSet::new()),
            bucket: Mutex::new(Bucket {
                tokens,
                refilled: Instant::now(),
            }),
        }
    }

    /// Does `password` match, compared in constant time (on digests, so length leaks nothing)?
    /// Never for a tenant without a password (one chosen by its client certificate).
    pub fn password_matches(&self, password: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(password).into();
        let Some(expected) = &self.config.password_sha256 else {
            return false;
        };
        digest
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }

    /// Take one request's token; `false` when the tenant is over `max_ops_per_sec`.
    pub fn take_op(&self) -> bool {
        // Without a limit, not even the clock is read: this runs on every tenant request.
        if self.config.max_ops_per_sec.is_none() {
            return true;
        }
        self.take_op_at(Instant::now())
    }

    fn take_op_at(&self, now: Instant) -> bool {
        let Some(rate) = self.config.max_ops_per_sec else {
            return true;
        };
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate as f64).min(rate as f64);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Remember a script's SHA1 (hex, any case) as this tenant's.
    pub fn record_script(&self, sha: &[u8]) {
        let mut scripts = self.scripts.lock().unwrap_or_else(|e| e.into_inner());
        scripts.insert(sha.to_ascii_lowercase());
    }

    /// Remember the script with this body (as EVAL runs it).
    pub fn record_script_body(&self, body: &[u8]) {
        let digest = sha1::Sha1::digest(body);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.record_script(hex.as_bytes());
    }

    pub fn knows_script(&self, sha: &[u8]) -> bool {
        let scripts = self.scripts.lock().unwrap_or_else(|e| e.into_inner());
        scripts.contains(&sha.to_ascii_lowercase())
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// One connection's membership of a tenant, counted against `max_connections`; released when
/// dropped (the client leaves, re-authenticates as someone else, or sends RESET).
pub struct Seat {
    pub tenant: Arc<TenantState>,
}

impl Seat {
    /// Take a seat, unless the tenant is full.
    pub fn take(tenant: &Arc<TenantState>) -> Option<Seat> {
        let max = tenant.config.max_connections.unwrap_or(usize::MAX);
        tenant
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Seat {
                tenant: tenant.clone(),
            })
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.tenant.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The tenant these credentials name: `AUTH password` (the tenant whose password it is) or
/// `AUTH name password`.
pub fn authenticate<'a>(
    tenants: &'a [Arc<TenantState>],
    user: Option<&[u8]>,
    password: &[u8],
) -> Option<&'a Arc<TenantState>> {
    // Every candidate is checked, so the time taken does not tell which one matched.
    let mut found = None;
    for tenant in tenants {
        let name_ok = user.is_none_or(|u| u == tenant.config.name.as_bytes());
        if tenant.password_matches(password) && name_ok && found.is_none() {
            found = Some(tenant);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tenant(max_ops: Option<u32>, max_connections: Option<usize>) -> Arc<TenantState> {
        Arc::new(TenantState::new(Tenant {
            name: "acme".into(),
            password_sha256: Some(Sha256::digest(b"pw").into()),
            client_cert_cn: None,
            client_cert_san: None,
            prefix: "acme:".into(),
            allow_commands: None,
            deny_commands: Vec::new(),
            max_connections,
            max_ops_per_sec: max_ops,
            allow_scripts: false,
            allow_from: Vec::new(),
        }))
    }

    #[test]
    fn authentication() {
        let tenants = vec![tenant(None, None)];
        assert!(authenticate(&tenants, None, b"pw").is_some());
        assert!(authenticate(&tenants, Some(b"acme"), b"pw").is_some());
        assert!(authenticate(&tenants, Some(b"other"), b"pw").is_none());
        assert!(authenticate(&tenants, None, b"wrong").is_none());
    }

    #[test]
    fn token_bucket_allows_the_rate_and_no_more() {
        let t = tenant(Some(10), None);
        let start = Instant::now();
        let allowed = (0..20).filter(|_| t.take_op_at(start)).count();
        assert_eq!(allowed, 10);
        assert!(t.take_op_at(start + Duration::from_millis(100)));
        assert!(!t.take_op_at(start + Duration::from_millis(100)));
        assert!(tenant(None, None).take_op());
    }

    #[test]
    fn seats_are_limited_and_released() {
        let t = tenant(None, Some(2));
        let a = Seat::take(&t).unwrap();
        let _b = Seat::take(&t).unwrap();
        assert!(Seat::take(&t).is_none());
        drop(a);
        let _c = Seat::take(&t).expect("a seat freed by the drop");
        assert_eq!(t.connections(), 2);
    }
}
