//! A tunnel stream's two halves on either carrier: a QUIC stream, or a TLS 1.3 connection over
//! TCP that carries one session (the TCP carrier, for networks that block UDP). Frames are the
//! same on both ([`write_frame`](crate::tunnel::write_frame), `FrameReader`); what only QUIC
//! has (stream resets, priorities, media lanes) is a no-op or refused on TCP.

use bytes::{Bytes, BytesMut};
use rtmpq_proto::wire::CloseCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::transport::quic_code;
use crate::tunnel::StreamLost;

/// A TLS 1.3 connection over TCP, either end.
pub type TlsConnection = tokio_rustls::TlsStream<TcpStream>;

/// Most bytes one read of a TLS connection takes.
const TLS_READ_CHUNK: usize = 64 * 1024;

/// The most plaintext one TLS record carries.
const TLS_RECORD: usize = 16 * 1024;

/// The sending half of a tunnel stream.
#[derive(Debug)]
pub enum SendHalf {
    /// A QUIC stream.
    Quic(quinn::SendStream),
    /// A TLS connection's writing half; `None` once finished or reset.
    Tls(Option<WriteHalf<TlsConnection>>),
}

/// The receiving half of a tunnel stream.
#[derive(Debug)]
pub enum RecvHalf {
    /// A QUIC stream.
    Quic(quinn::RecvStream),
    /// A TLS connection's reading half, and the buffer its reads fill (each read hands on
    /// what it got and the rest of the buffer takes the next).
    Tls(ReadHalf<TlsConnection>, BytesMut),
}

/// Plaintext and records rustls may hold unsent per TLS connection (its default is 64 KiB):
/// one record. What waits beyond it stays in the media queue, as with `TCP_NOTSENT_LOWAT`.
const TLS_BUFFER_LIMIT: usize = 16 * 1024 + 64;

/// The two halves of one TLS connection (rustls's send buffer bounded to one record).
pub fn tls_halves(mut tls: TlsConnection) -> (SendHalf, RecvHalf) {
    match &mut tls {
        TlsConnection::Client(c) => c.get_mut().1.set_buffer_limit(Some(TLS_BUFFER_LIMIT)),
        TlsConnection::Server(s) => s.get_mut().1.set_buffer_limit(Some(TLS_BUFFER_LIMIT)),
    }
    let (read, write) = tokio::io::split(tls);
    (
        SendHalf::Tls(Some(write)),
        RecvHalf::Tls(read, BytesMut::new()),
    )
}

fn tls_lost(e: std::io::Error) -> StreamLost {
    StreamLost {
        code: None,
        reason: format!("tcp connection lost: {e}"),
    }
}

fn tls_closed() -> StreamLost {
    StreamLost {
        code: None,
        reason: "tcp connection closed by this hop".into(),
    }
}

impl SendHalf {
    /// Writes `buf` whole.
    pub async fn write_all(&mut self, buf: &[u8]) -> Result<(), StreamLost> {
        match self {
            SendHalf::Quic(s) => Ok(s.write_all(buf).await?),
            SendHalf::Tls(Some(w)) => w.write_all(buf).await.map_err(tls_lost),
            SendHalf::Tls(None) => Err(tls_closed()),
        }
    }

    /// Writes `chunks` whole, in order (QUIC: without joining them; TLS: those that fit one
    /// record joined into it, as rustls copies them into the record anyway).
    pub async fn write_all_chunks(&mut self, chunks: &mut [Bytes]) -> Result<(), StreamLost> {
        match self {
            SendHalf::Quic(s) => Ok(s.write_all_chunks(chunks).await?),
            SendHalf::Tls(Some(w)) => {
                let total: usize = chunks.iter().map(Bytes::len).sum();
                if total <= TLS_RECORD {
                    let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
                    return w.write_all(&joined).await.map_err(tls_lost);
                }
                for chunk in chunks.iter() {
                    w.write_all(chunk).await.map_err(tls_lost)?;
                }
                Ok(())
            }
            SendHalf::Tls(None) => Err(tls_closed()),
        }
    }

    /// Ends the stream after what was written (TLS: close_notify and FIN, in the background).
    pub fn finish(&mut self) {
        match self {
            SendHalf::Quic(s) => {
                let _ = s.finish();
            }
            SendHalf::Tls(w) => {
                if let Some(mut w) = w.take() {
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(FINISH_LIMIT, w.shutdown()).await;
                    });
                }
            }
        }
    }

    /// Gives the stream up at once, unsent data dropped, with `code` (QUIC; TCP has no code to
    /// give: the connection's writing half just goes).
    pub fn reset(&mut self, code: CloseCode) {
        match self {
            SendHalf::Quic(s) => {
                let _ = s.reset(quic_code(code));
            }
            SendHalf::Tls(w) => drop(w.take()),
        }
    }

    /// The QUIC stream, if this is one (media lanes need it).
    pub fn quic(&mut self) -> Option<&mut quinn::SendStream> {
        match self {
            SendHalf::Quic(s) => Some(s),
            SendHalf::Tls(_) => None,
        }
    }
}

/// How long a finished TLS connection may take to say so before it is dropped.
const FINISH_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

impl RecvHalf {
    /// The next bytes, at most `max`; `None` at the clean end of the stream.
    pub async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, StreamLost> {
        match self {
            RecvHalf::Quic(s) => Ok(s.read_chunk(max, true).await?.map(|c| c.bytes)),
            RecvHalf::Tls(r, buf) => {
                // A new block only once the last one is used up.
                buf.reserve(max.min(TLS_READ_CHUNK));
                match r.read_buf(buf).await {
                    Ok(0) => Ok(None),
                    Ok(_) => Ok(Some(buf.split().freeze())),
                    // A peer that closed without close_notify ended the stream all the same:
                    // every frame says where it ends, so a cut one is still caught.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
                    Err(e) => Err(tls_lost(e)),
                }
            }
        }
    }

    /// Tells the far hop to send no more (QUIC; on TCP the connection's end does).
    pub fn stop(&mut self, code: CloseCode) {
        if let RecvHalf::Quic(s) = self {
            let _ = s.stop(quic_code(code));
        }
    }

    /// The QUIC stream's id; 0 on TCP (one session per connection).
    pub fn id(&self) -> u64 {
        match self {
            RecvHalf::Quic(s) => s.id().into(),
            RecvHalf::Tls(..) => 0,
        }
    }
}

impl From<quinn::SendStream> for SendHalf {
    fn from(s: quinn::SendStream) -> Self {
        SendHalf::Quic(s)
    }
}

impl From<quinn::RecvStream> for RecvHalf {
    fn from(s: quinn::RecvStream) -> Self {
        RecvHalf::Quic(s)
    }
}
