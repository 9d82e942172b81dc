//! One RTMP connection over any byte stream: the handshake in either role (rml_rtmp), the
//! greeting, an [`RtmpReader`] that decodes messages and answers the hop-by-hop protocol, and
//! an [`RtmpWriter`] task fed through an [`Outbound`] queue. Every place that speaks RTMP (the
//! edge toward its clients, the gateway toward the origin, the embedded origin, the built-in
//! client) starts from [`RtmpConnection`].

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rtmpq_proto::amf0::Amf0Error;
use rtmpq_proto::buffer_bound::{BufferFull, SessionBuffer};
use rtmpq_proto::chunk::{ChunkDecoder, ChunkEncoder, ChunkError, ChunkLimits, OUR_CHUNK_SIZE};
use rtmpq_proto::message::{Control, HopControl, Message, MessageClass, DEFAULT_WINDOW_ACK_SIZE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What went wrong on an RTMP connection.
#[derive(Debug, thiserror::Error)]
pub enum RtmpIoError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The RTMP handshake failed.
    #[error("rtmp handshake failed: {0}")]
    Handshake(#[from] rml_rtmp::handshake::HandshakeError),
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
    Command(#[from] Amf0Error),
}

/// Which side of the handshake we play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeRole {
    /// We accepted the connection (edge toward the pusher, embedded origin).
    Server,
    /// We opened it (gateway toward the origin, built-in publisher and player).
    Client,
}

/// Runs the RTMP handshake on `stream` within `limit`; returns the bytes that followed it.
pub async fn handshake<S>(
    stream: &mut S,
    role: HandshakeRole,
    limit: Duration,
) -> Result<BytesMut, RtmpIoError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(limit, handshake_inner(stream, role))
        .await
        .map_err(|_| RtmpIoError::HandshakeTimeout(limit))?
}

async fn handshake_inner<S>(stream: &mut S, role: HandshakeRole) -> Result<BytesMut, RtmpIoError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hs = Handshake::new(match role {
        HandshakeRole::Server => PeerType::Server,
        HandshakeRole::Client => PeerType::Client,
    });
    if role == HandshakeRole::Client {
        let c0c1 = hs.generate_outbound_p0_and_p1()?;
        stream.write_all(&c0c1).await?;
    }
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(RtmpIoError::HandshakeEof);
        }
        match hs.process_bytes(&buf[..n])? {
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

/// A byte source an [`RtmpReader`] reads from (a TCP read half; a duplex pipe in tests).
pub type ByteSource = Pin<Box<dyn AsyncRead + Send + Sync>>;
/// A byte sink an [`RtmpWriter`] writes to.
pub type ByteSink = Pin<Box<dyn AsyncWrite + Send + Sync>>;

/// An RTMP connection past its handshake and greeting: the reader, and the writer ready to
/// [`spawn`](RtmpWriter::spawn).
#[derive(Debug)]
pub struct RtmpConnection {
    /// Messages from the peer.
    pub reader: RtmpReader,
    /// Messages to the peer.
    pub writer: RtmpWriter,
}

impl RtmpConnection {
    /// Serves a client that connected to us: handshake as the server, then what an RTMP server
    /// tells a new client (Window Acknowledgement Size, Set Peer Bandwidth, our chunk size).
    pub async fn accept(mut tcp: TcpStream, limit: Duration) -> Result<Self, RtmpIoError> {
        let _ = tcp.set_nodelay(true);
        let leftover = handshake(&mut tcp, HandshakeRole::Server, limit).await?;
        let mut conn = Self::over_tcp(tcp, leftover);
        conn.writer.greet_client().await?;
        Ok(conn)
    }

    /// Opens toward a server we connected to: handshake as the client, then our chunk size.
    pub async fn connect(mut tcp: TcpStream, limit: Duration) -> Result<Self, RtmpIoError> {
        let _ = tcp.set_nodelay(true);
        let leftover = handshake(&mut tcp, HandshakeRole::Client, limit).await?;
        let mut conn = Self::over_tcp(tcp, leftover);
        conn.writer.set_chunk_size(OUR_CHUNK_SIZE).await?;
        Ok(conn)
    }

    fn over_tcp(tcp: TcpStream, leftover: BytesMut) -> Self {
        let (read, write) = tcp.into_split();
        let read = PromptAcks { read };
        RtmpConnection {
            reader: RtmpReader::new(Box::pin(read), leftover, ChunkLimits::default()),
            writer: RtmpWriter::new(Box::pin(write)),
        }
    }
}

/// A TCP read half that asks the kernel, after each read that brought bytes, to acknowledge
/// what comes next at once rather than after its delayed-ACK timer (Linux; elsewhere it only
/// reads).
///
/// A peer with Nagle's algorithm on (nginx-rtmp never sets `TCP_NODELAY`, nor does ffmpeg by
/// default) holds a frame's last short segment until what it sent before is acknowledged, and
/// a receiver that delays that acknowledgement (up to 40 ms on Linux) delays the frame's tail
/// as long: measured through nginx-rtmp, a frame's arrival was either on time or 41-46 ms
/// late, and the late ones were the frames that crossed the path with the least to spare.
/// The kernel's quick-ACK mode does not last, so it is asked for after every read.
struct PromptAcks {
    read: tokio::net::tcp::OwnedReadHalf,
}

impl AsyncRead for PromptAcks {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.read).poll_read(cx, buf);
        if matches!(polled, std::task::Poll::Ready(Ok(()))) && buf.filled().len() > before {
            acknowledge_at_once(self.read.as_ref());
        }
        polled
    }
}

