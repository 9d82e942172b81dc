//! Fast start at the edge: a client's `connect`, `createStream` and `publish` are answered by
//! the edge itself as soon as they arrive, and go on to the origin in the same flight, so a
//! push starts after one round trip to the origin instead of three. The origin's own answers
//! to what was answered here are dropped on their way back; a refusal is not: it reaches the
//! client as an `onStatus` with the origin's code and description, only later than it would
//! have directly. A `connect` that declares Enhanced RTMP capabilities (`fourCcList`,
//! `capsEx`, ...) is not answered here either: the origin's `_result` carries its own, which
//! the client must see unchanged. `play` is not answered here (a player waits for the origin's media anyway),
//! but it too goes out without waiting for `connect` and `createStream` to be answered.
//!
//! The edge hands out message stream id [`LOCAL_STREAM_ID`] for the first `createStream`, the
//! id nginx-rtmp and SRS give the first stream of a connection. Should the origin give another,
//! messages are moved between the two ids from its answer on.

use crate::amf0::Amf0Error;
use crate::command::{self, Amf0Value, Command};
use crate::message::Message;

/// The message stream id the edge answers the first `createStream` with.
pub const LOCAL_STREAM_ID: u32 = 1;

/// One session's fast-start state; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct FastStart {
    /// `connect` answered here: the origin's `_result` to it is dropped.
    connect_txn: Option<f64>,
    /// `createStream` answered here: the origin's `_result` to it is dropped.
    create_txn: Option<f64>,
    /// The stream id the origin gave, once it answered.
    origin_stream: Option<u32>,
    /// `publish` answered here: the origin's `NetStream.Publish.Start` is dropped.
    publish_pending: bool,
}

impl FastStart {
    /// A message from the client toward the origin (`cmd`: it parsed as this command): the
    /// answers to send the client now. Moves its stream id to the origin's.
    pub fn from_client(&mut self, msg: &mut Message, cmd: Option<&Command>) -> Vec<Message> {
        if let Some(origin) = self.origin_stream {
            if msg.stream_id == LOCAL_STREAM_ID {
                msg.stream_id = origin;
            }
        }
        let Some(cmd) = cmd else {
            return Vec::new();
        };
        match cmd.name.as_str() {
            // An Enhanced RTMP client learns the origin's codecs and capabilities from its
            // `_result`: only the origin can answer (the edge must not claim what it lacks).
            "connect" if cmd.declares_enhanced_rtmp() => Vec::new(),
            "connect" if self.connect_txn.is_none() => {
                self.connect_txn = Some(cmd.transaction_id);
                vec![command::connect_result(cmd.transaction_id)]
            }
            "createStream" if self.create_txn.is_none() => {
                self.create_txn = Some(cmd.transaction_id);
                vec![command::result(
                    cmd.transaction_id,
                    Amf0Value::Number(f64::from(LOCAL_STREAM_ID)),
                )]
            }
            "publish" if !self.publish_pending && msg.stream_id == self.client_to_origin() => {
                self.publish_pending = true;
                let name = cmd.string_arg(0).unwrap_or_default();
                let name = command::public_stream_name(name);
                vec![command::on_status(
                    LOCAL_STREAM_ID,
                    "status",
                    "NetStream.Publish.Start",
                    &format!("{name} is now published."),
                )]
            }
            _ => Vec::new(),
        }
    }

