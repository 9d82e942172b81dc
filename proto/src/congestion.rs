//! The `live` congestion controller's logic ([`LiveController`]): a delivery-rate estimate
//! that an application-limited stream cannot talk down, a window that keeps the bottleneck's
//! queue near empty by reacting to queueing delay before loss, tolerance of random loss, and a
//! mode that holds the stream's share beside a flow that fills the buffer. Plain data: the
//! time is an argument, nothing here does I/O; `rtmpq-hop` puts it behind quinn's
//! `Controller` trait. The design and the figures that chose it: `docs/congestion.md`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What the controller believes about the path now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveMode {
    /// The stream's first round trips: at least [`INITIAL_WINDOW`] may be in flight and the
    /// pace is twice the estimate, until a queue forms, a round carries half that window, or
    /// [`STARTUP_ROUNDS`] rounds carried something.
    Startup,
    /// Holding the queue near empty: probing up while there is none, draining when one stands.
    Steady,
    /// Another flow keeps the buffer full whatever this one sends: holding the stream's share,
    /// backing off on loss only, until the queue empties.
    Competing,
}

impl LiveMode {
    /// The mode's name as the status API and logs show it.
    pub fn as_str(self) -> &'static str {
        match self {
            LiveMode::Startup => "startup",
            LiveMode::Steady => "steady",
            LiveMode::Competing => "competing",
        }
    }
}

/// The window in start-up: 240 kB, quinn's BBR's initial window. quinn paces at 1.25 windows
/// per round trip, so this is start-up's pace too: with 64 KiB (tried) a player's first GOP
/// took one more round trip than under BBR at 150 ms (start 0.58 s against 0.42 s). The hop's
/// send window (64 KiB at start, growing with what is sent) bounds what is in flight.
pub const INITIAL_WINDOW: u64 = 240_000;
/// Start-up's pace at least, bit/s: on a path longer than 62.5 ms the start-up window grows
/// past [`INITIAL_WINDOW`] with the smallest round trip to hold it. quinn paces at 1.25
/// windows per round trip, so a fixed window paced slower the longer the path: 9.4 Mbit/s at
/// 250 ms, where the edge's probe train (25 kB) and then the first key frame left at that
/// pace, and the first frame came 20-40 ms after BBR's (0.27-0.28 s against 0.24-0.26, five
/// runs; 0.24 without the edge's train).
pub const STARTUP_PACE_BPS: u64 = 38_400_000;
/// The most start-up's window grows to hold [`STARTUP_PACE_BPS`]: four initial windows (a
/// 250 ms path). The smallest round trip is the peer's to lengthen (it may hold its
/// acknowledgements), and the window must not follow it without end.
pub const MAX_STARTUP_WINDOW: u64 = 4 * INITIAL_WINDOW;
/// quinn paces at this many windows per smoothed round trip.
pub const QUINN_PACE_PER_WINDOW: f64 = 1.25;
/// Packets of padding a connection sends back to back once it is up, before any stream (the
/// probe train; the gateway's first, then the edge's): on a path slower than about 5 Mbit/s
/// they queue at the bottleneck for more than a [`queue_target`], and their acknowledgements
/// end start-up with the path's rate ([`LiveController::left_startup_on_queue`]) before the
/// first key frame. Without it a stream's first burst (ffmpeg's is ~57 kB: the key frame and
/// what waited behind the connect) left at start-up's pace before the first acknowledgement
/// and overflowed a 1.5 Mbit/s link's 200 ms buffer. On a faster path the train crosses
/// without a queue and start-up goes on. 20 packets of 1200 bytes fit the buffer of a
/// 1 Mbit/s link at 200 ms.
pub const PROBE_TRAIN_PACKETS: usize = 20;
/// Round trips that carried something (four packets or more) that end start-up.
pub const STARTUP_ROUNDS: u32 = 3;
/// The pacing and window gain in start-up.
pub const STARTUP_GAIN: f64 = 2.0;
/// The gain while no queue stands: what is sent beyond the estimate finds out whether the
/// path can take more.
pub const PROBE_GAIN: f64 = 1.25;
/// The gain for a round trip after one that found a standing queue.
pub const DRAIN_GAIN: f64 = 0.75;
/// How long the smallest round trip is remembered.
pub const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// The shortest round over which the controller judges the path.
pub const MIN_ROUND: Duration = Duration::from_millis(10);
/// A round in which more than this share of what was sent was lost is lossy; random loss of
/// a few percent is not congestion and leaves the rate alone.
pub const LOSSY_SHARE: f64 = 0.2;
/// What one lossy round trip in a row after another does to the estimate.
pub const LOSS_BACKOFF: f64 = 0.85;
/// Round trips the controller competes before it drains once more to see whether the queue
/// is still another flow's (a mistaken [`LiveMode::Competing`] would otherwise hold a queue
/// of its own making).
pub const COMPETING_HOLD_ROUNDS: u32 = 40;
/// The smallest window, in packets of the path's size: more than the four packets' worth a
/// round must carry to be judged. At four, a round at the floor whose packets were under the
/// path's size (audio, a frame's tail) was never judged and was taken for a round without a
/// queue: beside a CUBIC upload the estimate, cut to the floor while the upload's queue
/// built, stayed at 0.26 Mbit/s for the upload's 15 s (the bench's play direction froze
/// throughout; the simulation stuck in 22 of 50 cases of packet size and fill time, at five
/// or six in none).
pub const MIN_WINDOW_PACKETS: u64 = 6;
/// Two congested rounds in a row that each delivered less than this share of the one before
/// are another flow's queue: this flow's share of a FIFO that flow keeps full, falling as
/// this one sends less (see [`LiveController::congested`]). 0.85 over 0.8 and 0.7: in the
/// simulation beside a loss-based upload the stream waited 0.59 s at the sender at worst, on
/// average over 16 cases, against 0.62 and 0.70; no rate step alone was taken for it.
pub const SHARE_FALL: f64 = 0.85;
/// Congested rounds less than this apart are one episode, and competing takes back the
/// estimate from before its first. A round between them whose queue dipped under the target
/// (a CUBIC upload's queue wavers as it fills) ended the episode before: beside the bench's
/// upload the estimate fell 5.4, 2.1, 1.1, 0.24 Mbit/s over two such runs, competing then
/// took back the 1.1 from before the second, and a 3 Mbit/s stream lost four GOP tails (35 %
/// of its frames late) before the estimate climbed back.
pub const EPISODE_GAP: Duration = Duration::from_secs(2);
/// How long after competing a standing queue is taken for the other flow's at once.
pub const COMPETING_MEMORY: Duration = Duration::from_secs(10);
/// The most records of packets in flight kept (a bound on memory whatever the peer does).
const MAX_SENT_RECORDS: usize = 8192;
/// The most per-round smallest round trips kept for [`MIN_RTT_WINDOW`].
const MAX_MIN_RTT_SAMPLES: usize = 512;

/// The queueing delay the controller tolerates on a path whose smallest round trip is
/// `min_rtt`: half of it, at least 15 ms (acknowledgement delay and scheduling noise), at
/// most 30 ms (a sub-second budget has little more to spare).
pub fn queue_target(min_rtt: Duration) -> Duration {
    (min_rtt / 2).clamp(Duration::from_millis(15), Duration::from_millis(30))
}

/// What was known when a packet (or a burst sent at one instant) went out: the inputs of its
/// delivery-rate sample.
#[derive(Debug, Clone, Copy)]
struct SentRecord {
    at: Instant,
    delivered: u64,
    delivered_at: Instant,
    first_sent_at: Instant,
}

/// What one round trip saw.
#[derive(Debug, Clone, Copy)]
struct Round {
    started: Instant,
    acked: u64,
    lost: u64,
    /// The smallest round trip sampled in the round: the queue that stood through it.
    min_rtt: Option<Duration>,
    /// The largest delivery rate sampled in the round, bytes/s.
    max_rate: u64,
    /// Bytes in flight and the window when the round began.
    in_flight_at_start: u64,
    window_at_start: u64,
    /// Whether the round began draining a queue the one before found.
    draining: bool,
    /// Whether the round began where start-up ended on its own queue (not judged: see
    /// [`LiveController::end_round`]).
    startup_drain: bool,
    /// When an acknowledgement of this round first met a queue, and what had been delivered
    /// then (see [`LiveController::delivered_through_queue`]).
    queue_seen: Option<(Instant, u64)>,
    /// Steady: what the path delivered through a queue that stood for a round trip's span
    /// in this round, when under the estimate (see [`LiveController::cap_on_queue`]).
    rate_cap: Option<u64>,
}

