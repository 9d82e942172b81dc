//! QUIC transport settings shared by edge and gateway: ALPN, the congestion controller
//! ([`Congestion`]: rtmpq's own `live`, or quinn's BBR), timeouts, the send window kept to
//! about a congestion window ([`PathWatch`]), and the one mapping of close codes to QUIC
//! application codes.

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::congestion::{Bbr, BbrConfig, Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

use rtmpq_proto::congestion::{queue_target, LiveController, LiveMode, PROBE_TRAIN_PACKETS};
use rtmpq_proto::wire::CloseCode;

/// The congestion controller of rtmpq's QUIC connections (TOML `congestion`, flag
/// `--congestion`), each end choosing for what it sends.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// rtmpq's own, made for a live stream ([`rtmpq_proto::congestion`]): keeps the
    /// bottleneck's queue near empty, tolerates random loss, holds its share beside a flow
    /// that fills the buffer.
    #[default]
    Live,
    /// quinn's BBR (version 1, experimental upstream), as rtmpq ran before 0.9.
    Bbr,
}

impl Congestion {
    /// The name the status API, metrics and configs use.
    pub fn name(self) -> &'static str {
        match self {
            Congestion::Live => "live",
            Congestion::Bbr => "bbr",
        }
    }
}

/// A path whose acknowledgements stopped this long (or four round trips) is dark.
pub const DARK_AFTER: Duration = Duration::from_millis(300);

/// Time since the first call in this process: a clock [`PathWatch`] can keep in an atomic.
fn since_epoch() -> Duration {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed()
}

/// The QUIC application error code for `code` (streams stopped or reset, connections closed).
pub fn quic_code(code: CloseCode) -> quinn::VarInt {
    quinn::VarInt::from_u64(code.to_code()).unwrap_or(quinn::VarInt::MAX)
}

/// The ALPN protocol id of the tunnel, wire version 4.
pub const ALPN: &[u8] = b"rtmpq/4";

/// Every ALPN offered and accepted, newest first: a peer of another wire version completes the
/// TLS handshake and is refused by name in HELLO instead of by a silent TLS failure.
pub const ALPNS: [&[u8]; 4] = [ALPN, b"rtmpq/3", b"rtmpq/2", b"rtmpq/1"];

/// How long a silent connection lives before it is declared dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// How often an idle connection sends a keep-alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// Bytes a peer may send on a connection, over all its streams, beyond what this end has read
/// (QUIC's connection-level flow control; quinn's default is unbounded). What quinn buffers
/// for a connection stays under this however many streams the peer opens; the hop reads each
/// stream promptly and charges what it keeps to its buffer bound.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 16 << 20;
/// Bytes a peer may send on one stream beyond what this end has read.
pub const STREAM_RECEIVE_WINDOW: u32 = 2 << 20;

/// The transport settings both ends use, with `congestion` controlling what this end sends.
///
/// Never quinn's default Cubic: on a 50 ms, 2 % loss link it collapses like TCP CUBIC (see
/// DESIGN.md). Either controller is wrapped in [`ProbingController`] so that [`PathWatch`]
/// can probe a dark path without exponential backoff.
pub fn transport_config(congestion: Congestion) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.congestion_controller_factory(Arc::new(ProbingControllerConfig { congestion }));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT).expect("idle timeout in range"),
    ));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.receive_window(CONNECTION_RECEIVE_WINDOW.into());
    t.stream_receive_window(STREAM_RECEIVE_WINDOW.into());
    t.max_concurrent_bidi_streams(1024u32.into());
    // Lanes sessions open one stream per GOP and one for audio; a GOP's stream lives until
    // QUIC is done with it (about a GOP and a round trip).
    t.max_concurrent_uni_streams(4096u32.into());
    t
}

/// A quinn client config over `tls` (ALPN set here) with the shared transport settings.
pub fn client_config(
    mut tls: rustls::ClientConfig,
    congestion: Congestion,
) -> Result<quinn::ClientConfig, TlsConfigError> {
    tls.alpn_protocols = ALPNS.iter().map(|a| a.to_vec()).collect();
    // 0-RTT to a gateway process this client has a resumption ticket from (rustls keeps
    // tickets in memory for 256 server names); only replay-safe HELLO goes in it.
    tls.enable_early_data = true;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsConfigError(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(congestion)));
    Ok(config)
}

/// A quinn server config over `tls` (ALPN set here) with the shared transport settings.
pub fn server_config(
    mut tls: rustls::ServerConfig,
    congestion: Congestion,
) -> Result<quinn::ServerConfig, TlsConfigError> {
    tls.alpn_protocols = ALPNS.iter().map(|a| a.to_vec()).collect();
    // Accept 0-RTT from resuming clients (QUIC allows only 0 or u32::MAX here); resumption
    // state lives in this config's in-memory session cache, so a restarted or reloaded
    // gateway refuses early data and the client says HELLO again in 1-RTT.
    tls.max_early_data_size = u32::MAX;
    // Each attempt to reconnect spends a ticket, found or not; an edge retrying through an
    // outage makes one a second. rustls keeps up to 8 per server at the client: send 8 (the
    // default 2 were gone before a 20 s outage ended), and keep room for many edges' worth.
    tls.send_tls13_tickets = RESUMPTION_TICKETS;
    tls.session_storage = rustls::server::ServerSessionMemoryCache::new(RESUMPTION_CACHE);
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsConfigError(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(congestion)));
    Ok(config)
}

/// TLS 1.3 resumption tickets the gateway sends each edge connection.
pub const RESUMPTION_TICKETS: usize = 8;
/// Resumption entries the gateway keeps (a few hundred bytes each).
pub const RESUMPTION_CACHE: usize = 16_384;

/// A TLS config QUIC cannot use (for example one allowing TLS 1.2 only).
#[derive(Debug, thiserror::Error)]
#[error("tls config unusable for quic: {0}")]
pub struct TlsConfigError(String);

/// A congestion controller ([`Congestion`]) with a probe allowance: bytes that may be sent
/// beyond the congestion window, used up as packets go out. [`PathWatch`] grants one small
/// packet at a time to probe a path that stopped acknowledging, because quinn's own probe
/// timeout doubles on every expiry (after a 3 s blackout the next probe may be 1.5 s away,
/// after 10 s, 5 s) and nothing else may be sent while the window is full of packets lost in
/// the dark.
pub struct ProbingController {
    inner: Box<dyn Controller>,
    congestion: Congestion,
    allowance: Arc<AtomicU64>,
    /// The path's smallest round trip so far (quinn's `RttEstimator::min`), microseconds;
    /// shared with clones like the allowance.
    min_rtt_us: Arc<AtomicU64>,
    /// The controller's estimate of the path's rate (its pacing rate), bit/s, as of the last
    /// acknowledgements; shared with clones.
    rate_bps: Arc<AtomicU64>,
    /// Whether rtmpq's controller holds the stream's share beside another flow
    /// ([`LiveMode::Competing`]); shared with clones.
    competing: Arc<AtomicBool>,
    /// Bytes in flight as of the last acknowledgements; shared with clones.
    in_flight: Arc<AtomicU64>,
}

/// A running [`ProbingController`]'s figures, read without copying its state.
#[derive(Clone)]
pub struct ControllerFigures {
    allowance: Arc<AtomicU64>,
    min_rtt_us: Arc<AtomicU64>,
    rate_bps: Arc<AtomicU64>,
    competing: Arc<AtomicBool>,
    in_flight: Arc<AtomicU64>,
    congestion: Congestion,
}

impl ControllerFigures {
    /// The figures of `conn`'s controller now (a new path gets a new controller: read again
    /// from time to time).
    pub fn of(conn: &quinn::Connection) -> Option<ControllerFigures> {
        let controller = conn
            .congestion_state()
            .into_any()
            .downcast::<ProbingController>();
        controller.ok().map(|c| ControllerFigures {
            allowance: c.allowance.clone(),
            min_rtt_us: c.min_rtt_us.clone(),
            rate_bps: c.rate_bps.clone(),
            competing: c.competing.clone(),
            in_flight: c.in_flight.clone(),
            congestion: c.congestion,
        })
    }

