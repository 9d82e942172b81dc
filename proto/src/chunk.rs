//! The RTMP chunk stream codec: [`ChunkDecoder`] turns bytes into whole messages, [`ChunkEncoder`]
//! turns messages into chunks. Sync, no I/O: the decoder says "need more bytes" by returning
//! `Ok(None)`.
//!
//! The decoder keeps one partial payload per chunk stream, so chunk streams may interleave
//! mid-message (rml_rtmp's deserializer keeps one partial payload and corrupts such input). It
//! consumes chunk payload bytes as they arrive, so its read buffer never holds more than a chunk
//! header, whatever the chunk size. Memory is capped by [`ChunkLimits`].

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};

use crate::buffer_bound::SessionBuffer;
use crate::message::{message_type, Message};

/// The chunk size every RTMP connection starts with.
pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// The chunk size our hops announce to their peers.
pub const OUR_CHUNK_SIZE: u32 = 4096;
const EXTENDED_TIMESTAMP: u32 = 0x00ff_ffff;
/// The first allocation for a message's payload, and the least it grows by.
const GROWTH_STEP: usize = 64 << 10;

/// Bounds the decoder enforces; each one ends the session when crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Largest chunk size a peer may set.
    pub max_chunk_size: u32,
    /// Largest message length a header may announce.
    pub max_message_size: u32,
    /// Most payload bytes held in partial messages across all chunk streams.
    pub max_buffered_bytes: usize,
    /// Most chunk streams with state at once.
    pub max_chunk_streams: usize,
    /// Messages a peer may send before [`bytes_per_message`](Self::bytes_per_message) applies.
    pub message_burst: u64,
    /// After the burst, at least this many bytes received per message on average: one byte
    /// in never becomes a message out (a 1-byte type-3 header can start a new empty message).
    pub bytes_per_message: u64,
}

impl Default for ChunkLimits {
    fn default() -> Self {
        ChunkLimits {
            max_chunk_size: 1 << 20,
            max_message_size: 8 << 20,
            max_buffered_bytes: 16 << 20,
            max_chunk_streams: 64,
            message_burst: 1024,
            bytes_per_message: 16,
        }
    }
}

/// Why a chunk stream could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    /// Set Chunk Size outside `1..=max`.
    #[error("peer set chunk size {size}, outside 1..={max}")]
    ChunkSizeOutOfRange {
        /// The size asked for.
        size: u32,
        /// The largest size allowed.
        max: u32,
    },
    /// A message header announced more than the limit.
    #[error("message of {length} bytes announced on chunk stream {csid}, limit is {limit}")]
    MessageTooLarge {
        /// Chunk stream id.
        csid: u32,
        /// Announced length.
        length: u32,
        /// The limit.
        limit: u32,
    },
    /// Partial messages would hold more than the limit.
    #[error("partial messages would hold more than {limit} bytes")]
    BufferLimit {
        /// The limit.
        limit: usize,
    },
    /// Too many chunk streams in use.
    #[error("more than {limit} chunk streams in use")]
    TooManyChunkStreams {
        /// The limit.
        limit: usize,
    },
    /// A compressed header on a chunk stream that never had a full one.
    #[error("chunk header type {fmt} on chunk stream {csid} with no previous header")]
    NoPreviousHeader {
        /// Chunk stream id.
        csid: u32,
        /// Header format 1, 2 or 3.
        fmt: u8,
    },
    /// A new message started on a chunk stream whose previous message was incomplete.
    #[error("new message on chunk stream {csid} with {pending} bytes of the previous one missing")]
    MessageInterrupted {
        /// Chunk stream id.
        csid: u32,
        /// Bytes still expected of the interrupted message.
        pending: u32,
    },
    /// The process-wide bound on buffered bytes has no room for this session's next bytes.
    #[error("{0}")]
    Overloaded(#[from] crate::buffer_bound::BufferFull),
    /// Far more messages than bytes: a peer amplifying its input.
    #[error("{messages} messages from {bytes} bytes: more than one message per {per} bytes")]
    TooManyMessages {
        /// Messages decoded.
        messages: u64,
        /// Bytes received.
        bytes: u64,
        /// The least average size allowed.
        per: u64,
    },
    /// A protocol control message too short to parse.
    #[error("malformed protocol control message of type {type_id}")]
    BadControlMessage {
        /// Message type id.
        type_id: u8,
    },
}

