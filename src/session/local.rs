//! The commands keygate answers itself, because they read or change connection state and the
//! backend connection is shared: QUIT, SELECT, AUTH, HELLO, RESET and CLIENT (LIST
//! and KILL over keygate's own clients, see clients); SLOWLOG from keygate's own slowlog; MONITOR
//! and CLIENT TRACKING start feeds (see session::feeds). Their replies follow Redis 7's texts, so
//! clients behave exactly as they do against Redis.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::{Handled, Session};
use crate::backend::Flavor;
use crate::clients::Client;
use crate::command::Command;
use crate::config::UpstreamKind;
use crate::dispatch::Reply;
use crate::error::Error;
use crate::resp;

const NOT_INTEGER: &str = "value is not an integer or out of range";
const BAD_NAME: &str = "Client names cannot contain spaces, newlines or special characters.";

impl Session {
    pub(super) fn local(&mut self, cmd: &Command) -> Result<Handled, Error> {
        let args = &cmd.args;
        match cmd.name() {
            "quit" => {
                self.closing = true;
                Handled::ready(resp::simple("OK"))
            }
            "select" => self.select(&args[1]),
            "auth" => self
                .auth(&args[1..])
                .and_then(|()| self.after_admission(resp::simple("OK"))),
            "hello" => self.hello(&args[1..]),
            "reset" => {
                // As in Redis, RESET also forgets who the client authenticated as, any MULTI or
                // WATCH (dropping the pinned connection closes it), subscriptions (the same),
                // the database and the protocol.
                self.tenant = None;
                self.txn = None;
                self.sub = None;
                self.monitor = None;
                self.tracking = None;
                if !Arc::ptr_eq(&self.proxy, &self.home) {
                    self.proxy = self.home.clone();
                    self.must_drain = true;
                }
                if self.flavor != Flavor::default() || self.pending_select.is_some() {
                    self.flavor = Flavor::default();
                    self.pending_select = None;
                    self.must_drain = true;
                }
                self.name = None;
                self.replies_off = false;
                self.skip_next = false;
                Handled::ready(resp::simple("RESET"))
            }
            "client" => self.client(cmd),
            "monitor" => self.monitor(),
            "slowlog" => self.slowlog(cmd),
            // Command::parse gives Policy::Local only to the names above.
            _ => Err(Error::Internal("a local command without a handler")),
        }
    }

    /// AUTH as Redis answers it with no password configured for the default user: keygate has no
    /// client credentials of its own yet (tenants bring them).
    fn auth(&mut self, args: &[Bytes]) -> Result<(), Error> {
        if self.tenancy() {
            return match args {
                [password] => self.tenant_auth(None, password),
                [user, password] => self.tenant_auth(Some(user), password),
                _ => Err(Error::Invalid("syntax error")),
            };
        }
        match args {
            [_password] => Err(Error::Invalid(
                "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
            )),
            [user, _password] if user.eq_ignore_ascii_case(b"default") => Ok(()),
            [_, _] => Err(Error::Coded(
                "WRONGPASS invalid username-password pair or user is disabled.",
            )),
            _ => Err(Error::Invalid("syntax error")),
        }
    }

    /// `reply`, once the fleet has admitted the tenant the client just authenticated as (with
    /// shared limits; at once otherwise). Later requests wait for it, so none runs as the tenant
    /// before the verdict.
    fn after_admission(&mut self, reply: Bytes) -> Result<Handled, Error> {
        let Some(admission) = self.admission.take() else {
            return Handled::ready(reply);
        };
        self.must_drain = true;
        Ok(Handled::reply(Reply::Later(Box::pin(async move {
            if admission.admitted.await {
                reply
            } else {
                admission.refused
            }
        }))))
    }

