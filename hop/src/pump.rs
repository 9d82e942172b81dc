//! One session across a hop: two one-way pumps, [`RtmpToTunnel`] and [`TunnelToRtmp`], each
//! with its own state and sharing the session's tracker, run side by side by [`run_session`]
//! until either ends; [`finish_session`] then tells each side what it must hear. Both hops use
//! them: at the edge the RTMP peer is the client, at the gateway it is the origin.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtmpq_proto::buffer_bound::{BufferFull, SessionBuffer};
use rtmpq_proto::chunk::ChunkError;
use rtmpq_proto::journal::ResumeFilter;
use rtmpq_proto::late_arrivals::LateArrivals;
use rtmpq_proto::media_queue::{DropReason, Dropped, MediaQueue, QueueLimits};
use rtmpq_proto::message::{Control, Message, MessageClass};
use rtmpq_proto::session::{Flow, QueueState, SessionTracker};
use rtmpq_proto::session_end::{EndedBy, Hop, SessionEnd};
use rtmpq_proto::wire::{CloseCode, Frame};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::handover::{Handover, KEY_FRAME_WAIT};
use crate::rtmp::{Inbound, Outbound, OutboundError, RtmpIoError, RtmpReader};
use crate::transport::PathWatch;
use crate::tunnel::{close_stream, FrameReadError, StreamLost, TunnelRecv, TunnelSend};

/// Which RTMP peer a hop serves a session for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtmpPeer {
    /// The edge's peer: a pusher or player.
    Client,
    /// The gateway's peer: the origin.
    Origin,
}

impl RtmpPeer {
    fn name(self) -> &'static str {
        match self {
            RtmpPeer::Client => "client",
            RtmpPeer::Origin => "origin",
        }
    }

    /// The flow of the messages this hop reads from its RTMP peer.
    pub fn from_rtmp(self) -> Flow {
        match self {
            RtmpPeer::Client => Flow::ToOrigin,
            RtmpPeer::Origin => Flow::ToClient,
        }
    }

    /// The flow of the messages this hop reads from the tunnel.
    pub fn from_tunnel(self) -> Flow {
        match self {
            RtmpPeer::Client => Flow::ToClient,
            RtmpPeer::Origin => Flow::ToOrigin,
        }
    }

    /// The close code for bad RTMP from this peer.
    fn protocol_error(self) -> CloseCode {
        match self {
            RtmpPeer::Client => CloseCode::ClientProtocolError,
            RtmpPeer::Origin => CloseCode::OriginProtocolError,
        }
    }

    /// How this hop names the far end of the tunnel.
    fn tunnel_name(self) -> &'static str {
        match self {
            RtmpPeer::Client => "tunnel to the gateway",
            RtmpPeer::Origin => "tunnel from the edge",
        }
    }

    /// The end of a session whose RTMP peer went away (`how`): normal for a client, the
    /// origin closing for an origin.
    fn closed(self, how: &str) -> SessionEnd {
        let code = match self {
            RtmpPeer::Client => CloseCode::Normal,
            RtmpPeer::Origin => CloseCode::OriginClosed,
        };
        SessionEnd::new(code, format!("{} {how}", self.name()), EndedBy::Rtmp)
    }

    /// Whether the far hop sends this hop resume tokens (the gateway does, to the edge).
    fn takes_resume_tokens(self) -> bool {
        self == RtmpPeer::Client
    }

    /// What the RTMP peer is told when its session ends with `end`: a client whose session
    /// failed elsewhere its RTMP error (`_error` for a pending connect, else `onStatus`), an
    /// origin this hop leaves what a leaving client sends (`FCUnpublish`, `deleteStream`).
    fn last_words(self, end: &SessionEnd, t: &SessionTracker) -> Vec<Message> {
        match self {
            RtmpPeer::Client if end.ended_by != EndedBy::Rtmp && end.code != CloseCode::Normal => {
                t.failure_messages(end.code, &end.reason)
            }
            RtmpPeer::Origin if end.ended_by == EndedBy::Local => t.goodbye_messages(),
            _ => Vec::new(),
        }
    }

    /// The hop that serves this peer.
    pub fn hop(self) -> Hop {
        match self {
            RtmpPeer::Client => Hop::Edge,
            RtmpPeer::Origin => Hop::Gateway,
        }
    }

    fn hop_name(self) -> &'static str {
        match self {
            RtmpPeer::Client => "edge",
            RtmpPeer::Origin => "gateway",
        }
    }
}

/// What a hop enforces on a session besides the codec's limits.
#[derive(Debug, Clone, Default)]
pub struct SessionLimits {
    /// The client must ask to publish or play within this long of the session's start.
    pub setup_deadline: Option<Duration>,
    /// The RTMP peer is pinged after this long without a byte from it, and the session ends
    /// after twice this long (set on the client-facing side only: an idle player still
    /// answers pings, a dead or hostile one does not).
    pub silence_period: Option<Duration>,
    /// A publishing session whose tunnel brings nothing for this long ends with `timeout` (set
    /// at the gateway: a pusher sends all the time; a hostile or broken edge that goes quiet
    /// must not hold a session and its origin connection forever).
    pub publisher_silence: Option<Duration>,
}

