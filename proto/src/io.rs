//! The thin async layer: RTMP handshakes over TCP, an RTMP message reader and writer built on
//! the chunk codec, and tunnel frame reading and writing on QUIC streams.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::budget::{BudgetExceeded, SessionBudget};
use crate::chunk::{ChunkDecoder, ChunkEncoder, ChunkError, ChunkLimits};
use crate::message::{HopControl, Message, MessageClass};
use crate::wire::{Frame, FrameDecoder, WireError};

/// What went wrong on an RTMP connection.
#[derive(Debug, thiserror::Error)]
pub enum RtmpIoError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The RTMP handshake failed.
    #[error("rtmp handshake failed: {0}")]
    Handshake(String),
    /// The peer closed the connection during the handshake.
    #[error("peer closed the connection during the rtmp handshake")]
    HandshakeEof,
    /// The handshake did not finish in time.
    #[error("rtmp handshake not finished within {0:?}")]
    HandshakeTimeout(Duration),
    /// The chunk stream was invalid.
    #[error("bad rtmp chunk stream: {0}")]
    Chunk(#[from] ChunkError),
    /// A command's AMF0 body was malformed or beyond the limits.
    #[error("bad rtmp command: {0}")]
    Command(#[from] crate::amf0::Amf0Error),
}

/// Which side of the handshake we play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeRole {
    /// We accepted the TCP connection (edge toward the pusher, embedded origin).
    Server,
    /// We opened it (gateway toward the origin, built-in publisher and player).
    Client,
}

/// Runs the RTMP handshake on `stream` (via rml_rtmp); returns bytes that followed it.
pub async fn handshake(
    stream: &mut TcpStream,
    role: HandshakeRole,
    limit: Duration,
) -> Result<BytesMut, RtmpIoError> {
    tokio::time::timeout(limit, handshake_inner(stream, role))
        .await
        .map_err(|_| RtmpIoError::HandshakeTimeout(limit))?
}

async fn handshake_inner(
    stream: &mut TcpStream,
    role: HandshakeRole,
) -> Result<BytesMut, RtmpIoError> {
    let hs_err = |e: rml_rtmp::handshake::HandshakeError| RtmpIoError::Handshake(e.to_string());
    let mut hs = Handshake::new(match role {
        HandshakeRole::Server => PeerType::Server,
        HandshakeRole::Client => PeerType::Client,
    });
    if role == HandshakeRole::Client {
        let c0c1 = hs.generate_outbound_p0_and_p1().map_err(hs_err)?;
        stream.write_all(&c0c1).await?;
    }
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(RtmpIoError::HandshakeEof);
        }
        match hs.process_bytes(&buf[..n]).map_err(hs_err)? {
            HandshakeProcessResult::InProgress { response_bytes } => {
                stream.write_all(&response_bytes).await?;
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                stream.write_all(&response_bytes).await?;
                return Ok(BytesMut::from(&remaining_bytes[..]));
            }
        }
    }
}

/// How long to pause after a failed accept (out of file descriptors, say) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The next TCP connection on `listener`, or `None` once `shutdown` is cancelled. A failed
/// accept is logged and retried after a short pause instead of spinning.
pub async fn accept(
    listener: &TcpListener,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<(TcpStream, std::net::SocketAddr)> {
    loop {
        let failure = tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => return Some(accepted),
                Err(e) => e,
            },
        };
        tracing::warn!(listen = ?listener.local_addr().ok(), reason = %failure, "accept failed");
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(ACCEPT_RETRY) => {}
        }
    }
}

/// What the reader hands up.
#[derive(Debug)]
pub enum Inbound {
    /// An end-to-end message for the far side.
    Message(Message),
    /// A hop-by-hop answer (acknowledgement, ping response) for our own writer.
    Reply(Message),
    /// The peer sent no byte at all for this many silence periods in a row (see
    /// [`RtmpReader::set_silence_period`]).
    Silent(u32),
}

