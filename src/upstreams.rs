//! Named upstreams (`[upstreams.NAME]`, chosen by `tenants[].upstream`): each runs as a proxy
//! derived from the main one (see `Proxy::derived`), with its own topology and background
//! upkeep (slot map refresh, sentinel watch, ketama ejection, learned commands). Started with
//! keygate, and brought in line with the config by every reload.
//!
//! On reload, a named upstream whose table is unchanged keeps its proxy and connections (and
//! takes the new config's other settings); a new one starts; a changed or removed one is
//! stopped, and the connections of the tenants it served are closed (see `reload`), so no
//! client keeps writing to servers the config no longer gives it. keygate copies no data
//! between upstreams.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::warn;

use crate::config::{Config, UpstreamKind};
use crate::proxy::{Named, Proxy};
use crate::{learn, refresh, sentinel};

/// Start `[upstreams.NAME]` of `config` beside `main`: discovery first (cluster, sentinel),
/// then its background tasks, which stop with its `stop` token.
pub async fn start(main: &Arc<Proxy>, name: &str, config: &Config) -> Option<Named> {
    let proxy = Arc::new(main.derived(name, config)?);
    let kind = proxy.config.load().upstream.kind;
    if matches!(kind, UpstreamKind::Cluster | UpstreamKind::Sentinel) {
        if let Err(e) = refresh::refresh(&proxy).await {
            warn!(upstream = name, error = %e, kind = kind.name(), "discovery failed; retrying in the background");
            proxy.refresh_soon();
        }
    }
    let stop = proxy.stop.clone();
    tokio::spawn(refresh::run(proxy.clone(), stop.clone()));
    tokio::spawn(learn::run(proxy.clone(), stop.clone()));
    tokio::spawn(refresh::eject(proxy.clone(), stop.clone()));
    tokio::spawn(sentinel::watch(proxy.clone(), stop));
    Some(Named { proxy })
}

/// Start every named upstream of `main`'s config.
pub async fn start_all(main: &Arc<Proxy>) {
    let config = main.config.load_full();
    apply(main, &config).await;
}

/// Bring `main`'s named upstreams in line with `config`. Returns the names of those stopped
/// (changed or removed), whose tenants' connections must close.
pub async fn apply(main: &Arc<Proxy>, config: &Config) -> Vec<String> {
    let current = main.upstreams.load_full();
    let mut next = HashMap::new();
    for (name, table) in &config.upstreams {
        // The tables hold no secrets' state, only settings: their printed forms differ exactly
        // when a setting does (TLS settings included).
        let kept = current
            .get(name)
            .filter(|n| format!("{:?}", n.proxy.config.load().upstream) == format!("{table:?}"));
        match kept {
            Some(kept) => {
                if let Some(derived) = Proxy::config_for(name, config) {
                    kept.proxy.config.store(Arc::new(derived));
                }
                next.insert(
                    name.clone(),
                    Named {
                        proxy: kept.proxy.clone(),
                    },
                );
            }
            None => {
                if let Some(named) = start(main, name, config).await {
                    next.insert(name.clone(), named);
                }
            }
        }
    }
    let mut stopped = Vec::new();
    for (name, old) in current.iter() {
        let stays = next
            .get(name)
            .is_some_and(|n: &Named| Arc::ptr_eq(&n.proxy, &old.proxy));
        if !stays {
            old.proxy.stop.cancel();
            stopped.push(name.clone());
        }
    }
    main.upstreams.store(Arc::new(next));
    stopped
}
