//! MONITOR and CLIENT TRACKING: frames the servers push on their own, from a connection of the
//! client's own to every primary (see backend::feed), merged for the client.
//!
//! CLIENT TRACKING: the client's reads run on shared connections, so the server cannot know
//! which keys *this* client read. keygate's tracking connections are therefore always BCAST (a
//! tenant's: with its own prefix), hearing of every key written, and keygate keeps the tracking
//! table itself: in the default mode it remembers the keys each tracking client read (its
//! read-only commands' keys; with OPTIN only after CLIENT CACHING YES, with OPTOUT unless after
//! CLIENT CACHING NO) and passes on an invalidation only for those, forgetting each key once
//! invalidated, as Redis does; NOLOOP drops the invalidations of the client's own writes. BCAST
//! clients get every invalidation under their prefixes. Invalidations go to the client itself
//! (RESP3 push frames) or, with REDIRECT (keygate's client ids), to another keygate client: as a
//! push if it speaks RESP3, as a `message` on `__redis__:invalidate` if it is a RESP2 subscriber,
//! as Redis delivers them. A script's declared keys are tracked when it runs a read-only
//! command (as keygate reads EVAL's body: see `track`); keys it reads without declaring them
//! are not (keygate cannot see them). Commands inside MULTI are tracked as they are queued.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Handled, Session};
use crate::backend::{Feed, Flavor};
use crate::clients::TrackedKeys;
use crate::command::script::Calls;
use crate::command::{flags, Command};
use crate::dispatch::Reply;
use crate::error::Error;
use crate::monitor::Watcher;
use crate::resp::{self, value};
use crate::write_queue::WriteQueue;

/// A client's CLIENT TRACKING: its options, and the invalidation feed.
pub(super) struct Tracking {
    feed: Feed,
    bcast: bool,
    optin: bool,
    optout: bool,
    noloop: bool,
    /// As the client gave them (without a tenant's prefix).
    prefixes: Vec<Bytes>,
    /// The primaries the feed covers, and word of topology swaps: a new primary would write
    /// keys the feed never hears of.
    primaries: Vec<Arc<str>>,
    swapped: watch::Receiver<()>,
    /// Word of `tracking-table-max-keys` changes.
    bound: watch::Receiver<usize>,
    /// REDIRECT: the keygate client that gets the invalidations.
    redirect: Option<u64>,
    /// Default mode: the keys (as the server names them) the client read since their last
    /// invalidation.
    keys: Table,
    /// NOLOOP: the client's own writes whose invalidations are still to come, per key: how many,
    /// and when the last was sent. keygate cannot know which client's write the server
    /// invalidates a key for, so it takes an invalidation within `OWN_WRITE_WINDOW` of the
    /// client's own write of that key for that write's.
    own_writes: HashMap<Bytes, (u32, Instant)>,
    /// CLIENT CACHING YES/NO, for the command right after it.
    caching: Option<bool>,
    /// The keys (as the server names them) of the client's commands whose replies are still
    /// to come, by request number, and how many of those commands name each key. Redis sends
    /// the invalidation of a key a client's command touches after that command's reply; the
    /// feed may bring it sooner, so it waits in `deferred` (server name, client name) until the
    /// reply is out. Commands inside MULTI touch their keys at EXEC (`multi_keys`). Bounded:
    /// by the client's pipeline, and each key waits once.
    in_flight: VecDeque<(u64, Vec<Bytes>)>,
    in_flight_keys: HashMap<Bytes, u32>,
    multi_keys: Vec<Bytes>,
    /// Messages waiting, each its keys (server name, client name).
    deferred: VecDeque<Vec<(Bytes, Bytes)>>,
    /// The open MULTI's written keys; and the keys it reads after writing them, whose one
    /// invalidation from EXEC's own write is not the client's to hear (Redis tracks the read
    /// after the write ran), skipped until EXEC's reply (`exec_request`) is out.
    multi_written: HashSet<Bytes>,
    exec_skip: HashSet<Bytes>,
    exec_request: Option<u64>,
    /// The same for FLUSHALL/FLUSHDB, whose invalidation names no key: the requests in flight
    /// (`multi_flush`: one queued in MULTI), and whether their invalidation waits.
    flushes: VecDeque<u64>,
    multi_flush: bool,
    flush_deferred: bool,
}

/// How many BCAST messages may wait for replies (see `Tracking::deferred`).
const DEFERRED_MAX: usize = 1024;

/// How long after a NOLOOP client's own write of a key an invalidation of it is taken for that
/// write's (the server sends it as it runs the write: on loopback, well under a millisecond).
const OWN_WRITE_WINDOW: Duration = Duration::from_millis(500);

