//! Opening connections to upstream endpoints: TCP with a timeout, then TLS with ALPN
//! when the cluster asks for it, and the clear-text HTTP/2 probe.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::{ClientTlsConfig, ProxyProtocolVersion, UpstreamProtocol};
use crate::error::ProxyError;
use crate::tls;

/// An upstream byte stream, clear or under TLS.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The TLS side of a cluster: one client config per ALPN offer.
pub struct UpstreamTls {
    /// ALPN as the cluster's protocol allows.
    normal: TlsConnector,
    /// ALPN "http/1.1" only, for upgrades (WebSocket) which need HTTP/1.1.
    http1_only: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl UpstreamTls {
    pub fn new(
        cfg: &ClientTlsConfig,
        protocol: UpstreamProtocol,
        resolve: impl Fn(&std::path::Path) -> std::path::PathBuf,
    ) -> Result<Self, String> {
        let roots = cfg
            .ca
            .as_deref()
            .map(|p| tls::load_roots(&resolve(p)))
            .transpose()?;
        let client_cert = match (&cfg.cert, &cfg.key) {
            (Some(c), Some(k)) => {
                Some((tls::load_certs(&resolve(c))?, tls::load_key(&resolve(k))?))
            }
            _ => None,
        };
        let alpn: &[&[u8]] = match protocol {
            UpstreamProtocol::Auto => &[b"h2", b"http/1.1"],
            UpstreamProtocol::Http1 => &[b"http/1.1"],
            UpstreamProtocol::Http2 => &[b"h2"],
        };
        let normal = tls::client_config(
            roots.clone(),
            client_cert
                .as_ref()
                .map(|(c, k)| (c.clone(), k.clone_key())),
            alpn,
        )?;
        let http1_only = tls::client_config(roots, client_cert, &[b"http/1.1"])?;
        let server_name = cfg
            .server_name
            .as_deref()
            .map(|n| {
                ServerName::try_from(n.to_string())
                    .map_err(|_| format!("{n:?} is not a valid TLS server name"))
            })
            .transpose()?;
        Ok(UpstreamTls {
            normal: TlsConnector::from(Arc::new(normal)),
            http1_only: TlsConnector::from(Arc::new(http1_only)),
            server_name,
        })
    }
}

/// How a cluster connects.
pub struct Connector {
    pub tls: Option<UpstreamTls>,
    pub connect_timeout: Duration,
    /// Every connection begins with a PROXY protocol header of this version.
    pub proxy_protocol: Option<ProxyProtocolVersion>,
}

impl Connector {
    /// Connects to `addr`; `host` is the endpoint's configured host (SNI when the
    /// cluster names none). Returns the stream and whether ALPN chose HTTP/2.
    /// `client` (the client's address and the one it connected to) is what a PROXY
    /// header names, when the cluster sends one; None for a connection that is not
    /// one client's.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        host: &str,
        http1_only: bool,
        client: Option<(SocketAddr, SocketAddr)>,
    ) -> Result<(Io, bool), ProxyError> {
        let opened = async {
            let mut tcp = TcpStream::connect(addr).await?;
            // Before anything else, TLS included.
            if let Some(version) = self.proxy_protocol {
                tcp.write_all(&proxy_header(version, client)).await?;
            }
            Ok::<_, io::Error>(tcp)
        };
        let tcp = match tokio::time::timeout(self.connect_timeout, opened).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(ProxyError::Connect { addr, source }),
            Err(_) => return Err(ProxyError::ConnectTimeout(addr)),
        };
        // Requests are written whole; Nagle would only delay them.
        let _ = tcp.set_nodelay(true);
        let Some(t) = &self.tls else {
            return Ok((Io::Plain(tcp), false));
        };
        let name = match &t.server_name {
            Some(n) => n.clone(),
            None => {
                ServerName::try_from(host.to_string()).map_err(|_| ProxyError::UpstreamTls {
                    addr,
                    source: io::Error::other(format!("{host:?} is not a valid TLS server name")),
                })?
            }
        };
        let connector = if http1_only { &t.http1_only } else { &t.normal };
        let stream =
            match tokio::time::timeout(self.connect_timeout, connector.connect(name, tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(source)) => return Err(ProxyError::UpstreamTls { addr, source }),
                Err(_) => return Err(ProxyError::ConnectTimeout(addr)),
            };
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok((Io::Tls(Box::new(stream)), h2))
    }
}

