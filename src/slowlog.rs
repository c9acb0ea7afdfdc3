//! keygate's own slowlog: requests whose reply left keygate more than `slowlog.threshold` after
//! the request arrived (measured end to end in keygate, so it includes queueing, the backend and
//! the network to it). `CONFIG SET slowlog-log-slower-than` and `slowlog-max-len` sent through
//! keygate (not by a tenant) change keygate's settings too, as they change the server's, until
//! the next reload. SLOWLOG GET/LEN/RESET through keygate answer from here, in Redis's
//! format; a tenant sees and resets only its own entries.
//!
//! Arguments are not kept for every request (that would cost on the hot path): an entry holds the
//! command, its first argument, and how many more there were, shown as Redis shows truncated
//! arguments (`... (N more arguments)`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use crate::resp;

pub struct Entry {
    /// Numbered across everyone (as the operator sees them), and within the entry's tenant (as
    /// the tenant sees them: its ids tell nothing of other tenants' slow requests).
    pub id: u64,
    pub tenant_id: u64,
    /// Unix seconds.
    pub at: u64,
    pub took: Duration,
    pub command: &'static str,
    pub first_arg: Option<Bytes>,
    /// Arguments after the first argument, not kept.
    pub more: usize,
    pub client: String,
    pub client_name: Option<Bytes>,
    /// The tenant that sent it, if any (its prefix is stripped from `first_arg`).
    pub tenant: Option<String>,
}

pub struct Slowlog {
    entries: Mutex<Log>,
    /// Entries kept; 0 turns the slowlog off.
    max_len: AtomicUsize,
    /// Requests this slow or slower are kept, in microseconds; `u64::MAX`: none.
    threshold_us: AtomicU64,
}

#[derive(Default)]
struct Log {
    next_id: u64,
    /// The next id of each tenant's own numbering.
    next_tenant_id: HashMap<String, u64>,
    /// Newest first.
    entries: VecDeque<Entry>,
}

impl Slowlog {
    pub fn new(settings: &crate::config::Slowlog) -> Slowlog {
        let log = Slowlog {
            entries: Mutex::new(Log::default()),
            max_len: AtomicUsize::new(0),
            threshold_us: AtomicU64::new(u64::MAX),
        };
        log.configure(settings);
        log
    }

    /// Take the config's settings (at start and on reload).
    pub fn configure(&self, settings: &crate::config::Slowlog) {
        self.set_max_len(settings.max_len);
        self.set_threshold(Some(settings.threshold));
    }

    /// `CONFIG SET slowlog-max-len`, as Redis takes it: older entries beyond it go.
    pub fn set_max_len(&self, max_len: usize) {
        self.max_len.store(max_len, Ordering::Relaxed);
        let mut log = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        log.entries.truncate(max_len);
    }

    /// `CONFIG SET slowlog-log-slower-than`: `None` (a negative value) keeps nothing.
    pub fn set_threshold(&self, threshold: Option<Duration>) {
        let us = threshold.map_or(u64::MAX, |t| t.as_micros().min(u64::MAX as u128 - 1) as u64);
        self.threshold_us.store(us, Ordering::Relaxed);
    }

    /// Is a request that took this long slow?
    pub fn is_slow(&self, took: Duration) -> bool {
        let us = self.threshold_us.load(Ordering::Relaxed);
        us != u64::MAX && took.as_micros() >= us as u128 && self.max_len.load(Ordering::Relaxed) > 0
    }

    pub fn record(&self, mut entry: Entry) {
        let max_len = self.max_len.load(Ordering::Relaxed);
        if max_len == 0 {
            return;
        }
        entry.at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut log = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entry.id = log.next_id;
        log.next_id += 1;
        if let Some(tenant) = &entry.tenant {
            let next = match log.next_tenant_id.get_mut(tenant) {
                Some(next) => next,
                None => log.next_tenant_id.entry(tenant.clone()).or_insert(0),
            };
            entry.tenant_id = *next;
            *next += 1;
        }
        log.entries.push_front(entry);
        log.entries.truncate(max_len);
    }

    /// SLOWLOG LEN, for `tenant` (or everyone's when `None`).
    pub fn len(&self, tenant: Option<&str>) -> usize {
        let log = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        log.entries.iter().filter(|e| visible(e, tenant)).count()
    }

    /// SLOWLOG RESET, of `tenant`'s entries (or all).
    pub fn reset(&self, tenant: Option<&str>) {
        let mut log = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        log.entries.retain(|e| !visible(e, tenant));
    }

    /// SLOWLOG GET [count] as Redis answers it: newest first, `count` of them (10 by default,
    /// all for a negative count).
    pub fn get(&self, tenant: Option<&str>, count: Option<i64>) -> Bytes {
        let log = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let limit = match count {
            None => 10,
            Some(n) if n < 0 => usize::MAX,
            Some(n) => n as usize,
        };
        let shown: Vec<&Entry> = log
            .entries
            .iter()
            .filter(|e| visible(e, tenant))
            .take(limit)
            .collect();
        let mut out = BytesMut::new();
        resp::put_header(&mut out, b'*', shown.len() as i64);
        for e in shown {
            resp::put_header(&mut out, b'*', 6);
            let id = if tenant.is_some() { e.tenant_id } else { e.id };
            resp::put_header(&mut out, b':', id as i64);
            resp::put_header(&mut out, b':', e.at as i64);
            resp::put_header(&mut out, b':', e.took.as_micros() as i64);
            let args = 1 + e.first_arg.is_some() as i64 + (e.more > 0) as i64;
            resp::put_header(&mut out, b'*', args);
            resp::put_bulk(&mut out, Some(e.command.to_ascii_uppercase().as_bytes()));
            if let Some(arg) = &e.first_arg {
                resp::put_bulk(&mut out, Some(&arg[..arg.len().min(128)]));
            }
            if e.more > 0 {
                let note = format!("... ({} more arguments)", e.more);
                resp::put_bulk(&mut out, Some(note.as_bytes()));
            }
            resp::put_bulk(&mut out, Some(e.client.as_bytes()));
            resp::put_bulk(&mut out, Some(e.client_name.as_deref().unwrap_or(b"")));
        }
        out.freeze()
    }
}

fn visible(entry: &Entry, tenant: Option<&str>) -> bool {
    match tenant {
        None => true,
        Some(name) => entry.tenant.as_deref() == Some(name),
    }
}
