//! The config file as serde reads it. Every field is documented in `docs/config.md`
//! with its default; keep the two in step.
//!
//! These structs are plain data: `validate` checks them once and the runtime builds
//! its snapshot from them. They are `Serialize` so `GET /config` can show the
//! effective config (defaults filled in, secrets redacted).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::units::{Bytes, Dur};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    #[serde(default)]
    pub filters: Vec<FilterConfig>,
    #[serde(default)]
    pub chains: Vec<ChainConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Whether the admin endpoints run at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Where the admin endpoints listen; loopback by default.
    #[serde(default = "default_admin_address")]
    pub address: SocketAddr,
}

fn default_admin_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

impl AdminConfig {
    /// The address to serve on, if the admin endpoints are on.
    pub fn listen(&self) -> Option<SocketAddr> {
        self.enabled.then_some(self.address)
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            address: default_admin_address(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads; 0 means one per available core.
    #[serde(default)]
    pub workers: usize,
    /// How long in-flight requests may run after SIGTERM before the proxy exits.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Dur,
    /// How long, after SIGTERM and before listeners stop accepting, the proxy goes
    /// on serving while it tells its clients to go elsewhere (`/ready` 503,
    /// connections closed after their requests).
    #[serde(default)]
    pub shutdown_delay: Dur,
    /// Reload when the config file changes on disk.
    #[serde(default = "yes")]
    pub watch_config: bool,
    /// Where compiled filter modules are cached; `None` (the default when `HOME` is
    /// not set) keeps them in memory only.
    #[serde(default = "default_cache_dir")]
    pub module_cache: Option<PathBuf>,
    /// Filter instances that may exist at once, across all filters (the pooling
    /// allocator reserves address space for each).
    #[serde(default = "default_filter_instances")]
    pub filter_instances: u32,
}

impl RuntimeConfig {
    /// The fields read only when the process starts (the worker threads, the filter
    /// engine) that differ between `self`, the config started with, and `next`.
    pub fn start_only_changes(&self, next: &RuntimeConfig) -> Vec<&'static str> {
        // Destructured so that a new field cannot be added without deciding here
        // whether a reload applies it.
        let RuntimeConfig {
            workers,
            shutdown_timeout: _,
            shutdown_delay: _,
            watch_config: _,
            module_cache,
            filter_instances,
        } = self;
        let mut changed = Vec::new();
        if *workers != next.workers {
            changed.push("runtime.workers");
        }
        if *module_cache != next.module_cache {
            changed.push("runtime.module_cache");
        }
        if *filter_instances != next.filter_instances {
            changed.push("runtime.filter_instances");
        }
        changed
    }
}

fn default_filter_instances() -> u32 {
    1000
}

fn default_shutdown_timeout() -> Dur {
    Dur::secs(30)
}

fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/weft/modules"))
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: 0,
            shutdown_timeout: default_shutdown_timeout(),
            shutdown_delay: Dur::default(),
            watch_config: true,
            module_cache: default_cache_dir(),
            filter_instances: default_filter_instances(),
        }
    }
}

fn yes() -> bool {
    true
}

// ---------------------------------------------------------------- listeners

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2 (prior knowledge, or ALPN under TLS) on the same port.
    #[default]
    Http,
    /// Bytes forwarded to the listener's cluster, unparsed.
    Tcp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Cluster for requests no route matches (and for every TCP connection).
    #[serde(default)]
    pub cluster: Option<String>,
    /// Filter chain for requests no route matches.
    #[serde(default)]
    pub chain: Option<String>,
    /// Tried in order; the first that matches decides the cluster and chain.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub tls: Option<ServerTlsConfig>,
    #[serde(default)]
    pub limits: ListenerLimits,
    #[serde(default)]
    pub forwarding: ForwardingConfig,
    /// Requests are routed, filtered and forwarded by their normalized path
    /// (`proxy/path.rs`).
    #[serde(default = "yes")]
    pub normalize_path: bool,
    /// With `normalize_path`, runs of slashes count as one (`//admin` is `/admin`).
    #[serde(default)]
    pub merge_slashes: bool,
    /// What becomes of percent-encoded slashes (`%2F`, `%5C`) in paths.
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
    /// Every connection starts with a PROXY protocol header (v1 or v2) from a load
    /// balancer in front, whose client address stands for the connection's.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// What a listener does with a path's percent-encoded slashes and backslashes
