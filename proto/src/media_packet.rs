//! The FLV tag header at the start of every RTMP audio and video message, legacy and Enhanced
//! RTMP v2 (veovera, 2026): ex-header audio and video with their FourCC, multitrack (one
//! track, many tracks, many tracks with many codecs), ModEx (unwrapped, `TimestampOffsetNano`
//! read) and video command frames, read into the one [`MediaPacket`] every policy keys on
//! (latency budget, lanes, journal, resume filter, late arrivals, the embedded origin).
//!
//! Reading is linear in the payload, without recursion or allocation: a ModEx chain is a loop,
//! tracks are walked by their sizes. A header this module cannot follow (truncated, a reserved
//! packet type, a multitrack inside a multitrack) reads as [`PacketType::Unknown`]: such a
//! message is forwarded untouched and never taken for a frame or a header.

use crate::message::{message_type, MediaKind, Message};

/// Whether a packet is audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Media {
    /// An audio message (type 8).
    Audio,
    /// A video message (type 9).
    Video,
}

/// What a media packet is, for every track it carries (E-RTMP v2 puts one packet type on all
/// the tracks of a message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PacketType {
    /// Codec configuration: AVC/HEVC/VVC/AV1/VP9 records, AAC AudioSpecificConfig, OpusHead,
    /// FLAC STREAMINFO (legacy AVC and AAC sequence headers too). Also MPEG-2 TS sequence
    /// start (an AV1 descriptor).
    SequenceStart,
    /// Coded frames, with or without a composition time (`CodedFrames`, `CodedFramesX`).
    CodedFrames,
    /// The end of a track's sequence (legacy AVC end of sequence too).
    SequenceEnd,
    /// Video metadata (`colorInfo` for HDR), AMF-encoded.
    Metadata,
    /// Audio channel order and count, for codecs that do not describe it themselves.
    MultichannelConfig,
    /// A video command frame (seek start/end): no picture.
    Command,
    /// A header this reader cannot follow; see the module docs.
    Unknown,
}

/// A set of track ids (E-RTMP track ids are one byte).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TrackSet([u64; 4]);

impl TrackSet {
    /// The set of one track.
    pub fn of(track: u8) -> Self {
        let mut s = TrackSet::default();
        s.insert(track);
        s
    }

    /// Adds `track`.
    pub fn insert(&mut self, track: u8) {
        self.0[usize::from(track / 64)] |= 1 << (track % 64);
    }

    /// Whether `track` is in the set.
    pub fn contains(&self, track: u8) -> bool {
        self.0[usize::from(track / 64)] & (1 << (track % 64)) != 0
    }

    /// Whether every track of `other` is in this set.
    pub fn is_superset(&self, other: &TrackSet) -> bool {
        self.0.iter().zip(other.0).all(|(a, b)| a & b == b)
    }

    /// Every track of either set.
    pub fn union(&self, other: &TrackSet) -> TrackSet {
        let mut s = *self;
        for (a, b) in s.0.iter_mut().zip(other.0) {
            *a |= b;
        }
        s
    }

    /// The tracks of this set not in `other`.
    pub fn difference(&self, other: &TrackSet) -> TrackSet {
        let mut s = *self;
        for (a, b) in s.0.iter_mut().zip(other.0) {
            *a &= !b;
        }
        s
    }

    /// Whether no track is in both sets.
    pub fn is_disjoint(&self, other: &TrackSet) -> bool {
        self.0.iter().zip(other.0).all(|(a, b)| a & b == 0)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }

    /// The smallest track id in the set.
    pub fn first(&self) -> Option<u8> {
        let (word, bits) = self.0.iter().enumerate().find(|(_, w)| **w != 0)?;
        Some((word * 64) as u8 + bits.trailing_zeros() as u8)
    }
}

impl std::fmt::Debug for TrackSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries((0..=255u8).filter(|&t| self.contains(t)))
            .finish()
    }
}

/// One track's part of a media message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackPacket<'a> {
    /// The track id (0 outside multitrack).
    pub track: u8,
    /// The codec's FourCC for ex-header packets (`avc1`, `hvc1`, `av01`, `mp4a`, `Opus`, ...).
    pub fourcc: Option<[u8; 4]>,
    /// Presentation minus decode time, ms (AVC/HEVC/VVC coded frames; 0 otherwise).
    pub composition_offset: i32,
    /// The track's body after every header field: a configuration record, NAL units, ...
    pub body: &'a [u8],
}

