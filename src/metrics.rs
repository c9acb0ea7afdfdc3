//! Counters for /metrics, kept as plain atomics indexed by command id.
//!
//! Why not a metrics crate: the hot path bumps two counters per request, and a labelled family
//! behind a lock and a hash map costs more than the rest of routing a GET. Command ids are dense
//! indices into the one command table, so a fixed array of atomics is both exact and free of
//! locks, and label cardinality is bounded by the table (unknown names share one label).
//!
//! The counters bumped per request or per batch (requests, errors, latency, client bytes) are
//! kept per worker thread (see `worker`) and added up when read: a counter shared by every core
//! would bounce its cache line between them on every GET.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::backend::Backend;
use crate::command::{self, CommandId, COMMANDS, LEARNED_ID, UNKNOWN};
use crate::histogram::{Histogram, Timings, BOUNDS_US};
use crate::tenant::TenantState;
use crate::topology::Topology;

/// One worker's share of the hot counters.
struct Shard {
    /// Per command id (see `slot`).
    requests: Box<[AtomicU64]>,
    errors: Box<[AtomicU64]>,
    /// Per command id: time from a request's arrival to its reply's leaving, in keygate.
    latency: Box<[Histogram]>,
    /// Bytes read from and written to clients.
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Shard {
    fn new() -> Shard {
        let slots = || (0..SLOTS).map(|_| AtomicU64::new(0)).collect();
        Shard {
            requests: slots(),
            errors: slots(),
            latency: (0..SLOTS).map(|_| Histogram::default()).collect(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }
}

pub struct Metrics {
    /// One per worker thread.
    shards: Box<[Shard]>,
    pub clients_connected: AtomicU64,
    /// Clients waiting in a blocking command (BLPOP, XREAD BLOCK, WAIT ...).
    pub clients_blocked: AtomicU64,
    pub clients_accepted: AtomicU64,
    pub clients_rejected: AtomicU64,
    /// Connections refused for `access.max_unauthenticated_per_address`, and unauthenticated
    /// connections closed to make room at `max_clients`.
    pub unauthenticated_refused: AtomicU64,
    pub unauthenticated_displaced: AtomicU64,
    /// AUTH attempts that failed, and those refused unchecked (`access.max_auth_failures`).
    pub auth_failures: AtomicU64,
    pub auth_locked_out: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// Client sessions ended by a panic in keygate (a bug: each is logged at ERROR with where).
    pub session_panics: AtomicU64,
    /// Cluster redirections followed, by kind.
    pub moved: AtomicU64,
    pub ask: AtomicU64,
    /// Config reloads, by result, and when the last one succeeded (Unix seconds).
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub last_reload: AtomicU64,
    /// Commands learned from the servers beyond the built-in table (see `learn`).
    pub learned_commands: AtomicU64,
    /// The quota accounting's passes (see accounting): completed, incomplete, the last one's
    /// duration, the scripts it ran and the keys they examined.
    pub quota_passes: AtomicU64,
    pub quota_pass_failures: AtomicU64,
    pub quota_last_pass_us: AtomicU64,
    pub quota_calls: AtomicU64,
    pub quota_keys_examined: AtomicU64,
    /// Scripts run on the servers for `[fleet] shared_limits` (leases, admissions, heartbeats).
    pub fleet_scripts: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            shards: (0..crate::worker::count()).map(|_| Shard::new()).collect(),
            clients_connected: AtomicU64::new(0),
            clients_blocked: AtomicU64::new(0),
            clients_accepted: AtomicU64::new(0),
            clients_rejected: AtomicU64::new(0),
            unauthenticated_refused: AtomicU64::new(0),
            unauthenticated_displaced: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            auth_locked_out: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            session_panics: AtomicU64::new(0),
            moved: AtomicU64::new(0),
            ask: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_reload: AtomicU64::new(0),
            learned_commands: AtomicU64::new(0),
            quota_passes: AtomicU64::new(0),
            quota_pass_failures: AtomicU64::new(0),
            quota_last_pass_us: AtomicU64::new(0),
            quota_calls: AtomicU64::new(0),
            quota_keys_examined: AtomicU64::new(0),
            fleet_scripts: AtomicU64::new(0),
        }
    }
}

/// One slot per built-in command, one for unknown names, one for every learned command.
const SLOTS: usize = COMMANDS.len() + 2;

fn slot(id: CommandId) -> usize {
    match id {
        UNKNOWN => COMMANDS.len(),
        LEARNED_ID => COMMANDS.len() + 1,
        id => id as usize,
    }
}

/// The command id counted in slot `i`.
fn id_of(i: usize) -> CommandId {
    match i {
        i if i == COMMANDS.len() => UNKNOWN,
        i if i == COMMANDS.len() + 1 => LEARNED_ID,
        i => i as CommandId,
    }
}

impl Metrics {
    /// The calling worker's counters.
    fn mine(&self) -> &Shard {
        &self.shards[crate::worker::index() % self.shards.len()]
    }

