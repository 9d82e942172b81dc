//! rtmpq-gateway: the QUIC server that terminates edges' tunnels, checks them, and gives each
//! RTMP session its own TCP connection to the origin (or to the embedded origin).

pub mod access;
pub mod admission;
pub mod config;
pub mod connection_ids;
pub mod embedded_origin;
mod origin;
mod resumable;
mod session;
mod tcp;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtmpq_certs::{Fingerprint, Identity};
use rtmpq_hop::scaffold::{bind_tcp, Drain, StartError, END_LIMIT};
use rtmpq_hop::transport::{quic_code, PathWatch};
use rtmpq_hop::tunnel::{close_stream, write_frame, FrameReader};
use rtmpq_proto::buffer_bound::BufferBound;
use rtmpq_proto::wire::{edge_id_problem, CloseCode, Frame, WIRE_VERSION};
use rtmpq_telemetry::{Role, Telemetry};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use access::{AccessPolicy, Credentials};
pub use config::{ConfigError, GatewayConfig, GatewaySettings};
pub use embedded_origin::EmbeddedOrigin;

/// What stops the gateway from starting.
pub use rtmpq_hop::HopError as GatewayError;

/// How long after the QUIC handshake an edge has to say HELLO (at most `handshake_timeout`).
pub const HELLO_DEADLINE: Duration = Duration::from_secs(3);

/// One edge connection's sessions hold at most this fraction (1/n) of `max_buffered_mb`.
pub const CONNECTION_SHARE_OF_BUFFER: usize = 4;