/// How a session ends when the queue toward its RTMP peer fails.
fn queue_failed(peer: RtmpPeer, e: OutboundError) -> SessionEnd {
    match e {
        OutboundError::Overloaded(e) => {
            SessionEnd::new(CloseCode::Overloaded, e.to_string(), EndedBy::Rtmp)
        }
        OutboundError::Closed => peer.closed("connection closed"),
    }
}

/// How a session ends when its tunnel stream breaks: with the code the far hop asked for (a
/// stream stopped or reset with a close code, a connection closed with one), else
/// [`CloseCode::TunnelLost`]. Never `normal`: a tunnel that breaks under a live session is a
/// failure the client must hear about.
fn tunnel_lost(peer: RtmpPeer, lost: &StreamLost) -> SessionEnd {
    let code = match lost.code.map(CloseCode::from_code) {
        Some(CloseCode::Normal | CloseCode::Unknown(_)) | None => CloseCode::TunnelLost,
        Some(code) => code,
    };
    SessionEnd::new(
        code,
        format!("{} lost: {}", peer.tunnel_name(), lost.reason),
        EndedBy::Tunnel,
    )
}

/// How a hop queues the media it reads from its RTMP peer before the tunnel takes it (see
/// [`MediaQueue`]). Built per session: the budget may come from the far hop, the path is the
/// session's connection.
#[derive(Debug, Clone)]
pub struct QueuePolicy {
    /// Media that has waited longer than this (less the room left for the path) is dropped, a
    /// GOP tail at a time; `None`: never for age.
    pub budget: Option<Duration>,
    /// Payload bytes of media waiting at most; past it the oldest media goes.
    pub max_bytes: usize,
    /// Back-pressure mode: while the oldest waiting media is older than this the hop stops
    /// reading its RTMP peer, so the peer's socket backs up (an encoder that adapts its rate
    /// sees congestion); the budget still drops what goes stale. `None`: always read.
    pub pause_reading_above: Option<Duration>,
    /// The path the tunnel leaves by: its round trip is taken out of the budget (up to half
    /// of it), and its rate is reported with the queue.
    pub path: Option<Arc<PathWatch>>,
    /// The session's share of the process-wide buffer bound, charged for what waits.
    pub charge: Option<Arc<SessionBuffer>>,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        QueuePolicy {
            budget: None,
            max_bytes: DEFAULT_QUEUE_BYTES,
            pause_reading_above: None,
            path: None,
            charge: None,
        }
    }
}

/// Most messages a session's queue holds before its reader stops reading: the byte bound
/// counts payloads, and a message of one byte costs about a hundred in the queue.
pub const MAX_WAITING_MESSAGES: usize = 1 << 16;
/// Most bytes of messages the queue may not drop (commands, data, sequence headers) before
/// its reader stops reading.
pub const MAX_CONTROL_BYTES: usize = 4 << 20;

/// The byte bound of a session's media queue unless configured.
pub const DEFAULT_QUEUE_BYTES: usize = 32 << 20;

/// The budget in force for media waiting at a hop when what is handed to QUIC waits there
/// about `quic_wait` ([`crate::transport::PathWatch::quic_wait`]): `budget` less that, but
/// never less than a quarter of it (a budget shorter than the path leaves a quarter).
pub fn budget_in_force(budget: Duration, quic_wait: Duration) -> Duration {
    budget.saturating_sub(quic_wait).max(budget / 4)
}

impl QueuePolicy {
    /// The [budget in force](budget_in_force) for the queue.
    pub fn effective_budget(&self, quic_wait: Duration) -> Option<Duration> {
        self.budget.map(|b| budget_in_force(b, quic_wait))
    }

    /// Sets `queue`'s budgets from the path as it is now: the [effective
    /// budget](Self::effective_budget), and while the path is dark and for a budget after
    /// ([`PathWatch::dark_within`]) the newest group held to the budget and half its
    /// [`late_margin`], so that the only group a decoder can go on with until the next key
    /// frame goes out when the path returns (the other half of the margin is left for QUIC's
    /// restart; BENCHMARKS.md, blackout profiles).
    fn apply(&self, queue: &mut MediaQueue) {
        let Some(path) = &self.path else {
            return;
        };
        if let Some(b) = self.effective_budget(path.quic_wait()) {
            queue.set_budget(b);
        }
        queue.set_path_rate(path.rate_bps());
        let held = self
            .budget
            .filter(|&b| path.dark_within(b))
            .map(|b| b + late_margin(b) / 2);
        queue.hold_newest_group(held);
    }
}

/// The queue between a pump's reading and sending halves, with what they tell each other
/// (both halves run in one task; the lock is never contended or held across an await).
struct QueueCell {
    inner: Mutex<QueueInner>,
    /// A message was queued, or reading ended.
    pushed: Notify,
    /// A message was taken or dropped.
    popped: Notify,
    reading_done: AtomicBool,
}

