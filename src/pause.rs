//! CLIENT PAUSE and CLIENT UNPAUSE over keygate's own clients.
//!
//! Sent to a server, CLIENT PAUSE would stop keygate's shared connections: one client's paused
//! write would hold up every other client's reads behind it, and the requests waiting would
//! time out. So keygate pauses its clients itself, as Redis pauses its own: `ALL` holds every
//! command, `WRITE` those that may write or replicate (Redis's `write` and `may-replicate`
//! flags: SET, PUBLISH, PFCOUNT, EVAL unless its shebang says `no-writes`, EVALSHA unless
//! keygate saw that script's body with such a shebang (in EVAL or SCRIPT LOAD), FCALL unless the
//! server marks the function `no-writes` (learnt from FUNCTION LIST as a WRITE pause starts), an
//! EXEC with such a command queued). A held command waits, with everything its client sent after it, until the
//! pause ends (its timeout, or CLIENT UNPAUSE), then runs. Useful in its own right: pause writes
//! through keygate for a manual failover, then unpause.
//!
//! One difference: CLIENT PAUSE and CLIENT UNPAUSE themselves are never held, so a pause `ALL`
//! can be lifted early.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha1::Digest;

use crate::resp::value::{self, Value};

use tokio::sync::watch;
use tokio::time::Instant;

/// What a pause holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Write,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    until: Instant,
    mode: Mode,
}

pub struct Pause {
    state: Mutex<Option<State>>,
    /// Ticks when a pause starts, changes or ends by UNPAUSE.
    changed: watch::Sender<()>,
    /// Clients with a command held by the pause now (INFO's `blocked_clients`).
    held: AtomicUsize,
    /// SHA1s (lower-case hex) of scripts seen with a `no-writes` shebang, at most
    /// `READ_ONLY_SCRIPTS`; a script not known is taken to write.
    read_only_scripts: Mutex<HashSet<Bytes>>,
    /// Functions the server marks `no-writes`, as of the last WRITE pause's start.
    read_only_functions: Mutex<HashSet<Bytes>>,
}

/// Read-only scripts remembered for EVALSHA (40 bytes each: 400 KB at most).
const READ_ONLY_SCRIPTS: usize = 10_000;

impl Default for Pause {
    fn default() -> Self {
        Pause {
            state: Mutex::new(None),
            changed: watch::channel(()).0,
            held: AtomicUsize::new(0),
            read_only_scripts: Mutex::default(),
            read_only_functions: Mutex::default(),
        }
    }
}

/// A client's command held by the pause; counted while it lives.
pub struct Held(Arc<Pause>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pause {
    /// CLIENT PAUSE: as Redis, a second pause extends the first (the later end, the stricter
    /// mode).
    pub fn pause(&self, until: Instant, mode: Mode) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let next = match *state {
            Some(now) if now.until > Instant::now() => State {
                until: now.until.max(until),
                mode: now.mode.max(mode),
            },
            _ => State { until, mode },
        };
        *state = Some(next);
        self.changed.send_replace(());
    }

    /// CLIENT UNPAUSE.
    pub fn unpause(&self) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.changed.send_replace(());
    }

    /// Whether a command (`writes`: it may write or replicate) must wait now; until when.
    pub fn holds(&self, writes: bool) -> Option<Instant> {
        let state = (*self.state.lock().unwrap_or_else(|e| e.into_inner()))?;
        let applies = state.mode == Mode::All || writes;
        (applies && state.until > Instant::now()).then_some(state.until)
    }

    /// Wait until a command (`writes` as in `holds`) may run.
    pub async fn wait(&self, writes: bool) {
        let mut changed = self.changed.subscribe();
        while let Some(until) = self.holds(writes) {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = changed.changed() => {}
            }
        }
    }

    /// Count a client as held while the returned guard lives.
    pub fn hold(self: &Arc<Self>) -> Held {
        self.held.fetch_add(1, Ordering::Relaxed);
        Held(self.clone())
    }

    /// Clients with a command held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// Does a script's shebang line declare it read-only (`#!lua flags=no-writes`)?
