//! One pusher's or player's RTMP connection at the edge: the handshake and hop-by-hop protocol
//! done locally, end-to-end messages carried on one tunnel stream by the two pumps, and the
//! gateway's failures turned into RTMP errors the client understands.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtmpq_hop::pump::{log_session_end, QueuePolicy, RtmpPeer};
use rtmpq_hop::recovery::{self, GaveUp, OriginExchange, Retry};
use rtmpq_hop::rtmp::{
    Inbound, Outbound, RtmpConnection, RtmpIoError, RtmpReader, RtmpSide, WaitTimes,
};
use rtmpq_hop::session::{Interrupt, Loss, Reattach, Recovered, Session, SessionParts, Tunnel};
use rtmpq_hop::tunnel::{
    close_stream, write_frame, FrameReader, StreamLost, TunnelRecv, TunnelSend,
};
use rtmpq_proto::buffer_bound::SessionBuffer;
use rtmpq_proto::command;
use rtmpq_proto::fast_start::FastStart;
use rtmpq_proto::journal::{Replay, ResumeFilter};
use rtmpq_proto::message::Message;
use rtmpq_proto::session::{Flow, SessionTracker};
use rtmpq_proto::session_end::{Backoff, EndedBy, Recovery, SessionEnd, Step};
use rtmpq_proto::wire::{CloseCode, Frame, ResumeToken, SessionId};
use tokio::net::TcpStream;
use tracing::{info, warn, Instrument};

use crate::connector::GatewayLink;
use crate::connector::{ConnectError, GatewayUnavailable};
use crate::Shared;

/// How long a refused client has to send its connect command so it can be told why.
const REFUSAL_WAIT: Duration = Duration::from_secs(5);
/// How long the writer toward the client may take to flush after the session ends.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);
/// How long a client whose session the edge ended may take to read why and close.
const LINGER: Duration = Duration::from_secs(3);
/// Messages queued toward one client.
const CLIENT_QUEUE: usize = 1024;

