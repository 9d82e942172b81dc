//! Messages as an RTMP origin reads them as commands, so a gateway judges a client's
//! `connect`, `publish` or `play` however it is spelled.
//!
//! nginx-rtmp dispatches AMF0 and AMF3 commands (20, 17), data (18, 15) and shared-object
//! messages (19, 16), and each of those inside an aggregate (22), all to one table of command
//! handlers. It reads the command name as a string value (shared objects: a bare string
//! without its type marker; AMF3 types: after one prefix byte), keeps at most 127 bytes of it,
//! cuts it at the first NUL and lower-cases it, then reads the arguments by position: a value
//! of another type than the handler expects leaves that argument empty, and whatever follows
//! the arguments it wants is never read. [`stream_commands`] reads every message the same
//! way and returns what the client connects to, publishes and plays; what it cannot read the
//! way the origin would is an error, and a gateway that restricts an edge refuses it (fail
//! closed). No recursion: nested values are skipped with an explicit, bounded stack.

use crate::amf0::marker;
use crate::message::{message_type, Message};

/// Longest application or stream name judged (nginx-rtmp keeps 255 bytes of a name and
/// silently cuts the rest; a name it would cut cannot be judged as it will be read).
pub const MAX_NAME_LEN: usize = 255;

/// nginx-rtmp keeps this many bytes of a command name.
const MAX_COMMAND_LEN: usize = 127;

/// Deepest nesting skipped while looking for an argument.
const MAX_DEPTH: usize = 32;

/// Command names (as the origin matches them: lower case) that publish a stream.
const PUBLISH_COMMANDS: [&str; 4] = ["publish", "fcpublish", "releasestream", "fcunpublish"];

/// Command names that play a stream.
const PLAY_COMMANDS: [&str; 3] = ["play", "fcsubscribe", "fcunsubscribe"];

/// Command names that name a stream in a way this module does not read.
const UNJUDGED_COMMANDS: [&str; 1] = ["play2"];

/// A command that says what a client connects to, publishes or plays, as the origin reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamCommand {
    /// `connect`: the application, with what the origin cuts off (a query, a trailing `/` or
    /// `/_definst_`) cut off.
    Connect {
        /// The application.
        app: String,
    },
    /// `publish`, `FCPublish`, `releaseStream` or `FCUnpublish` of a stream.
    Publish {
        /// The command's name as the origin matches it (lower case).
        command: String,
        /// The stream, without its query string; empty when the origin reads no name.
        stream: String,
    },
    /// `play`, `FCSubscribe` or `FCUnsubscribe` of a stream.
    Play {
        /// The command's name as the origin matches it (lower case).
        command: String,
        /// The stream, without its query string; empty when the origin reads no name.
        stream: String,
    },
}

/// Why a message cannot be judged the way the origin will read it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CannotJudge {
    /// An aggregate message inside an aggregate message.
    #[error("an aggregate message inside an aggregate message")]
    NestedAggregate,
    /// A command that names a stream in a way not read here.
    #[error("a `{0}` command, which is not judged here")]
    Unjudged(String),
    /// An argument before or at the stream name that the origin would read otherwise or not
    /// at all.
    #[error("a `{0}` command whose arguments cannot be read as the origin reads them")]
    Unreadable(String),
    /// A name with a control character (NUL included), or longer than [`MAX_NAME_LEN`].
    #[error(
        "a `{0}` command whose name has a control character or more than {MAX_NAME_LEN} bytes"
    )]
    BadName(String),
}