/// A PROXY protocol header naming `client` (its address, and the address it
/// connected to), or no one (v1 `UNKNOWN`, v2 `LOCAL`: the proxy speaking for itself).
pub fn proxy_header(
    version: ProxyProtocolVersion,
    client: Option<(SocketAddr, SocketAddr)>,
) -> Vec<u8> {
    // One family for both: an IPv4 address beside an IPv6 one is written v4-mapped.
    let v6 = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())),
        v6 => v6,
    };
    let same_family = client.map(|(from, to)| {
        if from.is_ipv4() == to.is_ipv4() {
            (from, to)
        } else {
            (v6(from), v6(to))
        }
    });
    match version {
        ProxyProtocolVersion::V1 => match same_family {
            Some(pair) => ppp::v1::Addresses::from(pair).to_string().into_bytes(),
            None => ppp::v1::Addresses::Unknown.to_string().into_bytes(),
        },
        ProxyProtocolVersion::V2 => {
            use ppp::v2::{Builder, Command, Protocol, Version};
            let built = match same_family {
                Some(pair) => {
                    Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, pair)
                        .build()
                }
                None => Builder::with_addresses(
                    Version::Two | Command::Local,
                    Protocol::Unspecified,
                    ppp::v2::Addresses::Unspecified,
                )
                .build(),
            };
            // Building only fails for payloads over 64 KiB; addresses are a few bytes.
            built.unwrap_or_default()
        }
    }
}

/// Whether a clear-text endpoint speaks HTTP/2 with prior knowledge: send the
/// client preface and an empty SETTINGS frame, and see whether the first bytes back
/// are a SETTINGS frame (an HTTP/1.1 server answers with a status line instead).
/// `prelude` goes first (a PROXY header, for endpoints that want one).
pub async fn probe_h2c(addr: SocketAddr, timeout: Duration, prelude: &[u8]) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let attempt = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(prelude).await?;
        s.write_all(PREFACE).await?;
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await?;
        // Frame header: 24-bit length, 8-bit type (4 = SETTINGS), flags, stream 0.
        io::Result::Ok(head[3] == 0x4 && head[5..9] == [0, 0, 0, 0])
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Ok(true)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::{v1, v2, HeaderResult};

    fn pair(from: &str, to: &str) -> Option<(SocketAddr, SocketAddr)> {
        Some((from.parse().unwrap(), to.parse().unwrap()))
    }

    #[test]
    fn a_header_names_the_client_or_no_one() {
        let h = proxy_header(
            ProxyProtocolVersion::V1,
            pair("192.0.2.7:5000", "10.0.0.1:443"),
        );
        assert_eq!(h, b"PROXY TCP4 192.0.2.7 10.0.0.1 5000 443\r\n");
        assert_eq!(
            proxy_header(ProxyProtocolVersion::V1, None),
            b"PROXY UNKNOWN\r\n"
        );
        let h = proxy_header(
            ProxyProtocolVersion::V2,
            pair("[2001:db8::9]:5000", "[2001:db8::1]:443"),
        );
        let HeaderResult::V2(Ok(parsed)) = HeaderResult::parse(&h) else {
            panic!("not a v2 header: {h:?}");
        };
        assert_eq!(parsed.command, v2::Command::Proxy);
        assert_eq!(
            parsed.addresses,
            v2::Addresses::from(pair("[2001:db8::9]:5000", "[2001:db8::1]:443").unwrap())
        );
        let h = proxy_header(ProxyProtocolVersion::V2, None);
        let HeaderResult::V2(Ok(parsed)) = HeaderResult::parse(&h) else {
            panic!("not a v2 header: {h:?}");
        };
        assert_eq!(parsed.command, v2::Command::Local);
        assert_eq!(parsed.len(), h.len());
    }

    #[test]
    fn an_ipv4_client_beside_an_ipv6_address_is_written_v4_mapped() {
        let h = proxy_header(
            ProxyProtocolVersion::V1,
            pair("192.0.2.7:5000", "[2001:db8::1]:443"),
        );
        let HeaderResult::V1(Ok(parsed)) = HeaderResult::parse(&h) else {
            panic!("not a v1 header: {h:?}");
        };
        let v1::Addresses::Tcp6(a) = parsed.addresses else {
            panic!("{:?}", parsed.addresses);
        };
        assert_eq!(
            a.source_address.to_ipv4_mapped(),
            Some([192, 0, 2, 7].into())
        );
        assert_eq!(a.source_port, 5000);
    }
}