impl Round {
    fn new(started: Instant) -> Self {
        Round {
            started,
            acked: 0,
            lost: 0,
            min_rtt: None,
            max_rate: 0,
            in_flight_at_start: 0,
            window_at_start: 0,
            draining: false,
            startup_drain: false,
            queue_seen: None,
            rate_cap: None,
        }
    }
}

/// The `live` controller; see the module docs and `docs/congestion.md`.
#[derive(Debug, Clone)]
pub struct LiveController {
    mss: u64,
    mode: LiveMode,
    /// The path's rate as estimated, bytes/s; 0 before the first round.
    bandwidth: u64,
    gain: f64,
    srtt: Duration,
    min_rtts: VecDeque<(Instant, Duration)>,
    delivered: u64,
    delivered_at: Instant,
    first_sent_at: Instant,
    in_flight: u64,
    sent: VecDeque<SentRecord>,
    /// Send time of the newest packet acknowledged in the batch being read.
    newest_acked: Option<Instant>,
    /// When the last batch of acknowledgements was read, and what had been delivered then.
    last_batch: Option<(Instant, u64)>,
    round: Round,
    startup_rounds: u32,
    lossy_rounds: u32,
    /// What the last congested round of a run delivered, bytes/s.
    congested_delivery: Option<u64>,
    /// How many congested rounds in a row delivered less than [`SHARE_FALL`] of the one
    /// before.
    delivery_falls: u32,
    competing_rounds: u32,
    /// The estimate before the first congested round of an episode (congested rounds less
    /// than [`EPISODE_GAP`] apart).
    congestion_start: Option<u64>,
    /// When the last congested round ended.
    last_congested: Option<Instant>,
    /// When the controller last stopped competing, and the estimate it held.
    left_competing: Option<(Instant, u64)>,
}

impl LiveController {
    /// A controller for a new path whose packets carry at most `mss` bytes.
    pub fn new(now: Instant, mss: u64) -> Self {
        LiveController {
            mss: mss.max(1200),
            mode: LiveMode::Startup,
            bandwidth: 0,
            gain: STARTUP_GAIN,
            srtt: Duration::ZERO,
            min_rtts: VecDeque::new(),
            delivered: 0,
            delivered_at: now,
            first_sent_at: now,
            in_flight: 0,
            sent: VecDeque::new(),
            newest_acked: None,
            last_batch: None,
            round: Round::new(now),
            startup_rounds: 0,
            lossy_rounds: 0,
            congested_delivery: None,
            delivery_falls: 0,
            competing_rounds: 0,
            congestion_start: None,
            last_congested: None,
            left_competing: None,
        }
    }

    /// The path's packet size changed.
    pub fn set_mss(&mut self, mss: u64) {
        self.mss = mss.max(1200);
    }

    /// The mode the controller is in.
    pub fn mode(&self) -> LiveMode {
        self.mode
    }

    /// The estimate of the path's rate, bytes/s (0 before the first round trip): what the
    /// stream can count on. Never below what the path delivered when it last had a queue;
    /// while the stream sends less than the path takes, at least the most it delivered in a
    /// round trip (the path's whole rate is known only once something filled it). Within a
    /// round through which a queue stood and the path delivered less, that delivery.
    pub fn bandwidth(&self) -> u64 {
        self.round
            .rate_cap
            .map_or(self.bandwidth, |cap| cap.min(self.bandwidth))
    }

    /// The smallest round trip within [`MIN_RTT_WINDOW`]; zero before the first sample.
    pub fn min_rtt(&self) -> Duration {
        // Kept increasing from front to back ([`Self::note_rtt`]): the front is the smallest.
        self.min_rtts
            .front()
            .map_or(Duration::ZERO, |&(_, rtt)| rtt)
    }

    /// A copy without the records of packets in flight (up to 8192): what a look at the
    /// controller's figures needs, at a few hundred bytes. A copy that goes on controlling
    /// (quinn's, for a new path) takes samples again from the packets it sees sent.
    pub fn figures_copy(&self) -> LiveController {
        LiveController {
            sent: VecDeque::new(),
            min_rtts: self.min_rtts.clone(),
            ..*self
        }
    }

    /// Bytes that may be in flight: the estimate times the gain in force over the smallest
    /// round trip and [`queue_target`] (the smoothed round trip while competing: the queue
    /// another flow keeps is part of the path then; the drain gain under a round's rate cap,
    /// see [`Self::cap_on_queue`]), at least [`MIN_WINDOW_PACKETS`]
    /// packets; in start-up at least [`INITIAL_WINDOW`]. quinn paces at 1.25 windows per
    /// smoothed round trip, so the pace follows the same number.
    pub fn window(&self) -> u64 {
        let floor = match self.mode {
            LiveMode::Startup => {
                // Over the smallest round trip: start-up's own queue lengthens the smoothed
                // one, and a window that grew with it would fill the queue further.
                let paced = STARTUP_PACE_BPS as f64 / 8.0 / QUINN_PACE_PER_WINDOW
                    * self.min_rtt().as_secs_f64();
                (paced as u64).clamp(INITIAL_WINDOW, MAX_STARTUP_WINDOW)
            }
            _ => MIN_WINDOW_PACKETS * self.mss,
        };
        if self.bandwidth == 0 {
            return floor;
        }
        let min_rtt = self.min_rtt();
        let span = match self.mode {
            LiveMode::Competing => self.srtt.max(min_rtt),
            _ => min_rtt + queue_target(min_rtt),
        };
        let gain = if self.round.rate_cap.is_some() {
            DRAIN_GAIN
        } else {
            self.gain
        };
        let bytes = self.bandwidth() as f64 * gain * span.as_secs_f64();
        (bytes as u64).max(floor)
    }

    /// Packets of `bytes` in all went out at `now`.
    pub fn on_sent(&mut self, now: Instant, bytes: u64) {
        if self.in_flight == 0 {
            // Nothing in flight: an idle stretch must not count as time the path took.
            self.first_sent_at = now;
            self.delivered_at = now;
        }
        self.in_flight += bytes;
        match self.sent.back() {
            Some(last) if last.at == now => {}
            _ => {
                if self.sent.len() == MAX_SENT_RECORDS {
                    self.sent.pop_front();
                }
                self.sent.push_back(SentRecord {
                    at: now,
                    delivered: self.delivered,
                    delivered_at: self.delivered_at,
                    first_sent_at: self.first_sent_at,
                });
            }
        }
    }