#[derive(Debug, Default)]
struct DecodeState {
    timestamp: u32,
    /// The last timestamp field: a delta, or the absolute time after a type 0 header.
    timestamp_field: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    extended: bool,
    /// Payload bytes of the current message still to come; 0 between messages.
    missing: u32,
    partial: BytesMut,
}

/// What one chunk header says, its fields read (`None`: not in this header's format).
struct ChunkHeader {
    fmt: u8,
    /// The timestamp field (absolute for format 0, else a delta), extended if it was.
    field: Option<u32>,
    extended: bool,
    length: Option<u32>,
    type_id: Option<u8>,
    stream_id: Option<u32>,
}

impl DecodeState {
    /// Takes chunk stream `csid`'s header `h`: a continuation chunk says nothing new, else a
    /// message starts here (one still pending is an error, as is a length past `limits`).
    fn apply(&mut self, csid: u32, h: &ChunkHeader, limits: ChunkLimits) -> Result<(), ChunkError> {
        let pending = self.missing;
        if h.fmt == 3 && pending > 0 {
            // Continuation chunk: the header carries nothing new.
            return Ok(());
        }
        if pending > 0 {
            return Err(ChunkError::MessageInterrupted { csid, pending });
        }
        if let Some(length) = h.length {
            if length > limits.max_message_size {
                return Err(ChunkError::MessageTooLarge {
                    csid,
                    length,
                    limit: limits.max_message_size,
                });
            }
            self.length = length;
        }
        if let Some(type_id) = h.type_id {
            self.type_id = type_id;
        }
        if let Some(stream_id) = h.stream_id {
            self.stream_id = stream_id;
        }
        match (h.fmt, h.field) {
            (0, Some(abs)) => self.timestamp = abs,
            (_, Some(delta)) => self.timestamp = self.timestamp.wrapping_add(delta),
            // A type 3 header starting a message repeats the previous timestamp field.
            (_, None) => self.timestamp = self.timestamp.wrapping_add(self.timestamp_field),
        }
        if let Some(f) = h.field {
            self.timestamp_field = f;
        }
        self.extended = h.extended;
        self.missing = self.length;
        Ok(())
    }
}

/// Reassembles RTMP messages from chunks, one partial payload per chunk stream.
#[derive(Debug)]
pub struct ChunkDecoder {
    limits: ChunkLimits,
    chunk_size: u32,
    streams: HashMap<u32, DecodeState>,
    /// Chunk stream and payload bytes left of the chunk being read.
    in_chunk: Option<(u32, u32)>,
    buffered: usize,
    /// Bytes consumed and messages completed, for the bytes-per-message bound.
    consumed: u64,
    messages: u64,
    buffer: Option<Arc<SessionBuffer>>,
}

impl ChunkDecoder {
    /// A decoder at the default chunk size of 128.
    pub fn new(limits: ChunkLimits) -> Self {
        ChunkDecoder {
            limits,
            chunk_size: DEFAULT_CHUNK_SIZE,
            streams: HashMap::new(),
            in_chunk: None,
            buffered: 0,
            consumed: 0,
            messages: 0,
            buffer: None,
        }
    }

    /// Charges partial messages to `buffer` from now on (they are given back as messages
    /// complete).
    pub fn set_buffer(&mut self, buffer: Arc<SessionBuffer>) {
        self.buffer = Some(buffer);
    }

