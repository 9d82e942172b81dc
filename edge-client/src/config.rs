//! The edge's configuration: each setting declared once in [`EdgeConfig`] (its TOML key, its
//! flag, its help, its default), and [`EdgeConfig::resolve`] checks it all at load into
//! [`EdgeSettings`], the only thing the edge starts from, so a config that loads also starts
//! (short of files and ports).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rtmpq_certs::Fingerprint;
pub use rtmpq_hop::config::ConfigError;
use rtmpq_hop::config::{above_zero, load_toml, millis};
use rtmpq_hop::pump::SessionLimits;
use rtmpq_hop::secret::Secret;
use rtmpq_hop::transport::Congestion;
use rtmpq_proto::wire::Carrier;
use serde::{Deserialize, Serialize};

/// Edge settings as written: a TOML file, then flags over it
/// ([`ConfigArgs`](rtmpq_hop::config::ConfigArgs)). Each field is a TOML key and the flag of
/// the same name (dashes for underscores; secrets are TOML only); `Default` gives the defaults.
#[derive(Debug, Clone, Deserialize, Serialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// TCP address pushers and players connect to.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The gateway as `HOST:PORT` (UDP), or several (TOML: a list): the edge connects to the
    /// one answering first and moves its sessions to another when it stops answering.
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(deserialize_with = "one_or_many")]
    pub gateway: Vec<String>,
    /// With several gateways: keep a connection to the next one up as well, so that a
    /// failover moves the sessions without a handshake.
    #[arg(long)]
    pub standby: bool,
    /// CA certificate (PEM) that signed the gateway's certificate.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The gateway certificate's pin, `sha256:HEX`, instead of a CA.
    #[arg(long, value_name = "sha256:HEX")]
    pub pin: Option<String>,
    /// Name to verify in the gateway's certificate (default: the gateway's host).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Client certificate (PEM) for gateways that require mutual TLS.
    #[arg(long, value_name = "FILE")]
    pub client_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub client_key: Option<PathBuf>,
    /// Token for gateways that require one (TOML only: a flag would show it to `ps`).
    #[arg(skip)]
    #[serde(skip_serializing)]
    pub token: Option<Secret>,
    /// A name for this edge in the gateway's logs (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub edge_id: Option<String>,
    /// Latency budget in ms: media that waited longer to cross the tunnel is dropped (the
    /// rest of its GOP, resuming at the next key frame; never headers, metadata or commands).
    /// Applied at the edge to what is published and, at the gateway, to what is played
    /// through this edge. 0: no budget. (`max_latency_ms`, its name before 0.3, is read too.)
    #[serde(alias = "max_latency_ms")]
    #[arg(long = "latency-budget-ms", visible_aliases = ["latency-budget", "max-latency"], value_name = "MS")]
    pub latency_budget_ms: u64,
    /// Back-pressure mode, for encoders that adapt their rate to their socket (OBS's dynamic
    /// bitrate): the edge stops reading a pusher whose oldest waiting media is older than this
    /// many ms. 0: off, the edge always reads (the pusher never stalls).
    #[arg(
        long = "backpressure-ms",
        visible_alias = "backpressure",
        value_name = "MS"
    )]
    pub backpressure_ms: u64,
    /// Media waiting per session at most, MiB (past it the oldest GOP goes).
    #[arg(long, value_name = "MIB")]
    pub max_queue_mb: usize,
    /// How sessions carry media through the tunnel, both ways: `"lanes"` (default), audio on
    /// a QUIC stream of its own and video on a stream per GOP (a stale GOP is reset inside
    /// QUIC), or `"stream"`, everything on the session's own QUIC stream.
    #[arg(long, value_enum)]
    pub carrier: MediaCarrier,
    /// How sessions reach the gateway: `"auto"` (default: QUIC, and the TCP carrier where
    /// QUIC does not answer within 250 ms, remembered per network), `"quic"` (UDP only) or
    /// `"tcp"` (TLS 1.3 over TCP, one connection per session, for networks that block UDP).
    #[arg(long, value_enum)]
    pub transport: EdgeTransport,
    /// The gateways' TCP port for the TCP carrier, if not their QUIC port number (e.g. 443).
    #[arg(long, value_name = "PORT")]
    pub tcp_port: Option<u16>,
    /// The congestion controller for what the edge sends over QUIC: `"live"` (default,
    /// rtmpq's own, made for live media) or `"bbr"` (quinn's BBR). The gateway chooses its
    /// own for what it sends to players.
    #[arg(long, value_enum)]
    pub congestion: Congestion,
    /// Address for Prometheus metrics and the status API.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Most sessions at once.
    #[arg(long, value_name = "N")]
    pub max_sessions: usize,
    /// How long a pusher's RTMP handshake may take, in ms.
    #[arg(long, value_name = "MS")]
    pub handshake_timeout_ms: u64,
    /// How long a new session waits for a gateway connection before it is refused, in ms.
    #[arg(long, value_name = "MS")]
    pub gateway_wait_ms: u64,
    /// How long a live session whose tunnel was lost (a gateway restart, a dead path) waits
    /// for a gateway to take it again, in ms; the pusher is held meanwhile and never notices.
    /// 0 ends the session at once.
    #[arg(long, value_name = "MS")]
    pub reconnect_limit_ms: u64,
    /// On SIGTERM, how long live sessions may go on before they are ended, in ms.
    #[arg(
        long = "shutdown-grace-ms",
        visible_alias = "shutdown-grace",
        value_name = "MS"
    )]
    pub shutdown_grace_ms: u64,
    /// How long a client has from its handshake to publish or play, in ms.
    #[arg(long, value_name = "MS")]
    pub setup_timeout_ms: u64,
    /// A client that sends nothing for half this long is pinged; one that sends nothing at
    /// all, not even a ping answer, for this long is closed, in ms.
    #[arg(long, value_name = "MS")]
    pub client_timeout_ms: u64,
    /// Bound on bytes buffered by all sessions together (partial messages and queues), MiB.
    #[arg(long, value_name = "MIB")]
    pub max_buffered_mb: usize,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            listen: "127.0.0.1:1935".parse().expect("valid"),
            gateway: Vec::new(),
            standby: false,
            ca: None,
            pin: None,
            server_name: None,
            client_cert: None,
            client_key: None,
            token: None,
            edge_id: None,
            latency_budget_ms: 1000,
            backpressure_ms: 0,
            max_queue_mb: 32,
            carrier: MediaCarrier::default(),
            transport: EdgeTransport::default(),
            tcp_port: None,
            congestion: Congestion::default(),
            metrics: None,
            max_sessions: 256,
            handshake_timeout_ms: 10_000,
            gateway_wait_ms: 3000,
            reconnect_limit_ms: 30_000,
            shutdown_grace_ms: 10_000,
            setup_timeout_ms: 15_000,
            client_timeout_ms: 30_000,
            max_buffered_mb: 512,
        }
    }
}