/// A tracking client's keys, counted in the proxy's `TrackedKeys` while it holds them.
struct Table {
    keys: HashSet<Bytes>,
    counted: Arc<TrackedKeys>,
}

impl Table {
    fn new(counted: Arc<TrackedKeys>) -> Table {
        Table {
            keys: HashSet::new(),
            counted,
        }
    }

    fn insert(&mut self, key: Bytes) {
        if self.keys.insert(key) {
            self.counted.added(1);
        }
    }

    fn remove(&mut self, key: &[u8]) -> bool {
        let removed = self.keys.remove(key);
        if removed {
            self.counted.removed(1);
        }
        removed
    }

    fn clear(&mut self) {
        self.counted.removed(self.keys.len());
        self.keys.clear();
    }

    /// Any one key, taken out (eviction past `tracking-table-max-keys`).
    fn evict(&mut self) -> Option<Bytes> {
        let key = self.keys.iter().next()?.clone();
        self.remove(&key);
        Some(key)
    }
}

impl Tracking {
    /// Request `request`, whose reply is still to come, touches `keys`.
    fn touching(&mut self, request: u64, keys: Vec<Bytes>) {
        if keys.is_empty() {
            return;
        }
        for key in &keys {
            *self.in_flight_keys.entry(key.clone()).or_default() += 1;
        }
        self.in_flight.push_back((request, keys));
    }

    /// The replies up to request `request` are out: their keys are no longer in flight.
    fn answered(&mut self, request: u64) {
        while self.in_flight.front().is_some_and(|(r, _)| *r <= request) {
            let (_, keys) = self.in_flight.pop_front().expect("front exists");
            for key in keys {
                if let Some(n) = self.in_flight_keys.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        self.in_flight_keys.remove(&key);
                    }
                }
            }
        }
        while self.flushes.front().is_some_and(|r| *r <= request) {
            self.flushes.pop_front();
        }
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        self.counted.removed(self.keys.len());
    }
}

/// What a tracking client's feed brought.
pub(super) enum TrackingEvent {
    /// An invalidation push, or the feed's end (an error, or closed).
    Push(Option<Result<Bytes, Error>>),
    /// `tracking-table-max-keys` changed: evict what is over it.
    Bound,
    /// A new topology was swapped in: the feed may no longer cover every primary.
    Swapped,
}

/// The next event of a tracking client's feed (only polled while it tracks).
pub(super) async fn next_tracking_event(tracking: Option<&mut Tracking>) -> TrackingEvent {
    let Some(tracking) = tracking else {
        return std::future::pending().await;
    };
    tokio::select! {
        push = tracking.feed.feed.recv() => TrackingEvent::Push(push),
        Ok(()) = tracking.swapped.changed() => TrackingEvent::Swapped,
        Ok(()) = tracking.bound.changed() => TrackingEvent::Bound,
    }
}

/// A monitoring client's lines: keygate's own for what clients send (see crate::monitor), and
/// from every primary's MONITOR the lines of commands scripts call (`[0 lua] ...`), which only
/// the servers see.
pub(super) struct Monitor {
    own: Watcher,
    servers: Feed,
}

/// MONITOR's next line (only polled while the client monitors).
pub(super) async fn next_line(monitor: Option<&mut Monitor>) -> Option<Result<Bytes, Error>> {
    let Some(monitor) = monitor else {
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            own = monitor.own.recv() => return Some(Ok(own)),
            line = monitor.servers.feed.recv() => match line {
                Some(Ok(line)) if from_script(&line) => return Some(Ok(line)),
                Some(Ok(_)) => continue,
                other => return other,
            },
        }
    }
}

/// Cancelled once a monitoring client fell `monitor::BEHIND` bytes behind (watched even while
/// its output is full: it is disconnected then, not when it reads again).
pub(super) fn monitor_lagged(monitor: Option<&Monitor>) -> Option<CancellationToken> {
    monitor.map(|monitor| monitor.own.lagged())
}

/// A server's MONITOR line for a command a script called: `+<time> [<db> lua] ...`.
fn from_script(line: &[u8]) -> bool {
    let Some(open) = line.iter().position(|&c| c == b'[') else {
        return false;
    };
    let Some(close) = line[open..].iter().position(|&c| c == b']') else {
        return false;
    };
    line[open..open + close].ends_with(b" lua")
}

