//! A tenant's rules applied to each request on the way in, and its prefix taken off the reply on
//! the way out. Used only when tenants are configured; then every client must authenticate as
//! one, and every command it runs is checked against `tenant::rules`, the global policy and the
//! tenant's own lists before anything is routed.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::Session;
use crate::command::{flags, Command, Spec};
use crate::dispatch::{Reply, TenantKeyspace};
use crate::error::Error;
use crate::resp::{self, value};
use crate::tenant::custom::{self, Refused, ReplyFix};
use crate::tenant::quota::Usage;
use crate::tenant::rewrite::{self, Refusal};
use crate::tenant::rules::{self, Rule};
use crate::tenant::{Seat, TenantState};

/// What the reply needs before the client sees it.
pub(super) enum Fix {
    None,
    /// An array of keys (KEYS, PUBSUB CHANNELS): strip the prefix from each.
    Keys,
    /// `[channel, count, ...]` (PUBSUB NUMSUB): strip the prefix from each channel.
    Pairs,
    /// `[cursor, [keys]]` (SCAN): strip the prefix from each key.
    Scan,
    /// What a parsed command's reply needs (see `tenant::custom`).
    Custom(ReplyFix),
    /// Nothing to forward: keygate answers for the tenant (SCRIPT EXISTS, ACL WHOAMI).
    Answer(Bytes),
    /// Emulated over the tenant's keys on every shard (DBSIZE, FLUSHDB, RANDOMKEY, INFO).
    Keyspace(TenantKeyspace),
    /// One key or nil (RANDOMKEY in a database of the tenant's own): without the prefix.
    OneKey,
    /// COMMAND GETKEYSANDFLAGS of the prefixed command: these keys (prefixed, in order), each
    /// with the flags the server gives it, un-prefixed.
    KeyFlags(Vec<Bytes>),
}

/// With shared limits: the fleet's admission of a new tenant connection (see fleet), which the
/// AUTH or HELLO reply waits for.
pub(super) struct Admission {
    pub admitted: std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>,
    /// The reply instead, if the fleet is full.
    pub refused: Bytes,
}

const NOT_YET: &str = "is not available to tenants in this build yet";

impl Session {
    pub(super) fn tenancy(&self) -> bool {
        self.proxy.tenancy.load(Relaxed)
    }

    /// The prefix of the tenant this client authenticated as, if any.
    pub(super) fn tenant_prefix(&self) -> Option<&[u8]> {
        self.tenant
            .as_ref()
            .map(|seat| seat.tenant.config.prefix.as_bytes())
    }

    /// The tenant this client authenticated as, if any.
    pub(super) fn tenant_name(&self) -> Option<&str> {
        self.tenant.as_ref().map(|seat| &*seat.tenant.config.name)
    }

    /// AUTH [user] password, with tenants configured. A failure leaves the identity unchanged.
    pub(super) fn tenant_auth(
        &mut self,
        user: Option<&Bytes>,
        password: &Bytes,
    ) -> Result<(), Error> {
        let ip = self.peer.ip();
        let max_failures = self.proxy.config.load().access.max_auth_failures;
        // Failures count per name tried (password-only AUTH is one more name, the empty one),
        // so guessing one tenant's password never locks out another tenant from this address.
        let name = user.map_or(&b""[..], |u| &u[..]);
        let shown = || String::from_utf8_lossy(&name[..name.len().min(64)]).into_owned();
        if max_failures > 0 && self.proxy.auth_failures.blocked(ip, name, max_failures) {
            self.proxy.metrics.auth_locked_out.fetch_add(1, Relaxed);
            return Err(Error::Coded(
                "ERR keygate: too many failed AUTH attempts for this name from this address; try again in a minute",
            ));
        }
        let wrong = || {
            self.proxy.metrics.auth_failures.fetch_add(1, Relaxed);
            let failures = self.proxy.auth_failures.failed(ip, name, max_failures);
            if max_failures > 0 && failures == max_failures {
                tracing::warn!(
                    user = %shown(),
                    failures,
                    "failed AUTH: this address's AUTHs as this name are refused for a minute (access.max_auth_failures)"
                );
            } else {
                tracing::info!(user = %shown(), "failed AUTH");
            }
            Error::Coded("WRONGPASS invalid username-password pair or user is disabled.")
        };
        let tenant = self
            .proxy
            .tenants
            .load()
            .authenticate(user.map(|u| &u[..]), password)
            .ok_or_else(wrong)?
            .clone();
        // A tenant limited to some addresses: from any other, as if the password were wrong
        // (so a stolen password reveals nothing from elsewhere).
        if !self.allowed_from(&tenant) {
            return Err(wrong());
        }
        if self
            .tenant
            .as_ref()
            .is_some_and(|seat| Arc::ptr_eq(&seat.tenant, &tenant) && !seat.refused())
        {
            return Ok(());
        }
        // The invalidation feed watches the old tenant's keys; the new one's would be missed.
        if self.tracking.is_some() {
            return Err(Error::Invalid(
                "keygate: turn CLIENT TRACKING off before authenticating as another tenant",
            ));
        }
        self.become_tenant(&tenant)
    }

