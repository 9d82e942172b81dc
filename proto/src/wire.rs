//! The tunnel wire format (ALPN `rtmpq/4`): frames, varints, session ids and close codes.
//! See the crate docs for the layout.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::message::Message;

/// The wire format version carried in HELLO and WELCOME.
pub const WIRE_VERSION: u8 = 4;
/// Largest frame body accepted: one maximal RTMP message plus its MSG header.
pub const MAX_FRAME_LEN: u64 = (16 << 20) + 64;

/// Frame kind bytes.
pub mod frame_kind {
    /// HELLO: edge to gateway, first frame on the control stream.
    pub const HELLO: u8 = 0x01;
    /// WELCOME: gateway to edge, the answer to HELLO.
    pub const WELCOME: u8 = 0x02;
    /// SESSION_OPEN: edge to gateway, first frame on a session stream.
    pub const SESSION_OPEN: u8 = 0x10;
    /// MSG: one RTMP message, both ways.
    pub const MSG: u8 = 0x11;
    /// SESSION_CLOSE: the session ends, with a code and a reason; both ways.
    pub const SESSION_CLOSE: u8 = 0x12;
    /// SESSION_RESUME: edge to gateway, first frame on a stream that takes over a session the
    /// gateway still holds.
    pub const SESSION_RESUME: u8 = 0x13;
    /// RESUME_TOKEN: gateway to edge on a session stream, the single-use token that resumes it.
    pub const RESUME_TOKEN: u8 = 0x14;
    /// MEDIA_STREAM: first frame of a unidirectional media stream: which session stream and
    /// lane it belongs to, and the lane index of its first message.
    pub const MEDIA_STREAM: u8 = 0x15;
    /// MEDIA: one audio or video message on a media stream, with its control fence.
    pub const MEDIA: u8 = 0x16;
    /// FENCE: on a session stream, what follows waits for the media lanes to reach these
    /// indices.
    pub const FENCE: u8 = 0x17;
    /// LANE_SKIP: on a session stream, a range of a lane's indices that will never arrive
    /// (their stream was reset).
    pub const LANE_SKIP: u8 = 0x18;
}

/// How a session carries its media (SESSION_OPEN / SESSION_RESUME, both directions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Carrier {
    /// Everything on the session's bidirectional stream, in order (wire version 3's way).
    #[default]
    SessionStream,
    /// Audio on a unidirectional stream of its own, video on one unidirectional stream per
    /// GOP, the rest on the session stream; see [`crate::lanes`].
    MediaLanes,
}

impl Carrier {
    fn to_u8(self) -> u8 {
        match self {
            Carrier::SessionStream => 0,
            Carrier::MediaLanes => 1,
        }
    }

    fn from_u8(v: u8) -> Option<Carrier> {
        match v {
            0 => Some(Carrier::SessionStream),
            1 => Some(Carrier::MediaLanes),
            _ => None,
        }
    }
}

/// A media lane of a session carried with [`Carrier::MediaLanes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Audio messages, on one stream.
    Audio,
    /// Video messages, one stream per GOP.
    Video,
}

impl Lane {
    fn to_u8(self) -> u8 {
        match self {
            Lane::Audio => 1,
            Lane::Video => 2,
        }
    }

    fn from_u8(v: u8) -> Option<Lane> {
        match v {
            1 => Some(Lane::Audio),
            2 => Some(Lane::Video),
            _ => None,
        }
    }
}

/// Bytes of a resume token.
pub const RESUME_TOKEN_LEN: usize = 32;

/// A single-use secret that lets the edge that holds it resume a session on the gateway that
/// issued it. Never printed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ResumeToken(pub [u8; RESUME_TOKEN_LEN]);

impl std::fmt::Debug for ResumeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeToken(****)")
    }
}

impl ResumeToken {
    /// Whether `other` is the same token, in time that does not depend on where they differ.
    pub fn matches(&self, other: &ResumeToken) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// An RTMP session's id, chosen by the edge, unique per edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Why a session or connection ended: stable numeric codes, used in SESSION_CLOSE and as QUIC
/// application close codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// Ended normally (a peer closed its RTMP connection).
    Normal,
    /// The tunnel peer broke the wire format.
    ProtocolViolation,
    /// The peer speaks a wire version we do not.
    UnsupportedVersion,
    /// Credentials missing or wrong.
    Unauthorized,
    /// The gateway could not reach the origin.
    OriginUnreachable,
    /// The origin closed the connection.
    OriginClosed,
    /// The origin sent bad RTMP.
    OriginProtocolError,
    /// The pusher or player sent bad RTMP.
    ClientProtocolError,
    /// Something took too long.
    Timeout,
    /// No room: the session limit, or the process-wide bound on buffered bytes.
    Overloaded,
    /// The process is shutting down.
    Shutdown,
    /// A bug or an unexpected local failure.
    Internal,
    /// The edge has no connection to the gateway.
    GatewayUnreachable,
    /// The QUIC connection or stream carrying the session broke (the far hop vanished, the
    /// path died, the stream was reset).
    TunnelLost,
    /// A SESSION_RESUME the gateway refuses: no such session held, a token that does not
    /// match (forged, or used already), or another edge's session.
    ResumeRefused,
    /// A code this version does not know.
    Unknown(u64),
}

