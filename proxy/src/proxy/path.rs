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
//! Encoded slashes are the listener's choice too (`escaped_slashes`): an upstream that
//! decodes `%2F` before it resolves the path serves `/admin` for
//! `/public%2F..%2Fadmin`, which routes see under `/public`. Rejecting them, or
//! decoding them before the dot segments are removed, closes that (Envoy's
//! `path_with_escaped_slashes_action`).
//!
//! Written here rather than taken from a URL crate: those parse a whole URL (WHATWG's
//! rules, which differ from RFC 3986's, such as reading `\` as `/`), and a path that
//! needs nothing, which is almost every path, must cost a scan and no allocation.

use std::borrow::Cow;

use crate::config::{EscapedSlashes, ListenerConfig};

/// How a listener reads paths (its `normalize_path`, `merge_slashes` and
/// `escaped_slashes`).
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// Decode unreserved characters, remove dot segments.
    pub normalize: bool,
    /// With `normalize`, runs of slashes count as one.
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl Rules {
    pub fn of(listener: &ListenerConfig) -> Self {
        Rules {
            normalize: listener.normalize_path,
            merge_slashes: listener.merge_slashes,
            escaped_slashes: listener.escaped_slashes,
        }
    }

    /// Whether a path can change or be refused under these rules at all.
    pub fn any(&self) -> bool {
        self.normalize || self.escaped_slashes != EscapedSlashes::Keep
    }
}

/// The path the request goes on with: the normal form of `path_and_query` (an
/// origin-form target: `/a/b?q`), or `None` when it is normal already. `Err` is why
/// the request is refused (an encoded slash, when the rules say `reject`).
pub fn normalize(path_and_query: &str, rules: Rules) -> Result<Option<String>, &'static str> {
    let (path, query) = match path_and_query.find('?') {
        Some(q) => path_and_query.split_at(q),
        None => (path_and_query, ""),
    };
    let merge_slashes = rules.normalize && rules.merge_slashes;
    let repeated = merge_slashes && path.contains("//");
    if !path.starts_with('/') || !(repeated || needs_work(path.as_bytes())) {
        return Ok(None);
    }
    // Not a URI character at all (RFC 3986), and a slash to upstreams that read paths
    // as browsers do (WHATWG URL): `/public\..\admin` is `/admin` to them.
    if rules.escaped_slashes == EscapedSlashes::Reject && path.contains('\\') {
        return Err("backslash in the path");
    }
    let mut owned = Cow::Borrowed(path);
    if rules.escaped_slashes != EscapedSlashes::Keep && has_escaped_slash(path.as_bytes()) {
        if rules.escaped_slashes == EscapedSlashes::Reject {
            return Err("encoded slash in the path");
        }
        owned = Cow::Owned(decode_slashes(path));
    }
    let mut out = if rules.normalize {
        remove_dot_segments(&decode_unreserved(&owned), merge_slashes)
    } else {
        owned.into_owned()
    };
    if out == path {
        return Ok(None);
    }
    out.push_str(query);
    Ok(Some(out))
}

/// Whether `path` holds `%2F` or `%5C` (in either case).
fn has_escaped_slash(path: &[u8]) -> bool {
    path.windows(3).any(|w| {
        w[0] == b'%'
            && ((w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f'))
                || (w[1] == b'5' && w[2].eq_ignore_ascii_case(&b'c')))
    })
}

/// `%2F` becomes `/` and `%5C` becomes `\`; the rest stays as it is.
fn decode_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 3).unwrap_or("");
        match code {
            "2F" | "2f" => out.push('/'),
            "5C" | "5c" => out.push('\\'),
            _ => {
                out.push('%');
                rest = &rest[at + 1..];
                continue;
            }
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    out
}

/// Whether `path` has a percent-encoding, a backslash or a segment that starts with
/// a dot.
fn needs_work(path: &[u8]) -> bool {
    path.iter()
        .enumerate()
        .any(|(i, &b)| b == b'%' || b == b'\\' || (b == b'.' && i > 0 && path[i - 1] == b'/'))
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

    fn rules(merge_slashes: bool, escaped_slashes: EscapedSlashes) -> Rules {
        Rules {
            normalize: true,
            merge_slashes,
            escaped_slashes,
        }
    }

    /// `p` under `rules`: its new form, itself when unchanged, or why it is refused.
    fn under(rules: Rules, p: &str) -> Result<String, &'static str> {
        normalize(p, rules).map(|n| n.unwrap_or_else(|| p.to_string()))
    }

    fn n(p: &str) -> String {
        under(rules(false, EscapedSlashes::Keep), p).expect("kept")
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
            assert_eq!(
                normalize(p, rules(false, EscapedSlashes::Keep)),
                Ok(None),
                "{p}"
            );
        }
        let strict = rules(true, EscapedSlashes::Reject);
        assert_eq!(normalize("/a/b/?q=//", strict), Ok(None));
        assert_eq!(normalize("/a/b?q=%2F", strict), Ok(None));
    }

    #[test]
    fn repeated_slashes_merge_when_asked() {
        let m = |p: &str| under(rules(true, EscapedSlashes::Keep), p).expect("kept");
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

    #[test]
    fn encoded_slashes_are_kept_refused_or_decoded_as_the_listener_says() {
        let keep = rules(false, EscapedSlashes::Keep);
        let reject = rules(false, EscapedSlashes::Reject);
        let decode = rules(false, EscapedSlashes::Decode);
        for p in ["/public%2F..%2Fadmin", "/a%2fb", "/a%5Cb", "/a%5c..%5cb"] {
            assert_eq!(under(reject, p), Err("encoded slash in the path"), "{p}");
        }
        // A raw backslash, which upstreams that decode `%5C` into one may read as `/`.
        for p in ["/public\\..\\admin", "/a\\b"] {
            assert_eq!(under(reject, p), Err("backslash in the path"), "{p}");
            assert_eq!(under(keep, p).as_deref(), Ok(p), "{p}");
        }
        assert_eq!(under(reject, "/a?q=\\").as_deref(), Ok("/a?q=\\"));
        assert_eq!(
            under(keep, "/public%2f..%2Fadmin").as_deref(),
            Ok("/public%2F..%2Fadmin")
        );
        // Decoded first, so the dot segments they hid are removed with the others.
        assert_eq!(
            under(decode, "/public%2F..%2Fadmin").as_deref(),
            Ok("/admin")
        );
        assert_eq!(under(decode, "/a%2fb%5Cc%5c").as_deref(), Ok("/a/b\\c\\"));
        assert_eq!(
            under(rules(true, EscapedSlashes::Decode), "/a%2F%2Fb").as_deref(),
            Ok("/a/b")
        );
        // Other encodings, the query, and a `%` that encodes nothing are not slashes.
        assert_eq!(
            under(reject, "/a%2Eb%25%2/?x=%2F").as_deref(),
            Ok("/a.b%25%2/?x=%2F")
        );
        assert_eq!(under(decode, "/a%2%2F").as_deref(), Ok("/a%2/"));
        // Without `normalize_path`, decoding is all that happens.
        let only_decode = Rules {
            normalize: false,
            ..decode
        };
        assert_eq!(
            under(only_decode, "/a/../b%2Fc").as_deref(),
            Ok("/a/../b/c")
        );
        assert_eq!(
            normalize("/a/../b", only_decode),
            Ok(None),
            "without normalize_path, dot segments stay"
        );
    }
}