/// What `msg` connects to, publishes and plays as the origin will read it, in order (several
/// for an aggregate message); empty for messages the origin does not read as commands.
pub fn stream_commands(msg: &Message) -> Result<Vec<StreamCommand>, CannotJudge> {
    let mut out = Vec::new();
    if msg.type_id != message_type::AGGREGATE {
        out.extend(command_in(msg.type_id, &msg.payload)?);
        return Ok(out);
    }
    // Sub-messages: type u8, size u24, timestamp u24 + u8, stream id u24, body, back pointer
    // u32. The origin stops at the first one that does not fit; so does this.
    let mut rest = &msg.payload[..];
    while rest.len() >= 11 {
        let type_id = rest[0];
        let size = usize::from(rest[1]) << 16 | usize::from(rest[2]) << 8 | usize::from(rest[3]);
        let after_header = &rest[11..];
        // The origin hands a sub-message on only if at least one byte follows its body.
        if after_header.len() <= size {
            break;
        }
        if type_id == message_type::AGGREGATE {
            return Err(CannotJudge::NestedAggregate);
        }
        out.extend(command_in(type_id, &after_header[..size])?);
        rest = after_header.get(size + 4..).unwrap_or_default();
    }
    Ok(out)
}

/// The stream command one message of `type_id` carries, if any.
fn command_in(type_id: u8, payload: &[u8]) -> Result<Option<StreamCommand>, CannotJudge> {
    let (typeless, prefixed) = match type_id {
        message_type::COMMAND_AMF0 | message_type::DATA_AMF0 => (false, false),
        message_type::COMMAND_AMF3 | message_type::DATA_AMF3 => (false, true),
        message_type::SHARED_OBJECT_AMF0 => (true, false),
        message_type::SHARED_OBJECT_AMF3 => (true, true),
        _ => return Ok(None),
    };
    let body = if prefixed {
        payload.get(1..).unwrap_or_default()
    } else {
        payload
    };
    let mut reader = Reader { body, pos: 0 };
    let Some(name) = reader.command_name(typeless) else {
        return Ok(None);
    };
    let name = name.as_str();
    if UNJUDGED_COMMANDS.contains(&name) {
        return Err(CannotJudge::Unjudged(name.to_owned()));
    }
    let unreadable = || CannotJudge::Unreadable(name.to_owned());
    if name == "connect" {
        reader.skip_value().map_err(|()| unreadable())?;
        let app = reader.connect_app().map_err(|()| unreadable())?;
        let app = judged_name(app).ok_or_else(|| CannotJudge::BadName(name.to_owned()))?;
        return Ok(Some(StreamCommand::Connect {
            app: origin_app(app).to_owned(),
        }));
    }
    let publish = PUBLISH_COMMANDS.contains(&name);
    if !publish && !PLAY_COMMANDS.contains(&name) {
        return Ok(None);
    }
    // Transaction id, command object (null), then the stream name.
    for _ in 0..2 {
        reader.skip_value().map_err(|()| unreadable())?;
    }
    let stream = reader.string_value().map_err(|()| unreadable())?;
    let stream = judged_name(stream).ok_or_else(|| CannotJudge::BadName(name.to_owned()))?;
    let stream = crate::command::public_stream_name(stream).to_owned();
    let command = name.to_owned();
    Ok(Some(if publish {
        StreamCommand::Publish { command, stream }
    } else {
        StreamCommand::Play { command, stream }
    }))
}

/// `name` as text, if the origin will read all of it and it has no control character (a NUL
/// cuts it at the origin; a newline would split the log line that names it).
fn judged_name(name: &[u8]) -> Option<&str> {
    if name.len() > MAX_NAME_LEN {
        return None;
    }
    std::str::from_utf8(name)
        .ok()
        .filter(|n| !n.contains(char::is_control))
}

/// An application name as the origin looks it up: without `/_definst_` or one trailing `/`,
/// and without its query string (which can carry a secret: never log it).
pub fn origin_app(app: &str) -> &str {
    let app = app
        .strip_suffix("/_definst_")
        .or_else(|| app.strip_suffix('/'))
        .unwrap_or(app);
    app.split('?').next().unwrap_or_default()
}

/// An open container while skipping a value.
enum Open {
    /// Properties until an empty name and object-end.
    Properties,
    /// This many values still to come.
    Values(u32),
}

