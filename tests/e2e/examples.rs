//! The runnable configs under `examples/` and the reference `docs/config.md` stay true
//! to the code: every example parses, validates and builds (as `weft check` does), and
//! the reference names every field of the config model.
//!
//! Nothing here binds a port: the example configs name fixed ports, and building a
//! snapshot (or `weft check`) only reads files and resolves endpoints.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use weft::config::units::{Bytes, Dur};
use weft::config::*;

use crate::support::weft_bin;

/// The repository root (the `weft` package lives in `proxy/`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("proxy/ has a parent")
        .to_path_buf()
}

/// `(name, path)` of every `examples/<name>/weft.toml`, sorted by name.
fn example_configs() -> Vec<(String, PathBuf)> {
    let dir = repo_root().join("examples");
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let config = entry.path().join("weft.toml");
            config
                .is_file()
                .then(|| (entry.file_name().to_string_lossy().into_owned(), config))
        })
        .collect();
    found.sort();
    found
}

fn docs() -> String {
    let path = repo_root().join("docs/config.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Loads and validates `path`, then builds its snapshot: what `weft check` does.
async fn check_in_process(path: &Path) -> Result<LoadedConfig, String> {
    let loaded = load(path).map_err(|e| e.to_string())?;
    let metrics = Arc::new(weft::telemetry::metrics::Metrics::new());
    let chains = weft::chain::ChainBuilder::new(metrics.clone(), &loaded.config.runtime)
        .map_err(|e| format!("{e:#}"))?;
    let snapshot = weft::snapshot::Snapshot::build(loaded.clone(), None, &metrics, &chains)
        .await
        .map_err(|e| e.to_string())?;
    // Dropping the snapshot stops the clusters' background tasks (health checks, DNS).
    drop(snapshot);
    Ok(loaded)
}

#[tokio::test]
async fn every_example_config_is_valid_and_builds() {
    let examples = example_configs();
    let names: BTreeSet<&str> = examples.iter().map(|(n, _)| n.as_str()).collect();
    for expected in ["edge", "grpc", "tcp"] {
        assert!(
            names.contains(expected),
            "examples/{expected}/weft.toml is missing (found {names:?})"
        );
    }
    for (name, path) in &examples {
        let loaded = check_in_process(path)
            .await
            .unwrap_or_else(|e| panic!("examples/{name}/weft.toml does not check:\n{e}"));
        let c = &loaded.config;
        // Examples must be safe to run as they are: nothing listens beyond this machine.
        let mut addresses: Vec<SocketAddr> = c.listeners.iter().map(|l| l.address).collect();
        addresses.push(c.admin.address);
        for a in addresses {
            assert!(
                a.ip().is_loopback(),
                "examples/{name}: {a} is not a loopback address"
            );
        }
        let readme = path.with_file_name("README.md");
        let text = std::fs::read_to_string(&readme)
            .unwrap_or_else(|e| panic!("examples/{name}/README.md: {e}"));
        let command = format!("weft run --config examples/{name}/weft.toml");
        assert!(
            text.contains(&command),
            "examples/{name}/README.md does not give the command `{command}`"
        );
    }
}

/// The command the READMEs give, run as a user would from the repository root.
#[test]
fn weft_check_accepts_every_example() {
    for (name, _) in example_configs() {
        let relative = format!("examples/{name}/weft.toml");
        let out = std::process::Command::new(weft_bin())
            .args(["--log", "error", "check", "--config", &relative])
            .current_dir(repo_root())
            .output()
            .expect("run weft check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "weft check --config {relative} failed:\n{stdout}{stderr}"
        );
        assert!(
            stdout.starts_with(&format!("{relative}: ok (")),
            "unexpected output of weft check --config {relative}: {stdout}"
        );
    }
}

/// A config with every optional section and field set, so that its serialized form
/// holds every key of the model. Structs with optional parts are written out in full
/// (a new field breaks the build here until it is added); the others use `default()`,
/// whose new fields appear in the JSON by themselves.
fn config_with_everything() -> Config {
    let dur = |s| Dur::secs(s);
    Config {
        admin: AdminConfig {
            enabled: true,
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
        },
        runtime: RuntimeConfig {
            workers: 1,
            shutdown_timeout: dur(1),
            shutdown_delay: dur(1),
            watch_config: false,
            module_cache: Some(PathBuf::from("cache")),
            filter_instances: 10,
        },
        listeners: vec![ListenerConfig {
            name: "l".into(),
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            protocol: ListenerProtocol::Http,
            cluster: Some("c".into()),
            chain: Some("ch".into()),
            routes: vec![RouteConfig {
                host: Some("*.example.com".into()),
                path_prefix: Some("/".into()),
                cluster: Some("c".into()),
                chain: Some("ch".into()),
                timeout: Some(dur(1)),
            }],
            tls: Some(ServerTlsConfig {
                certificates: vec![CertificateConfig {
                    cert: "c.pem".into(),
                    key: "k.pem".into(),
                    server_names: vec!["example.com".into()],
                }],
                alpn: vec!["h2".into()],
                client_ca: Some("ca.pem".into()),
                strict_sni_host: Some(true),
            }),
            limits: ListenerLimits::default(),
            forwarding: ForwardingConfig {
                x_forwarded_for: ForwardMode::Replace,
                forwarded: ForwardMode::Append,
                via: Some("weft".into()),
                request_id: RequestIdMode::Generate,
                request_id_in_response: true,
            },
            normalize_path: false,
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Decode,
            proxy_protocol: true,
        }],
        clusters: vec![ClusterConfig {
            name: "c".into(),
            endpoints: vec![
                EndpointConfig::Address("127.0.0.1:1".into()),
                EndpointConfig::Detailed {
                    address: "127.0.0.1:2".into(),
                    weight: Some(2),
                },
            ],
            protocol: UpstreamProtocol::Http2,
            tls: Some(ClientTlsConfig {
                server_name: Some("example.com".into()),
                ca: Some("ca.pem".into()),
                cert: Some("c.pem".into()),
                key: Some("k.pem".into()),
            }),
            balance: BalanceConfig {
                policy: BalancePolicy::ConsistentHash,
                hash_header: Some("x-user".into()),
                ewma_decay: dur(10),
            },
            connect_timeout: dur(1),
            request_timeout: dur(1),
            grpc_timeout_max: Some(dur(1)),
            grpc_timeout_offset: dur(1),
            max_requests: 1,
            connect_retries: 1,
            idle_timeout: dur(1),
            dns_refresh: dur(1),
            pool: PoolConfig::default(),
            outlier: OutlierConfig::default(),
            health_check: Some(HealthCheckConfig {
                protocol: HealthCheckProtocol::Http,
                path: Some("/".into()),
                interval: dur(1),
                timeout: dur(1),
                healthy_threshold: 1,
                unhealthy_threshold: 1,
            }),
            proxy_protocol: Some(ProxyProtocolVersion::V2),
            host_header: HostHeader::Endpoint,
        }],
        filters: vec![FilterConfig {
            name: "f".into(),
            module: "f.wasm".into(),
            config: Some(serde_json::json!({"any": "filter-defined"})),
            failure: FailurePolicy::Open,
            limits: FilterLimits {
                memory: Bytes::mib(1),
                ..FilterLimits::default()
            },
            grants: FilterGrants {
                env: [("NAME".to_string(), "value".to_string())].into(),
                read_dirs: vec!["/tmp".into()],
                stderr: true,
            },
        }],
        chains: vec![ChainConfig {
            name: "ch".into(),
            filters: vec!["f".into()],
        }],
    }
}

/// Collects the keys of every object in `v`. Fails on `null` and on empty arrays,
/// which would hide the keys of a section that the test config forgot to fill.
fn collect_keys(v: &serde_json::Value, at: &str, keys: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                keys.insert(k.clone());
                // Keys chosen by the user (environment variable names) or by a filter
                // (its JSON config) are not fields of the model.
                if k == "env" || (k == "config" && at.starts_with("filters")) {
                    continue;
                }
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                collect_keys(child, &path, keys);
            }
        }
        serde_json::Value::Array(items) => {
            assert!(!items.is_empty(), "{at} is empty in config_with_everything");
            for (i, item) in items.iter().enumerate() {
                collect_keys(item, &format!("{at}[{i}]"), keys);
            }
        }
        serde_json::Value::Null => {
            panic!("{at} is not set in config_with_everything: set every optional field")
        }
        _ => {}
    }
}

