//! MULTI/EXEC/DISCARD/WATCH/UNWATCH, on a backend connection pinned to the client.
//!
//! A client that WATCHes or opens a MULTI gets a connection of its own to the shard its keys live
//! on (`Backend::pin`), used for all its commands until EXEC, DISCARD or UNWATCH ends the
//! transaction; then the connection is dropped and closed, never pooled, so neither its WATCHes
//! nor a half-queued MULTI can reach another client.
//!
//! # Ordering note
//!
//! A client's requests travel on one connection at a time. Moving to the pinned connection, or
//! back, would let the new connection overtake requests still in flight on the old one, so a
//! request that switches connections is held until the client's earlier replies are in
//! (`Step::Hold`).
//!
//! In sharded modes every key used in the transaction must live on the pinned shard (for a
//! cluster, in the pinned slot); otherwise the command gets `-CROSSSLOT` and, inside MULTI, the
//! transaction is aborted as Redis aborts one after a queueing error (`-EXECABORT` at EXEC).
//!
//! # Tenants
//!
//! Nothing a tenant queues runs before EXEC. Commands forwarded to the server are queued there
//! and remembered with what their reply needs (`Fix`): EXEC's reply is taken apart and each
//! element un-prefixed as it would be outside a transaction. Commands keygate answers itself
//! (ACL WHOAMI, SCRIPT EXISTS) are queued here and their answers placed in EXEC's reply.
//! Emulated keyspace commands (DBSIZE, FLUSHDB, FLUSHALL, RANDOMKEY, INFO) run over many keys
//! and shards and cannot be part of the server's atomic EXEC: they are refused at queue time,
//! which aborts the transaction as any queueing error does.

use bytes::Bytes;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::sync::oneshot;

use super::tenancy::{self, Fix};
use super::{Drained, Handled, Session};

use crate::backend::{Pinned, ReplyResult};
use crate::command::{Command, Policy, Spec};
use crate::dispatch::Reply;
use crate::error::Error;
use crate::resp::{self, value};
use crate::route::{self, Plan, Target};
use crate::tenant::TenantState;

/// A client's transaction state.
pub(super) struct Transaction {
    /// The connection, once a command told keygate which shard it is for.
    pinned: Option<(Pinned, Target)>,
    in_multi: bool,
    watching: bool,
    /// A command failed while queueing: EXEC answers EXECABORT.
    aborted: bool,
    /// What was queued inside MULTI, in order, for EXEC's reply (tenants only).
    queued: Vec<Queued>,
    /// Some queued command's reply needs more than forwarding.
    fixing: bool,
    /// The reply to the MULTI keygate sent itself when it pinned (the client already had its
    /// +OK). Kept so the request is written: one whose receiver is gone is skipped.
    _multi_ack: Option<oneshot::Receiver<ReplyResult>>,
    /// Commands sent on the pinned connection inside MULTI.
    sent: usize,
    /// Some command queued may write or replicate (CLIENT PAUSE WRITE holds EXEC then).
    writes: bool,
    /// SELECTs queued inside MULTI: their place among `sent`, and the database.
    selects: Vec<(usize, u32)>,
}

impl Transaction {
    fn new() -> Self {
        Transaction {
            pinned: None,
            in_multi: false,
            watching: false,
            aborted: false,
            queued: Vec::new(),
            fixing: false,
            _multi_ack: None,
            sent: 0,
            writes: false,
            selects: Vec::new(),
        }
    }
}

/// A command queued inside a tenant's MULTI.
enum Queued {
    /// Queued on the server; its element of EXEC's reply needs this.
    Sent(Fix),
    /// Answered by keygate; the answer takes its place in EXEC's reply.
    Local(Bytes),
}

/// What to do with a command, transaction-wise.
pub(super) enum Step {
    /// Not a transaction matter: the normal path.
    Normal(Command, Fix),
    /// Answered.
    Done(Result<Handled, Error>),
    /// Wait for the client's earlier replies: this command switches connections.
    Hold(Command, Fix),
}

const NESTED: &str = "MULTI calls can not be nested";

