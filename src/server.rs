//! The listening side: bind, accept clients up to `max_clients`, and shut down gracefully.
//!
//! Shutdown (SIGINT/SIGTERM in the binary, a cancelled token in tests): stop accepting, tell every
//! session to stop reading and finish what it has in flight, wait up to `drain_timeout` for them,
//! then return.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::access;
use crate::admin;
use crate::config::{Config, UpstreamKind};
use crate::metrics::Metrics;
use crate::refresh;
use crate::reload;
use crate::sentinel;
use crate::session;
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
    pub samples: crate::status::Shared,
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
}

/// A bound, not yet running proxy.
pub struct Server {
    listener: TcpListener,
    /// `[tls] listen`: clients speaking TLS.
    tls: Option<TcpListener>,
    admin: Option<TcpListener>,
    proxy: Arc<Proxy>,
}

impl Server {
    /// Bind the client and admin ports and start connecting to the backends. Must be called
    /// inside a tokio runtime.
    pub async fn bind(config: Config) -> io::Result<Server> {
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen))
        })?;
        let admin = match &config.admin {
            Some(a) => Some(TcpListener::bind(a.listen).await.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen on {} (admin): {e}", a.listen),
                )
            })?),
            None => None,
        };
        let topology = Topology::start(&config);
        let tenants: Vec<Arc<TenantState>> = config
            .tenants
            .iter()
            .cloned()
            .map(|t| Arc::new(TenantState::for_upstream(t, &config.upstream)))
            .collect();
        let slowlog = Slowlog::new(&config.slowlog);
        let proxy = Arc::new(Proxy {
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
            next_client_id: AtomicU64::new(1),
        });
        let kind = proxy.config.load().upstream.kind;
        if matches!(kind, UpstreamKind::Cluster | UpstreamKind::Sentinel) {
            // Learn the slot map (the primary) before the first client arrives; if no node
            // answers, start anyway (requests get an error) and keep trying in the background.
            if let Err(e) = refresh::refresh(&proxy).await {
                warn!(error = %e, kind = kind.name(), "discovery failed; retrying in the background");
                proxy.refresh_soon();
            }
        }
        let tls = match &proxy.config.load().tls {
            Some(t) => Some(TcpListener::bind(t.listen).await.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen on {} (tls): {e}", t.listen),
                )
            })?),
            None => None,
        };
        Ok(Server {
            listener,
            tls,
            admin,
            proxy,
        })
    }

    /// The TLS address, if there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The address clients connect to (useful when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The admin HTTP address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn proxy(&self) -> Arc<Proxy> {
        self.proxy.clone()
    }

    /// Reload from `path` on SIGHUP, `POST /reload` and when the file changes (see `reload`).
    pub fn reload_from(self, path: PathBuf) -> Server {
        let _ = self.proxy.config_path.set(path);
        self
    }

    /// Serve until `shutdown` is cancelled, then drain.
    pub async fn run(self, shutdown: CancellationToken) {
        let Server {
            listener,
            tls,
            admin,
            proxy,
        } = self;
        info!(listen = %proxy.config.load().listen, "keygate listening");
        if let Some(admin) = admin {
            tokio::spawn(admin::serve(admin, proxy.clone(), shutdown.clone()));
        }
        // Each checks the current config's kind, which a reload may change.
        tokio::spawn(refresh::run(proxy.clone(), shutdown.clone()));
        tokio::spawn(crate::learn::run(proxy.clone(), shutdown.clone()));
        tokio::spawn(eject(proxy.clone(), shutdown.clone()));
        tokio::spawn(sentinel::watch(proxy.clone(), shutdown.clone()));
        tokio::spawn(crate::status::sample(proxy.clone(), shutdown.clone()));
        if proxy.config_path.get().is_some() {
            tokio::spawn(reload::watch(proxy.clone(), shutdown.clone()));
        }
        let sessions = TaskTracker::new();
        if let Some(tls) = tls {
            tokio::spawn(serve_tls(
                tls,
                proxy.clone(),
                sessions.clone(),
                shutdown.clone(),
            ));
        }
        while let Some(stream) = accept(&listener, &shutdown, "clients").await {
            let Some((stream, pending)) = admit(&proxy, &sessions, stream) else {
                continue;
            };
            let id = proxy.next_client_id.fetch_add(1, Relaxed);
            let proxy = proxy.clone();
            let shutdown = shutdown.clone();
            sessions.spawn(async move {
                proxy.metrics.clients_accepted.fetch_add(1, Relaxed);
                let session = session::run(proxy.clone(), stream, id, pending, shutdown);
                counted(&proxy, id, session).await;
            });
        }
        drop(listener);
        sessions.close();
        let drain = proxy.config.load().drain_timeout;
        info!(clients = sessions.len(), timeout = ?drain, "shutting down: draining clients");
        if tokio::time::timeout(drain, sessions.wait()).await.is_err() {
            warn!(
                clients = sessions.len(),
                "drain timeout reached; closing remaining clients"
            );
        }
        info!("keygate stopped");
    }
}

