//! The configuration file: its TOML shape (unknown keys refused, durations and sizes written with
//! units), validated once at load into a `Config` the rest of keygate can trust.
//!
//! Every error names the file, the key and the reason, e.g.
//! `proxy.toml: upstream.connect_timeout: invalid duration "5": expected number and unit`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use sha2::{Digest, Sha256};

use crate::access::Cidr;
use crate::placement::ketama::Hash;

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: Listen,
    /// Runtime worker threads; 0 means one per CPU keygate may run on.
    pub threads: usize,
    /// How long in-flight requests may take to finish after SIGINT/SIGTERM.
    pub drain_timeout: Duration,
    pub upstream: Upstream,
    /// `[upstreams.NAME]`: upstreams of their own for the tenants that name them.
    pub upstreams: BTreeMap<String, Upstream>,
    pub admin: Option<Admin>,
    pub limits: Limits,
    pub log: Log,
    /// Tenants; empty means no tenancy (clients reach one shared keyspace, as with Redis).
    pub tenants: Vec<Tenant>,
    /// Commands refused to every tenant, lower case (`config`, `client|kill`).
    pub deny_commands: Vec<String>,
    /// ACL categories whose commands are refused to every tenant, without the `@`.
    pub deny_categories: Vec<String>,
    pub slowlog: Slowlog,
    pub access: Access,
    /// Client-side TLS: a second listening address speaking TLS (see tls).
    pub tls: Option<Tls>,
    /// How tenants' memory and key quotas are measured (see accounting).
    pub quota: Quota,
    /// Limits shared by several keygates in front of the same servers (see fleet).
    pub fleet: Fleet,
}

/// `[fleet]`: tenants' `max_connections` and `max_ops_per_sec` kept on the servers, for every
/// keygate in front of them together.
#[derive(Clone, Debug, PartialEq)]
pub struct Fleet {
    pub shared_limits: bool,
    /// Where on the servers: `<namespace>{<tenant>}:rate` and `:conns`, `:seen`. No tenant's
    /// prefix may start it or start with it, so no tenant can reach these keys.
    pub namespace: String,
    /// A keygate that stops renewing (it died) has its connections released after this long.
    pub instance_ttl: Duration,
}

/// `[quota]`: the background pass that measures each tenant's keys and memory on the servers.
#[derive(Clone, Debug, PartialEq)]
pub struct Quota {
    /// Most keys the pass examines per second on each server (its cost on the server).
    pub scan_rate: u32,
    /// Keys examined per script call (SCAN's COUNT).
    pub batch: u32,
    /// The pause between the end of one pass and the start of the next.
    pub interval: Duration,
}

/// `[tls]`: certificates are read and checked when the config loads (so `--check` and reloads
/// catch bad ones), and reload with it.
#[derive(Clone)]
pub struct Tls {
    pub listen: SocketAddr,
    pub server: std::sync::Arc<tokio_rustls::rustls::ServerConfig>,
    /// Clients must present a certificate signed by `client_ca`.
    pub mutual: bool,
    /// A TLS handshake not done within this long is dropped.
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("listen", &self.listen)
            .field("mutual", &self.mutual)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

/// Who may connect (see access).
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// When not empty, only these addresses may connect.
    pub allow: Vec<Cidr>,
    /// These may not.
    pub deny: Vec<Cidr>,
    /// Failed AUTH attempts per address, tenant name and minute before that address's AUTHs as
    /// that name are refused unchecked.
    pub max_auth_failures: u32,
    /// With tenants: connections from one address that have not authenticated yet (0: any).
    pub max_unauthenticated_per_address: usize,
}

/// keygate's own slowlog (SLOWLOG through keygate).
#[derive(Clone, Debug)]
pub struct Slowlog {
    /// Requests slower than this, end to end in keygate, are logged.
    pub threshold: Duration,
    /// Entries kept; 0 turns the slowlog off.
    pub max_len: usize,
}

/// A tenant: who it is, how it proves it, and the private keyspace it gets.
#[derive(Clone, Debug, PartialEq)]
pub struct Tenant {
    pub name: String,
    /// SHA-256 of the password; compared in constant time, never logged. `None`: no AUTH
    /// with a password selects this tenant (only its client certificate does).
    pub password_sha256: Option<[u8; 32]>,
    /// Mutual TLS: a verified client certificate whose subject has this common name (CN)
    /// is this tenant's, without AUTH.
    pub client_cert_cn: Option<String>,
    /// Mutual TLS: a verified client certificate with this subject alternative name (a DNS
    /// name, a URI such as a SPIFFE id, an e-mail address) is this tenant's, without AUTH.
    pub client_cert_san: Option<String>,
    /// Prepended to every key and channel of this tenant.
    pub prefix: String,
    /// If set, only these commands (lower case, `name` or `name|sub`).
    pub allow_commands: Option<Vec<String>>,
    pub deny_commands: Vec<String>,
    /// ACL categories whose commands this tenant may not run, without the `@`.
    pub deny_categories: Vec<String>,
    pub max_connections: Option<usize>,
    pub max_ops_per_sec: Option<u32>,
    /// Memory quota in bytes, as the servers' MEMORY USAGE counts the tenant's keys: once over,
    /// commands that may grow memory are refused with -OOM (see tenant::quota).
    pub max_memory: Option<u64>,
    /// Key quota: once the tenant holds more keys, the same.
    pub max_keys: Option<u64>,
    pub allow_scripts: bool,
    /// When not empty, AUTH as this tenant only from these addresses.
    pub allow_from: Vec<Cidr>,
    /// With `upstream.tenant_acl`: the backend ACL user (and its password) this tenant's
    /// scripts run as; `None`: a user keygate manages (see backend::users).
    pub backend_user: Option<(String, String)>,
    /// `isolation = "database"`: the logical database (1 or more) the tenant has to itself on
    /// every server, so DBSIZE, FLUSHDB, RANDOMKEY and SCAN are the server's own, costing
    /// the tenant's keys at most; `None`: database 0, shared with the other tenants.
    pub database: Option<u32>,
    /// `[upstreams.NAME]`: the tenant's keys live on servers of its own; `None`: the shared
    /// `[upstream]`.
    pub upstream: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Upstream {
    pub kind: UpstreamKind,
    /// The servers (for "cluster": the seed nodes).
    pub servers: Vec<Server>,
    /// ketama: the key hash function.
    pub hash: Hash,
    /// ketama: the two characters that delimit the hashed part of a key, e.g. `{}`.
    pub hash_tag: Option<[u8; 2]>,
    /// cluster: how often the slot map is refreshed when nothing prompts it.
    pub refresh_interval: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    pub connections_per_server: usize,
    /// Connections of their own per server for blocking commands (BLPOP, XREAD BLOCK, WAIT...)
    /// and for subscribed clients, each; the next such request gets an error.
    pub blocking_connections_per_server: usize,
    pub subscriber_connections_per_server: usize,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Circuit breaker: consecutive failures (connect errors, timeouts, broken connections)
    /// that open it; 0 turns it off.
    pub failures_to_open: u32,
    /// How long an open breaker fails requests at once before one probe (PING) decides.
    pub open_for: Duration,
    /// ketama: while a server's breaker is open, its keys move to the rest of the ring (as
    /// twemproxy's `auto_eject_hosts`).
    pub auto_eject_hosts: bool,
    /// sentinel: the name the sentinels know the primary by.
    pub master: Option<String>,
    /// sentinel: AUTH for the sentinels themselves (`username`/`password` are the data
    /// servers').
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
    /// cluster, sentinel: where read-only commands go.
    pub read_from: ReadFrom,
    /// TLS to every server of this upstream (`tls = true`), sentinels included.
    pub tls: Option<crate::tls::Upstream>,
    /// Run tenants' scripts as backend ACL users confined to their prefix.
    pub tenant_acl: TenantAcl,
}

/// Which of a tenant's commands run as a backend ACL user of its own (see backend::users).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TenantAcl {
    /// None: keygate's rewriting alone confines tenants.
    #[default]
    Off,
    /// Scripts and function calls: the server itself refuses any key or channel outside the
    /// tenant's prefix that a script touches.
    Scripts,
}