impl Pause {
    /// A script's body passing through keygate (EVAL, SCRIPT LOAD): remembered if it does not
    /// write, for EVALSHA.
    pub fn saw_script(&self, body: &[u8]) {
        if !script_without_writes(body) {
            return;
        }
        let sha = sha1_hex(body);
        let mut known = self
            .read_only_scripts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if known.len() < READ_ONLY_SCRIPTS {
            known.insert(sha);
        }
    }

    /// EVALSHA's script is known not to write.
    pub fn script_read_only(&self, sha: &[u8]) -> bool {
        let known = self
            .read_only_scripts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        known.contains(&Bytes::from(sha.to_ascii_lowercase()))
    }

    /// FUNCTION LIST's reply (RESP2) from a server: its `no-writes` functions, for FCALL.
    pub fn learn_functions(&self, list: &Bytes) {
        let mut read_only = HashSet::new();
        if let Some(Value::Array(Some(libraries))) = value::parse(list) {
            for library in &libraries {
                let Some(functions) = field(library, b"functions") else {
                    continue;
                };
                let Value::Array(Some(functions)) = functions else {
                    continue;
                };
                for function in functions {
                    let (Some(Value::Bulk(Some(name))), Some(Value::Array(Some(flags)))) =
                        (field(function, b"name"), field(function, b"flags"))
                    else {
                        continue;
                    };
                    if flags
                        .iter()
                        .any(|f| matches!(f, Value::Bulk(Some(f)) | Value::Simple(f) if &f[..] == b"no-writes"))
                    {
                        read_only.insert(Bytes::from(name.to_ascii_lowercase()));
                    }
                }
            }
        }
        *self
            .read_only_functions
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = read_only;
    }

    /// FCALL's function is one the server marks `no-writes`.
    pub fn function_read_only(&self, name: &[u8]) -> bool {
        let known = self
            .read_only_functions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        known.contains(&Bytes::from(name.to_ascii_lowercase()))
    }
}

/// A field of a RESP2 "map" (a flat array of name, value, ...).
fn field<'a>(map: &'a Value, name: &[u8]) -> Option<&'a Value> {
    let Value::Array(Some(items)) = map else {
        return None;
    };
    items.chunks(2).find_map(|pair| match pair {
        [Value::Bulk(Some(key)) | Value::Simple(key), value] if &key[..] == name => Some(value),
        _ => None,
    })
}

fn sha1_hex(body: &[u8]) -> Bytes {
    let digest = sha1::Sha1::digest(body);
    Bytes::from(
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    )
}

pub fn script_without_writes(body: &[u8]) -> bool {
    let Some(rest) = body.strip_prefix(b"#!") else {
        return false;
    };
    let line = rest.split(|&c| c == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    line.split_whitespace()
        .filter_map(|word| word.strip_prefix("flags="))
        .any(|flags| flags.split(',').any(|flag| flag == "no-writes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn pauses_extend_and_end() {
        let pause = Pause::default();
        assert_eq!(pause.holds(true), None);
        let soon = Instant::now() + Duration::from_millis(50);
        pause.pause(soon, Mode::Write);
        assert!(pause.holds(true).is_some());
        assert_eq!(pause.holds(false), None);
        // A second pause: the stricter mode, the later end.
        pause.pause(Instant::now() + Duration::from_millis(10), Mode::All);
        assert_eq!(pause.holds(false), Some(soon));
        pause.wait(false).await;
        assert!(Instant::now() >= soon);
        pause.pause(Instant::now() + Duration::from_secs(60), Mode::All);
        pause.unpause();
        assert_eq!(pause.holds(true), None);
    }

    #[test]
    fn shebang_flags() {
        assert!(script_without_writes(b"#!lua flags=no-writes\nreturn 1"));
        assert!(script_without_writes(
            b"#!lua name=x flags=allow-stale,no-writes\n"
        ));
        assert!(!script_without_writes(b"#!lua\nreturn 1"));
        assert!(!script_without_writes(b"return 'flags=no-writes'"));
    }
}
