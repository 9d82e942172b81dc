//! QUIC transport settings shared by edge and gateway: ALPN, BBR congestion control, timeouts,
//! the send window kept to about a congestion window ([`PathWatch`]), and the one mapping of
//! close codes to QUIC application codes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rtmpq_proto::wire::CloseCode;

/// The QUIC application error code for `code` (streams stopped or reset, connections closed).
pub fn quic_code(code: CloseCode) -> quinn::VarInt {
    quinn::VarInt::from_u64(code.to_code()).unwrap_or(quinn::VarInt::MAX)
}

/// The ALPN protocol id of the tunnel, wire version 2.
pub const ALPN: &[u8] = b"rtmpq/2";

/// Every ALPN offered and accepted, newest first: a peer of another wire version completes the
/// TLS handshake and is refused by name in HELLO instead of by a silent TLS failure.
pub const ALPNS: [&[u8]; 2] = [ALPN, b"rtmpq/1"];

/// How long a silent connection lives before it is declared dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// How often an idle connection sends a keep-alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// The transport settings both ends use.
///
/// BBR is the controller: on a 50 ms, 2 % loss link quinn's default Cubic collapses like TCP
/// CUBIC while BBR keeps p99 latency under 150 ms (see DESIGN.md).
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT).expect("idle timeout in range"),
    ));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_concurrent_bidi_streams(1024u32.into());
    t.max_concurrent_uni_streams(1024u32.into());
    t
}

/// A quinn client config over `tls` (ALPN set here) with the shared transport settings.
pub fn client_config(mut tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, TlsConfigError> {
    tls.alpn_protocols = ALPNS.iter().map(|a| a.to_vec()).collect();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsConfigError(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// A quinn server config over `tls` (ALPN set here) with the shared transport settings.
pub fn server_config(mut tls: rustls::ServerConfig) -> Result<quinn::ServerConfig, TlsConfigError> {
    tls.alpn_protocols = ALPNS.iter().map(|a| a.to_vec()).collect();
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsConfigError(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// A TLS config QUIC cannot use (for example one allowing TLS 1.2 only).
#[derive(Debug, thiserror::Error)]
#[error("tls config unusable for quic: {0}")]
pub struct TlsConfigError(String);

/// The smallest send window [`PathWatch`] sets: enough for a key frame of a few Mbit/s
/// stream at start, before the congestion window has grown.
pub const MIN_SEND_WINDOW: u64 = 64 << 10;
/// How often [`PathWatch::run`] looks at the connection.
pub const PATH_WATCH_INTERVAL: Duration = Duration::from_millis(25);

/// What one QUIC connection's path looks like now, shared by its sessions: their media queues
/// use the round trip to leave room in the latency budget for the way across.
#[derive(Debug, Default)]
pub struct PathWatch {
    rtt_us: AtomicU64,
    rate_bps: AtomicU64,
    send_window: AtomicU64,
}

impl PathWatch {
    /// A watch with no figures yet.
    pub fn new() -> Arc<PathWatch> {
        Arc::new(PathWatch::default())
    }

    /// The smoothed round trip; zero before the first figure.
    pub fn rtt(&self) -> Duration {
        Duration::from_micros(self.rtt_us.load(Ordering::Relaxed))
    }

    /// The congestion controller's estimate of the path's rate (BBR's pacing rate), bit/s.
    pub fn rate_bps(&self) -> u64 {
        self.rate_bps.load(Ordering::Relaxed)
    }

    /// The send window last set, bytes.
    pub fn send_window(&self) -> u64 {
        self.send_window.load(Ordering::Relaxed)
    }

    /// Keeps `conn`'s send window (unsent plus unacknowledged bytes, all streams) at about
    /// one congestion window plus a quarter, never under [`MIN_SEND_WINDOW`], and records the
    /// path's figures, until the connection closes.
    ///
    /// quinn's default window (10 MB per connection, 1.25 MB per stream) holds seconds of a
    /// live stream where no policy can reach it; with this one, what quinn holds beyond what
    /// is in flight is a small part of a round trip, and the rest waits in the hop's media
    /// queue, which drops what goes stale.
    pub async fn run(self: Arc<Self>, conn: quinn::Connection) {
        let mut tick = tokio::time::interval(PATH_WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = conn.closed() => return,
                _ = tick.tick() => {}
            }
            self.update(&conn);
        }
    }

    fn update(&self, conn: &quinn::Connection) {
        let stats = conn.stats();
        let cwnd = stats.path.cwnd;
        let window = (cwnd + cwnd / 4).max(MIN_SEND_WINDOW);
        if window != self.send_window.swap(window, Ordering::Relaxed) {
            conn.set_send_window(window);
        }
        self.rtt_us
            .store(stats.path.rtt.as_micros() as u64, Ordering::Relaxed);
        let rate = conn.congestion_state().metrics().pacing_rate;
        self.rate_bps.store(rate.unwrap_or(0), Ordering::Relaxed);
    }
}