struct QueueInner {
    queue: MediaQueue,
    drops: DropLog,
    /// Bytes charged to the session's share of the process-wide bound.
    charged: usize,
    /// What the session's earlier queues dropped (stale, overflow): a session set up again
    /// on a new tunnel or origin connection keeps counting from there.
    earlier: (Dropped, Dropped),
    /// When the queue's state was last copied into the tracker, and what it was.
    shown: Option<(Instant, QueueState)>,
}

/// How often a queue's state is copied into the session's tracker (for the status API and
/// metrics, read once a second), besides whenever it drops something: not once per message,
/// which took the tracker's lock twice per message more.
const SHOW_EVERY: Duration = Duration::from_millis(100);

impl QueueCell {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueInner> {
        self.inner.lock().expect("media queue")
    }

    /// Charges the queue's bytes to the session's share, and copies its state into the
    /// tracker when it dropped something or every [`SHOW_EVERY`].
    fn publish(
        &self,
        inner: &mut QueueInner,
        policy: &QueuePolicy,
        tracker: &Mutex<SessionTracker>,
    ) -> Result<(), BufferFull> {
        let q = &inner.queue;
        let state = QueueState {
            budget: policy.budget.map(|_| q.limits().budget),
            stale: inner.earlier.0.plus(q.dropped(DropReason::Stale)),
            overflow: inner.earlier.1.plus(q.dropped(DropReason::Overflow)),
            oldest: q.oldest(),
            media_bytes: q.media_bytes(),
            path_rate_bps: policy.path.as_ref().map_or(0, |p| p.rate_bps()),
        };
        let held = q.bytes();
        let now = now();
        inner.drops.note(&state, now);
        let due = inner.shown.is_none_or(|(at, shown)| {
            (shown.stale, shown.overflow) != (state.stale, state.overflow)
                || now.saturating_duration_since(at) >= SHOW_EVERY
        });
        if due {
            tracker.lock().expect("tracker").queue = state;
            inner.shown = Some((now, state));
        }
        match &policy.charge {
            Some(charge) => charge.charge_to(&mut inner.charged, held)?,
            None => inner.charged = held,
        }
        Ok(())
    }

    /// Whether the reading half must stop reading for now: the queue holds more messages than
    /// [`MAX_WAITING_MESSAGES`] or more undroppable bytes (commands, data, headers) than
    /// [`MAX_CONTROL_BYTES`] — a peer flooding tiny or control messages at a stalled tunnel
    /// meets TCP back-pressure, as it did before the queue, instead of growing it — or, in
    /// back-pressure mode, the oldest media has waited past the threshold.
    fn must_wait(&self, policy: &QueuePolicy) -> bool {
        let inner = self.lock();
        let q = &inner.queue;
        q.len() > MAX_WAITING_MESSAGES
            || q.bytes() - q.media_bytes() > MAX_CONTROL_BYTES
            || policy.pause_reading_above.is_some_and(|limit| {
                q.oldest()
                    .is_some_and(|t| now().saturating_duration_since(t) > limit)
            })
    }

    /// The queue is done with: its last state goes into the tracker, its bytes back to the
    /// session's share.
    fn release(&self, policy: &QueuePolicy, tracker: &Mutex<SessionTracker>) {
        let mut inner = self.lock();
        inner.shown = None;
        let _ = self.publish(&mut inner, policy, tracker);
        inner.drops.finish();
        if let Some(charge) = &policy.charge {
            charge.give_back(inner.charged);
        }
        inner.charged = 0;
    }
}

/// Logs drops once per burst, not per frame: a line when a burst starts and one with its
/// totals when nothing more was dropped for [`DROP_BURST_GAP`].
#[derive(Default)]
struct DropLog {
    /// Totals when the current burst started, and when it last dropped.
    burst: Option<(Dropped, Dropped, Instant)>,
    last: (Dropped, Dropped),
}

/// A pause in dropping this long ends a burst.
const DROP_BURST_GAP: Duration = Duration::from_secs(1);

impl DropLog {
    fn note(&mut self, state: &QueueState, now: Instant) {
        let totals = (state.stale, state.overflow);
        let dropped_now = totals != self.last;
        if dropped_now {
            match &mut self.burst {
                Some((_, _, last)) => *last = now,
                None => {
                    let reason = if state.stale != self.last.0 {
                        "stale"
                    } else {
                        "overflow"
                    };
                    let waited = state.oldest.map(|t| now.saturating_duration_since(t));
                    warn!(
                        reason,
                        budget = ?state.budget,
                        oldest_waited = ?waited,
                        path_rate_bps = state.path_rate_bps,
                        "dropping media: the path carries less than the stream"
                    );
                    self.burst = Some((self.last.0, self.last.1, now));
                }
            }
            self.last = totals;
        } else if self
            .burst
            .is_some_and(|(_, _, last)| now.saturating_duration_since(last) >= DROP_BURST_GAP)
        {
            self.finish();
        }
    }

    /// Logs the totals of the burst under way, if any (when it ends, or with the session).
    fn finish(&mut self) {
        let Some((stale0, over0, _)) = self.burst.take() else {
            return;
        };
        let (stale, over) = (self.last.0.minus(stale0), self.last.1.minus(over0));
        info!(
            stale_video_frames = stale.video_frames,
            stale_disposable_frames = stale.disposable_frames,
            stale_gops = stale.gops,
            stale_audio_frames = stale.audio_frames,
            overflow_video_frames = over.video_frames,
            overflow_audio_frames = over.audio_frames,
            bytes = stale.bytes + over.bytes,
            "drop burst over"
        );
    }
}

