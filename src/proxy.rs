//! What every session and background task shares: `Proxy`, the one process-wide state. It sits
//! below everything that uses it (server, session, dispatch, admin, reload, refresh, sentinel,
//! learn, status), so none of them imports another to reach it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::slowlog::Slowlog;
use crate::tenant::{TenantState, Tenants};
use crate::topology::Topology;

/// What every session shares. The config, the tenants and the topology are each one snapshot
/// behind an `ArcSwap`, replaced whole by a reload (see `reload`).
///
/// # Named upstreams
///
/// Each `[upstreams.NAME]` runs as a `Proxy` of its own, derived from the main one (see
/// `derived`): its own config (the main config with `upstream` replaced), topology, refresher
/// and learned commands, and everything else (tenants, metrics, clients, slowlog, ...) shared
/// with the main one by `Arc`. A session authenticated as a tenant with `upstream = "NAME"`
/// works through that proxy, so every path a request takes (routing, redirections, keyspace
/// emulation, pub/sub, transactions) reaches the tenant's servers without knowing it.
pub struct Proxy {
    pub config: ArcSwap<Config>,
    pub topology: ArcSwap<Topology>,
    pub metrics: Arc<Metrics>,
    /// This proxy's `[upstreams.NAME]` name; `None`: the main proxy.
    pub upstream_name: Option<String>,
    /// The main proxy's named upstreams (empty in a derived proxy).
    pub upstreams: ArcSwap<HashMap<String, Named>>,
    /// Cancelled when this proxy stops: at shutdown, or (a named upstream) when a reload
    /// removes or replaces it. Its background tasks end with it.
    pub stop: CancellationToken,
    /// Wakes the cluster refresher (see `refresh`).
    pub refresh: Notify,
    /// Ticks whenever a new topology is swapped in (see `swap_topology`).
    pub topology_swapped: tokio::sync::watch::Sender<()>,
    /// Commands learned from the servers beyond the built-in table (see `learn`).
    pub commands: ArcSwap<crate::command::learned::Table>,
    /// Tenants; empty when tenancy is off.
    pub tenants: Arc<ArcSwap<Tenants>>,
    /// Tenants are configured: every client must AUTH as one (read on every request).
    pub tenancy: Arc<AtomicBool>,
    /// The file the config came from, for reloads.
    pub config_path: OnceLock<PathBuf>,
    /// One reload at a time.
    pub reloading: tokio::sync::Mutex<()>,
    /// The config file's text as last read, so an unchanged file is not reloaded again.
    pub config_seen: std::sync::Mutex<Option<String>>,
    pub slowlog: Arc<Slowlog>,
    /// When keygate started (INFO's uptime).
    pub started: std::time::Instant,
    /// The status page's history (see `status`).
    pub samples: Arc<crate::samples::Shared>,
    /// Failed AUTH attempts per client address.
    pub auth_failures: Arc<crate::access::AuthFailures>,
    /// Scripts and function calls sent and not answered yet (see tenant::ScriptRun).
    pub scripts_running: Arc<crate::tenant::Scripts>,
    /// Connections not authenticated yet, per address (with tenants).
    pub unauthenticated: Arc<crate::access::Unauthenticated>,
    /// Every connected client (CLIENT LIST, CLIENT KILL).
    pub clients: Arc<crate::clients::Clients>,
    /// Subscriber connections closing, not yet confirmed gone by their server: PUBLISH and
    /// PUBSUB wait for them (see backend::subscriber).
    pub subscribers_leaving: Arc<crate::backend::Leaving>,
    /// MONITOR's lines for what clients send (see monitor).
    pub monitors: Arc<crate::monitor::Monitors>,
    /// CLIENT PAUSE over keygate's clients (see pause).
    pub pause: Arc<crate::pause::Pause>,
    /// Keys in every tracking client's table, and their bound.
    pub tracked_keys: Arc<crate::clients::TrackedKeys>,
    /// `POST /tenants/NAME/flush` runs (see cleanup).
    pub flushes: Arc<crate::tenant::flush::Flushes>,
    next_client_id: Arc<AtomicU64>,
}

/// A named upstream: its proxy (stopped by its `stop` token).
pub struct Named {
    pub proxy: Arc<Proxy>,
}

impl Proxy {
    /// Ask for a cluster slot map refresh soon; returns at once.
    /// Swap in a new topology, and tell whoever watches (CLIENT TRACKING's feeds, which must
    /// cover every primary).
    pub fn swap_topology(&self, next: Topology) {
        self.topology.store(Arc::new(next));
        self.topology_swapped.send_replace(());
    }

    pub fn refresh_soon(&self) {
        self.refresh.notify_one();
    }