impl CloseCode {
    /// The stable wire code.
    pub fn to_code(self) -> u64 {
        match self {
            CloseCode::Normal => 0,
            CloseCode::ProtocolViolation => 1,
            CloseCode::UnsupportedVersion => 2,
            CloseCode::Unauthorized => 3,
            CloseCode::OriginUnreachable => 4,
            CloseCode::OriginClosed => 5,
            CloseCode::OriginProtocolError => 6,
            CloseCode::ClientProtocolError => 7,
            CloseCode::Timeout => 8,
            CloseCode::Overloaded => 9,
            CloseCode::Shutdown => 10,
            CloseCode::Internal => 11,
            CloseCode::GatewayUnreachable => 12,
            CloseCode::TunnelLost => 13,
            CloseCode::ResumeRefused => 14,
            CloseCode::Unknown(c) => c,
        }
    }

    /// The code for a wire value.
    pub fn from_code(code: u64) -> CloseCode {
        match code {
            0 => CloseCode::Normal,
            1 => CloseCode::ProtocolViolation,
            2 => CloseCode::UnsupportedVersion,
            3 => CloseCode::Unauthorized,
            4 => CloseCode::OriginUnreachable,
            5 => CloseCode::OriginClosed,
            6 => CloseCode::OriginProtocolError,
            7 => CloseCode::ClientProtocolError,
            8 => CloseCode::Timeout,
            9 => CloseCode::Overloaded,
            10 => CloseCode::Shutdown,
            11 => CloseCode::Internal,
            12 => CloseCode::GatewayUnreachable,
            13 => CloseCode::TunnelLost,
            14 => CloseCode::ResumeRefused,
            c => CloseCode::Unknown(c),
        }
    }

    /// A short snake_case name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::ProtocolViolation => "protocol_violation",
            CloseCode::UnsupportedVersion => "unsupported_version",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::OriginUnreachable => "origin_unreachable",
            CloseCode::OriginClosed => "origin_closed",
            CloseCode::OriginProtocolError => "origin_protocol_error",
            CloseCode::ClientProtocolError => "client_protocol_error",
            CloseCode::Timeout => "timeout",
            CloseCode::Overloaded => "overloaded",
            CloseCode::Shutdown => "shutdown",
            CloseCode::Internal => "internal",
            CloseCode::GatewayUnreachable => "gateway_unreachable",
            CloseCode::TunnelLost => "tunnel_lost",
            CloseCode::ResumeRefused => "resume_refused",
            CloseCode::Unknown(_) => "unknown",
        }
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.as_str(), self.to_code())
    }
}