    /// May this client's address be `tenant`'s (its `allow_from`)?
    fn allowed_from(&self, tenant: &TenantState) -> bool {
        let from = &tenant.config.allow_from;
        from.is_empty() || from.iter().any(|net| net.contains(self.peer.ip()))
    }

    /// Take one of `tenant`'s connection seats (leaving any other tenant's) and act as it.
    fn become_tenant(&mut self, tenant: &Arc<TenantState>) -> Result<(), Error> {
        // A tenant with an upstream of its own: its requests go to that upstream's servers.
        let servers = self.home.for_tenant(tenant).ok_or(Error::Coded(
            "ERR keygate: the tenant's upstream is not running; try again",
        ))?;
        let moving = !Arc::ptr_eq(&servers, &self.proxy);
        if moving && (self.txn.is_some() || self.sub.is_some()) {
            return Err(Error::Invalid(
                "keygate: leave MULTI, WATCH and subscriptions before authenticating as a tenant on other servers",
            ));
        }
        let seat = Seat::take(tenant).ok_or_else(|| Error::TenantFull {
            tenant: tenant.config.name.clone(),
            max: tenant.config.max_connections.unwrap_or(0),
        })?;
        if moving {
            self.proxy = servers;
            // The requests before this one are on the old servers' connections.
            self.must_drain = true;
        }
        tracing::Span::current().record("tenant", tenant.config.name.as_str());
        if let Some(verdict) = &seat.verdict {
            self.admission = Some(Admission {
                // The fleet's keys live on the main upstream, whatever the tenant's.
                admitted: Box::pin(crate::fleet::admit(
                    self.home.clone(),
                    tenant.clone(),
                    verdict.clone(),
                )),
                refused: Error::TenantFull {
                    tenant: tenant.config.name.clone(),
                    max: tenant.config.max_connections.unwrap_or(0),
                }
                .to_reply(),
            });
        }
        self.tenant = Some(seat);
        // isolation = "database": its requests go to the pools of its own database, once the
        // requests before this one are answered (they are in the old database's pools).
        let db = tenant.config.database.unwrap_or(0);
        if self.flavor.db != db {
            self.flavor.db = db;
            self.must_drain = true;
            self.publish();
        }
        // No longer counted against its address's unauthenticated connections.
        self.unauthenticated = None;
        Ok(())
    }

    /// Mutual TLS: a verified client certificate whose subject's CN is a tenant's
    /// `client_cert_cn`, or which carries its `client_cert_san` among its subject alternative
    /// names, makes the connection that tenant's, as AUTH would. No tenant of that
    /// name, or an address outside its `allow_from`: the client must AUTH as usual. An error
    /// when the tenant is at its `max_connections` (sent, and the connection closed).
    pub(super) fn certificate_auth(
        &mut self,
        identity: &crate::tls::Identity,
    ) -> Result<(), Error> {
        let cn = identity.cn.as_deref().unwrap_or_default();
        let tenants = self.proxy.tenants.load();
        let Some(tenant) = tenants.iter().find(|t| {
            let by_cn = t.config.client_cert_cn.is_some() && t.config.client_cert_cn == identity.cn;
            let by_san = t
                .config
                .client_cert_san
                .as_ref()
                .is_some_and(|san| identity.sans.contains(san));
            by_cn || by_san
        }) else {
            tracing::info!(cn, "client certificate names no tenant; AUTH required");
            return Ok(());
        };
        if !self.allowed_from(tenant) {
            tracing::info!(
                cn,
                "client certificate's tenant is not allowed from this address"
            );
            return Ok(());
        }
        self.become_tenant(tenant)
    }