    pub fn request(&self, id: CommandId) {
        self.mine().requests[slot(id)].fetch_add(1, Relaxed);
    }

    pub fn error(&self, id: CommandId) {
        self.mine().errors[slot(id)].fetch_add(1, Relaxed);
    }

    /// Replies of command `id` left keygate `timings` after their requests arrived.
    pub fn took(&self, id: CommandId, timings: &Timings) {
        self.mine().latency[slot(id)].merge(timings);
    }

    /// `n` bytes read from a client.
    pub fn read_from_client(&self, n: usize) {
        self.mine().bytes_in.fetch_add(n as u64, Relaxed);
    }

    /// `n` bytes written to a client.
    pub fn written_to_client(&self, n: usize) {
        self.mine().bytes_out.fetch_add(n as u64, Relaxed);
    }

    /// Every command's latency buckets added up (for the status page's p99).
    pub fn latency_snapshot(&self) -> [u64; BOUNDS_US.len() + 1] {
        let mut total = [0u64; BOUNDS_US.len() + 1];
        for histogram in self.shards.iter().flat_map(|s| s.latency.iter()) {
            for (sum, count) in total.iter_mut().zip(histogram.snapshot()) {
                *sum += count;
            }
        }
        total
    }

    /// Requests of every command so far.
    pub fn requests_total(&self) -> u64 {
        self.shards
            .iter()
            .flat_map(|s| s.requests.iter())
            .map(|r| r.load(Relaxed))
            .sum()
    }

    /// Requests counted for a command so far.
    pub fn requests_of(&self, id: CommandId) -> u64 {
        self.sum(|s| &s.requests[slot(id)])
    }

    /// A per-worker counter added up.
    fn sum(&self, of: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| of(s).load(Relaxed)).sum()
    }

    /// A per-command counter added up over the workers, by slot.
    fn per_slot(&self, of: impl Fn(&Shard) -> &[AtomicU64]) -> Vec<u64> {
        (0..SLOTS)
            .map(|i| self.shards.iter().map(|s| of(s)[i].load(Relaxed)).sum())
            .collect()
    }