    /// Lets about `bytes` go out beyond the congestion window (see [`ProbingController`]).
    /// Sets, does not add: a probe that could not be sent (the peer takes no datagrams)
    /// leaves one packet's allowance, not one per interval of the outage to burst out when
    /// the path returns.
    fn grant(&self, bytes: u64) {
        self.allowance.store(bytes, Ordering::Relaxed);
    }

    /// The path's smallest round trip seen so far; zero before the first acknowledgement.
    fn min_rtt(&self) -> Duration {
        Duration::from_micros(self.min_rtt_us.load(Ordering::Relaxed))
    }

    /// The controller's estimate of the path's rate, bit/s (0: none yet).
    fn rate_bps(&self) -> u64 {
        self.rate_bps.load(Ordering::Relaxed)
    }

    /// Whether rtmpq's controller is competing with another flow's queue now.
    fn competing(&self) -> bool {
        self.competing.load(Ordering::Relaxed)
    }

    /// Bytes in flight as of the last acknowledgements.
    fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

impl Controller for ProbingController {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        let _ = self
            .allowance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                Some(a.saturating_sub(bytes))
            });
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.min_rtt_us
            .store(rtt.min().as_micros() as u64, Ordering::Relaxed);
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
        self.in_flight.store(in_flight, Ordering::Relaxed);
        let rate = self.inner.metrics().pacing_rate.unwrap_or(0);
        self.rate_bps.store(rate, Ordering::Relaxed);
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, persistent: bool, lost: u64) {
        self.inner.on_congestion_event(now, sent, persistent, lost);
        let rate = self.inner.metrics().pacing_rate.unwrap_or(0);
        self.rate_bps.store(rate, Ordering::Relaxed);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window() + self.allowance.load(Ordering::Relaxed)
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        // The clone shares the allowance: `Connection::congestion_state` hands out a clone,
        // and granting through it reaches the live controller.
        Box::new(ProbingController {
            inner: self.inner.clone_box(),
            congestion: self.congestion,
            allowance: self.allowance.clone(),
            min_rtt_us: self.min_rtt_us.clone(),
            rate_bps: self.rate_bps.clone(),
            competing: self.competing.clone(),
            in_flight: self.in_flight.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Builds a [`ProbingController`] around the chosen controller for each path.
#[derive(Debug, Default)]
pub struct ProbingControllerConfig {
    congestion: Congestion,
}

impl ControllerFactory for ProbingControllerConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let competing = Arc::<AtomicBool>::default();
        let inner: Box<dyn Controller> = match self.congestion {
            Congestion::Bbr => Box::new(Bbr::new(Arc::new(BbrConfig::default()), current_mtu)),
            Congestion::Live => Box::new(LiveQuinn {
                controller: LiveController::new(now, u64::from(current_mtu)),
                competing: competing.clone(),
            }),
        };
        Box::new(ProbingController {
            inner,
            congestion: self.congestion,
            allowance: Arc::default(),
            min_rtt_us: Arc::default(),
            rate_bps: Arc::default(),
            competing,
            in_flight: Arc::default(),
        })
    }
}

/// [`LiveController`] behind quinn's controller trait, telling [`PathWatch`] (through
/// [`ControllerFigures`]) whether it competes.
struct LiveQuinn {
    controller: LiveController,
    competing: Arc<AtomicBool>,
}

impl Controller for LiveQuinn {
    fn on_sent(&mut self, now: Instant, bytes: u64, _last_packet_number: u64) {
        self.controller.on_sent(now, bytes);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        _app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.controller.on_ack(now, sent, bytes, rtt.get());
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        _app_limited: bool,
        _largest_packet_num_acked: Option<u64>,
    ) {
        let (mode, bandwidth) = (self.controller.mode(), self.controller.bandwidth());
        self.controller.on_end_acks(now, in_flight);
        if self.controller.mode() != mode
            || self.controller.bandwidth().abs_diff(bandwidth) > bandwidth / 4
        {
            tracing::debug!(
                from = mode.as_str(),
                to = self.controller.mode().as_str(),
                path_bps = self.controller.bandwidth() * 8,
                window = self.controller.window(),
                "live controller"
            );
        }
        let competing = self.controller.mode() == LiveMode::Competing;
        self.competing.store(competing, Ordering::Relaxed);
    }

    fn on_congestion_event(&mut self, now: Instant, _sent: Instant, persistent: bool, lost: u64) {
        self.controller.on_loss(now, persistent, lost);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.controller.set_mss(u64::from(new_mtu));
    }

    fn window(&self) -> u64 {
        self.controller.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = ControllerMetrics::default();
        metrics.congestion_window = self.controller.window();
        metrics.pacing_rate = Some(self.controller.bandwidth() * 8);
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        // quinn copies the controller whenever its state is looked at (the metrics, the
        // status API, every second per connection): without the in-flight records.
        Box::new(LiveQuinn {
            controller: self.controller.figures_copy(),
            competing: self.competing.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        rtmpq_proto::congestion::INITIAL_WINDOW
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Time beyond two round trips that the send window holds at the rate the connection sends.
pub const WINDOW_SLACK: Duration = Duration::from_millis(100);

/// How long what the send window holds takes to cross at the rate it was sent: two of the
/// path's smallest round trips plus [`WINDOW_SLACK`] (room for the rate to double each round
/// trip), or the smoothed round trip plus a quarter of the slack when that is longer.
///
/// From the smallest round trip, not the smoothed one: a bottleneck queue inflates the
/// smoothed round trip, a window sized from it lets more wait in that queue, and the two feed
/// each other (measured: with the link at 80 % of the stream and a 200 ms bottleneck queue,
/// two smoothed round trips plus the slack held 600 ms, which alone is over a 200 ms budget).
/// Never under the smoothed round trip: a queue other traffic fills is not ours to drain, and
/// a window below it would shrink the rate it is sized from, round after round.
pub fn horizon(min_rtt: Duration, rtt: Duration) -> Duration {
    (min_rtt * 2 + WINDOW_SLACK).max(rtt + WINDOW_SLACK / 4)
}

/// The [`horizon`] under rtmpq's controller: the whole [`WINDOW_SLACK`] beyond the smoothed
/// round trip too, not a quarter. That controller keeps its own queue within 30 ms, so a
/// smoothed round trip far over the smallest is another flow's queue, which it competes with
/// (its window spans the smoothed round trip). There a quarter of the slack was about a tenth
/// of what crossed in a round trip: beside a CUBIC upload (round trips of 250-350 ms) the send
/// window held 65-130 kB of a 200-330 kB congestion window, packets lost in the full buffer
/// held their room a round trip longer, what was sent fell, and the window sized from it with
/// it; a GOP tail went stale at the sender every two seconds while the controller allowed
/// twice as much in flight.
pub fn live_horizon(min_rtt: Duration, rtt: Duration) -> Duration {
    (min_rtt * 2 + WINDOW_SLACK).max(rtt + WINDOW_SLACK)
}

/// The send window for a path whose controller allows `cwnd` bytes in flight, on which the
/// connection sent `rate` bytes/s over the last second, given the path's [`horizon`]: what
/// that rate sends in the horizon, at least `floor` ([`MIN_SEND_WINDOW`] under BBR) and at
/// most a congestion window and a quarter.
///
/// Not the congestion window alone: quinn's BBR, fed by an application-limited live stream,
/// stays in its start-up gains, and its window reached ~900 KB (2.4 s of a 3 Mbit/s stream)
/// on a 10 Mbit/s, 50 ms path; a blackout then found seconds of media already in quinn,
/// beyond the budget's reach.
pub fn send_window(cwnd: u64, rate: u64, horizon: Duration, floor: u64) -> u64 {
    let by_rate = (rate as f64 * horizon.as_secs_f64()) as u64;
    let ceiling = (cwnd + cwnd / 4).max(floor);
    by_rate.clamp(floor, ceiling)
}

/// The rate, bytes/s, a [`send_window`] spans for a connection that sent `sent` bytes/s over
/// the last second, whose controller's estimate is `pacing`: what was sent, but while rtmpq's
/// controller competes with another flow's queue the larger of that and the estimate. Before
/// the controller named that queue it had cut its rate round after round, and a window sized
/// from that second's sending held in flight less than the stream needs through the queue:
/// beside the bench's CUBIC upload, 112 kB over round trips of 350 ms, 2.6 Mbit/s for a 3.1
/// Mbit/s stream. Grown only by what it let through, such a window took seconds to open, and
/// a GOP tail went stale at the sender at each key frame meanwhile.
pub fn window_rate(sent: u64, pacing: u64, competing: bool) -> u64 {
    if competing {
        sent.max(pacing)
    } else {
        sent
    }
}

/// The bytes a connection sent per second over the last [`RATE_WINDOW`].
#[derive(Debug, Default)]
pub struct SendRate {
    samples: std::collections::VecDeque<(Instant, u64)>,
}

/// How far back [`SendRate`] looks.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);

impl SendRate {
    /// Notes the connection's byte counter `total` at `now`; returns the rate, bytes/s, over
    /// the last [`RATE_WINDOW`], or only since the connection last came out of a quiet stretch
    /// ([`QUIET_GAP`] with at most [`QUIET_BYTES`] sent: keep-alives and acknowledgements) if
    /// that is more recent.
    ///
    /// The second is for a stream that starts on a connection that sat idle: averaged over a
    /// second of mostly nothing, what it sends reads as a fraction of its rate, the window
    /// sized from that stays at its floor, and at a 250 ms round trip the floor (64 KiB a
    /// round trip, 2 Mbit/s) held a 3 Mbit/s start back for over a second (measured: start
    /// 0.57 s at 250 ms against 0.22 s at 50 ms). Over its active span alone a window-limited
    /// start reads whole, and the window grows with it each round trip. A steady stream is never
    /// quiet that long, so its rate stays the second's average: taking the last round trip's
    /// rate instead (tried) let each key frame's burst widen the window, and with the link
    /// slower than the stream the 200 and 500 ms budgets' p99 went over their budgets.
    pub fn update(&mut self, total: u64, now: Instant) -> u64 {
        self.samples.push_back((now, total));
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let first = *self.samples.front().expect("just pushed");
        // The newest sample that ends a quiet stretch: the active span starts there.
        let mut older = self.samples.len();
        let mut since = first;
        for (i, &(at, bytes)) in self.samples.iter().enumerate().rev() {
            older = older.min(i);
            while older > 0 && at.duration_since(self.samples[older].0) < QUIET_GAP {
                older -= 1;
            }
            let (then, before) = self.samples[older];
            if at.duration_since(then) >= QUIET_GAP && bytes - before <= QUIET_BYTES {
                since = (at, bytes);
                break;
            }
        }
        let span = now.duration_since(since.0).max(PATH_WATCH_INTERVAL);
        ((total - since.1) as f64 / span.as_secs_f64()) as u64
    }
}

/// A stretch this long with at most [`QUIET_BYTES`] sent is a connection at rest (a live
/// stream of any rate sends a frame every few tens of ms).
pub const QUIET_GAP: Duration = Duration::from_millis(250);
/// What a resting connection sends in [`QUIET_GAP`]: keep-alives and acknowledgements (128
/// kbit/s).
pub const QUIET_BYTES: u64 = 4000;

/// The longest [`PathWatch::quic_wait`] reported (a path that sends nothing drains its
/// window in no finite time).
pub const MAX_QUIC_WAIT: Duration = Duration::from_secs(10);

/// The smallest send window [`PathWatch`] sets: enough for a key frame of a few Mbit/s
/// stream at start, before the congestion window has grown.
pub const MIN_SEND_WINDOW: u64 = 64 << 10;
/// How often [`PathWatch::run`] looks at the connection.
pub const PATH_WATCH_INTERVAL: Duration = Duration::from_millis(25);

/// What one QUIC connection's path looks like now, shared by its sessions: their media queues
/// use the round trip to leave room in the latency budget for the way across.
#[derive(Debug, Default)]
pub struct PathWatch {
    unacked_us: AtomicU64,
    /// When the path was last seen dark, as microseconds since the process's first
    /// [`PathWatch`] ([`epoch`]); 0: never.
    dark_at_us: AtomicU64,
    rtt_us: AtomicU64,
    min_rtt_us: AtomicU64,
    quic_wait_us: AtomicU64,
    rate_bps: AtomicU64,
    /// Whether rtmpq's controller competes with another flow's queue now.
    competing: AtomicBool,
    send_window: AtomicU64,
    /// When the connection last received a datagram, as microseconds since [`epoch`]; 0:
    /// not yet looked.
    heard_at_us: AtomicU64,
    /// The congestion controller that runs on the connection, once known.
    controller: std::sync::OnceLock<&'static str>,
    /// Whether this side's probe train is still to go out or to cross.
    train_pending: AtomicBool,
    /// The rate the peer's probe train arrived at, bit/s; 0 until it all came.
    peers_train_bps: AtomicU64,
    /// Wakes [`PathWatch::probe_train_crossed`]'s callers.
    train_crossed: tokio::sync::Notify,
}

/// A TCP socket's path as the kernel reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketPath {
    /// Smoothed round trip.
    pub rtt: Duration,
    /// Least round trip seen.
    pub min_rtt: Duration,
    /// The rate the path delivers, bit/s.
    pub rate_bps: u64,
    /// Bytes in the socket not yet acknowledged: unsent and in flight.
    pub queued_bytes: u64,
    /// How long in-flight data has waited for an acknowledgement (zero: none in flight).
    pub unacknowledged_for: Duration,
    /// How long ago the socket last received data.
    pub heard_ago: Duration,
}

impl PathWatch {
    /// Starts watching `conn` ([`PathWatch::run`]) until it closes.
    pub fn start(conn: &quinn::Connection) -> Arc<PathWatch> {
        let watch = Arc::new(PathWatch::default());
        if let Some(figures) = ControllerFigures::of(conn) {
            watch.set_controller(figures.congestion.name());
            let live = figures.congestion == Congestion::Live;
            watch.train_pending.store(live, Ordering::Relaxed);
        }
        tokio::spawn(watch.clone().run(conn.clone()));
        watch
    }

    /// The congestion controller that runs on the connection (`bbr`, `cubic`...); empty
    /// when not known.
    pub fn controller(&self) -> &'static str {
        self.controller.get().copied().unwrap_or_default()
    }

    /// Records the congestion controller that runs (once).
    pub fn set_controller(&self, name: &'static str) {
        let _ = self.controller.set(name);
    }

    /// Returns once this side's probe train (sent under rtmpq's controller, see
    /// [`PathWatch::run`]) has crossed the path and been acknowledged where the peer's train
    /// said the path is slow ([`SLOW_TRAIN_BPS`]), or has gone where it is fast (or the
    /// peer's never came), or once none will go (another controller, a peer that takes no
    /// datagrams, a closed connection, a train that waited [`PROBE_TRAIN_CROSSING`] to
    /// cross). An edge says it is connected only then: media that came while the train
    /// crossed a slow path queued behind it (a first key frame 376-469 ms late at a 300 ms
    /// budget on a 1.5 Mbit/s link, pushed as the edge connected).
    pub async fn probe_train_crossed(&self) {
        loop {
            let crossed = self.train_crossed.notified();
            if !self.train_pending.load(Ordering::Relaxed) {
                return;
            }
            crossed.await;
        }
    }

    fn train_done(&self) {
        self.train_pending.store(false, Ordering::Relaxed);
        self.train_crossed.notify_waiters();
    }

    /// The smoothed round trip; zero before the first figure.
    pub fn rtt(&self) -> Duration {
        Duration::from_micros(self.rtt_us.load(Ordering::Relaxed))
    }

    /// About how long a message handed to quinn now waits there until it is across: the
    /// send window at the rate the connection sends (or the controller's estimate of the
    /// path's rate, if higher), then half a smallest round trip under rtmpq's controller;
    /// under BBR, that or the path's [`horizon`], whichever is longer (the window's floor on a
    /// slow path, 64 KiB, is 350 ms at 1.5 Mbit/s). Zero before the first figure.
    pub fn quic_wait(&self) -> Duration {
        Duration::from_micros(self.quic_wait_us.load(Ordering::Relaxed))
    }

    /// How long what this side sent has waited for an acknowledgement, as of the last look;
    /// zero while nothing waits.
    pub fn unacknowledged_for(&self) -> Duration {
        Duration::from_micros(self.unacked_us.load(Ordering::Relaxed))
    }

    /// Whether the path was dark (what was sent waited for an acknowledgement longer than
    /// [`DARK_AFTER`] or four round trips) at any look within the last `within`.
    pub fn dark_within(&self, within: Duration) -> bool {
        let at = self.dark_at_us.load(Ordering::Relaxed);
        at > 0 && since_epoch().saturating_sub(Duration::from_micros(at)) <= within
    }

    /// Marks the path dark now, as a look that saw it so would.
    #[cfg(test)]
    pub(crate) fn mark_dark(&self) {
        let at = since_epoch().as_micros().max(1) as u64;
        self.dark_at_us.store(at, Ordering::Relaxed);
    }

    /// How long the connection has received nothing, as of the last look (zero before the
    /// first look).
    pub fn silent_for(&self) -> Duration {
        let at = self.heard_at_us.load(Ordering::Relaxed);
        match at {
            0 => Duration::ZERO,
            at => since_epoch().saturating_sub(Duration::from_micros(at)),
        }
    }

    /// The congestion controller's estimate of the path's rate (its pacing rate), bit/s.
    pub fn rate_bps(&self) -> u64 {
        self.rate_bps.load(Ordering::Relaxed)
    }

    /// The send window last set, bytes (see [`send_window`]).
    pub fn send_window(&self) -> u64 {
        self.send_window.load(Ordering::Relaxed)
    }

    /// Records what the kernel says of a TCP carrier socket's path (the TCP counterpart of
    /// [`PathWatch::run`]'s look at a QUIC connection). Linux only: elsewhere the kernel's
    /// figures are not read.
    #[cfg(target_os = "linux")]
    pub(crate) fn record_socket(&self, path: &SocketPath) {
        let us = |d: Duration| d.as_micros().min(u128::from(u64::MAX)) as u64;
        self.rtt_us.store(us(path.rtt), Ordering::Relaxed);
        self.min_rtt_us.store(us(path.min_rtt), Ordering::Relaxed);
        self.rate_bps.store(path.rate_bps, Ordering::Relaxed);
        // What is handed to the socket now waits behind what it holds unsent and what is in
        // flight, at the rate the path delivers, then half a round trip.
        let queued_bits = path.queued_bytes.saturating_mul(8);
        let wait = match path.rate_bps {
            0 => Duration::ZERO,
            rate => Duration::from_micros(queued_bits.saturating_mul(1_000_000) / rate),
        };
        let wait = (wait + path.rtt / 2).min(MAX_QUIC_WAIT);
        self.quic_wait_us.store(us(wait), Ordering::Relaxed);
        self.unacked_us
            .store(us(path.unacknowledged_for), Ordering::Relaxed);
        let heard = since_epoch().saturating_sub(path.heard_ago);
        self.heard_at_us.store(us(heard).max(1), Ordering::Relaxed);
    }

    /// Keeps `conn`'s send window (unsent plus unacknowledged bytes, all streams) at what the
    /// connection really sends in the path's [`horizon`] ([`send_window`]),
    /// and records the path's figures, until the connection closes.
    ///
    /// quinn's default window (10 MB per connection, 1.25 MB per stream) holds seconds of a
    /// live stream where no policy can reach it; with this one, what quinn holds beyond what
    /// is in flight is a small part of a round trip, and the rest waits in the hop's media
    /// queue, which drops what goes stale.
    ///
    /// A side that mostly receives (an edge serving a player) sends almost nothing, so when its
    /// address changes the far side keeps sending to the old one until a keep-alive goes out
    /// (2 s). When a connection that was receiving hears nothing for [`SILENCE_PROBE`] (or
    /// three round trips), it sends a tiny DATAGRAM, once per interval: from a new address
    /// that moves the far side's path at once.
    ///
    /// It also probes a path that stopped acknowledging: while something this side sent
    /// waits for an acknowledgement longer than [`PROBE_INTERVAL`] (or two round trips), it
    /// sends one tiny DATAGRAM past the congestion window every interval, so that the first
    /// probe after a blackout ends brings an ACK, quinn declares what was lost in the dark
    /// lost, and sending resumes within an interval of the link's return instead of at quinn's
    /// next backed-off probe. Probes the far side receives are read and discarded here.
    pub async fn run(self: Arc<Self>, conn: quinn::Connection) {
        let mut tick = tokio::time::interval(PATH_WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probe = ProbeState::new(Instant::now());
        let mut silence = SilenceProbe::new(Instant::now());
        let mut sent = SendRate::default();
        let mut rate_read: Option<Instant> = None;
        let mut figures: Option<ControllerFigures> = None;
        let discard = conn.clone();
        let peers_train = Arc::new(tokio::sync::Notify::new());
        let heard = peers_train.clone();
        let arrived = self.clone();
        tokio::spawn(async move {
            let mut train = TrainCount::default();
            loop {
                // `None`: the train's rest was given up on before another datagram came.
                let read = discard.read_datagram();
                let got = match train.gives_up_at() {
                    Some(at) => tokio::time::timeout_at(at.into(), read).await.ok(),
                    None => Some(read.await),
                };
                let ended = match got {
                    Some(Ok(datagram)) => train.heard(datagram.len(), Instant::now()),
                    Some(Err(_)) => return,
                    None => train.finish(),
                };
                if ended {
                    let rate = train.rate_bps.unwrap_or(u64::MAX);
                    arrived.peers_train_bps.store(rate, Ordering::Relaxed);
                    heard.notify_one();
                }
            }
        });
        let live = ControllerFigures::of(&conn).filter(|f| f.congestion == Congestion::Live);
        if let Some(figures) = live {
            let (watch, conn) = (self.clone(), conn.clone());
            tokio::spawn(async move {
                let go = match conn.side() {
                    quinn::Side::Server => true,
                    quinn::Side::Client => tokio::select! {
                        _ = conn.closed() => false,
                        _ = peers_train.notified() => true,
                        _ = tokio::time::sleep(PROBE_TRAIN_WAIT) => true,
                    },
                };
                // Waited for only where the peer's train said the path is slow: on a fast one
                // the train crosses without a queue and the wait would be two round trips
                // (320 ms more to the first frame at 150 ms, measured).
                let slow = matches!(
                    watch.peers_train_bps.load(Ordering::Relaxed),
                    1..SLOW_TRAIN_BPS
                );
                if go && send_probe_train(&conn) && slow {
                    let crossing = train_crossing(&conn, &figures);
                    let _ = tokio::time::timeout(PROBE_TRAIN_CROSSING, crossing).await;
                }
                watch.train_done();
            });
        }
        let mut remote = conn.remote_address();
        let mut received = u64::MAX;
        let mut source = (conn.side() == quinn::Side::Client).then(LocalSource::default);
        loop {
            tokio::select! {
                _ = conn.closed() => return,
                _ = tick.tick() => {}
            }
            // The peer's address changes when it moves networks or a NAT rebinds its port;
            // QUIC carries on, and the operator sees it here.
            if conn.remote_address() != remote {
                let from = std::mem::replace(&mut remote, conn.remote_address());
                tracing::info!(%from, to = %remote, "peer address changed; the connection goes on");
            }
            // This end moved (the edge's address changed): the peer keeps sending to the old
            // one until a packet comes from the new, so one goes at once. A playing edge sends
            // only acknowledgements of what arrives, and nothing arrives: it waited for the
            // silence probe (300 ms) or its keep-alive (400), and the picture froze 430 ms.
            if let Some(source) = &mut source {
                if let Some((from, to)) = source.moved(source_toward(remote)) {
                    tracing::info!(%from, %to, "this end's address changed; telling the peer at once");
                    let _ = conn.send_datagram(bytes::Bytes::from_static(b"m"));
                }
            }
            let stats = conn.stats();
            let now = Instant::now();
            if stats.udp_rx.datagrams != received {
                received = stats.udp_rx.datagrams;
                let at = since_epoch().as_micros().max(1) as u64;
                self.heard_at_us.store(at, Ordering::Relaxed);
            }
            // A new path gets a new controller: its figures are found again each second.
            if rate_read.is_none_or(|t| now.duration_since(t) >= RATE_WINDOW) {
                rate_read = Some(now);
                figures = ControllerFigures::of(&conn);
            }
            if let Some(figures) = &figures {
                self.read_figures(figures);
            }
            let congestion = figures.as_ref().map(|f| f.congestion);
            self.update(&conn, &stats, &mut sent, congestion, now);
            if probe.due(&stats, self.rtt(), now) {
                if let Some(figures) = &figures {
                    figures.grant(PROBE_ALLOWANCE);
                    let _ = conn.send_datagram(bytes::Bytes::from_static(b"p"));
                }
            }
            let unacked = probe.unacknowledged_for(now);
            self.unacked_us
                .store(unacked.as_micros() as u64, Ordering::Relaxed);
            if unacked > DARK_AFTER.max(self.rtt() * 4) {
                let at = since_epoch().as_micros().max(1) as u64;
                self.dark_at_us.store(at, Ordering::Relaxed);
            }
            if silence.due(stats.udp_rx.datagrams, self.rtt(), now) {
                let _ = conn.send_datagram(bytes::Bytes::from_static(b"s"));
            }
        }
    }

    fn update(
        &self,
        conn: &quinn::Connection,
        stats: &quinn::ConnectionStats,
        sent: &mut SendRate,
        congestion: Option<Congestion>,
        now: Instant,
    ) {
        let rtt = stats.path.rtt;
        self.rtt_us.store(rtt.as_micros() as u64, Ordering::Relaxed);
        let min_rtt = match Duration::from_micros(self.min_rtt_us.load(Ordering::Relaxed)) {
            d if d.is_zero() => rtt,
            d => d,
        };
        let rate = sent.update(stats.udp_tx.bytes, now);
        let horizon = match congestion {
            Some(Congestion::Live) => live_horizon(min_rtt, rtt),
            _ => horizon(min_rtt, rtt),
        };
        // quinn's BBR holds far more than it needs in flight (see [`send_window`]): the floor
        // lets a key frame out at start. rtmpq's controller sizes its window to the path:
        // no more than it waits in quinn, unsent, where no budget reaches it.
        let floor = match congestion {
            Some(Congestion::Live) => stats.path.cwnd.min(MIN_SEND_WINDOW),
            _ => MIN_SEND_WINDOW,
        };
        // Drained at the rate sent when the path is the limit, faster when the stream is:
        // the controller's pacing rate is what the path could take (an idle connection, a
        // stream starting up, a blackout's old estimate).
        let pacing = self.rate_bps.load(Ordering::Relaxed) / 8;
        let competing = self.competing.load(Ordering::Relaxed);
        let window = send_window(
            stats.path.cwnd,
            window_rate(rate, pacing, competing),
            horizon,
            floor,
        );
        // A connection that has not sent a window yet (new, idle since it came up): the
        // horizon alone. One that did and now sends nothing (a dark path) drains in no known
        // time: the longest wait, so that its queue keeps a quarter of the budget through the
        // outage and little stale media stands before the fresh when the path returns (with
        // the horizon alone, back at the floor took 1.39 s after a 10 s blackout, not 0.45).
        let speed = rate.max(pacing);
        let drain = if stats.udp_tx.bytes < MIN_SEND_WINDOW {
            Duration::ZERO
        } else if speed == 0 {
            MAX_QUIC_WAIT
        } else {
            Duration::from_secs_f64(window as f64 / speed as f64)
        };
        // Under BBR, at least the horizon: its window lets a queue stand at the bottleneck.
        // rtmpq's controller keeps that queue near empty, so a message waits behind what
        // quinn holds (the send window, drained at the path's rate) and then crosses: half a
        // smallest round trip. The horizon alone (two round trips and 100 ms, 200 ms on a 50
        // ms path) left a 300 ms budget 100 ms for the queue, less than a key frame takes at
        // 2.4 Mbit/s.
        let wait = match congestion {
            Some(Congestion::Live) if speed > 0 => {
                let unsent = window.saturating_sub(stats.path.cwnd);
                let unsent = Duration::from_secs_f64(unsent as f64 / speed as f64);
                live_quic_wait(min_rtt, rtt, unsent)
            }
            Some(Congestion::Live) => MAX_QUIC_WAIT,
            _ => horizon.max(drain.min(MAX_QUIC_WAIT)),
        };
        self.quic_wait_us
            .store(wait.as_micros() as u64, Ordering::Relaxed);
        tracing::trace!(
            cwnd = stats.path.cwnd,
            sent_bps = rate * 8,
            path_bps = pacing * 8,
            send_window = window,
            ?wait,
            ?min_rtt,
            ?rtt,
            "path"
        );
        // Only a real change reaches quinn (each call wakes its connection driver).
        let current = self.send_window.load(Ordering::Relaxed);
        if window.abs_diff(current) > current / 8 {
            self.send_window.store(window, Ordering::Relaxed);
            conn.set_send_window(window);
        }
    }

    /// Records the controller's estimate of the path's rate and the path's smallest round
    /// trip. Until there is a smallest, the smoothed round trip stands in for it.
    fn read_figures(&self, figures: &ControllerFigures) {
        self.rate_bps.store(figures.rate_bps(), Ordering::Relaxed);
        self.competing.store(figures.competing(), Ordering::Relaxed);
        self.min_rtt_us
            .store(figures.min_rtt().as_micros() as u64, Ordering::Relaxed);
    }
}

/// About how long a message handed to quinn now waits there until it is across, under
/// rtmpq's controller, on a path whose smallest and smoothed round trips are `min_rtt` and
/// `rtt`, with `unsent` the time what quinn holds unsent beyond the controller's window takes
/// at the path's rate.
///
/// A message waits behind what quinn holds unsent (at most a quarter of the window's round
/// trip: what is in flight is already on its way), then the bottleneck's queue, then half a
/// round trip. Not the whole send window: counting what is in flight as a wait left a 500 ms
/// budget 375 ms where 430 were there, and the queue dropped GOP tails the path would have
/// carried in time. Nor a window the controller has not yet shrunk to the path (start-up's 64
/// KiB, 220 ms at 2.4 Mbit/s): taken as a wait, it left a 300 ms budget 75 ms.
///
/// The bottleneck's queue is what the smoothed round trip stands above the smallest, at least
/// the controller's [`queue_target`]: counted at the target alone (where the controller
/// holds it on average), the last frame of a GOP that the hop's queue let go arrived up to 41
/// ms past a 300 or 500 ms budget on a link at half the stream's rate, where a probe's gain,
/// a key frame's burst or the probe train's queue stood above the target.
pub fn live_quic_wait(min_rtt: Duration, rtt: Duration, unsent: Duration) -> Duration {
    let target = queue_target(min_rtt);
    let queue = rtt.saturating_sub(min_rtt).max(target);
    let standing = (min_rtt + target) / 4;
    (min_rtt / 2 + queue + unsent.min(standing)).min(MAX_QUIC_WAIT)
}

/// How long a path may leave what was sent unacknowledged before [`PathWatch`] probes it (or
/// two round trips, if longer); also the time between probes.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(150);
/// Bytes a probe may send past the congestion window: one small packet.
const PROBE_ALLOWANCE: u64 = 1200;

/// How long a receiving connection may hear nothing before [`PathWatch`] sends a probe (or
/// three round trips, if longer); also the time between such probes.
pub const SILENCE_PROBE: Duration = Duration::from_millis(300);
/// How long the client end of a connection (the edge) waits for the gateway's probe train
/// before it sends its own anyway (a gateway under BBR sends none).
pub const PROBE_TRAIN_WAIT: Duration = Duration::from_secs(1);
/// The smallest DATAGRAM counted as a packet of the peer's probe train (the other probes are
/// one byte; a train's packets are as large as a datagram may be, over 1100 bytes).
pub const PROBE_TRAIN_PACKET_MIN: usize = 1000;

/// Counts the peer's probe train as its packets arrive, and the rate they arrived at.
#[derive(Debug, Default)]
struct TrainCount {
    packets: usize,
    /// When the first and the latest packet came, and the bytes after the first.
    first_at: Option<Instant>,
    last_at: Option<Instant>,
    bytes_after_first: u64,
    /// The rate the train arrived at, bit/s, once it all came.
    rate_bps: Option<u64>,
    done: bool,
}

/// How long after a lone first packet of the peer's train the rest is given up on.
const TRAIN_FIRST_GAP: Duration = Duration::from_millis(100);
/// The least time after the latest packet of the peer's train before the rest is given up
/// on (otherwise four times the spacing so far).
const TRAIN_GAP: Duration = Duration::from_millis(20);

impl TrainCount {
    /// A DATAGRAM of `len` bytes arrived at `now`; whether the peer's whole train has now
    /// (once).
    fn heard(&mut self, len: usize, now: Instant) -> bool {
        if len < PROBE_TRAIN_PACKET_MIN || self.done {
            return false;
        }
        self.packets += 1;
        self.last_at = Some(now);
        match self.first_at {
            None => self.first_at = Some(now),
            Some(_) => self.bytes_after_first += len as u64,
        }
        self.packets == PROBE_TRAIN_PACKETS && self.finish()
    }

    /// When the rest of a train begun is given up on (a packet of it was lost: at 2 % loss
    /// one train in three loses one, and an edge that waited for the twentieth waited
    /// [`PROBE_TRAIN_WAIT`] before it sent its own): four times the spacing so far after the
    /// latest, at least [`TRAIN_GAP`]. `None` before the first packet and once done.
    fn gives_up_at(&self) -> Option<Instant> {
        let (first, last) = (self.first_at?, self.last_at?);
        if self.done {
            return None;
        }
        let gap = match self.packets {
            1 => TRAIN_FIRST_GAP,
            n => (last.duration_since(first) * 4 / (n as u32 - 1)).max(TRAIN_GAP),
        };
        Some(last + gap)
    }

    /// The train ended (all came, or the rest was given up on): its rate from its first
    /// packet to its latest, none if fewer than two came. True once.
    fn finish(&mut self) -> bool {
        if self.done {
            return false;
        }
        self.done = true;
        if let (Some(first), Some(last)) = (self.first_at, self.last_at) {
            if self.packets >= 2 {
                let spread = last.duration_since(first).as_secs_f64();
                let bits = self.bytes_after_first as f64 * 8.0;
                self.rate_bps = Some(if spread > 0.0 {
                    (bits / spread) as u64
                } else {
                    u64::MAX
                });
            }
        }
        true
    }
}

/// A peer's train that arrived slower than this (bit/s) came over a path where this side's
/// own train queues at the bottleneck long enough to matter: an edge waits for it to cross
/// before it says it is connected ([`PathWatch::probe_train_crossed`]). 20 packets queue 41
/// ms at 5 Mbit/s, 137 at 1.5.
pub const SLOW_TRAIN_BPS: u64 = 5_000_000;

/// Sends `live`'s probe train on `conn`: [`PROBE_TRAIN_PACKETS`] DATAGRAMs of padding, as
/// large as the peer takes, back to back (quinn paces them at start-up's pace). Where the path
/// is slower than about 5 Mbit/s they queue at its bottleneck and their acknowledgements give
/// the controller the path's rate before the first key frame, which otherwise left at
/// start-up's pace and overflowed a slow link's buffer (see the constant). The peer reads and
/// discards them with the other probes. A peer that takes no datagrams gets none.
///
/// The gateway sends its train as soon as it watches the connection, the edge once the
/// gateway's has all come (or after [`PROBE_TRAIN_WAIT`]): on a link slow both ways, trains
/// sent at once queued each end's acknowledgements behind the other's train, which brought
/// them all in one bunch, and that bunch says nothing of the path's rate (measured: the
/// gateway stayed in start-up and its first GOP overflowed the buffer as before). The gateway
/// watches only connections it admitted, so a train goes only to an edge that said HELLO
/// with its credentials, once per connection.
///
/// Whether it went.
fn send_probe_train(conn: &quinn::Connection) -> bool {
    let Some(size) = conn.max_datagram_size() else {
        return false;
    };
    let padding = bytes::Bytes::from(vec![0u8; size]);
    for _ in 0..PROBE_TRAIN_PACKETS {
        if conn.send_datagram(padding.clone()).is_err() {
            return false;
        }
    }
    tracing::debug!(
        packets = PROBE_TRAIN_PACKETS,
        bytes = size,
        "probe train sent"
    );
    true
}

/// The longest a probe train is waited for to cross once sent: its 25 kB take 200 ms at
/// 1 Mbit/s.
pub const PROBE_TRAIN_CROSSING: Duration = Duration::from_secs(1);

/// Returns once everything `conn` sent before the call (a probe train, just sent) has been
/// acknowledged: a round trip has passed, an acknowledgement came since, and nothing is in
/// flight as of the last, by `figures` (its controller's, read once: a path that changes
/// within the wait gets a new controller, and [`PROBE_TRAIN_CROSSING`] bounds the wait).
/// Looks every [`PATH_WATCH_INTERVAL`]; returns when the connection closes.
async fn train_crossing(conn: &quinn::Connection, figures: &ControllerFigures) {
    let sent_at = Instant::now();
    let acks_before = conn.stats().frame_rx.acks;
    loop {
        let stats = conn.stats();
        if sent_at.elapsed() >= stats.path.rtt
            && stats.frame_rx.acks > acks_before
            && figures.in_flight() == 0
        {
            tracing::debug!(waited = ?sent_at.elapsed(), "probe train crossed");
            return;
        }
        tokio::select! {
            _ = conn.closed() => return,
            _ = tokio::time::sleep(PATH_WATCH_INTERVAL) => {}
        }
    }
}

/// The address this host sends from toward the peer, as its routes choose it now: it
/// changes when the host moves networks (Wi-Fi to cellular, a new lease) and the old one goes.
#[derive(Debug, Default)]
struct LocalSource {
    last: Option<std::net::IpAddr>,
}

impl LocalSource {
    /// Takes the source address found now (`None`: no route at the moment, as between an old
    /// address's removal and the new one's arrival); the change from the last one found, if
    /// this is one.
    fn moved(
        &mut self,
        found: Option<std::net::IpAddr>,
    ) -> Option<(std::net::IpAddr, std::net::IpAddr)> {
        let found = found?;
        let last = self.last.replace(found)?;
        (last != found).then_some((last, found))
    }
}

/// The address the kernel would send from toward `peer` now: a UDP socket connected to it
/// (no packet goes out) and asked where it is bound.
fn source_toward(peer: std::net::SocketAddr) -> Option<std::net::IpAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    let any = match peer {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let socket = std::net::UdpSocket::bind(any).ok()?;
    socket.connect(peer).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// How long after the last datagram received a silent connection still probes: a flow that
/// ended is not probed forever (keep-alives take over).
pub const SILENCE_PROBE_FOR: Duration = Duration::from_secs(10);

/// When the connection last received anything, and last probed because it did not.
struct SilenceProbe {
    received: u64,
    last_rx: Instant,
    last_probe: Instant,
}

impl SilenceProbe {
    fn new(now: Instant) -> Self {
        SilenceProbe {
            received: 0,
            last_rx: now,
            last_probe: now,
        }
    }

    /// Whether to probe now, given the connection's count of datagrams received.
    fn due(&mut self, received: u64, rtt: Duration, now: Instant) -> bool {
        if received != self.received {
            self.received = received;
            self.last_rx = now;
            return false;
        }
        let interval = SILENCE_PROBE.max(rtt * 3);
        let quiet = now.duration_since(self.last_rx);
        if quiet >= interval
            && quiet <= SILENCE_PROBE_FOR
            && now.duration_since(self.last_probe) >= interval
        {
            self.last_probe = now;
            return true;
        }
        false
    }
}

/// When the last acknowledgement came and whether anything waits for one.
struct ProbeState {
    acks: u64,
    waiting: bool,
    eliciting_at_ack: u64,
    /// When the last acknowledgement came, or the first frame after everything was
    /// acknowledged went out (looked at), whichever is later: what waits has waited since.
    waiting_since: Instant,
    last_probe: Instant,
}

impl ProbeState {
    fn new(now: Instant) -> Self {
        ProbeState {
            acks: 0,
            waiting: false,
            eliciting_at_ack: 0,
            waiting_since: now,
            last_probe: now,
        }
    }

    /// How long something sent has waited for an acknowledgement (zero if nothing waits).
    fn unacknowledged_for(&self, now: Instant) -> Duration {
        if self.waiting {
            now.duration_since(self.waiting_since)
        } else {
            Duration::ZERO
        }
    }

    /// Whether to probe now, given the connection's counters.
    fn due(&mut self, stats: &quinn::ConnectionStats, rtt: Duration, now: Instant) -> bool {
        let sent = &stats.frame_tx;
        // Frames that ask for an acknowledgement.
        let eliciting = sent.stream + sent.datagram + sent.ping + sent.reset_stream;
        if stats.frame_rx.acks != self.acks {
            self.acks = stats.frame_rx.acks;
            self.eliciting_at_ack = eliciting;
            self.waiting_since = now;
            self.waiting = false;
            return false;
        }
        let interval = PROBE_INTERVAL.max(rtt * 2);
        let waiting = eliciting > self.eliciting_at_ack;
        if waiting && !self.waiting {
            // The first frame after everything was acknowledged went out since the last look
            // (at most one interval ago): the wait starts here, not at the acknowledgement
            // before it, seconds ago on an idle connection (which read every stream's start
            // as a dark path).
            self.waiting_since = now;
        }
        self.waiting = waiting;
        if waiting
            && now.duration_since(self.waiting_since) >= interval
            && now.duration_since(self.last_probe) >= interval
        {
            self.last_probe = now;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_window_follows_what_is_sent_not_the_congestion_window() {
        let ms = Duration::from_millis;
        let h = horizon(ms(50), ms(50));
        assert_eq!(h, ms(200));
        // 3 Mbit/s sent, BBR's start-up window of 900 KB: two round trips and the slack of
        // 375 KB/s, 75 KB.
        assert_eq!(send_window(900_000, 375_000, h, MIN_SEND_WINDOW), 75_000);
        // Nothing sent (a blackout): the floor.
        assert_eq!(send_window(900_000, 0, h, MIN_SEND_WINDOW), MIN_SEND_WINDOW);
        // Never above what the controller allows in flight, and a quarter.
        assert_eq!(
            send_window(100_000, 10_000_000, h, MIN_SEND_WINDOW),
            125_000
        );
        // rtmpq's controller on a 1.5 Mbit/s path: its 14 KB window is the floor, and a
        // quarter more the ceiling, not 64 KiB (350 ms unsent in quinn).
        assert_eq!(send_window(14_000, 187_500, h, 14_000), 17_500);
    }

    #[test]
    fn a_message_waits_for_the_queue_that_stands_at_least_the_target() {
        let ms = Duration::from_millis;
        // 54 ms path, no queue measured: half a round trip and the target (27 ms), and what
        // is unsent up to a quarter of the window's round trip (20 ms).
        assert_eq!(live_quic_wait(ms(54), ms(54), ms(0)), ms(54));
        assert_eq!(live_quic_wait(ms(54), ms(60), ms(50)), ms(74) + ms(1) / 4);
        // A queue standing above the target (the smoothed round trip 101 ms): all of it.
        assert_eq!(live_quic_wait(ms(54), ms(101), ms(0)), ms(74));
        // Never more than the longest wait.
        assert_eq!(live_quic_wait(ms(54), ms(60_000), ms(0)), MAX_QUIC_WAIT);
    }

    #[test]
    fn competing_the_send_window_opens_to_the_controllers_rate_at_once() {
        let ms = Duration::from_millis;
        // Beside a CUBIC upload (round trips of 350 ms on a 50 ms path) the controller
        // competes at 6 Mbit/s after a second of cuts that sent 1.5 Mbit/s. A 3.1 Mbit/s
        // stream needs 136 kB in flight over such a round trip.
        let (cwnd, sent, estimate) = (193_000, 187_500, 750_000);
        let h = live_horizon(ms(50), ms(350));
        let needed = 3_100_000 / 8 * 350 / 1000;
        let by_what_was_sent = send_window(cwnd, window_rate(sent, estimate, false), h, 64_000);
        let competing = send_window(cwnd, window_rate(sent, estimate, true), h, 64_000);
        assert!(by_what_was_sent < needed, "{by_what_was_sent}");
        assert!(competing >= needed, "{competing}");
        // Never above a congestion window and a quarter.
        assert_eq!(competing, cwnd + cwnd / 4);
        // Not competing, what was sent alone: an estimate the stream never used (an
        // application-limited 3 Mbit/s stream on a 10 Mbit/s path) commits no more to quinn.
        assert_eq!(window_rate(375_000, 1_250_000, false), 375_000);
    }

    #[test]
    fn the_horizon_follows_the_smallest_round_trip_not_a_queue_it_could_fill() {
        let ms = Duration::from_millis;
        // A 50 ms path whose bottleneck queue holds 200 ms: still two smallest round trips
        // and the slack (the smoothed 250 ms would have made it 600 ms).
        assert_eq!(horizon(ms(50), ms(150)), ms(200));
        // A queue that stays fuller than that (other traffic): the smoothed round trip and a
        // quarter of the slack, so the rate is not starved round after round.
        assert_eq!(horizon(ms(50), ms(250)), ms(275));
        // Under rtmpq's controller a queue over twice the smallest round trip is another
        // flow's: the whole slack beyond it.
        assert_eq!(live_horizon(ms(50), ms(50)), ms(200));
        assert_eq!(live_horizon(ms(50), ms(150)), ms(250));
        assert_eq!(live_horizon(ms(50), ms(300)), ms(400));
    }

    #[test]
    fn the_peers_train_is_heard_once_all_its_packets_came_and_only_then() {
        let t0 = Instant::now();
        let mut train = TrainCount::default();
        // One-byte probes are not the train.
        assert!(!train.heard(1, t0));
        // 20 packets of 1250 bytes, one every 10 ms: 19 × 10 kbit over 190 ms, 1 Mbit/s.
        let at = |n: u32| t0 + Duration::from_millis(u64::from(n) * 10);
        for n in 0..PROBE_TRAIN_PACKETS as u32 - 1 {
            assert!(!train.heard(1250, at(n)), "heard after {} packets", n + 1);
            assert_eq!(train.rate_bps, None);
        }
        assert!(train.heard(1250, at(PROBE_TRAIN_PACKETS as u32 - 1)));
        assert_eq!(train.rate_bps, Some(1_000_000));
        assert!(train.rate_bps < Some(SLOW_TRAIN_BPS));
        // Once: later datagrams of any size are not another train.
        assert!(!train.heard(1288, at(40)));
        assert_eq!(train.rate_bps, Some(1_000_000));
        // A train with a packet lost is given up on four spacings after its latest, at its
        // rate so far.
        let mut lossy = TrainCount::default();
        assert_eq!(lossy.gives_up_at(), None);
        assert!(!lossy.heard(1250, at(0)));
        assert_eq!(lossy.gives_up_at(), Some(at(0) + TRAIN_FIRST_GAP));
        for n in 1..PROBE_TRAIN_PACKETS as u32 - 1 {
            assert!(!lossy.heard(1250, at(n)));
        }
        let last = at(PROBE_TRAIN_PACKETS as u32 - 2);
        assert_eq!(lossy.gives_up_at(), Some(last + Duration::from_millis(40)));
        assert!(lossy.finish());
        assert_eq!(lossy.rate_bps, Some(1_000_000));
        assert!(!lossy.finish(), "once");
        assert_eq!(lossy.gives_up_at(), None);
        assert!(!lossy.heard(1250, at(PROBE_TRAIN_PACKETS as u32 - 1)));
        // A train that all came at once came over a fast path.
        let mut bunched = TrainCount::default();
        for _ in 0..PROBE_TRAIN_PACKETS {
            bunched.heard(1250, t0);
        }
        assert_eq!(bunched.rate_bps, Some(u64::MAX));
    }

    #[test]
    fn the_send_rate_is_over_the_last_second() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = SendRate::default();
        assert_eq!(r.update(0, t0), 0);
        assert_eq!(r.update(500_000, t0 + ms(500)), 1_000_000);
        // Two seconds later with nothing sent since: the old samples are gone.
        r.update(500_000, t0 + ms(2000));
        assert_eq!(r.update(500_000, t0 + ms(2500)), 0);
    }

    #[test]
    fn a_stream_starting_on_an_idle_connection_reads_at_its_rate_not_the_second_average() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = SendRate::default();
        // Idle for a second (ticks every 25 ms, a keep-alive now and then), then 64 KB over
        // the next 250 ms.
        for tick in 0..=40u32 {
            r.update(u64::from(tick / 20) * 50, t0 + PATH_WATCH_INTERVAL * tick);
        }
        let mut rate = 0;
        for tick in 1..=10u64 {
            rate = r.update(
                100 + tick * 6_400,
                t0 + ms(1000) + PATH_WATCH_INTERVAL * tick as u32,
            );
        }
        assert_eq!(rate, 256_000, "64 KB in 250 ms, not over the whole second");
        // The window sized from it holds more than the floor: it grows with the start.
        let rtt = ms(250);
        assert!(
            send_window(900_000, rate, horizon(rtt, rtt), MIN_SEND_WINDOW) > MIN_SEND_WINDOW * 2
        );
    }

    #[test]
    fn a_steady_stream_with_bursts_reads_at_its_second_average() {
        let t0 = Instant::now();
        // 375 KB/s in 25 ms ticks and a 60 KB key frame burst at the end: never quiet, so the
        // rate is the second's average, not the burst's.
        let mut r = SendRate::default();
        let (mut total, mut rate) = (0u64, 0);
        for tick in 0..=80u32 {
            total += 9_375 + if tick == 80 { 60_000 } else { 0 };
            rate = r.update(total, t0 + PATH_WATCH_INTERVAL * tick);
        }
        // Over the last second: 40 ticks of 9375 and the burst, in 1 s.
        assert_eq!(rate, 40 * 9_375 + 60_000);
    }

    #[test]
    fn a_receiving_connection_that_hears_nothing_probes_for_a_while() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = SilenceProbe::new(t0);
        let rtt = ms(50);
        // Receiving steadily: never.
        for i in 1..20u64 {
            assert!(!p.due(i, rtt, t0 + ms(i * 20)));
        }
        let last = t0 + ms(19 * 20);
        // Quiet for less than the interval: no; past it: yes, then once per interval.
        assert!(!p.due(19, rtt, last + ms(200)));
        assert!(p.due(19, rtt, last + ms(310)));
        assert!(!p.due(19, rtt, last + ms(400)));
        assert!(p.due(19, rtt, last + ms(620)));
        // Long quiet: the flow ended; keep-alives take over.
        assert!(!p.due(19, rtt, last + ms(10_400)));
        // Something arrives again: quiet again starts from there.
        assert!(!p.due(20, rtt, last + ms(11_000)));
        assert!(p.due(20, rtt, last + ms(11_300)));
    }

    #[test]
    fn a_probe_is_due_only_while_something_waits_unacknowledged() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = ProbeState::new(t0);
        let mut stats = quinn::ConnectionStats::default();
        // Nothing sent: never.
        assert!(!p.due(&stats, ms(50), t0 + ms(1000)));
        // Stream data sent and acknowledged: no.
        stats.frame_tx.stream = 10;
        stats.frame_rx.acks = 1;
        assert!(!p.due(&stats, ms(50), t0 + ms(1100)));
        // More sent, no acknowledgement for less than the interval: not yet; past it: yes,
        // then once per interval.
        stats.frame_tx.stream = 20;
        assert!(!p.due(&stats, ms(50), t0 + ms(1110)));
        assert!(!p.due(&stats, ms(50), t0 + ms(1200)));
        assert!(p.due(&stats, ms(50), t0 + ms(1260)));
        assert_eq!(p.unacknowledged_for(t0 + ms(1260)), ms(150));
        assert!(!p.due(&stats, ms(50), t0 + ms(1300)));
        assert!(p.due(&stats, ms(50), t0 + ms(1410)));
        // A long round trip stretches the interval to two of them.
        assert!(!p.due(&stats, ms(200), t0 + ms(1560)));
        assert!(p.due(&stats, ms(200), t0 + ms(1810)));
        // Acknowledged; then the connection idles for seconds and starts sending again: the
        // wait counts from the first look that saw it, not from the last acknowledgement.
        stats.frame_rx.acks = 2;
        assert!(!p.due(&stats, ms(50), t0 + ms(1900)));
        assert_eq!(p.unacknowledged_for(t0 + ms(5000)), Duration::ZERO);
        stats.frame_tx.stream = 30;
        assert!(!p.due(&stats, ms(50), t0 + ms(5000)));
        assert_eq!(p.unacknowledged_for(t0 + ms(5025)), ms(25));
        assert!(!p.due(&stats, ms(50), t0 + ms(5100)));
    }

    #[test]
    fn a_changed_source_address_is_told_once_and_a_gap_without_a_route_is_not_a_change() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let mut source = LocalSource::default();
        assert_eq!(source.moved(Some(ip("198.18.0.1"))), None, "the first look");
        assert_eq!(source.moved(Some(ip("198.18.0.1"))), None);
        // The old address removed, the new not yet added: no route, nothing to tell.
        assert_eq!(source.moved(None), None);
        assert_eq!(
            source.moved(Some(ip("198.18.0.3"))),
            Some((ip("198.18.0.1"), ip("198.18.0.3")))
        );
        assert_eq!(source.moved(Some(ip("198.18.0.3"))), None, "told once");
    }

    #[test]
    fn the_source_toward_a_local_peer_is_the_loopback() {
        let peer: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(source_toward(peer), Some(peer.ip()));
    }
}
