//! One backend server: pools of pipelined connections shared by every client, and connections
//! of one client's own for the commands that need one.
//!
//! A client always uses the same connection of a pool (chosen by its id), so its requests reach
//! the server in the order it sent them: a pipelined `SET k v; GET k` can never be split over two
//! connections and overtake itself.
//!
//! # Which protocol and database the connections speak
//!
//! Every connection is set up for one `Flavor`: a database (`SELECT n` at connect) and a
//! protocol (`HELLO 3` at connect, or RESP2). A server has one pool per flavor in use, made on
//! first use; RESP2 clients of database 0 use the pool made at start. So Redis itself shapes each
//! reply for the protocol its client speaks (maps, sets, doubles, push frames for RESP3; their
//! RESP2 forms otherwise) and replies are forwarded without conversion: exact, and free on the
//! hot path. keygate converts only what it builds itself (its own replies, merged replies).

mod breaker;
mod connection;
mod feed;
mod subscriber;
pub mod users;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

pub use breaker::{Breaker, State as BreakerState};
use connection::Request;
pub use connection::{query_once, Dedicated, ReplyResult};
pub use feed::{Feed, FeedSync};
pub use subscriber::{Event, Leaving, Subscriber};

use crate::config::Upstream;
use crate::error::Error;
use crate::histogram::Histogram;

/// How connections to a server are made and used.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub username: Option<String>,
    pub password: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_reply_depth: usize,
    pub connections: usize,
    pub blocking_connections: usize,
    pub subscriber_connections: usize,
    pub failures_to_open: u32,
    pub open_for: Duration,
    /// A cluster replica serving reads: `READONLY` on every connection.
    pub readonly: bool,
    /// Connect over TLS.
    pub tls: Option<crate::tls::Upstream>,
}

impl Options {
    pub fn new(upstream: &Upstream, max_reply_depth: usize) -> Self {
        Options {
            username: upstream.username.clone(),
            password: upstream.password.clone(),
            connect_timeout: upstream.connect_timeout,
            request_timeout: upstream.request_timeout,
            max_reply_depth,
            connections: upstream.connections_per_server,
            blocking_connections: upstream.blocking_connections_per_server,
            subscriber_connections: upstream.subscriber_connections_per_server,
            failures_to_open: upstream.failures_to_open,
            open_for: upstream.open_for,
            readonly: false,
            tls: upstream.tls.clone(),
        }
    }
}

/// What a connection is set up for: the database it has selected, the protocol it speaks, the
/// user it authenticated as (0: the upstream's own; else a tenant's, see `users`), and whether
/// it carries scripts only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flavor {
    pub db: u32,
    pub resp3: bool,
    pub user: u64,
    /// The script lane: pipelined connections for EVAL, EVALSHA and FCALL only, so a long
    /// script never holds up the other commands' connections (see session, "Scripts").
    pub scripts: bool,
}

/// Who sends a request: the client (its id picks the connection in a pool) and its flavor.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub id: u64,
    pub flavor: Flavor,
}

/// What a server's connections measure, for /metrics.
/// The pooled connections' figures are kept per worker thread (written per batch of requests by
/// the worker's own connections, summed when read), so workers never write a shared line per
/// batch (see `worker`).
pub struct Stats {
    /// Per worker: from a request's write to its reply, on the pooled connections.
    latency: Box<[Histogram]>,
    /// Per worker: requests written to pooled connections and not yet answered.
    in_flight: Box<[AtomicUsize]>,
    /// Pinned connections alive.
    pub pinned: AtomicUsize,
    /// Scripts written on the script lane and not answered yet: while one runs, the server may
    /// rightly answer nobody (until its busy-reply-threshold), and silence is no failure.
    pub scripts: AtomicUsize,
}

impl Default for Stats {
    fn default() -> Self {
        let workers = crate::worker::count();
        Stats {
            latency: (0..workers).map(|_| Histogram::default()).collect(),
            in_flight: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            pinned: AtomicUsize::new(0),
            scripts: AtomicUsize::new(0),
        }
    }
}

impl Stats {
    fn mine<T>(shards: &[T]) -> &T {
        &shards[crate::worker::index() % shards.len()]
    }

