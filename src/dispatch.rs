//! Running a plan against the backends: the only place plans act.
//!
//! Every request is sent at once, when the plan is run; what comes back is a `Reply` the session
//! waits on in request order. Split commands send all their parts before waiting on any, so the
//! shards work in parallel. In cluster mode every request is followed through the cluster's
//! redirections: `-MOVED` (the slot map is stale: refresh it in the background, and retry at the
//! named node), `-ASK` (retry once at the named node, after `ASKING`), `-TRYAGAIN` and
//! `-CLUSTERDOWN` (retry a few times with backoff). Clients never see a redirection.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::oneshot;

use crate::backend::{Backend, BreakerState, Caller, ReplyResult};
use crate::config::UpstreamKind;
use crate::error::Error;
use crate::placement::slots::{self, Redirect};
use crate::proxy::Proxy;
use crate::resp::{self, value};
use crate::route::{self, merge, Plan};
use crate::topology::Topology;

/// A request's reply, now or later.
pub enum Reply {
    /// keygate's own answer.
    Ready(Bytes),
    /// One backend's reply, forwarded as it is.
    Backend(oneshot::Receiver<ReplyResult>),
    /// A reply that needs more work: merging, redirections, cursor rewriting.
    Later(Pin<Box<dyn Future<Output = Bytes> + Send>>),
}

impl Reply {
    /// Wait for the reply's bytes (for keygate's own requests: accounting, fleet limits).
    pub async fn bytes(self) -> Bytes {
        match self {
            Reply::Ready(bytes) => bytes,
            Reply::Backend(rx) => reply_bytes(rx.await),
            Reply::Later(later) => later.await,
        }
    }
}

type Pending = Pin<Box<dyn Future<Output = Bytes> + Send>>;

/// How many times one request follows redirections or retries before giving up.
const MAX_ATTEMPTS: u32 = 5;

/// Run `plan`. `read`: the command only reads, and may go to a replica (`read_from`).
pub fn run(
    proxy: &Arc<Proxy>,
    topology: &Arc<Topology>,
    caller: Caller,
    args: Vec<Bytes>,
    plan: Plan,
    read: bool,
) -> Reply {
    let cluster = topology.kind == UpstreamKind::Cluster;
    let node = |primary: usize| match read {
        true => topology.reader(primary, caller.id),
        false => &topology.backends[primary],
    };
    match plan {
        Plan::One(target) if !cluster => Reply::Backend(node(target.backend).send(caller, args)),
        Plan::One(target) => Reply::Later(send(proxy, node(target.backend), caller, args)),
        Plan::Split { parts, merge } => {
            let layout: Vec<Vec<usize>> = parts.iter().map(|p| p.keys.clone()).collect();
            let sent: Vec<Pending> = parts
                .into_iter()
                .map(|part| match cluster {
                    true => send(proxy, node(part.target.backend), caller, part.args),
                    false => send_direct(node(part.target.backend), caller, part.args),
                })
                .collect();
            Reply::Later(Box::pin(async move {
                let replies = join(sent).await;
                merge::combine(merge, &replies, &layout, "")
            }))
        }
        Plan::All { args, merge } => {
            let sent: Vec<Pending> = (0..topology.backends.len())
                .map(|i| send_direct(&topology.backends[i], caller, args.clone()))
                .collect();
            let header = match merge {
                merge::Merge::Info if wants_keygate_section(&args) => info_header(proxy, topology),
                _ => String::new(),
            };
            Reply::Later(Box::pin(async move {
                let replies = join(sent).await;
                merge::combine(merge, &replies, &[], &header)
            }))
        }
        Plan::Scan {
            target,
            args,
            shard,
            epoch,
        } => {
            let shards = topology.backends.len();
            let reply = send_direct(&topology.backends[target.backend], caller, args);
            Reply::Later(Box::pin(async move {
                let reply = reply.await;
                scan_reply(reply, shard, shards, epoch)
            }))
        }
    }
}

async fn join(sent: Vec<Pending>) -> Vec<Bytes> {
    let mut replies = Vec::with_capacity(sent.len());
    for reply in sent {
        replies.push(reply.await);
    }
    replies
}

pub fn reply_bytes(result: Result<ReplyResult, oneshot::error::RecvError>) -> Bytes {
    match result {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => e.to_reply(),
        Err(_) => Error::Internal("the backend connection handling this request failed").to_reply(),
    }
}

/// Send to one backend, no redirections to follow (standalone, ketama, keyspace-wide).
fn send_direct(backend: &Backend, caller: Caller, args: Vec<Bytes>) -> Pending {
    let rx = backend.send(caller, args);
    Box::pin(async move { reply_bytes(rx.await) })
}