/// (`%2F`, `%5C`, either case). They are not delimiters to RFC 3986, so routes
/// see `/public%2F..%2Fadmin` as under `/public`; an upstream that decodes them
/// before resolving the path serves `/admin`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// Left encoded (RFC 3986's reading; Envoy's default).
    #[default]
    Keep,
    /// The request is refused with 400.
    Reject,
    /// Decoded (`/` and `\`) before the path is normalized, routed and forwarded.
    Decode,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Host to match: exact (`api.example.com`) or a leading wildcard (`*.example.com`).
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix to match, on segment boundaries is not required (`/api` matches `/apis`).
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub chain: Option<String>,
    /// Overrides the cluster's `request_timeout` for this route.
    #[serde(default)]
    pub timeout: Option<Dur>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// Certificates; the one whose `server_names` match the client's SNI is chosen,
    /// the first is the default.
    pub certificates: Vec<CertificateConfig>,
    /// Protocols offered by ALPN, in order of preference.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
    /// PEM file of CAs whose client certificates are accepted; set to require mTLS.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// A request's host must be the server name (SNI) of its connection's handshake,
    /// or it gets 421. Unset: on when `client_ca` is (see `strict_sni_host()`).
    #[serde(default)]
    pub strict_sni_host: Option<bool>,
}

impl ServerTlsConfig {
    /// Whether requests must name the host their connection's TLS session was made
    /// for. On by default with client certificates, as in Caddy: a client verified
    /// for one virtual host must not reach another by naming it in `Host`.
    pub fn strict_sni_host(&self) -> bool {
        self.strict_sni_host.unwrap_or(self.client_ca.is_some())
    }
}

fn default_alpn() -> Vec<String> {
    vec!["h2".into(), "http/1.1".into()]
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Host names this certificate serves; empty means "names in the certificate".
    #[serde(default)]
    pub server_names: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerLimits {
    /// Open downstream connections; further ones are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection.
    #[serde(default = "default_max_streams")]
    pub max_concurrent_streams: u32,
    /// Bytes of request head (request line and headers); beyond it 431. At least 8KiB.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: Bytes,
    /// Number of HTTP/1.1 request headers; beyond it 431. (HTTP/2 header lists are
    /// bounded by `max_header_bytes`.)
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Time allowed to receive a request's headers (slowloris protection); beyond it the connection closes.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Dur,
    /// A connection with no request in flight for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// Time allowed for a TLS handshake.
    #[serde(default = "default_handshake_timeout")]
    pub tls_handshake_timeout: Dur,
    /// Bytes of a request body; beyond it 413 (nginx's `client_max_body_size`). 0: no limit.
    #[serde(default)]
    pub max_request_body: Bytes,
    /// A connection older than this is closed gracefully (HTTP/2 GOAWAY, HTTP/1.1
    /// `Connection: close` on its next response), so that clients that keep one
    /// connection for ever spread again over replicas scaled out since. 0: never.
    #[serde(default)]
    pub max_connection_duration: Dur,
}

fn default_max_connections() -> usize {
    10_000
}
fn default_max_streams() -> u32 {
    256
}
fn default_max_header_bytes() -> Bytes {
    Bytes::kib(64)
}
fn default_max_headers() -> usize {
    100
}
fn default_header_read_timeout() -> Dur {
    Dur::secs(10)
}
fn default_idle_timeout() -> Dur {
    Dur::secs(300)
}
fn default_handshake_timeout() -> Dur {
    Dur::secs(10)
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: default_max_connections(),
            max_concurrent_streams: default_max_streams(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            tls_handshake_timeout: default_handshake_timeout(),
            max_request_body: Bytes::default(),
            max_connection_duration: Dur::default(),
        }
    }
}