impl Session {
    /// MONITOR: from now on, the lines of every command keygate's clients send, and of those
    /// scripts call on every primary. As in Redis, MONITOR on a client already monitoring is
    /// ignored, without a reply.
    pub(super) fn monitor(&mut self) -> Result<Handled, Error> {
        if self.monitor.is_some() {
            return Ok(Handled::quiet());
        }
        let (servers, confirmed) =
            self.feed(Flavor::default(), vec![Bytes::from_static(b"MONITOR")])?;
        self.monitor = Some(Monitor {
            own: self.proxy.monitors.watch(),
            servers,
        });
        Ok(Handled::reply(confirmed))
    }

    /// Show a command this client sent to those monitoring, as Redis would: not if it is
    /// refused before it runs (unknown, wrong arity) nor an administrative one.
    pub(super) fn show(&self, cmd: &Command) {
        let Some(spec) = cmd.spec else { return };
        if spec.arity_ok(cmd.args.len()) && !spec.has(flags::ADMIN) {
            // A SELECT the server accepted counts from the next command on.
            let db = self
                .pending_select
                .as_ref()
                .and_then(|db| u32::try_from(db.load(std::sync::atomic::Ordering::Relaxed)).ok())
                .unwrap_or(self.flavor.db);
            self.proxy.monitors.show(db, &self.peer, &cmd.args);
        }
    }

    /// A feed over every primary, each connection set up with `setup`; the reply is `+OK` once
    /// every server accepted, else the first refusal.
    fn feed(&self, flavor: Flavor, setup: Vec<Bytes>) -> Result<(Feed, Reply), Error> {
        let mut feed = Feed::default();
        let reply = self.feed_into(&mut feed, flavor, setup)?;
        Ok((feed, reply))
    }

