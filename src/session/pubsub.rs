//! Pub/sub: SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE and their UN- forms, on a backend connection of
//! the client's own (`backend::Subscriber`), made at its first subscription and closed when it
//! holds none.
//!
//! Each request sent there takes a slot in the reply order like any other, answered by the
//! subscriber connection's next reply event; messages go to the client as they arrive. In RESP2
//! the client is in subscribed mode meanwhile: only the subscribe commands, PING, QUIT and RESET
//! are allowed, as in Redis. In RESP3 messages are push frames and every command is allowed.
//!
//! Where subscriptions live: SUBSCRIBE and PSUBSCRIBE on the first shard (a cluster broadcasts
//! PUBLISH to every node; in standalone and ketama modes PUBLISH goes to the first shard too, so
//! publishers and subscribers meet), SSUBSCRIBE on its shard channel's shard, like SPUBLISH. One
//! client's subscriptions share one connection, so shard channels of two shards need two client
//! connections (as they need two connections to Redis Cluster itself).
//!
//! For a tenant, channels and patterns carry its prefix on the way in (rewritten by
//! `Session::confine`) and lose it in confirmations and messages; a frame naming a channel
//! outside the tenant's prefix is dropped, never delivered.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::oneshot;

use super::tenancy::Fix;
use super::{Drained, Handled, Outcome, Session};
use crate::backend::{Event, ReplyResult, Subscriber};
use crate::command::Command;
use crate::dispatch::Reply;
use crate::error::Error;
use crate::placement::slots;
use crate::resp::{self, value};
use crate::route::{self, Plan};
use crate::tenant::rewrite;
use crate::write_queue::WriteQueue;

/// A client's subscriber connection and the requests waiting for its replies.
pub(super) struct Sub {
    conn: Subscriber,
    waiting: VecDeque<oneshot::Sender<ReplyResult>>,
    /// The connection holds at least one subscription.
    subscribed: bool,
}

impl Sub {
    /// The client's input flag (see backend::Leaving).
    pub(super) fn input(&self) -> Arc<AtomicBool> {
        self.conn.input.clone()
    }

    /// Wait for the next event, or `None` once the connection is gone.
    pub(super) async fn next(&mut self) -> Option<Event> {
        self.conn.events.recv().await
    }
}

/// Commands Redis accepts from a RESP2 client in subscribed mode.
fn allowed_in_subscribed_mode(name: &str) -> bool {
    matches!(
        name,
        "subscribe"
            | "unsubscribe"
            | "psubscribe"
            | "punsubscribe"
            | "ssubscribe"
            | "sunsubscribe"
            | "ping"
            | "quit"
            | "reset"
    )
}

impl Session {
    /// RESP2 subscribed mode: `Err` with the outcome of commands it changes (PING's form,
    /// refusals), `Ok` with the command to go on as usual.
    pub(super) fn subscribed_mode(
        &mut self,
        cmd: Command,
        fix: Fix,
        drained: Drained,
    ) -> Result<(Command, Fix), Result<Outcome, Error>> {
        if self.flavor.resp3 || self.sub.is_none() {
            return Ok((cmd, fix));
        }
        let name = cmd.spec.map_or("unknown", |s| s.name);
        // An UNSUBSCRIBE still in flight may end subscribed mode: decide once it is answered.
        if !drained() && !name.contains("subscribe") {
            return Err(Ok(Outcome::Held(cmd, fix)));
        }
        if name == "ping" {
            let mut out = BytesMut::new();
            resp::put_header(&mut out, b'*', 2);
            resp::put_bulk(&mut out, Some(b"pong"));
            resp::put_bulk(&mut out, Some(cmd.args.get(1).map_or(&b""[..], |m| &m[..])));
            return Err(Handled::ready(out.freeze()).map(Outcome::Handled));
        }
        if allowed_in_subscribed_mode(name) {
            return Ok((cmd, fix));
        }
        Err(Err(Error::NotInContext(cmd.args[0].clone())))
    }

    /// A SUBSCRIBE-family command: sent on the client's subscriber connection, made if needed.
    pub(super) fn subscribe(&mut self, cmd: Command, drained: Drained) -> Result<Outcome, Error> {
        let name = cmd.spec.expect("known").name;
        let topology = self.proxy.topology.load();
        let shard = if name == "ssubscribe" {
            match route::plan(&cmd, &topology)? {
                Plan::One(target) => Some(target.backend),
                _ => return Err(Error::CrossSlot),
            }
        } else {
            None
        };
        match &self.sub {
            None if name.contains("unsubscribe") => {
                return Handled::ready(self.not_subscribed(&cmd)).map(Outcome::Handled);
            }
            None => {
                if !drained() {
                    return Ok(Outcome::Held(cmd, Fix::None));
                }
                let backend = topology
                    .backends
                    .get(shard.unwrap_or(0))
                    .ok_or(Error::NoPrimary)?;
                self.sub = Some(Sub {
                    conn: backend.subscribe(self.flavor, self.proxy.subscribers_leaving.clone())?,
                    waiting: VecDeque::new(),
                    subscribed: false,
                });
                self.publish();
            }
            Some(sub) => {
                if let Some(shard) = shard {
                    if *topology.backends[shard].addr != *sub.conn.addr {
                        return Err(Error::Invalid(
                            "keygate: this connection's subscriptions are on another shard; subscribe to shard channels of this shard from another connection",
                        ));
                    }
                }
            }
        }
        // A PUBLISH pipelined after this must not overtake it on a shared connection.
        self.must_drain = true;
        let sub = self.sub.as_mut().expect("made above");
        let (tx, rx) = oneshot::channel();
        if !sub.conn.send(cmd.args) {
            return Err(Error::BackendLost {
                addr: sub.conn.addr.clone(),
                reason: "subscriber connection closed".into(),
            });
        }
        sub.waiting.push_back(tx);
        Ok(Outcome::Handled(Handled::reply(Reply::Backend(rx))))
    }

