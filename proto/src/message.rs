//! RTMP messages and their classes: what each hop handles itself and what travels end to end.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::media_packet::MediaPacket;

/// RTMP message type ids (RTMP 1.0 spec, section 5.4 and 7.1).
pub mod message_type {
    /// Protocol control: Set Chunk Size.
    pub const SET_CHUNK_SIZE: u8 = 1;
    /// Protocol control: Abort Message.
    pub const ABORT: u8 = 2;
    /// Protocol control: Acknowledgement.
    pub const ACKNOWLEDGEMENT: u8 = 3;
    /// User Control Message (events such as Stream Begin and ping).
    pub const USER_CONTROL: u8 = 4;
    /// Protocol control: Window Acknowledgement Size.
    pub const WINDOW_ACK_SIZE: u8 = 5;
    /// Protocol control: Set Peer Bandwidth.
    pub const SET_PEER_BANDWIDTH: u8 = 6;
    /// Audio data.
    pub const AUDIO: u8 = 8;
    /// Video data.
    pub const VIDEO: u8 = 9;
    /// Data message, AMF3 encoded.
    pub const DATA_AMF3: u8 = 15;
    /// Shared object message, AMF3 encoded.
    pub const SHARED_OBJECT_AMF3: u8 = 16;
    /// Command message, AMF3 encoded.
    pub const COMMAND_AMF3: u8 = 17;
    /// Data message, AMF0 encoded (onMetaData, @setDataFrame).
    pub const DATA_AMF0: u8 = 18;
    /// Shared object message, AMF0 encoded.
    pub const SHARED_OBJECT_AMF0: u8 = 19;
    /// Command message, AMF0 encoded (connect, publish, play, onStatus).
    pub const COMMAND_AMF0: u8 = 20;
    /// Aggregate message (several FLV tags in one).
    pub const AGGREGATE: u8 = 22;
}

/// User Control event types (RTMP 1.0 spec, section 7.1.7).
pub mod user_control_event {
    /// The server tells the client a stream became functional.
    pub const STREAM_BEGIN: u16 = 0;
    /// The server tells the client playback of a stream is over.
    pub const STREAM_EOF: u16 = 1;
    /// The client tells the server its buffer length.
    pub const SET_BUFFER_LENGTH: u16 = 3;
    /// Ping request: the receiver answers with a ping response.
    pub const PING_REQUEST: u16 = 6;
    /// Ping response carrying the request's timestamp.
    pub const PING_RESPONSE: u16 = 7;
}

/// One whole RTMP message: what crosses the tunnel, with its full 32-bit timestamp.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// Message type id (see [`message_type`]).
    pub type_id: u8,
    /// Message stream id (0 for the NetConnection, 1.. for NetStreams).
    pub stream_id: u32,
    /// Absolute timestamp in milliseconds, wrapping at 2^32.
    pub timestamp: u32,
    /// The payload, untouched.
    pub payload: Bytes,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("type_id", &self.type_id)
            .field("stream_id", &self.stream_id)
            .field("timestamp", &self.timestamp)
            .field("len", &self.payload.len())
            .finish()
    }
}

/// Who handles a message: the hop that receives it, or the far end of the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageClass {
    /// Protocol control and ping: each hop answers these itself; they never cross the tunnel.
    HopByHop,
    /// Commands, data, media and the other user control events: forwarded untouched.
    EndToEnd,
}

/// The kind of media a message carries, as far as latency policy and statistics care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// A video key frame (a decoder can start here).
    VideoKeyframe,
    /// Any other coded video frame.
    VideoFrame,
    /// What a decoder needs before frames and a player joining late needs again: a sequence
    /// start (AVC/HEVC/AV1/VP9 configuration record, AAC AudioSpecificConfig, OpusHead, ...),
    /// an audio multichannel configuration or video metadata (HDR `colorInfo`), of any track.
    /// Never dropped, never the start of a GOP.
    Header,
    /// A coded audio frame.
    Audio,
    /// Anything else (commands, metadata, control).
    Other,
}

