//! Learning the command table from the servers: at start, whenever the set of primaries changes
//! (a reload, a cluster's new slot map, a sentinel's new primary) and every few minutes (a
//! server upgraded in place), ask each primary `COMMAND` on a one-off connection and swap in the
//! commands every one of them has beyond keygate's built-in table (see `command::learned`).
//!
//! Requests never wait for it: until a primary answers, a command only a newer server knows is
//! unknown, as before. A primary that cannot be asked keeps the last table (and is asked again
//! soon), so a server down for a moment does not make its commands vanish.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backend::{query_once, Backend};
use crate::command::learned::{self, Facts, Table};
use crate::proxy::Proxy;
use crate::resp::value;
use crate::topology::Topology;

/// How often the servers are asked again when nothing else prompts it.
const EVERY: Duration = Duration::from_secs(300);
/// How soon after a failure to ask again, doubling with each failure in a row up to `EVERY`, so
/// a server that is down is not asked more than its pools already ask it.
const RETRY: Duration = Duration::from_secs(1);

/// The background learner.
pub async fn run(proxy: Arc<Proxy>, shutdown: CancellationToken) {
    let mut swapped = proxy.topology_swapped.subscribe();
    let mut learned_from: Vec<Arc<str>> = Vec::new();
    let mut due = time::Instant::now();
    let mut retry = RETRY;
    loop {
        let topology = proxy.topology.load_full();
        let mut primaries: Vec<Arc<str>> =
            topology.backends.iter().map(|b| b.addr.clone()).collect();
        primaries.sort();
        let mut wait = EVERY;
        if !primaries.is_empty() && (primaries != learned_from || time::Instant::now() >= due) {
            match learn(&topology).await {
                Ok(table) => {
                    if table.len() != proxy.commands.load().len() {
                        info!(
                            commands = table.len(),
                            version = table.version.as_deref().unwrap_or("unknown"),
                            "commands learned from the servers beyond the built-in table"
                        );
                    }
                    proxy
                        .metrics
                        .learned_commands
                        .store(table.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    proxy.commands.store(Arc::new(table));
                    learned_from = primaries;
                    due = time::Instant::now() + EVERY;
                    retry = RETRY;
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?retry, "could not learn the servers' commands");
                    wait = retry;
                    retry = (retry * 2).min(EVERY);
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = swapped.changed() => {}
            _ = time::sleep(wait) => {}
        }
    }
}

/// Ask every primary of `topology`; the table of what they all have.
async fn learn(topology: &Topology) -> Result<Table, String> {
    let command = [Bytes::from_static(b"COMMAND")];
    let info = [Bytes::from_static(b"INFO"), Bytes::from_static(b"server")];
    let mut servers: Vec<Vec<Facts>> = Vec::new();
    let mut versions = None;
    for backend in &topology.backends {
        let reply = ask(backend, &command).await?;
        if let value::Value::Error(e) = &reply {
            return Err(format!(
                "{}: COMMAND: {}",
                backend.addr,
                String::from_utf8_lossy(e)
            ));
        }
        servers.push(learned::parse_command_reply(&reply));
        if versions.is_none() {
            if let Ok(value::Value::Bulk(Some(text))) = ask(backend, &info).await {
                versions = Some(server_versions(&text));
            }
        }
    }
    let (hello, redis) = versions.unwrap_or_default();
    let mut table = Table::build(servers, hello);
    table.redis_version = redis;
    Ok(table)
}

/// One request on a one-off connection to `backend`, its reply decoded.
async fn ask(backend: &Backend, args: &[Bytes]) -> Result<value::Value, String> {
    let reply = query_once(&backend.addr, backend.options(), args)
        .await
        .map_err(|e| format!("{}: {e}", backend.addr))?;
    value::parse(&reply).ok_or_else(|| format!("{}: an unreadable reply", backend.addr))
}

/// From INFO's text: the version the server gives in HELLO (Valkey's own, `valkey_version`,
/// else `redis_version`) and its `redis_version` (Valkey's is the Redis version it is
/// compatible with).
fn server_versions(info: &[u8]) -> (Option<Arc<str>>, Option<Arc<str>>) {
    let text = String::from_utf8_lossy(info);
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| Arc::from(v.trim()))
    };
    let redis = field("redis_version");
    (field("valkey_version").or_else(|| redis.clone()), redis)
}
