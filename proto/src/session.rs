//! One RTMP session as both hops see it: [`SessionTracker`], plain state with the commands that
//! matter, counters per [`Flow`], when the messages still waiting at the hop arrived, and the
//! RTMP messages a client gets when its session fails or a server when the hop leaves it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::access::Rights;
use crate::amf0::Amf0Error;
use crate::command::{self, public_stream_name, Amf0Value, Command};
use crate::fast_start::FastStart;
use crate::journal::SessionJournal;
use crate::media_queue::Dropped;
use crate::message::{MediaKind, Message};
use crate::origin_command::{origin_app, stream_commands, StreamCommand};
use crate::wire::{CloseCode, ResumeToken};

/// A client's app or stream name as a hop keeps, logs and labels it: at most
/// [`MAX_NAME_LEN`](crate::origin_command::MAX_NAME_LEN) bytes, control characters (a newline
/// would split a log line) replaced by `?`.
pub fn bounded_name(name: &str) -> String {
    let kept = &name[..name.floor_char_boundary(crate::origin_command::MAX_NAME_LEN)];
    kept.replace(char::is_control, "?")
}

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

/// The two ways messages cross a hop, named the same in code, metrics, the status API and
/// logs: toward the origin (a pusher's media, every client's commands) and toward the client
/// (a player's media, the origin's answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// From the client (pusher or player) toward the origin.
    ToOrigin,
    /// From the origin toward the client.
    ToClient,
}

impl Flow {
    /// `to_origin` or `to_client`: the `flow` label of metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Flow::ToOrigin => "to_origin",
            Flow::ToClient => "to_client",
        }
    }
}

/// Counters for one flow of a session.
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
            MediaKind::Header | MediaKind::Other => {}
        }
        kind
    }
}

/// A session's media queue as the hop last saw it (see [`crate::media_queue`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    /// The latency budget in force, after the room left for the path; `None`: no budget.
    pub budget: Option<Duration>,
    /// Media dropped for being older than the budget.
    pub stale: Dropped,
    /// Media dropped at the byte bound.
    pub overflow: Dropped,
    /// When the oldest message still waiting arrived.
    pub oldest: Option<Instant>,
    /// Payload bytes of media waiting.
    pub media_bytes: usize,
    /// The path's estimated rate (the congestion controller's), bit/s; 0 when unknown.
    pub path_rate_bps: u64,
}

/// How a session came through losses so far (the status API lists it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recoveries {
    /// Times it was set up again on a new tunnel session (edge) or origin connection
    /// (gateway).
    pub set_up_again: u32,
    /// Times it was resumed on a new tunnel stream.
    pub resumed: u32,
    /// Why it last lost its tunnel or origin.
    pub last_loss: Option<String>,
}

/// What a session shows the operator: its tracker's figures without its set-up journal,
/// rights or resume token ([`SessionTracker::report`]). Cheap to copy: a hop publishes one a
/// few times a second and the status API and metrics read only these.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionReport {
    /// The `app` of the client's connect.
    pub app: Option<String>,
    /// The stream name published or played.
    pub stream: Option<String>,
    /// Publish or play, once known.
    pub direction: Option<Direction>,
    /// When the first media message crossed this hop.
    pub first_media: Option<Instant>,
    /// Counters toward the origin.
    pub to_origin: FlowStats,
    /// Counters toward the client.
    pub to_client: FlowStats,
    /// The media queue as last seen.
    pub queue: QueueState,
    /// At the edge: the gateway the session's tunnel runs through now.
    pub gateway: Option<String>,
    /// The tunnel's carrier now: `quic` or `tcp`.
    pub carrier: Option<&'static str>,
    /// The congestion controller of the tunnel's connection now (`bbr`, `cubic`...).
    pub congestion: Option<&'static str>,
    /// Media dropped for arriving past the budget.
    pub arrived_late: Dropped,
    /// Media reset in QUIC once stale.
    pub reset_in_quic: Dropped,
    /// How the session came through losses.
    pub recoveries: Recoveries,
    /// At the gateway with ACLs: the `[[edge]]` identity the session's rights belong to.
    pub identity: Option<String>,
}

