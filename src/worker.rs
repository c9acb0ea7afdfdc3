//! The threads client sessions run on: thread-per-core.
//!
//! Each worker is one OS thread running its own single-threaded tokio runtime, with its own
//! clients and its own pipelined backend connections (`backend` keeps one pool per worker). A
//! request therefore never leaves the thread it arrived on: the client's task hands it to a
//! backend connection's task on the same loop, which writes everything that arrived in one turn
//! of the loop in one `writev`, and the reply comes back the same way. With tokio's
//! work-stealing runtime (keygate before issue 18) the two tasks often sat on different threads,
//! so every request cost cross-thread wake-ups (an eventfd write and a futex) and the backend
//! writes coalesced less; per request, threads = 2 cost 1.3–1.7× threads = 1.
//!
//! What the workers share is read-mostly: the config, topology, tenants and command-table
//! snapshots (one `ArcSwap` each) and counters. State that must stay exact across the process
//! (CLIENT LIST/KILL, MONITOR, the slowlog, tenants' connection counts and rate limits, CLIENT
//! PAUSE) is one structure in `proxy::Proxy`, touched per connection or per batch, not per
//! request byte.
//!
//! One acceptor (on worker 0, the thread that also runs the background tasks: admin, refresh,
//! reload, learning) gives each new client to the worker with the fewest clients: the kernel's
//! SO_REUSEPORT spreading hashes the 4-tuple and can leave one core with twice another's
//! clients, and one accept per connection is no cost worth saving. A client stays on its
//! worker for life.
//!
//! `threads = 0` means one worker per CPU keygate may run on; `connections_per_server` is per
//! worker (a pipelined connection belongs to one loop), so a server sees `threads ×
//! connections_per_server` pooled connections from one keygate.
//!
//! In-process (tests, or a `Server` built without `Workers`), everything runs on the caller's
//! runtime as worker 0.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

thread_local! {
    /// This thread's worker (0 outside a worker thread).
    static INDEX: Cell<usize> = const { Cell::new(0) };
    /// Client sessions running on this thread.
    static CLIENTS: Cell<usize> = const { Cell::new(0) };
}

/// How many clients the calling thread's worker serves now. A backend connection waits a loop
/// turn for more requests to join a write only when there can be any (see `backend`).
pub fn clients_here() -> usize {
    CLIENTS.with(|c| c.get())
}

/// Workers in this process (1 unless `Workers::start` made more); backends size their per-worker
/// pools by it.
static COUNT: AtomicUsize = AtomicUsize::new(1);

/// The worker the calling thread belongs to.
pub fn index() -> usize {
    INDEX.with(|i| i.get())
}

/// How many workers this process runs.
pub fn count() -> usize {
    COUNT.load(Relaxed)
}

/// The worker threads' runtimes, and how many clients each serves.
#[derive(Clone)]
pub struct Workers {
    handles: Arc<[Handle]>,
    clients: Arc<[AtomicUsize]>,
}

impl Workers {
    /// `threads` workers: the calling thread's runtime (`main`, worker 0) and `threads - 1`
    /// threads of their own, each a current-thread runtime that runs until the process exits.
    pub fn start(main: Handle, threads: usize) -> std::io::Result<Workers> {
        let mut handles = vec![main];
        for index in 1..threads.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            std::thread::Builder::new()
                .name(format!("keygate-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(index));
                    runtime.block_on(std::future::pending::<()>());
                })?;
        }
        COUNT.store(handles.len(), Relaxed);
        Ok(Workers {
            clients: handles.iter().map(|_| AtomicUsize::new(0)).collect(),
            handles: handles.into(),
        })
    }

    /// One worker: the calling thread's runtime (in-process servers, tests).
    pub fn current() -> Workers {
        Workers {
            handles: [Handle::current()].into(),
            clients: [AtomicUsize::new(0)].into(),
        }
    }

    /// Run a new client's session, tracked by `sessions`, on the worker with the fewest
    /// clients. `session` runs there, so whatever it registers (its sockets) belongs to that
    /// worker's runtime.
    pub fn spawn<F, Fut>(&self, sessions: &TaskTracker, session: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (worker, _) = self
            .clients
            .iter()
            .enumerate()
            .min_by_key(|(_, n)| n.load(Relaxed))
            .expect("at least one worker");
        let clients = self.clients.clone();
        clients[worker].fetch_add(1, Relaxed);
        self.handles[worker].spawn(sessions.track_future(async move {
            CLIENTS.with(|c| c.set(c.get() + 1));
            let _leaving = Leaving(clients, worker);
            session().await;
        }));
    }
}

/// Counts a client off its worker when its session ends (or panics).
struct Leaving(Arc<[AtomicUsize]>, usize);

impl Drop for Leaving {
    fn drop(&mut self) {
        self.0[self.1].fetch_sub(1, Relaxed);
        CLIENTS.with(|c| c.set(c.get().saturating_sub(1)));
    }
}