/// Where read-only commands (by the command table's `readonly` flag) go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// The primary, like every other command.
    Primary,
    /// A healthy replica of the key's primary (spread by client); the primary when none is.
    Replica,
    /// As `Replica`, except that for a second after a client wrote, its reads go to the
    /// primary, so it reads its own writes despite replication lag.
    PreferReplica,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamKind {
    /// One server.
    Standalone,
    /// Standalone servers sharded by twemproxy's ketama ring.
    Ketama,
    /// A Redis Cluster, found from seed nodes.
    Cluster,
    /// The primary a set of Redis Sentinels names (`servers` are the sentinels).
    Sentinel,
}

impl UpstreamKind {
    /// Keys are spread over several servers (one database only, as in Redis Cluster).
    pub fn sharded(self) -> bool {
        matches!(self, UpstreamKind::Ketama | UpstreamKind::Cluster)
    }

    pub fn name(self) -> &'static str {
        match self {
            UpstreamKind::Standalone => "standalone",
            UpstreamKind::Ketama => "ketama",
            UpstreamKind::Cluster => "cluster",
            UpstreamKind::Sentinel => "sentinel",
        }
    }
}

/// Where clients connect (`listen`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    /// A Unix socket at `path`, made with permissions `mode` (replacing a stale socket file).
    Unix {
        path: std::path::PathBuf,
        mode: u32,
    },
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(addr) => write!(f, "{addr}"),
            Listen::Unix { path, .. } => write!(f, "unix:{}", path.display()),
        }
    }
}

/// One `servers` entry: `host:port`, and for ketama `host:port:weight name` as twemproxy writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    /// `host:port`, what keygate connects to.
    pub addr: String,
    pub weight: u32,
    /// The name its ketama points derive from: the given name, else `host:port` (just `host`
    /// when the port is 11211, as twemproxy does for libmemcached compatibility).
    pub name: String,
}

#[derive(Clone, Debug)]
pub struct Admin {
    pub listen: SocketAddr,
    /// /metrics and /status.json give full per-tenant series for at most this many tenants (the
    /// busiest, and any over a quota); the rest are summed under `tenant="_other"`.
    pub tenant_series: usize,
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_clients: usize,
    pub max_request_bytes: usize,
    pub max_request_args: usize,
    pub max_pipeline: usize,
    pub max_reply_depth: usize,
    /// Close client connections idle this long; `None`: never.
    pub client_idle_timeout: Option<Duration>,
    /// Most reply bytes buffered for a client that does not read them; past it the client is
    /// disconnected (as Redis does past its output buffer limits).
    pub client_output_limit: usize,
    /// A request must arrive whole within this long of its first byte (slowloris); `None`: no
    /// limit.
    pub frame_timeout: Option<Duration>,
    /// With tenants, a connection that has not authenticated this long after connecting is
    /// closed; `None`: no limit.
    pub auth_timeout: Option<Duration>,
}

#[derive(Clone, Debug)]
pub struct Log {
    /// A tracing filter (`info`, `keygate=debug`, ...); RUST_LOG overrides it.
    pub level: String,
    pub json: bool,
}

/// A configuration that could not be loaded.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// `[admin] tenant_series` (its default without an admin listener).
    pub fn tenant_series(&self) -> usize {
        self.admin
            .as_ref()
            .map_or_else(default_tenant_series, |a| a.tenant_series)
    }
}

// ---- the file's shape -----------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: String,
    /// The Unix socket's permissions, octal (with `listen = "unix:/path"`).
    listen_mode: Option<String>,
    #[serde(default)]
    threads: usize,
    #[serde(default = "default_drain", deserialize_with = "duration")]
    drain_timeout: Duration,
    upstream: UpstreamFile,
    /// Named upstreams beside the shared one, for tenants of their own (`tenants[].upstream`).
    #[serde(default)]
    upstreams: BTreeMap<String, UpstreamFile>,
    admin: Option<AdminFile>,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    log: LogFile,
    #[serde(default)]
    tenants: Vec<TenantFile>,
    #[serde(default)]
    policy: PolicyFile,
    #[serde(default)]
    slowlog: SlowlogFile,
    #[serde(default)]
    access: AccessFile,
    tls: Option<TlsFile>,
    #[serde(default)]
    quota: QuotaFile,
    #[serde(default)]
    fleet: FleetFile,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FleetFile {
    shared_limits: bool,
    namespace: String,
    #[serde(deserialize_with = "duration")]
    instance_ttl: Duration,
}