/// State every connection and session of a gateway shares.
#[derive(Debug)]
struct Shared {
    settings: GatewaySettings,
    /// Where sessions go: the origin's or the embedded origin's `HOST:PORT`.
    origin: String,
    sessions: Arc<Semaphore>,
    telemetry: Arc<Telemetry>,
    /// The session tasks and how they end on shutdown.
    drain: Drain,
    /// The bound on bytes buffered by all sessions.
    buffer: BufferBound,
    /// Live sessions an edge may take over on a new stream (SESSION_RESUME).
    resumable: resumable::Resumable,
    /// Who may connect and what each may do; replaced on reload, watched by live sessions.
    access: watch::Sender<Arc<AccessPolicy>>,
    /// When the certificates the gateway presents and trusts expire (name, Unix seconds).
    expiries: Mutex<Vec<(&'static str, i64)>>,
    /// Pending handshakes and connections per address.
    admission: Arc<admission::Admission>,
    /// Live sessions per edge identity.
    edge_sessions: Arc<admission::EdgeSessions>,
    /// TLS for the TCP carrier (replaced on reload, like QUIC's).
    tcp_tls: watch::Sender<Arc<rustls::ServerConfig>>,
}

/// How long before a certificate expires the gateway starts warning in its log.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);
/// How often the gateway looks at its certificates' expiry again.
const EXPIRY_CHECK: Duration = Duration::from_secs(6 * 3600);

/// The QUIC server config a gateway's settings ask for: its identity, and the CA edges'
/// certificates must chain to with `client_auth`.
struct TlsSetup {
    server_config: quinn::ServerConfig,
    /// The same identity and client check for the TCP carrier.
    tcp_tls: Arc<rustls::ServerConfig>,
    pin: Fingerprint,
    /// When each certificate expires (name, Unix seconds).
    expiries: Vec<(&'static str, i64)>,
}

impl TlsSetup {
    /// Loads the certificates `settings` name (or the self-signed identity in the state dir).
    fn load(settings: &GatewaySettings) -> Result<TlsSetup, GatewayError> {
        let mut expiries = Vec::new();
        let (identity, client_ca) = match &settings.cert_dir {
            Some(dir) => {
                let identity = Identity::load(
                    &dir.join(rtmpq_certs::files::GATEWAY_CERT),
                    &dir.join(rtmpq_certs::files::GATEWAY_KEY),
                )?;
                let ca = rtmpq_certs::load_certs(&dir.join(rtmpq_certs::files::CA_CERT))?;
                if let Some(t) = ca.first().and_then(|c| rtmpq_certs::certificate_expiry(c)) {
                    expiries.push(("ca", t));
                }
                (identity, settings.client_auth.then_some(ca))
            }
            None => {
                let identity = rtmpq_certs::self_signed(&settings.state_dir)?;
                info!(
                    pin = %identity.fingerprint(),
                    state_dir = %settings.state_dir.display(),
                    "no cert dir: using a self-signed certificate; give edges --pin"
                );
                (identity, None)
            }
        };
        if let Some(t) = identity
            .chain
            .first()
            .and_then(|c| rtmpq_certs::certificate_expiry(c))
        {
            expiries.push(("gateway", t));
        }
        let pin = identity.fingerprint();
        let tls = rtmpq_certs::server_tls(identity, client_ca)?;
        let tcp_tls = rtmpq_hop::tcp::server_tls(tls.clone());
        let mut server_config = rtmpq_hop::transport::server_config(tls, settings.congestion)?;
        // What quinn holds for handshakes the accept loop has not judged yet: bounded well
        // below its defaults (65536 of them, 100 MiB of their early data).
        server_config
            .max_incoming(settings.admission.max_pending * 2)
            .incoming_buffer_size(64 << 10)
            .incoming_buffer_size_total(8 << 20);
        Ok(TlsSetup {
            server_config,
            tcp_tls,
            pin,
            expiries,
        })
    }
}

/// Binds the QUIC socket and, unless turned off, the TCP carrier's listener: at `tcp_listen`,
/// else the QUIC socket's address and port number (with port 0, a port free on both).
fn bind_listeners(
    settings: &GatewaySettings,
) -> Result<(std::net::UdpSocket, Option<TcpListener>), StartError> {
    let bind_udp =
        |addr: SocketAddr| std::net::UdpSocket::bind(addr).map_err(StartError::bind(addr));
    let bind_tcp = |addr: SocketAddr| {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        TcpListener::from_std(listener)
    };
    if !settings.tcp {
        return Ok((bind_udp(settings.listen)?, None));
    }
    if let Some(tcp_addr) = settings.tcp_listen {
        let tcp = bind_tcp(tcp_addr).map_err(StartError::bind(tcp_addr))?;
        return Ok((bind_udp(settings.listen)?, Some(tcp)));
    }
    // The same port number on both; a port chosen by the system for UDP may be taken on TCP
    // (rarely): then another is chosen.
    let attempts = if settings.listen.port() == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = bind_udp(settings.listen)?;
        let addr = udp
            .local_addr()
            .map_err(StartError::bind(settings.listen))?;
        match bind_tcp(addr) {
            Ok(tcp) => return Ok((udp, Some(tcp))),
            Err(e) => last = Some((addr, e)),
        }
    }
    let (addr, e) = last.expect("at least one attempt");
    Err(StartError::bind(addr)(e))
}

/// Sets the expiry gauges and warns of every certificate that expires within
/// [`EXPIRY_WARNING`] (or has expired).
fn check_expiry(telemetry: &Telemetry, expiries: &[(&'static str, i64)]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for &(name, at) in expiries {
        telemetry.certificate_expiry(name, at);
        if at < now {
            let days = (now - at) / 86_400;
            warn!(
                certificate = name,
                "certificate expired {days} days ago: edges refuse it"
            );
        } else if at - now < EXPIRY_WARNING.as_secs() as i64 {
            // Whole days left, rounded up: "3 days" until the last 72 hours begin.
            let days = (at - now + 86_399) / 86_400;
            warn!(
                certificate = name,
                days_left = days,
                "certificate expires in {days} days: renew it and send the gateway SIGHUP"
            );
        }
    }
}

/// Applies a changed configuration to a running gateway (SIGHUP): tokens, `[[edge]]` tables
/// and certificates. Live sessions go on; one whose edge lost the right to its stream ends
/// with `unauthorized`. Other settings need a restart.
#[derive(Debug, Clone)]
pub struct Reloader {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
}

impl Reloader {
    /// Checks `config` and, when all of it loads, applies it; on error nothing changes.
    pub fn reload(&self, config: GatewayConfig) -> Result<(), GatewayError> {
        let settings = config.resolve()?;
        let tls = TlsSetup::load(&settings)?;
        self.endpoint.set_server_config(Some(tls.server_config));
        self.shared.tcp_tls.send_replace(tls.tcp_tls);
        check_expiry(&self.shared.telemetry, &tls.expiries);
        *self.shared.expiries.lock().expect("expiries") = tls.expiries;
        let identities = settings.access.has_identities();
        self.shared.access.send_replace(Arc::new(settings.access));
        info!(pin = %tls.pin, identities, "configuration reloaded: tokens, [[edge]] rules and certificates");
        Ok(())
    }
}

/// A bound gateway, ready to [`run`](Gateway::run).
#[derive(Debug)]
pub struct Gateway {
    endpoint: quinn::Endpoint,
    /// The TCP carrier's listener, unless turned off.
    tcp: Option<TcpListener>,
    shared: Arc<Shared>,
    pin: Fingerprint,
    embedded: Option<EmbeddedOrigin>,
    metrics: Option<TcpListener>,
}

impl Gateway {
    /// Checks `config`, loads or creates certificates, binds the QUIC socket and, with no
    /// origin configured, the embedded origin.
    pub async fn bind(config: GatewayConfig) -> Result<Gateway, GatewayError> {
        let settings = config.resolve()?;
        let TlsSetup {
            server_config,
            tcp_tls,
            pin,
            expiries,
        } = TlsSetup::load(&settings)?;
        let reset_key = connection_ids::reset_key(&settings.state_dir)?;
        let endpoint_config =
            connection_ids::endpoint_config(&reset_key, settings.server_id.as_ref());
        let (socket, tcp) = bind_listeners(&settings)?;
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(StartError::bind(settings.listen))?;
        let (origin, embedded) = match &settings.origin {
            Some(origin) => (origin.clone(), None),
            None => {
                let addr = settings.embedded_origin_listen;
                let embedded = EmbeddedOrigin::bind(addr)
                    .await
                    .map_err(StartError::bind(addr))?;
                (embedded.local_addr().to_string(), Some(embedded))
            }
        };
        let metrics = match settings.metrics {
            Some(addr) => {
                // Installed before the first tick, so no figure is lost.
                rtmpq_telemetry::prometheus();
                Some(bind_tcp(addr).await?)
            }
            None => None,
        };
        let buffer = BufferBound::new(settings.max_buffered_bytes);
        let telemetry = Telemetry::new(Role::Gateway, Arc::default());
        telemetry.watch_buffer(buffer.clone());
        check_expiry(&telemetry, &expiries);
        let (access, _) = watch::channel(Arc::new(settings.access.clone()));
        let shared = Arc::new(Shared {
            access,
            expiries: Mutex::new(expiries),
            admission: admission::Admission::new(settings.admission),
            sessions: Arc::new(Semaphore::new(settings.max_sessions)),
            edge_sessions: admission::EdgeSessions::new(settings.max_sessions_per_edge),
            settings,
            origin,
            telemetry,
            drain: Drain::default(),
            buffer,
            resumable: resumable::Resumable::default(),
            tcp_tls: watch::channel(tcp_tls).0,
        });
        Ok(Gateway {
            endpoint,
            tcp,
            shared,
            pin,
            embedded,
            metrics,
        })
    }

    /// A handle that applies a changed configuration while the gateway runs.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            endpoint: self.endpoint.clone(),
            shared: self.shared.clone(),
        }
    }