/// What to do with a forwarding header the proxy adds to requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardMode {
    /// Add this hop to what the client sent (trusting the client's value).
    Append,
    /// Drop what the client sent and write only this hop (for edge proxies).
    Replace,
    /// Pass the client's value through untouched.
    Off,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardingConfig {
    /// `X-Forwarded-For`, plus `X-Forwarded-Proto` (set to this hop's scheme) when not `off`.
    #[serde(default = "append")]
    pub x_forwarded_for: ForwardMode,
    /// RFC 7239 `Forwarded`.
    #[serde(default = "off")]
    pub forwarded: ForwardMode,
    /// Pseudonym to add to `Via`; none adds no `Via`.
    #[serde(default)]
    pub via: Option<String>,
    /// `X-Request-ID` on requests to the upstream.
    #[serde(default)]
    pub request_id: RequestIdMode,
    /// Whether responses carry the request's `X-Request-ID` back to the client.
    #[serde(default)]
    pub request_id_in_response: bool,
}

/// Whether requests get an `X-Request-ID` (a random UUID), for the upstream's logs
/// and the access log to name a request alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestIdMode {
    /// Requests go with whatever the client sent.
    #[default]
    Off,
    /// A request without one gets one; the client's is kept (behind another proxy).
    Generate,
    /// Every request gets a new one in place of the client's (at the edge).
    Replace,
}

fn append() -> ForwardMode {
    ForwardMode::Append
}
fn off() -> ForwardMode {
    ForwardMode::Off
}

impl Default for ForwardingConfig {
    fn default() -> Self {
        ForwardingConfig {
            x_forwarded_for: append(),
            forwarded: off(),
            via: None,
            request_id: RequestIdMode::Off,
            request_id_in_response: false,
        }
    }
}

// ---------------------------------------------------------------- clusters

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1, or HTTP/2 when the client speaks it and the upstream offers it
    /// (ALPN under TLS; a prior-knowledge probe in clear text).
    #[default]
    Auto,
    Http1,
    /// HTTP/2 only (prior knowledge in clear text: what gRPC servers speak).
    Http2,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancePolicy {
    #[default]
    RoundRobin,
    /// Power of two choices weighted by outstanding requests and latency (peak EWMA).
    LeastRequest,
    /// Ring hash on a request header (or the key a filter sets).
    ConsistentHash,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalanceConfig {
    #[serde(default)]
    pub policy: BalancePolicy,
    /// For `consistent_hash`: the header whose value is hashed.
    #[serde(default)]
    pub hash_header: Option<String>,
    /// For `least_request`: how fast the latency average forgets.
    #[serde(default = "default_ewma_decay")]
    pub ewma_decay: Dur,
}

fn default_ewma_decay() -> Dur {
    Dur::secs(10)
}

// Written out, not derived: a derived `Default` would give `ewma_decay` zero when
// the `[balance]` table is absent, instead of the documented default.
impl Default for BalanceConfig {
    fn default() -> Self {
        BalanceConfig {
            policy: BalancePolicy::default(),
            hash_header: None,
            ewma_decay: default_ewma_decay(),
        }
    }
}

/// An endpoint as written: `"host:port"`, or a table `{ address = "host:port", weight = 3 }`.
/// Read by hand rather than as a serde `untagged` enum, which would ignore unknown
/// fields of the table and, for any mistake, say only that nothing matched.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EndpointConfig {
    /// `"10.0.0.1:8080"` or `"backend.internal:8080"` (resolved, and re-resolved every `dns_refresh`).
    Address(String),
    Detailed {
        address: String,
        /// Its share of the cluster's traffic relative to the others' (1 when absent);
        /// every address a name resolves to has it.
        #[serde(skip_serializing_if = "Option::is_none")]
        weight: Option<u32>,
    },
}

/// The heaviest an endpoint may weigh: shares from 0.1% to 99.9% between two endpoints.
pub const MAX_ENDPOINT_WEIGHT: u32 = 1000;

impl<'de> Deserialize<'de> for EndpointConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The table form, with the same unknown-field errors as every other table.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Detailed {
            address: String,
            weight: Option<u32>,
        }

        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = EndpointConfig;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an endpoint: \"host:port\" or { address = \"host:port\", weight = N }")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(EndpointConfig::Address(v.to_string()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let Detailed { address, weight } =
                    Detailed::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(EndpointConfig::Detailed { address, weight })
            }
        }

        d.deserialize_any(Visitor)
    }
}

