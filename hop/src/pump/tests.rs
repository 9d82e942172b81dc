//! The pumps over `tokio::io::duplex` (the RTMP peer) and in-memory channels (the tunnel), on
//! tokio's paused clock: no sockets, no waiting on real time.

use std::sync::Mutex;
use std::time::Duration;

use bytes::BytesMut;
use rtmpq_proto::chunk::{ChunkDecoder, ChunkEncoder, ChunkLimits};
use rtmpq_proto::command::{self, Amf0Value, Command};
use rtmpq_proto::message::{Control, Message};
use rtmpq_proto::session::SessionTracker;
use rtmpq_proto::wire::{CloseCode, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::rtmp::{RtmpReader, RtmpWriter};
use crate::tunnel::{FrameReadError, StreamLost, TunnelRecv, TunnelSend};

/// The sending half of an in-memory tunnel stream.
struct MemorySend(Option<mpsc::Sender<Frame>>);

impl TunnelSend for MemorySend {
    async fn send(&mut self, frame: &Frame) -> Result<(), StreamLost> {
        let lost = || StreamLost {
            code: None,
            reason: "connection lost".into(),
        };
        let tx = self.0.as_ref().ok_or_else(lost)?;
        tx.send(frame.clone()).await.map_err(|_| lost())
    }

    fn finish(&mut self) {
        self.0 = None;
    }
}

/// The receiving half: frames, or a loss the test injects.
struct MemoryRecv(mpsc::Receiver<Result<Frame, StreamLost>>);

impl TunnelRecv for MemoryRecv {
    async fn next(&mut self) -> Result<Option<Frame>, FrameReadError> {
        match self.0.recv().await {
            Some(Ok(frame)) => Ok(Some(frame)),
            Some(Err(lost)) => Err(lost.into()),
            None => Ok(None),
        }
    }

    fn stop(&mut self, _code: CloseCode) {
        self.0.close();
    }
}

/// A session under test and the far ends of both its sides.
struct Harness {
    /// The RTMP peer's end of the socket.
    rtmp: DuplexStream,
    rtmp_decoder: ChunkDecoder,
    rtmp_buf: BytesMut,
    encoder: ChunkEncoder,
    /// Frames the far hop sends.
    far_hop: mpsc::Sender<Result<Frame, StreamLost>>,
    /// Frames the session sent toward the far hop.
    from_session: mpsc::Receiver<Frame>,
    stop: CancellationToken,
    /// The session's handover, for tests that move it.
    handover: std::sync::Arc<Handover>,
    session: JoinHandle<SessionEnd>,
}

/// Starts a session for `peer`. `socket` is the duplex pipe's buffer (small values stall the
/// RTMP side), `tunnel` the in-memory tunnel's capacity in frames each way.
fn start(peer: RtmpPeer, limits: SessionLimits, socket: usize, tunnel: usize) -> Harness {
    start_queued(peer, limits, QueuePolicy::default(), socket, tunnel)
}

/// [`start`] with media waiting as `queue` says.
fn start_queued(
    peer: RtmpPeer,
    limits: SessionLimits,
    queue: QueuePolicy,
    socket: usize,
    tunnel: usize,
) -> Harness {
    let (ours, theirs) = tokio::io::duplex(socket);
    let (read, write) = tokio::io::split(ours);
    let (far_hop, recv) = mpsc::channel(tunnel);
    let (send, from_session) = mpsc::channel(tunnel);
    let stop = CancellationToken::new();
    let session_stop = stop.clone();
    let handover = std::sync::Arc::new(Handover::default());
    let session_handover = handover.clone();
    let session = tokio::spawn(async move {
        let mut reader = RtmpReader::new(Box::pin(read), BytesMut::new(), ChunkLimits::default());
        let (to_rtmp, mut writer) = RtmpWriter::new(Box::pin(write)).spawn(8, None);
        let tracker = Mutex::new(SessionTracker::default());
        let mut recv = MemoryRecv(recv);
        let mut send = MemorySend(Some(send));
        let end = run_session(SessionRun {
            peer,
            rtmp: &mut reader,
            to_rtmp: &to_rtmp,
            tunnel_recv: &mut recv,
            tunnel_send: &mut send,
            tracker: &tracker,
            limits: &limits,
            queue,
            resume: None,
            stop: &session_stop,
            handover: &session_handover,
        })
        .await;
        finish_session(peer, &end, &tracker, &to_rtmp, &mut send).await;
        drop(to_rtmp);
        // As the hops do: a peer that reads nothing does not hold the writer forever.
        if tokio::time::timeout(Duration::from_secs(5), &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
        end
    });
    Harness {
        rtmp: theirs,
        rtmp_decoder: ChunkDecoder::new(ChunkLimits::default()),
        rtmp_buf: BytesMut::new(),
        encoder: ChunkEncoder::default(),
        far_hop,
        from_session,
        stop,
        handover,
        session,
    }
}

impl Harness {
    async fn rtmp_sends(&mut self, msg: &Message) {
        let mut out = BytesMut::new();
        self.encoder.encode(msg, &mut out);
        self.rtmp.write_all(&out).await.unwrap();
    }

    /// The next message the RTMP peer receives; `None` once the session closed its socket.
    async fn rtmp_receives(&mut self) -> Option<Message> {
        loop {
            if let Some(msg) = self.rtmp_decoder.decode(&mut self.rtmp_buf).unwrap() {
                return Some(msg);
            }
            if self.rtmp.read_buf(&mut self.rtmp_buf).await.unwrap() == 0 {
                return None;
            }
        }
    }

    /// The next command the RTMP peer receives, skipping the greeting and control messages.
    async fn rtmp_receives_command(&mut self) -> Option<Command> {
        loop {
            let msg = self.rtmp_receives().await?;
            if let Ok(Some(cmd)) = Command::parse(&msg) {
                return Some(cmd);
            }
        }
    }

    async fn far_hop_sends(&self, frame: Frame) {
        self.far_hop.send(Ok(frame)).await.unwrap();
    }

    async fn far_hop_receives(&mut self) -> Option<Frame> {
        self.from_session.recv().await
    }

    async fn ended(self) -> SessionEnd {
        self.session.await.unwrap()
    }
}

fn connect() -> Message {
    let obj = command::connect_object("live", "rtmp://h/live");
    command::request("connect", 1.0, 0, vec![obj])
}

fn play_request() -> Message {
    command::request(
        "play",
        0.0,
        1,
        vec![Amf0Value::Null, Amf0Value::Utf8String("cam".into())],
    )
}

fn publish() -> Message {
    let args = vec![Amf0Value::Null, Amf0Value::Utf8String("cam".into())];
    command::request("publish", 0.0, 1, args)
}

fn video(timestamp: u32) -> Message {
    Message::new(9, 1, timestamp, vec![0x27, 1, 0, 0, 0, 7, 7, 7])
}

#[tokio::test(start_paused = true)]
async fn end_to_end_messages_cross_and_hop_by_hop_ones_do_not() {
    let mut h = start(RtmpPeer::Client, SessionLimits::default(), 64 << 10, 64);
    h.rtmp_sends(&connect()).await;
    h.rtmp_sends(&Control::SetChunkSize(4096).to_message())
        .await;
    h.rtmp_sends(&Control::Acknowledgement(100).to_message())
        .await;
    h.rtmp_sends(&Control::PingRequest(77).to_message()).await;
    h.rtmp_sends(&video(40)).await;
    // Empty messages carry nothing and do not cross.
    h.rtmp_sends(&Message::new(9, 1, 50, Vec::new())).await;
    h.rtmp_sends(&video(80)).await;

    let Some(Frame::Msg(first)) = h.far_hop_receives().await else {
        panic!("connect crosses");
    };
    assert_eq!(Command::parse(&first).unwrap().unwrap().name, "connect");
    for ts in [40, 80] {
        let Some(Frame::Msg(m)) = h.far_hop_receives().await else {
            panic!("video crosses");
        };
        assert_eq!((m.type_id, m.timestamp), (9, ts));
    }
    // The ping was answered here, not forwarded.
    let pong = loop {
        let msg = h.rtmp_receives().await.expect("the session answers");
        if let Some(Control::PingResponse(t)) = Control::parse(&msg) {
            break t;
        }
    };
    assert_eq!(pong, 77);

    // From the far hop to the client, with stream id and timestamp untouched.
    let status = command::on_status(1, "status", "NetStream.Publish.Start", "go");
    h.far_hop_sends(Frame::Msg(status.clone())).await;
    let got = h.rtmp_receives_command().await.unwrap();
    assert_eq!(got, Command::parse(&status).unwrap().unwrap());
    // A hop-by-hop message arriving through the tunnel is a violation.
    h.far_hop_sends(Frame::Msg(Control::Acknowledgement(5).to_message()))
        .await;
    let end = h.ended().await;
    assert_eq!(end.code, CloseCode::ProtocolViolation);
}

#[tokio::test(start_paused = true)]
async fn a_remote_close_reaches_the_client_as_its_rtmp_error() {
    // While connecting: `_error` for the connect, with the gateway's reason.
    let mut h = start(RtmpPeer::Client, SessionLimits::default(), 64 << 10, 64);
    h.rtmp_sends(&connect()).await;
    h.far_hop_receives().await.unwrap();
    h.far_hop_sends(Frame::SessionClose {
        code: CloseCode::OriginUnreachable,
        reason: "origin 10.0.0.5:1935 unreachable".into(),
    })
    .await;
    let err = h.rtmp_receives_command().await.unwrap();
    assert_eq!((err.name.as_str(), err.transaction_id), ("_error", 1.0));
    let status = err.status().unwrap();
    assert_eq!(status.code, "NetConnection.Connect.Failed");
    assert_eq!(status.description, "origin 10.0.0.5:1935 unreachable");
    assert!(h.rtmp_receives().await.is_none(), "then the socket closes");
    // The far hop closed first: no SESSION_CLOSE goes back, just the end of the stream.
    assert_eq!(h.far_hop_receives().await, None);
    let end = h.ended().await;
    assert_eq!(
        (end.code, end.ended_by),
        (CloseCode::OriginUnreachable, EndedBy::RemoteClose)
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_tunnel_is_a_failure_the_publisher_hears_about() {
    let mut h = start(RtmpPeer::Client, SessionLimits::default(), 64 << 10, 64);
    h.rtmp_sends(&connect()).await;
    h.far_hop_receives().await.unwrap();
    let result = command::connect_result(1.0);
    h.far_hop_sends(Frame::Msg(result)).await;
    h.rtmp_receives_command().await.unwrap();
    h.rtmp_sends(&publish()).await;
    h.far_hop_receives().await.unwrap();
    h.far_hop
        .send(Err(StreamLost {
            code: None,
            reason: "connection lost".into(),
        }))
        .await
        .unwrap();
    let failed = h.rtmp_receives_command().await.unwrap();
    assert_eq!(failed.name, "onStatus");
    let status = failed.status().unwrap();
    assert_eq!(status.code, "NetStream.Failed");
    assert!(
        status.description.contains("tunnel to the gateway lost"),
        "{}",
        status.description
    );
    let end = h.ended().await;
    assert_eq!(end.code, CloseCode::TunnelLost);
}

#[tokio::test(start_paused = true)]
async fn the_client_leaving_closes_the_tunnel_normally() {
    let mut h = start(RtmpPeer::Client, SessionLimits::default(), 64 << 10, 64);
    h.rtmp_sends(&connect()).await;
    h.far_hop_receives().await.unwrap();
    h.rtmp.shutdown().await.unwrap();
    let close = h.from_session.recv().await;
    assert_eq!(
        close,
        Some(Frame::SessionClose {
            code: CloseCode::Normal,
            reason: "client closed the connection".into()
        })
    );
    assert_eq!(h.session.await.unwrap().ended_by, EndedBy::Rtmp);
}

#[tokio::test(start_paused = true)]
async fn at_the_gateway_the_origin_closing_is_origin_closed_and_a_shutdown_says_goodbye() {
    let mut h = start(RtmpPeer::Origin, SessionLimits::default(), 64 << 10, 64);
    h.rtmp_sends(&command::connect_result(1.0)).await;
    h.rtmp.shutdown().await.unwrap();
    h.far_hop_receives().await.unwrap();
    let close = h.far_hop_receives().await;
    assert!(
        matches!(
            close,
            Some(Frame::SessionClose {
                code: CloseCode::OriginClosed,
                ..
            })
        ),
        "{close:?}"
    );

    // A gateway shutting down leaves the origin the way a client does.
    let mut h = start(RtmpPeer::Origin, SessionLimits::default(), 64 << 10, 64);
    h.far_hop_sends(Frame::Msg(connect())).await;
    h.far_hop_sends(Frame::Msg(publish())).await;
    assert_eq!(h.rtmp_receives_command().await.unwrap().name, "connect");
    assert_eq!(h.rtmp_receives_command().await.unwrap().name, "publish");
    h.stop.cancel();
    let names = [
        h.rtmp_receives_command().await.unwrap().name,
        h.rtmp_receives_command().await.unwrap().name,
    ];
    assert_eq!(names, ["FCUnpublish", "deleteStream"]);
    let close = h.far_hop_receives().await;
    assert!(
        matches!(
            close,
            Some(Frame::SessionClose {
                code: CloseCode::Shutdown,
                ..
            })
        ),
        "{close:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_that_reads_nothing_does_not_stall_what_it_sends() {
    // A 1 KiB socket and a client that never reads: the way to the client is blocked.
    let mut h = start(RtmpPeer::Client, SessionLimits::default(), 1024, 64);
    let flood = h.far_hop.clone();
    let flooding = tokio::spawn(async move {
        for ts in 0.. {
            if flood.send(Ok(Frame::Msg(video(ts)))).await.is_err() {
                return;
            }
        }
    });
    for ts in 0..200 {
        h.rtmp_sends(&video(ts)).await;
        let Some(Frame::Msg(m)) = h.far_hop_receives().await else {
            panic!("frame {ts} of the client's never crossed");
        };
        assert_eq!(m.timestamp, ts);
    }
    flooding.abort();
}

#[tokio::test(start_paused = true)]
async fn a_tunnel_that_takes_nothing_does_not_stall_the_way_to_the_client() {
    // A tunnel of one frame nobody drains: the way to the far hop is blocked.
    let mut h = start(RtmpPeer::Client, SessionLimits::default(), 64 << 10, 1);
    for ts in 0..20 {
        h.rtmp_sends(&video(ts)).await;
    }
    for ts in 0..200 {
        h.far_hop_sends(Frame::Msg(video(ts))).await;
        let got = loop {
            let msg = h.rtmp_receives().await.unwrap();
            if msg.type_id == 9 {
                break msg;
            }
        };
        assert_eq!(got.timestamp, ts);
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_sets_up_ends_at_the_deadline() {
    let limits = SessionLimits {
        setup_deadline: Some(Duration::from_secs(15)),
        silence_period: None,
        publisher_silence: None,
    };
    let mut h = start(RtmpPeer::Client, limits, 64 << 10, 64);
    h.rtmp_sends(&connect()).await;
    let started = tokio::time::Instant::now();
    let close = loop {
        match h.far_hop_receives().await.unwrap() {
            Frame::SessionClose { code, reason } => break (code, reason),
            _ => continue,
        }
    };
    assert_eq!(close.0, CloseCode::Timeout);
    assert!(
        close.1.contains("no publish or play within 15s"),
        "{}",
        close.1
    );
    assert_eq!(started.elapsed().as_secs(), 15);
    // The client hears why.
    let err = h.rtmp_receives_command().await.unwrap();
    assert_eq!(err.name, "_error");
}

#[tokio::test(start_paused = true)]
async fn a_publisher_whose_edge_goes_quiet_ends_at_the_gateway() {
    let limits = SessionLimits {
        setup_deadline: None,
        silence_period: None,
        publisher_silence: Some(Duration::from_secs(30)),
    };
    // At the gateway: the far hop (the edge) publishes, then sends nothing.
    let h = start(RtmpPeer::Origin, limits.clone(), 64 << 10, 64);
    h.far_hop_sends(Frame::Msg(connect())).await;
    h.far_hop_sends(Frame::Msg(publish())).await;
    let started = tokio::time::Instant::now();
    let end = h.ended().await;
    assert_eq!(end.code, CloseCode::Timeout, "{}", end.reason);
    assert!(
        end.reason.contains("sent nothing for 30s"),
        "{}",
        end.reason
    );
    assert_eq!(started.elapsed().as_secs(), 30);
    // A player's edge sends nothing after it asked to play, and that is fine.
    let h = start(RtmpPeer::Origin, limits, 64 << 10, 64);
    h.far_hop_sends(Frame::Msg(connect())).await;
    let play = play_request();
    h.far_hop_sends(Frame::Msg(play)).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(!h.session.is_finished());
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_pinged_then_closed_and_an_answering_one_stays() {
    let limits = SessionLimits {
        setup_deadline: None,
        silence_period: Some(Duration::from_secs(10)),
        publisher_silence: None,
    };
    let mut h = start(RtmpPeer::Client, limits.clone(), 64 << 10, 64);
    let started = tokio::time::Instant::now();
    let ping = loop {
        let msg = h.rtmp_receives().await.unwrap();
        if let Some(Control::PingRequest(t)) = Control::parse(&msg) {
            break t;
        }
    };
    assert_eq!(started.elapsed().as_secs(), 10);
    assert!((9_000..=11_000).contains(&ping), "ping timestamp {ping}");
    let end = h.ended().await;
    assert_eq!(end.code, CloseCode::Timeout);
    assert_eq!(started.elapsed().as_secs(), 20);

    // One that answers each ping is still there after a minute.
    let mut h = start(RtmpPeer::Client, limits, 64 << 10, 64);
    let mut pings = 0;
    while pings < 6 {
        let msg = h.rtmp_receives().await.unwrap();
        if let Some(Control::PingRequest(t)) = Control::parse(&msg) {
            pings += 1;
            h.rtmp_sends(&Control::PingResponse(t).to_message()).await;
        }
    }
    assert!(started.elapsed().as_secs() >= 60 + 20);
    assert!(!h.session.is_finished());
}

#[tokio::test(start_paused = true)]
async fn every_close_code_from_the_far_hop_reaches_a_publisher_as_the_right_rtmp_error() {
    let codes = [
        CloseCode::ProtocolViolation,
        CloseCode::Unauthorized,
        CloseCode::OriginUnreachable,
        CloseCode::OriginClosed,
        CloseCode::OriginProtocolError,
        CloseCode::Timeout,
        CloseCode::Overloaded,
        CloseCode::Shutdown,
        CloseCode::Internal,
        CloseCode::TunnelLost,
        CloseCode::Unknown(99),
    ];
    for code in codes {
        let mut h = start(RtmpPeer::Client, SessionLimits::default(), 64 << 10, 64);
        h.rtmp_sends(&connect()).await;
        h.far_hop_receives().await.unwrap();
        h.far_hop_sends(Frame::Msg(command::connect_result(1.0)))
            .await;
        h.rtmp_receives_command().await.unwrap();
        h.rtmp_sends(&publish()).await;
        h.far_hop_receives().await.unwrap();
        let reason = format!("because {code}");
        h.far_hop_sends(Frame::SessionClose {
            code,
            reason: reason.clone(),
        })
        .await;
        let failed = h.rtmp_receives_command().await.unwrap();
        let status = failed.status().unwrap();
        assert_eq!(
            (
                failed.name.as_str(),
                status.code.as_str(),
                status.description.as_str()
            ),
            (
                "onStatus",
                // A refused right says so, in the status pushers know.
                if code == CloseCode::Unauthorized {
                    "NetStream.Publish.Unauthorized"
                } else {
                    "NetStream.Failed"
                },
                reason.as_str()
            ),
            "{code}"
        );
        assert_eq!(h.ended().await.code, code);
    }
    // A normal close from the far hop ends the session without an error.
    let mut h = start(RtmpPeer::Client, SessionLimits::default(), 64 << 10, 64);
    h.rtmp_sends(&connect()).await;
    h.far_hop_receives().await.unwrap();
    h.far_hop_sends(Frame::SessionClose {
        code: CloseCode::Normal,
        reason: "done".into(),
    })
    .await;
    assert!(
        h.rtmp_receives_command().await.is_none(),
        "no RTMP error for a normal end"
    );
}

#[tokio::test(start_paused = true)]
async fn a_player_that_neither_reads_nor_sends_is_closed_even_with_its_queue_full() {
    let limits = SessionLimits {
        setup_deadline: None,
        silence_period: Some(Duration::from_secs(10)),
        publisher_silence: None,
    };
    // A 1 KiB socket the player never reads, and media flooding toward it: its queue fills,
    // so the ping cannot even be queued.
    let h = start(RtmpPeer::Client, limits, 1024, 64);
    let flood = h.far_hop.clone();
    let flooding = tokio::spawn(async move {
        for ts in 0.. {
            if flood.send(Ok(Frame::Msg(video(ts)))).await.is_err() {
                return;
            }
        }
    });
    let started = tokio::time::Instant::now();
    let end = h.ended().await;
    assert_eq!(end.code, CloseCode::Timeout, "{end:?}");
    assert!(
        end.reason.contains("read nothing and sent nothing"),
        "{end:?}"
    );
    // Ended at 20 s; telling it why and flushing give up within 2 + 5 s more.
    assert!(
        started.elapsed() <= Duration::from_secs(27),
        "{:?}",
        started.elapsed()
    );
    flooding.abort();
}

fn key_frame(timestamp: u32) -> Message {
    Message::new(9, 1, timestamp, vec![0x17, 1, 0, 0, 0, 8, 8, 8])
}

fn avc_header() -> Message {
    Message::new(9, 1, 0, vec![0x17, 0, 0, 0, 0, 1, 2])
}

fn aac_frame(timestamp: u32) -> Message {
    Message::new(8, 1, timestamp, vec![0xaf, 1, 5, 5])
}

/// A 30 fps stream with a key frame every `gop` frames and an audio frame beside each video
/// frame, from frame `from` to `to`, one frame period of the paused clock apart.
async fn push_stream(h: &mut Harness, from: u32, to: u32, gop: u32) {
    for i in from..to {
        let ts = i * 33;
        let frame = if i % gop == 0 {
            key_frame(ts)
        } else {
            video(ts)
        };
        h.rtmp_sends(&frame).await;
        h.rtmp_sends(&aac_frame(ts)).await;
        tokio::time::advance(Duration::from_millis(33)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_tunnel_slower_than_the_pusher_costs_stale_gop_tails_not_delay() {
    let queue = QueuePolicy {
        budget: Some(Duration::from_millis(500)),
        ..QueuePolicy::default()
    };
    // A 1 KiB socket and a tunnel of one frame that nobody drains for three seconds: a pump
    // that stopped reading the pusher would block its writes and fail the timeout.
    let mut h = start_queued(RtmpPeer::Client, SessionLimits::default(), queue, 1024, 1);
    h.rtmp_sends(&connect()).await;
    h.rtmp_sends(&publish()).await;
    h.rtmp_sends(&avc_header()).await;
    let pushing = push_stream(&mut h, 0, 90, 10);
    tokio::time::timeout(Duration::from_secs(10), pushing)
        .await
        .expect("the pusher is always read");
    // 90 frames pushed, the clock at 2970 ms. Now the tunnel takes what the queue hands out.
    let mut got = Vec::new();
    while got.len() < 3 || !got.iter().any(|m: &Message| m.type_id == 9) {
        match h.far_hop_receives().await {
            Some(Frame::Msg(m)) => got.push(m),
            other => panic!("{other:?}"),
        }
    }
    tokio::time::timeout(Duration::from_millis(100), async {
        while let Some(Frame::Msg(m)) = h.far_hop_receives().await {
            got.push(m);
        }
    })
    .await
    .unwrap_err();
    let names: Vec<String> = got
        .iter()
        .filter_map(|m| Command::parse(m).ok().flatten().map(|c| c.name))
        .collect();
    assert_eq!(names, ["connect", "publish"], "commands are never dropped");
    assert!(
        got.contains(&avc_header()),
        "the sequence header is never dropped"
    );
    let video: Vec<&Message> = got
        .iter()
        .filter(|m| m.type_id == 9 && **m != avc_header())
        .collect();
    // The first video frame after the backlog is a key frame within the budget of the newest
    // (2640 ms: the groups before it went stale), and the rest of its group follows whole.
    assert_eq!(video[0].payload[0], 0x17, "resumes at a key frame");
    assert!(video[0].timestamp + 500 >= 2937, "{}", video[0].timestamp);
    for pair in video.windows(2) {
        assert_eq!(
            pair[1].timestamp,
            pair[0].timestamp + 33,
            "no frame after a gap"
        );
    }
    // Audio is dropped by age alone, and what is left is within the budget of the newest
    // frame (2937 ms; what arrived together is judged by media time).
    let audio: Vec<u32> = got
        .iter()
        .filter(|m| m.type_id == 8)
        .map(|m| m.timestamp)
        .collect();
    assert!(audio.iter().all(|&t| t + 500 >= 2937), "{audio:?}");
    assert!(!audio.is_empty());
}

#[tokio::test(start_paused = true)]
async fn in_back_pressure_mode_a_slow_tunnel_reaches_the_pusher() {
    let queue = QueuePolicy {
        budget: Some(Duration::from_millis(1000)),
        pause_reading_above: Some(Duration::from_millis(200)),
        ..QueuePolicy::default()
    };
    let mut h = start_queued(RtmpPeer::Client, SessionLimits::default(), queue, 1024, 1);
    h.rtmp_sends(&connect()).await;
    h.rtmp_sends(&publish()).await;
    // With nothing drained, the pump stops reading once media has waited 200 ms and the
    // pusher's writes back up within a few seconds of frames.
    let pushing = push_stream(&mut h, 0, 300, 30);
    let blocked = tokio::time::timeout(Duration::from_secs(20), pushing).await;
    assert!(blocked.is_err(), "the pusher felt the slow tunnel");
    // Draining the tunnel frees the pusher again.
    let drained = async {
        loop {
            let _ = h.far_hop_receives().await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), drained).await;
    tokio::time::timeout(Duration::from_secs(5), h.rtmp_sends(&video(99_999)))
        .await
        .expect("the pusher is read again");
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_tiny_undroppable_messages_at_a_stalled_tunnel_meets_back_pressure() {
    // Data messages are never dropped; with the tunnel taking nothing the queue may not grow
    // past its message bound, so the pusher's writes stop instead. (Payloads of 24 bytes keep
    // the flood under the chunk decoder's one message per 16 bytes, and its bytes under the
    // bound on undroppable bytes.)
    let mut h = start(RtmpPeer::Client, SessionLimits::default(), 1024, 1);
    let flood = async {
        for i in 0..(MAX_WAITING_MESSAGES as u32 + 1000) {
            h.rtmp_sends(&Message::new(18, 1, i, vec![5; 24])).await;
        }
    };
    let blocked = tokio::time::timeout(Duration::from_secs(60), flood).await;
    assert!(
        blocked.is_err(),
        "the queue took more than its message bound"
    );
}

/// A 30 fps GOP from a key frame, arrived on time from `t0`, until `until_ms`.
fn gop_until(q: &mut MediaQueue, t0: std::time::Instant, until_ms: u32) {
    for ts in (0..until_ms).step_by(33) {
        let first = if ts == 0 { 0x17 } else { 0x27 };
        let msg = Message::new(9, 1, ts, vec![first, 1, 0, 0, 0, 7]);
        q.push(msg, t0 + Duration::from_millis(ts.into()));
    }
}

#[test]
fn a_dark_path_holds_the_gop_in_progress_past_the_budget_within_the_receiving_hops_limit() {
    let budget = Duration::from_secs(1);
    let limits = QueueLimits {
        budget,
        max_bytes: 1 << 20,
    };
    let path = Arc::new(crate::transport::PathWatch::default());
    let policy = QueuePolicy {
        budget: Some(budget),
        path: Some(path.clone()),
        ..QueuePolicy::default()
    };
    let t0 = std::time::Instant::now();
    let first_out = |dark: bool, at_ms: u64| {
        let mut q = MediaQueue::new(limits);
        if dark {
            path.mark_dark();
        }
        policy.apply(&mut q);
        gop_until(&mut q, t0, 1000);
        q.pop(t0 + Duration::from_millis(at_ms))
            .map(|m| m.timestamp)
    };
    // A lit path drops the GOP once its key frame is a budget old.
    assert_eq!(first_out(false, 1100), None);
    // A dark one keeps it, from its key frame, up to the budget and half the receiving
    // hop's margin (1.5 s for 1 s: the other half is QUIC's restart), and no longer.
    assert_eq!(
        late_margin(budget),
        budget,
        "the receiving hop writes up to 2 s late"
    );
    assert_eq!(first_out(true, 1400), Some(0));
    assert_eq!(first_out(true, 1600), None);
}

/// The next MSG frame the far hop receives, skipping other frames.
async fn far_hop_receives_msg(h: &mut Harness) -> Message {
    loop {
        match h.far_hop_receives().await {
            Some(Frame::Msg(msg)) => return msg,
            Some(_) => continue,
            None => panic!("the session ended"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_publisher_asked_to_move_stops_before_its_next_key_frame_and_drains_what_came_before() {
    let mut h = start(RtmpPeer::Client, SessionLimits::default(), 64 << 10, 64);
    h.rtmp_sends(&connect()).await;
    h.rtmp_sends(&publish()).await;
    h.rtmp_sends(&key_frame(0)).await;
    h.rtmp_sends(&video(40)).await;
    while far_hop_receives_msg(&mut h).await.timestamp != 40 {}
    h.handover.ask();
    // Inter frames still go; the next key frame is held back, and what follows it waits in
    // the pusher's socket.
    h.rtmp_sends(&video(80)).await;
    h.rtmp_sends(&key_frame(120)).await;
    h.rtmp_sends(&video(160)).await;
    assert_eq!(far_hop_receives_msg(&mut h).await.timestamp, 80);
    h.handover.drained().await;
    assert!(
        h.from_session.try_recv().is_err(),
        "nothing after the cut went to the old tunnel"
    );
    // The far hop finishes the old tunnel after its own drain: planned, not a loss.
    let (replaced, _) = mpsc::channel(1);
    drop(std::mem::replace(&mut h.far_hop, replaced));
    h.handover.far_finished().await;
    assert!(
        !h.session.is_finished(),
        "the run waits for the hop to move it"
    );
    // The next run sends the key frame first.
    h.handover.new_run();
    assert_eq!(h.handover.take_held(), Some(key_frame(120)));
}

#[tokio::test(start_paused = true)]
async fn a_player_asked_to_move_stops_reading_its_client_at_once() {
    let mut h = start(RtmpPeer::Client, SessionLimits::default(), 64 << 10, 64);
    h.rtmp_sends(&connect()).await;
    h.rtmp_sends(&play_request()).await;
    while far_hop_receives_msg(&mut h).await.type_id != 20 {}
    while h.from_session.try_recv().is_ok() {}
    h.handover.ask();
    h.handover.drained().await;
    // The client's next message waits for the new tunnel (none was held: it sends no video).
    h.rtmp_sends(&connect()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(h.from_session.try_recv().is_err());
    assert_eq!(h.handover.take_held(), None);
}