    /// The UDP address QUIC listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("bound socket")
    }

    /// The TCP address the TCP carrier listens on, unless turned off.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The pin of the certificate the gateway presents.
    pub fn pin(&self) -> Fingerprint {
        self.pin
    }

    /// Where sessions go: the origin's `HOST:PORT`, or the embedded origin's address.
    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    /// The gateway's live registry of sessions and connections.
    pub fn telemetry(&self) -> Arc<Telemetry> {
        self.shared.telemetry.clone()
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
            tcp = ?self.tcp_addr(),
            origin = %self.shared.origin,
            embedded = self.embedded.is_some(),
            metrics = ?self.metrics_addr(),
            "gateway ready"
        );
        let services = CancellationToken::new();
        let telemetry = self.shared.telemetry.clone();
        telemetry.start(self.metrics, services.clone());
        let embedded = self
            .embedded
            .map(|embedded| tokio::spawn(embedded.run(services.clone())));
        let drain = &self.shared.drain;
        if let Some(tcp) = self.tcp {
            tokio::spawn(tcp::accept(tcp, self.shared.clone(), shutdown.clone()));
        }
        let shared = self.shared.clone();
        let expiry_watch = services.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = expiry_watch.cancelled() => return,
                    _ = tokio::time::sleep(EXPIRY_CHECK) => {}
                }
                let expiries = shared.expiries.lock().expect("expiries").clone();
                check_expiry(&shared.telemetry, &expiries);
            }
        });
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
            let Some((incoming, ticket)) = admit_handshake(incoming, &shared) else {
                continue;
            };
            drain.spawn(
                serve_connection(incoming, ticket, shared, shutdown.clone())
                    .instrument(tracing::info_span!("edge", %remote)),
            );
        }
        let live = telemetry.sessions().len();
        drain
            .finish("gateway", live, self.shared.settings.shutdown_grace)
            .await;
        self.endpoint
            .close(quic_code(CloseCode::Shutdown), b"gateway shutting down");
        let _ = tokio::time::timeout(END_LIMIT, self.endpoint.wait_idle()).await;
        services.cancel();
        if let Some(embedded) = embedded {
            let _ = embedded.await;
        }
        info!("gateway stopped");
    }
}

