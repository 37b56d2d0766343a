//! Path normalization (RFC 3986 §6.2.2): the path a request is routed, filtered and
//! forwarded by. Without it, `/public/../admin` matches a `/public` route (and its
//! chain, or lack of one) while the upstream, which resolves the dot segments, serves
//! `/admin`; `/%61dmin` slips past an `/admin` route the same way. Envoy calls this
//! `normalize_path`, and Istio turns it on by default for the same reason.
//!
//! Two steps, in the RFC's order: percent-encoded unreserved characters are decoded
//! (`%61` is `a`, `%2E` is `.`) and the hex digits of the other encodings upper-cased;
//! then dot segments are removed (§5.2.4). Encoded slashes (`%2F`) stay encoded: they
//! are not path delimiters, and decoding them would change what the path means. The
//! query is left as it is. Repeated slashes are empty segments to RFC 3986 but the same
//! path to many servers (nginx merges them by default), so `//admin` can slip past an
//! `/admin` route; merging them is the listener's choice (`merge_slashes`).
//!
//! Written here rather than taken from a URL crate: those parse a whole URL (WHATWG's
//! rules, which differ from RFC 3986's, such as reading `\` as `/`), and a path that
//! needs nothing, which is almost every path, must cost a scan and no allocation.

/// The normal form of `path_and_query` (an origin-form target: `/a/b?q`), or `None`
/// when it is normal already; with `merge_slashes`, runs of slashes count as one.
pub fn normalize(path_and_query: &str, merge_slashes: bool) -> Option<String> {
    let (path, query) = match path_and_query.find('?') {
        Some(q) => path_and_query.split_at(q),
        None => (path_and_query, ""),
    };
    let repeated = merge_slashes && path.contains("//");
    if !path.starts_with('/') || !(repeated || needs_work(path.as_bytes())) {
        return None;
    }
    let decoded = decode_unreserved(path);
    let mut out = remove_dot_segments(&decoded, merge_slashes);
    if out == path {
        return None;
    }
    out.push_str(query);
    Some(out)
}

/// Whether `path` has a percent-encoding or a segment that starts with a dot.
fn needs_work(path: &[u8]) -> bool {
    path.iter()
        .enumerate()
        .any(|(i, &b)| b == b'%' || (b == b'.' && i > 0 && path[i - 1] == b'/'))
}

/// Decodes percent-encoded unreserved characters; upper-cases the hex digits of the
/// others. A `%` not followed by two hex digits is left as it is.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|&b| (b as char).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                let c = (hi * 16 + lo) as u8;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c as char);
                } else {
                    out.push('%');
                    out.push(bytes[i + 1].to_ascii_uppercase() as char);
                    out.push(bytes[i + 2].to_ascii_uppercase() as char);
                }
                i += 3;
            }
            _ => {
                // `path` is a `str`, and only ASCII was decoded: copy up to the next `%`.
                let next = path[i + 1..].find('%').map_or(path.len(), |n| i + 1 + n);
                out.push_str(&path[i..next]);
                i = next;
            }
        }
    }
    out
}

/// RFC 3986 §5.2.4 for an absolute path: `.` segments go, and `..` takes the segment
/// before it with it (never climbing above the root). With `merge_slashes`, empty
/// segments go too (but the one a trailing slash ends with).
fn remove_dot_segments(path: &str, merge_slashes: bool) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut segments = path[1..].split('/').peekable();
    // A path ending in `.` or `..` keeps its trailing slash: `/a/b/..` is `/a/`.
    let mut trailing_slash = false;
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "." => trailing_slash = last,
            ".." => {
                kept.pop();
                trailing_slash = last;
            }
            "" if merge_slashes && !last => {}
            s => {
                kept.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &kept {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize(p, false).unwrap_or_else(|| p.to_string())
    }

    #[test]
    fn paths_already_normal_cost_no_allocation() {
        for p in [
            "/",
            "/a/b",
            "/a/b/",
            "/a.b/c.d",
            "/a/b?x=../y",
            "/a//b",
            "*",
            "",
        ] {
            assert_eq!(normalize(p, false), None, "{p}");
        }
        assert_eq!(normalize("/a/b/?q=//", true), None);
    }

    #[test]
    fn repeated_slashes_merge_when_asked() {
        let m = |p: &str| normalize(p, true).unwrap_or_else(|| p.to_string());
        assert_eq!(m("//admin"), "/admin");
        assert_eq!(m("/a//b///c//"), "/a/b/c/");
        assert_eq!(m("/a//../b"), "/b");
        assert_eq!(m("/a//b?x=//y"), "/a/b?x=//y");
        assert_eq!(n("/a//b/../c"), "/a//c");
    }

    #[test]
    fn dot_segments_go() {
        assert_eq!(n("/a/b/c/./../../g"), "/a/g"); // RFC 3986 §5.2.4's example
        assert_eq!(n("/mid/content=5/../6"), "/mid/6");
        assert_eq!(n("/public/../admin"), "/admin");
        assert_eq!(n("/../../admin"), "/admin");
        assert_eq!(n("/a/."), "/a/");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/.."), "/");
        assert_eq!(n("/./a"), "/a");
        assert_eq!(n("/a/..b/.c"), "/a/..b/.c");
        assert_eq!(n("/a/../b?q=/../c"), "/b?q=/../c");
    }

    #[test]
    fn unreserved_characters_are_decoded_and_the_rest_upper_cased() {
        assert_eq!(n("/%61dmin"), "/admin");
        assert_eq!(n("/public/%2e%2E/admin"), "/admin");
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("/a%2Fb/..%2f"), "/a%2Fb/..%2F");
        assert_eq!(n("/%7e%5F%2d"), "/~_-");
        assert_eq!(n("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(n("/100%"), "/100%");
        assert_eq!(n("/%zz/%4"), "/%zz/%4");
    }
}
