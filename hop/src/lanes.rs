//! A session's tunnel over QUIC as the pumps use it: [`SessionSend`] and [`SessionRecv`] carry
//! everything on the session's bidirectional stream, or, for a session opened with
//! [`Carrier::MediaLanes`], audio on a unidirectional stream of its own and video on one
//! unidirectional stream per GOP, put back in order by the core's [`LaneMerge`]. A GOP whose
//! stream still holds data in QUIC once it went stale (half the budget after its last frame was
//! handed over, with a newer GOP begun) is reset: QUIC discards what it had not sent and never
//! retransmits it, and a LANE_SKIP tells the far hop to go on without it. [`LaneRouter`]
//! accepts a connection's media streams and hands each to the session it names.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtmpq_proto::buffer_bound::SessionBuffer;
use rtmpq_proto::gop::{older_group_budget, past_budget};
use rtmpq_proto::lanes::{LaneMerge, LaneSplitter, MergeLimits, Route};
use rtmpq_proto::media_queue::Dropped;
use rtmpq_proto::message::Message;
use rtmpq_proto::wire::{Carrier, CloseCode, Frame, Lane};
use tokio::sync::{mpsc, Notify};
use tracing::debug;

use crate::pump::budget_in_force;
use crate::stream::SendHalf;
use crate::transport::{quic_code, PathWatch};
use crate::tunnel::{write_frame, FrameReadError, FrameReader, StreamLost, TunnelRecv, TunnelSend};

/// Send priority of a lanes session's own stream (commands, data, sequence headers).
pub const CONTROL_PRIORITY: i32 = 2;
/// Send priority of audio streams.
pub const AUDIO_PRIORITY: i32 = 1;
/// Send priority of GOP streams (older and newer alike: the receiving hop writes GOPs in
/// order, so a newer one sent first would only wait there).
pub const VIDEO_PRIORITY: i32 = 0;

/// How often a sender blocked on a full window looks for stale GOP streams to reset.
const EXPIRY_TICK: Duration = Duration::from_millis(20);
/// How long a media stream may take to name its session, and the session to be registered.
const MEDIA_STREAM_WAIT: Duration = Duration::from_secs(2);
/// How long a lanes session's merge may hold messages without writing one while its session
/// stream is open: longer than the connection's idle timeout, so a dark path ends the
/// connection (and the session is held for resume) first; only a peer that never sends what
/// its fences name is ended by this.
const MERGE_STALL_LIMIT: Duration = Duration::from_secs(20);
/// How long what the merge holds may take to complete once the session stream has ended.
const ENDED_MERGE_LIMIT: Duration = Duration::from_secs(5);
/// Media events a session's inbox holds before its streams' readers wait (QUIC's flow control
/// then holds the rest at the sender).
const INBOX_DEPTH: usize = 256;

/// One GOP's stream, the lane indices it carried, and its last frame: when it was handed over
/// and its timestamp.
struct GroupStream {
    send: quinn::SendStream,
    from: u64,
    to: u64,
    last_write: Instant,
    last_timestamp: u32,
}

/// The video lane of a session's sending side: the GOP stream being written and the older
/// ones QUIC may still hold data of.
#[derive(Default)]
struct VideoLane {
    current: Option<GroupStream>,
    past: PastGroups,
}

/// The GOP streams before the current one that QUIC may still hold data of, and what is needed
/// to judge them stale.
#[derive(Default)]
struct PastGroups {
    older: VecDeque<GroupStream>,
    /// The newest video timestamp handed over.
    newest: Option<u32>,
    /// How long after its last frame an older GOP is stale (`None`: never).
    stale_after: Option<Duration>,
    /// GOP streams reset, and the frames they held.
    reset: Dropped,
}

