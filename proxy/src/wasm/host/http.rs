//! `weft:filter/http`: the message being filtered, read and written in place.

use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};

use crate::wasm::bindings::weft::filter::http::Host;
use crate::wasm::bindings::{BodyMode, HeaderError, Message};
use crate::wasm::state::{HeaderEdit, HostState, Phase};

type R<T> = wasmtime::Result<T>;

impl HostState {
    fn header_map(&self, msg: Message) -> Option<&HeaderMap> {
        let c = &self.call;
        match msg {
            Message::Request => c.request.as_ref().map(|r| r.headers()),
            Message::RequestTrailers => c.request_trailers.as_ref(),
            Message::Response => c.response.as_ref().map(|r| r.headers()),
            Message::ResponseTrailers => c.response_trailers.as_ref(),
        }
    }

    /// The header map a write may change in the running phase.
    fn header_map_mut(&mut self, msg: Message) -> Result<&mut HeaderMap, HeaderError> {
        let phase = self.call.phase;
        let c = &mut self.call;
        let writable = match msg {
            Message::Request => {
                phase.is_some_and(|p| p == Phase::RequestHeaders || p == Phase::RequestBody)
            }
            Message::RequestTrailers => phase == Some(Phase::RequestTrailers),
            Message::Response => c.response_writable && phase.is_some_and(|p| !p.is_request()),
            Message::ResponseTrailers => phase == Some(Phase::ResponseTrailers),
        };
        if !writable {
            return Err(HeaderError::Immutable);
        }
        match msg {
            Message::Request => c.request.as_mut().map(|r| r.headers_mut()),
            Message::RequestTrailers => c.request_trailers.as_mut(),
            Message::Response => c.response.as_mut().map(|r| r.headers_mut()),
            Message::ResponseTrailers => c.response_trailers.as_mut(),
        }
        .ok_or(HeaderError::Immutable)
    }

    /// Charges a write against the filter's header budget.
    fn charge(&mut self, len: usize) -> Result<(), HeaderError> {
        if len > self.call.part.header_budget {
            return Err(HeaderError::TooLarge);
        }
        self.call.part.header_budget -= len;
        Ok(())
    }

    /// Whether a write to `msg` is kept for the response to come: response headers
    /// written in the request-headers phase.
    fn for_the_response(&self, msg: Message) -> bool {
        msg == Message::Response
            && self.call.phase == Some(Phase::RequestHeaders)
            && self.call.response_edits.is_some()
    }

    /// Keeps an edit for the response to come.
    fn keep_edit(&mut self, edit: HeaderEdit) {
        if let Some(edits) = self.call.response_edits.as_mut() {
            edits.push(edit);
        }
    }

    fn request_writable(&self) -> bool {
        matches!(
            self.call.phase,
            Some(Phase::RequestHeaders | Phase::RequestBody)
        )
    }
}

impl Host for HostState {
    fn method(&mut self) -> R<String> {
        Ok(self
            .call
            .request
            .as_ref()
            .map(|r| r.method().as_str().to_string())
            .unwrap_or_default())
    }

    fn set_method(&mut self, method: String) -> R<Result<(), HeaderError>> {
        if !self.request_writable() {
            return Ok(Err(HeaderError::Immutable));
        }
        let Ok(m) = Method::from_bytes(method.as_bytes()) else {
            return Ok(Err(HeaderError::InvalidValue));
        };
        if let Some(r) = self.call.request.as_mut() {
            *r.method_mut() = m;
        }
        Ok(Ok(()))
    }

    fn scheme(&mut self) -> R<String> {
        let tls = self
            .call
            .scope
            .as_ref()
            .and_then(|s| s.conn.as_ref())
            .is_some_and(|c| c.tls.is_some());
        Ok(if tls { "https" } else { "http" }.to_string())
    }

    fn authority(&mut self) -> R<Option<String>> {
        Ok(self
            .call
            .request
            .as_ref()
            .and_then(|r| crate::proxy::authority_of(r).map(str::to_string)))
    }

    fn set_authority(&mut self, authority: String) -> R<Result<(), HeaderError>> {
        if !self.request_writable() {
            return Ok(Err(HeaderError::Immutable));
        }
        if Authority::try_from(authority.as_str()).is_err() {
            return Ok(Err(HeaderError::InvalidValue));
        }
        if let Err(e) = self.charge(authority.len()) {
            return Ok(Err(e));
        }
        let Some(r) = self.call.request.as_mut() else {
            return Ok(Err(HeaderError::Immutable));
        };
        let Ok(value) = HeaderValue::from_str(&authority) else {
            return Ok(Err(HeaderError::InvalidValue));
        };
        if r.uri().authority().is_some() {
            let mut parts = r.uri().clone().into_parts();
            parts.authority = Authority::try_from(authority.as_str()).ok();
            if let Ok(uri) = Uri::from_parts(parts) {
                *r.uri_mut() = uri;
            }
        }
        if r.headers().contains_key(HOST) || r.uri().authority().is_none() {
            r.headers_mut().insert(HOST, value);
        }
        Ok(Ok(()))
    }

