//! What a client said to set up its session, kept so that the session can be set up again on
//! a new origin connection ([`SessionJournal`]), the exchange that does it ([`Replay`]), and
//! how the client's media continues on it ([`ResumeFilter`]). Pure: messages in, messages out.
//!
//! A replay sends the client's own `connect` (same command object, same transaction id), then
//! its `releaseStream` / `FCPublish` and `createStream`, then, on the stream id the new origin
//! created, its `publish` or `play`; once the origin says `NetStream.Publish.Start` (or
//! `NetStream.Play.Start`) a publisher's metadata and latest sequence header per track follow.
//! The origin's answers are the replay's: none reaches the client, which never left. Media
//! then continues on the new stream id from the next video key frame, timestamps as the
//! client sends them (continuing per track).

use crate::amf0::Amf0Error;
use crate::command::{Amf0Value, Command};
use crate::gop::GopGate;
use crate::message::{message_type, Message};
use crate::session::Direction;
use crate::stream_headers::StreamHeaders;

/// Most preparation commands (`releaseStream`, `FCPublish`, ...) kept.
const MAX_PREPARATION: usize = 8;

/// The set-up of one session as its client sent it toward the origin.
#[derive(Debug, Clone, Default)]
pub struct SessionJournal {
    connect: Option<(Message, f64)>,
    preparation: Vec<Message>,
    create_stream: Option<(Message, f64)>,
    start: Option<(Message, Direction)>,
    metadata: Option<Message>,
    headers: StreamHeaders,
}

impl SessionJournal {
    /// Notes a message the client sent toward the origin (`cmd`: it parsed as this command).
    pub fn observe(&mut self, msg: &Message, cmd: Option<&Command>) {
        if let Some(cmd) = cmd {
            match cmd.name.as_str() {
                "connect" => self.connect = Some((msg.clone(), cmd.transaction_id)),
                "createStream" => self.create_stream = Some((msg.clone(), cmd.transaction_id)),
                "publish" => self.start = Some((msg.clone(), Direction::Publish)),
                "play" => self.start = Some((msg.clone(), Direction::Play)),
                "releaseStream" | "FCPublish" | "FCSubscribe"
                    if self.start.is_none() && self.preparation.len() < MAX_PREPARATION =>
                {
                    self.preparation.push(msg.clone())
                }
                _ => {}
            }
            return;
        }
        if is_metadata(msg) {
            self.metadata = Some(msg.clone());
        } else {
            self.headers.observe(msg);
        }
    }

    /// Whether the session got as far as `publish` or `play`: only then is there something
    /// to set up again.
    pub fn direction(&self) -> Option<Direction> {
        self.start.as_ref().map(|s| s.1)
    }

    /// Whether the session got far enough to be set up again ([`replay`](Self::replay)).
    pub fn can_replay(&self) -> bool {
        self.connect.is_some() && self.create_stream.is_some() && self.start.is_some()
    }

    /// The exchange that sets the session up again, if it got that far.
    pub fn replay(&self) -> Option<Replay> {
        let (connect, connect_txn) = self.connect.clone()?;
        let (create, create_txn) = self.create_stream.clone()?;
        let (start, direction) = self.start.clone()?;
        let mut after_start = Vec::new();
        if direction == Direction::Publish {
            after_start.extend(self.metadata.iter().cloned());
            after_start.extend(self.headers.messages().cloned());
        }
        Some(Replay {
            connect,
            connect_txn,
            preparation: self.preparation.clone(),
            create,
            create_txn,
            start,
            client_stream_id: self.start.as_ref().map_or(0, |s| s.0.stream_id),
            after_start,
            step: Step::Connecting,
        })
    }
}

/// `@setDataFrame` / `onMetaData`: a data message (AMF0 type 18) naming either.
fn is_metadata(msg: &Message) -> bool {
    msg.type_id == message_type::DATA_AMF0
        && msg.payload.len() > 3
        && [&b"@setDataFrame"[..], b"onMetaData"]
            .iter()
            .any(|name| msg.payload[3..].starts_with(name))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Connecting,
    Creating,
    Starting { stream_id: u32 },
    Done,
}

/// The exchange that sets a journaled session up on a new origin connection; see the module
/// docs. [`Replay::begin`] gives the first message, [`Replay::on_origin`] each next step.
#[derive(Debug, Clone)]
pub struct Replay {
    connect: Message,
    connect_txn: f64,
    preparation: Vec<Message>,
    create: Message,
    create_txn: f64,
    start: Message,
    client_stream_id: u32,
    after_start: Vec<Message>,
    step: Step,
}

