//! One RTMP session at the gateway: SESSION_OPEN, a TCP connection and client handshake to the
//! origin, then the relay until either side ends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtmpq_proto::budget::SessionBudget;
use rtmpq_proto::chunk::{ChunkLimits, OUR_CHUNK_SIZE};
use rtmpq_proto::io::{
    close_stream, handshake, FrameReader, HandshakeRole, RtmpReader, RtmpWriter,
};
use rtmpq_proto::session::{finish_tunnel, relay, EndedBy, RelayEnd, RtmpPeer, SessionTracker};
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
    edge_id: String,
) {
    let budget = shared.budget.session();
    let mut frames = FrameReader::new(recv);
    frames.set_budget(budget.clone());
    let open = tokio::time::timeout(shared.config.handshake_timeout(), frames.next()).await;
    let session_id = match open {
        Ok(Ok(Some(Frame::SessionOpen { session_id, .. }))) => session_id,
        other => {
            let reason = match other {
                Err(_) => "no SESSION_OPEN in time".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(frame)) => format!("expected SESSION_OPEN, got {frame:?}"),
            };
            warn!(code = %CloseCode::ProtocolViolation, %reason, "session refused");
            frames.stop(CloseCode::ProtocolViolation);
            close_stream(&mut send, CloseCode::ProtocolViolation, &reason).await;
            return;
        }
    };
    let span = tracing::info_span!("session", id = %session_id);
    async {
        let tracker = Arc::new(Mutex::new(SessionTracker::default()));
        shared
            .telemetry
            .session_started(session_id, edge_id, tracker.clone());
        let end = relay_to_origin(&mut send, &mut frames, shared, &tracker, budget).await;
        finish_tunnel(&mut send, &end).await;
        shared.telemetry.session_ended(session_id, end.code);
        let t = tracker.lock().expect("tracker").clone();
        let line = format!(
            "session ended: {} ({})",
            end.reason, end.code
        );
        let (app, stream) = (t.app.unwrap_or_default(), t.stream.unwrap_or_default());
        if end.code == CloseCode::Normal {
            info!(%app, %stream, code = %end.code, reason = %end.reason, messages_up = t.upstream.messages, messages_down = t.downstream.messages, "{line}");
        } else {
            warn!(%app, %stream, code = %end.code, reason = %end.reason, messages_up = t.upstream.messages, messages_down = t.downstream.messages, "{line}");
        }
    }
    .instrument(span)
    .await
}

async fn relay_to_origin(
    send: &mut quinn::SendStream,
    frames: &mut FrameReader,
    shared: &Shared,
    tracker: &Mutex<SessionTracker>,
    budget: Arc<SessionBudget>,
) -> RelayEnd {
    let origin = &shared.origin;
    let limit = Duration::from_millis(shared.config.origin_connect_timeout_ms);
    let unreachable = |why: String| RelayEnd::new(CloseCode::OriginUnreachable, why, EndedBy::Rtmp);
    let mut tcp = match tokio::time::timeout(limit, TcpStream::connect(origin)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return unreachable(format!("origin {origin} unreachable: {e}")),
        Err(_) => return unreachable(format!("origin {origin} did not answer within {limit:?}")),
    };
    let _ = tcp.set_nodelay(true);
    let leftover = match handshake(
        &mut tcp,
        HandshakeRole::Client,
        shared.config.handshake_timeout(),
    )
    .await
    {
        Ok(leftover) => leftover,
        Err(e) => {
            return RelayEnd::new(
                CloseCode::OriginProtocolError,
                format!("origin {origin}: {e}"),
                EndedBy::Rtmp,
            )
        }
    };
    let (read_half, write_half) = tcp.into_split();
    let mut reader = RtmpReader::new(read_half, leftover, ChunkLimits::default());
    reader.set_budget(budget.clone());
    let mut writer = RtmpWriter::new(write_half);
    if let Err(e) = writer.set_chunk_size(OUR_CHUNK_SIZE).await {
        return unreachable(format!("origin {origin}: {e}"));
    }
    let (to_origin, writer_task) = writer.spawn(ORIGIN_QUEUE, Some(budget));
    let abort_writer = writer_task.abort_handle();
    let end = relay(
        RtmpPeer::Origin,
        &mut reader,
        &to_origin,
        frames,
        send,
        tracker,
        &shared.config.session_limits(),
        &shared.end_sessions,
    )
    .await;
    if end.ended_by == EndedBy::Local {
        // Leave the origin the way a client does, so it ends the stream cleanly.
        for msg in tracker.lock().expect("tracker").goodbye_messages() {
            let _ = to_origin.try_send(msg);
        }
    }
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