    /// Redis's answer to an UNSUBSCRIBE-family command from a client with no subscriptions: one
    /// confirmation per channel named (one with a nil channel if none), each with count 0.
    fn not_subscribed(&self, cmd: &Command) -> Bytes {
        let kind = cmd.args[0].to_ascii_lowercase();
        let header = if self.flavor.resp3 { b'>' } else { b'*' };
        let mut out = BytesMut::new();
        let mut confirm = |channel: Option<&[u8]>| {
            resp::put_header(&mut out, header, 3);
            resp::put_bulk(&mut out, Some(&kind));
            resp::put_bulk(&mut out, channel);
            resp::put_header(&mut out, b':', 0);
        };
        match &cmd.args[1..] {
            [] => confirm(None),
            channels => {
                for channel in channels {
                    confirm(Some(&self.unprefix(channel)));
                }
            }
        }
        out.freeze()
    }

    /// A channel or pattern as the client named it.
    fn unprefix(&self, channel: &Bytes) -> Bytes {
        match &self.tenant {
            Some(seat) => rewrite::strip(seat.tenant.config.prefix.as_bytes(), channel)
                .unwrap_or_else(|_| channel.clone()),
            None => channel.clone(),
        }
    }

    /// Handle what the subscriber connection sent: `None` means it closed.
    pub(super) fn on_event(&mut self, event: Option<Event>, out: &mut WriteQueue) {
        let Some(sub) = self.sub.as_mut() else {
            return;
        };
        match event {
            Some(Event::Message(frame)) => {
                if let Some(frame) = self.client_frame(frame) {
                    out.push(frame);
                }
            }
            Some(Event::Reply { frames, subscribed }) => {
                sub.subscribed = subscribed;
                // A cluster node that no longer serves a shard channel's slot: the slot map is
                // stale. Clients never see a redirection; they may subscribe again at once.
                let frames = frames.map(|frames| match frames.as_slice() {
                    [error] if slots::parse_redirect(error).is_some() => {
                        self.proxy.refresh_soon();
                        vec![resp::error(
                            "TRYAGAIN keygate: the shard channel's slot moved; subscribe again",
                        )]
                    }
                    _ => frames,
                });
                let waiter = sub.waiting.pop_front();
                let done = !subscribed && sub.waiting.is_empty();
                let reply = frames.map(|frames| {
                    let mut joined = BytesMut::new();
                    for frame in frames {
                        if let Some(frame) = self.client_frame(frame) {
                            joined.put_slice(&frame);
                        }
                    }
                    joined.freeze()
                });
                if let Some(waiter) = waiter {
                    let _ = waiter.send(reply);
                }
                if done {
                    // Nothing held any more: back to normal mode, the connection closes.
                    self.sub = None;
                    self.publish();
                }
            }
            None => {
                let sub = self.sub.take().expect("checked above");
                let error = Error::BackendLost {
                    addr: sub.conn.addr.clone(),
                    reason: "subscriber connection closed".into(),
                };
                for waiter in sub.waiting {
                    let _ = waiter.send(Err(error.clone()));
                }
                if sub.subscribed {
                    // Never leave a subscriber silently deaf: closing makes its library
                    // reconnect and subscribe again.
                    tracing::info!(client = self.id, backend = %sub.conn.addr, "subscriber connection lost; closing the client");
                    self.closing = true;
                }
            }
        }
    }

    /// A confirmation or message as the client must see it: without the tenant's prefix.
    /// `None` (dropped) if it names a channel outside the tenant's keyspace.
    fn client_frame(&self, frame: Bytes) -> Option<Bytes> {
        let Some(seat) = &self.tenant else {
            return Some(frame);
        };
        let prefix = seat.tenant.config.prefix.as_bytes();
        let Some(items) = value::elements(&frame) else {
            // Not an array (an error, say): no channel in it.
            return Some(frame);
        };
        let kind = match items.first().and_then(value::parse) {
            Some(value::Value::Bulk(Some(kind))) => kind.to_ascii_lowercase(),
            _ => return Some(frame),
        };
        // Which elements are channels or patterns.
        let named = match &kind[..] {
            b"pmessage" => 1..3,
            b"message" | b"smessage" | b"subscribe" | b"unsubscribe" | b"psubscribe"
            | b"punsubscribe" | b"ssubscribe" | b"sunsubscribe" => 1..2,
            _ => return Some(frame),
        };
        let mut out = BytesMut::with_capacity(frame.len());
        resp::put_header(&mut out, frame[0], items.len() as i64);
        for (i, item) in items.iter().enumerate() {
            if !named.contains(&i) {
                out.put_slice(item);
                continue;
            }
            match value::parse(item)? {
                value::Value::Bulk(Some(channel)) => {
                    let channel = rewrite::strip(prefix, &channel).ok()?;
                    resp::put_bulk(&mut out, Some(&channel));
                }
                // A nil channel (UNSUBSCRIBE with none held).
                _ => out.put_slice(item),
            }
        }
        Some(out.freeze())
    }
}