impl EndpointConfig {
    pub fn address(&self) -> &str {
        match self {
            EndpointConfig::Address(a) | EndpointConfig::Detailed { address: a, .. } => a,
        }
    }

    /// The weight as written, 1 when absent (validation keeps it within 1..=1000).
    pub fn weight(&self) -> u32 {
        match self {
            EndpointConfig::Detailed {
                weight: Some(w), ..
            } => *w,
            _ => 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: String,
    pub endpoints: Vec<EndpointConfig>,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Connect with TLS.
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
    #[serde(default)]
    pub balance: BalanceConfig,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// From the proxy receiving the request (connecting included) to the last byte of
    /// the response; `"0s"` for none (long-lived streams). Routes may override it.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Dur,
    /// gRPC calls' own deadlines (`grpc-timeout`) replace `request_timeout`, capped
    /// at this (`"0s"`: uncapped); absent, the header is passed on and not enforced.
    #[serde(default)]
    pub grpc_timeout_max: Option<Dur>,
    /// Taken off a gRPC call's own deadline (with `grpc_timeout_max`), so that the
    /// proxy, and the upstream it tells, give up before the client does.
    #[serde(default)]
    pub grpc_timeout_offset: Dur,
    /// Requests in flight to the cluster at once, over all workers and endpoints
    /// (Envoy's `max_requests` circuit breaker); beyond it a request gets 503.
    /// 0 for no limit.
    #[serde(default)]
    pub max_requests: usize,
    /// Other endpoints a request tries, one after another, when no connection to the
    /// one chosen could be made (nothing was sent, so any request may go again).
    #[serde(default = "default_connect_retries")]
    pub connect_retries: u32,
    /// A request or response body, or an upgraded or `CONNECT` tunnel, that moves no
    /// byte for this long is aborted (a stalled upload gets 408); `"0s"` for none.
    #[serde(default = "default_stream_idle_timeout")]
    pub idle_timeout: Dur,
    /// How often DNS names among the endpoints are resolved again.
    #[serde(default = "default_dns_refresh")]
    pub dns_refresh: Dur,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default)]
    pub outlier: OutlierConfig,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Every connection to the endpoints begins with a PROXY protocol header of this
    /// version: the client's address for a tcp listener's connection or a `CONNECT`
    /// tunnel, none for connections shared by many clients' requests.
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// The host requests name to the endpoints.
    #[serde(default)]
    pub host_header: HostHeader,
}

/// What `Host` (HTTP/1.1) or `:authority` (HTTP/2) a cluster's requests carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostHeader {
    /// The client's, as it sent it (a mesh's services, virtual hosts behind the proxy).
    #[default]
    Keep,
    /// The endpoint's host as configured, with its port unless the scheme's default
    /// (an upstream that serves its own name: a SaaS API, a CDN, a bucket); the
    /// client's goes in `X-Forwarded-Host`.
    Endpoint,
}

/// The PROXY protocol's text (`v1`) or binary (`v2`) header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocolVersion {
    V1,
    V2,
}

fn default_connect_timeout() -> Dur {
    Dur::secs(2)
}
fn default_request_timeout() -> Dur {
    Dur::secs(15)
}
fn default_connect_retries() -> u32 {
    2
}
fn default_stream_idle_timeout() -> Dur {
    Dur::secs(300)
}
fn default_dns_refresh() -> Dur {
    Dur::secs(30)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// Name to send as SNI and to verify; defaults to the endpoint's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM file of trusted CAs; the system's roots when absent.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate and key for mTLS.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Idle HTTP/1.1 connections kept per endpoint and worker.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_endpoint: usize,
    /// Connections per endpoint (HTTP/1.1: one per request in flight); 0 for no limit.
    /// A request that finds the limit reached waits for a connection to come free.
    #[serde(default)]
    pub max_connections_per_endpoint: usize,
    /// Requests that may wait at the connection limit, per endpoint (each for at most
    /// the cluster's `connect_timeout`); beyond them, or with 0, a request gets 503.
    #[serde(default = "default_max_pending")]
    pub max_pending_per_endpoint: usize,
    /// Requests at a time on one HTTP/2 connection before the worker opens another
    /// (within `max_connections_per_endpoint`); 0: one connection per worker.
    #[serde(default = "default_streams_per_connection")]
    pub max_streams_per_connection: usize,
    /// Requests one connection carries before it is closed (0: no limit).
    #[serde(default)]
    pub max_requests_per_connection: u64,
    /// Idle connections are closed after this long.
    #[serde(default = "default_pool_idle")]
    pub idle_timeout: Dur,
}