/// Judges a QUIC handshake by the admission limits before any work is done for it: its ticket,
/// or `None` once it was sent a Retry (to prove its address) or refused (counted and logged).
fn admit_handshake(
    incoming: quinn::Incoming,
    shared: &Shared,
) -> Option<(quinn::Incoming, admission::Ticket)> {
    let remote = incoming.remote_address();
    let verdict = shared
        .admission
        .judge(remote.ip(), incoming.remote_address_validated());
    match verdict {
        admission::Verdict::Accept(ticket) => Some((incoming, ticket)),
        admission::Verdict::Retry if incoming.may_retry() => {
            shared.telemetry.quic_retry();
            // Stateless: the source comes back with a token proving its address.
            let _ = incoming.retry();
            None
        }
        admission::Verdict::Retry => {
            // Already validated (cannot happen: validated sources are not retried).
            incoming.refuse();
            None
        }
        admission::Verdict::Refuse(reason) => {
            shared.telemetry.handshake_failed(
                reason,
                &format_args!("handshake from {remote} refused: {reason} reached"),
            );
            incoming.refuse();
            None
        }
    }
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

/// The client certificate the edge on `conn` presented, if any.
fn peer_certificate(
    conn: &quinn::Connection,
) -> Option<rustls::pki_types::CertificateDer<'static>> {
    conn.peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?
        .into_iter()
        .next()
}

/// The least silence after which a gateway lets an edge's sessions go when its HELLO asks
/// (`release_after_ms`): a few of the watch's looks, whatever a peer asks.
const MIN_RELEASE_AFTER: Duration = Duration::from_millis(250);

/// Returns (with how long) once `path` has been silent for `after`; never without one.
async fn edge_silent(path: &PathWatch, after: Option<Duration>) -> Duration {
    let Some(after) = after else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let silent = path.silent_for();
        if silent >= after {
            return silent;
        }
    }
}

/// Counts and logs an edge whose connection came up but whose HELLO did not, and closes it.
fn no_hello(shared: &Shared, conn: &quinn::Connection, e: &dyn std::fmt::Display) {
    shared
        .telemetry
        .handshake_failed("no_hello", &format_args!("edge sent no HELLO: {e}"));
    conn.close(quic_code(CloseCode::ProtocolViolation), b"no HELLO");
}

/// One edge's QUIC connection: the handshake and HELLO, the edge admitted (or refused) and
/// welcomed, then a session per bidirectional stream.
async fn serve_connection(
    incoming: quinn::Incoming,
    ticket: admission::Ticket,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let Some(greeted) = handshake(incoming, ticket, &shared).await else {
        return;
    };
    let Some(edge) = admit(greeted, &shared).await else {
        return;
    };
    serve_sessions(edge, shared, shutdown).await;
}

/// A connection whose edge sent its first frame on the control stream (HELLO, it should be).
struct Greeted {
    conn: quinn::Connection,
    /// The connection's place in the admission counts, held while it lives.
    ticket: admission::Ticket,
    /// Becomes true when the QUIC handshake completes.
    done: watch::Receiver<bool>,
    control_send: quinn::SendStream,
    control_recv: FrameReader,
    first: Option<Frame>,
}

/// Waits until the QUIC handshake has completed (false: it failed).
async fn handshake_done(mut done: watch::Receiver<bool>) -> bool {
    done.wait_for(|completed| *completed).await.is_ok()
}

