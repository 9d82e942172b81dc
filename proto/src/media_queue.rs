//! The media queue a hop owns between reading one side and writing the other: messages wait
//! here, not in sockets or QUIC buffers, so a policy can see and drop what went stale.
//!
//! Three lanes: control (commands, metadata, sequence headers and every other non-media
//! message, never dropped), audio, and video grouped by GOP (a key frame starts a group).
//! [`MediaQueue::pop`] hands out audio ahead of video, but nothing overtakes a control message
//! that arrived before it, and a control message waits for the media that arrived before it
//! (a new sequence header must follow the frames coded with the old one).
//!
//! A message is stale when it has waited longer than the latency budget, in wall time since it
//! arrived or in media time behind the newest timestamp of its lane, whichever is more. A stale
//! video frame drops the rest of its GOP (every later frame of the group references it or a
//! frame before it) and, if no newer key frame is queued, every inter frame until one arrives:
//! each frame handed out decodes. Stale audio frames are dropped one by one. Past the byte
//! bound the oldest GOP (or the oldest audio) goes first. Time is always passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::message::{message_type, MediaKind, Message};

/// What a [`MediaQueue`] keeps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Media older than this is dropped.
    pub budget: Duration,
    /// Payload bytes of media the queue holds at most (control messages are not counted).
    pub max_bytes: usize,
}

/// Why media was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Older than the latency budget, or after such a frame in its GOP.
    Stale,
    /// The byte bound was reached.
    Overflow,
}

/// What was dropped for one reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Video frames.
    pub video_frames: u64,
    /// GOPs whose frames were dropped (whole or from some frame on).
    pub gops: u64,
    /// Audio frames.
    pub audio_frames: u64,
    /// Payload bytes.
    pub bytes: u64,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    arrived: Instant,
    msg: Message,
}

/// The frames of one group still waiting.
#[derive(Debug, Default)]
struct Gop {
    frames: VecDeque<Entry>,
}

/// A hop's queue of one session's messages in one flow; see the module docs.
#[derive(Debug)]
pub struct MediaQueue {
    limits: QueueLimits,
    next_seq: u64,
    control: VecDeque<Entry>,
    audio: VecDeque<Entry>,
    video: VecDeque<Gop>,
    /// Whether inter frames may be queued: nothing of their group was dropped (a stream that
    /// starts mid-group is passed on as it comes until something is dropped).
    gop_open: bool,
    media_bytes: usize,
    control_bytes: usize,
    /// Video frames waiting, in every group.
    video_frames: usize,
    newest_audio: Option<u32>,
    newest_video: Option<u32>,
    stale: Dropped,
    overflow: Dropped,
}