impl Default for FleetFile {
    fn default() -> Self {
        FleetFile {
            shared_limits: false,
            namespace: "keygate:".into(),
            instance_ttl: Duration::from_secs(5),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    listen: String,
    cert: String,
    key: String,
    client_ca: Option<String>,
    #[serde(default = "default_handshake", deserialize_with = "duration")]
    handshake_timeout: Duration,
}

fn default_handshake() -> Duration {
    Duration::from_secs(10)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SlowlogFile {
    #[serde(default = "default_slow", deserialize_with = "duration")]
    threshold: Duration,
    #[serde(default = "default_slowlog_len")]
    max_len: usize,
}

impl Default for SlowlogFile {
    fn default() -> Self {
        SlowlogFile {
            threshold: default_slow(),
            max_len: default_slowlog_len(),
        }
    }
}

fn default_slow() -> Duration {
    Duration::from_millis(10)
}

fn default_slowlog_len() -> usize {
    128
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    name: String,
    password: Option<String>,
    password_sha256: Option<String>,
    prefix: String,
    allow_commands: Option<Vec<String>>,
    #[serde(default)]
    deny_commands: Vec<String>,
    #[serde(default)]
    deny_categories: Vec<String>,
    max_connections: Option<usize>,
    max_ops_per_sec: Option<u32>,
    #[serde(default, deserialize_with = "optional_size")]
    max_memory: Option<usize>,
    max_keys: Option<u64>,
    #[serde(default)]
    allow_scripts: bool,
    #[serde(default)]
    allow_from: Vec<String>,
    client_cert_cn: Option<String>,
    client_cert_san: Option<String>,
    backend_user: Option<String>,
    backend_password: Option<String>,
    upstream: Option<String>,
    isolation: Option<String>,
    database: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessFile {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default = "default_auth_failures")]
    max_auth_failures: u32,
    #[serde(default = "default_unauthenticated_per_address")]
    max_unauthenticated_per_address: usize,
}

impl Default for AccessFile {
    fn default() -> Self {
        AccessFile {
            allow: Vec::new(),
            deny: Vec::new(),
            max_auth_failures: default_auth_failures(),
            max_unauthenticated_per_address: default_unauthenticated_per_address(),
        }
    }
}

fn default_unauthenticated_per_address() -> usize {
    100
}

fn default_auth_failures() -> u32 {
    10
}

fn cidrs(list: &[String], key: &str) -> Result<Vec<Cidr>, (String, String)> {
    list.iter()
        .enumerate()
        .map(|(i, text)| Cidr::parse(text).map_err(|r| (format!("{key}[{i}]"), r)))
        .collect()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    deny_commands: Vec<String>,
    #[serde(default)]
    deny_categories: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamFile {
    kind: String,
    servers: Vec<String>,
    hash: Option<String>,
    hash_tag: Option<String>,
    #[serde(default, deserialize_with = "optional_duration")]
    refresh_interval: Option<Duration>,
    username: Option<String>,
    password: Option<String>,
    #[serde(default = "one")]
    connections_per_server: usize,
    #[serde(default = "default_dedicated")]
    blocking_connections_per_server: usize,
    #[serde(default = "default_dedicated")]
    subscriber_connections_per_server: usize,
    #[serde(default = "default_connect", deserialize_with = "duration")]
    connect_timeout: Duration,
    #[serde(default = "default_request", deserialize_with = "duration")]
    request_timeout: Duration,
    #[serde(default = "default_failures_to_open")]
    failures_to_open: u32,
    #[serde(default = "default_open_for", deserialize_with = "duration")]
    open_for: Duration,
    #[serde(default)]
    auto_eject_hosts: bool,
    master: Option<String>,
    sentinel_username: Option<String>,
    sentinel_password: Option<String>,
    read_from: Option<String>,
    tenant_acl: Option<String>,
    #[serde(default)]
    tls: bool,
    tls_ca: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    tls_server_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminFile {
    listen: String,
    #[serde(default = "default_tenant_series")]
    tenant_series: usize,
}

fn default_tenant_series() -> usize {
    100
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct QuotaFile {
    scan_rate: u32,
    batch: u32,
    #[serde(deserialize_with = "duration")]
    interval: Duration,
}

impl Default for QuotaFile {
    fn default() -> Self {
        QuotaFile {
            scan_rate: 20_000,
            batch: 500,
            interval: Duration::from_secs(1),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LimitsFile {
    max_clients: usize,
    #[serde(deserialize_with = "size")]
    max_request_bytes: usize,
    max_request_args: usize,
    max_pipeline: usize,
    max_reply_depth: usize,
    #[serde(deserialize_with = "duration")]
    client_idle_timeout: Duration,
    #[serde(deserialize_with = "size")]
    client_output_limit: usize,
    #[serde(deserialize_with = "duration")]
    frame_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    auth_timeout: Duration,
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            max_clients: 10_000,
            max_request_bytes: 512 * 1024 * 1024,
            max_request_args: 1024 * 1024,
            max_pipeline: 1024,
            // Redis itself sends replies about 8 000 deep (a script returning a table that
            // holds itself, cut at Lua's stack limit): deeper than that is no server's reply.
            max_reply_depth: 10_000,
            client_idle_timeout: Duration::ZERO,
            client_output_limit: 64 * 1024 * 1024,
            frame_timeout: Duration::from_secs(60),
            auth_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LogFile {
    level: String,
    format: String,
}

impl Default for LogFile {
    fn default() -> Self {
        LogFile {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

fn one() -> usize {
    1
}
fn default_drain() -> Duration {
    Duration::from_secs(5)
}
fn default_failures_to_open() -> u32 {
    5
}

fn default_open_for() -> Duration {
    Duration::from_secs(5)
}

fn default_dedicated() -> usize {
    1000
}

fn default_connect() -> Duration {
    Duration::from_millis(500)
}
fn default_request() -> Duration {
    Duration::from_secs(2)
}

/// A duration written with its unit: "500ms", "2s", "1m 30s".
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        de::Error::custom(format!(
            "invalid duration {text:?}: {e} (write e.g. \"500ms\" or \"2s\")"
        ))
    })
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// A size in bytes: a whole number, or a string with a unit ("512MiB", "64KiB", "1GB").
fn size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(usize),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(text) => parse_size(&text).ok_or_else(|| {
            de::Error::custom(format!(
                "invalid size {text:?} (write a number of bytes, or e.g. \"64KiB\", \"512MiB\")"
            ))
        }),
    }
}

fn optional_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    size(d).map(Some)
}

fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: usize = digits.parse().ok()?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "kb" | "k" => 1 << 10,
        "MiB" | "MB" | "mb" | "m" => 1 << 20,
        "GiB" | "GB" | "gb" | "g" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

// ---- loading and validation -----------------------------------------------------------------

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: String::new(),
            reason: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &file)
    }

    /// Parse and validate config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let fail = |key: &str, reason: String| ConfigError {
            file: file.to_string(),
            key: key.to_string(),
            reason,
        };
        let de = toml::Deserializer::new(text);
        let raw: File = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let mut reason = inner.message().to_string();
            if let Some(span) = inner.span() {
                let line = text[..span.start].matches('\n').count() + 1;
                reason = format!("{reason} (line {line})");
            }
            fail(if key == "." { "" } else { &key }, reason)
        })?;

        let listen =
            listen(&raw.listen, raw.listen_mode.as_deref()).map_err(|(key, r)| fail(key, r))?;
        let upstream = parse_upstream(&raw.upstream, "upstream", &fail)?;
        let mut upstreams = BTreeMap::new();
        for (name, up) in &raw.upstreams {
            let at = format!("upstreams.{name}");
            if name.is_empty() || name.chars().any(|c| !c.is_ascii_graphic()) {
                return Err(fail(
                    &at,
                    format!("{name:?} must be printable, without spaces"),
                ));
            }
            upstreams.insert(name.clone(), parse_upstream(up, &at, &fail)?);
        }
        let admin = match raw.admin {
            Some(a) => Some(Admin {
                listen: socket_addr(&a.listen).map_err(|r| fail("admin.listen", r))?,
                tenant_series: a.tenant_series,
            }),
            None => None,
        };
        let l = raw.limits;
        positive(l.max_clients, 1_000_000).map_err(|r| fail("limits.max_clients", r))?;
        positive(l.max_request_bytes, 1 << 32).map_err(|r| fail("limits.max_request_bytes", r))?;
        positive(l.max_request_args, i32::MAX as usize)
            .map_err(|r| fail("limits.max_request_args", r))?;
        positive(l.max_pipeline, 1_000_000).map_err(|r| fail("limits.max_pipeline", r))?;
        positive(l.max_reply_depth, 100_000).map_err(|r| fail("limits.max_reply_depth", r))?;
        positive(l.client_output_limit, usize::MAX)
            .map_err(|r| fail("limits.client_output_limit", r))?;
        let json = match raw.log.format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                return Err(fail(
                    "log.format",
                    format!("unknown format {other:?}; expected \"text\" or \"json\""),
                ))
            }
        };
        let deny_commands =
            command_list(&raw.policy.deny_commands).map_err(|r| fail("policy.deny_commands", r))?;
        let deny_categories = category_list(&raw.policy.deny_categories)
            .map_err(|r| fail("policy.deny_categories", r))?;
        let tenants = tenants(&raw.tenants).map_err(|(key, r)| fail(&key, r))?;
        for (i, t) in tenants.iter().enumerate() {
            // The upstream the tenant's keys live on: its own, or the shared one.
            let (up, at) = match &t.upstream {
                Some(name) => match upstreams.get(name) {
                    Some(up) => (up, format!("upstreams.{name}")),
                    None => {
                        return Err(fail(
                            &format!("tenants[{i}].upstream"),
                            format!("no [upstreams.{name}] is defined"),
                        ))
                    }
                },
                None => (&upstream, "upstream".to_string()),
            };
            if up.kind == UpstreamKind::Cluster && t.database.is_some() {
                return Err(fail(
                    &format!("tenants[{i}].isolation"),
                    "\"database\" is for standalone, ketama and sentinel servers (a Redis Cluster has database 0 only)".into(),
                ));
            }
            if up.tenant_acl == TenantAcl::Off && t.backend_user.is_some() {
                return Err(fail(
                    &format!("tenants[{i}].backend_user"),
                    format!("only applies with {at}.tenant_acl = \"scripts\""),
                ));
            }
        }
        let mutual_tls = raw.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if let Some((i, t)) = tenants
            .iter()
            .enumerate()
            .find(|(_, t)| t.client_cert_cn.is_some() || t.client_cert_san.is_some())
        {
            if !mutual_tls {
                let key = if t.client_cert_cn.is_some() {
                    "client_cert_cn"
                } else {
                    "client_cert_san"
                };
                return Err(fail(
                    &format!("tenants[{i}].{key}"),
                    "needs mutual TLS: set [tls] client_ca, so client certificates are verified"
                        .into(),
                ));
            }
        }
        let q = &raw.quota;
        if q.scan_rate == 0 || q.batch == 0 {
            let key = if q.batch == 0 {
                "quota.batch"
            } else {
                "quota.scan_rate"
            };
            return Err(fail(key, "must be at least 1".into()));
        }
        if q.batch > 100_000 {
            return Err(fail(
                "quota.batch",
                "at most 100000 (each call runs as one script on the server)".into(),
            ));
        }
        nonzero_duration(q.interval).map_err(|r| fail("quota.interval", r))?;
        let fleet = &raw.fleet;
        if fleet.namespace.is_empty()
            || fleet
                .namespace
                .chars()
                .any(|c| PREFIX_FORBIDDEN.contains(&c) || !c.is_ascii_graphic())
        {
            return Err(fail(
                "fleet.namespace",
                format!("{:?} must be non-empty printable ASCII without spaces or any of {{ }} * ? [ ] \\", fleet.namespace),
            ));
        }
        // keygate's own keys (shared limits, saved quota usage) must be out of tenants' reach.
        let own_keys = fleet.shared_limits
            || tenants
                .iter()
                .any(|t| t.max_memory.is_some() || t.max_keys.is_some());
        if let Some((i, t)) = tenants.iter().enumerate().find(|(_, t)| {
            own_keys
                && (t.prefix.starts_with(&fleet.namespace)
                    || fleet.namespace.starts_with(&t.prefix))
        }) {
            return Err(fail(
                &format!("tenants[{i}].prefix"),
                format!(
                    "{:?} and fleet.namespace {:?}: one is a prefix of the other, so the tenant could reach keygate's own keys",
                    t.prefix, fleet.namespace
                ),
            ));
        }
        if fleet.instance_ttl < Duration::from_secs(1) {
            return Err(fail("fleet.instance_ttl", "must be at least 1s".into()));
        }
        tracing_subscriber::EnvFilter::try_new(&raw.log.level).map_err(|e| {
            fail(
                "log.level",
                format!("invalid filter {:?}: {e}", raw.log.level),
            )
        })?;

        Ok(Config {
            listen,
            threads: raw.threads,
            drain_timeout: raw.drain_timeout,
            upstream,
            upstreams,
            admin,
            limits: Limits {
                max_clients: l.max_clients,
                max_request_bytes: l.max_request_bytes,
                max_request_args: l.max_request_args,
                max_pipeline: l.max_pipeline,
                max_reply_depth: l.max_reply_depth,
                client_idle_timeout: (!l.client_idle_timeout.is_zero())
                    .then_some(l.client_idle_timeout),
                client_output_limit: l.client_output_limit,
                frame_timeout: (!l.frame_timeout.is_zero()).then_some(l.frame_timeout),
                auth_timeout: (!l.auth_timeout.is_zero()).then_some(l.auth_timeout),
            },
            log: Log {
                level: raw.log.level,
                json,
            },
            tenants,
            deny_commands,
            deny_categories,
            slowlog: Slowlog {
                threshold: raw.slowlog.threshold,
                max_len: raw.slowlog.max_len.min(100_000),
            },
            tls: match &raw.tls {
                Some(t) => Some(Tls {
                    listen: socket_addr(&t.listen).map_err(|r| fail("tls.listen", r))?,
                    server: crate::tls::server_config(&t.cert, &t.key, t.client_ca.as_deref())
                        .map_err(|(key, r)| fail(&format!("tls.{key}"), r))?,
                    mutual: t.client_ca.is_some(),
                    handshake_timeout: nonzero_duration(t.handshake_timeout)
                        .map(|()| t.handshake_timeout)
                        .map_err(|r| fail("tls.handshake_timeout", r))?,
                }),
                None => None,
            },
            access: Access {
                allow: cidrs(&raw.access.allow, "access.allow").map_err(|(k, r)| fail(&k, r))?,
                deny: cidrs(&raw.access.deny, "access.deny").map_err(|(k, r)| fail(&k, r))?,
                max_auth_failures: raw.access.max_auth_failures,
                max_unauthenticated_per_address: raw.access.max_unauthenticated_per_address,
            },
            fleet: Fleet {
                shared_limits: raw.fleet.shared_limits,
                namespace: raw.fleet.namespace.clone(),
                instance_ttl: raw.fleet.instance_ttl,
            },
            quota: Quota {
                scan_rate: raw.quota.scan_rate,
                batch: raw.quota.batch,
                interval: raw.quota.interval,
            },
        })
    }
}