/// Pump from the RTMP peer into the tunnel. Its reading half always reads the peer (unless
/// back-pressure mode pauses it): end-to-end messages go into the session's [`MediaQueue`],
/// hop-by-hop ones are answered here through `replies`, a silent peer is pinged and then given
/// up on. Its sending half takes what the queue hands out, as fast as the tunnel takes it, so
/// what the path cannot carry waits where the budget can drop it.
pub struct RtmpToTunnel<'a, S> {
    /// Whose messages these are.
    pub peer: RtmpPeer,
    /// The RTMP peer's messages.
    pub rtmp: &'a mut RtmpReader,
    /// The queue toward the RTMP peer, for hop-by-hop answers and pings.
    pub replies: &'a Outbound,
    /// The tunnel stream's sending half.
    pub tunnel: &'a mut S,
    /// The session's tracker.
    pub tracker: &'a Mutex<SessionTracker>,
    /// See [`SessionLimits::silence_period`].
    pub silence_period: Option<Duration>,
    /// How media waits.
    pub queue: QueuePolicy,
    /// On a tunnel session or origin connection that set the session up again: how the
    /// messages read here continue.
    pub resume: Option<ResumeFilter>,
    /// The session's move to a new tunnel: reading stops at a key frame when asked, and what
    /// the last run stopped before is sent first.
    pub handover: &'a Handover,
}

/// How long what waits may take to cross once the RTMP peer has gone (its last frames, its
/// `FCUnpublish` and `deleteStream`), beyond the budget.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

fn now() -> Instant {
    // Tokio's clock, so a paused clock in tests moves the queue's time too.
    tokio::time::Instant::now().into_std()
}

impl<S: TunnelSend> RtmpToTunnel<'_, S> {
    /// Runs until the RTMP peer or the tunnel ends; after the peer ends, what waits is handed
    /// on (within [`DRAIN_LIMIT`] beyond the budget) before it returns.
    pub async fn run(self) -> SessionEnd {
        let RtmpToTunnel {
            peer,
            rtmp,
            replies,
            tunnel,
            tracker,
            silence_period,
            queue: policy,
            resume,
            handover,
        } = self;
        let budget = policy.budget.unwrap_or(Duration::MAX);
        let cell = QueueCell {
            inner: Mutex::new(QueueInner {
                queue: MediaQueue::new(QueueLimits {
                    budget,
                    max_bytes: policy.max_bytes,
                }),
                drops: DropLog::default(),
                charged: 0,
                earlier: {
                    let t = tracker.lock().expect("tracker");
                    (t.queue.stale, t.queue.overflow)
                },
                shown: None,
            }),
            pushed: Notify::new(),
            popped: Notify::new(),
            reading_done: AtomicBool::new(false),
        };
        let reading = QueueReader {
            peer,
            replies,
            tracker,
            silence_period,
            policy: &policy,
            cell: &cell,
            handover,
        }
        .run(rtmp);
        let sending = send_from_queue(peer, tunnel, tracker, &policy, resume, &cell, handover);
        // (`resume` moves what the RTMP peer sent: toward the origin at the edge, toward the
        // client at the gateway.)
        tokio::pin!(reading, sending);
        let end = tokio::select! {
            end = &mut reading => end,
            end = &mut sending => {
                cell.release(&policy, tracker);
                return end;
            }
        };
        cell.reading_done.store(true, Ordering::Relaxed);
        cell.pushed.notify_one();
        let limit = policy.budget.unwrap_or_default().min(DRAIN_LIMIT) + DRAIN_LIMIT;
        let _ = tokio::time::timeout(limit, sending).await;
        cell.release(&policy, tracker);
        end
    }
}

/// The reading half of [`RtmpToTunnel`]: what it reads from its RTMP peer goes where.
struct QueueReader<'a> {
    peer: RtmpPeer,
    replies: &'a Outbound,
    tracker: &'a Mutex<SessionTracker>,
    silence_period: Option<Duration>,
    policy: &'a QueuePolicy,
    cell: &'a QueueCell,
    handover: &'a Handover,
}

