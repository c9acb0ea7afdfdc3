//! `POST /tenants/NAME/flush`: remove a tenant's keys on every primary, in the background.
//!
//! Each primary is walked with `SCAN cursor MATCH <prefix>* COUNT <[quota] batch>` (in the
//! tenant's database with `isolation = "database"`), and each page's keys are unlinked: in one
//! UNLINK per page, or one per key on a cluster (a page's keys span slots). The walk is paced
//! like the quota accounting, at most `[quota] scan_rate` keys examined per second per server,
//! so a flush of a large tenant does not slow the others. It is not atomic: keys the tenant
//! writes while it runs may survive. Progress is in /metrics (`keygate_tenant_flush_*`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::backend::{Backend, Caller, Flavor};
use crate::config::UpstreamKind;
use crate::dispatch::{reply_bytes, scan_page};
use crate::proxy::Proxy;
use crate::resp::value::{self, Value};
use crate::tenant::flush::Progress;
use crate::tenant::rewrite;

/// Why a flush did not start.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    NoSuchTenant,
    AlreadyRunning,
}

/// Start flushing tenant `name`'s keys; returns at once.
pub fn start(proxy: &Arc<Proxy>, name: &str) -> Result<(), Refused> {
    let tenants = proxy.tenants.load();
    let tenant = tenants
        .named(name.as_bytes())
        .ok_or(Refused::NoSuchTenant)?;
    let servers = proxy.for_tenant(tenant).ok_or(Refused::NoSuchTenant)?;
    let progress = proxy.flushes.start(name).ok_or(Refused::AlreadyRunning)?;
    let prefix = Bytes::from(tenant.config.prefix.clone());
    let pattern = rewrite::confine_pattern(&prefix, None).expect("a configured prefix is valid");
    let db = tenant.config.database.unwrap_or(0);
    let proxy = proxy.clone();
    let name = name.to_string();
    tokio::spawn(async move {
        tracing::info!(tenant = %name, "flushing the tenant's keys");
        let topology = servers.topology.load_full();
        let quota = proxy.config.load().quota.clone();
        let cluster = topology.kind == UpstreamKind::Cluster;
        let mut ok = true;
        for backend in &topology.backends {
            let walk = Walk {
                backend,
                db,
                prefix: &prefix,
                pattern: &pattern,
                cluster,
                progress: &progress,
            };
            if let Err(why) = walk.run(quota.batch, quota.scan_rate).await {
                tracing::warn!(tenant = %name, %why, "tenant flush failed");
                ok = false;
                break;
            }
        }
        progress.finish(ok);
        tracing::info!(
            tenant = %name,
            deleted = progress.deleted.load(Relaxed),
            ok,
            "tenant flush ended"
        );
    });
    Ok(())
}

/// One server's part of a flush.
struct Walk<'a> {
    backend: &'a Backend,
    db: u32,
    prefix: &'a Bytes,
    pattern: &'a Bytes,
    cluster: bool,
    progress: &'a Progress,
}

impl Walk<'_> {
    async fn run(&self, batch: u32, rate: u32) -> Result<(), String> {
        let caller = Caller {
            id: 0,
            flavor: Flavor {
                db: self.db,
                ..Flavor::default()
            },
        };
        let count = Bytes::from(batch.to_string());
        let mut cursor = Bytes::from_static(b"0");
        loop {
            let args = vec![
                Bytes::from_static(b"SCAN"),
                cursor,
                Bytes::from_static(b"MATCH"),
                self.pattern.clone(),
                Bytes::from_static(b"COUNT"),
                count.clone(),
            ];
            let reply = reply_bytes(self.backend.send(caller, args).await);
            let (next, keys) = scan_page(&reply).ok_or_else(|| self.failed(&reply))?;
            // Only the tenant's own keys, whatever the server matched.
            let keys: Vec<Bytes> = keys
                .into_iter()
                .filter(|k| k.starts_with(self.prefix))
                .collect();
            self.progress.examined.fetch_add(u64::from(batch), Relaxed);
            self.unlink(caller, keys).await?;
            if &next[..] == b"0" {
                return Ok(());
            }
            cursor = next;
            let pause = Duration::from_secs_f64(f64::from(batch) / f64::from(rate));
            tokio::time::sleep(pause).await;
        }
    }

    async fn unlink(&self, caller: Caller, keys: Vec<Bytes>) -> Result<(), String> {
        if keys.is_empty() {
            return Ok(());
        }
        let commands: Vec<Vec<Bytes>> = if self.cluster {
            keys.into_iter()
                .map(|k| vec![Bytes::from_static(b"UNLINK"), k])
                .collect()
        } else {
            let mut args = Vec::with_capacity(keys.len() + 1);
            args.push(Bytes::from_static(b"UNLINK"));
            args.extend(keys);
            vec![args]
        };
        let sent: Vec<_> = commands
            .into_iter()
            .map(|args| self.backend.send(caller, args))
            .collect();
        for rx in sent {
            let reply = reply_bytes(rx.await);
            match value::parse(&reply) {
                Some(Value::Int(n)) => {
                    self.progress.deleted.fetch_add(n.max(0) as u64, Relaxed);
                }
                _ => return Err(self.failed(&reply)),
            }
        }
        Ok(())
    }

    fn failed(&self, reply: &Bytes) -> String {
        format!(
            "{}: {}",
            self.backend.addr,
            String::from_utf8_lossy(&reply[..reply.len().min(200)]).trim_end()
        )
    }
}