    fn path(&mut self) -> R<String> {
        Ok(self
            .call
            .request
            .as_ref()
            .and_then(|r| r.uri().path_and_query())
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into()))
    }

    fn set_path(&mut self, path: String) -> R<Result<(), HeaderError>> {
        if !self.request_writable() {
            return Ok(Err(HeaderError::Immutable));
        }
        let Ok(pq) = PathAndQuery::try_from(path.as_str()) else {
            return Ok(Err(HeaderError::InvalidValue));
        };
        if !pq.as_str().starts_with('/') {
            return Ok(Err(HeaderError::InvalidValue));
        }
        if let Err(e) = self.charge(path.len()) {
            return Ok(Err(e));
        }
        let Some(r) = self.call.request.as_mut() else {
            return Ok(Err(HeaderError::Immutable));
        };
        let mut parts = r.uri().clone().into_parts();
        parts.path_and_query = Some(pq);
        match Uri::from_parts(parts) {
            Ok(uri) => {
                *r.uri_mut() = uri;
                Ok(Ok(()))
            }
            Err(_) => Ok(Err(HeaderError::InvalidValue)),
        }
    }

    fn status(&mut self) -> R<Option<u16>> {
        Ok(self.call.response.as_ref().map(|r| r.status().as_u16()))
    }

    fn set_status(&mut self, status: u16) -> R<Result<(), HeaderError>> {
        let writable =
            self.call.response_writable && self.call.phase.is_some_and(|p| !p.is_request());
        let Some(r) = self.call.response.as_mut().filter(|_| writable) else {
            return Ok(Err(HeaderError::Immutable));
        };
        match StatusCode::from_u16(status) {
            Ok(s) if s != StatusCode::SWITCHING_PROTOCOLS => {
                *r.status_mut() = s;
                Ok(Ok(()))
            }
            _ => Ok(Err(HeaderError::InvalidValue)),
        }
    }

    fn header(&mut self, msg: Message, name: String) -> R<Option<Vec<u8>>> {
        Ok(self
            .header_map(msg)
            .and_then(|h| h.get(name.as_str()))
            .map(|v| v.as_bytes().to_vec()))
    }

    fn header_all(&mut self, msg: Message, name: String) -> R<Vec<Vec<u8>>> {
        Ok(self
            .header_map(msg)
            .map(|h| {
                h.get_all(name.as_str())
                    .iter()
                    .map(|v| v.as_bytes().to_vec())
                    .collect()
            })
            .unwrap_or_default())
    }

    fn headers(&mut self, msg: Message) -> R<Vec<(String, Vec<u8>)>> {
        Ok(self
            .header_map(msg)
            .map(|h| {
                h.iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn set_header(
        &mut self,
        msg: Message,
        name: String,
        value: Vec<u8>,
    ) -> R<Result<(), HeaderError>> {
        Ok(self.write_header(msg, &name, value, false))
    }

    fn append_header(
        &mut self,
        msg: Message,
        name: String,
        value: Vec<u8>,
    ) -> R<Result<(), HeaderError>> {
        Ok(self.write_header(msg, &name, value, true))
    }

    fn remove_header(&mut self, msg: Message, name: String) -> R<Result<(), HeaderError>> {
        let Ok(name) = self.names.parse(&name) else {
            return Ok(Err(HeaderError::InvalidName));
        };
        if self.for_the_response(msg) {
            self.keep_edit(HeaderEdit::Remove(name));
            return Ok(Ok(()));
        }
        Ok(self.header_map_mut(msg).map(|h| {
            h.remove(name);
        }))
    }

    fn set_body_mode(&mut self, msg: Message, mode: BodyMode) -> R<Result<(), HeaderError>> {
        match (msg, self.call.phase) {
            (Message::Request, Some(Phase::RequestHeaders)) => self.call.part.request_body = mode,
            (Message::Response, Some(Phase::ResponseHeaders)) => {
                self.call.part.response_body = mode
            }
            _ => return Ok(Err(HeaderError::Immutable)),
        }
        Ok(Ok(()))
    }
}

impl HostState {
    fn write_header(
        &mut self,
        msg: Message,
        name: &str,
        value: Vec<u8>,
        append: bool,
    ) -> Result<(), HeaderError> {
        let name = self
            .names
            .parse(name)
            .map_err(|_| HeaderError::InvalidName)?;
        // The value the guest's bytes were lifted into becomes the header's own
        // storage, without another copy.
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
            .map_err(|_| HeaderError::InvalidValue)?;
        if self.for_the_response(msg) {
            self.charge(name.as_str().len() + value.len())?;
            self.keep_edit(match append {
                true => HeaderEdit::Append(name, value),
                false => HeaderEdit::Set(name, value),
            });
            return Ok(());
        }
        // Writable at all? Only then charge the budget.
        self.header_map_mut(msg)?;
        self.charge(name.as_str().len() + value.len())?;
        let headers = self.header_map_mut(msg)?;
        if append {
            headers.append(name, value);
        } else {
            headers.insert(name, value);
        }
        Ok(())
    }
}
