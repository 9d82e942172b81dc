//! One RTMP session at the gateway: SESSION_OPEN, a TCP connection and client handshake to the
//! origin, then the two pumps until either side ends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtmpq_hop::pump::{finish_session, run_session, EndedBy, QueuePolicy, RtmpPeer, SessionEnd};
use rtmpq_hop::rtmp::{RtmpConnection, RtmpIoError};
use rtmpq_hop::transport::PathWatch;
use rtmpq_hop::tunnel::{close_stream, FrameReader, TunnelRecv};
use rtmpq_proto::budget::SessionBudget;
use rtmpq_proto::session::{Flow, SessionTracker};
use rtmpq_proto::wire::{CloseCode, Frame};
use tokio::net::TcpStream;
use tracing::{info, warn, Instrument};

use crate::Shared;

/// How long the writer toward the origin may take to flush after the session ends.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);
/// Messages queued toward the origin.
const ORIGIN_QUEUE: usize = 1024;

pub(crate) async fn serve(
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    shared: &Shared,
    peer: String,
    path: Arc<PathWatch>,
) {
    let budget = shared.budget.session();
    let mut frames = FrameReader::new(recv);
    frames.set_budget(budget.clone());
    let open = tokio::time::timeout(shared.settings.handshake_timeout, frames.next()).await;
    let (session_id, latency_budget_ms) = match open {
        Ok(Ok(Some(Frame::SessionOpen {
            session_id,
            latency_budget_ms,
        }))) => (session_id, latency_budget_ms),
        other => {
            let reason = match other {
                Err(_) => "no SESSION_OPEN in time".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(frame)) => format!("expected SESSION_OPEN, got {frame:?}"),
            };
            warn!(code = %CloseCode::ProtocolViolation, %reason, "session refused");
            TunnelRecv::stop(&mut frames, CloseCode::ProtocolViolation);
            close_stream(&mut send, CloseCode::ProtocolViolation, &reason).await;
            return;
        }
    };
    let span = tracing::info_span!("session", id = %session_id);
    async {
        let tracker = Arc::new(Mutex::new(SessionTracker::default()));
        shared
            .telemetry
            .session_started(session_id, peer, tracker.clone());
        // What the origin sends (a player's media) waits under the budget the edge asked for.
        let queue = QueuePolicy {
            budget: (latency_budget_ms > 0)
                .then(|| Duration::from_millis(u64::from(latency_budget_ms))),
            path: Some(path),
            charge: Some(budget.clone()),
            ..QueuePolicy::default()
        };
        let end = to_origin(&mut send, &mut frames, shared, &tracker, budget, queue).await;
        shared
            .telemetry
            .session_ended(session_id, end.code, &end.reason);
        let t = tracker.lock().expect("tracker").clone();
        let line = format!("session ended: {} ({})", end.reason, end.code);
        let (app, stream) = (t.app.unwrap_or_default(), t.stream.unwrap_or_default());
        let (to_origin, to_client) = (t.to_origin.messages, t.to_client.messages);
        if end.code == CloseCode::Normal {
            info!(%app, %stream, code = %end.code, reason = %end.reason, to_origin, to_client, "{line}");
        } else {
            warn!(%app, %stream, code = %end.code, reason = %end.reason, to_origin, to_client, "{line}");
        }
    }
    .instrument(span)
    .await
}

/// Why the origin side of a session could not be set up.
#[derive(Debug, thiserror::Error)]
enum OriginError {
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
    fn end(self) -> SessionEnd {
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

async fn connect_origin(shared: &Shared) -> Result<RtmpConnection, OriginError> {
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

async fn to_origin(
    send: &mut quinn::SendStream,
    frames: &mut FrameReader,
    shared: &Shared,
    tracker: &Mutex<SessionTracker>,
    budget: Arc<SessionBudget>,
    queue: QueuePolicy,
) -> SessionEnd {
    let RtmpConnection { mut reader, writer } = match connect_origin(shared).await {
        Ok(conn) => conn,
        Err(e) => {
            let end = e.end();
            close_stream(send, end.code, &end.reason).await;
            return end;
        }
    };
    reader.set_budget(budget.clone());
    let waiting = tracker.lock().expect("tracker").waiting(Flow::ToOrigin);
    let (to_origin, writer_task) = writer.spawn_timed(ORIGIN_QUEUE, Some(budget), waiting);
    let abort_writer = writer_task.abort_handle();
    let end = run_session(
        RtmpPeer::Origin,
        &mut reader,
        &to_origin,
        frames,
        send,
        tracker,
        &shared.settings.session_limits,
        queue,
        shared.drain.end_sessions(),
    )
    .await;
    finish_session(RtmpPeer::Origin, &end, tracker, &to_origin, send).await;
    // Everything queued for the origin is written before its connection closes.
    drop(to_origin);
    match tokio::time::timeout(FLUSH_LIMIT, writer_task).await {
        Ok(Ok(Err(e))) => info!(reason = %e, "origin write side ended with an error"),
        Err(_) => {
            abort_writer.abort();
            warn!("origin did not take the last messages within {FLUSH_LIMIT:?}")
        }
        _ => {}
    }
    end
}
