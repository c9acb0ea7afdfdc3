//! One client connection: read requests, keep up to `max_pipeline` of them in flight, write the
//! replies in request order.
//!
//! Each decoded request becomes a `Slot` at the back of a queue: either a reply keygate already
//! has (its own commands, errors) or a receiver for the backend's reply. Replies leave from the
//! front only, so they go out in request order whatever order backends answer in, and a reply can
//! only ever reach the request it was produced for.
//!
//! Reading stops while `max_pipeline` requests are pending or too much output is waiting for a
//! client that does not read: memory per client stays bounded. After QUIT, a protocol error or
//! shutdown, the session stops reading, delivers what is pending, and closes.

mod command_view;
mod feeds;
mod local;
mod pubsub;
mod tenancy;
mod transaction;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::Ordering::Release;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{self, Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::access::Pending;
use crate::backend::{Caller, Event, Flavor, ReplyResult};
use crate::clients::{Registered, Shown};
use crate::command::{flags, Command, CommandId, Policy, Spec, UNKNOWN};
use crate::config::ReadFrom;
use crate::dispatch::{self, Reply};
use crate::error::Error;
use crate::histogram::Timings;
use crate::listener::{Client, UNIX_PEER};
use crate::proxy::Proxy;
use crate::resp::request::{Decoder, Limits};
use crate::route;
use crate::tenant::Seat;
use crate::topology::Topology;
use crate::write_queue::WriteQueue;

/// `read_from = "prefer_replica"`: how long after a write a client's reads stay on the primary.
const READ_YOUR_WRITES: Duration = Duration::from_secs(1);

/// Stop reading requests while this much output waits for the client.
const OUTPUT_HIGH_WATER: usize = 1024 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// One request's place in the reply order.
struct Slot {
    reply: Reply,
    command: CommandId,
    /// Suppressed by CLIENT REPLY OFF/SKIP.
    silent: bool,
    /// A blocking command: if the client leaves, it is not waited for.
    blocking: bool,
    origin: Origin,
    /// Its request number (`Session::decoded` when it was decoded).
    request: u64,
}

/// Where a request came from, for its latency and the slowlog.
struct Origin {
    arrived: Instant,
    /// The first argument as the client sent it (its first `FIRST_ARG` bytes: copied, since
    /// sharing the buffer costs two atomic operations per request), and how many followed it.
    first_arg: Option<([u8; FIRST_ARG], u8)>,
    more: usize,
}

/// How much of a request's first argument the slowlog keeps.
const FIRST_ARG: usize = 48;

impl Origin {
    fn of(args: &[Bytes], arrived: Instant) -> Origin {
        Origin {
            arrived,
            first_arg: args.get(1).map(|arg| {
                let mut head = [0u8; FIRST_ARG];
                let len = arg.len().min(FIRST_ARG);
                head[..len].copy_from_slice(&arg[..len]);
                (head, len as u8)
            }),
            more: args.len().saturating_sub(2),
        }
    }
}

/// The connection state keygate keeps for a client, in place of the backend's.
struct Session {
    /// The proxy whose servers this client's requests reach: `home`, or the named upstream of
    /// the tenant it authenticated as (see proxy, "Named upstreams").
    proxy: Arc<Proxy>,
    /// The main proxy.
    home: Arc<Proxy>,
    id: u64,
    peer: SocketAddr,
    name: Option<Bytes>,
    lib_name: Option<Bytes>,
    lib_ver: Option<Bytes>,
    /// CLIENT REPLY OFF is in force.
    replies_off: bool,
    /// CLIENT REPLY SKIP: the next command's reply is dropped.
    skip_next: bool,
    /// Stop reading; close once everything pending is written.
    closing: bool,
    /// Close at once, dropping pending replies (HTTP on the RESP port, as Redis does).
    abort: bool,
    /// The tenant this client authenticated as (when tenants are configured).
    tenant: Option<Seat>,
    /// Counted against its address's unauthenticated connections until it authenticates.
    unauthenticated: Option<crate::access::Pending>,
    /// MULTI/WATCH state and the connection pinned for it.
    txn: Option<transaction::Transaction>,
    /// The database and protocol of the client's connection, which pick the backend pool.
    flavor: Flavor,
    /// The last request went to another connection than the client's pooled one (a pinned,
    /// blocking or subscriber connection, or a pool of another flavor): the next request waits
    /// for earlier replies, so it cannot overtake them (see session::transaction, "Ordering
    /// note").
    must_drain: bool,
    /// A SELECT in flight: the database it switches to once the server accepted it
    /// (`u64::MAX` while not, or if refused).
    pending_select: Option<Arc<AtomicU64>>,
    /// With shared limits: the fleet's admission of the tenant this client just authenticated
    /// as, and the error to send if it refuses. The AUTH (or HELLO) reply waits for it.
    admission: Option<tenancy::Admission>,
    /// The subscriber connection, while the client subscribes (see session::pubsub).
    sub: Option<pubsub::Sub>,
    /// MONITOR's lines, while the client monitors (see session::feeds).
    monitor: Option<feeds::Monitor>,
    /// CLIENT TRACKING's invalidation feed, while on (see session::feeds).
    tracking: Option<feeds::Tracking>,
    /// `read_from = "prefer_replica"`: when this client last sent a write.
    last_write: Option<Instant>,
    /// Latencies of the replies emitted in this batch, not yet in the shared histogram.
    timings: Option<(CommandId, Timings)>,
    /// Requests decoded so far (the frame deadline restarts with each).
    decoded: u64,
    /// The last decode found no complete request in what was read: more must be read.
    starved: bool,
    /// A request waiting for the client's earlier replies before it can be sent.
    held: Option<Held>,
    /// The held request waits for a CLIENT PAUSE to end (counted as held while this lives),
    /// and whether it may write.
    paused: Option<(crate::pause::Held, bool)>,
    /// The script lane (its flavor) the client's last request went to, while it was a script.
    script_lane: Option<Flavor>,
    /// Its entry among keygate's clients (CLIENT LIST, CLIENT KILL).
    me: Registered,
    /// The last command decoded (for CLIENT LIST's `cmd`, published once per batch).
    last_command: CommandId,
}

/// A request held back until the client's earlier replies are in.
struct Held {
    cmd: Command,
    fix: tenancy::Fix,
    command: CommandId,
    skipped: bool,
    origin: Origin,
}

/// What became of a request.
enum Outcome {
    Handled(Handled),
    Held(Command, tenancy::Fix),
}

/// Serve one client until it leaves, breaks the protocol, or `shutdown` is cancelled.
pub async fn run(
    proxy: Arc<Proxy>,
    client: Client,
    id: u64,
    pending: Option<Pending>,
    shutdown: CancellationToken,
) {
    match client {
        Client::Tcp(stream) => run_tcp(proxy, stream, id, pending, shutdown).await,
        Client::Unix(mut stream) => {
            let span =
                tracing::info_span!("client", id, peer = "unix", tenant = tracing::field::Empty);
            let (rd, wr) = stream.split();
            let ends = Ends {
                peer: UNIX_PEER,
                local: UNIX_PEER,
                cert: None,
                pending,
            };
            tracing::Instrument::instrument(serve(proxy, rd, wr, id, ends, shutdown), span).await
        }
    }
}

async fn run_tcp(
    proxy: Arc<Proxy>,
    mut stream: TcpStream,
    id: u64,
    pending: Option<Pending>,
    shutdown: CancellationToken,
) {
    let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    // One span per client connection: every event it causes carries the client's id, address
    // and, once it authenticated, its tenant.
    let span = tracing::info_span!("client", id, peer = %peer, tenant = tracing::field::Empty);
    let (rd, wr) = stream.split();
    let ends = Ends {
        peer,
        local,
        cert: None,
        pending,
    };
    tracing::Instrument::instrument(serve(proxy, rd, wr, id, ends, shutdown), span).await
}

/// Serve one client over TLS (see tls), once the handshake is done.
pub async fn run_tls(
    proxy: Arc<Proxy>,
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    id: u64,
    pending: Option<Pending>,
    shutdown: CancellationToken,
) {
    let (tcp, tls) = stream.get_ref();
    let (Ok(peer), Ok(local)) = (tcp.peer_addr(), tcp.local_addr()) else {
        return;
    };
    // Only present when it was verified against `[tls] client_ca`.
    let cert = tls
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(crate::tls::Identity::of);
    let _ = tcp.set_nodelay(true);
    let span =
        tracing::info_span!("client", id, peer = %peer, tenant = tracing::field::Empty, tls = true);
    let (rd, wr) = tokio::io::split(stream);
    let ends = Ends {
        peer,
        local,
        cert,
        pending,
    };
    tracing::Instrument::instrument(serve(proxy, rd, wr, id, ends, shutdown), span).await
}

/// The two addresses of a client connection, who its verified TLS client certificate names, and
/// its place among its address's unauthenticated connections.
struct Ends {
    peer: SocketAddr,
    local: SocketAddr,
    cert: Option<crate::tls::Identity>,
    pending: Option<Pending>,
}

async fn serve<R, W>(
    proxy: Arc<Proxy>,
    mut rd: R,
    mut wr: W,
    id: u64,
    ends: Ends,
    shutdown: CancellationToken,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let Ends {
        peer,
        local,
        cert,
        pending,
    } = ends;
    // Limits as configured when the client connected (a reload applies to later clients).
    let config = proxy.config.load_full();
    let limits = &config.limits;
    let max_pipeline = limits.max_pipeline;
    let idle_timeout = limits.client_idle_timeout;
    let configured = Limits {
        max_bulk: limits.max_request_bytes,
        max_args: limits.max_request_args,
    };
    let mut decoder = Decoder::new(configured);
    let mut session = Session {
        proxy: proxy.clone(),
        home: proxy.clone(),
        id,
        peer,
        name: None,
        lib_name: None,
        lib_ver: None,
        replies_off: false,
        skip_next: false,
        closing: false,
        abort: false,
        tenant: None,
        unauthenticated: pending,
        txn: None,
        flavor: Flavor::default(),
        must_drain: false,
        pending_select: None,
        admission: None,
        sub: None,
        monitor: None,
        tracking: None,
        last_write: None,
        timings: None,
        decoded: 0,
        starved: true,
        held: None,
        paused: None,
        script_lane: None,
        // Its own child of the shutdown token: cancelled by a shutdown, or by CLIENT KILL alone.
        me: proxy.clients.join(id, peer, local, shutdown.child_token()),
        last_command: UNKNOWN,
    };
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut pending: VecDeque<Slot> = VecDeque::new();
    let mut out = WriteQueue::new();
    if let Some(identity) = cert.filter(|_| session.tenancy()) {
        if let Err(refused) = session.certificate_auth(&identity) {
            out.push(refused.to_reply());
            session.closing = true;
        }
        // No reply to hold back: the fleet's verdict applies from the request it arrives by.
        if let Some(admission) = session.admission.take() {
            tokio::spawn(admission.admitted);
        }
    }
    session.publish();
    let idle = time::sleep(idle_timeout.unwrap_or(Duration::from_secs(86400 * 365)));
    tokio::pin!(idle);
    // Slowloris: a request must arrive whole within `frame_timeout` of its first byte.
    let frame_timeout = config.limits.frame_timeout;
    let frame_deadline = time::sleep(Duration::from_secs(86400 * 365));
    tokio::pin!(frame_deadline);
    // (when the incomplete request was first seen, and how many requests were decoded by then)
    let mut frame_started: Option<(Instant, u64)> = None;
    // With tenants: authenticate within `auth_timeout` of connecting.
    let auth_deadline = time::sleep(
        config
            .limits
            .auth_timeout
            .unwrap_or(Duration::from_secs(86400 * 365)),
    );
    tokio::pin!(auth_deadline);
    let output_limit = config.limits.client_output_limit;
    // Created once: a fresh `cancelled()` per loop turn would register with the token's waiter
    // list and leave it again on every request.
    let stop_token = session.me.client.kill.clone();
    let stop = stop_token.cancelled();
    tokio::pin!(stop);
    let mut stopped = false;

    loop {
        // A held request goes once the replies before it are in.
        if session.held.is_some() && drained(&pending) && session.paused.is_none() {
            if let Some(slot) = session.resume() {
                pending.push_back(slot);
            }
        }
        // Requests already buffered (held back by max_pipeline) before reading more.
        if !session.closing
            && session.held.is_none()
            && pending.len() < max_pipeline
            && (!input.is_empty() || !session.starved)
        {
            session.process(&mut decoder, &mut input, &mut pending, max_pipeline);
        }
        // Every reply that is ready at the front, in order, into the output. One clock reading
        // times the whole batch.
        let now = Instant::now();
        while let Some(slot) = pending.front_mut() {
            let bytes = match &mut slot.reply {
                Reply::Ready(bytes) => std::mem::take(bytes),
                Reply::Backend(rx) => match rx.try_recv() {
                    Ok(result) => reply_bytes(result),
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    Err(oneshot::error::TryRecvError::Closed) => reply_bytes(Err(lost())),
                },
                // Polled without a waker: this only takes a reply that is already complete (the
                // common case in a pipeline), so it joins this write batch; the select below
                // registers the real waker when it is not.
                Reply::Later(future) => {
                    match future
                        .as_mut()
                        .poll(&mut Context::from_waker(Waker::noop()))
                    {
                        Poll::Ready(bytes) => bytes,
                        Poll::Pending => break,
                    }
                }
            };
            let slot = pending.pop_front().expect("front exists");
            session.emit(&slot, bytes, &mut out, now);
            // Checked reply by reply: what is still pending is dropped with the client.
            if over_output_limit(&out, output_limit) {
                break;
            }
        }
        session.flush_timings();
        if over_output_limit(&out, output_limit) {
            tracing::warn!(
                buffered = out.len(),
                limit = output_limit,
                "client does not read its replies: over client_output_limit, disconnecting"
            );
            break;
        }
        // Replies just emitted may release a held request (the loop's top sends it).
        if session.held.is_some() && drained(&pending) && session.paused.is_none() && !session.abort
        {
            continue;
        }
        if session.abort || (session.closing && pending.is_empty() && !out.wants_write()) {
            break;
        }
        // Read only once every complete request already read was taken (`starved`): replies
        // keygate answers itself (PING) are ready at once, and must not let a client that
        // never reads stream its requests into keygate's memory faster than they are taken.
        let can_read = !session.closing
            && session.starved
            && pending.len() < max_pipeline
            && out.len() < OUTPUT_HIGH_WATER;
        // Bytes left in `input` while requests could be taken are the start of an incomplete one.
        let partial = decoder.mid_request(&input)
            && !session.closing
            && session.held.is_none()
            && pending.len() < max_pipeline;
        match (partial, frame_started, frame_timeout) {
            // A new incomplete request (none yet, or the one timed has been decoded since).
            (true, started, Some(timeout))
                if started.is_none_or(|(_, mark)| mark != session.decoded) =>
            {
                let now = Instant::now();
                frame_started = Some((now, session.decoded));
                frame_deadline.as_mut().reset(now + timeout);
            }
            (false, Some(_), _) => frame_started = None,
            _ => {}
        }
        let unauthenticated = session.tenant.is_none() && session.tenancy();
        if can_read && input.capacity() - input.len() < READ_CHUNK / 2 {
            input.reserve(READ_CHUNK.max(doubling_hint(&decoder, &input)));
        }
        let front_waits = matches!(
            pending.front(),
            Some(Slot {
                reply: Reply::Backend(_) | Reply::Later(_),
                ..
            })
        );
        let input_flag = session.sub.as_ref().map(pubsub::Sub::input);
        let paused_writes = session.paused.as_ref().is_some_and(|(_, writes)| *writes);
        let monitor_lagged = feeds::monitor_lagged(session.monitor.as_ref());
        tokio::select! {
            biased;
            written = out.write_to(&mut wr), if out.wants_write() => match written {
                Ok(n) => {
                    proxy.metrics.written_to_client(n);
                }
                Err(_) => break,
            },
            reply = front_reply(&mut pending), if front_waits => {
                let slot = pending.pop_front().expect("front exists");
                session.emit(&slot, reply, &mut out, Instant::now());
                session.flush_timings();
            }
            // A request held by CLIENT PAUSE goes once the pause ends (the loop's top sends it).
            _ = proxy.pause.wait(paused_writes), if session.paused.is_some() => {
                session.paused = None;
            }
            event = next_event(&mut session.sub), if session.sub.is_some() && out.len() < OUTPUT_HIGH_WATER => {
                session.on_event(event, &mut out);
            }
            event = feeds::next_tracking_event(session.tracking.as_mut()), if session.tracking.is_some() && out.len() < OUTPUT_HIGH_WATER => match event {
                feeds::TrackingEvent::Swapped => {
                    if !session.tracking_still_covers() {
                        tracing::info!("the primaries changed under CLIENT TRACKING: closing the client");
                        session.tracking = None;
                        session.closing = true;
                    }
                }
                feeds::TrackingEvent::Bound => session.evict_over_bound(),
                feeds::TrackingEvent::Push(push) => session.on_feed(push, &mut out),
            },
            // Invalidations another client's tracking redirects to this one.
            injected = session.me.injected.recv(), if out.len() < OUTPUT_HIGH_WATER => {
                if let Some(injected) = injected {
                    if injected.tenant.as_deref() == session.tenant_name() {
                        out.push(injected.frame);
                    }
                }
            }
            // A monitor too far behind is dropped at once, its unread output with it, as Redis
            // drops a client past its output limit.
            _ = cancelled(monitor_lagged.as_ref()), if monitor_lagged.is_some() => {
                tracing::info!(behind = crate::monitor::BEHIND, "MONITOR client fell too far behind: disconnected");
                session.abort = true;
            }
            // Once MONITOR's +OK (and any reply before it) is out.
            line = feeds::next_line(session.monitor.as_mut()), if session.monitor.is_some() && pending.is_empty() && out.len() < OUTPUT_HIGH_WATER => match line {
                Some(Ok(line)) => out.push(line),
                Some(Err(e)) => {
                    tracing::info!(error = %e, "MONITOR feed ended: closing the client");
                    session.monitor = None;
                    session.closing = true;
                }
                None => {
                    session.monitor = None;
                    session.closing = true;
                }
            },
            read = flagged(tokio::io::AsyncReadExt::read_buf(&mut rd, &mut input), input_flag), if can_read => match read {
                Ok(0) | Err(_) => {
                    session.closing = true;
                    // Redis frees a client that leaves while blocked; so does keygate, which
                    // closes the blocking connection (dropping it) rather than wait for a reply.
                    if pending.iter().any(|slot| slot.blocking) {
                        session.abort = true;
                    }
                }
                Ok(n) => {
                    proxy.metrics.read_from_client(n);
                    if let Some(timeout) = idle_timeout {
                        idle.as_mut().reset(Instant::now() + timeout);
                    }
                    session.process(&mut decoder, &mut input, &mut pending, max_pipeline);
                }
            },
            _ = &mut stop, if !stopped => {
                stopped = true;
                if shutdown.is_cancelled() {
                    // Shutdown: deliver what is pending, then close.
                    session.closing = true;
                } else {
                    // CLIENT KILL: drop what is pending and close at once, as Redis does.
                    debug!("killed by CLIENT KILL");
                    session.abort = true;
                }
            }
            _ = &mut frame_deadline, if frame_started.is_some() && !session.closing => {
                tracing::warn!("a request did not arrive whole within frame_timeout: closing");
                session.refuse_and_close(&mut pending, "keygate: the request did not arrive whole in time (limits.frame_timeout)");
            }
            _ = &mut auth_deadline, if unauthenticated && config.limits.auth_timeout.is_some() && !session.closing => {
                debug!("no AUTH within auth_timeout: closing");
                session.refuse_and_close(&mut pending, "keygate: no AUTH in time (limits.auth_timeout)");
            }
            _ = &mut idle, if idle_timeout.is_some() && !session.closing => {
                // As Redis, never for a client waiting on a blocked command or subscribed.
                if pending.is_empty() && session.sub.is_none() && session.monitor.is_none() {
                    debug!(client = id, "closing idle client");
                    session.closing = true;
                } else if let Some(timeout) = idle_timeout {
                    idle.as_mut().reset(Instant::now() + timeout);
                }
            }
        }
    }
}

impl Session {
    /// Show CLIENT LIST what this client is now.
    fn publish(&self) {
        self.me.client.publish(Shown {
            name: self.name.clone(),
            lib_name: self.lib_name.clone(),
            lib_ver: self.lib_ver.clone(),
            tenant: self
                .tenant
                .as_ref()
                .map(|seat| seat.tenant.config.name.clone()),
            db: self.flavor.db,
            resp3: self.flavor.resp3,
            pubsub: self.sub.is_some(),
            monitor: self.monitor.is_some(),
        });
    }

