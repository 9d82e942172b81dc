//! AMF0 command inspection (connect, createStream, publish, play, deleteStream, onStatus) and
//! the few commands a hop writes itself, built on rml_amf0.

use std::collections::HashMap;
use std::io::Cursor;

use bytes::Bytes;
pub use rml_amf0::Amf0Value;

use crate::amf0::{self, Amf0Error, Amf0Limits, Amf0Shape};
use crate::message::{message_type, Message};

/// A decoded command message: name, transaction id and the remaining values.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Command name (`connect`, `publish`, `_result`, `onStatus`, ...).
    pub name: String,
    /// Transaction id; 0 for commands that expect no answer.
    pub transaction_id: f64,
    /// The command object (or null) followed by the arguments.
    pub values: Vec<Amf0Value>,
}

impl Command {
    /// Decodes an AMF0 (type 20) or AMF3-wrapped AMF0 (type 17) command.
    ///
    /// `Ok(None)` for other message types and for commands this hop cannot inspect but may
    /// forward untouched (AMF3 values, AMF0 types rml_amf0 does not decode). `Err` for a body
    /// that breaks the AMF0 grammar or [`Amf0Limits`]: the session that sent it must end.
    pub fn parse(msg: &Message) -> Result<Option<Command>, Amf0Error> {
        let body = match msg.type_id {
            message_type::COMMAND_AMF0 => &msg.payload[..],
            // Type 17 starts with a format byte 0 and then carries AMF0 values.
            message_type::COMMAND_AMF3 => match msg.payload.get(1..) {
                Some(body) => body,
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        if amf0::check(body, Amf0Limits::default())? != Amf0Shape::Plain {
            return Ok(None);
        }
        // Bounded by the check above: rml_amf0 recurses at most `max_depth` levels.
        let Ok(values) = rml_amf0::deserialize(&mut Cursor::new(body)) else {
            return Ok(None);
        };
        Ok(Self::from_values(values))
    }

    fn from_values(mut values: Vec<Amf0Value>) -> Option<Command> {
        if values.len() < 2 {
            return None;
        }
        let mut rest = values.split_off(2);
        let transaction_id = values.pop()?.get_number()?;
        let name = values.pop()?.get_string()?;
        if rest.is_empty() {
            rest.push(Amf0Value::Null);
        }
        Some(Command {
            name,
            transaction_id,
            values: rest,
        })
    }

    /// Encodes this command as an AMF0 command message on `stream_id`.
    pub fn to_message(&self, stream_id: u32) -> Message {
        let mut all = vec![
            Amf0Value::Utf8String(self.name.clone()),
            Amf0Value::Number(self.transaction_id),
        ];
        all.extend(self.values.iter().cloned());
        let payload = rml_amf0::serialize(&all).unwrap_or_default();
        Message::new(
            message_type::COMMAND_AMF0,
            stream_id,
            0,
            Bytes::from(payload),
        )
    }

    /// A property of the command object (the first value), if it is a string.
    pub fn object_string(&self, key: &str) -> Option<&str> {
        match self.values.first()? {
            Amf0Value::Object(props) => match props.get(key)? {
                Amf0Value::Utf8String(s) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether a `connect`'s command object declares Enhanced RTMP capabilities
    /// (`fourCcList`, `videoFourCcInfoMap`, `audioFourCcInfoMap`, `capsEx`): the client then
    /// reads the server's own in its `_result`.
    pub fn declares_enhanced_rtmp(&self) -> bool {
        const CAPABILITIES: [&str; 4] = [
            "fourCcList",
            "videoFourCcInfoMap",
            "audioFourCcInfoMap",
            "capsEx",
        ];
        match self.values.first() {
            Some(Amf0Value::Object(props)) => CAPABILITIES.iter().any(|k| props.contains_key(*k)),
            _ => false,
        }
    }

    /// The n-th argument after the command object, if it is a string.
    pub fn string_arg(&self, n: usize) -> Option<&str> {
        match self.values.get(n + 1)? {
            Amf0Value::Utf8String(s) => Some(s),
            _ => None,
        }
    }

    /// The `level`, `code` and `description` of an onStatus / _error info object.
    pub fn status(&self) -> Option<StatusInfo> {
        let info = self.values.iter().find_map(|v| match v {
            Amf0Value::Object(p) => Some(p),
            _ => None,
        })?;
        let get = |k: &str| match info.get(k) {
            Some(Amf0Value::Utf8String(s)) => s.clone(),
            _ => String::new(),
        };
        Some(StatusInfo {
            level: get("level"),
            code: get("code"),
            description: get("description"),
        })
    }
}

/// The fields of an RTMP status object that matter to people reading logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusInfo {
    /// `status`, `warning` or `error`.
    pub level: String,
    /// For example `NetStream.Publish.Start`.
    pub code: String,
    /// Free text.
    pub description: String,
}

fn info_object(level: &str, code: &str, description: &str) -> Amf0Value {
    let mut props = HashMap::new();
    props.insert("level".into(), Amf0Value::Utf8String(level.into()));
    props.insert("code".into(), Amf0Value::Utf8String(code.into()));
    props.insert(
        "description".into(),
        Amf0Value::Utf8String(description.into()),
    );
    Amf0Value::Object(props)
}

/// An `onStatus` command on `stream_id`.
pub fn on_status(stream_id: u32, level: &str, code: &str, description: &str) -> Message {
    Command {
        name: "onStatus".into(),
        transaction_id: 0.0,
        values: vec![Amf0Value::Null, info_object(level, code, description)],
    }
    .to_message(stream_id)
}

/// An `_error` answer to transaction `transaction_id` (for example a failed connect).
pub fn error_response(transaction_id: f64, code: &str, description: &str) -> Message {
    Command {
        name: "_error".into(),
        transaction_id,
        values: vec![Amf0Value::Null, info_object("error", code, description)],
    }
    .to_message(0)
}

/// A `_result` answer to `connect`.
pub fn connect_result(transaction_id: f64) -> Message {
    let mut props = HashMap::new();
    props.insert(
        "fmsVer".into(),
        Amf0Value::Utf8String("FMS/3,0,1,123".into()),
    );
    props.insert("capabilities".into(), Amf0Value::Number(31.0));
    Command {
        name: "_result".into(),
        transaction_id,
        values: vec![
            Amf0Value::Object(props),
            info_object(
                "status",
                "NetConnection.Connect.Success",
                "Connection succeeded.",
            ),
        ],
    }
    .to_message(0)
}

/// A `_result` with one value (for example the stream id answering `createStream`).
pub fn result(transaction_id: f64, value: Amf0Value) -> Message {
    Command {
        name: "_result".into(),
        transaction_id,
        values: vec![Amf0Value::Null, value],
    }
    .to_message(0)
}

/// A client command (`connect`, `createStream`, `publish`, `play`, ...) with its arguments.
pub fn request(name: &str, transaction_id: f64, stream_id: u32, args: Vec<Amf0Value>) -> Message {
    Command {
        name: name.into(),
        transaction_id,
        values: args,
    }
    .to_message(stream_id)
}

/// A data message (type 18) carrying `values`, such as `@setDataFrame onMetaData {..}`.
pub fn data_message(stream_id: u32, values: Vec<Amf0Value>) -> Message {
    let payload = rml_amf0::serialize(&values).unwrap_or_default();
    Message::new(message_type::DATA_AMF0, stream_id, 0, Bytes::from(payload))
}

/// A `connect` command object for `app` at `tc_url`.
pub fn connect_object(app: &str, tc_url: &str) -> Amf0Value {
    let mut props = HashMap::new();
    props.insert("app".into(), Amf0Value::Utf8String(app.into()));
    props.insert("tcUrl".into(), Amf0Value::Utf8String(tc_url.into()));
    props.insert("type".into(), Amf0Value::Utf8String("nonprivate".into()));
    props.insert(
        "flashVer".into(),
        Amf0Value::Utf8String("FMLE/3.0 (compatible; rtmpq)".into()),
    );
    Amf0Value::Object(props)
}

/// A stream name without its query string, which often carries a secret key.
pub fn public_stream_name(name: &str) -> &str {
    name.split('?').next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_builds() {
        let msg = request(
            "connect",
            1.0,
            0,
            vec![connect_object("live", "rtmp://h/live")],
        );
        let cmd = Command::parse(&msg).unwrap().unwrap();
        assert_eq!(cmd.name, "connect");
        assert_eq!(cmd.transaction_id, 1.0);
        assert_eq!(cmd.object_string("app"), Some("live"));

        let publish = request(
            "publish",
            5.0,
            1,
            vec![
                Amf0Value::Null,
                Amf0Value::Utf8String("cam?key=s3cret".into()),
                Amf0Value::Utf8String("live".into()),
            ],
        );
        let cmd = Command::parse(&publish).unwrap().unwrap();
        assert_eq!(cmd.string_arg(0), Some("cam?key=s3cret"));
        assert_eq!(public_stream_name(cmd.string_arg(0).unwrap()), "cam");

        let err = error_response(1.0, "NetConnection.Connect.Failed", "origin down");
        let status = Command::parse(&err).unwrap().unwrap().status().unwrap();
        assert_eq!(status.level, "error");
        assert_eq!(status.description, "origin down");
    }

    #[test]
    fn ignores_non_commands_and_garbage() {
        assert_eq!(
            Command::parse(&Message::new(9, 1, 0, vec![0x17, 0])),
            Ok(None)
        );
        assert!(Command::parse(&Message::new(20, 0, 0, vec![0xff, 0x00, 0x13])).is_err());
        assert_eq!(
            Command::parse(&Message::new(17, 0, 0, Vec::new())),
            Ok(None)
        );
        // Valid AMF0 that rml_amf0 does not decode (a Date) is forwarded, not refused.
        let mut dated = vec![0x02, 0, 1, b'x', 0x00];
        dated.extend_from_slice(&1f64.to_be_bytes());
        dated.extend_from_slice(&[0x0b; 11]);
        assert_eq!(Command::parse(&Message::new(20, 0, 0, dated)), Ok(None));
    }

    #[test]
    fn refuses_a_deeply_nested_connect_without_overflowing_the_stack() {
        // The probe that aborted the edge: `connect`, 1, then an object nested 50 000 deep.
        for (type_id, prefix) in [(20u8, &[][..]), (17, &[0u8][..])] {
            let mut body = prefix.to_vec();
            body.extend_from_slice(&[0x02, 0, 7]);
            body.extend_from_slice(b"connect");
            body.push(0x00);
            body.extend_from_slice(&1f64.to_be_bytes());
            body.push(0x03);
            for _ in 0..50_000 {
                body.extend_from_slice(&[0, 1, b'a', 0x03]);
            }
            let err = Command::parse(&Message::new(type_id, 0, 0, body)).unwrap_err();
            assert!(matches!(err, Amf0Error::TooDeep { .. }), "{err}");
        }
    }
}