/// How a message's tracks are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Legacy or single-track ex-header: one body.
    Single {
        track_from: usize,
        fourcc: Option<[u8; 4]>,
    },
    /// Multitrack, `OneTrack`: a track id, then the body.
    OneTrack { fourcc: [u8; 4] },
    /// Multitrack, `ManyTracks` (one FourCC) or `ManyTracksManyCodecs` (`fourcc` None: one
    /// per track).
    ManyTracks { fourcc: Option<[u8; 4]> },
}

/// The header of one audio or video message, read; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaPacket {
    /// Audio or video.
    pub media: Media,
    /// What the packet is, for every track in it.
    pub packet: PacketType,
    /// The video frame type says key frame (a decoder can start here).
    pub key_frame: bool,
    /// An Enhanced RTMP ex-header (FourCC) packet.
    pub ex_header: bool,
    /// A multitrack packet.
    pub multitrack: bool,
    /// ModEx `TimestampOffsetNano`: nanoseconds to add to the timestamp (under 1 ms).
    pub timestamp_offset_nanos: u32,
    /// The tracks the message carries (track 0 outside multitrack).
    pub tracks: TrackSet,
    /// The first track's composition time offset, ms.
    pub composition_offset: i32,
    /// Where the track headers start, and how they are laid out.
    tracks_at: usize,
    layout: Layout,
    /// Each track's body starts with a composition time (AVC/HEVC/VVC `CodedFrames`).
    with_offset: bool,
}

const FOURCCS_WITH_COMPOSITION_TIME: [&[u8; 4]; 3] = [b"avc1", b"hvc1", b"vvc1"];

/// A reader over a payload that never panics: `None` once the bytes run out.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<u32> {
        self.take(3)
            .map(|b| u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }

    fn fourcc(&mut self) -> Option<[u8; 4]> {
        self.take(4).map(|b| [b[0], b[1], b[2], b[3]])
    }
}

/// Sign-extends a 24-bit big-endian value.
fn si24(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], 0]) >> 8
}

/// Ex-header packet type values (video; audio shares 0, 1, 2 and 7).
mod ex {
    pub const SEQUENCE_START: u8 = 0;
    pub const CODED_FRAMES: u8 = 1;
    pub const SEQUENCE_END: u8 = 2;
    pub const CODED_FRAMES_X: u8 = 3;
    pub const METADATA: u8 = 4;
    pub const MPEG2TS_SEQUENCE_START: u8 = 5;
    pub const VIDEO_MULTITRACK: u8 = 6;
    pub const AUDIO_MULTICHANNEL_CONFIG: u8 = 4;
    pub const AUDIO_MULTITRACK: u8 = 5;
    pub const MOD_EX: u8 = 7;
    pub const MOD_EX_TIMESTAMP_OFFSET_NANO: u8 = 0;
    pub const MULTITRACK_ONE_TRACK: u8 = 0;
    pub const MULTITRACK_MANY_TRACKS: u8 = 1;
    pub const MULTITRACK_MANY_CODECS: u8 = 2;
}

/// Legacy video: frame type 5 is a command frame; legacy audio: sound format 9 is ex-header.
const VIDEO_COMMAND_FRAME: u8 = 5;
const VIDEO_KEY_FRAME: u8 = 1;
const SOUND_FORMAT_EX_HEADER: u8 = 9;
const SOUND_FORMAT_AAC: u8 = 10;
const CODEC_AVC: u8 = 7;
const CODEC_HEVC_LEGACY: u8 = 12;

impl MediaPacket {
    /// Reads the header of an audio or video message; `None` for other messages and empty
    /// payloads (RTMP's "audio silence" message).
    pub fn read(msg: &Message) -> Option<MediaPacket> {
        let media = match msg.type_id {
            message_type::AUDIO => Media::Audio,
            message_type::VIDEO => Media::Video,
            _ => return None,
        };
        let first = *msg.payload.first()?;
        let mut packet = MediaPacket {
            media,
            packet: PacketType::Unknown,
            key_frame: false,
            ex_header: false,
            multitrack: false,
            timestamp_offset_nanos: 0,
            tracks: TrackSet::of(0),
            composition_offset: 0,
            tracks_at: 1,
            layout: Layout::Single {
                track_from: 1,
                fourcc: None,
            },
            with_offset: false,
        };
        let ex_header = match media {
            Media::Video => first & 0x80 != 0,
            Media::Audio => first >> 4 == SOUND_FORMAT_EX_HEADER,
        };
        if ex_header {
            packet.ex_header = true;
            packet.read_ex_header(&msg.payload);
        } else {
            packet.read_legacy(&msg.payload);
        }
        Some(packet)
    }

