//! rtmpq-edge: the local RTMP listener beside the pusher or player, its sessions, and the QUIC
//! connection that carries them to the gateway (or, where UDP is blocked, a TLS connection
//! over TCP per session).

pub mod config;
pub mod connector;
pub mod happy_eyeballs;
mod quic_return;
mod refusal;
mod session;
pub mod tcp_dial;
mod tunnel_open;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;

use rtmpq_certs::{GatewayTrust, Identity};
use rtmpq_hop::scaffold::{bind_tcp, Drain, StartError, END_LIMIT};
use rtmpq_proto::buffer_bound::BufferBound;
use rtmpq_proto::wire::CloseCode;
use rtmpq_telemetry::{Role, Telemetry};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::{ConfigError, EdgeConfig, EdgeSettings};
pub use connector::{Connector, LinkState};

/// What stops the edge from starting.
pub use rtmpq_hop::HopError as EdgeError;

/// How the edge's sessions reach the gateway.
#[derive(Debug)]
enum Transport {
    /// Streams of one QUIC connection the connector keeps up.
    Quic(Connector),
    /// A TLS connection over TCP per session.
    Tcp(Arc<tcp_dial::TcpDialer>),
    /// QUIC, or TCP where QUIC does not answer ([`happy_eyeballs`]).
    Auto(happy_eyeballs::AutoTransport),
}

/// State the edge's sessions share.
#[derive(Debug)]
struct Shared {
    settings: EdgeSettings,
    transport: Transport,
    telemetry: Arc<Telemetry>,
    /// The session tasks and how they end on shutdown.
    drain: Drain,
    /// The bound on bytes buffered by all sessions.
    buffer: BufferBound,
}

/// A bound edge, ready to [`run`](Edge::run).
#[derive(Debug)]
pub struct Edge {
    listener: TcpListener,
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    connector_shutdown: CancellationToken,
    metrics: Option<TcpListener>,
    status_line: bool,
}

impl Edge {
    /// Checks `config`, loads trust settings, binds the RTMP listener and starts connecting
    /// to the gateway.
    pub async fn bind(config: EdgeConfig) -> Result<Edge, EdgeError> {
        let settings = config.resolve()?;
        let (client_config, tcp_tls) = client_tls(&settings)?;
        let listener = bind_tcp(settings.listen).await?;
        // The wildcard address lets quinn migrate when the route or address changes.
        let wildcard: SocketAddr = "0.0.0.0:0".parse().expect("valid");
        let endpoint = quinn::Endpoint::client(wildcard).map_err(StartError::bind(wildcard))?;
        let metrics = match settings.metrics {
            Some(addr) => {
                // Installed before the first tick, so no figure is lost.
                rtmpq_telemetry::prometheus();
                Some(bind_tcp(addr).await?)
            }
            None => None,
        };
        let telemetry = Telemetry::new(Role::Edge, Arc::default());
        let tcp = Arc::new(tcp_dial::TcpDialer {
            tls: tcp_tls,
            gateways: settings.gateways.clone(),
            port: settings.tcp_port,
            edge_id: settings.edge_id.clone(),
            token: settings.token.expose().to_owned(),
        });
        let udp_blocked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let auto = settings.transport == config::EdgeTransport::Auto;
        let target = connector::GatewayTarget {
            gateways: settings.gateways.clone(),
            client_config,
            edge_id: settings.edge_id.clone(),
            token: settings.token.expose().to_owned(),
            standby: settings.standby,
            telemetry: telemetry.clone(),
            tcp_fallback: auto.then(|| connector::TcpFallback {
                dialer: tcp.clone(),
                udp_blocked: udp_blocked.clone(),
            }),
        };
        let buffer = BufferBound::new(settings.max_buffered_bytes);
        telemetry.watch_buffer(buffer.clone());
        let connector_shutdown = CancellationToken::new();
        let quic = || {
            Connector::start(
                endpoint.clone(),
                target,
                telemetry.clone(),
                connector_shutdown.clone(),
            )
        };
        let transport = match settings.transport {
            config::EdgeTransport::Quic => Transport::Quic(quic()),
            config::EdgeTransport::Tcp => Transport::Tcp(tcp),
            config::EdgeTransport::Auto => {
                Transport::Auto(happy_eyeballs::AutoTransport::new(quic(), tcp, udp_blocked))
            }
        };
        Ok(Edge {
            listener,
            shared: Arc::new(Shared {
                settings,
                transport,
                telemetry,
                drain: Drain::default(),
                buffer,
            }),
            endpoint,
            connector_shutdown,
            metrics,
            status_line: std::io::stderr().is_terminal(),
        })
    }