/// Where clients connect: `ip:port`, or `unix:/path` with `listen_mode` (default 0660: owner and
/// group may connect).
/// One upstream's table (`[upstream]`, or `[upstreams.NAME]` at `at`), validated.
fn parse_upstream(
    up: &UpstreamFile,
    at: &str,
    fail: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Upstream, ConfigError> {
    let kind = match up.kind.as_str() {
        "standalone" => UpstreamKind::Standalone,
        "ketama" => UpstreamKind::Ketama,
        "cluster" => UpstreamKind::Cluster,
        "sentinel" => UpstreamKind::Sentinel,
        other => {
            return Err(fail(
                &format!("{at}.kind"),
                format!("unknown kind {other:?}; expected \"standalone\", \"ketama\", \"cluster\" or \"sentinel\""),
            ))
        }
    };
    if up.servers.is_empty() {
        return Err(fail(
            &format!("{at}.servers"),
            "the server list is empty".into(),
        ));
    }
    let mut servers = Vec::new();
    for (i, text) in up.servers.iter().enumerate() {
        let key = format!("{at}.servers[{i}]");
        let server = if text.starts_with("unix:") {
            unix_server(text, kind)
        } else if kind == UpstreamKind::Ketama {
            ketama_server(text)
        } else {
            host_port(text).map(|()| Server {
                addr: text.clone(),
                weight: 1,
                name: text.clone(),
            })
        }
        .map_err(|r| fail(&key, r))?;
        if servers.iter().any(|s: &Server| s.addr == server.addr) {
            return Err(fail(&key, format!("{:?} is listed twice", server.addr)));
        }
        if servers.iter().any(|s: &Server| s.name == server.name) {
            return Err(fail(
                &key,
                format!("the name {:?} is used twice", server.name),
            ));
        }
        servers.push(server);
    }
    if kind == UpstreamKind::Standalone && servers.len() != 1 {
        return Err(fail(
            &format!("{at}.servers"),
            format!(
                "kind \"standalone\" takes exactly one server, got {}",
                servers.len()
            ),
        ));
    }
    let only_for = |key: &str, what: &str, wanted: UpstreamKind| {
        if kind == wanted {
            Ok(())
        } else {
            Err(fail(key, format!("only applies to kind {what:?}")))
        }
    };
    let hash = match &up.hash {
        Some(name) => {
            only_for(&format!("{at}.hash"), "ketama", UpstreamKind::Ketama)?;
            Hash::from_name(name).ok_or_else(|| {
                fail(
                    &format!("{at}.hash"),
                    format!("unknown hash {name:?}; expected one of fnv1a_64, fnv1_64, fnv1a_32, fnv1_32, md5"),
                )
            })?
        }
        None => Hash::Fnv1a64,
    };
    let hash_tag = match &up.hash_tag {
        Some(tag) => {
            only_for(&format!("{at}.hash_tag"), "ketama", UpstreamKind::Ketama)?;
            match tag.as_bytes() {
                [open, close] => Some([*open, *close]),
                _ => {
                    return Err(fail(
                        &format!("{at}.hash_tag"),
                        format!("{tag:?} must be exactly two characters, e.g. \"{{}}\""),
                    ))
                }
            }
        }
        None => None,
    };
    if up.refresh_interval.is_some()
        && !matches!(kind, UpstreamKind::Cluster | UpstreamKind::Sentinel)
    {
        return Err(fail(
            &format!("{at}.refresh_interval"),
            "only applies to kinds \"cluster\" and \"sentinel\"".into(),
        ));
    }
    let tenant_acl = match up.tenant_acl.as_deref() {
        None | Some("off") => TenantAcl::Off,
        Some("scripts") => TenantAcl::Scripts,
        Some(other) => {
            return Err(fail(
                &format!("{at}.tenant_acl"),
                format!("unknown mode {other:?}; expected \"off\" or \"scripts\""),
            ))
        }
    };
    let read_from = match up.read_from.as_deref() {
        None | Some("primary") => ReadFrom::Primary,
        Some(mode @ ("replica" | "prefer_replica")) => {
            if !matches!(kind, UpstreamKind::Cluster | UpstreamKind::Sentinel) {
                return Err(fail(
                    &format!("{at}.read_from"),
                    "only applies to kinds \"cluster\" and \"sentinel\"".into(),
                ));
            }
            if mode == "replica" {
                ReadFrom::Replica
            } else {
                ReadFrom::PreferReplica
            }
        }
        Some(other) => {
            return Err(fail(
                &format!("{at}.read_from"),
                format!(
                "unknown mode {other:?}; expected \"primary\", \"replica\" or \"prefer_replica\""
            ),
            ))
        }
    };
    match (&up.master, kind) {
        (None, UpstreamKind::Sentinel) => {
            return Err(fail(
                &format!("{at}.master"),
                "kind \"sentinel\" needs the name the sentinels know the primary by".into(),
            ))
        }
        (Some(_), UpstreamKind::Sentinel) | (None, _) => {}
        (Some(_), _) => only_for(&format!("{at}.master"), "sentinel", UpstreamKind::Sentinel)?,
    }
    if up.sentinel_username.is_some() || up.sentinel_password.is_some() {
        only_for(
            &format!("{at}.sentinel_password"),
            "sentinel",
            UpstreamKind::Sentinel,
        )?;
        if up.sentinel_password.is_none() {
            return Err(fail(
                &format!("{at}.sentinel_username"),
                "a username needs a password".into(),
            ));
        }
    }
    let refresh_interval = up.refresh_interval.unwrap_or(Duration::from_secs(10));
    nonzero_duration(refresh_interval).map_err(|r| fail(&format!("{at}.refresh_interval"), r))?;
    if up.username.is_some() && up.password.is_none() {
        return Err(fail(
            &format!("{at}.username"),
            "a username needs a password".into(),
        ));
    }
    positive(up.connections_per_server, 1024)
        .map_err(|r| fail(&format!("{at}.connections_per_server"), r))?;
    positive(up.blocking_connections_per_server, 100_000)
        .map_err(|r| fail(&format!("{at}.blocking_connections_per_server"), r))?;
    positive(up.subscriber_connections_per_server, 100_000)
        .map_err(|r| fail(&format!("{at}.subscriber_connections_per_server"), r))?;
    nonzero_duration(up.connect_timeout).map_err(|r| fail(&format!("{at}.connect_timeout"), r))?;
    nonzero_duration(up.request_timeout).map_err(|r| fail(&format!("{at}.request_timeout"), r))?;
    nonzero_duration(up.open_for).map_err(|r| fail(&format!("{at}.open_for"), r))?;
    if up.auto_eject_hosts {
        only_for(
            &format!("{at}.auto_eject_hosts"),
            "ketama",
            UpstreamKind::Ketama,
        )?;
        if up.failures_to_open == 0 {
            return Err(fail(
                &format!("{at}.auto_eject_hosts"),
                "needs the circuit breaker (failures_to_open > 0)".into(),
            ));
        }
    }
    if up.tls {
        if let Some(unix) = servers.iter().find(|s| s.addr.starts_with("unix:")) {
            return Err(fail(
                &format!("{at}.tls"),
                format!("{:?} is a Unix socket: TLS is for TCP servers", unix.addr),
            ));
        }
    }
    let upstream_tls = if up.tls {
        Some(
            crate::tls::upstream_config(
                up.tls_ca.as_deref(),
                up.tls_cert.as_deref(),
                up.tls_key.as_deref(),
                up.tls_server_name.as_deref(),
            )
            .map_err(|(key, r)| fail(&format!("{at}.{key}"), r))?,
        )
    } else {
        let stray = [
            ("tls_ca", &up.tls_ca),
            ("tls_cert", &up.tls_cert),
            ("tls_key", &up.tls_key),
            ("tls_server_name", &up.tls_server_name),
        ];
        if let Some((key, _)) = stray.iter().find(|(_, v)| v.is_some()) {
            return Err(fail(
                &format!("{at}.{key}"),
                format!("only applies with {at}.tls = true"),
            ));
        }
        None
    };
    Ok(Upstream {
        kind,
        servers,
        hash,
        hash_tag,
        refresh_interval,
        username: up.username.clone(),
        password: up.password.clone(),
        connections_per_server: up.connections_per_server,
        blocking_connections_per_server: up.blocking_connections_per_server,
        subscriber_connections_per_server: up.subscriber_connections_per_server,
        connect_timeout: up.connect_timeout,
        request_timeout: up.request_timeout,
        failures_to_open: up.failures_to_open,
        open_for: up.open_for,
        auto_eject_hosts: up.auto_eject_hosts,
        master: up.master.clone(),
        sentinel_username: up.sentinel_username.clone(),
        sentinel_password: up.sentinel_password.clone(),
        read_from,
        tenant_acl,
        tls: upstream_tls,
    })
}

fn listen(text: &str, mode: Option<&str>) -> Result<Listen, (&'static str, String)> {
    let Some(path) = text.strip_prefix("unix:") else {
        if mode.is_some() {
            return Err((
                "listen_mode",
                "only applies with listen = \"unix:/path\"".into(),
            ));
        }
        return Ok(Listen::Tcp(
            socket_addr(text).map_err(|r| ("listen", format!("{r}, or unix:/path")))?,
        ));
    };
    if !path.starts_with('/') || path.len() < 2 {
        return Err((
            "listen",
            format!("invalid Unix socket {text:?}: expected unix:/absolute/path"),
        ));
    }
    let mode = match mode {
        None => 0o660,
        Some(m) => u32::from_str_radix(m, 8)
            .ok()
            .filter(|&m| m > 0 && m <= 0o777)
            .ok_or_else(|| {
                (
                    "listen_mode",
                    format!("{m:?} is not a file mode: expected octal, e.g. \"0660\""),
                )
            })?,
    };
    Ok(Listen::Unix {
        path: path.into(),
        mode,
    })
}

fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("invalid address {text:?}: expected ip:port, e.g. \"127.0.0.1:6380\""))
}

