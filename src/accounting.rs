//! The background pass that measures what each tenant with a quota holds on the servers (see
//! tenant::quota for how its figures combine with the writes counted in between).
//!
//! One pass walks every primary's keyspace at once (each server concurrently; the databases of
//! tenants with `isolation = "database"` as well as database 0) with a small script that runs
//! `SCAN cursor COUNT batch` and returns each key found with its `MEMORY USAGE`. keygate
//! attributes every key to the tenant whose prefix it starts with (prefixes never nest), so one
//! walk measures all tenants, however many. A key of a tenant without a quota, or of no
//! tenant, costs its examination and nothing more.
//!
//! # Cost on the servers
//!
//! At most `[quota] scan_rate` keys examined per second per server (the pass sleeps after each
//! batch for the batch's share of a second), in calls of `[quota] batch` keys, each one script
//! that runs for the batch's SCAN and MEMORY USAGE calls. So a pass takes
//! `keys on the largest server / scan_rate` seconds, plus `[quota] interval` between passes:
//! that is the accounting's lag. Nothing runs without a tenant that has a quota.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Caller, Flavor};
use crate::config::Quota;
use crate::dispatch::reply_bytes;
use crate::proxy::Proxy;
use crate::resp::value::{self, Value};
use crate::tenant::TenantState;

/// SCAN one batch and return `{next cursor, {key, bytes, key, bytes, ...}}`.
const MEASURE: &str = "local page = redis.call('SCAN', ARGV[1], 'COUNT', ARGV[2]) \
local out = {} \
for _, key in ipairs(page[2]) do \
out[#out + 1] = key \
out[#out + 1] = redis.call('MEMORY', 'USAGE', key) or 0 \
end \
return {page[1], out}";

/// Run passes until shutdown, the first at once, each next `[quota] interval` after the last
/// ended.
pub async fn run(proxy: Arc<Proxy>, shutdown: CancellationToken) {
    let mut first = true;
    loop {
        let interval = proxy.config.load().quota.interval;
        if !first {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
        first = false;
        let tenants: Vec<Arc<TenantState>> = proxy
            .tenants
            .load()
            .iter()
            .filter(|t| t.usage.is_some())
            .cloned()
            .collect();
        restore(&proxy, &tenants).await;
        // One pass per upstream, over the servers of the tenants that live there.
        let mut by_upstream: Vec<(Arc<Proxy>, Vec<Arc<TenantState>>)> = Vec::new();
        for tenant in tenants {
            let Some(servers) = proxy.for_tenant(&tenant) else {
                continue;
            };
            match by_upstream
                .iter_mut()
                .find(|(p, _)| Arc::ptr_eq(p, &servers))
            {
                Some((_, list)) => list.push(tenant),
                None => by_upstream.push((servers, vec![tenant])),
            }
        }
        for (servers, tenants) in by_upstream {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = pass(&proxy, &servers, &tenants) => {}
            }
        }
    }
}

/// Which tenant a key belongs to, by database and prefix.
struct Owners {
    /// Database -> prefix -> index in the pass's tenant list.
    by_db: HashMap<u32, HashMap<Box<[u8]>, usize>>,
    /// The distinct prefix lengths, shortest first.
    lengths: Vec<usize>,
}

impl Owners {
    fn new(tenants: &[Arc<TenantState>]) -> Owners {
        let mut by_db: HashMap<u32, HashMap<Box<[u8]>, usize>> = HashMap::new();
        let mut lengths = Vec::new();
        for (i, t) in tenants.iter().enumerate() {
            let prefix = t.config.prefix.as_bytes();
            by_db
                .entry(t.config.database.unwrap_or(0))
                .or_default()
                .insert(prefix.into(), i);
            lengths.push(prefix.len());
        }
        lengths.sort_unstable();
        lengths.dedup();
        Owners { by_db, lengths }
    }

    fn owner(&self, prefixes: &HashMap<Box<[u8]>, usize>, key: &[u8]) -> Option<usize> {
        self.lengths
            .iter()
            .take_while(|&&n| n <= key.len())
            .find_map(|&n| prefixes.get(&key[..n]).copied())
    }
}