    /// Draws no status line on the terminal (for a caller that shows its own live view).
    pub fn without_status_line(mut self) -> Self {
        self.status_line = false;
        self
    }

    /// The edge's live registry of sessions and its connection.
    pub fn telemetry(&self) -> Arc<Telemetry> {
        self.shared.telemetry.clone()
    }

    /// The TCP address pushers and players connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    /// The address of the metrics and status API listener, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves pushers and players until `shutdown` is cancelled. Then it accepts nothing new,
    /// lets live sessions go on for the grace period, ends the rest (telling the client and
    /// the gateway), and closes the QUIC connection with the `shutdown` code.
    pub async fn run(self, shutdown: CancellationToken) {
        let settings = &self.shared.settings;
        let gateways: Vec<&str> = settings
            .gateways
            .iter()
            .map(|g| g.address.as_str())
            .collect();
        info!(listen = %self.local_addr(), gateway = %gateways.join(","), metrics = ?self.metrics_addr(), "edge ready");
        let services = CancellationToken::new();
        let telemetry = self.shared.telemetry.clone();
        telemetry.start(self.metrics, services.clone());
        if self.status_line {
            tokio::spawn(rtmpq_telemetry::status_line(
                telemetry.clone(),
                services.clone(),
            ));
        }
        let max_sessions = settings.max_sessions;
        let limit = Arc::new(Semaphore::new(max_sessions));
        // Clients refused while full are told why, a bounded number at a time.
        let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
        let drain = &self.shared.drain;
        while let Some((tcp, remote)) = rtmpq_hop::scaffold::accept(&self.listener, &shutdown).await
        {
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                warn!(%remote, limit = max_sessions, "client refused: edge full");
                telemetry.session_refused(CloseCode::Overloaded);
                if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                    let handshake_limit = settings.handshake_timeout;
                    drain.spawn(async move {
                        refusal::refuse_full(tcp, handshake_limit, max_sessions).await;
                        drop(refusal);
                    });
                }
                continue;
            };
            let shared = self.shared.clone();
            drain.spawn(async move {
                session::serve(tcp, remote, &shared).await;
                drop(permit);
            });
        }
        let live = telemetry.sessions().len();
        drain.finish("edge", live, settings.shutdown_grace).await;
        self.connector_shutdown.cancel();
        let _ = tokio::time::timeout(END_LIMIT, self.endpoint.wait_idle()).await;
        services.cancel();
        info!("edge stopped");
    }
}

/// The edge's TLS to its gateways, from its trust settings and client identity: QUIC's client
/// config and the TCP carrier's.
fn client_tls(
    settings: &EdgeSettings,
) -> Result<(quinn::ClientConfig, Arc<rustls::ClientConfig>), EdgeError> {
    let trust = match &settings.trust {
        config::Trust::Ca(ca) => GatewayTrust::Ca(rtmpq_certs::load_certs(ca)?),
        config::Trust::Pin(pin) => GatewayTrust::Pin(*pin),
    };
    let identity = match &settings.client_identity {
        Some((cert, key)) => Some(Identity::load(cert, key)?),
        None => None,
    };
    let tls = rtmpq_certs::client_tls(trust, identity)?;
    let tcp_tls = rtmpq_hop::tcp::client_tls(tls.clone());
    let mut client_config = rtmpq_hop::transport::client_config(tls, settings.congestion)?;
    if settings.standby && settings.gateways.len() > 1 {
        // Keep-alives often enough for a gateway to tell silence from a quiet session
        // within HELLO's `release_after_ms`.
        let mut transport = rtmpq_hop::transport::transport_config(settings.congestion);
        transport.keep_alive_interval(Some(connector::POOL_KEEP_ALIVE));
        client_config.transport_config(Arc::new(transport));
    }
    Ok((client_config, tcp_tls))
}

/// Clients being told that the edge is full, at most, at once; more are dropped unanswered.
const REFUSALS_AT_ONCE: usize = 64;