#[test]
fn docs_name_every_config_field() {
    let config = config_with_everything();
    // It must be a config the proxy accepts, or the test would prove little.
    from_config(Path::new("config_with_everything"), config.clone())
        .unwrap_or_else(|e| panic!("config_with_everything is not valid:\n{e}"));
    let json = serde_json::to_value(&config).expect("the config serializes");
    let mut keys = BTreeSet::new();
    collect_keys(&json, "", &mut keys);
    assert!(keys.len() > 60, "too few keys found: {keys:?}");
    let docs = docs();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !docs.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/config.md does not mention these config fields (as `name`): {missing:?}"
    );
}

/// The annotated example in the reference parses and validates.
#[test]
fn docs_complete_example_is_valid() {
    let docs = docs();
    let marker = "<!-- tests/e2e/examples.rs parses and validates the next toml block -->";
    let after = docs
        .split_once(marker)
        .expect("docs/config.md has the complete-example marker")
        .1;
    let block = after
        .split_once("```toml\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .expect("a ```toml block follows the marker")
        .0;
    let loaded = parse(Path::new("docs/config.md"), block)
        .unwrap_or_else(|e| panic!("the complete example in docs/config.md is refused:\n{e}"));
    let c = &loaded.config;
    assert!(
        !c.listeners.is_empty()
            && !c.clusters.is_empty()
            && !c.filters.is_empty()
            && !c.chains.is_empty(),
        "the complete example should show every section"
    );
}
