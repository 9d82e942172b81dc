//! The GOP rule every hop that drops video keeps to ([`GopGate`]): after a drop, each track's
//! frames pass again from that track's own next key frame, so every frame handed on decodes;
//! and the one track whose key frames open a new group (the lead) for everything that groups
//! video (the media queue, the lanes); and when a group goes stale ([`older_group_budget`],
//! [`past_budget`]), the one expiry rule of the queue and the lanes.

use std::time::Duration;

use crate::media_packet::{Media, MediaPacket, PacketType, TrackSet};

/// Which video tracks may pass, and which track leads the groups; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GopGate {
    /// The track whose key frames open groups: the first track a key frame carried.
    lead: Option<u8>,
    /// Every track waits for its key frame but those in `opened` (after [`GopGate::close`]).
    all_wait: bool,
    /// While `all_wait`: the tracks whose key frame came since.
    opened: TrackSet,
    /// While not `all_wait`: the tracks that wait for their key frame.
    waiting: TrackSet,
}

impl Default for GopGate {
    fn default() -> Self {
        GopGate::open()
    }
}

impl GopGate {
    /// A gate that passes every frame until it is closed: a stream joined in the middle of a
    /// group is passed as it comes until something is dropped.
    pub fn open() -> Self {
        GopGate {
            lead: None,
            all_wait: false,
            opened: TrackSet::default(),
            waiting: TrackSet::default(),
        }
    }

    /// A gate that passes each track from its next key frame (a resumed or late-joined
    /// stream).
    pub fn waiting() -> Self {
        let mut gate = GopGate::open();
        gate.close();
        gate
    }

    /// Something was dropped: every track waits for its next key frame.
    pub fn close(&mut self) {
        self.all_wait = true;
        self.opened = TrackSet::default();
    }

    /// Only `tracks` wait for their next key frame (their frames were dropped, the others'
    /// were not).
    pub fn close_tracks(&mut self, tracks: &TrackSet) {
        if self.all_wait {
            self.opened = self.opened.difference(tracks);
        } else {
            self.waiting = self.waiting.union(tracks);
        }
    }

    /// Whether the video frame `p` passes (anything but a coded video frame does); a key
    /// frame opens its tracks.
    pub fn admit(&mut self, p: &MediaPacket) -> bool {
        if p.media != Media::Video || p.packet != PacketType::CodedFrames {
            return true;
        }
        if p.key_frame {
            self.lead.get_or_insert(p.tracks.first().unwrap_or(0));
            if self.all_wait {
                self.opened = self.opened.union(&p.tracks);
            } else {
                self.waiting = self.waiting.difference(&p.tracks);
            }
            return true;
        }
        if self.all_wait {
            self.opened.is_superset(&p.tracks)
        } else {
            self.waiting.is_disjoint(&p.tracks)
        }
    }

    /// Whether the video frame `p` is a key frame that opens a new group: it carries the lead
    /// track (the first track a key frame carried). Key frames of the other tracks stay in
    /// the group they arrive in (an encoder aligns its tracks' key frames; where it does not,
    /// [`GopGate::admit`] still holds each track to its own).
    pub fn starts_group(&mut self, p: &MediaPacket) -> bool {
        if p.media != Media::Video || p.packet != PacketType::CodedFrames || !p.key_frame {
            return false;
        }
        let lead = *self.lead.get_or_insert(p.tracks.first().unwrap_or(0));
        p.tracks.contains(lead)
    }

    /// The lead track, once a key frame was seen.
    pub fn lead(&self) -> Option<u8> {
        self.lead
    }

    /// Whether `track`'s inter frames wait for its next key frame.
    pub fn waits(&self, track: u8) -> bool {
        if self.all_wait {
            !self.opened.contains(track)
        } else {
            self.waiting.contains(track)
        }
    }
}

/// Whether `msg` is a video key frame (coded frames a decoder can start at): where a session
/// that moves to a new tunnel cuts its stream, so that the far hop goes on from it on the new
/// tunnel with nothing before it missing.
pub fn is_key_frame(msg: &crate::message::Message) -> bool {
    MediaPacket::read(msg).is_some_and(|p| {
        p.media == Media::Video && p.packet == PacketType::CodedFrames && p.key_frame
    })
}

/// How long a group of pictures lives once a newer group exists behind it: half the budget
/// (moq-lite's rule: an older group expires, in media time or waiting time, once a newer one
/// exists; its frames then only hold up the newer key frame). The media queue drops such a
/// group's tail at it while the path is slower than the stream (on a faster one the tail is
/// caught up in time and keeps the whole budget); media lanes reset its GOP stream in QUIC at
/// it.
pub fn older_group_budget(budget: Duration) -> Duration {
    budget / 2
}

