//! keygate's own slowlog: requests whose reply left keygate more than `slowlog.threshold` after
//! the request arrived (measured end to end in keygate, so it includes queueing, the backend and
//! the network to it). SLOWLOG GET/LEN/RESET through keygate answer from here, in Redis's
//! format; a tenant sees and resets only its own entries.
//!
//! Arguments are not kept for every request (that would cost on the hot path): an entry holds the
//! command, its first argument, and how many more there were, shown as Redis shows truncated
//! arguments (`... (N more arguments)`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use crate::resp;

pub struct Entry {
    pub id: u64,
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
    entries: Mutex<(u64, VecDeque<Entry>)>,
    max_len: usize,
}

impl Slowlog {
    pub fn new(max_len: usize) -> Slowlog {
        Slowlog {
            entries: Mutex::new((0, VecDeque::new())),
            max_len,
        }
    }

    pub fn record(&self, mut entry: Entry) {
        if self.max_len == 0 {
            return;
        }
        entry.at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut guard = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (next_id, entries) = &mut *guard;
        entry.id = *next_id;
        *next_id += 1;
        entries.push_front(entry);
        entries.truncate(self.max_len);
    }

    /// SLOWLOG LEN, for `tenant` (or everyone's when `None`).
    pub fn len(&self, tenant: Option<&str>) -> usize {
        let guard = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        guard.1.iter().filter(|e| visible(e, tenant)).count()
    }

    /// SLOWLOG RESET, of `tenant`'s entries (or all).
    pub fn reset(&self, tenant: Option<&str>) {
        let mut guard = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        guard.1.retain(|e| !visible(e, tenant));
    }

    /// SLOWLOG GET [count] as Redis answers it: newest first, `count` of them (10 by default,
    /// all for a negative count).
    pub fn get(&self, tenant: Option<&str>, count: Option<i64>) -> Bytes {
        let guard = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let limit = match count {
            None => 10,
            Some(n) if n < 0 => usize::MAX,
            Some(n) => n as usize,
        };
        let shown: Vec<&Entry> = guard
            .1
            .iter()
            .filter(|e| visible(e, tenant))
            .take(limit)
            .collect();
        let mut out = BytesMut::new();
        resp::put_header(&mut out, b'*', shown.len() as i64);
        for e in shown {
            resp::put_header(&mut out, b'*', 6);
            resp::put_header(&mut out, b':', e.id as i64);
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
