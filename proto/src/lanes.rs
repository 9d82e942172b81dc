//! Media lanes ([`Carrier::MediaLanes`](crate::wire::Carrier)): how a session's messages are
//! split over several QUIC streams at the sending hop ([`LaneSplitter`]) and put back in an
//! order the RTMP peer can take at the receiving hop ([`LaneMerge`]).
//!
//! The sender numbers what it hands out per lane: the session stream's messages (commands,
//! data, sequence headers), audio (one stream), and video (one stream per GOP; a key frame
//! starts one). Each audio or video message carries how many session-stream messages were
//! sent before it (MEDIA's `control_before`); a FENCE on the session stream says how many
//! audio and video messages were sent before what follows it. The receiver writes a media
//! message only after the session-stream messages before it, and a session-stream message
//! only after every earlier media message was written or skipped. Within a lane, messages go
//! out by index: a later GOP's frames wait for the end of the GOP before (a GOP stream reset
//! by the sender, its LANE_SKIP says which indices will never come). Between lanes, whichever
//! is ready goes first, the smaller timestamp first: tracks interleave as they arrive, with no
//! constant wait. So every track's order at the receiving RTMP peer is the order the sending
//! peer sent it in, less what was dropped, and a sequence header still follows the frames
//! coded before it and precedes those coded after.
//!
//! Everything a peer can make the merge hold is bounded ([`MergeLimits`]): messages waiting,
//! their bytes, and skip ranges.

use std::collections::{BTreeMap, VecDeque};

use crate::gop::GopGate;
use crate::message::{MediaKind, Message};
use crate::wire::{Frame, Lane};

/// Where the sender puts a message, with the numbers the receiver orders it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// On the session stream; if `fence` is set, a FENCE with these (audio, video) counts
    /// goes first (they changed since the last one).
    Control {
        /// Audio and video messages sent before, when a FENCE must precede.
        fence: Option<(u64, u64)>,
    },
    /// On the audio stream.
    Audio {
        /// The message's audio index.
        index: u64,
        /// Session-stream messages sent before it.
        control_before: u64,
    },
    /// On the video stream of the current GOP.
    Video {
        /// The message's video index.
        index: u64,
        /// Session-stream messages sent before it.
        control_before: u64,
        /// It starts a new GOP: a new stream, the previous one finished.
        new_group: bool,
    },
}

/// Numbers a session's outgoing messages over the lanes; see the module docs.
#[derive(Debug, Default)]
pub struct LaneSplitter {
    control_sent: u64,
    audio_sent: u64,
    video_sent: u64,
    /// The counts the last FENCE carried.
    fenced: (u64, u64),
    /// Whether a GOP stream is open.
    in_group: bool,
    /// Which track's key frames start a GOP stream.
    groups: GopGate,
}

impl LaneSplitter {
    /// Where `msg` goes, counting it as sent.
    pub fn route(&mut self, msg: &Message) -> Route {
        let packet = msg.media_packet();
        match packet.map_or(MediaKind::Other, |p| p.kind()) {
            MediaKind::Audio => {
                self.audio_sent += 1;
                Route::Audio {
                    index: self.audio_sent - 1,
                    control_before: self.control_sent,
                }
            }
            MediaKind::VideoKeyframe | MediaKind::VideoFrame => {
                let starts = packet.is_some_and(|p| self.groups.starts_group(&p));
                let new_group = starts || !self.in_group;
                self.in_group = true;
                self.video_sent += 1;
                Route::Video {
                    index: self.video_sent - 1,
                    control_before: self.control_sent,
                    new_group,
                }
            }
            MediaKind::Header | MediaKind::Other => {
                self.control_sent += 1;
                Route::Control {
                    fence: self.fence(),
                }
            }
        }
    }

