//! The one error type of the request path. `to_reply()` holds every error text a client can
//! receive from keygate itself; `is_backend()` tells failures of a backend (which later count
//! against its circuit breaker) from the client's own mistakes.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::resp;

#[derive(Clone, Debug)]
pub enum Error {
    /// The client broke the protocol; the connection is closed after this reply.
    Protocol(String),
    /// Redis 7 has no command of this name.
    UnknownCommand { args: Vec<Bytes> },
    /// The container command (CLIENT, ...) has no such subcommand, or keygate offers none.
    UnknownSubcommand { container: &'static str, sub: Bytes },
    /// Arity check failed; carries Redis's full command name (`client|setname`).
    WrongArity(&'static str),
    /// keygate does not offer this command; the reason says why.
    Refused {
        command: String,
        reason: &'static str,
    },
    /// A plain `ERR` reply with this text (arguments of keygate's own commands).
    Invalid(&'static str),
    /// `ERR <what> '<option>'`: an option keygate's own commands do not take.
    InvalidOption { what: &'static str, option: Bytes },
    /// A reply with its own error code, e.g. `WRONGPASS ...`, `NOPROTO ...`.
    Coded(&'static str),
    /// An error with its whole text (code included), made at run time.
    Text(String),
    /// The backend is not connected (down, refused, or reconnecting).
    BackendDown { addr: Arc<str>, reason: Arc<str> },
    /// The backend did not answer within the request timeout.
    BackendTimeout {
        addr: Arc<str>,
        after: std::time::Duration,
    },
    /// The backend connection broke while this request was in flight.
    BackendLost { addr: Arc<str>, reason: Arc<str> },
    /// A backend failure (`BackendTimeout`, `BackendLost`) after the request was sent: the
    /// server may have run it, and the text says so, so that nobody retries a write believing
    /// it failed (see the README, "Timeouts").
    MayHaveRun(Arc<Error>),
    /// All `limit` connections of this kind (blocking, subscriber) to the server are in use.
    DedicatedLimit {
        addr: Arc<str>,
        what: &'static str,
        limit: usize,
    },
    /// The command is not one a client may send in this connection state (RESP2 subscribed
    /// mode); carries the command name as the client sent it.
    NotInContext(Bytes),
    /// The backend's reply nests deeper than keygate forwards.
    ReplyTooDeep { depth: usize },
    /// Keys of a command that cannot be split live on different shards (or cluster slots).
    CrossSlot,
    /// No cluster primary serves this slot (the slot map is not known, or the cluster is down).
    SlotUnserved(u16),
    /// kind = "sentinel": no sentinel has named a primary (yet).
    NoPrimary,
    /// A SCAN cursor made under another topology.
    StaleCursor,
    /// A tenant may not run this command; the reason says why.
    NoPerm {
        command: String,
        reason: &'static str,
    },
    /// The tenant is over its `max_ops_per_sec`.
    RateLimited { tenant: String, rate: u32 },
    /// The tenant is over its `max_memory` or `max_keys` and the command may grow memory.
    OverQuota { tenant: String, quota: String },
    /// A reload removed the tenant this connection authenticated as.
    TenantRemoved(String),
    /// The tenant already has `max_connections` clients.
    TenantFull { tenant: String, max: usize },
    /// A KEYS or SCAN pattern keygate will not run for a tenant.
    PatternRefused(&'static str),
    /// A reply held a key outside the tenant's keyspace: never passed on.
    ForeignKey,
    /// A bug in keygate cost this request; the text says where.
    Internal(&'static str),
    /// A command keygate emulates for tenants (over many keys) cannot be queued inside MULTI.
    NotInTransaction(String),
}

impl Error {
    /// This error, for a request that had been sent when it happened.
    pub fn sent(self) -> Error {
        match self {
            Error::BackendTimeout { .. } | Error::BackendLost { .. } => {
                Error::MayHaveRun(Arc::new(self))
            }
            other => other,
        }
    }

    /// The RESP error reply for this error.
    pub fn to_reply(&self) -> Bytes {
        let text = match self {
            Error::Protocol(what) => format!("ERR Protocol error: {what}"),
            Error::UnknownCommand { args } => return unknown_command(args),
            Error::UnknownSubcommand { container, sub } => format!(
                "ERR unknown subcommand '{}'. Try {} HELP.",
                String::from_utf8_lossy(&sub[..sub.len().min(128)]),
                container.to_ascii_uppercase()
            ),
            Error::WrongArity(name) => {
                format!("ERR wrong number of arguments for '{name}' command")
            }
            Error::Refused { command, reason } => {
                format!("ERR '{command}' is not available through keygate: it {reason}")
            }
            Error::Invalid(text) => format!("ERR {text}"),
            Error::InvalidOption { what, option } => format!(
                "ERR {what} '{}'",
                String::from_utf8_lossy(&option[..option.len().min(128)])
            ),
            Error::Coded(text) => (*text).to_string(),
            Error::Text(text) => text.clone(),
            Error::BackendDown { addr, reason } => {
                format!("ERR keygate: backend {addr} is unavailable ({reason})")
            }
            Error::BackendTimeout { addr, after } => format!(
                "ERR keygate: backend {addr} did not answer within {}",
                humantime::format_duration(*after)
            ),
            Error::BackendLost { addr, reason } => {
                format!("ERR keygate: connection to backend {addr} lost ({reason})")
            }
            Error::MayHaveRun(cause) => {
                let cause = cause.to_reply();
                format!(
                    "{}; the command was sent and may have run",
                    String::from_utf8_lossy(&cause[1..cause.len() - 2])
                )
            }
            Error::DedicatedLimit { addr, what, limit } => format!(
                "ERR keygate: all {limit} {what} connections to backend {addr} are in use (limit reached: upstream.{what}_connections_per_server)"
            ),
            Error::NotInContext(name) => format!(
                "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                String::from_utf8_lossy(&name[..name.len().min(128)]).to_ascii_lowercase()
            ),
            Error::CrossSlot => "CROSSSLOT Keys in request don't hash to the same slot".to_string(),
            Error::SlotUnserved(slot) => format!("CLUSTERDOWN Hash slot {slot} is not served (keygate has no node for it)"),
            Error::NoPrimary => "ERR keygate: no primary is known yet: no sentinel has named one (see the log)".to_string(),
            Error::StaleCursor => "ERR keygate: this SCAN cursor was made before the topology changed; start the scan again from 0".to_string(),
            Error::NoPerm { command, reason } => format!("NOPERM keygate: '{command}' {reason}"),
            Error::RateLimited { tenant, rate } => format!(
                "ERR keygate: tenant '{tenant}' is over its limit of {rate} requests per second"
            ),
            Error::OverQuota { tenant, quota } => format!(
                "OOM command not allowed when tenant '{tenant}' is over its quota ({quota})"
            ),
            Error::TenantRemoved(tenant) => format!(
                "NOAUTH keygate: tenant '{tenant}' was removed from the config; authenticate again"
            ),
            Error::TenantFull { tenant, max } => format!(
                "ERR keygate: tenant '{tenant}' already has its maximum of {max} connections"
            ),
            Error::PatternRefused(why) => format!("ERR keygate: {why}"),
            Error::ForeignKey => "ERR keygate: the reply held a key outside your keyspace and was withheld".to_string(),
            Error::Internal(what) => format!("ERR keygate: internal error: {what}"),
            Error::NotInTransaction(command) => format!(
                "ERR keygate: '{command}' cannot run inside MULTI for a tenant: it is emulated over the tenant's keys and cannot be part of an atomic EXEC"
            ),
            Error::ReplyTooDeep { depth } => format!(
                "ERR keygate: the reply nests deeper than {depth} levels and was not forwarded"
            ),
        };
        resp::error(&text)
    }

    /// A failure of the backend rather than of the request.
    pub fn is_backend(&self) -> bool {
        if let Error::MayHaveRun(cause) = self {
            return cause.is_backend();
        }
        matches!(
            self,
            Error::BackendDown { .. }
                | Error::BackendTimeout { .. }
                | Error::BackendLost { .. }
                | Error::NoPrimary
        )
    }
}

/// Redis's own "unknown command" text, so clients and their tests see what they expect. The
/// client's bytes are echoed as they are (not as UTF-8), as Redis does.
fn unknown_command(args: &[Bytes]) -> Bytes {
    let mut text = b"ERR unknown command '".to_vec();
    text.extend_from_slice(&args[0][..args[0].len().min(128)]);
    text.extend_from_slice(b"', with args beginning with: ");
    let mut preview = 0;
    for arg in &args[1..] {
        if preview >= 128 {
            break;
        }
        let shown = &arg[..arg.len().min(128 - preview)];
        preview += shown.len() + 3;
        text.push(b'\'');
        text.extend_from_slice(shown);
        text.extend_from_slice(b"' ");
    }
    resp::error_bytes(&text)
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reply = self.to_reply();
        f.write_str(String::from_utf8_lossy(&reply[1..reply.len() - 2]).as_ref())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_match_redis() {
        let e = Error::UnknownCommand {
            args: vec![Bytes::from_static(b"foo"), Bytes::from_static(b"a\r\nb")],
        };
        assert_eq!(
            &e.to_reply()[..],
            b"-ERR unknown command 'foo', with args beginning with: 'a  b' \r\n"
        );
        assert_eq!(
            &Error::WrongArity("get").to_reply()[..],
            b"-ERR wrong number of arguments for 'get' command\r\n"
        );
        let e = Error::UnknownSubcommand {
            container: "client",
            sub: Bytes::from_static(b"maint_notifications"),
        };
        assert_eq!(
            &e.to_reply()[..],
            b"-ERR unknown subcommand 'maint_notifications'. Try CLIENT HELP.\r\n"
        );
    }
}