/// One tunnel frame.
#[derive(Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a connection: wire version, edge id, optional token.
    Hello {
        /// Wire version the edge speaks.
        version: u8,
        /// A name for the edge, for logs.
        edge_id: String,
        /// Shared-secret token when the gateway asks for one (empty: none).
        token: String,
        /// An edge that has other gateways to go to: once the gateway has heard nothing from
        /// it for this many ms, it may end the edge's sessions and let their origin side go
        /// (the edge has moved them elsewhere) instead of holding them for a resume. 0: hold
        /// by the gateway's own rules. Optional on the wire (absent reads as 0).
        release_after_ms: u32,
    },
    /// Accepts a connection.
    Welcome {
        /// Wire version the gateway speaks.
        version: u8,
        /// A name for the gateway, for logs.
        gateway_id: String,
    },
    /// Opens a session on this stream.
    SessionOpen {
        /// The session's id.
        session_id: SessionId,
        /// The latency budget the gateway applies to media it sends toward the edge (play),
        /// ms; 0: none.
        latency_budget_ms: u32,
        /// How the session carries media, both ways. Optional on the wire (absent: the
        /// session stream).
        carrier: Carrier,
    },
    /// Takes over a session the gateway holds (its tunnel stream was lost), instead of
    /// SESSION_OPEN.
    SessionResume {
        /// The session's id.
        session_id: SessionId,
        /// As in SESSION_OPEN.
        latency_budget_ms: u32,
        /// The last token the gateway gave for it.
        token: ResumeToken,
        /// As in SESSION_OPEN.
        carrier: Carrier,
    },
    /// The token that resumes this session once (the gateway sends a new one after each
    /// resume).
    ResumeToken(ResumeToken),
    /// One end-to-end RTMP message.
    Msg(Message),
    /// Ends the session.
    SessionClose {
        /// Why.
        code: CloseCode,
        /// Words for people.
        reason: String,
    },
    /// Opens a media stream of a session carried on lanes.
    MediaStream {
        /// The QUIC stream id of the session's bidirectional stream.
        session_stream: u64,
        /// The lane.
        lane: Lane,
        /// The lane index of the stream's first message (the rest follow one by one).
        first_index: u64,
    },
    /// One audio or video message on a media stream.
    Media {
        /// Messages on the session stream the sender had sent before this one: it is
        /// written after them.
        control_before: u64,
        /// The message.
        msg: Message,
    },
    /// What follows on the session stream waits until each lane has reached this index
    /// (every earlier message of it written or skipped).
    Fence {
        /// Audio messages sent before.
        audio_before: u64,
        /// Video messages sent before.
        video_before: u64,
    },
    /// Indices `from..to` of `lane` will never arrive: the stream that carried them was reset
    /// (its GOP went stale in QUIC's buffer).
    LaneSkip {
        /// The lane.
        lane: Lane,
        /// First index skipped.
        from: u64,
        /// One past the last index skipped.
        to: u64,
    },
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Frame::Hello {
                version,
                edge_id,
                release_after_ms,
                ..
            } => f
                .debug_struct("Hello")
                .field("version", version)
                .field("edge_id", edge_id)
                .field("token", &"****")
                .field("release_after_ms", release_after_ms)
                .finish(),
            Frame::Welcome {
                version,
                gateway_id,
            } => f
                .debug_struct("Welcome")
                .field("version", version)
                .field("gateway_id", gateway_id)
                .finish(),
            Frame::SessionOpen {
                session_id,
                latency_budget_ms,
                carrier,
            } => f
                .debug_struct("SessionOpen")
                .field("session_id", session_id)
                .field("latency_budget_ms", latency_budget_ms)
                .field("carrier", carrier)
                .finish(),
            Frame::SessionResume {
                session_id,
                latency_budget_ms,
                carrier,
                ..
            } => f
                .debug_struct("SessionResume")
                .field("session_id", session_id)
                .field("latency_budget_ms", latency_budget_ms)
                .field("token", &"****")
                .field("carrier", carrier)
                .finish(),
            Frame::ResumeToken(_) => f.write_str("ResumeToken(****)"),
            Frame::Msg(m) => f.debug_tuple("Msg").field(m).finish(),
            Frame::SessionClose { code, reason } => f
                .debug_struct("SessionClose")
                .field("code", code)
                .field("reason", reason)
                .finish(),
            Frame::MediaStream {
                session_stream,
                lane,
                first_index,
            } => f
                .debug_struct("MediaStream")
                .field("session_stream", session_stream)
                .field("lane", lane)
                .field("first_index", first_index)
                .finish(),
            Frame::Media {
                control_before,
                msg,
            } => f
                .debug_struct("Media")
                .field("control_before", control_before)
                .field("msg", msg)
                .finish(),
            Frame::Fence {
                audio_before,
                video_before,
            } => f
                .debug_struct("Fence")
                .field("audio_before", audio_before)
                .field("video_before", video_before)
                .finish(),
            Frame::LaneSkip { lane, from, to } => f
                .debug_struct("LaneSkip")
                .field("lane", lane)
                .field("from", from)
                .field("to", to)
                .finish(),
        }
    }
}

/// Why bytes could not be read as tunnel frames.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// A kind byte this version does not know.
    #[error("unknown tunnel frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// A frame longer than the decoder's limit ([`MAX_FRAME_LEN`] on session streams).
    #[error("tunnel frame of {0} bytes exceeds the limit")]
    TooLong(u64),
    /// A frame whose body ends early or carries bad text.
    #[error("malformed tunnel frame of kind 0x{0:02x}")]
    Malformed(u8),
    /// A zero-length frame (no kind byte).
    #[error("empty tunnel frame")]
    Empty,
}

/// Appends a QUIC-style variable-length integer (RFC 9000, 16): up to 2^62 - 1.
pub fn put_varint(out: &mut BytesMut, v: u64) {
    match v {
        0..=0x3f => out.put_u8(v as u8),
        0x40..=0x3fff => out.put_u16(0x4000 | v as u16),
        0x4000..=0x3fff_ffff => out.put_u32(0x8000_0000 | v as u32),
        _ => out.put_u64(0xc000_0000_0000_0000 | (v & 0x3fff_ffff_ffff_ffff)),
    }
}

/// Reads a varint from the front of `buf`; `None` if `buf` is too short.
pub fn get_varint(buf: &mut &[u8]) -> Option<u64> {
    let first = *buf.first()?;
    let len = 1usize << (first >> 6);
    if buf.len() < len {
        return None;
    }
    let mut v = u64::from(first & 0x3f);
    for &b in &buf[1..len] {
        v = (v << 8) | u64::from(b);
    }
    buf.advance(len);
    Some(v)
}

