//! One pipelined backend connection, and the task that keeps it connected.
//!
//! Requests from every client that shares this connection arrive on one channel, are written in
//! arrival order (many per `writev`), and their replies are matched to them strictly first in,
//! first out.
//!
//! # Concurrency note
//!
//! FIFO matching is only sound while the connection is in step with the server. Anything that
//! casts doubt on that *poisons* the connection: every request in flight on it is answered with
//! an error, the socket is closed, and it is never reused. The doubts are: a reply with no request
//! waiting for it, a protocol error in a reply, EOF or an I/O error, and a request outliving
//! `request_timeout` with the server silent all that time (its reply may still come, and would
//! then be taken for the next request's).
//! Requests still queued in the channel (not yet written) are not in flight; they go to the next
//! connection, or get an error while there is none.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::time::{self, Instant};
use tokio_rustls::client::TlsStream;
use tracing::{debug, error, info, warn};

use super::{Breaker, Flavor, Options, Stats};
use crate::error::Error;
use crate::histogram::Timings;
use crate::resp::reply::Scanner;
use crate::write_queue::WriteQueue;

/// What a request gets back: the reply's bytes exactly as the server sent them, or an error.
pub type ReplyResult = Result<Bytes, Error>;

/// A request on its way to the server.
pub struct Request {
    pub args: Vec<Bytes>,
    pub reply: oneshot::Sender<ReplyResult>,
    /// Send `ASKING` first, on the same connection (a cluster's `-ASK` redirection).
    pub asking: bool,
}

/// Stop taking new requests while this much is waiting to be written.
const WRITE_HIGH_WATER: usize = 4 * 1024 * 1024;
/// Read buffer headroom.
const READ_CHUNK: usize = 64 * 1024;

/// A connection that stayed up this long resets the reconnect backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(1);

/// Why `serve` returned.
enum Closed {
    /// Every handle to this connection is gone and nothing is in flight: the task ends.
    Unused,
    /// The connection broke or was poisoned; the reason is for the log.
    Broken(Arc<str>),
    /// A request outlived `request_timeout` with the server silent: poisoned, but not counted
    /// against the server yet. A server can be silent because it is busy on this connection's
    /// own requests (building one client's gigabyte of replies): the next connection proves it
    /// alive with a PING, or counts as the failure.
    TimedOut(Arc<str>),
}

/// Run a connection slot's task, and start it afresh should it ever panic: a bug must cost the
/// requests in flight (their senders are dropped, so they get an error), never the slot itself.
/// The channel outlives each attempt behind a mutex, which unwinding releases.
#[allow(clippy::too_many_arguments)]
pub(super) async fn supervise(
    addr: Arc<str>,
    opts: Arc<Options>,
    breaker: Arc<Breaker>,
    stats: Arc<Stats>,
    flavor: Flavor,
    requests: mpsc::UnboundedReceiver<Request>,
    up: Arc<AtomicBool>,
    pinned: Option<Arc<AtomicBool>>,
) {
    let requests = Arc::new(Mutex::new(requests));
    loop {
        let task = tokio::spawn(run(
            addr.clone(),
            opts.clone(),
            breaker.clone(),
            stats.clone(),
            flavor,
            requests.clone(),
            up.clone(),
            pinned.clone(),
        ));
        match task.await {
            Err(e) if e.is_panic() => {
                up.store(false, Ordering::Release);
                if let Some(broken) = &pinned {
                    broken.store(true, Ordering::Release);
                }
                error!(backend = %addr, "backend connection task panicked; restarting it");
            }
            // Finished (the backend is gone) or cancelled (the runtime is shutting down).
            _ => return,
        }
    }
}

