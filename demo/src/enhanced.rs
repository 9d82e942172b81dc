//! Enhanced RTMP v2 test streams, for the tests and the bench (Debian's ffmpeg 5.1 cannot push
//! E-RTMP): an ffmpeg-made clip read into [`Sample`]s (legacy FLV with H.264 and AAC, an HEVC
//! Annex B stream, an Ogg Opus stream), written in an E-RTMP framing ([`Framing`]), published
//! paced by its timestamps, and read back into elementary streams (Annex B, ADTS, Ogg Opus)
//! that ffmpeg decodes.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::{BufMut, Bytes, BytesMut};
use rtmpq_proto::media_packet::{Media, PacketType};
use rtmpq_proto::message::{message_type, Message};

use crate::client::{ClientError, RtmpClient};

/// One access unit or configuration of one elementary stream, framing aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Audio or video.
    pub media: Media,
    /// The decode timestamp, ms.
    pub timestamp: u32,
    /// The codec: `avc1`, `hvc1`, `mp4a`, `Opus`.
    pub fourcc: [u8; 4],
    /// Configuration (`SequenceStart`), coded frames or the end of the sequence.
    pub packet: PacketType,
    /// A video key frame.
    pub key: bool,
    /// Presentation minus decode time, ms.
    pub composition_offset: i32,
    /// A configuration record (avcC, hvcC, AudioSpecificConfig, Opus ID header) or
    /// length-prefixed NAL units or a raw AAC frame or an Opus packet.
    pub body: Bytes,
}

/// A clip: data messages (onMetaData) and samples, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClipItem {
    /// A data message, sent as it is.
    Data(Message),
    /// A sample, framed as asked.
    Sample(Sample),
}

/// How samples are written as E-RTMP v2 messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Ex-header audio and video, one track, with HDR video metadata after each video
    /// sequence start.
    ExHeader,
    /// Multitrack `OneTrack` (track 0), audio and video.
    OneTrack,
    /// Multitrack `ManyTracks`: each sample twice, as tracks 0 and 1 of one message.
    TwoTracks,
    /// Each message wrapped in ModEx with a `TimestampOffsetNano`.
    ModEx,
}

impl Framing {
    /// Every framing.
    pub const ALL: [Framing; 4] = [
        Framing::ExHeader,
        Framing::OneTrack,
        Framing::TwoTracks,
        Framing::ModEx,
    ];

    /// The tracks each sample is written on.
    pub fn tracks(self) -> &'static [u8] {
        match self {
            Framing::TwoTracks => &[0, 1],
            _ => &[0],
        }
    }
}

/// An FLV tag for an audio, video or data message; `None` for other messages.
pub fn flv_tag(msg: &Message) -> Option<Vec<u8>> {
    if !matches!(msg.type_id, 8 | 9 | 18) {
        return None;
    }
    let len = msg.payload.len() as u32;
    let ts = msg.timestamp;
    let mut tag = Vec::with_capacity(msg.payload.len() + 15);
    tag.push(msg.type_id);
    tag.extend_from_slice(&len.to_be_bytes()[1..]);
    tag.extend_from_slice(&ts.to_be_bytes()[1..]);
    tag.push((ts >> 24) as u8);
    tag.extend_from_slice(&[0, 0, 0]);
    tag.extend_from_slice(&msg.payload);
    tag.extend_from_slice(&(len + 11).to_be_bytes());
    Some(tag)
}

/// The FLV file header (audio and video present) with its first back pointer.
pub const FLV_HEADER: &[u8; 13] = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00";

/// An FLV file of `msgs` (E-RTMP tags as they are).
pub fn flv_file(msgs: &[Message]) -> Vec<u8> {
    let mut out = FLV_HEADER.to_vec();
    for m in msgs {
        out.extend(flv_tag(m).unwrap_or_default());
    }
    out
}

