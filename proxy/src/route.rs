//! Routes: which cluster and filter chain a request gets, by host and path prefix.
//! The first matching route wins; the listener's own cluster and chain catch the rest.

use std::sync::Arc;
use std::time::Duration;

use crate::chain::Chain;
use crate::upstream::Cluster;

/// What a matched request is sent to.
#[derive(Clone)]
pub struct Target {
    pub cluster: Option<Arc<Cluster>>,
    pub chain: Option<Arc<Chain>>,
    /// The route's own request timeout (zero: none), overriding the cluster's.
    pub timeout: Option<Duration>,
}

pub enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

impl HostMatch {
    pub fn parse(pattern: &str) -> Self {
        let p = pattern.to_ascii_lowercase();
        match p.strip_prefix('*') {
            Some(suffix) => HostMatch::Suffix(suffix.to_string()),
            None => HostMatch::Exact(p),
        }
    }

    /// `host` is lower case without a port.
    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => h == host,
            HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

pub struct Route {
    pub host: Option<HostMatch>,
    pub path_prefix: Option<String>,
    pub target: Target,
}

pub struct RouteTable {
    pub routes: Vec<Route>,
    pub fallback: Option<Target>,
}

impl RouteTable {
    /// The target for a request to `authority` (as sent, possibly with a port and in
    /// any case; read the first time a route matches on the host, if ever) and `path`.
    pub fn find<'a>(
        &self,
        authority: impl FnOnce() -> Option<&'a str>,
        path: &str,
    ) -> Option<&Target> {
        let mut authority = Some(authority);
        let mut host = None;
        self.routes
            .iter()
            .find(|r| {
                r.host.as_ref().is_none_or(|m| {
                    let host = host.get_or_insert_with(|| {
                        authority.take().and_then(|read| read()).map(host_of)
                    });
                    host.as_deref().is_some_and(|h| m.matches(h))
                }) && r.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
            })
            .map(|r| &r.target)
            .or(self.fallback.as_ref())
    }
}

/// The host of an authority, lower case, without port, IPv6 brackets or the
/// trailing dot of a fully qualified name (`api.example.com.` is `api.example.com`,
/// and must match its routes: the upstream will take it for that name).
pub fn host_of(authority: &str) -> std::borrow::Cow<'_, str> {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        host.to_ascii_lowercase().into()
    } else {
        host.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(timeout_ms: u64) -> Target {
        Target {
            cluster: None,
            chain: None,
            timeout: Some(Duration::from_millis(timeout_ms)),
        }
    }

    fn table() -> RouteTable {
        RouteTable {
            routes: vec![
                Route {
                    host: Some(HostMatch::parse("api.example.com")),
                    path_prefix: Some("/v1".into()),
                    target: target(1),
                },
                Route {
                    host: Some(HostMatch::parse("*.example.com")),
                    path_prefix: None,
                    target: target(2),
                },
                Route {
                    host: None,
                    path_prefix: Some("/static".into()),
                    target: target(3),
                },
            ],
            fallback: Some(target(4)),
        }
    }

    fn which(t: &RouteTable, authority: Option<&str>, path: &str) -> u128 {
        t.find(|| authority, path)
            .and_then(|t| t.timeout)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    }

    #[test]
    fn first_match_wins_then_fallback() {
        let t = table();
        assert_eq!(which(&t, Some("api.example.com"), "/v1/items"), 1);
        assert_eq!(which(&t, Some("API.Example.com:8443"), "/v1"), 1);
        assert_eq!(which(&t, Some("api.example.com."), "/v1"), 1);
        assert_eq!(which(&t, Some("api.example.com"), "/v2"), 2);
        assert_eq!(which(&t, Some("www.example.com"), "/static/x"), 2);
        assert_eq!(which(&t, Some("example.com"), "/static/x"), 3);
        assert_eq!(which(&t, None, "/other"), 4);
    }

    #[test]
    fn hosts_are_compared_in_one_form() {
        assert_eq!(host_of("[::1]:8080"), "::1");
        assert_eq!(host_of("Example.COM"), "example.com");
        assert_eq!(host_of("api.example.com.:8443"), "api.example.com");
        assert_eq!(host_of("API.example.com."), "api.example.com");
    }
}
