//! The TCP carrier at the edge, for networks that block UDP: each session's tunnel is a TLS
//! 1.3 connection of its own (no head-of-line blocking between sessions that plain RTMP would
//! not also have) to the first gateway, in order, that takes it: HELLO, WELCOME, then the
//! session's frames.

use std::sync::Arc;
use std::time::Duration;

use rtmpq_hop::stream::SendHalf;
use rtmpq_hop::tcp::{dial, greet, watch_path, DialError, GreetError};
use rtmpq_hop::transport::PathWatch;
use rtmpq_hop::tunnel::FrameReader;
use rtmpq_proto::wire::{Frame, WIRE_VERSION};

use crate::config::GatewayAddress;

/// Opens TCP carrier connections to the edge's gateways.
#[derive(Debug)]
pub struct TcpDialer {
    /// TLS with the TCP ALPN, the same trust and identity as QUIC's.
    pub tls: Arc<rustls::ClientConfig>,
    /// The gateways, in order of preference (their QUIC addresses).
    pub gateways: Vec<GatewayAddress>,
    /// The gateways' TCP port, if not their QUIC port number.
    pub port: Option<u16>,
    /// This edge's name.
    pub edge_id: String,
    /// Token for HELLO.
    pub token: String,
}

/// A welcomed TCP carrier connection, ready for the session's first frame.
pub struct TcpOpened {
    /// Its sending half.
    pub send: SendHalf,
    /// Its frames.
    pub frames: FrameReader,
    /// Its path, from the kernel.
    pub path: Arc<PathWatch>,
    /// The gateway it went to.
    pub address: String,
}

/// Why no gateway took a TCP carrier connection.
#[derive(Debug, thiserror::Error)]
pub enum TcpOpenError {
    /// No gateway could be reached over TCP (the last one's reason).
    #[error("no gateway reachable over tcp: {0}")]
    Unreachable(DialError),
    /// A gateway answered but refused this edge or broke the greeting.
    #[error("{0}")]
    Greeting(#[from] GreetError),
}

impl TcpDialer {
    /// A welcomed connection to the first gateway that answers within `wait` (shared by the
    /// gateways in order), with its path watch and the address it went to.
    pub async fn open(&self, wait: Duration) -> Result<TcpOpened, TcpOpenError> {
        let deadline = tokio::time::Instant::now() + wait;
        let hello = Frame::Hello {
            version: WIRE_VERSION,
            edge_id: self.edge_id.clone(),
            token: self.token.clone(),
            release_after_ms: 0,
        };
        let mut last = None;
        for gateway in &self.gateways {
            let address = tcp_address(&gateway.address, self.port);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match dial(&address, &gateway.server_name, &self.tls, left).await {
                Ok(tls) => {
                    let path = watch_path(&tls);
                    let (send, frames) = greet(tls, &hello).await?;
                    return Ok(TcpOpened {
                        send,
                        frames,
                        path,
                        address,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(TcpOpenError::Unreachable(last.unwrap_or(
            DialError::Timeout {
                address: String::new(),
                limit: wait,
            },
        )))
    }
}

impl TcpDialer {
    /// Whether a TCP carrier connection to the first gateway comes up (TCP and TLS) within
    /// `limit`; the connection is dropped at once.
    pub async fn check(&self, limit: Duration) -> bool {
        let Some(gateway) = self.gateways.first() else {
            return false;
        };
        let address = tcp_address(&gateway.address, self.port);
        dial(&address, &gateway.server_name, &self.tls, limit)
            .await
            .is_ok()
    }
}

/// `address` (`HOST:PORT`) with `port` instead of its own, if given.
pub fn tcp_address(address: &str, port: Option<u16>) -> String {
    match (port, address.rsplit_once(':')) {
        (Some(port), Some((host, _))) => format!("{host}:{port}"),
        _ => address.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tcp_port_replaces_the_gateways_own_when_given() {
        assert_eq!(tcp_address("gw.example:4433", None), "gw.example:4433");
        assert_eq!(tcp_address("gw.example:4433", Some(443)), "gw.example:443");
        assert_eq!(tcp_address("[::1]:4433", Some(443)), "[::1]:443");
    }
}
