//! A subscribed client's own connection to a server: (un)subscribe requests go in, and every
//! frame the server sends comes out, in the order it was sent, as events.
//!
//! A request's reply is one frame (an error, or the `pong` of a PING in RESP2 subscribed mode)
//! or, for SUBSCRIBE and its kin, one confirmation per channel: those are gathered into one
//! `Event::Reply`, so each request gets exactly one reply event. Messages (`message`,
//! `pmessage`, `smessage`) are `Event::Message`s. An UNSUBSCRIBE without channels is answered
//! with one confirmation per channel it drops (or one if there were none), so the task keeps the
//! sets of channels, patterns and shard channels the connection holds, from the confirmations.
//!
//! A subscriber that leaves (its client disconnects, RESETs, or drops its last subscription)
//! must be gone from the server before keygate answers anything that counts subscribers: the
//! task sends `RESET` and waits for its `+RESET` before it closes the connection, and until then
//! it is counted in `Leaving`, which PUBLISH and PUBSUB wait on (at most `request_timeout`).
//!
//! Nothing is buffered without bound: when the client does not take its events, the task stops
//! reading, the server's output buffer for this connection fills, and the server closes it
//! (`client-output-buffer-limit pubsub`), which ends the task and disconnects the client.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tracing::debug;

use super::connection::Dedicated;
use super::{Flavor, Options};
use crate::error::Error;
use crate::resp::value::{self, Value};

/// What the connection sent.
#[derive(Debug)]
pub enum Event {
    /// The reply to the oldest request not yet answered: its frames, and whether the
    /// connection is still subscribed to anything afterwards.
    Reply {
        frames: Result<Vec<Bytes>, Error>,
        subscribed: bool,
    },
    /// A published message.
    Message(Bytes),
}

/// How many events may wait for the client before the task stops reading.
const EVENTS: usize = 256;

/// Subscriber connections being closed whose server has not yet confirmed that their
/// subscriptions are gone. One per proxy, shared by every server's subscribers.
#[derive(Default)]
pub struct Leaving {
    count: AtomicUsize,
    none: Notify,
    /// Subscriber connections open (leaving or not).
    open: AtomicUsize,
    /// Each subscribed client's "input": set when its socket became readable (data, or its
    /// disconnect) and the session has not yet taken it (see `session::flagged`). A client that
    /// disconnected before a PUBLISH arrived is woken before the PUBLISH's client is, so this
    /// is set by then: PUBLISH waits for it to become a leaving subscriber, or none.
    inputs: Mutex<Vec<Arc<AtomicBool>>>,
}

impl Leaving {
    /// Wait until no subscribed client has input keygate has not taken yet and no subscriber is
    /// leaving, or `bound` has passed.
    pub async fn settled(&self, bound: Duration) {
        let deadline = tokio::time::Instant::now() + bound;
        let mut turns = 0u32;
        loop {
            let none = self.none.notified();
            let unread = {
                let inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
                inputs.iter().any(|input| input.load(Ordering::Acquire))
            };
            if !unread && self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            if unread {
                // The sessions concerned are woken and run soon: give them the CPU.
                turns += 1;
                match turns {
                    0..=16 => tokio::task::yield_now().await,
                    _ => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            } else {
                let _ = tokio::time::timeout_at(deadline, none).await;
            }
        }
    }

    /// Are there subscribers whose count PUBLISH or PUBSUB may report?
    pub fn any(&self) -> bool {
        self.open.load(Ordering::Acquire) > 0 || self.count.load(Ordering::Acquire) > 0
    }
}

/// One leaving subscriber, counted in `Leaving` until dropped (by the task once the server
/// confirmed, or wherever the message carrying it is dropped if the task is gone).
struct Farewell(Arc<Leaving>);

impl Farewell {
    fn new(leaving: Arc<Leaving>) -> Farewell {
        leaving.count.fetch_add(1, Ordering::AcqRel);
        Farewell(leaving)
    }
}

impl Drop for Farewell {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none.notify_waiters();
        }
    }
}

/// What the client's side asks of the task.
enum Ask {
    Request(Vec<Bytes>),
    /// Unsubscribe from everything, wait for the server to confirm, close.
    Leave(Farewell),
}

