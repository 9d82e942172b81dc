//! rtmpq-proto: the pure core of rtmpq, no I/O and no async runtime: the RTMP chunk codec,
//! message classes, bounded AMF0 command inspection, the tunnel wire format, the session
//! tracker, the media queue that enforces the latency budget, and the process-wide buffer
//! budget. The async layer (sockets, QUIC streams, the
//! pumps) is `rtmpq-hop`.
//!
//! Parsing never does I/O: [`chunk::ChunkDecoder`] and [`wire::FrameDecoder`] take bytes and
//! return "need more" as `Ok(None)`; policies take the time as an argument.
//!
//! # Tunnel wire format, version 2 (ALPN `rtmpq/2`)
//!
//! One QUIC connection (TLS 1.3) carries many RTMP sessions. Every frame on every stream is
//!
//! ```text
//! frame   = length:varint  kind:u8  body        ; length counts kind + body
//! varint  = QUIC variable-length integer (RFC 9000 section 16), at most 2^62-1
//! string  = len:varint utf8-bytes
//! ```
//!
//! | kind | name          | direction   | body |
//! |------|---------------|-------------|------|
//! | 0x01 | HELLO         | edge → gw   | `version:u8 edge_id:string token:string` |
//! | 0x02 | WELCOME       | gw → edge   | `version:u8 gateway_id:string` |
//! | 0x10 | SESSION_OPEN  | edge → gw   | `session_id:u64 latency_budget_ms:varint` (0: none) |
//! | 0x11 | MSG           | both        | `type:u8 stream_id:varint timestamp:u32 payload:bytes-to-end` |
//! | 0x12 | SESSION_CLOSE | both        | `code:varint reason:utf8-to-end` (first 512 bytes kept) |
//!
//! Integers are big-endian. A frame longer than [`wire::MAX_FRAME_LEN`] or of an unknown kind
//! ends the stream it arrived on with [`wire::CloseCode::ProtocolViolation`].
//!
//! **Connection.** The edge opens the first bidirectional stream and sends HELLO. The gateway
//! answers WELCOME on it, or closes the connection with a QUIC application error whose code is
//! a [`wire::CloseCode`] (`unsupported_version` 2, `unauthorized` 3). The control stream stays
//! open for the connection's life.
//!
//! **Session.** Each RTMP connection (one pusher or player) is one further bidirectional stream
//! opened by the edge: SESSION_OPEN first, then MSG frames both ways, carrying only end-to-end
//! messages ([`message::MessageClass::EndToEnd`]): commands, data, shared objects, audio, video,
//! aggregates and user control events other than ping, each with its message stream id and
//! full 32-bit timestamp, payload untouched. Protocol control (types 1, 2, 3, 5, 6) and ping
//! are answered by each hop and never cross. Either side ends the session with SESSION_CLOSE
//! (code + reason) and finishes its send side; the edge turns a non-normal close into an RTMP
//! error (`_error` for a pending connect, else `onStatus` `NetStream.Failed`) for its client.
//!
//! **Close codes** (stable): 0 normal, 1 protocol_violation, 2 unsupported_version,
//! 3 unauthorized, 4 origin_unreachable, 5 origin_closed, 6 origin_protocol_error,
//! 7 client_protocol_error, 8 timeout, 9 overloaded, 10 shutdown, 11 internal,
//! 12 gateway_unreachable (edge-local: no connection to the gateway), 13 tunnel_lost (the QUIC
//! connection or stream under a live session broke; never sent, each side notes it itself).
//!
//! **Latency budget.** Each hop keeps the media it has read from its RTMP peer in a
//! [`media_queue::MediaQueue`] and hands QUIC only about a congestion window of it, so the
//! backlog of a slow or dark link waits where the budget can drop it (whole GOP tails, never
//! headers, metadata or commands). The edge applies its own budget to what it publishes and
//! tells the gateway, in SESSION_OPEN, the budget for what the gateway sends toward a player.
//!
//! **Versioning.** HELLO carries [`wire::WIRE_VERSION`]; the ALPN names the version. Both
//! hops offer every ALPN they know (`rtmpq/2`, `rtmpq/1`) so that a peer of another version
//! completes the TLS handshake and is then refused by name: the gateway closes the connection
//! with `unsupported_version` and a reason naming both versions, and both sides log it (a
//! mismatch in ALPN alone would fail the TLS handshake with no words). New frame kinds or
//! fields need a new version; new close codes may appear at any time and read as `unknown(n)`.
//!
//! Version 1 differed only in SESSION_OPEN, which carried the session id alone.

pub mod amf0;
pub mod budget;
pub mod chunk;
pub mod command;
pub mod journal;
pub mod media_queue;
pub mod message;
pub mod session;
pub mod wire;

pub use chunk::{ChunkDecoder, ChunkEncoder, ChunkError, ChunkLimits};
pub use message::{Message, MessageClass};
pub use wire::{CloseCode, Frame, SessionId};