/// Runs the QUIC handshake and reads the edge's first control frame: `None` (counted and
/// logged) when either fails or the frame does not come in time. 0.5-RTT: the HELLO a
/// resuming edge sends in its 0-RTT data is read, and answered, a round trip before the
/// handshake ends. Safe to answer: a replayed HELLO gets a WELCOME only the real edge can
/// read, and an edge opens sessions only after WELCOME (1-RTT). Client certificates are
/// judged only once the handshake has proved them.
async fn handshake(
    incoming: quinn::Incoming,
    mut ticket: admission::Ticket,
    shared: &Shared,
) -> Option<Greeted> {
    let failed = |e: &quinn::ConnectionError| {
        shared.telemetry.handshake_failed(
            handshake_failure_reason(e),
            &format_args!("quic handshake: {e}"),
        )
    };
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            ticket.established();
            failed(&e);
            return None;
        }
    };
    let Ok((conn, handshake)) = connecting.into_0rtt() else {
        // quinn: "for incoming connections, conversion to 0.5-RTT will always succeed".
        ticket.established();
        shared
            .telemetry
            .handshake_failed("other", &"quinn refused 0.5-RTT for an incoming connection");
        return None;
    };
    let done = handshake_outcome(&conn, handshake);
    // An edge sends HELLO with or right after the handshake; a connection that does not holds
    // a pending slot meanwhile.
    let hello_limit = shared.settings.handshake_timeout.min(HELLO_DEADLINE);
    let hello = read_hello(&conn, &done, hello_limit).await;
    ticket.established();
    match hello {
        Some(Ok((control_send, control_recv, Ok(first)))) => Some(Greeted {
            conn,
            ticket,
            done,
            control_send,
            control_recv,
            first,
        }),
        Some(Err(e)) if !*done.borrow() => {
            failed(&e);
            None
        }
        Some(Err(e)) => {
            no_hello(shared, &conn, &e);
            None
        }
        Some(Ok((_, _, Err(e)))) => {
            no_hello(shared, &conn, &e);
            None
        }
        None => {
            shared
                .telemetry
                .handshake_failed("hello_timeout", &"edge sent no HELLO in time");
            let reason = format!("no HELLO within {hello_limit:?} of the handshake");
            conn.close(quic_code(CloseCode::Timeout), reason.as_bytes());
            None
        }
    }
}

/// Whether the handshake of `conn` completed, once known. quinn's `handshake` future says
/// whether 0-RTT was taken (false for an edge that sent none) and resolves false on failure
/// too: a live connection tells.
fn handshake_outcome(
    conn: &quinn::Connection,
    handshake: quinn::ZeroRttAccepted,
) -> watch::Receiver<bool> {
    let (done_tx, done) = watch::channel(false);
    let watched = conn.clone();
    tokio::spawn(async move {
        handshake.await;
        let _ = done_tx.send(watched.close_reason().is_none());
    });
    done
}

/// The edge's control stream and what was read from it first, or why no stream came.
type HelloRead = Result<
    (
        quinn::SendStream,
        FrameReader,
        Result<Option<Frame>, rtmpq_hop::tunnel::FrameReadError>,
    ),
    quinn::ConnectionError,
>;