/// Whether media with timestamp `ts` that has waited `waited` is past `budget`: it waited
/// longer, or the newest media (`newest`, ms) is further ahead of it in media time. A
/// timestamp that jumps backwards reads as no lag (only lags under 2^31 ms are trusted).
pub fn past_budget(ts: u32, newest: Option<u32>, waited: Duration, budget: Duration) -> bool {
    let behind = newest.map_or(0, |n| n.wrapping_sub(ts));
    let behind = if behind < 1 << 31 { behind } else { 0 };
    waited.max(Duration::from_millis(u64::from(behind))) > budget
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn track_frame(track: u8, key: bool) -> MediaPacket {
        // Multitrack OneTrack, CodedFramesX, FourCC av01.
        let first = 0x80 | if key { 0x10 } else { 0x20 } | 6;
        let msg = Message::new(9, 1, 0, vec![first, 0x03, b'a', b'v', b'0', b'1', track, 9]);
        msg.media_packet().unwrap()
    }

    #[test]
    fn a_move_cuts_only_before_a_coded_video_key_frame() {
        // Legacy AVC: key frame NALU, inter frame NALU, sequence header; audio; a command.
        let key = Message::new(9, 1, 0, vec![0x17, 1, 0, 0, 0, 9]);
        let inter = Message::new(9, 1, 40, vec![0x27, 1, 0, 0, 0, 9]);
        let header = Message::new(9, 1, 0, vec![0x17, 0, 0, 0, 0, 1]);
        let audio = Message::new(8, 1, 0, vec![0xaf, 1, 9]);
        let command = Message::new(20, 0, 0, vec![2, 0, 4, b'p', b'l', b'a', b'y']);
        assert!(is_key_frame(&key));
        for other in [&inter, &header, &audio, &command] {
            assert!(!is_key_frame(other), "{other:?}");
        }
        // Enhanced RTMP: a key frame of one track of a multitrack message.
        let multitrack = Message::new(
            9,
            1,
            0,
            vec![0x80 | 0x10 | 6, 0x03, b'a', b'v', b'0', b'1', 1, 9],
        );
        assert!(is_key_frame(&multitrack));
    }

    #[test]
    fn media_is_past_its_budget_by_waiting_or_by_lagging_the_newest() {
        let budget = Duration::from_millis(500);
        assert!(!past_budget(
            1000,
            Some(1400),
            Duration::from_millis(100),
            budget
        ));
        assert!(past_budget(
            1000,
            Some(1600),
            Duration::from_millis(100),
            budget
        ));
        assert!(past_budget(
            1000,
            Some(1000),
            Duration::from_millis(600),
            budget
        ));
        // A wrap reads right; a jump backwards is no lag.
        assert!(past_budget(
            u32::MAX - 100,
            Some(500),
            Duration::ZERO,
            budget
        ));
        assert!(!past_budget(5000, Some(10), Duration::ZERO, budget));
        assert_eq!(older_group_budget(budget), Duration::from_millis(250));
    }

    #[test]
    fn after_a_drop_each_track_passes_from_its_own_key_frame() {
        let mut gate = GopGate::open();
        assert!(gate.admit(&track_frame(0, false)), "open from the start");
        assert!(gate.admit(&track_frame(0, true)));
        gate.close();
        assert!(!gate.admit(&track_frame(0, false)));
        assert!(!gate.admit(&track_frame(1, false)));
        assert!(gate.admit(&track_frame(1, true)));
        assert!(gate.admit(&track_frame(1, false)), "track 1 is open again");
        assert!(!gate.admit(&track_frame(0, false)), "track 0 still waits");
        assert!(gate.admit(&track_frame(0, true)));
        assert!(gate.admit(&track_frame(0, false)));
    }

    #[test]
    fn only_the_lead_tracks_key_frames_open_groups() {
        let mut gate = GopGate::open();
        assert!(
            gate.starts_group(&track_frame(2, true)),
            "the first key frame leads"
        );
        assert!(!gate.starts_group(&track_frame(0, true)));
        assert!(!gate.starts_group(&track_frame(2, false)));
        assert!(gate.starts_group(&track_frame(2, true)));
    }

    #[test]
    fn closing_some_tracks_leaves_the_others_open() {
        let mut gate = GopGate::open();
        gate.admit(&track_frame(0, true));
        gate.close_tracks(&TrackSet::of(1));
        assert!(gate.admit(&track_frame(0, false)), "the lead stays open");
        assert!(!gate.admit(&track_frame(1, false)));
        gate.admit(&track_frame(1, true));
        gate.close_tracks(&TrackSet::of(0));
        assert!(gate.admit(&track_frame(1, false)));
        assert!(!gate.admit(&track_frame(0, false)));
    }
}