impl QueueReader<'_> {
    /// Reads the peer into the queue until it ends, breaks the protocol or goes silent, or
    /// (never returning) stops for a move to a new tunnel: before the peer's next video key
    /// frame, at once if the peer sends no video, at the next message after
    /// [`KEY_FRAME_WAIT`].
    async fn run(self, rtmp: &mut RtmpReader) -> SessionEnd {
        let started = tokio::time::Instant::now();
        // What the last run stopped before goes first.
        if let Some(msg) = self.handover.take_held() {
            if let Err(end) = self.queue(msg).await {
                return end;
            }
        }
        let mut asked_at = None;
        let mut ask = self.handover.watch();
        loop {
            if self.handover.is_asked() {
                asked_at.get_or_insert_with(tokio::time::Instant::now);
                if !self.peer_sends_video() {
                    return self.stop_before(None).await;
                }
            }
            // Leave the peer's bytes in its socket while the queue is full of what it may not
            // drop, or, in back-pressure mode, while media waits too long; time passing may
            // drop old media, so look again now and then.
            while self.cell.must_wait(self.policy) {
                let _ = tokio::time::timeout(PAUSE_RECHECK, self.cell.popped.notified()).await;
            }
            let next = tokio::select! {
                next = rtmp.next() => next,
                () = ask.asked(), if asked_at.is_none() => continue,
            };
            let step = match next {
                // An empty message carries nothing; forwarding it would only cost.
                Ok(Some(Inbound::Message(msg))) if msg.payload.is_empty() => Ok(()),
                Ok(Some(Inbound::Message(msg)))
                    if asked_at.is_some_and(|at| {
                        rtmpq_proto::gop::is_key_frame(&msg) || at.elapsed() >= KEY_FRAME_WAIT
                    }) =>
                {
                    return self.stop_before(Some(msg)).await;
                }
                Ok(Some(Inbound::Message(msg))) => self.queue(msg).await,
                Ok(Some(Inbound::Reply(reply))) => self.reply(reply).await,
                Ok(Some(Inbound::Silent(1))) => {
                    let ping = Control::PingRequest(started.elapsed().as_millis() as u32);
                    self.ping(ping.to_message()).await
                }
                Ok(Some(Inbound::Silent(_))) => {
                    let silent = self.silence_period.unwrap_or_default() * 2;
                    let reason = format!(
                        "{} sent nothing for {silent:?}, not even an answer to a ping",
                        self.peer.name()
                    );
                    Err(SessionEnd::new(CloseCode::Timeout, reason, EndedBy::Rtmp))
                }
                Ok(None) => Err(self.peer.closed("closed the connection")),
                Err(e) => Err(read_failed(self.peer, e)),
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Whether the RTMP peer sends this session's video: a client that publishes, an origin
    /// that plays to one.
    fn peer_sends_video(&self) -> bool {
        use rtmpq_proto::session::Direction;
        let direction = self.tracker.lock().expect("tracker").direction;
        match self.peer {
            RtmpPeer::Client => direction == Some(Direction::Publish),
            RtmpPeer::Origin => direction == Some(Direction::Play),
        }
    }

    /// Stops reading for a move (holding `msg` for the next run) and never returns: the
    /// sending half drains what was read to the old tunnel, and the hop ends the run.
    async fn stop_before(&self, msg: Option<Message>) -> SessionEnd {
        self.handover.stop_before(msg);
        self.cell.pushed.notify_one();
        std::future::pending().await
    }

    /// Records `msg` (fast start may answer it here) and queues it for the tunnel.
    async fn queue(&self, mut msg: Message) -> Result<(), SessionEnd> {
        let (peer, flow) = (self.peer, self.peer.from_rtmp());
        let recorded = {
            let mut t = self.tracker.lock().expect("tracker");
            match flow {
                Flow::ToOrigin => t.record_from_client(&mut msg, now()),
                Flow::ToClient => t.record(flow, &msg, now()).map(|()| Vec::new()),
            }
        };
        let answers = recorded.map_err(|e| {
            let reason = format!("{}: {e}", peer.name());
            SessionEnd::new(peer.protocol_error(), reason, EndedBy::Rtmp)
        })?;
        for answer in answers {
            self.reply(answer).await?;
        }
        let charged = {
            let mut inner = self.cell.lock();
            // The sender may be blocked on a full window (a dark path): the budgets are
            // applied here too.
            self.policy.apply(&mut inner.queue);
            inner.queue.push(msg, now());
            self.cell.publish(&mut inner, self.policy, self.tracker)
        };
        charged
            .map_err(|e| SessionEnd::new(CloseCode::Overloaded, e.to_string(), EndedBy::Rtmp))?;
        self.cell.pushed.notify_one();
        Ok(())
    }

    /// Sends the peer a hop-by-hop answer.
    async fn reply(&self, msg: Message) -> Result<(), SessionEnd> {
        self.replies
            .send(msg)
            .await
            .map_err(|e| queue_failed(self.peer, e))
    }

    /// Pings a peer silent for a period. One whose queue stays full for a whole period reads
    /// nothing either: waiting for room must not outlast the silence limit.
    async fn ping(&self, ping: Message) -> Result<(), SessionEnd> {
        let period = self.silence_period.unwrap_or_default();
        match tokio::time::timeout(period, self.reply(ping)).await {
            Ok(sent) => sent,
            Err(_) => {
                let peer = self.peer.name();
                let reason = format!("{peer} read nothing and sent nothing for {:?}", period * 2);
                Err(SessionEnd::new(CloseCode::Timeout, reason, EndedBy::Rtmp))
            }
        }
    }
}

/// How a session ends when reading its RTMP peer fails with `e`. A peer that leaves with
/// unread data in its socket resets it: it left, it did not break the protocol (ffmpeg does
/// this at the end of every push).
fn read_failed(peer: RtmpPeer, e: RtmpIoError) -> SessionEnd {
    match e {
        RtmpIoError::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            peer.closed("reset the connection")
        }
        e => {
            let code = match e {
                RtmpIoError::Chunk(ChunkError::Overloaded(_)) => CloseCode::Overloaded,
                _ => peer.protocol_error(),
            };
            SessionEnd::new(code, format!("{}: {e}", peer.name()), EndedBy::Rtmp)
        }
    }
}

/// How often a paused reader looks at the queue's age again.
const PAUSE_RECHECK: Duration = Duration::from_millis(20);

/// `msg`, read from `peer`, as it continues through `resume` on a session set up again (moved
/// to the new stream id, or `None`: dropped); untouched without one.
fn toward_peer_of(
    resume: &mut Option<ResumeFilter>,
    peer: RtmpPeer,
    msg: rtmpq_proto::Message,
) -> Option<rtmpq_proto::Message> {
    match resume {
        None => Some(msg),
        Some(resume) => resume.carry(peer.from_rtmp(), msg),
    }
}

/// Hands on what the queue gives out, one message at a time, at the tunnel's pace. Returns
/// when the tunnel breaks, or when reading has ended and nothing waits; once reading stopped
/// for a move and nothing waits, says the queue is drained and waits for the hop to move.
async fn send_from_queue<S: TunnelSend>(
    peer: RtmpPeer,
    tunnel: &mut S,
    tracker: &Mutex<SessionTracker>,
    policy: &QueuePolicy,
    mut resume: Option<ResumeFilter>,
    cell: &QueueCell,
    handover: &Handover,
) -> SessionEnd {
    // What this tunnel had reset in QUIC when last counted (a session set up again on a new
    // tunnel keeps adding to its tracker's total).
    let mut reset_before = Dropped::default();
    loop {
        let msg = {
            let mut inner = cell.lock();
            policy.apply(&mut inner.queue);
            let msg = inner.queue.pop(now());
            // The charge only shrinks here: what was taken or dropped is given back.
            let _ = cell.publish(&mut inner, policy, tracker);
            msg
        };
        cell.popped.notify_one();
        let msg = match msg {
            Some(msg) => match toward_peer_of(&mut resume, peer, msg) {
                Some(msg) => Some(msg),
                None => continue,
            },
            None => None,
        };
        match msg {
            Some(msg) => {
                // Audio that arrives while a video frame goes out may go out between its
                // pieces (media lanes), instead of waiting behind the whole frame.
                let mut audio_meanwhile = || loop {
                    let msg = {
                        let mut inner = cell.lock();
                        let msg = inner.queue.pop_audio(now());
                        let _ = cell.publish(&mut inner, policy, tracker);
                        msg
                    }?;
                    cell.popped.notify_one();
                    let passed = toward_peer_of(&mut resume, peer, msg);
                    if passed.is_some() {
                        return passed;
                    }
                };
                let frame = Frame::Msg(msg);
                if let Err(lost) = tunnel.send_meanwhile(&frame, &mut audio_meanwhile).await {
                    return tunnel_lost(peer, &lost);
                }
                let reset = tunnel.reset_in_quic();
                if reset != reset_before {
                    let mut t = tracker.lock().expect("tracker");
                    t.reset_in_quic = t.reset_in_quic.plus(reset.minus(reset_before));
                    reset_before = reset;
                }
            }
            None if cell.reading_done.load(Ordering::Relaxed) => {
                return SessionEnd::new(CloseCode::Normal, "queue drained", EndedBy::Rtmp)
            }
            None if handover.stopped() => {
                handover.set_drained();
                return std::future::pending().await;
            }
            None => cell.pushed.notified().await,
        }
    }
}

/// Pump from the tunnel to the RTMP peer: MSG frames become messages queued for the RTMP
/// writer; SESSION_CLOSE, a broken stream or bad frames end the session.
pub struct TunnelToRtmp<'a, R> {
    /// Whom the messages go to.
    pub peer: RtmpPeer,
    /// On a tunnel session or origin connection that set the session up again: how the
    /// messages from the tunnel continue.
    pub resume: Option<ResumeFilter>,
    /// The tunnel stream's receiving half.
    pub tunnel: &'a mut R,
    /// The queue toward the RTMP peer.
    pub to_rtmp: &'a Outbound,
    /// The session's tracker.
    pub tracker: &'a Mutex<SessionTracker>,
    /// Media that arrives past the budget (and [`late_margin`]) is not written.
    pub late: Option<LateArrivals>,
    /// See [`SessionLimits::publisher_silence`].
    pub publisher_silence: Option<Duration>,
    /// The session's move: a tunnel the far hop finishes while one is asked for ended as
    /// planned (the far hop drained it), not broke.
    pub handover: &'a Handover,
}