    /// A message from the origin toward the client: `None` if it answers what was answered
    /// here already. A refusal of `connect` becomes an `onStatus` (the client was told it was
    /// connected). Moves its stream id to the client's.
    pub fn from_origin(&mut self, mut msg: Message) -> Result<Option<Message>, Amf0Error> {
        if let Some(cmd) = Command::parse(&msg)? {
            match cmd.name.as_str() {
                "_result" if Some(cmd.transaction_id) == self.connect_txn => {
                    self.connect_txn = None;
                    return Ok(None);
                }
                "_error" if Some(cmd.transaction_id) == self.connect_txn => {
                    self.connect_txn = None;
                    let status = cmd.status();
                    let (code, description) =
                        status.map(|s| (s.code, s.description)).unwrap_or_else(|| {
                            ("NetConnection.Connect.Rejected".into(), String::new())
                        });
                    return Ok(Some(command::on_status(
                        LOCAL_STREAM_ID,
                        "error",
                        &code,
                        &description,
                    )));
                }
                "_result" if Some(cmd.transaction_id) == self.create_txn => {
                    self.create_txn = None;
                    if let Some(Amf0Value::Number(n)) = cmd.values.get(1) {
                        if *n >= 0.0 && *n < f64::from(u32::MAX) {
                            self.origin_stream = Some(*n as u32);
                        }
                    }
                    return Ok(None);
                }
                "onStatus"
                    if self.publish_pending
                        && cmd
                            .status()
                            .is_some_and(|s| s.code == "NetStream.Publish.Start") =>
                {
                    self.publish_pending = false;
                    return Ok(None);
                }
                _ => {}
            }
        }
        if self.origin_stream.is_some_and(|o| o == msg.stream_id) {
            msg.stream_id = LOCAL_STREAM_ID;
        }
        Ok(Some(msg))
    }