/// The tags of an FLV file as messages (stream id 0), payloads untouched.
pub fn flv_messages(flv: &[u8]) -> Result<Vec<Message>, String> {
    let header_len = flv
        .get(5..9)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .filter(|_| flv.starts_with(b"FLV"))
        .ok_or("not an FLV file")?;
    let mut at = header_len + 4;
    let mut msgs = Vec::new();
    while at + 11 <= flv.len() {
        let t = &flv[at..at + 11];
        let size = u32::from_be_bytes([0, t[1], t[2], t[3]]) as usize;
        let timestamp = u32::from_be_bytes([t[7], t[4], t[5], t[6]]);
        let Some(data) = flv.get(at + 11..at + 11 + size) else {
            // A recording cut short: what came whole.
            break;
        };
        at += 11 + size + 4;
        msgs.push(Message::new(
            t[0],
            0,
            timestamp,
            Bytes::copy_from_slice(data),
        ));
    }
    Ok(msgs)
}

/// Reads a legacy FLV file (H.264 and AAC, as ffmpeg writes it) into clip items.
pub fn read_flv(flv: &[u8]) -> Result<Vec<ClipItem>, String> {
    let mut items = Vec::new();
    for msg in flv_messages(flv)? {
        let (timestamp, body) = (msg.timestamp, msg.payload.clone());
        let sample = |media, fourcc: &[u8; 4], packet, key, cts, from: usize| Sample {
            media,
            timestamp,
            fourcc: *fourcc,
            packet,
            key,
            composition_offset: cts,
            body: body.slice(from.min(body.len())..),
        };
        let item = match (msg.type_id, &msg.payload[..]) {
            (message_type::VIDEO, [first, kind, a, b, c, ..]) if first & 0x0f == 7 => {
                let packet = match kind {
                    0 => PacketType::SequenceStart,
                    1 => PacketType::CodedFrames,
                    _ => PacketType::SequenceEnd,
                };
                let cts = i32::from_be_bytes([*a, *b, *c, 0]) >> 8;
                ClipItem::Sample(sample(
                    Media::Video,
                    b"avc1",
                    packet,
                    first >> 4 == 1,
                    cts,
                    5,
                ))
            }
            (message_type::AUDIO, [first, kind, ..]) if first >> 4 == 10 => {
                let packet = if *kind == 0 {
                    PacketType::SequenceStart
                } else {
                    PacketType::CodedFrames
                };
                ClipItem::Sample(sample(Media::Audio, b"mp4a", packet, false, 0, 2))
            }
            (message_type::DATA_AMF0, _) => ClipItem::Data(msg),
            (t, _) => return Err(format!("tag type {t} is not H.264, AAC or data")),
        };
        items.push(item);
    }
    Ok(items)
}

/// Reads an HEVC Annex B stream (constant `fps`, no B-frames) into video samples: an hvcC
/// record from its parameter sets, then each access unit as length-prefixed NAL units.
pub fn read_hevc_annex_b(stream: &[u8], fps: u32) -> Vec<Sample> {
    let nals = annex_b_units(stream);
    let mut params: Vec<&[u8]> = Vec::new();
    let mut units: Vec<(bool, BytesMut)> = Vec::new();
    let mut pending = BytesMut::new();
    for nal in nals {
        let Some(&h) = nal.first() else { continue };
        let nal_type = (h >> 1) & 0x3f;
        if matches!(nal_type, 32..=34) && !params.contains(&nal) {
            params.push(nal);
        }
        let vcl = nal_type < 32;
        let first_slice = vcl && nal.get(2).is_some_and(|b| b & 0x80 != 0);
        if first_slice {
            let key = matches!(nal_type, 16..=21);
            let mut au = std::mem::take(&mut pending);
            au.put_u32(nal.len() as u32);
            au.put_slice(nal);
            units.push((key, au));
        } else if vcl {
            if let Some((_, au)) = units.last_mut() {
                au.put_u32(nal.len() as u32);
                au.put_slice(nal);
            }
        } else {
            pending.put_u32(nal.len() as u32);
            pending.put_slice(nal);
        }
    }
    let mut samples = vec![Sample {
        media: Media::Video,
        timestamp: 0,
        fourcc: *b"hvc1",
        packet: PacketType::SequenceStart,
        key: true,
        composition_offset: 0,
        body: hvcc(&params),
    }];
    for (n, (key, au)) in units.into_iter().enumerate() {
        samples.push(Sample {
            media: Media::Video,
            timestamp: (n as u64 * 1000 / u64::from(fps)) as u32,
            fourcc: *b"hvc1",
            packet: PacketType::CodedFrames,
            key,
            composition_offset: 0,
            body: au.freeze(),
        });
    }
    samples
}