/// Asks the kernel to acknowledge what `tcp` receives next at once (see [`PromptAcks`], which
/// calls it after every read; so does the bench's tap). Best effort, Linux only: a socket that
/// refuses, or another system, is read as before.
pub fn acknowledge_at_once(tcp: &TcpStream) {
    #[cfg(target_os = "linux")]
    let _ = socket2::SockRef::from(tcp).set_tcp_quickack(true);
    #[cfg(not(target_os = "linux"))]
    let _ = tcp;
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

/// Reads RTMP messages and handles the hop-by-hop protocol.
pub struct RtmpReader {
    io: ByteSource,
    buf: BytesMut,
    decoder: ChunkDecoder,
    hop: HopControl,
    silence_period: Option<Duration>,
    silent_periods: u32,
}

impl std::fmt::Debug for RtmpReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtmpReader")
            .field("buffered", &self.buf.len())
            .field("decoder", &self.decoder)
            .finish()
    }
}

impl RtmpReader {
    /// A reader of `io` starting with `leftover` bytes from the handshake.
    pub fn new(io: ByteSource, leftover: BytesMut, limits: ChunkLimits) -> Self {
        RtmpReader {
            io,
            buf: leftover,
            decoder: ChunkDecoder::new(limits),
            hop: HopControl::default(),
            silence_period: None,
            silent_periods: 0,
        }
    }

    /// Charges partial messages to `buffer`.
    pub fn set_buffer(&mut self, buffer: Arc<SessionBuffer>) {
        self.decoder.set_buffer(buffer);
    }

    /// Reports [`Inbound::Silent`] after each `period` in which the peer sent no byte (the
    /// pumps set it from [`SessionLimits`](crate::pump::SessionLimits)).
    pub fn set_silence_period(&mut self, period: Duration) {
        self.silence_period = Some(period);
    }

    /// The next end-to-end message, hop-by-hop reply or silence report; `None` at a clean end
    /// of stream.
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

/// Writes RTMP messages with our own chunk size.
pub struct RtmpWriter {
    io: ByteSink,
    encoder: ChunkEncoder,
    buf: BytesMut,
}

impl std::fmt::Debug for RtmpWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtmpWriter")
            .field("encoder", &self.encoder)
            .finish()
    }
}

