//! What every session and background task shares: `Proxy`, the one process-wide state. It sits
//! below everything that uses it (server, session, dispatch, admin, reload, refresh, sentinel,
//! learn, status), so none of them imports another to reach it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::slowlog::Slowlog;
use crate::tenant::{TenantState, Tenants};
use crate::topology::Topology;

/// What every session shares. The config, the tenants and the topology are each one snapshot
/// behind an `ArcSwap`, replaced whole by a reload (see `reload`).
pub struct Proxy {
    pub config: ArcSwap<Config>,
    pub topology: ArcSwap<Topology>,
    pub metrics: Metrics,
    /// Wakes the cluster refresher (see `refresh`).
    pub refresh: Notify,
    /// Ticks whenever a new topology is swapped in (see `swap_topology`).
    pub topology_swapped: tokio::sync::watch::Sender<()>,
    /// Commands learned from the servers beyond the built-in table (see `learn`).
    pub commands: ArcSwap<crate::command::learned::Table>,
    /// Tenants; empty when tenancy is off.
    pub tenants: ArcSwap<Tenants>,
    /// Tenants are configured: every client must AUTH as one (read on every request).
    pub tenancy: AtomicBool,
    /// The file the config came from, for reloads.
    pub config_path: OnceLock<PathBuf>,
    /// One reload at a time.
    pub reloading: tokio::sync::Mutex<()>,
    /// The config file's text as last read, so an unchanged file is not reloaded again.
    pub config_seen: std::sync::Mutex<Option<String>>,
    pub slowlog: Slowlog,
    /// When keygate started (INFO's uptime).
    pub started: std::time::Instant,
    /// The status page's history (see `status`).
    pub samples: crate::samples::Shared,
    /// Failed AUTH attempts per client address.
    pub auth_failures: crate::access::AuthFailures,
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
    pub flushes: crate::tenant::flush::Flushes,
    next_client_id: AtomicU64,
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
            tenancy: AtomicBool::new(!tenants.is_empty()),
            tenants: ArcSwap::from_pointee(Tenants::new(tenants)),
            config: ArcSwap::from_pointee(config),
            topology: ArcSwap::from_pointee(topology),
            metrics: Metrics::default(),
            refresh: Notify::new(),
            topology_swapped: tokio::sync::watch::Sender::new(()),
            commands: ArcSwap::from_pointee(Default::default()),
            config_path: OnceLock::new(),
            reloading: tokio::sync::Mutex::new(()),
            config_seen: std::sync::Mutex::new(None),
            slowlog,
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
            next_client_id: AtomicU64::new(1),
        }
    }
}
