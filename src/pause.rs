//! CLIENT PAUSE and CLIENT UNPAUSE over keygate's own clients.
//!
//! Sent to a server, CLIENT PAUSE would stop keygate's shared connections: one client's paused
//! write would hold up every other client's reads behind it, and the requests waiting would
//! time out. So keygate pauses its clients itself, as Redis pauses its own: `ALL` holds every
//! command, `WRITE` those that may write or replicate (Redis's `write` and `may-replicate`
//! flags: SET, PUBLISH, PFCOUNT, EVAL unless its shebang says `no-writes`, an EXEC with such a
//! command queued). A held command waits, with everything its client sent after it, until the
//! pause ends (its timeout, or CLIENT UNPAUSE), then runs. Useful in its own right: pause writes
//! through keygate for a manual failover, then unpause.
//!
//! One difference: CLIENT PAUSE and CLIENT UNPAUSE themselves are never held, so a pause `ALL`
//! can be lifted early.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
}

impl Default for Pause {
    fn default() -> Self {
        Pause {
            state: Mutex::new(None),
            changed: watch::channel(()).0,
            held: AtomicUsize::new(0),
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