    /// SELECT db. Standalone: the database switches once the server has accepted it (a later
    /// request waits for that), and the client's requests then use the pools for that database.
    /// Sharded: database 0 only, as in Redis Cluster.
    fn select(&mut self, db: &Bytes) -> Result<Handled, Error> {
        let db = match resp::parse_int(db) {
            Some(db) if (0..=i32::MAX as i64).contains(&db) => db as u32,
            Some(_) => return Err(Error::Invalid("DB index is out of range")),
            None => return Err(Error::Invalid(NOT_INTEGER)),
        };
        if self.tenant.is_some() {
            // A tenant sees one database, 0: its prefix in database 0, or (isolation =
            // "database") the database it has to itself.
            return match db {
                0 => Handled::ready(resp::simple("OK")),
                _ => Err(Error::Invalid(
                    "keygate: tenants use database 0 only; their keys are kept apart by prefix",
                )),
            };
        }
        let topology = self.proxy.topology.load();
        if topology.kind.sharded() {
            return match db {
                0 => Handled::ready(resp::simple("OK")),
                _ => Err(Error::Invalid("SELECT is not allowed in cluster mode")),
            };
        }
        if db == self.flavor.db && self.pending_select.is_none() {
            return Handled::ready(resp::simple("OK"));
        }
        let verdict = Arc::new(AtomicU64::new(u64::MAX));
        self.pending_select = Some(verdict.clone());
        self.must_drain = true;
        let backend = topology.backends.first().ok_or(Error::NoPrimary)?.clone();
        Ok(Handled::reply(Reply::Later(Box::pin(async move {
            let reply = backend.select(db).await;
            if &reply[..] == b"+OK\r\n" {
                verdict.store(db as u64, Relaxed);
            }
            reply
        }))))
    }

    /// HELLO [protover [AUTH user pass] [SETNAME name]]. The protocol switches at once; the
    /// client's later requests use backend pools that speak it (see backend, "Which protocol").
    fn hello(&mut self, args: &[Bytes]) -> Result<Handled, Error> {
        let mut resp3 = self.flavor.resp3;
        if let Some(version) = args.first() {
            match resp::parse_int(version) {
                Some(2) => resp3 = false,
                Some(3) => resp3 = true,
                Some(_) => return Err(Error::Coded("NOPROTO unsupported protocol version")),
                None => {
                    return Err(Error::Invalid(
                        "Protocol version is not an integer or out of range",
                    ))
                }
            }
        }
        let mut name = None;
        let authenticates = args.iter().skip(1).any(|a| a.eq_ignore_ascii_case(b"auth"));
        if self.tenancy() && self.tenant.is_none() && !authenticates {
            return Err(Error::Coded(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            ));
        }
        let mut i = 1;
        while i < args.len() {
            let more = args.len() - i - 1;
            if args[i].eq_ignore_ascii_case(b"auth") && more >= 2 {
                self.auth(&args[i + 1..i + 3])?;
                i += 3;
            } else if args[i].eq_ignore_ascii_case(b"setname") && more >= 1 {
                name = Some(valid_name(&args[i + 1])?);
                i += 2;
            } else {
                return Err(Error::InvalidOption {
                    what: "Syntax error in HELLO option",
                    option: args[i].clone(),
                });
            }
        }
        if let Some(name) = name {
            self.name = name;
        }
        if resp3 != self.flavor.resp3 {
            self.flavor.resp3 = resp3;
            self.must_drain = true;
        }
        // The map Redis sends, describing keygate: a map in RESP3, a flat array in RESP2.
        let mut out = BytesMut::new();
        if resp3 {
            resp::put_header(&mut out, b'%', 7);
        } else {
            resp::put_header(&mut out, b'*', 14);
        }
        let text = |out: &mut BytesMut, s: &str| resp::put_bulk(out, Some(s.as_bytes()));
        let mode = match self.proxy.topology.load().kind {
            UpstreamKind::Cluster => "cluster",
            _ => "standalone",
        };
        text(&mut out, "server");
        text(&mut out, "keygate");
        text(&mut out, "version");
        text(&mut out, &self.server_version());
        text(&mut out, "proto");
        resp::put_header(&mut out, b':', if resp3 { 3 } else { 2 });
        text(&mut out, "id");
        resp::put_header(&mut out, b':', self.id as i64);
        text(&mut out, "mode");
        text(&mut out, mode);
        text(&mut out, "role");
        text(&mut out, "master");
        text(&mut out, "modules");
        resp::put_header(&mut out, b'*', 0);
        self.after_admission(out.freeze())
    }

