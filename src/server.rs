//! The listening side: bind, accept clients up to `max_clients`, and shut down gracefully.
//!
//! Shutdown (SIGINT/SIGTERM in the binary, a cancelled token in tests): stop accepting, tell every
//! session to stop reading and finish what it has in flight, wait up to `drain_timeout` for them,
//! then return.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::access;
use crate::admin;
use crate::config::{Config, UpstreamKind};
use crate::listener::{accept_tcp, Client, Listener};
use crate::proxy::Proxy;
use crate::refresh;
use crate::reload;
use crate::sentinel;
use crate::session;
use crate::worker::Workers;

/// A bound, not yet running proxy.
pub struct Server {
    listener: Listener,
    /// `[tls] listen`: clients speaking TLS.
    tls: Option<TcpListener>,
    admin: Option<TcpListener>,
    proxy: Arc<Proxy>,
    /// The threads sessions run on.
    workers: Workers,
}

impl Server {
    /// Bind the client and admin ports and start connecting to the backends. Must be called
    /// inside a tokio runtime.
    pub async fn bind(config: Config) -> io::Result<Server> {
        let listener = Listener::bind(&config.listen).await?;
        let admin = match &config.admin {
            Some(a) => Some(TcpListener::bind(a.listen).await.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen on {} (admin): {e}", a.listen),
                )
            })?),
            None => None,
        };
        let proxy = Arc::new(Proxy::new(config));
        crate::upstreams::start_all(&proxy).await;
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
            workers: Workers::current(),
        })
    }

    /// The TLS address, if there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The TCP address clients connect to (useful when `listen` asked for port 0). Panics
    /// when keygate listens on a Unix socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("listening on TCP, not a Unix socket")
    }

    /// The admin HTTP address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn proxy(&self) -> Arc<Proxy> {
        self.proxy.clone()
    }

    /// Reload from `path` on SIGHUP, `POST /reload` and when the file changes (see `reload`).
    /// Run sessions on `workers` rather than on the runtime that binds (see `worker`).
    pub fn on(mut self, workers: Workers) -> Server {
        self.workers = workers;
        self
    }

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
            workers,
        } = self;
        info!(listen = %proxy.config.load().listen, "keygate listening");
        {
            // The named upstreams' tasks end with the main proxy's `stop`.
            let (stop, shutdown) = (proxy.stop.clone(), shutdown.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                stop.cancel();
            });
        }
        if let Some(admin) = admin {
            tokio::spawn(admin::serve(admin, proxy.clone(), shutdown.clone()));
        }
        // Each checks the current config's kind, which a reload may change.
        tokio::spawn(refresh::run(proxy.clone(), shutdown.clone()));
        tokio::spawn(crate::learn::run(proxy.clone(), shutdown.clone()));
        tokio::spawn(refresh::eject(proxy.clone(), shutdown.clone()));
        tokio::spawn(sentinel::watch(proxy.clone(), shutdown.clone()));
        tokio::spawn(crate::status::sample(proxy.clone(), shutdown.clone()));
        tokio::spawn(crate::accounting::run(proxy.clone(), shutdown.clone()));
        tokio::spawn(crate::fleet::run(proxy.clone(), shutdown.clone()));
        if proxy.config_path.get().is_some() {
            tokio::spawn(reload::watch(proxy.clone(), shutdown.clone()));
        }
        let sessions = TaskTracker::new();
        if let Some(tls) = tls {
            tokio::spawn(serve_tls(
                tls,
                proxy.clone(),
                workers.clone(),
                sessions.clone(),
                shutdown.clone(),
            ));
        }
        while let Some(client) = listener.accept(&shutdown).await {
            let Some((client, pending)) = admit(&proxy, &sessions, client) else {
                continue;
            };
            let id = proxy.next_client_id();
            let proxy = proxy.clone();
            let shutdown = shutdown.clone();
            spawn_client(&workers, &sessions, client, move |client| async move {
                proxy.metrics.clients_accepted.fetch_add(1, Relaxed);
                let session = session::run(proxy.clone(), client, id, pending, shutdown);
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

/// Run a new client's session on a worker (see `worker`). A socket belongs to the runtime that
/// registered it: the acceptor hands over the plain descriptor, and the worker registers it.
fn spawn_client<F, Fut>(workers: &Workers, sessions: &TaskTracker, client: Client, session: F)
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Ok(detached) = client.detach() else {
        return;
    };
    workers.spawn(sessions, move || async move {
        if let Ok(client) = detached.attach() {
            session(client).await;
        }
    });
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

/// Accept TLS clients until shutdown: the same admission as plain ones, then the handshake
/// (with the certificates of the config in force now, so reloads renew them), then a session.
async fn serve_tls(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    workers: Workers,
    sessions: TaskTracker,
    shutdown: CancellationToken,
) {
    while let Some(stream) = accept_tcp(&listener, &shutdown, "tls clients").await {
        let Some((client, pending)) = admit(&proxy, &sessions, Client::Tcp(stream)) else {
            continue;
        };
        let Some(tls) = proxy.config.load().tls.clone() else {
            continue;
        };
        let id = proxy.next_client_id();
        let proxy = proxy.clone();
        let shutdown = shutdown.clone();
        spawn_client(&workers, &sessions, client, move |client| async move {
            let Client::Tcp(stream) = client else {
                return;
            };
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

/// Admit a new connection, or refuse it (address lists, unauthenticated connections from its
/// address, `max_clients`) with a reason. With tenants, the connection is counted as
/// unauthenticated until it authenticates (the `Pending` it carries).
fn admit(
    proxy: &Proxy,
    sessions: &TaskTracker,
    stream: Client,
) -> Option<(Client, Option<access::Pending>)> {
    let config = proxy.config.load();
    let (peer, _) = stream.ends()?;
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
async fn reject(mut stream: Client, why: &'static str) {
    let _ = stream.write_all(why.as_bytes()).await;
}