    /// `n` requests written by the calling worker.
    pub(crate) fn sent(&self, n: usize) {
        Self::mine(&self.in_flight).fetch_add(n, Ordering::Relaxed);
    }

    /// Replies to the calling worker's requests arrived `timings` after they were written.
    pub(crate) fn answered(&self, timings: &crate::histogram::Timings) {
        Self::mine(&self.in_flight).fetch_sub(timings.count() as usize, Ordering::Relaxed);
        Self::mine(&self.latency).merge(timings);
    }

    /// `n` requests of the calling worker's will never be answered (the connection broke).
    pub(crate) fn lost(&self, n: usize) {
        Self::mine(&self.in_flight).fetch_sub(n, Ordering::Relaxed);
    }
}

/// A pool of connection slots.
type Pool = Arc<[Link]>;

/// A handle to one connection slot's task.
struct Link {
    requests: mpsc::UnboundedSender<Request>,
    up: Arc<AtomicBool>,
}

/// Blocking connections kept open for reuse, per server: a finished blocking command leaves its
/// connection in step and without state, so the next one need not connect again.
const IDLE_BLOCKING: usize = 16;

/// One server and its connection pools. Dropping it ends the connection tasks once the requests
/// already sent have been answered.
pub struct Backend {
    pub addr: Arc<str>,
    /// The pool for RESP2 clients of database 0, one per worker thread (see `worker`): made at
    /// start for the worker that starts the backend, on first use for the others, on the
    /// runtime of the worker using it, so a request and its reply never cross threads.
    links: Box<[OnceLock<Box<[Link]>>]>,
    /// Pools for other flavors, per worker, made on first use.
    flavored: Mutex<HashMap<(usize, Flavor), Pool>>,
    opts: Arc<Options>,
    breaker: Arc<Breaker>,
    stats: Arc<Stats>,
    blocking: Arc<Semaphore>,
    subscribers: Arc<Semaphore>,
    idle: Mutex<Vec<Dedicated>>,
    /// Databases the server accepted in SELECT (see `select`).
    databases: Mutex<HashSet<u32>>,
}

/// A connection of one client's own to a server, for commands that change connection state
/// (MULTI, WATCH). Closed when dropped, once its requests are answered; never pooled, so no state
/// it gathered can reach another client.
pub struct Pinned {
    pub addr: Arc<str>,
    link: Link,
    stats: Arc<Stats>,
    broken: Arc<AtomicBool>,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        self.stats.pinned.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pinned {
    /// Send a request on this connection; the receiver gets its reply or an error, always.
    pub fn send(&self, args: Vec<Bytes>) -> oneshot::Receiver<ReplyResult> {
        send_on(&self.link, &self.addr, args, false)
    }

    /// The connection failed (or never opened): whatever was sent on it since is lost.
    pub fn broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }
}

/// A connection for one blocking command, counted against the server's limit while held.
pub struct Blocking {
    pub conn: Dedicated,
    _permit: OwnedSemaphorePermit,
}

fn spawn_link(
    addr: &Arc<str>,
    opts: &Arc<Options>,
    breaker: &Arc<Breaker>,
    stats: &Arc<Stats>,
    flavor: Flavor,
) -> Link {
    spawn_link_for(addr, opts, breaker, stats, flavor, None)
}