    /// More connections, one per primary, set up with `setup`, merged into `feed`; the reply
    /// as for `feed`.
    fn feed_into(
        &self,
        feed: &mut Feed,
        flavor: Flavor,
        setup: Vec<Bytes>,
    ) -> Result<Reply, Error> {
        let topology = self.proxy.topology.load();
        let confirmations = topology
            .backends
            .iter()
            .map(|backend| backend.feed(feed, flavor, setup.clone()))
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Reply::Later(Box::pin(async move {
            for confirmed in confirmations {
                match confirmed.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return e.to_reply(),
                    Err(_) => return Error::Internal("a feed connection task failed").to_reply(),
                }
            }
            resp::simple("OK")
        })))
    }

    /// CLIENT TRACKING ON|OFF [REDIRECT id] [PREFIX p ...] [BCAST] [OPTIN] [OPTOUT] [NOLOOP].
    pub(super) fn tracking(&mut self, args: &[Bytes]) -> Result<Handled, Error> {
        let Some((switch, options)) = args.split_first() else {
            return Err(Error::WrongArity("client|tracking"));
        };
        let on = if switch.eq_ignore_ascii_case(b"on") {
            true
        } else if switch.eq_ignore_ascii_case(b"off") {
            false
        } else {
            return Err(Error::Invalid("syntax error"));
        };
        let (mut bcast, mut optin, mut optout, mut noloop) = (false, false, false, false);
        let mut prefixes: Vec<Bytes> = Vec::new();
        let mut redirect = None;
        let mut rest = options.iter();
        while let Some(option) = rest.next() {
            match option.to_ascii_lowercase().as_slice() {
                b"bcast" => bcast = true,
                b"optin" => optin = true,
                b"optout" => optout = true,
                b"noloop" => noloop = true,
                b"prefix" => {
                    prefixes.push(rest.next().ok_or(Error::Invalid("syntax error"))?.clone())
                }
                b"redirect" => {
                    let id = rest.next().ok_or(Error::Invalid("syntax error"))?;
                    let id = crate::resp::parse_int(id)
                        .ok_or(Error::Invalid("value is not an integer or out of range"))?;
                    let exists = u64::try_from(id)
                        .ok()
                        .and_then(|id| self.proxy.clients.get(id))
                        .is_some_and(|c| self.visible(&c));
                    if !exists {
                        return Err(Error::Invalid(
                            "The client ID you want redirect to does not exist",
                        ));
                    }
                    redirect = Some(id as u64);
                }
                _ => return Err(Error::Invalid("syntax error")),
            }
        }
        if !on {
            self.tracking = None;
            return Handled::ready(resp::simple("OK"));
        }
        if optin && optout {
            return Err(Error::Invalid(
                "You can't specify both OPTIN mode and OPTOUT mode",
            ));
        }
        if bcast && (optin || optout) {
            return Err(Error::Invalid(
                "OPTIN and OPTOUT are not compatible with BCAST",
            ));
        }
        if !bcast && !prefixes.is_empty() {
            return Err(Error::Invalid(
                "PREFIX option requires BCAST mode to be enabled",
            ));
        }
        for (i, a) in prefixes.iter().enumerate() {
            for b in &prefixes[i + 1..] {
                if a.starts_with(b) || b.starts_with(a) {
                    return Err(Error::Text(format!(
                        "ERR Prefix '{}' overlaps with another provided prefix '{}'. Prefixes for a single client must not overlap.",
                        String::from_utf8_lossy(a),
                        String::from_utf8_lossy(b)
                    )));
                }
            }
        }
        if let Some(current) = &mut self.tracking {
            if current.bcast != bcast {
                return Err(Error::Invalid("You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling it with a different mode."));
            }
            // As Redis, BCAST prefixes are added to those the client has, none overlapping;
            // each addition is one more connection per primary in the feed, for those alone.
            let added: Vec<Bytes> = prefixes
                .iter()
                .filter(|p| !current.prefixes.contains(p))
                .cloned()
                .collect();
            // BCAST without PREFIX is the empty prefix: every key.
            let existing = match current.prefixes.is_empty() {
                true => vec![Bytes::new()],
                false => current.prefixes.clone(),
            };
            for new in &added {
                if let Some(old) = existing
                    .iter()
                    .find(|old| old.starts_with(new) || new.starts_with(old))
                {
                    return Err(Error::Text(format!(
                        "ERR Prefix '{}' overlaps with an existing prefix '{}'. Prefixes for a single client must not overlap.",
                        String::from_utf8_lossy(new),
                        String::from_utf8_lossy(old)
                    )));
                }
            }
            // As Redis: the new options replace the old; the keys tracked stay.
            (current.optin, current.optout, current.noloop) = (optin, optout, noloop);
            current.redirect = redirect;
            if added.is_empty() {
                return Handled::ready(resp::simple("OK"));
            }
            let mut feed = std::mem::take(&mut current.feed);
            let setup = bcast_setup(self.tenant_prefix(), &added);
            let flavor = Flavor {
                resp3: true,
                ..self.flavor
            };
            let reply = self.feed_into(&mut feed, flavor, setup);
            let current = self.tracking.as_mut().expect("tracking, as above");
            current.feed = feed;
            current.prefixes.extend(added);
            return Ok(Handled::reply(reply?));
        }
        let setup = bcast_setup(self.tenant_prefix(), &prefixes);
        let swapped = self.proxy.topology_swapped.subscribe();
        let primaries = self.primaries();
        // Invalidations come as push frames: the feed speaks RESP3, whatever the client does.
        let flavor = Flavor {
            resp3: true,
            ..self.flavor
        };
        let (feed, confirmed) = self.feed(flavor, setup)?;
        self.tracking = Some(Tracking {
            primaries,
            swapped,
            feed,
            bcast,
            optin,
            optout,
            noloop,
            prefixes,
            redirect,
            keys: Table::new(self.proxy.tracked_keys.clone()),
            bound: self.proxy.tracked_keys.bound_changes(),
            own_writes: HashMap::new(),
            caching: None,
            in_flight: VecDeque::new(),
            in_flight_keys: HashMap::new(),
            multi_keys: Vec::new(),
            deferred: VecDeque::new(),
            multi_written: HashSet::new(),
            exec_skip: HashSet::new(),
            exec_request: None,
            flushes: VecDeque::new(),
            multi_flush: false,
            flush_deferred: false,
        });
        Ok(Handled::reply(confirmed))
    }

    /// The primaries' addresses now.
    fn primaries(&self) -> Vec<Arc<str>> {
        let topology = self.proxy.topology.load();
        topology.backends.iter().map(|b| b.addr.clone()).collect()
    }

    /// After a topology swap: does the tracking feed still cover every primary? If not, the
    /// client is disconnected, so its library drops its cache instead of trusting it.
    pub(super) fn tracking_still_covers(&self) -> bool {
        self.tracking
            .as_ref()
            .is_none_or(|t| t.primaries == self.primaries())
    }

    /// CLIENT CACHING YES|NO: checked as Redis checks it; keygate's invalidations cover every key
    /// anyway.
    pub(super) fn caching(&mut self, args: &[Bytes]) -> Result<Handled, Error> {
        if args.len() != 3 {
            return Err(Error::WrongArity("client|caching"));
        }
        // Redis's order of checks: tracking at all, then the argument, then the mode.
        let Some(t) = &mut self.tracking else {
            return Err(Error::Invalid("CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled"));
        };
        if args[2].eq_ignore_ascii_case(b"yes") {
            if !t.optin {
                return Err(Error::Invalid(
                    "CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.",
                ));
            }
            t.caching = Some(true);
        } else if args[2].eq_ignore_ascii_case(b"no") {
            if !t.optout {
                return Err(Error::Invalid(
                    "CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.",
                ));
            }
            t.caching = Some(false);
        } else {
            return Err(Error::Invalid("syntax error"));
        }
        Handled::ready(resp::simple("OK"))
    }

    /// CLIENT TRACKINGINFO: `flags`, `redirect`, `prefixes`, as Redis shapes them.
    pub(super) fn tracking_info(&self) -> Bytes {
        let resp3 = self.flavor.resp3;
        let mut out = BytesMut::new();
        resp::put_header(
            &mut out,
            if resp3 { b'%' } else { b'*' },
            if resp3 { 3 } else { 6 },
        );
        resp::put_bulk(&mut out, Some(b"flags"));
        let flags: Vec<&[u8]> = match &self.tracking {
            None => vec![b"off"],
            Some(t) => [
                (true, &b"on"[..]),
                (t.bcast, b"bcast"),
                (t.optin, b"optin"),
                (t.optin && t.caching == Some(true), b"caching-yes"),
                (t.optout, b"optout"),
                (t.optout && t.caching == Some(false), b"caching-no"),
                (t.noloop, b"noloop"),
                (
                    t.redirect
                        .is_some_and(|id| self.proxy.clients.get(id).is_none()),
                    b"broken_redirect",
                ),
            ]
            .into_iter()
            .filter_map(|(set, flag)| set.then_some(flag))
            .collect(),
        };
        resp::put_header(
            &mut out,
            if resp3 { b'~' } else { b'*' },
            flags.len() as i64,
        );
        for flag in flags {
            resp::put_bulk(&mut out, Some(flag));
        }
        resp::put_bulk(&mut out, Some(b"redirect"));
        out.extend_from_slice(&resp::integer(self.redirect_id()));
        resp::put_bulk(&mut out, Some(b"prefixes"));
        // BCAST without PREFIX is the empty prefix, as Redis lists it.
        let every = [Bytes::new()];
        let prefixes = match &self.tracking {
            Some(t) if t.bcast && t.prefixes.is_empty() => &every[..],
            Some(t) => &t.prefixes[..],
            None => &[][..],
        };
        resp::put_header(&mut out, b'*', prefixes.len() as i64);
        for prefix in prefixes {
            resp::put_bulk(&mut out, Some(prefix));
        }
        out.freeze()
    }

    /// CLIENT GETREDIR: the client invalidations are redirected to, 0 when tracking without
    /// redirection, -1 when not tracking.
    pub(super) fn redirect_id(&self) -> i64 {
        match &self.tracking {
            None => -1,
            Some(t) => t.redirect.map_or(0, |id| id as i64),
        }
    }

    /// A command the client sent while tracking, its keys as the server names them: the keys
    /// of a read are tracked (default mode, as OPTIN/OPTOUT and CLIENT CACHING say); with
    /// NOLOOP, the keys of a write are its own. Nothing for BCAST clients.
    pub(super) fn track(&mut self, cmd: &Command, spec: &crate::command::Spec) {
        let in_multi = self.in_multi();
        let request = self.decoded;
        let Some(t) = self.tracking.as_mut() else {
            return;
        };
        let touched: Vec<Bytes> = crate::command::keys::positions(spec, &cmd.args)
            .into_iter()
            .map(|at| cmd.args[at].clone())
            .collect();
        if matches!(spec.name, "flushall" | "flushdb") {
            if in_multi {
                t.multi_flush = true;
            } else {
                t.flushes.push_back(request);
            }
        }
        if in_multi {
            t.multi_keys.extend(touched.iter().cloned());
        } else {
            t.touching(request, touched.clone());
        }
        let caching = t.caching.take();
        // A script's declared keys are tracked as Redis tracks them: when the script runs a
        // read-only command, and with NOLOOP they are its own writes when it runs a write.
        // keygate reads what EVAL's body calls (command::script); for a script it cannot read
        // (EVALSHA, FCALL, a command named by a variable) it assumes both: an invalidation too
        // many is only a cache miss, where one too few would be a stale cache.
        let script = match spec.name {
            "eval" | "eval_ro" => Some(
                cmd.args
                    .get(1)
                    .and_then(|body| crate::command::script::calls(body))
                    .unwrap_or(Calls::ANY),
            ),
            "evalsha" | "evalsha_ro" | "fcall" | "fcall_ro" => Some(Calls::ANY),
            _ => None,
        };
        let (reads, writes) = match script {
            Some(calls) => (calls.reads, calls.writes && !spec.name.ends_with("_ro")),
            None => (spec.has(flags::READONLY), spec.has(flags::WRITE)),
        };
        // BCAST tracks no reads, only (with NOLOOP) the client's own writes.
        let tracked = reads
            && !t.bcast
            && match (t.optin, t.optout) {
                (true, _) => caching == Some(true),
                (_, true) => caching != Some(false),
                _ => true,
            };
        if !(tracked || (in_multi && writes) || (t.noloop && (writes || (reads && in_multi)))) {
            return;
        }
        let now = Instant::now();
        for key in touched {
            // A whole EXEC runs in one turn of the server's loop, where every invalidation of
            // a key is one message: a transaction's writes of a key count once, and a read of
            // a key written before it in the transaction may expire it (a second cause, merged
            // into the same message), so the message is passed on.
            if reads && in_multi {
                t.own_writes.remove(&key);
            }
            if in_multi && tracked && t.multi_written.contains(&key) {
                t.exec_skip.insert(key.clone());
            }
            if in_multi && writes {
                t.multi_written.insert(key.clone());
            }
            if writes && t.noloop {
                let own = t.own_writes.entry(key.clone()).or_insert((0, now));
                let n = if in_multi { own.0.max(1) } else { own.0 + 1 };
                *own = (n, now);
            }
            if tracked {
                t.keys.insert(key);
            }
        }
        self.evict_over_bound();
    }

    /// Past `tracking-table-max-keys` (over every client): evict some of this client's own
    /// keys, each invalidated for it, as Redis evicts from its table.
    pub(super) fn evict_over_bound(&mut self) {
        let Some(t) = self.tracking.as_mut() else {
            return;
        };
        let mut evicted = Vec::new();
        while self.proxy.tracked_keys.over() {
            let Some(key) = t.keys.evict() else { break };
            evicted.push(key);
        }
        let prefix = self.tenant_prefix().unwrap_or_default();
        for key in evicted {
            if let Some(mine) = key.strip_prefix(prefix) {
                self.deliver(Some(&[Bytes::copy_from_slice(mine)]), None);
            }
        }
    }

    /// An invalidation from the feed: what of it this client's tracking passes on (default mode:
    /// only keys it read, each forgotten once invalidated; NOLOOP: not its own writes), with a
    /// tenant's keys without its prefix, and delivered: to the client itself (RESP3) or to the
    /// client it redirects to.
    pub(super) fn invalidated(&mut self, frame: Bytes, out: &mut WriteQueue) {
        let Some(t) = self.tracking.as_mut() else {
            return;
        };
        let prefix = self
            .tenant
            .as_ref()
            .map_or(&b""[..], |seat| seat.tenant.config.prefix.as_bytes());
        let Some(parts) = value::elements(&frame) else {
            return;
        };
        let [_, keys] = &parts[..] else {
            return;
        };
        // `_` (or a nil): everything was flushed.
        let keys = match value::parse(keys) {
            Some(value::Value::Array(Some(keys))) => Some(keys),
            _ => None,
        };
        let keys: Option<Vec<Bytes>> = match keys {
            None => {
                t.keys.clear();
                t.own_writes.clear();
                if !t.flushes.is_empty() {
                    t.flush_deferred = true;
                    return;
                }
                None
            }
            Some(keys) => {
                let mut kept = Vec::new();
                for key in keys {
                    let value::Value::Bulk(Some(key)) = key else {
                        continue;
                    };
                    if t.noloop {
                        if let Some((n, at)) = t.own_writes.remove(&key) {
                            // Only a recent write is taken for this one's cause: a write that
                            // changed nothing is never invalidated, and must not hide another
                            // client's write from this one for long.
                            if at.elapsed() < OWN_WRITE_WINDOW {
                                if n > 1 {
                                    t.own_writes.insert(key.clone(), (n - 1, at));
                                }
                                t.keys.remove(&key);
                                continue;
                            }
                        }
                    }
                    if !t.bcast && t.exec_skip.remove(&key) {
                        continue;
                    }
                    if !t.bcast && !t.keys.remove(&key) {
                        continue;
                    }
                    if let Some(mine) = key.strip_prefix(prefix) {
                        let mine = Bytes::copy_from_slice(mine);
                        kept.push((key, mine));
                    }
                }
                // Waiting for a reply: a BCAST message whole, a key of the default mode
                // (one message each) once.
                let waits = |key: &Bytes| t.in_flight_keys.contains_key(key);
                if t.bcast && kept.iter().any(|(key, _)| waits(key)) {
                    t.deferred.push_back(kept);
                    // A blocked command's keys wait long: past the bound the oldest goes now
                    // (sooner than Redis would send it, never later).
                    if t.deferred.len() > DEFERRED_MAX {
                        let oldest = t.deferred.pop_front().expect("over the bound");
                        Some(oldest.into_iter().map(|(_, mine)| mine).collect())
                    } else {
                        return;
                    }
                } else {
                    let mut now = Vec::new();
                    for (key, mine) in kept {
                        if !waits(&key) {
                            now.push(mine);
                        } else if !t.deferred.iter().flatten().any(|(k, _)| *k == key) {
                            t.deferred.push_back(vec![(key, mine)]);
                        }
                    }
                    if now.is_empty() {
                        return;
                    }
                    Some(now)
                }
            }
        };
        self.deliver_keys(keys, out);
    }

    /// Invalidations to deliver: in the default mode one message per key, as Redis sends them
    /// (the feed's BCAST connections get them batched).
    fn deliver_keys(&mut self, keys: Option<Vec<Bytes>>, out: &mut WriteQueue) {
        let Some(t) = self.tracking.as_ref() else {
            return;
        };
        match keys {
            Some(keys) if !t.bcast => {
                for key in keys {
                    self.deliver(Some(&[key]), Some(out));
                }
            }
            keys => self.deliver(keys.as_deref(), Some(out)),
        }
    }

    /// What the feed brought: an invalidation, or its end (an error, or closed), after which
    /// the client is disconnected, so its library drops its cache instead of trusting it.
    pub(super) fn on_feed(&mut self, push: Option<Result<Bytes, Error>>, out: &mut WriteQueue) {
        match push {
            Some(Ok(push)) => self.invalidated(push, out),
            Some(Err(e)) => {
                tracing::info!(error = %e, "CLIENT TRACKING feed ended: closing the client");
                self.tracking = None;
                self.closing = true;
            }
            None => {
                self.tracking = None;
                self.closing = true;
            }
        }
    }

    /// A reply is due: every invalidation that reached keygate before it (see
    /// `tracking_reply`) goes first.
    pub(super) fn before_reply(&mut self, out: &mut WriteQueue) {
        use tokio::sync::mpsc::error::TryRecvError;
        while let Some(t) = self.tracking.as_mut() {
            match t.feed.feed.try_recv() {
                Ok(push) => self.on_feed(Some(push), out),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => self.on_feed(None, out),
            }
        }
    }

    /// Request `request`'s reply is out: its keys are no longer in flight, and the
    /// invalidations that waited for it follow.
    pub(super) fn after_reply(&mut self, request: u64, out: &mut WriteQueue) {
        let Some(t) = self.tracking.as_mut() else {
            return;
        };
        t.answered(request);
        if t.flush_deferred && t.flushes.is_empty() {
            t.flush_deferred = false;
            self.deliver_keys(None, out);
        }
        let Some(t) = self.tracking.as_mut() else {
            return;
        };
        if t.exec_request.is_some_and(|exec| exec <= request) {
            t.exec_request = None;
            t.exec_skip.clear();
        }
        if t.deferred.is_empty() {
            return;
        }
        let (due, wait): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut t.deferred)
            .into_iter()
            .partition(|keys| {
                keys.iter()
                    .all(|(key, _)| !t.in_flight_keys.contains_key(key))
            });
        t.deferred = wait;
        for keys in due {
            self.deliver_keys(Some(keys.into_iter().map(|(_, mine)| mine).collect()), out);
        }
    }

    /// EXEC (`true`) or DISCARD: the keys of the commands queued in MULTI are touched by
    /// EXEC's request (the current one), or by nothing.
    pub(super) fn tracked_exec(&mut self, exec: bool) {
        let request = self.decoded;
        let Some(t) = self.tracking.as_mut() else {
            return;
        };
        let keys = std::mem::take(&mut t.multi_keys);
        t.multi_written.clear();
        if std::mem::take(&mut t.multi_flush) && exec {
            t.flushes.push_back(request);
        }
        if exec {
            t.exec_request = Some(request);
        } else {
            t.exec_skip.clear();
        }
        if exec {
            t.touching(request, keys);
        }
    }

    /// A tracking client's reply, held until the feed has passed on every invalidation the
    /// server sent before it (`FeedSync`): the server sends an invalidation on the feed's
    /// connection and the reply on another, and one it sent first (a key evicted to make room
    /// for the command, a key another client wrote before this command ran) must reach the
    /// client first, as on Redis's one connection. Costs tracking clients one hop to the
    /// feed's task per reply.
    pub(super) fn tracking_reply(&self, reply: Reply) -> Reply {
        let Some(t) = self.tracking.as_ref() else {
            return reply;
        };
        let sync = t.feed.syncer();
        Reply::Later(Box::pin(async move {
            let bytes = super::tenancy::settle(reply).await;
            sync.sync().await;
            bytes
        }))
    }

    /// An invalidation of `keys` (`None`: everything), named as the client names them, to
    /// where its tracking sends them: itself (written to `out`, or handed to its own session
    /// when there is none) or the client it redirects to.
    fn deliver(&self, keys: Option<&[Bytes]>, out: Option<&mut WriteQueue>) {
        let Some(t) = self.tracking.as_ref() else {
            return;
        };
        let to_self = |frame: Bytes, out: Option<&mut WriteQueue>| match out {
            Some(out) => out.push(frame),
            None => {
                self.me
                    .client
                    .inject(frame, self.tenant_name().map(String::from));
            }
        };
        match t.redirect {
            None if self.flavor.resp3 => to_self(invalidate_frame(b'>', None, keys), out),
            // RESP2 without REDIRECT: nowhere to deliver, as in Redis.
            None => {}
            Some(id) => {
                let Some(target) = self.proxy.clients.get(id) else {
                    // As Redis tells a RESP3 client whose redirect client is gone.
                    if self.flavor.resp3 {
                        let mut frame = BytesMut::new();
                        resp::put_header(&mut frame, b'>', 2);
                        resp::put_bulk(&mut frame, Some(b"tracking-redir-broken"));
                        frame.extend_from_slice(&resp::integer(id as i64));
                        to_self(frame.freeze(), out);
                    }
                    return;
                };
                let shown = target.shown();
                // Only to a client of the same tenant (it may have authenticated as another
                // since REDIRECT named it; the session checks again as it writes the frame).
                let tenant = self.tenant_name().map(String::from);
                if shown.tenant != tenant {
                    return;
                }
                let frame = match (shown.resp3, shown.pubsub) {
                    (true, _) => invalidate_frame(b'>', None, keys),
                    (false, true) => invalidate_frame(b'*', Some(b"__redis__:invalidate"), keys),
                    // A RESP2 client not subscribed gets nothing, as from Redis.
                    (false, false) => return,
                };
                target.inject(frame, tenant);
            }
        }
    }
}

