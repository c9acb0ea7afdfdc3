//! Multi-tenancy: each tenant sees a private Redis inside a shared one. Keys and channels get the
//! tenant's prefix on the way in (before routing, so placement is computed on the real key and a
//! hash tag inside the client's key still decides it), and lose it on the way out.
//!
//! What a tenant may run is decided by `rules` (one rule per Redis command), the global
//! `[policy] deny_commands`, and the tenant's own allow/deny lists. Commands whose tenant
//! handling is not built yet (keyword/numkeys parsers, emulated DBSIZE/FLUSHDB/INFO/RANDOMKEY,
//! channel subscriptions) are refused with NOPERM, never forwarded unconfined.

pub mod custom;
pub mod fleet;
pub mod flush;
pub mod quota;
pub mod rewrite;
pub mod rules;

use std::collections::{HashMap, HashSet};
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
    /// With `upstream.tenant_acl`: the backend user its scripts run as (a `Flavor::user`); 0:
    /// none.
    pub backend_user: u64,
    /// With `max_memory` or `max_keys`: what it holds, estimated (see quota).
    pub usage: Option<Arc<quota::Usage>>,
    /// A reload removed this tenant from the config: its connections get no further access.
    pub removed: std::sync::atomic::AtomicBool,
    /// With `[fleet] shared_limits`: its rate is leased from the fleet's bucket on the servers,
    /// and its connections are counted there (see fleet).
    pub shared: bool,
    pub lease: Option<fleet::Lease>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl TenantState {
    pub fn new(config: Tenant) -> TenantState {
        let tokens = config.max_ops_per_sec.unwrap_or(0) as f64;
        let usage = (config.max_memory.is_some() || config.max_keys.is_some())
            .then(|| Arc::new(quota::Usage::new(config.max_memory, config.max_keys)));
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
            backend_user: 0,
            usage,
            removed: Default::default(),
            shared: false,
            lease: None,
        }
    }

    /// Keep `old`'s measured usage (a reload changed something else about the tenant): the
    /// same keys are still there. Not when its prefix or database changed.
    pub fn keep_usage(&mut self, old: &TenantState) {
        let same_keys =
            old.config.prefix == self.config.prefix && old.config.database == self.config.database;
        if let (Some(_), Some(kept), true) = (&self.usage, &old.usage, same_keys) {
            kept.set_limits(self.config.max_memory, self.config.max_keys);
            self.usage = Some(kept.clone());
        }
    }

    /// The tenant as `whole` runs it: with `upstream.tenant_acl`, its scripts run as a backend
    /// user of its own (see backend::users); with `[fleet] shared_limits`, its limits are the
    /// fleet's.
    pub fn for_config(config: Tenant, whole: &crate::config::Config) -> TenantState {
        let upstream = config
            .upstream
            .as_ref()
            .and_then(|name| whole.upstreams.get(name))
            .unwrap_or(&whole.upstream);
        let mut state = TenantState::new(config);
        if whole.fleet.shared_limits {
            state.shared = true;
            state.lease = state.config.max_ops_per_sec.map(fleet::Lease::new);
        }
        if upstream.tenant_acl != crate::config::TenantAcl::Off {
            let config = &state.config;
            state.backend_user =
                crate::backend::users::register(crate::backend::users::BackendUser::for_tenant(
                    &config.name,
                    &config.prefix,
                    config.backend_user.as_ref(),
                    upstream.password.as_deref(),
                ));
        }
        state
    }

    /// Does a password with this SHA-256 digest match, compared in constant time (on digests,
    /// so length leaks nothing)? Never for a tenant without a password (one chosen by its
    /// client certificate).
    pub fn digest_matches(&self, digest: &[u8; 32]) -> bool {
        let Some(expected) = &self.config.password_sha256 else {
            return false;
        };
        digest
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }

    /// Take one request's token; `allowed: false` when the tenant is over `max_ops_per_sec`.
    /// With a shared rate, `refill` asks the caller to lease more from the fleet (see fleet).
    pub fn take_op(&self) -> fleet::Taken {
        // Without a limit, not even the clock is read: this runs on every tenant request.
        if self.config.max_ops_per_sec.is_none() {
            return fleet::Taken {
                allowed: true,
                refill: false,
            };
        }
        if let Some(lease) = &self.lease {
            return lease.take(Instant::now());
        }
        fleet::Taken {
            allowed: self.take_op_at(Instant::now()),
            refill: false,
        }
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

    /// SCRIPT FLUSH for this tenant: it knows no script from now on (EVALSHA answers
    /// NOSCRIPT, SCRIPT EXISTS 0) until it loads or runs them again.
    pub fn forget_scripts(&self) {
        let mut scripts = self.scripts.lock().unwrap_or_else(|e| e.into_inner());
        scripts.clear();
    }

    pub fn knows_script(&self, sha: &[u8]) -> bool {
        let scripts = self.scripts.lock().unwrap_or_else(|e| e.into_inner());
        scripts.contains(&sha.to_ascii_lowercase())
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// Scripts and function calls in flight through keygate, oldest first, each with the tenant
/// that sent it (`None`: a client without tenant).
#[derive(Default)]
pub struct Scripts {
    next: AtomicU64,
    running: Mutex<std::collections::BTreeMap<u64, Option<Arc<TenantState>>>>,
}

/// One script in flight in `Scripts`, until dropped (its reply arrived, or the client left).
pub struct ScriptRun {
    scripts: Arc<Scripts>,
    seq: u64,
}

impl Scripts {
    pub fn start(self: &Arc<Self>, tenant: Option<&Arc<TenantState>>) -> ScriptRun {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.insert(seq, tenant.cloned());
        ScriptRun {
            scripts: self.clone(),
            seq,
        }
    }

    /// Whether `tenant` may SCRIPT KILL or FUNCTION KILL: only while the oldest script in
    /// flight, the one a server runs first, is its own (a script of anyone else's might be the
    /// one running; one of the tenant's queued behind another's does not count). `Err`: the
    /// reply to give instead.
    pub fn may_kill(&self, tenant: &Arc<TenantState>) -> Result<(), &'static str> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let own = |t: &Option<Arc<TenantState>>| t.as_ref().is_some_and(|t| Arc::ptr_eq(t, tenant));
        match running.values().next() {
            Some(oldest) if own(oldest) => Ok(()),
            _ if !running.values().any(own) => Err("NOTBUSY No scripts in execution right now."),
            _ => Err("ERR keygate: another client's script may be the one running; a tenant can kill only a script of its own that is the oldest in flight"),
        }
    }
}

impl Drop for ScriptRun {
    fn drop(&mut self) {
        let mut running = self
            .scripts
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        running.remove(&self.seq);
    }
}

/// One connection's membership of a tenant, counted against `max_connections`; released when
/// dropped (the client leaves, re-authenticates as someone else, or sends RESET).
pub struct Seat {
    pub tenant: Arc<TenantState>,
    /// With shared limits: whether the fleet admitted this connection (see fleet).
    pub verdict: Option<Arc<fleet::Verdict>>,
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
                verdict: tenant.shared.then(Default::default),
            })
    }

    /// The fleet refused this connection: its seat is given back now.
    pub fn refuse(verdict: &fleet::Verdict, tenant: &TenantState) {
        if verdict.refuse() {
            tenant.connections.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The fleet has refused this connection: it may not act as the tenant.
    pub fn refused(&self) -> bool {
        self.verdict.as_ref().is_some_and(|v| v.refused())
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        match &self.verdict {
            Some(verdict) => Seat::refuse(verdict, &self.tenant),
            None => {
                self.tenant.connections.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// The `n` busiest tenants (most requests since configured) and every tenant over a quota, in
/// config order; and the others. For /metrics and the status page, whose size must not grow
/// with the number of tenants.
pub fn busiest(
    list: &[Arc<TenantState>],
    n: usize,
) -> (Vec<&Arc<TenantState>>, Vec<&Arc<TenantState>>) {
    if list.len() <= n {
        return (list.iter().collect(), Vec::new());
    }
    let mut by_requests: Vec<(u64, usize)> = list
        .iter()
        .enumerate()
        .map(|(i, t)| (t.requests.load(Ordering::Relaxed), i))
        .collect();
    let mut keep = vec![false; list.len()];
    if n > 0 {
        by_requests.select_nth_unstable_by(n - 1, |a, b| b.cmp(a));
        for &(_, i) in &by_requests[..n] {
            keep[i] = true;
        }
    }
    let (mut shown, mut rest) = (Vec::with_capacity(n), Vec::new());
    for (i, t) in list.iter().enumerate() {
        if keep[i] || t.usage.as_ref().is_some_and(|u| u.over()) {
            shown.push(t);
        } else {
            rest.push(t);
        }
    }
    (shown, rest)
}

/// Every configured tenant, with indexes that make AUTH cost the same however many there are:
/// by name, and by password digest for `AUTH password`. Replaced whole on reload.
#[derive(Default)]
pub struct Tenants {
    list: Vec<Arc<TenantState>>,
    by_name: HashMap<Box<[u8]>, usize>,
    /// The first tenant (in config order) with each password, as the linear search chose.
    by_digest: HashMap<[u8; 32], usize>,
}

impl Tenants {
    pub fn new(list: Vec<Arc<TenantState>>) -> Tenants {
        let mut by_name = HashMap::with_capacity(list.len());
        let mut by_digest = HashMap::with_capacity(list.len());
        for (i, tenant) in list.iter().enumerate() {
            by_name.insert(tenant.config.name.as_bytes().into(), i);
            if let Some(digest) = tenant.config.password_sha256 {
                by_digest.entry(digest).or_insert(i);
            }
        }
        Tenants {
            list,
            by_name,
            by_digest,
        }
    }

    /// The tenant called `name`.
    pub fn named(&self, name: &[u8]) -> Option<&Arc<TenantState>> {
        self.by_name.get(name).map(|&i| &self.list[i])
    }

    /// The tenant these credentials name: `AUTH password` (the tenant whose password it is) or
    /// `AUTH name password`. One digest and one or two hash look-ups, whatever the number of
    /// tenants; the digest is compared in constant time. (A look-up in the digest index takes
    /// time that depends on the digest, not on the password's bytes: it tells an attacker
    /// nothing it did not already know.)
    pub fn authenticate(&self, user: Option<&[u8]>, password: &[u8]) -> Option<&Arc<TenantState>> {
        let digest: [u8; 32] = Sha256::digest(password).into();
        let tenant = match user {
            Some(name) => self.named(name)?,
            None => &self.list[*self.by_digest.get(&digest)?],
        };
        tenant.digest_matches(&digest).then_some(tenant)
    }
}

impl std::ops::Deref for Tenants {
    type Target = [Arc<TenantState>];

    fn deref(&self) -> &[Arc<TenantState>] {
        &self.list
    }
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
            deny_categories: Vec::new(),
            max_connections,
            max_ops_per_sec: max_ops,
            max_memory: None,
            max_keys: None,
            allow_scripts: false,
            allow_from: Vec::new(),
            backend_user: None,
            database: None,
            upstream: None,
        }))
    }

    #[test]
    fn authentication() {
        let tenants = Tenants::new(vec![tenant(None, None)]);
        assert!(tenants.authenticate(None, b"pw").is_some());
        assert!(tenants.authenticate(Some(b"acme"), b"pw").is_some());
        assert!(tenants.authenticate(Some(b"other"), b"pw").is_none());
        assert!(tenants.authenticate(None, b"wrong").is_none());
        assert!(tenants.authenticate(Some(b"acme"), b"wrong").is_none());
    }

    #[test]
    fn authentication_by_index_with_many_tenants() {
        let make = |i: usize, password: &str| {
            let mut t = tenant(None, None).config.clone();
            t.name = format!("t{i}");
            t.password_sha256 = Some(Sha256::digest(password.as_bytes()).into());
            Arc::new(TenantState::new(t))
        };
        let mut list: Vec<_> = (0..10_000).map(|i| make(i, &format!("pw{i}"))).collect();
        // Two tenants with one password: `AUTH password` picks the first, as before.
        list.push(make(10_000, "pw7"));
        let tenants = Tenants::new(list);
        let found = |user: Option<&str>, pw: &str| {
            tenants
                .authenticate(user.map(str::as_bytes), pw.as_bytes())
                .map(|t| t.config.name.clone())
        };
        assert_eq!(found(Some("t9999"), "pw9999").as_deref(), Some("t9999"));
        assert_eq!(found(None, "pw9999").as_deref(), Some("t9999"));
        assert_eq!(found(None, "pw7").as_deref(), Some("t7"));
        assert_eq!(found(Some("t10000"), "pw7").as_deref(), Some("t10000"));
        assert_eq!(found(Some("t9999"), "pw9998"), None);
        assert_eq!(found(None, "nope"), None);
    }

    #[test]
    fn token_bucket_allows_the_rate_and_no_more() {
        let t = tenant(Some(10), None);
        let start = Instant::now();
        let allowed = (0..20).filter(|_| t.take_op_at(start)).count();
        assert_eq!(allowed, 10);
        assert!(t.take_op_at(start + Duration::from_millis(100)));
        assert!(!t.take_op_at(start + Duration::from_millis(100)));
        assert!(tenant(None, None).take_op().allowed);
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