impl Message {
    /// Builds a message.
    pub fn new(type_id: u8, stream_id: u32, timestamp: u32, payload: impl Into<Bytes>) -> Self {
        Message {
            type_id,
            stream_id,
            timestamp,
            payload: payload.into(),
        }
    }

    /// Which hop handles this message.
    pub fn class(&self) -> MessageClass {
        use message_type::*;
        match self.type_id {
            SET_CHUNK_SIZE | ABORT | ACKNOWLEDGEMENT | WINDOW_ACK_SIZE | SET_PEER_BANDWIDTH => {
                MessageClass::HopByHop
            }
            USER_CONTROL => match self.user_control_event() {
                Some(user_control_event::PING_REQUEST | user_control_event::PING_RESPONSE) => {
                    MessageClass::HopByHop
                }
                _ => MessageClass::EndToEnd,
            },
            _ => MessageClass::EndToEnd,
        }
    }

    /// The event type of a User Control message, if this is one and it is long enough.
    pub fn user_control_event(&self) -> Option<u16> {
        (self.type_id == message_type::USER_CONTROL && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// A video frame's composition time offset in ms (presentation time minus its timestamp,
    /// the decode time) for AVC/HEVC/VVC coded frames, legacy and Enhanced RTMP (the first
    /// track's in a multitrack message, inside ModEx too); 0 for everything else.
    pub fn composition_offset(&self) -> i32 {
        MediaPacket::read(self).map_or(0, |p| p.composition_offset)
    }

    /// What kind of media this is, from the FLV tag header at the start of the payload, legacy
    /// or Enhanced RTMP v2 ([`MediaPacket`]).
    pub fn media_kind(&self) -> MediaKind {
        MediaPacket::read(self).map_or(MediaKind::Other, |p| p.kind())
    }

    /// The FLV tag header of an audio or video message, read ([`MediaPacket::read`]).
    pub fn media_packet(&self) -> Option<MediaPacket> {
        MediaPacket::read(self)
    }
}

/// A protocol control or ping message, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Set Chunk Size (type 1).
    SetChunkSize(u32),
    /// Abort the partial message on a chunk stream (type 2).
    Abort(u32),
    /// Acknowledgement: bytes received so far (type 3).
    Acknowledgement(u32),
    /// Window Acknowledgement Size (type 5).
    WindowAckSize(u32),
    /// Set Peer Bandwidth with its limit type (type 6).
    SetPeerBandwidth(u32, u8),
    /// User Control ping request.
    PingRequest(u32),
    /// User Control ping response.
    PingResponse(u32),
    /// User Control Stream Begin for a message stream id.
    StreamBegin(u32),
}

impl Control {
    /// Parses a control message; `None` for other messages or short payloads.
    pub fn parse(msg: &Message) -> Option<Control> {
        use message_type::*;
        let mut p = &msg.payload[..];
        let u32_at = |p: &mut &[u8]| (p.len() >= 4).then(|| p.get_u32());
        Some(match msg.type_id {
            SET_CHUNK_SIZE => Control::SetChunkSize(u32_at(&mut p)?),
            ABORT => Control::Abort(u32_at(&mut p)?),
            ACKNOWLEDGEMENT => Control::Acknowledgement(u32_at(&mut p)?),
            WINDOW_ACK_SIZE => Control::WindowAckSize(u32_at(&mut p)?),
            SET_PEER_BANDWIDTH => {
                let size = u32_at(&mut p)?;
                Control::SetPeerBandwidth(size, p.first().copied().unwrap_or(2))
            }
            USER_CONTROL => {
                if p.len() < 6 {
                    return None;
                }
                let event = p.get_u16();
                let value = p.get_u32();
                match event {
                    user_control_event::PING_REQUEST => Control::PingRequest(value),
                    user_control_event::PING_RESPONSE => Control::PingResponse(value),
                    user_control_event::STREAM_BEGIN => Control::StreamBegin(value),
                    _ => return None,
                }
            }
            _ => return None,
        })
    }

