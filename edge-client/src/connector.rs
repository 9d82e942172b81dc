//! The edge's one QUIC connection to a gateway: connect (racing several gateways, the first
//! tried first and each next one a moment later), HELLO/WELCOME, watch it, and reconnect with
//! backoff when it is lost; with several gateways, a gateway that stops acknowledging is left
//! for another. Sessions ask for the current connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rtmpq_hop::session::TunnelLink;
use rtmpq_hop::transport::{quic_code, PathWatch};
use rtmpq_hop::tunnel::{write_frame, FrameReader};
use rtmpq_proto::wire::{CloseCode, Frame, WIRE_VERSION};
use rtmpq_telemetry::Telemetry;

use crate::config::GatewayAddress;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The state of the link to the gateway.
#[derive(Debug, Clone)]
pub enum LinkState {
    /// Not connected yet.
    Connecting,
    /// Connected and welcomed.
    Up(GatewayLink),
    /// The last attempt failed or the connection was lost, for this reason.
    Down(ConnectError),
}

/// A live connection to the gateway and its path's figures.
#[derive(Debug, Clone)]
pub struct GatewayLink {
    /// The connection.
    pub conn: quinn::Connection,
    /// Its path and media streams.
    pub link: TunnelLink,
    /// The gateway it goes to, as configured.
    pub address: String,
}

/// Why the edge has no connection to the gateway.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The gateway's name did not resolve.
    #[error("resolve {address}: {reason}")]
    Resolve {
        /// `HOST:PORT`.
        address: String,
        /// The resolver's words.
        reason: String,
    },
    /// The name resolved to no address.
    #[error("{0} resolves to nothing")]
    NoAddress(String),
    /// quinn refused to start the connection.
    #[error("{0}")]
    Start(#[from] quinn::ConnectError),
    /// The QUIC or TLS handshake failed.
    #[error("{0}")]
    Handshake(#[from] quinn::ConnectionError),
    /// The control stream broke before WELCOME.
    #[error("control stream: {0}")]
    Control(String),
    /// The gateway closed the connection instead of answering HELLO.
    #[error("gateway refused: {0}")]
    Refused(quinn::ConnectionError),
    /// The gateway answered HELLO with something other than WELCOME.
    #[error("gateway answered HELLO with {0}")]
    Unexpected(String),
    /// The gateway welcomed us in another wire version.
    #[error("gateway speaks wire version {0}, this edge speaks {WIRE_VERSION}")]
    Version(u8),
    /// No WELCOME in time.
    #[error("no WELCOME within {0:?}")]
    NoWelcome(Duration),
    /// The connection was lost after it was up.
    #[error("connection lost: {0}")]
    Lost(quinn::ConnectionError),
}

/// Why a session gets no gateway connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayUnavailable {
    /// The connector's last attempt failed, or the connection was lost.
    #[error("gateway unreachable: {0}")]
    Down(ConnectError),
    /// No connection came up within the wait.
    #[error("gateway not connected within {0:?}")]
    NotYet(Duration),
}

/// What the connector needs to reach a gateway.
#[derive(Debug, Clone)]
pub struct GatewayTarget {
    /// The gateways, in order of preference.
    pub gateways: Vec<GatewayAddress>,
    /// TLS and transport settings.
    pub client_config: quinn::ClientConfig,
    /// This edge's name.
    pub edge_id: String,
    /// Token for HELLO.
    pub token: String,
    /// With several gateways: keep a connection to the next one up (welcomed, kept alive),
    /// so a failover moves sessions without a handshake.
    pub standby: bool,
    /// Where connections and their events are reported.
    pub telemetry: Arc<Telemetry>,
    /// With `transport = "auto"`: the TCP carrier to check when QUIC stops being
    /// acknowledged, and where the verdict "UDP no longer gets through" is kept.
    pub tcp_fallback: Option<TcpFallback>,
}