/// Send to one node of a cluster, following redirections.
fn send(proxy: &Arc<Proxy>, backend: &Arc<Backend>, caller: Caller, args: Vec<Bytes>) -> Pending {
    let backend = backend.clone();
    // Sent now; the redirections, if any, are followed when the reply is awaited.
    let rx = backend.send(caller, args.clone());
    let proxy = proxy.clone();
    Box::pin(async move {
        let mut reply = reply_bytes(rx.await);
        for attempt in 0..MAX_ATTEMPTS {
            let (next, asking) = match slots::parse_redirect(&reply) {
                Some(Redirect::Moved { addr, .. }) => {
                    proxy.metrics.moved.fetch_add(1, Relaxed);
                    proxy.refresh_soon();
                    (node(&proxy, &addr).await, false)
                }
                Some(Redirect::Ask { addr, .. }) => {
                    proxy.metrics.ask.fetch_add(1, Relaxed);
                    (node(&proxy, &addr).await, true)
                }
                None if slots::is_transient(&reply) => {
                    tokio::time::sleep(Duration::from_millis(10 << attempt)).await;
                    proxy.refresh_soon();
                    (Some(backend.clone()), false)
                }
                None => return reply,
            };
            let Some(next) = next else {
                return resp::error("ERR keygate: redirected to a cluster node it does not know");
            };
            reply = reply_bytes(next.send_with(caller, args.clone(), asking).await);
        }
        if slots::parse_redirect(&reply).is_some() {
            return resp::error("ERR keygate: too many cluster redirections for one request");
        }
        reply
    })
}

/// Run a blocking command (BLPOP, XREAD BLOCK, WAIT...) on a connection of its own to
/// `backend`, so it never stalls a shared one, following cluster redirections. The reply may
/// take as long as the command blocks: no request timeout applies. Dropping the returned reply
/// (the client left) drops the connection, closing it: one that may still deliver a reply is
/// never reused. One that delivered its reply is in step and goes back for reuse.
pub fn blocking(
    proxy: &Arc<Proxy>,
    topology: &Arc<Topology>,
    caller: Caller,
    backend: usize,
    args: Vec<Bytes>,
) -> Reply {
    let mut backend = topology.backends[backend].clone();
    let proxy = proxy.clone();
    let wait = args[0].eq_ignore_ascii_case(b"wait") || args[0].eq_ignore_ascii_case(b"waitaof");
    Reply::Later(Box::pin(async move {
        // INFO's blocked_clients, while this client waits here.
        proxy.metrics.clients_blocked.fetch_add(1, Relaxed);
        let _blocked = Unblock(&proxy.metrics.clients_blocked);
        let mut asking = false;
        for attempt in 0..MAX_ATTEMPTS {
            let mut conn = match backend.blocking(caller.flavor).await {
                Ok(conn) => conn,
                Err(e) => return e.to_reply(),
            };
            if wait {
                // WAIT (and WAITAOF, for fsyncs) counts replicas that acknowledged the writes
                // of *its* connection, by replication offset. The
                // client's writes went over a shared one, and all of them are answered (the
                // session holds WAIT until they are), so a write here first (a PUBLISH, which
                // Redis propagates to replicas) makes WAIT cover them: its offset is later.
                let mark = [
                    Bytes::from_static(b"PUBLISH"),
                    Bytes::from_static(b"__keygate__:wait"),
                    Bytes::new(),
                ];
                if let Err(e) = conn.conn.call(&mark).await {
                    return e.to_reply();
                }
            }
            if asking {
                match conn.conn.call(&[Bytes::from_static(b"ASKING")]).await {
                    Ok(_) => {}
                    Err(e) => return e.to_reply(),
                }
            }
            // CLIENT UNBLOCK through keygate finds the connection this client waits on.
            let kill = args[0].eq_ignore_ascii_case(b"script")
                || args[0].eq_ignore_ascii_case(b"function");
            let client = proxy.clients.get(caller.id).filter(|_| !kill);
            if let Some(client) = &client {
                if let Some(conn_id) = conn.conn.server_id().await {
                    client.set_blocked(Some((backend.addr.clone(), conn_id)));
                }
            }
            let _unblocked = client.map(Unblocked);
            let reply = match conn.conn.call(&args).await {
                Ok(reply) => reply,
                // The connection is dropped with `conn`: it is no longer known to be in step.
                Err(e) => {
                    backend.breaker().failure(&e.to_string());
                    return e.to_reply();
                }
            };
            backend.release(conn);
            let next = match slots::parse_redirect(&reply) {
                Some(Redirect::Moved { addr, .. }) => {
                    proxy.metrics.moved.fetch_add(1, Relaxed);
                    proxy.refresh_soon();
                    asking = false;
                    node(&proxy, &addr).await
                }
                Some(Redirect::Ask { addr, .. }) => {
                    proxy.metrics.ask.fetch_add(1, Relaxed);
                    asking = true;
                    node(&proxy, &addr).await
                }
                None if slots::is_transient(&reply) && attempt + 1 < MAX_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(10 << attempt)).await;
                    proxy.refresh_soon();
                    asking = false;
                    Some(backend.clone())
                }
                None => return reply,
            };
            match next {
                Some(next) => backend = next,
                None => {
                    return resp::error(
                        "ERR keygate: redirected to a cluster node it does not know",
                    )
                }
            }
        }
        resp::error("ERR keygate: too many cluster redirections for one request")
    }))
}