    fn client(&mut self, cmd: &Command) -> Result<Handled, Error> {
        let args = &cmd.args;
        let sub = cmd.sub_lower().unwrap_or_default();
        let arity = |n: usize, name: &'static str| {
            if args.len() == n {
                Ok(())
            } else {
                Err(Error::WrongArity(name))
            }
        };
        match sub.as_str() {
            "id" => Handled::ready(resp::integer(self.id as i64)),
            "getname" => Handled::ready(match &self.name {
                Some(name) => resp::bulk(Some(name)),
                None => resp::null(self.flavor.resp3),
            }),
            "setname" => {
                self.name = valid_name(&args[2])?;
                Handled::ready(resp::simple("OK"))
            }
            "setinfo" => {
                // Redis 7.2's CLIENT SETINFO; Redis 7.0's table lacks it, so check arity here.
                arity(4, "client|setinfo")?;
                let value = valid_name(&args[3])?;
                if args[2].eq_ignore_ascii_case(b"lib-name") {
                    self.lib_name = value;
                } else if args[2].eq_ignore_ascii_case(b"lib-ver") {
                    self.lib_ver = value;
                } else {
                    return Err(Error::InvalidOption {
                        what: "Unrecognized option",
                        option: args[2].clone(),
                    });
                }
                Handled::ready(resp::simple("OK"))
            }
            "info" => {
                let line = self
                    .me
                    .client
                    .line(Some(("client|info", resp::request_len(args))));
                Handled::ready(resp::bulk(Some(line.as_bytes())))
            }
            "tracking" => self.tracking(&args[2..]),
            "caching" => self.caching(args),
            "trackinginfo" => Handled::ready(self.tracking_info()),
            "getredir" => Handled::ready(resp::integer(self.redirect_id())),
            "list" => self.client_list(&args[2..], resp::request_len(args)),
            "kill" => self.client_kill(&args[2..]),
            // Valkey's CLIENT CAPA: what the client can handle (`redirect`: a -REDIRECT reply
            // from a replica). keygate picks servers itself and never passes a redirection on,
            // so every capability is accepted and none changes what the client gets; as in
            // Valkey, unknown capabilities are ignored.
            "capa" if cmd.spec.is_some_and(|s| s.name == "client|capa") => {
                if args.len() < 3 {
                    return Err(Error::WrongArity("client|capa"));
                }
                Handled::ready(resp::simple("OK"))
            }
            // keygate never evicts a client for its memory; the flag has nothing to change.
            "no-evict" => {
                arity(3, "client|no-evict")?;
                if args[2].eq_ignore_ascii_case(b"on") || args[2].eq_ignore_ascii_case(b"off") {
                    Handled::ready(resp::simple("OK"))
                } else {
                    Err(Error::Invalid("syntax error"))
                }
            }
            "reply" => {
                let mode = &args[2];
                if mode.eq_ignore_ascii_case(b"on") {
                    // Answered even right after CLIENT REPLY SKIP, as in Redis.
                    self.replies_off = false;
                    Handled::ready(resp::simple("OK")).map(Handled::heard)
                } else if mode.eq_ignore_ascii_case(b"off") {
                    self.replies_off = true;
                    Ok(Handled::quiet())
                } else if mode.eq_ignore_ascii_case(b"skip") {
                    self.skip_next = true;
                    Ok(Handled::quiet())
                } else {
                    Err(Error::Invalid("syntax error"))
                }
            }
            "unblock" => self.client_unblock(&args[2..]),
            "pause" | "unpause" if self.tenancy() => Err(Error::Refused {
                command: format!("CLIENT {}", sub.to_ascii_uppercase()),
                reason: "would pause every tenant's clients",
            }),
            "pause" => {
                if args.len() != 3 && args.len() != 4 {
                    return Err(Error::WrongArity("client|pause"));
                }
                let millis = match resp::parse_int(&args[2]) {
                    Some(ms) if ms < 0 => return Err(Error::Invalid("timeout is negative")),
                    Some(ms) => ms as u64,
                    None => {
                        return Err(Error::Invalid("timeout is not an integer or out of range"))
                    }
                };
                let mode = match args.get(3) {
                    None => crate::pause::Mode::All,
                    Some(m) if m.eq_ignore_ascii_case(b"all") => crate::pause::Mode::All,
                    Some(m) if m.eq_ignore_ascii_case(b"write") => crate::pause::Mode::Write,
                    Some(_) => return Err(Error::Invalid("CLIENT PAUSE mode must be WRITE or ALL")),
                };
                let until = tokio::time::Instant::now()
                    + std::time::Duration::from_millis(millis.min(i64::MAX as u64 / 2));
                self.proxy.pause.pause(until, mode);
                tracing::info!(client = self.id, millis, ?mode, "CLIENT PAUSE");
                let topology = self.proxy.topology.load();
                match (mode, topology.backends.first()) {
                    // FCALL of a function the server marks `no-writes` runs through a WRITE
                    // pause, as in Redis: learn which those are before answering (FCALL itself
                    // does not say). If the server cannot tell, every FCALL is held.
                    (crate::pause::Mode::Write, Some(backend)) => {
                        let mut caller = self.caller();
                        caller.flavor.resp3 = false;
                        let list = backend.send(
                            caller,
                            vec![Bytes::from_static(b"FUNCTION"), Bytes::from_static(b"LIST")],
                        );
                        let pause = self.proxy.pause.clone();
                        Ok(Handled::reply(Reply::Later(Box::pin(async move {
                            if let Ok(Ok(list)) = list.await {
                                pause.learn_functions(&list);
                            }
                            resp::simple("OK")
                        }))))
                    }
                    _ => Handled::ready(resp::simple("OK")),
                }
            }
            "unpause" => {
                arity(2, "client|unpause")?;
                self.proxy.pause.unpause();
                tracing::info!(client = self.id, "CLIENT UNPAUSE");
                Handled::ready(resp::simple("OK"))
            }
            "help" => {
                let lines = [
                    "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands keygate answers:",
                    "ID", "    Return the ID of the current connection.",
                    "GETNAME", "    Return the name of the current connection.",
                    "SETNAME <connection-name>", "    Assign the name <connection-name> to the current connection.",
                    "SETINFO <LIB-NAME|LIB-VER> <value>", "    Set client library name or version.",
                    "INFO", "    Return information about the current client connection.",
                    "TRACKING (ON|OFF) [BCAST] [PREFIX <prefix> ...] [OPTIN] [OPTOUT] [NOLOOP]", "    Invalidation push messages (RESP3), from every server, as BCAST (see keygate's README).",
                    "CACHING (YES|NO)", "    Accepted in OPTIN/OPTOUT mode (keygate sends invalidations for every key).",
                    "TRACKINGINFO", "    Return the tracking options in force.",
                    "GETREDIR", "    0 while tracking (invalidations come on this connection), -1 otherwise.",
                    "LIST [TYPE (NORMAL|PUBSUB)] [ID <id> [<id> ...]]", "    Return information about keygate's client connections (a tenant's own only).",
                    "KILL <ip:port>", "    Kill the client connected from <ip:port>.",
                    "KILL <option> <value> [<option> <value> [...]]", "    Kill clients by ID, TYPE, USER (tenant), ADDR, LADDR, SKIPME (default yes); returns how many.",
                    "REPLY (ON|OFF|SKIP)", "    Control the replies sent to the current connection.",
                    "PAUSE <timeout> [WRITE|ALL]", "    Suspend keygate's clients (all commands, or those that may write) for <timeout> milliseconds.",
                    "UNPAUSE", "    Stop the current client pause, resuming traffic.",
                    "UNBLOCK <clientid> [TIMEOUT|ERROR]", "    Unblock the specified blocked client (keygate's id, a tenant's own).",
                    "HELP", "    Print this help.",
                ];
                Handled::ready(help(&lines))
            }
            _ if cmd.spec.is_some_and(|s| s.name != "client") => Err(Error::Refused {
                command: format!("CLIENT {}", sub.to_ascii_uppercase()),
                reason: "would act on keygate's backend connections, which are shared by many clients, not on yours",
            }),
            _ => Err(Error::UnknownSubcommand {
                container: "client",
                sub: args[1].clone(),
            }),
        }
    }

    /// SLOWLOG GET [count] / LEN / RESET / HELP, from keygate's own slowlog (a tenant's own
    /// entries only).
    fn slowlog(&mut self, cmd: &Command) -> Result<Handled, Error> {
        let args = &cmd.args;
        let tenant = self.tenant.as_ref().map(|s| s.tenant.config.name.clone());
        let slowlog = &self.proxy.slowlog;
        match cmd.sub_lower().as_deref() {
            Some("get") => {
                const COUNT: &str = "count should be greater than or equal to -1";
                let count = match args.get(2) {
                    None => None,
                    Some(n) => Some(
                        resp::parse_int(n)
                            .filter(|&n| n >= -1)
                            .ok_or(Error::Invalid(COUNT))?,
                    ),
                };
                Handled::ready(slowlog.get(tenant.as_deref(), count))
            }
            Some("len") => Handled::ready(resp::integer(slowlog.len(tenant.as_deref()) as i64)),
            Some("reset") => {
                slowlog.reset(tenant.as_deref());
                Handled::ready(resp::simple("OK"))
            }
            Some("help") => {
                let lines = [
                    "SLOWLOG <subcommand> [<arg> [value] [opt] ...]. keygate's own slowlog (slowlog.threshold, end to end in keygate):",
                    "GET [<count>]", "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
                    "LEN", "    Return the length of the slowlog.",
                    "RESET", "    Reset the slowlog.",
                    "HELP", "    Print this help.",
                ];
                Handled::ready(help(&lines))
            }
            _ => Err(Error::UnknownSubcommand {
                container: "slowlog",
                sub: args.get(1).cloned().unwrap_or_default(),
            }),
        }
    }

    /// The clients this one may see and kill: with tenants, those of its own tenant only.
    pub(super) fn visible(&self, client: &Client) -> bool {
        match &self.tenant {
            Some(seat) => client.shown().tenant.as_deref() == Some(&seat.tenant.config.name),
            None => !self.tenancy(),
        }
    }

    /// CLIENT LIST [TYPE type] [ID id ...], over keygate's own clients.
    fn client_list(&mut self, args: &[Bytes], qbuf: usize) -> Result<Handled, Error> {
        let mut kind = None;
        let mut ids: Option<Vec<i64>> = None;
        match args {
            [] => {}
            [option, value] if option.eq_ignore_ascii_case(b"type") => {
                kind = Some(client_type(value)?);
            }
            [option, list @ ..] if option.eq_ignore_ascii_case(b"id") && !list.is_empty() => {
                let parsed = list
                    .iter()
                    .map(|id| resp::parse_int(id))
                    .collect::<Option<Vec<i64>>>()
                    .ok_or(Error::Invalid("Invalid client ID"))?;
                ids = Some(parsed);
            }
            _ => return Err(Error::Invalid("syntax error")),
        }
        let mut text = String::new();
        for client in self.proxy.clients.matching(|c| {
            self.visible(c)
                && kind.is_none_or(|k| k == ClientType::of(c))
                && ids.as_ref().is_none_or(|ids| ids.contains(&(c.id as i64)))
        }) {
            let current = (client.id == self.id).then_some(("client|list", qbuf));
            text.push_str(&client.line(current));
        }
        Handled::ready(resp::bulk(Some(text.as_bytes())))
    }

    /// CLIENT KILL ip:port, or CLIENT KILL with filters (ID, TYPE, USER, ADDR, LADDR, SKIPME):
    /// keygate's own clients, a tenant's own only. A killed client's pending replies are
    /// dropped and its connection closed; this client, when it kills itself, gets its reply
    /// first.
    fn client_kill(&mut self, args: &[Bytes]) -> Result<Handled, Error> {
        if let [addr] = args {
            let addr = String::from_utf8_lossy(addr);
            let found = self
                .proxy
                .clients
                .matching(|c| self.visible(c) && c.peer.to_string() == addr);
            let Some(client) = found.first() else {
                return Err(Error::Invalid("No such client"));
            };
            self.kill(client);
            return Handled::ready(resp::simple("OK"));
        }
        if args.is_empty() || args.len() % 2 != 0 {
            return Err(Error::Invalid("syntax error"));
        }
        let mut filter = KillFilter {
            skip_me: true,
            ..KillFilter::default()
        };
        for pair in args.chunks(2) {
            let (option, value) = (&pair[0], &pair[1]);
            let text = || String::from_utf8_lossy(value).into_owned();
            match option.to_ascii_lowercase().as_slice() {
                b"id" => {
                    let id = resp::parse_int(value)
                        .filter(|&id| id > 0)
                        .ok_or(Error::Invalid("client-id should be greater than 0"))?;
                    filter.id = Some(id as u64);
                }
                b"type" => filter.kind = Some(client_type(value)?),
                b"user" => {
                    let user = text();
                    let known = if self.tenancy() {
                        self.proxy
                            .tenants
                            .load()
                            .iter()
                            .any(|t| t.config.name == user)
                    } else {
                        user == "default"
                    };
                    if !known {
                        return Err(Error::InvalidOption {
                            what: "No such user",
                            option: value.clone(),
                        });
                    }
                    filter.user = Some(user);
                }
                b"addr" => filter.addr = Some(text()),
                b"laddr" => filter.laddr = Some(text()),
                b"skipme" => {
                    filter.skip_me = if value.eq_ignore_ascii_case(b"yes") {
                        true
                    } else if value.eq_ignore_ascii_case(b"no") {
                        false
                    } else {
                        return Err(Error::Invalid("syntax error"));
                    }
                }
                _ => return Err(Error::Invalid("syntax error")),
            }
        }
        let victims = self.proxy.clients.matching(|c| {
            self.visible(c)
                && !(filter.skip_me && c.id == self.id)
                && filter.id.is_none_or(|id| id == c.id)
                && filter.kind.is_none_or(|k| k == ClientType::of(c))
                && filter
                    .addr
                    .as_ref()
                    .is_none_or(|a| *a == c.peer.to_string())
                && filter
                    .laddr
                    .as_ref()
                    .is_none_or(|a| *a == c.local.to_string())
                && filter
                    .user
                    .as_ref()
                    .is_none_or(|u| c.shown().tenant.as_deref().unwrap_or("default") == u.as_str())
        });
        for client in &victims {
            self.kill(client);
        }
        Handled::ready(resp::integer(victims.len() as i64))
    }

    /// CLIENT UNBLOCK id [TIMEOUT|ERROR]: keygate knows which server connection the client
    /// waits on, and has the server unblock that one; the client then gets what Redis sends it
    /// (a nil, or `-UNBLOCKED`).
    fn client_unblock(&mut self, args: &[Bytes]) -> Result<Handled, Error> {
        let (id, mode) = match args {
            [id] => (id, Bytes::from_static(b"TIMEOUT")),
            [id, mode]
                if mode.eq_ignore_ascii_case(b"timeout") || mode.eq_ignore_ascii_case(b"error") =>
            {
                (id, mode.clone())
            }
            [_, _] => {
                return Err(Error::Invalid(
                    "CLIENT UNBLOCK reason should be TIMEOUT or ERROR",
                ))
            }
            _ => return Err(Error::WrongArity("client|unblock")),
        };
        let id = resp::parse_int(id).ok_or(Error::Invalid(NOT_INTEGER))?;
        let blocked = u64::try_from(id)
            .ok()
            .and_then(|id| self.proxy.clients.get(id))
            .filter(|client| self.visible(client))
            .and_then(|client| client.blocked());
        let Some((addr, conn_id)) = blocked else {
            return Handled::ready(resp::integer(0));
        };
        let topology = self.proxy.topology.load();
        let Some(backend) = topology
            .backend_by_addr(&addr)
            .map(|i| topology.backends[i].clone())
        else {
            return Handled::ready(resp::integer(0));
        };
        let args = vec![
            Bytes::from_static(b"CLIENT"),
            Bytes::from_static(b"UNBLOCK"),
            Bytes::from(conn_id.to_string()),
            mode,
        ];
        Ok(Handled::reply(Reply::Backend(
            backend.send(self.caller(), args),
        )))
    }

    fn kill(&mut self, client: &Client) {
        tracing::info!(victim = client.id, "CLIENT KILL");
        if client.id == self.id {
            // As Redis: closed once this reply is written.
            self.closing = true;
        } else {
            client.kill.cancel();
        }
    }
}

