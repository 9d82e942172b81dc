//! rtmpq-edge: the local RTMP listener beside the pusher or player, its sessions, and the QUIC
//! connection that carries them to the gateway.

pub mod config;
pub mod connector;
mod session;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rtmpq_certs::{GatewayTrust, Identity};
use rtmpq_proto::budget::MemoryBudget;
use rtmpq_proto::wire::CloseCode;
use rtmpq_telemetry::{Role, Telemetry};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::EdgeConfig;
pub use connector::{Connector, LinkState};

/// What stops an edge from starting.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// Neither `--ca` nor `--pin`, or both.
    #[error("give exactly one of --ca FILE or --pin sha256:HEX to trust the gateway")]
    NoTrust,
    /// No gateway address.
    #[error("no gateway address: give --gateway HOST:PORT")]
    NoGateway,
    /// A client certificate without its key, or the reverse.
    #[error("client_cert and client_key go together")]
    HalfClientIdentity,
    /// Certificates could not be loaded.
    #[error("certificates: {0}")]
    Certs(#[from] rtmpq_certs::CertError),
    /// The TLS config could not be used for QUIC.
    #[error("{0}")]
    Tls(#[from] rtmpq_proto::transport::TlsConfigError),
    /// A socket could not be bound.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// State the edge's sessions share.
#[derive(Debug)]
struct Shared {
    config: EdgeConfig,
    connector: Connector,
    telemetry: Arc<Telemetry>,
    /// Cancelled when the grace period ends: live sessions end, telling both sides.
    end_sessions: CancellationToken,
    /// The bound on bytes buffered by all sessions.
    budget: MemoryBudget,
}

/// A bound edge, ready to [`run`](Edge::run).
#[derive(Debug)]
pub struct Edge {
    listener: TcpListener,
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    connector_shutdown: CancellationToken,
    metrics: Option<TcpListener>,
}

impl Edge {
    /// Loads trust settings, binds the RTMP listener and starts connecting to the gateway.
    pub async fn bind(config: EdgeConfig) -> Result<Edge, EdgeError> {
        if config.gateway.is_empty() {
            return Err(EdgeError::NoGateway);
        }
        let trust = match (&config.ca, &config.pin) {
            (Some(ca), None) => GatewayTrust::Ca(rtmpq_certs::load_certs(ca)?),
            (None, Some(pin)) => GatewayTrust::Pin(pin.parse()?),
            _ => return Err(EdgeError::NoTrust),
        };
        let identity = match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => Some(Identity::load(cert, key)?),
            (None, None) => None,
            _ => return Err(EdgeError::HalfClientIdentity),
        };
        let tls = rtmpq_certs::client_tls(trust, identity)?;
        let client_config = rtmpq_proto::transport::client_config(tls)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| EdgeError::Bind {
                    addr: config.listen,
                    source,
                })?;
        // The wildcard address lets quinn migrate when the route or address changes.
        let wildcard: SocketAddr = "0.0.0.0:0".parse().expect("valid");
        let endpoint = quinn::Endpoint::client(wildcard).map_err(|source| EdgeError::Bind {
            addr: wildcard,
            source,
        })?;
        let host = config
            .gateway
            .rsplit_once(':')
            .map_or(config.gateway.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let target = connector::GatewayTarget {
            address: config.gateway.clone(),
            server_name: config.server_name.clone().unwrap_or(host),
            client_config,
            edge_id: config.edge_id.clone().unwrap_or_else(default_edge_id),
            token: config
                .token
                .as_ref()
                .map(|t| t.expose().to_owned())
                .unwrap_or_default(),
        };
        let metrics = match config.metrics {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| EdgeError::Bind { addr, source })?,
            ),
            None => None,
        };
        let telemetry = Telemetry::new(Role::Edge);
        let budget = MemoryBudget::new(config.max_buffered_mb << 20);
        telemetry.watch_budget(budget.clone());
        let connector_shutdown = CancellationToken::new();
        let connector = Connector::start(
            endpoint.clone(),
            target,
            telemetry.clone(),
            connector_shutdown.clone(),
        );
        Ok(Edge {
            listener,
            shared: Arc::new(Shared {
                config,
                connector,
                telemetry,
                end_sessions: CancellationToken::new(),
                budget,
            }),
            endpoint,
            connector_shutdown,
            metrics,
        })
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
        info!(listen = %self.local_addr(), gateway = %self.shared.config.gateway, metrics = ?self.metrics_addr(), "edge ready");
        let services = CancellationToken::new();
        match self.metrics {
            Some(listener) => {
                tokio::spawn(rtmpq_telemetry::serve(
                    self.shared.telemetry.clone(),
                    listener,
                    services.clone(),
                ));
            }
            None => {
                tokio::spawn(self.shared.telemetry.clone().run_ticks(services.clone()));
            }
        }
        if std::io::stderr().is_terminal() {
            tokio::spawn(status_line(self.shared.telemetry.clone(), services.clone()));
        }
        let max_sessions = self.shared.config.max_sessions;
        let limit = Arc::new(Semaphore::new(max_sessions));
        // Clients refused while full are told why, a bounded number at a time.
        let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
        let tasks = TaskTracker::new();
        loop {
            let Some((tcp, remote)) = rtmpq_proto::io::accept(&self.listener, &shutdown).await
            else {
                break;
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                warn!(%remote, limit = max_sessions, "client refused: edge full");
                self.shared.telemetry.session_refused(CloseCode::Overloaded);
                if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                    let handshake_limit = self.shared.config.handshake_timeout();
                    tasks.spawn(async move {
                        session::refuse_full(tcp, handshake_limit, max_sessions).await;
                        drop(refusal);
                    });
                }
                continue;
            };
            let shared = self.shared.clone();
            tasks.spawn(async move {
                session::serve(tcp, remote, &shared).await;
                drop(permit);
            });
        }
        tasks.close();
        let grace = self.shared.config.shutdown_grace();
        let live = self.shared.telemetry.sessions().len();
        info!(
            sessions = live,
            ?grace,
            "edge stopping: no new sessions; waiting for live ones"
        );
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            info!("grace period over: ending live sessions");
            self.shared.end_sessions.cancel();
            let _ = tokio::time::timeout(END_LIMIT, tasks.wait()).await;
        }
        self.connector_shutdown.cancel();
        let _ = tokio::time::timeout(END_LIMIT, self.endpoint.wait_idle()).await;
        services.cancel();
        info!("edge stopped");
    }
}