    /// The id for the next client to connect (CLIENT ID), unique for the process.
    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Relaxed)
    }
}

impl Proxy {
    /// The shared state for `config`, with its backends starting to connect on the current
    /// runtime (see `Topology::start`).
    pub fn new(config: Config) -> Proxy {
        let topology = Topology::start(&config);
        let tenants: Vec<Arc<TenantState>> = config
            .tenants
            .iter()
            .cloned()
            .map(|t| Arc::new(TenantState::for_config(t, &config)))
            .collect();
        let slowlog = Slowlog::new(&config.slowlog);
        Proxy {
            tenancy: Arc::new(AtomicBool::new(!tenants.is_empty())),
            tenants: Arc::new(ArcSwap::from_pointee(Tenants::new(tenants))),
            config: ArcSwap::from_pointee(config),
            topology: ArcSwap::from_pointee(topology),
            metrics: Default::default(),
            upstream_name: None,
            upstreams: Default::default(),
            stop: CancellationToken::new(),
            refresh: Notify::new(),
            topology_swapped: tokio::sync::watch::Sender::new(()),
            commands: ArcSwap::from_pointee(Default::default()),
            config_path: OnceLock::new(),
            reloading: tokio::sync::Mutex::new(()),
            config_seen: std::sync::Mutex::new(None),
            slowlog: Arc::new(slowlog),
            started: std::time::Instant::now(),
            samples: Default::default(),
            auth_failures: Default::default(),
            unauthenticated: Default::default(),
            scripts_running: Default::default(),
            clients: Default::default(),
            subscribers_leaving: Default::default(),
            monitors: Default::default(),
            pause: Default::default(),
            tracked_keys: Default::default(),
            flushes: Default::default(),
            next_client_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// The proxy for `[upstreams.NAME]` of `config` (the main config): its own config (with that
    /// upstream as `upstream`), topology (its backends start connecting on the current runtime)
    /// and refresher; the rest shared with `self`. Its background tasks are `upstreams::start`'s.
    pub fn derived(&self, name: &str, config: &Config) -> Option<Proxy> {
        let config = Proxy::config_for(name, config)?;
        Some(Proxy {
            tenancy: self.tenancy.clone(),
            tenants: self.tenants.clone(),
            topology: ArcSwap::from_pointee(Topology::start(&config)),
            config: ArcSwap::from_pointee(config),
            metrics: self.metrics.clone(),
            upstream_name: Some(name.to_string()),
            upstreams: Default::default(),
            stop: self.stop.child_token(),
            refresh: Notify::new(),
            topology_swapped: tokio::sync::watch::Sender::new(()),
            commands: ArcSwap::from_pointee(Default::default()),
            config_path: OnceLock::new(),
            reloading: tokio::sync::Mutex::new(()),
            config_seen: std::sync::Mutex::new(None),
            slowlog: self.slowlog.clone(),
            started: self.started,
            samples: self.samples.clone(),
            auth_failures: self.auth_failures.clone(),
            unauthenticated: self.unauthenticated.clone(),
            scripts_running: self.scripts_running.clone(),
            clients: self.clients.clone(),
            subscribers_leaving: self.subscribers_leaving.clone(),
            monitors: self.monitors.clone(),
            pause: self.pause.clone(),
            tracked_keys: self.tracked_keys.clone(),
            flushes: self.flushes.clone(),
            next_client_id: self.next_client_id.clone(),
        })
    }

    /// The config a named upstream's proxy runs: `config` with `[upstreams.NAME]` as its
    /// upstream. `None` if `config` has no such upstream.
    pub fn config_for(name: &str, config: &Config) -> Option<Config> {
        let upstream = config.upstreams.get(name)?.clone();
        Some(Config {
            upstream,
            upstreams: Default::default(),
            ..config.clone()
        })
    }

    /// The proxy whose servers hold `tenant`'s keys: its named upstream's, or this one.
    pub fn for_tenant(self: &Arc<Self>, tenant: &TenantState) -> Option<Arc<Proxy>> {
        match &tenant.config.upstream {
            None => Some(self.clone()),
            Some(name) => self.upstreams.load().get(name).map(|n| n.proxy.clone()),
        }
    }

    /// This proxy's topology and those of its named upstreams, with their names ("" for the
    /// main one), for /metrics, /ready and the status page.
    pub fn topologies(&self) -> Vec<(String, Arc<Topology>)> {
        let mut all = vec![(String::new(), self.topology.load_full())];
        let named = self.upstreams.load();
        let mut names: Vec<&String> = named.keys().collect();
        names.sort();
        for name in names {
            all.push((name.clone(), named[name].proxy.topology.load_full()));
        }
        all
    }
}