fn put_string(out: &mut BytesMut, s: &str) {
    put_varint(out, s.len() as u64);
    out.put_slice(s.as_bytes());
}

fn get_string(body: &mut &[u8]) -> Option<String> {
    let len = get_varint(body)? as usize;
    if body.len() < len {
        return None;
    }
    let s = std::str::from_utf8(&body[..len]).ok()?.to_owned();
    body.advance(len);
    Some(s)
}

impl Frame {
    /// Encodes everything but a MSG frame's payload into `out` and returns the payload (if
    /// any) separately, so media goes to the socket without being copied.
    pub fn encode_head(&self, out: &mut BytesMut) -> Option<Bytes> {
        let mut body = BytesMut::with_capacity(32);
        let mut tail = None;
        let kind = match self {
            Frame::Hello {
                version,
                edge_id,
                token,
                release_after_ms,
            } => {
                body.put_u8(*version);
                put_string(&mut body, edge_id);
                put_string(&mut body, token);
                put_varint(&mut body, u64::from(*release_after_ms));
                frame_kind::HELLO
            }
            Frame::Welcome {
                version,
                gateway_id,
            } => {
                body.put_u8(*version);
                put_string(&mut body, gateway_id);
                frame_kind::WELCOME
            }
            Frame::SessionOpen {
                session_id,
                latency_budget_ms,
                carrier,
            } => {
                body.put_u64(session_id.0);
                put_varint(&mut body, u64::from(*latency_budget_ms));
                body.put_u8(carrier.to_u8());
                frame_kind::SESSION_OPEN
            }
            Frame::SessionResume {
                session_id,
                latency_budget_ms,
                token,
                carrier,
            } => {
                body.put_u64(session_id.0);
                put_varint(&mut body, u64::from(*latency_budget_ms));
                body.put_slice(&token.0);
                body.put_u8(carrier.to_u8());
                frame_kind::SESSION_RESUME
            }
            Frame::ResumeToken(token) => {
                body.put_slice(&token.0);
                frame_kind::RESUME_TOKEN
            }
            Frame::Msg(m) => {
                put_message_head(&mut body, m);
                tail = Some(m.payload.clone());
                frame_kind::MSG
            }
            Frame::MediaStream {
                session_stream,
                lane,
                first_index,
            } => {
                put_varint(&mut body, *session_stream);
                body.put_u8(lane.to_u8());
                put_varint(&mut body, *first_index);
                frame_kind::MEDIA_STREAM
            }
            Frame::Media {
                control_before,
                msg,
            } => {
                put_varint(&mut body, *control_before);
                put_message_head(&mut body, msg);
                tail = Some(msg.payload.clone());
                frame_kind::MEDIA
            }
            Frame::Fence {
                audio_before,
                video_before,
            } => {
                put_varint(&mut body, *audio_before);
                put_varint(&mut body, *video_before);
                frame_kind::FENCE
            }
            Frame::LaneSkip { lane, from, to } => {
                body.put_u8(lane.to_u8());
                put_varint(&mut body, *from);
                put_varint(&mut body, *to);
                frame_kind::LANE_SKIP
            }
            Frame::SessionClose { code, reason } => {
                put_varint(&mut body, code.to_code());
                body.put_slice(reason.as_bytes());
                frame_kind::SESSION_CLOSE
            }
        };
        let tail_len = tail.as_ref().map_or(0, |t| t.len());
        put_varint(out, (1 + body.len() + tail_len) as u64);
        out.put_u8(kind);
        out.put_slice(&body);
        tail
    }

    /// Encodes the whole frame into `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        if let Some(tail) = self.encode_head(out) {
            out.put_slice(&tail);
        }
    }
}

/// Largest HELLO or WELCOME: the control stream's frames are small, and a peer that has not
/// yet said who it is must not make the gateway hold more.
pub const MAX_CONTROL_FRAME_LEN: u64 = 16 << 10;

/// Longest edge id (HELLO) a gateway takes; an edge id is a log field and a metric label.
pub const MAX_EDGE_ID_LEN: usize = 128;

/// Why `edge_id` cannot name an edge, if it cannot: empty, longer than [`MAX_EDGE_ID_LEN`], or
/// with a character that is not printable ASCII (a newline would split a log line).
pub fn edge_id_problem(edge_id: &str) -> Option<String> {
    if edge_id.is_empty() || edge_id.len() > MAX_EDGE_ID_LEN {
        return Some(format!(
            "an edge id has 1 to {MAX_EDGE_ID_LEN} characters, this one {}",
            edge_id.len()
        ));
    }
    let printable = |c: char| c.is_ascii_graphic() || c == ' ';
    (!edge_id.chars().all(printable))
        .then(|| "an edge id has only printable ASCII characters".to_owned())
}