/// Why a session could not get its tunnel stream.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    /// No connection to the gateway.
    #[error("{0}")]
    Unavailable(#[from] GatewayUnavailable),
    /// The connection would not open a stream.
    #[error("gateway: {0}")]
    Stream(#[from] quinn::ConnectionError),
    /// The stream broke before SESSION_OPEN was sent.
    #[error("gateway: {0}")]
    Lost(#[from] StreamLost),
}

impl OpenError {
    /// The close code the session ends with: the gateway's own when it refused this edge
    /// (`unauthorized`, `unsupported_version`), else `gateway_unreachable`.
    fn code(&self) -> CloseCode {
        match self {
            OpenError::Unavailable(GatewayUnavailable::Down(ConnectError::Refused(
                quinn::ConnectionError::ApplicationClosed(close),
            ))) => CloseCode::from_code(close.error_code.into_inner()),
            _ => CloseCode::GatewayUnreachable,
        }
    }
}

pub(crate) async fn serve(tcp: TcpStream, remote: SocketAddr, shared: &Shared) {
    let session_id = SessionId(rand::random());
    let span = tracing::info_span!("session", id = %session_id, client = %remote);
    async {
        let mut new_tracker = SessionTracker::default();
        new_tracker.fast_start = Some(FastStart::default());
        let tracker = Arc::new(Mutex::new(new_tracker));
        let waiting = Arc::<WaitTimes>::default();
        shared.telemetry.session_started(
            session_id,
            remote.to_string(),
            tracker.clone(),
            waiting.clone(),
        );
        let end = match run(tcp, session_id, shared, &tracker, waiting).await {
            Ok(end) => end,
            Err(e) => SessionEnd::new(CloseCode::ClientProtocolError, e.to_string(), EndedBy::Rtmp),
        };
        shared
            .telemetry
            .session_ended(session_id, end.code, &end.reason);
        log_session_end(&end, &tracker.lock().expect("tracker"));
    }
    .instrument(span)
    .await
}

async fn run(
    tcp: TcpStream,
    session_id: SessionId,
    shared: &Shared,
    tracker: &Mutex<SessionTracker>,
    waiting: Arc<WaitTimes>,
) -> Result<SessionEnd, RtmpIoError> {
    let conn = RtmpConnection::accept(tcp, shared.settings.handshake_timeout).await?;
    let buffer = shared.buffer.session();
    let mut client = RtmpSide::start(conn, CLIENT_QUEUE, &buffer, &waiting);
    let end = match open_tunnel(session_id, shared, tracker).await {
        Ok(opened) => {
            let mut parts = SessionParts {
                rtmp: client,
                tunnel: opened.tunnel(shared, &buffer),
            };
            let session = Session {
                peer: RtmpPeer::Client,
                tracker,
                limits: &shared.settings.session_limits,
                queue: queue_policy(shared, &buffer),
                stop: shared.drain.end_sessions(),
            };
            let mut edge = EdgeSession {
                shared,
                session_id,
                buffer,
                tracker,
            };
            let end = session.run(&mut parts, &mut edge).await;
            client = parts.rtmp;
            end
        }
        Err(e) => {
            let (code, reason) = (e.code(), e.to_string());
            refuse(&mut client.reader, &client.outbound, tracker, code, &reason).await;
            SessionEnd::new(code, reason, EndedBy::Tunnel)
        }
    };
    let (mut reader, _) = client.close(FLUSH_LIMIT).await;
    if end.ended_by != EndedBy::Rtmp {
        // The client may still be sending: let it read why before the socket closes.
        reader.discard_until_closed(LINGER).await;
    }
    Ok(end)
}

/// One session at the edge: how it re-attaches to a gateway when its tunnel is lost.
struct EdgeSession<'a> {
    shared: &'a Shared,
    session_id: SessionId,
    /// Its share of the process-wide buffer bound.
    buffer: Arc<SessionBuffer>,
    tracker: &'a Mutex<SessionTracker>,
}

impl Reattach for EdgeSession<'_> {
    async fn before_run(&mut self, _: &mut SessionParts) {}

    async fn interrupt(&mut self) -> Interrupt {
        std::future::pending().await
    }

    fn recovery(&self) -> Recovery {
        Recovery {
            set_up_again_for: self.shared.settings.reconnect_limit,
            hold_for: None,
        }
    }

    /// A new tunnel: resumed on the gateway that holds the session, else set up again through
    /// whichever gateway answers, within the reconnect limit.
    async fn recover(
        &mut self,
        loss: Loss<'_>,
        parts: &mut SessionParts,
    ) -> Result<(Recovered, ResumeFilter), SessionEnd> {
        let (shared, tracker) = (self.shared, self.tracker);
        let Loss { step, end, replay } = loss;
        let Some(replay) = replay else {
            return Err(end.clone());
        };
        let limit = shared.settings.reconnect_limit;
        warn!(
            reason = %end.reason,
            "tunnel lost under a live session: setting the session up again through a gateway (for up to {limit:?})"
        );
        let deadline = tokio::time::Instant::now() + limit;
        // The same session on a new stream, if the gateway still holds it.
        let token = tracker.lock().expect("tracker").resume_token.take();
        if let (Step::Resume, Some(token)) = (step, token) {
            match resume_within(self, token, deadline).await {
                Ok(tunnel) => {
                    parts.tunnel = tunnel;
                    info!("session resumed on the gateway that held it; media resumes at the next key frame");
                    return Ok((Recovered::Resumed, ResumeFilter::same_stream()));
                }
                Err(why) => info!(reason = %why, "not resumed; setting the session up again"),
            }
        }
        let held = {
            let t = tracker.lock().expect("tracker");
            Held {
                session_id: self.session_id,
                app: t.app.clone().unwrap_or_default(),
                stream: t.stream.clone().unwrap_or_default(),
            }
        };
        let again = SetUpAgain {
            limit,
            deadline,
            held: &held,
        };
        let (tunnel, filter) = set_up_again(self, replay, again).await?;
        parts.tunnel = tunnel;
        info!("session set up again through the gateway; media resumes at the next key frame");
        Ok((Recovered::SetUpAgain, filter))
    }

    fn recovered(&self, how: Recovered) {
        self.shared.telemetry.session_recovered(how);
    }
}

/// A session stream opened on a gateway connection (SESSION_OPEN or SESSION_RESUME sent).
struct OpenedStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    link: GatewayLink,
}

impl OpenedStream {
    /// The session's tunnel over it, carrying media as the edge is configured to; what the
    /// edge sends keeps to its budget.
    fn tunnel(self, shared: &Shared, buffer: &Arc<SessionBuffer>) -> Tunnel {
        let OpenedStream { send, recv, link } = self;
        let (carrier, latency) = (shared.settings.carrier, shared.settings.latency_budget);
        link.link
            .tunnel(send, FrameReader::new(recv), carrier, latency, buffer)
    }
}

