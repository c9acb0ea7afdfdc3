//! A tenant's memory and key quotas: what it holds on the servers, estimated, and whether it is
//! over.
//!
//! Redis keeps no accounting per key prefix, so keygate keeps its own, from two sources:
//!
//! - **Measured**: a background pass (`accounting`) walks every primary's keyspace with SCAN and
//!   sums `MEMORY USAGE` of each key, attributing it by prefix. It is exact as of the moment each
//!   key was examined, and lags by one pass (the keys on the largest server divided by
//!   `[quota] scan_rate`).
//! - **Written since**: every write keygate forwards for the tenant (the `denyoom` commands) is
//!   counted at once, before it is sent: the key (by hash) and an estimate of what it adds (its
//!   arguments' bytes plus a per-key overhead). So a tenant writing as fast as it can is stopped
//!   one command after its estimate crosses the quota, whatever the pass's lag.
//!
//! The estimate is `measured + written since the measuring pass began`. Writes are kept in two
//! generations: those since the last completed pass began (`older`) and those since the running
//! pass began (`current`); when a pass completes, its result replaces `measured` and the
//! generation it has seen is dropped. A key written during a pass and then examined by it stops
//! counting as written (the pass measured it; a later write counts again). The estimate errs
//! high: an existing key overwritten counts its old size as well as its new one, and deletes (beyond those of keys written since the pass)
//! count only once a pass has seen them. Each generation tracks at most `TRACKED` distinct keys;
//! beyond that, every write counts as a new key.
//!
//! A tenant over its quota gets `-OOM` for the commands Redis refuses at `maxmemory` (the
//! command table's `denyoom` flag), and for scripts and function calls that may write (keygate
//! cannot see inside them); reads, deletes and expiries run, so it can get back under.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use bytes::Bytes;

/// Distinct keys each generation of writes remembers (about 1.5 MB at most per tenant).
pub const TRACKED: usize = 65_536;

/// Bytes counted per key beyond its name and value, a little above what a string key costs
/// Redis beyond them (`MEMORY USAGE` of a 7-byte key holding 100 bytes is 168: 61 more), so the
/// estimate errs high (bench-quota: with 56 a tenant got 2.6 % over a memory quota before a
/// pass corrected it).
pub const KEY_OVERHEAD: u64 = 64;

/// Commands whose write sets the key's whole value (an overwrite replaces what the key held);
/// every other `denyoom` command adds to it.
const REPLACES: &[&str] = &[
    "set", "setex", "psetex", "setnx", "getset", "mset", "msetnx", "restore", "copy",
];

/// Commands that remove their keys: a key written since the pass began is forgotten again.
const REMOVES: &[&str] = &["del", "unlink", "getdel"];

/// The quotas and the ledger of one tenant; kept across reloads while its prefix and database
/// stay the same.
pub struct Usage {
    ledger: Mutex<Ledger>,
    /// The latest estimate, for /metrics and the status page.
    bytes: AtomicU64,
    keys: AtomicU64,
    /// The last completed pass's figures.
    measured_bytes: AtomicU64,
    measured_keys: AtomicU64,
    /// Set while the estimate is over either quota (read on every write).
    over: AtomicBool,
    /// Commands refused with -OOM.
    pub refused: AtomicU64,
    /// The figures a keygate saved on the servers have been looked for (see accounting).
    pub restored: AtomicBool,
    /// A pass has completed since this keygate started (then saved figures are older).
    passed: AtomicBool,
    hasher: std::collections::hash_map::RandomState,
}

#[derive(Default)]
struct Ledger {
    max_bytes: Option<u64>,
    max_keys: Option<u64>,
    measured_bytes: u64,
    measured_keys: u64,
    older: Writes,
    current: Writes,
}

/// The writes of one generation.
#[derive(Default)]
struct Writes {
    /// Key hash -> bytes counted for it.
    keys: HashMap<u64, u64>,
    /// The sum of `keys`' bytes.
    tracked_bytes: u64,
    /// Writes counted as new keys once `keys` was full, and their bytes.
    untracked_keys: u64,
    untracked_bytes: u64,
}

impl Writes {
    fn key_count(&self) -> u64 {
        self.keys.len() as u64 + self.untracked_keys
    }

    fn bytes(&self) -> u64 {
        self.tracked_bytes + self.untracked_bytes
    }

    fn add(&mut self, hash: u64, size: u64, replaces: bool) {
        let tracked = self.keys.len() < TRACKED || self.keys.contains_key(&hash);
        if !tracked {
            self.untracked_keys += 1;
            self.untracked_bytes += size;
            return;
        }
        let counted = self.keys.entry(hash).or_insert(0);
        if replaces {
            self.tracked_bytes = self.tracked_bytes - *counted + size;
            *counted = size;
        } else {
            self.tracked_bytes += size;
            *counted += size;
        }
    }

    fn remove(&mut self, hash: u64) {
        if let Some(counted) = self.keys.remove(&hash) {
            self.tracked_bytes -= counted;
        }
    }
}