    fn read_legacy(&mut self, p: &[u8]) {
        let first = p[0];
        match self.media {
            Media::Video => {
                let frame_type = (first >> 4) & 0x07;
                self.key_frame = frame_type == VIDEO_KEY_FRAME;
                if frame_type == VIDEO_COMMAND_FRAME {
                    self.packet = PacketType::Command;
                    return;
                }
                if matches!(first & 0x0f, CODEC_AVC | CODEC_HEVC_LEGACY) {
                    // AVCPacketType, then the composition time, then the body.
                    self.packet = match p.get(1) {
                        Some(0) => PacketType::SequenceStart,
                        Some(1) => PacketType::CodedFrames,
                        Some(2) => PacketType::SequenceEnd,
                        _ => PacketType::Unknown,
                    };
                    if let Some(cts) = p.get(2..5) {
                        if self.packet == PacketType::CodedFrames {
                            self.composition_offset = si24(cts);
                        }
                    }
                    self.layout = Layout::Single {
                        track_from: 5.min(p.len()),
                        fourcc: None,
                    };
                } else {
                    self.packet = PacketType::CodedFrames;
                }
            }
            Media::Audio => {
                if first >> 4 == SOUND_FORMAT_AAC {
                    self.packet = match p.get(1) {
                        Some(0) => PacketType::SequenceStart,
                        Some(_) => PacketType::CodedFrames,
                        None => PacketType::Unknown,
                    };
                    self.layout = Layout::Single {
                        track_from: 2.min(p.len()),
                        fourcc: None,
                    };
                } else {
                    self.packet = PacketType::CodedFrames;
                }
            }
        }
    }

    fn read_ex_header(&mut self, p: &[u8]) {
        let first = p[0];
        let video = self.media == Media::Video;
        let frame_type = (first >> 4) & 0x07;
        if video {
            self.key_frame = frame_type == VIDEO_KEY_FRAME;
        }
        let mut c = Cursor { bytes: p, at: 1 };
        let Some(mut packet_type) = self.read_mod_ex(first & 0x0f, &mut c) else {
            return;
        };
        let multitrack_type = if video {
            ex::VIDEO_MULTITRACK
        } else {
            ex::AUDIO_MULTITRACK
        };
        if video && frame_type == VIDEO_COMMAND_FRAME && packet_type != ex::METADATA {
            self.packet = PacketType::Command;
            return;
        }
        if packet_type == multitrack_type {
            let Some(b) = c.u8() else { return };
            let (layout_type, inner) = (b >> 4, b & 0x0f);
            if inner == multitrack_type || inner == ex::MOD_EX {
                return;
            }
            packet_type = inner;
            self.multitrack = true;
            self.layout = match layout_type {
                ex::MULTITRACK_ONE_TRACK | ex::MULTITRACK_MANY_TRACKS => {
                    let Some(fourcc) = c.fourcc() else { return };
                    if layout_type == ex::MULTITRACK_ONE_TRACK {
                        Layout::OneTrack { fourcc }
                    } else {
                        Layout::ManyTracks {
                            fourcc: Some(fourcc),
                        }
                    }
                }
                ex::MULTITRACK_MANY_CODECS => Layout::ManyTracks { fourcc: None },
                _ => return,
            };
        } else {
            let Some(f) = c.fourcc() else { return };
            self.layout = Layout::Single {
                track_from: c.at,
                fourcc: Some(f),
            };
        }
        self.tracks_at = c.at;
        let kind = match (video, packet_type) {
            (_, ex::SEQUENCE_START) => PacketType::SequenceStart,
            (_, ex::CODED_FRAMES) => PacketType::CodedFrames,
            (_, ex::SEQUENCE_END) => PacketType::SequenceEnd,
            (true, ex::CODED_FRAMES_X) => PacketType::CodedFrames,
            (true, ex::METADATA) => PacketType::Metadata,
            (true, ex::MPEG2TS_SEQUENCE_START) => PacketType::SequenceStart,
            (false, ex::AUDIO_MULTICHANNEL_CONFIG) => PacketType::MultichannelConfig,
            _ => return,
        };
        self.packet = kind;
        self.with_offset = video && packet_type == ex::CODED_FRAMES;
        self.read_tracks(p);
    }