/// The task behind one connection slot: connect, serve until broken, back off, reconnect.
/// While there is no connection, requests are failed at once instead of queueing. A pinned
/// slot (`pinned`: its broken flag) connects once: once that connection is gone, every later
/// request fails, so nothing meant for a transaction ever runs outside it.
#[allow(clippy::too_many_arguments)]
async fn run(
    addr: Arc<str>,
    opts: Arc<Options>,
    breaker: Arc<Breaker>,
    stats: Arc<Stats>,
    flavor: Flavor,
    requests: Arc<Mutex<mpsc::UnboundedReceiver<Request>>>,
    up: Arc<AtomicBool>,
    pinned: Option<Arc<AtomicBool>>,
) {
    let mut requests = requests.lock_owned().await;
    let requests = &mut *requests;
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(2));
    // The last connection timed out: the next one must answer a PING to count as connected.
    let mut suspect = false;
    loop {
        // (why the connection is down, and whether that counts against the server)
        let (reason, counts) = match connect(&addr, &opts, flavor, suspect).await {
            Ok(stream) => {
                info!(backend = %addr, "backend connected");
                suspect = false;
                up.store(true, Ordering::Release);
                let since = Instant::now();
                let closed = serve(stream, &addr, &opts, &breaker, &stats, flavor, requests).await;
                up.store(false, Ordering::Release);
                // Only a connection that lasted earns a fast reconnect: a server that accepts
                // and drops connections at once must not be reconnected to in a tight loop.
                if since.elapsed() >= HEALTHY_AFTER {
                    backoff.reset();
                }
                match closed {
                    Closed::Unused => return,
                    Closed::Broken(reason) => (reason, true),
                    Closed::TimedOut(reason) => {
                        suspect = true;
                        (reason, false)
                    }
                }
            }
            // A server busy with a script refuses a new connection's SELECT (or READONLY):
            // it is there, only busy. The requests waiting get its own -BUSY, as they would
            // from it, and the next request tries again.
            Err(reason) if pinned.is_none() && busy(&reason).is_some() => {
                let text = busy(&reason).unwrap_or_default().to_string();
                if !requests_get(requests, Error::Text(text), BUSY_RETRY).await {
                    return;
                }
                continue;
            }
            Err(reason) => (reason, true),
        };
        if let Some(broken) = &pinned {
            broken.store(true, Ordering::Release);
            if counts && busy(&reason).is_none() && stats.scripts.load(Ordering::Acquire) == 0 {
                breaker.failure(&reason);
            }
            let error = match busy(&reason) {
                Some(text) => Error::Text(text.to_string()),
                None => Error::BackendLost {
                    addr: addr.clone(),
                    reason: format!("{reason}; the transaction's connection is gone").into(),
                },
            };
            while let Some(request) = requests.recv().await {
                let _ = request.reply.send(Err(error.clone()));
            }
            return;
        }
        if !counts {
            // A timeout: the server may only be busy (a slow command). Reconnect at once, with
            // requests waiting for the new connection rather than failing meanwhile; its PING
            // decides whether the server is there.
            warn!(backend = %addr, %reason, "backend connection timed out; reconnecting");
            continue;
        }
        if stats.scripts.load(Ordering::Acquire) == 0 {
            breaker.failure(&reason);
        }
        let delay = backoff.next();
        warn!(backend = %addr, %reason, retry_in = ?delay, "backend connection down");
        let down = Error::BackendDown {
            addr: addr.clone(),
            reason,
        };
        if !requests_get(requests, down, delay).await {
            return;
        }
    }
}

/// How soon a connection refused by a busy server is tried again.
const BUSY_RETRY: Duration = Duration::from_millis(10);

/// The server's `BUSY ...` error, when a connection's setup was refused with it.
fn busy(reason: &str) -> Option<&str> {
    let at = reason.find("-BUSY ")?;
    Some(reason[at + 1..].trim_end())
}

/// Answer every request that arrives within `wait` with `error` (no connection to send it on);
/// `false` if the slot was dropped meanwhile.
async fn requests_get(
    requests: &mut mpsc::UnboundedReceiver<Request>,
    error: Error,
    wait: Duration,
) -> bool {
    let until = time::sleep(wait);
    tokio::pin!(until);
    loop {
        tokio::select! {
            _ = &mut until => return true,
            request = requests.recv() => match request {
                Some(request) => {
                    let _ = request.reply.send(Err(error.clone()));
                }
                None => return false,
            },
        }
    }
}

