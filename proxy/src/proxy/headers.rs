//! Header rules of an intermediary: hop-by-hop headers stay on their hop, and the
//! forwarding headers (`X-Forwarded-For`, `Forwarded`, `Via`) say where a request came
//! from; `X-Request-ID` names it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::header::{
    Entry, HeaderName, HeaderValue, CONNECTION, FORWARDED, HOST, TE, TRANSFER_ENCODING, UPGRADE,
    VIA,
};
use http::{HeaderMap, Version};

use crate::config::{ForwardMode, ForwardingConfig, RequestIdMode};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The hop-by-hop headers, by their place in `HopByHop`'s table: the ones every
/// message loses (but `Upgrade` on an upgrade, and `TE: trailers`), then
/// `Connection`, which also takes the headers it names.
const KEEP_ALIVE_AT: usize = 0;
const PROXY_CONNECTION_AT: usize = 1;
const TRANSFER_ENCODING_AT: usize = 2;
const UPGRADE_AT: usize = 3;
const TE_AT: usize = 4;
const CONNECTION_AT: usize = 5;

/// Where `name` is in that table, if it is hop-by-hop. The length tells most names
/// apart before a byte is compared.
fn hop_by_hop_at(name: &HeaderName) -> Option<usize> {
    let name = name.as_str();
    let at = match name.len() {
        10 if name == "keep-alive" => KEEP_ALIVE_AT,
        16 if name == "proxy-connection" => PROXY_CONNECTION_AT,
        17 if name == "transfer-encoding" => TRANSFER_ENCODING_AT,
        7 if name == "upgrade" => UPGRADE_AT,
        2 if name == "te" => TE_AT,
        10 if name == "connection" => CONNECTION_AT,
        _ => return None,
    };
    Some(at)
}

/// Removes hop-by-hop headers (see [`HopByHop::strip`]).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    HopByHop::scan(headers).strip(headers, upgrading);
}

/// Which hop-by-hop headers a message has, found in one pass over its few names:
/// the request path asks twice per request, and a hashed lookup of each name it
/// might have would cost more than the pass.
#[derive(Clone, Copy)]
pub struct HopByHop([bool; 6]);

impl HopByHop {
    pub fn scan(headers: &HeaderMap) -> Self {
        let mut present = [false; 6];
        for at in headers.keys().filter_map(hop_by_hop_at) {
            present[at] = true;
        }
        HopByHop(present)
    }

    /// The idle timeout an HTTP/1.1 server announces for its connection in
    /// `Keep-Alive: timeout=N` (RFC 2068 §19.7.1.1; Node, Apache and others send it),
    /// if these `headers` (the ones scanned) say one.
    pub fn keep_alive_timeout(self, headers: &HeaderMap) -> Option<Duration> {
        if !self.0[KEEP_ALIVE_AT] {
            return None;
        }
        let params = headers
            .get_all(&KEEP_ALIVE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','));
        params
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("timeout"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .map(Duration::from_secs)
    }

    /// Whether the message came with `Transfer-Encoding`.
    pub fn has_transfer_encoding(self) -> bool {
        self.0[TRANSFER_ENCODING_AT]
    }

