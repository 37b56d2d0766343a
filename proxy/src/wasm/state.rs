//! What a filter's store holds: its limits, a deny-all WASI context (or the
//! operator's grants), and the request being filtered. The request's head is moved
//! in for the length of a call and moved back out after, so a filter reads and
//! writes the proxy's own header maps without copying them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use tokio::task::JoinHandle;
use wasmtime::component::ResourceTable;
use wasmtime::StoreLimits;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::weft::filter::outbound::{CallError, Response as CallResponse};
use super::bindings::BodyMode;
use super::FilterShared;
use crate::server::ConnInfo;
use crate::snapshot::Snapshot;

/// The phases a filter may implement, as bits of a mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    RequestHeaders = 0,
    RequestBody = 1,
    RequestTrailers = 2,
    ResponseHeaders = 3,
    ResponseBody = 4,
    ResponseTrailers = 5,
    Complete = 6,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::RequestHeaders,
        Phase::RequestBody,
        Phase::RequestTrailers,
        Phase::ResponseHeaders,
        Phase::ResponseBody,
        Phase::ResponseTrailers,
        Phase::Complete,
    ];

    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::RequestHeaders => "request_headers",
            Phase::RequestBody => "request_body",
            Phase::RequestTrailers => "request_trailers",
            Phase::ResponseHeaders => "response_headers",
            Phase::ResponseBody => "response_body",
            Phase::ResponseTrailers => "response_trailers",
            Phase::Complete => "complete",
        }
    }

    pub fn is_request(self) -> bool {
        matches!(
            self,
            Phase::RequestHeaders | Phase::RequestBody | Phase::RequestTrailers
        )
    }
}

/// What the proxy tracks about one filter's part in one request, across its calls.
/// It lives in the instance during a call and in the request's chain run between
/// calls when the instance goes back to the pool (see `chain::run`).
#[derive(Clone, Copy, Default)]
pub struct Part {
    /// Header bytes the filter may still write for this request.
    pub header_budget: usize,
    /// Body modes the filter chose in this request's header phases.
    pub request_body: BodyMode,
    pub response_body: BodyMode,
    pub next_call: u32,
    pub calls_made: u32,
}

/// Keys and values of all request values together, per request.
pub const MAX_REQUEST_VALUE_BYTES: usize = 16 * 1024;

/// What the host functions reach of the request a call belongs to, in one
/// allocation per request with a chain, lent to each call's instance: one reference
/// count moved per call, on a line of the request's own, where lending the parts
/// apart moved three (the snapshot's on a line that every worker writes).
#[derive(Default)]
pub struct RequestScope {
    /// The downstream connection; `None` only for calls made outside the proxy's
    /// request path (the `filter_call` benchmark).
    pub conn: Option<Arc<ConnInfo>>,
    /// The snapshot the request started with (outbound calls find clusters in it);
    /// `None` as `conn`.
    pub snapshot: Option<Arc<Snapshot>>,
    /// The request values its filters set (`context.set-request-value`).
    pub values: Mutex<RequestValues>,
}

/// A request's values (`context.request-value`), shared by the filters of its chain.
/// A handful of keys per request: a list is faster than a map at that size.
#[derive(Default)]
pub struct RequestValues {
    entries: Vec<(String, Vec<u8>)>,
    bytes: usize,
}

impl RequestValues {
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// Sets `key`, unless that takes the request past `MAX_REQUEST_VALUE_BYTES`
    /// (then false, and nothing changes).
    pub fn set(&mut self, key: String, value: Vec<u8>) -> bool {
        let old = self.entries.iter().position(|(k, _)| *k == key);
        let freed = old.map_or(0, |i| self.entries[i].0.len() + self.entries[i].1.len());
        let bytes = self.bytes - freed + key.len() + value.len();
        if bytes > MAX_REQUEST_VALUE_BYTES {
            return false;
        }
        self.bytes = bytes;
        match old {
            Some(i) => self.entries[i].1 = value,
            None => self.entries.push((key, value)),
        }
        true
    }
}

/// A change to the response that a request-headers phase asked for before the
/// response existed; the proxy makes it when the response is there (see
/// `proxy::handle`), before the response phases, so a filter that only adds
/// response headers needs no response-phase call.
#[derive(Clone, Debug)]
pub enum HeaderEdit {
    Set(HeaderName, HeaderValue),
    Append(HeaderName, HeaderValue),
    Remove(HeaderName),
}

impl HeaderEdit {
    /// Makes `edits`, in the order they were asked for.
    pub fn apply(edits: Vec<HeaderEdit>, headers: &mut HeaderMap) {
        for edit in edits {
            match edit {
                HeaderEdit::Set(n, v) => {
                    headers.insert(n, v);
                }
                HeaderEdit::Append(n, v) => {
                    headers.append(n, v);
                }
                HeaderEdit::Remove(n) => {
                    headers.remove(n);
                }
            }
        }
    }
}

