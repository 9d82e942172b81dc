//! The gateway's configuration: each setting declared once in [`GatewayConfig`] (its TOML
//! key, its flag, its help, its default), and [`GatewayConfig::resolve`] checks it all at
//! load into [`GatewaySettings`], the only thing the gateway starts from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use rtmpq_hop::config::ConfigError;
use rtmpq_hop::config::{above_zero, load_toml, millis};
use rtmpq_hop::pump::SessionLimits;
use rtmpq_hop::secret::Secret;
use rtmpq_hop::transport::Congestion;
use serde::{Deserialize, Serialize};

use crate::access::{AccessPolicy, EdgeRuleConfig};
use crate::admission::AdmissionLimits;
use crate::connection_ids::ServerId;

/// Gateway settings as written: a TOML file, then flags over it
/// ([`ConfigArgs`](rtmpq_hop::config::ConfigArgs)). Each field is a TOML key and the flag of
/// the same name (dashes for underscores; tokens and `[[edge]]` tables are TOML only);
/// `Default` gives the defaults.
#[derive(Debug, Clone, Deserialize, Serialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// UDP address for QUIC.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The origin as `rtmp://HOST[:PORT]`; none runs the embedded origin.
    #[arg(long, value_name = "rtmp://HOST[:PORT]")]
    pub origin: Option<String>,
    /// Directory made by `rtmpq certs init` (gateway.pem, gateway.key, ca.pem).
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Where the gateway keeps its stateless-reset key (and, without a cert dir, its
    /// self-signed certificate).
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// QUIC-LB server id, hex (1 to 15 bytes): every connection ID carries it, so a load
    /// balancer that routes QUIC by connection ID keeps a migrating edge on this gateway.
    #[arg(long, value_name = "HEX")]
    pub server_id: Option<String>,
    /// Require edges to present a certificate signed by the cert dir's CA.
    #[arg(long)]
    pub client_auth: bool,
    /// The congestion controller for what the gateway sends over QUIC (to players):
    /// `"live"` (default, rtmpq's own, made for live media) or `"bbr"` (quinn's BBR).
    #[arg(long, value_enum)]
    pub congestion: Congestion,
    /// Tokens edges may present in HELLO; empty accepts any edge that passes TLS.
    #[arg(skip)]
    #[serde(skip_serializing)]
    pub tokens: Vec<Secret>,
    /// Edge identities and what each may publish and play (TOML `[[edge]]` tables); with any,
    /// an edge none of them names is refused.
    #[serde(rename = "edge")]
    #[arg(skip)]
    #[serde(skip_serializing)]
    pub edges: Vec<EdgeRuleConfig>,
    /// Address for Prometheus metrics and the status API.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Most sessions at once; more are refused with `overloaded`.
    #[arg(long, value_name = "N")]
    pub max_sessions: usize,
    /// Most sessions on one edge connection; more are refused with `overloaded`.
    #[arg(long, value_name = "N")]
    pub max_sessions_per_connection: usize,
    /// Most sessions of one edge (its edge id, certificate and token) over all its
    /// connections; more are refused with `overloaded`.
    #[arg(long, value_name = "N")]
    pub max_sessions_per_edge: usize,
    /// From this many QUIC handshakes in progress on, a source must prove its address with a
    /// Retry round trip first (costs the gateway no state: spoofed floods stop there).
    #[arg(long, value_name = "N")]
    pub retry_above_pending: usize,
    /// Most QUIC handshakes in progress at once; more are refused.
    #[arg(long, value_name = "N")]
    pub max_pending_handshakes: usize,
    /// Most connections from one IP address (edges behind one NAT share one).
    #[arg(long, value_name = "N")]
    pub max_connections_per_address: usize,
    /// How long to wait for the origin's TCP connect, in ms.
    #[arg(long, value_name = "MS")]
    pub origin_connect_timeout_ms: u64,
    /// How long the gateway holds a live session whose tunnel was lost (the origin side kept)
    /// for its edge to resume it, in ms; 0: sessions are not resumable.
    #[arg(long, value_name = "MS")]
    pub resume_grace_ms: u64,
    /// How long a live session waits for an origin that closed or failed under it (a restart)
    /// to take the session again, in ms; the pusher never notices. 0 ends the session at once.
    #[arg(long, value_name = "MS")]
    pub origin_retry_ms: u64,
    /// How long an RTMP handshake or HELLO may take, in ms.
    #[arg(long, value_name = "MS")]
    pub handshake_timeout_ms: u64,
    /// Listen for the TCP carrier (TLS 1.3 over TCP, for edges on networks that block UDP).
    #[arg(long)]
    pub tcp: bool,
    /// TCP address of the TCP carrier; default: the QUIC listener's address and port number
    /// (`listen`). TCP 443 passes most firewalls that block UDP.
    #[arg(long, value_name = "ADDR")]
    pub tcp_listen: Option<SocketAddr>,
    /// Address the embedded origin listens on (TCP) when there is no `origin`.
    #[arg(long, value_name = "ADDR")]
    pub embedded_origin_listen: SocketAddr,
    /// On SIGTERM, how long live sessions may go on before they are ended, in ms.
    #[arg(
        long = "shutdown-grace-ms",
        visible_alias = "shutdown-grace",
        value_name = "MS"
    )]
    pub shutdown_grace_ms: u64,
    /// How long a session has from SESSION_OPEN until its client publishes or plays, in ms.
    #[arg(long, value_name = "MS")]
    pub setup_timeout_ms: u64,
    /// Bound on bytes buffered by all sessions together (partial messages and queues), MiB.
    #[arg(long, value_name = "MIB")]
    pub max_buffered_mb: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "0.0.0.0:4433".parse().expect("valid"),
            origin: None,
            cert_dir: None,
            state_dir: default_state_dir(),
            server_id: None,
            client_auth: false,
            congestion: Congestion::default(),
            tokens: Vec::new(),
            edges: Vec::new(),
            metrics: None,
            max_sessions: 1000,
            max_sessions_per_connection: 256,
            max_sessions_per_edge: 256,
            retry_above_pending: 32,
            max_pending_handshakes: 512,
            max_connections_per_address: 64,
            origin_connect_timeout_ms: 5000,
            origin_retry_ms: 30_000,
            resume_grace_ms: 10_000,
            handshake_timeout_ms: 10_000,
            embedded_origin_listen: "127.0.0.1:0".parse().expect("valid"),
            tcp: true,
            tcp_listen: None,
            shutdown_grace_ms: 10_000,
            setup_timeout_ms: 15_000,
            max_buffered_mb: 512,
        }
    }
}