/// A session held while it is set up again: a new publish of its stream takes over.
struct Held {
    session_id: SessionId,
    app: String,
    stream: String,
}

impl Held {
    /// The end of a held session whose pusher came back by itself (its new session publishes
    /// the same stream): this one gives way instead of meeting the new one as `BadName`.
    fn taken_over(&self, shared: &Shared) -> Option<SessionEnd> {
        shared
            .telemetry
            .publishing_elsewhere(self.session_id, &self.app, &self.stream)
            .then(|| {
                let reason = format!(
                    "taken over by a new publish of {}/{} while held",
                    self.app, self.stream
                );
                SessionEnd::new(CloseCode::Normal, reason, EndedBy::Local)
            })
    }
}

/// What a re-setup goes by: the reconnect limit (for the words), when it runs out (a resume
/// tried first may have used part of it), and the session held meanwhile.
struct SetUpAgain<'a> {
    limit: Duration,
    deadline: tokio::time::Instant,
    held: &'a Held,
}

/// Opens a new tunnel session (on whichever gateway the connector reaches) and replays the
/// client's set-up through it, with backoff, until the deadline. The origin's answers come
/// back through the tunnel and stay here: the client never left.
async fn set_up_again(
    session: &EdgeSession<'_>,
    replay: Replay,
    again: SetUpAgain<'_>,
) -> Result<(Tunnel, ResumeFilter), SessionEnd> {
    let (shared, tracker) = (session.shared, session.tracker);
    let SetUpAgain {
        limit,
        deadline,
        held,
    } = again;
    let open = || async {
        if let Some(end) = held.taken_over(shared) {
            return Err(Retry::Stop(end));
        }
        let session_id = SessionId(rand::random());
        let opened = open_tunnel(session_id, shared, tracker)
            .await
            .map_err(|e| Retry::Again(e.to_string()))?;
        info!(new_session = %session_id, "replaying the set-up through a new tunnel session");
        let tunnel = opened.tunnel(shared, &session.buffer);
        Ok(ThroughTunnel { tunnel, tracker })
    };
    let what = "session set-up through a gateway";
    match recovery::set_up_again(deadline, what, &replay, open).await {
        Ok((through, filter)) => Ok((through.tunnel, filter)),
        Err(GaveUp::Stopped(end)) => Err(end),
        Err(GaveUp::OutOfTime { attempts, last }) => {
            let reason = format!(
                "tunnel to the gateway lost and no gateway took the session within {limit:?} ({attempts} attempts; last: {last})"
            );
            Err(SessionEnd::new(
                CloseCode::TunnelLost,
                reason,
                EndedBy::Tunnel,
            ))
        }
    }
}

/// A fresh tunnel session a set-up is replayed through: the gateway carries it to the origin
/// (its new resume token is kept as it arrives).
struct ThroughTunnel<'a> {
    tunnel: Tunnel,
    tracker: &'a Mutex<SessionTracker>,
}