impl PastGroups {
    /// Resets the older GOP streams that went stale with data still in QUIC (a newer GOP began
    /// `stale_after` of media time or wall time after their last frame), forgets those QUIC is
    /// done with, and tells the far hop on `session` which indices will not come.
    async fn expire(
        &mut self,
        session: &mut quinn::SendStream,
        now: Instant,
    ) -> Result<(), StreamLost> {
        let Some(stale_after) = self.stale_after else {
            return Ok(());
        };
        while let Some(group) = self.older.front_mut() {
            let waited = now.saturating_duration_since(group.last_write);
            if !past_budget(group.last_timestamp, self.newest, waited, stale_after) {
                break;
            }
            // A stream whose data was all acknowledged is gone from QUIC: reset fails.
            let skip = group
                .send
                .reset(quic_code(CloseCode::Normal))
                .is_ok()
                .then_some(Frame::LaneSkip {
                    lane: Lane::Video,
                    from: group.from,
                    to: group.to,
                });
            if skip.is_some() {
                let frames = group.to - group.from;
                self.reset.gops += 1;
                self.reset.video_frames += frames;
                debug!(
                    frames,
                    ?waited,
                    ?stale_after,
                    "GOP stream reset: stale with data still in QUIC"
                );
            }
            self.older.pop_front();
            if let Some(skip) = skip {
                write_frame(session, &skip).await?;
            }
        }
        Ok(())
    }
}

impl VideoLane {
    /// Writes `bytes` to the current GOP's stream; while the window is full (a dark or slow
    /// path), older GOPs that go stale are reset: their unsent and unacknowledged data stops
    /// taking the window.
    async fn write(
        &mut self,
        chunks: &mut [Bytes],
        session: &mut quinn::SendStream,
    ) -> Result<(), StreamLost> {
        let VideoLane { current, past } = self;
        let target = &mut current.as_mut().expect("a GOP stream is open").send;
        let write = target.write_all_chunks(chunks);
        tokio::pin!(write);
        loop {
            tokio::select! {
                // The write first: one that goes through at once never arms the timer.
                biased;
                written = &mut write => return written.map_err(StreamLost::from),
                _ = tokio::time::sleep(EXPIRY_TICK) => past.expire(session, Instant::now()).await?,
            }
        }
    }
}

/// Opens a media stream of `lane` for the session on `session_stream`, priority set before
/// its first write, with its MEDIA_STREAM frame.
async fn open_lane(
    conn: &quinn::Connection,
    session_stream: u64,
    lane: Lane,
    first_index: u64,
) -> Result<quinn::SendStream, StreamLost> {
    let mut send = conn.open_uni().await.map_err(|e| StreamLost {
        code: None,
        reason: format!("connection lost: {e}"),
    })?;
    let priority = match lane {
        Lane::Audio => AUDIO_PRIORITY,
        Lane::Video => VIDEO_PRIORITY,
    };
    let _ = send.set_priority(priority);
    let head = Frame::MediaStream {
        session_stream,
        lane,
        first_index,
    };
    write_frame(&mut send, &head).await?;
    Ok(send)
}

/// The media lanes of a session's sending side.
struct LaneSender {
    conn: quinn::Connection,
    session_stream: u64,
    splitter: LaneSplitter,
    audio: Option<quinn::SendStream>,
    video: VideoLane,
    /// The budget and the path: a GOP stream older than half the budget in force is stale.
    budget: Option<Duration>,
    path: Option<Arc<PathWatch>>,
}

/// Bytes of a video frame written at a time on a lanes session: between pieces, audio that
/// arrived meanwhile goes out instead of waiting for the whole frame (a 33 kB key frame takes
/// 0.18 s at 1.5 Mbit/s, and a write also waits while the window is full).
const VIDEO_PIECE: usize = 16 << 10;

impl LaneSender {
    /// How long after its last frame an older GOP's stream is stale: half the budget in force
    /// (the media queue's rule for a group a newer one waits behind).
    fn stale_after(&self) -> Option<Duration> {
        let wait = self.path.as_ref().map_or(Duration::ZERO, |p| p.quic_wait());
        Some(older_group_budget(budget_in_force(self.budget?, wait)))
    }