    /// Check that the tenant may run `cmd` and confine it to the tenant's keyspace.
    pub(super) fn confine(&self, cmd: &mut Command, spec: &'static Spec) -> Result<Fix, Error> {
        let Some(seat) = &self.tenant else {
            if spec.has(flags::NO_AUTH) {
                return Ok(Fix::None);
            }
            return Err(Error::Coded("NOAUTH Authentication required."));
        };
        let tenant = &seat.tenant;
        if tenant.removed.load(Relaxed) {
            return Err(Error::TenantRemoved(tenant.config.name.clone()));
        }
        if seat.refused() {
            return Err(Error::Coded("NOAUTH Authentication required."));
        }
        tenant.requests.fetch_add(1, Relaxed);
        let config = &tenant.config;
        let name = spec.name;
        let refuse = |reason: &'static str| Error::NoPerm {
            command: name.replace('|', " "),
            reason,
        };
        let allowed = listed_for(spec, config, &self.proxy.config.load()).map_err(refuse)?;
        let taken = tenant.take_op();
        if taken.refill {
            tokio::spawn(crate::fleet::lease(self.home.clone(), tenant.clone()));
        }
        if !taken.allowed {
            tenant.rate_limited.fetch_add(1, Relaxed);
            return Err(Error::RateLimited {
                tenant: config.name.clone(),
                rate: config.max_ops_per_sec.unwrap_or(0),
            });
        }
        let grows = tenant.usage.is_some() && grows_memory(spec);
        if grows {
            if let Some(usage) = tenant.usage.as_ref().filter(|u| u.over()) {
                usage.refused.fetch_add(1, Relaxed);
                return Err(Error::OverQuota {
                    tenant: config.name.clone(),
                    quota: quota_text(usage),
                });
            }
        }
        let fix = self.rewrite(tenant, cmd, spec, allowed, Record::Yes)?;
        if let Some(usage) = &tenant.usage {
            if grows {
                let keys = crate::command::keys::positions(spec, &cmd.args);
                usage.wrote(spec.name, &cmd.args, &keys);
            } else if Usage::removes(spec.name) {
                let keys = crate::command::keys::positions(spec, &cmd.args);
                usage.removed(&cmd.args, &keys);
            }
        }
        Ok(fix)
    }

    /// Rewrite `cmd` into the tenant's keyspace by its rule; `allowed`: the tenant's
    /// `allow_commands` lists it. `Record::No` leaves no trace (COMMAND GETKEYS asks what a
    /// command would become, without running it).
    fn rewrite(
        &self,
        tenant: &TenantState,
        cmd: &mut Command,
        spec: &'static Spec,
        allowed: bool,
        record: Record,
    ) -> Result<Fix, Error> {
        let config = &tenant.config;
        let name = spec.name;
        let refuse = |reason: &'static str| Error::NoPerm {
            command: name.replace('|', " "),
            reason,
        };
        let prefix = config.prefix.as_bytes();
        match rules::rule_of(spec, cmd.spec_index) {
            Some(Rule::Pass) if matches!(name, "command|getkeys" | "command|getkeysandflags") => {
                self.getkeys(tenant, cmd, allowed, name == "command|getkeysandflags")
            }
            Some(Rule::Pass | Rule::Local) => Ok(Fix::None),
            Some(Rule::Keys) => {
                if !rewrite::prefix_keys(spec, &mut cmd.args, prefix) {
                    return Err(refuse("was sent with key arguments keygate cannot find"));
                }
                Ok(Fix::None)
            }
            Some(Rule::Channel) if matches!(name, "publish" | "spublish") => {
                keyspace_channel(&cmd.args[1])?;
                cmd.args[1] = rewrite::prefixed(prefix, &cmd.args[1]);
                Ok(Fix::None)
            }
            Some(Rule::Channel) if matches!(name, "pubsub|channels" | "pubsub|shardchannels") => {
                let pattern = rewrite::confine_pattern(prefix, cmd.args.get(2).map(|p| &p[..]))
                    .map_err(pattern)?;
                cmd.args.truncate(2);
                cmd.args.push(pattern);
                Ok(Fix::Keys)
            }
            Some(Rule::Channel) if matches!(name, "pubsub|numsub" | "pubsub|shardnumsub") => {
                for channel in &mut cmd.args[2..] {
                    keyspace_channel(channel)?;
                    *channel = rewrite::prefixed(prefix, channel);
                }
                Ok(Fix::Pairs)
            }
            Some(Rule::Channel)
                if matches!(
                    name,
                    "subscribe" | "unsubscribe" | "ssubscribe" | "sunsubscribe"
                ) =>
            {
                for channel in &mut cmd.args[1..] {
                    keyspace_channel(channel)?;
                    *channel = rewrite::prefixed(prefix, channel);
                }
                Ok(Fix::None)
            }
            // Patterns are confined like KEYS patterns: they only ever match the tenant's
            // channels, and come back (in confirmations and pmessages) without the prefix.
            Some(Rule::Channel) if matches!(name, "psubscribe" | "punsubscribe") => {
                for pat in &mut cmd.args[1..] {
                    *pat = rewrite::confine_pattern(prefix, Some(pat)).map_err(pattern)?;
                }
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
            Some(Rule::Emulate) if name == "acl|whoami" => {
                Ok(Fix::Answer(resp::bulk(Some(config.name.as_bytes()))))
            }
            // A database of its own: the server's own commands, over the tenant's keys only.
            Some(Rule::Emulate)
                if config.database.is_some()
                    && matches!(name, "dbsize" | "flushdb" | "flushall" | "randomkey") =>
            {
                if name == "flushall" {
                    cmd.args[0] = Bytes::from_static(b"FLUSHDB");
                }
                Ok(match name {
                    "randomkey" => Fix::OneKey,
                    _ => Fix::None,
                })
            }
            Some(Rule::Emulate)
                if matches!(
                    name,
                    "dbsize" | "flushdb" | "flushall" | "randomkey" | "info"
                ) =>
            {
                Ok(Fix::Keyspace(match name {
                    "dbsize" => TenantKeyspace::Count,
                    "randomkey" => TenantKeyspace::Random,
                    "info" => TenantKeyspace::Info,
                    _ => TenantKeyspace::Flush,
                }))
            }
            Some(Rule::Custom) if name == "script|exists" => {
                let mut out = BytesMut::new();
                resp::put_header(&mut out, b'*', cmd.args.len() as i64 - 2);
                for sha in &cmd.args[2..] {
                    resp::put_header(&mut out, b':', tenant.knows_script(sha) as i64);
                }
                Ok(Fix::Answer(out.freeze()))
            }
            // The server's script cache is every tenant's: a tenant's SCRIPT FLUSH empties its
            // own view of it (see TenantState::forget_scripts).
            Some(Rule::Custom) if name == "script|flush" => {
                match cmd.args.get(2..).unwrap_or_default() {
                    [] => {}
                    [mode]
                        if mode.eq_ignore_ascii_case(b"sync")
                            || mode.eq_ignore_ascii_case(b"async") => {}
                    _ => {
                        return Err(Error::Invalid(
                            "SCRIPT FLUSH only support SYNC|ASYNC option",
                        ))
                    }
                }
                if self.in_multi() {
                    return Err(Error::Text(
                        "ERR keygate: 'SCRIPT FLUSH' cannot run inside MULTI for a tenant: it acts at once, on keygate's record of the tenant's scripts".into(),
                    ));
                }
                tenant.forget_scripts();
                Ok(Fix::Answer(resp::simple("OK")))
            }
            Some(Rule::Custom) if matches!(name, "script|kill" | "function|kill") => {
                let seat = self.tenant.as_ref().expect("a tenant's command");
                self.proxy
                    .scripts_running
                    .may_kill(&seat.tenant)
                    .map_err(Error::Coded)?;
                Ok(Fix::None)
            }
            Some(Rule::Custom) => {
                let allow_scripts = config.allow_scripts;
                let fix = custom::rewrite(name, &mut cmd.args, prefix, allow_scripts, |sha| {
                    tenant.knows_script(sha)
                })
                .map_err(|refused| match refused {
                    Refused::Scripts => refuse("needs allow_scripts for this tenant"),
                    Refused::NoScript => {
                        Error::Coded("NOSCRIPT No matching script. Please use EVAL.")
                    }
                    Refused::OtherDb => refuse("reaches outside the tenant's keyspace"),
                    Refused::Syntax(what) => Error::Invalid(what),
                })?;
                if matches!(name, "eval" | "eval_ro") && record == Record::Yes {
                    tenant.record_script_body(&cmd.args[1]);
                }
                Ok(Fix::Custom(fix))
            }
            // Explicitly allowed by the tenant's config: the operator's choice, forwarded as is.
            Some(Rule::Deny(_)) if allowed => Ok(Fix::None),
            Some(Rule::Deny(reason)) => Err(refuse(reason)),
            Some(Rule::Channel | Rule::Emulate) => Err(refuse(NOT_YET)),
            None => Err(refuse("is unknown to keygate's tenant rules")),
        }
    }
}