impl MediaQueue {
    /// An empty queue.
    pub fn new(limits: QueueLimits) -> Self {
        MediaQueue {
            limits,
            next_seq: 0,
            control: VecDeque::new(),
            audio: VecDeque::new(),
            video: VecDeque::new(),
            gop_open: true,
            media_bytes: 0,
            control_bytes: 0,
            video_frames: 0,
            newest_audio: None,
            newest_video: None,
            stale: Dropped::default(),
            overflow: Dropped::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    /// Changes the latency budget (a hop leaves room in it for the path's round trip, which
    /// changes).
    pub fn set_budget(&mut self, budget: Duration) {
        self.limits.budget = budget;
    }

    /// Takes in a message that arrived at `now`.
    pub fn push(&mut self, msg: Message, now: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let kind = msg.media_kind();
        let entry = Entry {
            seq,
            arrived: now,
            msg,
        };
        match kind {
            MediaKind::VideoKeyframe => {
                self.newest_video = Some(entry.msg.timestamp);
                self.gop_open = true;
                self.media_bytes += entry.msg.payload.len();
                self.video_frames += 1;
                self.video.push_back(Gop {
                    frames: VecDeque::from([entry]),
                });
            }
            MediaKind::VideoFrame if !self.gop_open => {
                // Its group's key frame (or an earlier frame of it) was dropped.
                self.count(DropReason::Stale, &entry.msg, false);
            }
            MediaKind::VideoFrame => {
                self.newest_video = Some(entry.msg.timestamp);
                self.media_bytes += entry.msg.payload.len();
                self.video_frames += 1;
                // A group whose earlier frames were all sent continues in a new container.
                match self.video.back_mut() {
                    Some(gop) => gop.frames.push_back(entry),
                    None => self.video.push_back(Gop {
                        frames: VecDeque::from([entry]),
                    }),
                }
            }
            MediaKind::Audio => {
                self.newest_audio = Some(entry.msg.timestamp);
                self.media_bytes += entry.msg.payload.len();
                self.audio.push_back(entry);
            }
            MediaKind::SequenceHeader | MediaKind::Other => {
                self.control_bytes += entry.msg.payload.len();
                self.control.push_back(entry)
            }
        }
        // The age limit holds whether or not anything is taken out: a tunnel that takes
        // nothing for a whole blackout leaves about a budget of media here, not `max_bytes`.
        self.expire(now);
        while self.media_bytes > self.limits.max_bytes && self.drop_oldest_media() {}
    }

    /// Messages waiting, of every kind.
    pub fn len(&self) -> usize {
        self.control.len() + self.audio.len() + self.video_frames
    }

    /// The next message to hand on at `now`, after dropping what went stale; `None` when
    /// nothing waits.
    pub fn pop(&mut self, now: Instant) -> Option<Message> {
        self.expire(now);
        let barrier = self.control.front().map_or(u64::MAX, |e| e.seq);
        let audio = self.audio.front().map(|e| e.seq).filter(|&s| s < barrier);
        let video = self.video_head().map(|e| e.seq).filter(|&s| s < barrier);
        let media = if audio.is_some() {
            self.audio.pop_front()
        } else if video.is_some() {
            self.video_frames -= 1;
            self.pop_video()
        } else {
            let entry = self.control.pop_front()?;
            self.control_bytes -= entry.msg.payload.len();
            return Some(entry.msg);
        }?;
        self.media_bytes -= media.msg.payload.len();
        Some(media.msg)
    }

    /// When the oldest waiting message arrived.
    pub fn oldest(&self) -> Option<Instant> {
        [self.control.front(), self.audio.front(), self.video_head()]
            .into_iter()
            .flatten()
            .map(|e| e.arrived)
            .min()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.control.is_empty() && self.audio.is_empty() && self.video_head().is_none()
    }

    /// Payload bytes of media waiting.
    pub fn media_bytes(&self) -> usize {
        self.media_bytes
    }

    /// Payload bytes of every message waiting, control messages included.
    pub fn bytes(&self) -> usize {
        self.media_bytes + self.control_bytes
    }

    /// What was dropped so far for `reason`.
    pub fn dropped(&self, reason: DropReason) -> Dropped {
        match reason {
            DropReason::Stale => self.stale,
            DropReason::Overflow => self.overflow,
        }
    }

    fn video_head(&self) -> Option<&Entry> {
        self.video.iter().find_map(|g| g.frames.front())
    }

    fn pop_video(&mut self) -> Option<Entry> {
        while let Some(gop) = self.video.front_mut() {
            if let Some(entry) = gop.frames.pop_front() {
                if gop.frames.is_empty() && self.video.len() > 1 {
                    self.video.pop_front();
                }
                return Some(entry);
            }
            self.video.pop_front();
        }
        None
    }

    fn is_stale(&self, entry: &Entry, newest: Option<u32>, now: Instant) -> bool {
        let waited = now.saturating_duration_since(entry.arrived);
        let behind = newest.map_or(0, |n| n.wrapping_sub(entry.msg.timestamp));
        // A timestamp jump backwards reads as a huge lag: only trust lags under 2^31 ms.
        let behind = if behind < 1 << 31 { behind } else { 0 };
        waited.max(Duration::from_millis(u64::from(behind))) > self.limits.budget
    }

    fn expire(&mut self, now: Instant) {
        while let Some(entry) = self.audio.front() {
            if !self.is_stale(entry, self.newest_audio, now) {
                break;
            }
            let entry = self.audio.pop_front().expect("front exists");
            self.media_bytes -= entry.msg.payload.len();
            self.count(DropReason::Stale, &entry.msg, false);
        }
        while let Some(head) = self.video_head() {
            if !self.is_stale(head, self.newest_video, now) {
                break;
            }
            self.drop_first_gop(DropReason::Stale);
        }
    }

    /// Drops every waiting frame of the oldest group; if it was the newest, inter frames are
    /// dropped until the next key frame.
    fn drop_first_gop(&mut self, reason: DropReason) {
        while self.video.front().is_some_and(|g| g.frames.is_empty()) {
            self.video.pop_front();
        }
        let Some(gop) = self.video.pop_front() else {
            return;
        };
        if self.video.is_empty() {
            self.gop_open = false;
        }
        let mut first = true;
        self.video_frames -= gop.frames.len();
        for entry in gop.frames {
            self.media_bytes -= entry.msg.payload.len();
            self.count(reason, &entry.msg, first);
            first = false;
        }
    }

    /// Drops the oldest media for the byte bound: the oldest GOP, or the oldest audio frame
    /// when it is older than any waiting video. `false` when no media is left.
    fn drop_oldest_media(&mut self) -> bool {
        let audio = self.audio.front().map(|e| e.seq);
        let video = self.video_head().map(|e| e.seq);
        match (audio, video) {
            (Some(a), v) if v.is_none_or(|v| a < v) => {
                let entry = self.audio.pop_front().expect("front exists");
                self.media_bytes -= entry.msg.payload.len();
                self.count(DropReason::Overflow, &entry.msg, false);
                true
            }
            (_, Some(_)) => {
                self.drop_first_gop(DropReason::Overflow);
                true
            }
            _ => false,
        }
    }

    fn count(&mut self, reason: DropReason, msg: &Message, new_gop: bool) {
        let d = match reason {
            DropReason::Stale => &mut self.stale,
            DropReason::Overflow => &mut self.overflow,
        };
        d.bytes += msg.payload.len() as u64;
        if msg.type_id == message_type::AUDIO {
            d.audio_frames += 1;
        } else {
            d.video_frames += 1;
            d.gops += u64::from(new_gop);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn key(ts: u32) -> Message {
        Message::new(9, 1, ts, vec![0x17, 1, 0, 0, 0, 1, 2, 3])
    }
    fn inter(ts: u32) -> Message {
        Message::new(9, 1, ts, vec![0x27, 1, 0, 0, 0, 4, 5])
    }
    fn audio(ts: u32) -> Message {
        Message::new(8, 1, ts, vec![0xaf, 1, 9, 9])
    }
    fn avc_header() -> Message {
        Message::new(9, 1, 0, vec![0x17, 0, 0, 0, 0, 1])
    }
    fn metadata() -> Message {
        Message::new(18, 1, 0, vec![2, 0, 1, b'x'])
    }

    fn queue(budget_ms: u64) -> MediaQueue {
        MediaQueue::new(QueueLimits {
            budget: Duration::from_millis(budget_ms),
            max_bytes: 1 << 20,
        })
    }

    fn drain(q: &mut MediaQueue, now: Instant) -> Vec<(u8, u32)> {
        std::iter::from_fn(|| q.pop(now))
            .map(|m| (m.type_id, m.timestamp))
            .collect()
    }

    #[test]
    fn audio_goes_ahead_of_video_but_nothing_overtakes_control() {
        let t0 = Instant::now();
        let mut q = queue(1000);
        q.push(metadata(), t0);
        q.push(avc_header(), t0);
        q.push(key(0), t0);
        q.push(inter(33), t0);
        q.push(audio(0), t0);
        q.push(audio(21), t0);
        // A new sequence header mid-stream: the frames before it go first.
        q.push(avc_header(), t0);
        q.push(key(66), t0);
        q.push(audio(42), t0);
        let order = drain(&mut q, t0);
        assert_eq!(
            order,
            [
                (18, 0),
                (9, 0),
                (8, 0),
                (8, 21),
                (9, 0),
                (9, 33),
                (9, 0),
                (8, 42),
                (9, 66)
            ]
        );
        assert!(q.is_empty());
        assert_eq!(q.media_bytes(), 0);
    }

    #[test]
    fn a_stale_frame_drops_its_gop_tail_and_resumes_at_the_next_key_frame() {
        let t0 = Instant::now();
        let mut q = queue(500);
        q.push(avc_header(), t0);
        q.push(key(0), t0);
        q.push(inter(33), t0);
        // The first two go out; then the link stalls for a second while frames arrive.
        assert_eq!(drain(&mut q, t0).len(), 3);
        for i in 2..30u32 {
            q.push(inter(i * 33), t0 + i * 33 * MS);
        }
        let later = t0 + 1000 * MS;
        // Frames older than 500 ms at `later` are stale: their GOP goes, and inter frames keep
        // being dropped until a key frame.
        assert_eq!(drain(&mut q, later), []);
        q.push(inter(1000), later);
        q.push(key(1033), later);
        q.push(inter(1066), later);
        assert_eq!(drain(&mut q, later), [(9, 1033), (9, 1066)]);
        let stale = q.dropped(DropReason::Stale);
        assert_eq!(stale.video_frames, 28 + 1);
        assert_eq!(stale.gops, 1);
        assert_eq!(q.dropped(DropReason::Overflow), Dropped::default());
    }

    #[test]
    fn headers_metadata_and_commands_are_never_dropped() {
        let t0 = Instant::now();
        let mut q = queue(100);
        q.push(metadata(), t0);
        q.push(avc_header(), t0);
        q.push(key(0), t0);
        let command = Message::new(20, 0, 0, vec![2, 0, 1, b'c']);
        q.push(command.clone(), t0);
        let late = t0 + 10_000 * MS;
        let order = drain(&mut q, late);
        assert_eq!(
            order,
            [(18, 0), (9, 0), (20, 0)],
            "the key frame went stale"
        );
    }

    #[test]
    fn stale_audio_is_dropped_frame_by_frame() {
        let t0 = Instant::now();
        let mut q = queue(200);
        for i in 0..10u32 {
            q.push(audio(i * 21), t0 + i * 21 * MS);
        }
        // At 250 ms the frames due before 50 ms are stale.
        let got = drain(&mut q, t0 + 250 * MS);
        assert_eq!(got.first(), Some(&(8, 63)));
        assert_eq!(q.dropped(DropReason::Stale).audio_frames, 3);
    }

    #[test]
    fn bytes_are_bounded_by_dropping_the_oldest_gop() {
        let t0 = Instant::now();
        let mut q = MediaQueue::new(QueueLimits {
            budget: Duration::from_secs(60),
            max_bytes: 40,
        });
        q.push(avc_header(), t0);
        for gop in 0..4u32 {
            q.push(key(gop * 100), t0);
            q.push(inter(gop * 100 + 33), t0);
        }
        assert!(q.media_bytes() <= 40, "{}", q.media_bytes());
        let order = drain(&mut q, t0);
        // Every frame handed out follows its key frame: whole groups were dropped.
        assert_eq!(order[0], (9, 0), "the header is kept");
        let frames: Vec<u32> = order[1..].iter().map(|&(_, ts)| ts).collect();
        assert_eq!(frames, [200, 233, 300, 333]);
        assert_eq!(q.dropped(DropReason::Overflow).gops, 2);
    }

    #[test]
    fn media_time_lag_counts_even_when_frames_arrive_at_once() {
        // A burst of three seconds of frames arriving together (a pusher catching up): by
        // media time the first ones are already stale.
        let t0 = Instant::now();
        let mut q = queue(1000);
        q.push(key(0), t0);
        for i in 1..90u32 {
            q.push(inter(i * 33), t0);
        }
        q.push(key(2970), t0);
        let order = drain(&mut q, t0);
        assert_eq!(order, [(9, 2970)]);
    }

    use proptest::prelude::*;

    proptest! {
        /// Whatever arrives when, and whenever the writer takes: control messages all come
        /// out in order and never behind media that arrived after them; an inter frame comes
        /// out only if the video frame before it did; the byte bound holds; nothing is lost
        /// from the accounting.
        #[test]
        fn invariants_hold_for_any_arrivals(
            steps in prop::collection::vec((0u8..6, 0u64..400, any::<bool>()), 1..300),
            budget in 50u64..2000,
            max_bytes in 20usize..400,
        ) {
            let t0 = Instant::now();
            let mut q = MediaQueue::new(QueueLimits {
                budget: Duration::from_millis(budget),
                max_bytes,
            });
            let (mut now, mut ts) = (0u64, 0u32);
            let mut pushed_video: Vec<(u32, bool)> = Vec::new();
            let mut pushed_control = Vec::new();
            let (mut popped, mut popped_control) = (Vec::new(), Vec::new());
            for (kind, advance, take) in steps {
                now += advance;
                ts += advance as u32 + 1;
                let at = t0 + Duration::from_millis(now);
                let msg = match kind {
                    0 => key(ts),
                    1 | 2 => inter(ts),
                    3 => audio(ts),
                    4 => avc_header(),
                    _ => Message::new(20, 0, ts, vec![2, 0, 1, b'c']),
                };
                match kind {
                    0 => pushed_video.push((ts, true)),
                    1 | 2 => pushed_video.push((ts, false)),
                    4 | 5 => pushed_control.push((msg.type_id, msg.timestamp)),
                    _ => {}
                }
                q.push(msg, at);
                prop_assert!(q.media_bytes() <= max_bytes);
                if take {
                    while let Some(m) = q.pop(at) {
                        popped.push(m);
                    }
                }
            }
            let end = t0 + Duration::from_millis(now);
            while let Some(m) = q.pop(end) {
                popped.push(m);
            }
            prop_assert_eq!(q.media_bytes(), 0);
            prop_assert_eq!(q.len(), 0);
            for m in &popped {
                let k = m.media_kind();
                if k == MediaKind::SequenceHeader || m.type_id == 20 {
                    popped_control.push((m.type_id, m.timestamp));
                }
            }
            prop_assert_eq!(&popped_control, &pushed_control, "control never dropped or reordered");
            // Each inter frame handed out follows the video frame pushed just before it (the
            // stream's very first frame has no reference to lose).
            let popped_video: Vec<u32> = popped
                .iter()
                .filter(|m| matches!(m.media_kind(), MediaKind::VideoFrame | MediaKind::VideoKeyframe))
                .map(|m| m.timestamp)
                .collect();
            for (i, &t) in popped_video.iter().enumerate() {
                let at = pushed_video.iter().position(|&(p, _)| p == t).unwrap();
                if !pushed_video[at].1 {
                    prop_assert!(at == 0 || (i > 0 && popped_video[i - 1] == pushed_video[at - 1].0),
                        "inter frame {} without its reference", t);
                }
            }
        }
    }
}