/// One pass over every primary; each quota tenant's usage is replaced by what it measured, if
/// every server answered (otherwise the writes counted meanwhile stay counted, and the next
/// pass tries again).
async fn pass(proxy: &Arc<Proxy>, servers: &Proxy, tenants: &[Arc<TenantState>]) {
    let started = Instant::now();
    for t in tenants {
        if let Some(usage) = &t.usage {
            usage.pass_started();
        }
    }
    let topology = servers.topology.load_full();
    let quota = proxy.config.load().quota.clone();
    let owners = Owners::new(tenants);
    let walks = topology
        .backends
        .iter()
        .map(|backend| walk(proxy, backend, &owners, tenants, &quota));
    let results = futures_util::future::join_all(walks).await;
    let mut totals = vec![(0u64, 0u64); tenants.len()];
    for result in results {
        match result {
            Ok(found) => {
                for (total, (bytes, keys)) in totals.iter_mut().zip(found) {
                    total.0 += bytes;
                    total.1 += keys;
                }
            }
            Err(why) => {
                proxy.metrics.quota_pass_failures.fetch_add(1, Relaxed);
                tracing::warn!(%why, "quota accounting pass incomplete; trying again next pass");
                return;
            }
        }
    }
    if topology.backends.is_empty() {
        return;
    }
    for (t, &(bytes, keys)) in tenants.iter().zip(&totals) {
        if let Some(usage) = &t.usage {
            usage.pass_completed(bytes, keys);
        }
    }
    save(proxy, tenants, &totals).await;
    let took = started.elapsed();
    proxy.metrics.quota_passes.fetch_add(1, Relaxed);
    proxy
        .metrics
        .quota_last_pass_us
        .store(took.as_micros() as u64, Relaxed);
    tracing::debug!(?took, tenants = tenants.len(), "quota accounting pass");
}

/// Each pass's figures are saved on the main upstream, `<[fleet] namespace>{<tenant>}:usage`
/// (bytes, keys), so a keygate that starts (or restarts, or joins a fleet) begins from the last
/// measurement instead of from nothing while its own first pass runs.
async fn save(proxy: &Arc<Proxy>, tenants: &[Arc<TenantState>], totals: &[(u64, u64)]) {
    let saves = tenants.iter().zip(totals).map(|(t, (bytes, keys))| {
        let key = crate::fleet::key(proxy, t, "usage");
        let args = vec![
            Bytes::from_static(b"HSET"),
            key.clone(),
            Bytes::from_static(b"bytes"),
            Bytes::from(bytes.to_string()),
            Bytes::from_static(b"keys"),
            Bytes::from(keys.to_string()),
        ];
        async move { crate::fleet::send_to_key(proxy, &key, args).await }
    });
    for reply in futures_util::future::join_all(saves).await {
        if reply.first() == Some(&b'-') {
            tracing::warn!(reply = %String::from_utf8_lossy(&reply).trim_end(), "saving quota usage failed");
        }
    }
}

/// Start each quota tenant not seen before from its saved figures, if any.
async fn restore(proxy: &Arc<Proxy>, tenants: &[Arc<TenantState>]) {
    let loads = tenants
        .iter()
        .filter_map(|t| Some((t, t.usage.as_ref()?)))
        .filter(|(_, usage)| !usage.restored.swap(true, Relaxed))
        .map(|(t, usage)| {
            let key = crate::fleet::key(proxy, t, "usage");
            let args = vec![
                Bytes::from_static(b"HMGET"),
                key.clone(),
                Bytes::from_static(b"bytes"),
                Bytes::from_static(b"keys"),
            ];
            async move {
                let reply = crate::fleet::send_to_key(proxy, &key, args).await;
                let Some(Value::Array(Some(items))) = value::parse(&reply) else {
                    return;
                };
                let number = |v: &Value| match v {
                    Value::Bulk(Some(b)) => std::str::from_utf8(b).ok()?.parse::<u64>().ok(),
                    _ => None,
                };
                if let [bytes, keys] = items.as_slice() {
                    if let (Some(bytes), Some(keys)) = (number(bytes), number(keys)) {
                        usage.restore(bytes, keys);
                    }
                }
            }
        });
    futures_util::future::join_all(loads).await;
}