/// Reads AMF0 the way nginx-rtmp does, over the types it reads (anything else: `Err`).
struct Reader<'a> {
    body: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ()> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.body.len());
        let end = end.ok_or(())?;
        let bytes = &self.body[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, ()> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize, ()> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u32(&mut self) -> Result<u32, ()> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string_body(&mut self) -> Result<&'a [u8], ()> {
        let n = self.u16()?;
        self.take(n)
    }

    /// The command name as the origin matches it; `None` when it reads none (another type
    /// than a string, or a truncated body).
    fn command_name(&mut self, typeless: bool) -> Option<String> {
        if !typeless && self.byte().ok()? != marker::STRING {
            return None;
        }
        let raw = self.string_body().ok()?;
        let kept = &raw[..raw.len().min(MAX_COMMAND_LEN)];
        let cut = kept.split(|&b| b == 0).next().unwrap_or_default();
        Some(String::from_utf8_lossy(cut).to_ascii_lowercase())
    }

    /// The next value if it is a string; empty for a value of another type or none at all
    /// (the origin then reads an empty name).
    fn string_value(&mut self) -> Result<&'a [u8], ()> {
        match self.body.get(self.pos) {
            None => Ok(&[]),
            Some(&marker::STRING) => {
                self.pos += 1;
                self.string_body()
            }
            Some(_) => {
                self.skip_value()?;
                Ok(&[])
            }
        }
    }

    /// The `app` property of the command object that comes next, the last one if there are
    /// several (the origin overwrites); empty without one.
    fn connect_app(&mut self) -> Result<&'a [u8], ()> {
        let mut app: &'a [u8] = &[];
        match self.body.get(self.pos) {
            Some(&marker::OBJECT) => self.pos += 1,
            Some(&marker::ECMA_ARRAY) => {
                self.pos += 1;
                self.u32()?;
            }
            None => return Ok(app),
            Some(_) => {
                self.skip_value()?;
                return Ok(app);
            }
        }
        loop {
            let key = self.string_body()?;
            if key.is_empty() {
                return if self.byte()? == marker::OBJECT_END {
                    Ok(app)
                } else {
                    Err(())
                };
            }
            if key == b"app" && self.body.get(self.pos) == Some(&marker::STRING) {
                self.pos += 1;
                app = self.string_body()?;
            } else {
                self.skip_value()?;
            }
        }
    }

    /// Skips one value, nested ones included, without recursion.
    fn skip_value(&mut self) -> Result<(), ()> {
        let mut stack: Vec<Open> = Vec::new();
        loop {
            // Where the next value comes from: the top (once), an array, or a property.
            match stack.last_mut() {
                Some(Open::Values(0)) => {
                    stack.pop();
                    if stack.is_empty() {
                        return Ok(());
                    }
                    continue;
                }
                Some(Open::Values(left)) => *left -= 1,
                Some(Open::Properties) => {
                    let name_len = self.u16()?;
                    if name_len == 0 {
                        if self.byte()? != marker::OBJECT_END {
                            return Err(());
                        }
                        stack.pop();
                        if stack.is_empty() {
                            return Ok(());
                        }
                        continue;
                    }
                    self.take(name_len)?;
                }
                None => {}
            }
            match self.byte()? {
                marker::NUMBER => {
                    self.take(8)?;
                }
                marker::BOOLEAN => {
                    self.take(1)?;
                }
                marker::STRING => {
                    self.string_body()?;
                }
                marker::NULL | marker::UNDEFINED => {}
                marker::OBJECT => stack.push(Open::Properties),
                marker::ECMA_ARRAY => {
                    self.u32()?;
                    stack.push(Open::Properties);
                }
                marker::STRICT_ARRAY => {
                    let n = self.u32()?;
                    stack.push(Open::Values(n));
                }
                _ => return Err(()),
            }
            if stack.len() > MAX_DEPTH {
                return Err(());
            }
            if stack.is_empty() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &[u8]) -> Vec<u8> {
        let mut v = vec![marker::STRING];
        v.extend_from_slice(&(s.len() as u16).to_be_bytes());
        v.extend_from_slice(s);
        v
    }
    fn number() -> Vec<u8> {
        let mut v = vec![marker::NUMBER];
        v.extend_from_slice(&5f64.to_be_bytes());
        v
    }
    /// `name`, transaction, null, `stream`, then `tail`.
    fn named(name: &[u8], stream: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut v = string(name);
        v.extend(number());
        v.push(marker::NULL);
        v.extend(string(stream));
        v.extend_from_slice(tail);
        v
    }
    fn judge(type_id: u8, payload: Vec<u8>) -> Result<Vec<StreamCommand>, CannotJudge> {
        stream_commands(&Message::new(type_id, 1, 0, payload))
    }
    fn publish(command: &str, stream: &str) -> Vec<StreamCommand> {
        vec![StreamCommand::Publish {
            command: command.into(),
            stream: stream.into(),
        }]
    }
    fn play(stream: &str) -> Vec<StreamCommand> {
        vec![StreamCommand::Play {
            command: "play".into(),
            stream: stream.into(),
        }]
    }
    fn aggregate(subs: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut v = Vec::new();
        for (type_id, body) in subs {
            v.push(*type_id);
            v.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            v.extend_from_slice(&[0; 7]);
            v.extend_from_slice(body);
            v.extend_from_slice(&(body.len() as u32 + 11).to_be_bytes());
        }
        v
    }

    #[test]
    fn every_spelling_the_origin_dispatches_is_read_as_it_reads_it() {
        let studio = publish("publish", "studio");
        assert_eq!(
            judge(20, named(b"publish", b"studio", b"")),
            Ok(studio.clone())
        );
        assert_eq!(
            judge(20, named(b"Publish", b"studio", b"")),
            Ok(studio.clone())
        );
        assert_eq!(
            judge(20, named(b"PUBLISH\0x", b"studio", b"")),
            Ok(studio.clone())
        );
        assert_eq!(
            judge(18, named(b"publish", b"studio", b"")),
            Ok(studio.clone())
        );
        for prefixed in [17, 15] {
            let mut body = vec![0];
            body.extend(named(b"publish", b"studio", b""));
            assert_eq!(judge(prefixed, body), Ok(studio.clone()), "type {prefixed}");
        }
        // Shared objects: the name without its type marker.
        let typeless = named(b"publish", b"studio", b"")[1..].to_vec();
        assert_eq!(judge(19, typeless.clone()), Ok(studio.clone()));
        let mut body = vec![0];
        body.extend(typeless);
        assert_eq!(judge(16, body), Ok(studio.clone()));
        // What follows the arguments is never read: a Date, an AMF3 marker.
        let mut date = vec![0x0b];
        date.extend_from_slice(&[0; 10]);
        assert_eq!(
            judge(20, named(b"publish", b"studio", &date)),
            Ok(studio.clone())
        );
        assert_eq!(
            judge(20, named(b"publish", b"studio", &[0x11, 1])),
            Ok(studio.clone())
        );
        // A transaction id of another type is skipped all the same.
        let mut odd = string(b"publish");
        odd.extend(string(b"not a number"));
        odd.push(marker::NULL);
        odd.extend(string(b"studio?key=1"));
        assert_eq!(judge(20, odd), Ok(studio.clone()));
        // Inside an aggregate, after a video tag.
        let agg = aggregate(&[
            (9, vec![0x17, 1, 0, 0, 0]),
            (20, named(b"publish", b"studio", b"")),
        ]);
        assert_eq!(judge(22, agg), Ok(studio));
        assert_eq!(
            judge(20, named(b"play", b"secret", b"")),
            Ok(play("secret"))
        );
        assert_eq!(
            judge(20, named(b"FCSubscribe", b"secret", b"")),
            Ok(vec![StreamCommand::Play {
                command: "fcsubscribe".into(),
                stream: "secret".into()
            }])
        );
        assert_eq!(
            judge(20, named(b"releaseStream", b"studio", b"")),
            Ok(publish("releasestream", "studio"))
        );
    }

    #[test]
    fn what_cannot_be_read_as_the_origin_reads_it_is_an_error() {
        assert_eq!(
            judge(20, named(b"publish", b"studio\0cam-a-1", b"")),
            Err(CannotJudge::BadName("publish".into()))
        );
        let long = vec![b'a'; MAX_NAME_LEN + 1];
        assert!(judge(20, named(b"play", &long, b"")).is_err());
        assert!(judge(20, named(b"play", b"a\nforged log line", b"")).is_err());
        assert_eq!(
            judge(20, named(b"play2", b"x", b"")),
            Err(CannotJudge::Unjudged("play2".into()))
        );
        let inner = aggregate(&[(20, named(b"publish", b"studio", b""))]);
        assert_eq!(
            judge(22, aggregate(&[(22, inner)])),
            Err(CannotJudge::NestedAggregate)
        );
        // A command object the origin reads differently (an AMF3 value) before the name.
        let mut amf3 = string(b"publish");
        amf3.extend(number());
        amf3.extend([0x11, 0x01]);
        amf3.extend(string(b"studio"));
        assert_eq!(
            judge(20, amf3),
            Err(CannotJudge::Unreadable("publish".into()))
        );
        // An object nested past the limit is refused, not followed.
        let mut deep = string(b"publish");
        deep.extend(number());
        for _ in 0..10_000 {
            deep.extend([marker::OBJECT, 0, 1, b'a']);
        }
        assert!(judge(20, deep).is_err());
    }

    #[test]
    fn a_name_of_another_type_reads_as_empty_and_others_are_not_commands() {
        let mut numbered = string(b"publish");
        numbered.extend(number());
        numbered.push(marker::NULL);
        numbered.extend(number());
        assert_eq!(judge(20, numbered), Ok(publish("publish", "")));
        // The origin fails a publish without its arguments; this cannot say what it names.
        assert!(judge(20, string(b"publish")).is_err());
        assert_eq!(judge(9, vec![0x17, 1, 0, 0, 0]), Ok(vec![]));
        assert_eq!(
            judge(18, named(b"@setDataFrame", b"onMetaData", b"")),
            Ok(vec![])
        );
        assert_eq!(judge(20, number()), Ok(vec![]));
        assert_eq!(judge(20, vec![]), Ok(vec![]));
        assert_eq!(judge(22, vec![20, 0, 0]), Ok(vec![]));
    }

    #[test]
    fn connect_gives_the_app_as_the_origin_looks_it_up() {
        let connect = |props: &[(&[u8], Vec<u8>)], type_id: u8| {
            let mut v = string(b"connect");
            v.extend(number());
            v.push(marker::OBJECT);
            for (k, val) in props {
                v.extend_from_slice(&(k.len() as u16).to_be_bytes());
                v.extend_from_slice(k);
                v.extend_from_slice(val);
            }
            v.extend([0, 0, marker::OBJECT_END]);
            judge(type_id, v)
        };
        let app = |a: &str| Ok(vec![StreamCommand::Connect { app: a.into() }]);
        assert_eq!(connect(&[(b"app", string(b"live"))], 20), app("live"));
        assert_eq!(
            connect(&[(b"app", string(b"live?token=SECRET"))], 20),
            app("live")
        );
        assert_eq!(connect(&[(b"app", string(b"live/"))], 18), app("live"));
        assert_eq!(
            connect(&[(b"app", string(b"live/_definst_"))], 20),
            app("live")
        );
        assert_eq!(
            connect(
                &[
                    (b"app", string(b"live")),
                    (b"tcUrl", string(b"rtmp://x/live")),
                    (b"app", string(b"secret"))
                ],
                20
            ),
            app("secret")
        );
        assert_eq!(connect(&[(b"app", number())], 20), app(""));
        assert!(connect(&[(b"app", string(b"li\0ve"))], 20).is_err());
    }
}