/// The gateway's settings, checked: what [`Gateway::bind`](crate::Gateway::bind) starts
/// from.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// UDP address for QUIC.
    pub listen: SocketAddr,
    /// The origin's `HOST:PORT`; `None` runs the embedded origin.
    pub origin: Option<String>,
    /// Where the embedded origin listens.
    pub embedded_origin_listen: SocketAddr,
    /// Whether the TCP carrier listens.
    pub tcp: bool,
    /// Its address, if not the QUIC listener's.
    pub tcp_listen: Option<SocketAddr>,
    /// Certificates from `rtmpq certs init`, if any.
    pub cert_dir: Option<PathBuf>,
    /// Where the reset key and a self-signed identity are kept.
    pub state_dir: PathBuf,
    /// The QUIC-LB server id in every connection ID, if configured.
    pub server_id: Option<ServerId>,
    /// Whether edges must present a certificate.
    pub client_auth: bool,
    /// The congestion controller for what the gateway sends over QUIC.
    pub congestion: Congestion,
    /// Which edges may connect and what each may publish and play.
    pub access: AccessPolicy,
    /// Metrics and status API address.
    pub metrics: Option<SocketAddr>,
    /// Most sessions at once.
    pub max_sessions: usize,
    /// Most sessions on one edge connection.
    pub max_sessions_per_connection: usize,
    /// Most sessions of one edge over all its connections.
    pub max_sessions_per_edge: usize,
    /// Handshake admission: Retry threshold, pending and per-address bounds.
    pub admission: AdmissionLimits,
    /// The origin's TCP connect limit.
    pub origin_connect_timeout: Duration,
    /// How long a session whose tunnel was lost is held for its edge to resume (zero: never).
    pub resume_grace: Duration,
    /// How long a live session waits for a lost origin to take it again (zero: not at all).
    pub origin_retry: Duration,
    /// The RTMP handshake and HELLO limit.
    pub handshake_timeout: Duration,
    /// The shutdown grace period.
    pub shutdown_grace: Duration,
    /// What each session must keep to.
    pub session_limits: SessionLimits,
    /// Bound on bytes buffered by all sessions, bytes.
    pub max_buffered_bytes: usize,
}

