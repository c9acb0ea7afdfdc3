//! keygate: a Redis-protocol proxy.
//!
//! The modules, in the order a request travels through them:
//!
//! - `config`: the TOML file's shape, validated once into a `Config`.
//! - `server`: the accept loop, the client limit, graceful shutdown; `listener`: TCP or Unix
//!   socket; `worker`: the threads sessions run on, each its own event loop with its own
//!   backend connections; `proxy`: the state they share (`samples`: the status page's history).
//! - `session`: one client: read requests, keep up to N in flight, write replies in order;
//!   answers the commands that touch connection state itself; transactions and pub/sub.
//! - `resp`: the wire format without I/O: request decoder, reply scanner, encoders.
//! - `command`: ONE command table (generated from Redis) and keygate's policy for each command.
//! - `route`: pure planning of where a command goes (split/merge), over `placement`: the ketama
//!   ring and cluster slots.
//! - `dispatch`: runs a plan: sends, joins fan-out, follows cluster redirections; runs blocking
//!   commands on connections of their own.
//! - `topology`: the backends and placement, one snapshot behind one `ArcSwap`;
//!   `refresh` rebuilds a cluster's (and `sentinel` a sentinel-managed primary's) in the
//!   background; `reload` swaps in a new config.
//! - `backend`: per server, pools of pipelined connections with FIFO reply matching (one per
//!   protocol and database in use), and connections of one client's own: pinned (transactions),
//!   blocking, subscriber.
//! - `write_queue`: batched, zero-copy socket writes for both sides.
//! - `admin`, `metrics`, `status`: /health, /ready, /metrics, POST /reload, the status page.
//! - `monitor`: MONITOR's lines for what clients send to keygate, as Redis writes them.
//! - `pause`: CLIENT PAUSE / UNPAUSE over keygate's own clients.
//! - `error`: the one error enum; every client-facing error text.
//!
//! Everything from `resp` to `route` does no I/O, so it is unit-tested, benchmarked and fuzzed
//! without sockets.
//!
//! Invariants:
//! 1. Replies leave in request order, always, and only to the request they answer: a desync in a
//!    multiplexing proxy would leak one client's data to another.
//! 2. Every error that does not close the connection becomes exactly one RESP error reply.
//! 3. No connection state (name, reply mode, auth, WATCH, MULTI, subscriptions) reaches a shared
//!    backend connection; a shared connection's protocol and database are fixed when it connects,
//!    and only clients of that protocol and database use it.
//! 4. One client cannot hold up or crowd out the others: a frame a connection's protocol does not
//!    allow poisons it (no reply after it is delivered); scripts run on a lane of their own; a
//!    client that does not read is cut off at its output limit and is never read faster than its
//!    replies leave; a timeout alone never opens a server's breaker; unauthenticated connections
//!    and failed AUTHs are limited per address (and name), never across tenants.
//!    tests/isolation.rs, tests/backend.rs and tests/cli.rs play each attacker.

#![forbid(unsafe_code)]

/// keygate's version (Cargo.toml).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit keygate was built from (12 hex digits), empty when it was not built from a
/// checkout; set by build.rs.
pub const GIT_SHA1: &str = env!("KEYGATE_GIT_SHA1");
/// Whether tracked files differed from that commit when keygate was built.
pub const GIT_DIRTY: bool = env!("KEYGATE_GIT_DIRTY").as_bytes()[0] == b'1';
/// What `keygate --version` prints after the name: `0.1.0 (git 1a2b3c4d5e6f)`, with
/// `, modified` for a dirty tree, or the version alone outside a checkout.
pub const VERSION_LINE: &str = env!("KEYGATE_VERSION_LINE");

pub mod access;
pub mod accounting;
pub mod admin;
pub mod backend;
pub mod cleanup;
pub mod clients;
pub mod command;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod fleet;
pub mod histogram;
pub mod learn;
pub mod listener;
pub mod metrics;
pub mod monitor;
pub mod pause;
pub mod placement;
pub mod proxy;
pub mod refresh;
pub mod reload;
pub mod resp;
pub mod route;
pub mod samples;
pub mod sentinel;
pub mod server;
pub mod session;
pub mod slowlog;
pub mod status;
pub mod tenant;
pub mod tls;
pub mod topology;
pub mod upstreams;
pub mod worker;
pub mod write_queue;