/// A connection to a server: plain TCP, TLS over it (`upstream.tls`), or a Unix socket (a
/// server address `unix:/path`).
pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Unix(UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Connect to `addr`, and do the TLS handshake when the upstream asks for TLS.
async fn open_stream(addr: &str, opts: &Options) -> Result<Stream, Arc<str>> {
    if let Some(path) = addr.strip_prefix("unix:") {
        // Config validation refuses TLS with a Unix socket server.
        let unix = UnixStream::connect(path)
            .await
            .map_err(|e| Arc::<str>::from(e.to_string()))?;
        return Ok(Stream::Unix(unix));
    }
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| Arc::<str>::from(e.to_string()))?;
    tcp.set_nodelay(true)
        .map_err(|e| Arc::<str>::from(e.to_string()))?;
    let Some(tls) = &opts.tls else {
        return Ok(Stream::Plain(tcp));
    };
    let name = tls.name_for(addr)?;
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| Arc::<str>::from(format!("TLS handshake failed: {e}")))?;
    Ok(Stream::Tls(Box::new(stream)))
}

/// Open a connection, authenticate it and set it up for `flavor`, within `connect_timeout`.
/// `check`: the server is suspect (the last connection timed out); it must answer a PING (any
/// reply, `-BUSY` included, shows it alive).
async fn connect(
    addr: &str,
    opts: &Options,
    flavor: Flavor,
    check: bool,
) -> Result<Stream, Arc<str>> {
    let attempt = async {
        let mut stream = open_stream(addr, opts).await?;
        if check {
            handshake(&mut stream, &[Bytes::from_static(b"PING")]).await?;
        }
        if let Some(password) = &opts.password {
            let mut args = vec![Bytes::from_static(b"AUTH")];
            if let Some(user) = &opts.username {
                args.push(Bytes::copy_from_slice(user.as_bytes()));
            }
            args.push(Bytes::copy_from_slice(password.as_bytes()));
            let reply = handshake(&mut stream, &args).await?;
            if &reply[..] != b"+OK\r\n" {
                let text = String::from_utf8_lossy(&reply[1..reply.len().saturating_sub(2)]);
                return Err(format!("AUTH refused: {text}").into());
            }
        }
        if flavor.user != 0 {
            tenant_user(&mut stream, flavor.user).await?;
        }
        if flavor.resp3 {
            let reply = handshake(
                &mut stream,
                &[Bytes::from_static(b"HELLO"), Bytes::from_static(b"3")],
            )
            .await?;
            if reply.first() != Some(&b'%') {
                return Err(format!(
                    "HELLO 3 refused: {}",
                    String::from_utf8_lossy(&reply).trim_end()
                )
                .into());
            }
        }
        if opts.readonly {
            let reply = handshake(&mut stream, &[Bytes::from_static(b"READONLY")]).await?;
            if &reply[..] != b"+OK\r\n" {
                return Err(format!(
                    "READONLY refused: {}",
                    String::from_utf8_lossy(&reply).trim_end()
                )
                .into());
            }
        }
        if flavor.db != 0 {
            let db = Bytes::from(flavor.db.to_string());
            let reply = handshake(&mut stream, &[Bytes::from_static(b"SELECT"), db]).await?;
            if &reply[..] != b"+OK\r\n" {
                return Err(format!(
                    "SELECT {} refused: {}",
                    flavor.db,
                    String::from_utf8_lossy(&reply).trim_end()
                )
                .into());
            }
        }
        Ok(stream)
    };
    // After a timeout the server may still be busy with a slow command: its PING may take as
    // long as any request.
    let bound = match check {
        true => opts.connect_timeout + opts.request_timeout,
        false => opts.connect_timeout,
    };
    match time::timeout(bound, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "connect timed out after {}",
            humantime::format_duration(bound)
        )
        .into()),
    }
}