/// Most bytes of a SESSION_CLOSE reason kept; the rest is dropped at decoding (the reason is
/// logged, shown to the client and kept among ended sessions).
pub const MAX_REASON_LEN: usize = 512;

/// Bytes reserved ahead for a frame still arriving: a peer may announce a 16 MiB frame and
/// send nothing, so the buffer grows as bytes come, never by the announced length at once.
const RESERVE_AHEAD: usize = 64 << 10;

/// Reads frames from a byte buffer; "need more bytes" is `Ok(None)`.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_len: u64,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder {
            max_len: MAX_FRAME_LEN,
        }
    }
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max_len` (at most [`MAX_FRAME_LEN`]).
    pub fn with_max_len(max_len: u64) -> Self {
        FrameDecoder {
            max_len: max_len.min(MAX_FRAME_LEN),
        }
    }

    /// Takes one whole frame off the front of `buf`, if it is all there.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        let Some((head, len)) = self.length(buf)? else {
            return Ok(None);
        };
        if buf.len() < head + len {
            buf.reserve((head + len - buf.len()).min(RESERVE_AHEAD));
            return Ok(None);
        }
        buf.advance(head);
        parse_frame(buf.split_to(len).freeze())
    }

    /// Like [`decode`](Self::decode) on bytes already shared (a QUIC chunk): a whole frame
    /// is sliced out without a copy; an incomplete one is left in `bytes`.
    pub fn decode_bytes(&mut self, bytes: &mut Bytes) -> Result<Option<Frame>, WireError> {
        let Some((head, len)) = self.length(bytes)? else {
            return Ok(None);
        };
        if bytes.len() < head + len {
            return Ok(None);
        }
        bytes.advance(head);
        parse_frame(bytes.split_to(len))
    }

    /// The length prefix's size and the frame's length, once the prefix is all there.
    fn length(&self, buf: &[u8]) -> Result<Option<(usize, usize)>, WireError> {
        let mut peek = buf;
        let Some(len) = get_varint(&mut peek) else {
            return Ok(None);
        };
        if len > self.max_len {
            return Err(WireError::TooLong(len));
        }
        if len == 0 {
            return Err(WireError::Empty);
        }
        Ok(Some((buf.len() - peek.len(), len as usize)))
    }
}

/// A message's type, stream id and timestamp (MSG and MEDIA frames; the payload follows).
fn put_message_head(body: &mut BytesMut, m: &Message) {
    body.put_u8(m.type_id);
    put_varint(body, u64::from(m.stream_id));
    body.put_u32(m.timestamp);
}

/// The message at the end of `frame`, whose unread rest is `body`: the payload is sliced out
/// of `frame` without a copy.
fn get_message(frame: &Bytes, mut body: &[u8]) -> Option<Message> {
    let type_id = *body.first()?;
    body.advance(1);
    let stream_id = u32::try_from(get_varint(&mut body)?).ok()?;
    if body.len() < 4 {
        return None;
    }
    let timestamp = body.get_u32();
    let consumed = frame.len() - body.len();
    Some(Message {
        type_id,
        stream_id,
        timestamp,
        payload: frame.slice(consumed..),
    })
}

/// SESSION_OPEN's and SESSION_RESUME's optional carrier byte (absent: the session stream).
fn get_carrier(body: &mut &[u8]) -> Option<Carrier> {
    match body.first() {
        None => Some(Carrier::SessionStream),
        Some(&v) => {
            body.advance(1);
            Carrier::from_u8(v)
        }
    }
}

/// Parses one whole frame (kind and body).
fn parse_frame(frame: Bytes) -> Result<Option<Frame>, WireError> {
    let kind = frame[0];
    let body = &frame[1..];
    let parsed = match kind {
        frame_kind::HELLO
        | frame_kind::WELCOME
        | frame_kind::SESSION_OPEN
        | frame_kind::SESSION_RESUME
        | frame_kind::RESUME_TOKEN
        | frame_kind::SESSION_CLOSE => parse_session_frame(kind, body),
        frame_kind::MSG
        | frame_kind::MEDIA
        | frame_kind::MEDIA_STREAM
        | frame_kind::FENCE
        | frame_kind::LANE_SKIP => parse_media_frame(kind, &frame, body),
        other => return Err(WireError::UnknownKind(other)),
    };
    parsed.map(Some).ok_or(WireError::Malformed(kind))
}

/// Parses the body of a connection or session control frame of `kind`; `None`: malformed.
fn parse_session_frame(kind: u8, mut body: &[u8]) -> Option<Frame> {
    match kind {
        frame_kind::HELLO => (|| {
            let version = *body.first()?;
            body.advance(1);
            let edge_id = get_string(&mut body)?;
            let token = get_string(&mut body)?;
            let release_after_ms = match body.is_empty() {
                true => 0,
                false => u32::try_from(get_varint(&mut body)?).ok()?,
            };
            Some(Frame::Hello {
                version,
                edge_id,
                token,
                release_after_ms,
            })
        })(),
        frame_kind::WELCOME => (|| {
            let version = *body.first()?;
            body.advance(1);
            Some(Frame::Welcome {
                version,
                gateway_id: get_string(&mut body)?,
            })
        })(),
        frame_kind::SESSION_OPEN => (|| {
            if body.len() < 8 {
                return None;
            }
            let session_id = SessionId(body.get_u64());
            let latency_budget_ms = u32::try_from(get_varint(&mut body)?).ok()?;
            let carrier = get_carrier(&mut body)?;
            body.is_empty().then_some(Frame::SessionOpen {
                session_id,
                latency_budget_ms,
                carrier,
            })
        })(),
        frame_kind::SESSION_RESUME => (|| {
            if body.len() < 8 {
                return None;
            }
            let session_id = SessionId(body.get_u64());
            let latency_budget_ms = u32::try_from(get_varint(&mut body)?).ok()?;
            let token = ResumeToken(body.get(..RESUME_TOKEN_LEN)?.try_into().ok()?);
            body.advance(RESUME_TOKEN_LEN);
            let carrier = get_carrier(&mut body)?;
            body.is_empty().then_some(Frame::SessionResume {
                session_id,
                latency_budget_ms,
                token,
                carrier,
            })
        })(),
        frame_kind::RESUME_TOKEN => {
            let token: Option<[u8; RESUME_TOKEN_LEN]> = body.try_into().ok();
            token.map(|t| Frame::ResumeToken(ResumeToken(t)))
        }
        frame_kind::SESSION_CLOSE => (|| {
            let code = CloseCode::from_code(get_varint(&mut body)?);
            // A reason is words for logs and clients; a peer's 16 MiB of them is not kept.
            // Cut after the lossy conversion too (each bad byte becomes a 3-byte U+FFFD), at a
            // character boundary: a reason read back from its own encoding is the same reason.
            let reason = &body[..body.len().min(MAX_REASON_LEN)];
            let mut reason = String::from_utf8_lossy(reason).into_owned();
            reason.truncate(reason.floor_char_boundary(MAX_REASON_LEN));
            // Words for one log line: a peer's control characters (a newline) become spaces.
            let reason = reason.replace(char::is_control, " ");
            Some(Frame::SessionClose { code, reason })
        })(),
        _ => None,
    }
}

/// Parses the body of a message or media lane frame of `kind` (`frame`: the whole frame,
/// which a message's payload is a slice of); `None`: malformed.
fn parse_media_frame(kind: u8, frame: &Bytes, mut body: &[u8]) -> Option<Frame> {
    match kind {
        frame_kind::MSG => get_message(frame, body).map(Frame::Msg),
        frame_kind::MEDIA => (|| {
            let control_before = get_varint(&mut body)?;
            let msg = get_message(frame, body)?;
            Some(Frame::Media {
                control_before,
                msg,
            })
        })(),
        frame_kind::MEDIA_STREAM => (|| {
            let session_stream = get_varint(&mut body)?;
            let lane = Lane::from_u8(*body.first()?)?;
            body.advance(1);
            let first_index = get_varint(&mut body)?;
            body.is_empty().then_some(Frame::MediaStream {
                session_stream,
                lane,
                first_index,
            })
        })(),
        frame_kind::FENCE => (|| {
            let audio_before = get_varint(&mut body)?;
            let video_before = get_varint(&mut body)?;
            body.is_empty().then_some(Frame::Fence {
                audio_before,
                video_before,
            })
        })(),
        frame_kind::LANE_SKIP => (|| {
            let lane = Lane::from_u8(*body.first()?)?;
            body.advance(1);
            let from = get_varint(&mut body)?;
            let to = get_varint(&mut body)?;
            (body.is_empty() && from <= to).then_some(Frame::LaneSkip { lane, from, to })
        })(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_ids_are_short_printable_ascii_and_close_reasons_one_line() {
        assert_eq!(edge_id_problem("studio-cam 1@host.example"), None);
        assert!(edge_id_problem("").is_some());
        assert!(edge_id_problem(&"a".repeat(16 << 10)).is_some());
        assert!(edge_id_problem("cam\nforged log line").is_some());
        assert!(edge_id_problem("caméra").is_some());
        let close = Frame::SessionClose {
            code: CloseCode::Normal,
            reason: "done\nforged log line".into(),
        };
        let mut buf = BytesMut::new();
        close.encode(&mut buf);
        let Some(Frame::SessionClose { reason, .. }) =
            FrameDecoder::default().decode(&mut buf).unwrap()
        else {
            panic!("not a SESSION_CLOSE")
        };
        assert_eq!(reason, "done forged log line");
    }

    #[test]
    fn varints_round_trip_at_every_width() {
        for v in [
            0u64,
            63,
            64,
            16383,
            16384,
            (1 << 30) - 1,
            1 << 30,
            (1 << 62) - 1,
        ] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            let mut s = &b[..];
            assert_eq!(get_varint(&mut s), Some(v));
            assert!(s.is_empty());
            let mut short = &b[..b.len() - 1];
            assert_eq!(get_varint(&mut short), None);
        }
    }

    #[test]
    fn a_hello_without_release_after_reads_as_hold() {
        // An edge built before the field: version, edge id, token and nothing more.
        let mut body = BytesMut::new();
        body.put_u8(WIRE_VERSION);
        put_string(&mut body, "old-edge");
        put_string(&mut body, "");
        let mut frame = BytesMut::new();
        put_varint(&mut frame, body.len() as u64 + 1);
        frame.put_u8(frame_kind::HELLO);
        frame.extend_from_slice(&body);
        let hello = FrameDecoder::default().decode(&mut frame).unwrap().unwrap();
        assert!(
            matches!(hello, Frame::Hello { release_after_ms: 0, ref edge_id, .. } if edge_id == "old-edge"),
            "{hello:?}"
        );
        // One past u32: malformed, not cut.
        put_varint(&mut body, 1 << 32);
        let mut frame = BytesMut::new();
        put_varint(&mut frame, body.len() as u64 + 1);
        frame.put_u8(frame_kind::HELLO);
        frame.extend_from_slice(&body);
        assert!(FrameDecoder::default().decode(&mut frame).is_err());
    }

    #[test]
    fn frames_round_trip_byte_by_byte() {
        let frames = vec![
            Frame::Hello {
                version: 1,
                edge_id: "edge-a".into(),
                token: "secret".into(),
                release_after_ms: 1200,
            },
            Frame::Welcome {
                version: 1,
                gateway_id: "gw".into(),
            },
            Frame::SessionOpen {
                session_id: SessionId(0xdead_beef),
                latency_budget_ms: 1000,
                carrier: Carrier::MediaLanes,
            },
            Frame::SessionOpen {
                session_id: SessionId(1),
                latency_budget_ms: 0,
                carrier: Carrier::SessionStream,
            },
            Frame::SessionResume {
                session_id: SessionId(7),
                latency_budget_ms: 500,
                token: ResumeToken([0xab; RESUME_TOKEN_LEN]),
                carrier: Carrier::MediaLanes,
            },
            Frame::ResumeToken(ResumeToken([0xcd; RESUME_TOKEN_LEN])),
            Frame::Msg(Message::new(9, 1, u32::MAX, vec![1, 2, 3])),
            Frame::Msg(Message::new(20, 70000, 0, Vec::new())),
            Frame::SessionClose {
                code: CloseCode::OriginUnreachable,
                reason: "connection refused".into(),
            },
            Frame::MediaStream {
                session_stream: 4,
                lane: Lane::Video,
                first_index: 1 << 40,
            },
            Frame::Media {
                control_before: 17,
                msg: Message::new(8, 1, 33, vec![0xaf, 1, 2]),
            },
            Frame::Fence {
                audio_before: 3,
                video_before: 90,
            },
            Frame::LaneSkip {
                lane: Lane::Audio,
                from: 5,
                to: 9,
            },
        ];
        let mut bytes = BytesMut::new();
        for f in &frames {
            f.encode(&mut bytes);
        }
        let mut dec = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in bytes {
            buf.put_u8(b);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert!(!format!("{:?}", frames[0]).contains("secret"));
        assert!(
            !format!("{:?}", frames[4]).contains("171"),
            "tokens are not printed"
        );
        assert!(ResumeToken([1; 32]).matches(&ResumeToken([1; 32])));
        assert!(!ResumeToken([1; 32]).matches(&ResumeToken([2; 32])));
    }

    #[test]
    fn a_session_open_without_a_carrier_reads_as_the_session_stream() {
        let mut frame = BytesMut::new();
        Frame::SessionOpen {
            session_id: SessionId(3),
            latency_budget_ms: 700,
            carrier: Carrier::SessionStream,
        }
        .encode(&mut frame);
        // Drop the carrier byte and shorten the length prefix by one.
        let body = frame[1..frame.len() - 1].to_vec();
        let mut short = BytesMut::new();
        put_varint(&mut short, body.len() as u64);
        short.extend_from_slice(&body);
        let open = FrameDecoder::default().decode(&mut short).unwrap().unwrap();
        assert!(matches!(
            open,
            Frame::SessionOpen {
                carrier: Carrier::SessionStream,
                latency_budget_ms: 700,
                ..
            }
        ));
        // An unknown carrier is malformed.
        let mut bad = frame.clone();
        let last = bad.len() - 1;
        bad[last] = 9;
        assert!(FrameDecoder::default().decode(&mut bad).is_err());
        // A skip whose end is before its start is malformed.
        let mut skip = BytesMut::new();
        Frame::LaneSkip {
            lane: Lane::Video,
            from: 9,
            to: 5,
        }
        .encode(&mut skip);
        assert!(FrameDecoder::default().decode(&mut skip).is_err());
    }

    #[test]
    fn rejects_unknown_kinds_and_huge_lengths() {
        let mut buf = BytesMut::from(&[0x02, 0x7f, 0x00][..]);
        assert_eq!(
            FrameDecoder::default().decode(&mut buf),
            Err(WireError::UnknownKind(0x7f))
        );
        let mut buf = BytesMut::new();
        put_varint(&mut buf, 1 << 40);
        assert!(matches!(
            FrameDecoder::default().decode(&mut buf),
            Err(WireError::TooLong(_))
        ));
        let mut buf = BytesMut::from(&[0x02, frame_kind::MSG, 9][..]);
        assert_eq!(
            FrameDecoder::default().decode(&mut buf),
            Err(WireError::Malformed(frame_kind::MSG))
        );
    }

    #[test]
    fn frames_whole_in_shared_bytes_are_sliced_without_a_copy() {
        let msg = Frame::Msg(Message::new(9, 1, 7, vec![5u8; 1000]));
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        msg.encode(&mut buf);
        let mut bytes = buf.freeze();
        let whole = bytes.clone();
        let Some(Frame::Msg(got)) = FrameDecoder::default().decode_bytes(&mut bytes).unwrap()
        else {
            panic!("a whole frame")
        };
        assert_eq!(got.payload.len(), 1000);
        // The payload points into the shared bytes: no copy was made.
        let inside = whole.as_ptr_range();
        assert!(inside.contains(&got.payload.as_ptr()));
        // Half a frame stays where it is.
        let mut half = bytes.slice(..500);
        assert_eq!(FrameDecoder::default().decode_bytes(&mut half), Ok(None));
        assert_eq!(half.len(), 500);
    }

    #[test]
    fn an_announced_length_is_not_reserved_up_front() {
        let mut buf = BytesMut::new();
        put_varint(&mut buf, MAX_FRAME_LEN);
        buf.put_u8(frame_kind::MSG);
        assert_eq!(FrameDecoder::default().decode(&mut buf), Ok(None));
        assert!(
            buf.capacity() <= 2 * RESERVE_AHEAD,
            "reserved {} bytes for a frame of which 9 arrived",
            buf.capacity()
        );
        // The control stream refuses a HELLO past its small limit.
        let mut hello = BytesMut::new();
        put_varint(&mut hello, MAX_CONTROL_FRAME_LEN + 1);
        assert_eq!(
            FrameDecoder::with_max_len(MAX_CONTROL_FRAME_LEN).decode(&mut hello),
            Err(WireError::TooLong(MAX_CONTROL_FRAME_LEN + 1))
        );
    }

    #[test]
    fn a_long_close_reason_is_cut() {
        let close = Frame::SessionClose {
            code: CloseCode::Internal,
            reason: "é".repeat(100_000),
        };
        let mut buf = BytesMut::new();
        close.encode(&mut buf);
        let Some(Frame::SessionClose { reason, .. }) =
            FrameDecoder::default().decode(&mut buf).unwrap()
        else {
            panic!("a close frame");
        };
        assert!(reason.len() <= MAX_REASON_LEN, "{}", reason.len());
        assert!(reason.starts_with("éé"));
        // Bytes that are not UTF-8 grow threefold as U+FFFD: still cut, and stable.
        let mut bad = BytesMut::new();
        Frame::SessionClose {
            code: CloseCode::Internal,
            reason: String::new(),
        }
        .encode(&mut bad);
        let mut raw = bad.to_vec();
        raw.extend(std::iter::repeat_n(0xff, 600));
        let body = &raw[1..];
        let mut framed = BytesMut::new();
        put_varint(&mut framed, body.len() as u64);
        framed.extend_from_slice(body);
        let Some(Frame::SessionClose { reason, code }) =
            FrameDecoder::default().decode(&mut framed).unwrap()
        else {
            panic!("a close frame");
        };
        assert!(reason.len() <= MAX_REASON_LEN, "{}", reason.len());
        let mut again = BytesMut::new();
        Frame::SessionClose {
            code,
            reason: reason.clone(),
        }
        .encode(&mut again);
        let Some(Frame::SessionClose { reason: same, .. }) =
            FrameDecoder::default().decode(&mut again).unwrap()
        else {
            panic!("a close frame");
        };
        assert_eq!(same, reason);
    }

    #[test]
    fn close_codes_are_stable() {
        for code in 0..=13 {
            assert_eq!(CloseCode::from_code(code).to_code(), code);
        }
        assert_eq!(CloseCode::OriginUnreachable.to_code(), 4);
        assert_eq!(CloseCode::from_code(99), CloseCode::Unknown(99));
    }
}