    /// The stream id the client's messages carry toward the origin.
    fn client_to_origin(&self) -> u32 {
        self.origin_stream.unwrap_or(LOCAL_STREAM_ID)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{connect_object, on_status, request, result};
    use std::collections::HashMap;

    fn text(s: &str) -> Amf0Value {
        Amf0Value::Utf8String(s.into())
    }

    fn client(f: &mut FastStart, mut msg: Message) -> (Message, Vec<String>) {
        let cmd = Command::parse(&msg).unwrap();
        let replies = f.from_client(&mut msg, cmd.as_ref());
        let names = replies
            .iter()
            .map(|m| {
                let c = Command::parse(m).unwrap().unwrap();
                match c.status() {
                    Some(s) if c.name == "onStatus" => s.code,
                    _ => c.name,
                }
            })
            .collect();
        (msg, names)
    }

    #[test]
    fn an_enhanced_rtmp_connect_is_answered_by_the_origin_alone() {
        let mut f = FastStart::default();
        let Amf0Value::Object(mut props) = connect_object("live", "rtmp://o/live") else {
            unreachable!()
        };
        props.insert("capsEx".into(), Amf0Value::Number(4.0));
        let fourccs = ["hvc1", "av01", "Opus"].map(text).to_vec();
        props.insert("fourCcList".into(), Amf0Value::StrictArray(fourccs));
        let connect = request("connect", 1.0, 0, vec![Amf0Value::Object(props.clone())]);
        let (sent, answered) = client(&mut f, connect.clone());
        assert!(answered.is_empty(), "the edge claims no capabilities");
        assert_eq!(sent, connect, "the connect goes on unchanged");
        // The origin's _result, with its own capabilities, reaches the client unchanged.
        let mut origin_props = HashMap::new();
        origin_props.insert("capsEx".into(), Amf0Value::Number(1.0));
        let origin_result = request(
            "_result",
            1.0,
            0,
            vec![Amf0Value::Object(origin_props), Amf0Value::Null],
        );
        assert_eq!(
            f.from_origin(origin_result.clone()).unwrap(),
            Some(origin_result)
        );
        // The rest of the set-up is still answered here.
        let create = request("createStream", 2.0, 0, vec![Amf0Value::Null]);
        assert_eq!(client(&mut f, create).1, ["_result"]);
    }

    #[test]
    fn a_push_is_answered_here_and_the_origins_answers_are_dropped() {
        let mut f = FastStart::default();
        let connect = request(
            "connect",
            1.0,
            0,
            vec![connect_object("live", "rtmp://o/live")],
        );
        assert_eq!(client(&mut f, connect).1, ["_result"]);
        let release = request("releaseStream", 2.0, 0, vec![Amf0Value::Null, text("cam")]);
        assert!(
            client(&mut f, release).1.is_empty(),
            "the origin answers that one"
        );
        let create = request("createStream", 4.0, 0, vec![Amf0Value::Null]);
        assert_eq!(client(&mut f, create).1, ["_result"]);
        let publish = request(
            "publish",
            5.0,
            1,
            vec![Amf0Value::Null, text("cam"), text("live")],
        );
        let (sent, names) = client(&mut f, publish);
        assert_eq!(names, ["NetStream.Publish.Start"]);
        assert_eq!(sent.stream_id, 1);
        // The origin's answers, a round trip later: dropped, but not the others.
        assert_eq!(f.from_origin(command::connect_result(1.0)).unwrap(), None);
        let released = result(2.0, Amf0Value::Null);
        assert!(f.from_origin(released).unwrap().is_some());
        assert_eq!(
            f.from_origin(result(4.0, Amf0Value::Number(1.0))).unwrap(),
            None
        );
        let start = on_status(1, "status", "NetStream.Publish.Start", "");
        assert_eq!(f.from_origin(start).unwrap(), None);
        // Media goes on stream 1 both ways.
        let mut video = Message::new(9, 1, 0, vec![0x17, 1]);
        f.from_client(&mut video, None);
        assert_eq!(video.stream_id, 1);
    }

    #[test]
    fn a_refusal_reaches_the_client_as_on_status() {
        let mut f = FastStart::default();
        let connect = request(
            "connect",
            1.0,
            0,
            vec![connect_object("live", "rtmp://o/live")],
        );
        client(&mut f, connect);
        let create = request("createStream", 2.0, 0, vec![Amf0Value::Null]);
        client(&mut f, create);
        let publish = request("publish", 3.0, 1, vec![Amf0Value::Null, text("cam")]);
        client(&mut f, publish);
        f.from_origin(command::connect_result(1.0)).unwrap();
        f.from_origin(result(2.0, Amf0Value::Number(1.0))).unwrap();
        let bad = on_status(
            1,
            "error",
            "NetStream.Publish.BadName",
            "Already publishing",
        );
        let passed = f.from_origin(bad).unwrap().expect("passed on");
        let status = Command::parse(&passed).unwrap().unwrap().status().unwrap();
        assert_eq!(status.code, "NetStream.Publish.BadName");
        // A refused connect (an auth callback that said no) becomes an onStatus error.
        let mut f = FastStart::default();
        let connect = request(
            "connect",
            1.0,
            0,
            vec![connect_object("live", "rtmp://o/live")],
        );
        client(&mut f, connect);
        let no = command::error_response(1.0, "NetConnection.Connect.Rejected", "auth failed");
        let told = f.from_origin(no).unwrap().expect("passed on");
        let cmd = Command::parse(&told).unwrap().unwrap();
        assert_eq!(cmd.name, "onStatus");
        let status = cmd.status().unwrap();
        assert_eq!(
            (
                status.level.as_str(),
                status.code.as_str(),
                status.description.as_str()
            ),
            ("error", "NetConnection.Connect.Rejected", "auth failed")
        );
    }

    #[test]
    fn another_stream_id_from_the_origin_is_mapped_both_ways() {
        let mut f = FastStart::default();
        client(
            &mut f,
            request("connect", 1.0, 0, vec![connect_object("a", "rtmp://o/a")]),
        );
        client(
            &mut f,
            request("createStream", 2.0, 0, vec![Amf0Value::Null]),
        );
        assert_eq!(
            f.from_origin(result(2.0, Amf0Value::Number(5.0))).unwrap(),
            None
        );
        let mut video = Message::new(9, 1, 0, vec![0x17, 1]);
        f.from_client(&mut video, None);
        assert_eq!(video.stream_id, 5);
        let status = on_status(5, "status", "NetStream.Play.Start", "");
        assert_eq!(f.from_origin(status).unwrap().unwrap().stream_id, 1);
    }

    #[test]
    fn a_player_is_not_answered_here() {
        let mut f = FastStart::default();
        client(
            &mut f,
            request("connect", 1.0, 0, vec![connect_object("a", "rtmp://o/a")]),
        );
        client(
            &mut f,
            request("createStream", 2.0, 0, vec![Amf0Value::Null]),
        );
        let play = request("play", 3.0, 1, vec![Amf0Value::Null, text("cam")]);
        assert!(client(&mut f, play).1.is_empty());
        let start = on_status(1, "status", "NetStream.Play.Start", "");
        assert!(
            f.from_origin(start).unwrap().is_some(),
            "the origin's own answer"
        );
    }
}
