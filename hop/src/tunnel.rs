//! Tunnel streams: frames over either carrier's streams ([`FrameReader`], [`write_frame`]) and the small
//! abstraction the pumps are written against ([`TunnelSend`], [`TunnelRecv`]), implemented by
//! quinn's streams here and by in-memory channels in the pumps' tests.

use std::future::Future;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rtmpq_proto::buffer_bound::{BufferFull, SessionBuffer};
use rtmpq_proto::media_queue::Dropped;
use rtmpq_proto::wire::{CloseCode, Frame, FrameDecoder, WireError, MAX_CONTROL_FRAME_LEN};

use crate::stream::{RecvHalf, SendHalf};

/// A tunnel stream that broke under a session: stopped or reset by the far hop (with the
/// close code it gave), or its connection lost (with the application code it closed with).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct StreamLost {
    /// The close code the far hop gave, if it gave one.
    pub code: Option<u64>,
    /// What happened, for logs and the client.
    pub reason: String,
}

fn connection_code(e: &quinn::ConnectionError) -> Option<u64> {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => Some(close.error_code.into_inner()),
        _ => None,
    }
}

/// "connection lost" and why: quinn's stream errors leave the why out, and "timed out" (a
/// silent path) and "reset by peer" (a gateway that restarted) call for different actions.
fn connection_lost(e: &quinn::ConnectionError) -> String {
    format!("connection lost: {e}")
}

impl From<quinn::WriteError> for StreamLost {
    fn from(e: quinn::WriteError) -> Self {
        let code = match &e {
            quinn::WriteError::Stopped(code) => Some(code.into_inner()),
            quinn::WriteError::ConnectionLost(c) => connection_code(c),
            _ => None,
        };
        let reason = match &e {
            quinn::WriteError::ConnectionLost(c) => connection_lost(c),
            e => e.to_string(),
        };
        StreamLost { code, reason }
    }
}

impl From<quinn::ReadError> for StreamLost {
    fn from(e: quinn::ReadError) -> Self {
        let code = match &e {
            quinn::ReadError::Reset(code) => Some(code.into_inner()),
            quinn::ReadError::ConnectionLost(c) => connection_code(c),
            _ => None,
        };
        let reason = match &e {
            quinn::ReadError::ConnectionLost(c) => connection_lost(c),
            e => e.to_string(),
        };
        StreamLost { code, reason }
    }
}

