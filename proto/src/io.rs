//! The thin async layer: RTMP handshakes over TCP, an RTMP message reader and writer built on
//! the chunk codec, and tunnel frame reading and writing on QUIC streams.

use std::time::Duration;

use bytes::BytesMut;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

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
}

/// Reads RTMP messages from a TCP read half and handles the hop-by-hop protocol.
#[derive(Debug)]
pub struct RtmpReader {
    io: OwnedReadHalf,
    buf: BytesMut,
    decoder: ChunkDecoder,
    hop: HopControl,
}

impl RtmpReader {
    /// A reader starting with `leftover` bytes from the handshake.
    pub fn new(io: OwnedReadHalf, leftover: BytesMut, limits: ChunkLimits) -> Self {
        RtmpReader {
            io,
            buf: leftover,
            decoder: ChunkDecoder::new(limits),
            hop: HopControl::default(),
        }
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
            let n = self.io.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Ok(None);
            }
            if let Some(ack) = self.hop.on_bytes_received(n) {
                return Ok(Some(Inbound::Reply(ack)));
            }
        }
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
    pub async fn run(mut self, mut rx: mpsc::Receiver<Message>) -> std::io::Result<()> {
        while let Some(msg) = rx.recv().await {
            self.encoder.encode(&msg, &mut self.buf);
            while self.buf.len() < 256 * 1024 {
                match rx.try_recv() {
                    Ok(more) => self.encoder.encode(&more, &mut self.buf),
                    Err(_) => break,
                }
            }
            self.flush().await?;
        }
        self.io.shutdown().await
    }
}

/// Reads tunnel frames from a QUIC receive stream.
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: BytesMut,
    decoder: FrameDecoder,
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
}

impl FrameReader {
    /// Reads frames from `recv`.
    pub fn new(recv: quinn::RecvStream) -> Self {
        FrameReader {
            recv,
            buf: BytesMut::with_capacity(64 * 1024),
            decoder: FrameDecoder,
        }
    }

    /// The next frame; `None` when the peer finished the stream cleanly.
    pub async fn next(&mut self) -> Result<Option<Frame>, FrameReadError> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            match self.recv.read_chunk(64 * 1024, true).await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(FrameReadError::Truncated),
            }
        }
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