    /// The peer's current chunk size.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Payload bytes held in partial messages.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Consumes bytes from `buf` until one message is complete (`Ok(Some)`) or `buf` runs out
    /// (`Ok(None)`: need more bytes). Set Chunk Size and Abort are applied here and returned too.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, ChunkError> {
        loop {
            if let Some((csid, remaining)) = self.in_chunk {
                if remaining > 0 && buf.is_empty() {
                    return Ok(None);
                }
                let n = (remaining as usize).min(buf.len());
                if self.buffered + n > self.limits.max_buffered_bytes {
                    return Err(ChunkError::BufferLimit {
                        limit: self.limits.max_buffered_bytes,
                    });
                }
                if let Some(buffer) = &self.buffer {
                    buffer.take(n)?;
                }
                let state = self
                    .streams
                    .get_mut(&csid)
                    .expect("state exists for open chunk");
                if state.partial.capacity() - state.partial.len() < n {
                    // Grow toward the announced length in steps that double what arrived,
                    // at most to the message's end: a message of up to 64 KiB is allocated
                    // once, a larger one copied a few times, and an announced length that
                    // never arrives is never reserved.
                    let have = state.partial.len();
                    let step = have.max(GROWTH_STEP).min(state.missing as usize);
                    state.partial.reserve(step.max(n));
                }
                state.partial.extend_from_slice(&buf[..n]);
                buf.advance(n);
                self.consumed += n as u64;
                self.buffered += n;
                state.missing -= n as u32;
                let remaining = remaining - n as u32;
                if remaining > 0 {
                    self.in_chunk = Some((csid, remaining));
                    return Ok(None);
                }
                self.in_chunk = None;
                if state.missing == 0 {
                    self.buffered -= state.partial.len();
                    if let Some(buffer) = &self.buffer {
                        buffer.give_back(state.partial.len());
                    }
                    self.messages += 1;
                    let limits = &self.limits;
                    let allowed = limits.message_burst + self.consumed / limits.bytes_per_message;
                    if self.messages > allowed {
                        return Err(ChunkError::TooManyMessages {
                            messages: self.messages,
                            bytes: self.consumed,
                            per: limits.bytes_per_message,
                        });
                    }
                    let msg = Message {
                        type_id: state.type_id,
                        stream_id: state.stream_id,
                        timestamp: state.timestamp,
                        payload: state.partial.split().freeze(),
                    };
                    self.apply_control(&msg)?;
                    return Ok(Some(msg));
                }
                continue;
            }
            if !self.decode_header(buf)? {
                return Ok(None);
            }
        }
    }

    /// Parses one chunk header if `buf` holds all of it; sets `in_chunk`.
    fn decode_header(&mut self, buf: &mut BytesMut) -> Result<bool, ChunkError> {
        let Some(&first) = buf.first() else {
            return Ok(false);
        };
        let fmt = first >> 6;
        let (csid, basic_len) = match first & 0x3f {
            0 if buf.len() >= 2 => (64 + u32::from(buf[1]), 2),
            1 if buf.len() >= 3 => (64 + u32::from(buf[1]) + 256 * u32::from(buf[2]), 3),
            0 | 1 => return Ok(false),
            low => (u32::from(low), 1),
        };
        let header_len = basic_len + [11, 7, 3, 0][fmt as usize];
        if buf.len() < header_len {
            return Ok(false);
        }
        if !self.streams.contains_key(&csid) {
            if fmt != 0 {
                return Err(ChunkError::NoPreviousHeader { csid, fmt });
            }
            if self.streams.len() >= self.limits.max_chunk_streams {
                return Err(ChunkError::TooManyChunkStreams {
                    limit: self.limits.max_chunk_streams,
                });
            }
        }
        let h = &buf[basic_len..header_len];
        let be24 = |b: &[u8]| u32::from_be_bytes([0, b[0], b[1], b[2]]);
        let field = (fmt < 3).then(|| be24(&h[0..3]));
        let prev_extended = self.streams.get(&csid).is_some_and(|s| s.extended);
        let extended = match field {
            Some(f) => f == EXTENDED_TIMESTAMP,
            None => prev_extended,
        };
        let total_len = header_len + if extended { 4 } else { 0 };
        if buf.len() < total_len {
            return Ok(false);
        }
        let field = if extended {
            Some(u32::from_be_bytes(
                buf[header_len..total_len].try_into().expect("4 bytes"),
            ))
        } else {
            field
        };
        let limits = self.limits;
        let state = self.streams.entry(csid).or_default();
        let header = ChunkHeader {
            fmt,
            field,
            extended,
            length: (fmt < 2).then(|| be24(&h[3..6])),
            type_id: (fmt < 2).then(|| h[6]),
            stream_id: (fmt == 0).then(|| u32::from_le_bytes(h[7..11].try_into().expect("4"))),
        };
        state.apply(csid, &header, limits)?;
        buf.advance(total_len);
        self.consumed += total_len as u64;
        self.in_chunk = Some((csid, state.missing.min(self.chunk_size)));
        Ok(true)
    }

    fn apply_control(&mut self, msg: &Message) -> Result<(), ChunkError> {
        let value = || {
            msg.payload
                .get(..4)
                .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
                .ok_or(ChunkError::BadControlMessage {
                    type_id: msg.type_id,
                })
        };
        match msg.type_id {
            message_type::SET_CHUNK_SIZE => {
                let size = value()?;
                if size == 0 || size > self.limits.max_chunk_size {
                    return Err(ChunkError::ChunkSizeOutOfRange {
                        size,
                        max: self.limits.max_chunk_size,
                    });
                }
                self.chunk_size = size;
            }
            message_type::ABORT => {
                if let Some(state) = self.streams.get_mut(&value()?) {
                    self.buffered -= state.partial.len();
                    if let Some(buffer) = &self.buffer {
                        buffer.give_back(state.partial.len());
                    }
                    state.partial.clear();
                    state.missing = 0;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[derive(Debug)]
struct EncodeState {
    timestamp: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
}

/// Splits messages into chunks, compressing headers against the previous message on the same
/// chunk stream.
#[derive(Debug)]
pub struct ChunkEncoder {
    chunk_size: u32,
    streams: HashMap<u32, EncodeState>,
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        ChunkEncoder {
            chunk_size: DEFAULT_CHUNK_SIZE,
            streams: HashMap::new(),
        }
    }
}

impl ChunkEncoder {
    /// The chunk size in use for output.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Writes a Set Chunk Size message, then uses `size` for everything after it.
    pub fn set_chunk_size(&mut self, size: u32, out: &mut BytesMut) {
        let msg = crate::message::Control::SetChunkSize(size).to_message();
        self.encode(&msg, out);
        self.chunk_size = size;
    }

    /// The chunk stream a message goes out on: one per kind, as common servers do.
    pub fn chunk_stream_for(msg: &Message) -> u32 {
        use message_type::*;
        match msg.type_id {
            SET_CHUNK_SIZE | ABORT | ACKNOWLEDGEMENT | USER_CONTROL | WINDOW_ACK_SIZE
            | SET_PEER_BANDWIDTH => 2,
            AUDIO => 4,
            VIDEO => 6,
            DATA_AMF0 | DATA_AMF3 => 5,
            COMMAND_AMF0 | COMMAND_AMF3 if msg.stream_id != 0 => 8,
            _ => 3,
        }
    }

    /// Appends the chunks of `msg` to `out` (the payload is copied once).
    pub fn encode(&mut self, msg: &Message, out: &mut BytesMut) {
        let csid = Self::chunk_stream_for(msg);
        out.reserve(msg.payload.len() + 18);
        self.encode_chunks(csid, msg, |header, payload| {
            out.extend_from_slice(header);
            out.extend_from_slice(payload);
        });
    }

    /// Encodes `msg` on chunk stream `csid`, handing each whole chunk to `emit` separately (so
    /// that chunks of different messages can be interleaved).
    pub fn encode_on(&mut self, csid: u32, msg: &Message, mut emit: impl FnMut(&[u8])) {
        self.encode_chunks(csid, msg, |header, payload| {
            emit(&[header, payload].concat());
        });
    }

    /// The chunking itself: `emit` gets each chunk's header and its slice of the payload.
    fn encode_chunks(&mut self, csid: u32, msg: &Message, mut emit: impl FnMut(&[u8], &[u8])) {
        let length = msg.payload.len() as u32;
        let (fmt, field) = match self.streams.get(&csid) {
            Some(prev)
                if prev.stream_id == msg.stream_id
                    && msg.timestamp.wrapping_sub(prev.timestamp) < 0x8000_0000 =>
            {
                let delta = msg.timestamp.wrapping_sub(prev.timestamp);
                if prev.length == length && prev.type_id == msg.type_id {
                    (2u8, delta)
                } else {
                    (1, delta)
                }
            }
            _ => (0, msg.timestamp),
        };
        let extended = field >= EXTENDED_TIMESTAMP;
        let mut header = BytesMut::with_capacity(18);
        put_basic_header(&mut header, fmt, csid);
        let ts_field = if extended { EXTENDED_TIMESTAMP } else { field };
        header.put_slice(&ts_field.to_be_bytes()[1..]);
        if fmt < 2 {
            header.put_slice(&length.to_be_bytes()[1..]);
            header.put_u8(msg.type_id);
        }
        if fmt == 0 {
            header.put_u32_le(msg.stream_id);
        }
        if extended {
            header.put_u32(field);
        }
        let mut payload = &msg.payload[..];
        loop {
            let n = payload.len().min(self.chunk_size as usize);
            emit(&header, &payload[..n]);
            payload = &payload[n..];
            if payload.is_empty() {
                break;
            }
            header.clear();
            put_basic_header(&mut header, 3, csid);
            if extended {
                header.put_u32(field);
            }
        }
        self.streams.insert(
            csid,
            EncodeState {
                timestamp: msg.timestamp,
                length,
                type_id: msg.type_id,
                stream_id: msg.stream_id,
            },
        );
    }
}

fn put_basic_header(out: &mut BytesMut, fmt: u8, csid: u32) {
    let fmt = fmt << 6;
    match csid {
        2..=63 => out.put_u8(fmt | csid as u8),
        64..=319 => {
            out.put_u8(fmt);
            out.put_u8((csid - 64) as u8);
        }
        _ => {
            out.put_u8(fmt | 1);
            out.put_u16_le((csid - 64) as u16);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Control;
    use proptest::prelude::*;

    fn decode_all(decoder: &mut ChunkDecoder, bytes: &[u8], step: usize) -> Vec<Message> {
        let mut out = Vec::new();
        let mut buf = BytesMut::new();
        for piece in bytes.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            while let Some(m) = decoder.decode(&mut buf).expect("valid input") {
                out.push(m);
            }
        }
        assert!(buf.is_empty(), "decoder left {} bytes", buf.len());
        out
    }

    #[test]
    fn round_trips_a_simple_sequence() {
        let mut enc = ChunkEncoder::default();
        let mut out = BytesMut::new();
        let msgs = vec![
            Message::new(20, 0, 0, vec![1; 300]),
            Message::new(9, 1, 40, vec![2; 5000]),
            Message::new(9, 1, 73, vec![3; 5000]),
            Message::new(8, 1, 50, vec![4; 10]),
            Message::new(9, 1, 106, vec![]),
        ];
        for m in &msgs {
            enc.encode(m, &mut out);
        }
        let mut dec = ChunkDecoder::new(ChunkLimits::default());
        assert_eq!(decode_all(&mut dec, &out, 7), msgs);
    }

    #[test]
    fn type3_new_message_after_type0_reuses_the_absolute_timestamp_as_delta() {
        // Spec 5.3.1.2.4: a type 3 chunk after a type 0 uses that timestamp as its delta.
        let mut bytes = vec![0x04, 0, 0, 100, 0, 0, 1, 8, 1, 0, 0, 0, 0xaa];
        bytes.extend_from_slice(&[0xc4, 0xbb]);
        let mut dec = ChunkDecoder::new(ChunkLimits::default());
        let got = decode_all(&mut dec, &bytes, 1);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].timestamp, got[1].timestamp), (100, 200));
        assert_eq!(&got[1].payload[..], &[0xbb]);
    }

    #[test]
    fn extended_timestamp_is_read_on_continuation_chunks() {
        let mut enc = ChunkEncoder::default();
        let mut out = BytesMut::new();
        let msg = Message::new(9, 1, 0x0100_0000, vec![7; 300]);
        enc.encode(&msg, &mut out);
        // 1 + 11 + 4 + 128, then twice 1 + 4 + up to 128.
        assert_eq!(out.len(), 144 + 133 + 49);
        let mut dec = ChunkDecoder::new(ChunkLimits::default());
        assert_eq!(decode_all(&mut dec, &out, 3), vec![msg]);
    }

    #[test]
    fn set_chunk_size_applies_to_following_chunks() {
        let mut enc = ChunkEncoder::default();
        let mut out = BytesMut::new();
        enc.set_chunk_size(4096, &mut out);
        let big = Message::new(9, 1, 10, vec![9; 10_000]);
        enc.encode(&big, &mut out);
        let mut dec = ChunkDecoder::new(ChunkLimits::default());
        let got = decode_all(&mut dec, &out, 1000);
        assert_eq!(dec.chunk_size(), 4096);
        assert_eq!(got[1], big);
    }

    #[test]
    fn abort_discards_the_partial_message() {
        let mut enc = ChunkEncoder::default();
        let mut chunks = Vec::new();
        enc.encode_on(6, &Message::new(9, 1, 0, vec![1; 300]), |c| {
            chunks.push(c.to_vec())
        });
        let mut bytes = chunks[0].clone();
        let mut ctl = BytesMut::new();
        enc.encode(&Control::Abort(6).to_message(), &mut ctl);
        bytes.extend_from_slice(&ctl);
        let next = Message::new(9, 1, 40, vec![2; 10]);
        enc.encode_on(6, &next, |c| bytes.extend_from_slice(c));
        let mut dec = ChunkDecoder::new(ChunkLimits::default());
        let got = decode_all(&mut dec, &bytes, 5);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].payload, next.payload);
        assert_eq!(dec.buffered_bytes(), 0);
    }

    #[test]
    fn limits_end_the_stream_with_reasons() {
        let mut dec = ChunkDecoder::new(ChunkLimits::default());
        let mut buf = BytesMut::new();
        ChunkEncoder::default().encode(&Control::SetChunkSize(0x7fff_ffff).to_message(), &mut buf);
        let err = dec.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, ChunkError::ChunkSizeOutOfRange { .. }),
            "{err}"
        );

        let mut dec = ChunkDecoder::new(ChunkLimits::default());
        let mut buf = BytesMut::from(&[0x06, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0][..]);
        let err = dec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, ChunkError::MessageTooLarge { .. }), "{err}");

        let mut dec = ChunkDecoder::new(ChunkLimits::default());
        let mut buf = BytesMut::from(&[0x46, 0, 0, 0, 0, 0, 1, 9][..]);
        assert!(matches!(
            dec.decode(&mut buf),
            Err(ChunkError::NoPreviousHeader { csid: 6, fmt: 1 })
        ));

        let limits = ChunkLimits {
            max_buffered_bytes: 1000,
            ..ChunkLimits::default()
        };
        let mut dec = ChunkDecoder::new(limits);
        let mut enc = ChunkEncoder::default();
        let mut buf = BytesMut::new();
        for csid in 3..20 {
            // First chunk of a 500-byte message on many chunk streams, never finished.
            let mut first = true;
            enc.encode_on(csid, &Message::new(9, 1, 0, vec![0; 500]), |c| {
                if std::mem::take(&mut first) {
                    buf.extend_from_slice(c)
                }
            });
        }
        let err = loop {
            match dec.decode(&mut buf) {
                Err(e) => break e,
                Ok(None) => panic!("limit never hit"),
                Ok(Some(_)) => {}
            }
        };
        assert_eq!(err, ChunkError::BufferLimit { limit: 1000 });
    }

    #[test]
    fn one_byte_headers_starting_empty_messages_end_the_stream() {
        // A type-0 header of an empty message on chunk stream 6, then 1-byte type-3 headers,
        // each of which starts another empty message.
        let mut bytes = vec![0x06, 0, 0, 0, 0, 0, 0, 9, 1, 0, 0, 0];
        bytes.extend(std::iter::repeat_n(0xc6, 1 << 20));
        let mut buf = BytesMut::from(&bytes[..]);
        let mut dec = ChunkDecoder::new(ChunkLimits::default());
        let mut decoded = 0u64;
        let err = loop {
            match dec.decode(&mut buf) {
                Ok(Some(_)) => decoded += 1,
                Ok(None) => panic!("a megabyte of empty messages was accepted"),
                Err(e) => break e,
            }
        };
        assert!(matches!(err, ChunkError::TooManyMessages { .. }), "{err}");
        assert!(decoded < 1200, "{decoded} messages before the bound");
        assert!(buf.len() > (1 << 20) - 1200, "stopped early in the input");
    }

    #[test]
    fn a_message_buffer_grows_in_bounded_steps() {
        // A 16 MiB announcement with one chunk of it: the buffer holds what arrived and the
        // first step, not the announced length.
        let mut dec = ChunkDecoder::new(ChunkLimits::default());
        let mut enc = ChunkEncoder::default();
        let mut bytes = BytesMut::new();
        enc.encode(&Message::new(9, 1, 0, vec![1; 100_000]), &mut bytes);
        let mut first = bytes.split_to(140);
        assert_eq!(dec.decode(&mut first), Ok(None));
        let state = dec.streams.values().next().unwrap();
        assert!(
            state.partial.capacity() <= 2 * GROWTH_STEP,
            "{}",
            state.partial.capacity()
        );
        // The whole message still arrives intact.
        let msg = dec.decode(&mut bytes).unwrap().unwrap();
        assert_eq!(msg.payload.len(), 100_000);
        assert!(msg.payload.iter().all(|&b| b == 1));
    }

    #[test]
    fn partial_messages_are_charged_to_the_buffer_bound_and_given_back() {
        let buffer = crate::buffer_bound::BufferBound::new(3000);
        let mut dec = ChunkDecoder::new(ChunkLimits::default());
        dec.set_buffer(buffer.session());
        let mut enc = ChunkEncoder::default();
        let mut bytes = BytesMut::new();
        enc.encode(&Message::new(9, 1, 0, vec![7; 2000]), &mut bytes);
        let mut first = bytes.split_to(1000);
        assert_eq!(dec.decode(&mut first), Ok(None));
        assert!(
            buffer.used() > 900,
            "partial bytes charged: {}",
            buffer.used()
        );
        let msg = dec.decode(&mut bytes).unwrap().expect("whole message");
        assert_eq!(msg.payload.len(), 2000);
        assert_eq!(buffer.used(), 0, "a completed message leaves the buffer");

        // A message bigger than the whole buffer fails with `Overloaded` part way.
        let mut big = BytesMut::new();
        enc.encode(&Message::new(9, 1, 0, vec![7; 5000]), &mut big);
        let err = loop {
            match dec.decode(&mut big) {
                Err(e) => break e,
                Ok(None) => panic!("buffer never hit"),
                Ok(Some(_)) => {}
            }
        };
        assert!(matches!(err, ChunkError::Overloaded(_)), "{err}");
        drop(dec);
        assert_eq!(
            buffer.used(),
            0,
            "a dropped decoder gives its partials back"
        );
    }

    fn arb_message() -> impl Strategy<Value = (u32, Message)> {
        (
            prop::sample::select(vec![3u32, 4, 6, 8, 63, 64, 319, 320, 65599]),
            prop::sample::select(vec![8u8, 9, 18, 20]),
            0u32..3,
            0usize..3000,
        )
            .prop_map(|(csid, type_id, stream_id, len)| {
                let payload: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
                (csid, Message::new(type_id, stream_id, 0, payload))
            })
    }

    proptest! {
        #[test]
        fn random_interleavings_round_trip(
            msgs in prop::collection::vec(arb_message(), 1..40),
            deltas in prop::collection::vec(0u32..2000, 40),
            base in prop::sample::select(vec![0u32, 0x00ff_fff0, 0xffff_fc00, 12345]),
            chunk_sizes in prop::collection::vec(prop::sample::select(vec![1u32, 2, 128, 129, 1000, 4096, 65536]), 1..4),
            interleave_seed in any::<u64>(),
            step in 1usize..5000,
        ) {
            // Timestamps per chunk stream increase from `base` and may cross 0xFFFFFF and 2^32.
            let mut now: HashMap<u32, u32> = HashMap::new();
            let msgs: Vec<(u32, Message)> = msgs.into_iter().enumerate().map(|(i, (csid, mut m))| {
                let t = now.entry(csid).or_insert(base);
                *t = t.wrapping_add(deltas[i % deltas.len()]);
                m.timestamp = *t;
                // A unique prefix makes every payload identifiable after decoding.
                let mut payload = (i as u32).to_be_bytes().to_vec();
                payload.extend_from_slice(&m.payload);
                m.payload = payload.into();
                (csid, m)
            }).collect();

            let mut enc = ChunkEncoder::default();
            let mut bytes = Vec::new();
            let mut sizes = chunk_sizes.iter();
            let mut seed = interleave_seed;
            // Encode in segments; within one segment, chunks of different chunk streams
            // interleave mid-message. A chunk size change ends a segment.
            for segment in msgs.chunks(msgs.len().div_ceil(chunk_sizes.len())) {
                let mut queues: Vec<std::collections::VecDeque<Vec<u8>>> = Vec::new();
                let mut by_csid: HashMap<u32, usize> = HashMap::new();
                for (csid, m) in segment {
                    let q = *by_csid.entry(*csid).or_insert_with(|| { queues.push(Default::default()); queues.len() - 1 });
                    enc.encode_on(*csid, m, |c| queues[q].push_back(c.to_vec()));
                }
                while queues.iter().any(|q| !q.is_empty()) {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let live: Vec<usize> = (0..queues.len()).filter(|&i| !queues[i].is_empty()).collect();
                    let pick = live[(seed >> 33) as usize % live.len()];
                    bytes.extend(queues[pick].pop_front().unwrap());
                }
                if let Some(&size) = sizes.next() {
                    let mut out = BytesMut::new();
                    enc.set_chunk_size(size, &mut out);
                    bytes.extend_from_slice(&out);
                }
            }

            let mut dec = ChunkDecoder::new(ChunkLimits::default());
            let got: Vec<Message> = decode_all(&mut dec, &bytes, step)
                .into_iter()
                .filter(|m| m.type_id != message_type::SET_CHUNK_SIZE)
                .collect();
            prop_assert_eq!(got.len(), msgs.len());
            // Every message arrives intact, in order within its chunk stream.
            let position: HashMap<&[u8], usize> =
                got.iter().enumerate().map(|(i, m)| (&m.payload[..], i)).collect();
            for csid in now.keys() {
                let mut last = None;
                for (_, want) in msgs.iter().filter(|(c, _)| c == csid) {
                    let at = position.get(&want.payload[..]).copied();
                    prop_assert!(at.is_some(), "message lost");
                    prop_assert_eq!(&got[at.unwrap()], want);
                    prop_assert!(last < at, "reordered within chunk stream {}", csid);
                    last = at;
                }
            }
            prop_assert_eq!(dec.buffered_bytes(), 0);
        }
    }
}
