//! What each fuzz target does with the bytes it is given: one function per parser that reads
//! peer or operator input. The cargo-fuzz targets in `fuzz/` (nightly) call these, and
//! `tests/corpus.rs` replays every saved input through them on stable, so CI keeps every
//! finding fixed.
//!
//! Each function must return for any input without panicking, hanging or allocating without
//! bound; the assertions inside are the properties that make a finding a finding.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rtmpq_proto::chunk::{ChunkDecoder, ChunkEncoder, ChunkLimits};
use rtmpq_proto::command::Command;
use rtmpq_proto::message::{Control, HopControl, Message};
use rtmpq_proto::session::{Flow, SessionTracker};
use rtmpq_proto::wire::FrameDecoder;

/// A fuzz case: it takes any bytes and panics only on a finding.
pub type FuzzCase = fn(&[u8]);

/// The fuzz targets by name, as `fuzz/fuzz_targets/NAME.rs` and `fuzz/corpus/NAME/` know them.
pub const TARGETS: [(&str, FuzzCase); 5] = [
    ("chunk_decoder", chunk_decoder),
    ("wire_frames", wire_frames),
    ("amf0_command", amf0_command),
    ("rtmp_handshake", rtmp_handshake),
    ("config", config),
];

/// Splits `data` into pieces whose lengths come from `data` itself (the first byte), so the
/// fuzzer explores what arrives in one read and what arrives across reads.
fn pieces(data: &[u8]) -> (impl Iterator<Item = &[u8]>, &[u8]) {
    let (step, rest) = match data.split_first() {
        Some((&s, rest)) => (usize::from(s % 64) + 1, rest),
        None => (1, data),
    };
    (rest.chunks(step), rest)
}

/// The RTMP chunk decoder on a peer's bytes, under tight limits so they are reached: it never
/// buffers past its bound, one byte in never becomes more than its share of messages, and every
/// message it yields survives our encoder and decoder unchanged (and is read by every inspector
/// a hop runs on it: media headers, NAL headers for disposable pictures).
pub fn chunk_decoder(data: &[u8]) {
    let limits = ChunkLimits {
        max_chunk_size: 1 << 16,
        max_message_size: 1 << 16,
        max_buffered_bytes: 1 << 18,
        max_chunk_streams: 8,
        message_burst: 64,
        bytes_per_message: 16,
    };
    let mut decoder = ChunkDecoder::new(limits);
    let mut control = HopControl::default();
    let (reads, all) = pieces(data);
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    'reads: for read in reads {
        buf.extend_from_slice(read);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(msg)) => {
                    assert!(msg.payload.len() <= limits.max_message_size as usize);
                    let _ = control.on_message(&msg);
                    let _ = Control::parse(&msg);
                    let _ = msg.class();
                    let _ = msg.media_kind();
                    let _ = msg.composition_offset();
                    let _ = rtmpq_proto::picture::is_disposable(&msg);
                    if let Some(p) = msg.media_packet() {
                        // Every track's body lies inside the payload.
                        for t in p.track_packets(&msg.payload) {
                            assert!(t.body.len() <= msg.payload.len());
                        }
                    }
                    let _ = msg.user_control_event();
                    messages.push(msg);
                }
                Ok(None) => break,
                Err(_) => break 'reads,
            }
            assert!(decoder.buffered_bytes() <= limits.max_buffered_bytes);
        }
        let _ = control.on_bytes_received(read.len());
    }
    let allowed = limits.message_burst + all.len() as u64 / limits.bytes_per_message;
    assert!(
        messages.len() as u64 <= allowed,
        "{} messages from {} bytes",
        messages.len(),
        all.len()
    );
    // Chunk size and abort act on this hop's chunk streams; the hops never forward them.
    messages.retain(|msg| {
        !matches!(
            Control::parse(msg),
            Some(Control::SetChunkSize(_) | Control::Abort(_))
        )
    });
    let mut encoder = ChunkEncoder::default();
    let mut wire = BytesMut::new();
    for msg in &messages {
        encoder.encode(msg, &mut wire);
    }
    let mut again = ChunkDecoder::new(ChunkLimits::default());
    for msg in &messages {
        let back = again
            .decode(&mut wire)
            .expect("our own chunks decode")
            .expect("a whole message");
        assert_eq!(&back, msg);
    }
}