/// Handle to a subscriber connection's task. Dropping it makes the task leave: RESET, then
/// close (see the module's doc).
pub struct Subscriber {
    pub addr: Arc<str>,
    requests: mpsc::UnboundedSender<Ask>,
    pub events: mpsc::Receiver<Event>,
    /// The subscribed client's input flag (see `Leaving::inputs`).
    pub input: Arc<AtomicBool>,
    leaving: Arc<Leaving>,
    task: JoinHandle<()>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        // Counted as leaving before its input flag goes, and open until both are settled: a
        // PUBLISH never sees neither.
        if !self.task.is_finished() {
            // If the task is gone by now, the message (and the count with it) is dropped.
            let _ = self
                .requests
                .send(Ask::Leave(Farewell::new(self.leaving.clone())));
        }
        let mut inputs = self
            .leaving
            .inputs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        inputs.retain(|input| !Arc::ptr_eq(input, &self.input));
        drop(inputs);
        self.leaving.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Subscriber {
    pub(super) fn start(
        addr: Arc<str>,
        opts: Arc<Options>,
        flavor: Flavor,
        permit: OwnedSemaphorePermit,
        leaving: Arc<Leaving>,
    ) -> Subscriber {
        let (requests, mut rx) = mpsc::unbounded_channel();
        let (tx, events) = mpsc::channel(EVENTS);
        let task_addr = addr.clone();
        let task = tokio::spawn(async move {
            let _permit = permit;
            let addr = task_addr;
            let conn = match Dedicated::open(&addr, &opts, flavor).await {
                Ok(conn) => conn,
                Err(e) => {
                    // The requests sent so far get the error; the closed channel tells the rest.
                    rx.close();
                    while let Some(_request) = rx.recv().await {
                        let event = Event::Reply {
                            frames: Err(e.clone()),
                            subscribed: false,
                        };
                        if tx.send(event).await.is_err() {
                            break;
                        }
                    }
                    return;
                }
            };
            if let Err(reason) = serve(conn, rx, tx, opts.request_timeout).await {
                debug!(backend = %addr, %reason, "subscriber connection closed");
            }
        });
        leaving.open.fetch_add(1, Ordering::AcqRel);
        let input = Arc::new(AtomicBool::new(false));
        leaving
            .inputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(input.clone());
        Subscriber {
            addr,
            requests,
            events,
            input,
            leaving,
            task,
        }
    }

    /// Send a request; its reply comes as the next unclaimed `Event::Reply`.
    pub fn send(&self, args: Vec<Bytes>) -> bool {
        self.requests.send(Ask::Request(args)).is_ok()
    }
}

/// The three kinds of subscription a connection holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Channel,
    Pattern,
    Shard,
}

/// What a sent request waits for.
struct Expect {
    /// Confirmations still to come; `None` for "until none of `all` is left" (an UNSUBSCRIBE
    /// without arguments), or for a request answered by a single frame when `all` is `None`.
    left: Option<usize>,
    all: Option<Kind>,
    frames: Vec<Bytes>,
}

fn expect(args: &[Bytes]) -> Expect {
    let name = args[0].to_ascii_lowercase();
    let kind = match &name[..] {
        b"subscribe" | b"unsubscribe" => Some(Kind::Channel),
        b"psubscribe" | b"punsubscribe" => Some(Kind::Pattern),
        b"ssubscribe" | b"sunsubscribe" => Some(Kind::Shard),
        _ => None,
    };
    match kind {
        Some(kind) if args.len() == 1 => Expect {
            left: None,
            all: Some(kind),
            frames: Vec::new(),
        },
        Some(_) => Expect {
            left: Some(args.len() - 1),
            all: None,
            frames: Vec::new(),
        },
        None => Expect {
            left: None,
            all: None,
            frames: Vec::new(),
        },
    }
}

#[derive(Default)]
struct Held {
    channels: HashSet<Bytes>,
    patterns: HashSet<Bytes>,
    shards: HashSet<Bytes>,
}

impl Held {
    fn set(&mut self, kind: Kind) -> &mut HashSet<Bytes> {
        match kind {
            Kind::Channel => &mut self.channels,
            Kind::Pattern => &mut self.patterns,
            Kind::Shard => &mut self.shards,
        }
    }

    fn any(&self) -> bool {
        !(self.channels.is_empty() && self.patterns.is_empty() && self.shards.is_empty())
    }
}