    /// The FENCE a frame on the session stream other than a message (SESSION_CLOSE) needs
    /// first, if the media counts changed since the last one.
    pub fn fence(&mut self) -> Option<(u64, u64)> {
        let now = (self.audio_sent, self.video_sent);
        (now != self.fenced).then(|| {
            self.fenced = now;
            now
        })
    }
}

/// What a [`LaneMerge`] holds at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeLimits {
    /// Messages waiting, over every lane.
    pub max_messages: usize,
    /// Payload bytes waiting, over every lane and the session stream.
    pub max_bytes: usize,
    /// Skip ranges not yet reached, per lane.
    pub max_skips: usize,
}

impl Default for MergeLimits {
    fn default() -> Self {
        MergeLimits {
            max_messages: 1 << 14,
            max_bytes: 32 << 20,
            max_skips: 1024,
        }
    }
}

/// What the far hop sent that the merge cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// More waiting than [`MergeLimits`] allows.
    #[error("media lanes hold more than their limit ({0})")]
    Overloaded(&'static str),
    /// An index that was written already, or two messages with one index.
    #[error("media lane {0:?}: index {1} arrived twice")]
    Duplicate(Lane, u64),
    /// A frame that does not belong on the session stream of a lanes session.
    #[error("unexpected {0} on a lanes session's stream")]
    Unexpected(&'static str),
}

#[derive(Debug)]
struct Waiting {
    control_before: u64,
    msg: Message,
}

/// One lane at the receiver: the next index to write and what waits.
#[derive(Debug, Default)]
struct LaneState {
    next: u64,
    waiting: BTreeMap<u64, Waiting>,
    /// Ranges `from..to` that will never arrive, not yet reached; disjoint, sorted by `from`.
    skips: BTreeMap<u64, u64>,
}

impl LaneState {
    /// Moves `next` past the skipped ranges it has reached.
    fn advance(&mut self) {
        while let Some((&from, &to)) = self.skips.first_key_value() {
            if from > self.next {
                break;
            }
            self.skips.pop_first();
            self.next = self.next.max(to);
        }
    }

    /// Adds `from..to` to the ranges that will never arrive, as a set: ranges that overlap or
    /// touch it become one, so an index is skipped whichever range named it (nested and
    /// overlapping skips included).
    fn skip(&mut self, mut from: u64, mut to: u64) {
        // Ranges are disjoint and sorted; those that start at or before `to` and end at or
        // after `from` join this one.
        while let Some((&start, &end)) = self.skips.range(..=to).next_back() {
            if end < from {
                break;
            }
            self.skips.remove(&start);
            from = from.min(start);
            to = to.max(end);
        }
        self.skips.insert(from, to);
    }

    /// Whether `index` lies in a range that will never arrive.
    fn skipped(&self, index: u64) -> bool {
        self.skips
            .range(..=index)
            .next_back()
            .is_some_and(|(_, &to)| index < to)
    }

    /// The message that may go out next, if its turn has come.
    fn ready(&self, control_written: u64) -> Option<&Waiting> {
        self.waiting
            .get(&self.next)
            .filter(|w| w.control_before <= control_written)
    }
}

/// Puts a lanes session's messages back in order at the receiving hop; see the module docs.
#[derive(Debug, Default)]
pub struct LaneMerge {
    limits: MergeLimits,
    /// Session-stream frames written (MSG frames only count).
    control_written: u64,
    /// Session-stream frames in arrival order, each with the fence it waits for.
    control: VecDeque<((u64, u64), Frame)>,
    /// The last fence read on the session stream.
    fence: (u64, u64),
    audio: LaneState,
    video: LaneState,
    /// Payload bytes of every message waiting, on the lanes and on the session stream.
    bytes: usize,
}

impl LaneMerge {
    /// An empty merge keeping to `limits`.
    pub fn new(limits: MergeLimits) -> Self {
        LaneMerge {
            limits,
            ..LaneMerge::default()
        }
    }

    fn lane(&mut self, lane: Lane) -> &mut LaneState {
        match lane {
            Lane::Audio => &mut self.audio,
            Lane::Video => &mut self.video,
        }
    }

    /// Takes a frame read from the session stream: FENCE and LANE_SKIP act at once, every
    /// other frame waits its turn.
    pub fn from_session_stream(&mut self, frame: Frame) -> Result<(), MergeError> {
        match frame {
            Frame::Fence {
                audio_before,
                video_before,
            } => self.fence = (audio_before, video_before),
            Frame::LaneSkip { lane, from, to } => {
                let max = self.limits.max_skips;
                let state = self.lane(lane);
                if to > state.next {
                    state.skip(from.max(state.next), to);
                    if state.skips.len() > max {
                        return Err(MergeError::Overloaded("skip ranges"));
                    }
                    // What waits in the skipped range will never be written.
                    let dropped: Vec<u64> =
                        state.waiting.range(from..to).map(|(&i, _)| i).collect();
                    for i in dropped {
                        if let Some(w) = self.lane(lane).waiting.remove(&i) {
                            self.bytes -= w.msg.payload.len();
                        }
                    }
                    self.lane(lane).advance();
                }
            }
            Frame::MediaStream { .. } => return Err(MergeError::Unexpected("MEDIA_STREAM")),
            Frame::Media { .. } => return Err(MergeError::Unexpected("MEDIA")),
            other => {
                if self.control.len() >= self.limits.max_messages {
                    return Err(MergeError::Overloaded("session stream frames"));
                }
                // Commands and data wait behind a fence too: their bytes count with the media's.
                self.bytes += session_frame_bytes(&other);
                self.control.push_back((self.fence, other));
                if self.bytes > self.limits.max_bytes {
                    return Err(MergeError::Overloaded("bytes"));
                }
            }
        }
        Ok(())
    }

    /// Takes a media message of `lane` with its index and control fence. A message below the
    /// lane's next index (written, or skipped) is dropped.
    pub fn media(
        &mut self,
        lane: Lane,
        index: u64,
        control_before: u64,
        msg: Message,
    ) -> Result<(), MergeError> {
        let state = self.lane(lane);
        if index < state.next || state.skipped(index) {
            return Ok(());
        }
        if state.waiting.contains_key(&index) {
            return Err(MergeError::Duplicate(lane, index));
        }
        let len = msg.payload.len();
        state.waiting.insert(
            index,
            Waiting {
                control_before,
                msg,
            },
        );
        self.bytes += len;
        if self.waiting_media() > self.limits.max_messages {
            return Err(MergeError::Overloaded("messages"));
        }
        if self.bytes > self.limits.max_bytes {
            return Err(MergeError::Overloaded("bytes"));
        }
        Ok(())
    }

    /// The next frame whose turn has come, if any.
    pub fn pop(&mut self) -> Option<Frame> {
        if let Some(((audio_before, video_before), _)) = self.control.front() {
            if self.audio.next >= *audio_before && self.video.next >= *video_before {
                let (_, frame) = self.control.pop_front()?;
                self.bytes -= session_frame_bytes(&frame);
                if matches!(frame, Frame::Msg(_)) {
                    self.control_written += 1;
                }
                return Some(frame);
            }
        }
        let written = self.control_written;
        let audio = self.audio.ready(written).map(|w| w.msg.timestamp);
        let video = self.video.ready(written).map(|w| w.msg.timestamp);
        let lane = match (audio, video) {
            (Some(a), Some(v)) if timestamp_before(v, a) => Lane::Video,
            (Some(_), _) => Lane::Audio,
            (None, Some(_)) => Lane::Video,
            (None, None) => return None,
        };
        let state = self.lane(lane);
        let next = state.next;
        let w = state.waiting.remove(&next)?;
        state.next += 1;
        state.advance();
        self.bytes -= w.msg.payload.len();
        Some(Frame::Msg(w.msg))
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.control.is_empty() && self.waiting_media() == 0
    }

    /// Payload bytes of every message waiting (what a hop charges to its buffer bound).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn waiting_media(&self) -> usize {
        self.audio.waiting.len() + self.video.waiting.len()
    }
}