impl Session {
    pub(super) fn transaction(
        &mut self,
        cmd: Command,
        spec: &'static Spec,
        fix: Fix,
        drained: Drained,
    ) -> Step {
        let name = spec.name;
        let active = self.txn.is_some();
        let opens = matches!(name, "multi" | "watch" | "exec" | "discard" | "unwatch");
        // RESET and QUIT keep their meaning inside a transaction (RESET ends it).
        if (!active && !opens) || matches!(name, "reset" | "quit") {
            return Step::Normal(cmd, fix);
        }
        match name {
            "exec" | "discard" if !self.txn.as_ref().is_some_and(|t| t.in_multi) => {
                let what = if name == "exec" {
                    "EXEC without MULTI"
                } else {
                    "DISCARD without MULTI"
                };
                Step::Done(Err(Error::Invalid(what)))
            }
            "unwatch" if !active => Step::Done(Handled::ready(crate::resp::simple("OK"))),
            "multi" if self.txn.as_ref().is_some_and(|t| t.in_multi) => {
                Step::Done(Err(Error::Invalid(NESTED)))
            }
            "watch" if self.txn.as_ref().is_some_and(|t| t.in_multi) => {
                Step::Done(Err(Error::Invalid("WATCH inside MULTI is not allowed")))
            }
            "multi" => {
                let txn = self.txn.get_or_insert_with(Transaction::new);
                txn.in_multi = true;
                match &txn.pinned {
                    // Watching already: MULTI goes where the WATCH went.
                    Some((pinned, _)) => {
                        Step::Done(Ok(Handled::reply(Reply::Backend(pinned.send(cmd.args)))))
                    }
                    // The shard is not known until a command names a key: MULTI is sent then.
                    None => Step::Done(Handled::ready(crate::resp::simple("OK"))),
                }
            }
            "exec" | "discard" => {
                self.tracked_exec(name == "exec");
                let txn = self.txn.take().expect("checked above");
                // A transaction whose connection broke cannot run: the commands queued on it
                // were lost (or refused: a server busy with a script refuses a new
                // connection's setup), as a queueing error loses them.
                let broken = txn.pinned.as_ref().is_some_and(|(p, _)| p.broken());
                if name == "exec" && (txn.aborted || broken) {
                    // Dropping the pinned connection closes it, and Redis discards the MULTI.
                    drop(txn.pinned);
                    return Step::Done(Err(Error::Coded(
                        "EXECABORT Transaction discarded because of previous errors.",
                    )));
                }
                let reply = match txn.pinned {
                    // The pin is dropped here; the connection closes once this reply is in.
                    Some((pinned, _)) => Reply::Backend(pinned.send(cmd.args)),
                    // Nothing was sent: no connection was ever needed.
                    None if name == "exec" => Reply::Ready(Bytes::from_static(b"*0\r\n")),
                    None => return Step::Done(Handled::ready(resp::simple("OK"))),
                };
                match (&self.tenant, name) {
                    (Some(seat), "exec") if txn.fixing => Step::Done(Ok(Handled::reply(
                        exec_reply(reply, txn.queued, seat.tenant.clone()),
                    ))),
                    (None, "exec") if !txn.selects.is_empty() => {
                        let verdict = self.select_verdict();
                        Step::Done(Ok(Handled::reply(selected_by_exec(
                            reply,
                            txn.selects,
                            verdict,
                        ))))
                    }
                    _ => Step::Done(Ok(Handled::reply(reply))),
                }
            }
            "unwatch" if !self.txn.as_ref().is_some_and(|t| t.in_multi) => {
                let txn = self.txn.take().expect("active");
                match txn.pinned {
                    Some((pinned, _)) => {
                        Step::Done(Ok(Handled::reply(Reply::Backend(pinned.send(cmd.args)))))
                    }
                    None => Step::Done(Handled::ready(crate::resp::simple("OK"))),
                }
            }
            "watch" => {
                self.txn.get_or_insert_with(Transaction::new);
                self.in_transaction(cmd, spec, fix, drained)
            }
            _ => self.in_transaction(cmd, spec, fix, drained),
        }
    }

    /// Whether a command queued in this client's MULTI may write or replicate.
    pub(super) fn txn_writes(&self) -> bool {
        self.txn.as_ref().is_some_and(|t| t.writes)
    }

    /// Whether the client is inside MULTI.
    pub(super) fn in_multi(&self) -> bool {
        self.txn.as_ref().is_some_and(|t| t.in_multi)
    }

    /// A command keygate answers itself for a tenant, inside MULTI: queued here, its answer
    /// placed in EXEC's reply.
    pub(super) fn queue_answer(&mut self, answer: Bytes) -> Handled {
        let txn = self.txn.as_mut().expect("inside MULTI");
        txn.queued.push(Queued::Local(answer));
        txn.fixing = true;
        Handled::reply(Reply::Ready(resp::simple("QUEUED")))
    }