/// Clients being told that the edge is full, at most, at once; more are dropped unanswered.
const REFUSALS_AT_ONCE: usize = 64;

/// How long ending sessions and closing the connection may take after the grace period.
const END_LIMIT: Duration = Duration::from_secs(3);

/// Redraws one line on the terminal each second: per session bitrate, fps, queue age, and the
/// connection's RTT and loss.
async fn status_line(telemetry: Arc<Telemetry>, stop: CancellationToken) {
    use std::io::Write;
    let mut ticker = tokio::time::interval(rtmpq_telemetry::TICK);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let link = match telemetry.connections().first() {
            Some(c) => format!(
                "rtt {:.1} ms loss {:.1}%",
                c.rtt_seconds * 1e3,
                c.loss_percent
            ),
            None => "gateway not connected".to_owned(),
        };
        let sessions: Vec<String> = telemetry
            .sessions()
            .iter()
            .map(|s| {
                format!(
                    "{}/{} {} {:.2} Mbit/s {:.0} fps queue {:.0} ms",
                    s.app,
                    s.stream,
                    s.direction,
                    s.bitrate_bps / 1e6,
                    s.fps,
                    s.queue_age_seconds * 1e3
                )
            })
            .collect();
        let line = format!("[{link}] {}", sessions.join(" | "));
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
    }
}

fn default_edge_id() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "edge".to_owned())
}
