//! How late a source's media reaches a hop against the source's own clock, so that a hop's
//! latency budget counts from when a frame was due rather than from when it reached the hop.
//!
//! A live source's clock and ours run at the same rate: a frame due at the clock's start plus
//! its timestamp reaches the hop some time after that. The earliest (arrival less timestamp)
//! seen is the best guess of when the source's clock started on ours, and each frame's own
//! (arrival less timestamp) beyond it is how late it came. The pusher's lateness is real
//! latency to a viewer: ffmpeg's `-re` sends frames up to about 40 ms after they are due (it
//! polls every 10 ms and its muxer holds video for the audio beside it), and counted from the
//! pusher's clock GOP tails kept to the budget arrived that much past it (BENCHMARKS.md, issue
//! 23's stop 38). The earliest is kept over [`SPAN`] to twice that, so a clock that drifts
//! against ours, or a timestamp that jumps, is forgotten within seconds.

use std::time::{Duration, Instant};

/// Each span of the earliest offset's record; the record covers the current span and the one
/// before.
pub const SPAN: Duration = Duration::from_secs(5);

/// The earliest (arrival less timestamp) of a source's recent frames, and each frame's lateness
/// against it.
#[derive(Debug, Default, Clone)]
pub struct SourceLateness {
    /// Our clock's zero for the offsets.
    origin: Option<Instant>,
    /// When the current span began.
    span_started: Option<Instant>,
    /// The earliest offset in the current span and in the one before, µs.
    current: Option<i64>,
    previous: Option<i64>,
}

impl SourceLateness {
    /// Notes a frame with timestamp `ts_ms` that arrived at `now` and says how late it came:
    /// its offset beyond the earliest in the record (zero for the earliest itself).
    pub fn note(&mut self, ts_ms: u32, now: Instant) -> Duration {
        let origin = *self.origin.get_or_insert(now);
        let since = now.saturating_duration_since(origin).as_micros() as i64;
        let offset = since - i64::from(ts_ms) * 1000;
        let started = *self.span_started.get_or_insert(now);
        if now.saturating_duration_since(started) >= SPAN {
            self.previous = self.current.take();
            self.span_started = Some(now);
        }
        let current = self.current.map_or(offset, |c| c.min(offset));
        self.current = Some(current);
        let earliest = self.previous.map_or(current, |p| p.min(current));
        Duration::from_micros((offset - earliest) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_frame_is_as_late_as_its_offset_beyond_the_earliest() {
        let t0 = Instant::now();
        let mut clock = SourceLateness::default();
        assert_eq!(clock.note(0, t0), Duration::ZERO);
        assert_eq!(clock.note(33, t0 + 63 * MS), 30 * MS);
        assert_eq!(clock.note(66, t0 + 66 * MS), Duration::ZERO);
        // A frame earlier than every one before moves the clock's start: it is on time.
        assert_eq!(clock.note(100, t0 + 95 * MS), Duration::ZERO);
        assert_eq!(clock.note(133, t0 + 133 * MS), 5 * MS);
    }

    #[test]
    fn the_earliest_is_forgotten_after_two_spans() {
        let t0 = Instant::now();
        let mut clock = SourceLateness::default();
        // A burst ahead of the clock at the start: 500 ms of media at once.
        assert_eq!(clock.note(500, t0), Duration::ZERO);
        // From then on frames come on the clock that started at t0, 500 ms "late".
        let at = |ms: u32| t0 + Duration::from_millis(u64::from(ms));
        assert_eq!(clock.note(600, at(600)), 500 * MS);
        assert_eq!(
            clock.note(5600, at(5600)),
            500 * MS,
            "still in the span before"
        );
        // Two spans on, the burst's offset has gone.
        assert_eq!(clock.note(10_700, at(10_700)), Duration::ZERO);
        assert_eq!(clock.note(10_733, at(10_743)), 10 * MS);
    }

    #[test]
    fn a_timestamp_that_jumps_back_reads_late_until_the_record_forgets() {
        let t0 = Instant::now();
        let mut clock = SourceLateness::default();
        clock.note(90_000, t0);
        // The source starts its clock again at zero.
        let late = clock.note(0, t0 + 10 * MS);
        assert_eq!(late, 90_010 * MS);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(
            clock.note(5_040, at(5_050)),
            90_010 * MS,
            "the span before holds it"
        );
        assert_eq!(clock.note(10_100, at(10_110)), Duration::ZERO);
    }
}