/// The first stream the edge opens and the first frame on it (its HELLO), unless it does
/// not come within `hello_limit` of the handshake's end (it may come before): `None`.
async fn read_hello(
    conn: &quinn::Connection,
    done: &watch::Receiver<bool>,
    hello_limit: Duration,
) -> Option<HelloRead> {
    let read = async {
        let (send, recv) = conn.accept_bi().await?;
        let mut frames = FrameReader::control(recv);
        let hello = frames.next().await;
        Ok::<_, quinn::ConnectionError>((send, frames, hello))
    };
    let deadline = async {
        if !handshake_done(done.clone()).await {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(hello_limit).await;
    };
    tokio::select! {
        read = read => Some(read),
        _ = deadline => None,
    }
}

/// An edge admitted and welcomed on its connection.
struct Admitted {
    conn: quinn::Connection,
    /// The connection's place in the admission counts, held while it lives.
    ticket: admission::Ticket,
    edge_id: String,
    creds: Credentials,
    /// How long a silence of the edge lets its sessions go (HELLO's `release_after_ms`).
    release_after: Duration,
}

/// Judges the edge's HELLO (its id, wire version, token and certificate against the access
/// policy) and answers WELCOME, or closes the connection with why (counted and logged).
async fn admit(greeted: Greeted, shared: &Shared) -> Option<Admitted> {
    let Greeted {
        conn,
        ticket,
        done,
        mut control_send,
        mut control_recv,
        first,
    } = greeted;
    if shared.settings.client_auth && !handshake_done(done.clone()).await {
        let e = conn
            .close_reason()
            .unwrap_or(quinn::ConnectionError::LocallyClosed);
        shared.telemetry.handshake_failed(
            handshake_failure_reason(&e),
            &format_args!("quic handshake: {e}"),
        );
        return None;
    }
    let cert = peer_certificate(&conn);
    let creds = |token| Credentials::of(cert.as_ref(), token);
    let (edge_id, creds, release_after, refusal) = match first {
        Some(Frame::Hello {
            version,
            edge_id,
            token,
            release_after_ms,
        }) => {
            // What the edge proved, once: judged here and after each reload by its sessions.
            let creds = creds(token);
            let refusal = refusal(shared, version, &edge_id, &creds);
            let release_after = Duration::from_millis(release_after_ms.into());
            (edge_id, creds, release_after, refusal)
        }
        other => {
            let why = format!("expected HELLO, got {other:?}");
            let refusal = Some((CloseCode::ProtocolViolation, why));
            (String::new(), creds(String::new()), Duration::ZERO, refusal)
        }
    };
    if let Some((code, reason)) = refusal {
        shared.telemetry.handshake_failed(
            code.as_str(),
            &format_args!("edge refused: {code}: {reason}"),
        );
        // A close before the handshake ends reaches the edge as a bare "application error"
        // (QUIC hides the code and reason until then): refuse a 0-RTT HELLO once it has.
        handshake_done(done).await;
        conn.close(quic_code(code), reason.as_bytes());
        return None;
    }
    welcome(&mut control_send).await?;
    info!(edge = %edge_id, "edge connected");
    // Nothing more is due on the control stream; what comes is read and dropped (small frames
    // only), so QUIC holds nothing for it.
    tokio::spawn(async move { while let Ok(Some(_)) = control_recv.next().await {} });
    Some(Admitted {
        conn,
        ticket,
        edge_id,
        creds,
        release_after,
    })
}

/// Answers an admitted edge's HELLO with WELCOME; `None` (logged) if it cannot be sent.
async fn welcome(send: &mut impl rtmpq_hop::tunnel::FrameWrite) -> Option<()> {
    let welcome = Frame::Welcome {
        version: WIRE_VERSION,
        gateway_id: "rtmpq-gateway".into(),
    };
    match write_frame(send, &welcome).await {
        Ok(()) => Some(()),
        Err(e) => {
            warn!(reason = %e, "could not answer HELLO");
            None
        }
    }
}

/// Why an edge saying HELLO with `version`, `edge_id` and `creds` is refused, if it is.
fn refusal(
    shared: &Shared,
    version: u8,
    edge_id: &str,
    creds: &Credentials,
) -> Option<(CloseCode, String)> {
    if let Some(problem) = edge_id_problem(edge_id) {
        return Some((CloseCode::ProtocolViolation, problem));
    }
    if version != WIRE_VERSION {
        let why = format!("edge speaks wire version {version}, this gateway speaks {WIRE_VERSION}");
        return Some((CloseCode::UnsupportedVersion, why));
    }
    let admitted = shared.access.borrow().admit(creds, edge_id);
    let refused = admitted.err()?;
    shared.telemetry.unauthorized(&refused.identity, "connect");
    Some((CloseCode::Unauthorized, refused.reason))
}

/// Serves an admitted edge's sessions, one per bidirectional stream and within the limits,
/// until its connection ends, it goes silent for what it asked, or the gateway shuts down;
/// then waits for its sessions to end.
async fn serve_sessions(edge: Admitted, shared: Arc<Shared>, shutdown: CancellationToken) {
    let Admitted {
        conn,
        ticket,
        edge_id,
        creds,
        release_after,
    } = edge;
    shared.telemetry.connection_opened(&conn, edge_id.clone());
    let link = session::EdgeLink {
        link: rtmpq_hop::session::TunnelLink::start(&conn),
        // One connection's sessions hold at most a share of the process-wide bound.
        buffer: shared
            .buffer
            .share(shared.buffer.limit() / CONNECTION_SHARE_OF_BUFFER),
    };
    // Once per connection: who may resume this connection's sessions, and what it proved.
    let cert = peer_certificate(&conn);
    let identity = resumable::EdgeIdentity::of(&edge_id, cert.as_ref(), creds.token.expose());
    let creds = Arc::new(creds);
    // An edge with other gateways: its sessions are not held for a resume here (it moves them
    // elsewhere), and once it is silent for what it asked, they end and their origin side goes.
    let hold = match release_after.is_zero() {
        true => shared.settings.resume_grace,
        false => Duration::ZERO,
    };
    let release_after = (!release_after.is_zero()).then(|| release_after.max(MIN_RELEASE_AFTER));
    let silent = edge_silent(&link.link.path, release_after);
    tokio::pin!(silent);
    let sessions = TaskTracker::new();
    let per_connection = Arc::new(Semaphore::new(shared.settings.max_sessions_per_connection));
    let reason = loop {
        let (send, recv) = tokio::select! {
            _ = shutdown.cancelled() => break "gateway shutting down".to_owned(),
            silence = &mut silent => {
                let reason = format!("edge silent for {silence:?}: it has other gateways; its sessions end here and their origin side goes");
                conn.close(quic_code(CloseCode::TunnelLost), b"edge silent");
                break reason;
            }
            stream = conn.accept_bi() => match stream {
                Ok(stream) => stream,
                Err(e) => break e.to_string(),
            },
        };
        let slots = match session_slots(&shared, &per_connection, &identity) {
            Ok(slots) => slots,
            Err((limit, reason)) => {
                refuse_session(&shared, send.into(), limit, &reason).await;
                continue;
            }
        };
        let shared = shared.clone();
        let who = session::Who {
            // What the edge calls itself and the address its connection comes from.
            peer: format!("{edge_id}@{}", conn.remote_address()),
            edge: identity.clone(),
            edge_id: edge_id.clone(),
            creds: creds.clone(),
            hold,
        };
        let link = link.clone();
        sessions.spawn(
            async move {
                let frames = FrameReader::control(recv);
                session::serve(send.into(), frames, &shared, who, link).await;
                drop(slots);
            }
            .in_current_span(),
        );
    };
    sessions.close();
    sessions.wait().await;
    shared.telemetry.connection_closed(&conn);
    info!(edge = %edge_id, %reason, "edge disconnected");
    drop(ticket);
}

/// What a live session holds of the gateway's limits: its place on its connection, on its
/// edge and in the gateway (given back when dropped).
struct SessionSlots {
    _on_connection: OwnedSemaphorePermit,
    _of_edge: admission::EdgeSlot,
    _in_gateway: OwnedSemaphorePermit,
}

/// The slots of a new session of the edge `identity` on a connection with `per_connection`
/// places; else the limit reached and why.
fn session_slots(
    shared: &Shared,
    per_connection: &Arc<Semaphore>,
    identity: &resumable::EdgeIdentity,
) -> Result<SessionSlots, (usize, String)> {
    let Ok(on_connection) = per_connection.clone().try_acquire_owned() else {
        let limit = shared.settings.max_sessions_per_connection;
        return Err((
            limit,
            format!("this connection carries {limit} sessions already"),
        ));
    };
    let Some(of_edge) = shared.edge_sessions.take(identity.as_str()) else {
        let limit = shared.edge_sessions.limit();
        return Err((
            limit,
            format!("this edge has {limit} sessions at this gateway already"),
        ));
    };
    let Ok(in_gateway) = shared.sessions.clone().try_acquire_owned() else {
        let limit = shared.settings.max_sessions;
        return Err((limit, "gateway has no room for another session".to_owned()));
    };
    Ok(SessionSlots {
        _on_connection: on_connection,
        _of_edge: of_edge,
        _in_gateway: in_gateway,
    })
}

/// Refuses a session stream before it starts, at a limit: `overloaded` with `reason` to the
/// edge, a log line, and the count of refused sessions.
async fn refuse_session(
    shared: &Shared,
    mut send: rtmpq_hop::stream::SendHalf,
    limit: usize,
    reason: &str,
) {
    warn!(limit, "session refused: {reason}");
    shared.telemetry.session_refused(CloseCode::Overloaded);
    close_stream(&mut send, CloseCode::Overloaded, reason).await;
}