/// `host:port`, host a name or an address (IPv6 in brackets).
fn host_port(text: &str) -> Result<(), String> {
    let bad = || format!("invalid server {text:?}: expected host:port, e.g. \"127.0.0.1:6379\"");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(())
}

/// A server reached over a Unix socket: `unix:/path`, and for ketama `unix:/path[:weight]
/// [name]` (its ring points derive from the path, as twemproxy names a socket server).
fn unix_server(text: &str, kind: UpstreamKind) -> Result<Server, String> {
    if kind == UpstreamKind::Cluster {
        return Err(format!(
            "invalid server {text:?}: a cluster's nodes announce TCP addresses; give host:port"
        ));
    }
    let bad = || {
        format!("invalid server {text:?}: expected unix:/absolute/path (ketama: unix:/path[:weight] [name])")
    };
    let mut words = text.split_whitespace();
    let address = words.next().ok_or_else(bad)?;
    let name = words.next();
    if words.next().is_some() || (name.is_some() && kind != UpstreamKind::Ketama) {
        return Err(bad());
    }
    let path = &address["unix:".len()..];
    let (path, weight) = match path.rsplit_once(':') {
        Some((path, weight)) if kind == UpstreamKind::Ketama && !weight.contains('/') => {
            (path, weight.parse::<u32>().map_err(|_| bad())?)
        }
        _ => (path, 1),
    };
    if !path.starts_with('/') || path.len() < 2 || weight == 0 {
        return Err(bad());
    }
    Ok(Server {
        addr: format!("unix:{path}"),
        weight,
        name: name.unwrap_or(path).to_string(),
    })
}