impl GatewayConfig {
    /// Reads a TOML file (every key optional; unknown keys are named in the error).
    pub fn load(path: &Path) -> Result<GatewayConfig, ConfigError> {
        load_toml(path)
    }

    /// Checks everything that can be checked without touching files or sockets.
    pub fn resolve(&self) -> Result<GatewaySettings, ConfigError> {
        let origin = match &self.origin {
            Some(url) => {
                Some(origin_address(url).ok_or_else(|| ConfigError::BadOrigin(url.clone()))?)
            }
            None => None,
        };
        if self.client_auth && self.cert_dir.is_none() {
            return Err(ConfigError::ClientAuthWithoutCa);
        }
        let access = AccessPolicy::new(&self.tokens, &self.edges, self.client_auth)?;
        Ok(GatewaySettings {
            listen: self.listen,
            origin,
            embedded_origin_listen: self.embedded_origin_listen,
            tcp: self.tcp,
            tcp_listen: self.tcp_listen,
            cert_dir: self.cert_dir.clone(),
            state_dir: self.state_dir.clone(),
            server_id: self.server_id.as_deref().map(str::parse).transpose()?,
            client_auth: self.client_auth,
            congestion: self.congestion,
            access,
            metrics: self.metrics,
            max_sessions: above_zero(self.max_sessions, "max_sessions")?,
            max_sessions_per_connection: above_zero(
                self.max_sessions_per_connection,
                "max_sessions_per_connection",
            )?,
            max_sessions_per_edge: above_zero(self.max_sessions_per_edge, "max_sessions_per_edge")?,
            admission: AdmissionLimits {
                retry_above_pending: self.retry_above_pending,
                max_pending: above_zero(self.max_pending_handshakes, "max_pending_handshakes")?,
                max_per_address: above_zero(
                    self.max_connections_per_address,
                    "max_connections_per_address",
                )?,
            },
            origin_connect_timeout: millis(
                self.origin_connect_timeout_ms,
                "origin_connect_timeout_ms",
            )?,
            origin_retry: Duration::from_millis(self.origin_retry_ms),
            resume_grace: Duration::from_millis(self.resume_grace_ms),
            handshake_timeout: millis(self.handshake_timeout_ms, "handshake_timeout_ms")?,
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            session_limits: SessionLimits {
                setup_deadline: Some(millis(self.setup_timeout_ms, "setup_timeout_ms")?),
                silence_period: None,
                publisher_silence: Some(PUBLISHER_SILENCE),
            },
            max_buffered_bytes: above_zero(self.max_buffered_mb, "max_buffered_mb")? << 20,
        })
    }
}

/// A publishing session whose edge sends nothing for this long ends with `timeout` (longer
/// than the connection's idle timeout: a dark path ends the connection first, and the session
/// is held for resume).
pub const PUBLISHER_SILENCE: Duration = Duration::from_secs(30);

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