/// What went wrong reading tunnel frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameReadError {
    /// The stream broke (reset, connection lost).
    #[error("quic stream: {0}")]
    Lost(#[from] StreamLost),
    /// The bytes were not valid frames.
    #[error("{0}")]
    Wire(#[from] WireError),
    /// The stream ended in the middle of a frame.
    #[error("tunnel stream ended inside a frame")]
    Truncated,
    /// The process-wide bound on buffered bytes is reached.
    #[error("{0}")]
    Overloaded(#[from] BufferFull),
    /// A lanes session's media streams broke the wire format or its limits.
    #[error("{0}")]
    Lanes(String),
}

/// The sending half of a session's tunnel stream, as the pumps see it.
pub trait TunnelSend: Send {
    /// Sends one frame.
    fn send(&mut self, frame: &Frame) -> impl Future<Output = Result<(), StreamLost>> + Send;
    /// Sends one frame; a carrier that can send audio while a large video frame is still going
    /// out (media lanes) takes what `meanwhile` gives between the frame's pieces.
    fn send_meanwhile(
        &mut self,
        frame: &Frame,
        meanwhile: crate::lanes::AudioMeanwhile<'_>,
    ) -> impl Future<Output = Result<(), StreamLost>> + Send {
        let _ = meanwhile;
        self.send(frame)
    }
    /// Ends the stream after what was sent.
    fn finish(&mut self);
    /// What this sender reset inside QUIC once it went stale (media lanes); nothing else does.
    fn reset_in_quic(&self) -> Dropped {
        Dropped::default()
    }
}

/// The receiving half of a session's tunnel stream, as the pumps see it.
pub trait TunnelRecv: Send {
    /// The next frame; `None` when the far hop finished the stream cleanly.
    fn next(&mut self) -> impl Future<Output = Result<Option<Frame>, FrameReadError>> + Send;
    /// Tells the far hop to send no more on this stream.
    fn stop(&mut self, code: CloseCode);
}

impl TunnelSend for quinn::SendStream {
    async fn send(&mut self, frame: &Frame) -> Result<(), StreamLost> {
        write_frame(self, frame).await
    }

    fn finish(&mut self) {
        let _ = quinn::SendStream::finish(self);
    }
}

/// Where frames are written: a QUIC stream, or either carrier's [`SendHalf`].
pub trait FrameWrite: Send {
    /// Writes `buf` whole.
    fn write_all(&mut self, buf: &[u8]) -> impl Future<Output = Result<(), StreamLost>> + Send;
    /// Writes `chunks` whole, in order, without joining them.
    fn write_all_chunks(
        &mut self,
        chunks: &mut [Bytes],
    ) -> impl Future<Output = Result<(), StreamLost>> + Send;
}

impl FrameWrite for quinn::SendStream {
    async fn write_all(&mut self, buf: &[u8]) -> Result<(), StreamLost> {
        Ok(quinn::SendStream::write_all(self, buf).await?)
    }

    async fn write_all_chunks(&mut self, chunks: &mut [Bytes]) -> Result<(), StreamLost> {
        Ok(quinn::SendStream::write_all_chunks(self, chunks).await?)
    }
}

impl FrameWrite for SendHalf {
    fn write_all(&mut self, buf: &[u8]) -> impl Future<Output = Result<(), StreamLost>> + Send {
        SendHalf::write_all(self, buf)
    }

    fn write_all_chunks(
        &mut self,
        chunks: &mut [Bytes],
    ) -> impl Future<Output = Result<(), StreamLost>> + Send {
        SendHalf::write_all_chunks(self, chunks)
    }
}

impl TunnelSend for SendHalf {
    async fn send(&mut self, frame: &Frame) -> Result<(), StreamLost> {
        write_frame(self, frame).await
    }

    fn finish(&mut self) {
        SendHalf::finish(self);
    }
}

/// Reads tunnel frames from a stream of either carrier. Frames that arrive whole in one chunk
/// (quinn's, or one read of a TLS connection) are sliced out of it without a copy; only frames
/// split across chunks are gathered in a buffer.
#[derive(Debug)]
pub struct FrameReader {
    recv: RecvHalf,
    buf: BytesMut,
    /// The rest of quinn's last chunk (at most 64 KiB), read from without a copy.
    chunk: Bytes,
    decoder: FrameDecoder,
    buffer: Option<Arc<SessionBuffer>>,
    charged: usize,
}

impl FrameReader {
    /// Reads session frames from `recv`.
    pub fn new(recv: impl Into<RecvHalf>) -> Self {
        FrameReader {
            recv: recv.into(),
            buf: BytesMut::new(),
            chunk: Bytes::new(),
            decoder: FrameDecoder::default(),
            buffer: None,
            charged: 0,
        }
    }

    /// Reads only frames up to [`MAX_CONTROL_FRAME_LEN`]: for the control stream, where
    /// HELLO arrives before the peer is known, and a media stream until it names its session
    /// ([`lift_limit`](Self::lift_limit)).
    pub fn control(recv: impl Into<RecvHalf>) -> Self {
        FrameReader {
            decoder: FrameDecoder::with_max_len(MAX_CONTROL_FRAME_LEN),
            ..Self::new(recv)
        }
    }

    /// Reads frames up to the session limit from now on (the peer is known).
    pub fn lift_limit(&mut self) {
        self.decoder = FrameDecoder::default();
    }

    /// The QUIC stream's id (0 on TCP).
    pub fn stream_id(&self) -> u64 {
        self.recv.id()
    }

    /// Charges frames still arriving to `buffer`.
    pub fn set_buffer(&mut self, buffer: Arc<SessionBuffer>) {
        self.buffer = Some(buffer);
    }

    /// The next frame; `None` when the peer finished the stream cleanly.
    pub async fn next(&mut self) -> Result<Option<Frame>, FrameReadError> {
        loop {
            // Whole frames in the last chunk are sliced out of it; a partial one moves to the
            // buffer, where the next chunks complete it. At most one of the two holds bytes.
            if !self.chunk.is_empty() {
                if let Some(frame) = self.decoder.decode_bytes(&mut self.chunk)? {
                    return Ok(Some(frame));
                }
                self.buf.extend_from_slice(&self.chunk);
                self.chunk.clear();
            }
            let frame = self.decoder.decode(&mut self.buf);
            self.charge()?;
            if let Some(frame) = frame? {
                return Ok(Some(frame));
            }
            let chunk = self.recv.read_chunk(64 * 1024).await?;
            match chunk {
                Some(chunk) if self.buf.is_empty() => self.chunk = chunk,
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(FrameReadError::Truncated),
            }
        }
    }

    /// Brings the buffer's charge in line with the bytes buffered.
    fn charge(&mut self) -> Result<(), FrameReadError> {
        let Some(buffer) = &self.buffer else {
            return Ok(());
        };
        Ok(buffer.charge_to(&mut self.charged, self.buf.len())?)
    }
}

impl TunnelRecv for FrameReader {
    fn next(&mut self) -> impl Future<Output = Result<Option<Frame>, FrameReadError>> + Send {
        FrameReader::next(self)
    }

    fn stop(&mut self, code: CloseCode) {
        self.recv.stop(code);
    }
}

/// Writes one frame without copying a MSG frame's payload.
pub async fn write_frame(send: &mut impl FrameWrite, frame: &Frame) -> Result<(), StreamLost> {
    let mut head = BytesMut::with_capacity(32);
    match frame.encode_head(&mut head) {
        Some(payload) if !payload.is_empty() => {
            send.write_all_chunks(&mut [head.freeze(), payload]).await
        }
        _ => send.write_all(&head).await,
    }
}

/// Writes a SESSION_CLOSE frame and finishes the stream, ignoring a peer that is already gone.
/// A peer that reads nothing (its flow control never opens) gets [`CLOSE_LIMIT`], not the
/// session's task forever.
pub async fn close_stream<S: TunnelSend>(send: &mut S, code: CloseCode, reason: &str) {
    let frame = Frame::SessionClose {
        code,
        reason: reason.to_owned(),
    };
    if let Ok(Ok(())) = tokio::time::timeout(CLOSE_LIMIT, send.send(&frame)).await {
        send.finish();
    }
}

/// How long SESSION_CLOSE may wait for room in the stream.
pub const CLOSE_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);