    /// Answer one last error (after the replies already due) and close.
    fn refuse_and_close(&mut self, pending: &mut VecDeque<Slot>, why: &'static str) {
        pending.push_back(Slot {
            reply: Reply::Ready(Error::Invalid(why).to_reply()),
            command: UNKNOWN,
            silent: false,
            blocking: false,
            origin: Origin::of(&[], Instant::now()),
            request: self.decoded,
        });
        self.closing = true;
    }
}

/// The subscriber connection's next event (only polled while there is one).
async fn next_event(sub: &mut Option<pubsub::Sub>) -> Option<Event> {
    match sub {
        Some(sub) => sub.next().await,
        None => std::future::pending().await,
    }
}

/// A subscribed client's read, flagging its input (see `backend::Leaving`): the flag is set by
/// the wake-up that readiness brings and whenever the read finds something (data, or the client
/// gone: then it stays set until the subscriber connection is dropped), and cleared only while
/// the read is pending. Other clients' reads are polled as they are.
async fn flagged(
    read: impl std::future::Future<Output = std::io::Result<usize>>,
    input: Option<Arc<AtomicBool>>,
) -> std::io::Result<usize> {
    let mut read = std::pin::pin!(read);
    let Some(input) = input else {
        return read.await;
    };
    let waker = Arc::new(FlagWaker {
        input: input.clone(),
        inner: std::sync::Mutex::new(None),
    });
    std::future::poll_fn(|cx| {
        *waker.inner.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        let flagging = std::task::Waker::from(waker.clone());
        let mut flagging = std::task::Context::from_waker(&flagging);
        // The flag is cleared only while the read is pending, never between a poll that found
        // input and the session taking it: a PUBLISH checking meanwhile must see it set.
        let mut polled = read.as_mut().poll(&mut flagging);
        if polled.is_pending() {
            input.store(false, Release);
            // Input that came between the poll and the store woke nothing new: look again.
            polled = read.as_mut().poll(&mut flagging);
        }
        if polled.is_ready() {
            input.store(true, Release);
        }
        polled
    })
    .await
}

/// Sets a subscribed client's input flag, then wakes its task.
struct FlagWaker {
    input: Arc<AtomicBool>,
    inner: std::sync::Mutex<Option<std::task::Waker>>,
}

impl std::task::Wake for FlagWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.input.store(true, Release);
        if let Some(waker) = &*self.inner.lock().unwrap_or_else(|e| e.into_inner()) {
            waker.wake_by_ref();
        }
    }
}

