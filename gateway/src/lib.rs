//! rtmpq-gateway: the QUIC server that terminates edges' tunnels, checks them, and gives each
//! RTMP session its own TCP connection to the origin (or to the embedded origin).

pub mod config;
pub mod embedded_origin;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rtmpq_certs::{Fingerprint, Identity};
use rtmpq_proto::budget::MemoryBudget;
use rtmpq_proto::io::FrameReader;
use rtmpq_proto::wire::{CloseCode, Frame, WIRE_VERSION};
use rtmpq_telemetry::{Role, Telemetry};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

pub use config::GatewayConfig;
pub use embedded_origin::EmbeddedOrigin;

/// What stops a gateway from starting.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Certificates could not be made or loaded.
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
    /// The origin URL is not `rtmp://HOST[:PORT]`.
    #[error("origin {0:?} is not rtmp://HOST[:PORT]")]
    BadOrigin(String),
    /// Mutual TLS was asked for without a CA to check edges against.
    #[error("client_auth needs a cert dir with ca.pem")]
    ClientAuthWithoutCa,
}

/// State every connection and session of a gateway shares.
#[derive(Debug)]
struct Shared {
    config: GatewayConfig,
    origin: String,
    sessions: Arc<Semaphore>,
    telemetry: Arc<Telemetry>,
    /// The bound on bytes buffered by all sessions.
    budget: MemoryBudget,
    /// Cancelled when the grace period ends: live sessions end, telling both sides.
    end_sessions: CancellationToken,
}

/// A bound gateway, ready to [`run`](Gateway::run).
#[derive(Debug)]
pub struct Gateway {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    pin: Fingerprint,
    embedded: Option<EmbeddedOrigin>,
    metrics: Option<TcpListener>,
}

impl Gateway {
    /// Loads or creates certificates, binds the QUIC socket and, with no origin configured,
    /// the embedded origin.
    pub async fn bind(config: GatewayConfig) -> Result<Gateway, GatewayError> {
        let (identity, client_ca) = match &config.cert_dir {
            Some(dir) => {
                let identity = Identity::load(
                    &dir.join(rtmpq_certs::files::GATEWAY_CERT),
                    &dir.join(rtmpq_certs::files::GATEWAY_KEY),
                )?;
                let ca = dir.join(rtmpq_certs::files::CA_CERT);
                let client_ca = if config.client_auth {
                    Some(rtmpq_certs::load_certs(&ca)?)
                } else {
                    None
                };
                (identity, client_ca)
            }
            None if config.client_auth => return Err(GatewayError::ClientAuthWithoutCa),
            None => {
                let identity = rtmpq_certs::self_signed(&config.state_dir)?;
                info!(
                    pin = %identity.fingerprint(),
                    state_dir = %config.state_dir.display(),
                    "no cert dir: using a self-signed certificate; give edges --pin"
                );
                (identity, None)
            }
        };
        let pin = identity.fingerprint();
        let tls = rtmpq_certs::server_tls(identity, client_ca)?;
        let server_config = rtmpq_proto::transport::server_config(tls)?;
        let endpoint = quinn::Endpoint::server(server_config, config.listen).map_err(|source| {
            GatewayError::Bind {
                addr: config.listen,
                source,
            }
        })?;

        let (origin, embedded) = match &config.origin {
            Some(url) => (
                config::origin_address(url).ok_or_else(|| GatewayError::BadOrigin(url.clone()))?,
                None,
            ),
            None => {
                let addr = config.embedded_origin_listen;
                let embedded = EmbeddedOrigin::bind(addr)
                    .await
                    .map_err(|source| GatewayError::Bind { addr, source })?;
                (embedded.local_addr().to_string(), Some(embedded))
            }
        };
        let metrics = match config.metrics {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| GatewayError::Bind { addr, source })?,
            ),
            None => None,
        };
        let budget = MemoryBudget::new(config.max_buffered_mb << 20);
        let telemetry = Telemetry::new(Role::Gateway);
        telemetry.watch_budget(budget.clone());
        let shared = Arc::new(Shared {
            sessions: Arc::new(Semaphore::new(config.max_sessions)),
            config,
            origin,
            telemetry,
            budget,
            end_sessions: CancellationToken::new(),
        });
        Ok(Gateway {
            endpoint,
            shared,
            pin,
            embedded,
            metrics,
        })
    }

    /// The UDP address QUIC listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("bound socket")
    }

    /// The pin of the certificate the gateway presents.
    pub fn pin(&self) -> Fingerprint {
        self.pin
    }

    /// Where sessions go: the origin's `HOST:PORT`, or the embedded origin's address.
    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    /// The address of the metrics and status API listener, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves edges until `shutdown` is cancelled. Then it accepts nothing new, lets live
    /// sessions go on for the grace period, ends the rest (telling the origin and the edge),
    /// and closes every connection with the `shutdown` code.
    pub async fn run(self, shutdown: CancellationToken) {
        info!(
            listen = %self.local_addr(),
            origin = %self.shared.origin,
            embedded = self.embedded.is_some(),
            metrics = ?self.metrics_addr(),
            "gateway ready"
        );
        let services = CancellationToken::new();
        let tasks = TaskTracker::new();
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
        let embedded = self
            .embedded
            .map(|embedded| tokio::spawn(embedded.run(services.clone())));
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                incoming = self.endpoint.accept() => match incoming {
                    Some(incoming) => incoming,
                    None => break,
                },
            };
            let shared = self.shared.clone();
            let remote = incoming.remote_address();
            tasks.spawn(
                serve_connection(incoming, shared, shutdown.clone())
                    .instrument(tracing::info_span!("edge", %remote)),
            );
        }
        tasks.close();
        let grace = self.shared.config.shutdown_grace();
        let live = self.shared.telemetry.sessions().len();
        info!(
            sessions = live,
            ?grace,
            "gateway stopping: no new sessions; waiting for live ones"
        );
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            info!("grace period over: ending live sessions");
            self.shared.end_sessions.cancel();
            let _ = tokio::time::timeout(END_LIMIT, tasks.wait()).await;
        }
        self.endpoint
            .close(close_code(CloseCode::Shutdown), b"gateway shutting down");
        let _ = tokio::time::timeout(END_LIMIT, self.endpoint.wait_idle()).await;
        services.cancel();
        if let Some(embedded) = embedded {
            let _ = embedded.await;
        }
        info!("gateway stopped");
    }
}