/// How much later than the budget media may arrive before the receiving hop drops it: the
/// sending hop keeps to the budget, so this catches only what waited where it could not drop
/// it (QUIC's send buffer through an outage), not a key frame slow start delays a little past
/// the budget (a quarter-budget margin lost whole GOPs after a 10 s blackout: BENCHMARKS.md).
pub fn late_margin(budget: Duration) -> Duration {
    budget.max(Duration::from_millis(500))
}

impl<R: TunnelRecv> TunnelToRtmp<'_, R> {
    /// Runs until the tunnel or the RTMP writer ends.
    pub async fn run(mut self) -> SessionEnd {
        let peer = self.peer;
        let flow = peer.from_tunnel();
        let violation =
            |what: String| SessionEnd::new(CloseCode::ProtocolViolation, what, EndedBy::Tunnel);
        let mut publishing = false;
        loop {
            let next = self.tunnel.next();
            let next = match self.publisher_silence.filter(|_| publishing) {
                Some(limit) => match tokio::time::timeout(limit, next).await {
                    Ok(next) => next,
                    Err(_) => {
                        let reason = format!("the publisher sent nothing for {limit:?}");
                        return SessionEnd::new(CloseCode::Timeout, reason, EndedBy::Tunnel);
                    }
                },
                None => next.await,
            };
            match next {
                Ok(Some(Frame::Msg(msg))) if msg.class() == MessageClass::EndToEnd => {
                    if msg.payload.is_empty() {
                        continue;
                    }
                    let passed = {
                        let mut t = self.tracker.lock().expect("tracker");
                        let recorded = t.record(flow, &msg, now());
                        publishing = t.direction == Some(rtmpq_proto::session::Direction::Publish);
                        // A publish or play its edge has no right to goes no further.
                        if let (Ok(()), Some(why)) = (&recorded, t.refusal()) {
                            return SessionEnd::new(CloseCode::Unauthorized, why, EndedBy::Local);
                        }
                        recorded.and_then(|()| t.pass_to_client(msg))
                    };
                    let msg = match passed {
                        Ok(Some(msg)) => msg,
                        Ok(None) => continue,
                        Err(e) => return violation(format!("through the tunnel: {e}")),
                    };
                    let msg = match &mut self.resume {
                        Some(resume) => match resume.carry(flow, msg) {
                            Some(msg) => msg,
                            None => continue,
                        },
                        None => msg,
                    };
                    if let Some(late) = &mut self.late {
                        if !late.admit(&msg, now()) {
                            self.tracker.lock().expect("tracker").arrived_late = late.dropped();
                            continue;
                        }
                    }
                    if let Err(e) = self.to_rtmp.send(msg).await {
                        return queue_failed(peer, e);
                    }
                }
                Ok(Some(Frame::Msg(msg))) => {
                    return violation(format!(
                        "hop-by-hop message type {} sent through the tunnel",
                        msg.type_id
                    ))
                }
                Ok(Some(Frame::SessionClose { code, reason })) => {
                    return SessionEnd::new(code, reason, EndedBy::RemoteClose)
                }
                Ok(Some(Frame::ResumeToken(token))) if peer.takes_resume_tokens() => {
                    self.tracker.lock().expect("tracker").resume_token = Some(token);
                }
                Ok(Some(other)) => {
                    return violation(format!("unexpected {other:?} on a session stream"))
                }
                Ok(None) if self.handover.is_asked() => {
                    self.handover.set_far_finished();
                    return std::future::pending().await;
                }
                Ok(None) => return violation("tunnel stream ended without SESSION_CLOSE".into()),
                Err(
                    e @ (FrameReadError::Wire(_)
                    | FrameReadError::Truncated
                    | FrameReadError::Lanes(_)),
                ) => return violation(e.to_string()),
                Err(FrameReadError::Overloaded(e)) => {
                    return SessionEnd::new(CloseCode::Overloaded, e.to_string(), EndedBy::Tunnel)
                }
                Err(FrameReadError::Lost(lost)) => return tunnel_lost(peer, &lost),
            }
        }
    }
}