impl OriginExchange for ThroughTunnel<'_> {
    async fn send(&mut self, msgs: Vec<Message>) -> Result<(), String> {
        for msg in msgs {
            let frame = Frame::Msg(msg);
            self.tunnel
                .send
                .send(&frame)
                .await
                .map_err(|e| format!("tunnel: {e}"))?;
        }
        Ok(())
    }

    async fn next(&mut self) -> Result<Message, String> {
        loop {
            match self.tunnel.frames.next().await {
                Ok(Some(Frame::Msg(msg))) => return Ok(msg),
                Ok(Some(Frame::ResumeToken(token))) => {
                    self.tracker.lock().expect("tracker").resume_token = Some(token);
                }
                Ok(Some(Frame::SessionClose { code, reason })) => {
                    return Err(format!("gateway closed the session: {reason} ({code})"))
                }
                Ok(Some(other)) => return Err(format!("unexpected {other:?} while setting up")),
                Ok(None) => return Err("tunnel stream ended while setting up".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// The gateway hears why this attempt ends (not a stream that just stops).
    async fn give_up(&mut self, why: &str) {
        let reason = format!("set-up attempt given up: {why}");
        close_stream(&mut self.tunnel.send, CloseCode::Normal, &reason).await;
    }
}

/// How a session's media waits at the edge (on each tunnel's path).
fn queue_policy(shared: &Shared, buffer: &Arc<SessionBuffer>) -> QueuePolicy {
    QueuePolicy {
        budget: shared.settings.latency_budget,
        max_bytes: shared.settings.max_queue_bytes,
        pause_reading_above: shared.settings.backpressure,
        path: None,
        charge: Some(buffer.clone()),
    }
}

/// The latency budget as SESSION_OPEN and SESSION_RESUME carry it: ms, 0 for none.
fn budget_ms(shared: &Shared) -> u32 {
    shared
        .settings
        .latency_budget
        .map_or(0, |b| b.as_millis().min(u128::from(u32::MAX)) as u32)
}

/// How long the gateway has to answer a SESSION_RESUME.
const RESUME_LIMIT: Duration = Duration::from_secs(3);

/// Resumes the session with `token` on whichever gateway connection comes up before
/// `deadline`. While no gateway is reachable the token is kept and the edge waits for one:
/// spent on "unreachable", the set-up that follows meets the session the gateway still holds.
async fn resume_within(
    session: &EdgeSession<'_>,
    token: ResumeToken,
    deadline: tokio::time::Instant,
) -> Result<Tunnel, String> {
    let shared = session.shared;
    loop {
        // Never past the reconnect limit waiting for a connection.
        let wait = shared
            .settings
            .gateway_wait
            .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match resume(session, token, wait).await {
            Err(ResumeError::NoGateway(why)) if tokio::time::Instant::now() < deadline => {
                info!(reason = %why, "no gateway to resume the session on yet; waiting for one");
                tokio::time::sleep(Backoff::FIRST).await;
            }
            Err(e) => return Err(e.to_string()),
            Ok(tunnel) => return Ok(tunnel),
        }
    }
}

/// Why a resume did not happen.
#[derive(Debug, thiserror::Error)]
enum ResumeError {
    /// No gateway connection came up (the token was not shown to anyone).
    #[error("{0}")]
    NoGateway(String),
    /// A gateway answered, or the stream broke after the token went out.
    #[error("{0}")]
    Failed(String),
}

/// Takes session `session_id` over on a new stream with `token`, if the gateway the connector
/// reaches (within `wait`) still holds it; the gateway answers with a new token.
async fn resume(
    session: &EdgeSession<'_>,
    token: ResumeToken,
    wait: Duration,
) -> Result<Tunnel, ResumeError> {
    let (shared, tracker, session_id) = (session.shared, session.tracker, session.session_id);
    let link = shared
        .connector
        .connection(wait)
        .await
        .map_err(|e| ResumeError::NoGateway(e.to_string()))?;
    let attempt = async {
        let (mut send, recv) = link.link.conn.open_bi().await.map_err(|e| e.to_string())?;
        tracker.lock().expect("tracker").gateway = Some(link.address.clone());
        let latency_budget_ms = budget_ms(shared);
        let frame = Frame::SessionResume {
            session_id,
            latency_budget_ms,
            token,
            carrier: shared.settings.carrier,
        };
        write_frame(&mut send, &frame)
            .await
            .map_err(|e| StreamLost::from(e).to_string())?;
        let opened = OpenedStream {
            send,
            recv,
            link: link.clone(),
        };
        let mut tunnel = opened.tunnel(shared, &session.buffer);
        match tunnel.frames.next().await {
            Ok(Some(Frame::ResumeToken(next))) => {
                tracker.lock().expect("tracker").resume_token = Some(next);
                Ok(tunnel)
            }
            Ok(Some(Frame::SessionClose { code, reason })) => Err(format!("{reason} ({code})")),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    };
    tokio::time::timeout(RESUME_LIMIT, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {RESUME_LIMIT:?}")))
        .map_err(ResumeError::Failed)
}

async fn open_tunnel(
    session_id: SessionId,
    shared: &Shared,
    tracker: &Mutex<SessionTracker>,
) -> Result<OpenedStream, OpenError> {
    let link = shared
        .connector
        .connection(shared.settings.gateway_wait)
        .await?;
    tracker.lock().expect("tracker").gateway = Some(link.address.clone());
    let (mut send, recv) = link.link.conn.open_bi().await?;
    let latency_budget_ms = budget_ms(shared);
    let open = Frame::SessionOpen {
        session_id,
        latency_budget_ms,
        carrier: shared.settings.carrier,
    };
    write_frame(&mut send, &open)
        .await
        .map_err(StreamLost::from)?;
    Ok(OpenedStream { send, recv, link })
}

/// Waits up to [`REFUSAL_WAIT`] for the client's connect; records what it sent in `tracker`.
/// `false` if it never came (the client left, misbehaved or said nothing).
async fn wait_for_connect(
    reader: &mut RtmpReader,
    to_client: &Outbound,
    tracker: &mut SessionTracker,
) -> bool {
    let wait = async {
        loop {
            match reader.next().await {
                Ok(Some(Inbound::Message(msg))) => {
                    if tracker
                        .record(Flow::ToOrigin, &msg, std::time::Instant::now())
                        .is_err()
                    {
                        return false;
                    }
                    if tracker.connect_seen() {
                        return true;
                    }
                }
                Ok(Some(Inbound::Reply(reply))) => {
                    let _ = to_client.send(reply).await;
                }
                Ok(Some(Inbound::Silent(_))) => {}
                Ok(None) | Err(_) => return false,
            }
        }
    };
    tokio::time::timeout(REFUSAL_WAIT, wait)
        .await
        .unwrap_or(false)
}

/// Tells a client we cannot serve it: waits for its connect and answers `_error`.
async fn refuse(
    reader: &mut RtmpReader,
    to_client: &Outbound,
    tracker: &Mutex<SessionTracker>,
    code: CloseCode,
    reason: &str,
) {
    let mut t = tracker.lock().expect("tracker").clone();
    if wait_for_connect(reader, to_client, &mut t).await {
        for msg in t.failure_messages(code, reason) {
            let _ = to_client.send_unbudgeted(msg).await;
        }
    }
    *tracker.lock().expect("tracker") = t;
}

/// Serves a client the edge has no room for: completes the RTMP handshake, waits for its
/// connect and answers `_error` `NetConnection.Connect.Rejected`, so the pusher's log says
/// why instead of "Cannot read RTMP handshake response".
pub(crate) async fn refuse_full(tcp: TcpStream, handshake_limit: Duration, limit: usize) {
    let Ok(RtmpConnection { mut reader, writer }) =
        RtmpConnection::accept(tcp, handshake_limit).await
    else {
        return;
    };
    let (to_client, writer_task) = writer.spawn(16, None);
    let mut tracker = SessionTracker::default();
    if wait_for_connect(&mut reader, &to_client, &mut tracker).await {
        let txn = tracker.connect_transaction().unwrap_or(1.0);
        let reason = format!("edge full: {limit} sessions live, try again later");
        let refusal = command::error_response(txn, "NetConnection.Connect.Rejected", &reason);
        let _ = to_client.send(refusal).await;
    }
    drop(to_client);
    let _ = tokio::time::timeout(FLUSH_LIMIT, writer_task).await;
    reader.discard_until_closed(LINGER).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed_with(code: CloseCode) -> OpenError {
        let close = quinn::ApplicationClose {
            error_code: rtmpq_hop::transport::quic_code(code),
            reason: bytes::Bytes::from_static(b"why"),
        };
        let refused = ConnectError::Refused(quinn::ConnectionError::ApplicationClosed(close));
        OpenError::Unavailable(GatewayUnavailable::Down(refused))
    }

    #[test]
    fn a_refusal_keeps_the_gateways_code_and_anything_else_is_unreachable() {
        // The pusher hears why the gateway would not take this edge.
        for code in [CloseCode::Unauthorized, CloseCode::UnsupportedVersion] {
            assert_eq!(closed_with(code).code(), code);
        }
        let not_yet = OpenError::Unavailable(GatewayUnavailable::NotYet(Duration::from_secs(1)));
        assert_eq!(not_yet.code(), CloseCode::GatewayUnreachable);
        let timed_out = ConnectError::Handshake(quinn::ConnectionError::TimedOut);
        let down = OpenError::Unavailable(GatewayUnavailable::Down(timed_out));
        assert_eq!(down.code(), CloseCode::GatewayUnreachable);
        let lost = OpenError::Lost(StreamLost {
            code: None,
            reason: "reset".into(),
        });
        assert_eq!(lost.code(), CloseCode::GatewayUnreachable);
    }
}
