//! Which video pictures no other picture references ([`is_disposable`]): read from NAL unit
//! headers only, never from slice data. A queue that must shed drops these first, so the
//! frame rate falls while every picture handed on still decodes.
//!
//! - H.264 (legacy codec 7, `avc1`): every VCL NAL unit (types 1 to 5) has `nal_ref_idc` 0.
//! - HEVC (legacy codec 12, `hvc1`): every VCL NAL unit is a sub-layer non-reference picture
//!   (`TRAIL_N`, `TSA_N`, `STSA_N`, `RADL_N`, `RASL_N`, and the reserved even types below 16).
//! - The legacy frame type 3, "disposable inter frame", says so itself.
//!
//! Anything else (AV1, VP9, VVC, key frames, a body whose NAL lengths do not tile it) is not
//! disposable: a stream without disposable pictures is shed as before, by GOP tails.

use crate::media_packet::{MediaPacket, PacketType};
use crate::message::{message_type, Message};

/// The most NAL units looked at in one track's body; a body with more is not disposable (a
/// peer cannot make one message cost much work).
pub const MAX_NAL_UNITS: usize = 256;

/// Legacy FLV video frame type 3.
const DISPOSABLE_INTER_FRAME: u8 = 3;
const CODEC_AVC: u8 = 7;
const CODEC_HEVC_LEGACY: u8 = 12;

/// The codecs whose NAL headers this reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Avc,
    Hevc,
}

/// Whether `msg` is a video picture no other picture references; see the module docs.
pub fn is_disposable(msg: &Message) -> bool {
    if msg.type_id != message_type::VIDEO {
        return false;
    }
    let Some(packet) = MediaPacket::read(msg) else {
        return false;
    };
    if packet.packet != PacketType::CodedFrames || packet.key_frame {
        return false;
    }
    let payload = &msg.payload[..];
    let legacy_codec = (!packet.ex_header).then(|| payload[0] & 0x0f);
    if !packet.ex_header && payload[0] >> 4 == DISPOSABLE_INTER_FRAME {
        return true;
    }
    let mut tracks = 0;
    for track in packet.track_packets(payload) {
        tracks += 1;
        let codec = match (track.fourcc.as_ref(), legacy_codec) {
            (Some(b"avc1"), _) | (None, Some(CODEC_AVC)) => Codec::Avc,
            (Some(b"hvc1"), _) | (None, Some(CODEC_HEVC_LEGACY)) => Codec::Hevc,
            _ => return false,
        };
        if !nal_units_disposable(track.body, codec) {
            return false;
        }
    }
    tracks > 0
}

