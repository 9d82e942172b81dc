//! The edge's configuration: every CLI flag has a TOML key here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rtmpq_proto::secret::Secret;
use serde::Deserialize;

/// Edge settings, from a TOML file and flags.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// TCP address pushers and players connect to.
    pub listen: SocketAddr,
    /// The gateway as `HOST:PORT` (UDP).
    pub gateway: String,
    /// CA certificate (PEM) that signed the gateway's certificate.
    pub ca: Option<PathBuf>,
    /// The gateway certificate's pin, `sha256:HEX`, instead of a CA.
    pub pin: Option<String>,
    /// Name to verify in the gateway's certificate (default: the gateway's host).
    pub server_name: Option<String>,
    /// Client certificate (PEM) for gateways that require mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub client_key: Option<PathBuf>,
    /// Token for gateways that require one.
    pub token: Option<Secret>,
    /// A name for this edge in the gateway's logs (default: the host name).
    pub edge_id: Option<String>,
    /// Latency budget in ms for media waiting to cross the tunnel (accepted; no drop policy
    /// enforces it yet).
    pub max_latency_ms: u64,
    /// Address for Prometheus metrics and the status API.
    pub metrics: Option<SocketAddr>,
    /// Most sessions at once.
    pub max_sessions: usize,
    /// How long a pusher's RTMP handshake may take, in ms.
    pub handshake_timeout_ms: u64,
    /// How long a new session waits for a gateway connection before it is refused, in ms.
    pub gateway_wait_ms: u64,
    /// On SIGTERM, how long live sessions may go on before they are ended, in ms.
    pub shutdown_grace_ms: u64,
    /// How long a client has from its handshake to publish or play, in ms.
    pub setup_timeout_ms: u64,
    /// A client that sends nothing for half this long is pinged; one that sends nothing at
    /// all, not even a ping answer, for this long is closed, in ms.
    pub client_timeout_ms: u64,
    /// Bound on bytes buffered by all sessions together (partial messages and queues), MiB.
    pub max_buffered_mb: usize,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            listen: "127.0.0.1:1935".parse().expect("valid"),
            gateway: String::new(),
            ca: None,
            pin: None,
            server_name: None,
            client_cert: None,
            client_key: None,
            token: None,
            edge_id: None,
            max_latency_ms: 1000,
            metrics: None,
            max_sessions: 256,
            handshake_timeout_ms: 10_000,
            gateway_wait_ms: 3000,
            shutdown_grace_ms: 10_000,
            setup_timeout_ms: 15_000,
            client_timeout_ms: 30_000,
            max_buffered_mb: 512,
        }
    }
}

impl EdgeConfig {
    /// The RTMP handshake time limit.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// The shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// What the edge enforces on each client.
    pub fn session_limits(&self) -> rtmpq_proto::session::SessionLimits {
        rtmpq_proto::session::SessionLimits {
            setup_deadline: Some(Duration::from_millis(self.setup_timeout_ms)),
            silence_period: Some(Duration::from_millis(self.client_timeout_ms / 2)),
        }
    }

    /// How long a session waits for the gateway.
    pub fn gateway_wait(&self) -> Duration {
        Duration::from_millis(self.gateway_wait_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_and_unknown_keys_named() {
        let cfg: EdgeConfig =
            toml::from_str("gateway = \"gw:4433\"\ntoken = \"s3cret\"\n").unwrap();
        assert!(!format!("{cfg:?}").contains("s3cret"));
        let err = toml::from_str::<EdgeConfig>("gatway = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("gatway"), "{err}");
    }
}