/// Run a client's session, counted in `keygate_client_connections` while it runs. A panic in it
/// (a bug) ends that client's connection only: it is logged at ERROR, counted in
/// `keygate_session_panics_total` (tests fail on it, see tests/common), and the count of
/// connections still comes back down.
async fn counted(proxy: &Proxy, id: u64, session: impl std::future::Future<Output = ()>) {
    use futures_util::FutureExt;
    proxy.metrics.clients_connected.fetch_add(1, Relaxed);
    let outcome = std::panic::AssertUnwindSafe(session).catch_unwind().await;
    proxy.metrics.clients_connected.fetch_sub(1, Relaxed);
    if let Err(panic) = outcome {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        proxy.metrics.session_panics.fetch_add(1, Relaxed);
        tracing::error!(client = id, panic = %what, "a client session panicked (a bug in keygate); its connection was closed");
    }
}

/// ketama `auto_eject_hosts`: keep the ring in step with the breakers, checked every
/// `EJECT_CHECK`: a server whose breaker opened leaves the ring (its keys go to the others, as in
/// twemproxy), and comes back when it closes.
async fn eject(proxy: Arc<Proxy>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EJECT_CHECK) => {}
        }
        let config = proxy.config.load_full();
        let topology = proxy.topology.load_full();
        if topology.kind != UpstreamKind::Ketama || !config.upstream.auto_eject_hosts {
            continue;
        }
        let open = topology.open_breakers();
        if open != topology.ejected {
            let next = topology.ejecting(&config, open);
            let names: Vec<&str> = next
                .ejected
                .iter()
                .map(|&i| &*next.backends[i].addr)
                .collect();
            warn!(ejected = ?names, epoch = next.epoch, "ketama ring rebuilt");
            proxy.swap_topology(next);
        }
    }
}

const EJECT_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// Accept TLS clients until shutdown: the same admission as plain ones, then the handshake
/// (with the certificates of the config in force now, so reloads renew them), then a session.
async fn serve_tls(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    sessions: TaskTracker,
    shutdown: CancellationToken,
) {
    while let Some(stream) = accept(&listener, &shutdown, "tls clients").await {
        let Some((stream, pending)) = admit(&proxy, &sessions, stream) else {
            continue;
        };
        let Some(tls) = proxy.config.load().tls.clone() else {
            continue;
        };
        let id = proxy.next_client_id.fetch_add(1, Relaxed);
        let proxy = proxy.clone();
        let shutdown = shutdown.clone();
        sessions.spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server);
            let handshake = tokio::time::timeout(tls.handshake_timeout, acceptor.accept(stream));
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    info!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    info!("TLS handshake timed out");
                    return;
                }
            };
            proxy.metrics.clients_accepted.fetch_add(1, Relaxed);
            let session = session::run_tls(proxy.clone(), stream, id, pending, shutdown);
            counted(&proxy, id, session).await;
        });
    }
}

/// The next connection on `listener`, or `None` once `shutdown` is cancelled. Accept errors (out
/// of file descriptors and the like) are logged and waited out: the listener keeps serving.
pub(crate) async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    what: &str,
) -> Option<TcpStream> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => return Some(stream),
                Err(e) => {
                    warn!(error = %e, listener = what, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Admit a new connection, or refuse it (address lists, unauthenticated connections from its
/// address, `max_clients`) with a reason. With tenants, the connection is counted as
/// unauthenticated until it authenticates (the `Pending` it carries).
fn admit(
    proxy: &Proxy,
    sessions: &TaskTracker,
    stream: TcpStream,
) -> Option<(TcpStream, Option<access::Pending>)> {
    let config = proxy.config.load();
    let Ok(peer) = stream.peer_addr() else {
        return None;
    };
    if !access::permitted(peer.ip(), &config.access.allow, &config.access.deny) {
        proxy.metrics.clients_rejected.fetch_add(1, Relaxed);
        info!(%peer, "connection refused by access.allow/access.deny");
        tokio::spawn(reject(
            stream,
            "-ERR keygate: connections from this address are not allowed\r\n",
        ));
        return None;
    }
    let tenancy = proxy.tenancy.load(Relaxed);
    let pending = match tenancy {
        false => None,
        true => {
            let max = config.access.max_unauthenticated_per_address;
            match proxy.unauthenticated.admit(peer.ip(), max) {
                Some(pending) => Some(pending),
                None => {
                    proxy.metrics.clients_rejected.fetch_add(1, Relaxed);
                    proxy.metrics.unauthenticated_refused.fetch_add(1, Relaxed);
                    warn!(%peer, limit = max, "connection refused: too many unauthenticated connections from this address (access.max_unauthenticated_per_address)");
                    tokio::spawn(reject(
                        stream,
                        "-ERR keygate: too many unauthenticated connections from this address\r\n",
                    ));
                    return None;
                }
            }
        }
    };
    if sessions.len() >= config.limits.max_clients {
        // Room is kept for clients that authenticate: the oldest connection still waiting to
        // authenticate gives its place to the new one. Clients that have authenticated are
        // never displaced; without tenants nobody is.
        let displaced = tenancy && proxy.clients.kill_oldest(|c| !c.authenticated());
        if !displaced {
            proxy.metrics.clients_rejected.fetch_add(1, Relaxed);
            tokio::spawn(reject(stream, "-ERR max number of clients reached\r\n"));
            return None;
        }
        proxy
            .metrics
            .unauthenticated_displaced
            .fetch_add(1, Relaxed);
        info!(%peer, "max_clients reached: the oldest unauthenticated connection gave its place");
    }
    Some((stream, pending))
}

/// Tell a refused client why (over `max_clients`, as Redis does; or not allowed), and close.
async fn reject(mut stream: TcpStream, why: &'static str) {
    let _ = stream.write_all(why.as_bytes()).await;
}
