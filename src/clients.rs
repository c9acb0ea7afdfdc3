//! The clients connected to keygate, as CLIENT LIST shows them and CLIENT KILL finds them.
//!
//! Each session registers a `Client` when it starts and leaves when it ends. What other clients
//! may see of it (name, library, tenant, database, protocol) is a snapshot the session publishes
//! when one of those changes, which is rare; what changes with every request (when it was last
//! active, its last command) is kept in atomics the session stores once per batch. A kill cancels
//! the client's token: its session drops whatever is pending and closes, as Redis does.

use std::collections::HashMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::command::{self, CommandId};

/// Every connected client, by id.
#[derive(Default)]
pub struct Clients {
    all: Mutex<HashMap<u64, Arc<Client>>>,
}

impl Clients {
    /// Register a client, killed by cancelling `kill`; it leaves the registry when the returned
    /// guard is dropped.
    pub fn join(
        self: &Arc<Self>,
        id: u64,
        peer: SocketAddr,
        local: SocketAddr,
        kill: CancellationToken,
    ) -> Registered {
        let (inject, injected) = tokio::sync::mpsc::channel(INJECTED);
        let client = Arc::new(Client {
            id,
            peer,
            local,
            since: Instant::now(),
            shown: Mutex::new(Shown::default()),
            active_ms: AtomicU64::new(0),
            last_command: AtomicU32::new(NO_COMMAND),
            kill,
            blocked: Mutex::new(None),
            inject,
        });
        self.all
            .lock()
            .expect("clients lock")
            .insert(id, client.clone());
        Registered {
            clients: self.clone(),
            client,
            injected,
        }
    }

    /// Kill the oldest client `filter` keeps; `false` if there is none.
    pub fn kill_oldest(&self, filter: impl Fn(&Client) -> bool) -> bool {
        let all = self.all.lock().expect("clients lock");
        let oldest = all
            .values()
            .filter(|c| !c.kill.is_cancelled() && filter(c))
            .min_by_key(|c| c.id);
        match oldest {
            Some(client) => {
                client.kill.cancel();
                true
            }
            None => false,
        }
    }

    /// The client with this id.
    pub fn get(&self, id: u64) -> Option<Arc<Client>> {
        self.all.lock().expect("clients lock").get(&id).cloned()
    }

    /// The clients `filter` keeps, oldest first.
    pub fn matching(&self, filter: impl Fn(&Client) -> bool) -> Vec<Arc<Client>> {
        let mut found: Vec<Arc<Client>> = self
            .all
            .lock()
            .expect("clients lock")
            .values()
            .filter(|c| filter(c))
            .cloned()
            .collect();
        found.sort_by_key(|c| c.id);
        found
    }
}

/// A session's place in the registry; dropping it leaves.
pub struct Registered {
    clients: Arc<Clients>,
    pub client: Arc<Client>,
    /// Frames other clients send this one (invalidations of a tracking client that redirects
    /// to it), for the session to write.
    pub injected: tokio::sync::mpsc::Receiver<Injected>,
}

/// A frame another client hands this one, and the tenant it is for: the session writes it only
/// while it is still that tenant's (a client that authenticated as another tenant since the
/// frame was sent never sees it).
pub struct Injected {
    pub frame: Bytes,
    pub tenant: Option<String>,
}

/// Frames waiting for a client that does not take them: more are dropped, as Redis drops
/// output for a client past its output limit (by disconnecting it).
const INJECTED: usize = 1024;

impl Drop for Registered {
    fn drop(&mut self) {
        self.clients
            .all
            .lock()
            .expect("clients lock")
            .remove(&self.client.id);
    }
}

/// What a session publishes of itself for CLIENT LIST.
#[derive(Clone, Debug, Default)]
pub struct Shown {
    pub name: Option<Bytes>,
    pub lib_name: Option<Bytes>,
    pub lib_ver: Option<Bytes>,
    /// The tenant it authenticated as.
    pub tenant: Option<String>,
    pub db: u32,
    pub resp3: bool,
    /// It holds a subscriber connection.
    pub pubsub: bool,
    /// It is in MONITOR mode.
    pub monitor: bool,
}

/// `last_command` before the first request.
const NO_COMMAND: u32 = u32::MAX;

/// One connected client.
pub struct Client {
    pub id: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    since: Instant,
    shown: Mutex<Shown>,
    /// Milliseconds from `since` to its last request.
    active_ms: AtomicU64,
    /// Its last command's id (`NO_COMMAND`: none yet).
    last_command: AtomicU32,
    /// Cancelled by CLIENT KILL.
    pub kill: CancellationToken,
    /// While it waits in a blocking command: the server, and the server's id for the
    /// connection it is blocked on (CLIENT UNBLOCK).
    blocked: Mutex<Option<(Arc<str>, i64)>>,
    inject: tokio::sync::mpsc::Sender<Injected>,
}