    /// The Prometheus text exposition of every metric.
    /// `topologies`: the main one first, then the named upstreams' (by name; their servers'
    /// series carry an `upstream` label). `tenant_series`: how many tenants get series of their
    /// own (see `render_tenants`).
    pub fn render(
        &self,
        topologies: &[(String, Arc<Topology>)],
        tenants: &[Arc<TenantState>],
        tenant_series: usize,
    ) -> String {
        let mut out = String::with_capacity(4096);
        let per_command = |out: &mut String, name: &str, help: &str, values: Vec<u64>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (i, &v) in values.iter().enumerate() {
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "{name}{{command=\"{}\"}} {v}",
                        command::name_of(id_of(i))
                    );
                }
            }
        };
        per_command(
            &mut out,
            "keygate_requests_total",
            "Requests received, by command (unknown names counted as \"unknown\", commands learned from the servers as \"learned\").",
            self.per_slot(|s| &s.requests),
        );
        per_command(
            &mut out,
            "keygate_request_errors_total",
            "Error replies sent, by command (keygate's own and the backend's).",
            self.per_slot(|s| &s.errors),
        );
        let _ = writeln!(
            out,
            "# HELP keygate_request_duration_seconds Time from a request's arrival to its reply's leaving keygate, by command.\n\
             # TYPE keygate_request_duration_seconds histogram"
        );
        for i in 0..SLOTS {
            let histogram = Histogram::default();
            for shard in self.shards.iter() {
                histogram.add(&shard.latency[i]);
            }
            let labels = format!("command=\"{}\"", command::name_of(id_of(i)));
            histogram.render(&mut out, "keygate_request_duration_seconds", &labels);
        }
        let gauge = |out: &mut String, name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        gauge(
            &mut out,
            "keygate_client_connections",
            "gauge",
            "Client connections open now.",
            self.clients_connected.load(Relaxed),
        );
        gauge(
            &mut out,
            "keygate_session_panics_total",
            "counter",
            "Client sessions ended by a panic in keygate (a bug; see the ERROR log).",
            self.session_panics.load(Relaxed),
        );
        gauge(
            &mut out,
            "keygate_client_read_bytes_total",
            "counter",
            "Bytes received from clients.",
            self.sum(|s| &s.bytes_in),
        );
        gauge(
            &mut out,
            "keygate_client_written_bytes_total",
            "counter",
            "Bytes sent to clients.",
            self.sum(|s| &s.bytes_out),
        );
        gauge(
            &mut out,
            "keygate_client_connections_accepted_total",
            "counter",
            "Client connections accepted.",
            self.clients_accepted.load(Relaxed),
        );
        gauge(
            &mut out,
            "keygate_client_connections_rejected_total",
            "counter",
            "Client connections refused (max_clients, access lists, unauthenticated connections per address).",
            self.clients_rejected.load(Relaxed),
        );
        gauge(
            &mut out,
            "keygate_client_connections_unauthenticated_refused_total",
            "counter",
            "Connections refused because their address had access.max_unauthenticated_per_address waiting to authenticate.",
            self.unauthenticated_refused.load(Relaxed),
        );
        gauge(
            &mut out,
            "keygate_client_connections_unauthenticated_displaced_total",
            "counter",
            "Unauthenticated connections closed at max_clients to make room for a new one.",
            self.unauthenticated_displaced.load(Relaxed),
        );
        gauge(
            &mut out,
            "keygate_auth_failures_total",
            "counter",
            "AUTH attempts with wrong credentials.",
            self.auth_failures.load(Relaxed),
        );
        gauge(
            &mut out,
            "keygate_auth_locked_out_total",
            "counter",
            "AUTH attempts refused unchecked after access.max_auth_failures failures for the same address and name.",
            self.auth_locked_out.load(Relaxed),
        );
        gauge(
            &mut out,
            "keygate_client_protocol_errors_total",
            "counter",
            "Client connections closed for a protocol error.",
            self.protocol_errors.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP keygate_cluster_redirections_total Cluster redirections followed, by kind.\n\
             # TYPE keygate_cluster_redirections_total counter\n\
             keygate_cluster_redirections_total{{kind=\"moved\"}} {}\n\
             keygate_cluster_redirections_total{{kind=\"ask\"}} {}",
            self.moved.load(Relaxed),
            self.ask.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP keygate_config_reloads_total Config reloads, by result.\n\
             # TYPE keygate_config_reloads_total counter\n\
             keygate_config_reloads_total{{result=\"ok\"}} {}\n\
             keygate_config_reloads_total{{result=\"error\"}} {}\n\
             # HELP keygate_config_last_reload_timestamp_seconds When the config was last reloaded successfully (0: never).\n\
             # TYPE keygate_config_last_reload_timestamp_seconds gauge\n\
             keygate_config_last_reload_timestamp_seconds {}\n\
             # HELP keygate_topology_epoch Placement version: bumped by every reload, slot map change or ejection.\n\
             # TYPE keygate_topology_epoch gauge\n\
             keygate_topology_epoch {}\n\
             # HELP keygate_learned_commands Commands (and subcommands) learned from the servers beyond keygate's built-in table.\n\
             # TYPE keygate_learned_commands gauge\n\
             keygate_learned_commands {}",
            self.reloads_ok.load(Relaxed),
            self.reloads_failed.load(Relaxed),
            self.last_reload.load(Relaxed),
            topologies.first().map_or(0, |(_, t)| t.epoch),
            self.learned_commands.load(Relaxed),
        );
        type PerBackend = fn(&Backend) -> u64;
        let per_backend: [(&str, &str, &str, PerBackend); 5] = [
            (
                "keygate_backend_connections",
                "gauge",
                "Backend connections established now, by server.",
                |b| b.connections_up() as u64,
            ),
            (
                "keygate_backend_breaker_state",
                "gauge",
                "Circuit breaker per server: 0 closed, 1 open, 2 half-open (probing).",
                |b| b.breaker().state() as u64,
            ),
            (
                "keygate_backend_breaker_opened_total",
                "counter",
                "Times each server's circuit breaker opened.",
                |b| b.breaker().times_opened(),
            ),
            (
                "keygate_backend_requests_in_flight",
                "gauge",
                "Requests written to a server's pooled connections and not yet answered (how much waits on it).",
                |b| b.in_flight() as u64,
            ),
            (
                "keygate_backend_pinned_connections",
                "gauge",
                "Connections pinned to one client (transactions) now, by server.",
                |b| b.pinned() as u64,
            ),
        ];
        let backends: Vec<(String, &Arc<Backend>)> = topologies
            .iter()
            .flat_map(|(upstream, topology)| {
                topology
                    .all_backends()
                    .map(move |b| match upstream.as_str() {
                        "" => (format!("server=\"{}\"", b.addr), b),
                        named => (format!("server=\"{}\",upstream=\"{named}\"", b.addr), b),
                    })
            })
            .collect();
        for (name, kind, help, read) in per_backend {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, backend) in &backends {
                let _ = writeln!(out, "{name}{{{labels}}} {}", read(backend));
            }
        }
        let _ = writeln!(
            out,
            "# HELP keygate_backend_request_duration_seconds Time from a request's being written to a backend connection to its reply's arrival, by server.\n\
             # TYPE keygate_backend_request_duration_seconds histogram"
        );
        for (labels, backend) in &backends {
            backend
                .latency()
                .render(&mut out, "keygate_backend_request_duration_seconds", labels);
        }
        let _ = writeln!(
            out,
            "# HELP keygate_backend_dedicated_connections Connections of one client's own in use now (blocking commands, subscribed clients), by server.\n\
             # TYPE keygate_backend_dedicated_connections gauge"
        );
        for (labels, backend) in &backends {
            let (blocking, subscriber) = backend.dedicated_in_use();
            let _ = writeln!(
                out,
                "keygate_backend_dedicated_connections{{{labels},kind=\"blocking\"}} {blocking}\n\
                 keygate_backend_dedicated_connections{{{labels},kind=\"subscriber\"}} {subscriber}",
            );
        }
        let _ = writeln!(
            out,
            "# HELP keygate_quota_passes_total Quota accounting passes over every primary, by result.\n\
             # TYPE keygate_quota_passes_total counter\n\
             keygate_quota_passes_total{{result=\"complete\"}} {}\n\
             keygate_quota_passes_total{{result=\"incomplete\"}} {}\n\
             # HELP keygate_quota_last_pass_seconds How long the last complete accounting pass took (its lag).\n\
             # TYPE keygate_quota_last_pass_seconds gauge\n\
             keygate_quota_last_pass_seconds {}\n\
             # HELP keygate_quota_scripts_total Scripts the accounting ran on the servers (one per batch).\n\
             # TYPE keygate_quota_scripts_total counter\n\
             keygate_quota_scripts_total {}\n\
             # HELP keygate_quota_keys_examined_total Keys the accounting examined (SCAN and MEMORY USAGE).\n\
             # TYPE keygate_quota_keys_examined_total counter\n\
             keygate_quota_keys_examined_total {}\n\
             # HELP keygate_fleet_scripts_total Scripts run on the servers for shared limits (rate leases, connection admissions and heartbeats).\n\
             # TYPE keygate_fleet_scripts_total counter\n\
             keygate_fleet_scripts_total {}",
            self.quota_passes.load(Relaxed),
            self.quota_pass_failures.load(Relaxed),
            self.quota_last_pass_us.load(Relaxed) as f64 / 1e6,
            self.quota_calls.load(Relaxed),
            self.quota_keys_examined.load(Relaxed),
            self.fleet_scripts.load(Relaxed),
        );
        if !tenants.is_empty() {
            render_tenants(&mut out, tenants, tenant_series);
        }
        out
    }
}

/// The per-tenant families, for the `series` busiest tenants (by requests since they were
/// configured) and every tenant over a quota; the others summed under `tenant="_other"`, so a
/// scrape stays the same size however many tenants there are.
fn render_tenants(out: &mut String, tenants: &[Arc<TenantState>], series: usize) {
    let (shown, rest) = crate::tenant::busiest(tenants, series);
    let _ = writeln!(
        out,
        "# HELP keygate_tenants Tenants configured, and those whose figures are summed under tenant=\"_other\" ([admin] tenant_series).\n\
         # TYPE keygate_tenants gauge\n\
         keygate_tenants{{series=\"own\"}} {}\n\
         keygate_tenants{{series=\"other\"}} {}",
        shown.len(),
        rest.len()
    );
    type Read = fn(&TenantState) -> u64;
    let families: [(&str, &str, &str, Read); 4] = [
        (
            "keygate_tenant_connections",
            "gauge",
            "Client connections authenticated as each tenant.",
            |t| t.connections() as u64,
        ),
        (
            "keygate_tenant_requests_total",
            "counter",
            "Requests from each tenant.",
            |t| t.requests.load(Relaxed),
        ),
        (
            "keygate_tenant_request_errors_total",
            "counter",
            "Error replies sent to each tenant.",
            |t| t.errors.load(Relaxed),
        ),
        (
            "keygate_tenant_rate_limited_total",
            "counter",
            "Requests refused for a tenant's max_ops_per_sec.",
            |t| t.rate_limited.load(Relaxed),
        ),
    ];
    for (name, kind, help, read) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for tenant in &shown {
            let _ = writeln!(
                out,
                "{name}{{tenant=\"{}\"}} {}",
                tenant.config.name,
                read(tenant)
            );
        }
        if !rest.is_empty() {
            let sum: u64 = rest.iter().map(|t| read(t)).sum();
            let _ = writeln!(out, "{name}{{tenant=\"_other\"}} {sum}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP keygate_tenant_request_duration_seconds Time from a tenant's request's arrival to its reply's leaving keygate.\n\
         # TYPE keygate_tenant_request_duration_seconds histogram"
    );
    for tenant in &shown {
        let labels = format!("tenant=\"{}\"", tenant.config.name);
        tenant
            .latency
            .render(out, "keygate_tenant_request_duration_seconds", &labels);
    }
    if !rest.is_empty() {
        let other = Histogram::default();
        for tenant in &rest {
            other.add(&tenant.latency);
        }
        other.render(
            out,
            "keygate_tenant_request_duration_seconds",
            "tenant=\"_other\"",
        );
    }
    let quotas: Vec<_> = shown
        .iter()
        .filter_map(|t| Some((&t.config.name, t.usage.as_ref()?)))
        .collect();
    if quotas.is_empty() {
        return;
    }
    type Quota = fn(&crate::tenant::quota::Usage) -> Option<u64>;
    let families: [(&str, &str, &str, Quota); 6] = [
        (
            "keygate_tenant_memory_bytes",
            "gauge",
            "Each tenant's memory on the servers, estimated: the last accounting pass plus what it wrote since.",
            |u| Some(u.estimate().0),
        ),
        (
            "keygate_tenant_memory_measured_bytes",
            "gauge",
            "Each tenant's memory as the last completed accounting pass measured it (MEMORY USAGE).",
            |u| Some(u.measured().0),
        ),
        (
            "keygate_tenant_max_memory_bytes",
            "gauge",
            "Each tenant's max_memory.",
            |u| u.limits().0,
        ),
        (
            "keygate_tenant_keys",
            "gauge",
            "Each tenant's keys on the servers, estimated as keygate_tenant_memory_bytes is.",
            |u| Some(u.estimate().1),
        ),
        (
            "keygate_tenant_max_keys",
            "gauge",
            "Each tenant's max_keys.",
            |u| u.limits().1,
        ),
        (
            "keygate_tenant_quota_refused_total",
            "counter",
            "Commands refused with -OOM because the tenant was over a quota.",
            |u| Some(u.refused.load(Relaxed)),
        ),
    ];
    for (name, kind, help, read) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (tenant, usage) in &quotas {
            if let Some(v) = read(usage) {
                let _ = writeln!(out, "{name}{{tenant=\"{tenant}\"}} {v}");
            }
        }
    }
}