/// How long a session whose tunnel writes broke waits for the far hop's SESSION_CLOSE.
const FAR_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// One run of a session: its RTMP peer and one tunnel stream (a session set up again or
/// resumed runs again with a new one), and how it runs.
pub struct SessionRun<'a, S, R> {
    /// Which RTMP peer this hop serves.
    pub peer: RtmpPeer,
    /// The RTMP peer's messages.
    pub rtmp: &'a mut RtmpReader,
    /// The queue toward the RTMP peer.
    pub to_rtmp: &'a Outbound,
    /// The tunnel stream's receiving half.
    pub tunnel_recv: &'a mut R,
    /// The tunnel stream's sending half.
    pub tunnel_send: &'a mut S,
    /// The session's tracker.
    pub tracker: &'a Mutex<SessionTracker>,
    /// What the hop enforces.
    pub limits: &'a SessionLimits,
    /// How media read from the RTMP peer waits.
    pub queue: QueuePolicy,
    /// How the client's messages continue on an origin connection (gateway) or tunnel session
    /// (edge) that set the session up again.
    pub resume: Option<ResumeFilter>,
    /// Cancelled: the session ends with [`CloseCode::Shutdown`].
    pub stop: &'a CancellationToken,
    /// The session's move to a new tunnel at a key frame (see [`Handover`]).
    pub handover: &'a Handover,
}

