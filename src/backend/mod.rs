//! One backend server: a fixed pool of pipelined connections shared by every client.
//!
//! A client always uses the same connection of the pool (chosen by its id), so its requests reach
//! the server in the order it sent them: a pipelined `SET k v; GET k` can never be split over two
//! connections and overtake itself.

mod connection;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use connection::Request;
pub use connection::{query_once, ReplyResult};

use crate::config::Upstream;
use crate::error::Error;

/// How connections to a server are made and used.
#[derive(Debug)]
pub struct Options {
    pub username: Option<String>,
    pub password: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_reply_depth: usize,
}

impl Options {
    pub fn new(upstream: &Upstream, max_reply_depth: usize) -> Self {
        Options {
            username: upstream.username.clone(),
            password: upstream.password.clone(),
            connect_timeout: upstream.connect_timeout,
            request_timeout: upstream.request_timeout,
            max_reply_depth,
        }
    }
}

/// A handle to one connection slot's task.
struct Link {
    requests: mpsc::UnboundedSender<Request>,
    up: Arc<AtomicBool>,
}

/// One server and its connection pool. Dropping it ends the connection tasks once the requests
/// already sent have been answered.
pub struct Backend {
    pub addr: Arc<str>,
    links: Vec<Link>,
    opts: Arc<Options>,
}

/// A connection of one client's own to a server, for commands that change connection state
/// (MULTI, WATCH). Closed when dropped, once its requests are answered; never pooled, so no state
/// it gathered can reach another client.
pub struct Pinned {
    pub addr: Arc<str>,
    link: Link,
}

impl Pinned {
    /// Send a request on this connection; the receiver gets its reply or an error, always.
    pub fn send(&self, args: Vec<Bytes>) -> oneshot::Receiver<ReplyResult> {
        send_on(&self.link, &self.addr, args, false)
    }
}

fn spawn_link(addr: &Arc<str>, opts: &Arc<Options>) -> Link {
    let (tx, rx) = mpsc::unbounded_channel();
    let up = Arc::new(AtomicBool::new(false));
    tokio::spawn(connection::supervise(
        addr.clone(),
        opts.clone(),
        rx,
        up.clone(),
    ));
    Link { requests: tx, up }
}

fn send_on(
    link: &Link,
    addr: &Arc<str>,
    args: Vec<Bytes>,
    asking: bool,
) -> oneshot::Receiver<ReplyResult> {
    let (tx, rx) = oneshot::channel();
    let request = Request {
        args,
        reply: tx,
        asking,
    };
    if let Err(mpsc::error::SendError(request)) = link.requests.send(request) {
        let _ = request.reply.send(Err(Error::BackendDown {
            addr: addr.clone(),
            reason: "connection task stopped".into(),
        }));
    }
    rx
}

impl Backend {
    /// Start `connections` connection tasks to `addr` on the current runtime.
    pub fn start(addr: &str, connections: usize, opts: Arc<Options>) -> Backend {
        let addr: Arc<str> = addr.into();
        let links = (0..connections).map(|_| spawn_link(&addr, &opts)).collect();
        Backend { addr, links, opts }
    }

    /// Open a connection of one client's own to this server.
    pub fn pin(&self) -> Pinned {
        Pinned {
            addr: self.addr.clone(),
            link: spawn_link(&self.addr, &self.opts),
        }
    }

    /// Send a request for client `client`; the receiver gets its reply or an error, always.
    pub fn send(&self, client: u64, args: Vec<Bytes>) -> oneshot::Receiver<ReplyResult> {
        self.send_with(client, args, false)
    }

    /// `send`, preceded by `ASKING` on the same connection when `asking`.
    pub fn send_with(
        &self,
        client: u64,
        args: Vec<Bytes>,
        asking: bool,
    ) -> oneshot::Receiver<ReplyResult> {
        let link = &self.links[(client % self.links.len() as u64) as usize];
        send_on(link, &self.addr, args, asking)
    }

    /// How many of its connections are established right now.
    pub fn connections_up(&self) -> usize {
        self.links
            .iter()
            .filter(|l| l.up.load(Ordering::Acquire))
            .count()
    }
}