/// A connection slot; `broken`: a pinned one, which never reconnects (a transaction or a WATCH
/// lives on one server connection: a new one would run the rest of it outside MULTI) and sets
/// `broken` once it has failed.
fn spawn_link_for(
    addr: &Arc<str>,
    opts: &Arc<Options>,
    breaker: &Arc<Breaker>,
    stats: &Arc<Stats>,
    flavor: Flavor,
    broken: Option<Arc<AtomicBool>>,
) -> Link {
    let (tx, rx) = mpsc::unbounded_channel();
    let up = Arc::new(AtomicBool::new(false));
    tokio::spawn(connection::supervise(
        addr.clone(),
        opts.clone(),
        breaker.clone(),
        stats.clone(),
        flavor,
        rx,
        up.clone(),
        broken,
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
    /// Start the default pool's connection tasks to `addr` on the current runtime.
    pub fn start(addr: &str, opts: Arc<Options>) -> Backend {
        let addr: Arc<str> = addr.into();
        let breaker = Breaker::new(addr.clone(), opts.clone());
        let stats = Arc::new(Stats::default());
        let links: Box<[OnceLock<Box<[Link]>>]> = (0..crate::worker::count())
            .map(|_| OnceLock::new())
            .collect();
        let here = crate::worker::index() % links.len();
        let _ = links[here].set(
            (0..opts.connections)
                .map(|_| spawn_link(&addr, &opts, &breaker, &stats, Flavor::default()))
                .collect(),
        );
        Backend {
            addr,
            links,
            breaker,
            stats,
            flavored: Mutex::new(HashMap::new()),
            blocking: Arc::new(Semaphore::new(opts.blocking_connections)),
            subscribers: Arc::new(Semaphore::new(opts.subscriber_connections)),
            idle: Mutex::new(Vec::new()),
            databases: Mutex::new(HashSet::new()),
            opts,
        }
    }

    /// Open a connection of one client's own to this server.
    pub fn pin(&self, flavor: Flavor) -> Pinned {
        self.stats.pinned.fetch_add(1, Ordering::Relaxed);
        let broken = Arc::new(AtomicBool::new(false));
        let link = spawn_link_for(
            &self.addr,
            &self.opts,
            &self.breaker,
            &self.stats,
            flavor,
            Some(broken.clone()),
        );
        Pinned {
            addr: self.addr.clone(),
            link,
            stats: self.stats.clone(),
            broken,
        }
    }

    /// Send a request for `caller`; the receiver gets its reply or an error, always.
    pub fn send(&self, caller: Caller, args: Vec<Bytes>) -> oneshot::Receiver<ReplyResult> {
        self.send_with(caller, args, false)
    }

    /// `send`, preceded by `ASKING` on the same connection when `asking`.
    pub fn send_with(
        &self,
        caller: Caller,
        args: Vec<Bytes>,
        asking: bool,
    ) -> oneshot::Receiver<ReplyResult> {
        if !self.breaker.allows() {
            return self.refused();
        }
        if caller.flavor == Flavor::default() {
            let links = self.links[crate::worker::index() % self.links.len()]
                .get_or_init(|| self.spawn_pool(Flavor::default()).into_boxed_slice());
            let link = &links[(caller.id % links.len() as u64) as usize];
            return send_on(link, &self.addr, args, asking);
        }
        let pool = self.pool(caller.flavor);
        let link = &pool[(caller.id % pool.len() as u64) as usize];
        send_on(link, &self.addr, args, asking)
    }

    /// A reply that is already the open breaker's error.
    fn refused(&self) -> oneshot::Receiver<ReplyResult> {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Err(self.open_error()));
        rx
    }

    fn open_error(&self) -> Error {
        Error::BackendDown {
            addr: self.addr.clone(),
            reason: self.breaker.refusal(),
        }
    }

    /// How this server is reached (address aside): credentials, TLS, timeouts.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    /// The same server, reached the same way: a new topology may keep this backend.
    pub fn same_as(&self, addr: &str, opts: &Options) -> bool {
        &*self.addr == addr && *self.opts == *opts
    }

    /// This worker's pool for `flavor`, made on first use.
    fn pool(&self, flavor: Flavor) -> Pool {
        let mut pools = self.flavored.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .entry((crate::worker::index(), flavor))
            .or_insert_with(|| self.spawn_pool(flavor).into())
            .clone()
    }

    /// `connections_per_server` connection tasks for `flavor`, on the current runtime.
    fn spawn_pool(&self, flavor: Flavor) -> Vec<Link> {
        (0..self.opts.connections)
            .map(|_| spawn_link(&self.addr, &self.opts, &self.breaker, &self.stats, flavor))
            .collect()
    }

    /// A connection for one blocking command: an idle one of this flavor, or a new one. Fails
    /// at once when `blocking_connections_per_server` are in use.
    pub async fn blocking(&self, flavor: Flavor) -> Result<Blocking, Error> {
        if !self.breaker.allows() {
            return Err(self.open_error());
        }
        let permit =
            self.blocking
                .clone()
                .try_acquire_owned()
                .map_err(|_| Error::DedicatedLimit {
                    addr: self.addr.clone(),
                    what: "blocking",
                    limit: self.opts.blocking_connections,
                })?;
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let at = idle.iter().rposition(|c| c.flavor() == flavor);
            at.map(|at| idle.swap_remove(at))
        };
        let conn = match idle {
            Some(conn) => conn,
            None => Dedicated::open(&self.addr, &self.opts, flavor)
                .await
                .inspect_err(|e| self.breaker.failure(&e.to_string()))?,
        };
        Ok(Blocking {
            conn,
            _permit: permit,
        })
    }

    /// Give back a blocking connection whose command completed: its reply was read whole, so it
    /// is in step and can serve the next blocking command.
    pub fn release(&self, blocking: Blocking) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE_BLOCKING {
            idle.push(blocking.conn);
        }
    }

    /// A connection for one subscribed client, connecting in the background (requests sent
    /// meanwhile wait for it). Fails at once when `subscriber_connections_per_server` are in use.
    /// A subscriber connection of a client's own; counted in `leaving` while it closes.
    pub fn subscribe(&self, flavor: Flavor, leaving: Arc<Leaving>) -> Result<Subscriber, Error> {
        let permit = self.subscriber_permit()?;
        Ok(Subscriber::start(
            self.addr.clone(),
            self.opts.clone(),
            flavor,
            permit,
            leaving,
        ))
    }

    /// One of `subscriber_connections_per_server`, for a connection that pushes data to one
    /// client (a subscriber's, a monitor's); an error at once when the breaker is open or all
    /// are in use.
    fn subscriber_permit(&self) -> Result<OwnedSemaphorePermit, Error> {
        if !self.breaker.allows() {
            return Err(self.open_error());
        }
        self.subscribers
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::DedicatedLimit {
                addr: self.addr.clone(),
                what: "subscriber",
                limit: self.opts.subscriber_connections,
            })
    }

    /// Add this server to a client's feed (a connection of its own, counted as a
    /// subscriber's, set up with `setup`); the receiver says whether the server accepted it.
    pub fn feed(
        &self,
        feed: &mut Feed,
        flavor: Flavor,
        setup: Vec<Bytes>,
    ) -> Result<oneshot::Receiver<Result<(), Error>>, Error> {
        let permit = self.subscriber_permit()?;
        let (ready, confirmed) = oneshot::channel();
        feed.add(
            self.addr.clone(),
            self.opts.clone(),
            flavor,
            setup,
            permit,
            ready,
        );
        Ok(confirmed)
    }

    /// Check with the server that database `db` exists (`SELECT db` on a connection of its own),
    /// so that a pool for it is only ever made for a database the server accepted. The reply is
    /// the server's, for the client.
    pub async fn select(&self, db: u32) -> Bytes {
        let known = || {
            self.databases
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&db)
        };
        if db == 0 || known() {
            return crate::resp::simple("OK");
        }
        let args = [Bytes::from_static(b"SELECT"), Bytes::from(db.to_string())];
        match query_once(&self.addr, &self.opts, &args).await {
            Ok(reply) => {
                if &reply[..] == b"+OK\r\n" {
                    let mut dbs = self.databases.lock().unwrap_or_else(|e| e.into_inner());
                    dbs.insert(db);
                }
                reply
            }
            Err(reason) => Error::BackendDown {
                addr: self.addr.clone(),
                reason,
            }
            .to_reply(),
        }
    }

    /// Blocking and subscriber connections in use right now.
    pub fn dedicated_in_use(&self) -> (usize, usize) {
        (
            self.opts.blocking_connections - self.blocking.available_permits(),
            self.opts.subscriber_connections - self.subscribers.available_permits(),
        )
    }

    /// The pooled connections' latency, every worker's added up.
    pub fn latency(&self) -> Histogram {
        let sum = Histogram::default();
        for shard in self.stats.latency.iter() {
            sum.add(shard);
        }
        sum
    }

    pub fn in_flight(&self) -> usize {
        // Each worker's count is its own requests', so the sum never goes below zero.
        self.stats
            .in_flight
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    pub fn pinned(&self) -> usize {
        self.stats.pinned.load(Ordering::Relaxed)
    }

    /// How many of the default pools' connections (every worker's) are established right now.
    pub fn connections_up(&self) -> usize {
        self.links
            .iter()
            .filter_map(OnceLock::get)
            .flat_map(|links| links.iter())
            .filter(|l| l.up.load(Ordering::Acquire))
            .count()
    }
}
