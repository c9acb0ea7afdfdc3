//! The progress of `POST /tenants/NAME/flush` runs, per tenant (the run itself is `cleanup`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// One tenant's flush: running, finished or failed, and how far it got.
#[derive(Default)]
pub struct Progress {
    state: AtomicU8,
    /// Keys examined on the servers (SCAN), and the tenant's keys unlinked.
    pub examined: AtomicU64,
    pub deleted: AtomicU64,
}

pub const RUNNING: u8 = 0;
pub const DONE: u8 = 1;
pub const FAILED: u8 = 2;

impl Progress {
    pub fn state(&self) -> u8 {
        self.state.load(Relaxed)
    }

    pub fn finish(&self, ok: bool) {
        self.state.store(if ok { DONE } else { FAILED }, Relaxed);
    }
}

/// Every tenant's latest flush, by name (one entry per tenant ever flushed since start).
#[derive(Default)]
pub struct Flushes {
    by_tenant: Mutex<BTreeMap<String, Arc<Progress>>>,
}

impl Flushes {
    /// Start a flush of `tenant`; `None` while one is running already.
    pub fn start(&self, tenant: &str) -> Option<Arc<Progress>> {
        let mut all = self.by_tenant.lock().unwrap_or_else(|e| e.into_inner());
        if all.get(tenant).is_some_and(|p| p.state() == RUNNING) {
            return None;
        }
        let progress = Arc::new(Progress::default());
        all.insert(tenant.to_string(), progress.clone());
        Some(progress)
    }

    /// Each tenant's latest flush, by name.
    pub fn all(&self) -> Vec<(String, Arc<Progress>)> {
        let all = self.by_tenant.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The /metrics families: per tenant flushed since start, its latest flush's state and
    /// figures.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let all = self.all();
        if all.is_empty() {
            return;
        }
        type Read = fn(&Progress) -> u64;
        let families: [(&str, &str, Read); 4] = [
            (
                "keygate_tenant_flush_running",
                "1 while a POST /tenants/NAME/flush runs; 0 once it ended.",
                |p| u64::from(p.state() == RUNNING),
            ),
            (
                "keygate_tenant_flush_failed",
                "1 if the tenant's latest flush stopped on an error (see the log).",
                |p| u64::from(p.state() == FAILED),
            ),
            (
                "keygate_tenant_flush_deleted_keys",
                "The tenant's keys its latest flush has unlinked.",
                |p| p.deleted.load(Relaxed),
            ),
            (
                "keygate_tenant_flush_examined_keys",
                "Keys its latest flush has had the servers examine (SCAN COUNT).",
                |p| p.examined.load(Relaxed),
            ),
        ];
        for (name, help, read) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (tenant, progress) in &all {
                let _ = writeln!(out, "{name}{{tenant=\"{tenant}\"}} {}", read(progress));
            }
        }
    }
}
