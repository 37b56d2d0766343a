//! The `weft` command line: `run`, `check` and `proxy` (and `compile-filter`, which
//! the proxy runs as a child process: `wasm/compile.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

use crate::app::{App, ConfigSource, Signals};
use crate::config::{
    self, CertificateConfig, ChainConfig, ClientTlsConfig, ClusterConfig, Config, EndpointConfig,
    FilterConfig, HostHeader, ListenerConfig, ServerTlsConfig, UpstreamProtocol,
};
use crate::telemetry::{self, LogFormat};
use crate::workers::Workers;

#[derive(Parser, Debug)]
#[command(
    name = "weft",
    version,
    about = "A service-mesh proxy programmed with sandboxed WebAssembly filters"
)]
pub struct Cli {
    /// How log lines are written.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter when RUST_LOG is not set, such as "info" or "warn,weft::access=off".
    #[arg(long, global = true, default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy with a config file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file (and load its filters) without serving.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// A reverse proxy from flags alone, no config file.
    Proxy(ProxyArgs),
    /// Compiles a filter into the module cache: what the proxy runs in a child
    /// process, so that the compiler's memory never stays in the serving one.
    #[command(hide = true)]
    CompileFilter {
        #[arg(long)]
        filter_instances: u32,
        module: PathBuf,
        out: PathBuf,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    /// Address to listen on, such as 127.0.0.1:8080.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Upstream URL (repeat to balance across several): http:// (HTTP/1.1, or
    /// HTTP/2 when the client and upstream both speak it), h2c:// (HTTP/2 in clear
    /// text, as gRPC servers speak) or https:// (TLS, protocol by ALPN).
    #[arg(long = "to", required = true)]
    pub to: Vec<String>,
    /// Address for the admin endpoints (/ready, /metrics, ...); off when absent.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// A filter to run, as PATH.wasm or PATH.wasm=CONFIG_JSON (repeat for a chain, in order).
    #[arg(long = "filter")]
    pub filters: Vec<String>,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Every connection begins with a load balancer's PROXY protocol header (v1 or
    /// v2), whose client address stands for the connection's.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// Send the upstream its own host in `Host` (the `--to` URL's) rather than the
    /// client's, which goes in `X-Forwarded-Host`: for upstreams that serve their own
    /// name, such as a public HTTPS API.
    #[arg(long)]
    pub change_host_header: bool,
    /// Terminate TLS with this PEM certificate chain (leaf first; with --tls-key):
    /// HTTP/2 or HTTP/1.1 by the client's ALPN.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// Runs the command; the process exits with the returned code.
pub fn main(cli: Cli) -> ExitCode {
    telemetry::init_logging(cli.log_format, &cli.log);
    if let Command::CompileFilter {
        filter_instances,
        module,
        out,
    } = &cli.command
    {
        // The parent reads the reason from stderr as it is.
        return match crate::wasm::compile::compile_to_file(*filter_instances, module, out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Ok(exe) = std::env::current_exe() {
        crate::wasm::compile::compile_in_child_processes(exe);
    }
    let result = match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => match config::load(&config) {
            Ok(loaded) => serve(ConfigSource::File(config), loaded.config.runtime.workers),
            Err(e) => Err(e.into()),
        },
        Command::Proxy(args) => match proxy_config(&args) {
            Ok(loaded) => serve(ConfigSource::Fixed(Box::new(loaded)), args.workers),
            Err(e) => Err(e),
        },
        Command::CompileFilter { .. } => Ok(()),
    };
    telemetry::access::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Serves on `workers` threads (0: one per core), each with its own single-threaded
/// runtime (see `workers`); this thread is the first of them.
fn serve(source: ConfigSource, workers: usize) -> anyhow::Result<()> {
    let workers = match workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let signals = Signals::register().context("listening for signals")?;
        let app = App::start_on(source, Workers::spawn(workers - 1)?).await?;
        app.run_until_signal(signals).await
    })
}

fn check(path: &Path) -> anyhow::Result<()> {
    let loaded = config::load(path)?;
    let summary = format!(
        "{}: ok ({} listeners, {} clusters, {} filters, {} chains)",
        path.display(),
        loaded.config.listeners.len(),
        loaded.config.clusters.len(),
        loaded.config.filters.len(),
        loaded.config.chains.len()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let metrics = std::sync::Arc::new(crate::telemetry::metrics::Metrics::new());
        let chains = crate::chain::ChainBuilder::new(metrics.clone(), &loaded.config.runtime)?;
        crate::snapshot::Snapshot::build(loaded, None, &metrics, &chains).await?;
        anyhow::Ok(())
    })?;
    println!("{summary}");
    Ok(())
}

/// The config `weft proxy` stands for: one listener, one cluster, an optional chain.
/// The listener's TLS from `--tls-cert` and `--tls-key` (clap requires both or neither).
fn listener_tls(args: &ProxyArgs) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let absolute = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
    let tls: ServerTlsConfig = toml::from_str("certificates = []").context("tls defaults")?;
    Ok(Some(ServerTlsConfig {
        certificates: vec![CertificateConfig {
            cert: absolute(cert),
            key: absolute(key),
            server_names: Vec::new(),
        }],
        ..tls
    }))
}