    /// Whether an HTTP/1.1 request with these `headers` asks to switch protocols
    /// (WebSocket and the like).
    pub fn is_upgrade(self, version: Version, headers: &HeaderMap) -> bool {
        version == Version::HTTP_11
            && self.0[UPGRADE_AT]
            && self.0[CONNECTION_AT]
            && headers.get_all(CONNECTION).iter().any(|v| {
                v.to_str()
                    .unwrap_or("")
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
    }

    /// Removes from `headers` (the ones scanned) `Connection` and the headers it
    /// names, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`
    /// (unless this hop is an upgrade being forwarded) and `TE` other than
    /// `trailers` (which gRPC needs end to end).
    pub fn strip(self, headers: &mut HeaderMap, upgrading: bool) {
        let [keep_alive, proxy_connection, transfer_encoding, upgrade, te, connection] = self.0;
        if connection {
            // RFC 9110 §7.6.1: every field named as a connection option goes, even
            // "close". Keep-Alive goes below anyway.
            let mut named: Vec<HeaderName> = Vec::new();
            if let Entry::Occupied(field) = headers.entry(CONNECTION) {
                for value in field.remove_entry_mult().1 {
                    // Most messages that have the field say only `keep-alive` (nginx and
                    // most servers on every response), which names no field: skip
                    // taking it apart.
                    if value.as_bytes().eq_ignore_ascii_case(b"keep-alive") {
                        continue;
                    }
                    let options = value.to_str().unwrap_or("").split(',').map(str::trim);
                    named.extend(
                        options
                            .filter(|t| {
                                let spared = t.is_empty()
                                    || t.eq_ignore_ascii_case("keep-alive")
                                    || (upgrading && t.eq_ignore_ascii_case("upgrade"));
                                !spared
                            })
                            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok()),
                    );
                }
            }
            for name in named {
                headers.remove(name);
            }
            if upgrading {
                headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            }
        }
        if keep_alive {
            headers.remove(&KEEP_ALIVE);
        }
        if proxy_connection {
            headers.remove(&PROXY_CONNECTION);
        }
        if transfer_encoding {
            headers.remove(TRANSFER_ENCODING);
        }
        if upgrade && !upgrading {
            headers.remove(UPGRADE);
        }
        if let Some(te) = te.then(|| headers.get(TE)).flatten() {
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
}

/// A client's address as `X-Forwarded-For` writes it, formatted once per connection
/// rather than once per request.
pub struct ClientIp {
    ip: IpAddr,
    text: HeaderValue,
}

impl ClientIp {
    pub fn new(client: SocketAddr) -> Self {
        let ip = client.ip();
        ClientIp {
            ip,
            text: HeaderValue::from_str(&ip.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        }
    }
}

/// Adds this hop to the forwarding headers of a request.
/// `X-Forwarded-Host` for a request whose host the proxy rewrites
/// (`host_header = "endpoint"`): the host the client named, after the listener's
/// `x_forwarded_for` mode: `append` keeps one the client (or a proxy before) set,
/// `replace` writes the client's host over it, `off` leaves the field alone.
pub fn add_forwarded_host(headers: &mut HeaderMap, mode: ForwardMode, client_host: &HeaderValue) {
    match mode {
        ForwardMode::Off => {}
        ForwardMode::Append => {
            if let Entry::Vacant(field) = headers.entry(&X_FORWARDED_HOST) {
                field.insert(client_host.clone());
            }
        }
        ForwardMode::Replace => {
            headers.insert(&X_FORWARDED_HOST, client_host.clone());
        }
    }
}

pub fn add_forwarding(
    headers: &mut HeaderMap,
    cfg: &ForwardingConfig,
    client: &ClientIp,
    https: bool,
    version: Version,
) {
    let ip = client.ip;
    match cfg.x_forwarded_for {
        ForwardMode::Off => {}
        mode => {
            // One lookup whether or not the request has the field.
            match headers.entry(&X_FORWARDED_FOR) {
                Entry::Vacant(field) => {
                    field.insert(client.text.clone());
                }
                Entry::Occupied(mut field) => {
                    let prev = field.get().to_str().ok().filter(|p| !p.trim().is_empty());
                    let value = match (mode, prev) {
                        (ForwardMode::Append, Some(prev)) => {
                            let ip = client.text.to_str().unwrap_or_default();
                            HeaderValue::try_from(format!("{prev}, {ip}")).ok()
                        }
                        _ => Some(client.text.clone()),
                    };
                    if let Some(v) = value {
                        field.insert(v);
                    }
                }
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
    match cfg.request_id {
        RequestIdMode::Off => {}
        RequestIdMode::Generate => {
            if let Entry::Vacant(field) = headers.entry(&X_REQUEST_ID) {
                field.insert(new_request_id());
            }
        }
        RequestIdMode::Replace => {
            headers.insert(&X_REQUEST_ID, new_request_id());
        }
    }
    add_via(headers, cfg, version);
}

/// The `X-Request-ID` a response carries back with `request_id_in_response`, so a
/// client can quote what the proxy's and the upstream's logs call the request: `id`,
/// the one it was forwarded with (or, answered before it was forwarded, the client's),
/// else a new one when the listener makes them, kept in `id` for the access log.
pub fn request_id_for_response(
    id: &mut Option<HeaderValue>,
    cfg: &ForwardingConfig,
) -> Option<HeaderValue> {
    if !cfg.request_id_in_response {
        return None;
    }
    if id.is_none() && cfg.request_id != RequestIdMode::Off {
        *id = Some(new_request_id());
    }
    id.clone()
}

/// A random (version 4) UUID, as `X-Request-ID` values usually are: unique across
/// proxies and restarts, which the proxy's own request numbers are not.
fn new_request_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = id.hyphenated().encode_lower(&mut text);
    // Hex digits and hyphens.
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("-"))
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

/// Checks the request's Host against the rules an intermediary must enforce, and
/// makes it agree with the request target, so that routing, filters and the upstream
/// all see one authority (two that differ are how requests get smuggled past
/// host-based rules). `Err` is why the request is a 400:
/// - more than one `Host` field, or one that is not a valid `host[:port]` (RFC 9112 §3.2);
/// - an HTTP/1.1 request with neither `Host` nor an authority in its target (RFC 9112
///   §3.2; as nginx and Envoy do, the absolute form's authority is taken for `Host`);
/// - an HTTP/2 request whose `Host` names another authority than `:authority`
///   (RFC 9113 §8.3.1).
///
/// An HTTP/1.x request in absolute form (`GET http://a.example/ HTTP/1.1`) goes on
/// with `Host` set to the target's authority, which RFC 9112 §3.2.2 says replaces it.
pub fn check_host<B>(req: &mut http::Request<B>) -> Result<(), &'static str> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    // An empty value is valid: it stands for a target without an authority.
    if let Some(h) = host.filter(|h| !h.is_empty()) {
        if !valid_authority(h.as_bytes()) {
            return Err("invalid Host header");
        }
    }
    let Some(target) = req.uri().authority() else {
        return match (host, req.version()) {
            (None, Version::HTTP_11) => Err("missing Host header"),
            _ => Ok(()),
        };
    };
    // Parsed by `http` with the request line; only user info is left to refuse.
    if target.as_str().contains('@') {
        return Err("invalid authority in the request target");
    }
    if host.is_some_and(|h| h.as_bytes() == target.as_str().as_bytes()) {
        return Ok(());
    }
    match req.version() {
        Version::HTTP_2 | Version::HTTP_3 => match host {
            None => Ok(()),
            Some(_) => Err("Host header differs from :authority"),
        },
        _ => {
            let value = HeaderValue::from_str(target.as_str())
                .map_err(|_| "invalid authority in the request target")?;
            req.headers_mut().insert(HOST, value);
            Ok(())
        }
    }
}

/// Whether a request's authority names the server name (SNI) its client sent in
/// the TLS handshake: the same host, in any case, whatever the port. No SNI, or no
/// authority, is no match (a client that sent none cannot have meant any host).
pub fn host_is_sni(authority: Option<&str>, sni: Option<&str>) -> bool {
    match (authority, sni) {
        (Some(authority), Some(sni)) => crate::route::host_of(authority)
            .eq_ignore_ascii_case(sni.strip_suffix('.').unwrap_or(sni)),
        _ => false,
    }
}

/// `host[:port]` as RFC 9110 §7.2 has it (RFC 3986's `host` and `port`: no user
/// info). Checked by hand because `http::uri::Authority` copies the value into a new
/// allocation and scans it twice: ~900 instructions a request, 3% of one without
/// filters.
fn valid_authority(b: &[u8]) -> bool {
    let literal = b.first() == Some(&b'[');
    let (host, port) = match b
        .iter()
        .position(|&c| c == if literal { b']' } else { b':' })
    {
        Some(end) if literal => b.split_at(end + 1),
        Some(colon) => b.split_at(colon),
        None if literal => return false,
        None => (b, &b[b.len()..]),
    };
    let host_ok = match host {
        // An IP literal: IPv6 (or a future form) in brackets.
        [b'[', inner @ .., b']'] => {
            !inner.is_empty() && inner.iter().all(|&c| c == b':' || REG_NAME[c as usize])
        }
        _ => !host.is_empty() && host.iter().all(|&c| REG_NAME[c as usize]),
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    host_ok && port_ok
}

/// The bytes of a `reg-name` or IPv4 address: unreserved, sub-delims, and `%` of a
/// percent-encoding (a table: this runs on every byte of every request's Host).
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric();
        c += 1;
    }
    let others = b"-._~!$&'()*+,;=%";
    let mut i = 0;
    while i < others.len() {
        table[others[i] as usize] = true;
        i += 1;
    }
    table
};

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

    fn host_check(
        version: Version,
        uri: &str,
        hosts: &[&str],
    ) -> Result<Option<String>, &'static str> {
        let mut req = http::Request::get(uri).version(version).body(()).unwrap();
        for h in hosts {
            req.headers_mut()
                .append(HOST, HeaderValue::from_str(h).unwrap());
        }
        check_host(&mut req)?;
        Ok(req
            .headers()
            .get(HOST)
            .map(|h| h.to_str().unwrap().to_string()))
    }

    #[test]
    fn a_host_is_the_sni_whatever_its_case_port_or_trailing_dot() {
        let sni = Some("api.example.com");
        for a in [
            "api.example.com",
            "API.Example.com:8443",
            "api.example.com.",
        ] {
            assert!(host_is_sni(Some(a), sni), "{a}");
        }
        assert!(host_is_sni(
            Some("api.example.com"),
            Some("api.example.com.")
        ));
        for a in [
            "admin.example.com",
            "example.com",
            "api.example.com.evil",
            "10.0.0.1",
        ] {
            assert!(!host_is_sni(Some(a), sni), "{a}");
        }
        assert!(!host_is_sni(None, sni), "no authority");
        assert!(!host_is_sni(Some("api.example.com"), None), "no SNI");
    }

    #[test]
    fn host_rules_of_an_intermediary() {
        use Version as V;
        let ok = |h: &str| Ok(Some(h.to_string()));
        assert_eq!(host_check(V::HTTP_11, "/", &["a.example"]), ok("a.example"));
        assert_eq!(
            host_check(V::HTTP_11, "/", &["[::1]:8080"]),
            ok("[::1]:8080")
        );
        assert_eq!(host_check(V::HTTP_11, "/", &[""]), ok(""));
        assert_eq!(host_check(V::HTTP_10, "/", &[]), Ok(None));
        assert_eq!(host_check(V::HTTP_11, "/", &[]), Err("missing Host header"));
        assert_eq!(
            host_check(V::HTTP_11, "/", &["a", "b"]),
            Err("more than one Host header")
        );
        assert_eq!(
            host_check(V::HTTP_11, "/", &["a", "a"]),
            Err("more than one Host header")
        );
        for good in [
            "a.example:8080",
            "10.0.0.1",
            "[::1]",
            "[fe80::1%25eth0]:1",
            "x:",
        ] {
            assert_eq!(host_check(V::HTTP_11, "/", &[good]), ok(good), "{good}");
        }
        for bad in [
            "a b",
            "u@a.example",
            "a.example/x",
            "a:port",
            "[::1",
            "[]:80",
            ":80",
            "a:1:2",
            "[::1]x",
        ] {
            assert_eq!(
                host_check(V::HTTP_11, "/", &[bad]),
                Err("invalid Host header"),
                "{bad}"
            );
        }
        // Absolute form: the target's authority replaces Host, or stands for it.
        assert_eq!(
            host_check(V::HTTP_11, "http://t.example/x", &["a.example"]),
            ok("t.example")
        );
        assert_eq!(
            host_check(V::HTTP_11, "http://t.example/x", &[]),
            ok("t.example")
        );
        assert_eq!(
            host_check(V::HTTP_10, "http://t.example/x", &[]),
            ok("t.example")
        );
        assert_eq!(
            host_check(V::HTTP_11, "http://u@t.example/x", &["t.example"]),
            Err("invalid authority in the request target")
        );
        // HTTP/2: :authority alone, or with a Host that agrees.
        assert_eq!(host_check(V::HTTP_2, "https://t.example/", &[]), Ok(None));
        assert_eq!(
            host_check(V::HTTP_2, "https://t.example/", &["t.example"]),
            ok("t.example")
        );
        assert_eq!(
            host_check(V::HTTP_2, "https://t.example/", &["a.example"]),
            Err("Host header differs from :authority")
        );
        assert_eq!(host_check(V::HTTP_2, "/", &["a.example"]), ok("a.example"));
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
    fn reads_the_idle_timeout_a_server_announces() {
        let timeout = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(&KEEP_ALIVE, HeaderValue::from_str(v).unwrap());
            }
            HopByHop::scan(&h).keep_alive_timeout(&h)
        };
        assert_eq!(
            timeout(&["timeout=5, max=100"]),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            timeout(&["max=100", "Timeout = 7"]),
            Some(Duration::from_secs(7))
        );
        assert_eq!(timeout(&["max=100"]), None);
        assert_eq!(timeout(&["timeout=soon"]), None);
        assert_eq!(timeout(&[]), None);
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
        // A `Connection: keep-alive` line (skipped whole) next to one naming a field.
        let mut h = map(&[
            ("connection", "Keep-Alive"),
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn strips_fixed_hop_by_hop_headers_without_connection() {
        let mut h = map(&[
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("te", "gzip"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
        // Nothing hop-by-hop: nothing changes.
        let mut h = map(&[("accept", "*/*"), ("x-kept", "yes"), ("x-kept", "too")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
        // A field named as a connection option goes, whatever its name.
        let mut h = map(&[("connection", "close"), ("close", "odd"), ("x-kept", "yes")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn keeps_upgrade_when_upgrading() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(HopByHop::scan(&h).is_upgrade(Version::HTTP_11, &h));
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
        add_forwarding(&mut h, &cfg, &ClientIp::new(client), true, Version::HTTP_2);
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
            &ClientIp::new("[::1]:9".parse().unwrap()),
            false,
            Version::HTTP_11,
        );
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["forwarded"], "for=6.6.6.6");
    }
}