/// How the edge's sessions carry media (TOML `carrier`, flag `--carrier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MediaCarrier {
    /// Everything on the session's QUIC stream, in order.
    Stream,
    /// Audio and each GOP on streams of their own (the default: on the bench, audio's p99
    /// is a third to a half lower on lossy and slow links, video's the same or lower).
    #[default]
    Lanes,
}

impl MediaCarrier {
    /// The wire's name for it.
    pub fn wire(self) -> Carrier {
        match self {
            MediaCarrier::Stream => Carrier::SessionStream,
            MediaCarrier::Lanes => Carrier::MediaLanes,
        }
    }
}

/// How the edge's sessions reach the gateway (TOML `transport`, flag `--transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EdgeTransport {
    /// QUIC, and the TCP carrier where QUIC does not answer (happy eyeballs).
    #[default]
    Auto,
    /// QUIC over UDP: every session a stream of one connection.
    Quic,
    /// TLS 1.3 over TCP: a connection per session (networks that block UDP).
    Tcp,
}

/// One gateway address or several, as written: `gateway = "a:4433"` or
/// `gateway = ["a:4433", "b:4433"]` (an empty string: none).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) if s.is_empty() => Vec::new(),
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// A gateway to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayAddress {
    /// `HOST:PORT`, resolved on every attempt.
    pub address: String,
    /// The name checked in its certificate.
    pub server_name: String,
}