    /// A packet of `bytes` sent at `sent` was acknowledged at `now`; `srtt` is the path's
    /// smoothed round trip.
    pub fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, srtt: Duration) {
        if !srtt.is_zero() {
            self.srtt = srtt;
        }
        self.in_flight = self.in_flight.saturating_sub(bytes);
        self.delivered += bytes;
        self.delivered_at = now;
        self.round.acked += bytes;
        if self.newest_acked.is_none_or(|t| sent > t) {
            self.newest_acked = Some(sent);
        }
        // The record of the packet: older ones were acknowledged or lost.
        while self.sent.front().is_some_and(|r| r.at < sent) {
            self.sent.pop_front();
        }
        let Some(record) = self.sent.front().copied().filter(|r| r.at == sent) else {
            return;
        };
        self.first_sent_at = record.at;
        // The delivery rate since the packet went out, over the longer of the send and the
        // acknowledgement spans (acknowledgements that come in a bunch do not inflate it),
        // and never over less than the smallest round trip.
        let send_span = record.at.saturating_duration_since(record.first_sent_at);
        let ack_span = now.saturating_duration_since(record.delivered_at);
        let span = send_span.max(ack_span);
        let min_rtt = self.min_rtt();
        if span.is_zero() || span < min_rtt {
            return;
        }
        let rate = ((self.delivered - record.delivered) as f64 / span.as_secs_f64()) as u64;
        self.round.max_rate = self.round.max_rate.max(rate);
    }

    /// A batch of acknowledgements read at `now` ended; quinn counts `in_flight` bytes in
    /// flight.
    pub fn on_end_acks(&mut self, now: Instant, in_flight: u64) {
        self.in_flight = in_flight;
        let Some(sent) = self.newest_acked.take() else {
            return;
        };
        let batch_before = self.last_batch.replace((now, self.delivered));
        let rtt = now.saturating_duration_since(sent);
        if !rtt.is_zero() {
            self.note_rtt(now, rtt);
            self.round.min_rtt = Some(self.round.min_rtt.map_or(rtt, |m| m.min(rtt)));
            match self.mode {
                LiveMode::Startup => {
                    if self.left_startup_on_queue(now, rtt, batch_before) {
                        return;
                    }
                }
                LiveMode::Steady => self.cap_on_queue(now, rtt, batch_before),
                LiveMode::Competing => {}
            }
        }
        // A round trip ends when something sent after it began is acknowledged: however long
        // a queue makes the path's round trip, a round sees what its own sending did.
        let length = now.saturating_duration_since(self.round.started);
        if sent >= self.round.started && length >= MIN_ROUND && self.round.min_rtt.is_some() {
            self.end_round(now, length);
        }
    }

    /// In start-up, acknowledgements that keep meeting a queue of start-up's own making (round
    /// trips more than a [`queue_target`] above the smallest, after more than half of one)
    /// end start-up at once, not when the round ends: start-up's window let a key frame and
    /// the frames behind it into a path slower than the stream, and by the round's end that
    /// had filled a 300 ms buffer (1.5 Mbit/s, 50 ms: the simulated queue was 306 ms, and the
    /// bench's first GOP came 650-770 ms late at a 300 ms budget). While the queue stood the
    /// acknowledgements came at the bottleneck's rate: that is the estimate, and the next
    /// round drains. A key frame crossing a fast path queues too little to end it.
    ///
    /// The rate is what was acknowledged from the first batch that met a queue up to the
    /// batch before this one (`batch_before`), not this one: the peer holds the
    /// acknowledgement of a burst's odd last packet up to its ack delay (25 ms), and with that
    /// gap in the span start-up ended on a 10 Mbit/s path at 1.7 Mbit/s (the probe train with
    /// one packet lost at 2 % loss: the first GOP came 200-270 ms late). A real queue delivers
    /// at its rate up to then as well.
    fn left_startup_on_queue(
        &mut self,
        now: Instant,
        rtt: Duration,
        batch_before: Option<(Instant, u64)>,
    ) -> bool {
        let min_rtt = self.min_rtt();
        let target = queue_target(min_rtt);
        let Some((acked, span)) = self.delivered_through_queue(now, rtt, target / 2, batch_before)
        else {
            return false;
        };
        if rtt.saturating_sub(min_rtt) <= target || acked < 4 * self.mss || span < MIN_ROUND {
            return false;
        }
        self.bandwidth = ((acked as f64 / span.as_secs_f64()) as u64).max(1);
        self.mode = LiveMode::Steady;
        self.gain = DRAIN_GAIN;
        self.round = Round::new(now);
        self.note_round_start();
        self.round.startup_drain = true;
        true
    }

    /// Steady, acknowledgements that keep meeting a queue above the [`queue_target`] for a
    /// smallest round trip's span, through which the path delivered less than [`SHARE_FALL`]
    /// of the estimate: the path's rate fell (or another flow came). Until the round ends
    /// (and is judged as before), the estimate in force is that delivery and the window
    /// drains. A round ends when a packet sent after it began comes back, and a queue that
    /// grows lengthens it: on the bench's stepping link (8 to 2 Mbit/s, 50 ms) the estimate
    /// fell 0.29 s after the step, with 120 ms queued, and the queue went on to 265 ms. The
    /// round is not ended here: judged over the shorter span, a CUBIC upload's queue read as
    /// a fall, a rise and a fall again, and the share rule met it 1 s after it began, not
    /// 0.75 s. A round that began draining is left alone: the queue it meets is often its
    /// own, still draining (with it, the stepping-link test took 6 of 120 steps for another
    /// flow).
    fn cap_on_queue(&mut self, now: Instant, rtt: Duration, batch_before: Option<(Instant, u64)>) {
        if self.round.startup_drain || self.round.draining || self.bandwidth == 0 {
            return;
        }
        let min_rtt = self.min_rtt();
        let target = queue_target(min_rtt);
        let Some((acked, span)) = self.delivered_through_queue(now, rtt, target, batch_before)
        else {
            return;
        };
        if acked < 4 * self.mss || span < MIN_ROUND.max(min_rtt) {
            return;
        }
        let delivery = acked as f64 / span.as_secs_f64();
        if delivery < SHARE_FALL * self.bandwidth as f64 {
            self.round.rate_cap = Some((delivery as u64).max(1));
        }
    }

    /// Bytes acknowledged, and over what span, since this round's acknowledgements began to
    /// meet a queue above `above` without a break (`rtt` the newest round trip): up to the
    /// batch before this one (`batch_before`), so that a delayed acknowledgement's gap is not
    /// in the span (see [`Self::left_startup_on_queue`]). `None` while no such span stands.
    fn delivered_through_queue(
        &mut self,
        now: Instant,
        rtt: Duration,
        above: Duration,
        batch_before: Option<(Instant, u64)>,
    ) -> Option<(u64, Duration)> {
        if rtt.saturating_sub(self.min_rtt()) <= above {
            self.round.queue_seen = None;
            return None;
        }
        let Some((since, delivered)) = self.round.queue_seen else {
            self.round.queue_seen = Some((now, self.delivered));
            return None;
        };
        let (before_at, before_delivered) = batch_before?;
        Some((
            before_delivered.saturating_sub(delivered),
            before_at.saturating_duration_since(since),
        ))
    }

    /// `lost` bytes were declared lost at `now`; `persistent`: every
    /// packet over a span of round trips was (a blackout).
    pub fn on_loss(&mut self, now: Instant, persistent: bool, lost: u64) {
        self.in_flight = self.in_flight.saturating_sub(lost);
        self.round.lost += lost;
        if persistent {
            // A blackout says nothing of the rate the path has when it returns: the estimate
            // stands, and a round that spanned the outage is not judged.
            self.round = Round::new(now);
        }
    }

    fn note_rtt(&mut self, now: Instant, rtt: Duration) {
        while self
            .min_rtts
            .front()
            .is_some_and(|&(at, _)| now.saturating_duration_since(at) > MIN_RTT_WINDOW)
        {
            self.min_rtts.pop_front();
        }
        // Kept increasing from front to back: an older sample no smaller than this one can
        // never be the window's smallest again.
        while self.min_rtts.back().is_some_and(|&(_, r)| r >= rtt) {
            self.min_rtts.pop_back();
        }
        if self.min_rtts.len() == MAX_MIN_RTT_SAMPLES {
            // A queue that grows for seconds gives a long run of rising samples. The front is
            // the smallest and those behind it the next to be: the newest goes, and this one,
            // newer and larger, stands for it (dropping the front, as before, lost the path's
            // smallest round trip and read the queue as part of the path).
            self.min_rtts.pop_back();
        }
        self.min_rtts.push_back((now, rtt));
    }

    fn end_round(&mut self, now: Instant, length: Duration) {
        let round = std::mem::replace(&mut self.round, Round::new(now));
        // A round much longer than the path's round trip spanned an outage (nothing was
        // acknowledged for a while): its figures are the outage's, not the path's.
        if length > (self.srtt * 4).max(Duration::from_millis(400)) {
            return;
        }
        if round.startup_drain {
            // The round after start-up ended on its own queue drains that queue: the queue it
            // meets is start-up's and what it delivers only the queue's tail. Judged, the
            // probe train's tail (a few packets under the window) was taken for another
            // flow's queue, and competing held a standing queue all run (80 % link, 500 ms:
            // 33 packets dropped, p99 554 ms); or read as 0.74 Mbit/s of a 2.4 Mbit/s path.
            // It drains once more (the gain start-up's end set stands).
            self.note_round_start();
            return;
        }
        let min_rtt = self.min_rtt();
        let target = queue_target(min_rtt);
        let queue = round.min_rtt.unwrap_or_default().saturating_sub(min_rtt);
        let delivery = (round.acked as f64 / length.as_secs_f64()) as u64;
        let sent = round.acked + round.lost;
        let lossy = sent > 0 && round.lost as f64 > LOSSY_SHARE * sent as f64;
        self.lossy_rounds = if lossy { self.lossy_rounds + 1 } else { 0 };
        // A round of a few packets cannot tell a queue from the peer's acknowledgement delay
        // (up to 25 ms for a lone packet, a whole queue target): only a round that carried
        // four packets or more is judged congested (tried without: an audio-only stretch
        // read as a standing queue, and the estimate fell to the audio's rate). The window's
        // floor ([`MIN_WINDOW_PACKETS`]) lets a round at the floor carry that much.
        let congested = queue > target && round.acked >= 4 * self.mss;
        match self.mode {
            LiveMode::Startup => {
                self.bandwidth = self.bandwidth.max(round.max_rate).max(delivery);
                // Only a round that carried something counts: a connection that waits for
                // its stream sends keep-alives, and leaving start-up on those (tried) left a
                // window of a few packets for a stream of megabits.
                if round.acked >= 4 * self.mss {
                    self.startup_rounds += 1;
                }
                if congested {
                    self.mode = LiveMode::Steady;
                    self.congested(now, &round, delivery);
                } else if round.acked >= INITIAL_WINDOW / 2 || self.startup_rounds >= STARTUP_ROUNDS
                {
                    // The stream has begun (a key frame's worth in a round, or a few rounds
                    // of it): from here the window follows the estimate. Staying in start-up
                    // until the estimate stopped growing (BBR's rule) kept the 64 KiB window
                    // for seconds on an application-limited stream, and on a 2.4 Mbit/s path
                    // that alone is 220 ms of a 300 ms budget.
                    self.mode = LiveMode::Steady;
                    self.gain = PROBE_GAIN;
                }
            }
            LiveMode::Steady => {
                if congested {
                    self.congested(now, &round, delivery);
                } else {
                    self.end_congested_run();
                    self.bandwidth = self.bandwidth.max(round.max_rate);
                    self.gain = if queue < target / 2 { PROBE_GAIN } else { 1.0 };
                }
            }
            LiveMode::Competing => {
                self.competing_rounds += 1;
                if queue < target || self.competing_rounds >= COMPETING_HOLD_ROUNDS {
                    // The queue emptied (the other flow left or backed off), or it is time
                    // to drain once and look again: steady, the estimate as it stands.
                    self.left_competing = Some((now, self.bandwidth));
                    self.mode = LiveMode::Steady;
                    self.end_congested_run();
                    self.congestion_start = None;
                    self.gain = 1.0;
                } else {
                    self.bandwidth = self.bandwidth.max(round.max_rate);
                    self.gain = if round.lost > 0 { 1.0 } else { PROBE_GAIN };
                }
            }
        }
        if self.lossy_rounds >= 2 {
            // Much loss without a queue: a policer, or a link that lost most of its rate.
            self.bandwidth = (self.bandwidth as f64 * LOSS_BACKOFF) as u64;
        }
        self.note_round_start();
    }

    /// A run of congested rounds in a row ended (the episode's estimate before it stands:
    /// see [`EPISODE_GAP`]).
    fn end_congested_run(&mut self) {
        self.congested_delivery = None;
        self.delivery_falls = 0;
    }

    /// Records what the round just begun starts with: bytes in flight, the window, and
    /// whether it drains (what [`Self::congested`] judges another flow's queue by).
    fn note_round_start(&mut self) {
        self.round.in_flight_at_start = self.in_flight;
        self.round.window_at_start = self.window();
        self.round.draining = self.gain == DRAIN_GAIN;
    }

    /// A round trip through which a queue stood: the path delivered `delivery` bytes/s, all it
    /// could, as its queue never emptied. That is the estimate, and the next round drains.
    /// A queue that stands through a round that began draining, with no more in flight than
    /// the drained window (what this flow adds cannot keep a queue there: it empties within
    /// the round), is another flow's; so is one through which the delivery fell below
    /// [`SHARE_FALL`] of the round before, twice in a row.
    fn congested(&mut self, now: Instant, round: &Round, delivery: u64) {
        if self
            .last_congested
            .is_some_and(|at| now.saturating_duration_since(at) > EPISODE_GAP)
        {
            self.congestion_start = None;
        }
        self.last_congested = Some(now);
        let before = *self.congestion_start.get_or_insert(self.bandwidth);
        let fell = self
            .congested_delivery
            .is_some_and(|last| (delivery as f64) < SHARE_FALL * last as f64);
        // A round that delivered what the estimate said is the link at its rate (a stream
        // faster than the link congests round after round so): no share of another flow's
        // queue, and no start for a count of falls. Counted from such a round, a step down
        // read as two falls (the round spanning the step delivers a mix, the next the new
        // rate): in the simulation 80 of 1920 steps over 16 seeds and phases were taken for
        // another flow, 8 now, while a loss-based upload was met as soon (1.27 s on average
        // over 256 cases, against 1.25).
        let at_estimate = (delivery as f64) >= SHARE_FALL * self.bandwidth as f64;
        self.delivery_falls = if fell && !at_estimate {
            self.delivery_falls + 1
        } else {
            0
        };
        self.congested_delivery = (!at_estimate).then_some(delivery);
        // A queue soon after competing is the other flow's again (a loss-based flow's queue
        // falls and refills with each of its backoffs): compete at once, at the rate held
        // then, not after rounds of draining to a share that shrinks each round.
        let recent = self
            .left_competing
            .filter(|&(at, _)| now.saturating_duration_since(at) < COMPETING_MEMORY);
        if let Some((_, held)) = recent {
            self.mode = LiveMode::Competing;
            self.competing_rounds = 0;
            self.bandwidth = held.max(self.bandwidth);
            self.gain = 1.0;
            return;
        }
        // Through a queue that stands all round the bottleneck never idles, and what one flow
        // alone gets through it is the link's rate, whatever it sends: a link whose rate fell
        // delivers its new rate round after round. What falls again and again as this flow
        // sends less is its share of a queue another flow keeps full (a FIFO's share follows
        // what each sends in). Seen beside a CUBIC upload's slow start: 4.5, 3.2, 1.5, 0.4
        // Mbit/s in four rounds while the queue grew from 46 to 221 ms, and the test below
        // (a drain round that began with no more in flight than its window) came a second
        // later, when the stream's media queue had waited out a GOP.
        let share_falling = self.delivery_falls >= 2;
        if share_falling
            || (round.draining && round.in_flight_at_start <= round.window_at_start + self.mss)
        {
            self.mode = LiveMode::Competing;
            self.competing_rounds = 0;
            self.bandwidth = before.max(self.bandwidth);
            self.gain = 1.0;
            return;
        }
        self.bandwidth = delivery.max(1);
        self.gain = DRAIN_GAIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u64 = 1200;

    /// A simulated bottleneck: a FIFO queue drained at `rate` bytes/s, a fixed propagation
    /// delay, random loss by a seeded generator, and optionally another flow's bytes.
    struct Link {
        rate: u64,
        one_way: Duration,
        /// When the bottleneck is next free.
        free_at: Instant,
        buffer: Duration,
        loss: f64,
        seed: u64,
        /// Another flow shares the bottleneck and keeps its buffer full.
        competing: bool,
        /// When that flow starts and how long it takes to fill the buffer (`None`: it is
        /// full at once).
        other_fills: Option<(Instant, Duration)>,
        /// A loss-based bulk flow that shares the bottleneck's queue packet by packet.
        bulk: Option<BulkFlow>,
    }

    /// A bulk upload under a loss-based controller (CUBIC, simplified to Reno's growth with
    /// CUBIC's backoff): it doubles its window each round trip until the buffer overflows,
    /// then grows by a packet per round trip and keeps 0.7 of its window on a loss.
    struct BulkFlow {
        window: f64,
        threshold: f64,
        in_flight: u64,
        /// When each of its packets in flight is acknowledged, or (`false`) noticed lost.
        pending: VecDeque<(Instant, u64, bool)>,
        /// No second backoff before this.
        recovered_at: Instant,
        /// Bytes the receiver got.
        delivered: u64,
    }

    impl BulkFlow {
        fn new(now: Instant) -> Self {
            BulkFlow {
                window: 10.0 * MSS as f64,
                threshold: f64::MAX,
                in_flight: 0,
                pending: VecDeque::new(),
                recovered_at: now,
                delivered: 0,
            }
        }
    }

    impl Link {
        fn new(now: Instant, rate_mbit: f64, rtt_ms: u64) -> Self {
            Link {
                rate: (rate_mbit * 1e6 / 8.0) as u64,
                one_way: Duration::from_millis(rtt_ms / 2),
                free_at: now,
                buffer: Duration::from_millis(300),
                loss: 0.0,
                seed: 7,
                competing: false,
                other_fills: None,
                bulk: None,
            }
        }

        /// Puts `bytes` into the bottleneck at `now` (its far end): when they leave it, unless
        /// the buffer is full.
        fn enqueue(&mut self, now: Instant, bytes: u64) -> Option<Instant> {
            let start = now.max(self.free_at);
            if start.saturating_duration_since(now) > self.buffer {
                return None; // tail drop
            }
            self.free_at = start + Duration::from_secs_f64(bytes as f64 / self.rate as f64);
            Some(self.free_at)
        }

        /// The bulk flow's acknowledgements and losses up to `now`, then what its window lets
        /// it send.
        fn step_bulk(&mut self, now: Instant) {
            let Some(mut bulk) = self.bulk.take() else {
                return;
            };
            while bulk.pending.front().is_some_and(|p| p.0 <= now) {
                let (_, bytes, acked) = bulk.pending.pop_front().unwrap();
                bulk.in_flight -= bytes;
                if acked {
                    bulk.delivered += bytes;
                    bulk.window += if bulk.window < bulk.threshold {
                        bytes as f64
                    } else {
                        (MSS * bytes) as f64 / bulk.window
                    };
                } else if now >= bulk.recovered_at {
                    bulk.window = (bulk.window * 0.7).max(2.0 * MSS as f64);
                    bulk.threshold = bulk.window;
                    bulk.recovered_at = now + self.one_way * 2 + self.buffer;
                }
            }
            while bulk.in_flight as f64 + MSS as f64 <= bulk.window {
                bulk.in_flight += MSS;
                let arrive = now + self.one_way / 2;
                let back = match self.enqueue(arrive, MSS) {
                    Some(left) => (left + self.one_way / 2 + self.one_way, true),
                    None => (now + self.one_way * 2 + Duration::from_millis(10), false),
                };
                let at = bulk.pending.partition_point(|p| p.0 <= back.0);
                bulk.pending.insert(at, (back.0, MSS, back.1));
            }
            self.bulk = Some(bulk);
        }

        fn random(&mut self) -> f64 {
            // xorshift64
            self.seed ^= self.seed << 13;
            self.seed ^= self.seed >> 7;
            self.seed ^= self.seed << 17;
            (self.seed % 1_000_000) as f64 / 1e6
        }

        /// When a packet of `bytes` sent at `now` is acknowledged back at the sender, if at all.
        /// Beside another flow that keeps the buffer full, every packet also waits
        /// [`OTHER_FLOW_QUEUE`] and gets half the rate.
        fn carry(&mut self, now: Instant, bytes: u64) -> Option<Instant> {
            let arrive = now + self.one_way / 2;
            // Beside the simple other flow, packets cross at half the rate.
            let bytes_at_rate = if self.competing { bytes * 2 } else { bytes };
            let left = self.enqueue(arrive, bytes_at_rate)?;
            if self.loss > 0.0 && self.random() < self.loss {
                return None;
            }
            let other = if self.competing {
                match self.other_fills {
                    Some((from, over)) => OTHER_FLOW_QUEUE.mul_f64(
                        (now.saturating_duration_since(from).as_secs_f64() / over.as_secs_f64())
                            .min(1.0),
                    ),
                    None => OTHER_FLOW_QUEUE,
                }
            } else {
                Duration::ZERO
            };
            Some(left + other + self.one_way / 2 + self.one_way)
        }
    }

    /// The queue another flow keeps in front of this one's packets in the simulation.
    const OTHER_FLOW_QUEUE: Duration = Duration::from_millis(250);

    /// Drives a controller over a link: a sender with `demand` bytes/s to send (u64::MAX: as
    /// much as the window allows), frames every 33 ms, acknowledgements per packet; returns
    /// the delivered bytes/s over the run and the largest queueing delay a packet met in its
    /// last half.
    struct Run {
        now: Instant,
        cc: LiveController,
        link: Link,
        /// (acked at, sent at, bytes), sorted by acked at.
        pending: VecDeque<(Instant, Instant, u64)>,
        /// (declared lost at, sent at, bytes, whether they go again).
        lost: VecDeque<(Instant, Instant, u64, bool)>,
        backlog: u64,
        delivered: u64,
        in_flight: u64,
        worst_queue: Duration,
        /// Packets the link dropped.
        dropped: u64,
        srtt: Duration,
        /// The most a packet carries ([`MSS`] unless a test says otherwise).
        packet: u64,
        /// Frames the stream has had (every 60th is a key frame, across calls of `stream`).
        frames: u64,
    }

    impl Run {
        fn new(link_mbit: f64, rtt_ms: u64) -> Self {
            let now = Instant::now();
            Run {
                now,
                cc: LiveController::new(now, MSS),
                link: Link::new(now, link_mbit, rtt_ms),
                pending: VecDeque::new(),
                lost: VecDeque::new(),
                backlog: 0,
                delivered: 0,
                in_flight: 0,
                worst_queue: Duration::ZERO,
                dropped: 0,
                srtt: Duration::ZERO,
                packet: MSS,
                frames: 0,
            }
        }

        /// Runs for `span` with a stream of `demand_mbit` (frames every 33 ms, a key frame of
        /// ten frames' size every 2 s); returns delivered Mbit/s.
        fn stream(&mut self, span: Duration, demand_mbit: f64) -> f64 {
            let step = Duration::from_millis(1);
            let end = self.now + span;
            let frame_bytes = (demand_mbit * 1e6 / 8.0 / 30.0) as u64;
            let mut next_frame = self.now;
            let delivered_before = self.delivered;
            let mut pace_tokens = 0f64;
            while self.now < end {
                if self.now >= next_frame && frame_bytes > 0 {
                    self.backlog += if self.frames.is_multiple_of(60) {
                        frame_bytes * 10
                    } else {
                        frame_bytes
                    };
                    self.frames += 1;
                }
                if self.now >= next_frame {
                    next_frame += Duration::from_millis(33);
                }
                self.deliver_acks();
                self.link.step_bulk(self.now);
                // quinn's pacer.
                let srtt = self.srtt.max(Duration::from_millis(1));
                let window = self.cc.window();
                pace_tokens +=
                    QUINN_PACE_PER_WINDOW * window as f64 * step.as_secs_f64() / srtt.as_secs_f64();
                pace_tokens = pace_tokens.min(10.0 * MSS as f64);
                while self.backlog > 0
                    && self.in_flight + self.packet <= window
                    && pace_tokens >= self.packet as f64
                {
                    let bytes = self.backlog.min(self.packet);
                    self.backlog -= bytes;
                    pace_tokens -= bytes as f64;
                    let queue = self.send(bytes, true);
                    if self.now + span / 2 >= end {
                        self.worst_queue = self.worst_queue.max(queue.unwrap_or_default());
                    }
                }
                if self.backlog > 0 && self.backlog > (demand_mbit * 1e6 / 8.0) as u64 {
                    // A live sender drops what is more than a second behind.
                    self.backlog = (demand_mbit * 1e6 / 8.0) as u64;
                }
                self.now += step;
            }
            (self.delivered - delivered_before) as f64 * 8.0 / span.as_secs_f64() / 1e6
        }

        /// Sends a packet of `bytes` now; the queue it met, unless the link dropped it. A
        /// dropped packet is declared lost about a round trip later and, if `again`, goes again.
        fn send(&mut self, bytes: u64, again: bool) -> Option<Duration> {
            self.in_flight += bytes;
            self.cc.on_sent(self.now, bytes);
            match self.link.carry(self.now, bytes) {
                Some(acked) => {
                    let at = self.pending.partition_point(|p| p.0 <= acked);
                    self.pending.insert(at, (acked, self.now, bytes));
                    Some(acked.saturating_duration_since(self.now) - self.link.one_way * 2)
                }
                None => {
                    self.dropped += 1;
                    let at = self.now + self.link.one_way * 2 + Duration::from_millis(10);
                    self.lost.push_back((at, self.now, bytes, again));
                    None
                }
            }
        }

        /// The connection's set-up: a small packet each way, then the probe train back to
        /// back, and `wait` with nothing to send.
        fn set_up_with_probe_train(&mut self, wait: Duration) {
            self.send(300, true);
            self.stream(self.link.one_way * 3, 0.0);
            for _ in 0..PROBE_TRAIN_PACKETS {
                self.send(MSS, false);
            }
            self.stream(wait, 0.0);
        }

        fn deliver_acks(&mut self) {
            let mut any = false;
            while self.pending.front().is_some_and(|p| p.0 <= self.now) {
                let (_, sent, bytes) = self.pending.pop_front().unwrap();
                self.in_flight -= bytes;
                self.delivered += bytes;
                let sample = self.now - sent;
                self.srtt = match self.srtt {
                    d if d.is_zero() => sample,
                    d => (d * 7 + sample) / 8,
                };
                self.cc.on_ack(self.now, sent, bytes, self.srtt);
                any = true;
            }
            if any {
                self.cc.on_end_acks(self.now, self.in_flight);
            }
            while self.lost.front().is_some_and(|p| p.0 <= self.now) {
                let (_, _, bytes, again) = self.lost.pop_front().unwrap();
                self.in_flight -= bytes;
                if again {
                    self.backlog += bytes;
                }
                self.cc.on_loss(self.now, false, bytes);
            }
        }

        fn rate_mbit(&self) -> f64 {
            self.cc.bandwidth() as f64 * 8.0 / 1e6
        }
    }

    #[test]
    fn an_application_limited_stream_keeps_an_estimate_at_least_its_own_rate() {
        // A 3 Mbit/s stream on a 10 Mbit/s path: the sender is mostly idle between frames.
        let mut run = Run::new(10.0, 50);
        let got = run.stream(Duration::from_secs(10), 3.0);
        assert!(got > 2.7, "delivered {got:.2} Mbit/s");
        let est = run.rate_mbit();
        assert!(
            (3.0..=10.5).contains(&est),
            "estimate {est:.2} Mbit/s for a 3 Mbit/s stream on a 10 Mbit/s path"
        );
        assert_ne!(run.cc.mode(), LiveMode::Competing);
        // No standing queue: a key frame's burst queues, nothing else does.
        assert!(
            run.worst_queue < Duration::from_millis(80),
            "queue {:?}",
            run.worst_queue
        );
    }

    #[test]
    fn a_stream_faster_than_the_path_keeps_its_queue_near_the_target() {
        let mut run = Run::new(2.4, 50);
        run.stream(Duration::from_secs(5), 3.0);
        let got = run.stream(Duration::from_secs(10), 3.0);
        assert!(got > 2.4 * 0.85, "delivered {got:.2} of a 2.4 Mbit/s path");
        let est = run.rate_mbit();
        assert!(
            (2.4 * 0.8..=2.4 * 1.15).contains(&est),
            "estimate {est:.2} Mbit/s on a 2.4 Mbit/s path"
        );
        assert!(
            run.worst_queue < Duration::from_millis(120),
            "queue {:?} (300 ms buffer)",
            run.worst_queue
        );
    }

    #[test]
    fn start_up_ends_in_its_first_burst_on_a_path_slower_than_the_stream() {
        // A key frame and the frames after it into a 1.5 Mbit/s path with a 300 ms buffer.
        let mut run = Run::new(1.5, 50);
        run.stream(Duration::from_millis(1000), 3.0);
        assert_ne!(run.cc.mode(), LiveMode::Startup);
        // The acknowledgements of the burst came at the path's rate.
        let est = run.rate_mbit();
        assert!((1.3..=1.7).contains(&est), "estimate {est:.2} Mbit/s");
        // From 0.5 s on, the queue is near the target, not the buffer (306 ms when start-up
        // ended only with its round).
        assert!(
            run.worst_queue < Duration::from_millis(120),
            "queue {:?} (300 ms buffer)",
            run.worst_queue
        );
    }

    #[test]
    fn the_probe_train_ends_start_up_before_the_stream_on_a_slow_path_and_not_on_a_fast_one() {
        // 1.5 Mbit/s, 50 ms, a 200 ms buffer: the train queues, start-up ends with the rate.
        let mut slow = Run::new(1.5, 50);
        slow.link.buffer = Duration::from_millis(200);
        slow.set_up_with_probe_train(Duration::from_millis(400));
        assert_eq!(slow.cc.mode(), LiveMode::Steady);
        let est = slow.rate_mbit();
        assert!((1.3..=1.7).contains(&est), "estimate {est:.2} Mbit/s");
        assert_eq!(slow.dropped, 0, "the train overflowed the buffer");
        // The stream's first key frame then goes at the path's rate and waits at the sender,
        // not in the link's buffer, which it overflows from start-up (below).
        slow.stream(Duration::from_millis(1000), 3.0);
        assert_eq!(slow.dropped, 0, "the first key frame overflowed the buffer");
        let mut unprobed = Run::new(1.5, 50);
        unprobed.link.buffer = Duration::from_millis(200);
        unprobed.send(300, true);
        unprobed.stream(Duration::from_millis(100), 0.0);
        unprobed.stream(Duration::from_millis(1000), 3.0);
        assert!(
            unprobed.dropped > 0,
            "start-up's first key frame fit the buffer"
        );
        // 50 Mbit/s, 250 ms: the train crosses without a queue and start-up goes on, its
        // window and pace for the first key frame.
        let mut fast = Run::new(50.0, 250);
        fast.set_up_with_probe_train(Duration::from_millis(1000));
        assert_eq!(fast.cc.mode(), LiveMode::Startup);
        assert!(fast.cc.window() >= INITIAL_WINDOW);
    }

    #[test]
    fn a_delayed_acknowledgement_of_a_trains_last_packet_does_not_end_start_up() {
        // 10 Mbit/s, 50 ms: the train of 20 packets crosses in 22 ms, one packet is lost,
        // and the peer holds the acknowledgement of the odd last one for its ack delay.
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut cc = LiveController::new(t0, MSS);
        cc.on_sent(t0, 300);
        cc.on_ack(t0 + ms(50), t0, 300, ms(50));
        cc.on_end_acks(t0 + ms(50), 0);
        let sent = t0 + ms(100);
        let packet = 1400u64;
        cc.on_sent(sent, packet * 20);
        let serialization = Duration::from_micros(1120);
        let mut in_flight = packet * 20;
        let mut last = sent;
        for pair in 0..9u32 {
            // Packets 2k and 2k+1 (the 7th lost: its pair is acknowledged alone).
            let at = sent + ms(50) + serialization * (2 * pair + 2);
            let bytes = if pair == 3 { packet } else { 2 * packet };
            cc.on_ack(at, sent, bytes, ms(55));
            in_flight -= bytes;
            cc.on_end_acks(at, in_flight);
            last = at;
        }
        assert_eq!(cc.mode(), LiveMode::Startup, "the train's own queue");
        let delayed = last + serialization + ms(25);
        cc.on_ack(delayed, sent, packet, ms(56));
        cc.on_end_acks(delayed, 0);
        let estimate = cc.bandwidth() as f64 * 8.0 / 1e6;
        assert!(
            cc.mode() == LiveMode::Startup || estimate >= 8.0,
            "one delayed acknowledgement ended start-up at {estimate:.2} Mbit/s"
        );
    }

    #[test]
    fn random_loss_of_five_percent_does_not_collapse_the_rate() {
        let mut run = Run::new(6.0, 50);
        run.link.loss = 0.05;
        run.stream(Duration::from_secs(3), 4.0);
        let got = run.stream(Duration::from_secs(10), 4.0);
        assert!(got > 3.6, "delivered {got:.2} Mbit/s of a 4 Mbit/s stream");
        assert!(run.rate_mbit() >= 4.0, "estimate {:.2}", run.rate_mbit());
    }

    #[test]
    fn a_rate_step_down_is_followed_within_a_second_and_a_step_up_soon_after() {
        let mut run = Run::new(8.0, 50);
        run.stream(Duration::from_secs(5), 12.0);
        assert!(
            run.rate_mbit() > 6.5,
            "estimate at 8: {:.2}",
            run.rate_mbit()
        );
        run.link.rate = (2.0e6 / 8.0) as u64;
        run.stream(Duration::from_secs(1), 12.0);
        let est = run.rate_mbit();
        assert!(
            (1.6..=2.5).contains(&est),
            "estimate {est:.2} one second after the step to 2"
        );
        run.worst_queue = Duration::ZERO;
        run.stream(Duration::from_secs(4), 12.0);
        assert!(
            run.worst_queue < Duration::from_millis(120),
            "queue {:?} at 2 Mbit/s",
            run.worst_queue
        );
        run.link.rate = (6.0e6 / 8.0) as u64;
        run.stream(Duration::from_secs(2), 12.0);
        assert!(
            run.rate_mbit() > 4.8,
            "estimate {:.2} two seconds after the step to 6",
            run.rate_mbit()
        );
    }

    #[test]
    fn a_flow_that_keeps_the_buffer_full_does_not_starve_the_stream() {
        let mut run = Run::new(6.0, 50);
        run.stream(Duration::from_secs(4), 2.5);
        run.link.competing = true;
        run.stream(Duration::from_secs(3), 2.5);
        // Long enough to look again once ([`COMPETING_HOLD_ROUNDS`]): competing resumes at once.
        for second in 0..20 {
            let got = run.stream(Duration::from_secs(1), 2.5);
            assert!(
                got > 2.0,
                "delivered {got:.2} Mbit/s of 2.5 beside a full buffer in second {second}"
            );
        }
        assert_eq!(run.cc.mode(), LiveMode::Competing);
        run.link.competing = false;
        run.stream(Duration::from_secs(2), 2.5);
        assert_ne!(run.cc.mode(), LiveMode::Competing, "the other flow left");
    }

    #[test]
    fn a_flow_whose_queue_builds_over_a_second_does_not_leave_the_stream_at_the_floor() {
        // A CUBIC upload's slow start fills the buffer over a second or two, not at once, and
        // the rounds meanwhile cut the estimate to the window's floor. quinn's packets often
        // carry less than the path's packet size (audio, a frame's tail): at the floor a round
        // then carried fewer than four packets' worth of bytes, was never judged, and (taken
        // for a round without a queue) forgot the estimate held before: the stream stayed
        // at 0.1 Mbit/s for as long as the other flow ran (the bench: 15 s of frozen video).
        let mut run = Run::new(6.0, 50);
        run.packet = MSS * 3 / 4;
        run.stream(Duration::from_secs(4), 2.5);
        run.link.competing = true;
        run.link.other_fills = Some((run.now, Duration::from_millis(1500)));
        run.stream(Duration::from_secs(3), 2.5);
        assert_eq!(run.cc.mode(), LiveMode::Competing);
        for second in 0..5 {
            let got = run.stream(Duration::from_secs(1), 2.5);
            assert!(
                got > 2.0,
                "delivered {got:.2} Mbit/s of 2.5 in second {second}"
            );
        }
    }

    #[test]
    fn a_loss_based_upload_is_met_within_a_few_rounds_and_both_keep_their_share() {
        // A CUBIC-like upload starts beside a 2.5 Mbit/s stream on a 6 Mbit/s link with a
        // 300 ms buffer. Its slow start fills the buffer, and each congested round the stream
        // sent less and got less of the FIFO: 4.5, 3.2, 1.5, 0.4 Mbit/s before a drain round
        // could show the queue was not the stream's, 1.5 s in, with a second of stream waiting
        // at the sender (what a live sender drops).
        let mut run = Run::new(6.0, 50);
        run.stream(Duration::from_secs(4), 2.5);
        run.link.bulk = Some(BulkFlow::new(run.now));
        let mut competing_after = None;
        let mut worst_backlog = 0;
        let mut stream_bytes = 0.0;
        for quarter in 0..60 {
            stream_bytes += run.stream(Duration::from_millis(250), 2.5) * 1e6 / 8.0 / 4.0;
            worst_backlog = worst_backlog.max(run.backlog);
            if competing_after.is_none() && run.cc.mode() == LiveMode::Competing {
                competing_after = Some(Duration::from_millis(250) * quarter);
            }
        }
        let competing_after = competing_after.expect("never competed");
        assert!(
            competing_after <= Duration::from_millis(750),
            "competing {competing_after:?} after the upload began"
        );
        let waited = worst_backlog as f64 * 8.0 / 2.5e6;
        assert!(waited < 0.5, "{waited:.2} s of stream waited at the sender");
        let stream = stream_bytes * 8.0 / 15.0 / 1e6;
        let upload = run.link.bulk.as_ref().unwrap().delivered as f64 * 8.0 / 15.0 / 1e6;
        assert!(stream > 2.5, "the stream got {stream:.2} Mbit/s");
        assert!(upload > 2.0, "the upload got {upload:.2} of 6 Mbit/s");
    }

    #[test]
    fn competing_takes_back_the_estimate_from_before_the_episode() {
        // A loss-based upload's queue wavers as it fills: a round between congested ones may
        // find it under the target. Such a round ended the episode, and competing then took
        // back the estimate from before the episode's second run of congested rounds, already
        // cut (in the bench 1.1 Mbit/s of a 6 Mbit/s link beside a 3 Mbit/s stream; here as
        // low as 3.4: 4 of these 32 cases under 5.4).
        let mut low = Vec::new();
        for rtt in [30u64, 50, 70, 100] {
            for mbit in [2.0, 2.5, 3.0, 3.5] {
                for packet in [MSS, MSS * 3 / 4] {
                    let mut run = Run::new(6.0, rtt);
                    run.packet = packet;
                    run.stream(Duration::from_secs(4), mbit);
                    run.link.bulk = Some(BulkFlow::new(run.now));
                    let mut entry = None;
                    for _ in 0..80 {
                        run.stream(Duration::from_millis(50), mbit);
                        if run.cc.mode() == LiveMode::Competing {
                            entry = Some(run.rate_mbit());
                            break;
                        }
                    }
                    match entry {
                        Some(rate) if rate >= 6.0 * 0.9 => {}
                        _ => low.push((rtt, mbit, packet, entry)),
                    }
                }
            }
        }
        assert!(
            low.is_empty(),
            "competing from a cut estimate (or never): {low:?}"
        );
    }

    #[test]
    fn a_congested_round_at_the_links_rate_before_a_step_does_not_start_a_share_fall() {
        // A stream faster than the link congests round after round at the link's rate. The
        // link then steps from 8 to 2 Mbit/s: the round that spans the step delivers a mix
        // (4.4 Mbit/s), the one after the new rate (2.0). Counted from the round before the
        // step (8.0), that was two falls, and the step was taken for another flow's queue.
        let mut run = Run::new(8.0, 100);
        run.stream(Duration::from_secs(4), 12.0);
        run.link.rate = (2.0e6 / 8.0) as u64;
        for _ in 0..40 {
            run.stream(Duration::from_millis(100), 12.0);
            assert_ne!(
                run.cc.mode(),
                LiveMode::Competing,
                "the step taken for another flow"
            );
        }
        assert!(run.rate_mbit() < 2.5, "estimate {:.2}", run.rate_mbit());
    }

    #[test]
    fn a_link_whose_rate_steps_is_never_taken_for_another_flow() {
        // A link whose rate falls delivers its new rate round after round: the share rule
        // ([`SHARE_FALL`]) must not read a step as another flow's queue, whatever the round
        // trip, the loss, or whether the stream fills the link.
        let mut taken = Vec::new();
        for rtt in [30u64, 50, 70, 100] {
            for (from, to) in [(8.0, 2.0), (6.0, 1.5), (8.0, 4.0), (2.0, 1.5), (1.5, 8.0)] {
                for demand in [3.0, 12.0] {
                    for loss in [0.0, 0.005, 0.02] {
                        let mut run = Run::new(from, rtt);
                        run.link.loss = loss;
                        run.link.seed = 7 + rtt + (loss * 1000.0) as u64;
                        run.stream(Duration::from_secs(4), demand);
                        run.link.rate = (to * 1e6 / 8.0) as u64;
                        for _ in 0..40 {
                            run.stream(Duration::from_millis(100), demand);
                            if run.cc.mode() == LiveMode::Competing {
                                taken.push((rtt, from, to, demand, loss));
                                break;
                            }
                        }
                    }
                }
            }
        }
        assert!(taken.is_empty(), "steps taken for another flow: {taken:?}");
    }

    #[test]
    fn a_blackout_leaves_the_estimate_and_the_return_is_quick() {
        let mut run = Run::new(6.0, 50);
        run.stream(Duration::from_secs(4), 4.0);
        let before = run.rate_mbit();
        // Three seconds in which nothing is acknowledged.
        run.link.loss = 1.0;
        run.stream(Duration::from_secs(3), 4.0);
        run.link.loss = 0.0;
        run.stream(Duration::from_millis(500), 4.0);
        assert!(
            run.rate_mbit() >= before * 0.8,
            "estimate {:.2} after the blackout, {before:.2} before",
            run.rate_mbit()
        );
        let got = run.stream(Duration::from_secs(3), 4.0);
        assert!(got > 3.6, "delivered {got:.2} after the blackout");
    }

    #[test]
    fn the_window_is_bounded_and_starts_at_the_initial_window() {
        let now = Instant::now();
        let cc = LiveController::new(now, MSS);
        assert_eq!(cc.window(), INITIAL_WINDOW);
        assert_eq!(cc.bandwidth(), 0);
        let mut cc = cc;
        // On a long path start-up's window holds its pace: 38.4 Mbit/s at 1.25 windows per
        // smallest round trip is 960 kB at 250 ms; up to 62.5 ms it is the initial window.
        cc.note_rtt(now, Duration::from_millis(250));
        assert_eq!(cc.window(), 960_000);
        cc.note_rtt(now, Duration::from_millis(50));
        assert_eq!(cc.window(), INITIAL_WINDOW);
        // Acknowledgements of packets never recorded as sent change nothing and cost nothing.
        for i in 0..100_000u64 {
            cc.on_ack(
                now + Duration::from_micros(i),
                now,
                MSS,
                Duration::from_millis(50),
            );
        }
        cc.on_end_acks(now + Duration::from_millis(100), 0);
        assert!(cc.sent.len() <= MAX_SENT_RECORDS);
        for i in 0..(MAX_SENT_RECORDS as u64 * 2) {
            cc.on_sent(now + Duration::from_micros(i), MSS);
        }
        assert_eq!(cc.sent.len(), MAX_SENT_RECORDS);
    }

    #[test]
    fn keep_alives_before_the_stream_do_not_end_start_up() {
        let mut run = Run::new(10.0, 50);
        // A packet every 2 s for 10 s: rounds that carry nothing.
        for _ in 0..5 {
            run.stream(Duration::from_secs(2), 0.0005);
        }
        assert_eq!(run.cc.mode(), LiveMode::Startup);
        assert_eq!(run.cc.window(), INITIAL_WINDOW);
        // Then the stream: it leaves start-up with an estimate of at least its rate.
        let got = run.stream(Duration::from_secs(3), 3.0);
        assert!(got > 2.7, "delivered {got:.2}");
        assert!(run.rate_mbit() >= 3.0, "estimate {:.2}", run.rate_mbit());
    }

    #[test]
    fn a_figures_copy_has_the_figures_and_not_the_records() {
        let mut run = Run::new(6.0, 50);
        run.stream(Duration::from_secs(3), 3.0);
        assert!(!run.cc.sent.is_empty() || run.cc.in_flight == 0);
        let copy = run.cc.figures_copy();
        assert!(copy.sent.is_empty());
        assert_eq!(copy.bandwidth(), run.cc.bandwidth());
        assert_eq!(copy.min_rtt(), run.cc.min_rtt());
        assert_eq!(copy.window(), run.cc.window());
        assert_eq!(copy.mode(), run.cc.mode());
        // The smallest round trip is the front of its increasing record.
        assert_eq!(
            Some(run.cc.min_rtt()),
            run.cc.min_rtts.iter().map(|&(_, r)| r).min()
        );
    }

    #[test]
    fn a_queue_that_grows_for_seconds_leaves_the_smallest_round_trip_alone() {
        let start = Instant::now();
        let mut cc = LiveController::new(start, MSS);
        // Ack batches every 5 ms for 5 s, each round trip 0.1 ms longer than the last: far
        // more rising samples than the record keeps.
        for i in 0..1000u32 {
            let at = start + Duration::from_millis(5 * u64::from(i));
            cc.note_rtt(
                at,
                Duration::from_millis(50) + Duration::from_micros(100 * u64::from(i)),
            );
        }
        assert_eq!(cc.min_rtt(), Duration::from_millis(50));
        assert!(cc.min_rtts.len() <= MAX_MIN_RTT_SAMPLES);
        // Past the window the old samples go, and a newer one is the smallest.
        cc.note_rtt(start + Duration::from_secs(16), Duration::from_millis(200));
        assert!(cc.min_rtt() > Duration::from_millis(50));
    }

    #[test]
    fn the_queue_target_is_half_the_round_trip_within_bounds() {
        assert_eq!(
            queue_target(Duration::from_millis(10)),
            Duration::from_millis(15)
        );
        assert_eq!(
            queue_target(Duration::from_millis(50)),
            Duration::from_millis(25)
        );
        assert_eq!(
            queue_target(Duration::from_millis(300)),
            Duration::from_millis(30)
        );
    }

    #[test]
    fn a_step_down_is_met_a_round_trip_after_the_queue_shows_not_at_the_rounds_end() {
        // An application-limited stream on a link whose rate falls under it: the queue grows
        // and each round trip lengthens with it, so waiting for the round to end (a packet
        // sent after it began coming back) let the queue reach 120 ms on the bench's stepping
        // link before the estimate fell, and 265 ms before the window took hold. Across round
        // trips and the step's phase against the key frames, the estimate must follow within
        // a few round trips.
        let mut late = Vec::new();
        let mut misread = Vec::new();
        let mut total = Duration::ZERO;
        let mut cases = 0;
        for rtt in [30u64, 50, 70] {
            for (from, to) in [(8.0, 2.0), (6.0, 1.5)] {
                for phase in 0..8u64 {
                    let mut run = Run::new(from, rtt);
                    run.link.loss = 0.005;
                    run.link.seed = 11 + phase * 31 + rtt;
                    // Frames every 33 ms: the step falls at a different point of the GOP.
                    for _ in 0..(120 + phase * 7) {
                        run.stream(Duration::from_millis(33), 3.0);
                    }
                    run.link.rate = (to * 1e6 / 8.0) as u64;
                    let mut followed = None;
                    for chunk in 1..=60u32 {
                        run.stream(Duration::from_millis(33), 3.0);
                        if run.cc.mode() == LiveMode::Competing {
                            break;
                        }
                        if run.rate_mbit() < to * 1.3 {
                            followed = Some(Duration::from_millis(33) * chunk);
                            break;
                        }
                    }
                    if run.cc.mode() == LiveMode::Competing {
                        misread.push((rtt, from, to, phase));
                        continue;
                    }
                    let followed = followed.unwrap_or(Duration::from_secs(2));
                    total += followed;
                    cases += 1;
                    if followed > Duration::from_millis(rtt * 8) {
                        late.push((rtt, from, to, phase, followed));
                    }
                }
            }
        }
        // The step that comes as a drain round begins (after a key frame's burst) is the share
        // rule's known misreading (`a_link_whose_rate_steps_is_never_taken_for_another_flow`
        // keeps the cases it must not misread): here one case of 48, the same without this
        // rule.
        assert!(
            misread.len() <= 1,
            "steps taken for another flow: {misread:?}"
        );
        let mean = total / cases;
        println!("estimate followed the step after {mean:?} on average");
        assert!(late.is_empty(), "steps followed late: {late:?}");
        assert!(
            mean < Duration::from_millis(250),
            "on average after {mean:?}"
        );
    }
}
