//! A small RTMP origin inside the gateway, for the demo and fast tests: one publisher per stream
//! name, fanned out to any number of players (like nginx-rtmp's `live on`). Players join at
//! the next key frame after the cached metadata and sequence headers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rtmpq_hop::rtmp::{Inbound, Outbound, RtmpConnection, RtmpIoError};
use rtmpq_proto::command::{self, public_stream_name, Amf0Value, Command};
use rtmpq_proto::gop::GopGate;
use rtmpq_proto::message::{message_type, Control, MediaKind, Message};
use rtmpq_proto::stream_headers::StreamHeaders;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

/// Messages a stream keeps for players that are slow to read; a player further behind skips
/// to the next key frame.
const FANOUT_CAPACITY: usize = 2048;

#[derive(Debug, Clone)]
enum HubEvent {
    Media(Message),
    Unpublished,
}

#[derive(Debug, Default)]
struct CachedHeaders {
    metadata: Option<Message>,
    /// Every track's sequence start, multichannel config and video metadata, in order.
    media: StreamHeaders,
}

#[derive(Debug)]
struct StreamHub {
    events: broadcast::Sender<HubEvent>,
    headers: Mutex<CachedHeaders>,
    publishing: Mutex<bool>,
}

type Hubs = Arc<Mutex<HashMap<String, Arc<StreamHub>>>>;

fn hub(hubs: &Hubs, key: &str) -> Arc<StreamHub> {
    hubs.lock()
        .expect("hubs lock")
        .entry(key.to_owned())
        .or_insert_with(|| {
            Arc::new(StreamHub {
                events: broadcast::channel(FANOUT_CAPACITY).0,
                headers: Mutex::default(),
                publishing: Mutex::new(false),
            })
        })
        .clone()
}

/// Forgets `key`'s hub once nobody publishes, plays or is about to play it, so the map holds
/// only live streams.
fn release(hubs: &Hubs, key: &str) {
    let mut hubs = hubs.lock().expect("hubs lock");
    let idle = hubs.get(key).is_some_and(|h| {
        Arc::strong_count(h) == 1
            && h.events.receiver_count() == 0
            && !*h.publishing.lock().expect("lock")
    });
    if idle {
        hubs.remove(key);
    }
}

/// An RTMP origin listening on a TCP socket.
#[derive(Debug)]
pub struct EmbeddedOrigin {
    listener: TcpListener,
    hubs: Hubs,
}

impl EmbeddedOrigin {
    /// Binds the origin's TCP listener.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<EmbeddedOrigin> {
        Ok(EmbeddedOrigin {
            listener: TcpListener::bind(addr).await?,
            hubs: Hubs::default(),
        })
    }

    /// The address RTMP clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    /// Serves RTMP clients until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        loop {
            let Some((tcp, remote)) = rtmpq_hop::scaffold::accept(&self.listener, &shutdown).await
            else {
                break;
            };
            let hubs = self.hubs.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(
                async move {
                    tokio::select! {
                        result = serve_client(tcp, hubs) => match result {
                            Ok(()) => debug!("origin client left"),
                            Err(e) => info!(reason = %e, "origin client ended"),
                        },
                        _ = shutdown.cancelled() => {}
                    }
                }
                .instrument(tracing::debug_span!("origin_client", %remote)),
            );
        }
        tasks.close();
        tasks.wait().await;
    }
}

/// The role a connection took after publish or play.
enum Role {
    Idle,
    Publisher(Arc<StreamHub>, u32),
    Player(tokio::task::JoinHandle<()>),
}