/// How the edge trusts the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// A CA certificate file (read at start).
    Ca(PathBuf),
    /// The gateway certificate's fingerprint.
    Pin(Fingerprint),
}

/// The edge's settings, checked: what [`Edge::bind`](crate::Edge::bind) starts from.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// TCP address for clients.
    pub listen: SocketAddr,
    /// The gateways, in order of preference (the first is tried first, the next a moment
    /// later, and so on; the first to answer wins).
    pub gateways: Vec<GatewayAddress>,
    /// Keep a standby connection to the next gateway.
    pub standby: bool,
    /// How the gateway is trusted.
    pub trust: Trust,
    /// Client certificate and key files, for mutual TLS.
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// Token for HELLO (empty: none).
    pub token: Secret,
    /// This edge's name in the gateway's logs.
    pub edge_id: String,
    /// Metrics and status API address.
    pub metrics: Option<SocketAddr>,
    /// Most sessions at once.
    pub max_sessions: usize,
    /// A client's RTMP handshake limit.
    pub handshake_timeout: Duration,
    /// How long a new session waits for the gateway.
    pub gateway_wait: Duration,
    /// How long a live session whose tunnel was lost waits to be set up again (zero: not).
    pub reconnect_limit: Duration,
    /// The shutdown grace period.
    pub shutdown_grace: Duration,
    /// What each client session must keep to.
    pub session_limits: SessionLimits,
    /// Bound on bytes buffered by all sessions, bytes.
    pub max_buffered_bytes: usize,
    /// The latency budget (`None`: none).
    pub latency_budget: Option<Duration>,
    /// The back-pressure threshold (`None`: always read the pusher).
    pub backpressure: Option<Duration>,
    /// Media waiting per session at most, bytes.
    pub max_queue_bytes: usize,
    /// How sessions carry media.
    pub carrier: Carrier,
    /// How sessions reach the gateway.
    pub transport: EdgeTransport,
    /// The gateways' TCP carrier port, if not their QUIC port.
    pub tcp_port: Option<u16>,
    /// The congestion controller for what the edge sends over QUIC.
    pub congestion: Congestion,
}

impl EdgeConfig {
    /// Reads a TOML file (every key optional; unknown keys are named in the error).
    pub fn load(path: &Path) -> Result<EdgeConfig, ConfigError> {
        load_toml(path)
    }

