//! Checks a parsed config once, so nothing after it re-checks names or references.
//! Files (certificates, modules) are read when the runtime is built, with the same
//! field paths in their errors.

use std::collections::HashSet;

use http::HeaderName;

use super::model::*;
use super::Problem;

pub(super) fn check(config: &Config) -> Vec<Problem> {
    let mut v = Checker::default();
    let clusters = v.unique_names("clusters", config.clusters.iter().map(|c| c.name.as_str()));
    let filters = v.unique_names("filters", config.filters.iter().map(|f| f.name.as_str()));
    let chains = v.unique_names("chains", config.chains.iter().map(|c| c.name.as_str()));
    v.unique_names(
        "listeners",
        config.listeners.iter().map(|l| l.name.as_str()),
    );

    let mut addresses = HashSet::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let at = format!("listeners[{i}]");
        // Port 0 asks the kernel for a free port: such listeners never collide.
        if l.address.port() != 0 && !addresses.insert(l.address) {
            v.problem(
                format!("{at}.address"),
                format!("{} is used by another listener", l.address),
            );
        }
        v.reference(
            &format!("{at}.cluster"),
            l.cluster.as_deref(),
            &clusters,
            "cluster",
        );
        v.reference(&format!("{at}.chain"), l.chain.as_deref(), &chains, "chain");
        match l.protocol {
            ListenerProtocol::Tcp => {
                if l.cluster.is_none() {
                    v.problem(format!("{at}.cluster"), "a tcp listener needs a cluster");
                }
                if !l.routes.is_empty() || l.chain.is_some() {
                    v.problem(
                        at.clone(),
                        "a tcp listener forwards bytes: it takes no routes and no chain",
                    );
                }
            }
            ListenerProtocol::Http => {
                if l.cluster.is_none() && l.chain.is_none() && l.routes.is_empty() {
                    v.problem(
                        at.clone(),
                        "a listener needs a cluster, a chain that routes, or routes",
                    );
                }
            }
        }
        for (j, r) in l.routes.iter().enumerate() {
            let rat = format!("{at}.routes[{j}]");
            v.reference(
                &format!("{rat}.cluster"),
                r.cluster.as_deref(),
                &clusters,
                "cluster",
            );
            v.reference(
                &format!("{rat}.chain"),
                r.chain.as_deref(),
                &chains,
                "chain",
            );
            if r.cluster.is_none() && r.chain.is_none() && l.cluster.is_none() {
                v.problem(
                    rat.clone(),
                    "a route needs a cluster (its own or the listener's) or a chain that routes",
                );
            }
            if let Some(p) = &r.path_prefix {
                if !p.starts_with('/') {
                    v.problem(
                        format!("{rat}.path_prefix"),
                        format!("{p:?} must start with '/'"),
                    );
                }
            }
            if let Some(h) = &r.host {
                let bare = h.strip_prefix("*.").unwrap_or(h);
                if bare.is_empty() || bare.contains(['/', ' ', '*']) {
                    v.problem(
                        format!("{rat}.host"),
                        format!(
                            "{h:?} is not a host name or a leading wildcard like \"*.example.com\""
                        ),
                    );
                }
            }
        }
        if let Some(tls) = &l.tls {
            if tls.certificates.is_empty() {
                v.problem(
                    format!("{at}.tls.certificates"),
                    "at least one certificate is needed",
                );
            }
            if tls.alpn.is_empty() {
                v.problem(
                    format!("{at}.tls.alpn"),
                    "offer at least one protocol (\"h2\", \"http/1.1\")",
                );
            }
            for (k, p) in tls.alpn.iter().enumerate() {
                if !matches!(p.as_str(), "h2" | "http/1.1") {
                    v.problem(
                        format!("{at}.tls.alpn[{k}]"),
                        format!("{p:?} is not served; use \"h2\" or \"http/1.1\""),
                    );
                }
            }
        }
        let lim = &l.limits;
        if lim.max_connections == 0 {
            v.problem(format!("{at}.limits.max_connections"), "must be at least 1");
        }
        if lim.max_concurrent_streams == 0 {
            v.problem(
                format!("{at}.limits.max_concurrent_streams"),
                "must be at least 1",
            );
        }
        if lim.max_header_bytes.0 < 1024 {
            v.problem(
                format!("{at}.limits.max_header_bytes"),
                "must be at least 1KiB",
            );
        }
        if lim.max_headers == 0 {
            v.problem(format!("{at}.limits.max_headers"), "must be at least 1");
        }
        if let Some(via) = &l.forwarding.via {
            if via.is_empty()
                || !via
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                v.problem(
                    format!("{at}.forwarding.via"),
                    format!("{via:?} must be a token (letters, digits, '-', '.', '_')"),
                );
            }
        }
    }

    for (i, c) in config.clusters.iter().enumerate() {
        let at = format!("clusters[{i}]");
        if c.endpoints.is_empty() {
            v.problem(
                format!("{at}.endpoints"),
                "a cluster needs at least one endpoint",
            );
        }
        for (j, e) in c.endpoints.iter().enumerate() {
            if let Err(reason) = split_host_port(e.address()) {
                v.problem(format!("{at}.endpoints[{j}]"), reason);
            }
        }
        if let Some(h) = &c.balance.hash_header {
            if HeaderName::from_bytes(h.as_bytes()).is_err() {
                v.problem(
                    format!("{at}.balance.hash_header"),
                    format!("{h:?} is not a valid header name"),
                );
            }
        }
        if c.balance.hash_header.is_some() && c.balance.policy != BalancePolicy::ConsistentHash {
            v.problem(
                format!("{at}.balance.hash_header"),
                "only used with policy = \"consistent_hash\"",
            );
        }
        if c.connect_timeout.0.is_zero() {
            v.problem(format!("{at}.connect_timeout"), "must be more than zero");
        }
        if c.outlier.max_ejected_percent > 100 {
            v.problem(
                format!("{at}.outlier.max_ejected_percent"),
                "must be between 0 and 100",
            );
        }
        if c.outlier.base_ejection > c.outlier.max_ejection {
            v.problem(
                format!("{at}.outlier.base_ejection"),
                "must not exceed max_ejection",
            );
        }
        if let Some(hc) = &c.health_check {
            if !hc.path.starts_with('/') {
                v.problem(
                    format!("{at}.health_check.path"),
                    format!("{:?} must start with '/'", hc.path),
                );
            }
            if hc.interval.0.is_zero() || hc.timeout.0.is_zero() {
                v.problem(
                    format!("{at}.health_check"),
                    "interval and timeout must be more than zero",
                );
            }
            if hc.healthy_threshold == 0 || hc.unhealthy_threshold == 0 {
                v.problem(
                    format!("{at}.health_check"),
                    "thresholds must be at least 1",
                );
            }
        }
        if let Some(tls) = &c.tls {
            if tls.cert.is_some() != tls.key.is_some() {
                v.problem(
                    format!("{at}.tls"),
                    "cert and key go together: give both or neither",
                );
            }
        }
    }

    for (i, f) in config.filters.iter().enumerate() {
        let at = format!("filters[{i}]");
        if f.limits.memory.0 < 64 * 1024 {
            v.problem(
                format!("{at}.limits.memory"),
                "must be at least 64KiB (one Wasm page)",
            );
        }
        if f.limits.cpu_time.0.is_zero() {
            v.problem(format!("{at}.limits.cpu_time"), "must be more than zero");
        }
        if f.limits.instance_reuse == 0 {
            v.problem(format!("{at}.limits.instance_reuse"), "must be at least 1");
        }
    }
    for (i, c) in config.chains.iter().enumerate() {
        for (j, name) in c.filters.iter().enumerate() {
            v.reference(
                &format!("chains[{i}].filters[{j}]"),
                Some(name),
                &filters,
                "filter",
            );
        }
    }
    v.problems
}