    /// Encodes this control as a message on stream 0 at timestamp 0.
    pub fn to_message(self) -> Message {
        use message_type::*;
        let mut b = BytesMut::with_capacity(6);
        let type_id = match self {
            Control::SetChunkSize(v) => {
                b.put_u32(v & 0x7fff_ffff);
                SET_CHUNK_SIZE
            }
            Control::Abort(v) => {
                b.put_u32(v);
                ABORT
            }
            Control::Acknowledgement(v) => {
                b.put_u32(v);
                ACKNOWLEDGEMENT
            }
            Control::WindowAckSize(v) => {
                b.put_u32(v);
                WINDOW_ACK_SIZE
            }
            Control::SetPeerBandwidth(v, limit) => {
                b.put_u32(v);
                b.put_u8(limit);
                SET_PEER_BANDWIDTH
            }
            Control::PingRequest(v) => {
                b.put_u16(user_control_event::PING_REQUEST);
                b.put_u32(v);
                USER_CONTROL
            }
            Control::PingResponse(v) => {
                b.put_u16(user_control_event::PING_RESPONSE);
                b.put_u32(v);
                USER_CONTROL
            }
            Control::StreamBegin(v) => {
                b.put_u16(user_control_event::STREAM_BEGIN);
                b.put_u32(v);
                USER_CONTROL
            }
        };
        Message::new(type_id, 0, 0, b.freeze())
    }
}

/// The window acknowledgement size each hop announces to its RTMP peer.
pub const DEFAULT_WINDOW_ACK_SIZE: u32 = 2_500_000;

/// The smallest acknowledgement window a hop honours: a peer asking for a window of one byte
/// would otherwise turn each byte it sends into a 16-byte acknowledgement.
pub const MIN_ACK_WINDOW: u32 = 4096;

/// A hop's own side of the hop-by-hop protocol: acknowledgements and ping answers.
///
/// Plain state, no I/O: feed it the bytes counted and the hop-by-hop messages received,
/// and send whatever replies it returns.
#[derive(Debug, Default)]
pub struct HopControl {
    bytes_received: u64,
    last_ack_at: u64,
    peer_window: Option<u32>,
}

impl HopControl {
    /// Counts `n` bytes read from the peer; returns an Acknowledgement when one is due.
    pub fn on_bytes_received(&mut self, n: usize) -> Option<Message> {
        self.bytes_received += n as u64;
        let window = u64::from(self.peer_window?);
        if window > 0 && self.bytes_received - self.last_ack_at >= window {
            self.last_ack_at = self.bytes_received;
            // The sequence number wraps at 2^32 like every RTMP byte counter.
            return Some(Control::Acknowledgement(self.bytes_received as u32).to_message());
        }
        None
    }

    /// Handles a hop-by-hop message; returns the reply to send to the peer, if any.
    /// Set Chunk Size and Abort are applied by the chunk decoder itself.
    pub fn on_message(&mut self, msg: &Message) -> Option<Message> {
        match Control::parse(msg)? {
            Control::WindowAckSize(size) => {
                // A tiny window would make every read cost an acknowledgement out.
                self.peer_window = Some(size.max(MIN_ACK_WINDOW));
                None
            }
            Control::PingRequest(ts) => Some(Control::PingResponse(ts).to_message()),
            _ => None,
        }
    }

    /// Total bytes received from the peer.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_design() {
        for t in [1u8, 2, 3, 5, 6] {
            assert_eq!(
                Message::new(t, 0, 0, vec![0; 5]).class(),
                MessageClass::HopByHop
            );
        }
        for t in [8u8, 9, 15, 16, 17, 18, 19, 20, 22] {
            assert_eq!(
                Message::new(t, 1, 0, vec![0]).class(),
                MessageClass::EndToEnd
            );
        }
        let ping = Control::PingRequest(7).to_message();
        assert_eq!(ping.class(), MessageClass::HopByHop);
        let begin = Control::StreamBegin(1).to_message();
        assert_eq!(begin.class(), MessageClass::EndToEnd);
    }