/// What a [`Replay`] makes of a message from the origin.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayStep {
    /// Not an answer it waits for (window sizes, `onBWDone`, `Play.Reset`, ...): nothing.
    Waiting,
    /// Send these to the origin and go on reading.
    Send(Vec<Message>),
    /// The origin took the session on `stream_id`: send these (metadata and sequence
    /// headers, already on that stream id), then media through a [`ResumeFilter`].
    Started {
        /// The origin's message stream id for the session.
        stream_id: u32,
        /// What goes first.
        then: Vec<Message>,
    },
    /// The origin refused: its status code and description (for example
    /// `NetStream.Publish.BadName` while it still holds the old publisher).
    Refused {
        /// The status code.
        code: String,
        /// The origin's words.
        description: String,
    },
}

impl Replay {
    /// The first message: the client's `connect`.
    pub fn begin(&mut self) -> Vec<Message> {
        self.step = Step::Connecting;
        vec![self.connect.clone()]
    }

    /// The client's message stream id (what its media arrives on).
    pub fn client_stream_id(&self) -> u32 {
        self.client_stream_id
    }

    /// The next step after `msg` from the origin. `Err` for a command too malformed to read.
    pub fn on_origin(&mut self, msg: &Message) -> Result<ReplayStep, Amf0Error> {
        let Some(cmd) = Command::parse(msg)? else {
            return Ok(ReplayStep::Waiting);
        };
        let refused = |cmd: &Command| {
            let status = cmd.status();
            ReplayStep::Refused {
                code: status.as_ref().map(|s| s.code.clone()).unwrap_or_default(),
                description: status.map(|s| s.description).unwrap_or_default(),
            }
        };
        Ok(match (self.step, cmd.name.as_str()) {
            (Step::Connecting, "_result") if cmd.transaction_id == self.connect_txn => {
                self.step = Step::Creating;
                let mut send = self.preparation.clone();
                send.push(self.create.clone());
                ReplayStep::Send(send)
            }
            (Step::Creating, "_result") if cmd.transaction_id == self.create_txn => {
                let stream_id = match cmd.values.get(1) {
                    Some(Amf0Value::Number(n)) if *n >= 0.0 && *n < f64::from(u32::MAX) => {
                        *n as u32
                    }
                    _ => {
                        return Ok(ReplayStep::Refused {
                            code: "createStream".into(),
                            description: "no stream id in the origin's answer".into(),
                        })
                    }
                };
                self.step = Step::Starting { stream_id };
                let mut start = self.start.clone();
                start.stream_id = stream_id;
                ReplayStep::Send(vec![start])
            }
            (Step::Connecting | Step::Creating, "_error") => refused(&cmd),
            (Step::Starting { stream_id }, "onStatus") => {
                let Some(status) = cmd.status() else {
                    return Ok(ReplayStep::Waiting);
                };
                if status.level == "error" {
                    return Ok(refused(&cmd));
                }
                if !matches!(
                    status.code.as_str(),
                    "NetStream.Publish.Start" | "NetStream.Play.Start"
                ) {
                    return Ok(ReplayStep::Waiting);
                }
                self.step = Step::Done;
                let then = self
                    .after_start
                    .iter()
                    .map(|m| Message {
                        stream_id,
                        ..m.clone()
                    })
                    .collect();
                ReplayStep::Started { stream_id, then }
            }
            _ => ReplayStep::Waiting,
        })
    }
}

/// How a session's messages continue on a new origin connection: the client's moved from its
/// stream id to the origin's, the origin's moved back, and video held back in each direction,
/// each track until its own key frame (the frames before it reference pictures the new
/// connection never carried).
#[derive(Debug, Clone)]
pub struct ResumeFilter {
    client: u32,
    origin: u32,
    toward_origin: GopGate,
    toward_client: GopGate,
}

impl ResumeFilter {
    /// The client's stream `client` is the origin's stream `origin` now.
    pub fn new(client: u32, origin: u32) -> Self {
        ResumeFilter {
            client,
            origin,
            toward_origin: GopGate::waiting(),
            toward_client: GopGate::waiting(),
        }
    }

    /// For a session resumed on a new tunnel stream over the same origin connection: stream
    /// ids stay, video in each direction from its next key frame (what was lost between
    /// referenced what came before).
    pub fn same_stream() -> Self {
        ResumeFilter::new(u32::MAX, u32::MAX)
    }

