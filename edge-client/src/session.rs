//! One pusher's or player's RTMP connection at the edge: the handshake and hop-by-hop protocol
//! done locally, end-to-end messages carried on one tunnel stream, and the gateway's failures
//! turned into RTMP errors the client understands.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtmpq_proto::chunk::ChunkLimits;
use rtmpq_proto::command;
use rtmpq_proto::io::{
    handshake, write_frame, FrameReader, HandshakeRole, Inbound, Outbound, RtmpReader, RtmpWriter,
};
use rtmpq_proto::session::{finish_tunnel, relay, EndedBy, RelayEnd, RtmpPeer, SessionTracker};
use rtmpq_proto::wire::{CloseCode, Frame, SessionId};
use tokio::net::TcpStream;
use tracing::{info, warn, Instrument};

use crate::Shared;

/// How long a refused client has to send its connect command so it can be told why.
const REFUSAL_WAIT: Duration = Duration::from_secs(5);
/// How long the writer toward the client may take to flush after the session ends.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);
/// How long a client whose session the edge ended may take to read why and close.
const LINGER: Duration = Duration::from_secs(3);
/// Messages queued toward one client.
const CLIENT_QUEUE: usize = 1024;

pub(crate) async fn serve(tcp: TcpStream, remote: SocketAddr, shared: &Shared) {
    let session_id = SessionId(rand::random());
    let span = tracing::info_span!("session", id = %session_id, client = %remote);
    async {
        let tracker = Arc::new(Mutex::new(SessionTracker::default()));
        shared
            .telemetry
            .session_started(session_id, remote.to_string(), tracker.clone());
        let end = match run(tcp, session_id, shared, &tracker).await {
            Ok(end) => end,
            Err(e) => RelayEnd::new(CloseCode::ClientProtocolError, e.to_string(), EndedBy::Rtmp),
        };
        shared.telemetry.session_ended(session_id, end.code);
        let t = tracker.lock().expect("tracker").clone();
        let (app, stream) = (t.app.unwrap_or_default(), t.stream.unwrap_or_default());
        let direction = t.direction.map_or("", |d| d.as_str());
        let line = format!("session ended: {} ({})", end.reason, end.code);
        if end.code == CloseCode::Normal {
            info!(%app, %stream, direction, code = %end.code, reason = %end.reason, "{line}");
        } else {
            warn!(%app, %stream, direction, code = %end.code, reason = %end.reason, "{line}");
        }
    }
    .instrument(span)
    .await
}

async fn run(
    mut tcp: TcpStream,
    session_id: SessionId,
    shared: &Shared,
    tracker: &Mutex<SessionTracker>,
) -> Result<RelayEnd, rtmpq_proto::io::RtmpIoError> {
    let _ = tcp.set_nodelay(true);
    let leftover = handshake(
        &mut tcp,
        HandshakeRole::Server,
        shared.config.handshake_timeout(),
    )
    .await?;
    let budget = shared.budget.session();
    let limits = shared.config.session_limits();
    let (read_half, write_half) = tcp.into_split();
    let mut reader = RtmpReader::new(read_half, leftover, ChunkLimits::default());
    reader.set_budget(budget.clone());
    if let Some(period) = limits.silence_period {
        reader.set_silence_period(period);
    }
    let mut writer = RtmpWriter::new(write_half);
    // What an RTMP server tells a new client; the origin's own copies stop at the gateway.
    writer.greet_client().await?;
    let (to_client, writer_task) = writer.spawn(CLIENT_QUEUE, Some(budget.clone()));
    let abort_writer = writer_task.abort_handle();

    let end = match open_tunnel(session_id, shared).await {
        Ok((mut send, recv)) => {
            let mut frames = FrameReader::new(recv);
            frames.set_budget(budget);
            let end = relay(
                RtmpPeer::Client,
                &mut reader,
                &to_client,
                &mut frames,
                &mut send,
                tracker,
                &limits,
                &shared.end_sessions,
            )
            .await;
            finish_tunnel(&mut send, &end).await;
            if end.ended_by != EndedBy::Rtmp && end.code != CloseCode::Normal {
                let failure = tracker
                    .lock()
                    .expect("tracker")
                    .failure_messages(&end.reason);
                for msg in failure {
                    // Past the budget or a full queue, the client still learns why: unbudgeted.
                    let _ = to_client.send_unbudgeted(msg).await;
                }
            }
            end
        }
        Err(reason) => {
            refuse(&mut reader, &to_client, tracker, &reason).await;
            RelayEnd::new(CloseCode::GatewayUnreachable, reason, EndedBy::Tunnel)
        }
    };
    drop(to_client);
    if tokio::time::timeout(FLUSH_LIMIT, writer_task)
        .await
        .is_err()
    {
        abort_writer.abort();
    }
    if end.ended_by != EndedBy::Rtmp {
        // The client may still be sending: let it read why before the socket closes.
        reader.discard_until_closed(LINGER).await;
    }
    Ok(end)
}

