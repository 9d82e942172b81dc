//! A minimal RTMP client (connect, createStream, publish or play) for the built-in publisher
//! and player.

use std::time::Duration;

use rtmpq_hop::rtmp::{Inbound, Outbound, RtmpConnection, RtmpIoError, RtmpReader};
use rtmpq_proto::command::{self, Amf0Value, Command};
use rtmpq_proto::message::Message;
use tokio::net::TcpStream;

/// Why an RTMP client session failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or reading failed.
    #[error("{0}")]
    Rtmp(#[from] RtmpIoError),
    /// The server closed the connection.
    #[error("server closed the connection during {0}")]
    Closed(&'static str),
    /// The server answered with an error.
    #[error("server refused {step}: {code} {description}")]
    Refused {
        /// What we asked for.
        step: &'static str,
        /// The status code.
        code: String,
        /// The server's words.
        description: String,
    },
    /// The server did not answer in time.
    #[error("no answer to {0} in time")]
    Timeout(&'static str),
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Rtmp(RtmpIoError::Io(e))
    }
}

/// A connected RTMP client with one stream created.
#[derive(Debug)]
pub struct RtmpClient {
    reader: RtmpReader,
    to_server: Outbound,
    writer: tokio::task::JoinHandle<std::io::Result<()>>,
    stream_id: u32,
    next_transaction: f64,
}

const ANSWER_LIMIT: Duration = Duration::from_secs(10);

impl RtmpClient {
    /// Connects to `addr`, runs the handshake, `connect` to `app` and `createStream`.
    pub async fn connect(addr: &str, app: &str) -> Result<RtmpClient, ClientError> {
        let tcp = TcpStream::connect(addr).await?;
        Self::over(tcp, addr, app).await
    }

    /// Like [`connect`](Self::connect) over an already connected `tcp` to `addr` (for sockets
    /// made in another network namespace).
    pub async fn over(tcp: TcpStream, addr: &str, app: &str) -> Result<RtmpClient, ClientError> {
        let tc_url = format!("rtmp://{addr}/{app}");
        let obj = command::connect_object(app, &tc_url);
        Ok(Self::set_up(tcp, obj).await?.0)
    }

    /// Like [`over`](Self::over) as an Enhanced RTMP v2 client: the `connect` declares
    /// `fourCcList`, `videoFourCcInfoMap`, `audioFourCcInfoMap` and `capsEx` (multitrack and
    /// ModEx). Returns the server's answer to `connect` too (its capabilities).
    pub async fn over_enhanced(
        tcp: TcpStream,
        addr: &str,
        app: &str,
    ) -> Result<(RtmpClient, Command), ClientError> {
        let tc_url = format!("rtmp://{addr}/{app}");
        let Amf0Value::Object(mut props) = command::connect_object(app, &tc_url) else {
            unreachable!("connect_object makes an object")
        };
        let fourccs = ["hvc1", "avc1", "av01", "mp4a", "Opus"];
        props.insert(
            "fourCcList".into(),
            Amf0Value::StrictArray(
                fourccs
                    .iter()
                    .map(|f| Amf0Value::Utf8String((*f).into()))
                    .collect(),
            ),
        );
        let info_map = |codecs: &[&str]| {
            Amf0Value::Object(
                codecs
                    .iter()
                    .map(|c| ((*c).to_owned(), Amf0Value::Number(4.0)))
                    .collect(),
            )
        };
        props.insert("videoFourCcInfoMap".into(), info_map(&fourccs[..3]));
        props.insert("audioFourCcInfoMap".into(), info_map(&fourccs[3..]));
        // Multitrack | ModEx | TimestampNanoOffset.
        props.insert("capsEx".into(), Amf0Value::Number(14.0));
        Self::set_up(tcp, Amf0Value::Object(props)).await
    }

    async fn set_up(tcp: TcpStream, obj: Amf0Value) -> Result<(RtmpClient, Command), ClientError> {
        let RtmpConnection { reader, writer } = RtmpConnection::connect(tcp, ANSWER_LIMIT).await?;
        let (to_server, writer) = writer.spawn(1024, None);
        let mut client = RtmpClient {
            reader,
            to_server,
            writer,
            stream_id: 0,
            next_transaction: 1.0,
        };
        let connected = client.call("connect", 0, vec![obj]).await?;
        let created = client
            .call("createStream", 0, vec![Amf0Value::Null])
            .await?;
        client.stream_id = match created.values.get(1) {
            Some(Amf0Value::Number(id)) => *id as u32,
            _ => 1,
        };
        Ok((client, connected))
    }

    /// The message stream id `createStream` gave us.
    pub fn stream_id(&self) -> u32 {
        self.stream_id
    }

    async fn call(
        &mut self,
        name: &'static str,
        stream_id: u32,
        args: Vec<Amf0Value>,
    ) -> Result<Command, ClientError> {
        let txn = self.next_transaction;
        self.next_transaction += 1.0;
        self.send(command::request(name, txn, stream_id, args))
            .await?;
        self.await_command(name, |c| {
            c.transaction_id == txn && (c.name == "_result" || c.name == "_error")
        })
        .await
    }

    async fn await_command(
        &mut self,
        step: &'static str,
        wanted: impl Fn(&Command) -> bool,
    ) -> Result<Command, ClientError> {
        let wait = async {
            loop {
                let Some(msg) = self.next_message().await? else {
                    return Err(ClientError::Closed(step));
                };
                let Some(cmd) = Command::parse(&msg).map_err(RtmpIoError::from)? else {
                    continue;
                };
                let status = cmd.status();
                if let Some(status) = status.filter(|s| s.level == "error") {
                    return Err(ClientError::Refused {
                        step,
                        code: status.code,
                        description: status.description,
                    });
                }
                if wanted(&cmd) {
                    return Ok(cmd);
                }
            }
        };
        tokio::time::timeout(ANSWER_LIMIT, wait)
            .await
            .map_err(|_| ClientError::Timeout(step))?
    }

    /// Publishes `name` on our stream and waits for `NetStream.Publish.Start`.
    pub async fn publish(&mut self, name: &str) -> Result<(), ClientError> {
        let args = vec![
            Amf0Value::Null,
            Amf0Value::Utf8String(name.into()),
            Amf0Value::Utf8String("live".into()),
        ];
        self.send(command::request("publish", 0.0, self.stream_id, args))
            .await?;
        self.await_status("publish", "NetStream.Publish.Start")
            .await
    }

    /// Plays `name` on our stream and waits for `NetStream.Play.Start`.
    pub async fn play(&mut self, name: &str) -> Result<(), ClientError> {
        let args = vec![Amf0Value::Null, Amf0Value::Utf8String(name.into())];
        self.send(command::request("play", 0.0, self.stream_id, args))
            .await?;
        self.await_status("play", "NetStream.Play.Start").await
    }

    async fn await_status(&mut self, step: &'static str, code: &str) -> Result<(), ClientError> {
        self.await_command(step, |c| {
            c.name == "onStatus" && c.status().is_some_and(|s| s.code == code)
        })
        .await
        .map(|_| ())
    }

    /// Queues a message for the server.
    pub async fn send(&self, msg: Message) -> Result<(), ClientError> {
        self.to_server
            .send(msg)
            .await
            .map_err(|_| ClientError::Closed("send"))
    }

    /// The next end-to-end message from the server; `None` when it closes.
    pub async fn next_message(&mut self) -> Result<Option<Message>, ClientError> {
        loop {
            match self.reader.next().await? {
                Some(Inbound::Message(msg)) => return Ok(Some(msg)),
                Some(Inbound::Reply(reply)) => self.send(reply).await?,
                Some(Inbound::Silent(_)) => {}
                None => return Ok(None),
            }
        }
    }

    /// Flushes what is queued and closes the connection.
    pub async fn close(self) {
        drop(self.to_server);
        let _ = self.writer.await;
    }
}