/// The request a call belongs to. Empty between requests.
#[derive(Default)]
pub struct Call {
    pub request_id: u64,
    pub phase: Option<Phase>,
    pub request: Option<Request<()>>,
    pub request_trailers: Option<HeaderMap>,
    pub response: Option<Response<()>>,
    pub response_trailers: Option<HeaderMap>,
    /// Whether the response head may still change (false once it is sent).
    pub response_writable: bool,
    /// In the request-headers phase: the response edits the chain asked for so far.
    pub response_edits: Option<Vec<HeaderEdit>>,
    /// The request being served; `None` in `configure` and while idle.
    pub scope: Option<Arc<RequestScope>>,
    pub part: Part,
    /// Set by `keep-instance`: the guest holds state for this request, so the
    /// request keeps this instance until it ends.
    pub keep: bool,
    /// Set by `skip-phase`: the running phase is not implemented.
    pub skipped: bool,
    pub outbound: HashMap<u32, JoinHandle<Result<CallResponse, CallError>>>,
}

impl Call {
    /// Forgets everything about the previous request. Field by field rather than
    /// by assigning a new `Call` (which moves the whole struct and hashes a new
    /// map's keys, every request); the pattern names every field, so one added
    /// later cannot be forgotten here.
    pub fn reset(&mut self, request_id: u64, part: Part) {
        let Call {
            request_id: id,
            phase,
            request,
            request_trailers,
            response,
            response_trailers,
            response_writable,
            response_edits,
            scope,
            part: old_part,
            keep,
            skipped,
            outbound,
        } = self;
        for (_, pending) in outbound.drain() {
            pending.abort();
        }
        *id = request_id;
        *phase = None;
        *request = None;
        *request_trailers = None;
        *response = None;
        *response_trailers = None;
        *response_writable = false;
        *response_edits = None;
        *scope = None;
        *old_part = part;
        *keep = false;
        *skipped = false;
    }

    /// Whether the instance may serve other requests before this one's next call:
    /// the guest keeps nothing for the request and no outbound call is pending.
    pub fn holds_nothing(&self) -> bool {
        !self.keep && self.outbound.is_empty()
    }
}

// The type is generated by bindgen, so it cannot carry a derive.
#[allow(clippy::derivable_impls)]
impl Default for BodyMode {
    fn default() -> Self {
        BodyMode::Skip
    }
}

/// The header names a filter writes, parsed once per instance: most filters write
/// the same few on every request, and parsing a name that is not a standard one
/// copies it into a new allocation each time. Names only, never values; they are
/// the filter's own and never shown to it, so nothing passes between requests.
#[derive(Default)]
pub struct HeaderNames(Vec<HeaderName>);

impl HeaderNames {
    const MAX: usize = 16;

    /// `name` as a `HeaderName`, from the cache when it was written before. The
    /// comparison ignores ASCII case, as parsing does (it lowers a valid name's
    /// letters), so "X-Tag" finds "x-tag" rather than filling the list with copies.
    pub fn parse(&mut self, name: &str) -> Result<HeaderName, http::header::InvalidHeaderName> {
        // Filters mostly write names in lower case, as they are kept: an exact
        // comparison (a `memcmp`) finds those before the byte-by-byte one runs.
        if let Some(known) = self.0.iter().find(|n| n.as_str() == name).or_else(|| {
            self.0
                .iter()
                .find(|n| n.as_str().eq_ignore_ascii_case(name))
        }) {
            return Ok(known.clone());
        }
        let parsed = HeaderName::from_bytes(name.as_bytes())?;
        if self.0.len() < Self::MAX {
            self.0.push(parsed.clone());
        }
        Ok(parsed)
    }
}

pub struct HostState {
    pub filter: Arc<FilterShared>,
    pub names: HeaderNames,
    pub limits: StoreLimits,
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub call: Call,
    /// Epoch ticks this call has run for; past the budget the call traps.
    pub ticks: u64,
    pub tick_budget: u64,
    /// Set when the CPU budget stopped the call, to tell that trap from others.
    pub out_of_time: bool,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_parsed_once_and_stay_valid() {
        let mut names = HeaderNames::default();
        let a = names.parse("x-tag").expect("valid");
        let b = names.parse("x-tag").expect("valid");
        assert_eq!(a, b);
        assert_eq!(names.0.len(), 1);
        // Upper case is folded by the parser; the cache holds the lower-case form
        // and finds it for any case.
        assert_eq!(names.parse("X-Tag").expect("valid"), a);
        assert_eq!(names.0.len(), 1);
        assert!(names.parse("bad name").is_err());
        assert!(names.parse("x-tag\n").is_err());
        for i in 0..40 {
            names.parse(&format!("x-n{i}")).expect("valid");
        }
        assert_eq!(names.0.len(), HeaderNames::MAX);
    }

    #[test]
    fn request_values_replace_and_stay_within_their_budget() {
        let mut v = RequestValues::default();
        assert!(v.set("a".into(), b"1".to_vec()));
        assert!(v.set("a".into(), b"22".to_vec()));
        assert_eq!(v.get("a"), Some(b"22".as_slice()));
        assert_eq!(v.get("b"), None);
        // Replacing frees what the old value took.
        let big = vec![0u8; MAX_REQUEST_VALUE_BYTES - 1];
        assert!(v.set("a".into(), big.clone()));
        assert_eq!(v.bytes, MAX_REQUEST_VALUE_BYTES);
        assert!(!v.set("b".into(), Vec::new()));
        assert_eq!(v.get("b"), None);
        assert!(v.set("a".into(), Vec::new()));
        assert!(v.set("b".into(), big[1..].to_vec()));
        assert_eq!(v.bytes, MAX_REQUEST_VALUE_BYTES);
    }
}