/// Authenticate a connection as the tenant user `id` names (see `users`), first creating the
/// user with `ACL SETUSER` if keygate manages it and the server does not know it yet (the
/// connection is still the upstream's own user then, which must be allowed to).
async fn tenant_user(stream: &mut Stream, id: u64) -> Result<(), Arc<str>> {
    let Some(user) = super::users::get(id) else {
        return Err("unknown tenant user".into());
    };
    let text = |reply: &Bytes| String::from_utf8_lossy(reply).trim_end().to_string();
    let reply = handshake(stream, &user.auth()).await?;
    if &reply[..] == b"+OK\r\n" {
        return Ok(());
    }
    let Some(setuser) = user.setuser().filter(|_| reply.starts_with(b"-WRONGPASS")) else {
        return Err(format!(
            "AUTH as tenant user {} refused: {}",
            user.name,
            text(&reply)
        )
        .into());
    };
    let created = handshake(stream, &setuser).await?;
    if &created[..] != b"+OK\r\n" {
        return Err(format!("ACL SETUSER {} refused: {}", user.name, text(&created)).into());
    }
    tracing::info!(user = %user.name, "created tenant user on the backend");
    let reply = handshake(stream, &user.auth()).await?;
    if &reply[..] != b"+OK\r\n" {
        return Err(format!(
            "AUTH as tenant user {} refused: {}",
            user.name,
            text(&reply)
        )
        .into());
    }
    Ok(())
}

/// Open a connection, send one request, read its reply, close: for topology discovery, which
/// must not depend on the pools it is about to rebuild.
pub async fn query_once(addr: &str, opts: &Options, args: &[Bytes]) -> Result<Bytes, Arc<str>> {
    let mut stream = connect(addr, opts, Flavor::default(), false).await?;
    match time::timeout(opts.request_timeout, handshake(&mut stream, args)).await {
        Ok(reply) => reply,
        Err(_) => Err("no reply in time".into()),
    }
}

/// Send one request on a fresh connection and read its reply.
async fn handshake(stream: &mut Stream, args: &[Bytes]) -> Result<Bytes, Arc<str>> {
    let mut out = BytesMut::new();
    crate::resp::encode_request(args, &mut out);
    stream
        .write_all(&out)
        .await
        .map_err(|e| Arc::<str>::from(e.to_string()))?;
    stream
        .flush()
        .await
        .map_err(|e| Arc::<str>::from(e.to_string()))?;
    let mut buf = BytesMut::with_capacity(512);
    let mut scanner = Scanner::new(16);
    loop {
        if stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| Arc::<str>::from(e.to_string()))?
            == 0
        {
            return Err("closed by server during handshake".into());
        }
        match scanner.scan(&buf) {
            Ok(Some(frame)) => return Ok(buf.split_to(frame.len).freeze()),
            Ok(None) => continue,
            Err(e) => return Err(format!("protocol error during handshake: {}", e.0).into()),
        }
    }
}

/// A connection of one client's own, used one request at a time (blocking commands) or handed
/// to a subscriber task. Dropping it closes it: whatever the server still sends is never read.
pub struct Dedicated {
    pub(super) stream: Stream,
    pub(super) input: BytesMut,
    pub(super) scanner: Scanner,
    pub(super) addr: Arc<str>,
    flavor: Flavor,
    /// The server's CLIENT ID for this connection, once asked.
    server_id: Option<i64>,
}

impl Dedicated {
    pub async fn open(addr: &Arc<str>, opts: &Options, flavor: Flavor) -> Result<Self, Error> {
        let stream =
            connect(addr, opts, flavor, false)
                .await
                .map_err(|reason| Error::BackendDown {
                    addr: addr.clone(),
                    reason,
                })?;
        Ok(Dedicated {
            stream,
            input: BytesMut::with_capacity(4096),
            scanner: Scanner::new(opts.max_reply_depth),
            server_id: None,
            addr: addr.clone(),
            flavor,
        })
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// Send one request and wait, however long it takes, for its reply. On an error the
    /// connection must be dropped: it is no longer known to be in step.
    /// The server's id for this connection (CLIENT ID, asked once).
    pub async fn server_id(&mut self) -> Option<i64> {
        if self.server_id.is_none() {
            let ask = [Bytes::from_static(b"CLIENT"), Bytes::from_static(b"ID")];
            let reply = self.call(&ask).await.ok()?;
            self.server_id = crate::resp::parse_int(reply.get(1..reply.len().checked_sub(2)?)?);
        }
        self.server_id
    }

    pub async fn call(&mut self, args: &[Bytes]) -> ReplyResult {
        let addr = self.addr.clone();
        let lost = |reason: String| Error::BackendLost {
            addr: addr.clone(),
            reason: reason.into(),
        };
        self.send(args)
            .await
            .map_err(|e| lost(e.to_string()).sent())?;
        loop {
            let frame = self
                .read_frame()
                .await
                .map_err(|reason| lost(reason.to_string()).sent())?;
            // On RESP3, a push is not the reply (see `deliver`).
            match frame {
                Ok(bytes) if is_push(&bytes) => continue,
                other => return other,
            }
        }
    }

    /// Write one request, whole (flushed: TLS may hold what it encrypted).
    pub(super) async fn send(&mut self, args: &[Bytes]) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        crate::resp::encode_request(args, &mut out);
        self.stream.write_all(&out).await?;
        self.stream.flush().await
    }