/// `CLIENT TRACKING ON BCAST` for a feed's connections: each of the client's `prefixes` (or,
/// for a tenant without any, its own prefix) behind the tenant's prefix.
fn bcast_setup(tenant_prefix: Option<&[u8]>, prefixes: &[Bytes]) -> Vec<Bytes> {
    let mut setup: Vec<Bytes> = ["CLIENT", "TRACKING", "ON", "BCAST"]
        .iter()
        .map(|s| Bytes::from_static(s.as_bytes()))
        .collect();
    match (tenant_prefix, prefixes.is_empty()) {
        (Some(own), true) => {
            setup.extend([Bytes::from_static(b"PREFIX"), Bytes::copy_from_slice(own)])
        }
        (Some(own), false) => {
            for prefix in prefixes {
                let mut full = BytesMut::from(own);
                full.extend_from_slice(prefix);
                setup.extend([Bytes::from_static(b"PREFIX"), full.freeze()]);
            }
        }
        (None, _) => {
            for prefix in prefixes {
                setup.extend([Bytes::from_static(b"PREFIX"), prefix.clone()]);
            }
        }
    }
    setup
}

/// An invalidation: a push `>2 invalidate keys`, or a RESP2 pub/sub `message` on `channel`;
/// `None` keys: everything (a nil).
fn invalidate_frame(kind: u8, channel: Option<&[u8]>, keys: Option<&[Bytes]>) -> Bytes {
    let mut out = BytesMut::new();
    match channel {
        None => {
            resp::put_header(&mut out, kind, 2);
            resp::put_bulk(&mut out, Some(b"invalidate"));
        }
        Some(channel) => {
            resp::put_header(&mut out, kind, 3);
            resp::put_bulk(&mut out, Some(b"message"));
            resp::put_bulk(&mut out, Some(channel));
        }
    }
    match keys {
        Some(keys) => {
            resp::put_header(&mut out, b'*', keys.len() as i64);
            for key in keys {
                resp::put_bulk(&mut out, Some(key));
            }
        }
        None if kind == b'>' => out.extend_from_slice(b"_\r\n"),
        None => resp::put_header(&mut out, b'*', -1),
    }
    out.freeze()
}