/// Asks whether no earlier reply of this client is still with a backend.
type Drained<'a> = &'a dyn Fn() -> bool;

/// No reply the client is waiting for is still with a backend.
/// Resolves once `token` is cancelled; never without one.
async fn cancelled(token: Option<&CancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

fn drained(pending: &VecDeque<Slot>) -> bool {
    pending
        .iter()
        .all(|slot| matches!(slot.reply, Reply::Ready(_)))
}

/// Wait for the reply of the request at the front of the queue.
async fn front_reply(pending: &mut VecDeque<Slot>) -> Bytes {
    match pending.front_mut().map(|slot| &mut slot.reply) {
        Some(Reply::Backend(rx)) => reply_bytes(rx.await.unwrap_or_else(|_| Err(lost()))),
        Some(Reply::Later(future)) => future.await,
        _ => unreachable!("only called when the front waits for a reply"),
    }
}

fn reply_bytes(result: ReplyResult) -> Bytes {
    result.unwrap_or_else(|e| e.to_reply())
}

/// The backend connection task dropped a request without answering it (it can only panic).
fn lost() -> Error {
    Error::Internal("the backend connection handling this request failed")
}

/// A client has more output waiting than `limit`, not counting the largest reply queued (the
/// one being written, or about to be): a single reply larger than the limit (a 100 MiB value)
/// is delivered to a client that reads it, while one that does not read is cut off once its
/// backlog passes the limit, so it holds at most the limit plus one reply.
fn over_output_limit(out: &WriteQueue, limit: usize) -> bool {
    out.len() > limit && out.len() - out.largest_piece() > limit
}

/// How much to grow the read buffer by: the rest of a large argument being received, but never
/// more than doubling what has arrived, so a client that announces a huge value and sends
/// nothing cannot make keygate allocate it.
fn doubling_hint(decoder: &Decoder, input: &BytesMut) -> usize {
    decoder.missing(input).min(input.capacity().max(READ_CHUNK))
}

impl Session {
    /// Decode and start every complete request in `input`, up to the pipeline limit.
    fn process(
        &mut self,
        decoder: &mut Decoder,
        input: &mut BytesMut,
        pending: &mut VecDeque<Slot>,
        max_pipeline: usize,
    ) {
        // Requests decoded from one read arrived together: one clock reading for all.
        let now = Instant::now();
        let before = self.decoded;
        self.process_at(decoder, input, pending, max_pipeline, now);
        if self.decoded != before {
            self.me.client.active(now.into_std(), self.last_command);
        }
    }

    fn process_at(
        &mut self,
        decoder: &mut Decoder,
        input: &mut BytesMut,
        pending: &mut VecDeque<Slot>,
        max_pipeline: usize,
        now: Instant,
    ) {
        while !self.closing && self.held.is_none() && pending.len() < max_pipeline {
            // Until a client authenticates (with tenants), Redis's limits for unauthenticated
            // clients apply to what it may send; from the request after its AUTH, the
            // configured ones.
            decoder.set_unauthenticated(self.tenant.is_none() && self.tenancy());
            let decoded = decoder.decode(input);
            self.starved = matches!(decoded, Ok(None));
            match decoded {
                Ok(Some(args)) => {
                    self.decoded += 1;
                    // Asked only by the transaction paths, so ordinary requests never scan the queue.
                    let held_back = &*pending;
                    if let Some(slot) = self.handle(args, &|| drained(held_back), now) {
                        pending.push_back(slot);
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    debug!(client = self.id, peer = %self.peer, error = %e.0, "protocol error");
                    self.proxy
                        .metrics
                        .protocol_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    pending.push_back(Slot {
                        reply: Reply::Ready(Error::Protocol(e.0).to_reply()),
                        command: UNKNOWN,
                        silent: false,
                        blocking: false,
                        origin: Origin::of(&[], now),
                        request: self.decoded,
                    });
                    self.closing = true;
                }
            }
        }
    }

    /// Start one request; `None` if it is held (see `Held`). `drained`: no earlier reply of this
    /// client is still with a backend.
    fn handle(&mut self, args: Vec<Bytes>, drained: Drained, arrived: Instant) -> Option<Slot> {
        let origin = Origin::of(&args, arrived);
        let cmd = Command::parse_with(args, Some(&self.proxy.commands));
        if self.proxy.monitors.active() {
            self.show(&cmd);
        }
        self.proxy.metrics.request(cmd.id);
        self.last_command = cmd.id;
        let command = cmd.id;
        let skipped = std::mem::take(&mut self.skip_next);
        let outcome = self.try_handle(cmd, drained);
        self.slot(outcome, command, skipped, origin)
    }

    /// Send the held request, now that the replies before it are in (`None`: held again, by a
    /// CLIENT PAUSE that began meanwhile).
    fn resume(&mut self) -> Option<Slot> {
        let held = self.held.take().expect("a held request");
        let outcome = self.route(held.cmd, held.fix, &|| true);
        self.slot(outcome, held.command, held.skipped, held.origin)
    }

    fn slot(
        &mut self,
        outcome: Result<Outcome, Error>,
        command: CommandId,
        skipped: bool,
        origin: Origin,
    ) -> Option<Slot> {
        let (reply, voice, blocking) = match outcome {
            Ok(Outcome::Handled(Handled {
                reply,
                voice,
                blocking,
            })) => (reply, voice, blocking),
            Ok(Outcome::Held(cmd, fix)) => {
                self.held = Some(Held {
                    cmd,
                    fix,
                    command,
                    skipped,
                    origin,
                });
                return None;
            }
            Err(e) => (Reply::Ready(e.to_reply()), Voice::Normal, false),
        };
        let silent = match voice {
            Voice::Normal => skipped || self.replies_off,
            Voice::Quiet => true,
            Voice::Heard => false,
        };
        Some(Slot {
            reply: self.tracking_reply(reply),
            command,
            silent,
            blocking,
            origin,
            request: self.decoded,
        })
    }

    fn try_handle(&mut self, mut cmd: Command, drained: Drained) -> Result<Outcome, Error> {
        let spec = match (cmd.policy, cmd.spec) {
            (Policy::Close, _) => {
                tracing::warn!(client = self.id, peer = %self.peer, "HTTP sent to the RESP port: closing the connection");
                self.closing = true;
                self.abort = true;
                return Ok(Outcome::Handled(Handled::quiet()));
            }
            (_, None) => {
                // Inside MULTI, a command refused before queueing aborts it, as in Redis.
                self.abort_multi();
                return Err(Error::UnknownCommand { args: cmd.args });
            }
            (_, Some(spec)) => spec,
        };
        if !spec.arity_ok(cmd.args.len()) {
            self.abort_multi();
            return Err(Error::WrongArity(spec.name));
        }
        // As Redis treats a MONITOR client: connection commands only, no keys.
        if self.monitor.is_some() && spec.has(flags::WRITE | flags::READONLY | flags::MAY_REPLICATE)
        {
            return Err(Error::Invalid("Replica can't interact with the keyspace"));
        }
        let fix = match self.tenancy() {
            true => self
                .confine(&mut cmd, spec)
                .inspect_err(|_| self.abort_multi())?,
            false => tenancy::Fix::None,
        };
        match fix {
            tenancy::Fix::Answer(reply) if self.in_multi() => {
                Ok(Outcome::Handled(self.queue_answer(reply)))
            }
            tenancy::Fix::Answer(reply) => Ok(Outcome::Handled(Handled::ready(reply)?)),
            // Emulated over many keys and shards: it cannot be part of an atomic EXEC, and
            // must not run before it (see session::transaction).
            tenancy::Fix::Keyspace(_) if self.in_multi() => {
                self.abort_multi();
                Err(Error::NotInTransaction(
                    spec.name.replace('|', " ").to_ascii_uppercase(),
                ))
            }
            tenancy::Fix::Keyspace(op) => {
                Ok(Outcome::Handled(Handled::reply(self.tenant_keyspace(op))))
            }
            _ => self.route(cmd, fix, drained),
        }
    }

    /// Run a checked, confined command: within a transaction, or by its policy.
    fn route(
        &mut self,
        cmd: Command,
        fix: tenancy::Fix,
        drained: Drained,
    ) -> Result<Outcome, Error> {
        let spec = cmd.spec.expect("routed commands are known");
        let (cmd, fix) = match self.subscribed_mode(cmd, fix, drained) {
            Ok(go_on) => go_on,
            Err(outcome) => return outcome,
        };
        // CLIENT PAUSE: held, with everything after it, until the pause ends.
        if !matches!(spec.name, "client|pause" | "client|unpause") {
            let writes = self.may_write(&cmd, spec);
            if self.proxy.pause.holds(writes).is_some() {
                self.paused = Some((self.proxy.pause.hold(), writes));
                return Ok(Outcome::Held(cmd, fix));
            }
        }
        let (cmd, fix) = match self.transaction(cmd, spec, fix, drained) {
            transaction::Step::Done(result) => {
                self.must_drain = true;
                return result.map(Outcome::Handled);
            }
            transaction::Step::Hold(cmd, fix) => return Ok(Outcome::Held(cmd, fix)),
            transaction::Step::Normal(cmd, fix) => (cmd, fix),
        };
        // Scripts one after another on the same lane stay in order without waiting.
        let same_lane = cmd.policy == Policy::Script
            && self.script_lane.is_some()
            && self.script_lane == Some(self.script_caller().flavor);
        if self.must_drain && !same_lane {
            if !drained() {
                return Ok(Outcome::Held(cmd, fix));
            }
            self.must_drain = false;
            self.script_lane = None;
            self.apply_select();
        }
        let handled = match cmd.policy {
            Policy::Local => {
                let handled = self.local(&cmd);
                // Local commands are the ones that change what CLIENT LIST shows; QUIT and
                // SLOWLOG change nothing there.
                if !matches!(cmd.name(), "quit" | "slowlog") {
                    self.publish();
                }
                handled
            }
            Policy::Refuse(reason) => Err(Error::Refused {
                command: spec.name.replace('|', " ").to_ascii_uppercase(),
                reason,
            }),
            // PUBLISH, PUBSUB NUMSUB ...: once the subscribers that are leaving are gone from
            // their servers, so they are never counted (see backend::subscriber).
            Policy::Forward if spec.has(flags::PUBSUB) && self.proxy.subscribers_leaving.any() => {
                let proxy = self.proxy.clone();
                let caller = self.caller();
                let bound = self.proxy.config.load().upstream.request_timeout;
                self.must_drain = true;
                let reply = Reply::Later(Box::pin(async move {
                    proxy.subscribers_leaving.settled(bound).await;
                    let topology = proxy.topology.load_full();
                    let reply = match route::plan(&cmd, &topology) {
                        Ok(plan) => dispatch::run(&proxy, &topology, caller, cmd.args, plan, false),
                        Err(e) => return e.to_reply(),
                    };
                    tenancy::settle(reply).await
                }));
                Ok(Handled::reply(self.unconfine(reply, fix)))
            }
            // CONFIG SET of the slowlog's settings: keygate's slowlog follows the server's.
            Policy::Forward if spec.name == "config|set" && self.tenant.is_none() => {
                // The server's password is keygate's own way in (upstream.password): one client
                // changing it would lock every client out.
                if cmd.args[2..]
                    .iter()
                    .step_by(2)
                    .any(|name| name.eq_ignore_ascii_case(b"requirepass"))
                {
                    return Err(Error::Refused {
                        command: "CONFIG SET requirepass".into(),
                        reason: "would change the password keygate itself reaches the server with (upstream.password), locking every client out",
                    });
                }
                let follow = Followed::of(&cmd.args[2..]);
                let topology = self.proxy.topology.load();
                let plan = route::plan(&cmd, &topology)?;
                let reply =
                    dispatch::run(&self.proxy, &topology, self.caller(), cmd.args, plan, false);
                let proxy = self.proxy.clone();
                Ok(Handled::reply(Reply::Later(Box::pin(async move {
                    let reply = tenancy::settle(reply).await;
                    if &reply[..] == b"+OK\r\n" {
                        follow.apply(&proxy);
                    }
                    reply
                }))))
            }
            Policy::Forward => {
                // COMMAND and the forms that list commands: what keygate offers this client.
                if cmd.name() == "command" {
                    if let Some(reply) = self.command_view(&cmd, spec) {
                        return Ok(Outcome::Handled(Handled::reply(reply)));
                    }
                }
                if self.tracking.is_some() {
                    self.track(&cmd, spec);
                }
                let topology = self.proxy.topology.load();
                let plan = route::plan(&cmd, &topology)?;
                let read = self.replica_read(&topology, spec);
                let reply =
                    dispatch::run(&self.proxy, &topology, self.caller(), cmd.args, plan, read);
                Ok(Handled::reply(self.unconfine(reply, fix)))
            }
            Policy::Blocking => {
                // On a connection of its own: only once the replies before it are in, and
                // what follows waits for it, as it would behind a blocked Redis connection.
                if !drained() {
                    return Ok(Outcome::Held(cmd, fix));
                }
                if self.tracking.is_some() {
                    self.track(&cmd, spec);
                }
                let topology = self.proxy.topology.load();
                let backend = match route::plan(&cmd, &topology)? {
                    route::Plan::One(target) => target.backend,
                    _ => return Err(Error::CrossSlot),
                };
                self.must_drain = true;
                let mut caller = self.caller();
                if matches!(spec.name, "script|kill" | "function|kill") {
                    // While a script runs the server refuses SELECT: these need no database,
                    // and must get through.
                    caller.flavor.db = 0;
                }
                let reply = dispatch::blocking(&self.proxy, &topology, caller, backend, cmd.args);
                Ok(Handled {
                    reply: self.unconfine(reply, fix),
                    voice: Voice::Normal,
                    blocking: true,
                })
            }
            Policy::Script => {
                // On the script lane (checked above: reached once the client's earlier
                // replies are in, unless they were scripts on the same lane).
                if self.tracking.is_some() {
                    self.track(&cmd, spec);
                }
                let topology = self.proxy.topology.load();
                let plan = route::plan(&cmd, &topology)?;
                let read = self.replica_read(&topology, spec);
                let caller = self.script_caller();
                self.script_lane = Some(caller.flavor);
                self.must_drain = true;
                let running = self.script_started();
                let reply = dispatch::run(&self.proxy, &topology, caller, cmd.args, plan, read);
                let reply = Reply::Later(Box::pin(async move {
                    let _running = running;
                    tenancy::settle(reply).await
                }));
                Ok(Handled::reply(self.unconfine(reply, fix)))
            }
            // Confirmations are sent even with CLIENT REPLY OFF or SKIP, as Redis 7 sends them
            // (a client waiting for one would otherwise hang).
            Policy::Subscribe => {
                return self.subscribe(cmd, drained).map(|outcome| match outcome {
                    Outcome::Handled(handled) => Outcome::Handled(handled.heard()),
                    held => held,
                })
            }
            Policy::Transaction => unreachable!("session::transaction takes these"),
            Policy::Close => unreachable!("handled in try_handle"),
        };
        handled.map(Outcome::Handled)
    }

    /// Whether a command may write or replicate, as CLIENT PAUSE WRITE judges it (Redis's
    /// `write` and `may-replicate` flags; a script by its shebang; EXEC by what it queued).
    /// The servers' version as HELLO and a tenant's INFO report it: the first primary's, once
    /// learned (see `learn`), else that of keygate's built-in command table.
    fn server_version(&self) -> String {
        let learned = self.proxy.commands.load();
        learned
            .version
            .as_deref()
            .unwrap_or(crate::command::REDIS_VERSION)
            .to_string()
    }

    /// The servers' `redis_version` for a tenant's INFO (Valkey's is the Redis version it is
    /// compatible with), once learned, else that of keygate's built-in command table.
    fn server_redis_version(&self) -> String {
        let learned = self.proxy.commands.load();
        let version = learned.redis_version.as_deref();
        version.unwrap_or(crate::command::REDIS_VERSION).to_string()
    }

    fn may_write(&self, cmd: &Command, spec: &Spec) -> bool {
        match spec.name {
            "exec" => self.txn_writes(),
            "eval" => {
                self.proxy.pause.saw_script(&cmd.args[1]);
                !crate::pause::script_without_writes(&cmd.args[1])
            }
            "script|load" => {
                self.proxy.pause.saw_script(&cmd.args[2]);
                false
            }
            "evalsha" => !self.proxy.pause.script_read_only(&cmd.args[1]),
            "fcall" => !self.proxy.pause.function_read_only(&cmd.args[1]),
            _ => crate::command::may_replicate(spec),
        }
    }

    /// A SELECT the server has answered (its earlier replies are all in): its database becomes
    /// the client's, for the pools its next requests use.
    fn apply_select(&mut self) {
        if let Some(db) = self.pending_select.take() {
            if let Ok(db) = u32::try_from(db.load(Relaxed)) {
                self.flavor.db = db;
                self.publish();
            }
        }
    }

    /// Whether this command may be served by a replica (`read_from`): read-only, and for
    /// `prefer_replica` not within a second of this client's last write.
    fn replica_read(&mut self, topology: &Topology, spec: &Spec) -> bool {
        match topology.read_from {
            ReadFrom::Primary => false,
            ReadFrom::Replica => spec.has(flags::READONLY),
            ReadFrom::PreferReplica => {
                if spec.has(flags::WRITE) {
                    self.last_write = Some(Instant::now());
                }
                spec.has(flags::READONLY)
                    && self
                        .last_write
                        .is_none_or(|at| at.elapsed() >= READ_YOUR_WRITES)
            }
        }
    }

    fn log_slow(&self, slot: &Slot, took: Duration) {
        let tenant = self.tenant.as_ref().map(|s| s.tenant.config.name.clone());
        self.proxy.slowlog.record(crate::slowlog::Entry {
            id: 0,
            tenant_id: 0,
            at: 0,
            took,
            command: crate::command::name_of(slot.command),
            first_arg: slot
                .origin
                .first_arg
                .map(|(head, len)| Bytes::copy_from_slice(&head[..len as usize])),
            more: slot.origin.more,
            client: self.peer.to_string(),
            client_name: self.name.clone(),
            tenant,
        });
    }

    /// Who sends this client's scripts: on the script lane, and with `upstream.tenant_acl` as
    /// its tenant's backend user.
    fn script_caller(&self) -> Caller {
        let mut caller = self.caller();
        caller.flavor.scripts = true;
        if let Some(seat) = &self.tenant {
            caller.flavor.user = seat.tenant.backend_user;
        }
        caller
    }

    /// A script of this client's starts: kept among the scripts in flight (with its tenant)
    /// until it ends, so a tenant's SCRIPT KILL can tell whether the one running is its own.
    fn script_started(&self) -> crate::tenant::ScriptRun {
        self.proxy
            .scripts_running
            .start(self.tenant.as_ref().map(|seat| &seat.tenant))
    }

    /// Who sends this client's requests, for the backend pools.
    fn caller(&self) -> Caller {
        Caller {
            id: self.id,
            flavor: self.flavor,
        }
    }

    /// The reply as the tenant must see it (keys without its prefix).
    fn unconfine(&self, reply: Reply, fix: tenancy::Fix) -> Reply {
        match (&self.tenant, fix) {
            (None, _) | (Some(_), tenancy::Fix::None) => reply,
            (Some(seat), fix) => tenancy::unconfine(reply, fix, &seat.tenant),
        }
    }

    /// Queue a finished reply for the client, unless it was silenced.
    /// Add the latencies gathered by `emit` to the shared histograms.
    fn flush_timings(&mut self) {
        if let Some((command, timings)) = self.timings.take() {
            self.proxy.metrics.took(command, &timings);
            if let Some(seat) = &self.tenant {
                seat.tenant.latency.merge(&timings);
            }
        }
    }

    fn emit(&mut self, slot: &Slot, bytes: Bytes, out: &mut WriteQueue, now: Instant) {
        if self.tracking.is_none() {
            return self.emit_reply(slot, bytes, out, now);
        }
        self.before_reply(out);
        self.emit_reply(slot, bytes, out, now);
        self.after_reply(slot.request, out);
    }

    fn emit_reply(&mut self, slot: &Slot, mut bytes: Bytes, out: &mut WriteQueue, now: Instant) {
        let took = now.saturating_duration_since(slot.origin.arrived);
        // Gathered per command over the batch, added to the shared histogram by flush_timings.
        match &mut self.timings {
            Some((command, timings)) if *command == slot.command => timings.add(took),
            _ => {
                self.flush_timings();
                let mut timings = Timings::default();
                timings.add(took);
                self.timings = Some((slot.command, timings));
            }
        }
        // Blocking commands are slow by design; Redis leaves them out of its slowlog too.
        if !slot.blocking && self.proxy.slowlog.is_slow(took) {
            self.log_slow(slot, took);
        }
        if bytes.first() == Some(&b'-') {
            self.proxy.metrics.error(slot.command);
            if let Some(seat) = &self.tenant {
                seat.tenant.errors.fetch_add(1, Relaxed);
            }
            // Redis quotes key names in some errors ('acme:stream'): show the tenant its own.
            if let Some(seat) = &self.tenant {
                bytes = tenancy::unquote_keys(bytes, seat.tenant.config.prefix.as_bytes());
            }
        }
        if !slot.silent {
            out.push(bytes);
        }
    }
}

/// The settings of keygate's own that a `CONFIG SET` (parameter-value pairs) names, as Redis
/// reads them, followed once the server took them: `slowlog-log-slower-than` in microseconds
/// (negative: log nothing), `slowlog-max-len`, `tracking-table-max-keys` (0: no bound).
#[derive(Default)]
struct Followed {
    threshold: Option<Option<Duration>>,
    max_len: Option<usize>,
    tracking_max_keys: Option<usize>,
}

impl Followed {
    fn of(pairs: &[Bytes]) -> Followed {
        let mut settings = Followed::default();
        for pair in pairs.chunks(2) {
            let [name, value] = pair else { break };
            let Some(n) = crate::resp::parse_int(value) else {
                continue;
            };
            if name.eq_ignore_ascii_case(b"slowlog-log-slower-than") {
                settings.threshold = Some(u64::try_from(n).ok().map(Duration::from_micros));
            } else if name.eq_ignore_ascii_case(b"slowlog-max-len") {
                settings.max_len = usize::try_from(n).ok();
            } else if name.eq_ignore_ascii_case(b"tracking-table-max-keys") {
                settings.tracking_max_keys = usize::try_from(n).ok();
            }
        }
        settings
    }

    fn apply(&self, proxy: &Proxy) {
        if let Some(threshold) = self.threshold {
            proxy.slowlog.set_threshold(threshold);
        }
        if let Some(max_len) = self.max_len {
            proxy.slowlog.set_max_len(max_len);
        }
        if let Some(max) = self.tracking_max_keys {
            proxy.tracked_keys.set_max(max);
        }
    }
}

/// A command's outcome: its reply, and whether CLIENT REPLY rules drop that reply.
struct Handled {
    reply: Reply,
    voice: Voice,
    /// It is a blocking command's.
    blocking: bool,
}

/// Whether a reply reaches the client.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Voice {
    /// Unless CLIENT REPLY OFF or SKIP silences it.
    Normal,
    /// Never (CLIENT REPLY OFF and SKIP themselves).
    Quiet,
    /// Always: CLIENT REPLY ON's `+OK`, and (un)subscribe confirmations.
    Heard,
}

impl Handled {
    fn reply(reply: Reply) -> Self {
        Handled {
            reply,
            voice: Voice::Normal,
            blocking: false,
        }
    }

    /// Sent whatever CLIENT REPLY says.
    fn heard(self) -> Self {
        Handled {
            voice: Voice::Heard,
            ..self
        }
    }

    fn ready(bytes: Bytes) -> Result<Self, Error> {
        Ok(Handled::reply(Reply::Ready(bytes)))
    }
}
