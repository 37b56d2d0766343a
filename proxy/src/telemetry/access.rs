//! The access log: one event per request, target `weft::access`, written when the
//! response's last byte has gone (or the request failed).
//!
//! Written by `weft` (`init_logging`), each line is formatted here, straight from the
//! typed record, in the layout tracing-subscriber gives every other line (text or
//! JSON, one per line, the same fields in the same order; a test holds the two
//! alike). Through tracing-subscriber's own formatter the line cost as many
//! instructions as forwarding the request (about 29,000 in text and 36,000 in JSON,
//! against 37,000 for the rest of the request: each field went through `fmt` and a
//! visitor, and every name through the colour painter even with colours off). It
//! still obeys the log filter (`--log`, `RUST_LOG`, `/logging`): `enabled` asks it.
//! Without `init_logging` (the library in someone else's process), the record is
//! an ordinary tracing event.
//!
//! Lines are buffered per thread and written within `FLUSH_EVERY` (by the `weft-log`
//! thread, which sleeps while none are held) or as soon as a thread holds `FLUSH_AT`
//! bytes of them, and at exit (`flush`): a write per line was a system call per request, which cost a
//! busy proxy an eighth of its throughput. Envoy buffers its access logs likewise
//! (for a second by default), nginx with `access_log ... buffer=`. A process killed
//! outright loses at most the last `FLUSH_EVERY` of lines.

use std::cell::RefCell;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, Uri, Version};

use super::LogFormat;

pub const TARGET: &str = "weft::access";

/// What one finished request looked like.
pub struct AccessRecord<'a> {
    /// The number filters' log lines carry as `request`.
    pub request_id: u64,
    pub listener: &'a str,
    pub remote: SocketAddr,
    pub method: &'a Method,
    pub uri: &'a Uri,
    /// `:authority`, or the `Host` header, as the client sent it.
    pub authority: Option<&'a str>,
    /// The request's `X-Request-ID`: the client's, or the one the proxy made.
    pub x_request_id: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub version: Version,
    pub status: u16,
    /// A gRPC call's status, by name (none for other requests).
    pub grpc_status: Option<&'static str>,
    pub cluster: Option<&'a str>,
    pub upstream: Option<SocketAddr>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// From sending the request upstream to its response's head (the last attempt's).
    pub upstream_duration: Option<Duration>,
    pub duration: Duration,
    pub retries: u32,
    pub error: Option<&'a str>,
}

/// Whether access-log events are written at all: what only the log needs is not
/// gathered otherwise.
pub fn enabled() -> bool {
    tracing::enabled!(target: "weft::access", tracing::Level::INFO)
}

/// How `weft` writes its lines (set by `init_logging`).
#[derive(Clone, Copy)]
pub(super) struct Style {
    pub format: LogFormat,
    pub colours: bool,
}

static STYLE: OnceLock<Style> = OnceLock::new();

/// Held lines are written out within this long of the first of them.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A thread that holds this many bytes of lines writes them out itself.
const FLUSH_AT: usize = 32 * 1024;

/// Each thread's lines not yet written, for the `weft-log` thread to reach.
type Pending = Arc<Mutex<Vec<u8>>>;
static PENDING: Mutex<Vec<Pending>> = Mutex::new(Vec::new());

/// Has access lines written here, to standard error, as `style` says (the log
/// subscriber leaves them out).
pub(super) fn write_here(style: Style) {
    let _ = STYLE.set(style);
}

/// Whether a line is held that the writer has not been told of; the writer waits on
/// `HELD_LINES` while there is none, so an idle proxy's writer never wakes.
static DUE: Mutex<bool> = Mutex::new(false);
static HELD_LINES: Condvar = Condvar::new();

/// Tells the writer a thread holds lines (called when a thread's first line since
/// its last write is held), starting it the first time.
fn lines_held() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("weft-log".into())
            .spawn(write_out_held);
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the access log's writer: lines are written when 32KiB of them are held, and at exit");
        }
    });
    let mut due = DUE.lock().unwrap_or_else(|p| p.into_inner());
    if !*due {
        *due = true;
        HELD_LINES.notify_one();
    }
}