/// The TCP carrier beside QUIC, for telling a UDP block from a blackout (see
/// [`udp_died`]).
#[derive(Debug, Clone)]
pub struct TcpFallback {
    /// Opens TCP carrier connections.
    pub dialer: Arc<crate::tcp_dial::TcpDialer>,
    /// Set when UDP stopped getting through while TCP did; cleared when QUIC connects again.
    pub udp_blocked: Arc<std::sync::atomic::AtomicBool>,
}

impl GatewayTarget {
    /// Whether this edge works a pool: several gateways and a warm standby to move to.
    pub fn pool(&self) -> bool {
        self.standby && self.gateways.len() > 1
    }

    /// What HELLO's `release_after_ms` says: in a [pool](Self::pool), [`POOL_RELEASE_AFTER`]
    /// (a gateway that hears nothing from this edge for so long lets its sessions go: the edge
    /// has moved them to its standby); otherwise 0 (hold them for a resume: the edge may come
    /// back to the same gateway, by another address or after an outage).
    pub fn release_after_ms(&self) -> u32 {
        match self.pool() {
            true => POOL_RELEASE_AFTER.as_millis() as u32,
            false => 0,
        }
    }
}

/// In a pool: how often the edge sends a keep-alive on an otherwise idle connection, so that
/// its gateway can tell silence from a quiet session within [`POOL_RELEASE_AFTER`].
pub const POOL_KEEP_ALIVE: Duration = Duration::from_millis(400);
/// In a pool: how long a gateway that hears nothing from this edge waits before it ends the
/// edge's sessions and lets their origin side go (three keep-alives), so that the gateway the
/// edge moves them to is not refused by the origin for a name still published.
pub const POOL_RELEASE_AFTER: Duration = Duration::from_millis(1200);

/// How long after one gateway's attempt the next gateway's starts (RFC 8305's "connection
/// attempt delay"): the first answers first unless it is slow or gone.
pub const RACE_STAGGER: Duration = Duration::from_millis(250);
/// With more than one gateway: how long the active one may leave what was sent unacknowledged
/// before the edge closes its connection and moves its sessions to another. (With one there
/// is nowhere to go: a dark path is probed until it returns or the idle timeout ends it.)
pub const FAILOVER_AFTER: Duration = Duration::from_secs(3);

/// With a standby connection up: how long the active gateway may leave what was sent
/// unacknowledged before the standby is probed; if it answers, the sessions move at once.
pub const FAILOVER_WITH_STANDBY_AFTER: Duration = Duration::from_secs(1);

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const WELCOME_LIMIT: Duration = Duration::from_secs(10);

/// Hands out the current gateway connection.
#[derive(Debug, Clone)]
pub struct Connector {
    state: watch::Receiver<LinkState>,
}

impl Connector {
    /// Starts keeping a connection to `target` over `endpoint` until `shutdown`.
    pub fn start(
        endpoint: quinn::Endpoint,
        target: GatewayTarget,
        telemetry: Arc<Telemetry>,
        shutdown: CancellationToken,
    ) -> Connector {
        let (tx, rx) = watch::channel(LinkState::Connecting);
        tokio::spawn(maintain(endpoint, target, telemetry, tx, shutdown));
        Connector { state: rx }
    }

    /// The live connection now, if there is one (no waiting).
    pub fn ready(&self) -> Option<GatewayLink> {
        match &*self.state.borrow() {
            LinkState::Up(link) if link.conn.close_reason().is_none() => Some(link.clone()),
            _ => None,
        }
    }

    /// The live connection, waiting up to `wait` for one; the last failure otherwise.
    pub async fn connection(&self, wait: Duration) -> Result<GatewayLink, GatewayUnavailable> {
        let mut rx = self.state.clone();
        let up = tokio::time::timeout(
            wait,
            rx.wait_for(|s| matches!(s, LinkState::Up(l) if l.conn.close_reason().is_none())),
        )
        .await;
        match up {
            Ok(Ok(state)) => match &*state {
                LinkState::Up(link) => Ok(link.clone()),
                _ => unreachable!("wait_for returned a matching state"),
            },
            _ => Err(match &*self.state.borrow() {
                LinkState::Down(reason) => GatewayUnavailable::Down(reason.clone()),
                _ => GatewayUnavailable::NotYet(wait),
            }),
        }
    }
}