pub fn proxy_config(args: &ProxyArgs) -> anyhow::Result<config::LoadedConfig> {
    let mut scheme = None;
    let mut endpoints = Vec::new();
    let mut server_name = None;
    for to in &args.to {
        let uri: http::Uri = to
            .parse()
            .with_context(|| format!("--to {to:?} is not a URL"))?;
        let s = uri
            .scheme_str()
            .with_context(|| format!("--to {to:?} needs a scheme: http://, h2c:// or https://"))?
            .to_ascii_lowercase();
        if !matches!(s.as_str(), "http" | "h2c" | "https") {
            bail!("--to {to:?}: the scheme must be http, h2c or https");
        }
        if scheme.as_ref().is_some_and(|prev| *prev != s) {
            bail!("every --to must use the same scheme ({to:?} differs)");
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            bail!("--to {to:?}: a path is not supported; give scheme://host:port");
        }
        let authority = uri
            .authority()
            .with_context(|| format!("--to {to:?} needs a host"))?;
        let port = authority
            .port_u16()
            .unwrap_or(if s == "https" { 443 } else { 80 });
        let host = authority.host();
        server_name.get_or_insert_with(|| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        });
        endpoints.push(EndpointConfig::Address(format!("{host}:{port}")));
        scheme = Some(s);
    }
    let scheme = scheme.unwrap_or_default();
    let cluster = ClusterConfig {
        name: "upstream".into(),
        endpoints,
        protocol: if scheme == "h2c" {
            UpstreamProtocol::Http2
        } else {
            UpstreamProtocol::Auto
        },
        tls: (scheme == "https").then_some(ClientTlsConfig {
            server_name,
            ca: None,
            cert: None,
            key: None,
        }),
        host_header: match args.change_host_header {
            true => HostHeader::Endpoint,
            false => HostHeader::Keep,
        },
        ..toml::from_str("name = \"upstream\"\nendpoints = []").context("cluster defaults")?
    };
    let mut filters = Vec::new();
    for (i, spec) in args.filters.iter().enumerate() {
        let (path, json) = match spec.split_once('=') {
            Some((p, j)) => (p, Some(j)),
            None => (spec.as_str(), None),
        };
        let config = match json {
            Some(j) => Some(
                serde_json::from_str::<serde_json::Value>(j)
                    .with_context(|| format!("--filter {path}: the config is not valid JSON"))?,
            ),
            None => None,
        };
        // Named after the file (hello_filter.wasm: "hello_filter"), numbered if repeated.
        let stem = Path::new(path)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("filter");
        let stem: String = stem
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let name = if filters.iter().any(|f: &FilterConfig| f.name == stem) {
            format!("{stem}-{i}")
        } else {
            stem
        };
        let mut f: FilterConfig = toml::from_str(&format!("name = {name:?}\nmodule = \"\""))
            .context("filter defaults")?;
        f.module = std::path::absolute(path).unwrap_or_else(|_| PathBuf::from(path));
        f.config = config;
        filters.push(f);
    }
    let chain = (!filters.is_empty()).then(|| ChainConfig {
        name: "cli".into(),
        filters: filters.iter().map(|f| f.name.clone()).collect(),
    });
    let listener: ListenerConfig = toml::from_str(&format!(
        "name = \"proxy\"\naddress = \"{}\"\ncluster = \"upstream\"",
        args.listen
    ))
    .context("listener defaults")?;
    let config = Config {
        admin: config::AdminConfig {
            enabled: args.admin.is_some(),
            address: args
                .admin
                .unwrap_or_else(|| config::AdminConfig::default().address),
        },
        listeners: vec![ListenerConfig {
            chain: chain.as_ref().map(|c| c.name.clone()),
            proxy_protocol: args.proxy_protocol,
            tls: listener_tls(args)?,
            ..listener
        }],
        clusters: vec![cluster],
        filters,
        chains: chain.into_iter().collect(),
        ..Config::default()
    };
    Ok(config::from_config(Path::new("<command line>"), config)?)
}