impl SessionReport {
    /// The counters of the flow media goes in (see [`SessionTracker::media_flow`]).
    pub fn media_flow(&self) -> &FlowStats {
        match self.direction {
            Some(Direction::Play) => &self.to_client,
            _ => &self.to_origin,
        }
    }
}

/// What a hop knows about one RTMP session from the messages crossing it.
#[derive(Debug, Clone, Default)]
pub struct SessionTracker {
    /// The `app` of the client's connect.
    pub app: Option<String>,
    /// The stream name published or played, without its query string (often a secret).
    pub stream: Option<String>,
    /// Publish or play, once known.
    pub direction: Option<Direction>,
    /// When the first media message crossed this hop (start-up time: at the gateway, the first
    /// media written toward the origin).
    pub first_media: Option<Instant>,
    /// Counters toward the origin.
    pub to_origin: FlowStats,
    /// Counters toward the client.
    pub to_client: FlowStats,
    /// The media queue of the flow this hop reads from its RTMP peer, as last seen.
    pub queue: QueueState,
    /// What the client said to set the session up, to set it up again on a new origin
    /// connection.
    pub journal: SessionJournal,
    /// At the edge: the client's set-up is answered here ([`FastStart`]).
    pub fast_start: Option<FastStart>,
    /// At the edge: the gateway the session's tunnel runs through now.
    pub gateway: Option<String>,
    /// The tunnel's carrier now: `quic` or `tcp`.
    pub carrier: Option<&'static str>,
    /// The congestion controller of the tunnel's connection now (`bbr`, `cubic`...).
    pub congestion: Option<&'static str>,
    /// Media the receiving side of this hop dropped because it arrived past the budget.
    pub arrived_late: Dropped,
    /// Media this hop sent on a GOP stream that it reset in QUIC once it went stale (media
    /// lanes): the GOPs and the frames they held (some may have crossed before the reset).
    pub reset_in_quic: Dropped,
    /// At the edge: the token the gateway gave last to resume this session on a new stream.
    pub resume_token: Option<ResumeToken>,
    /// At the gateway with ACLs: what the client's edge may publish and play.
    pub rights: Option<Arc<Rights>>,
    /// How the session came through losses.
    pub recoveries: Recoveries,
    /// Why a command the client sent was refused by [`rights`](Self::rights).
    refused: Option<String>,
    /// Whether the origin has read a `connect` of the client's (judged with restricting rights).
    origin_connected: bool,
    connect_transaction: Option<f64>,
    connected: bool,
    media_stream_id: Option<u32>,
}

impl SessionTracker {
    /// Records a message crossing the hop in `flow` at `now`. `Err` for a command too
    /// malformed or too deep to inspect: the session must end.
    pub fn record(&mut self, flow: Flow, msg: &Message, now: Instant) -> Result<(), Amf0Error> {
        match flow {
            Flow::ToOrigin => self.record_to_origin(msg, now).map(drop),
            Flow::ToClient => self.record_to_client(msg, now),
        }
    }

    /// Records a message toward the origin; returns it parsed, if it is a command.
    fn record_to_origin(
        &mut self,
        msg: &Message,
        now: Instant,
    ) -> Result<Option<Command>, Amf0Error> {
        let kind = self.to_origin.count(msg);
        self.note_media(kind, now);
        let cmd = Command::parse(msg)?;
        self.journal.observe(msg, cmd.as_ref());
        if let Some(rights) = self.rights.clone().filter(|r| r.restricts()) {
            self.judge(&rights, msg);
        }
        let Some(cmd) = cmd else {
            return Ok(None);
        };
        match cmd.name.as_str() {
            "connect" => {
                self.connect_transaction = Some(cmd.transaction_id);
                if !self.origin_connected {
                    self.app = cmd
                        .object_string("app")
                        .map(|a| bounded_name(origin_app(a)));
                }
            }
            "publish" | "play" => {
                self.direction = Some(if cmd.name == "publish" {
                    Direction::Publish
                } else {
                    Direction::Play
                });
                self.stream = cmd
                    .string_arg(0)
                    .map(|s| bounded_name(public_stream_name(s)));
                self.media_stream_id = Some(msg.stream_id);
            }
            _ => {}
        }
        Ok(Some(cmd))
    }