fn default_max_idle() -> usize {
    128
}
fn default_max_pending() -> usize {
    1024
}
/// The least `SETTINGS_MAX_CONCURRENT_STREAMS` RFC 9113 (§6.5.2) recommends a server
/// allow, and what many gRPC servers do.
fn default_streams_per_connection() -> usize {
    100
}
fn default_pool_idle() -> Dur {
    Dur::secs(90)
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_idle_per_endpoint: default_max_idle(),
            max_connections_per_endpoint: 0,
            max_pending_per_endpoint: default_max_pending(),
            max_streams_per_connection: default_streams_per_connection(),
            max_requests_per_connection: 0,
            idle_timeout: default_pool_idle(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Consecutive failures (connect errors, timeouts, 5xx with `count_5xx`) that
    /// eject an endpoint; 0 turns ejection off.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// Whether 5xx responses count as failures.
    #[serde(default = "yes")]
    pub count_5xx: bool,
    /// First ejection; each further ejection of the same endpoint doubles it.
    #[serde(default = "default_base_ejection")]
    pub base_ejection: Dur,
    #[serde(default = "default_max_ejection")]
    pub max_ejection: Dur,
    /// At most this share of a cluster's endpoints is ejected at once.
    #[serde(default = "default_max_ejected_percent")]
    pub max_ejected_percent: u8,
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_base_ejection() -> Dur {
    Dur::secs(30)
}
fn default_max_ejection() -> Dur {
    Dur::secs(300)
}
fn default_max_ejected_percent() -> u8 {
    50
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: default_consecutive_failures(),
            count_5xx: true,
            base_ejection: default_base_ejection(),
            max_ejection: default_max_ejection(),
            max_ejected_percent: default_max_ejected_percent(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// An HTTP GET (the default), or only opening a connection.
    #[serde(default)]
    pub protocol: HealthCheckProtocol,
    /// Path requested with GET; a 2xx or 3xx answer is healthy. HTTP checks only.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default = "default_hc_interval")]
    pub interval: Dur,
    #[serde(default = "default_hc_timeout")]
    pub timeout: Dur,
    /// Consecutive successes that make an unhealthy endpoint healthy again.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures that make an endpoint unhealthy.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

/// What an active health check does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckProtocol {
    /// GET `path`; a 2xx or 3xx answer is healthy.
    #[default]
    Http,
    /// A connection opened (and its TLS handshake done, when the cluster has `tls`)
    /// is healthy; nothing is sent (for endpoints that speak no HTTP: a tcp listener's).
    Tcp,
}

fn default_hc_interval() -> Dur {
    Dur::secs(5)
}
fn default_hc_timeout() -> Dur {
    Dur::secs(1)
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}

// ---------------------------------------------------------------- filters and chains

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// A failing filter fails its request: 500 (503 when it cannot be run at all).
    #[default]
    Closed,
    /// A failing filter is skipped for that request.
    Open,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    pub name: String,
    /// Path of the compiled component (`.wasm`), relative to the config file.
    pub module: PathBuf,
    /// Handed to the filter's `configure` as JSON.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    #[serde(default)]
    pub failure: FailurePolicy,
    #[serde(default)]
    pub limits: FilterLimits,
    #[serde(default)]
    pub grants: FilterGrants,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterLimits {
    /// Linear memory of one instance.
    #[serde(default = "default_filter_memory")]
    pub memory: Bytes,
    /// CPU time one call into the filter may take.
    #[serde(default = "default_filter_cpu")]
    pub cpu_time: Dur,
    /// Bytes of header names and values the filter may write per request.
    #[serde(default = "default_filter_header_bytes")]
    pub header_bytes: Bytes,
    /// Size of a local response body or a buffered body.
    #[serde(default = "default_filter_body_bytes")]
    pub body_bytes: Bytes,
    /// Request body kept for a retry the filter asks for.
    #[serde(default = "default_retry_buffer")]
    pub retry_buffer: Bytes,
    /// Outbound calls one request may make.
    #[serde(default = "default_outbound_calls")]
    pub outbound_calls: u32,
    /// Requests one instance serves before it is replaced by a fresh one (1: a fresh
    /// instance for every request).
    #[serde(default = "default_instance_reuse")]
    pub instance_reuse: u32,
    /// Entries in the filter's shared key-value store.
    #[serde(default = "default_shared_entries")]
    pub shared_entries: usize,
    /// Label sets each of the filter's metrics may have.
    #[serde(default = "default_metric_series")]
    pub metric_series: usize,
}

fn default_filter_memory() -> Bytes {
    Bytes::mib(16)
}
fn default_filter_cpu() -> Dur {
    Dur::millis(50)
}
fn default_filter_header_bytes() -> Bytes {
    Bytes::kib(64)
}
fn default_filter_body_bytes() -> Bytes {
    Bytes::mib(1)
}
fn default_retry_buffer() -> Bytes {
    Bytes::kib(64)
}
fn default_outbound_calls() -> u32 {
    8
}
fn default_instance_reuse() -> u32 {
    10_000
}
fn default_shared_entries() -> usize {
    10_000
}
fn default_metric_series() -> usize {
    1_000
}

impl Default for FilterLimits {
    fn default() -> Self {
        FilterLimits {
            memory: default_filter_memory(),
            cpu_time: default_filter_cpu(),
            header_bytes: default_filter_header_bytes(),
            body_bytes: default_filter_body_bytes(),
            retry_buffer: default_retry_buffer(),
            outbound_calls: default_outbound_calls(),
            instance_reuse: default_instance_reuse(),
            shared_entries: default_shared_entries(),
            metric_series: default_metric_series(),
        }
    }
}

/// Capabilities beyond the default of none.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterGrants {
    /// Environment variables the filter sees.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Host directories the filter may read, mounted at the same path inside it.
    #[serde(default)]
    pub read_dirs: Vec<PathBuf>,
    /// Let the filter write to the proxy's stderr.
    #[serde(default)]
    pub stderr: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    pub name: String,
    /// Filter names, run in this order for requests and in reverse for responses.
    pub filters: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table left out of the file (`#[serde(default)]`, which uses `Default`) must
    /// mean the same as an empty one (which uses the per-field serde defaults).
    fn absent_equals_empty<T>()
    where
        T: Default + PartialEq + std::fmt::Debug + serde::de::DeserializeOwned,
    {
        let empty: T = toml::from_str("").expect("an empty table parses");
        assert_eq!(T::default(), empty, "{}", std::any::type_name::<T>());
    }

    #[test]
    fn start_only_changes_name_each_field_a_reload_cannot_apply() {
        let started = RuntimeConfig::default();
        let mut next = started.clone();
        next.shutdown_timeout = Dur::secs(1);
        next.watch_config = false;
        assert!(
            started.start_only_changes(&next).is_empty(),
            "reloads apply these"
        );
        next.workers = 3;
        next.module_cache = Some(PathBuf::from("/elsewhere"));
        next.filter_instances = 7;
        assert_eq!(
            started.start_only_changes(&next),
            [
                "runtime.workers",
                "runtime.module_cache",
                "runtime.filter_instances"
            ]
        );
    }

    #[test]
    fn defaults_of_absent_tables_match_the_documented_ones() {
        absent_equals_empty::<AdminConfig>();
        absent_equals_empty::<RuntimeConfig>();
        absent_equals_empty::<ListenerLimits>();
        absent_equals_empty::<ForwardingConfig>();
        absent_equals_empty::<BalanceConfig>();
        absent_equals_empty::<PoolConfig>();
        absent_equals_empty::<OutlierConfig>();
        absent_equals_empty::<FilterLimits>();
        absent_equals_empty::<FilterGrants>();
        absent_equals_empty::<Config>();
        assert_eq!(BalanceConfig::default().ewma_decay, Dur::secs(10));
    }
}