async fn serve_client(tcp: TcpStream, hubs: Hubs) -> Result<(), RtmpIoError> {
    let RtmpConnection { mut reader, writer } =
        RtmpConnection::accept(tcp, Duration::from_secs(10)).await?;
    let (tx, writer_task) = writer.spawn(FANOUT_CAPACITY, None);
    let mut client = OriginClient {
        hubs,
        tx,
        app: String::new(),
        role: Role::Idle,
        stream_key: None,
        next_stream_id: 1,
    };
    let result = loop {
        let msg = match reader.next().await {
            Ok(Some(Inbound::Reply(reply))) => {
                let _ = client.tx.send(reply).await;
                continue;
            }
            Ok(Some(Inbound::Message(msg))) => msg,
            // The embedded origin serves the gateway on loopback: it needs no pings.
            Ok(Some(Inbound::Silent(_))) => continue,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        if let Role::Publisher(hub, stream_id) = &client.role {
            if msg.stream_id == *stream_id && is_stream_data(&msg) {
                publish_message(hub, msg);
                continue;
            }
        }
        match Command::parse(&msg) {
            Ok(Some(cmd)) => client.command(&cmd, msg.stream_id).await,
            Ok(None) => {}
            Err(e) => break Err(e.into()),
        }
    };
    let tx = client.leave().await;
    drop(tx);
    let _ = writer_task.await;
    result
}

/// One client of the embedded origin: what it connected to and the role it took.
struct OriginClient {
    hubs: Hubs,
    /// The queue toward it.
    tx: Outbound,
    app: String,
    role: Role,
    /// The stream this connection published or played, released when it leaves.
    stream_key: Option<String>,
    next_stream_id: u32,
}

impl OriginClient {
    /// Answers a command the client sent on `stream_id`.
    async fn command(&mut self, cmd: &Command, stream_id: u32) {
        let replies = match cmd.name.as_str() {
            "connect" => {
                self.app = cmd.object_string("app").unwrap_or_default().to_owned();
                vec![command::connect_result(cmd.transaction_id)]
            }
            "createStream" => {
                let id = Amf0Value::Number(f64::from(self.next_stream_id));
                self.next_stream_id = self.next_stream_id.wrapping_add(1).max(1);
                vec![command::result(cmd.transaction_id, id)]
            }
            "publish" => self.publish(cmd, stream_id),
            "play" => self.play(cmd, stream_id).await,
            "deleteStream" | "FCUnpublish" | "closeStream" => {
                if let Role::Publisher(hub, _) = &self.role {
                    unpublish(hub);
                    self.role = Role::Idle;
                }
                Vec::new()
            }
            _ => Vec::new(),
        };
        for m in replies {
            let _ = self.tx.send(m).await;
        }
    }

    /// The `app/stream` a publish or play names.
    fn key(&self, cmd: &Command) -> String {
        let stream = public_stream_name(cmd.string_arg(0).unwrap_or(""));
        format!("{}/{stream}", self.app)
    }

    /// Takes the stream if nobody publishes it; the answers to send.
    fn publish(&mut self, cmd: &Command, stream_id: u32) -> Vec<Message> {
        let key = self.key(cmd);
        let hub = hub(&self.hubs, &key);
        let mut publishing = hub.publishing.lock().expect("lock");
        if *publishing {
            return vec![command::on_status(
                stream_id,
                "error",
                "NetStream.Publish.BadName",
                "already publishing",
            )];
        }
        *publishing = true;
        drop(publishing);
        info!(stream = %key, "publish started");
        self.role = Role::Publisher(hub, stream_id);
        self.stream_key = Some(key);
        vec![
            Control::StreamBegin(stream_id).to_message(),
            command::on_status(
                stream_id,
                "status",
                "NetStream.Publish.Start",
                "Start publishing",
            ),
        ]
    }

    /// Answers a play and starts feeding the stream: its headers first, then what comes.
    async fn play(&mut self, cmd: &Command, stream_id: u32) -> Vec<Message> {
        let key = self.key(cmd);
        info!(stream = %key, "play started");
        let mut answers = vec![Control::StreamBegin(stream_id).to_message()];
        for (code, text) in [
            ("NetStream.Play.Reset", "Playing and resetting"),
            ("NetStream.Play.Start", "Started playing"),
        ] {
            answers.push(command::on_status(stream_id, "status", code, text));
        }
        let hub = hub(&self.hubs, &key);
        let events = hub.events.subscribe();
        let headers = {
            let h = hub.headers.lock().expect("lock");
            let media = h.media.messages().cloned();
            h.metadata.iter().cloned().chain(media).collect::<Vec<_>>()
        };
        // The answers go before the first media.
        for m in answers {
            let _ = self.tx.send(m).await;
        }
        let feed = feed_player(events, headers, self.tx.clone(), stream_id);
        self.role = Role::Player(tokio::spawn(feed.in_current_span()));
        self.stream_key = Some(key);
        Vec::new()
    }

    /// The client left: what it published ends, what it played stops; the queue toward it
    /// is handed back for flushing.
    async fn leave(self) -> Outbound {
        match self.role {
            Role::Publisher(hub, _) => unpublish(&hub),
            Role::Player(task) => {
                task.abort();
                // Awaiting the aborted task drops its subscription before the hub is released.
                let _ = task.await;
            }
            Role::Idle => {}
        }
        if let Some(key) = self.stream_key {
            release(&self.hubs, &key);
        }
        self.tx
    }
}

fn is_stream_data(msg: &Message) -> bool {
    matches!(
        msg.type_id,
        message_type::AUDIO
            | message_type::VIDEO
            | message_type::DATA_AMF0
            | message_type::AGGREGATE
    )
}

/// `@setDataFrame` is the publisher's wrapper around metadata; players get the inner value.
fn strip_set_data_frame(msg: Message) -> Message {
    const PREFIX: &[u8] = b"\x02\x00\x0d@setDataFrame";
    if msg.type_id == message_type::DATA_AMF0 && msg.payload.starts_with(PREFIX) {
        let payload: Bytes = msg.payload.slice(PREFIX.len()..);
        return Message { payload, ..msg };
    }
    msg
}

fn publish_message(hub: &StreamHub, msg: Message) {
    let msg = strip_set_data_frame(msg);
    if msg.type_id == message_type::DATA_AMF0 {
        hub.headers.lock().expect("lock").metadata = Some(msg.clone());
    } else if matches!(msg.media_kind(), MediaKind::Header | MediaKind::Other) {
        // Headers are kept; a sequence end forgets its tracks' headers.
        hub.headers.lock().expect("lock").media.observe(&msg);
    }
    // No receivers is fine: nobody is watching yet.
    let _ = hub.events.send(HubEvent::Media(msg));
}

fn unpublish(hub: &StreamHub) {
    *hub.publishing.lock().expect("lock") = false;
    *hub.headers.lock().expect("lock") = CachedHeaders::default();
    let _ = hub.events.send(HubEvent::Unpublished);
    info!("publish ended");
}

async fn feed_player(
    mut events: broadcast::Receiver<HubEvent>,
    headers: Vec<Message>,
    tx: Outbound,
    stream_id: u32,
) {
    // Each video track from its own next key frame.
    let mut gate = GopGate::waiting();
    let on_stream = |m: Message| Message { stream_id, ..m };
    for h in headers {
        if tx.send(on_stream(h)).await.is_err() {
            return;
        }
    }
    loop {
        let msg = match events.recv().await {
            Ok(HubEvent::Media(msg)) => msg,
            Ok(HubEvent::Unpublished) => {
                let mut eof = vec![0u8, 1];
                eof.extend_from_slice(&stream_id.to_be_bytes());
                let eof = Message::new(message_type::USER_CONTROL, 0, 0, eof);
                let _ = tx.send(eof).await;
                let _ = tx
                    .send(command::on_status(
                        stream_id,
                        "status",
                        "NetStream.Play.UnpublishNotify",
                        "stream ended",
                    ))
                    .await;
                gate = GopGate::waiting();
                continue;
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                warn!(
                    skipped = n,
                    "player too slow; skipping to the next key frame"
                );
                gate.close();
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if msg.media_packet().is_some_and(|p| !gate.admit(&p)) {
            continue;
        }
        if tx.send(on_stream(msg)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hubs_are_released_only_when_nobody_uses_them() {
        let hubs = Hubs::default();
        let h = hub(&hubs, "live/a");
        release(&hubs, "live/a");
        assert!(
            hubs.lock().unwrap().contains_key("live/a"),
            "a player is about to subscribe"
        );
        let player = h.events.subscribe();
        drop(h);
        release(&hubs, "live/a");
        assert!(
            hubs.lock().unwrap().contains_key("live/a"),
            "a player is subscribed"
        );
        drop(player);
        *hub(&hubs, "live/a").publishing.lock().unwrap() = true;
        release(&hubs, "live/a");
        assert!(
            hubs.lock().unwrap().contains_key("live/a"),
            "someone publishes"
        );
        unpublish(&hub(&hubs, "live/a"));
        release(&hubs, "live/a");
        assert!(hubs.lock().unwrap().is_empty());
    }
}