    /// Routes an audio message and writes it on the audio stream.
    async fn send_audio(&mut self, msg: &Message) -> Result<(), StreamLost> {
        match self.splitter.route(msg) {
            Route::Audio {
                index,
                control_before,
            } => self.write_audio(msg, index, control_before).await,
            _ => unreachable!("only audio is taken meanwhile"),
        }
    }

    /// Writes an audio message routed to `index` on the audio stream (opened on the first).
    async fn write_audio(
        &mut self,
        msg: &Message,
        index: u64,
        control_before: u64,
    ) -> Result<(), StreamLost> {
        if self.audio.is_none() {
            let stream = open_lane(&self.conn, self.session_stream, Lane::Audio, index).await?;
            self.audio = Some(stream);
        }
        let media = Frame::Media {
            control_before,
            msg: msg.clone(),
        };
        let audio = self.audio.as_mut().expect("audio stream");
        write_frame(audio, &media).await
    }

    /// Writes `frame` on the session stream, after a FENCE if the media counts changed.
    async fn write_on_session(
        &mut self,
        session: &mut quinn::SendStream,
        frame: &Frame,
        fence: Option<(u64, u64)>,
    ) -> Result<(), StreamLost> {
        if let Some((audio_before, video_before)) = fence {
            let fence = Frame::Fence {
                audio_before,
                video_before,
            };
            write_frame(session, &fence).await?;
        }
        if matches!(frame, Frame::SessionClose { .. }) {
            self.finish_all();
        }
        write_frame(session, frame).await
    }

    /// Writes a video message routed to `index` on its GOP's stream (a new one if it starts a
    /// GOP), in pieces with the audio `meanwhile` gives between them.
    async fn write_video(
        &mut self,
        session: &mut quinn::SendStream,
        msg: &Message,
        (index, control_before, new_group): (u64, u64, bool),
        mut meanwhile: Option<AudioMeanwhile<'_>>,
        now: Instant,
    ) -> Result<(), StreamLost> {
        self.video.past.newest = Some(msg.timestamp);
        if new_group || self.video.current.is_none() {
            if let Some(mut done) = self.video.current.take() {
                let _ = done.send.finish();
                self.video.past.older.push_back(done);
            }
            let send = open_lane(&self.conn, self.session_stream, Lane::Video, index).await?;
            self.video.current = Some(GroupStream {
                send,
                from: index,
                to: index,
                last_write: now,
                last_timestamp: msg.timestamp,
            });
        }
        self.video.past.expire(session, now).await?;
        if let Some(group) = &mut self.video.current {
            group.to = index + 1;
            group.last_write = now;
            group.last_timestamp = msg.timestamp;
        }
        let media = Frame::Media {
            control_before,
            msg: msg.clone(),
        };
        let mut head = BytesMut::with_capacity(32);
        let payload = media.encode_head(&mut head).unwrap_or_default();
        // The frame's head goes with its first piece.
        let first = payload.len().min(VIDEO_PIECE);
        let mut chunks = [head.freeze(), payload.slice(..first)];
        self.video.write(&mut chunks, session).await?;
        let mut offset = first;
        while offset < payload.len() {
            let end = (offset + VIDEO_PIECE).min(payload.len());
            let piece = payload.slice(offset..end);
            // Audio that arrived while the last piece went out goes before this one.
            if let Some(meanwhile) = &mut meanwhile {
                while let Some(audio) = meanwhile() {
                    self.send_audio(&audio).await?;
                }
            }
            self.video.write(&mut [piece], session).await?;
            offset = end;
        }
        Ok(())
    }

    fn finish_all(&mut self) {
        for s in self
            .audio
            .iter_mut()
            .chain(self.video.current.iter_mut().map(|g| &mut g.send))
        {
            let _ = s.finish();
        }
    }
}

/// What a lanes session may send while a video frame is still going out: the audio that
/// waits, one message a call.
pub type AudioMeanwhile<'a> = &'a mut (dyn FnMut() -> Option<Message> + Send);