/// Characters a prefix may not hold: glob metacharacters (they would let a tenant's KEYS or SCAN
/// pattern escape its prefix) and cluster hash-tag braces (they would change slot placement).
const PREFIX_FORBIDDEN: &[char] = &['{', '}', '*', '?', '[', ']', '\\'];

fn tenants(raw: &[TenantFile]) -> Result<Vec<Tenant>, (String, String)> {
    let mut out: Vec<Tenant> = Vec::new();
    let mut names = std::collections::HashSet::with_capacity(raw.len());
    for (i, t) in raw.iter().enumerate() {
        let at = |field: &str| format!("tenants[{i}].{field}");
        if t.name.is_empty() || t.name.chars().any(|c| !c.is_ascii_graphic()) {
            return Err((
                at("name"),
                format!("{:?} must be printable, without spaces", t.name),
            ));
        }
        if !names.insert(t.name.as_str()) {
            return Err((at("name"), format!("{:?} is used twice", t.name)));
        }
        let password_sha256 = match (&t.password, &t.password_sha256) {
            (Some(p), None) if !p.is_empty() => Some(Sha256::digest(p.as_bytes()).into()),
            (None, Some(hex)) => Some(parse_sha256(hex).ok_or_else(|| {
                (
                    at("password_sha256"),
                    "must be 64 hexadecimal digits".to_string(),
                )
            })?),
            (None, None) if t.client_cert_cn.is_some() || t.client_cert_san.is_some() => None,
            (Some(_), Some(_)) => {
                return Err((
                    at("password"),
                    "give password or password_sha256, not both".into(),
                ))
            }
            _ => {
                return Err((
                    at("password"),
                    "a non-empty password or password_sha256 (or a client_cert_cn or client_cert_san) is required"
                        .into(),
                ))
            }
        };
        if t.prefix.is_empty()
            || t.prefix
                .chars()
                .any(|c| PREFIX_FORBIDDEN.contains(&c) || !c.is_ascii_graphic())
        {
            return Err((
                at("prefix"),
                format!("{:?} must be non-empty printable ASCII without spaces or any of {{ }} * ? [ ] \\", t.prefix),
            ));
        }
        let allow_commands = match &t.allow_commands {
            Some(list) => Some(command_list(list).map_err(|r| (at("allow_commands"), r))?),
            None => None,
        };
        let deny_commands = command_list(&t.deny_commands).map_err(|r| (at("deny_commands"), r))?;
        let deny_categories =
            category_list(&t.deny_categories).map_err(|r| (at("deny_categories"), r))?;
        if t.max_connections == Some(0) {
            return Err((
                at("max_connections"),
                "must be at least 1 (omit it for no limit)".into(),
            ));
        }
        if t.max_memory == Some(0) || t.max_keys == Some(0) {
            let key = if t.max_keys == Some(0) {
                "max_keys"
            } else {
                "max_memory"
            };
            return Err((at(key), "must be at least 1 (omit it for no quota)".into()));
        }
        if t.max_ops_per_sec == Some(0) {
            return Err((
                at("max_ops_per_sec"),
                "must be at least 1 (omit it for no limit)".into(),
            ));
        }
        type Pick = fn(&Tenant) -> Option<&String>;
        let names: [(&str, &Option<String>, Pick); 2] = [
            ("client_cert_cn", &t.client_cert_cn, |o| {
                o.client_cert_cn.as_ref()
            }),
            ("client_cert_san", &t.client_cert_san, |o| {
                o.client_cert_san.as_ref()
            }),
        ];
        for (key, value, pick) in names {
            let Some(value) = value else { continue };
            if value.is_empty() {
                return Err((at(key), "must not be empty".into()));
            }
            if let Some(other) = out.iter().find(|o| pick(o) == Some(value)) {
                return Err((
                    at(key),
                    format!("{value:?} is tenant {:?}'s too", other.name),
                ));
            }
        }
        out.push(Tenant {
            name: t.name.clone(),
            password_sha256,
            client_cert_cn: t.client_cert_cn.clone(),
            client_cert_san: t.client_cert_san.clone(),
            prefix: t.prefix.clone(),
            allow_commands,
            deny_commands,
            deny_categories,
            max_connections: t.max_connections,
            max_ops_per_sec: t.max_ops_per_sec,
            max_memory: t.max_memory.map(|n| n as u64),
            max_keys: t.max_keys,
            allow_scripts: t.allow_scripts,
            allow_from: cidrs(&t.allow_from, &at("allow_from"))?,
            database: match (t.isolation.as_deref(), t.database) {
                (None | Some("prefix"), None) => None,
                (Some("database"), Some(0)) => {
                    return Err((
                        at("database"),
                        "must be 1 or more: database 0 is shared by the tenants without one".into(),
                    ))
                }
                (Some("database"), Some(db)) => {
                    if let Some(other) = out.iter().find(|o| o.database == Some(db)) {
                        return Err((
                            at("database"),
                            format!("{db} is tenant {:?}'s too", other.name),
                        ));
                    }
                    Some(db)
                }
                (Some("database"), None) => {
                    return Err((at("database"), "isolation = \"database\" needs it".into()))
                }
                (None | Some("prefix"), Some(_)) => {
                    return Err((
                        at("database"),
                        "only applies with isolation = \"database\"".into(),
                    ))
                }
                (Some(other), _) => {
                    return Err((
                        at("isolation"),
                        format!("unknown isolation {other:?}; expected \"prefix\" or \"database\""),
                    ))
                }
            },
            upstream: t.upstream.clone(),
            backend_user: match (&t.backend_user, &t.backend_password) {
                (Some(user), Some(password)) => Some((user.clone(), password.clone())),
                (None, None) => None,
                (Some(_), None) => {
                    return Err((at("backend_password"), "backend_user needs it".into()))
                }
                (None, Some(_)) => {
                    return Err((at("backend_user"), "backend_password needs it".into()))
                }
            },
        });
    }
    nested_prefixes(&out)?;
    Ok(out)
}

