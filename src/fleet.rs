//! Limits shared by a fleet of keygates (`[fleet] shared_limits = true`): several keygate
//! processes in front of the same servers enforce each tenant's `max_ops_per_sec` and
//! `max_connections` together, with the state kept on those servers, in keys under
//! `[fleet] namespace` that no tenant's prefix reaches (config checks it):
//!
//! - `<namespace>{<tenant>}:rate`: the tenant's token bucket (a hash: tokens, last refill in
//!   ms), refilled at `max_ops_per_sec` a second up to one second's worth, by the server's
//!   clock. Keygates lease tokens from it with `LEASE`, a chunk at a time (see tenant::fleet).
//! - `<namespace>{<tenant>}:conns`: each keygate's connections as the tenant (a hash by
//!   instance id), and `:seen`, when each keygate's count expires (a sorted set). An AUTH asks
//!   `ADMIT` whether the fleet has room; every `instance_ttl / 3` each keygate writes its count
//!   again. A keygate that stops (killed, partitioned) is dropped from the count by the next
//!   script to run after its `instance_ttl` has passed: its connections are released within
//!   `instance_ttl` plus one heartbeat.
//!
//! The hash tag keeps a tenant's keys in one slot of a cluster; on a ketama set they live on
//! the server the ring places them. Scripts run as keygate's own upstream user. When the
//! servers cannot answer, the local limits still hold: a lease that fails grants nothing
//! (the keygate admits one chunk on credit, then refuses), an admission that fails admits (the
//! tenant's requests fail anyway while its servers are down).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::backend::Caller;
use crate::dispatch;
use crate::proxy::Proxy;
use crate::resp::value::{self, Value};
use crate::route::Plan;
use crate::tenant::fleet::Verdict;
use crate::tenant::{Seat, TenantState};

/// KEYS[1] the bucket; ARGV rate, tokens wanted. Returns the tokens granted.
const LEASE: &str = "local rate = tonumber(ARGV[1]) \
local want = tonumber(ARGV[2]) \
local t = redis.call('TIME') \
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at') \
local tokens = tonumber(b[1]) \
local at = tonumber(b[2]) \
if tokens == nil or at == nil then tokens = rate at = now end \
tokens = math.min(rate, tokens + math.max(0, now - at) * rate / 1000) \
local got = math.max(0, math.min(want, math.floor(tokens))) \
tokens = tokens - got \
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now)) \
redis.call('PEXPIRE', KEYS[1], 60000) \
return got";

/// KEYS[1] counts by instance, KEYS[2] their expiries; ARGV instance, max (-1: only record),
/// this instance's count, ttl in ms. Drops expired instances; returns 1 if recorded, 0 if the
/// fleet is full.
const ADMIT: &str = "local t = redis.call('TIME') \
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do \
redis.call('HDEL', KEYS[1], dead) \
redis.call('ZREM', KEYS[2], dead) \
end \
local max = tonumber(ARGV[2]) \
local mine = tonumber(ARGV[3]) \
if max >= 0 then \
local others = 0 \
local all = redis.call('HGETALL', KEYS[1]) \
for i = 1, #all, 2 do \
if all[i] ~= ARGV[1] then others = others + tonumber(all[i + 1]) end \
end \
if others + mine > max then return 0 end \
end \
if mine > 0 then redis.call('HSET', KEYS[1], ARGV[1], mine) \
else redis.call('HDEL', KEYS[1], ARGV[1]) end \
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1]) \
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]) * 4) \
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]) * 4) \
return 1";

/// This process's id in the fleet's counts: random, new at every start.
pub fn instance() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("{:016x}", fastrand::u64(..)))
}

/// The key `<namespace>{<tenant>}:<what>`.
pub fn key(proxy: &Proxy, tenant: &TenantState, what: &str) -> Bytes {
    let namespace = &proxy.config.load().fleet.namespace;
    Bytes::from(format!("{namespace}{{{}}}:{what}", tenant.config.name))
}

/// Run `script` with `keys` and `args` where its first key lives; the reply.
async fn eval(
    proxy: &Arc<Proxy>,
    script: &'static str,
    keys: Vec<Bytes>,
    args: Vec<Bytes>,
) -> Bytes {
    let first = keys[0].clone();
    let mut argv = vec![
        Bytes::from_static(b"EVAL"),
        Bytes::from_static(script.as_bytes()),
        Bytes::from(keys.len().to_string()),
    ];
    argv.extend(keys);
    argv.extend(args);
    proxy.metrics.fleet_scripts.fetch_add(1, Relaxed);
    send_to_key(proxy, &first, argv).await
}

