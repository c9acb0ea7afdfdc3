//! kind = "sentinel": the primary is whatever the Redis Sentinels say it is.
//!
//! Discovery asks each sentinel in turn `SENTINEL GET-MASTER-ADDR-BY-NAME <master>` and checks
//! the answer with `ROLE` on the named server: only a server that says it is a master becomes the
//! topology's one backend (a sentinel that has not caught up with a failover names the demoted
//! one, whose ROLE says so). It runs at start, every `refresh_interval`, and whenever a sentinel
//! announces `+switch-master` for our master: keygate keeps a subscription open on every
//! sentinel for that. The new topology is swapped in whole; clients stay connected and their
//! next requests go to the new primary.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backend::{query_once, Dedicated, Flavor, Options};
use crate::config::{Config, ReadFrom, UpstreamKind};
use crate::proxy::Proxy;
use crate::resp::value::{self, Value};
use crate::topology::Topology;

/// Options for talking to the sentinels themselves: their own credentials
/// (`sentinel_username`, `sentinel_password`), not the data servers'.
fn sentinel_options(config: &Config) -> Options {
    let mut opts = Options::new(&config.upstream, config.limits.max_reply_depth);
    opts.username = config.upstream.sentinel_username.clone();
    opts.password = config.upstream.sentinel_password.clone();
    opts
}

/// The primary's address (and, when reads may go to replicas, its healthy replicas'), from the
/// first sentinel whose answer checks out.
pub async fn primary(config: &Config) -> Result<(String, Vec<String>), String> {
    let master = config.upstream.master.as_deref().unwrap_or_default();
    let sentinel_opts = sentinel_options(config);
    let data_opts = Options::new(&config.upstream, config.limits.max_reply_depth);
    let ask = [
        Bytes::from_static(b"SENTINEL"),
        Bytes::from_static(b"GET-MASTER-ADDR-BY-NAME"),
        Bytes::copy_from_slice(master.as_bytes()),
    ];
    let mut errors = Vec::new();
    for sentinel in &config.upstream.servers {
        let addr = match query_once(&sentinel.addr, &sentinel_opts, &ask).await {
            Ok(reply) => match value::parse(&reply) {
                Some(Value::Array(Some(items))) => match items.as_slice() {
                    [Value::Bulk(Some(host)), Value::Bulk(Some(port))] => format!(
                        "{}:{}",
                        String::from_utf8_lossy(host),
                        String::from_utf8_lossy(port)
                    ),
                    _ => {
                        errors.push(format!("{}: unexpected reply", sentinel.addr));
                        continue;
                    }
                },
                Some(Value::Array(None)) | Some(Value::Bulk(None)) => {
                    errors.push(format!("{}: no master named {master:?}", sentinel.addr));
                    continue;
                }
                _ => {
                    let text = String::from_utf8_lossy(&reply).trim_end().to_string();
                    errors.push(format!("{}: {text}", sentinel.addr));
                    continue;
                }
            },
            Err(e) => {
                errors.push(format!("{}: {e}", sentinel.addr));
                continue;
            }
        };
        match query_once(&addr, &data_opts, &[Bytes::from_static(b"ROLE")]).await {
            Ok(reply) => match value::parse(&reply) {
                Some(Value::Array(Some(items))) if matches!(items.first(), Some(Value::Bulk(Some(r))) if &r[..] == b"master") =>
                {
                    let replicas = match config.upstream.read_from {
                        ReadFrom::Primary => Vec::new(),
                        _ => replicas(&sentinel.addr, &sentinel_opts, master).await,
                    };
                    return Ok((addr, replicas));
                }
                _ => errors.push(format!(
                    "{}: names {addr}, which is not a master (yet)",
                    sentinel.addr
                )),
            },
            Err(e) => errors.push(format!("{}: names {addr}, unreachable: {e}", sentinel.addr)),
        }
    }
    Err(errors.join("; "))
}