    /// Skips a ModEx chain (modifiers, each ending in the next packet type) from
    /// `packet_type` on, keeping the timestamp offset; the packet type after it, `None` if
    /// the chain runs past the payload.
    fn read_mod_ex(&mut self, mut packet_type: u8, c: &mut Cursor<'_>) -> Option<u8> {
        while packet_type == ex::MOD_EX {
            let size = match usize::from(c.u8()?) + 1 {
                256 => usize::from(c.u16()?) + 1,
                n => n,
            };
            let data = c.take(size)?;
            let b = c.u8()?;
            packet_type = b & 0x0f;
            if b >> 4 == ex::MOD_EX_TIMESTAMP_OFFSET_NANO && data.len() >= 3 {
                self.timestamp_offset_nanos =
                    u32::from_be_bytes([0, data[0], data[1], data[2]]).min(999_999);
            }
        }
        Some(packet_type)
    }

    /// Walks the tracks of payload `p` once: their ids, the first one's composition time; a
    /// track header that runs past the payload makes the whole message unknown.
    fn read_tracks(&mut self, p: &[u8]) {
        let mut tracks = TrackSet::default();
        let mut first = None;
        let mut complete = true;
        for track in self.track_packets_in(p) {
            match track {
                Some(t) => {
                    tracks.insert(t.track);
                    first.get_or_insert(t.composition_offset);
                }
                None => complete = false,
            }
        }
        if !complete || tracks.is_empty() {
            self.packet = PacketType::Unknown;
            return;
        }
        self.tracks = tracks;
        self.composition_offset = first.unwrap_or(0);
    }