impl Session {
    /// COMMAND GETKEYS / GETKEYSANDFLAGS for a tenant: the keys are the arguments keygate's own
    /// rewrite prefixes, so the answer is what keygate really treats as keys (Redis's own
    /// extraction can differ, and would be of the unprefixed command). GETKEYSANDFLAGS asks the
    /// server for each key's flags (of the prefixed command) and lists keygate's keys with them.
    fn getkeys(
        &self,
        tenant: &TenantState,
        cmd: &mut Command,
        allowed: bool,
        with_flags: bool,
    ) -> Result<Fix, Error> {
        let original = cmd.args[2..].to_vec();
        let mut inner = Command::parse_with(original.clone(), Some(&self.proxy.commands));
        let Some(spec) = inner.spec else {
            return Err(Error::Invalid("Invalid command specified"));
        };
        if !spec.arity_ok(original.len()) {
            return Err(Error::Invalid(
                "Invalid number of arguments specified for command",
            ));
        }
        let has_keys =
            spec.first_key != 0 || spec.has(flags::MOVABLEKEYS) || !spec.key_specs.is_empty();
        let rule = rules::rule_of(spec, inner.spec_index);
        if has_keys && matches!(rule, Some(Rule::Deny(_))) {
            // A command refused to the tenant names no keys: the refusal, as running it gets.
            self.rewrite(tenant, &mut inner, spec, allowed, Record::No)?;
        }
        let keyed = matches!(rule, Some(Rule::Keys | Rule::Custom));
        if keyed {
            self.rewrite(tenant, &mut inner, spec, allowed, Record::No)?;
            if inner.args.len() != original.len() {
                return Err(Error::Internal(
                    "COMMAND GETKEYS: the rewrite changed the arguments",
                ));
            }
        }
        let keys: Vec<usize> = (0..original.len())
            .filter(|&i| keyed && inner.args[i] != original[i])
            .collect();
        if keys.is_empty() {
            // As Redis: a command without key arguments at all is an error; one that takes
            // keys but was given none is an empty list where keys are optional (scripts and
            // functions, MIGRATE's KEYS form), else an error.
            if !has_keys {
                return Err(Error::Invalid("The command has no key arguments"));
            }
            if !matches!(
                spec.name,
                "eval" | "eval_ro" | "evalsha" | "evalsha_ro" | "fcall" | "fcall_ro" | "migrate"
            ) {
                return Err(Error::Invalid("Invalid arguments specified for command"));
            }
            return Ok(Fix::Answer(Bytes::from_static(b"*0\r\n")));
        }
        if with_flags {
            let prefixed = keys.iter().map(|&i| inner.args[i].clone()).collect();
            cmd.args.truncate(2);
            cmd.args.extend(inner.args);
            return Ok(Fix::KeyFlags(prefixed));
        }
        let mut out = BytesMut::new();
        resp::put_header(&mut out, b'*', keys.len() as i64);
        for i in keys {
            resp::put_bulk(&mut out, Some(&original[i]));
        }
        Ok(Fix::Answer(out.freeze()))
    }
}