async fn maintain(
    endpoint: quinn::Endpoint,
    target: GatewayTarget,
    telemetry: Arc<Telemetry>,
    state: watch::Sender<LinkState>,
    shutdown: CancellationToken,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut was_connected = false;
    let mut standby: Option<Standby> = None;
    let mut rounds = RoundPace::default();
    loop {
        let warm = standby.as_ref().and_then(Standby::take);
        let attempt = match warm {
            Some(warm) => {
                info!(gateway = %warm.2, "the standby connection takes over");
                telemetry.standby_took_over();
                Ok(warm)
            }
            None => tokio::select! {
                _ = shutdown.cancelled() => return,
                attempt = race(&endpoint, &target, &mut rounds) => attempt,
            },
        };
        match attempt {
            Ok((conn, _control, address)) => {
                let link = TunnelLink::start(&conn);
                // The edge's first connection says it is connected once its probe train has
                // crossed: a pusher that starts with the edge (an app that runs both) then
                // meets a path whose rate is known, not a train its first key frame queues
                // behind. A connection that comes back has sessions waiting: their media
                // goes at once.
                if !was_connected {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = link.path.probe_train_crossed() => {}
                    }
                }
                info!(gateway = %address, remote = %conn.remote_address(), "connected to gateway");
                if target.standby && target.gateways.len() > 1 {
                    standby = Some(Standby::start(&endpoint, &target, &address));
                }
                backoff = FIRST_BACKOFF;
                if std::mem::replace(&mut was_connected, true) {
                    telemetry.reconnected();
                }
                telemetry.connection_opened(&conn, address.clone());
                if let Some(fallback) = &target.tcp_fallback {
                    fallback
                        .udp_blocked
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                }
                let path = link.path.clone();
                state.send_replace(LinkState::Up(GatewayLink {
                    conn: conn.clone(),
                    link,
                    address: address.clone(),
                }));
                let can_move = target.gateways.len() > 1;
                let reason = tokio::select! {
                    _ = shutdown.cancelled() => {
                        conn.close(quic_code(CloseCode::Shutdown), b"edge shutting down");
                        telemetry.connection_closed(&conn);
                        return;
                    }
                    reason = conn.closed() => reason,
                    waited = udp_died(&path, target.tcp_fallback.as_ref()), if target.tcp_fallback.is_some() => {
                        warn!(gateway = %address, "QUIC left what was sent unacknowledged for {waited:?} while TCP to the gateway works: UDP no longer gets through from here; live sessions move to the TCP carrier");
                        telemetry.tcp_fallback("udp_died");
                        conn.close(quic_code(CloseCode::TunnelLost), b"udp stopped getting through");
                        conn.closed().await
                    }
                    waited = stops_acknowledging(&path, standby.as_ref()), if can_move => {
                        warn!(gateway = %address, "gateway left what was sent unacknowledged for {waited:?}: moving its sessions to another gateway");
                        telemetry.failed_over();
                        conn.close(quic_code(CloseCode::TunnelLost), b"gateway stopped acknowledging");
                        conn.closed().await
                    }
                };
                telemetry.connection_closed(&conn);
                match &reason {
                    quinn::ConnectionError::ApplicationClosed(close)
                        if close.error_code == quic_code(CloseCode::Shutdown) =>
                    {
                        info!("gateway shutting down; reconnecting")
                    }
                    _ => warn!(reason = %reason, "connection to gateway lost; reconnecting"),
                }
                state.send_replace(LinkState::Down(ConnectError::Lost(reason)));
            }
            Err(reason) => {
                let gateways: Vec<&str> =
                    target.gateways.iter().map(|g| g.address.as_str()).collect();
                warn!(gateway = %gateways.join(","), %reason, retry_in = ?backoff, "cannot connect to gateway");
                telemetry.count_handshake_failure("connect");
                state.send_replace(LinkState::Down(reason));
            }
        }
        if standby.as_ref().is_some_and(Standby::ready) {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The control stream stays open as long as the connection lives.
type ControlStream = (quinn::SendStream, FrameReader);

/// A connection kept up to another gateway than the active one, welcomed and kept alive,
/// for a failover to take at once; its task connects again (with backoff) while it is not up.
struct Standby {
    slot: Arc<std::sync::Mutex<Option<(quinn::Connection, ControlStream, String)>>>,
    task: tokio::task::AbortHandle,
}

impl Standby {
    /// Starts keeping a standby to the first of `target`'s gateways that is not `active`
    /// and answers.
    fn start(endpoint: &quinn::Endpoint, target: &GatewayTarget, active: &str) -> Standby {
        let slot = Arc::new(std::sync::Mutex::new(None));
        let others = GatewayTarget {
            gateways: target
                .gateways
                .iter()
                .filter(|g| g.address != active)
                .cloned()
                .collect(),
            ..target.clone()
        };
        let (endpoint, filled) = (endpoint.clone(), slot.clone());
        let task = tokio::spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            let mut rounds = RoundPace::default();
            loop {
                match race(&endpoint, &others, &mut rounds).await {
                    Ok((conn, control, address)) => {
                        info!(gateway = %address, "standby connection to gateway ready");
                        others.telemetry.standby_ready();
                        backoff = FIRST_BACKOFF;
                        *filled.lock().expect("standby") = Some((conn.clone(), control, address));
                        let reason = conn.closed().await;
                        filled.lock().expect("standby").take();
                        info!(%reason, "standby connection lost; connecting again");
                    }
                    Err(reason) => {
                        info!(%reason, retry_in = ?backoff, "no standby gateway answers");
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        })
        .abort_handle();
        Standby { slot, task }
    }

    /// Whether the standby connection is up.
    fn ready(&self) -> bool {
        let slot = self.slot.lock().expect("standby");
        slot.as_ref()
            .is_some_and(|(conn, ..)| conn.close_reason().is_none())
    }

    /// Whether the standby gateway acknowledges a probe within a few of its round trips.
    async fn answers(&self) -> bool {
        let conn = match &*self.slot.lock().expect("standby") {
            Some((conn, ..)) if conn.close_reason().is_none() => conn.clone(),
            _ => return false,
        };
        let before = conn.stats().udp_rx.datagrams;
        if conn.send_datagram(bytes::Bytes::from_static(b"p")).is_err() {
            return false;
        }
        let limit = conn.rtt() * 3 + Duration::from_millis(100);
        let deadline = tokio::time::Instant::now() + limit;
        // quinn tells no one when an acknowledgement arrives; its counters do.
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if conn.stats().udp_rx.datagrams > before {
                return true;
            }
        }
        false
    }

    /// The standby connection if it is up and alive; the keeping stops (the next active
    /// connection starts its own standby).
    fn take(&self) -> Option<(quinn::Connection, ControlStream, String)> {
        self.task.abort();
        let warm = self.slot.lock().expect("standby").take()?;
        warm.0.close_reason().is_none().then_some(warm)
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        self.task.abort();
        if let Some((conn, ..)) = self.slot.lock().expect("standby").take() {
            conn.close(quic_code(CloseCode::Shutdown), b"standby no longer needed");
        }
    }
}

/// Returns (with how long) once `path` has left something unacknowledged for
/// [`FAILOVER_AFTER`], or for [`FAILOVER_WITH_STANDBY_AFTER`] while the standby gateway
/// answers a probe: then it is the active gateway that is gone, not this edge's network.
async fn stops_acknowledging(path: &PathWatch, standby: Option<&Standby>) -> Duration {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let waited = path.unacknowledged_for();
        if waited >= FAILOVER_AFTER {
            return waited;
        }
        if waited >= FAILOVER_WITH_STANDBY_AFTER {
            if let Some(standby) = standby {
                if standby.answers().await {
                    return path.unacknowledged_for();
                }
            }
        }
    }
}

/// How long QUIC may leave what was sent unacknowledged before the edge asks whether TCP to
/// the gateway still works (a UDP block), rather than the path being dark (a blackout).
pub const UDP_DEAD_AFTER: Duration = Duration::from_secs(1);
/// How long that TCP check may take.
const TCP_CHECK_LIMIT: Duration = Duration::from_secs(1);

/// Returns (with how long QUIC has waited) once QUIC has left what was sent unacknowledged for
/// [`UDP_DEAD_AFTER`] while a TCP carrier connection to the gateway opens (TCP and TLS within
/// [`TCP_CHECK_LIMIT`]): UDP stopped getting through, TCP did not, and `fallback` says so.
/// When TCP fails too, the path is dark (a blackout): nothing moves, and TCP is not asked again
/// until QUIC has been acknowledged since.
async fn udp_died(path: &PathWatch, fallback: Option<&TcpFallback>) -> Duration {
    let Some(fallback) = fallback else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut asked = false;
    loop {
        tick.tick().await;
        let waited = path.unacknowledged_for();
        if waited < UDP_DEAD_AFTER {
            asked = false;
            continue;
        }
        if asked {
            continue;
        }
        asked = true;
        if fallback.dialer.check(TCP_CHECK_LIMIT).await {
            fallback
                .udp_blocked
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return path.unacknowledged_for();
        }
        info!("QUIC unacknowledged for {waited:?} and TCP to the gateway fails too: the path is dark, nothing moves");
    }
}

/// While every attempt of a [`race`] is still waiting for an answer (a dark path), a new
/// round of attempts starts this often: quinn backs off its handshake retransmissions (1 s,
/// 2 s, 4 s...), so after a long outage the first attempt's next packet may be seconds after
/// the path returns; a fresh one sends its first packet at once.
pub const REATTEMPT_EVERY: Duration = Duration::from_secs(1);
/// Most attempts in flight at once per gateway (older ones end at the idle timeout).
const MAX_ATTEMPTS_PER_GATEWAY: usize = 16;
/// While UDP is known not to get through (the TCP carrier works, QUIC does not), the time
/// between rounds of attempts doubles up to this: QUIC is still probed, so sessions go back to
/// it when UDP returns, but a blocked network is not sent a handshake every second.
pub const MAX_ROUND_WHILE_BLOCKED: Duration = Duration::from_secs(30);

/// The time between rounds of connection attempts: [`REATTEMPT_EVERY`], backing off to
/// [`MAX_ROUND_WHILE_BLOCKED`] while UDP is blocked (kept across races).
#[derive(Debug)]
struct RoundPace {
    every: Duration,
}

impl Default for RoundPace {
    fn default() -> Self {
        RoundPace {
            every: REATTEMPT_EVERY,
        }
    }
}

impl RoundPace {
    /// The time until the round after the one starting now.
    fn next(&mut self, udp_blocked: bool) -> Duration {
        if !udp_blocked {
            self.every = REATTEMPT_EVERY;
            return REATTEMPT_EVERY;
        }
        let now = self.every;
        self.every = (self.every * 2).min(MAX_ROUND_WHILE_BLOCKED);
        now
    }
}

/// Connects to the first gateway that answers: the first is tried at once, each next one
/// [`RACE_STAGGER`] after the one before; while none has answered or failed, a new round
/// starts every [`REATTEMPT_EVERY`] (less often while UDP is blocked: [`RoundPace`]). The
/// others are dropped. The last error once every
/// attempt failed.
async fn race(
    endpoint: &quinn::Endpoint,
    target: &GatewayTarget,
    rounds: &mut RoundPace,
) -> Result<(quinn::Connection, ControlStream, String), ConnectError> {
    let udp_blocked = || {
        target
            .tcp_fallback
            .as_ref()
            .is_some_and(|f| f.udp_blocked.load(std::sync::atomic::Ordering::Relaxed))
    };
    let mut attempts = tokio::task::JoinSet::new();
    let mut last = None;
    let most = MAX_ATTEMPTS_PER_GATEWAY * target.gateways.len();
    let mut next_round = tokio::time::Instant::now();
    loop {
        // A new round only while nothing failed outright: a refusal is an answer.
        let now = tokio::time::Instant::now();
        if last.is_none() && now >= next_round {
            // At the cap a round is skipped, not tried again at once.
            next_round = now + rounds.next(udp_blocked());
            if attempts.len() < most {
                for (i, gateway) in target.gateways.iter().enumerate() {
                    let (endpoint, target, gateway) =
                        (endpoint.clone(), target.clone(), gateway.clone());
                    attempts.spawn(async move {
                        tokio::time::sleep(RACE_STAGGER * i as u32).await;
                        let attempt = connect_once(&endpoint, &gateway, &target).await;
                        (attempt, gateway.address)
                    });
                }
            }
        }
        let joined = tokio::select! {
            joined = attempts.join_next() => joined,
            _ = tokio::time::sleep_until(next_round), if last.is_none() => continue,
        };
        match joined {
            Some(Ok((Ok((conn, control)), address))) => {
                attempts.abort_all();
                return Ok((conn, control, address));
            }
            Some(Ok((Err(e), address))) => {
                if target.gateways.len() > 1 {
                    info!(gateway = %address, reason = %e, "gateway did not answer");
                }
                last = Some(e);
            }
            Some(Err(_)) => {}
            None => {
                return Err(
                    last.unwrap_or_else(|| ConnectError::NoAddress("no gateway configured".into()))
                )
            }
        }
    }
}

async fn connect_once(
    endpoint: &quinn::Endpoint,
    gateway: &GatewayAddress,
    target: &GatewayTarget,
) -> Result<(quinn::Connection, ControlStream), ConnectError> {
    let addr: SocketAddr = tokio::net::lookup_host(&gateway.address)
        .await
        .map_err(|e| ConnectError::Resolve {
            address: gateway.address.clone(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| ConnectError::NoAddress(gateway.address.clone()))?;
    let connecting =
        endpoint.connect_with(target.client_config.clone(), addr, &gateway.server_name)?;
    // A gateway process this edge has talked to before (TLS resumption ticket): HELLO goes in
    // 0-RTT data with the handshake and WELCOME comes back with the gateway's first flight, one
    // round trip sooner. HELLO is safe to replay (it opens nothing); sessions wait for WELCOME.
    let (conn, early) = match connecting.into_0rtt() {
        Ok((conn, accepted)) => (conn, Some(accepted)),
        Err(connecting) => (connecting.await?, None),
    };
    let mut welcome = hello_exchange(&conn, target).await;
    if let Some(accepted) = early {
        match (&welcome, accepted.await) {
            (Ok(_), true) => {
                info!(gateway = %gateway.address, "0-RTT accepted: HELLO went with the handshake");
                target.telemetry.zero_rtt(true);
            }
            // A gateway without our ticket (restarted) drops the early data: HELLO again.
            (Err(_), false) if conn.close_reason().is_none() => {
                info!(gateway = %gateway.address, "0-RTT refused (a new gateway process?): HELLO again");
                target.telemetry.zero_rtt(false);
                welcome = hello_exchange(&conn, target).await;
            }
            _ => {}
        }
    }
    welcome.map(|control| (conn, control))
}

/// HELLO on a new control stream of `conn`, and the gateway's WELCOME.
async fn hello_exchange(
    conn: &quinn::Connection,
    target: &GatewayTarget,
) -> Result<ControlStream, ConnectError> {
    let welcome = tokio::time::timeout(WELCOME_LIMIT, async {
        let control = |e: &dyn std::fmt::Display| ConnectError::Control(e.to_string());
        let (mut send, recv) = conn.open_bi().await.map_err(|e| control(&e))?;
        let hello = Frame::Hello {
            version: WIRE_VERSION,
            edge_id: target.edge_id.clone(),
            token: target.token.clone(),
            release_after_ms: target.release_after_ms(),
        };
        write_frame(&mut send, &hello)
            .await
            .map_err(|e| control(&e))?;
        let mut frames = FrameReader::control(recv);
        match frames.next().await {
            Ok(Some(Frame::Welcome { version, .. })) if version == WIRE_VERSION => {
                Ok((send, frames))
            }
            Ok(Some(Frame::Welcome { version, .. })) => Err(ConnectError::Version(version)),
            Ok(other) => Err(ConnectError::Unexpected(format!("{other:?}"))),
            Err(e) => Err(control(&e)),
        }
    })
    .await;
    match welcome {
        Ok(Ok(control)) => Ok(control),
        Ok(Err(e)) => Err(match conn.close_reason() {
            Some(reason @ quinn::ConnectionError::ApplicationClosed(_)) => {
                ConnectError::Refused(reason)
            }
            // Under 0-RTT the handshake's own failure shows here, not before HELLO.
            Some(reason) => ConnectError::Handshake(reason),
            None => e,
        }),
        Err(_) => Err(ConnectError::NoWelcome(WELCOME_LIMIT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(gateways: usize, standby: bool) -> GatewayTarget {
        let cert = rustls::pki_types::CertificateDer::from(b"any certificate".to_vec());
        let pin = rtmpq_certs::Fingerprint::of(&cert);
        let tls = rtmpq_certs::client_tls(rtmpq_certs::GatewayTrust::Pin(pin), None).unwrap();
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        GatewayTarget {
            gateways: (0..gateways)
                .map(|i| GatewayAddress {
                    address: format!("gw{i}:4433"),
                    server_name: format!("gw{i}"),
                })
                .collect(),
            client_config: quinn::ClientConfig::new(Arc::new(quic)),
            edge_id: "edge".into(),
            token: String::new(),
            standby,
            telemetry: Telemetry::new(rtmpq_telemetry::Role::Edge, Arc::default()),
            tcp_fallback: None,
        }
    }

    #[test]
    fn quic_is_probed_less_often_while_udp_is_blocked_and_as_before_once_it_is_not() {
        let mut pace = RoundPace::default();
        assert_eq!(pace.next(false), REATTEMPT_EVERY);
        let blocked: Vec<u64> = (0..8).map(|_| pace.next(true).as_secs()).collect();
        assert_eq!(blocked, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(pace.next(false), REATTEMPT_EVERY);
        assert_eq!(pace.next(true), REATTEMPT_EVERY, "the backoff starts over");
    }

    #[test]
    fn only_a_pool_asks_its_gateways_to_let_sessions_go_when_it_falls_silent() {
        // Several gateways and a standby: the sessions move, so the old gateway lets go soon.
        let pool = target(2, true);
        assert!(pool.pool());
        assert_eq!(
            pool.release_after_ms(),
            POOL_RELEASE_AFTER.as_millis() as u32
        );
        assert!(
            POOL_KEEP_ALIVE * 3 <= POOL_RELEASE_AFTER,
            "keep-alives fit the silence"
        );
        // One gateway, or no standby: the gateway holds sessions for a resume (0).
        for not_a_pool in [target(1, true), target(2, false)] {
            assert!(!not_a_pool.pool());
            assert_eq!(not_a_pool.release_after_ms(), 0);
        }
    }
}