/// No tenant's prefix may start another's, or their keys could collide. In sorted order a
/// prefix comes right before the prefixes it starts (everything between them starts with it
/// too), so neighbours are all that need comparing: n log n for any number of tenants.
fn nested_prefixes(tenants: &[Tenant]) -> Result<(), (String, String)> {
    let mut order: Vec<usize> = (0..tenants.len()).collect();
    order.sort_by(|&a, &b| tenants[a].prefix.cmp(&tenants[b].prefix));
    for pair in order.windows(2) {
        let (a, b) = (&tenants[pair[0]], &tenants[pair[1]]);
        if b.prefix.starts_with(&a.prefix) {
            // Name the one that comes later in the file, as the check before the sort did.
            let (i, first, second) = if pair[0] < pair[1] {
                (pair[1], a, b)
            } else {
                (pair[0], b, a)
            };
            return Err((
                format!("tenants[{i}].prefix"),
                format!(
                    "{:?} and tenant {:?}'s {:?}: one is a prefix of the other, so their keys could collide",
                    second.prefix, first.name, first.prefix
                ),
            ));
        }
    }
    Ok(())
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Command names as Redis knows them (`get`, `client|kill`), lower-cased; unknown names refused.
fn command_list(names: &[String]) -> Result<Vec<String>, String> {
    names
        .iter()
        .map(|name| {
            let lower = name.to_ascii_lowercase().replace(' ', "|");
            match crate::command::lookup(lower.as_bytes()) {
                Some(_) => Ok(lower),
                None => Err(format!("unknown command {name:?}")),
            }
        })
        .collect()
}

/// ACL categories as Redis writes them (`"@dangerous"`), kept without the `@`. Any name is
/// accepted (modules add categories of their own), but it must look like one.
fn category_list(names: &[String]) -> Result<Vec<String>, String> {
    names
        .iter()
        .map(|name| {
            let bare = name.strip_prefix('@').ok_or_else(|| {
                format!(
                    "{name:?} is not an ACL category: write it as Redis does, e.g. \"@dangerous\""
                )
            })?;
            if bare.is_empty()
                || !bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(format!("{name:?} is not an ACL category name"));
            }
            Ok(bare.to_ascii_lowercase())
        })
        .collect()
}