/// What keygate's policy (`global`) and the tenant's own lists say of a command: refused, with
/// the reason, or not, and then whether the tenant's `allow_commands` names it (which opens a
/// command the tenant rules refuse).
pub(super) fn listed_for(
    spec: &Spec,
    config: &crate::config::Tenant,
    global: &crate::config::Config,
) -> Result<bool, &'static str> {
    let name = spec.name;
    let listed = |list: &[String]| {
        !list.is_empty() && {
            let container = name.split_once('|').map_or(name, |(c, _)| c);
            list.iter().any(|c| c == name || c == container)
        }
    };
    if listed(&global.deny_commands) || listed(&config.deny_commands) {
        return Err("is denied by keygate's policy");
    }
    let in_category = |denied: &[String]| {
        spec.categories
            .iter()
            .any(|c| denied.iter().any(|d| d == c))
    };
    if in_category(&global.deny_categories) || in_category(&config.deny_categories) {
        return Err("is in an ACL category keygate's policy denies");
    }
    match config.allow_commands.as_deref().map(listed) {
        Some(false) => Err("is not in this tenant's allow_commands"),
        allowed => Ok(allowed == Some(true)),
    }
}

/// Whether a rewrite records what it sees (a script's body as the tenant's).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Record {
    Yes,
    No,
}