/// CLIENT KILL's filters.
#[derive(Default)]
struct KillFilter {
    id: Option<u64>,
    kind: Option<ClientType>,
    user: Option<String>,
    addr: Option<String>,
    laddr: Option<String>,
    skip_me: bool,
}

/// CLIENT LIST/KILL TYPE: keygate's clients are normal or pubsub; none is a replica or master.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientType {
    Normal,
    PubSub,
    Replica,
    Master,
}

impl ClientType {
    fn of(client: &Client) -> ClientType {
        if client.shown().pubsub {
            ClientType::PubSub
        } else {
            ClientType::Normal
        }
    }
}

fn client_type(name: &Bytes) -> Result<ClientType, Error> {
    match name.to_ascii_lowercase().as_slice() {
        b"normal" => Ok(ClientType::Normal),
        b"pubsub" => Ok(ClientType::PubSub),
        b"replica" | b"slave" => Ok(ClientType::Replica),
        b"master" => Ok(ClientType::Master),
        _ => Err(Error::InvalidOption {
            what: "Unknown client type",
            option: name.clone(),
        }),
    }
}

impl Handled {
    /// No reply at all (CLIENT REPLY OFF/SKIP answer nothing).
    pub(super) fn quiet() -> Self {
        Handled {
            reply: Reply::Ready(Bytes::new()),
            voice: super::Voice::Quiet,
            blocking: false,
        }
    }
}

/// A HELP reply: its lines as simple strings.
fn help(lines: &[&str]) -> Bytes {
    let mut out = BytesMut::new();
    resp::put_header(&mut out, b'*', lines.len() as i64);
    for line in lines {
        out.extend_from_slice(&resp::simple(line));
    }
    out.freeze()
}

/// A connection name or library string as Redis accepts them: printable ASCII without spaces.
/// An empty name clears it.
fn valid_name(name: &Bytes) -> Result<Option<Bytes>, Error> {
    if name.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
        return Err(Error::Invalid(BAD_NAME));
    }
    Ok((!name.is_empty()).then(|| name.clone()))
}
