//! The PROXY protocol (HAProxy's; v1 text, v2 binary): a load balancer in front that
//! passes TCP through (AWS NLB, HAProxy, another Weft) sends the client's address
//! ahead of the client's own bytes, so that `X-Forwarded-For`, the access log,
//! filters and the mesh's rules see the client rather than the balancer. `ppp`
//! parses the header; here it is peeked and then consumed to its last byte, so what
//! follows reaches hyper, TLS or the TCP forwarder untouched.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::runtime::Runtime;
use crate::snapshot::ListenerRuntime;
use crate::telemetry::metrics::Limit;

/// The most a header may take: v1's line is at most 107 bytes, v2's fixed part and
/// addresses 232, and what a balancer adds as TLVs (AWS's endpoint id, TLS details)
/// a few hundred more.
const MAX_HEADER: usize = 4096;

/// The client's address as the header of a `proxy_protocol` listener's connection
/// gives it, `remote` (the balancer's) when the header names none (v1 `UNKNOWN`, a v2
/// `LOCAL` health check, a UNIX socket), or None when the connection is to be closed:
/// no valid header within `limits.header_read_timeout` (`tls_handshake_timeout` when
/// that is off), logged and counted.
pub async fn client_of(
    tcp: &mut TcpStream,
    lr: &ListenerRuntime,
    rt: &Runtime,
    remote: SocketAddr,
) -> Option<SocketAddr> {
    let limits = &lr.config.limits;
    let wait = limits
        .header_read_timeout
        .non_zero()
        .unwrap_or(limits.tls_handshake_timeout.0);
    let problem = match tokio::time::timeout(wait, read(tcp)).await {
        Ok(Ok(client)) => return Some(client.unwrap_or(remote)),
        Ok(Err(problem)) => problem,
        Err(_) => "no PROXY header before the timeout".to_string(),
    };
    rt.metrics.limit_hit(&lr.name, Limit::proxy_protocol);
    tracing::debug!(listener = %lr.name, %remote, %problem, "closing connection: PROXY protocol");
    None
}

/// Reads the header off `tcp`: the source address it carries, if any.
async fn read(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, String> {
    let mut buf = vec![0u8; MAX_HEADER];
    loop {
        let n = tcp.peek(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before its PROXY header".into());
        }
        let parsed = HeaderResult::parse(&buf[..n]);
        if parsed.is_incomplete() {
            if n == buf.len() {
                return Err(format!("PROXY header longer than {MAX_HEADER} bytes"));
            }
            // The rest is on its way: peeking again at once would spin (the socket
            // stays readable), so wait a moment first.
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let (len, client) = match parsed {
            HeaderResult::V1(Ok(h)) => (h.header.len(), v1_source(&h.addresses)),
            HeaderResult::V2(Ok(h)) => (h.len(), v2_source(&h)),
            HeaderResult::V1(Err(e)) => return Err(format!("not a PROXY header: {e}")),
            HeaderResult::V2(Err(e)) => return Err(format!("bad PROXY v2 header: {e}")),
        };
        // Exactly the header: the client's bytes stay in the socket.
        tcp.read_exact(&mut buf[..len])
            .await
            .map_err(|e| e.to_string())?;
        return Ok(client);
    }
}

fn v1_source(addresses: &v1::Addresses) -> Option<SocketAddr> {
    match addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    }
}

fn v2_source(h: &v2::Header) -> Option<SocketAddr> {
    // LOCAL: the balancer speaking for itself (a health check), not for a client.
    if h.command != v2::Command::Proxy {
        return None;
    }
    match h.addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// What `read` makes of `sent` (in `chunks`, with pauses between), and what the
    /// connection then holds.
    async fn exchange(chunks: &[&[u8]]) -> (Result<Option<SocketAddr>, String>, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            for chunk in chunks {
                c.write_all(&chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let (mut tcp, _) = listener.accept().await.unwrap();
        let got = read(&mut tcp).await;
        client.await.unwrap();
        let mut rest = Vec::new();
        if got.is_ok() {
            tcp.read_to_end(&mut rest).await.unwrap();
        }
        (got, rest)
    }

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend(((addresses.len() + tlvs.len()) as u16).to_be_bytes());
        h.extend(addresses);
        h.extend(tlvs);
        h
    }

    #[tokio::test]
    async fn v1_gives_the_client_and_leaves_its_bytes() {
        let (got, rest) =
            exchange(&[b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n"]).await;
        assert_eq!(got, Ok(Some("192.0.2.7:51234".parse().unwrap())));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let (got, _) = exchange(&[b"PROXY TCP6 2001:db8::9 2001:db8::1 4000 80\r\n"]).await;
        assert_eq!(got, Ok(Some("[2001:db8::9]:4000".parse().unwrap())));
        let (got, rest) = exchange(&[b"PROXY UNKNOWN\r\nhi"]).await;
        assert_eq!((got, rest), (Ok(None), b"hi".to_vec()));
    }

    #[tokio::test]
    async fn v2_gives_the_client_past_its_tlvs() {
        let addrs = [198, 51, 100, 4, 10, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb];
        let mut sent = v2(1, 0x11, &addrs, &[0x04, 0, 3, 1, 2, 3]);
        sent.extend(b"\x16\x03\x01");
        let (got, rest) = exchange(&[&sent]).await;
        assert_eq!(got, Ok(Some("198.51.100.4:8080".parse().unwrap())));
        assert_eq!(rest, b"\x16\x03\x01");
        // LOCAL (the balancer's own health check): no client.
        let (got, rest) = exchange(&[&v2(0, 0x00, &[], &[]), b"x"]).await;
        assert_eq!((got, rest), (Ok(None), b"x".to_vec()));
    }

    #[tokio::test]
    async fn a_header_in_pieces_is_waited_for() {
        let (got, rest) = exchange(&[b"PROXY TCP4 192.0.2.7 ", b"10.0.0.1 1 2\r\nok"]).await;
        assert_eq!(got, Ok(Some("192.0.2.7:1".parse().unwrap())));
        assert_eq!(rest, b"ok");
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        let (got, _) = exchange(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]).await;
        assert!(got.unwrap_err().starts_with("not a PROXY header"));
        let (got, _) = exchange(&[b"PROXY TCP4 300.0.0.1 10.0.0.1 1 2\r\n"]).await;
        assert!(got.is_err());
        let (got, _) = exchange(&[]).await;
        assert_eq!(got, Err("closed before its PROXY header".to_string()));
    }
}
