//! The gateway's configuration: every CLI flag has a TOML key here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rtmpq_proto::secret::Secret;
use serde::Deserialize;

/// Gateway settings, from a TOML file and flags.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// UDP address for QUIC.
    pub listen: SocketAddr,
    /// The origin as `rtmp://HOST[:PORT]`; none runs the embedded origin.
    pub origin: Option<String>,
    /// Directory made by `rtmpq certs init` (gateway.pem, gateway.key, ca.pem).
    pub cert_dir: Option<PathBuf>,
    /// Where a gateway without a cert dir keeps its self-signed certificate.
    pub state_dir: PathBuf,
    /// Require edges to present a certificate signed by the cert dir's CA.
    pub client_auth: bool,
    /// Tokens edges may present in HELLO; empty accepts any edge that passes TLS.
    pub tokens: Vec<Secret>,
    /// Address for Prometheus metrics and the status API.
    pub metrics: Option<SocketAddr>,
    /// Most sessions at once; more are refused with `overloaded`.
    pub max_sessions: usize,
    /// How long to wait for the origin's TCP connect, in ms.
    pub origin_connect_timeout_ms: u64,
    /// How long an RTMP handshake or HELLO may take, in ms.
    pub handshake_timeout_ms: u64,
    /// Address the embedded origin listens on (TCP) when there is no `origin`.
    pub embedded_origin_listen: SocketAddr,
    /// On SIGTERM, how long live sessions may go on before they are ended, in ms.
    pub shutdown_grace_ms: u64,
    /// How long a session has from SESSION_OPEN until its client publishes or plays, in ms.
    pub setup_timeout_ms: u64,
    /// Bound on bytes buffered by all sessions together (partial messages and queues), MiB.
    pub max_buffered_mb: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "0.0.0.0:4433".parse().expect("valid"),
            origin: None,
            cert_dir: None,
            state_dir: default_state_dir(),
            client_auth: false,
            tokens: Vec::new(),
            metrics: None,
            max_sessions: 1000,
            origin_connect_timeout_ms: 5000,
            handshake_timeout_ms: 10_000,
            embedded_origin_listen: "127.0.0.1:0".parse().expect("valid"),
            shutdown_grace_ms: 10_000,
            setup_timeout_ms: 15_000,
            max_buffered_mb: 512,
        }
    }
}

impl GatewayConfig {
    /// The RTMP handshake / HELLO time limit.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// What the gateway enforces on each session.
    pub fn session_limits(&self) -> rtmpq_proto::session::SessionLimits {
        rtmpq_proto::session::SessionLimits {
            setup_deadline: Some(Duration::from_millis(self.setup_timeout_ms)),
            silence_period: None,
        }
    }

    /// The shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// `$STATE_DIRECTORY` (systemd), else `$XDG_STATE_HOME/rtmpq`, else `~/.local/state/rtmpq`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("rtmpq");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/state/rtmpq")
}

/// Turns `rtmp://HOST[:PORT][/...]` into `HOST:PORT` (port 1935 by default).
pub fn origin_address(url: &str) -> Option<String> {
    let rest = url.strip_prefix("rtmp://")?;
    let host_port = rest.split('/').next()?;
    if host_port.is_empty() {
        return None;
    }
    let has_port = match host_port.rfind(']') {
        Some(bracket) => host_port[bracket..].contains(':'),
        None => host_port.contains(':'),
    };
    Some(if has_port {
        host_port.to_owned()
    } else {
        format!("{host_port}:1935")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_urls() {
        assert_eq!(origin_address("rtmp://a:19350").as_deref(), Some("a:19350"));
        assert_eq!(origin_address("rtmp://a/live").as_deref(), Some("a:1935"));
        assert_eq!(
            origin_address("rtmp://[::1]").as_deref(),
            Some("[::1]:1935")
        );
        assert_eq!(origin_address("http://a"), None);
        assert_eq!(origin_address("rtmp://"), None);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = toml::from_str::<GatewayConfig>("listen = \"0.0.0.0:1\"\nlisten_typo = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_typo"), "{err}");
    }
}