    /// A command while WATCHing or inside MULTI: on the pinned connection, or refused.
    fn in_transaction(
        &mut self,
        cmd: Command,
        spec: &'static Spec,
        fix: Fix,
        drained: Drained,
    ) -> Step {
        let name = spec.name;
        let in_multi = self.txn.as_ref().is_some_and(|t| t.in_multi);
        let mut select = None;
        if name == "select" {
            match self.select_in_transaction(&cmd, in_multi) {
                Ok(Selected::Answered(handled)) => return Step::Done(Ok(handled)),
                Ok(Selected::Send(db)) => select = Some(db),
                Err(e) => return self.queue_error(e, in_multi),
            }
        }
        // Refused commands stay refused; inside MULTI they abort it, as a queueing error does.
        let refusal = match cmd.policy {
            _ if select.is_some() => None,
            Policy::Refuse(reason) if name != "watch" && name != "unwatch" => {
                Some(Error::Refused {
                    command: name.replace('|', " ").to_ascii_uppercase(),
                    reason,
                })
            }
            Policy::Subscribe => Some(Error::Invalid(
                "keygate: pub/sub is not supported inside a transaction or while watching keys",
            )),
            Policy::Local => Some(Error::Invalid(
                "keygate: this command is not supported inside a transaction",
            )),
            // The transaction's connection is not the tenant's backend user: a script there
            // would escape the confinement `upstream.tenant_acl` promises.
            Policy::Script
                if self
                    .tenant
                    .as_ref()
                    .is_some_and(|seat| seat.tenant.backend_user != 0) =>
            {
                Some(Error::Invalid(
                    "keygate: with upstream.tenant_acl, a tenant's scripts cannot run inside a transaction",
                ))
            }
            _ => None,
        };
        if let Some(error) = refusal {
            return self.queue_error(error, in_multi);
        }
        let topology = self.proxy.topology.load();
        let target = match route::plan(&cmd, &topology) {
            Ok(Plan::One(target)) => target,
            Ok(_) | Err(Error::CrossSlot) => return self.queue_error(Error::CrossSlot, in_multi),
            Err(e) => return self.queue_error(e, in_multi),
        };
        let keyless = target.slot.is_none()
            && target.backend == 0
            && crate::command::keys::positions(spec, &cmd.args).is_empty();
        let pinned_to = self
            .txn
            .as_ref()
            .and_then(|txn| txn.pinned.as_ref())
            .map(|(_, to)| *to);
        match pinned_to {
            Some(pinned_to) if keyless || pinned_to == target => {}
            Some(_) => return self.queue_error(Error::CrossSlot, in_multi),
            None => {
                // First command that needs the connection: pin, after earlier replies are in.
                if !drained() {
                    return Step::Hold(cmd, fix);
                }
                // A SELECT just before: the pinned connection is for its database.
                self.apply_select();
                let pinned = topology.backends[target.backend].pin(self.flavor);
                let txn = self.txn.as_mut().expect("in a transaction");
                if in_multi {
                    // MULTI's +OK was already sent to the client; this one is read and dropped.
                    txn._multi_ack = Some(pinned.send(vec![Bytes::from_static(b"MULTI")]));
                }
                txn.pinned = Some((pinned, target));
            }
        }
        let txn = self.txn.as_mut().expect("in a transaction");
        if name == "watch" {
            txn.watching = true;
        }
        if self.tracking.is_some() {
            self.track(&cmd, spec);
        }
        let txn = self.txn.as_mut().expect("in a transaction");
        let (pinned, _) = txn.pinned.as_ref().expect("pinned above");
        let writes = crate::command::may_replicate(spec)
            && !(spec.name == "eval" && crate::pause::script_without_writes(&cmd.args[1]));
        let reply = Reply::Backend(pinned.send(cmd.args));
        if in_multi {
            if let Some(Some(db)) = select {
                txn.selects.push((txn.sent, db));
            }
            txn.sent += 1;
            txn.writes |= writes;
        }
        if !in_multi {
            if let Some(db) = select {
                let db = db.unwrap_or(u32::MAX);
                // Watching: the pinned connection switches now; the client's own database
                // once the server accepted it (applied when the pin ends).
                let verdict = self.select_verdict();
                let reply = Reply::Later(Box::pin(async move {
                    let reply = tenancy::settle(reply).await;
                    if &reply[..] == b"+OK\r\n" {
                        verdict.store(db as u64, Relaxed);
                    }
                    reply
                }));
                return Step::Done(Ok(Handled::reply(reply)));
            }
            // Watching: run now, its reply un-prefixed as outside a transaction.
            return Step::Done(Ok(Handled::reply(self.unconfine(reply, fix))));
        }
        if self.tenant.is_some() {
            txn.fixing |= !matches!(fix, Fix::None);
            txn.queued.push(Queued::Sent(fix));
        }
        Step::Done(Ok(Handled::reply(reply)))
    }

