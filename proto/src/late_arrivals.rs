//! The receiving hop's backstop for the latency budget: media that arrives later than the
//! budget, compared with how early the stream has arrived lately, is dropped before it is
//! written to the RTMP peer, video a GOP tail at a time (nothing after a dropped frame is
//! written until the next key frame), audio frame by frame. The sending hop's media queue
//! drops what goes stale while it waits there; what was already in QUIC's send buffer when a
//! path went dark is sent when the path returns, seconds late, and only the receiver can see
//! that. Time is passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::gop::GopGate;
use crate::media_queue::Dropped;
use crate::message::{message_type, MediaKind, Message};

/// How many of a track's last arrivals the earliest is taken from (about 10 s of video, 8 s
/// of audio): counted in arrivals, not time, so that an outage of any length is judged
/// against the arrivals before it, and a burst at a stream's start ages out.
pub const LOOKBACK: u64 = 300;

/// How long after the start nothing is judged or learned: an origin that sends a new player
/// its cached GOP at once (SRS's GOP cache) would otherwise make every frame after the burst
/// look late.
pub const WARMUP: Duration = Duration::from_secs(3);

/// A stream's media arrivals, judged against the budget; see the module docs.
#[derive(Debug)]
pub struct LateArrivals {
    budget: Duration,
    start: Instant,
    tracks: [Track; 2],
    /// Video: which tracks' frames may be written (each from its own key frame after a drop).
    gate: GopGate,
    dropped: Dropped,
}

#[derive(Debug, Default)]
struct Track {
    /// Arrivals so far.
    count: u64,
    /// (arrival number, arrival minus timestamp in ms), increasing in both: a sliding minimum.
    earliest: VecDeque<(u64, i64)>,
    /// The last timestamp, unwrapped across 2^32 ms.
    last: Option<i64>,
}

impl LateArrivals {
    /// Judges against `budget` from `now` on.
    pub fn new(budget: Duration, now: Instant) -> Self {
        LateArrivals {
            budget,
            start: now,
            // Video passes from its first frame on: a stream joined mid-GOP (or judged from
            // the end of the warm-up) is not held to a key frame until something is dropped.
            tracks: [Track::default(), Track::default()],
            gate: GopGate::open(),
            dropped: Dropped::default(),
        }
    }

    /// Whether `msg`, arriving at `now`, is written on; every message but audio and video
    /// frames is.
    pub fn admit(&mut self, msg: &Message, now: Instant) -> bool {
        let Some(packet) = msg.media_packet() else {
            return true;
        };
        let kind = packet.kind();
        let index = match kind {
            MediaKind::Audio => 0,
            MediaKind::VideoFrame | MediaKind::VideoKeyframe => 1,
            MediaKind::Header | MediaKind::Other => return true,
        };
        let since_start = now.saturating_duration_since(self.start);
        if since_start < WARMUP {
            return true;
        }
        let arrived = since_start.as_millis() as i64;
        let late = self.tracks[index].lateness(msg.timestamp, arrived);
        let stale = late > self.budget.as_millis() as i64;
        let pass = match kind {
            MediaKind::Audio => !stale,
            _ if stale => {
                // Every later frame of each track references this one or what came before.
                self.gate.close_tracks(&packet.tracks);
                false
            }
            _ => self.gate.admit(&packet),
        };
        if !pass {
            self.dropped.bytes += msg.payload.len() as u64;
            if msg.type_id == message_type::AUDIO {
                self.dropped.audio_frames += 1;
            } else {
                self.dropped.video_frames += 1;
                self.dropped.gops += u64::from(kind == MediaKind::VideoKeyframe);
            }
        }
        pass
    }

    /// What was dropped so far.
    pub fn dropped(&self) -> Dropped {
        self.dropped
    }
}