    /// `msg` crossing in `flow` as it continues on the session set up again, or `None` if it
    /// must not go.
    pub fn carry(&mut self, flow: crate::session::Flow, msg: Message) -> Option<Message> {
        match flow {
            crate::session::Flow::ToOrigin => self.toward_origin(msg),
            crate::session::Flow::ToClient => self.toward_client(msg),
        }
    }

    /// `msg` from the client as the new origin connection gets it, or `None` if it must not
    /// go.
    pub fn toward_origin(&mut self, msg: Message) -> Option<Message> {
        let (from, to) = (self.client, self.origin);
        Self::pass(&mut self.toward_origin, from, to, msg)
    }

    /// `msg` from the new origin connection as the client gets it, or `None` if it must not
    /// go.
    pub fn toward_client(&mut self, msg: Message) -> Option<Message> {
        let (from, to) = (self.origin, self.client);
        Self::pass(&mut self.toward_client, from, to, msg)
    }

    fn pass(gate: &mut GopGate, from: u32, to: u32, mut msg: Message) -> Option<Message> {
        if msg.media_packet().is_some_and(|p| !gate.admit(&p)) {
            return None;
        }
        if msg.stream_id == from {
            msg.stream_id = to;
        }
        Some(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{self, connect_object, on_status, request, result};

    fn text(s: &str) -> Amf0Value {
        Amf0Value::Utf8String(s.into())
    }

    fn journal_of(msgs: &[Message]) -> SessionJournal {
        let mut j = SessionJournal::default();
        for m in msgs {
            let cmd = Command::parse(m).unwrap();
            j.observe(m, cmd.as_ref());
        }
        j
    }

    fn name(m: &Message) -> String {
        Command::parse(m)
            .unwrap()
            .map(|c| c.name)
            .unwrap_or_default()
    }

    fn connect() -> Message {
        request(
            "connect",
            1.0,
            0,
            vec![connect_object("live", "rtmp://origin/live")],
        )
    }

    fn publisher() -> Vec<Message> {
        vec![
            connect(),
            request("releaseStream", 2.0, 0, vec![Amf0Value::Null, text("cam")]),
            request("FCPublish", 3.0, 0, vec![Amf0Value::Null, text("cam")]),
            request("createStream", 4.0, 0, vec![Amf0Value::Null]),
            request(
                "publish",
                5.0,
                1,
                vec![Amf0Value::Null, text("cam"), text("live")],
            ),
            command::data_message(
                1,
                vec![text("@setDataFrame"), text("onMetaData"), Amf0Value::Null],
            ),
            Message::new(9, 1, 0, vec![0x17, 0, 0, 0, 0, 1]),
            Message::new(8, 1, 0, vec![0xaf, 0, 0x12, 0x10]),
            Message::new(9, 1, 0, vec![0x17, 1, 0, 0, 0, 9]),
            // A newer sequence header replaces the first.
            Message::new(9, 1, 40, vec![0x17, 0, 0, 0, 0, 2]),
            Message::new(9, 1, 40, vec![0x27, 1, 0, 0, 0, 9]),
        ]
    }

    #[test]
    fn a_publisher_is_set_up_again_in_order_on_the_origins_stream_id() {
        let mut replay = journal_of(&publisher()).replay().expect("set up");
        assert_eq!(replay.client_stream_id(), 1);
        let first = replay.begin();
        assert_eq!(first.iter().map(name).collect::<Vec<_>>(), ["connect"]);
        assert_eq!(
            Command::parse(&first[0]).unwrap(),
            Command::parse(&connect()).unwrap(),
            "the client's own connect"
        );
        // The origin's window size and bandwidth messages are not answers.
        let window = Message::new(5, 0, 0, vec![0, 0, 0x10, 0]);
        assert_eq!(replay.on_origin(&window).unwrap(), ReplayStep::Waiting);
        let ReplayStep::Send(next) = replay.on_origin(&command::connect_result(1.0)).unwrap()
        else {
            panic!("connect answered")
        };
        let names: Vec<String> = next.iter().map(name).collect();
        assert_eq!(names, ["releaseStream", "FCPublish", "createStream"]);
        // This origin hands out stream 7.
        let created = result(4.0, Amf0Value::Number(7.0));
        let ReplayStep::Send(next) = replay.on_origin(&created).unwrap() else {
            panic!("stream created")
        };
        assert_eq!(next.iter().map(name).collect::<Vec<_>>(), ["publish"]);
        assert_eq!(next[0].stream_id, 7);
        let started = on_status(7, "status", "NetStream.Publish.Start", "go");
        let ReplayStep::Started { stream_id, then } = replay.on_origin(&started).unwrap() else {
            panic!("started")
        };
        assert_eq!(stream_id, 7);
        // Metadata, then the headers as they were last sent: the audio header, the newest
        // video header (it replaced the first); all on stream 7.
        assert_eq!(then.len(), 3);
        assert_eq!(then[0].type_id, message_type::DATA_AMF0);
        assert_eq!(then[1].payload[..], [0xaf, 0, 0x12, 0x10]);
        assert_eq!(then[2].payload[..], [0x17, 0, 0, 0, 0, 2]);
        assert!(then.iter().all(|m| m.stream_id == 7));
    }

    #[test]
    fn a_player_is_set_up_again_without_media_of_its_own() {
        let msgs = vec![
            connect(),
            request("createStream", 2.0, 0, vec![Amf0Value::Null]),
            request("play", 3.0, 1, vec![Amf0Value::Null, text("cam")]),
        ];
        let mut replay = journal_of(&msgs).replay().expect("set up");
        replay.begin();
        let ReplayStep::Send(next) = replay.on_origin(&command::connect_result(1.0)).unwrap()
        else {
            panic!()
        };
        assert_eq!(next.iter().map(name).collect::<Vec<_>>(), ["createStream"]);
        replay
            .on_origin(&result(2.0, Amf0Value::Number(1.0)))
            .unwrap();
        let reset = on_status(1, "status", "NetStream.Play.Reset", "");
        assert_eq!(replay.on_origin(&reset).unwrap(), ReplayStep::Waiting);
        let start = on_status(1, "status", "NetStream.Play.Start", "");
        assert_eq!(
            replay.on_origin(&start).unwrap(),
            ReplayStep::Started {
                stream_id: 1,
                then: vec![]
            }
        );
    }

    #[test]
    fn a_refusal_carries_the_origins_code() {
        let mut replay = journal_of(&publisher()).replay().unwrap();
        replay.begin();
        replay.on_origin(&command::connect_result(1.0)).unwrap();
        replay
            .on_origin(&result(4.0, Amf0Value::Number(1.0)))
            .unwrap();
        let bad = on_status(
            1,
            "error",
            "NetStream.Publish.BadName",
            "Already publishing",
        );
        assert_eq!(
            replay.on_origin(&bad).unwrap(),
            ReplayStep::Refused {
                code: "NetStream.Publish.BadName".into(),
                description: "Already publishing".into()
            }
        );
        let mut replay = journal_of(&publisher()).replay().unwrap();
        replay.begin();
        let no = command::error_response(1.0, "NetConnection.Connect.Rejected", "auth");
        assert!(matches!(
            replay.on_origin(&no).unwrap(),
            ReplayStep::Refused { code, .. } if code == "NetConnection.Connect.Rejected"
        ));
    }

    #[test]
    fn nothing_to_replay_before_publish_or_play() {
        let j = journal_of(&publisher()[..4]);
        assert!(j.replay().is_none());
        assert_eq!(j.direction(), None);
    }

    #[test]
    fn media_resumes_at_a_key_frame_on_the_new_stream_id() {
        let mut f = ResumeFilter::new(1, 7);
        let inter = |ts, stream| Message::new(9, stream, ts, vec![0x27, 1, 0, 0, 0]);
        let key = |ts, stream| Message::new(9, stream, ts, vec![0x17, 1, 0, 0, 0]);
        assert_eq!(f.toward_origin(inter(80, 1)), None);
        let audio = f
            .toward_origin(Message::new(8, 1, 80, vec![0xaf, 1, 1]))
            .unwrap();
        assert_eq!(audio.stream_id, 7, "audio goes on at once");
        let k = f.toward_origin(key(100, 1)).unwrap();
        assert_eq!((k.stream_id, k.timestamp), (7, 100), "timestamps kept");
        assert!(f.toward_origin(inter(133, 1)).is_some());
        let control = f
            .toward_origin(Message::new(20, 0, 0, vec![2, 0, 1, b'x']))
            .unwrap();
        assert_eq!(control.stream_id, 0, "stream 0 stays");
        // A player's media from the new origin connection: back on the client's stream id,
        // video from its own next key frame.
        assert_eq!(f.toward_client(inter(90, 7)), None);
        assert_eq!(f.toward_client(key(100, 7)).unwrap().stream_id, 1);
    }
}
