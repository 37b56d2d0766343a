//! Header rules of an intermediary: hop-by-hop headers stay on their hop, and the
//! forwarding headers (`X-Forwarded-For`, `Forwarded`, `Via`) say where a request came from.

use std::net::SocketAddr;

use http::header::{
    HeaderName, HeaderValue, CONNECTION, FORWARDED, TE, TRANSFER_ENCODING, UPGRADE, VIA,
};
use http::{HeaderMap, Version};

use crate::config::{ForwardMode, ForwardingConfig};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Removes hop-by-hop headers: `Connection` and the headers it names, `Keep-Alive`,
/// `Proxy-Connection`, `Transfer-Encoding`, `Upgrade` (unless this hop is an upgrade
/// being forwarded) and `TE` other than `trailers` (which gRPC needs end to end).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderValue> = headers.get_all(CONNECTION).iter().cloned().collect();
        headers.remove(CONNECTION);
        for value in named {
            for token in value
                .to_str()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
            {
                if upgrading && token.eq_ignore_ascii_case("upgrade") {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    if !(upgrading && name == UPGRADE) {
                        headers.remove(name);
                    }
                }
            }
        }
        if upgrading {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(TRANSFER_ENCODING);
    if !upgrading {
        headers.remove(UPGRADE);
    }
    if let Some(te) = headers.get(TE) {
        let trailers = te
            .to_str()
            .unwrap_or("")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
        if trailers {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(TE);
        }
    }
}

/// Whether an HTTP/1.1 request asks to switch protocols (WebSocket and the like).
pub fn is_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(UPGRADE)
        && headers.get_all(CONNECTION).iter().any(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
}

/// Adds this hop to the forwarding headers of a request.
pub fn add_forwarding(
    headers: &mut HeaderMap,
    cfg: &ForwardingConfig,
    client: SocketAddr,
    https: bool,
    version: Version,
) {
    let ip = client.ip();
    match cfg.x_forwarded_for {
        ForwardMode::Off => {}
        mode => {
            let value = match (
                mode,
                headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()),
            ) {
                (ForwardMode::Append, Some(prev)) if !prev.trim().is_empty() => {
                    format!("{prev}, {ip}")
                }
                _ => ip.to_string(),
            };
            if let Ok(v) = HeaderValue::try_from(value) {
                headers.insert(&X_FORWARDED_FOR, v);
            }
            headers.insert(
                &X_FORWARDED_PROTO,
                HeaderValue::from_static(if https { "https" } else { "http" }),
            );
        }
    }
    match cfg.forwarded {
        ForwardMode::Off => {}
        mode => {
            let node = match ip {
                std::net::IpAddr::V4(v4) => v4.to_string(),
                std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
            };
            let this = format!("for={node};proto={}", if https { "https" } else { "http" });
            let value = match (mode, headers.get(FORWARDED).and_then(|v| v.to_str().ok())) {
                (ForwardMode::Append, Some(prev)) if !prev.trim().is_empty() => {
                    format!("{prev}, {this}")
                }
                _ => this,
            };
            if let Ok(v) = HeaderValue::try_from(value) {
                headers.insert(FORWARDED, v);
            }
        }
    }
    add_via(headers, cfg, version);
}

/// Appends `<version> <pseudonym>` to `Via` when a pseudonym is configured.
pub fn add_via(headers: &mut HeaderMap, cfg: &ForwardingConfig, version: Version) {
    let Some(name) = &cfg.via else { return };
    let proto = match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    };
    let value = match headers.get(VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {proto} {name}"),
        None => format!("{proto} {name}"),
    };
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(VIA, v);
    }
}

/// The size of an HTTP/2 request's header list as RFC 9113 §6.5.2 counts it (and h2
/// enforces it): each field's name and value plus 32 octets, pseudo-headers included.
pub fn h2_header_list_size<B>(req: &http::Request<B>) -> usize {
    const FIELD: usize = 32;
    let uri = req.uri();
    let pseudo = [
        ":method".len() + req.method().as_str().len(),
        ":scheme".len() + uri.scheme_str().map_or(0, str::len),
        ":authority".len() + uri.authority().map_or(0, |a| a.as_str().len()),
        ":path".len() + uri.path_and_query().map_or(0, |p| p.as_str().len()),
    ];
    let fields = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + FIELD);
    pseudo.iter().map(|p| p + FIELD).chain(fields).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn h2_header_list_size_counts_pseudo_headers_and_32_octets_per_field() {
        let req = http::Request::get("https://a.example/x")
            .header("x-k", "v")
            .body(())
            .unwrap();
        // :method GET, :scheme https, :authority a.example, :path /x, x-k v
        assert_eq!(h2_header_list_size(&req), 42 + 44 + 51 + 39 + 36);
    }

    #[test]
    fn strips_connection_and_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "gzip, trailers"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn keeps_upgrade_when_upgrading() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(is_upgrade(Version::HTTP_11, &h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "k");
    }

    #[test]
    fn forwarding_append_and_replace() {
        let client: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let mut cfg = ForwardingConfig {
            forwarded: ForwardMode::Append,
            via: Some("weft".into()),
            ..ForwardingConfig::default()
        };
        let mut h = map(&[("x-forwarded-for", "1.1.1.1"), ("forwarded", "for=1.1.1.1")]);
        add_forwarding(&mut h, &cfg, client, true, Version::HTTP_2);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["forwarded"], "for=1.1.1.1, for=10.1.2.3;proto=https");
        assert_eq!(h["via"], "2 weft");

        cfg.x_forwarded_for = ForwardMode::Replace;
        cfg.forwarded = ForwardMode::Off;
        let mut h = map(&[("x-forwarded-for", "6.6.6.6"), ("forwarded", "for=6.6.6.6")]);
        add_forwarding(
            &mut h,
            &cfg,
            "[::1]:9".parse().unwrap(),
            false,
            Version::HTTP_11,
        );
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["forwarded"], "for=6.6.6.6");
    }
}