impl Track {
    /// Notes an arrival and returns how much later than the earliest of the last
    /// [`LOOKBACK`] arrivals it is, ms.
    fn lateness(&mut self, timestamp: u32, arrived: i64) -> i64 {
        let ts = match self.last {
            None => i64::from(timestamp),
            Some(last) => {
                // Wrapping difference: forward across 2^32, or a step back.
                let step = i64::from(timestamp.wrapping_sub(last as u32) as i32);
                if step < 0 {
                    // A track's timestamps never go back unless its clock restarted (a
                    // pusher that reconnected): what came before tells nothing.
                    self.earliest.clear();
                }
                last + step
            }
        };
        self.count += 1;
        self.last = Some(ts);
        let offset = arrived - ts;
        while self.earliest.back().is_some_and(|&(_, o)| o >= offset) {
            self.earliest.pop_back();
        }
        self.earliest.push_back((self.count, offset));
        while self
            .earliest
            .front()
            .is_some_and(|&(n, _)| n + LOOKBACK <= self.count)
        {
            self.earliest.pop_front();
        }
        let best = self.earliest.front().map_or(offset, |&(_, o)| o);
        offset - best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A start `WARMUP` ago, so that the tests' arrivals are judged.
    fn judged_from(t0: Instant, budget_ms: u64) -> LateArrivals {
        LateArrivals::new(Duration::from_millis(budget_ms), t0 - WARMUP)
    }

    fn key(ts: u32) -> Message {
        Message::new(9, 1, ts, vec![0x17, 1, 0, 0, 0])
    }
    fn inter(ts: u32) -> Message {
        Message::new(9, 1, ts, vec![0x27, 1, 0, 0, 0])
    }
    fn audio(ts: u32) -> Message {
        Message::new(8, 1, ts, vec![0xaf, 1, 1])
    }

    #[test]
    fn on_time_media_passes_whatever_its_constant_delay() {
        let t0 = Instant::now();
        let mut l = judged_from(t0, 500);
        // 2 s of constant delay and jitter under the budget: all of it passes.
        for i in 0..300u32 {
            let jitter = (i % 7) * 40;
            let at = t0 + (2000 + i * 33 + jitter) * MS;
            let m = if i % 60 == 0 {
                key(i * 33)
            } else {
                inter(i * 33)
            };
            assert!(l.admit(&m, at), "frame {i}");
            assert!(l.admit(&audio(i * 33), at));
        }
        assert_eq!(l.dropped(), Dropped::default());
    }

    #[test]
    fn what_arrives_late_after_an_outage_is_dropped_to_the_next_key_frame() {
        let t0 = Instant::now();
        let mut l = judged_from(t0, 1000);
        for i in 0..90u32 {
            let at = t0 + (i * 33) * MS;
            let m = if i % 30 == 0 {
                key(i * 33)
            } else {
                inter(i * 33)
            };
            assert!(l.admit(&m, at));
            assert!(l.admit(&audio(i * 33), at));
        }
        // Dark for 10 s; then what waited in the sender's buffer arrives, 10 s late.
        let back = t0 + 13_000 * MS;
        assert!(!l.admit(&inter(90 * 33), back));
        assert!(!l.admit(&inter(91 * 33), back));
        assert!(!l.admit(&audio(91 * 33), back));
        // Fresh frames of that GOP still cannot be written (their references are gone).
        assert!(!l.admit(&inter(12_950), back + 20 * MS));
        // The next key frame, on time: writing resumes.
        assert!(l.admit(&key(12_990), back + 30 * MS));
        assert!(l.admit(&inter(13_023), back + 60 * MS));
        assert!(l.admit(&audio(13_023), back + 60 * MS));
        assert_eq!(l.dropped().video_frames, 3);
        assert_eq!(l.dropped().audio_frames, 1);
        // Headers and commands always pass.
        let header = Message::new(9, 1, 0, vec![0x17, 0, 0, 0, 0]);
        assert!(l.admit(&header, back + 20_000 * MS));
    }

    #[test]
    fn timestamps_that_wrap_or_step_back_are_not_lateness() {
        let t0 = Instant::now();
        let mut l = judged_from(t0, 300);
        let start = u32::MAX - 500;
        for i in 0..60u32 {
            let at = t0 + (i * 33) * MS;
            assert!(l.admit(&audio(start.wrapping_add(i * 33)), at), "{i}");
        }
        // The pusher restarts its clock at 0.
        assert!(l.admit(&audio(0), t0 + 2000 * MS));
        assert!(l.admit(&audio(33), t0 + 2033 * MS));
    }

    #[test]
    fn video_judged_from_mid_gop_passes_until_something_is_dropped() {
        // The first frame judged after the warm-up is an inter frame: it passes.
        let t0 = Instant::now();
        let mut l = LateArrivals::new(Duration::from_millis(500), t0);
        assert!(l.admit(&key(0), t0));
        let after = t0 + WARMUP + 10 * MS;
        assert!(l.admit(&inter(3010), after));
        assert!(l.admit(&inter(3043), after + 33 * MS));
    }

    #[test]
    fn nothing_is_judged_in_the_warmup() {
        // An origin's GOP cache: 2 s at once, then real time; judged only after the warmup.
        let t0 = Instant::now();
        let mut l = LateArrivals::new(Duration::from_millis(500), t0);
        for i in 0..60u32 {
            assert!(l.admit(&audio(i * 33), t0));
        }
        for i in 60..200u32 {
            let at = t0 + ((i - 60) * 33) * MS;
            assert!(l.admit(&audio(i * 33), at), "{i}");
        }
    }

    #[test]
    fn a_burst_at_the_start_ages_out() {
        // An encoder that sends its first 2 s at once, then real time: at first everything
        // after the burst looks 2 s late and is dropped; after the lookback it passes.
        let t0 = Instant::now();
        let mut l = judged_from(t0, 1000);
        for i in 0..60u32 {
            l.admit(&audio(i * 33), t0);
        }
        assert!(!l.admit(&audio(60 * 33), t0 + 4000 * MS));
        // Real time from there: once the burst's arrivals are out of the lookback, it passes.
        let mut passed = 0;
        for i in 61..(61 + LOOKBACK as u32 + 10) {
            let at = t0 + (4000 + (i - 60) * 33) * MS;
            passed += u32::from(l.admit(&audio(i * 33), at));
        }
        assert!(passed >= 10, "{passed}");
    }
}
