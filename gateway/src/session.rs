//! One RTMP session at the gateway: SESSION_OPEN, a TCP connection and client handshake to the
//! origin, then the two pumps until either side ends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtmpq_hop::pump::{finish_session, run_session, EndedBy, QueuePolicy, RtmpPeer, SessionEnd};
use rtmpq_hop::rtmp::{Inbound, Outbound, RtmpConnection, RtmpIoError, RtmpReader};
use rtmpq_hop::transport::PathWatch;
use rtmpq_hop::tunnel::{close_stream, FrameReader, TunnelRecv};
use rtmpq_proto::budget::SessionBudget;
use rtmpq_proto::journal::{Replay, ReplayStep, ResumeFilter};
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

/// The origin side of a session: a connection set up (by the client, through the tunnel, or
/// by a [`Replay`]) and its writer task.
struct OriginLink {
    reader: RtmpReader,
    to_origin: Outbound,
    writer_task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl OriginLink {
    fn new(
        conn: RtmpConnection,
        budget: &Arc<SessionBudget>,
        tracker: &Mutex<SessionTracker>,
    ) -> Self {
        let RtmpConnection { mut reader, writer } = conn;
        reader.set_budget(budget.clone());
        let waiting = tracker.lock().expect("tracker").waiting(Flow::ToOrigin);
        let (to_origin, writer_task) =
            writer.spawn_timed(ORIGIN_QUEUE, Some(budget.clone()), waiting);
        OriginLink {
            reader,
            to_origin,
            writer_task,
        }
    }

    /// Everything queued for the origin is written before its connection closes.
    async fn close(self) {
        drop(self.to_origin);
        let abort_writer = self.writer_task.abort_handle();
        match tokio::time::timeout(FLUSH_LIMIT, self.writer_task).await {
            Ok(Ok(Err(e))) => info!(reason = %e, "origin write side ended with an error"),
            Err(_) => {
                abort_writer.abort();
                warn!("origin did not take the last messages within {FLUSH_LIMIT:?}")
            }
            _ => {}
        }
    }
}

async fn to_origin(
    send: &mut quinn::SendStream,
    frames: &mut FrameReader,
    shared: &Shared,
    tracker: &Mutex<SessionTracker>,
    budget: Arc<SessionBudget>,
    queue: QueuePolicy,
) -> SessionEnd {
    let mut link = match connect_origin(shared).await {
        Ok(conn) => OriginLink::new(conn, &budget, tracker),
        Err(e) => {
            let end = e.end();
            close_stream(send, end.code, &end.reason).await;
            return end;
        }
    };
    let mut resume = None;
    loop {
        let end = run_session(
            RtmpPeer::Origin,
            &mut link.reader,
            &link.to_origin,
            frames,
            send,
            tracker,
            &shared.settings.session_limits,
            queue.clone(),
            resume.take(),
            shared.drain.end_sessions(),
        )
        .await;
        let origin_lost = end.ended_by == EndedBy::Rtmp
            && matches!(
                end.code,
                CloseCode::OriginClosed | CloseCode::OriginUnreachable
            );
        let journal = tracker.lock().expect("tracker").journal.clone();
        let limit = shared.settings.origin_retry;
        let replay = journal.replay().filter(|_| journal.direction().is_some());
        let (Some(replay), true, false) = (replay, origin_lost, limit.is_zero()) else {
            finish_session(RtmpPeer::Origin, &end, tracker, &link.to_origin, send).await;
            link.close().await;
            return end;
        };
        link.writer_task.abort();
        warn!(
            reason = %end.reason,
            "origin lost under a live session: setting the session up again (for up to {limit:?})"
        );
        match set_up_again(shared, &budget, tracker, replay, limit).await {
            Ok((new_link, filter)) => {
                shared.telemetry.session_set_up_again();
                info!("session set up again on the origin; media resumes at the next key frame");
                link = new_link;
                resume = Some(filter);
            }
            Err(end) => {
                close_stream(send, end.code, &end.reason).await;
                return end;
            }
        }
    }
}

/// First wait between attempts to set a session up again; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Connects to the origin and replays the session's set-up, with backoff, for up to `limit`.
/// nginx-rtmp answers a publish of a name it still holds with `NetStream.Publish.BadName`
/// until it notices the old publisher is gone: that is retried too.
async fn set_up_again(
    shared: &Shared,
    budget: &Arc<SessionBudget>,
    tracker: &Mutex<SessionTracker>,
    replay: Replay,
    limit: Duration,
) -> Result<(OriginLink, ResumeFilter), SessionEnd> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut wait = RETRY_FIRST;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let attempt = async {
            let conn = connect_origin(shared).await.map_err(|e| e.to_string())?;
            let mut link = OriginLink::new(conn, budget, tracker);
            let filter = replay_on(&mut link, replay.clone()).await?;
            Ok::<_, String>((link, filter))
        };
        let why = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(done)) => return Ok(done),
            Ok(Err(why)) => why,
            Err(_) => "no answer".to_owned(),
        };
        if tokio::time::Instant::now() + wait >= deadline {
            let reason = format!(
                "origin {} lost and not back within {limit:?} ({attempts} attempts; last: {why})",
                shared.origin
            );
            return Err(SessionEnd::new(
                CloseCode::OriginUnreachable,
                reason,
                EndedBy::Rtmp,
            ));
        }
        info!(attempt = attempts, reason = %why, "origin not set up yet; retrying in {wait:?}");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
    }
}

/// Runs `replay` on a fresh origin connection until the origin takes the session.
async fn replay_on(link: &mut OriginLink, mut replay: Replay) -> Result<ResumeFilter, String> {
    let send = |msgs: Vec<rtmpq_proto::message::Message>, to: &Outbound| {
        let to = to.clone();
        async move {
            for m in msgs {
                to.send(m).await.map_err(|e| format!("origin write: {e}"))?;
            }
            Ok::<(), String>(())
        }
    };
    send(replay.begin(), &link.to_origin).await?;
    loop {
        let msg = match link.reader.next().await {
            Ok(Some(Inbound::Message(msg))) => msg,
            Ok(Some(Inbound::Reply(reply))) => {
                send(vec![reply], &link.to_origin).await?;
                continue;
            }
            Ok(Some(Inbound::Silent(_))) => continue,
            Ok(None) => return Err("origin closed the connection".into()),
            Err(e) => return Err(e.to_string()),
        };
        match replay.on_origin(&msg).map_err(|e| e.to_string())? {
            ReplayStep::Waiting => {}
            ReplayStep::Send(msgs) => send(msgs, &link.to_origin).await?,
            ReplayStep::Started { stream_id, then } => {
                send(then, &link.to_origin).await?;
                return Ok(ResumeFilter::new(replay.client_stream_id(), stream_id));
            }
            ReplayStep::Refused { code, description } => {
                return Err(format!("origin refused: {code} {description}"))
            }
        }
    }
}
