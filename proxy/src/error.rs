//! Why a request failed, as data: who is to blame, which status the client gets, and
//! whether sending the request again could help. The message is for logs; the
//! status and kind are what code looks at.

use http::StatusCode;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Who caused a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The client: a malformed or oversized request, or it went away.
    Downstream,
    /// The upstream: refused, reset, answered badly, or too slowly.
    Upstream,
    /// The proxy's own config or a filter.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches the request")]
    NoRoute,
    #[error("no cluster chosen: the route names none and no filter routed the request")]
    NoCluster,
    #[error("unknown cluster {0:?}")]
    UnknownCluster(String),
    #[error("no healthy endpoint in cluster {0:?}")]
    NoHealthyEndpoint(String),
    #[error("connection limit reached for {0}")]
    PoolExhausted(std::net::SocketAddr),
    #[error("cluster {0:?} has its max_requests in flight")]
    Overflow(std::sync::Arc<str>),
    #[error("connecting to {addr} failed: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {0} timed out")]
    ConnectTimeout(std::net::SocketAddr),
    #[error("TLS handshake with {addr} failed: {source}")]
    UpstreamTls {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        addr: std::net::SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("upstream {addr} failed: {source}")]
    Upstream {
        addr: std::net::SocketAddr,
        #[source]
        source: hyper::Error,
    },
    /// The upstream turned the request away unprocessed: its HTTP/2 stream was above
    /// the last one a GOAWAY let through (a server shutting down), or reset with
    /// REFUSED_STREAM (RFC 9113 §8.7).
    #[error("upstream {addr} refused the request unprocessed: {source}")]
    UpstreamRefused {
        addr: std::net::SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("upstream timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("request body: {0}")]
    DownstreamBody(String),
    #[error("the client stopped sending its request body")]
    ClientTimeout,
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// A request the proxy will not forward as it is (its Host, see
    /// `proxy::headers::check_host`; its path, see `proxy::path`): the reason is the
    /// client's answer and the access log's `error`.
    #[error("{0}")]
    Refused(&'static str),
    /// The request names a host its connection's TLS session was not made for
    /// (`strict_sni_host`); the client may try again on a new connection.
    #[error("the request's host is not the TLS server name of its connection")]
    Misdirected,
    #[error("request header list of {size} bytes is over the limit of {limit}")]
    HeadersTooLarge { size: usize, limit: usize },
    #[error("filter {filter:?} failed: {reason}")]
    Filter {
        filter: String,
        reason: String,
        status: StatusCode,
    },
    #[error("response body larger than {0} bytes for a filter that buffers it")]
    ResponseTooLarge(usize),
    #[error("the upstream switched protocols without a valid handshake: {0}")]
    BadUpgrade(&'static str),
    #[error("upstream {0} does not accept extended CONNECT (its HTTP/2 settings do not enable it), so upgrades cannot reach it")]
    NoExtendedConnect(std::net::SocketAddr),
}

impl ProxyError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        use ProxyError::*;
        match self {
            NoRoute => StatusCode::NOT_FOUND,
            NoCluster
            | UnknownCluster(_)
            | NoHealthyEndpoint(_)
            | PoolExhausted(_)
            | Overflow(_)
            | UpstreamRefused { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Connect { .. }
            | UpstreamTls { .. }
            | Handshake { .. }
            | Upstream { .. }
            | BadUpgrade(_)
            | NoExtendedConnect(_)
            | ResponseTooLarge(_) => StatusCode::BAD_GATEWAY,
            ConnectTimeout(_) | Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            DownstreamBody(_) | BadRequest(_) | Refused(_) => StatusCode::BAD_REQUEST,
            Misdirected => StatusCode::MISDIRECTED_REQUEST,
            ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Filter { status, .. } => *status,
        }
    }

    pub fn blame(&self) -> Blame {
        use ProxyError::*;
        match self {
            NoRoute | NoCluster | UnknownCluster(_) | Filter { .. } => Blame::Internal,
            DownstreamBody(_)
            | BodyTooLarge(_)
            | BadRequest(_)
            | Refused(_)
            | Misdirected
            | HeadersTooLarge { .. }
            | ClientTimeout => Blame::Downstream,
            _ => Blame::Upstream,
        }
    }

    /// A short reason for access logs and the completion hook.
    pub fn kind(&self) -> &'static str {
        use ProxyError::*;
        match self {
            NoRoute => "no route",
            NoCluster => "no cluster",
            UnknownCluster(_) => "unknown cluster",
            NoHealthyEndpoint(_) => "no healthy endpoint",
            PoolExhausted(_) => "connection limit",
            Overflow(_) => "upstream overflow",
            Connect { .. } => "upstream connect error",
            ConnectTimeout(_) => "upstream connect timeout",
            UpstreamTls { .. } => "upstream tls error",
            Handshake { .. } => "upstream handshake error",
            Upstream { .. } => "upstream error",
            UpstreamRefused { .. } => "upstream refused the request",
            Timeout(_) => "upstream timeout",
            DownstreamBody(_) => "request body error",
            BodyTooLarge(_) => "request body too large",
            ClientTimeout => "request body idle timeout",
            BadRequest(_) => "bad request",
            Refused(why) => why,
            Misdirected => "host does not match the TLS server name",
            HeadersTooLarge { .. } => "request headers too large",
            Filter { .. } => "filter failure",
            ResponseTooLarge(_) => "response too large",
            BadUpgrade(_) => "upstream bad upgrade",
            NoExtendedConnect(_) => "upstream refuses extended connect",
        }
    }

    /// Whether the request failed to reach the endpoint at all (no connection could be
    /// made or set up), so that it can go to another one as it is.
    pub fn is_connect_failure(&self) -> bool {
        use ProxyError::*;
        matches!(
            self,
            Connect { .. } | ConnectTimeout(_) | UpstreamTls { .. } | Handshake { .. }
        )
    }

    /// Whether an endpoint should be charged with this failure by outlier detection.
    pub fn counts_against_endpoint(&self) -> bool {
        use ProxyError::*;
        matches!(
            self,
            Connect { .. }
                | ConnectTimeout(_)
                | UpstreamTls { .. }
                | Handshake { .. }
                | Upstream { .. }
                | Timeout(_)
        )
    }
}