    /// The next frame the server sends on its own (a subscription's messages).
    pub async fn next_frame(&mut self) -> ReplyResult {
        let addr = self.addr.clone();
        self.read_frame()
            .await
            .map_err(|reason| Error::BackendLost { addr, reason })?
    }

    /// Read the next whole frame the server sends; an inner error for a reply too deep. A frame
    /// the connection's protocol does not allow breaks the connection (see `allowed`).
    pub(super) async fn read_frame(&mut self) -> Result<ReplyResult, Arc<str>> {
        loop {
            match self.scanner.scan(&self.input) {
                Ok(Some(frame)) => {
                    allowed(self.input[0], self.flavor.resp3)?;
                    let bytes = self.input.split_to(frame.len).freeze();
                    return Ok(if frame.too_deep {
                        Err(Error::ReplyTooDeep {
                            depth: self.scanner.max_depth(),
                        })
                    } else {
                        Ok(bytes)
                    });
                }
                Ok(None) => {}
                Err(e) => return Err(format!("protocol error in reply: {}", e.0).into()),
            }
            if self.input.capacity() - self.input.len() < 1024 {
                self.input
                    .reserve(4096.max(self.scanner.missing(self.input.len())));
            }
            match self.stream.read_buf(&mut self.input).await {
                Ok(0) => return Err("closed by server".into()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string().into()),
            }
        }
    }
}

/// A request written to the server, waiting for its reply.
struct InFlight {
    /// `None` for an `ASKING` keygate sent itself: its `+OK` is read and dropped.
    reply: Option<oneshot::Sender<ReplyResult>>,
    deadline: Instant,
}

/// Pipe requests to the server and replies back until the connection breaks.
async fn serve(
    stream: Stream,
    addr: &Arc<str>,
    opts: &Options,
    breaker: &Breaker,
    stats: &Stats,
    flavor: Flavor,
    requests: &mut mpsc::UnboundedReceiver<Request>,
) -> Closed {
    let link = Link {
        addr,
        opts,
        breaker,
        stats,
        resp3: flavor.resp3,
        scripts: flavor.scripts,
    };
    // Plain TCP splits into borrowed halves for free; TLS needs tokio's shared split.
    match stream {
        Stream::Plain(mut tcp) => {
            let (rd, wr) = tcp.split();
            pipe(rd, wr, link, requests).await
        }
        Stream::Tls(tls) => {
            let (rd, wr) = tokio::io::split(*tls);
            pipe(rd, wr, link, requests).await
        }
        Stream::Unix(mut unix) => {
            let (rd, wr) = unix.split();
            pipe(rd, wr, link, requests).await
        }
    }
}

/// What `pipe` serves: the server, its settings and shared state, and the protocol the
/// connection speaks (which decides what frames may come back).
struct Link<'a> {
    addr: &'a Arc<str>,
    opts: &'a Options,
    breaker: &'a Breaker,
    stats: &'a Stats,
    resp3: bool,
    /// The script lane: what is in flight is counted in `Stats::scripts` too.
    scripts: bool,
}

