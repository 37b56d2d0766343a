//! Configuration: the serde model (`model`), units (`units`), the checks that turn a
//! parsed file into a config the runtime may trust (`validate`), and the watcher that
//! reloads it (`watch`).

pub mod model;
pub mod units;
pub(crate) mod validate;
pub mod watch;

use std::fmt;
use std::path::{Path, PathBuf};

pub use model::*;

/// One thing wrong with a config: where (file and field path) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the field, such as `clusters[1].endpoints[0]`; empty for the file as a whole.
    pub field: String,
    pub reason: String,
}

/// Why a config was refused. Lists every problem found, each naming the file and field.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl ConfigError {
    pub fn new(
        file: impl Into<PathBuf>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.into(),
            problems: vec![Problem {
                field: field.into(),
                reason: reason.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.field.is_empty() {
                write!(f, "{}: {}", self.file.display(), p.reason)?;
            } else {
                write!(f, "{}: {}: {}", self.file.display(), p.field, p.reason)?;
            }
        }
        Ok(())
    }
}

/// A config that parsed and passed validation, with the file it came from (relative
/// paths in it are relative to that file's folder).
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    pub config: Config,
    pub source: PathBuf,
}

impl LoadedConfig {
    /// Resolves a path written in the config against the config file's folder.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        resolve_against(&self.source, path)
    }

    /// Every file the config names and a reload reads again, resolved: filter
    /// modules, listeners' certificates, keys and client CAs, clusters' CAs and
    /// client certificates. (Not the config file itself, nor directories granted
    /// to filters, which they read as they run.)
    pub fn files(&self) -> Vec<PathBuf> {
        let c = &self.config;
        let modules = c.filters.iter().map(|f| &f.module);
        let listeners = c
            .listeners
            .iter()
            .filter_map(|l| l.tls.as_ref())
            .flat_map(|t| {
                let pairs = t.certificates.iter().flat_map(|c| [&c.cert, &c.key]);
                pairs.chain(&t.client_ca)
            });
        let clusters = c
            .clusters
            .iter()
            .filter_map(|c| c.tls.as_ref())
            .flat_map(|t| [&t.ca, &t.cert, &t.key].into_iter().flatten());
        modules
            .chain(listeners)
            .chain(clusters)
            .map(|p| self.resolve(p))
            .collect()
    }
}

pub fn resolve_against(source: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    match source.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, "", format!("cannot read the file: {e}")))?;
    parse(path, &text)
}

/// Parses and validates config text that came from `path`.
pub fn parse(path: &Path, text: &str) -> Result<LoadedConfig, ConfigError> {
    let de = toml::Deserializer::parse(text)
        .map_err(|e| ConfigError::new(path, "", one_line(&e.to_string())))?;
    let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        ConfigError::new(path, field, one_line(&e.into_inner().to_string()))
    })?;
    from_config(path, config)
}

/// Validates a config built in code (the `weft proxy` command builds one from its flags).
pub fn from_config(path: &Path, mut config: Config) -> Result<LoadedConfig, ConfigError> {
    let problems = validate::check(&config);
    if !problems.is_empty() {
        return Err(ConfigError {
            file: path.to_path_buf(),
            problems,
        });
    }
    // Like every other path in the file, the cache folder is relative to the file's
    // folder (the effective config shows where it is); "" keeps modules in memory.
    if let Some(cache) = config.runtime.module_cache.as_mut() {
        if !cache.as_os_str().is_empty() {
            *cache = resolve_against(path, cache);
        }
    }
    Ok(LoadedConfig {
        config,
        source: path.to_path_buf(),
    })
}

/// toml's messages span several lines with a source excerpt; a log line wants one.
fn one_line(msg: &str) -> String {
    let lines: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let location = lines
        .first()
        .filter(|l| l.starts_with("TOML parse error"))
        .map(|l| l.trim_start_matches("TOML parse error "));
    let reason = lines
        .iter()
        .rev()
        .find(|l| !l.starts_with('|') && !l.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .copied()
        .unwrap_or(msg);
    match location {
        Some(loc) if !reason.starts_with("TOML parse error") => format!("{reason} ({loc})"),
        _ => reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(Path::new("weft.toml"), text)
            .expect_err("config should be refused")
            .to_string()
    }

    #[test]
    fn unknown_field_names_file_and_path() {
        let e = err("[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\nbogus = 1\n");
        assert!(e.starts_with("weft.toml: clusters[0]"), "{e}");
        assert!(e.contains("unknown field `bogus`"), "{e}");
    }

    #[test]
    fn endpoint_tables_refuse_unknown_fields_by_name() {
        let cluster = |endpoint: &str| {
            err(&format!(
                "[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\", {endpoint}]\n"
            ))
        };
        let e = cluster("{ address = \"127.0.0.1:2\", wieght = 2 }");
        assert!(
            e.starts_with("weft.toml: clusters[0].endpoints[1].wieght: unknown field `wieght`, expected `address` or `weight`"),
            "{e}"
        );
        let e = cluster("{ address = \"127.0.0.1:2\", weight = \"2\" }");
        assert!(
            e.starts_with("weft.toml: clusters[0].endpoints[1].weight: invalid type: string \"2\", expected u32"),
            "{e}"
        );
        let e = cluster("{ adress = \"127.0.0.1:2\" }");
        assert!(
            e.starts_with("weft.toml: clusters[0].endpoints[1].adress: unknown field `adress`"),
            "{e}"
        );
        let e = cluster("{}");
        assert!(
            e.starts_with("weft.toml: clusters[0].endpoints[1]: missing field `address`"),
            "{e}"
        );
        let e = cluster("8080");
        assert!(
            e.starts_with("weft.toml: clusters[0].endpoints[1]: invalid type: integer `8080`, expected an endpoint: \"host:port\" or { address = \"host:port\", weight = N }"),
            "{e}"
        );
        // Both forms still read, the same way.
        let loaded = parse(
            Path::new("weft.toml"),
            "[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\", { address = \"127.0.0.1:2\" }]\n",
        )
        .expect("both endpoint forms are accepted");
        let addresses: Vec<&str> = loaded.config.clusters[0]
            .endpoints
            .iter()
            .map(EndpointConfig::address)
            .collect();
        assert_eq!(addresses, ["127.0.0.1:1", "127.0.0.1:2"]);
    }

    #[test]
    fn bad_address_names_the_field() {
        let e = err("[[listeners]]\nname = \"l\"\naddress = \"nonsense\"\ncluster = \"a\"\n");
        assert!(e.contains("listeners[0].address"), "{e}");
    }

    #[test]
    fn syntax_error_is_one_line() {
        let e = err("[[listeners]\n");
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("line 1"), "{e}");
    }
}