/// Most bytes the writer encodes before one write to the socket.
const WRITE_BATCH: usize = 256 * 1024;

impl RtmpWriter {
    /// A writer of `io` at the default chunk size.
    pub fn new(io: ByteSink) -> Self {
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
        for control in [
            Control::WindowAckSize(DEFAULT_WINDOW_ACK_SIZE),
            Control::SetPeerBandwidth(DEFAULT_WINDOW_ACK_SIZE, 2),
        ] {
            self.encoder.encode(&control.to_message(), &mut self.buf);
        }
        self.set_chunk_size(OUR_CHUNK_SIZE).await
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.io.write_all(&self.buf).await?;
        self.buf.clear();
        Ok(())
    }

    /// Starts a task that writes everything queued on the returned [`Outbound`] (at most
    /// `capacity` messages), batching what is already queued into one write; payloads are
    /// charged to `buffer` while they wait. When every sender is gone it sends FIN and ends.
    pub fn spawn(
        self,
        capacity: usize,
        buffer: Option<Arc<SessionBuffer>>,
    ) -> (Outbound, tokio::task::JoinHandle<std::io::Result<()>>) {
        self.spawn_timed(capacity, buffer, Arc::default())
    }

    /// Like [`spawn`](Self::spawn), noting in `waiting` when each queued message arrived
    /// until it is written (the hop's queue age).
    pub fn spawn_timed(
        self,
        capacity: usize,
        buffer: Option<Arc<SessionBuffer>>,
        waiting: Arc<WaitTimes>,
    ) -> (Outbound, tokio::task::JoinHandle<std::io::Result<()>>) {
        let (tx, rx) = mpsc::channel(capacity);
        let task = tokio::spawn(tracing::Instrument::in_current_span(self.run(
            rx,
            buffer.clone(),
            waiting.clone(),
        )));
        let queue = Outbound {
            tx,
            buffer,
            waiting,
        };
        (queue, task)
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Message>,
        buffer: Option<Arc<SessionBuffer>>,
        waiting: Arc<WaitTimes>,
    ) -> std::io::Result<()> {
        while let Some(msg) = rx.recv().await {
            let (mut charged, mut count) = (msg.payload.len(), 1);
            self.encoder.encode(&msg, &mut self.buf);
            while self.buf.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(more) => {
                        charged += more.payload.len();
                        count += 1;
                        self.encoder.encode(&more, &mut self.buf)
                    }
                    Err(_) => break,
                }
            }
            self.flush().await?;
            waiting.handed_on(count);
            if let Some(buffer) = &buffer {
                buffer.give_back(charged);
            }
        }
        self.io.shutdown().await
    }
}

/// A session's RTMP connection once running: what the hop reads from its peer, the queue
/// toward it, and the task that writes that queue (the client at the edge, the origin at the
/// gateway).
pub struct RtmpSide {
    /// Messages from the peer.
    pub reader: RtmpReader,
    /// The queue toward the peer.
    pub outbound: Outbound,
    writer: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// How an [`RtmpSide`]'s writer ended when it was closed.
#[derive(Debug)]
pub enum WriterEnd {
    /// Everything queued was written.
    Flushed,
    /// Writing failed.
    Failed(std::io::Error),
    /// The peer did not take what was queued in time; the writer was stopped.
    Stalled,
    /// The writer had been stopped ([`RtmpSide::abort`]).
    Aborted,
}

impl RtmpSide {
    /// Starts writing to `conn`'s peer (at most `capacity` messages queued), charging what is
    /// read and what waits to `buffer` and noting in `waiting` when each queued message came.
    pub fn start(
        conn: RtmpConnection,
        capacity: usize,
        buffer: &Arc<SessionBuffer>,
        waiting: &Arc<WaitTimes>,
    ) -> Self {
        let RtmpConnection { mut reader, writer } = conn;
        reader.set_buffer(buffer.clone());
        let (outbound, writer) =
            writer.spawn_timed(capacity, Some(buffer.clone()), waiting.clone());
        RtmpSide {
            reader,
            outbound,
            writer,
        }
    }