/// The sending side of a session's tunnel; see the module docs.
pub struct SessionSend {
    /// The session's own stream.
    pub stream: SendHalf,
    lanes: Option<Box<LaneSender>>,
}

impl SessionSend {
    /// Everything on `stream`.
    pub fn new(stream: impl Into<SendHalf>) -> Self {
        SessionSend {
            stream: stream.into(),
            lanes: None,
        }
    }

    /// Audio and video on media streams of `conn` if `carrier` says so and the session's
    /// stream is a QUIC stream of it (`conn`: `None` on TCP); an older GOP's stream is stale at
    /// half of `budget` less the path's wait (no budget: never reset).
    pub fn carried(
        mut stream: SendHalf,
        carrier: Carrier,
        conn: Option<&quinn::Connection>,
        budget: Option<Duration>,
        path: Option<Arc<PathWatch>>,
    ) -> Self {
        let (Some(conn), Some(quic)) = (conn, stream.quic()) else {
            return SessionSend::new(stream);
        };
        if carrier == Carrier::SessionStream {
            return SessionSend::new(stream);
        }
        let _ = quic.set_priority(CONTROL_PRIORITY);
        let session_stream = quic.id().into();
        SessionSend {
            lanes: Some(Box::new(LaneSender {
                conn: conn.clone(),
                session_stream,
                splitter: LaneSplitter::default(),
                audio: None,
                video: VideoLane::default(),
                budget,
                path,
            })),
            stream,
        }
    }

    async fn send_lanes(
        &mut self,
        frame: &Frame,
        meanwhile: Option<AudioMeanwhile<'_>>,
    ) -> Result<(), StreamLost> {
        let SessionSend { stream, lanes } = self;
        let (lanes, stream) = match (lanes.as_deref_mut(), stream) {
            (Some(lanes), SendHalf::Quic(stream)) => (lanes, stream),
            (_, stream) => return write_frame(stream, frame).await,
        };
        let now = Instant::now();
        lanes.video.past.stale_after = lanes.stale_after();
        let Frame::Msg(msg) = frame else {
            // SESSION_CLOSE: after the media sent before it.
            let fence = lanes.splitter.fence();
            lanes.video.past.expire(stream, now).await?;
            return lanes.write_on_session(stream, frame, fence).await;
        };
        match lanes.splitter.route(msg) {
            Route::Control { fence } => {
                lanes.video.past.expire(stream, now).await?;
                lanes.write_on_session(stream, frame, fence).await
            }
            Route::Audio {
                index,
                control_before,
            } => {
                lanes.video.past.expire(stream, now).await?;
                lanes.write_audio(msg, index, control_before).await
            }
            Route::Video {
                index,
                control_before,
                new_group,
            } => {
                let routed = (index, control_before, new_group);
                lanes.write_video(stream, msg, routed, meanwhile, now).await
            }
        }
    }
}

impl TunnelSend for SessionSend {
    async fn send(&mut self, frame: &Frame) -> Result<(), StreamLost> {
        self.send_lanes(frame, None).await
    }

    async fn send_meanwhile(
        &mut self,
        frame: &Frame,
        meanwhile: AudioMeanwhile<'_>,
    ) -> Result<(), StreamLost> {
        self.send_lanes(frame, Some(meanwhile)).await
    }

    fn finish(&mut self) {
        if let Some(lanes) = &mut self.lanes {
            lanes.finish_all();
        }
        self.stream.finish();
    }

    fn reset_in_quic(&self) -> Dropped {
        self.lanes
            .as_ref()
            .map_or_else(Dropped::default, |l| l.video.past.reset)
    }
}

/// A media message for a session, or why its stream failed.
#[derive(Debug)]
enum LaneEvent {
    Media {
        lane: Lane,
        index: u64,
        control_before: u64,
        msg: Message,
    },
    Failed(FrameReadError),
}

/// A session's inbox and its share of the buffer bound, as the router holds them.
type Inlet = (mpsc::Sender<LaneEvent>, Option<Arc<SessionBuffer>>);

