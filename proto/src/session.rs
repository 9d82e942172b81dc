//! One RTMP session as both hops see it: [`SessionTracker`] (plain state: the commands that
//! matter, per-direction counters, the RTMP error a client gets when the far side fails) and
//! [`relay`], which moves end-to-end messages between an RTMP socket and a tunnel stream.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::amf0::Amf0Error;
use crate::chunk::ChunkError;
use crate::command::{self, public_stream_name, Amf0Value, Command};
use crate::io::{
    write_frame, FrameReadError, FrameReader, Inbound, Outbound, OutboundError, RtmpIoError,
    RtmpReader,
};
use crate::message::{Control, MediaKind, Message, MessageClass};
use crate::wire::{CloseCode, Frame};

/// Whether the client publishes or plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The client sends media (a pusher).
    Publish,
    /// The client receives media (a player).
    Play,
}

impl Direction {
    /// `publish` or `play`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Publish => "publish",
            Direction::Play => "play",
        }
    }
}

/// Counters for one direction of a session.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlowStats {
    /// End-to-end messages.
    pub messages: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Video frames (key frames included, sequence headers not).
    pub video_frames: u64,
    /// Video key frames.
    pub keyframes: u64,
    /// Audio frames.
    pub audio_frames: u64,
    /// Payload bytes of audio and video messages.
    pub media_bytes: u64,
    /// Media time between the last two key frames, in ms.
    pub keyframe_interval_ms: Option<u32>,
    last_keyframe_timestamp: Option<u32>,
}

impl FlowStats {
    /// Counts `msg`; returns its media kind so callers need not classify it again.
    fn count(&mut self, msg: &Message) -> MediaKind {
        self.messages += 1;
        self.bytes += msg.payload.len() as u64;
        let kind = msg.media_kind();
        if kind != MediaKind::Other {
            self.media_bytes += msg.payload.len() as u64;
        }
        match kind {
            MediaKind::VideoKeyframe => {
                self.video_frames += 1;
                self.keyframes += 1;
                if let Some(last) = self.last_keyframe_timestamp {
                    self.keyframe_interval_ms = Some(msg.timestamp.wrapping_sub(last));
                }
                self.last_keyframe_timestamp = Some(msg.timestamp);
            }
            MediaKind::VideoFrame => self.video_frames += 1,
            MediaKind::Audio => self.audio_frames += 1,
            MediaKind::SequenceHeader | MediaKind::Other => {}
        }
        kind
    }
}

/// What a hop knows about one RTMP session from the messages crossing it.
#[derive(Debug, Clone)]
pub struct SessionTracker {
    /// When the session started.
    pub started: Instant,
    /// The `app` of the client's connect.
    pub app: Option<String>,
    /// The stream name published or played, without its query string (often a secret).
    pub stream: Option<String>,
    /// Publish or play, once known.
    pub direction: Option<Direction>,
    /// When the first media message crossed this hop (start-up time: at the gateway, the first
    /// media written toward the origin).
    pub first_media: Option<Instant>,
    /// Client → server counters.
    pub upstream: FlowStats,
    /// Server → client counters.
    pub downstream: FlowStats,
    /// Since when the oldest message taken from one side has waited to be handed to the other
    /// (upstream, downstream); `None` when nothing waits.
    pub waiting_since: [Option<Instant>; 2],
    connect_transaction: Option<f64>,
    connected: bool,
    media_stream_id: Option<u32>,
}

impl Default for SessionTracker {
    fn default() -> Self {
        SessionTracker {
            started: Instant::now(),
            app: None,
            stream: None,
            direction: None,
            first_media: None,
            upstream: FlowStats::default(),
            downstream: FlowStats::default(),
            waiting_since: [None, None],
            connect_transaction: None,
            connected: false,
            media_stream_id: None,
        }
    }
}

impl SessionTracker {
    /// Records a message from the client (pusher or player) toward the server. `Err` for a
    /// command too malformed or too deep to inspect: the session must end.
    pub fn from_client(&mut self, msg: &Message) -> Result<(), Amf0Error> {
        let kind = self.upstream.count(msg);
        self.note_media(kind);
        let Some(cmd) = Command::parse(msg)? else {
            return Ok(());
        };
        match cmd.name.as_str() {
            "connect" => {
                self.connect_transaction = Some(cmd.transaction_id);
                self.app = cmd.object_string("app").map(str::to_owned);
            }
            "publish" | "play" => {
                self.direction = Some(if cmd.name == "publish" {
                    Direction::Publish
                } else {
                    Direction::Play
                });
                self.stream = cmd.string_arg(0).map(|s| public_stream_name(s).to_owned());
                self.media_stream_id = Some(msg.stream_id);
            }
            _ => {}
        }
        Ok(())
    }