/// Channels starting with `__` are the server's own (keyspace notifications): never a tenant's.
/// Except `__redis__:invalidate`, where a RESP2 client with CLIENT TRACKING REDIRECT hears of
/// its invalidations: keygate delivers those itself (the tenant's own only, see
/// session::feeds), and on the server the name is prefixed like any channel of the tenant's.
fn keyspace_channel(channel: &[u8]) -> Result<(), Error> {
    if channel.starts_with(b"__") && channel != b"__redis__:invalidate" {
        return Err(Error::NoPerm {
            command: String::from_utf8_lossy(channel).into_owned(),
            reason: "is a server channel (keyspace notifications), not available to tenants",
        });
    }
    Ok(())
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

impl Session {
    /// The tenant's emulated keyspace operation.
    pub(super) fn tenant_keyspace(&self, op: TenantKeyspace) -> Reply {
        let seat = self.tenant.as_ref().expect("only for tenants");
        let tenant = &seat.tenant;
        let prefix = tenant.config.prefix.as_bytes();
        let pattern =
            rewrite::confine_pattern(prefix, None).expect("the bare prefix is a valid pattern");
        // What client libraries read (redis-py's test suite: redis_version, arch_bits,
        // cluster_enabled), describing keygate as the tenant sees it; nothing of the server's
        // that would tell the tenant about others.
        let topology = self.proxy.topology.load();
        let cluster = topology.kind == crate::config::UpstreamKind::Cluster;
        let info = format!(
            "# Server\r\nredis_version:{}\r\nredis_mode:{}\r\nos:{} {}\r\narch_bits:{}\r\nprocess_id:{}\r\nuptime_in_seconds:{}\r\nkeygate_version:{}\r\nkeygate_git_sha1:{}\r\n\r\n# keygate\r\ntenant:{}\r\n\r\n# Clients\r\nconnected_clients:{}\r\nblocked_clients:{}\r\n\r\n# Cluster\r\ncluster_enabled:{}\r\n",
            self.server_redis_version(),
            if cluster { "cluster" } else { "standalone" },
            std::env::consts::OS,
            std::env::consts::ARCH,
            usize::BITS,
            std::process::id(),
            self.proxy.started.elapsed().as_secs(),
            crate::VERSION,
            crate::dispatch::git_sha1(),
            tenant.config.name,
            tenant.connections(),
            // The tenant's clients waiting in a blocking command now.
            self.proxy
                .clients
                .matching(|c| {
                    c.blocked().is_some() && c.shown().tenant.as_ref() == Some(&tenant.config.name)
                })
                .len(),
            u8::from(cluster),
        );
        let topology = self.proxy.topology.load_full();
        crate::dispatch::tenant_keyspace(
            op,
            &topology,
            self.caller(),
            Bytes::copy_from_slice(prefix),
            pattern,
            info,
        )
    }
}

/// Wrap `reply` so the client sees its keys without the tenant's prefix.
pub(super) fn unconfine(reply: Reply, fix: Fix, tenant: &Arc<TenantState>) -> Reply {
    if let Fix::None | Fix::Custom(ReplyFix::None) = fix {
        return reply;
    }
    let tenant = tenant.clone();
    let pending = match reply {
        Reply::Ready(bytes) => return Reply::Ready(bytes),
        other => other,
    };
    Reply::Later(Box::pin(async move {
        let bytes = settle(pending).await;
        strip(bytes, &fix, &tenant)
    }))
}

/// A reply's bytes once it is in (an error's reply if it failed).
pub(crate) async fn settle(reply: Reply) -> Bytes {
    match reply {
        Reply::Ready(bytes) => bytes,
        Reply::Backend(rx) => match rx.await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => e.to_reply(),
            Err(_) => {
                Error::Internal("the backend connection handling this request failed").to_reply()
            }
        },
        Reply::Later(future) => future.await,
    }
}