/// A frame's role: a message, a confirmation (changing what is held), or anything else.
enum Role {
    Message,
    Confirm {
        kind: Kind,
        subscribe: bool,
        channel: Option<Bytes>,
    },
    Other,
}

fn role(frame: &Bytes) -> Role {
    if !matches!(frame.first(), Some(b'*' | b'>')) {
        return Role::Other;
    }
    let Some(Value::Array(Some(items))) = value::parse(frame) else {
        return Role::Other;
    };
    let Some(Value::Bulk(Some(name))) = items.first() else {
        return Role::Other;
    };
    let channel = match items.get(1) {
        Some(Value::Bulk(channel)) => channel.clone(),
        _ => None,
    };
    let (kind, subscribe) = match &name.to_ascii_lowercase()[..] {
        b"message" | b"pmessage" | b"smessage" => return Role::Message,
        b"subscribe" => (Kind::Channel, true),
        b"unsubscribe" => (Kind::Channel, false),
        b"psubscribe" => (Kind::Pattern, true),
        b"punsubscribe" => (Kind::Pattern, false),
        b"ssubscribe" => (Kind::Shard, true),
        b"sunsubscribe" => (Kind::Shard, false),
        _ => return Role::Other,
    };
    Role::Confirm {
        kind,
        subscribe,
        channel,
    }
}

async fn serve(
    mut conn: Dedicated,
    mut requests: mpsc::UnboundedReceiver<Ask>,
    events: mpsc::Sender<Event>,
    bound: Duration,
) -> Result<(), String> {
    let mut waiting: VecDeque<Expect> = VecDeque::new();
    let mut held = Held::default();
    loop {
        let frame = tokio::select! {
            request = requests.recv() => match request {
                Some(Ask::Request(args)) => {
                    conn.send(&args).await.map_err(|e| e.to_string())?;
                    waiting.push_back(expect(&args));
                    continue;
                }
                Some(Ask::Leave(farewell)) => {
                    if held.any() || !waiting.is_empty() {
                        leave(&mut conn, bound).await;
                    }
                    drop(farewell);
                    return Ok(());
                }
                None => return Ok(()),
            },
            frame = conn.read_frame() => frame.map_err(|r| r.to_string())?,
        };
        let frame = match frame {
            Ok(frame) => frame,
            // Too deep to forward: the request it answers gets the error.
            Err(e) => {
                let Some(_) = waiting.pop_front() else {
                    return Err("unexpected frame too deep".into());
                };
                let event = Event::Reply {
                    frames: Err(e),
                    subscribed: held.any(),
                };
                events.send(event).await.map_err(|_| "client gone")?;
                continue;
            }
        };
        let role = role(&frame);
        if let Role::Message = role {
            events
                .send(Event::Message(frame))
                .await
                .map_err(|_| "client gone")?;
            continue;
        }
        let Some(front) = waiting.front_mut() else {
            return Err("a reply with no request waiting for it".into());
        };
        let done = match role {
            Role::Confirm {
                kind,
                subscribe,
                channel,
            } => {
                if let Some(channel) = channel {
                    if subscribe {
                        held.set(kind).insert(channel);
                    } else {
                        held.set(kind).remove(&channel);
                    }
                }
                front.frames.push(frame);
                match (&mut front.left, front.all) {
                    (Some(left), _) => {
                        *left = left.saturating_sub(1);
                        *left == 0
                    }
                    (None, Some(kind)) => held.set(kind).is_empty(),
                    (None, None) => true,
                }
            }
            _ => {
                front.frames.push(frame);
                true
            }
        };
        if done {
            let front = waiting.pop_front().expect("front exists");
            let event = Event::Reply {
                frames: Ok(front.frames),
                subscribed: held.any(),
            };
            events.send(event).await.map_err(|_| "client gone")?;
        }
    }
}

/// Drop every subscription and wait (at most `bound`) for the server to say so: `RESET`'s
/// reply comes after it has unsubscribed the connection from everything.
async fn leave(conn: &mut Dedicated, bound: Duration) {
    let reset = [Bytes::from_static(b"RESET")];
    let confirmed = async {
        conn.send(&reset).await.ok()?;
        loop {
            match conn.read_frame().await {
                Ok(Ok(frame)) if &frame[..] == b"+RESET\r\n" => return Some(()),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    };
    let _ = tokio::time::timeout(bound, confirmed).await;
}