/// The backend for a node address, waiting briefly for a refresh to learn a new node.
async fn node(proxy: &Proxy, addr: &str) -> Option<Arc<Backend>> {
    for _ in 0..100 {
        let topology = proxy.topology.load();
        if let Some(i) = topology.backend_by_addr(addr) {
            return Some(topology.backends[i].clone());
        }
        proxy.refresh_soon();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Re-encode a shard's SCAN reply with keygate's cursor.
fn scan_reply(reply: Bytes, shard: usize, shards: usize, epoch: u64) -> Bytes {
    if reply.first() == Some(&b'-') {
        return reply;
    }
    let malformed = || resp::error("ERR keygate: unexpected SCAN reply from a shard");
    let Some(items) = value::elements(&reply) else {
        return malformed();
    };
    let [cursor, keys] = items.as_slice() else {
        return malformed();
    };
    let Some(value::Value::Bulk(Some(cursor))) = value::parse(cursor) else {
        return malformed();
    };
    let Some(inner) = std::str::from_utf8(&cursor)
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return malformed();
    };
    let next = match (inner, shard + 1 < shards) {
        (0, true) => route::scan_cursor(0, shard + 1, epoch),
        (0, false) => Some(0),
        (inner, _) => route::scan_cursor(inner, shard, epoch),
    };
    let Some(next) = next else {
        return resp::error("ERR keygate: a shard's SCAN cursor is too large to carry");
    };
    let mut out = BytesMut::with_capacity(keys.len() + 32);
    resp::put_header(&mut out, b'*', 2);
    resp::put_bulk(&mut out, Some(next.to_string().as_bytes()));
    out.put_slice(keys);
    out.freeze()
}

/// Forgets where a client is blocked when its blocking command ends, however it ends.
struct Unblocked(Arc<crate::clients::Client>);

impl Drop for Unblocked {
    fn drop(&mut self) {
        self.0.set_blocked(None);
    }
}

/// Counts a client out of `clients_blocked` when its blocking command ends, however it ends.
struct Unblock<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for Unblock<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// INFO with no section, or asking for `keygate`, `default`, `all` or `everything`.
fn wants_keygate_section(args: &[Bytes]) -> bool {
    args.len() == 1
        || args[1..].iter().any(|a| {
            let a = a.to_ascii_lowercase();
            matches!(&a[..], b"keygate" | b"default" | b"all" | b"everything")
        })
}

/// The commit keygate was built from, as INFO shows it: Redis's `00000000` when unknown.
pub fn git_sha1() -> &'static str {
    if crate::GIT_SHA1.is_empty() {
        "00000000"
    } else {
        crate::GIT_SHA1
    }
}

/// keygate's own INFO section: version, uptime, clients, tenants, topology and every backend
/// with its state.
fn info_header(proxy: &Proxy, topology: &Topology) -> String {
    let up = topology
        .backends
        .iter()
        .filter(|b| b.connections_up() > 0)
        .count();
    let mut text = format!(
        "# keygate\r\nkeygate_version:{}\r\nkeygate_git_sha1:{}\r\nkeygate_git_dirty:{}\r\nuptime_in_seconds:{}\r\nconnected_clients:{}\r\nblocked_clients:{}\r\npaused_clients:{}\r\ntenants:{}\r\nlearned_commands:{}\r\nupstream_kind:{}\r\nshards:{}\r\nshards_connected:{up}\r\ntopology_epoch:{}\r\n",
        crate::VERSION,
        git_sha1(),
        u8::from(crate::GIT_DIRTY),
        proxy.started.elapsed().as_secs(),
        proxy.metrics.clients_connected.load(Relaxed),
        proxy.metrics.clients_blocked.load(Relaxed) + proxy.pause.held() as u64,
        proxy.pause.held(),
        proxy.tenants.load().len(),
        proxy.commands.load().len(),
        topology.kind.name(),
        topology.backends.len(),
        topology.epoch
    );
    let replicas = topology.replicas.iter().flatten().map(|b| (b, "replica"));
    let all = topology
        .backends
        .iter()
        .map(|b| (b, "primary"))
        .chain(replicas);
    for (i, (backend, role)) in all.enumerate() {
        let breaker = match backend.breaker().state() {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        };
        text.push_str(&format!(
            "backend{i}:addr={},role={role},connections={},breaker={breaker},in_flight={},pinned={}\r\n",
            backend.addr,
            backend.connections_up(),
            backend.in_flight(),
            backend.pinned(),
        ));
    }
    text
}

