//! MONITOR and CLIENT TRACKING: frames the servers push on their own, from a connection of the
//! client's own to every primary (see backend::feed), merged for the client.
//!
//! CLIENT TRACKING is kept for RESP3 clients (invalidations arrive as push messages on their own
//! connection) and is always BCAST on keygate's tracking connections: the client's reads run on
//! shared connections, so Redis cannot know which keys *this* client read. BCAST without a prefix
//! (a tenant: with its own prefix) sends an invalidation for every key written, a superset of
//! what default tracking sends; a cache only drops more entries than it had to, never keeps a
//! stale one. OPTIN, OPTOUT and NOLOOP are accepted on the same terms (CLIENT CACHING is
//! checked as Redis checks it and changes nothing). REDIRECT is refused: keygate's client ids are
//! not the server's.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{broadcast, watch};

use super::{Handled, Session};
use crate::backend::{Feed, Flavor};
use crate::command::{flags, Command};
use crate::dispatch::Reply;
use crate::error::Error;
use crate::monitor::Watcher;
use crate::resp::{self, value};

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
}

/// What a tracking client's feed brought.
pub(super) enum TrackingEvent {
    /// An invalidation push, or the feed's end (an error, or closed).
    Push(Option<Result<Bytes, Error>>),
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
            own = monitor.own.lines.recv() => return match own {
                Ok(line) => Some(Ok(line)),
                Err(broadcast::error::RecvError::Lagged(_)) => Some(Err(Error::Internal(
                    "the MONITOR client fell too far behind",
                ))),
                Err(broadcast::error::RecvError::Closed) => None,
            },
            line = monitor.servers.feed.recv() => match line {
                Some(Ok(line)) if from_script(&line) => return Some(Ok(line)),
                Some(Ok(_)) => continue,
                other => return other,
            },
        }
    }
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
        let topology = self.proxy.topology.load();
        let mut feed = Feed::default();
        let confirmations = topology
            .backends
            .iter()
            .map(|backend| backend.feed(&mut feed, flavor, setup.clone()))
            .collect::<Result<Vec<_>, Error>>()?;
        let reply = Reply::Later(Box::pin(async move {
            for confirmed in confirmations {
                match confirmed.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return e.to_reply(),
                    Err(_) => return Error::Internal("a feed connection task failed").to_reply(),
                }
            }
            resp::simple("OK")
        }));
        Ok((feed, reply))
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
        let mut rest = options.iter();
        while let Some(option) = rest.next() {
            match option.to_ascii_lowercase().as_slice() {
                b"bcast" => bcast = true,
                b"optin" => optin = true,
                b"optout" => optout = true,
                b"noloop" => noloop = true,
                b"prefix" => prefixes.push(rest.next().ok_or(Error::Invalid("syntax error"))?.clone()),
                b"redirect" => {
                    return Err(Error::Refused {
                        command: "CLIENT TRACKING REDIRECT".into(),
                        reason: "names a server connection, and keygate's clients are not the server's; use RESP3 (HELLO 3): invalidations then arrive on this connection",
                    })
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
        if let Some(current) = &self.tracking {
            if current.bcast != bcast {
                return Err(Error::Invalid("You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling it with a different mode."));
            }
            if (
                current.optin,
                current.optout,
                current.noloop,
                &current.prefixes,
            ) == (optin, optout, noloop, &prefixes)
            {
                return Handled::ready(resp::simple("OK"));
            }
            return Err(Error::Invalid(
                "keygate: turn tracking OFF before changing its options",
            ));
        }
        if !self.flavor.resp3 {
            return Err(Error::Refused {
                command: "CLIENT TRACKING".into(),
                reason: "needs RESP3 through keygate (HELLO 3): invalidations arrive as push messages on this connection",
            });
        }
        let mut setup: Vec<Bytes> = ["CLIENT", "TRACKING", "ON", "BCAST"]
            .iter()
            .map(|s| Bytes::from_static(s.as_bytes()))
            .collect();
        let tenant_prefix = self
            .tenant
            .as_ref()
            .map(|seat| Bytes::copy_from_slice(seat.tenant.config.prefix.as_bytes()));
        match (&tenant_prefix, prefixes.is_empty()) {
            (Some(own), true) => setup.extend([Bytes::from_static(b"PREFIX"), own.clone()]),
            (Some(own), false) => {
                for prefix in &prefixes {
                    let mut full = BytesMut::from(&own[..]);
                    full.extend_from_slice(prefix);
                    setup.extend([Bytes::from_static(b"PREFIX"), full.freeze()]);
                }
            }
            (None, _) => {
                for prefix in &prefixes {
                    setup.extend([Bytes::from_static(b"PREFIX"), prefix.clone()]);
                }
            }
        }
        let swapped = self.proxy.topology_swapped.subscribe();
        let primaries = self.primaries();
        let (feed, confirmed) = self.feed(self.flavor, setup)?;
        self.tracking = Some(Tracking {
            primaries,
            swapped,
            feed,
            bcast,
            optin,
            optout,
            noloop,
            prefixes,
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
        let yes = if args[2].eq_ignore_ascii_case(b"yes") {
            true
        } else if args[2].eq_ignore_ascii_case(b"no") {
            false
        } else {
            return Err(Error::Invalid("syntax error"));
        };
        match &self.tracking {
            Some(t) if yes && t.optin => Handled::ready(resp::simple("OK")),
            Some(t) if !yes && t.optout => Handled::ready(resp::simple("OK")),
            Some(t) if !yes && t.optin => Err(Error::Invalid(
                "CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.",
            )),
            Some(t) if yes && t.optout => Err(Error::Invalid(
                "CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.",
            )),
            _ => Err(Error::Invalid("CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled")),
        }
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
                (t.optout, b"optout"),
                (t.noloop, b"noloop"),
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
        out.extend_from_slice(&resp::integer(if self.tracking.is_some() { 0 } else { -1 }));
        resp::put_bulk(&mut out, Some(b"prefixes"));
        let prefixes = self.tracking.as_ref().map_or(&[][..], |t| &t.prefixes[..]);
        resp::put_header(&mut out, b'*', prefixes.len() as i64);
        for prefix in prefixes {
            resp::put_bulk(&mut out, Some(prefix));
        }
        out.freeze()
    }

    /// An invalidation push as this client must see it: a tenant's keys without its prefix.
    pub(super) fn invalidation(&self, frame: Bytes) -> Option<Bytes> {
        let Some(seat) = &self.tenant else {
            return Some(frame);
        };
        let prefix = seat.tenant.config.prefix.as_bytes();
        let parts = value::elements(&frame)?;
        let [kind, keys] = &parts[..] else {
            return None;
        };
        let Some(value::Value::Array(Some(keys))) = value::parse(keys) else {
            // `_`: everything was flushed; nothing to rewrite.
            return Some(frame);
        };
        let mut out = BytesMut::new();
        resp::put_header(&mut out, b'>', 2);
        out.extend_from_slice(kind);
        let mine: Vec<&[u8]> = keys
            .iter()
            .filter_map(|key| match key {
                value::Value::Bulk(Some(key)) => key.strip_prefix(prefix),
                _ => None,
            })
            .collect();
        resp::put_header(&mut out, b'*', mine.len() as i64);
        for key in mine {
            resp::put_bulk(&mut out, Some(key));
        }
        Some(out.freeze())
    }
}
