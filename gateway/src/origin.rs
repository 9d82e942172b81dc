//! A session's connection to the origin at the gateway: connect and hand-shake, keep it alive
//! while its session is held, and close it with what is queued written first.

use std::sync::Arc;
use std::time::Duration;

use rtmpq_hop::rtmp::{Inbound, RtmpConnection, RtmpIoError, RtmpSide, WaitTimes, WriterEnd};
use rtmpq_proto::buffer_bound::SessionBuffer;
use rtmpq_proto::session_end::{EndedBy, SessionEnd};
use rtmpq_proto::wire::CloseCode;
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::Shared;

/// How long the writer toward the origin may take to flush after the session ends.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);
/// Messages queued toward the origin.
const ORIGIN_QUEUE: usize = 1024;

/// A running connection to the origin for a session, charging what it reads and queues to
/// `buffer` and noting in `waiting` when each queued message came.
pub(crate) async fn open(
    shared: &Shared,
    buffer: &Arc<SessionBuffer>,
    waiting: &Arc<WaitTimes>,
) -> Result<RtmpSide, OriginError> {
    let conn = connect(shared).await?;
    Ok(RtmpSide::start(conn, ORIGIN_QUEUE, buffer, waiting))
}

/// Why the origin side of a session could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OriginError {
    #[error("origin {origin} unreachable: {source}")]
    Refused {
        origin: String,
        source: std::io::Error,
    },
    #[error("origin {origin} did not answer within {limit:?}")]
    Silent { origin: String, limit: Duration },
    #[error("origin {origin}: {source}")]
    Rtmp { origin: String, source: RtmpIoError },
}

impl OriginError {
    /// The session's end for it.
    pub(crate) fn end(self) -> SessionEnd {
        let code = match &self {
            OriginError::Rtmp {
                source: RtmpIoError::Io(_),
                ..
            }
            | OriginError::Refused { .. }
            | OriginError::Silent { .. } => CloseCode::OriginUnreachable,
            OriginError::Rtmp { .. } => CloseCode::OriginProtocolError,
        };
        SessionEnd::new(code, self.to_string(), EndedBy::Rtmp)
    }
}

/// Connects to the origin and shakes hands with it.
async fn connect(shared: &Shared) -> Result<RtmpConnection, OriginError> {
    let origin = shared.origin.clone();
    let limit = shared.settings.origin_connect_timeout;
    let tcp = match tokio::time::timeout(limit, TcpStream::connect(&origin)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(source)) => return Err(OriginError::Refused { origin, source }),
        Err(_) => return Err(OriginError::Silent { origin, limit }),
    };
    RtmpConnection::connect(tcp, shared.settings.handshake_timeout)
        .await
        .map_err(|source| OriginError::Rtmp { origin, source })
}

/// Closes the origin side: everything queued is written first (for up to [`FLUSH_LIMIT`]).
pub(crate) async fn close(link: RtmpSide) {
    match link.close(FLUSH_LIMIT).await.1 {
        WriterEnd::Failed(e) => info!(reason = %e, "origin write side ended with an error"),
        WriterEnd::Stalled => warn!("origin did not take the last messages within {FLUSH_LIMIT:?}"),
        WriterEnd::Flushed | WriterEnd::Aborted => {}
    }
}

/// Reads the origin while its session is held: answers what the hop must answer, drops the
/// rest; returns when the origin connection ends.
pub(crate) async fn keep_alive(link: &mut RtmpSide) {
    loop {
        match link.reader.next().await {
            Ok(Some(Inbound::Reply(reply))) => {
                if link.outbound.send(reply).await.is_err() {
                    return;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}
