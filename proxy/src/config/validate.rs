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
        // Port 0 asks the kernel for a free port: each such listener gets its own.
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
                if l.cluster.is_none() && l.routes.is_empty() {
                    v.problem(
                        format!("{at}.cluster"),
                        "a tcp listener needs a cluster, or routes by server name",
                    );
                }
                if l.chain.is_some() {
                    v.problem(
                        format!("{at}.chain"),
                        "a tcp listener forwards bytes: it runs no chain",
                    );
                }
                for (j, r) in l.routes.iter().enumerate() {
                    let rat = format!("{at}.routes[{j}]");
                    if r.host.is_none() {
                        v.problem(
                            format!("{rat}.host"),
                            "a tcp listener's routes match the TLS server name: host is required",
                        );
                    }
                    if r.cluster.is_none() {
                        v.problem(
                            format!("{rat}.cluster"),
                            "a tcp listener's route needs a cluster",
                        );
                    }
                    for (field, set) in [
                        ("path_prefix", r.path_prefix.is_some()),
                        ("chain", r.chain.is_some()),
                        ("timeout", r.timeout.is_some()),
                    ] {
                        if set {
                            v.problem(
                                format!("{rat}.{field}"),
                                "a tcp listener's routes match only the TLS server name (host)",
                            );
                        }
                    }
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
                if let Err(reason) = check_route_host(h) {
                    v.problem(format!("{rat}.host"), reason);
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
        // HTTP/1.1 heads are limited by hyper's read buffer, which cannot be
        // smaller than 8KiB; a lower setting would silently not be enforced.
        if lim.max_header_bytes.0 < 8 * 1024 {
            v.problem(
                format!("{at}.limits.max_header_bytes"),
                "must be at least 8KiB",
            );
        }
        if lim.max_headers == 0 {
            v.problem(format!("{at}.limits.max_headers"), "must be at least 1");
        }
        if lim.tls_handshake_timeout.0.is_zero() {
            v.problem(
                format!("{at}.limits.tls_handshake_timeout"),
                "must be more than zero (\"0s\" would fail every handshake)",
            );
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
            if !(1..=MAX_ENDPOINT_WEIGHT).contains(&e.weight()) {
                v.problem(
                    format!("{at}.endpoints[{j}].weight"),
                    format!(
                        "{} is out of range: a weight is 1 to {MAX_ENDPOINT_WEIGHT} (to send an endpoint nothing, remove it)",
                        e.weight()
                    ),
                );
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
        if c.grpc_timeout_max.is_none() && !c.grpc_timeout_offset.0.is_zero() {
            v.problem(
                format!("{at}.grpc_timeout_offset"),
                "only used with grpc_timeout_max (without it, calls' deadlines are not enforced)",
            );
        }
        if c.outlier.max_ejected_percent > 100 {
            v.problem(
                format!("{at}.outlier.max_ejected_percent"),
                "must be between 0 and 100",
            );
        }
        if c.outlier.base_ejection.0.is_zero() {
            v.problem(
                format!("{at}.outlier.base_ejection"),
                "must be more than zero (to turn ejection off, set consecutive_failures = 0)",
            );
        } else if c.outlier.base_ejection > c.outlier.max_ejection {
            v.problem(
                format!("{at}.outlier.base_ejection"),
                "must not exceed max_ejection",
            );
        }
        if let Some(hc) = &c.health_check {
            match (hc.protocol, &hc.path) {
                (HealthCheckProtocol::Http, None) => v.problem(
                    format!("{at}.health_check.path"),
                    "an http health check needs a path, such as \"/healthz\" (or protocol = \"tcp\")",
                ),
                (HealthCheckProtocol::Http, Some(p)) if !p.starts_with('/') => v.problem(
                    format!("{at}.health_check.path"),
                    format!("{p:?} must start with '/'"),
                ),
                (HealthCheckProtocol::Tcp, Some(_)) => v.problem(
                    format!("{at}.health_check.path"),
                    "a tcp health check only opens a connection: it takes no path",
                ),
                _ => {}
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

    if config.runtime.filter_instances == 0 {
        v.problem(
            "runtime.filter_instances",
            "must be at least 1 (it bounds how many filter instances may exist at once)",
        );
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

/// A route's `host`: a name, an IP address or a leading wildcard, without a port.
/// Routes match the host whatever the port the request names, so a pattern with a
/// port could never match: it is refused rather than silently ignored.
fn check_route_host(h: &str) -> Result<(), String> {
    let bare = h.strip_prefix("*.").unwrap_or(h);
    if bare.is_empty() || bare.contains(['/', ' ', '*']) {
        return Err(format!(
            "{h:?} is not a host name or a leading wildcard like \"*.example.com\""
        ));
    }
    // Requests' IPv6 hosts are compared without their brackets.
    if let Some(inner) = bare.strip_prefix('[') {
        return Err(match inner.split_once(']') {
            Some((ip, "")) => format!("{h:?}: write an IPv6 address without brackets, as {ip:?}"),
            Some((ip, _)) => {
                format!("{h:?} has a port; a route matches the host on any port, so write {ip:?}")
            }
            None => format!("{h:?} is not a host name or an IPv6 address"),
        });
    }
    if bare.contains(':') && bare.parse::<std::net::Ipv6Addr>().is_err() {
        let host = h.rsplit_once(':').map_or(h, |(host, _)| host);
        return Err(format!(
            "{h:?} has a port; a route matches the host on any port, so write {host:?}"
        ));
    }
    Ok(())
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
    fn listeners_may_share_port_zero_but_not_a_fixed_port() {
        let listener = |name: &str, addr: &str| {
            format!("[[listeners]]\nname = \"{name}\"\naddress = \"{addr}\"\ncluster = \"a\"\n")
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
        assert!(
            problems(&text)
                .contains("listeners[1].address: 127.0.0.1:8080 is used by another listener"),
            "{}",
            problems(&text)
        );
    }

    #[test]
    fn runtime_settings_are_checked_and_the_module_cache_is_found_next_to_the_file() {
        let e = problems(&format!("{BASE}[runtime]\nfilter_instances = 0\n"));
        assert!(
            e.contains("w.toml: runtime.filter_instances: must be at least 1"),
            "{e}"
        );
        let at = |cache: &str| {
            parse(
                Path::new("/etc/weft/weft.toml"),
                &format!("{BASE}[runtime]\nmodule_cache = {cache:?}\n"),
            )
            .map(|l| l.config.runtime.module_cache)
            .map_err(|e| e.to_string())
        };
        assert_eq!(at("cache"), Ok(Some("/etc/weft/cache".into())));
        assert_eq!(at("/var/cache/weft"), Ok(Some("/var/cache/weft".into())));
        assert_eq!(at(""), Ok(Some("".into())), "empty keeps modules in memory");
    }

    #[test]
    fn tcp_listeners_route_only_by_server_name() {
        let tcp = "[[listeners]]\nname = \"t\"\naddress = \"127.0.0.1:0\"\nprotocol = \"tcp\"\n";
        let route = |extra: &str| format!("[[listeners.routes]]\n{extra}\n");
        let ok = format!(
            "{BASE}{tcp}{}{}",
            route("host = \"a.example\"\ncluster = \"a\""),
            route("host = \"*.example\"\ncluster = \"a\""),
        );
        assert_eq!(problems(&ok), "");
        let e = problems(&format!("{BASE}{tcp}"));
        assert!(
            e.contains("listeners[0].cluster: a tcp listener needs a cluster, or routes"),
            "{e}"
        );
        let e = problems(&format!(
            "{BASE}{tcp}cluster = \"a\"\n{}{}",
            route("cluster = \"a\""),
            route("host = \"b.example\"\npath_prefix = \"/x\"\ntimeout = \"1s\""),
        ));
        for expected in [
            "listeners[0].routes[0].host: a tcp listener's routes match the TLS server name: host is required",
            "listeners[0].routes[1].cluster: a tcp listener's route needs a cluster",
            "listeners[0].routes[1].path_prefix: a tcp listener's routes match only the TLS server name (host)",
            "listeners[0].routes[1].timeout: a tcp listener's routes match only",
        ] {
            assert!(e.contains(expected), "{expected}\nnot in\n{e}");
        }
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
    fn health_checks_take_a_path_if_and_only_if_they_speak_http() {
        let cluster = |hc: &str| {
            format!(
                "[[clusters]]\nname = \"a\"\nendpoints = [\"h:1\"]\nhealth_check = {{ {hc} }}\n"
            )
        };
        let e = problems(&cluster("interval = \"1s\""));
        assert!(
            e.contains("clusters[0].health_check.path: an http health check needs a path"),
            "{e}"
        );
        let e = problems(&cluster("protocol = \"tcp\", path = \"/\""));
        assert!(
            e.contains("clusters[0].health_check.path: a tcp health check only opens a connection: it takes no path"),
            "{e}"
        );
        assert_eq!(problems(&cluster("protocol = \"tcp\"")), "");
        assert_eq!(problems(&cluster("path = \"/healthz\"")), "");
    }

    #[test]
    fn endpoint_weights_outside_their_range_are_refused() {
        let text = "[[clusters]]\nname = \"a\"\nendpoints = [{ address = \"h:1\", weight = 0 }, { address = \"h:2\", weight = 3 }, { address = \"h:3\", weight = 1001 }]\n";
        let e = problems(text);
        assert!(
            e.contains("clusters[0].endpoints[0].weight: 0 is out of range: a weight is 1 to 1000 (to send an endpoint nothing, remove it)"),
            "{e}"
        );
        assert!(e.contains("clusters[0].endpoints[2].weight: 1001"), "{e}");
        assert!(!e.contains("endpoints[1]"), "{e}");
        let typo = "[[clusters]]\nname = \"a\"\nendpoints = [{ address = \"h:1\", wieght = 2 }]\n";
        let e = problems(typo);
        assert!(
            e.contains("unknown field `wieght`, expected `address` or `weight`"),
            "{e}"
        );
    }

    #[test]
    fn header_limit_below_what_http1_can_enforce_is_refused() {
        let listener = |limit: &str| {
            format!("{BASE}[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\ncluster = \"a\"\nlimits = {{ max_header_bytes = \"{limit}\" }}\n")
        };
        assert!(
            problems(&listener("4KiB"))
                .contains("listeners[0].limits.max_header_bytes: must be at least 8KiB"),
            "{}",
            problems(&listener("4KiB"))
        );
        assert_eq!(problems(&listener("8KiB")), "");
    }

    fn listener_with(extra: &str) -> String {
        format!(
            "{BASE}[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\ncluster = \"a\"\n{extra}"
        )
    }

    #[test]
    fn zero_durations_that_would_break_something_are_refused() {
        let e = problems(&listener_with(
            "[listeners.limits]\ntls_handshake_timeout = \"0s\"\n",
        ));
        assert!(
            e.contains("w.toml: listeners[0].limits.tls_handshake_timeout: must be more than zero"),
            "{e}"
        );
        let e = problems(&format!(
            "{BASE}[clusters.outlier]\nbase_ejection = \"0s\"\nmax_ejection = \"0s\"\n"
        ));
        assert!(
            e.contains("w.toml: clusters[0].outlier.base_ejection: must be more than zero"),
            "{e}"
        );
        // "0s" where it has a documented meaning stays accepted.
        let text = format!(
            "{BASE}dns_refresh = \"0s\"\nrequest_timeout = \"0s\"\nidle_timeout = \"0s\"\n[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\ncluster = \"a\"\n[listeners.limits]\nheader_read_timeout = \"0s\"\nidle_timeout = \"0s\"\n"
        );
        assert_eq!(problems(&text), "");
    }

    #[test]
    fn a_grpc_timeout_offset_needs_the_deadlines_enforced() {
        let e = problems(&format!("{BASE}grpc_timeout_offset = \"100ms\"\n"));
        assert!(
            e.contains("w.toml: clusters[0].grpc_timeout_offset: only used with grpc_timeout_max"),
            "{e}"
        );
        let text = format!(
            "{BASE}grpc_timeout_max = \"0s\"\ngrpc_timeout_offset = \"100ms\"\n[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\ncluster = \"a\"\n"
        );
        assert_eq!(problems(&text), "");
    }

    #[test]
    fn route_host_with_a_port_is_refused_with_the_host_to_write() {
        let route = |host: &str| {
            problems(&listener_with(&format!(
                "[[listeners.routes]]\nhost = {host:?}\npath_prefix = \"/\"\n"
            )))
        };
        let port = "has a port; a route matches the host on any port, so write";
        for (host, reason) in [
            (
                "api.example.com:8443",
                format!("\"api.example.com:8443\" {port} \"api.example.com\""),
            ),
            (
                "*.example.com:80",
                format!("\"*.example.com:80\" {port} \"*.example.com\""),
            ),
            ("[::1]:8080", format!("\"[::1]:8080\" {port} \"::1\"")),
            (
                "[::1]",
                "\"[::1]\": write an IPv6 address without brackets, as \"::1\"".into(),
            ),
            ("a b", "\"a b\" is not a host name".into()),
        ] {
            let e = route(host);
            assert!(
                e.contains(&format!("w.toml: listeners[0].routes[0].host: {reason}")),
                "{host}: {e}"
            );
        }
        for host in ["api.example.com", "*.example.com", "::1", "127.0.0.1"] {
            assert_eq!(route(host), "", "{host}");
        }
    }

    #[test]
    fn chain_references_filters() {
        let text = format!("{BASE}[[chains]]\nname = \"c\"\nfilters = [\"nope\"]\n");
        assert!(problems(&text)
            .contains("chains[0].filters[0]: unknown filter \"nope\" (no filter is defined)"));
    }
}
