//! The headers a decoder needs to start a published stream ([`StreamHeaders`]): the latest
//! sequence start, multichannel configuration and video metadata of every track, audio and
//! video, in the order the publisher sent them. The journal replays them on a resumed or set-up
//! again session; the embedded origin sends them to a player joining late.

use std::collections::VecDeque;

use crate::media_packet::{Media, MediaPacket, PacketType, TrackSet};
use crate::message::Message;

/// Headers kept at most (each a message); the oldest goes first past it.
pub const MAX_HEADERS: usize = 64;

/// Payload bytes of headers kept at most; the oldest goes first past it.
pub const MAX_HEADER_BYTES: usize = 4 << 20;

/// What one kept header stands for: a later header with the same media and packet type for a
/// superset of its tracks replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeaderKey {
    media: Media,
    packet: PacketType,
    tracks: TrackSet,
}

/// A stream's current headers; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct StreamHeaders {
    kept: VecDeque<(HeaderKey, Message)>,
    bytes: usize,
}

impl StreamHeaders {
    /// Notes a message of the stream: a header is kept (replacing what it supersedes), a
    /// sequence end forgets its tracks' sequence starts. Returns whether it was kept.
    pub fn observe(&mut self, msg: &Message) -> bool {
        let Some(p) = MediaPacket::read(msg) else {
            return false;
        };
        let key = HeaderKey {
            media: p.media,
            packet: p.packet,
            tracks: p.tracks,
        };
        match p.packet {
            PacketType::SequenceStart | PacketType::MultichannelConfig | PacketType::Metadata => {
                self.forget(|k| {
                    k.media == key.media
                        && k.packet == key.packet
                        && key.tracks.is_superset(&k.tracks)
                });
                self.bytes += msg.payload.len();
                self.kept.push_back((key, msg.clone()));
                while self.kept.len() > MAX_HEADERS || self.bytes > MAX_HEADER_BYTES {
                    let Some((_, old)) = self.kept.pop_front() else {
                        break;
                    };
                    self.bytes -= old.payload.len();
                }
                true
            }
            PacketType::SequenceEnd => {
                self.forget(|k| {
                    k.media == key.media
                        && k.packet == PacketType::SequenceStart
                        && key.tracks.is_superset(&k.tracks)
                });
                false
            }
            _ => false,
        }
    }

    fn forget(&mut self, superseded: impl Fn(&HeaderKey) -> bool) {
        let bytes = &mut self.bytes;
        self.kept.retain(|(k, m)| {
            let gone = superseded(k);
            if gone {
                *bytes -= m.payload.len();
            }
            !gone
        });
    }

    /// The kept headers, oldest first.
    pub fn messages(&self) -> impl Iterator<Item = &Message> {
        self.kept.iter().map(|(_, m)| m)
    }

    /// How many headers are kept.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Forgets every header (the publisher went away).
    pub fn clear(&mut self) {
        self.kept.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(payload: &[u8]) -> Message {
        Message::new(9, 1, 0, payload.to_vec())
    }

    fn audio(payload: &[u8]) -> Message {
        Message::new(8, 1, 0, payload.to_vec())
    }

    fn kept(h: &StreamHeaders) -> Vec<Vec<u8>> {
        h.messages().map(|m| m.payload.to_vec()).collect()
    }

    #[test]
    fn the_latest_header_of_each_track_and_kind_in_the_order_sent() {
        let mut h = StreamHeaders::default();
        let track0 = video(b"\x96\x00hvc1\x00\x01");
        let track1 = video(b"\x96\x00hvc1\x01\x01");
        let color = video(b"\x94hvc1\x02\x00\x09colorInfo");
        let opus = audio(b"\x90OpusOpusHead");
        let channels = audio(b"\x94Opus\x01\x02");
        for m in [&track0, &track1, &color, &opus, &channels] {
            assert!(h.observe(m));
        }
        assert!(
            !h.observe(&video(b"\x91hvc1\x00\x00\x00\x01")),
            "a frame is no header"
        );
        // Track 0 changes its configuration: the new one replaces the old, at the end.
        let track0_new = video(b"\x96\x00hvc1\x00\x02");
        h.observe(&track0_new);
        assert_eq!(
            kept(&h),
            [&track1, &color, &opus, &channels, &track0_new].map(|m| m.payload.to_vec())
        );
        // Audio track 0 changes codec (Opus, legacy AAC, ex-header AAC): one configuration.
        h.observe(&audio(&[0xaf, 0, 0x12, 0x10]));
        h.observe(&audio(b"\x90mp4a\x11\x90"));
        assert_eq!(h.len(), 5);
        assert_eq!(kept(&h)[4], b"\x90mp4a\x11\x90");
        // Track 1 ends: its sequence start is forgotten, the rest stays.
        h.observe(&video(b"\x96\x02hvc1\x01"));
        assert_eq!(h.len(), 4);
        assert!(!kept(&h).contains(&track1.payload.to_vec()));
    }

    #[test]
    fn a_header_for_many_tracks_replaces_each_tracks_own() {
        let mut h = StreamHeaders::default();
        h.observe(&video(b"\x96\x00avc1\x00\x01"));
        h.observe(&video(b"\x96\x00avc1\x01\x01"));
        let both = video(b"\x96\x10avc1\x00\x00\x00\x01\x02\x01\x00\x00\x01\x02");
        h.observe(&both);
        assert_eq!(kept(&h), [both.payload.to_vec()]);
    }

    #[test]
    fn what_is_kept_is_bounded() {
        let mut h = StreamHeaders::default();
        for track in 0..=255u8 {
            let mut p = b"\x96\x00hvc1".to_vec();
            p.push(track);
            p.extend(vec![0; 100_000]);
            h.observe(&video(&p));
            assert!(h.len() <= MAX_HEADERS && h.bytes <= MAX_HEADER_BYTES);
        }
        assert!(!h.is_empty());
        h.clear();
        assert!(h.is_empty());
    }
}
