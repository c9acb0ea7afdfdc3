//! COMMAND, COMMAND COUNT, INFO, DOCS and LIST as keygate offers commands to this client: the
//! server's own answer (its entries, byte for byte), without the commands keygate refuses (SYNC,
//! READONLY ...), those no primary has in common with the others, and, for a tenant, those its
//! rules, lists and categories refuse. So a client library that asks COMMAND believes in no
//! command it cannot run, and a tenant sees its own view.
//!
//! The reply is filtered by elements (`value::elements`), each entry kept or dropped whole; a
//! name asked for by COMMAND INFO that is not offered gets a nil, as Redis answers for a name it
//! does not know. Subcommands listed inside an entry are the server's.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::tenancy::listed_for;
use super::Session;
use crate::command::{Command, Policy, Spec};
use crate::dispatch::{reply_bytes, Reply};
use crate::proxy::Proxy;
use crate::resp::{self, value};
use crate::tenant::rules::{self, Rule};
use crate::tenant::TenantState;

/// Which COMMAND form a request is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum View {
    /// COMMAND: an array of entries.
    All,
    /// COMMAND INFO: an entry (or nil, for an unknown name) per name asked.
    Info,
    /// COMMAND LIST: an array of names.
    Names,
    /// COMMAND DOCS: a map of names to their documentation.
    Docs,
    /// COMMAND COUNT: asked as COMMAND LIST, answered with the count of what is offered.
    Count,
}

/// Decides whether a command is offered to one client.
struct Offered {
    proxy: Arc<Proxy>,
    tenant: Option<Arc<TenantState>>,
}

impl Offered {
    fn offers(&self, name: &[u8]) -> bool {
        let cmd = Command::parse_with(
            vec![Bytes::copy_from_slice(name)],
            Some(&self.proxy.commands),
        );
        let Some(spec) = cmd.spec else {
            return false;
        };
        if matches!(cmd.policy, Policy::Refuse(_) | Policy::Close) {
            return false;
        }
        match &self.tenant {
            None => true,
            Some(tenant) => self.tenant_may(spec, cmd.spec_index, tenant),
        }
    }

    fn tenant_may(&self, spec: &Spec, index: usize, tenant: &TenantState) -> bool {
        match listed_for(spec, &tenant.config, &self.proxy.config.load()) {
            Err(_) => false,
            Ok(allowed) => allowed || !matches!(rules::rule_of(spec, index), Some(Rule::Deny(_))),
        }
    }
}

impl Session {
    /// The reply to a COMMAND form that lists commands, filtered for this client; `None` for the
    /// other forms (GETKEYS, HELP), which go their usual way.
    pub(super) fn command_view(&self, cmd: &Command, spec: &Spec) -> Option<Reply> {
        let view = match spec.name {
            "command" => View::All,
            "command|info" => View::Info,
            "command|list" => View::Names,
            "command|docs" => View::Docs,
            "command|count" => View::Count,
            _ => return None,
        };
        let offered = Offered {
            proxy: self.proxy.clone(),
            tenant: self.tenant.as_ref().map(|seat| seat.tenant.clone()),
        };
        let args = match view {
            View::Count => vec![Bytes::from_static(b"COMMAND"), Bytes::from_static(b"LIST")],
            _ => cmd.args.clone(),
        };
        let topology = self.proxy.topology.load_full();
        let backend = topology.backends.first()?.clone();
        let rx = backend.send(self.caller(), args);
        let resp3 = self.flavor.resp3;
        Some(Reply::Later(Box::pin(async move {
            let reply = reply_bytes(rx.await);
            filter(&reply, view, &offered, resp3).unwrap_or(reply)
        })))
    }
}

/// `reply` without what `offered` refuses; `None` when it is not the expected shape (an error
/// passes as it is).
fn filter(reply: &Bytes, view: View, offered: &Offered, resp3: bool) -> Option<Bytes> {
    let kind = *reply.first()?;
    if !matches!(kind, b'*' | b'%' | b'~') {
        return None;
    }
    let elements = value::elements(reply)?;
    let name_of = |element: &Bytes| -> Option<Bytes> {
        match value::parse(element)? {
            value::Value::Bulk(Some(name)) | value::Value::Simple(name) => Some(name),
            value::Value::Array(Some(items)) => match items.first()? {
                value::Value::Bulk(Some(name)) | value::Value::Simple(name) => Some(name.clone()),
                _ => None,
            },
            _ => None,
        }
    };
    let mut out = BytesMut::new();
    match view {
        View::Names | View::Count => {
            let kept: Vec<&Bytes> = elements
                .iter()
                .filter(|e| name_of(e).is_some_and(|n| offered.offers(&n)))
                .collect();
            if view == View::Count {
                resp::put_header(&mut out, b':', kept.len() as i64);
                return Some(out.freeze());
            }
            resp::put_header(&mut out, kind, kept.len() as i64);
            kept.iter().for_each(|e| out.put_slice(e));
        }
        View::All | View::Info => {
            let mut kept = 0;
            let mut body = BytesMut::new();
            for e in &elements {
                match name_of(e) {
                    Some(name) if offered.offers(&name) => {
                        body.put_slice(e);
                        kept += 1;
                    }
                    // COMMAND INFO keeps each asked name's place: nil for one not offered
                    // (a null array in RESP2, as Redis sends).
                    _ if view == View::Info => {
                        body.put_slice(if resp3 { b"_\r\n" } else { b"*-1\r\n" });
                        kept += 1;
                    }
                    _ => {}
                }
            }
            resp::put_header(&mut out, kind, kept);
            out.put_slice(&body);
        }
        View::Docs => {
            let pairs: Vec<&[Bytes]> = elements.chunks(2).filter(|p| p.len() == 2).collect();
            let kept: Vec<&&[Bytes]> = pairs
                .iter()
                .filter(|p| name_of(&p[0]).is_some_and(|n| offered.offers(&n)))
                .collect();
            let count = if kind == b'%' {
                kept.len()
            } else {
                kept.len() * 2
            };
            resp::put_header(&mut out, kind, count as i64);
            for pair in kept {
                out.put_slice(&pair[0]);
                out.put_slice(&pair[1]);
            }
        }
    }
    Some(out.freeze())
}
