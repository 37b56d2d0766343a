//! The admin endpoint, off the data path (loopback by default):
//! `GET /ready`, `GET /live`, `GET /metrics`, `GET /config`, `GET /clusters`, `POST /reload`,
//! `GET` and `POST /logging`.

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ACCEPT, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::{App, ReloadError, Reloaded};
use crate::telemetry::{self, LogFilterError};

/// Serves until `stopped` turns true. That is when shutdown has finished, not when it
/// begins: during the drain `/ready` answers 503 and `/live` and `/metrics` still work.
pub async fn serve(listener: TcpListener, app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
            () = until_stopped(&mut stopped) => return,
        };
        let app = app.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(route(req, &app).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let mut conn = pin!(builder.serve_connection(TokioIo::new(tcp), svc));
            tokio::select! {
                _ = conn.as_mut() => return,
                () = until_stopped(&mut stopped) => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
}

async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    // An error means the app is gone, which is also stopped.
    let _ = stopped.wait_for(|s| *s).await;
}

async fn route(req: Request<Incoming>, app: &App) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET, "/ready") if app.is_ready() => text(StatusCode::OK, "ready\n"),
        (&Method::GET, "/ready") => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        (&Method::GET, "/metrics") => metrics(&req, app),
        (&Method::GET, "/config") => json(&effective_config(app)),
        (&Method::GET, "/clusters") => json(&clusters(app)),
        (&Method::POST, "/reload") => match app.reload().await {
            Ok(r) => text(StatusCode::OK, &reloaded(&r)),
            // Not the config's fault (400): this process is on its way out.
            Err(e @ ReloadError::ShuttingDown) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("reload refused: {e}\n"),
            ),
            Err(e @ ReloadError::Refused(_)) => {
                text(StatusCode::BAD_REQUEST, &format!("reload refused: {e}\n"))
            }
        },
        (&Method::GET, "/logging") => match telemetry::log_filter() {
            Some(f) => text(StatusCode::OK, &format!("{f}\n")),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("{}\n", LogFilterError::NotSetUp),
            ),
        },
        (&Method::POST, "/logging") => set_logging(req).await,
        (
            _,
            path @ ("/live" | "/ready" | "/metrics" | "/config" | "/clusters" | "/reload"
            | "/logging"),
        ) => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            // A 405 must say what is allowed (RFC 9110, 15.5.6).
            let allow = match path {
                "/reload" => "POST",
                "/logging" => "GET, POST",
                _ => "GET",
            };
            r.headers_mut()
                .insert(ALLOW, http::HeaderValue::from_static(allow));
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /ready /live /metrics /config /clusters /reload /logging\n",
        ),
    }
}

/// `POST /logging` with `EnvFilter` directives as the body (`debug`,
/// `info,weft::access=off`): what is logged from now on.
async fn set_logging(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match Limited::new(req.into_body(), 4096).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("unreadable body: {e}\n")),
    };
    let Ok(directives) = std::str::from_utf8(&body) else {
        return text(StatusCode::BAD_REQUEST, "the log filter is not UTF-8\n");
    };
    match telemetry::set_log_filter(directives) {
        Ok(now) => {
            tracing::info!(filter = %now, "log filter changed");
            text(StatusCode::OK, &format!("logging: {now}\n"))
        }
        Err(e @ LogFilterError::Invalid(..)) => text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
        Err(e @ LogFilterError::NotSetUp) => {
            text(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n"))
        }
    }
}

/// The answer to an applied reload: its generation, then any changed fields that
/// wait for a restart, one per line.
fn reloaded(r: &Reloaded) -> String {
    let mut body = format!("reloaded: generation {}\n", r.generation);
    for field in &r.needs_restart {
        body.push_str(&format!(
            "not applied: {field} is read only at start; restart to apply it\n"
        ));
    }
    body
}