/// The tunnel's frame decoder on a peer's bytes, both ways it is called: whole frames are
/// re-encoded to the same frame, and what the copying and the sharing decoder read agree.
pub fn wire_frames(data: &[u8]) {
    let (reads, all) = pieces(data);
    let mut decoder = FrameDecoder::with_max_len(1 << 16);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    'reads: for read in reads {
        buf.extend_from_slice(read);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(_) => break 'reads,
            }
        }
        assert!(buf.capacity() <= all.len() + (64 << 10) + 64);
    }
    let mut shared = Bytes::copy_from_slice(all);
    for frame in &frames {
        let same = decoder.decode_bytes(&mut shared).expect("decoded before");
        assert_eq!(same.as_ref(), Some(frame));
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        let back = FrameDecoder::default()
            .decode(&mut out)
            .expect("our own frame decodes");
        assert_eq!(back.as_ref(), Some(frame));
        assert!(out.is_empty());
    }
}

/// AMF0 command inspection as both hops run it on a peer's message: the bounded check, then
/// rml_amf0, then the session tracker. What parses also survives being written back.
pub fn amf0_command(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    // Type 20 (AMF0 command) or 17 (AMF3 command with AMF0 values).
    let type_id = if selector & 1 == 0 { 20 } else { 17 };
    let msg = Message::new(type_id, 0, 0, body.to_vec());
    if let Ok(Some(cmd)) = Command::parse(&msg) {
        let again = Command::parse(&cmd.to_message(0)).expect("re-encoded command is valid");
        assert!(again.is_some());
        let _ = cmd.status();
    }
    let mut tracker = SessionTracker::default();
    let _ = tracker.record(Flow::ToOrigin, &msg, std::time::Instant::now());
    let _ = tracker.record(Flow::ToClient, &msg, std::time::Instant::now());
}

/// The RTMP handshake (rml_rtmp's, as `rtmpq_hop::rtmp::handshake` drives it) on a peer's
/// bytes, as the server (the edge toward a pusher) and as the client (the gateway toward an
/// origin). Its answer to a byte is bounded: the handshake is 3073 bytes each way.
pub fn rtmp_handshake(data: &[u8]) {
    for client in [false, true] {
        let mut hs = Handshake::new(if client {
            PeerType::Client
        } else {
            PeerType::Server
        });
        let mut sent = 0;
        if client {
            sent += hs.generate_outbound_p0_and_p1().expect("c0c1").len();
        }
        let (reads, _) = pieces(data);
        for read in reads {
            match hs.process_bytes(read) {
                Ok(HandshakeProcessResult::InProgress { response_bytes }) => {
                    sent += response_bytes.len()
                }
                Ok(HandshakeProcessResult::Completed { response_bytes, .. }) => {
                    sent += response_bytes.len();
                    assert!(sent <= 2 * 1537, "{sent} handshake bytes sent");
                    break;
                }
                Err(_) => break,
            }
            assert!(sent <= 2 * 1537, "{sent} handshake bytes sent");
        }
    }
}

/// Config loading as `rtmpq gateway --config` and `rtmpq edge --config` do it: parse, then
/// resolve every check that touches no file or socket.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    if let Ok(gateway) = rtmpq_hop::config::parse_toml::<rtmpq_gateway::GatewayConfig>(text, path) {
        let _ = gateway.resolve();
        let _ = format!("{gateway:?}");
    }
    if let Ok(edge) = rtmpq_hop::config::parse_toml::<rtmpq_edge::EdgeConfig>(text, path) {
        let _ = edge.resolve();
        let _ = format!("{edge:?}");
    }
}
