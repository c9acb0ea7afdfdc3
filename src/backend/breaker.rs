//! A circuit breaker per backend server.
//!
//! Closed: requests flow. After `failures_to_open` consecutive failures of the server itself
//! (a connect error, a broken connection, a protocol error; never an error reply such as
//! WRONGTYPE, which is the server working) it opens: every request for the server
//! fails at once with an error naming it, instead of waiting on a server that is not there.
//! After `open_for`, one probe (PING on a connection of its own) decides: an answer closes the
//! breaker, anything else keeps it open for another `open_for`. Any reply on any connection
//! resets the count of consecutive failures.
//!
//! A request timeout is not a failure by itself: the server may be busy on one client's
//! requests (see `connection::Closed::TimedOut`); the next connection's PING decides.
//!
//! The counters are atomics read on every request (one load while closed); transitions are rare
//! and logged.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use tracing::{info, warn};

use super::connection::query_once;
use super::Options;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed = 0,
    Open = 1,
    /// The probe is in flight; requests still fail at once.
    HalfOpen = 2,
}

pub struct Breaker {
    addr: Arc<str>,
    opts: Arc<Options>,
    failures: AtomicU32,
    state: AtomicU8,
    opened: AtomicU64,
}

impl Breaker {
    pub fn new(addr: Arc<str>, opts: Arc<Options>) -> Arc<Breaker> {
        Arc::new(Breaker {
            addr,
            opts,
            failures: AtomicU32::new(0),
            state: AtomicU8::new(State::Closed as u8),
            opened: AtomicU64::new(0),
        })
    }

    pub fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            0 => State::Closed,
            1 => State::Open,
            _ => State::HalfOpen,
        }
    }

    /// Requests may go to the server.
    pub fn allows(&self) -> bool {
        self.state.load(Ordering::Acquire) == State::Closed as u8
    }

    /// How many times it opened since keygate started.
    pub fn times_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// The server answered something.
    pub fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// The server failed (connect error, broken connection, timeout, protocol error).
    pub fn failure(self: &Arc<Self>, reason: &str) {
        let limit = self.opts.failures_to_open;
        if limit == 0 {
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < limit {
            return;
        }
        let opened = self.state.compare_exchange(
            State::Closed as u8,
            State::Open as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if opened.is_ok() {
            self.opened.fetch_add(1, Ordering::Relaxed);
            warn!(
                backend = %self.addr,
                failures,
                %reason,
                open_for = ?self.opts.open_for,
                "circuit breaker opened: requests for this backend now fail at once"
            );
            tokio::spawn(probe(Arc::downgrade(self)));
        }
    }

    /// Why requests fail while it is open.
    pub fn refusal(&self) -> Arc<str> {
        format!(
            "circuit breaker open after {} consecutive failures; next probe within {}",
            self.opts.failures_to_open,
            humantime::format_duration(self.opts.open_for)
        )
        .into()
    }
}

/// Wait `open_for`, probe, and close the breaker or wait again; ends with the backend.
async fn probe(breaker: Weak<Breaker>) {
    loop {
        let Some(open_for) = breaker.upgrade().map(|b| b.opts.open_for) else {
            return;
        };
        tokio::time::sleep(open_for).await;
        let Some(b) = breaker.upgrade() else {
            return;
        };
        b.state.store(State::HalfOpen as u8, Ordering::Release);
        let ping = [Bytes::from_static(b"PING")];
        match query_once(&b.addr, &b.opts, &ping).await {
            Ok(reply) if reply.first() != Some(&b'-') => {
                b.failures.store(0, Ordering::Relaxed);
                b.state.store(State::Closed as u8, Ordering::Release);
                info!(backend = %b.addr, "circuit breaker closed: the probe was answered");
                return;
            }
            Ok(reply) => {
                let text = String::from_utf8_lossy(&reply).trim_end().to_string();
                b.state.store(State::Open as u8, Ordering::Release);
                warn!(backend = %b.addr, reply = %text, "circuit breaker stays open: probe refused");
            }
            Err(reason) => {
                b.state.store(State::Open as u8, Ordering::Release);
                warn!(backend = %b.addr, %reason, "circuit breaker stays open: probe failed");
            }
        }
    }
}
