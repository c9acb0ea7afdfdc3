//! MONITOR's lines for what clients send to keygate, as Redis would show them.
//!
//! Redis's own MONITOR shows the server's clients: through keygate those are keygate's pooled
//! connections, with keygate's addresses, without the commands keygate answers itself (PING,
//! CLIENT, HELLO, SELECT ...) and with keygate's own MULTI and setup commands. So keygate writes
//! the lines itself, one per command a client sends, with that client's address and database:
//! `+1700000000.123456 [0 127.0.0.1:50000] "set" "k" "v"`. Like Redis it leaves out commands it
//! refuses before running (unknown, wrong arity), administrative ones (CONFIG, DEBUG ...), and
//! redacts credentials (AUTH, HELLO ... AUTH, MIGRATE ... AUTH/AUTH2). What only the server sees,
//! the commands a script calls (`[0 lua] ...`), still comes from the servers' own MONITOR (see
//! session::feeds).
//!
//! Each monitoring client has a queue of its own lines. One that falls more than `BEHIND`
//! bytes behind (it does not read, or reads slower than clients send) is disconnected at once,
//! as Redis disconnects a client past its output buffer's hard limit: a monitor that never
//! reads holds at most `BEHIND` bytes of keygate's memory, and (its connection to each server's
//! MONITOR closing with it) no more than about as much of the servers'. With no monitor, a
//! request costs one atomic load here.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Bytes of lines a monitor may fall behind before it is disconnected (Redis's default hard
/// limit for pub/sub clients' output, 32 MiB).
pub const BEHIND: usize = 32 << 20;

#[derive(Default)]
pub struct Monitors {
    /// Clients monitoring now.
    count: AtomicUsize,
    watchers: Mutex<Vec<Arc<Lines>>>,
}

/// One monitor's lines not yet taken.
#[derive(Default)]
struct Lines {
    queue: Mutex<(VecDeque<Bytes>, usize)>,
    added: Notify,
    /// Cancelled once it fell `BEHIND` bytes behind; its queue is dropped then.
    lagged: CancellationToken,
}

/// A monitoring client's subscription; counted while it lives.
pub struct Watcher {
    monitors: Arc<Monitors>,
    lines: Arc<Lines>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let mut watchers = self.monitors.watchers.lock().expect("monitors lock");
        watchers.retain(|w| !Arc::ptr_eq(w, &self.lines));
        self.monitors.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Watcher {
    /// The next line (waits for one; never returns once lagged: see `lagged`).
    pub async fn recv(&self) -> Bytes {
        loop {
            if !self.lines.lagged.is_cancelled() {
                let mut queue = self.lines.queue.lock().expect("monitor lock");
                if let Some(line) = queue.0.pop_front() {
                    queue.1 -= line.len();
                    return line;
                }
            }
            // A line added after the check leaves a permit: this returns at once then.
            self.lines.added.notified().await;
        }
    }

    /// Cancelled once the monitor fell `BEHIND` bytes behind: disconnect it.
    pub fn lagged(&self) -> CancellationToken {
        self.lines.lagged.clone()
    }
}

impl Monitors {
    /// Does anyone monitor?
    pub fn active(&self) -> bool {
        self.count.load(Ordering::Relaxed) > 0
    }

    /// Start receiving lines.
    pub fn watch(self: &Arc<Self>) -> Watcher {
        let lines = Arc::new(Lines::default());
        let mut watchers = self.watchers.lock().expect("monitors lock");
        watchers.push(lines.clone());
        self.count.fetch_add(1, Ordering::Relaxed);
        Watcher {
            monitors: self.clone(),
            lines,
        }
    }