/// How long ending sessions and closing connections may take once the grace period is over.
const END_LIMIT: Duration = Duration::from_secs(3);

fn close_code(code: CloseCode) -> quinn::VarInt {
    quinn::VarInt::from_u64(code.to_code()).unwrap_or(quinn::VarInt::MAX)
}

/// The `reason` label of a failed QUIC handshake: `tls` when our TLS refused the peer (no or
/// a wrong client certificate, no common ALPN), `closed_by_peer` when the peer gave up (it
/// did not trust our certificate), `timeout` for a peer that went silent (a forged Initial).
fn handshake_failure_reason(e: &quinn::ConnectionError) -> &'static str {
    use quinn::ConnectionError as E;
    match e {
        E::TransportError(t) if (0x100..0x200).contains(&u64::from(t.code)) => "tls",
        E::TransportError(_) => "transport",
        E::ConnectionClosed(_) | E::ApplicationClosed(_) => "closed_by_peer",
        E::TimedOut => "timeout",
        E::VersionMismatch => "version",
        _ => "other",
    }
}

/// One edge's QUIC connection: HELLO, then a session per bidirectional stream.
async fn serve_connection(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            shared.telemetry.handshake_failed(
                handshake_failure_reason(&e),
                &format_args!("quic handshake: {e}"),
            );
            return;
        }
    };
    let hello = tokio::time::timeout(shared.config.handshake_timeout(), async {
        let (send, recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let mut frames = FrameReader::control(recv);
        let hello = frames.next().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((send, frames, hello))
    })
    .await;
    let (mut control_send, _control_recv, hello) = match hello {
        Ok(Ok(got)) => got,
        Ok(Err(e)) => {
            shared
                .telemetry
                .handshake_failed("no_hello", &format_args!("edge sent no HELLO: {e}"));
            conn.close(close_code(CloseCode::ProtocolViolation), b"no HELLO");
            return;
        }
        Err(_) => {
            shared
                .telemetry
                .handshake_failed("hello_timeout", &"edge sent no HELLO in time");
            conn.close(close_code(CloseCode::Timeout), b"no HELLO in time");
            return;
        }
    };
    let (edge_id, refusal) = match hello {
        Some(Frame::Hello {
            version,
            edge_id,
            token,
        }) => {
            let refusal = if version != WIRE_VERSION {
                Some((
                    CloseCode::UnsupportedVersion,
                    format!("wire version {version}"),
                ))
            } else if !shared.config.tokens.is_empty()
                && !shared.config.tokens.iter().any(|t| t.expose() == token)
            {
                Some((CloseCode::Unauthorized, "bad token".to_owned()))
            } else {
                None
            };
            (edge_id, refusal)
        }
        other => (
            String::new(),
            Some((
                CloseCode::ProtocolViolation,
                format!("expected HELLO, got {other:?}"),
            )),
        ),
    };
    if let Some((code, reason)) = refusal {
        shared.telemetry.handshake_failed(
            code.as_str(),
            &format_args!("edge refused: {code}: {reason}"),
        );
        conn.close(close_code(code), reason.as_bytes());
        return;
    }
    let welcome = Frame::Welcome {
        version: WIRE_VERSION,
        gateway_id: "rtmpq-gateway".into(),
    };
    if let Err(e) = rtmpq_proto::io::write_frame(&mut control_send, &welcome).await {
        warn!(reason = %e, "could not answer HELLO");
        return;
    }
    info!(edge = %edge_id, "edge connected");
    shared.telemetry.connection_opened(&conn, edge_id.clone());
    let sessions = TaskTracker::new();
    let reason = loop {
        let (send, recv) = tokio::select! {
            _ = shutdown.cancelled() => break "gateway shutting down".to_owned(),
            stream = conn.accept_bi() => match stream {
                Ok(stream) => stream,
                Err(e) => break e.to_string(),
            },
        };
        let permit = match shared.sessions.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                warn!(
                    limit = shared.config.max_sessions,
                    "session refused: gateway full"
                );
                let mut send = send;
                rtmpq_proto::io::close_stream(
                    &mut send,
                    CloseCode::Overloaded,
                    "gateway has no room for another session",
                )
                .await;
                continue;
            }
        };
        let shared = shared.clone();
        let edge_id = edge_id.clone();
        sessions.spawn(
            async move {
                session::serve(send, recv, &shared, edge_id).await;
                drop(permit);
            }
            .in_current_span(),
        );
    };
    sessions.close();
    sessions.wait().await;
    shared.telemetry.connection_closed(&conn);
    info!(edge = %edge_id, %reason, "edge disconnected");
}