/// Runs both pumps of a session until one ends, the client misses the setup deadline, or
/// `stop` is cancelled. A stalled RTMP peer or tunnel stalls only the pump that writes to it.
pub async fn run_session<S: TunnelSend, R: TunnelRecv>(run: SessionRun<'_, S, R>) -> SessionEnd {
    let SessionRun {
        peer,
        rtmp,
        to_rtmp,
        tunnel_recv,
        tunnel_send,
        tracker,
        limits,
        queue,
        resume,
        stop,
        handover,
    } = run;
    if let Some(period) = limits.silence_period {
        rtmp.set_silence_period(period);
    }
    let late = queue
        .budget
        .map(|b| LateArrivals::new(b + late_margin(b), now()));
    // Each pump moves the messages it carries, in its own direction.
    let (resume_read, resume_tunnel) = (resume.clone(), resume);
    let from_rtmp = RtmpToTunnel {
        peer,
        rtmp,
        replies: to_rtmp,
        tunnel: tunnel_send,
        tracker,
        silence_period: limits.silence_period,
        queue,
        resume: resume_read,
        handover,
    };
    let to_rtmp_pump = TunnelToRtmp {
        peer,
        resume: resume_tunnel,
        tunnel: &mut *tunnel_recv,
        to_rtmp,
        tracker,
        late,
        publisher_silence: limits.publisher_silence,
        handover,
    };
    let setup_deadline = setup_deadline(limits.setup_deadline, tracker);
    let end = {
        let mut from_rtmp_run = std::pin::pin!(from_rtmp.run());
        let mut to_rtmp_run = std::pin::pin!(to_rtmp_pump.run());
        let (end, sending_broke) = tokio::select! {
            end = &mut from_rtmp_run => {
                let broke = end.ended_by == EndedBy::Tunnel;
                (end, broke)
            }
            end = &mut to_rtmp_run => (end, false),
            end = setup_deadline => (end, false),
            _ = stop.cancelled() => (SessionEnd::new(
                CloseCode::Shutdown,
                format!("{} shutting down", peer.hop_name()),
                EndedBy::Local,
            ), false),
        };
        // Our sending side broke: a far hop that ended the session sent SESSION_CLOSE and
        // then stopped it, so its reason is on its way on the other side and beats "stopped
        // by peer" (a refused publish must reach the client as the origin's refusal).
        if !sending_broke {
            end
        } else {
            match tokio::time::timeout(FAR_CLOSE_GRACE, &mut to_rtmp_run).await {
                Ok(far) if far.ended_by == EndedBy::RemoteClose => far,
                _ => end,
            }
        }
    };
    if end.code == CloseCode::ProtocolViolation {
        tunnel_recv.stop(end.code);
    }
    end
}

/// Ends a session whose client has not published or played within `deadline` (never for
/// one that has, or with no deadline).
async fn setup_deadline(deadline: Option<Duration>, tracker: &Mutex<SessionTracker>) -> SessionEnd {
    let Some(deadline) = deadline else {
        return std::future::pending().await;
    };
    tokio::time::sleep(deadline).await;
    if tracker.lock().expect("tracker").set_up() {
        return std::future::pending().await;
    }
    let reason = format!("no publish or play within {deadline:?}");
    SessionEnd::new(CloseCode::Timeout, reason, EndedBy::Local)
}

/// Tells each side what it must hear after [`run_session`]: the far hop gets SESSION_CLOSE
/// with the reason (unless it closed first) and FIN; a client whose session failed elsewhere
/// gets its RTMP error (`_error` for a pending connect, else `onStatus NetStream.Failed`); an
/// origin this hop leaves gets what a leaving client sends (`FCUnpublish`, `deleteStream`).
pub async fn finish_session<S: TunnelSend>(
    peer: RtmpPeer,
    end: &SessionEnd,
    tracker: &Mutex<SessionTracker>,
    to_rtmp: &Outbound,
    tunnel_send: &mut S,
) {
    match end.ended_by {
        EndedBy::RemoteClose => tunnel_send.finish(),
        EndedBy::Rtmp | EndedBy::Tunnel | EndedBy::Local => {
            close_stream(tunnel_send, end.code, &end.reason).await
        }
    }
    let to_tell = peer.last_words(end, &tracker.lock().expect("tracker"));
    // Past the budget the peer still learns why (small, unbudgeted); a peer that reads
    // nothing does not hold the session open.
    let tell = async {
        for msg in to_tell {
            if to_rtmp.send_unbudgeted(msg).await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(TELL_LIMIT, tell).await;
}

/// Logs how a session ended, the one line per session both hops write: `info` when it ended
/// normally, else `warn`, with what it was and how many messages crossed each way.
pub fn log_session_end(end: &SessionEnd, t: &SessionTracker) {
    let app = t.app.as_deref().unwrap_or_default();
    let stream = t.stream.as_deref().unwrap_or_default();
    let direction = t.direction.map_or("", |d| d.as_str());
    let (to_origin, to_client) = (t.to_origin.messages, t.to_client.messages);
    let (code, reason) = (end.code, &end.reason);
    if code == CloseCode::Normal {
        info!(%app, %stream, direction, %code, %reason, to_origin, to_client, "session ended: {reason} ({code})");
    } else {
        warn!(%app, %stream, direction, %code, %reason, to_origin, to_client, "session ended: {reason} ({code})");
    }
}

/// How long the last messages to an RTMP peer may wait for room in its queue.
const TELL_LIMIT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests;
