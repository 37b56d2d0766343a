//! TLS with rustls and ring: server configs with SNI-selected certificates (and
//! optional client-certificate verification), client configs for upstreams, and
//! the peer identity of a verified client certificate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The one crypto provider: ring (builds in half the time of aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no CERTIFICATE block", path.display()));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            format!("{} holds no PRIVATE KEY block", path.display())
        }
        e => format!("cannot read a private key from {}: {e}", path.display()),
    })
}

pub fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: a CA certificate was refused: {e}", path.display()))?;
    }
    Ok(roots)
}

/// A SHA-256 digest over the paths and contents of `files`, to tell whether any of
/// them changed on disk; `None` when one cannot be read.
pub fn files_digest(files: &[PathBuf]) -> Option<Vec<u8>> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for f in files {
        let contents = std::fs::read(f).ok()?;
        // Lengths first, so that no two different lists hash the same bytes.
        let path = f.as_os_str().as_encoded_bytes();
        ctx.update(&(path.len() as u64).to_le_bytes());
        ctx.update(path);
        ctx.update(&(contents.len() as u64).to_le_bytes());
        ctx.update(&contents);
    }
    Some(ctx.finish().as_ref().to_vec())
}

/// A certificate and key as the server presents them.
pub struct ServerCert {
    pub key: Arc<CertifiedKey>,
    /// Names it serves: exact names and `*.suffix` wildcards, lower case.
    pub names: Vec<String>,
}

impl ServerCert {
    pub fn load(cert: &Path, key: &Path, names: &[String]) -> Result<Self, String> {
        let chain = load_certs(cert)?;
        let names = if names.is_empty() {
            dns_names(&chain[0])
        } else {
            names.iter().map(|n| n.to_ascii_lowercase()).collect()
        };
        let key = load_key(key)?;
        let key = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
            format!(
                "{} and its key do not form a usable pair: {e}",
                cert.display()
            )
        })?;
        Ok(ServerCert {
            key: Arc::new(key),
            names,
        })
    }
}

/// Chooses the certificate by the client's SNI: exact name, then wildcard, then the first.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return Some(k.clone());
            }
        }
        Some(self.default.clone())
    }
}

/// A server config serving `certs` (the first is the default), offering `alpn`,
/// and requiring client certificates signed by `client_ca` when given.
pub fn server_config(
    certs: Vec<ServerCert>,
    alpn: &[String],
    client_ca: Option<RootCertStore>,
) -> Result<ServerConfig, String> {
    let default = certs.first().ok_or("no certificate")?.key.clone();
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    for c in &certs {
        for n in &c.names {
            match n.strip_prefix("*.") {
                Some(suffix) => wildcard
                    .entry(suffix.to_string())
                    .or_insert_with(|| c.key.clone()),
                None => exact.entry(n.clone()).or_insert_with(|| c.key.clone()),
            };
        }
    }
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver {
        exact,
        wildcard,
        default,
    }));
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(config)
}

/// A client config trusting `roots` (the system's when none), presenting an
/// optional client certificate, and offering `alpn`.
pub fn client_config(
    roots: Option<RootCertStore>,
    client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, String> {
    let roots = match roots {
        Some(r) => r,
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match client_cert {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("client certificate: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(
            "no trusted CA certificates found on this system; set the cluster's tls.ca".into(),
        );
    }
    Ok(roots)
}

/// The DNS names of a certificate's subject alternative names, lower case.
pub fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    subject_alt_names(cert)
        .into_iter()
        .filter_map(|n| n.strip_prefix("dns:").map(str::to_string))
        .collect()
}

/// The identity a verified client certificate proves: its SPIFFE URI when it has
/// one, else its first DNS name.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<String> {
    let names = subject_alt_names(cert);
    names
        .iter()
        .find_map(|n| {
            n.strip_prefix("uri:")
                .filter(|u| u.starts_with("spiffe://"))
        })
        .or_else(|| names.iter().find_map(|n| n.strip_prefix("dns:")))
        .map(str::to_string)
}

fn subject_alt_names(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(format!("dns:{}", d.to_ascii_lowercase())),
            GeneralName::URI(u) => Some(format!("uri:{u}")),
            _ => None,
        })
        .collect()
}