/// A ketama server as twemproxy writes it: `host:port[:weight] [name]`.
fn ketama_server(text: &str) -> Result<Server, String> {
    let bad = || {
        format!("invalid server {text:?}: expected host:port[:weight] [name], e.g. \"127.0.0.1:6379:1 cache1\"")
    };
    let mut words = text.split_whitespace();
    let address = words.next().ok_or_else(bad)?;
    let name = words.next();
    if words.next().is_some() {
        return Err(bad());
    }
    let fields: Vec<&str> = address.split(':').collect();
    let (host, port, weight) = match fields.as_slice() {
        [host, port] => (*host, *port, 1),
        [host, port, weight] => (*host, *port, weight.parse::<u32>().map_err(|_| bad())?),
        _ => return Err(bad()),
    };
    let addr = format!("{host}:{port}");
    host_port(&addr).map_err(|_| bad())?;
    if weight == 0 {
        return Err(format!(
            "invalid server {text:?}: the weight must be at least 1"
        ));
    }
    let name = match name {
        Some(name) => name.to_string(),
        None if port == "11211" => host.to_string(),
        None => addr.clone(),
    };
    Ok(Server { addr, weight, name })
}

fn positive(n: usize, max: usize) -> Result<(), String> {
    if n == 0 || n > max {
        return Err(format!("must be between 1 and {max}, got {n}"));
    }
    Ok(())
}

fn nonzero_duration(d: Duration) -> Result<(), String> {
    if d.is_zero() {
        return Err("must be longer than 0s".into());
    }
    Ok(())
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