/// The sessions of one connection that take media streams, by their session stream's id; once
/// the connection has ended, none (every inbox then ends, whatever its merge still holds).
#[derive(Default)]
struct Registry {
    sessions: HashMap<u64, Inlet>,
    connection_ended: bool,
}

/// Accepts a connection's media streams and hands each to the session it names.
pub struct LaneRouter {
    sessions: Mutex<Registry>,
    registered: Notify,
}

impl LaneRouter {
    /// Starts accepting `conn`'s unidirectional streams (until it closes).
    pub fn start(conn: &quinn::Connection) -> Arc<LaneRouter> {
        let router = Arc::new(LaneRouter {
            sessions: Mutex::new(Registry::default()),
            registered: Notify::new(),
        });
        let conn = conn.clone();
        let weak = Arc::downgrade(&router);
        tokio::spawn(async move {
            while let Ok(recv) = conn.accept_uni().await {
                let Some(router) = weak.upgrade() else {
                    return;
                };
                tokio::spawn(async move { router.serve(recv).await });
            }
            // The connection ended: every session's inbox ends with it.
            if let Some(router) = weak.upgrade() {
                let mut registry = router.sessions.lock().expect("lane registry");
                registry.connection_ended = true;
                registry.sessions.clear();
            }
        });
        router
    }

    /// Takes the media streams that name `session_stream` from now on, until the inbox is
    /// dropped.
    fn register(
        self: &Arc<Self>,
        session_stream: u64,
        buffer: Option<Arc<SessionBuffer>>,
    ) -> LaneInbox {
        let (tx, rx) = mpsc::channel(INBOX_DEPTH);
        let mut registry = self.sessions.lock().expect("lane registry");
        if !registry.connection_ended {
            registry.sessions.insert(session_stream, (tx, buffer));
        }
        drop(registry);
        self.registered.notify_waiters();
        LaneInbox {
            rx,
            router: self.clone(),
            session_stream,
        }
    }

    /// The session a stream names, waiting a moment for it (its first frames may arrive
    /// before the session stream's SESSION_OPEN was read).
    async fn session(&self, session_stream: u64) -> Option<Inlet> {
        let wait = async {
            loop {
                let registered = self.registered.notified();
                if let Some(s) = self
                    .sessions
                    .lock()
                    .expect("lane registry")
                    .sessions
                    .get(&session_stream)
                {
                    return s.clone();
                }
                registered.await;
            }
        };
        tokio::time::timeout(MEDIA_STREAM_WAIT, wait).await.ok()
    }

    async fn serve(&self, recv: quinn::RecvStream) {
        // Control frames' limit until the stream names a session here.
        let mut frames = FrameReader::control(recv);
        let head = tokio::time::timeout(MEDIA_STREAM_WAIT, frames.next()).await;
        let (session_stream, lane, first_index) = match head {
            Ok(Ok(Some(Frame::MediaStream {
                session_stream,
                lane,
                first_index,
            }))) => (session_stream, lane, first_index),
            other => {
                // Debug only: the edge is authenticated, and a line per stream would let one
                // that misbehaves fill the log.
                debug!(first = ?other, "media stream without MEDIA_STREAM stopped");
                frames.stop(CloseCode::ProtocolViolation);
                return;
            }
        };
        let Some((inbox, buffer)) = self.session(session_stream).await else {
            debug!(session_stream, "media stream for no session here");
            frames.stop(CloseCode::Normal);
            return;
        };
        frames.lift_limit();
        if let Some(buffer) = &buffer {
            frames.set_buffer(buffer.clone());
        }
        for index in first_index.. {
            let event = match frames.next().await {
                Ok(Some(Frame::Media {
                    control_before,
                    msg,
                })) => {
                    let charged = buffer
                        .as_ref()
                        .map_or(Ok(()), |b| b.take(msg.payload.len()));
                    match charged {
                        Ok(()) => LaneEvent::Media {
                            lane,
                            index,
                            control_before,
                            msg,
                        },
                        Err(e) => LaneEvent::Failed(e.into()),
                    }
                }
                // Finished, or reset by its sender (a stale GOP: a LANE_SKIP says so).
                Ok(None) | Err(FrameReadError::Lost(_)) => return,
                Ok(Some(other)) => LaneEvent::Failed(FrameReadError::Lanes(format!(
                    "unexpected {other:?} on a media stream"
                ))),
                Err(e) => LaneEvent::Failed(e),
            };
            let failed = matches!(event, LaneEvent::Failed(_));
            if let Err(mpsc::error::SendError(event)) = inbox.send(event).await {
                if let (LaneEvent::Media { msg, .. }, Some(buffer)) = (event, &buffer) {
                    buffer.give_back(msg.payload.len());
                }
                frames.stop(CloseCode::Normal);
                return;
            }
            if failed {
                frames.stop(CloseCode::Normal);
                return;
            }
        }
    }
}