    /// Judges `msg` as the origin will read it: every connect, publish and play it carries,
    /// however spelled and in whatever message type; what cannot be judged is refused.
    fn judge(&mut self, rights: &Rights, msg: &Message) {
        if self.refused.is_some() {
            return;
        }
        let commands = match stream_commands(msg) {
            Ok(commands) => commands,
            Err(e) => {
                self.refused = Some(format!(
                    "edge {:?} sent {e}: refused at this gateway",
                    rights.identity
                ));
                return;
            }
        };
        for command in commands {
            let (direction, stream) = match command {
                StreamCommand::Connect { app } => {
                    if self.origin_connected {
                        self.refused = Some(format!(
                            "edge {:?} sent a second connect: refused at this gateway",
                            rights.identity
                        ));
                        return;
                    }
                    self.origin_connected = true;
                    self.app = Some(app);
                    continue;
                }
                StreamCommand::Publish { stream, .. } => (Direction::Publish, stream),
                StreamCommand::Play { stream, .. } => (Direction::Play, stream),
            };
            let app = self.app.as_deref().unwrap_or_default();
            if let Some(why) = rights.refusal(direction, app, &stream) {
                self.direction = Some(direction);
                self.stream = Some(stream);
                self.refused = Some(why);
                return;
            }
        }
    }

    fn record_to_client(&mut self, msg: &Message, now: Instant) -> Result<(), Amf0Error> {
        let kind = self.to_client.count(msg);
        self.note_media(kind, now);
        if let Some(cmd) = Command::parse(msg)? {
            if Some(cmd.transaction_id) == self.connect_transaction && cmd.name == "_result" {
                self.connected = true;
            }
        }
        Ok(())
    }

    fn note_media(&mut self, kind: MediaKind, now: Instant) {
        if self.first_media.is_none() && kind != MediaKind::Other {
            self.first_media = Some(now);
        }
    }

    /// Records a message the client sent toward the origin at `now` ([`record`](Self::record))
    /// and, with fast start on, returns the answers to send the client now; `msg` goes on with
    /// its stream id moved to the origin's. The command is parsed once for both.
    pub fn record_from_client(
        &mut self,
        msg: &mut Message,
        now: Instant,
    ) -> Result<Vec<Message>, Amf0Error> {
        let cmd = self.record_to_origin(msg, now)?;
        let Some(fast) = &mut self.fast_start else {
            return Ok(Vec::new());
        };
        let answers = fast.from_client(msg, cmd.as_ref());
        if cmd.is_some_and(|c| c.name == "connect") && !answers.is_empty() {
            self.connected = true;
        }
        Ok(answers)
    }

    /// With fast start on: `msg` from the origin as the client gets it, `None` when it
    /// answers what was answered here.
    pub fn pass_to_client(&mut self, msg: Message) -> Result<Option<Message>, Amf0Error> {
        match &mut self.fast_start {
            Some(fast) => fast.from_origin(msg),
            None => Ok(Some(msg)),
        }
    }

    /// Why the client's publish or play is refused by [`rights`](Self::rights), once it
    /// asked; `None` while allowed or not asked yet.
    pub fn refusal(&self) -> Option<String> {
        if let Some(why) = &self.refused {
            return Some(why.clone());
        }
        let (rights, direction) = (self.rights.as_ref()?, self.direction?);
        let app = self.app.as_deref().unwrap_or_default();
        rights.refusal(direction, app, self.stream.as_deref().unwrap_or_default())
    }

