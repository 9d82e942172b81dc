//! rtmpq-proto: the pure core of rtmpq, no I/O and no async runtime: the RTMP chunk codec,
//! message classes, bounded AMF0 command inspection, the tunnel wire format, the session
//! tracker, the session journal that sets a session up again, the media queue that enforces
//! the latency budget, and the process-wide buffer budget. The async layer (sockets, QUIC streams, the
//! pumps) is `rtmpq-hop`.
//!
//! Parsing never does I/O: [`chunk::ChunkDecoder`] and [`wire::FrameDecoder`] take bytes and
//! return "need more" as `Ok(None)`; policies take the time as an argument.
//!
//! # Tunnel wire format, version 4 (ALPN `rtmpq/4`)
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
//! | 0x01 | HELLO         | edge → gw   | `version:u8 edge_id:string token:string [release_after_ms:varint]` |
//! | 0x02 | WELCOME       | gw → edge   | `version:u8 gateway_id:string` |
//! | 0x10 | SESSION_OPEN  | edge → gw   | `session_id:u64 latency_budget_ms:varint [carrier:u8]` (budget 0: none; carrier absent: 0) |
//! | 0x11 | MSG           | both        | `type:u8 stream_id:varint timestamp:u32 payload:bytes-to-end` |
//! | 0x12 | SESSION_CLOSE | both        | `code:varint reason:utf8-to-end` (first 512 bytes kept) |
//! | 0x13 | SESSION_RESUME | edge → gw  | `session_id:u64 latency_budget_ms:varint token:32 bytes [carrier:u8]` |
//! | 0x14 | RESUME_TOKEN  | gw → edge   | `token:32 bytes` |
//! | 0x15 | MEDIA_STREAM  | both        | `session_stream:varint lane:u8 first_index:varint` (first frame of a media stream; lane 1 audio, 2 video) |
//! | 0x16 | MEDIA         | both        | `control_before:varint type:u8 stream_id:varint timestamp:u32 payload:bytes-to-end` |
//! | 0x17 | FENCE         | both        | `audio_before:varint video_before:varint` |
//! | 0x18 | LANE_SKIP     | both        | `lane:u8 from:varint to:varint` (`from <= to`) |
//!
//! Integers are big-endian. A frame longer than [`wire::MAX_FRAME_LEN`] or of an unknown kind
//! ends the stream it arrived on with [`wire::CloseCode::ProtocolViolation`].
//!
//! **Connection.** The edge opens the first bidirectional stream and sends HELLO. The gateway
//! answers WELCOME on it, or closes the connection with a QUIC application error whose code is
//! a [`wire::CloseCode`] (`unsupported_version` 2, `unauthorized` 3). The control stream stays
//! open for the connection's life. An edge connecting again to a gateway process it holds a TLS
//! resumption ticket from sends HELLO as 0-RTT data and the gateway answers it at once (0.5-RTT;
//! after the handshake if it checks client certificates): WELCOME one round trip sooner. Only
//! HELLO travels early (a replay opens nothing; sessions are opened after WELCOME). A gateway
//! without the ticket (restarted, or reloaded with new certificates) refuses the early data and
//! the edge sends HELLO again on a new control stream.
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
//! connection or stream under a live session broke; never sent, each side notes it itself),
//! 14 resume_refused.
//!
//! **Resuming a session.** Once a session's origin side is up, the gateway sends RESUME_TOKEN
//! on its stream: 32 random bytes, single use, bound to the edge that opened the session (its
//! HELLO `edge_id`, its client certificate if any, a digest of its HELLO token). If the
//! session's stream or connection is lost while both hops live, the gateway keeps the origin
//! side for `resume_grace_ms` (10 s; it keeps answering the origin meanwhile) and the edge
//! opens a new session stream whose first frame is SESSION_RESUME with the session's id and
//! the last token, on whatever connection it has (a new one after a path died). The gateway
//! compares the token in constant time and the edge's identity; on a match the session goes on
//! over the new stream (a live stream the session still had is dropped: the edge lost it
//! first), the token is spent, and a new RESUME_TOKEN follows. Otherwise the stream gets
//! SESSION_CLOSE `resume_refused` with why ("no such session is held here", "the token does
//! not match (forged, or used already)", "the session belongs to another edge"), and the edge
//! sets the session up again from its journal (below). Media continues from the next key
//! frame; the origin sees a gap, not a new publisher.
//!
//! **Moving a live session** (the edge goes back from the TCP carrier to QUIC). The same
//! SESSION_RESUME, sent while the old stream still carries, is a move made before the break:
//! the edge first stops reading its client before the next video key frame (at once for a
//! player), sends everything before it on the old stream and waits until that is
//! acknowledged; the gateway, finding the old stream still acknowledging (nothing waiting on
//! it for 500 ms), cuts what its origin sends before the next key frame the same way, sends
//! the rest on the old stream and finishes it, and only then answers RESUME_TOKEN on the new
//! one. Each side's held key frame is the first media on the new stream: nothing is lost.
//!
//! **Releasing for another gateway.** An edge working a pool (several gateways, a warm standby
//! connection to the next) sets HELLO's `release_after_ms` (1200; it also sends a keep-alive every
//! 400 ms). A gateway that then hears nothing on that connection for so long closes it
//! (`tunnel_lost`, "edge silent") and ends its sessions without holding them: their origin side
//! goes at once, so the gateway the edge moved them to is not refused with
//! `NetStream.Publish.BadName` while this one still publishes the same name to the origin. (A
//! gateway cut off from its edges cannot hear the edge leave; holding for a resume there blocked
//! the other gateway for the whole idle timeout and grace, 25 s.) Absent or 0: the gateway holds
//! for `resume_grace_ms`.
//!
//! **Media lanes** (`carrier` 1, chosen by the edge per session, both directions; 0 carries
//! everything on the session stream as above). The session stream keeps commands, data,
//! sequence headers and every other message that is not audio or video; audio goes on one
//! unidirectional stream and video on one unidirectional stream per GOP (a key frame opens the
//! next and the one before is finished), each opened by the sending hop with MEDIA_STREAM
//! naming the session stream's QUIC stream id, the lane and the lane index of its first
//! message; MEDIA frames follow, one per message, indices counting up by one. Send priorities
//! are set before the first write: session stream 2, audio 1, GOPs 0. Each MEDIA carries how
//! many MSG frames the sender had put on the session stream before it; a FENCE on the session
//! stream says how many audio and video messages were sent before what follows it. The
//! receiving hop ([`lanes::LaneMerge`]) writes a media message after the session-stream
//! messages before it and a session-stream frame (SESSION_CLOSE included) after every earlier
//! media message was written or skipped; within a lane, by index. An older GOP's stream that
//! still holds data in QUIC once it is stale (a newer GOP began half the budget in force after
//! its last frame, in media or wall time) is reset by its sender, which sends LANE_SKIP for
//! its indices on the session stream: QUIC discards what it had not sent and never retransmits
//! it, and the receiver goes on at the next GOP. A media stream naming no session of its
//! connection within 2 s is stopped.
//!
//! **Latency budget.** Each hop keeps the media it has read from its RTMP peer in a
//! [`media_queue::MediaQueue`] and hands QUIC only about a congestion window of it, so the
//! backlog of a slow or dark link waits where the budget can drop it (whole GOP tails, never
//! headers, metadata or commands). The edge applies its own budget to what it publishes and
//! tells the gateway, in SESSION_OPEN, the budget for what the gateway sends toward a player.
//!
//! **Setting a session up again.** A session outlives the connections under it without a new
//! frame kind: whoever set it up replays the client's own set-up as ordinary MSG frames or
//! RTMP messages ([`journal`]). Each hop keeps a [`journal::SessionJournal`] of what the
//! client sent toward the origin: `connect` (command object and transaction id as sent),
//! `releaseStream` / `FCPublish` / `FCSubscribe` (at most 8), `createStream`, `publish` or
//! `play`, the last `@setDataFrame` / `onMetaData`, and the latest sequence header per track.
//! A [`journal::Replay`] sends `connect`; on its `_result`, the preparation and `createStream`;
//! on that `_result`, `publish`/`play` on the stream id the origin handed out; on
//! `NetStream.Publish.Start` (or `Play.Start`), the metadata and sequence headers on that
//! stream id. An `_error`, or an `onStatus` of level `error`, is a refusal with the origin's
//! code (`NetStream.Publish.BadName` while the origin still holds the old publisher: retried).
//! The origin's answers stay with the replaying hop; media then continues through a
//! [`journal::ResumeFilter`]: moved to the origin's stream id, video from the next key frame,
//! timestamps as the client sends them.
//!
//! - *Origin lost* (gateway): the origin closed or failed under a live session: the gateway
//!   connects again with backoff (100 ms doubling to 2 s) for up to `origin_retry_ms` and
//!   replays to the origin; the tunnel session is untouched.
//! - *Tunnel lost* (edge), when no gateway resumes the session: the connection or stream
//!   under a live session broke (a gateway
//!   restart, which the gateway's persistent stateless-reset key makes a stateless reset at
//!   the edge's next packet; a gateway that stopped acknowledging for 3 s when several are
//!   configured; the idle timeout): the edge stops reading the pusher, opens a new session
//!   stream (a new session id, SESSION_OPEN as usual) on whichever gateway it reaches, and
//!   replays through it as MSG frames, for up to `reconnect_limit_ms`. The new gateway sees an
//!   ordinary session.
//!
//! **Versioning.** HELLO carries [`wire::WIRE_VERSION`]; the ALPN names the version. Both
//! hops offer every ALPN they know (`rtmpq/4`, `rtmpq/3`, `rtmpq/2`, `rtmpq/1`) so that a peer of another version
//! completes the TLS handshake and is then refused by name: the gateway closes the connection
//! with `unsupported_version` and a reason naming both versions, and both sides log it (a
//! mismatch in ALPN alone would fail the TLS handshake with no words). New frame kinds or
//! fields need a new version; new close codes may appear at any time and read as `unknown(n)`.
//!
//! Version 3 had no carrier byte and no media lanes (frames 0x15-0x18). Version 2 had no
//! SESSION_RESUME or RESUME_TOKEN. Version 1 also differed in SESSION_OPEN,
//! which carried the session id alone.

pub mod access;
pub mod amf0;
pub mod buffer_bound;
pub mod chunk;
pub mod command;
pub mod congestion;
pub mod fast_start;
pub mod gop;
pub mod journal;
pub mod lanes;
pub mod late_arrivals;
pub mod media_packet;
pub mod media_queue;
pub mod message;
pub mod origin_command;
pub mod picture;
pub mod session;
pub mod session_end;
pub mod source_lateness;
pub mod stream_headers;
pub mod wire;

pub use chunk::{ChunkDecoder, ChunkEncoder, ChunkError, ChunkLimits};
pub use message::{Message, MessageClass};
pub use wire::{CloseCode, Frame, SessionId};