    /// Show a command a client sent.
    pub fn show(&self, db: u32, peer: &SocketAddr, args: &[Bytes]) {
        let line = line(db, &peer.to_string(), args, now());
        for watcher in self.watchers.lock().expect("monitors lock").iter() {
            let mut queue = watcher.queue.lock().expect("monitor lock");
            if watcher.lagged.is_cancelled() {
                continue;
            }
            if queue.1 + line.len() > BEHIND {
                *queue = Default::default();
                watcher.lagged.cancel();
                continue;
            }
            queue.1 += line.len();
            queue.0.push_back(line.clone());
            drop(queue);
            watcher.added.notify_one();
        }
    }
}

fn now() -> (u64, u32) {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (since.as_secs(), since.subsec_micros())
}

/// Which arguments Redis 7 replaces with `(redacted)` in MONITOR.
fn redacted(args: &[Bytes], i: usize) -> bool {
    let name = &args[0];
    if name.eq_ignore_ascii_case(b"auth") {
        return i >= 1;
    }
    let before = |back: usize, word: &[u8]| i > back && args[i - back].eq_ignore_ascii_case(word);
    if name.eq_ignore_ascii_case(b"hello") {
        // HELLO protover AUTH user pass: the user and the password.
        return i >= 3 && (before(1, b"auth") || before(2, b"auth"));
    }
    if name.eq_ignore_ascii_case(b"migrate") {
        // MIGRATE ... AUTH pass / AUTH2 user pass.
        return before(1, b"auth") || before(1, b"auth2") || before(2, b"auth2");
    }
    false
}

/// One MONITOR line: `+secs.micros [db addr] "arg" ...`, each argument quoted and escaped as
/// Redis's `sdscatrepr` does.
pub fn line(db: u32, addr: &str, args: &[Bytes], (secs, micros): (u64, u32)) -> Bytes {
    let mut out = BytesMut::with_capacity(64 + args.iter().map(|a| a.len() + 3).sum::<usize>());
    out.put_slice(format!("+{secs}.{micros:06} [{db} {addr}]").as_bytes());
    for (i, arg) in args.iter().enumerate() {
        out.put_u8(b' ');
        if i > 0 && redacted(args, i) {
            out.put_slice(b"\"(redacted)\"");
        } else {
            repr(&mut out, arg);
        }
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

/// `"..."` with `\\`, `\"`, `\n`, `\r`, `\t`, `\a`, `\b` and `\xHH` for other unprintable bytes.
fn repr(out: &mut BytesMut, arg: &[u8]) {
    out.put_u8(b'"');
    for &c in arg {
        match c {
            b'\\' => out.put_slice(b"\\\\"),
            b'"' => out.put_slice(b"\\\""),
            b'\n' => out.put_slice(b"\\n"),
            b'\r' => out.put_slice(b"\\r"),
            b'\t' => out.put_slice(b"\\t"),
            7 => out.put_slice(b"\\a"),
            8 => out.put_slice(b"\\b"),
            c if c.is_ascii_graphic() || c == b' ' => out.put_u8(c),
            c => out.put_slice(format!("\\x{c:02x}").as_bytes()),
        }
    }
    out.put_u8(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(args: &[&str]) -> String {
        let args: Vec<Bytes> = args
            .iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        String::from_utf8(line(3, "127.0.0.1:5000", &args, (1700000000, 42)).to_vec()).unwrap()
    }

    #[test]
    fn lines_read_as_redis_writes_them() {
        assert_eq!(
            show(&["set", "k", "a \"b\"\n\x01"]),
            "+1700000000.000042 [3 127.0.0.1:5000] \"set\" \"k\" \"a \\\"b\\\"\\n\\x01\"\r\n"
        );
    }

    #[test]
    fn credentials_are_redacted() {
        assert!(show(&["AUTH", "u", "p"]).ends_with("\"AUTH\" \"(redacted)\" \"(redacted)\"\r\n"));
        assert!(show(&["hello", "2", "AUTH", "u", "p", "setname", "n"])
            .ends_with("\"2\" \"AUTH\" \"(redacted)\" \"(redacted)\" \"setname\" \"n\"\r\n"));
        assert!(
            show(&["migrate", "h", "1", "k", "0", "5", "AUTH2", "u", "p"])
                .ends_with("\"5\" \"AUTH2\" \"(redacted)\" \"(redacted)\"\r\n")
        );
        assert!(show(&["migrate", "h", "1", "k", "0", "5", "AUTH", "p"])
            .ends_with("\"AUTH\" \"(redacted)\"\r\n"));
    }
}
