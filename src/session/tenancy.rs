//! A tenant's rules applied to each request on the way in, and its prefix taken off the reply on
//! the way out. Used only when tenants are configured; then every client must authenticate as
//! one, and every command it runs is checked against `tenant::rules`, the global policy and the
//! tenant's own lists before anything is routed.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use super::Session;
use crate::command::{flags, Command, Spec};
use crate::dispatch::Reply;
use crate::error::Error;
use crate::resp::{self, value};
use crate::tenant::rewrite::{self, Refusal};
use crate::tenant::rules::{self, Rule};
use crate::tenant::{self as tenancy, Seat};

/// What the reply needs before the client sees it.
pub(super) enum Fix {
    None,
    /// An array of keys (KEYS): strip the prefix from each.
    Keys,
    /// `[cursor, [keys]]` (SCAN): strip the prefix from each key.
    Scan,
}

const NOT_YET: &str = "is not available to tenants in this build yet";

impl Session {
    pub(super) fn tenancy(&self) -> bool {
        !self.proxy.tenants.is_empty()
    }

    /// AUTH [user] password, with tenants configured. A failure leaves the identity unchanged.
    pub(super) fn tenant_auth(
        &mut self,
        user: Option<&Bytes>,
        password: &Bytes,
    ) -> Result<(), Error> {
        let tenant = tenancy::authenticate(&self.proxy.tenants, user.map(|u| &u[..]), password)
            .ok_or(Error::Coded(
                "WRONGPASS invalid username-password pair or user is disabled.",
            ))?
            .clone();
        if self
            .tenant
            .as_ref()
            .is_some_and(|seat| Arc::ptr_eq(&seat.tenant, &tenant))
        {
            return Ok(());
        }
        let seat = Seat::take(&tenant).ok_or_else(|| Error::TenantFull {
            tenant: tenant.config.name.clone(),
            max: tenant.config.max_connections.unwrap_or(0),
        })?;
        self.tenant = Some(seat);
        Ok(())
    }

    /// Check that the tenant may run `cmd` and confine it to the tenant's keyspace.
    pub(super) fn confine(&mut self, cmd: &mut Command, spec: &'static Spec) -> Result<Fix, Error> {
        let Some(seat) = &self.tenant else {
            if spec.has(flags::NO_AUTH) {
                return Ok(Fix::None);
            }
            return Err(Error::Coded("NOAUTH Authentication required."));
        };
        let tenant = seat.tenant.clone();
        tenant.requests.fetch_add(1, Relaxed);
        let config = &tenant.config;
        let name = spec.name;
        let container = name.split('|').next().unwrap_or(name);
        let listed = |list: &[String]| list.iter().any(|c| c == name || c == container);
        let refuse = |reason: &'static str| Error::NoPerm {
            command: name.replace('|', " "),
            reason,
        };
        if listed(&self.proxy.config.deny_commands) || listed(&config.deny_commands) {
            return Err(refuse("is denied by keygate's policy"));
        }
        let allowed = config.allow_commands.as_deref().map(listed);
        if allowed == Some(false) {
            return Err(refuse("is not in this tenant's allow_commands"));
        }
        if !tenant.take_op(Instant::now()) {
            tenant.rate_limited.fetch_add(1, Relaxed);
            return Err(Error::RateLimited {
                tenant: config.name.clone(),
                rate: config.max_ops_per_sec.unwrap_or(0),
            });
        }
        let prefix = config.prefix.as_bytes();
        match rules::rule(name) {
            Some(Rule::Pass | Rule::Local) => Ok(Fix::None),
            Some(Rule::Keys) => {
                rewrite::prefix_keys(spec, &mut cmd.args, prefix);
                Ok(Fix::None)
            }
            Some(Rule::Channel) if matches!(name, "publish" | "spublish") => {
                cmd.args[1] = rewrite::prefixed(prefix, &cmd.args[1]);
                Ok(Fix::None)
            }
            Some(Rule::Emulate) if name == "keys" => {
                cmd.args[1] =
                    rewrite::confine_pattern(prefix, Some(&cmd.args[1])).map_err(pattern)?;
                Ok(Fix::Keys)
            }
            Some(Rule::Emulate) if name == "scan" => {
                confine_scan(&mut cmd.args, prefix)?;
                Ok(Fix::Scan)
            }
            // Explicitly allowed by the tenant's config: the operator's choice, forwarded as is.
            Some(Rule::Deny(_)) if allowed == Some(true) => Ok(Fix::None),
            Some(Rule::Deny(reason)) => Err(refuse(reason)),
            Some(Rule::Custom | Rule::Channel | Rule::Emulate) => Err(refuse(NOT_YET)),
            None => Err(refuse("is unknown to keygate's tenant rules")),
        }
    }
}