    /// Records a message from the server toward the client; `Err` as for
    /// [`from_client`](Self::from_client).
    pub fn from_server(&mut self, msg: &Message) -> Result<(), Amf0Error> {
        let kind = self.downstream.count(msg);
        self.note_media(kind);
        if let Some(cmd) = Command::parse(msg)? {
            if Some(cmd.transaction_id) == self.connect_transaction && cmd.name == "_result" {
                self.connected = true;
            }
        }
        Ok(())
    }

    fn note_media(&mut self, kind: MediaKind) {
        if self.first_media.is_none() && kind != MediaKind::Other {
            self.first_media = Some(Instant::now());
        }
    }

    /// The RTMP messages that tell the client its session failed for `reason`: `_error` for a
    /// connect still waiting for its answer, else `onStatus` `NetStream.Failed`.
    pub fn failure_messages(&self, reason: &str) -> Vec<Message> {
        match (self.connect_transaction, self.connected) {
            (Some(txn), false) => vec![command::error_response(
                txn,
                "NetConnection.Connect.Failed",
                reason,
            )],
            (Some(_), true) => vec![command::on_status(
                self.media_stream_id.unwrap_or(0),
                "error",
                "NetStream.Failed",
                reason,
            )],
            (None, _) => Vec::new(),
        }
    }

    /// What a client sends a server when it leaves properly: `FCUnpublish` (publishers) and
    /// `deleteStream` for the stream it used.
    pub fn goodbye_messages(&self) -> Vec<Message> {
        let Some(stream_id) = self.media_stream_id else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let (Some(Direction::Publish), Some(name)) = (self.direction, &self.stream) {
            out.push(command::request(
                "FCUnpublish",
                0.0,
                0,
                vec![Amf0Value::Null, Amf0Value::Utf8String(name.clone())],
            ));
        }
        out.push(command::request(
            "deleteStream",
            0.0,
            0,
            vec![Amf0Value::Null, Amf0Value::Number(f64::from(stream_id))],
        ));
        out
    }

    /// The counters of the direction media flows in: upstream for a publisher, downstream for
    /// a player (upstream until known).
    pub fn media_flow(&self) -> &FlowStats {
        match self.direction {
            Some(Direction::Play) => &self.downstream,
            _ => &self.upstream,
        }
    }

    /// How long the oldest waiting message has waited, in either direction.
    pub fn queue_age(&self, now: Instant) -> std::time::Duration {
        self.waiting_since
            .iter()
            .flatten()
            .map(|t| now.saturating_duration_since(*t))
            .max()
            .unwrap_or_default()
    }

    /// The transaction id of the client's connect, once seen.
    pub fn connect_transaction(&self) -> Option<f64> {
        self.connect_transaction
    }

    /// Whether the client's connect command has been seen.
    pub fn connect_seen(&self) -> bool {
        self.connect_transaction.is_some()
    }

    /// Whether the client has asked to publish or play.
    pub fn set_up(&self) -> bool {
        self.direction.is_some()
    }
}

/// Which RTMP peer a hop relays for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtmpPeer {
    /// The edge's peer: a pusher or player.
    Client,
    /// The gateway's peer: the origin.
    Origin,
}

impl RtmpPeer {
    fn name(self) -> &'static str {
        match self {
            RtmpPeer::Client => "client",
            RtmpPeer::Origin => "origin",
        }
    }
}

/// Which side ended a relayed session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    /// The RTMP peer closed or misbehaved.
    Rtmp,
    /// The far hop sent SESSION_CLOSE.
    RemoteClose,
    /// The tunnel stream broke or carried bad frames.
    Tunnel,
    /// This hop is shutting down.
    Local,
}

/// How a relayed session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayEnd {
    /// The close code.
    pub code: CloseCode,
    /// Words for the log and for the client.
    pub reason: String,
    /// Who ended it.
    pub ended_by: EndedBy,
}