/// The `weft-log` thread: once told of held lines, waits `FLUSH_EVERY` for more to
/// gather, then writes them all out.
fn write_out_held() {
    loop {
        let mut due = DUE.lock().unwrap_or_else(|p| p.into_inner());
        while !*due {
            due = HELD_LINES.wait(due).unwrap_or_else(|p| p.into_inner());
        }
        drop(due);
        std::thread::sleep(FLUSH_EVERY);
        // Cleared before the lines are taken: a line held after its thread's lines
        // were written tells the writer again.
        *DUE.lock().unwrap_or_else(|p| p.into_inner()) = false;
        flush();
    }
}

/// Writes out every line held (what `weft-log` does `FLUSH_EVERY` after a line is
/// held; call it before the process exits).
pub fn flush() {
    let all: Vec<Pending> = PENDING.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for pending in all {
        write_out(&mut pending.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// Writes `lines` to standard error and empties them, under their thread's lock, so
/// that a thread's lines go out in order. A failed write (standard error closed)
/// loses them, as tracing-subscriber's writer would.
fn write_out(lines: &mut Vec<u8>) {
    if !lines.is_empty() {
        let _ = std::io::stderr().lock().write_all(lines);
        lines.clear();
    }
}

pub fn log(r: &AccessRecord<'_>) {
    let Some(style) = STYLE.get() else {
        return log_event(r);
    };
    if !enabled() {
        return;
    }
    thread_local! {
        static LINE: RefCell<Line> = RefCell::new(Line::default());
        static HELD: Pending = {
            let held = Pending::default();
            PENDING.lock().unwrap_or_else(|p| p.into_inner()).push(held.clone());
            held
        };
    }
    LINE.with_borrow_mut(|line| {
        line.buf.clear();
        line.write(r, *style, SystemTime::now());
        let first = HELD.with(|held| {
            let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
            let first = held.is_empty();
            held.extend_from_slice(&line.buf);
            if held.len() >= FLUSH_AT {
                write_out(&mut held);
            }
            first
        });
        if first {
            lines_held();
        }
    });
}

/// The record as a tracing event, for processes that set up their own subscriber.
fn log_event(r: &AccessRecord<'_>) {
    // The query string may carry secrets; log the path only.
    tracing::info!(
        target: "weft::access",
        request_id = r.request_id,
        listener = r.listener,
        remote = %r.remote,
        method = %r.method,
        authority = r.authority.unwrap_or("-"),
        path = r.uri.path(),
        x_request_id = r.x_request_id.unwrap_or("-"),
        user_agent = r.user_agent.unwrap_or("-"),
        version = ?r.version,
        status = r.status,
        // Left out (not `-`) for requests that are not gRPC calls.
        grpc_status = r.grpc_status,
        cluster = r.cluster.unwrap_or("-"),
        upstream = %r.upstream.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        request_bytes = r.request_bytes,
        response_bytes = r.response_bytes,
        duration_ms = millis(r.duration),
        // Left out for requests that got no response head from an upstream.
        upstream_ms = r.upstream_duration.map(millis),
        retries = r.retries,
        error = r.error.unwrap_or("-"),
    );
}

/// Whole microseconds: `0.321`, not `0.32133900000000004`.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// A thread's line buffer, and the formatted second its timestamps last began with.
#[derive(Default)]
struct Line {
    buf: Vec<u8>,
    second: Option<(u64, String)>,
}

/// A field's value: text (quoted in text lines, a string in JSON), or a number or
/// token written as it is in both (`version=HTTP/1.1` is unquoted in text, as
/// tracing-subscriber writes a `Debug` value).
enum Value<'a> {
    Str(&'a str),
    Token(&'a str),
    U64(u64),
    Millis(Duration),
    Addr(SocketAddr),
}

impl Line {
    fn write(&mut self, r: &AccessRecord<'_>, style: Style, now: SystemTime) {
        let fields: [(&str, Option<Value<'_>>); 19] = [
            ("request_id", Some(Value::U64(r.request_id))),
            ("listener", Some(Value::Str(r.listener))),
            ("remote", Some(Value::Addr(r.remote))),
            ("method", Some(Value::Token(r.method.as_str()))),
            ("authority", Some(Value::Str(r.authority.unwrap_or("-")))),
            ("path", Some(Value::Str(r.uri.path()))),
            (
                "x_request_id",
                Some(Value::Str(r.x_request_id.unwrap_or("-"))),
            ),
            ("user_agent", Some(Value::Str(r.user_agent.unwrap_or("-")))),
            ("version", Some(Value::Token(version_name(r.version)))),
            ("status", Some(Value::U64(r.status.into()))),
            ("grpc_status", r.grpc_status.map(Value::Str)),
            ("cluster", Some(Value::Str(r.cluster.unwrap_or("-")))),
            (
                "upstream",
                Some(match r.upstream {
                    Some(a) => Value::Addr(a),
                    None => Value::Token("-"),
                }),
            ),
            ("request_bytes", Some(Value::U64(r.request_bytes))),
            ("response_bytes", Some(Value::U64(r.response_bytes))),
            ("duration_ms", Some(Value::Millis(r.duration))),
            ("upstream_ms", r.upstream_duration.map(Value::Millis)),
            ("retries", Some(Value::U64(r.retries.into()))),
            ("error", Some(Value::Str(r.error.unwrap_or("-")))),
        ];
        let fields = fields.iter().filter_map(|(n, v)| Some((*n, v.as_ref()?)));
        match style.format {
            LogFormat::Json => {
                self.buf.extend_from_slice(b"{\"timestamp\":\"");
                self.timestamp(now);
                self.buf.extend_from_slice(b"\",\"level\":\"INFO\"");
                for (name, value) in fields {
                    self.buf.extend_from_slice(b",\"");
                    self.buf.extend_from_slice(name.as_bytes());
                    self.buf.extend_from_slice(b"\":");
                    self.json_value(value);
                }
                self.buf
                    .extend_from_slice(b",\"target\":\"weft::access\"}\n");
            }
            LogFormat::Text => {
                // tracing-subscriber's layout and, on a terminal, its colours: a dimmed
                // time and target, a green level, italic names and dimmed `=`.
                let (dim, green, italic, reset) = match style.colours {
                    true => ("\x1b[2m", "\x1b[32m", "\x1b[3m", "\x1b[0m"),
                    false => ("", "", "", ""),
                };
                self.put(dim);
                self.timestamp(now);
                self.put(reset);
                self.put(" ");
                self.put(green);
                self.put(" INFO");
                self.put(reset);
                self.put(" ");
                self.put(dim);
                self.put(TARGET);
                self.put(reset);
                self.put(dim);
                self.put(":");
                self.put(reset);
                for (name, value) in fields {
                    self.put(" ");
                    self.put(italic);
                    self.put(name);
                    self.put(reset);
                    self.put(dim);
                    self.put("=");
                    self.put(reset);
                    self.text_value(value);
                }
                self.put("\n");
            }
        }
    }

    fn put(&mut self, s: &str) {
        self.buf.extend_from_slice(s.as_bytes());
    }

    fn json_value(&mut self, v: &Value<'_>) {
        match v {
            Value::Str(s) | Value::Token(s) => {
                let mut ser = serde_json::Serializer::new(&mut self.buf);
                let _ = serde::Serializer::serialize_str(&mut ser, s);
            }
            Value::Addr(a) => {
                self.buf.push(b'"');
                self.addr(*a);
                self.buf.push(b'"');
            }
            Value::U64(n) => self.number(*n),
            Value::Millis(d) => self.millis(*d),
        }
    }

    fn text_value(&mut self, v: &Value<'_>) {
        match v {
            Value::Str(s) => {
                // `Debug` quoting, as tracing-subscriber writes a string field; most
                // values need no escape and are copied between quotes.
                let plain = s
                    .bytes()
                    .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
                if plain {
                    self.buf.push(b'"');
                    self.put(s);
                    self.buf.push(b'"');
                } else {
                    let _ = write!(self.buf, "{s:?}");
                }
            }
            Value::Token(s) => self.put(s),
            Value::Addr(a) => self.addr(*a),
            Value::U64(n) => self.number(*n),
            Value::Millis(d) => self.millis(*d),
        }
    }

    fn number(&mut self, n: u64) {
        self.put(itoa::Buffer::new().format(n));
    }

    /// Milliseconds to the microsecond, as an `f64`'s shortest form writes them
    /// (`0.321`, `0.3`, `12.0`), without the float.
    fn millis(&mut self, d: Duration) {
        let micros = d.as_micros();
        self.put(itoa::Buffer::new().format(micros / 1000));
        let mut frac = (micros % 1000) as u32;
        if frac == 0 {
            self.put(".0");
            return;
        }
        let mut digits = 3;
        while frac.is_multiple_of(10) {
            frac /= 10;
            digits -= 1;
        }
        let _ = write!(self.buf, ".{frac:0digits$}");
    }

    fn addr(&mut self, a: SocketAddr) {
        match a.ip() {
            IpAddr::V4(ip) => {
                for (i, octet) in ip.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.buf.push(b'.');
                    }
                    self.put(itoa::Buffer::new().format(octet));
                }
                self.buf.push(b':');
                self.put(itoa::Buffer::new().format(a.port()));
            }
            IpAddr::V6(_) => {
                let _ = write!(self.buf, "{a}");
            }
        }
    }

    /// RFC 3339 in UTC to the microsecond, as tracing-subscriber's default timer
    /// writes it (`2026-11-28T09:24:10.602828Z`); the part up to the second is
    /// formatted (by humantime) once a second.
    fn timestamp(&mut self, now: SystemTime) {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        if self.second.as_ref().is_none_or(|(s, _)| *s != secs) {
            let whole = UNIX_EPOCH + Duration::from_secs(secs);
            let text = humantime::format_rfc3339_seconds(whole).to_string();
            self.second = Some((secs, text.trim_end_matches('Z').to_string()));
        }
        if let Some((_, prefix)) = &self.second {
            self.buf.extend_from_slice(prefix.as_bytes());
        }
        let _ = write!(self.buf, ".{:06}Z", since.subsec_micros());
    }
}

fn version_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What tracing-subscriber writes for the record's event, in `format`.
    fn through_tracing(r: &AccessRecord<'_>, format: LogFormat, colours: bool) -> String {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let make = move || Sink(sink.clone());
        let builder = tracing_subscriber::fmt()
            .with_writer(make)
            .with_ansi(colours);
        let dispatch = match format {
            LogFormat::Text => tracing::Dispatch::new(builder.finish()),
            LogFormat::Json => tracing::Dispatch::new(builder.json().flatten_event(true).finish()),
        };
        tracing::dispatcher::with_default(&dispatch, || log_event(r));
        let bytes = out.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn here(r: &AccessRecord<'_>, format: LogFormat, colours: bool, now: SystemTime) -> String {
        let mut line = Line::default();
        line.write(r, Style { format, colours }, now);
        String::from_utf8(line.buf).unwrap()
    }

    /// The line without its timestamp (the text's first word, the JSON's field).
    fn untimed(line: &str, format: LogFormat) -> String {
        match format {
            LogFormat::Text => line
                .split_once('Z')
                .map(|(_, rest)| rest.to_string())
                .unwrap(),
            LogFormat::Json => {
                let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
                v.as_object_mut().unwrap().remove("timestamp");
                v.to_string()
            }
        }
    }

    #[test]
    fn lines_are_written_as_tracing_subscriber_writes_them() {
        let (get, post) = (Method::GET, Method::POST);
        let (uri, odd_uri) = (Uri::from_static("/a/b?secret=1"), Uri::from_static("/"));
        let typical = AccessRecord {
            request_id: 7,
            listener: "edge",
            remote: "203.0.113.9:41206".parse().unwrap(),
            method: &get,
            uri: &uri,
            authority: Some("example.com"),
            x_request_id: Some("7c9e6679-7425-40de-944b-e07fc1f90ae7"),
            user_agent: Some("curl/8.5.0"),
            version: Version::HTTP_11,
            status: 200,
            grpc_status: None,
            cluster: Some("api"),
            upstream: Some("10.0.0.1:8080".parse().unwrap()),
            request_bytes: 0,
            response_bytes: 1234,
            upstream_duration: Some(Duration::from_micros(150)),
            duration: Duration::from_micros(497),
            retries: 0,
            error: None,
        };
        let odd = AccessRecord {
            request_id: u64::MAX,
            remote: "[2001:db8::1]:443".parse().unwrap(),
            method: &post,
            uri: &odd_uri,
            authority: None,
            x_request_id: None,
            user_agent: Some("quo\"te\\ \u{7} tab\t é"),
            version: Version::HTTP_2,
            status: 503,
            grpc_status: Some("UNAVAILABLE"),
            cluster: None,
            upstream: None,
            upstream_duration: None,
            duration: Duration::from_millis(12),
            retries: 2,
            error: Some("no healthy endpoint"),
            ..typical
        };
        let whole_second = AccessRecord {
            duration: Duration::ZERO,
            upstream_duration: Some(Duration::from_micros(123_456_780)),
            ..typical
        };
        let now = SystemTime::now();
        for r in [&typical, &odd, &whole_second] {
            for (format, colours) in [
                (LogFormat::Text, false),
                (LogFormat::Text, true),
                (LogFormat::Json, false),
            ] {
                let (theirs, ours) = (
                    through_tracing(r, format, colours),
                    here(r, format, colours, now),
                );
                assert_eq!(
                    untimed(&ours, format),
                    untimed(&theirs, format),
                    "\nours:   {ours}theirs: {theirs}"
                );
                assert!(ours.ends_with('\n') && ours.matches('\n').count() == 1);
            }
        }
    }

    #[test]
    fn timestamps_are_rfc3339_to_the_microsecond_in_utc() {
        let at = UNIX_EPOCH + Duration::from_micros(1_795_857_850_602_828);
        let line = here(&sample(), LogFormat::Json, false, at);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["timestamp"], "2026-11-28T09:24:10.602828Z");
        // The cached second is not reused for the next one.
        let mut l = Line::default();
        l.write(
            &sample(),
            Style {
                format: LogFormat::Text,
                colours: false,
            },
            at,
        );
        l.buf.clear();
        l.write(
            &sample(),
            Style {
                format: LogFormat::Text,
                colours: false,
            },
            at + Duration::from_secs(1),
        );
        assert!(String::from_utf8(l.buf)
            .unwrap()
            .starts_with("2026-11-28T09:24:11.602828Z  INFO"));
    }

    fn sample() -> AccessRecord<'static> {
        static GET: Method = Method::GET;
        static URI: std::sync::LazyLock<Uri> = std::sync::LazyLock::new(|| Uri::from_static("/"));
        AccessRecord {
            request_id: 1,
            listener: "l",
            remote: "127.0.0.1:1".parse().unwrap(),
            method: &GET,
            uri: &URI,
            authority: None,
            x_request_id: None,
            user_agent: None,
            version: Version::HTTP_11,
            status: 200,
            grpc_status: None,
            cluster: None,
            upstream: None,
            request_bytes: 0,
            response_bytes: 0,
            upstream_duration: None,
            duration: Duration::ZERO,
            retries: 0,
            error: None,
        }
    }
}
