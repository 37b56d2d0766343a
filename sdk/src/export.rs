//! The component's exports (Wasm builds only): `weft:filter/handler` implemented for any
//! `Filter`, and the hidden items `export_filter!` expands to.

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::time::Duration;

use http::StatusCode;

use crate::bindings::exports::weft::filter::handler::Guest;
use crate::bindings::weft::filter::types;
use crate::host;
use crate::log::Level;
use crate::runtime::Instance;
use crate::{Action, BodyAction, Completion, Filter, LocalResponse};

thread_local! {
    // The one configured filter of this Wasm instance. It is type-erased because a
    // generic `static` is not possible; the downcast costs a type-id comparison.
    static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// The type `export_filter!` hands to the generated export macro.
#[doc(hidden)]
pub struct Adapter<F>(PhantomData<F>);

fn with_instance<F: Filter, R>(run: impl FnOnce(&mut Instance<F>) -> R) -> R {
    INSTANCE.with_borrow_mut(|slot| {
        match slot.as_mut().and_then(|b| b.downcast_mut::<Instance<F>>()) {
            Some(instance) => run(instance),
            None => {
                let message = "weft-sdk: a phase was called before `configure` succeeded";
                host::log(Level::Error, message);
                panic!("{message}");
            }
        }
    })
}

impl<F: Filter> Guest for Adapter<F> {
    fn configure(config: Vec<u8>) -> Result<(), String> {
        let instance = Instance::<F>::configure(&config).map_err(|e| e.to_string())?;
        INSTANCE.with_borrow_mut(|slot| *slot = Some(Box::new(instance)));
        Ok(())
    }

    fn on_request_headers(request: u64) -> types::Action {
        action(with_instance::<F, _>(|i| i.on_request_headers(request)))
    }

    fn on_request_body(request: u64, chunk: Vec<u8>, end_of_stream: bool) -> types::BodyAction {
        body_action(with_instance::<F, _>(|i| {
            i.on_request_body(request, chunk, end_of_stream)
        }))
    }

    fn on_request_trailers(request: u64) -> types::Action {
        action(with_instance::<F, _>(|i| i.on_request_trailers(request)))
    }

    fn on_response_headers(request: u64) -> types::Action {
        action(with_instance::<F, _>(|i| i.on_response_headers(request)))
    }

    fn on_response_body(request: u64, chunk: Vec<u8>, end_of_stream: bool) -> types::BodyAction {
        body_action(with_instance::<F, _>(|i| {
            i.on_response_body(request, chunk, end_of_stream)
        }))
    }

    fn on_response_trailers(request: u64) -> types::Action {
        action(with_instance::<F, _>(|i| i.on_response_trailers(request)))
    }

    fn on_complete(request: u64, info: types::Completion) {
        let info = completion(info);
        with_instance::<F, _>(|i| i.on_complete(request, &info))
    }
}

fn local_response(response: LocalResponse) -> types::LocalResponse {
    let (status, headers, body) = response.into_parts();
    types::LocalResponse {
        status: status.as_u16(),
        headers: headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect(),
        body,
    }
}

fn action(action: Action) -> types::Action {
    match action {
        Action::Continue => types::Action::Continue,
        Action::Respond(r) => types::Action::Respond(local_response(r)),
        Action::Route(u) => types::Action::Route(types::Upstream {
            cluster: u.cluster,
            hash_key: u.hash_key,
        }),
        Action::Retry => types::Action::Retry,
    }
}

fn body_action(action: BodyAction) -> types::BodyAction {
    match action {
        BodyAction::Continue => types::BodyAction::Continue,
        BodyAction::Replace(bytes) => types::BodyAction::Replace(bytes),
        BodyAction::Respond(r) => types::BodyAction::Respond(local_response(r)),
    }
}

fn completion(info: types::Completion) -> Completion {
    Completion {
        status: StatusCode::from_u16(info.status).ok(),
        request_body_bytes: info.request_body_bytes,
        response_body_bytes: info.response_body_bytes,
        duration: Duration::from_nanos(info.duration_ns),
        upstream_time: info.upstream_ns.map(Duration::from_nanos),
        cluster: info.cluster,
        retries: info.retries,
        error: info.error,
    }
}