impl std::fmt::Debug for LaneRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sessions = self.sessions.lock().map_or(0, |s| s.sessions.len());
        f.debug_struct("LaneRouter")
            .field("sessions", &sessions)
            .finish()
    }
}

/// A session's media streams, as [`LaneRouter`] hands them over.
struct LaneInbox {
    rx: mpsc::Receiver<LaneEvent>,
    router: Arc<LaneRouter>,
    session_stream: u64,
}

impl Drop for LaneInbox {
    fn drop(&mut self) {
        self.router
            .sessions
            .lock()
            .expect("lane registry")
            .sessions
            .remove(&self.session_stream);
    }
}

/// The receiving side of a session's tunnel; see the module docs.
pub struct SessionRecv {
    /// The session's bidirectional stream.
    pub frames: FrameReader,
    lanes: Option<Box<LanesIn>>,
    /// The session stream ended (what the merge still holds goes out first).
    ended: bool,
}

/// The receiving side's media lanes: what the router hands over, the merge, and the bytes it
/// holds charged to the session's share of the process-wide bound.
struct LanesIn {
    inbox: LaneInbox,
    merge: LaneMerge,
    buffer: Option<Arc<SessionBuffer>>,
    charged: usize,
    /// Fires when what the merge holds has waited too long; armed (with its limit) while the
    /// merge holds something it cannot write, disarmed by every message written.
    stall: std::pin::Pin<Box<tokio::time::Sleep>>,
    stall_armed: Option<Duration>,
}

impl LanesIn {
    /// Brings the charge in line with what the merge holds.
    fn charge(&mut self) -> Result<(), FrameReadError> {
        let Some(buffer) = &self.buffer else {
            return Ok(());
        };
        Ok(buffer.charge_to(&mut self.charged, self.merge.bytes())?)
    }
}

impl Drop for LanesIn {
    fn drop(&mut self) {
        if let Some(buffer) = &self.buffer {
            buffer.give_back(self.charged);
            // What the router charged and handed over, still in the inbox.
            while let Ok(event) = self.inbox.rx.try_recv() {
                if let LaneEvent::Media { msg, .. } = event {
                    buffer.give_back(msg.payload.len());
                }
            }
        }
    }
}

impl SessionRecv {
    /// Everything from `frames`.
    pub fn new(frames: FrameReader) -> Self {
        SessionRecv {
            frames,
            lanes: None,
            ended: false,
        }
    }

    /// Audio and video also from the media streams `router` hands over, if `carrier` says so
    /// and there is one (QUIC; `None` on TCP); what waits for its turn is charged to `buffer`.
    pub fn carried(
        frames: FrameReader,
        carrier: Carrier,
        router: Option<&Arc<LaneRouter>>,
        buffer: Option<Arc<SessionBuffer>>,
    ) -> Self {
        let Some(router) = router.filter(|_| carrier != Carrier::SessionStream) else {
            return SessionRecv::new(frames);
        };
        let inbox = router.register(frames.stream_id(), buffer.clone());
        SessionRecv {
            frames,
            lanes: Some(Box::new(LanesIn {
                inbox,
                merge: LaneMerge::new(MergeLimits::default()),
                buffer,
                charged: 0,
                stall: Box::pin(tokio::time::sleep(Duration::ZERO)),
                stall_armed: None,
            })),
            ended: false,
        }
    }

