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
}

impl Backend {
    /// Start `connections` connection tasks to `addr` on the current runtime.
    pub fn start(addr: &str, connections: usize, opts: Arc<Options>) -> Backend {
        let addr: Arc<str> = addr.into();
        let links = (0..connections)
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                let up = Arc::new(AtomicBool::new(false));
                tokio::spawn(connection::supervise(
                    addr.clone(),
                    opts.clone(),
                    rx,
                    up.clone(),
                ));
                Link { requests: tx, up }
            })
            .collect();
        Backend { addr, links }
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
        let (tx, rx) = oneshot::channel();
        let link = &self.links[(client % self.links.len() as u64) as usize];
        let request = Request {
            args,
            reply: tx,
            asking,
        };
        if let Err(mpsc::error::SendError(request)) = link.requests.send(request) {
            let _ = request.reply.send(Err(Error::BackendDown {
                addr: self.addr.clone(),
                reason: "connection task stopped".into(),
            }));
        }
        rx
    }

    /// How many of its connections are established right now.
    pub fn connections_up(&self) -> usize {
        self.links
            .iter()
            .filter(|l| l.up.load(Ordering::Acquire))
            .count()
    }
}