async fn pipe<R, W>(
    mut rd: R,
    mut wr: W,
    link: Link<'_>,
    requests: &mut mpsc::UnboundedReceiver<Request>,
) -> Closed
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Link {
        addr,
        opts,
        breaker,
        stats,
        resp3,
        scripts,
    } = link;
    // In flight as scripts too, on the script lane (see `Stats::scripts`).
    let also_scripts = |n: usize, add: bool| {
        if scripts && n > 0 {
            match add {
                true => stats.scripts.fetch_add(n, Ordering::AcqRel),
                false => stats.scripts.fetch_sub(n, Ordering::AcqRel),
            };
        }
    };
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let mut out = WriteQueue::new();
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut scanner = Scanner::new(opts.max_reply_depth);
    let mut unused = false;
    // One timer for the oldest request in flight; re-armed only when that request changes.
    let timeout = time::sleep(Duration::from_secs(3600));
    tokio::pin!(timeout);
    let mut armed_for: Option<Instant> = None;
    // When the server last sent anything. A server still sending (a large reply, a long
    // pipeline's replies) is busy, not gone: a request times out only once the server has been
    // silent for `request_timeout`, so one client's appetite for large replies never makes the
    // requests behind them time out, nor counts against the server's breaker.
    let mut last_heard = Instant::now();

    let broken = loop {
        if unused && inflight.is_empty() && !out.wants_write() {
            return Closed::Unused;
        }
        match inflight.front() {
            Some(oldest) if armed_for != Some(oldest.deadline) => {
                timeout.as_mut().reset(oldest.deadline);
                armed_for = Some(oldest.deadline);
            }
            _ => {}
        }
        let spare = input.capacity() - input.len();
        if spare < READ_CHUNK / 4 {
            input.reserve(READ_CHUNK.max(scanner.missing(input.len())));
        }
        tokio::select! {
            biased;
            read = rd.read_buf(&mut input) => match read {
                Ok(0) => break Error::BackendLost { addr: addr.clone(), reason: "closed by server".into() },
                Ok(_) => {
                    last_heard = Instant::now();
                    let before = inflight.len();
                    let delivered = deliver(&mut input, &mut scanner, &mut inflight, opts, stats, resp3, last_heard);
                    also_scripts(before - inflight.len(), false);
                    if let Err(reason) = delivered {
                        break Error::BackendLost { addr: addr.clone(), reason };
                    }
                    breaker.success();
                }
                Err(e) => break Error::BackendLost { addr: addr.clone(), reason: e.to_string().into() },
            },
            written = out.write_to(&mut wr), if out.wants_write() => {
                if let Err(e) = written {
                    break Error::BackendLost { addr: addr.clone(), reason: e.to_string().into() };
                }
            }
            request = requests.recv(), if !unused && out.len() < WRITE_HIGH_WATER => match request {
                Some(request) => {
                    let now = Instant::now();
                    if inflight.is_empty() {
                        // Silence while nothing was asked is not the server's fault.
                        last_heard = now;
                    }
                    let deadline = now + opts.request_timeout;
                    let before = inflight.len();
                    accept(request, deadline, &mut out, &mut inflight);
                    let mut take_all = |out: &mut WriteQueue, inflight: &mut VecDeque<InFlight>| {
                        while out.len() < WRITE_HIGH_WATER {
                            match requests.try_recv() {
                                Ok(request) => accept(request, deadline, out, inflight),
                                Err(_) => break,
                            }
                        }
                    };
                    take_all(&mut out, &mut inflight);
                    // One turn of the worker's loop more before writing: the runtime polls its
                    // sockets once (without sleeping) and runs the clients that became ready,
                    // and their requests go out in this same write. A worker with one client
                    // has nobody to wait for.
                    if crate::worker::clients_here() > 1 {
                        tokio::task::yield_now().await;
                        take_all(&mut out, &mut inflight);
                    }
                    stats.sent(inflight.len() - before);
                    also_scripts(inflight.len() - before, true);
                }
                None => unused = true,
            },
            // No timeout on the script lane: a script takes as long as it takes, as on a Redis
            // connection (SCRIPT KILL ends it), like a blocking command.
            _ = &mut timeout, if !inflight.is_empty() && !scripts => {
                let silent_until = last_heard + opts.request_timeout;
                if silent_until > Instant::now() {
                    // Heard from lately: wait until it has been silent for a whole timeout.
                    timeout.as_mut().reset(silent_until);
                    continue;
                }
                break Error::BackendTimeout { addr: addr.clone(), after: opts.request_timeout };
            }
        }
    };
    let reason: Arc<str> = broken.to_string().into();
    debug!(backend = %addr, in_flight = inflight.len(), %reason, "poisoning backend connection");
    stats.lost(inflight.len());
    also_scripts(inflight.len(), false);
    // Each was written, or queued to be: it may have run.
    let sent = broken.clone().sent();
    for pending in inflight.drain(..) {
        if let Some(reply) = pending.reply {
            let _ = reply.send(Err(sent.clone()));
        }
    }
    match broken {
        Error::BackendTimeout { .. } => Closed::TimedOut(reason),
        _ => Closed::Broken(reason),
    }
}