    async fn next_frame(&mut self) -> Result<Option<Frame>, FrameReadError> {
        let Some(lanes) = self.lanes.as_deref_mut() else {
            return self.frames.next().await;
        };
        let lanes_err = |e: rtmpq_proto::lanes::MergeError| FrameReadError::Lanes(e.to_string());
        loop {
            if let Some(frame) = lanes.merge.pop() {
                lanes.charge()?;
                lanes.stall_armed = None;
                return Ok(Some(frame));
            }
            if lanes.merge.is_empty() {
                if self.ended {
                    return Ok(None);
                }
                lanes.stall_armed = None;
            } else {
                // What the merge holds must make progress within a bound, sooner once the
                // session stream has ended (nothing it waits for can come from there any more).
                let limit = if self.ended {
                    ENDED_MERGE_LIMIT
                } else {
                    MERGE_STALL_LIMIT
                };
                if lanes.stall_armed != Some(limit) {
                    let deadline = tokio::time::Instant::now() + limit;
                    lanes.stall.as_mut().reset(deadline);
                    lanes.stall_armed = Some(limit);
                }
            }
            tokio::select! {
                () = &mut lanes.stall, if lanes.stall_armed.is_some() => {
                    let limit = lanes.stall_armed.unwrap_or_default();
                    return Err(FrameReadError::Lanes(format!(
                        "media lanes wrote nothing for {limit:?} while {} bytes waited for what \
                         the session stream's fences name{}",
                        lanes.merge.bytes(),
                        if self.ended { " (the session stream had ended)" } else { "" },
                    )));
                }
                frame = self.frames.next(), if !self.ended => match frame? {
                    Some(frame) => lanes.merge.from_session_stream(frame).map_err(lanes_err)?,
                    None => self.ended = true,
                },
                event = lanes.inbox.rx.recv() => match event {
                    Some(LaneEvent::Media { lane, index, control_before, msg }) => {
                        // The router's charge for it moves to the merge's.
                        if let Some(buffer) = &lanes.buffer {
                            buffer.give_back(msg.payload.len());
                        }
                        lanes.merge.media(lane, index, control_before, msg).map_err(lanes_err)?
                    }
                    Some(LaneEvent::Failed(e)) => return Err(e),
                    // The router ends every inbox when the connection ends; the session
                    // stream says why (a stateless reset, a timeout), and at once.
                    None => {
                        if !self.ended {
                            let why = tokio::time::timeout(WHY_LIMIT, self.frames.next()).await;
                            if let Ok(Err(e)) = why {
                                return Err(e);
                            }
                        }
                        return Err(FrameReadError::Lost(StreamLost {
                            code: None,
                            reason: "the connection ended".into(),
                        }));
                    }
                },
            }
            lanes.charge()?;
        }
    }
}

/// How long a lanes session whose connection ended waits for its session stream to say why.
const WHY_LIMIT: Duration = Duration::from_millis(100);

impl TunnelRecv for SessionRecv {
    fn next(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Option<Frame>, FrameReadError>> + Send {
        self.next_frame()
    }

    /// Stops the session stream and lets go of the media lanes: their charges come back, and
    /// the router stops every media stream that names this session from now on.
    fn stop(&mut self, code: CloseCode) {
        TunnelRecv::stop(&mut self.frames, code);
        self.lanes = None;
    }
}

/// Writes `frame` on a session's own stream, outside the lanes' order (RESUME_TOKEN, a
/// refusal before the session runs).
pub async fn write_session_frame(send: &mut SessionSend, frame: &Frame) -> Result<(), StreamLost> {
    write_frame(&mut send.stream, frame).await
}