/// The payload bytes a session-stream frame holds while it waits.
fn session_frame_bytes(frame: &Frame) -> usize {
    match frame {
        Frame::Msg(m) => m.payload.len(),
        _ => 0,
    }
}

/// Whether timestamp `a` is before `b`, read within half the 32-bit range (a wrap reads right).
fn timestamp_before(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 1 << 31
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::message_type;

    fn audio(ts: u32) -> Message {
        Message::new(message_type::AUDIO, 1, ts, vec![0xaf, 1, ts as u8])
    }
    fn key(ts: u32) -> Message {
        Message::new(message_type::VIDEO, 1, ts, vec![0x17, 1, 0, 0, 0, ts as u8])
    }
    fn inter(ts: u32) -> Message {
        Message::new(message_type::VIDEO, 1, ts, vec![0x27, 1, 0, 0, 0, ts as u8])
    }
    fn header(ts: u32) -> Message {
        Message::new(message_type::VIDEO, 1, ts, vec![0x17, 0, 0, 0, 0, 9])
    }
    fn command(n: u8) -> Message {
        Message::new(20, 0, 0, vec![2, 0, 1, n])
    }

    /// One media stream's frames as sent: (lane index, control fence, message).
    type MediaStream = VecDeque<(u64, u64, Message)>;

    /// A message the sender handed out: its lane and index (none: the session stream), the
    /// session-stream messages before it, and the audio and video counts after it was routed.
    struct Handed {
        msg: Message,
        lane: Option<(Lane, u64)>,
        control_before: u64,
        media_before: (u64, u64),
    }

    /// What the sender puts on the wire for `msgs`: the session stream's frames (FENCEs
    /// included), the audio stream, one stream per GOP, and what it handed out in order.
    struct Sent {
        control: Vec<Frame>,
        audio: MediaStream,
        groups: Vec<MediaStream>,
        handed: Vec<Handed>,
    }

    impl Sent {
        /// Every video message, over all GOPs.
        fn video(&self) -> Vec<(u64, u64, Message)> {
            self.groups.iter().flatten().cloned().collect()
        }

        /// Each GOP's first video index.
        fn group_starts(&self) -> Vec<u64> {
            self.groups.iter().map(|g| g[0].0).collect()
        }
    }

    fn split(msgs: &[Message]) -> Sent {
        let mut s = LaneSplitter::default();
        let mut sent = Sent {
            control: Vec::new(),
            audio: VecDeque::new(),
            groups: Vec::new(),
            handed: Vec::new(),
        };
        for m in msgs {
            let (lane, control_before) = match s.route(m) {
                Route::Control { fence } => {
                    if let Some((a, v)) = fence {
                        sent.control.push(Frame::Fence {
                            audio_before: a,
                            video_before: v,
                        });
                    }
                    sent.control.push(Frame::Msg(m.clone()));
                    (None, s.control_sent - 1)
                }
                Route::Audio {
                    index,
                    control_before,
                } => {
                    sent.audio.push_back((index, control_before, m.clone()));
                    (Some((Lane::Audio, index)), control_before)
                }
                Route::Video {
                    index,
                    control_before,
                    new_group,
                } => {
                    if new_group {
                        sent.groups.push(VecDeque::new());
                    }
                    let group = sent.groups.last_mut().expect("a group");
                    group.push_back((index, control_before, m.clone()));
                    (Some((Lane::Video, index)), control_before)
                }
            };
            sent.handed.push(Handed {
                msg: m.clone(),
                lane,
                control_before,
                media_before: (s.audio_sent, s.video_sent),
            });
        }
        sent
    }

    fn drain(merge: &mut LaneMerge, out: &mut Vec<Message>) {
        while let Some(f) = merge.pop() {
            match f {
                Frame::Msg(m) => out.push(m),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn media_overtaking_the_session_stream_still_follows_its_header() {
        let msgs = vec![
            command(1),
            header(0),
            key(0),
            audio(0),
            inter(33),
            audio(23),
        ];
        let sent = split(&msgs);
        let mut merge = LaneMerge::default();
        let mut out = Vec::new();
        // All media first, the session stream last: nothing may go out before it.
        for (i, c, m) in sent.video().iter().chain(&sent.audio) {
            let lane = if m.type_id == message_type::AUDIO {
                Lane::Audio
            } else {
                Lane::Video
            };
            merge.media(lane, *i, *c, m.clone()).unwrap();
        }
        drain(&mut merge, &mut out);
        assert!(out.is_empty(), "{out:?}");
        for f in sent.control.iter().cloned() {
            merge.from_session_stream(f).unwrap();
        }
        drain(&mut merge, &mut out);
        assert_eq!(out[..2], msgs[..2]);
        // Tracks interleave by timestamp; each track keeps its order.
        let ts: Vec<u32> = out[2..].iter().map(|m| m.timestamp).collect();
        assert_eq!(ts, vec![0, 0, 23, 33]);
        assert!(merge.is_empty());
    }

    #[test]
    fn a_header_that_follows_frames_waits_for_them() {
        // A mid-stream sequence header (new resolution) after frames of the old one.
        let msgs = vec![header(0), key(0), inter(33), header(66), key(66)];
        let sent = split(&msgs);
        let mut merge = LaneMerge::default();
        let mut out = Vec::new();
        for f in sent.control.iter().cloned() {
            merge.from_session_stream(f).unwrap();
        }
        drain(&mut merge, &mut out);
        assert_eq!(out, msgs[..1]);
        // The second GOP arrives before the first.
        for (i, c, m) in sent.video().iter().rev() {
            merge.media(Lane::Video, *i, *c, m.clone()).unwrap();
        }
        drain(&mut merge, &mut out);
        assert_eq!(out, msgs);
    }

    #[test]
    fn a_skipped_gop_lets_the_next_one_and_the_session_stream_go_on() {
        let msgs = vec![
            key(0),
            inter(33),
            inter(66),
            key(100),
            inter(133),
            command(2),
        ];
        let sent = split(&msgs);
        assert_eq!(sent.group_starts(), vec![0, 3]);
        let mut merge = LaneMerge::default();
        let mut out = Vec::new();
        // The first frame arrives, the rest of the first GOP is reset in QUIC.
        merge.media(Lane::Video, 0, 0, key(0)).unwrap();
        for (i, c, m) in &sent.video()[3..] {
            merge.media(Lane::Video, *i, *c, m.clone()).unwrap();
        }
        for f in sent.control.iter().cloned() {
            merge.from_session_stream(f).unwrap();
        }
        drain(&mut merge, &mut out);
        assert_eq!(
            out,
            vec![key(0)],
            "the command waits for the first GOP's end"
        );
        merge
            .from_session_stream(Frame::LaneSkip {
                lane: Lane::Video,
                from: 0,
                to: 3,
            })
            .unwrap();
        // A late copy of a skipped frame is not written.
        merge.media(Lane::Video, 2, 0, inter(66)).unwrap();
        drain(&mut merge, &mut out);
        assert_eq!(out, vec![key(0), key(100), inter(133), command(2)]);
        assert!(merge.is_empty());
    }

    #[test]
    fn a_skip_that_arrives_first_drops_what_comes_later_in_its_range() {
        let mut merge = LaneMerge::default();
        merge
            .from_session_stream(Frame::LaneSkip {
                lane: Lane::Video,
                from: 2,
                to: 5,
            })
            .unwrap();
        for (i, m) in [(0, key(0)), (3, inter(99)), (1, inter(33)), (5, key(165))] {
            merge.media(Lane::Video, i, 0, m).unwrap();
        }
        let mut out = Vec::new();
        drain(&mut merge, &mut out);
        assert_eq!(out, vec![key(0), inter(33), key(165)]);
        assert!(merge.is_empty());
    }

    #[test]
    fn session_close_waits_for_the_media_sent_before_it() {
        let mut s = LaneSplitter::default();
        s.route(&key(0));
        s.route(&audio(0));
        let (a, v) = s.fence().unwrap();
        let mut merge = LaneMerge::default();
        merge
            .from_session_stream(Frame::Fence {
                audio_before: a,
                video_before: v,
            })
            .unwrap();
        let close = Frame::SessionClose {
            code: crate::wire::CloseCode::Normal,
            reason: "done".into(),
        };
        merge.from_session_stream(close.clone()).unwrap();
        assert_eq!(merge.pop(), None);
        merge.media(Lane::Audio, 0, 0, audio(0)).unwrap();
        merge.media(Lane::Video, 0, 0, key(0)).unwrap();
        assert_eq!(merge.pop(), Some(Frame::Msg(audio(0))));
        assert_eq!(merge.pop(), Some(Frame::Msg(key(0))));
        assert_eq!(merge.pop(), Some(close));
        assert_eq!(s.fence(), None, "no FENCE while nothing changed");
    }

    #[test]
    fn what_a_peer_can_make_it_hold_is_bounded() {
        let limits = MergeLimits {
            max_messages: 4,
            max_bytes: 1 << 20,
            max_skips: 2,
        };
        // Messages far ahead of a gap that never fills.
        let mut merge = LaneMerge::new(limits);
        for i in 1..=4 {
            merge.media(Lane::Video, i, 0, inter(i as u32)).unwrap();
        }
        assert!(matches!(
            merge.media(Lane::Video, 9, 0, inter(9)),
            Err(MergeError::Overloaded(_))
        ));
        assert_eq!(
            merge.media(Lane::Video, 4, 0, inter(4)),
            Err(MergeError::Duplicate(Lane::Video, 4))
        );
        // Skip ranges ahead that are never reached.
        let mut merge = LaneMerge::new(limits);
        let skip = |from| Frame::LaneSkip {
            lane: Lane::Audio,
            from,
            to: from + 1,
        };
        merge.from_session_stream(skip(10)).unwrap();
        merge.from_session_stream(skip(20)).unwrap();
        assert!(merge.from_session_stream(skip(30)).is_err());
        // Bytes.
        let mut merge = LaneMerge::new(MergeLimits {
            max_bytes: 10,
            ..limits
        });
        let big = Message::new(message_type::AUDIO, 1, 0, vec![0xaf; 11]);
        assert!(merge.media(Lane::Audio, 1, 0, big).is_err());
        assert!(matches!(
            merge.from_session_stream(Frame::Media {
                control_before: 0,
                msg: audio(0)
            }),
            Err(MergeError::Unexpected(_))
        ));
    }

    proptest::proptest! {
        /// Whatever the sender sends and resets, and in whatever order the streams deliver:
        /// every session-stream message comes out in order and after the media sent before
        /// it, every media message after the session-stream messages sent before it, each lane
        /// in index order; all audio and every GOP not reset comes out, a reset GOP at most
        /// the part of it that arrived; nothing is left waiting at the end.
        #[test]
        fn any_delivery_order_gives_a_valid_output(
            kinds in proptest::collection::vec(0u8..4, 1..120),
            resets in proptest::collection::vec((proptest::bool::ANY, 0usize..20), 0..30),
            schedule in proptest::collection::vec(0usize..64, 0..400),
        ) {
            check_delivery(&kinds, &resets, &schedule);
        }
    }

    proptest::proptest! {
        /// Skip ranges are a set: whatever ranges arrive (nested, overlapping, touching, in
        /// any order, before or after the media around them, and media inside them too),
        /// every index outside them comes out once and in order, and nothing is left waiting.
        #[test]
        fn skip_ranges_nested_or_overlapping_never_leave_a_message_stuck(
            ranges in proptest::collection::vec((0u64..200, 1u64..80), 0..12),
            order in proptest::collection::vec(0usize..1000, 0..400),
        ) {
            check_skips(&ranges, &order);
        }
    }

    fn check_skips(ranges: &[(u64, u64)], order: &[usize]) {
        const N: u64 = 300;
        let skipped = |i: u64| {
            ranges
                .iter()
                .any(|&(from, len)| (from..from + len).contains(&i))
        };
        let mut pending: Vec<Frame> = ranges
            .iter()
            .map(|&(from, len)| Frame::LaneSkip {
                lane: Lane::Audio,
                from,
                to: from + len,
            })
            .collect();
        // A peer may send indices it also skips: they may go out before their skip arrives,
        // never after, and never wait.
        let mut media: Vec<u64> = (0..N).collect();
        let mut merge = LaneMerge::default();
        let mut out = Vec::new();
        let mut order = order.iter().copied().chain(std::iter::repeat(0));
        while !(pending.is_empty() && media.is_empty()) {
            let pick = order.next().unwrap_or(0);
            if !pending.is_empty() && (media.is_empty() || pick % 3 == 0) {
                let frame = pending.remove(pick % pending.len());
                merge.from_session_stream(frame).unwrap();
            } else {
                let i = media.remove(pick % media.len());
                merge.media(Lane::Audio, i, 0, audio(i as u32)).unwrap();
            }
            drain(&mut merge, &mut out);
        }
        let got: Vec<u32> = out.iter().map(|m| m.timestamp).collect();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "in order, once: {got:?}"
        );
        for i in (0..N).filter(|&i| !skipped(i)) {
            assert!(got.contains(&(i as u32)), "{i} never came out: {got:?}");
        }
        assert!(merge.is_empty(), "left waiting");
    }

    #[test]
    fn a_skip_inside_another_still_skips_what_only_the_outer_one_names() {
        // The probe: 5..100, then 50..60; audio 70 (inside only the outer) arrives later.
        let ranges = [(5, 95), (50, 10)];
        check_skips(&ranges, &[]);
        let mut merge = LaneMerge::default();
        for (from, len) in ranges {
            let skip = Frame::LaneSkip {
                lane: Lane::Audio,
                from,
                to: from + len,
            };
            merge.from_session_stream(skip).unwrap();
        }
        merge.media(Lane::Audio, 70, 0, audio(70)).unwrap();
        assert!(merge.is_empty(), "index 70 was skipped: it must not wait");
    }

    fn check_delivery(kinds: &[u8], resets: &[(bool, usize)], schedule: &[usize]) {
        let msgs: Vec<Message> = kinds
            .iter()
            .enumerate()
            .map(|(n, &k)| {
                let ts = 10 * n as u32;
                match k {
                    0 => command(n as u8),
                    1 => audio(ts),
                    2 => key(ts),
                    _ => inter(ts),
                }
            })
            .collect();
        let Sent {
            control,
            audio: audio_stream,
            mut groups,
            handed,
        } = split(&msgs);
        let mut session: VecDeque<Frame> = control.into();
        // Older GOPs reset: the first `kept` frames of each arrive, and a LANE_SKIP follows on
        // the session stream (the sender sends it after what it sent before).
        let mut skipped = Vec::new();
        let older = groups.len().saturating_sub(1);
        for (group, &(reset, kept)) in groups.iter_mut().take(older).zip(resets) {
            if !reset {
                continue;
            }
            let (from, to) = (group[0].0, group[group.len() - 1].0 + 1);
            group.truncate(kept);
            session.push_back(Frame::LaneSkip {
                lane: Lane::Video,
                from,
                to,
            });
            skipped.push(from..to);
        }
        let mut media: Vec<(Lane, MediaStream)> = vec![(Lane::Audio, audio_stream)];
        media.extend(groups.into_iter().map(|g| (Lane::Video, g)));
        let mut merge = LaneMerge::default();
        let mut out = Vec::new();
        // Each pick delivers the next frame of one stream (0: the session stream); then every
        // stream delivers what it has left.
        let picks = schedule
            .iter()
            .copied()
            .chain((0..=media.len()).flat_map(|i| std::iter::repeat_n(i, 200)));
        for pick in picks {
            match pick % (media.len() + 1) {
                0 => {
                    if let Some(f) = session.pop_front() {
                        merge.from_session_stream(f).unwrap();
                    }
                }
                i => {
                    let (lane, stream) = &mut media[i - 1];
                    if let Some((index, control_before, msg)) = stream.pop_front() {
                        merge.media(*lane, index, control_before, msg).unwrap();
                    }
                }
            }
            while let Some(frame) = merge.pop() {
                match frame {
                    Frame::Msg(m) => out.push(m),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert!(merge.is_empty(), "something left waiting");
        let at = |m: &Message| out.iter().position(|o| o == m);
        let controls: Vec<&Handed> = handed.iter().filter(|h| h.lane.is_none()).collect();
        for h in &handed {
            let Some(pos) = at(&h.msg) else {
                let lost_ok = matches!(h.lane, Some((Lane::Video, i)) if skipped.iter().any(|r| r.contains(&i)));
                assert!(lost_ok, "{:?} never came out", h.lane);
                continue;
            };
            match h.lane {
                None => {
                    // After every media message sent before it that came out.
                    for m in &handed {
                        let before = match m.lane {
                            Some((Lane::Audio, i)) => i < h.media_before.0,
                            Some((Lane::Video, i)) => i < h.media_before.1,
                            None => false,
                        };
                        if let (true, Some(p)) = (before, at(&m.msg)) {
                            assert!(p < pos, "a command overtook media sent before it");
                        }
                    }
                }
                Some(_) if h.control_before > 0 => {
                    let command = controls[h.control_before as usize - 1];
                    assert!(
                        at(&command.msg).expect("out") < pos,
                        "media before its command"
                    );
                }
                Some(_) => {}
            }
        }
        let positions: Vec<usize> = controls.iter().map(|c| at(&c.msg).expect("out")).collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "session stream out of order"
        );
        for kind in [message_type::AUDIO, message_type::VIDEO] {
            let ts: Vec<u32> = out
                .iter()
                .filter(|m| m.type_id == kind)
                .map(|m| m.timestamp)
                .collect();
            assert!(
                ts.windows(2).all(|w| w[0] < w[1]),
                "a lane out of order: {ts:?}"
            );
        }
    }

    #[test]
    fn commands_waiting_behind_a_fence_count_against_the_byte_bound() {
        let mut merge = LaneMerge::new(MergeLimits {
            max_bytes: 100,
            ..MergeLimits::default()
        });
        // A fence for media that never comes, then commands behind it.
        merge
            .from_session_stream(Frame::Fence {
                audio_before: 0,
                video_before: 1,
            })
            .unwrap();
        let big = |n| Message::new(20, 0, 0, vec![n; 60]);
        merge.from_session_stream(Frame::Msg(big(1))).unwrap();
        assert_eq!(merge.bytes(), 60);
        assert_eq!(
            merge.from_session_stream(Frame::Msg(big(2))),
            Err(MergeError::Overloaded("bytes"))
        );
        // Once the fence is passed, what goes out is given back.
        let mut merge = LaneMerge::default();
        merge.from_session_stream(Frame::Msg(big(3))).unwrap();
        assert_eq!(merge.pop(), Some(Frame::Msg(big(3))));
        assert_eq!(merge.bytes(), 0);
    }

    #[test]
    fn timestamps_compare_across_a_wrap() {
        assert!(timestamp_before(u32::MAX - 5, 3));
        assert!(!timestamp_before(3, u32::MAX - 5));
        assert!(!timestamp_before(7, 7));
    }
}