/// The replicas a sentinel knows for `master` that are up and in sync with it, sorted; none if
/// it cannot say.
async fn replicas(sentinel: &str, opts: &Options, master: &str) -> Vec<String> {
    let ask = [
        Bytes::from_static(b"SENTINEL"),
        Bytes::from_static(b"REPLICAS"),
        Bytes::copy_from_slice(master.as_bytes()),
    ];
    let Ok(reply) = query_once(sentinel, opts, &ask).await else {
        return Vec::new();
    };
    let Some(Value::Array(Some(entries))) = value::parse(&reply) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries {
        let Value::Array(Some(fields)) = entry else {
            continue;
        };
        let field = |name: &str| {
            fields.chunks(2).find_map(|pair| match pair {
                [Value::Bulk(Some(k)), Value::Bulk(Some(v))] if &k[..] == name.as_bytes() => {
                    Some(String::from_utf8_lossy(v).into_owned())
                }
                _ => None,
            })
        };
        let flags = field("flags").unwrap_or_default();
        let healthy = !flags
            .split(',')
            .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"))
            && field("master-link-status").as_deref() == Some("ok");
        if let (true, Some(ip), Some(port)) = (healthy, field("ip"), field("port")) {
            found.push(format!("{ip}:{port}"));
        }
    }
    found.sort();
    found
}

/// The topology for the primary the sentinels name; `None` if it is `current`'s and not `force`.
pub async fn discover(
    config: &Config,
    current: &Topology,
    force: bool,
) -> Result<Option<Topology>, String> {
    let (addr, replicas) = primary(config).await?;
    let known_replicas: Vec<&str> = current
        .replicas
        .first()
        .map(|r| r.iter().map(|b| &*b.addr).collect())
        .unwrap_or_default();
    let same = current.kind == UpstreamKind::Sentinel
        && current.backends.len() == 1
        && *current.backends[0].addr == *addr
        && known_replicas == replicas.iter().map(String::as_str).collect::<Vec<_>>();
    if same && !force {
        return Ok(None);
    }
    let next = Topology::sentinel(&addr, &replicas, current, config);
    if !same {
        info!(primary = %addr, epoch = next.epoch, "sentinel: primary is now {addr}");
    }
    Ok(Some(next))
}

/// Keep a `+switch-master` subscription on every configured sentinel (following reloads), and
/// ask for a refresh whenever one announces a switch of our master.
pub async fn watch(proxy: Arc<Proxy>, shutdown: CancellationToken) {
    let mut watchers: HashMap<String, CancellationToken> = HashMap::new();
    loop {
        let config = proxy.config.load_full();
        let wanted: Vec<String> = match config.upstream.kind {
            UpstreamKind::Sentinel => config
                .upstream
                .servers
                .iter()
                .map(|s| s.addr.clone())
                .collect(),
            _ => Vec::new(),
        };
        watchers.retain(|addr, token| {
            let keep = wanted.contains(addr);
            if !keep {
                token.cancel();
            }
            keep
        });
        for addr in wanted {
            watchers.entry(addr.clone()).or_insert_with(|| {
                let token = shutdown.child_token();
                tokio::spawn(subscribe(proxy.clone(), addr, token.clone()));
                token
            });
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// One sentinel's `+switch-master` channel, reconnecting (with backoff) until cancelled.
async fn subscribe(proxy: Arc<Proxy>, addr: String, stop: CancellationToken) {
    let mut delay = Duration::from_millis(100);
    let addr: Arc<str> = addr.into();
    loop {
        let config = proxy.config.load_full();
        let opts = sentinel_options(&config);
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = listen(&proxy, &addr, &opts) => outcome,
        };
        if let Err(reason) = outcome {
            debug!(sentinel = %addr, %reason, retry_in = ?delay, "sentinel subscription down");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn listen(proxy: &Proxy, addr: &Arc<str>, opts: &Options) -> Result<(), String> {
    let mut conn = Dedicated::open(addr, opts, Flavor::default())
        .await
        .map_err(|e| e.to_string())?;
    let subscribe = [
        Bytes::from_static(b"SUBSCRIBE"),
        Bytes::from_static(b"+switch-master"),
    ];
    conn.call(&subscribe).await.map_err(|e| e.to_string())?;
    debug!(sentinel = %addr, "subscribed to +switch-master");
    // Catch up with anything missed while not subscribed.
    proxy.refresh_soon();
    loop {
        let frame = conn.next_frame().await.map_err(|e| e.to_string())?;
        let Some(Value::Array(Some(items))) = value::parse(&frame) else {
            continue;
        };
        if let [Value::Bulk(Some(kind)), _, Value::Bulk(Some(payload))] = items.as_slice() {
            let master = proxy
                .config
                .load()
                .upstream
                .master
                .clone()
                .unwrap_or_default();
            let ours = payload
                .split(|&b| b == b' ')
                .next()
                .is_some_and(|name| name == master.as_bytes());
            if &kind[..] == b"message" && ours {
                warn!(sentinel = %addr, announcement = %String::from_utf8_lossy(payload), "sentinel: +switch-master");
                proxy.refresh_soon();
            }
        }
    }
}