/// Whether a body of 4-byte length-prefixed NAL units holds at least one picture slice and
/// only slices of a picture nothing references.
fn nal_units_disposable(mut body: &[u8], codec: Codec) -> bool {
    let mut slices = 0;
    for read in 0..=MAX_NAL_UNITS {
        if body.is_empty() {
            return slices > 0;
        }
        if read == MAX_NAL_UNITS {
            return false;
        }
        let Some((len, rest)) = body.split_first_chunk::<4>() else {
            return false;
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len == 0 || len > rest.len() {
            return false;
        }
        let (nal, after) = rest.split_at(len);
        body = after;
        match codec {
            Codec::Avc => {
                let nal_type = nal[0] & 0x1f;
                let ref_idc = (nal[0] >> 5) & 0x03;
                if (1..=5).contains(&nal_type) {
                    if ref_idc != 0 {
                        return false;
                    }
                    slices += 1;
                }
            }
            Codec::Hevc => {
                let nal_type = (nal[0] >> 1) & 0x3f;
                if nal_type < 32 {
                    // VCL: sub-layer non-reference types are the even ones below 16.
                    if nal_type >= 16 || nal_type % 2 == 1 {
                        return false;
                    }
                    slices += 1;
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn video(payload: Vec<u8>) -> Message {
        Message {
            type_id: message_type::VIDEO,
            stream_id: 1,
            timestamp: 33,
            payload: Bytes::from(payload),
        }
    }

    /// A legacy AVC inter frame (frame type 2) carrying `nals`.
    fn avc(frame_type: u8, nals: &[&[u8]]) -> Message {
        let mut p = vec![(frame_type << 4) | CODEC_AVC, 1, 0, 0, 0];
        for nal in nals {
            p.extend_from_slice(&(nal.len() as u32).to_be_bytes());
            p.extend_from_slice(nal);
        }
        video(p)
    }

    /// An E-RTMP `hvc1` CodedFramesX (no composition time) carrying `nals`.
    fn hvc1(nals: &[&[u8]]) -> Message {
        // Ex-header bit, frame type 2 (inter), packet type 3 (CodedFramesX), FourCC.
        let mut p = vec![0x80 | (2 << 4) | 3];
        p.extend_from_slice(b"hvc1");
        for nal in nals {
            p.extend_from_slice(&(nal.len() as u32).to_be_bytes());
            p.extend_from_slice(nal);
        }
        video(p)
    }

    #[test]
    fn an_h264_b_frame_with_nal_ref_idc_zero_is_disposable() {
        // nal_ref_idc 0, type 1 (non-IDR slice): what x264 -bf 2 without pyramid sends.
        assert!(is_disposable(&avc(2, &[&[0x01, 0x9e, 0x00]])));
        // With an SEI (type 6) before it: still.
        assert!(is_disposable(&avc(
            2,
            &[&[0x06, 0x05, 0x00], &[0x01, 0x9e]]
        )));
    }

    #[test]
    fn an_h264_reference_picture_is_not() {
        // P-frame: nal_ref_idc 2, type 1.
        assert!(!is_disposable(&avc(2, &[&[0x41, 0x9a, 0x00]])));
        // A picture of two slices, one referenced.
        assert!(!is_disposable(&avc(2, &[&[0x01, 0x9e], &[0x41, 0x9a]])));
        // A key frame, whatever its NAL units say.
        assert!(!is_disposable(&avc(1, &[&[0x01, 0x9e]])));
        // No slice at all (an SEI alone).
        assert!(!is_disposable(&avc(2, &[&[0x06, 0x05]])));
    }

    #[test]
    fn the_legacy_disposable_frame_type_is_disposable() {
        assert!(is_disposable(&avc(
            DISPOSABLE_INTER_FRAME,
            &[&[0x41, 0x9a]]
        )));
    }

    #[test]
    fn hevc_sub_layer_non_reference_pictures_are_disposable() {
        // TRAIL_N (0) and RASL_N (8): type << 1 in the first header byte.
        assert!(is_disposable(&hvc1(&[&[0x00, 0x01, 0xaa]])));
        assert!(is_disposable(&hvc1(&[&[8 << 1, 0x01, 0xaa]])));
        // TRAIL_R (1) and CRA (21) are referenced.
        assert!(!is_disposable(&hvc1(&[&[1 << 1, 0x01, 0xaa]])));
        assert!(!is_disposable(&hvc1(&[&[21 << 1, 0x01, 0xaa]])));
    }

    #[test]
    fn a_body_whose_lengths_do_not_tile_it_is_not_disposable() {
        let mut m = avc(2, &[&[0x01, 0x9e, 0x00]]);
        let mut p = m.payload.to_vec();
        p.push(0xff);
        m.payload = Bytes::from(p);
        assert!(!is_disposable(&m));
        // A length past the end.
        assert!(!is_disposable(&video(vec![
            0x27, 1, 0, 0, 0, 0, 0, 0, 9, 0x01
        ])));
        // Other codecs and other messages.
        assert!(!is_disposable(&video(vec![0x22, 0x00])));
        let mut audio = avc(2, &[&[0x01]]);
        audio.type_id = message_type::AUDIO;
        assert!(!is_disposable(&audio));
    }

    #[test]
    fn more_nal_units_than_the_bound_are_not_read() {
        let nal: &[u8] = &[0x01, 0x9e];
        let many: Vec<&[u8]> = std::iter::repeat_n(nal, MAX_NAL_UNITS + 1).collect();
        assert!(!is_disposable(&avc(2, &many)));
        let enough: Vec<&[u8]> = std::iter::repeat_n(nal, MAX_NAL_UNITS).collect();
        assert!(is_disposable(&avc(2, &enough)));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_answered_without_panic(payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let _ = is_disposable(&video(payload));
        }
    }
}