/// Reads RTMP messages from a TCP read half and handles the hop-by-hop protocol.
#[derive(Debug)]
pub struct RtmpReader {
    io: OwnedReadHalf,
    buf: BytesMut,
    decoder: ChunkDecoder,
    hop: HopControl,
    silence_period: Option<Duration>,
    silent_periods: u32,
}

impl RtmpReader {
    /// A reader starting with `leftover` bytes from the handshake.
    pub fn new(io: OwnedReadHalf, leftover: BytesMut, limits: ChunkLimits) -> Self {
        RtmpReader {
            io,
            buf: leftover,
            decoder: ChunkDecoder::new(limits),
            hop: HopControl::default(),
            silence_period: None,
            silent_periods: 0,
        }
    }

    /// Charges partial messages to `budget`.
    pub fn set_budget(&mut self, budget: Arc<SessionBudget>) {
        self.decoder.set_budget(budget);
    }

    /// Reports [`Inbound::Silent`] after each `period` in which the peer sent no byte.
    pub fn set_silence_period(&mut self, period: Duration) {
        self.silence_period = Some(period);
    }

    /// The next end-to-end message or hop-by-hop reply; `None` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Inbound>, RtmpIoError> {
        loop {
            while let Some(msg) = self.decoder.decode(&mut self.buf)? {
                match msg.class() {
                    MessageClass::EndToEnd => return Ok(Some(Inbound::Message(msg))),
                    MessageClass::HopByHop => {
                        if let Some(reply) = self.hop.on_message(&msg) {
                            return Ok(Some(Inbound::Reply(reply)));
                        }
                    }
                }
            }
            self.buf.reserve(16 * 1024);
            let read = self.io.read_buf(&mut self.buf);
            let n = match self.silence_period {
                None => read.await?,
                Some(period) => match tokio::time::timeout(period, read).await {
                    Ok(n) => n?,
                    Err(_) => {
                        self.silent_periods += 1;
                        return Ok(Some(Inbound::Silent(self.silent_periods)));
                    }
                },
            };
            self.silent_periods = 0;
            if n == 0 {
                return Ok(None);
            }
            if let Some(ack) = self.hop.on_bytes_received(n) {
                return Ok(Some(Inbound::Reply(ack)));
            }
        }
    }

    /// Reads and discards whatever the peer still sends until it closes or `limit` passes.
    /// Closing a socket with unread input makes the kernel send a reset, which can destroy
    /// the last messages written to the peer (the RTMP error saying why its session ended);
    /// draining first lets them arrive.
    pub async fn discard_until_closed(&mut self, limit: Duration) {
        let drain = async {
            loop {
                self.buf.clear();
                self.buf.reserve(16 * 1024);
                match self.io.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(limit, drain).await;
    }

    /// Total bytes read from the peer, handshake excluded.
    pub fn bytes_received(&self) -> u64 {
        self.hop.bytes_received()
    }
}

/// Writes RTMP messages to a TCP write half with our own chunk size.
#[derive(Debug)]
pub struct RtmpWriter {
    io: OwnedWriteHalf,
    encoder: ChunkEncoder,
    buf: BytesMut,
}

impl RtmpWriter {
    /// A writer at the default chunk size.
    pub fn new(io: OwnedWriteHalf) -> Self {
        RtmpWriter {
            io,
            encoder: ChunkEncoder::default(),
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// Announces and switches to chunk size `size`.
    pub async fn set_chunk_size(&mut self, size: u32) -> std::io::Result<()> {
        self.encoder.set_chunk_size(size, &mut self.buf);
        self.flush().await
    }

    /// Sends what an RTMP server tells a new client: Window Acknowledgement Size, Set Peer
    /// Bandwidth, and our chunk size.
    pub async fn greet_client(&mut self) -> std::io::Result<()> {
        use crate::message::{Control, DEFAULT_WINDOW_ACK_SIZE};
        for control in [
            Control::WindowAckSize(DEFAULT_WINDOW_ACK_SIZE),
            Control::SetPeerBandwidth(DEFAULT_WINDOW_ACK_SIZE, 2),
        ] {
            self.encoder.encode(&control.to_message(), &mut self.buf);
        }
        self.set_chunk_size(crate::chunk::OUR_CHUNK_SIZE).await
    }

    /// Writes one message.
    pub async fn send(&mut self, msg: &Message) -> std::io::Result<()> {
        self.encoder.encode(msg, &mut self.buf);
        self.flush().await
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.io.write_all(&self.buf).await?;
        self.buf.clear();
        Ok(())
    }

    /// Writes everything that arrives on `rx`, batching what is already queued into one
    /// write; when every sender is gone, sends FIN and returns.
    pub async fn run(self, rx: mpsc::Receiver<Message>) -> std::io::Result<()> {
        self.run_charged(rx, None).await
    }

    /// Starts [`run`](Self::run) as a task fed by an [`Outbound`] queue of `capacity`
    /// messages whose payloads are charged to `budget` until written.
    pub fn spawn(
        self,
        capacity: usize,
        budget: Option<Arc<SessionBudget>>,
    ) -> (Outbound, tokio::task::JoinHandle<std::io::Result<()>>) {
        let (tx, rx) = mpsc::channel(capacity);
        let task = tokio::spawn(tracing::Instrument::in_current_span(
            self.run_charged(rx, budget.clone()),
        ));
        (Outbound { tx, budget }, task)
    }

    async fn run_charged(
        mut self,
        mut rx: mpsc::Receiver<Message>,
        budget: Option<Arc<SessionBudget>>,
    ) -> std::io::Result<()> {
        while let Some(msg) = rx.recv().await {
            let mut charged = msg.payload.len();
            self.encoder.encode(&msg, &mut self.buf);
            while self.buf.len() < 256 * 1024 {
                match rx.try_recv() {
                    Ok(more) => {
                        charged += more.payload.len();
                        self.encoder.encode(&more, &mut self.buf)
                    }
                    Err(_) => break,
                }
            }
            self.flush().await?;
            if let Some(budget) = &budget {
                budget.give_back(charged);
            }
        }
        self.io.shutdown().await
    }
}

/// The queue toward an RTMP writer task ([`RtmpWriter::spawn`]): each message's payload is
/// charged to the session's budget from the moment it is queued until it is written.
#[derive(Debug, Clone)]
pub struct Outbound {
    tx: mpsc::Sender<Message>,
    budget: Option<Arc<SessionBudget>>,
}

/// Why a message could not be queued toward an RTMP writer.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The writer is gone (its peer closed or failed).
    #[error("writer closed")]
    Closed,
    /// The process-wide bound on buffered bytes is reached.
    #[error("{0}")]
    Overloaded(#[from] BudgetExceeded),
    /// The queue is full (only from [`Outbound::try_send`]).
    #[error("writer queue full")]
    Full,
}

impl Outbound {
    /// Queues `msg`, waiting for room in the queue.
    pub async fn send(&self, msg: Message) -> Result<(), OutboundError> {
        if let Some(budget) = &self.budget {
            budget.take(msg.payload.len())?;
        }
        let len = msg.payload.len();
        self.tx.send(msg).await.map_err(|_| {
            if let Some(budget) = &self.budget {
                budget.give_back(len);
            }
            OutboundError::Closed
        })
    }

    /// Queues a small message that must reach the peer even when the process-wide budget is
    /// spent (the RTMP error saying why the session ends); still charged, so the writer's
    /// accounting stays exact.
    pub async fn send_unbudgeted(&self, msg: Message) -> Result<(), OutboundError> {
        if let Some(budget) = &self.budget {
            budget.take_anyway(msg.payload.len());
        }
        let len = msg.payload.len();
        self.tx.send(msg).await.map_err(|_| {
            if let Some(budget) = &self.budget {
                budget.give_back(len);
            }
            OutboundError::Closed
        })
    }

    /// Queues `msg` if there is room now.
    pub fn try_send(&self, msg: Message) -> Result<(), OutboundError> {
        let len = msg.payload.len();
        if let Some(budget) = &self.budget {
            budget.take(len)?;
        }
        self.tx.try_send(msg).map_err(|e| {
            if let Some(budget) = &self.budget {
                budget.give_back(len);
            }
            match e {
                mpsc::error::TrySendError::Full(_) => OutboundError::Full,
                mpsc::error::TrySendError::Closed(_) => OutboundError::Closed,
            }
        })
    }
}

/// Reads tunnel frames from a QUIC receive stream.
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: BytesMut,
    decoder: FrameDecoder,
    budget: Option<Arc<SessionBudget>>,
    charged: usize,
}

/// What went wrong reading tunnel frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameReadError {
    /// The QUIC stream failed (reset, connection lost).
    #[error("quic stream: {0}")]
    Stream(#[from] quinn::ReadError),
    /// The bytes were not valid frames.
    #[error("{0}")]
    Wire(#[from] WireError),
    /// The stream ended in the middle of a frame.
    #[error("tunnel stream ended inside a frame")]
    Truncated,
    /// The process-wide bound on buffered bytes is reached.
    #[error("{0}")]
    Overloaded(#[from] BudgetExceeded),
}

impl FrameReader {
    /// Reads frames from `recv`.
    pub fn new(recv: quinn::RecvStream) -> Self {
        FrameReader {
            recv,
            buf: BytesMut::with_capacity(64 * 1024),
            decoder: FrameDecoder::default(),
            budget: None,
            charged: 0,
        }
    }

    /// Reads only frames up to [`MAX_CONTROL_FRAME_LEN`](crate::wire::MAX_CONTROL_FRAME_LEN):
    /// for the control stream, where HELLO arrives before the peer is known.
    pub fn control(recv: quinn::RecvStream) -> Self {
        FrameReader {
            decoder: FrameDecoder::with_max_len(crate::wire::MAX_CONTROL_FRAME_LEN),
            ..Self::new(recv)
        }
    }

    /// Charges frames still arriving to `budget`.
    pub fn set_budget(&mut self, budget: Arc<SessionBudget>) {
        self.budget = Some(budget);
    }

    /// The next frame; `None` when the peer finished the stream cleanly.
    pub async fn next(&mut self) -> Result<Option<Frame>, FrameReadError> {
        loop {
            let frame = self.decoder.decode(&mut self.buf);
            self.charge()?;
            if let Some(frame) = frame? {
                return Ok(Some(frame));
            }
            match self.recv.read_chunk(64 * 1024, true).await? {
                Some(chunk) => {
                    self.buf.extend_from_slice(&chunk.bytes);
                    self.charge()?;
                }
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(FrameReadError::Truncated),
            }
        }
    }

    /// Brings the budget's charge in line with the bytes buffered.
    fn charge(&mut self) -> Result<(), FrameReadError> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        let held = self.buf.len();
        if held > self.charged {
            budget.take(held - self.charged)?;
        } else {
            budget.give_back(self.charged - held);
        }
        self.charged = held;
        Ok(())
    }

    /// Stops the peer from sending more on this stream.
    pub fn stop(&mut self, code: crate::wire::CloseCode) {
        let _ = self
            .recv
            .stop(quinn::VarInt::from_u64(code.to_code()).unwrap_or(quinn::VarInt::MAX));
    }
}

/// Writes one frame to a QUIC send stream without copying a MSG frame's payload.
pub async fn write_frame(
    send: &mut quinn::SendStream,
    frame: &Frame,
) -> Result<(), quinn::WriteError> {
    let mut head = BytesMut::with_capacity(32);
    match frame.encode_head(&mut head) {
        Some(payload) if !payload.is_empty() => {
            send.write_all_chunks(&mut [head.freeze(), payload]).await
        }
        _ => send.write_all(&head).await,
    }
}

/// Writes a SESSION_CLOSE frame and finishes the stream, ignoring a peer that is already gone.
pub async fn close_stream(
    send: &mut quinn::SendStream,
    code: crate::wire::CloseCode,
    reason: &str,
) {
    let frame = Frame::SessionClose {
        code,
        reason: reason.to_owned(),
    };
    if write_frame(send, &frame).await.is_ok() {
        let _ = send.finish();
    }
}