/// Walk one server's databases; per tenant, the bytes and keys found.
async fn walk(
    proxy: &Proxy,
    backend: &Backend,
    owners: &Owners,
    tenants: &[Arc<TenantState>],
    quota: &Quota,
) -> Result<Vec<(u64, u64)>, String> {
    let mut found = vec![(0u64, 0u64); tenants.len()];
    let batch = Bytes::from(quota.batch.to_string());
    for (&db, prefixes) in &owners.by_db {
        let caller = Caller {
            id: 0,
            flavor: Flavor {
                db,
                ..Flavor::default()
            },
        };
        let mut cursor = Bytes::from_static(b"0");
        loop {
            let args = vec![
                Bytes::from_static(b"EVAL"),
                Bytes::from_static(MEASURE.as_bytes()),
                Bytes::from_static(b"0"),
                cursor,
                batch.clone(),
            ];
            let reply = reply_bytes(backend.send(caller, args).await);
            proxy.metrics.quota_calls.fetch_add(1, Relaxed);
            let (next, page) = measured_page(&reply).ok_or_else(|| {
                format!(
                    "{}: {}",
                    backend.addr,
                    String::from_utf8_lossy(&reply[..reply.len().min(200)]).trim_end()
                )
            })?;
            let examined = page.len() as u64;
            let mut seen: Vec<(usize, &[u8])> = Vec::new();
            for (key, bytes) in &page {
                if let Some(i) = owners.owner(prefixes, key) {
                    found[i].0 += bytes;
                    found[i].1 += 1;
                    seen.push((i, key));
                }
            }
            // Tell each tenant which of its keys this pass has now measured.
            seen.sort_unstable_by_key(|&(i, _)| i);
            for run in seen.chunk_by(|a, b| a.0 == b.0) {
                if let Some(usage) = &tenants[run[0].0].usage {
                    let keys: Vec<&[u8]> = run.iter().map(|&(_, k)| k).collect();
                    usage.pass_saw(&keys);
                }
            }
            proxy
                .metrics
                .quota_keys_examined
                .fetch_add(examined, Relaxed);
            if &next[..] == b"0" {
                break;
            }
            cursor = next;
            // The pace: `examined` keys' share of a second at scan_rate.
            let pause = Duration::from_secs_f64(examined as f64 / quota.scan_rate as f64);
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }
    Ok(found)
}

/// The script's reply: the next cursor, and each key with its bytes.
fn measured_page(reply: &Bytes) -> Option<(Bytes, Vec<(Bytes, u64)>)> {
    let Value::Array(Some(parts)) = value::parse(reply)? else {
        return None;
    };
    let [Value::Bulk(Some(cursor)), Value::Array(Some(items))] = parts.as_slice() else {
        return None;
    };
    let mut page = Vec::with_capacity(items.len() / 2);
    for pair in items.chunks(2) {
        match pair {
            [Value::Bulk(Some(key)), Value::Int(bytes)] => {
                page.push((key.clone(), (*bytes).max(0) as u64))
            }
            _ => return None,
        }
    }
    Some((cursor.clone(), page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_parse_and_garbage_does_not() {
        let reply =
            Bytes::from_static(b"*2\r\n$2\r\n17\r\n*4\r\n$3\r\na:1\r\n:64\r\n$3\r\nb:2\r\n:80\r\n");
        let (cursor, page) = measured_page(&reply).unwrap();
        assert_eq!(&cursor[..], b"17");
        assert_eq!(page.len(), 2);
        assert_eq!(page[1], (Bytes::from_static(b"b:2"), 80));
        assert!(measured_page(&Bytes::from_static(b"-ERR no\r\n")).is_none());
        assert!(measured_page(&Bytes::from_static(b"*2\r\n$1\r\n0\r\n*1\r\n:1\r\n")).is_none());
    }
}
