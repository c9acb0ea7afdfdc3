//! Where clients connect: a TCP port or a Unix socket (`listen = "unix:/path"`), and accepting
//! on it until shutdown.
//!
//! A Unix socket client has no IP address; for the rules that go by address (`access.allow`,
//! `access.deny`, a tenant's `allow_from`, the per-address limits on unauthenticated
//! connections and failed AUTHs) and in CLIENT LIST it counts as `127.0.0.1:0`: it is on this
//! host, like a loopback client, and who may connect at all is the socket file's mode.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::Listen;

/// The address a Unix socket client counts as.
pub const UNIX_PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// A bound client listener. A Unix socket's file is removed when it is dropped.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// A client connection just accepted.
pub enum Client {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A client connection detached from its runtime, to hand to a worker (see `worker`).
pub enum Detached {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Listener {
    /// Bind `listen`. A Unix socket replaces a stale socket file at its path (never any other
    /// kind of file) and gets the configured mode.
    pub async fn bind(listen: &Listen) -> std::io::Result<Listener> {
        let with_context = |e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}"))
        };
        match listen {
            Listen::Tcp(addr) => Ok(Listener::Tcp(
                TcpListener::bind(addr).await.map_err(with_context)?,
            )),
            Listen::Unix { path, mode } => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if !meta.file_type().is_socket() {
                        return Err(with_context(std::io::Error::new(
                            std::io::ErrorKind::AlreadyExists,
                            "a file that is not a socket is in the way",
                        )));
                    }
                    std::fs::remove_file(path).map_err(with_context)?;
                }
                let listener = UnixListener::bind(path).map_err(with_context)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))
                    .map_err(with_context)?;
                Ok(Listener::Unix(listener, path.clone()))
            }
        }
    }

    /// The TCP address clients connect to; `None` for a Unix socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }

    /// The next client, or `None` once `shutdown` is cancelled (see `accept_tcp`).
    pub async fn accept(&self, shutdown: &CancellationToken) -> Option<Client> {
        match self {
            Listener::Tcp(l) => accept_tcp(l, shutdown, "clients").await.map(Client::Tcp),
            Listener::Unix(l, _) => loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    accepted = l.accept() => match accepted {
                        Ok((stream, _)) => return Some(Client::Unix(stream)),
                        Err(e) => wait_out(e, "unix clients").await,
                    },
                }
            },
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Client {
    /// Who connected: its address, and the address it connected to.
    pub fn ends(&self) -> Option<(SocketAddr, SocketAddr)> {
        match self {
            Client::Tcp(s) => Some((s.peer_addr().ok()?, s.local_addr().ok()?)),
            Client::Unix(_) => Some((UNIX_PEER, UNIX_PEER)),
        }
    }

    /// Detach from the accepting runtime.
    pub fn detach(self) -> std::io::Result<Detached> {
        Ok(match self {
            Client::Tcp(s) => Detached::Tcp(s.into_std()?),
            Client::Unix(s) => Detached::Unix(s.into_std()?),
        })
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        match self {
            Client::Tcp(s) => s.write_all(bytes).await,
            Client::Unix(s) => s.write_all(bytes).await,
        }
    }
}

impl Detached {
    /// Register with the current runtime.
    pub fn attach(self) -> std::io::Result<Client> {
        Ok(match self {
            Detached::Tcp(s) => Client::Tcp(TcpStream::from_std(s)?),
            Detached::Unix(s) => Client::Unix(UnixStream::from_std(s)?),
        })
    }
}

/// The next connection on `listener`, or `None` once `shutdown` is cancelled. Accept errors (out
/// of file descriptors and the like) are logged and waited out: the listener keeps serving.
pub async fn accept_tcp(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    what: &str,
) -> Option<TcpStream> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => return Some(stream),
                Err(e) => wait_out(e, what).await,
            },
        }
    }
}

async fn wait_out(e: std::io::Error, what: &str) {
    warn!(error = %e, listener = what, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}