    /// The RTMP messages that tell the client its session failed with `code` for `reason`:
    /// `_error` for a connect still waiting for its answer, else `onStatus`: for a refused
    /// right `NetStream.Publish.Unauthorized` or `NetStream.Play.Failed`, otherwise
    /// `NetStream.Failed`. The reason is the description, which pushers log.
    pub fn failure_messages(&self, code: CloseCode, reason: &str) -> Vec<Message> {
        let status = match (code, self.direction) {
            (CloseCode::Unauthorized, Some(Direction::Publish)) => "NetStream.Publish.Unauthorized",
            (CloseCode::Unauthorized, Some(Direction::Play)) => "NetStream.Play.Failed",
            _ => "NetStream.Failed",
        };
        match (self.connect_transaction, self.connected) {
            (Some(txn), false) => vec![command::error_response(
                txn,
                if code == CloseCode::Unauthorized {
                    "NetConnection.Connect.Rejected"
                } else {
                    "NetConnection.Connect.Failed"
                },
                reason,
            )],
            (Some(_), true) => vec![command::on_status(
                self.media_stream_id.unwrap_or(0),
                "error",
                status,
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

    /// What the session shows the operator now.
    pub fn report(&self) -> SessionReport {
        SessionReport {
            app: self.app.clone(),
            stream: self.stream.clone(),
            direction: self.direction,
            first_media: self.first_media,
            to_origin: self.to_origin,
            to_client: self.to_client,
            queue: self.queue,
            gateway: self.gateway.clone(),
            carrier: self.carrier,
            congestion: self.congestion,
            arrived_late: self.arrived_late,
            reset_in_quic: self.reset_in_quic,
            recoveries: self.recoveries.clone(),
            identity: self.rights.as_ref().map(|r| r.identity.clone()),
        }
    }

    /// The counters of the flow media goes in: toward the origin for a publisher, toward the
    /// client for a player (toward the origin until known).
    pub fn media_flow(&self) -> &FlowStats {
        match self.direction {
            Some(Direction::Play) => &self.to_client,
            _ => &self.to_origin,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{connect_object, connect_result, request};

    #[test]
    fn tracks_connect_and_publish_and_maps_failures() {
        let mut t = SessionTracker::default();
        assert!(
            t.failure_messages(CloseCode::OriginUnreachable, "x")
                .is_empty(),
            "nothing to answer yet"
        );
        t.record(
            Flow::ToOrigin,
            &request(
                "connect",
                1.0,
                0,
                vec![connect_object("live", "rtmp://h/live")],
            ),
            Instant::now(),
        )
        .unwrap();
        let fail = t.failure_messages(CloseCode::OriginUnreachable, "origin down");
        let cmd = Command::parse(&fail[0]).unwrap().unwrap();
        assert_eq!((cmd.name.as_str(), cmd.transaction_id), ("_error", 1.0));
        t.record(Flow::ToClient, &connect_result(1.0), Instant::now())
            .unwrap();
        assert!(!t.set_up());
        t.record(
            Flow::ToOrigin,
            &request(
                "publish",
                5.0,
                1,
                vec![Amf0Value::Null, Amf0Value::Utf8String("cam?key=s".into())],
            ),
            Instant::now(),
        )
        .unwrap();
        assert!(t.set_up());
        assert_eq!(t.app.as_deref(), Some("live"));
        assert_eq!(t.stream.as_deref(), Some("cam"));
        assert_eq!(t.direction, Some(Direction::Publish));
        let fail = t.failure_messages(CloseCode::OriginClosed, "origin closed");
        let cmd = Command::parse(&fail[0]).unwrap().unwrap();
        assert_eq!(cmd.name, "onStatus");
        assert_eq!(fail[0].stream_id, 1);
        assert_eq!(cmd.status().unwrap().code, "NetStream.Failed");
        let denied = t.failure_messages(CloseCode::Unauthorized, "edge \"a\" may not publish");
        let status = Command::parse(&denied[0])
            .unwrap()
            .unwrap()
            .status()
            .unwrap();
        assert_eq!(status.code, "NetStream.Publish.Unauthorized");
        assert!(status.description.contains("may not publish"));
        let bye: Vec<String> = t
            .goodbye_messages()
            .iter()
            .map(|m| Command::parse(m).unwrap().unwrap().name)
            .collect();
        assert_eq!(bye, ["FCUnpublish", "deleteStream"]);

        t.record(
            Flow::ToOrigin,
            &Message::new(9, 1, 0, vec![0x17, 1, 0, 0, 0, 9]),
            Instant::now(),
        )
        .unwrap();
        t.record(
            Flow::ToOrigin,
            &Message::new(9, 1, 33, vec![0x27, 1, 0, 0, 0, 9]),
            Instant::now(),
        )
        .unwrap();
        t.record(
            Flow::ToOrigin,
            &Message::new(8, 1, 20, vec![0xaf, 1, 9]),
            Instant::now(),
        )
        .unwrap();
        assert_eq!(t.to_origin.video_frames, 2);
        assert_eq!(t.to_origin.keyframes, 1);
        assert_eq!(t.to_origin.audio_frames, 1);
        assert!(t.first_media.is_some());
        t.record(
            Flow::ToOrigin,
            &Message::new(9, 1, 2000, vec![0x17, 1, 0, 0, 0, 9]),
            Instant::now(),
        )
        .unwrap();
        assert_eq!(t.to_origin.keyframe_interval_ms, Some(2000));
        assert_eq!(t.media_flow().media_bytes, 6 + 6 + 3 + 6);
    }

    #[test]
    fn restricting_rights_judge_every_command_as_the_origin_reads_it() {
        use crate::access::StreamPattern;
        let rights = Arc::new(Rights::listed(
            "cam-a",
            vec![StreamPattern::parse("live/cam-a-*").unwrap()],
            vec![StreamPattern::parse("live/cam-a-*").unwrap()],
        ));
        let connected = || {
            let mut t = SessionTracker {
                rights: Some(rights.clone()),
                ..SessionTracker::default()
            };
            let url = "rtmp://h/live?token=SECRET";
            t.record(
                Flow::ToOrigin,
                &request(
                    "connect",
                    1.0,
                    0,
                    vec![connect_object("live?token=SECRET", url)],
                ),
                Instant::now(),
            )
            .unwrap();
            assert_eq!(t.app.as_deref(), Some("live"), "the query is not the app");
            t
        };
        let named = |name: &str, stream: &str| {
            request(
                name,
                0.0,
                1,
                vec![Amf0Value::Null, Amf0Value::Utf8String(stream.into())],
            )
        };
        let mut t = connected();
        t.record(Flow::ToOrigin, &named("publish", "cam-a-1"), Instant::now())
            .unwrap();
        assert_eq!(t.refusal(), None);
        t.record(Flow::ToOrigin, &named("Play", "secret"), Instant::now())
            .unwrap();
        let why = t.refusal().expect("a play of another stream is refused");
        assert!(why.contains("may not play live/secret"), "{why}");
        // Once refused, an allowed command after it does not lift the refusal.
        t.record(Flow::ToOrigin, &named("publish", "cam-a-2"), Instant::now())
            .unwrap();
        assert!(t.refusal().is_some());

        let mut t = connected();
        let mut data = named("publish", "studio");
        data.type_id = crate::message::message_type::DATA_AMF0;
        t.record(Flow::ToOrigin, &data, Instant::now()).unwrap();
        assert_eq!(t.direction, Some(Direction::Publish));
        assert!(t.refusal().unwrap().contains("may not publish live/studio"));

        let mut t = connected();
        t.record(Flow::ToOrigin, &named("play2", "cam-a-1"), Instant::now())
            .unwrap();
        assert!(t.refusal().unwrap().contains("not judged"));

        // Without restricting rights, nothing is judged.
        let mut t = SessionTracker {
            rights: Some(Arc::new(Rights::everything("any"))),
            ..SessionTracker::default()
        };
        t.record(Flow::ToOrigin, &named("play2", "x"), Instant::now())
            .unwrap();
        assert_eq!(t.refusal(), None);
    }
}