/// Keyspace-wide commands for one tenant, emulated over its prefix on every shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantKeyspace {
    /// DBSIZE: the tenant's keys, counted.
    Count,
    /// FLUSHDB / FLUSHALL: the tenant's keys, unlinked (not atomic: keys written meanwhile may
    /// survive).
    Flush,
    /// RANDOMKEY: one of the tenant's keys.
    Random,
    /// INFO: a synthetic, tenant-scoped INFO.
    Info,
}

/// Run a tenant keyspace operation. `pattern` is the tenant's prefix escaped as a glob plus `*`;
/// only keys that start with `prefix` are ever counted, returned or deleted.
pub fn tenant_keyspace(
    op: TenantKeyspace,
    topology: &Arc<Topology>,
    caller: Caller,
    prefix: Bytes,
    pattern: Bytes,
    info: String,
) -> Reply {
    let topology = topology.clone();
    Reply::Later(Box::pin(async move {
        let mut order: Vec<usize> = (0..topology.backends.len()).collect();
        if op == TenantKeyspace::Random {
            fastrand::shuffle(&mut order);
        }
        let mut count: i64 = 0;
        for shard in order {
            let backend = &topology.backends[shard];
            let mut cursor = Bytes::from_static(b"0");
            loop {
                let count_arg = Bytes::from_static(if op == TenantKeyspace::Random {
                    b"100"
                } else {
                    b"1000"
                });
                let args = vec![
                    Bytes::from_static(b"SCAN"),
                    cursor.clone(),
                    Bytes::from_static(b"MATCH"),
                    pattern.clone(),
                    Bytes::from_static(b"COUNT"),
                    count_arg,
                ];
                let reply = reply_bytes(backend.send(caller, args).await);
                if reply.first() == Some(&b'-') {
                    return reply;
                }
                let Some((next, keys)) = scan_page(&reply) else {
                    return resp::error("ERR keygate: unexpected SCAN reply from a shard");
                };
                let keys: Vec<Bytes> = keys
                    .into_iter()
                    .filter(|k| k.starts_with(&prefix))
                    .collect();
                match op {
                    TenantKeyspace::Count | TenantKeyspace::Info => count += keys.len() as i64,
                    TenantKeyspace::Random if !keys.is_empty() => {
                        let key = &keys[fastrand::usize(..keys.len())];
                        return resp::bulk(Some(&key[prefix.len()..]));
                    }
                    TenantKeyspace::Random => {}
                    TenantKeyspace::Flush => {
                        // One UNLINK per key: in a cluster, a page's keys span slots.
                        let sent: Vec<_> = keys
                            .into_iter()
                            .map(|k| backend.send(caller, vec![Bytes::from_static(b"UNLINK"), k]))
                            .collect();
                        for rx in sent {
                            let reply = reply_bytes(rx.await);
                            if reply.first() == Some(&b'-') {
                                return reply;
                            }
                        }
                    }
                }
                if &next[..] == b"0" {
                    break;
                }
                cursor = next;
            }
        }
        match op {
            TenantKeyspace::Count => resp::integer(count),
            TenantKeyspace::Flush => resp::simple("OK"),
            TenantKeyspace::Random => resp::null(caller.flavor.resp3),
            TenantKeyspace::Info => {
                let text = format!("{info}\r\n# Keyspace\r\ndb0:keys={count}\r\n");
                resp::bulk(Some(text.as_bytes()))
            }
        }
    }))
}

/// A SCAN reply's next cursor and keys.
pub fn scan_page(reply: &Bytes) -> Option<(Bytes, Vec<Bytes>)> {
    let parts = value::elements(reply)?;
    let [cursor, keys] = parts.as_slice() else {
        return None;
    };
    let value::Value::Bulk(Some(cursor)) = value::parse(cursor)? else {
        return None;
    };
    let value::Value::Array(Some(items)) = value::parse(keys)? else {
        return None;
    };
    let keys = items
        .into_iter()
        .filter_map(|v| match v {
            value::Value::Bulk(Some(k)) => Some(k),
            _ => None,
        })
        .collect();
    Some((cursor, keys))
}