fn accept(
    request: Request,
    deadline: Instant,
    out: &mut WriteQueue,
    inflight: &mut VecDeque<InFlight>,
) {
    // Every request accepted is written, even if whoever sent it no longer waits for the reply:
    // skipping those would reorder effects (a MULTI keygate sends for a pinned connection is
    // not awaited, yet what follows depends on it).
    if request.asking {
        out.push_request(&[Bytes::from_static(b"ASKING")]);
        inflight.push_back(InFlight {
            reply: None,
            deadline,
        });
    }
    out.push_request(&request.args);
    inflight.push_back(InFlight {
        reply: Some(request.reply),
        deadline,
    });
}

/// Hand every complete reply in `input` to the request it answers, oldest first.
///
/// A frame the connection's protocol does not allow (a push or an attribute on RESP2) means the
/// server and keygate disagree about the stream: the connection is poisoned. On RESP3 a push is
/// out-of-band data no request asked for; it is dropped, never matched to a request.
fn deliver(
    input: &mut BytesMut,
    scanner: &mut Scanner,
    inflight: &mut VecDeque<InFlight>,
    opts: &Options,
    stats: &Stats,
    resp3: bool,
    now: Instant,
) -> Result<(), Arc<str>> {
    // One clock reading (`now`) for every reply in this read, and the figures added to the
    // shared counters once per read, not once per reply.
    let mut timings = Timings::default();
    let outcome = loop {
        let frame = match scanner.scan(input) {
            Ok(Some(frame)) => frame,
            Ok(None) => break Ok(()),
            Err(e) => break Err(format!("protocol error in reply: {}", e.0).into()),
        };
        if let Err(reason) = allowed(input[0], resp3) {
            break Err(reason.into());
        }
        let bytes = input.split_to(frame.len).freeze();
        if is_push(&bytes) {
            continue;
        }
        let Some(pending) = inflight.pop_front() else {
            break Err("reply with no request in flight".into());
        };
        // Every request of a batch has the same deadline: it was written at deadline - timeout.
        let sent = pending.deadline - opts.request_timeout;
        timings.add(now.saturating_duration_since(sent));
        let reply = if frame.too_deep {
            Err(Error::ReplyTooDeep {
                depth: opts.max_reply_depth,
            })
        } else {
            Ok(bytes)
        };
        if let Some(sender) = pending.reply {
            let _ = sender.send(reply);
        }
    };
    stats.answered(&timings);
    outcome
}

/// Whether a frame of type `kind` may come back on a connection of this protocol: RESP2 has
/// no push (`>`) nor attribute (`|`) frames, so one there means the stream cannot be trusted.
fn allowed(kind: u8, resp3: bool) -> Result<(), &'static str> {
    match kind {
        b'>' if !resp3 => Err("a RESP3 push frame on a RESP2 connection"),
        b'|' if !resp3 => Err("a RESP3 attribute frame on a RESP2 connection"),
        _ => Ok(()),
    }
}

/// A RESP3 push frame: data the server sends on its own, never a request's reply.
fn is_push(frame: &[u8]) -> bool {
    frame.first() == Some(&b'>')
}

/// Exponential backoff with jitter: each delay is drawn from [d/2, d], d doubling up to `max`.
struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            current: base,
        }
    }

    fn reset(&mut self) {
        self.current = self.base;
    }

    fn next(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = d / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(80));
        let delays: Vec<_> = (0..6).map(|_| b.next()).collect();
        for (d, cap) in delays.iter().zip([10, 20, 40, 80, 80, 80]) {
            assert!(*d >= Duration::from_millis(cap / 2) && *d <= Duration::from_millis(cap));
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(10));
    }
}