impl RelayEnd {
    /// A session ended with `code` for `reason`.
    pub fn new(code: CloseCode, reason: impl Into<String>, ended_by: EndedBy) -> Self {
        RelayEnd {
            code,
            reason: reason.into(),
            ended_by,
        }
    }
}

/// What a hop enforces on a session besides the codec's limits.
#[derive(Debug, Clone, Default)]
pub struct SessionLimits {
    /// The client must ask to publish or play within this long of the relay's start.
    pub setup_deadline: Option<Duration>,
    /// The RTMP peer is pinged after this long without a byte from it, and the session ends
    /// after twice this long (set on the client-facing side only: an idle player still
    /// answers pings, a dead or hostile one does not).
    pub silence_period: Option<Duration>,
}

impl RtmpPeer {
    /// The close code for bad RTMP from this peer.
    fn protocol_error(self) -> CloseCode {
        match self {
            RtmpPeer::Client => CloseCode::ClientProtocolError,
            RtmpPeer::Origin => CloseCode::OriginProtocolError,
        }
    }

    /// How this hop names the far end of the tunnel.
    fn tunnel_name(self) -> &'static str {
        match self {
            RtmpPeer::Client => "tunnel to the gateway",
            RtmpPeer::Origin => "tunnel from the edge",
        }
    }

    /// The close code and reason for a session whose RTMP reader failed with `e`.
    fn read_failure(self, e: &RtmpIoError) -> RelayEnd {
        let code = match e {
            RtmpIoError::Chunk(ChunkError::Overloaded(_)) => CloseCode::Overloaded,
            _ => self.protocol_error(),
        };
        RelayEnd::new(code, format!("{}: {e}", self.name()), EndedBy::Rtmp)
    }
}

/// How a session ends when its tunnel stream fails: a code the far hop asked for (a stream
/// stopped or reset with a close code, a connection closed with one), otherwise
/// [`CloseCode::TunnelLost`]. Never `normal`: a tunnel that breaks under a live session is a
/// failure the client must hear about.
pub fn tunnel_failure(peer: RtmpPeer, code: Option<u64>, what: impl std::fmt::Display) -> RelayEnd {
    let code = match code.map(CloseCode::from_code) {
        Some(CloseCode::Normal | CloseCode::Unknown(_)) | None => CloseCode::TunnelLost,
        Some(code) => code,
    };
    RelayEnd::new(
        code,
        format!("{} lost: {what}", peer.tunnel_name()),
        EndedBy::Tunnel,
    )
}

fn connection_code(e: &quinn::ConnectionError) -> Option<u64> {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => Some(close.error_code.into_inner()),
        quinn::ConnectionError::LocallyClosed => Some(CloseCode::Shutdown.to_code()),
        _ => None,
    }
}

fn write_failure(peer: RtmpPeer, e: &quinn::WriteError) -> RelayEnd {
    let code = match e {
        quinn::WriteError::Stopped(code) => Some(code.into_inner()),
        quinn::WriteError::ConnectionLost(c) => connection_code(c),
        _ => None,
    };
    tunnel_failure(peer, code, e)
}

fn read_failure(peer: RtmpPeer, e: &FrameReadError) -> RelayEnd {
    let code = match e {
        FrameReadError::Stream(quinn::ReadError::Reset(code)) => Some(code.into_inner()),
        FrameReadError::Stream(quinn::ReadError::ConnectionLost(c)) => connection_code(c),
        _ => None,
    };
    tunnel_failure(peer, code, e)
}

