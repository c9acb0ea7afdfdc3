//! Hot reload: on SIGHUP (the binary), on `POST /reload` at the admin port, and when the config
//! file changes, keygate reads the file again, validates it, and swaps it in.
//!
//! A config that does not validate (or a cluster none of whose nodes answers) is refused with
//! its reason, logged, and the running one keeps serving. Otherwise the config, the tenants and
//! the topology are each replaced whole (one `ArcSwap` store each):
//! - clients stay connected; requests already sent finish on the backends they were sent to
//!   (those stay alive while anything uses them), later requests use the new topology;
//! - a server reached the same way as before (same address, credentials, timeouts, limits)
//!   keeps its backend and so its connections; others are connected afresh, and dropped ones
//!   close once their last requests are answered;
//! - tenants whose settings did not change keep their state (connection counts, rate buckets,
//!   scripts); a changed or new tenant starts afresh. Clients already authenticated keep the
//!   tenant they authenticated as until they AUTH again or reconnect; turning tenants on makes
//!   every client, connected or not, AUTH before its next command;
//! - limits apply to clients that connect afterwards (and `max_clients` at once).
//!
//! `listen`, `admin.listen` and `threads` are fixed at start: a change is logged and ignored.

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, UpstreamKind};
use crate::proxy::Proxy;
use crate::refresh;
use crate::sentinel;
use crate::tenant::{TenantState, Tenants};
use crate::topology::Topology;

/// How often the config file is checked for changes.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Read the config file again and apply it; the outcome, for the log and `POST /reload`.
pub async fn reload(proxy: &Arc<Proxy>, why: &str) -> Result<String, String> {
    let Some(path) = proxy.config_path.get() else {
        return Err("keygate was not started from a config file".into());
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    *proxy.config_seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(text.clone());
    let outcome = match Config::parse(&text, &path.display().to_string()) {
        Ok(config) => apply(proxy, config).await,
        Err(e) => Err(format!("invalid configuration: {e}")),
    };
    match &outcome {
        Ok(summary) => {
            proxy.metrics.reloads_ok.fetch_add(1, Relaxed);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            proxy.metrics.last_reload.store(now, Relaxed);
            info!(trigger = why, %summary, "configuration reloaded");
        }
        Err(reason) => {
            proxy.metrics.reloads_failed.fetch_add(1, Relaxed);
            warn!(trigger = why, %reason, "configuration reload refused; the running one stays");
        }
    }
    outcome
}

/// Swap in `config`: topology, tenants and settings. Returns what changed.
pub async fn apply(proxy: &Arc<Proxy>, mut config: Config) -> Result<String, String> {
    let _one_at_a_time = proxy.reloading.lock().await;
    let old = proxy.config.load_full();
    for (key, changed) in [
        ("listen", config.listen != old.listen),
        (
            "admin.listen",
            config.admin.as_ref().map(|a| a.listen) != old.admin.as_ref().map(|a| a.listen),
        ),
        ("threads", config.threads != old.threads),
    ] {
        if changed {
            warn!(
                key,
                "changing this needs a restart; the running value stays"
            );
        }
    }
    config.listen = old.listen.clone();
    config.admin = old.admin.clone();
    config.threads = old.threads;

    let current = proxy.topology.load_full();
    let topology = match config.upstream.kind {
        UpstreamKind::Cluster => refresh::discover(&config, &current, true)
            .await
            .map_err(|e| format!("no node of the new cluster config answered: {e}"))?
            .expect("forced discovery builds a topology"),
        UpstreamKind::Sentinel => sentinel::discover(&config, &current, true)
            .await
            .map_err(|e| format!("no sentinel of the new config named a primary: {e}"))?
            .expect("forced discovery builds a topology"),
        _ => Topology::rebuild(&config, Some(&current)),
    };
    let kept = topology
        .backends
        .iter()
        .filter(|b| current.backends.iter().any(|c| Arc::ptr_eq(b, c)))
        .count();
    let summary = format!(
        "{} backends ({} kept with their connections, {} new, {} dropped), {} tenants, epoch {}",
        topology.backends.len(),
        kept,
        topology.backends.len() - kept,
        current.backends.len() - kept,
        config.tenants.len(),
        topology.epoch
    );

    let old_tenants = proxy.tenants.load_full();
    let tenants: Vec<Arc<TenantState>> = config
        .tenants
        .iter()
        .map(|t| {
            let mut fresh = TenantState::for_config(t.clone(), &config);
            let old = old_tenants.named(t.name.as_bytes());
            if let Some(old) = old {
                fresh.keep_usage(old);
            }
            old.filter(|old| {
                old.config == *t
                    && old.backend_user == fresh.backend_user
                    && old.shared == fresh.shared
            })
            .cloned()
            .unwrap_or_else(|| Arc::new(fresh))
        })
        .collect();
    // The named upstreams, before the tenants that use them.
    let stopped = crate::upstreams::apply(proxy, &config).await;
    // A tenant no longer configured keeps no access, and one whose servers changed (another
    // upstream, or its upstream changed or went) keeps none to the old ones: their connections
    // are closed (clients reconnect, to the new servers).
    let by_name: std::collections::HashMap<&str, &Arc<TenantState>> = tenants
        .iter()
        .map(|t| (t.config.name.as_str(), t))
        .collect();
    for old in old_tenants.iter() {
        let now = by_name.get(old.config.name.as_str());
        let why = match now {
            None => "removed from the config",
            Some(now) if now.config.upstream != old.config.upstream => "moved to another upstream",
            Some(_)
                if old
                    .config
                    .upstream
                    .as_ref()
                    .is_some_and(|u| stopped.contains(u)) =>
            {
                "its upstream changed"
            }
            Some(_) => continue,
        };
        if now.is_none() {
            old.removed.store(true, Relaxed);
        }
        let closed = proxy
            .clients
            .matching(|c| c.shown().tenant.as_deref() == Some(old.config.name.as_str()));
        for client in &closed {
            client.kill.cancel();
        }
        tracing::info!(
            tenant = %old.config.name,
            connections = closed.len(),
            why,
            "the tenant's connections are closed"
        );
    }

    proxy.tenancy.store(!tenants.is_empty(), Relaxed);
    proxy.tenants.store(Arc::new(Tenants::new(tenants)));
    proxy.slowlog.configure(&config.slowlog);
    proxy.config.store(Arc::new(config));
    proxy.swap_topology(topology);
    Ok(summary)
}

/// Reload when the config file's contents change (checked every second).
pub async fn watch(proxy: Arc<Proxy>, shutdown: CancellationToken) {
    let Some(path) = proxy.config_path.get().cloned() else {
        return;
    };
    {
        let mut seen = proxy.config_seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.is_none() {
            *seen = read(&path);
        }
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
        let now = read(&path);
        let changed =
            now.is_some() && now != *proxy.config_seen.lock().unwrap_or_else(|e| e.into_inner());
        if changed {
            // A file being written may be seen half done: that reload is refused, and the
            // finished file is seen (and applied) a second later.
            let _ = reload(&proxy, "file changed").await;
        }
    }
}

/// The file's text, as the last reload read it.
fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}