    /// Checks everything that can be checked without touching files or sockets.
    pub fn resolve(&self) -> Result<EdgeSettings, ConfigError> {
        if self.gateway.is_empty() {
            return Err(ConfigError::NoGateway);
        }
        let edge_id = self.edge_id.clone().unwrap_or_else(default_edge_id);
        if let Some(problem) = rtmpq_proto::wire::edge_id_problem(&edge_id) {
            return Err(ConfigError::BadEdgeId(edge_id, problem));
        }
        let gateways = self
            .gateway
            .iter()
            .map(|address| {
                let host = gateway_host(address)
                    .ok_or_else(|| ConfigError::BadGateway(address.clone()))?;
                Ok(GatewayAddress {
                    address: address.clone(),
                    server_name: self.server_name.clone().unwrap_or(host),
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let trust = match (&self.ca, &self.pin) {
            (Some(ca), None) => Trust::Ca(ca.clone()),
            (None, Some(pin)) => Trust::Pin(pin.parse().map_err(ConfigError::BadPin)?),
            _ => return Err(ConfigError::NoTrust),
        };
        let client_identity = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => return Err(ConfigError::HalfClientIdentity),
        };
        if self.backpressure_ms > 0
            && self.latency_budget_ms > 0
            && self.backpressure_ms >= self.latency_budget_ms
        {
            return Err(ConfigError::BackpressureAboveBudget(
                self.backpressure_ms,
                self.latency_budget_ms,
            ));
        }
        let optional_ms = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        Ok(EdgeSettings {
            latency_budget: optional_ms(self.latency_budget_ms),
            backpressure: optional_ms(self.backpressure_ms),
            max_queue_bytes: above_zero(self.max_queue_mb, "max_queue_mb")? << 20,
            carrier: self.carrier.wire(),
            transport: self.transport,
            tcp_port: self.tcp_port,
            congestion: self.congestion,
            listen: self.listen,
            gateways,
            standby: self.standby,
            trust,
            client_identity,
            token: self.token.clone().unwrap_or_else(|| Secret::new("")),
            edge_id,
            metrics: self.metrics,
            max_sessions: above_zero(self.max_sessions, "max_sessions")?,
            handshake_timeout: millis(self.handshake_timeout_ms, "handshake_timeout_ms")?,
            gateway_wait: millis(self.gateway_wait_ms, "gateway_wait_ms")?,
            reconnect_limit: Duration::from_millis(self.reconnect_limit_ms),
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            session_limits: SessionLimits {
                setup_deadline: Some(millis(self.setup_timeout_ms, "setup_timeout_ms")?),
                silence_period: Some(millis(self.client_timeout_ms, "client_timeout_ms")? / 2),
                publisher_silence: None,
            },
            max_buffered_bytes: above_zero(self.max_buffered_mb, "max_buffered_mb")? << 20,
        })
    }
}

/// The host of `HOST:PORT` (brackets of an IPv6 literal removed); `None` without a port.
fn gateway_host(address: &str) -> Option<String> {
    let (host, port) = address.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| host.to_owned())
}

fn default_edge_id() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| rtmpq_proto::wire::edge_id_problem(s).is_none())
        .unwrap_or_else(|| "edge".to_owned())
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

    #[test]
    fn the_latency_budget_is_read_by_its_name_and_its_old_one() {
        for key in ["latency_budget_ms", "max_latency_ms"] {
            let cfg: EdgeConfig = toml::from_str(&format!("{key} = 250\n")).unwrap();
            assert_eq!(cfg.latency_budget_ms, 250, "{key}");
        }
    }

    #[test]
    fn resolves_the_gateway_host_and_trust() {
        let pin = format!("sha256:{}", "ab".repeat(32));
        let cfg = EdgeConfig {
            gateway: vec!["[::1]:4433".into()],
            pin: Some(pin.clone()),
            ..EdgeConfig::default()
        };
        let s = cfg.resolve().unwrap();
        assert_eq!(s.gateways[0].server_name, "::1");
        assert_eq!(s.trust, Trust::Pin(pin.parse().unwrap()));
        assert_eq!(
            s.session_limits.silence_period,
            Some(Duration::from_secs(15))
        );
        let no_port = EdgeConfig {
            gateway: vec!["gw.example".into()],
            ..cfg
        };
        assert!(matches!(no_port.resolve(), Err(ConfigError::BadGateway(_))));
    }

    #[test]
    fn one_gateway_or_a_list() {
        let pin = format!("pin = \"sha256:{}\"\n", "ab".repeat(32));
        let one: EdgeConfig = toml::from_str(&format!("{pin}gateway = \"a:1\"")).unwrap();
        assert_eq!(one.gateway, ["a:1"]);
        let two: EdgeConfig =
            toml::from_str(&format!("{pin}gateway = [\"a:1\", \"b.example:2\"]")).unwrap();
        let s = two.resolve().unwrap();
        let names: Vec<&str> = s.gateways.iter().map(|g| g.server_name.as_str()).collect();
        assert_eq!(names, ["a", "b.example"]);
        let none: EdgeConfig = toml::from_str(&format!("{pin}gateway = []")).unwrap();
        assert!(matches!(none.resolve(), Err(ConfigError::NoGateway)));
    }
}