    /// The message's tracks with their bodies (`payload`: the message's payload, the one this
    /// was read from). Legacy and single-track packets have one, track 0; command frames and
    /// unknown packets none.
    pub fn track_packets<'a>(&self, payload: &'a [u8]) -> impl Iterator<Item = TrackPacket<'a>> {
        let readable = !matches!(self.packet, PacketType::Unknown | PacketType::Command);
        let legacy = !self.ex_header;
        let legacy_track = (readable && legacy).then(|| TrackPacket {
            track: 0,
            fourcc: None,
            composition_offset: self.composition_offset,
            body: match self.layout {
                Layout::Single { track_from, .. } => payload.get(track_from..).unwrap_or(&[]),
                _ => &[],
            },
        });
        let ex_tracks = (readable && !legacy)
            .then(|| self.track_packets_in(payload).map_while(|t| t))
            .into_iter()
            .flatten();
        legacy_track.into_iter().chain(ex_tracks)
    }

    /// The ex-header tracks; an item `None` where a track header runs past the payload (and
    /// nothing after it).
    fn track_packets_in<'a>(
        &self,
        payload: &'a [u8],
    ) -> impl Iterator<Item = Option<TrackPacket<'a>>> {
        let mut c = Cursor {
            bytes: payload,
            at: self.tracks_at,
        };
        let layout = self.layout;
        let with_offset = self.with_offset;
        let mut done = false;
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            let (track, fourcc, body) = match layout {
                Layout::Single { track_from, fourcc } => {
                    done = true;
                    (0, fourcc, payload.get(track_from..).unwrap_or(&[]))
                }
                Layout::OneTrack { fourcc } => {
                    done = true;
                    let Some(track) = c.u8() else {
                        return Some(None);
                    };
                    (
                        track,
                        Some(fourcc),
                        c.take(payload.len() - c.at).unwrap_or(&[]),
                    )
                }
                Layout::ManyTracks { fourcc } => {
                    if c.at >= payload.len() {
                        return None;
                    }
                    let fourcc = match fourcc {
                        Some(f) => Some(f),
                        None => c.fourcc(),
                    };
                    let (Some(fourcc), Some(track), Some(size)) = (fourcc, c.u8(), c.u24()) else {
                        done = true;
                        return Some(None);
                    };
                    let Some(body) = c.take(size as usize) else {
                        done = true;
                        return Some(None);
                    };
                    (track, Some(fourcc), body)
                }
            };
            let mut t = TrackPacket {
                track,
                fourcc,
                composition_offset: 0,
                body,
            };
            let offset_here =
                with_offset && fourcc.is_some_and(|f| FOURCCS_WITH_COMPOSITION_TIME.contains(&&f));
            if offset_here {
                if body.len() < 3 {
                    done = true;
                    return Some(None);
                }
                t.composition_offset = si24(body);
                t.body = &body[3..];
            }
            Some(Some(t))
        })
    }

    /// The coarse kind the latency policy and statistics use.
    pub fn kind(&self) -> MediaKind {
        match (self.media, self.packet) {
            (
                _,
                PacketType::SequenceStart | PacketType::Metadata | PacketType::MultichannelConfig,
            ) => MediaKind::Header,
            (Media::Video, PacketType::CodedFrames) if self.key_frame => MediaKind::VideoKeyframe,
            (Media::Video, PacketType::CodedFrames) => MediaKind::VideoFrame,
            (Media::Audio, PacketType::CodedFrames) => MediaKind::Audio,
            _ => MediaKind::Other,
        }
    }

    /// The presentation time in nanoseconds: the timestamp plus the composition offset plus
    /// any ModEx nanosecond offset (not wrapped: compare with wrapping arithmetic).
    pub fn presentation_nanos(&self, timestamp: u32) -> i64 {
        (i64::from(timestamp) + i64::from(self.composition_offset)) * 1_000_000
            + i64::from(self.timestamp_offset_nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(payload: &[u8]) -> MediaPacket {
        MediaPacket::read(&Message::new(9, 1, 0, payload.to_vec())).unwrap()
    }

    fn audio(payload: &[u8]) -> MediaPacket {
        MediaPacket::read(&Message::new(8, 1, 0, payload.to_vec())).unwrap()
    }

    fn tracks(ids: &[u8]) -> TrackSet {
        let mut s = TrackSet::default();
        ids.iter().for_each(|&t| s.insert(t));
        s
    }

    fn bodies(p: &MediaPacket, payload: &[u8]) -> Vec<(u8, Vec<u8>)> {
        p.track_packets(payload)
            .map(|t| (t.track, t.body.to_vec()))
            .collect()
    }

    #[test]
    fn track_sets() {
        let mut s = TrackSet::of(200);
        assert_eq!(s.first(), Some(200));
        s.insert(64);
        assert_eq!(s.first(), Some(64));
        assert!(s.is_superset(&TrackSet::of(64)) && !s.contains(0));
        assert_eq!(TrackSet::default().first(), None);
    }

    #[test]
    fn legacy_video_and_audio() {
        let seq = video(&[0x17, 0, 0, 0, 0, 1, 0x64]);
        assert_eq!(
            (seq.packet, seq.kind()),
            (PacketType::SequenceStart, MediaKind::Header)
        );
        let key = video(&[0x17, 1, 0, 0, 33, 0, 0, 0, 1, 0x65]);
        assert_eq!(key.kind(), MediaKind::VideoKeyframe);
        assert_eq!(key.composition_offset, 33);
        let b = video(&[0x27, 1, 0xff, 0xff, 0xdf, 9]);
        assert_eq!(
            (b.kind(), b.composition_offset),
            (MediaKind::VideoFrame, -33)
        );
        let end = video(&[0x17, 2, 0, 0, 0]);
        assert_eq!(
            (end.packet, end.kind()),
            (PacketType::SequenceEnd, MediaKind::Other)
        );
        let h263 = video(&[0x12, 9, 9]);
        assert_eq!(h263.kind(), MediaKind::VideoKeyframe);
        let command = video(&[0x57, 0]);
        assert_eq!(
            (command.packet, command.kind()),
            (PacketType::Command, MediaKind::Other)
        );
        let asc = audio(&[0xaf, 0, 0x12, 0x10]);
        assert_eq!(asc.kind(), MediaKind::Header);
        assert_eq!(
            bodies(&asc, &[0xaf, 0, 0x12, 0x10]),
            [(0, vec![0x12, 0x10])]
        );
        assert_eq!(audio(&[0xaf, 1, 0x21]).kind(), MediaKind::Audio);
        assert_eq!(audio(&[0x2f, 0xff]).kind(), MediaKind::Audio, "MP3");
        assert!(!asc.ex_header && !asc.multitrack);
        assert!(
            MediaPacket::read(&Message::new(8, 1, 0, vec![])).is_none(),
            "silence"
        );
        assert!(MediaPacket::read(&Message::new(18, 1, 0, vec![2])).is_none());
    }

    #[test]
    fn ex_header_video_packet_types() {
        let seq = video(b"\x90hvc1\x01\x02");
        assert_eq!(
            (seq.packet, seq.kind()),
            (PacketType::SequenceStart, MediaKind::Header)
        );
        assert_eq!(bodies(&seq, b"\x90hvc1\x01\x02"), [(0, vec![1, 2])]);
        let key = video(b"\x91hvc1\x00\x00\x21\x00\x00\x00\x01\x26");
        assert_eq!(
            (key.kind(), key.composition_offset),
            (MediaKind::VideoKeyframe, 33)
        );
        assert_eq!(
            bodies(&key, b"\x91hvc1\x00\x00\x21\x00\x00\x00\x01\x26")[0]
                .1
                .len(),
            5
        );
        let av1 = video(b"\xa1av01\x12\x00");
        assert_eq!(
            (av1.kind(), av1.composition_offset),
            (MediaKind::VideoFrame, 0),
            "no offset for AV1"
        );
        let x = video(b"\xa3avc1\x00\x00\x00\x01");
        assert_eq!(x.kind(), MediaKind::VideoFrame);
        let end = video(b"\x92av01");
        assert_eq!(
            (end.packet, end.kind()),
            (PacketType::SequenceEnd, MediaKind::Other)
        );
        // Metadata is metadata whatever the frame type (the spec ignores it there).
        let meta = video(b"\xd4hvc1\x02\x00\x09colorInfo\x03\x00\x00\x09");
        assert_eq!(
            (meta.packet, meta.kind()),
            (PacketType::Metadata, MediaKind::Header)
        );
        let ts = video(b"\x95av01\x80");
        assert_eq!(ts.kind(), MediaKind::Header, "MPEG-2 TS sequence start");
        let command = video(b"\xd1\x00");
        assert_eq!(
            (command.packet, command.kind()),
            (PacketType::Command, MediaKind::Other)
        );
        let reserved = video(b"\x98hvc1");
        assert_eq!(
            (reserved.packet, reserved.kind()),
            (PacketType::Unknown, MediaKind::Other)
        );
        let truncated = video(b"\x91hv");
        assert_eq!(truncated.kind(), MediaKind::Other);
        let no_offset = video(b"\x91hvc1\x00");
        assert_eq!(
            no_offset.kind(),
            MediaKind::Other,
            "CodedFrames without its SI24"
        );
    }

    #[test]
    fn ex_header_audio_packet_types() {
        let seq = audio(b"\x90mp4a\x11\x90");
        assert_eq!(
            (seq.packet, seq.kind()),
            (PacketType::SequenceStart, MediaKind::Header)
        );
        let opus_head = audio(b"\x90OpusOpusHead\x01\x02");
        assert_eq!(opus_head.kind(), MediaKind::Header);
        let frame = audio(b"\x91Opus\xfc\xff");
        assert_eq!(frame.kind(), MediaKind::Audio);
        let end = audio(b"\x92fLaC");
        assert_eq!(end.kind(), MediaKind::Other);
        let channels = audio(b"\x94ac-3\x01\x06");
        assert_eq!(
            (channels.packet, channels.kind()),
            (PacketType::MultichannelConfig, MediaKind::Header)
        );
        assert_eq!(audio(b"\x93mp4a").kind(), MediaKind::Other, "reserved");
    }

    #[test]
    fn multitrack_is_classified_by_the_packet_inside() {
        // OneTrack SequenceStart of track 1: a header, not a key frame.
        let one = video(b"\x96\x00hvc1\x01\x05\x06");
        assert_eq!((one.kind(), one.tracks), (MediaKind::Header, tracks(&[1])));
        assert_eq!(bodies(&one, b"\x96\x00hvc1\x01\x05\x06"), [(1, vec![5, 6])]);
        let end = video(b"\x96\x02av01\x00");
        assert_eq!(
            end.kind(),
            MediaKind::Other,
            "a multitrack SequenceEnd is no frame"
        );
        // ManyTracks, CodedFrames with composition times, two tracks.
        let many =
            b"\x96\x11avc1\x00\x00\x00\x05\x00\x00\x21\x09\x09\x01\x00\x00\x04\x00\x00\x00\x07";
        let p = video(many);
        assert_eq!(
            (p.kind(), p.tracks),
            (MediaKind::VideoKeyframe, tracks(&[0, 1]))
        );
        assert_eq!(p.composition_offset, 33, "the first track's");
        assert_eq!(bodies(&p, many), [(0, vec![9, 9]), (1, vec![7])]);
        // ManyTracksManyCodecs: a FourCC per track.
        let codecs = b"\xa6\x23hvc1\x00\x00\x00\x01\x01av01\x02\x00\x00\x01\x02";
        let p = video(codecs);
        assert_eq!(
            (p.kind(), p.tracks),
            (MediaKind::VideoFrame, tracks(&[0, 2]))
        );
        let fourccs: Vec<_> = p.track_packets(codecs).map(|t| t.fourcc.unwrap()).collect();
        assert_eq!(fourccs, [*b"hvc1", *b"av01"]);
        // Audio multitrack: Opus on track 2.
        let a = audio(b"\x95\x01Opus\x02\x00\x00\x01\xfc");
        assert_eq!((a.kind(), a.tracks), (MediaKind::Audio, tracks(&[2])));
        let a_seq = audio(b"\x95\x00mp4a\x03\x11\x90");
        assert_eq!(
            (a_seq.kind(), a_seq.tracks),
            (MediaKind::Header, tracks(&[3]))
        );
        // A track that claims more than the payload holds, and multitrack in multitrack.
        assert_eq!(
            video(b"\x96\x11avc1\x00\x00\x00\x09\x00").kind(),
            MediaKind::Other
        );
        assert_eq!(video(b"\x96\x06avc1\x00").kind(), MediaKind::Other);
        assert_eq!(
            video(b"\x96\x31avc1\x00").kind(),
            MediaKind::Other,
            "reserved layout"
        );
    }

    #[test]
    fn mod_ex_is_unwrapped() {
        // Key frame, ModEx with a 3-byte TimestampOffsetNano of 500 000 ns, then CodedFrames.
        let wrapped = b"\x97\x02\x07\xa1\x20\x01hvc1\x00\x00\x10\x00\x00\x00\x01\x26";
        let p = video(wrapped);
        assert_eq!(p.kind(), MediaKind::VideoKeyframe);
        assert_eq!(p.timestamp_offset_nanos, 500_000);
        assert_eq!(p.composition_offset, 16);
        assert_eq!(p.presentation_nanos(1000), 1_016_500_000);
        // Two modifiers, the first of an unknown type and 16-bit sized, around multitrack.
        let mut chain = vec![0xa7, 0xff, 0x01, 0x00];
        chain.extend([0; 257]);
        chain.extend([0x17, 0x02, 0x00, 0x00, 0x01, 0x06, 0x03]);
        chain.extend(b"av01\x04\x33");
        let p = video(&chain);
        assert_eq!((p.kind(), p.tracks), (MediaKind::VideoFrame, tracks(&[4])));
        assert_eq!(p.timestamp_offset_nanos, 1);
        let audio_wrapped = audio(b"\x97\x02\x00\x00\x64\x00Opus\x01");
        assert_eq!(audio_wrapped.kind(), MediaKind::Header);
        assert_eq!(audio_wrapped.timestamp_offset_nanos, 100);
        assert_eq!(video(b"\x97\x05\x00").kind(), MediaKind::Other, "truncated");
    }

    #[test]
    fn every_prefix_of_every_packet_reads_without_panicking() {
        let samples: [&[u8]; 4] = [
            b"\x96\x11avc1\x00\x00\x00\x05\x00\x00\x21\x09\x09\x01\x00\x00\x04\x00\x00\x00\x07",
            b"\x97\x02\x07\xa1\x20\x01hvc1\x00\x00\x10\x00\x00\x00\x01\x26",
            b"\xa6\x23hvc1\x00\x00\x00\x01\x01av01\x02\x00\x00\x01\x02",
            b"\x95\x01Opus\x02\x00\x00\x01\xfc",
        ];
        for sample in samples {
            for n in 1..=sample.len() {
                for t in [8, 9] {
                    let msg = Message::new(t, 1, 0, sample[..n].to_vec());
                    let p = MediaPacket::read(&msg).unwrap();
                    let _ = p.track_packets(&msg.payload).count();
                }
            }
        }
    }
}