    /// Closes the queue and waits up to `limit` for what it holds to be written (a peer that
    /// reads nothing does not hold the session longer); returns the reader, still open, and
    /// how the writer ended.
    pub async fn close(self, limit: Duration) -> (RtmpReader, WriterEnd) {
        let RtmpSide {
            reader,
            outbound,
            writer,
        } = self;
        drop(outbound);
        let abort = writer.abort_handle();
        let end = match tokio::time::timeout(limit, writer).await {
            Ok(Ok(Ok(()))) => WriterEnd::Flushed,
            Ok(Ok(Err(e))) => WriterEnd::Failed(e),
            Ok(Err(e)) if e.is_cancelled() => WriterEnd::Aborted,
            Ok(Err(_)) => WriterEnd::Stalled,
            Err(_) => {
                abort.abort();
                WriterEnd::Stalled
            }
        };
        (reader, end)
    }

    /// Stops writing at once (the connection is given up, what is queued is not sent).
    pub fn abort(&self) {
        self.writer.abort();
    }
}

/// When each message still waiting for an RTMP writer arrived, oldest first: whoever queues a
/// message notes it, the writer removes it once written, and the hop's queue age is the
/// oldest one's age.
#[derive(Debug, Default)]
pub struct WaitTimes(Mutex<VecDeque<Instant>>);

impl WaitTimes {
    /// A message arrived at `at` and waits.
    pub fn arrived(&self, at: Instant) {
        self.0.lock().expect("wait times").push_back(at);
    }

    /// The `n` oldest waiting messages were handed on.
    pub fn handed_on(&self, n: usize) {
        let mut times = self.0.lock().expect("wait times");
        let n = n.min(times.len());
        times.drain(..n);
    }

    /// When the oldest waiting message arrived.
    pub fn oldest(&self) -> Option<Instant> {
        self.0.lock().expect("wait times").front().copied()
    }
}

/// The queue toward an RTMP writer task ([`RtmpWriter::spawn`]): each message's payload is
/// charged to the session's buffer, and its arrival noted, from the moment it is queued until
/// it is written.
#[derive(Debug, Clone)]
pub struct Outbound {
    tx: mpsc::Sender<Message>,
    buffer: Option<Arc<SessionBuffer>>,
    waiting: Arc<WaitTimes>,
}

/// Why a message could not be queued toward an RTMP writer.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The writer is gone (its peer closed or failed).
    #[error("writer closed")]
    Closed,
    /// The process-wide bound on buffered bytes is reached.
    #[error("{0}")]
    Overloaded(#[from] BufferFull),
}

impl Outbound {
    /// Queues `msg`, waiting for room in the queue.
    pub async fn send(&self, msg: Message) -> Result<(), OutboundError> {
        if let Some(buffer) = &self.buffer {
            buffer.take(msg.payload.len())?;
        }
        self.queue(msg).await
    }

    /// Queues a small message that must reach the peer even when the process-wide buffer is
    /// spent (the RTMP error saying why the session ends); still charged, so the writer's
    /// accounting stays exact.
    pub async fn send_unbudgeted(&self, msg: Message) -> Result<(), OutboundError> {
        if let Some(buffer) = &self.buffer {
            buffer.take_anyway(msg.payload.len());
        }
        self.queue(msg).await
    }

    async fn queue(&self, msg: Message) -> Result<(), OutboundError> {
        let len = msg.payload.len();
        let permit = self.tx.reserve().await.map_err(|_| {
            self.give_back(len);
            OutboundError::Closed
        })?;
        self.waiting.arrived(std::time::Instant::now());
        permit.send(msg);
        Ok(())
    }

    fn give_back(&self, len: usize) {
        if let Some(buffer) = &self.buffer {
            buffer.give_back(len);
        }
    }
}