fn pattern(refusal: Refusal) -> Error {
    Error::PatternRefused(match refusal {
        Refusal::PatternTooLong => "the pattern is too long",
        _ => "the pattern has too many wildcards",
    })
}

/// SCAN cursor [MATCH p] [COUNT n] [TYPE t]: the tenant's pattern replaces every MATCH the client
/// gave (Redis would use the last one), and applies when it gave none.
fn confine_scan(args: &mut Vec<Bytes>, prefix: &[u8]) -> Result<(), Error> {
    let mut kept = vec![args[0].clone(), args[1].clone()];
    let mut pattern_arg: Option<Bytes> = None;
    let mut i = 2;
    while i < args.len() {
        if i + 1 >= args.len() {
            return Err(Error::Invalid("syntax error"));
        }
        if args[i].eq_ignore_ascii_case(b"match") {
            pattern_arg = Some(args[i + 1].clone());
        } else {
            kept.push(args[i].clone());
            kept.push(args[i + 1].clone());
        }
        i += 2;
    }
    let confined = rewrite::confine_pattern(prefix, pattern_arg.as_deref()).map_err(pattern)?;
    kept.push(Bytes::from_static(b"MATCH"));
    kept.push(confined);
    *args = kept;
    Ok(())
}

/// Wrap `reply` so the client sees its keys without the tenant's prefix.
pub(super) fn unconfine(reply: Reply, fix: Fix, prefix: Bytes) -> Reply {
    if let Fix::None = fix {
        return reply;
    }
    let pending = match reply {
        Reply::Ready(bytes) => return Reply::Ready(bytes),
        other => other,
    };
    Reply::Later(Box::pin(async move {
        let bytes = match pending {
            Reply::Ready(bytes) => bytes,
            Reply::Backend(rx) => match rx.await {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(e)) => e.to_reply(),
                Err(_) => Error::Internal("the backend connection handling this request failed")
                    .to_reply(),
            },
            Reply::Later(future) => future.await,
        };
        if bytes.first() == Some(&b'-') {
            return bytes;
        }
        let stripped = match fix {
            Fix::Keys => strip_keys(&bytes, &prefix),
            Fix::Scan => value::elements(&bytes).and_then(|parts| match parts.as_slice() {
                [cursor, keys] => {
                    let keys = strip_keys(keys, &prefix)?;
                    let mut out = BytesMut::new();
                    resp::put_header(&mut out, b'*', 2);
                    out.put_slice(cursor);
                    out.put_slice(&keys);
                    Some(out.freeze())
                }
                _ => None,
            }),
            Fix::None => Some(bytes),
        };
        stripped.unwrap_or_else(|| Error::ForeignKey.to_reply())
    }))
}

/// An error reply with `'<prefix>` replaced by `'`: key names Redis quotes, shown as the tenant
/// knows them. Only errors are touched, never values.
pub(super) fn unquote_keys(error: Bytes, prefix: &[u8]) -> Bytes {
    let mut needle = Vec::with_capacity(prefix.len() + 1);
    needle.push(b'\'');
    needle.extend_from_slice(prefix);
    if memchr::memmem::find(&error, &needle).is_none() {
        return error;
    }
    let mut out = Vec::with_capacity(error.len());
    let mut rest = &error[..];
    while let Some(at) = memchr::memmem::find(rest, &needle) {
        out.extend_from_slice(&rest[..at + 1]);
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    Bytes::from(out)
}

/// An array of bulk keys, each without the prefix; `None` if any key lacks it.
fn strip_keys(array: &Bytes, prefix: &[u8]) -> Option<Bytes> {
    let items = value::elements(array)?;
    let mut out = BytesMut::with_capacity(array.len());
    resp::put_header(&mut out, b'*', items.len() as i64);
    for item in items {
        let value::Value::Bulk(Some(key)) = value::parse(&item)? else {
            return None;
        };
        let key = rewrite::strip(prefix, &key).ok()?;
        resp::put_bulk(&mut out, Some(&key));
    }
    Some(out.freeze())
}