/// Moves end-to-end messages both ways until one side ends: RTMP messages from `rtmp` go out
/// as MSG frames on `to_tunnel`; MSG frames from `tunnel` go to the RTMP writer via `to_rtmp`
/// (which also carries the reader's hop-by-hop replies). Every message is recorded in `tracker`;
/// empty messages carry nothing and are not forwarded. Cancelling `stop` ends the session with
/// [`CloseCode::Shutdown`].
#[allow(clippy::too_many_arguments)]
pub async fn relay(
    peer: RtmpPeer,
    rtmp: &mut RtmpReader,
    to_rtmp: &Outbound,
    tunnel: &mut FrameReader,
    to_tunnel: &mut quinn::SendStream,
    tracker: &Mutex<SessionTracker>,
    limits: &SessionLimits,
    stop: &CancellationToken,
) -> RelayEnd {
    let started = Instant::now();
    // Records a message and marks its direction as waiting until `handed_off`.
    let record = |toward_server: bool, msg: &Message| {
        let mut t = tracker.lock().expect("tracker lock");
        let recorded = if toward_server {
            t.from_client(msg)
        } else {
            t.from_server(msg)
        };
        t.waiting_since[usize::from(!toward_server)].get_or_insert_with(Instant::now);
        recorded
    };
    let handed_off = |toward_server: bool| {
        tracker.lock().expect("tracker lock").waiting_since[usize::from(!toward_server)] = None;
    };
    let queue_failed = |e: OutboundError| match e {
        OutboundError::Overloaded(e) => {
            RelayEnd::new(CloseCode::Overloaded, e.to_string(), EndedBy::Rtmp)
        }
        OutboundError::Closed | OutboundError::Full => RelayEnd::new(
            CloseCode::Normal,
            format!("{} connection closed", peer.name()),
            EndedBy::Rtmp,
        ),
    };
    let from_rtmp = async {
        loop {
            match rtmp.next().await {
                Ok(Some(Inbound::Message(msg))) => {
                    if msg.payload.is_empty() {
                        continue;
                    }
                    let toward_server = peer == RtmpPeer::Client;
                    if let Err(e) = record(toward_server, &msg) {
                        return RelayEnd::new(
                            peer.protocol_error(),
                            format!("{}: {e}", peer.name()),
                            EndedBy::Rtmp,
                        );
                    }
                    if let Err(e) = write_frame(to_tunnel, &Frame::Msg(msg)).await {
                        return write_failure(peer, &e);
                    }
                    handed_off(toward_server);
                }
                Ok(Some(Inbound::Reply(reply))) => {
                    if let Err(e) = to_rtmp.send(reply).await {
                        return queue_failed(e);
                    }
                }
                Ok(Some(Inbound::Silent(1))) => {
                    let now = started.elapsed().as_millis() as u32;
                    if let Err(e) = to_rtmp.send(Control::PingRequest(now).to_message()).await {
                        return queue_failed(e);
                    }
                }
                Ok(Some(Inbound::Silent(_))) => {
                    let silent = limits.silence_period.unwrap_or_default() * 2;
                    return RelayEnd::new(
                        CloseCode::Timeout,
                        format!(
                            "{} sent nothing for {silent:?}, not even an answer to a ping",
                            peer.name()
                        ),
                        EndedBy::Rtmp,
                    );
                }
                Ok(None) => {
                    let code = match peer {
                        RtmpPeer::Client => CloseCode::Normal,
                        RtmpPeer::Origin => CloseCode::OriginClosed,
                    };
                    let reason = format!("{} closed the connection", peer.name());
                    return RelayEnd::new(code, reason, EndedBy::Rtmp);
                }
                Err(e) => return peer.read_failure(&e),
            }
        }
    };
    let from_tunnel = async {
        loop {
            let violation =
                |what: String| RelayEnd::new(CloseCode::ProtocolViolation, what, EndedBy::Tunnel);
            match tunnel.next().await {
                Ok(Some(Frame::Msg(msg))) if msg.class() == MessageClass::EndToEnd => {
                    if msg.payload.is_empty() {
                        continue;
                    }
                    let toward_server = peer == RtmpPeer::Origin;
                    if let Err(e) = record(toward_server, &msg) {
                        return violation(format!("through the tunnel: {e}"));
                    }
                    if let Err(e) = to_rtmp.send(msg).await {
                        return queue_failed(e);
                    }
                    handed_off(toward_server);
                }
                Ok(Some(Frame::Msg(msg))) => {
                    return violation(format!(
                        "hop-by-hop message type {} sent through the tunnel",
                        msg.type_id
                    ))
                }
                Ok(Some(Frame::SessionClose { code, reason })) => {
                    return RelayEnd::new(code, reason, EndedBy::RemoteClose)
                }
                Ok(Some(other)) => {
                    return violation(format!("unexpected {other:?} on a session stream"))
                }
                Ok(None) => return violation("tunnel stream ended without SESSION_CLOSE".into()),
                Err(e @ (FrameReadError::Wire(_) | FrameReadError::Truncated)) => {
                    return violation(e.to_string())
                }
                Err(FrameReadError::Overloaded(e)) => {
                    return RelayEnd::new(CloseCode::Overloaded, e.to_string(), EndedBy::Tunnel)
                }
                Err(e) => return read_failure(peer, &e),
            }
        }
    };
    // Ends a session whose client has not asked to publish or play by the deadline.
    let setup_deadline = async {
        let Some(deadline) = limits.setup_deadline else {
            return std::future::pending().await;
        };
        tokio::time::sleep(deadline).await;
        if tracker.lock().expect("tracker lock").set_up() {
            return std::future::pending().await;
        }
        RelayEnd::new(
            CloseCode::Timeout,
            format!("no publish or play within {deadline:?}"),
            EndedBy::Local,
        )
    };
    let end = tokio::select! {
        end = from_rtmp => end,
        end = from_tunnel => end,
        end = setup_deadline => end,
        _ = stop.cancelled() => RelayEnd::new(
            CloseCode::Shutdown,
            format!("{} shutting down", match peer {
                RtmpPeer::Client => "edge",
                RtmpPeer::Origin => "gateway",
            }),
            EndedBy::Local,
        ),
    };
    if end.code == CloseCode::ProtocolViolation {
        tunnel.stop(end.code);
    }
    end
}