/// OpenMetrics for scrapers that ask for it (Prometheus does), the Prometheus text
/// format for everyone else (curl, `promtool check metrics`).
fn metrics(req: &Request<Incoming>, app: &App) -> Response<Full<Bytes>> {
    let openmetrics = req
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (body, content_type) = if openmetrics {
        (
            app.runtime.metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            app.runtime.metrics.encode_prometheus(),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

/// The config in force, with defaults filled in and secrets redacted.
fn effective_config(app: &App) -> serde_json::Value {
    let snap = app.runtime.snapshot();
    serde_json::json!({
        "source": snap.config.source.display().to_string(),
        "generation": snap.generation,
        "config": redacted(&snap.config.config),
    })
}

/// A config as JSON without its secrets: in filter configs, values under keys that
/// look like secrets; in filter grants, every environment variable's value (the
/// usual way a secret reaches a program), keeping the names.
fn redacted(config: &crate::config::Config) -> serde_json::Value {
    let mut value = serde_json::to_value(config).unwrap_or_default();
    if let Some(filters) = value.get_mut("filters").and_then(|f| f.as_array_mut()) {
        for f in filters {
            if let Some(c) = f.get_mut("config") {
                redact(c);
            }
            if let Some(env) = f.pointer_mut("/grants/env").and_then(|e| e.as_object_mut()) {
                for v in env.values_mut() {
                    *v = serde_json::Value::String("<redacted>".into());
                }
            }
        }
    }
    value
}

/// Replaces values under keys that look like secrets.
fn redact(v: &mut serde_json::Value) {
    const SECRET: [&str; 7] = [
        "key",
        "secret",
        "token",
        "password",
        "credential",
        "auth",
        "private",
    ];
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let k = k.to_ascii_lowercase();
                if SECRET.iter().any(|s| k.contains(s)) && !v.is_object() {
                    *v = serde_json::Value::String("<redacted>".into());
                } else {
                    redact(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn clusters(app: &App) -> serde_json::Value {
    let snap = app.runtime.snapshot();
    let mut names: Vec<_> = snap.clusters.keys().collect();
    names.sort();
    let list: Vec<_> = names
        .into_iter()
        .map(|name| {
            let c = &snap.clusters[name];
            let now = c.now_ms();
            let endpoints: Vec<_> = c
                .endpoints()
                .list
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "address": e.addr.to_string(),
                        "host": &*e.host,
                        "weight": e.weight,
                        "state": crate::upstream::health::describe(e, now),
                        "pending": e.pending.load(std::sync::atomic::Ordering::Relaxed),
                        "open_connections": e.pool.open_connections(),
                        "idle_connections": e.pool.idle_connections(),
                        "http2_connections": e.pool.h2_connections(),
                        "http2_streams": e.pool.h2_streams(),
                    })
                })
                .collect();
            serde_json::json!({ "name": name, "policy": c.config.balance.policy, "endpoints": endpoints })
        })
        .collect();
    serde_json::json!({ "clusters": list })
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(v).unwrap_or_default(),
    )));
    r.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn effective_config_hides_filter_secrets() {
        let text = r#"
[[filters]]
name = "auth"
module = "auth.wasm"
config = { issuer = "https://id.example", api_key = "s3cret", nested = { password = "p" } }
[filters.grants]
env = { UPSTREAM_URL = "https://api.example", SERVICE_TOKEN = "t0ken" }
"#;
        let loaded = crate::config::parse(std::path::Path::new("w.toml"), text).unwrap();
        let v = super::redacted(&loaded.config);
        let f = &v["filters"][0];
        assert_eq!(f["name"], "auth");
        assert_eq!(f["config"]["issuer"], "https://id.example");
        assert_eq!(f["config"]["api_key"], "<redacted>");
        assert_eq!(f["config"]["nested"]["password"], "<redacted>");
        assert_eq!(
            f["grants"]["env"],
            serde_json::json!({"UPSTREAM_URL": "<redacted>", "SERVICE_TOKEN": "<redacted>"})
        );
        assert_eq!(f["limits"]["instance_reuse"], 10_000, "defaults are shown");
        let shown = v.to_string();
        assert!(
            !shown.contains("s3cret") && !shown.contains("t0ken"),
            "{shown}"
        );
    }

    #[test]
    fn redacts_secret_looking_keys() {
        let mut v = serde_json::json!({"key": "s3cret", "nested": {"api_token": "t", "name": "n"}, "list": [{"password": "p"}]});
        super::redact(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"key": "<redacted>", "nested": {"api_token": "<redacted>", "name": "n"}, "list": [{"password": "<redacted>"}]})
        );
    }
}