/// Splits `"host:port"` (IPv6 as `"[::1]:80"`), with reasons a person can act on.
pub fn split_host_port(address: &str) -> Result<(&str, u16), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address:?} needs a port, as in \"{address}:80\""))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{address:?} has an invalid port {port:?}"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(format!("{address:?} has no host"));
    }
    if port == 0 {
        return Err(format!("{address:?}: port 0 cannot be connected to"));
    }
    Ok((host, port))
}

#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn problem(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem {
            field: field.into(),
            reason: reason.into(),
        });
    }

    fn unique_names<'a>(
        &mut self,
        section: &str,
        names: impl Iterator<Item = &'a str>,
    ) -> HashSet<&'a str> {
        let mut seen = HashSet::new();
        for (i, name) in names.enumerate() {
            if name.is_empty() {
                self.problem(format!("{section}[{i}].name"), "must not be empty");
            } else if !seen.insert(name) {
                self.problem(
                    format!("{section}[{i}].name"),
                    format!("{name:?} is defined twice"),
                );
            }
        }
        seen
    }

    fn reference(&mut self, field: &str, name: Option<&str>, known: &HashSet<&str>, what: &str) {
        if let Some(name) = name {
            if !known.contains(name) {
                let mut names: Vec<_> = known.iter().copied().collect();
                names.sort_unstable();
                let hint = if names.is_empty() {
                    format!("no {what} is defined")
                } else {
                    format!("defined: {}", names.join(", "))
                };
                self.problem(field, format!("unknown {what} {name:?} ({hint})"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::parse;

    fn problems(text: &str) -> String {
        parse(Path::new("w.toml"), text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    const BASE: &str = "[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:80\"]\n";

    #[test]
    fn accepts_a_minimal_config() {
        let text = format!(
            "{BASE}[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\ncluster = \"a\"\n"
        );
        assert_eq!(problems(&text), "");
    }

    #[test]
    fn missing_cluster_is_named() {
        let text = format!(
            "{BASE}[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\ncluster = \"b\"\n"
        );
        let e = problems(&text);
        assert!(
            e.contains("w.toml: listeners[0].cluster: unknown cluster \"b\" (defined: a)"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_names_and_bad_endpoints_are_all_reported() {
        let text = format!(
            "{BASE}{BASE}[[clusters]]\nname = \"c\"\nendpoints = [\"nohost\", \"h:99999\"]\n"
        );
        let e = problems(&text);
        assert!(
            e.contains("clusters[1].name: \"a\" is defined twice"),
            "{e}"
        );
        assert!(
            e.contains("clusters[2].endpoints[0]: \"nohost\" needs a port"),
            "{e}"
        );
        assert!(
            e.contains("clusters[2].endpoints[1]: \"h:99999\" has an invalid port"),
            "{e}"
        );
    }

    #[test]
    fn listeners_may_share_port_zero_but_no_other_port() {
        let listener = |name: &str, address: &str| {
            format!("[[listeners]]\nname = \"{name}\"\naddress = \"{address}\"\ncluster = \"a\"\n")
        };
        let text = format!(
            "{BASE}{}{}",
            listener("l1", "127.0.0.1:0"),
            listener("l2", "127.0.0.1:0")
        );
        assert_eq!(problems(&text), "");
        let text = format!(
            "{BASE}{}{}",
            listener("l1", "127.0.0.1:8080"),
            listener("l2", "127.0.0.1:8080")
        );
        assert!(problems(&text)
            .contains("listeners[1].address: 127.0.0.1:8080 is used by another listener"));
    }

    #[test]
    fn chain_references_filters() {
        let text = format!("{BASE}[[chains]]\nname = \"c\"\nfilters = [\"nope\"]\n");
        assert!(problems(&text)
            .contains("chains[0].filters[0]: unknown filter \"nope\" (no filter is defined)"));
    }
}