/// Ends the tunnel side after [`relay`]: SESSION_CLOSE with the reason unless the far side
/// closed first, then FIN.
pub async fn finish_tunnel(to_tunnel: &mut quinn::SendStream, end: &RelayEnd) {
    match end.ended_by {
        EndedBy::RemoteClose => {
            let _ = to_tunnel.finish();
        }
        EndedBy::Rtmp | EndedBy::Tunnel | EndedBy::Local => {
            crate::io::close_stream(to_tunnel, end.code, &end.reason).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{connect_object, connect_result, request};

    #[test]
    fn tracks_connect_and_publish_and_maps_failures() {
        let mut t = SessionTracker::default();
        assert!(t.failure_messages("x").is_empty(), "nothing to answer yet");
        t.from_client(&request(
            "connect",
            1.0,
            0,
            vec![connect_object("live", "rtmp://h/live")],
        ))
        .unwrap();
        let fail = t.failure_messages("origin down");
        let cmd = Command::parse(&fail[0]).unwrap().unwrap();
        assert_eq!((cmd.name.as_str(), cmd.transaction_id), ("_error", 1.0));
        t.from_server(&connect_result(1.0)).unwrap();
        assert!(!t.set_up());
        t.from_client(&request(
            "publish",
            5.0,
            1,
            vec![Amf0Value::Null, Amf0Value::Utf8String("cam?key=s".into())],
        ))
        .unwrap();
        assert!(t.set_up());
        assert_eq!(t.app.as_deref(), Some("live"));
        assert_eq!(t.stream.as_deref(), Some("cam"));
        assert_eq!(t.direction, Some(Direction::Publish));
        let fail = t.failure_messages("origin closed");
        let cmd = Command::parse(&fail[0]).unwrap().unwrap();
        assert_eq!(cmd.name, "onStatus");
        assert_eq!(fail[0].stream_id, 1);
        assert_eq!(cmd.status().unwrap().code, "NetStream.Failed");
        let bye: Vec<String> = t
            .goodbye_messages()
            .iter()
            .map(|m| Command::parse(m).unwrap().unwrap().name)
            .collect();
        assert_eq!(bye, ["FCUnpublish", "deleteStream"]);

        t.from_client(&Message::new(9, 1, 0, vec![0x17, 1, 0, 0, 0, 9]))
            .unwrap();
        t.from_client(&Message::new(9, 1, 33, vec![0x27, 1, 0, 0, 0, 9]))
            .unwrap();
        t.from_client(&Message::new(8, 1, 20, vec![0xaf, 1, 9]))
            .unwrap();
        assert_eq!(t.upstream.video_frames, 2);
        assert_eq!(t.upstream.keyframes, 1);
        assert_eq!(t.upstream.audio_frames, 1);
        assert!(t.first_media.is_some());
        t.from_client(&Message::new(9, 1, 2000, vec![0x17, 1, 0, 0, 0, 9]))
            .unwrap();
        assert_eq!(t.upstream.keyframe_interval_ms, Some(2000));
        assert_eq!(t.media_flow().media_bytes, 6 + 6 + 3 + 6);
    }
}