/// Send `args`, a command about `key`, to the main upstream's server holding `key` (following
/// redirections); the reply. For keygate's own keys under `[fleet] namespace`.
pub async fn send_to_key(proxy: &Arc<Proxy>, key: &[u8], args: Vec<Bytes>) -> Bytes {
    let topology = proxy.topology.load_full();
    let target = match topology.target_of(key) {
        Ok(target) => target,
        Err(e) => return e.to_reply(),
    };
    let caller = Caller {
        id: 0,
        flavor: Default::default(),
    };
    dispatch::run(proxy, &topology, caller, args, Plan::One(target), false)
        .bytes()
        .await
}

fn integer(reply: &Bytes) -> Option<i64> {
    match value::parse(reply)? {
        Value::Int(n) => Some(n),
        _ => None,
    }
}

/// Lease the tokens `tenant`'s lease wants from the fleet's bucket (spawned when a request
/// finds its lease half spent).
pub async fn lease(proxy: Arc<Proxy>, tenant: Arc<TenantState>) {
    let Some(lease) = &tenant.lease else {
        return;
    };
    let asked = lease.wanted();
    let reply = eval(
        &proxy,
        LEASE,
        vec![key(&proxy, &tenant, "rate")],
        vec![
            Bytes::from(lease.rate().to_string()),
            Bytes::from(asked.to_string()),
        ],
    )
    .await;
    let got = integer(&reply).unwrap_or_else(|| {
        tracing::warn!(tenant = %tenant.config.name, reply = %String::from_utf8_lossy(&reply).trim_end(), "fleet rate lease failed");
        0
    });
    lease.granted(asked, got, Instant::now());
}

/// Ask the fleet to admit one more connection as `tenant` (its seat is already counted here).
/// Refused: the seat is given back and the connection may not act as the tenant.
pub async fn admit(proxy: Arc<Proxy>, tenant: Arc<TenantState>, verdict: Arc<Verdict>) -> bool {
    let Some(max) = tenant.config.max_connections else {
        verdict.admit();
        return true;
    };
    let ttl = proxy.config.load().fleet.instance_ttl.as_millis();
    let reply = eval(
        &proxy,
        ADMIT,
        vec![key(&proxy, &tenant, "conns"), key(&proxy, &tenant, "seen")],
        vec![
            Bytes::from_static(instance().as_bytes()),
            Bytes::from(max.to_string()),
            Bytes::from(tenant.connections().to_string()),
            Bytes::from(ttl.to_string()),
        ],
    )
    .await;
    match integer(&reply) {
        Some(0) => {
            Seat::refuse(&verdict, &tenant);
            false
        }
        Some(_) => {
            verdict.admit();
            true
        }
        None => {
            tracing::warn!(tenant = %tenant.config.name, reply = %String::from_utf8_lossy(&reply).trim_end(), "fleet admission failed; admitted on the local count");
            verdict.admit();
            true
        }
    }
}

/// Write this keygate's connection count for every tenant with a shared `max_connections`,
/// every `instance_ttl / 3`, until shutdown.
pub async fn run(proxy: Arc<Proxy>, shutdown: CancellationToken) {
    loop {
        let fleet = proxy.config.load().fleet.clone();
        let every = (fleet.instance_ttl / 3).max(Duration::from_millis(100));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if !fleet.shared_limits {
            continue;
        }
        let tenants = proxy.tenants.load_full();
        let ttl = Bytes::from(fleet.instance_ttl.as_millis().to_string());
        let beats = tenants
            .iter()
            .filter(|t| t.shared && t.config.max_connections.is_some())
            .map(|tenant| {
                let proxy = &proxy;
                let ttl = ttl.clone();
                async move {
                    let reply = eval(
                        proxy,
                        ADMIT,
                        vec![key(proxy, tenant, "conns"), key(proxy, tenant, "seen")],
                        vec![
                            Bytes::from_static(instance().as_bytes()),
                            Bytes::from_static(b"-1"),
                            Bytes::from(tenant.connections().to_string()),
                            ttl,
                        ],
                    )
                    .await;
                    if integer(&reply).is_none() {
                        tracing::warn!(tenant = %tenant.config.name, reply = %String::from_utf8_lossy(&reply).trim_end(), "fleet heartbeat failed");
                    }
                }
            });
        futures_util::future::join_all(beats).await;
    }
}