    #[test]
    fn hop_control_acks_per_window_and_answers_pings() {
        let mut hop = HopControl::default();
        assert!(hop.on_bytes_received(10_000).is_none(), "no window yet");
        let mut tiny = HopControl::default();
        tiny.on_message(&Control::WindowAckSize(1).to_message());
        assert!(
            tiny.on_bytes_received(1).is_none(),
            "a 1-byte window is raised"
        );
        assert!(tiny.on_bytes_received(MIN_ACK_WINDOW as usize).is_some());
        assert!(hop
            .on_message(&Control::WindowAckSize(10_000).to_message())
            .is_none());
        let ack = hop.on_bytes_received(1).expect("ack due");
        assert_eq!(Control::parse(&ack), Some(Control::Acknowledgement(10_001)));
        assert!(hop.on_bytes_received(9_999).is_none());
        assert!(hop.on_bytes_received(1).is_some());
        let pong = hop
            .on_message(&Control::PingRequest(42).to_message())
            .unwrap();
        assert_eq!(Control::parse(&pong), Some(Control::PingResponse(42)));
    }

    #[test]
    fn media_kinds() {
        let avc_seq = Message::new(9, 1, 0, vec![0x17, 0, 0, 0, 0]);
        assert_eq!(avc_seq.media_kind(), MediaKind::Header);
        let key = Message::new(9, 1, 0, vec![0x17, 1, 0, 0, 0]);
        assert_eq!(key.media_kind(), MediaKind::VideoKeyframe);
        let inter = Message::new(9, 1, 0, vec![0x27, 1, 0, 0, 0]);
        assert_eq!(inter.media_kind(), MediaKind::VideoFrame);
        let aac_seq = Message::new(8, 1, 0, vec![0xaf, 0, 0x12, 0x10]);
        assert_eq!(aac_seq.media_kind(), MediaKind::Header);
        let aac = Message::new(8, 1, 0, vec![0xaf, 1, 0x21]);
        assert_eq!(aac.media_kind(), MediaKind::Audio);
        // Enhanced RTMP: IsExHeader | key frame | SequenceStart, then FourCC.
        let ex_seq = Message::new(9, 1, 0, vec![0x90, b'h', b'v', b'c', b'1']);
        assert_eq!(ex_seq.media_kind(), MediaKind::Header);
        let ex_key = Message::new(9, 1, 0, vec![0x91, b'h', b'v', b'c', b'1', 0, 0, 0]);
        assert_eq!(ex_key.media_kind(), MediaKind::VideoKeyframe);
        // End of sequence (ffmpeg's FLV muxer sends one last) is not a frame.
        let avc_end = Message::new(9, 1, 0, vec![0x17, 2, 0, 0, 0]);
        assert_eq!(avc_end.media_kind(), MediaKind::Other);
        let ex_end = Message::new(9, 1, 0, vec![0x92, b'a', b'v', b'0', b'1']);
        assert_eq!(ex_end.media_kind(), MediaKind::Other);
        let command_frame = Message::new(9, 1, 0, vec![0x57, 0]);
        assert_eq!(command_frame.media_kind(), MediaKind::Other);
    }

    #[test]
    fn composition_offsets() {
        let b_frame = Message::new(9, 1, 0, vec![0x27, 1, 0xff, 0xff, 0xdf, 9]);
        assert_eq!(b_frame.composition_offset(), -33);
        let p_frame = Message::new(9, 1, 0, vec![0x27, 1, 0, 0, 66, 9]);
        assert_eq!(p_frame.composition_offset(), 66);
        let ex = Message::new(9, 1, 0, vec![0xa1, b'h', b'v', b'c', b'1', 0, 0, 33, 9]);
        assert_eq!(ex.composition_offset(), 33);
        let ex_x = Message::new(9, 1, 0, vec![0xa3, b'h', b'v', b'c', b'1', 9]);
        assert_eq!(ex_x.composition_offset(), 0);
        let short = Message::new(9, 1, 0, vec![0x27, 1, 0]);
        assert_eq!(short.composition_offset(), 0);
        assert_eq!(
            Message::new(8, 1, 0, vec![0xaf, 1, 1, 1, 1]).composition_offset(),
            0
        );
    }
}