async fn open_tunnel(
    session_id: SessionId,
    shared: &Shared,
) -> Result<(quinn::SendStream, quinn::RecvStream), String> {
    let conn = shared
        .connector
        .connection(shared.config.gateway_wait())
        .await?;
    let (mut send, recv) = conn.open_bi().await.map_err(|e| format!("gateway: {e}"))?;
    let open = Frame::SessionOpen {
        session_id,
        resume_token: Default::default(),
    };
    write_frame(&mut send, &open)
        .await
        .map_err(|e| format!("gateway: {e}"))?;
    Ok((send, recv))
}

/// Tells a client we cannot serve it: waits for its connect and answers `_error`.
async fn refuse(
    reader: &mut RtmpReader,
    to_client: &Outbound,
    tracker: &Mutex<SessionTracker>,
    reason: &str,
) {
    let wait_for_connect = async {
        loop {
            match reader.next().await {
                Ok(Some(Inbound::Message(msg))) => {
                    let mut t = tracker.lock().expect("tracker");
                    if t.from_client(&msg).is_err() {
                        return Vec::new();
                    }
                    if t.connect_seen() {
                        return t.failure_messages(reason);
                    }
                }
                Ok(Some(Inbound::Reply(reply))) => {
                    let _ = to_client.send(reply).await;
                }
                Ok(Some(Inbound::Silent(_))) => {}
                Ok(None) | Err(_) => return Vec::new(),
            }
        }
    };
    if let Ok(failure) = tokio::time::timeout(REFUSAL_WAIT, wait_for_connect).await {
        for msg in failure {
            let _ = to_client.send_unbudgeted(msg).await;
        }
    }
}

/// Serves a client the edge has no room for: completes the RTMP handshake, waits for its
/// connect and answers `_error` `NetConnection.Connect.Rejected`, so the pusher's log says
/// why instead of "Cannot read RTMP handshake response".
pub(crate) async fn refuse_full(mut tcp: TcpStream, handshake_limit: Duration, limit: usize) {
    let _ = tcp.set_nodelay(true);
    let Ok(leftover) = handshake(&mut tcp, HandshakeRole::Server, handshake_limit).await else {
        return;
    };
    let (read_half, write_half) = tcp.into_split();
    let mut reader = RtmpReader::new(read_half, leftover, ChunkLimits::default());
    let mut writer = RtmpWriter::new(write_half);
    if writer.greet_client().await.is_err() {
        return;
    }
    let (to_client, writer_task) = writer.spawn(16, None);
    let reason = format!("edge full: {limit} sessions live, try again later");
    let wait_for_connect = async {
        let mut tracker = SessionTracker::default();
        loop {
            match reader.next().await {
                Ok(Some(Inbound::Message(msg))) => {
                    if tracker.from_client(&msg).is_err() {
                        return None;
                    }
                    if let Some(txn) = tracker.connect_transaction() {
                        return Some(txn);
                    }
                }
                Ok(Some(Inbound::Reply(reply))) => {
                    let _ = to_client.send(reply).await;
                }
                Ok(Some(Inbound::Silent(_))) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    };
    if let Ok(Some(txn)) = tokio::time::timeout(REFUSAL_WAIT, wait_for_connect).await {
        let refusal = command::error_response(txn, "NetConnection.Connect.Rejected", &reason);
        let _ = to_client.send(refusal).await;
    }
    drop(to_client);
    let _ = tokio::time::timeout(FLUSH_LIMIT, writer_task).await;
    reader.discard_until_closed(LINGER).await;
}