impl Client {
    /// It waits on `server`'s connection `conn_id` (`None`: no longer).
    pub fn set_blocked(&self, on: Option<(Arc<str>, i64)>) {
        *self.blocked.lock().unwrap_or_else(|e| e.into_inner()) = on;
    }

    /// Hand this client a frame to write if it is (still) `tenant`'s client (`false`: it is
    /// gone, or not taking them).
    pub fn inject(&self, frame: Bytes, tenant: Option<String>) -> bool {
        self.inject.try_send(Injected { frame, tenant }).is_ok()
    }

    /// Where it is blocked, if it is.
    pub fn blocked(&self) -> Option<(Arc<str>, i64)> {
        self.blocked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replace what CLIENT LIST shows of it.
    pub fn publish(&self, shown: Shown) {
        *self.shown.lock().expect("client lock") = shown;
    }

    pub fn shown(&self) -> Shown {
        self.shown.lock().expect("client lock").clone()
    }

    /// It has authenticated as a tenant.
    pub fn authenticated(&self) -> bool {
        self.shown.lock().expect("client lock").tenant.is_some()
    }

    /// It sent `command` at `now`.
    pub fn active(&self, now: Instant, command: CommandId) {
        let ms = now.saturating_duration_since(self.since).as_millis() as u64;
        self.active_ms.store(ms, Relaxed);
        self.last_command.store(u32::from(command), Relaxed);
    }

    /// Seconds since it connected.
    pub fn age(&self) -> u64 {
        self.since.elapsed().as_secs()
    }

    /// Its line in CLIENT LIST / CLIENT INFO format. keygate keeps no per-client query or
    /// output buffer sizes of Redis's kind, so those fields are 0; `fd` is -1.
    /// The client's CLIENT LIST line. `current`: this is the client asking, running that
    /// command, which takes `qbuf` bytes of its query buffer (as Redis shows it).
    pub fn line(&self, current: Option<(&str, usize)>) -> String {
        let shown = self.shown();
        let text = |b: &Option<Bytes>| {
            b.as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let idle_ms =
            (self.since.elapsed().as_millis() as u64).saturating_sub(self.active_ms.load(Relaxed));
        let qbuf = current.map_or(0, |(_, qbuf)| qbuf);
        let cmd = current.map(|(name, _)| name).unwrap_or_else(|| {
            match self.last_command.load(Relaxed) {
                NO_COMMAND => "NULL",
                id => command::name_of(id as CommandId),
            }
        });
        let mut line = String::with_capacity(320);
        let _ = writeln!(
            line,
            "id={} addr={} laddr={} fd=-1 name={} age={} idle={} flags={} db={} sub=0 psub=0 ssub=0 multi=-1 qbuf={qbuf} qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user={} redir=-1 resp={} lib-name={} lib-ver={}",
            self.id,
            self.peer,
            self.local,
            text(&shown.name),
            self.age(),
            idle_ms / 1000,
            match (shown.monitor, shown.pubsub) {
                (true, _) => "O",
                (false, true) => "P",
                (false, false) => "N",
            },
            shown.db,
            cmd,
            shown.tenant.as_deref().unwrap_or("default"),
            if shown.resp3 { 3 } else { 2 },
            text(&shown.lib_name),
            text(&shown.lib_ver),
        );
        line
    }
}

/// CLIENT TRACKING's key tables (keygate keeps them, see session::feeds), counted over every
/// client: `tracking-table-max-keys` bounds them together, as Redis bounds its one table, so a
/// client that reads ever more keys cannot grow keygate's memory without end. Past the bound,
/// the client adding keys has some of its own evicted, each with an invalidation, as Redis does.
pub struct TrackedKeys {
    count: AtomicUsize,
    /// 0: no bound (as in Redis). A change is announced to the tracking sessions, which evict
    /// at once, as Redis's cron does.
    max: tokio::sync::watch::Sender<usize>,
}

impl Default for TrackedKeys {
    fn default() -> Self {
        TrackedKeys {
            count: AtomicUsize::new(0),
            // Redis's default `tracking-table-max-keys`.
            max: tokio::sync::watch::Sender::new(1_000_000),
        }
    }
}

impl TrackedKeys {
    /// `CONFIG SET tracking-table-max-keys` sent through keygate.
    pub fn set_max(&self, max: usize) {
        self.max.send_replace(max);
    }

    /// Word of changes to the bound.
    pub fn bound_changes(&self) -> tokio::sync::watch::Receiver<usize> {
        self.max.subscribe()
    }

    pub fn added(&self, n: usize) {
        self.count.fetch_add(n, Ordering::Relaxed);
    }

    pub fn removed(&self, n: usize) {
        self.count.fetch_sub(n, Ordering::Relaxed);
    }

    /// More keys tracked than the bound allows.
    pub fn over(&self) -> bool {
        let max = *self.max.borrow();
        max != 0 && self.count.load(Ordering::Relaxed) > max
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}