    /// SELECT while WATCHing or inside MULTI. With one database (tenants, sharded modes) it is
    /// answered as outside (inside MULTI: queued, its answer placed in EXEC's reply); standalone,
    /// it goes to the pinned connection, and the client's database follows once the server ran
    /// it (see `select_verdict`).
    fn select_in_transaction(&mut self, cmd: &Command, in_multi: bool) -> Result<Selected, Error> {
        let db = resp::parse_int(&cmd.args[1]).and_then(|db| u32::try_from(db).ok());
        let sharded = self.proxy.topology.load().kind.sharded();
        if self.tenant.is_none() && !sharded {
            // The server checks the argument (inside MULTI: when EXEC runs it).
            return Ok(Selected::Send(db));
        }
        let db = match resp::parse_int(&cmd.args[1]) {
            Some(db) if (0..=i32::MAX as i64).contains(&db) => db as u32,
            Some(_) => return Err(Error::Invalid("DB index is out of range")),
            None => return Err(Error::Invalid("value is not an integer or out of range")),
        };
        if db != 0 {
            return Err(match self.tenant {
                Some(_) => Error::Invalid(
                    "keygate: tenants use database 0 only; their keys are kept apart by prefix",
                ),
                None => Error::Invalid("SELECT is not allowed in cluster mode"),
            });
        }
        let ok = resp::simple("OK");
        Ok(Selected::Answered(match (in_multi, &self.tenant) {
            (true, Some(_)) => self.queue_answer(ok),
            // Sharded, no tenant: SELECT 0 changes nothing and is queued on the server.
            (true, None) => return Ok(Selected::Send(Some(0))),
            (false, _) => Handled::reply(Reply::Ready(ok)),
        }))
    }

    /// Where a SELECT sent on the pinned connection reports the database the server accepted;
    /// it becomes the client's when the transaction ends (see `Session::route`). Starts at the
    /// database the client has now, so a refused SELECT changes nothing.
    fn select_verdict(&mut self) -> Arc<AtomicU64> {
        if let Some(verdict) = &self.pending_select {
            return verdict.clone();
        }
        let verdict = Arc::new(AtomicU64::new(self.flavor.db as u64));
        self.pending_select = Some(verdict.clone());
        verdict
    }

    /// Mark an open MULTI as failed: EXEC will answer EXECABORT.
    pub(super) fn abort_multi(&mut self) {
        if let Some(txn) = self.txn.as_mut().filter(|t| t.in_multi) {
            txn.aborted = true;
        }
    }

    fn queue_error(&mut self, error: Error, in_multi: bool) -> Step {
        if in_multi {
            if let Some(txn) = self.txn.as_mut() {
                txn.aborted = true;
            }
        }
        Step::Done(Err(error))
    }
}

/// What SELECT inside a transaction does.
enum Selected {
    Answered(Handled),
    /// Sent to the pinned connection; the database it names, if it is one.
    Send(Option<u32>),
}

/// EXEC's reply, passed on; each SELECT in it the server ran makes its database the client's.
fn selected_by_exec(reply: Reply, selects: Vec<(usize, u32)>, verdict: Arc<AtomicU64>) -> Reply {
    Reply::Later(Box::pin(async move {
        let bytes = tenancy::settle(reply).await;
        if let Some(elements) = value::elements(&bytes) {
            for (at, db) in selects {
                if elements.get(at).is_some_and(|e| &e[..] == b"+OK\r\n") {
                    verdict.store(db as u64, Relaxed);
                }
            }
        }
        bytes
    }))
}

/// EXEC's reply for a tenant: each element as the tenant would see it outside a transaction,
/// keygate's own answers in their places. Nil (a WATCHed key changed) and errors pass.
fn exec_reply(reply: Reply, queued: Vec<Queued>, tenant: Arc<TenantState>) -> Reply {
    Reply::Later(Box::pin(async move {
        let bytes = tenancy::settle(reply).await;
        if bytes.first() != Some(&b'*') || bytes.starts_with(b"*-1") {
            return bytes;
        }
        let sent = queued
            .iter()
            .filter(|q| matches!(q, Queued::Sent(_)))
            .count();
        let elements = match value::elements(&bytes) {
            Some(elements) if elements.len() == sent => elements,
            _ => {
                return Error::Internal("EXEC's reply does not match the commands queued")
                    .to_reply()
            }
        };
        let prefix = tenant.config.prefix.as_bytes();
        let mut elements = elements.into_iter();
        let mut out = BytesMut::with_capacity(bytes.len());
        resp::put_header(&mut out, b'*', queued.len() as i64);
        for entry in &queued {
            let element = match entry {
                Queued::Local(answer) => answer.clone(),
                Queued::Sent(fix) => {
                    let element = elements.next().expect("counted above");
                    let element = tenancy::strip(element, fix, &tenant);
                    tenancy::unquote_keys(element, prefix)
                }
            };
            out.extend_from_slice(&element);
        }
        out.freeze()
    }))
}