/// What one write adds, per key: its name, its share of the other arguments, the overhead.
fn sizes(args: &[Bytes], keys: &[usize]) -> u64 {
    let total: usize = args.iter().skip(1).map(|a| a.len()).sum();
    let key_bytes: usize = keys.iter().map(|&i| args[i].len()).sum();
    let values = (total - key_bytes) as u64;
    values / keys.len().max(1) as u64 + KEY_OVERHEAD
}

impl Usage {
    pub fn new(max_bytes: Option<u64>, max_keys: Option<u64>) -> Usage {
        let usage = Usage {
            ledger: Mutex::new(Ledger::default()),
            bytes: AtomicU64::new(0),
            keys: AtomicU64::new(0),
            measured_bytes: AtomicU64::new(0),
            measured_keys: AtomicU64::new(0),
            over: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            restored: AtomicBool::new(false),
            passed: AtomicBool::new(false),
            hasher: Default::default(),
        };
        usage.set_limits(max_bytes, max_keys);
        usage
    }

    /// New quotas (a reload changed them); the ledger stays.
    pub fn set_limits(&self, max_bytes: Option<u64>, max_keys: Option<u64>) {
        let mut ledger = self.lock();
        ledger.max_bytes = max_bytes;
        ledger.max_keys = max_keys;
        self.publish(&ledger);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hash(&self, key: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(key);
        h.finish()
    }

    /// Is the tenant over a quota now?
    pub fn over(&self) -> bool {
        self.over.load(Relaxed)
    }

    /// The estimate: bytes and keys.
    pub fn estimate(&self) -> (u64, u64) {
        (self.bytes.load(Relaxed), self.keys.load(Relaxed))
    }

    /// The last completed pass's figures: bytes and keys.
    pub fn measured(&self) -> (u64, u64) {
        (
            self.measured_bytes.load(Relaxed),
            self.measured_keys.load(Relaxed),
        )
    }

    pub fn limits(&self) -> (Option<u64>, Option<u64>) {
        let ledger = self.lock();
        (ledger.max_bytes, ledger.max_keys)
    }

    /// Count a write the tenant is about to send: `name` (lower case), its (prefixed)
    /// arguments, and where its keys are.
    pub fn wrote(&self, name: &str, args: &[Bytes], keys: &[usize]) {
        if keys.is_empty() {
            return;
        }
        let replaces = REPLACES.contains(&name);
        let size = sizes(args, keys);
        let mut ledger = self.lock();
        for &i in keys {
            let hash = self.hash(&args[i]);
            let size = size + args[i].len() as u64;
            ledger.current.add(hash, size, replaces);
        }
        self.publish(&ledger);
    }

    /// Does `name` remove its keys (DEL, UNLINK, GETDEL)?
    pub fn removes(name: &str) -> bool {
        REMOVES.contains(&name)
    }

    /// The tenant deletes these keys: those written since the pass began stop counting.
    pub fn removed(&self, args: &[Bytes], keys: &[usize]) {
        let mut ledger = self.lock();
        for &i in keys {
            let hash = self.hash(&args[i]);
            ledger.current.remove(hash);
            ledger.older.remove(hash);
        }
        self.publish(&ledger);
    }

    /// The running pass has just measured these keys (the tenant's, full names): their writes
    /// since it began are in its measurement now, so they stop counting on top of it (a later
    /// write counts again). Without this, a tenant writing fast during a pass would count
    /// twice what the pass sees of it.
    pub fn pass_saw(&self, keys: &[&[u8]]) {
        let mut ledger = self.lock();
        for key in keys {
            let hash = self.hash(key);
            ledger.current.remove(hash);
        }
        self.publish(&ledger);
    }

    /// A pass starts: writes from now on are the new generation's.
    pub fn pass_started(&self) {
        let mut ledger = self.lock();
        let current = std::mem::take(&mut ledger.current);
        let older = &mut ledger.older;
        if older.keys.is_empty() && older.untracked_keys == 0 {
            *older = current;
        } else {
            // The previous pass did not complete: both generations stay unmeasured.
            for (hash, size) in current.keys {
                older.add(hash, size, false);
            }
            older.untracked_keys += current.untracked_keys;
            older.untracked_bytes += current.untracked_bytes;
        }
        self.publish(&ledger);
    }

    /// The last figures a pass saved on the servers (by this keygate before a restart, or by
    /// another of the fleet): the measurement until this keygate's own first pass completes,
    /// so a restart does not start from nothing.
    pub fn restore(&self, bytes: u64, keys: u64) {
        let mut ledger = self.lock();
        if self.passed.load(Relaxed) {
            return;
        }
        ledger.measured_bytes = bytes;
        ledger.measured_keys = keys;
        self.measured_bytes.store(bytes, Relaxed);
        self.measured_keys.store(keys, Relaxed);
        self.publish(&ledger);
    }

    /// The pass that started last completed, measuring `bytes` and `keys`.
    pub fn pass_completed(&self, bytes: u64, keys: u64) {
        self.passed.store(true, Relaxed);
        let mut ledger = self.lock();
        ledger.measured_bytes = bytes;
        ledger.measured_keys = keys;
        ledger.older = Writes::default();
        self.measured_bytes.store(bytes, Relaxed);
        self.measured_keys.store(keys, Relaxed);
        self.publish(&ledger);
    }

    fn publish(&self, ledger: &Ledger) {
        let bytes = ledger.measured_bytes + ledger.older.bytes() + ledger.current.bytes();
        let keys = ledger.measured_keys + ledger.older.key_count() + ledger.current.key_count();
        self.bytes.store(bytes, Relaxed);
        self.keys.store(keys, Relaxed);
        let over = ledger.max_bytes.is_some_and(|max| bytes > max)
            || ledger.max_keys.is_some_and(|max| keys > max);
        self.over.store(over, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(parts: &[&str]) -> Vec<Bytes> {
        parts
            .iter()
            .map(|p| Bytes::copy_from_slice(p.as_bytes()))
            .collect()
    }

    #[test]
    fn new_keys_count_at_once_and_stop_the_tenant_one_write_over() {
        let usage = Usage::new(None, Some(3));
        for i in 0..3 {
            usage.wrote("set", &args(&["SET", &format!("t:{i}"), "v"]), &[1]);
            assert!(!usage.over());
        }
        usage.wrote("set", &args(&["SET", "t:3", "v"]), &[1]);
        assert!(usage.over());
        assert_eq!(usage.estimate().1, 4);
    }

    #[test]
    fn overwrites_of_a_key_count_once_and_appends_add_up() {
        let usage = Usage::new(Some(1000), None);
        for _ in 0..100 {
            usage.wrote("set", &args(&["SET", "t:k", "0123456789"]), &[1]);
        }
        assert_eq!(usage.estimate(), (3 + 10 + KEY_OVERHEAD, 1));
        for _ in 0..20 {
            usage.wrote("append", &args(&["APPEND", "t:k", "0123456789"]), &[1]);
        }
        assert!(usage.over());
        usage.removed(&args(&["DEL", "t:k"]), &[1]);
        assert_eq!(usage.estimate(), (0, 0));
        assert!(!usage.over());
    }

    #[test]
    fn a_pass_replaces_what_it_measured_and_keeps_what_came_after() {
        let usage = Usage::new(None, Some(10));
        usage.wrote("set", &args(&["SET", "t:a", "v"]), &[1]);
        usage.pass_started();
        usage.wrote("set", &args(&["SET", "t:b", "v"]), &[1]);
        assert_eq!(usage.estimate().1, 2);
        // The pass saw a (and maybe b): measured 2; b is still counted since.
        usage.pass_completed(200, 2);
        assert_eq!(usage.estimate().1, 3);
        usage.pass_started();
        usage.pass_completed(200, 2);
        assert_eq!(usage.estimate(), (200, 2));
    }

    #[test]
    fn keys_a_running_pass_measured_stop_counting_as_written() {
        let usage = Usage::new(None, None);
        usage.pass_started();
        usage.wrote("set", &args(&["SET", "t:a", "v"]), &[1]);
        usage.wrote("set", &args(&["SET", "t:b", "v"]), &[1]);
        usage.pass_saw(&[b"t:a"]);
        // a is the pass's now; b (written after the pass went by) still counts.
        usage.pass_completed(70, 1);
        assert_eq!(usage.estimate().1, 2);
        assert_eq!(usage.estimate().0, 70 + 3 + 1 + KEY_OVERHEAD);
    }

    #[test]
    fn an_incomplete_pass_keeps_every_write_counted() {
        let usage = Usage::new(None, None);
        usage.wrote("set", &args(&["SET", "t:a", "v"]), &[1]);
        usage.pass_started();
        usage.wrote("set", &args(&["SET", "t:b", "v"]), &[1]);
        usage.pass_started();
        assert_eq!(usage.estimate().1, 2);
    }

    #[test]
    fn multi_key_writes_share_their_values() {
        let usage = Usage::new(None, None);
        usage.wrote(
            "mset",
            &args(&["MSET", "t:a", "1234", "t:b", "5678"]),
            &[1, 3],
        );
        assert_eq!(usage.estimate(), (2 * (3 + 4 + KEY_OVERHEAD), 2));
    }

    #[test]
    fn past_the_tracked_keys_every_write_counts_as_new() {
        let usage = Usage::new(None, None);
        for i in 0..TRACKED + 10 {
            usage.wrote("set", &args(&["SET", &format!("t:{i}"), ""]), &[1]);
        }
        usage.wrote("set", &args(&["SET", "t:x", ""]), &[1]);
        usage.wrote("set", &args(&["SET", "t:x", ""]), &[1]);
        assert_eq!(usage.estimate().1, TRACKED as u64 + 12);
    }
}