/// One reply as the tenant must see it (see `Fix`). Errors pass (their quoted key names are
/// unquoted where the reply is emitted, or by the caller for replies inside EXEC).
pub(super) fn strip(bytes: Bytes, fix: &Fix, tenant: &TenantState) -> Bytes {
    if bytes.first() == Some(&b'-') {
        return bytes;
    }
    let prefix = tenant.config.prefix.as_bytes();
    let stripped = match fix {
        Fix::Keys => strip_keys(&bytes, prefix),
        Fix::Scan => value::elements(&bytes).and_then(|parts| match parts.as_slice() {
            [cursor, keys] => {
                let keys = strip_keys(keys, prefix)?;
                let mut out = BytesMut::new();
                resp::put_header(&mut out, b'*', 2);
                out.put_slice(cursor);
                out.put_slice(&keys);
                Some(out.freeze())
            }
            _ => None,
        }),
        Fix::Custom(ReplyFix::RecordScript) => {
            if let Some(value::Value::Bulk(Some(sha))) = value::parse(&bytes) {
                tenant.record_script(&sha);
            }
            Some(bytes)
        }
        Fix::Pairs => strip_pairs(&bytes, prefix),
        Fix::Custom(ReplyFix::PoppedKey) => strip_first_of_each(&bytes, prefix, false),
        Fix::Custom(ReplyFix::Streams) => strip_first_of_each(&bytes, prefix, true),
        Fix::KeyFlags(keys) => key_flags(&bytes, keys, prefix),
        Fix::OneKey => match value::parse(&bytes) {
            Some(value::Value::Bulk(Some(key))) => rewrite::strip(prefix, &key)
                .ok()
                .map(|key| resp::bulk(Some(&key))),
            _ => Some(bytes),
        },
        Fix::None | Fix::Custom(ReplyFix::None) | Fix::Answer(_) | Fix::Keyspace(_) => Some(bytes),
    };
    stripped.unwrap_or_else(|| Error::ForeignKey.to_reply())
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

/// Nil passes. `[key, rest]` (`per_item` false: LMPOP/ZMPOP) or `[[key, rest], ...]`
/// (`per_item` true: XREAD) with each key un-prefixed; `None` if a key lacks the prefix.
fn strip_first_of_each(reply: &Bytes, prefix: &[u8], per_item: bool) -> Option<Bytes> {
    if matches!(&reply[..], b"*-1\r\n" | b"$-1\r\n" | b"_\r\n") {
        return Some(reply.clone());
    }
    let strip_pair = |pair: &Bytes| -> Option<Bytes> {
        let parts = value::elements(pair)?;
        let (key, rest) = parts.split_first()?;
        let value::Value::Bulk(Some(key)) = value::parse(key)? else {
            return None;
        };
        let key = rewrite::strip(prefix, &key).ok()?;
        let mut out = BytesMut::with_capacity(pair.len());
        resp::put_header(&mut out, b'*', parts.len() as i64);
        resp::put_bulk(&mut out, Some(&key));
        for part in rest {
            out.put_slice(part);
        }
        Some(out.freeze())
    };
    if !per_item {
        return strip_pair(reply);
    }
    // RESP3 (XREAD): a map of stream name to entries.
    if reply.first() == Some(&b'%') {
        return strip_pairs(reply, prefix);
    }
    let items = value::elements(reply)?;
    let mut out = BytesMut::with_capacity(reply.len());
    resp::put_header(&mut out, b'*', items.len() as i64);
    for item in &items {
        out.put_slice(&strip_pair(item)?);
    }
    Some(out.freeze())
}

/// `[name, value, name, value, ...]` with each name un-prefixed (PUBSUB NUMSUB's channels), or
/// the same as a RESP3 map.
fn strip_pairs(array: &Bytes, prefix: &[u8]) -> Option<Bytes> {
    let items = value::elements(array)?;
    let mut out = BytesMut::with_capacity(array.len());
    match array[0] {
        b'%' => resp::put_header(&mut out, b'%', items.len() as i64 / 2),
        _ => resp::put_header(&mut out, b'*', items.len() as i64),
    }
    for (i, item) in items.iter().enumerate() {
        if i % 2 == 1 {
            out.put_slice(item);
            continue;
        }
        let value::Value::Bulk(Some(channel)) = value::parse(item)? else {
            return None;
        };
        resp::put_bulk(&mut out, Some(&rewrite::strip(prefix, &channel).ok()?));
    }
    Some(out.freeze())
}

/// GETKEYSANDFLAGS' `[[key, [flags]], ...]` for exactly `keys` (prefixed), each un-prefixed,
/// with the flags the server gave it (none if the server did not list it).
fn key_flags(reply: &Bytes, keys: &[Bytes], prefix: &[u8]) -> Option<Bytes> {
    let mut flags_of = std::collections::HashMap::new();
    for entry in value::elements(reply)? {
        let parts = value::elements(&entry)?;
        let [key, flags] = parts.as_slice() else {
            return None;
        };
        let value::Value::Bulk(Some(key)) = value::parse(key)? else {
            return None;
        };
        flags_of.entry(key).or_insert_with(|| flags.clone());
    }
    let mut out = BytesMut::with_capacity(reply.len());
    resp::put_header(&mut out, b'*', keys.len() as i64);
    for key in keys {
        resp::put_header(&mut out, b'*', 2);
        resp::put_bulk(&mut out, Some(&rewrite::strip(prefix, key).ok()?));
        match flags_of.get(key) {
            Some(flags) => out.put_slice(flags),
            None => resp::put_header(&mut out, b'*', 0),
        }
    }
    Some(out.freeze())
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

/// May `spec` grow memory, so that a tenant over its quota is refused it? The commands Redis
/// refuses at `maxmemory` (`denyoom`), and scripts and function calls that may write: keygate
/// cannot see what they do.
fn grows_memory(spec: &Spec) -> bool {
    spec.has(flags::DENYOOM) || matches!(spec.name, "eval" | "evalsha" | "fcall")
}

/// A tenant's quotas and its estimated usage, for the -OOM reply.
fn quota_text(usage: &Usage) -> String {
    let (bytes, keys) = usage.estimate();
    let mut parts = Vec::new();
    let (max_bytes, max_keys) = usage.limits();
    if let Some(max) = max_bytes {
        parts.push(format!("max_memory {max} bytes, about {bytes} in use"));
    }
    if let Some(max) = max_keys {
        parts.push(format!("max_keys {max}, about {keys} keys"));
    }
    parts.join("; ")
}