/// The NAL units of an Annex B stream (start codes removed).
fn annex_b_units(s: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= s.len() {
        if s[i..i + 3] == [0, 0, 1] {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut units = Vec::new();
    for (n, &start) in starts.iter().enumerate() {
        let mut end = starts.get(n + 1).map_or(s.len(), |&next| next - 3);
        while end > start && s[end - 1] == 0 {
            end -= 1;
        }
        units.push(&s[start..end]);
    }
    units
}

/// A minimal HEVCDecoderConfigurationRecord: version 1, 4-byte lengths, the parameter sets
/// (decoders read the sets themselves; the profile fields are left zero).
fn hvcc(params: &[&[u8]]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(1);
    b.put_bytes(0, 20);
    b.put_u8(0xfc | 3);
    let types = [32u8, 33, 34];
    b.put_u8(types.len() as u8);
    for t in types {
        let sets: Vec<&&[u8]> = params.iter().filter(|p| (p[0] >> 1) & 0x3f == t).collect();
        b.put_u8(0x80 | t);
        b.put_u16(sets.len() as u16);
        for s in sets {
            b.put_u16(s.len() as u16);
            b.put_slice(s);
        }
    }
    b.freeze()
}

/// The AMF0 body of a video Metadata packet: `colorInfo` with an SDR BT.709 colour config.
fn color_info() -> Bytes {
    let mut b = BytesMut::new();
    let key = |b: &mut BytesMut, k: &str| {
        b.put_u16(k.len() as u16);
        b.put_slice(k.as_bytes());
    };
    b.put_u8(2);
    key(&mut b, "colorInfo");
    b.put_u8(3);
    key(&mut b, "colorConfig");
    b.put_u8(3);
    for (k, v) in [
        ("bitDepth", 8.0f64),
        ("colorPrimaries", 1.0),
        ("transferCharacteristics", 1.0),
        ("matrixCoefficients", 1.0),
    ] {
        key(&mut b, k);
        b.put_u8(0);
        b.put_f64(v);
    }
    b.put_slice(&[0, 0, 9, 0, 0, 9]);
    b.freeze()
}

/// The E-RTMP packet type value of `packet` (video metadata is 4 for video only).
fn packet_type_value(media: Media, packet: PacketType) -> u8 {
    match (media, packet) {
        (_, PacketType::SequenceStart) => 0,
        (_, PacketType::CodedFrames) => 1,
        (_, PacketType::SequenceEnd) => 2,
        (Media::Video, PacketType::Metadata) => 4,
        (Media::Audio, PacketType::MultichannelConfig) => 4,
        _ => panic!("no E-RTMP value for {packet:?}"),
    }
}

/// One sample as an E-RTMP v2 message in `framing` (stream id 0).
pub fn frame_sample(s: &Sample, framing: Framing) -> Message {
    let video = s.media == Media::Video;
    let pt = packet_type_value(s.media, s.packet);
    let with_offset = video && s.packet == PacketType::CodedFrames;
    let track_body = {
        let mut b = BytesMut::new();
        if with_offset {
            b.put_slice(&s.composition_offset.to_be_bytes()[1..]);
        }
        b.put_slice(&s.body);
        b
    };
    // The first byte: ex-header bit (or SoundFormat 9) with the frame type, and a packet type.
    let lead = |packet_type: u8| -> u8 {
        if video {
            let frame_type = if s.key || s.packet != PacketType::CodedFrames {
                1
            } else {
                2
            };
            0x80 | frame_type << 4 | packet_type
        } else {
            0x90 | packet_type
        }
    };
    let multitrack = if video { 6 } else { 5 };
    let mut p = BytesMut::new();
    match framing {
        Framing::ExHeader => {
            p.put_u8(lead(pt));
            p.put_slice(&s.fourcc);
            p.put_slice(&track_body);
        }
        Framing::ModEx => {
            // TimestampOffsetNano: a third of a millisecond.
            p.put_u8(lead(7));
            p.put_u8(2);
            p.put_slice(&333_333u32.to_be_bytes()[1..]);
            p.put_u8(pt);
            p.put_slice(&s.fourcc);
            p.put_slice(&track_body);
        }
        Framing::OneTrack => {
            p.put_u8(lead(multitrack));
            p.put_u8(pt);
            p.put_slice(&s.fourcc);
            p.put_u8(0);
            p.put_slice(&track_body);
        }
        Framing::TwoTracks => {
            p.put_u8(lead(multitrack));
            p.put_u8(0x10 | pt);
            p.put_slice(&s.fourcc);
            for track in [0u8, 1] {
                p.put_u8(track);
                p.put_slice(&(track_body.len() as u32).to_be_bytes()[1..]);
                p.put_slice(&track_body);
            }
        }
    }
    let type_id = if video {
        message_type::VIDEO
    } else {
        message_type::AUDIO
    };
    Message::new(type_id, 0, s.timestamp, p.freeze())
}

/// A clip in `framing`: data messages as they are, every sample framed, and after every video
/// sequence start its HDR metadata (`colorInfo`).
pub fn frame_clip(items: &[ClipItem], framing: Framing) -> Vec<Message> {
    let mut out = Vec::new();
    for item in items {
        match item {
            ClipItem::Data(m) => out.push(m.clone()),
            ClipItem::Sample(s) => {
                out.push(frame_sample(s, framing));
                if s.media == Media::Video && s.packet == PacketType::SequenceStart {
                    let meta = Sample {
                        packet: PacketType::Metadata,
                        key: false,
                        body: color_info(),
                        ..s.clone()
                    };
                    out.push(frame_sample(&meta, framing));
                }
            }
        }
    }
    out
}

/// Interleaves video samples with a clip's audio (and data), by timestamp: an HEVC stream
/// with the AAC of an ffmpeg-made FLV.
pub fn with_audio_of(video: Vec<Sample>, flv_items: &[ClipItem]) -> Vec<ClipItem> {
    interleave(without(flv_items, Media::Video), video)
}

/// A clip's video (and data) with other audio samples, by timestamp: the H.264 of an
/// ffmpeg-made FLV with an Opus stream.
pub fn with_video_of(audio: Vec<Sample>, flv_items: &[ClipItem]) -> Vec<ClipItem> {
    interleave(without(flv_items, Media::Audio), audio)
}

/// The items that are not samples of `media`.
fn without(items: &[ClipItem], media: Media) -> Vec<ClipItem> {
    items
        .iter()
        .filter(|i| !matches!(i, ClipItem::Sample(s) if s.media == media))
        .cloned()
        .collect()
}

/// `items` and `samples` in timestamp order; at one timestamp data first, then configuration,
/// then frames (a stable sort: each keeps its own order).
fn interleave(mut items: Vec<ClipItem>, samples: Vec<Sample>) -> Vec<ClipItem> {
    items.extend(samples.into_iter().map(ClipItem::Sample));
    items.sort_by_key(|i| match i {
        ClipItem::Data(m) => (m.timestamp, 0),
        ClipItem::Sample(s) if s.packet == PacketType::SequenceStart => (s.timestamp, 1),
        ClipItem::Sample(s) => (s.timestamp, 2),
    });
    items
}

/// Reads an Ogg Opus stream (one logical stream, as ffmpeg's libopus writes it) into audio
/// samples: the ID header (OpusHead, RFC 7845 5.1) as the sequence start, as E-RTMP v2 sends
/// it, then each Opus packet at its time (from the packets' own durations).
pub fn read_ogg_opus(ogg: &[u8]) -> Result<Vec<Sample>, String> {
    let mut packets = ogg_packets(ogg)?.into_iter();
    let head = packets
        .next()
        .filter(|p| p.starts_with(b"OpusHead"))
        .ok_or("the Ogg stream does not start with an OpusHead")?;
    packets
        .next()
        .filter(|p| p.starts_with(b"OpusTags"))
        .ok_or("no OpusTags after the OpusHead")?;
    let sample = |timestamp, packet, body| Sample {
        media: Media::Audio,
        timestamp,
        fourcc: *b"Opus",
        packet,
        key: false,
        composition_offset: 0,
        body,
    };
    let mut samples = vec![sample(0, PacketType::SequenceStart, head)];
    let mut at_48k = 0u64;
    for p in packets {
        let duration = opus_samples(&p).ok_or("an empty Opus packet")?;
        samples.push(sample((at_48k / 48) as u32, PacketType::CodedFrames, p));
        at_48k += duration;
    }
    Ok(samples)
}

/// The packets of an Ogg stream (one logical stream), laced segments joined.
fn ogg_packets(ogg: &[u8]) -> Result<Vec<Bytes>, String> {
    let mut packets = Vec::new();
    let mut partial = Vec::new();
    let mut at = 0;
    while at < ogg.len() {
        let page = &ogg[at..];
        if page.len() < 27 || !page.starts_with(b"OggS") {
            return Err(format!("no Ogg page at byte {at}"));
        }
        let segments = usize::from(page[26]);
        let table = page.get(27..27 + segments).ok_or("an Ogg page cut short")?;
        let mut body = at + 27 + segments;
        for &lace in table {
            let end = body + usize::from(lace);
            partial.extend_from_slice(ogg.get(body..end).ok_or("an Ogg page cut short")?);
            body = end;
            if lace < 255 {
                packets.push(Bytes::from(std::mem::take(&mut partial)));
            }
        }
        at = body;
    }
    Ok(packets)
}

/// How many 48 kHz samples an Opus packet holds (RFC 6716 3.1: its TOC byte and frame count).
fn opus_samples(packet: &[u8]) -> Option<u64> {
    let toc = *packet.first()?;
    let config = usize::from(toc >> 3);
    let per_frame: u64 = match config {
        0..=11 => [480, 960, 1920, 2880][config % 4],
        12..=15 => [480, 960][config % 2],
        _ => [120, 240, 480, 960][config % 4],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => u64::from(*packet.get(1)? & 0x3f),
    };
    Some(per_frame * frames)
}

/// Writes Opus packets as one Ogg Opus stream (RFC 7845: the ID header alone on the first
/// page, a comment header on the second, then a page per packet), which ffmpeg reads back.
#[derive(Debug, Default, Clone)]
struct OggOpusWriter {
    pages: u32,
    granule: u64,
}

impl OggOpusWriter {
    /// The first two pages: the ID header `head` and an empty comment header.
    fn start(&mut self, out: &mut Vec<u8>, head: &[u8]) {
        self.page(out, head, 0x02);
        self.page(out, b"OpusTags\0\0\0\0\0\0\0\0", 0);
    }

    /// One Opus packet on a page of its own (packets of 64 KiB or more are left out: an
    /// Opus packet is at most 120 ms of 1275-byte frames).
    fn packet(&mut self, out: &mut Vec<u8>, packet: &[u8]) {
        if packet.len() >= 255 * 255 {
            return;
        }
        self.granule += opus_samples(packet).unwrap_or(0);
        self.page(out, packet, 0);
    }

    fn page(&mut self, out: &mut Vec<u8>, packet: &[u8], flags: u8) {
        let start = out.len();
        out.extend_from_slice(b"OggS\0");
        out.push(flags);
        out.extend_from_slice(&self.granule.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&self.pages.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.push((packet.len() / 255 + 1) as u8);
        out.extend(std::iter::repeat_n(255u8, packet.len() / 255));
        out.push((packet.len() % 255) as u8);
        out.extend_from_slice(packet);
        let crc = ogg_crc(&out[start..]);
        out[start + 22..start + 26].copy_from_slice(&crc.to_le_bytes());
        self.pages += 1;
    }
}

/// Ogg's page checksum: CRC-32, polynomial 0x04c11db7, not reflected, no initial or final xor.
fn ogg_crc(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// One elementary stream read back from received messages.
#[derive(Debug, Default, Clone)]
pub struct Elementary {
    /// The codec.
    pub fourcc: Option<[u8; 4]>,
    /// Annex B (video), ADTS (AAC) or Ogg Opus bytes.
    pub bytes: Vec<u8>,
    /// Coded frames written.
    pub frames: u64,
    /// Coded frames that came before any configuration of their track (a decoder cannot
    /// start there).
    pub frames_before_config: u64,
    /// Whether the first coded video frame was a key frame.
    pub starts_with_key_frame: Option<bool>,
    /// Pages written so far, for an Opus stream.
    ogg: Option<OggOpusWriter>,
}

/// Reads received E-RTMP (or legacy AVC/AAC) messages back into one elementary stream per
/// (media, track): parameter sets before every key frame, ADTS headers on AAC frames, Opus
/// packets in Ogg pages after their ID header.
pub fn elementary_streams(msgs: &[Message]) -> BTreeMap<(Media, u8), Elementary> {
    let mut out: BTreeMap<(Media, u8), Elementary> = BTreeMap::new();
    let mut configs: BTreeMap<(Media, u8), Bytes> = BTreeMap::new();
    for msg in msgs {
        let Some(p) = msg.media_packet() else {
            continue;
        };
        for t in p.track_packets(&msg.payload) {
            let key = (p.media, t.track);
            let fourcc = t.fourcc.unwrap_or(match p.media {
                Media::Video => *b"avc1",
                Media::Audio => *b"mp4a",
            });
            let stream = out.entry(key).or_default();
            stream.fourcc.get_or_insert(fourcc);
            match p.packet {
                PacketType::SequenceStart => {
                    configs.insert(key, Bytes::copy_from_slice(t.body));
                }
                PacketType::CodedFrames => {
                    stream.frames += 1;
                    let Some(config) = configs.get(&key) else {
                        stream.frames_before_config += 1;
                        continue;
                    };
                    if p.media == Media::Video {
                        stream.starts_with_key_frame.get_or_insert(p.key_frame);
                        if p.key_frame {
                            for set in parameter_sets(&fourcc, config) {
                                stream.bytes.extend_from_slice(&[0, 0, 0, 1]);
                                stream.bytes.extend_from_slice(set);
                            }
                        }
                        let mut b = t.body;
                        while b.len() >= 4 {
                            let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
                            let Some(nal) = b.get(4..4 + n) else { break };
                            stream.bytes.extend_from_slice(&[0, 0, 0, 1]);
                            stream.bytes.extend_from_slice(nal);
                            b = &b[4 + n..];
                        }
                    } else if fourcc == *b"Opus" {
                        let bytes = &mut stream.bytes;
                        let ogg = stream.ogg.get_or_insert_with(|| {
                            let mut ogg = OggOpusWriter::default();
                            ogg.start(bytes, config);
                            ogg
                        });
                        ogg.packet(bytes, t.body);
                    } else {
                        stream
                            .bytes
                            .extend_from_slice(&adts_header(config, t.body.len()));
                        stream.bytes.extend_from_slice(t.body);
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// The parameter sets in an avcC or hvcC record.
fn parameter_sets<'a>(fourcc: &[u8; 4], record: &'a [u8]) -> Vec<&'a [u8]> {
    let mut sets = Vec::new();
    let mut at;
    let read = |at: &mut usize, sets: &mut Vec<&'a [u8]>| -> Option<()> {
        let n = usize::from(u16::from_be_bytes([
            *record.get(*at)?,
            *record.get(*at + 1)?,
        ]));
        sets.push(record.get(*at + 2..*at + 2 + n)?);
        *at += 2 + n;
        Some(())
    };
    if fourcc == b"hvc1" {
        let Some(&arrays) = record.get(22) else {
            return sets;
        };
        at = 23;
        for _ in 0..arrays {
            let Some(count) = record.get(at + 1..at + 3) else {
                break;
            };
            let count = u16::from_be_bytes([count[0], count[1]]);
            at += 3;
            for _ in 0..count {
                if read(&mut at, &mut sets).is_none() {
                    return sets;
                }
            }
        }
    } else {
        let Some(&sps) = record.get(5) else {
            return sets;
        };
        at = 6;
        for _ in 0..(sps & 0x1f) {
            if read(&mut at, &mut sets).is_none() {
                return sets;
            }
        }
        let Some(&pps) = record.get(at) else {
            return sets;
        };
        at += 1;
        for _ in 0..pps {
            if read(&mut at, &mut sets).is_none() {
                return sets;
            }
        }
    }
    sets
}

/// An ADTS header for one AAC frame of `len` bytes, from its AudioSpecificConfig.
fn adts_header(asc: &[u8], len: usize) -> [u8; 7] {
    let object = asc.first().map_or(2, |b| b >> 3).max(1);
    let rate = match asc {
        [a, b, ..] => ((a & 0x07) << 1) | (b >> 7),
        _ => 4,
    };
    let channels = asc.get(1).map_or(2, |b| (b >> 3) & 0x0f);
    let full = len + 7;
    [
        0xff,
        0xf1,
        ((object - 1) << 6) | (rate << 2) | (channels >> 2),
        ((channels & 3) << 6) | ((full >> 11) as u8 & 0x03),
        (full >> 3) as u8,
        ((full as u8 & 0x07) << 5) | 0x1f,
        0xfc,
    ]
}

/// Decodes `path` with ffmpeg (as `format`, or as ffmpeg probes it), every frame decoded and
/// nothing written: the error lines it printed and whether it succeeded; `None` if ffmpeg
/// could not be run.
pub fn ffmpeg_decode(format: Option<&str>, path: &Path) -> Option<(u64, bool)> {
    let mut ffmpeg = std::process::Command::new("ffmpeg");
    ffmpeg.args(["-hide_banner", "-nostdin", "-v", "error"]);
    if let Some(format) = format {
        ffmpeg.args(["-f", format]);
    }
    let out = ffmpeg
        .arg("-i")
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count() as u64;
    Some((lines, out.status.success()))
}

/// Decodes each elementary stream with ffmpeg (written into `dir`) and returns the errors
/// it reported per stream (`None`: ffmpeg could not be run).
pub fn decode_errors(
    streams: &BTreeMap<(Media, u8), Elementary>,
    dir: &Path,
) -> BTreeMap<(Media, u8), Option<u64>> {
    streams
        .iter()
        .map(|(&(media, track), s)| {
            let format = match &s.fourcc.unwrap_or(*b"????") {
                b"avc1" => "h264",
                b"hvc1" => "hevc",
                b"mp4a" => "aac",
                b"Opus" => "ogg",
                _ => return ((media, track), None),
            };
            let path = dir.join(format!("{media:?}-{track}.{format}"));
            if std::fs::write(&path, &s.bytes).is_err() {
                return ((media, track), None);
            }
            let errors = ffmpeg_decode(Some(format), &path)
                .map(|(lines, success)| lines + u64::from(!success));
            ((media, track), errors)
        })
        .collect()
}

/// Publishes `msgs` on `client` (already publishing), each at its timestamp after the start
/// (as `ffmpeg -re` paces a file).
pub async fn publish_paced(client: &RtmpClient, msgs: &[Message]) -> Result<(), ClientError> {
    let start = tokio::time::Instant::now();
    let stream_id = client.stream_id();
    for m in msgs {
        let due = start + std::time::Duration::from_millis(m.timestamp.into());
        tokio::time::sleep_until(due).await;
        client
            .send(Message {
                stream_id,
                ..m.clone()
            })
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ogg_checksum_is_crc32_without_reflection_or_xor() {
        // CRC-32/CKSUM ("123456789" → 0x765e7680) differs only by its final inversion.
        assert_eq!(ogg_crc(b"123456789"), !0x765e_7680);
    }

    #[test]
    fn opus_durations_follow_the_toc_byte() {
        // CELT 20 ms, one frame; SILK 60 ms, two frames; CELT 2.5 ms, code 3 with 5 frames.
        assert_eq!(opus_samples(&[31 << 3]), Some(960));
        assert_eq!(opus_samples(&[(3 << 3) | 1]), Some(2 * 2880));
        assert_eq!(opus_samples(&[(16 << 3) | 3, 5]), Some(5 * 120));
        assert_eq!(opus_samples(&[]), None);
    }

    #[test]
    fn written_ogg_opus_reads_back_with_its_timing() {
        let head = b"OpusHead\x01\x02\x38\x01\x80\xbb\x00\x00\x00\x00\x00".to_vec();
        // 20 ms packets, one long enough to need lacing over two segments.
        let packets: Vec<Vec<u8>> = vec![vec![31 << 3; 100], vec![31 << 3; 300], vec![31 << 3; 3]];
        let mut ogg = Vec::new();
        let mut writer = OggOpusWriter::default();
        writer.start(&mut ogg, &head);
        for p in &packets {
            writer.packet(&mut ogg, p);
        }
        let samples = read_ogg_opus(&ogg).unwrap();
        assert_eq!(samples.len(), 4);
        assert_eq!(samples[0].packet, PacketType::SequenceStart);
        assert_eq!(&samples[0].body[..], &head[..]);
        for (n, (s, p)) in samples[1..].iter().zip(&packets).enumerate() {
            assert_eq!(s.packet, PacketType::CodedFrames);
            assert_eq!(s.timestamp, 20 * n as u32);
            assert_eq!(&s.body[..], &p[..]);
        }
        assert_eq!(writer.granule, 3 * 960);
    }
}
