//! One pusher's or player's RTMP connection at the edge: the handshake and hop-by-hop protocol
//! done locally, end-to-end messages carried on one tunnel stream by the two pumps, and the
//! gateway's failures turned into RTMP errors the client understands.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtmpq_hop::handover::Handover;
use rtmpq_hop::pump::{log_session_end, QueuePolicy, RtmpPeer};
use rtmpq_hop::recovery::{self, GaveUp, OriginExchange, Retry};
use rtmpq_hop::registry::{reporting, SessionRegistry};
use rtmpq_hop::rtmp::{RtmpConnection, RtmpIoError, RtmpSide, WaitTimes};
use rtmpq_hop::session::{Interrupt, Loss, Reattach, Recovered, Session, SessionParts, Tunnel};
use rtmpq_hop::transport::PathWatch;
use rtmpq_hop::tunnel::{close_stream, TunnelRecv, TunnelSend};
use rtmpq_proto::buffer_bound::SessionBuffer;
use rtmpq_proto::fast_start::FastStart;
use rtmpq_proto::journal::{Replay, ResumeFilter};
use rtmpq_proto::message::Message;
use rtmpq_proto::session::SessionTracker;
use rtmpq_proto::session_end::{EndedBy, Recovery, SessionEnd, Step};
use rtmpq_proto::wire::{CloseCode, Frame, SessionId};
use tokio::net::TcpStream;
use tracing::{info, warn, Instrument};

use crate::quic_return::back_to_quic;
use crate::refusal::refuse;
use crate::tunnel_open::{open_tunnel, resume_within};
use crate::{Shared, Transport};

/// How long the writer toward the client may take to flush after the session ends.
pub(crate) const FLUSH_LIMIT: Duration = Duration::from_secs(5);
/// How long a client whose session the edge ended may take to read why and close.
pub(crate) const LINGER: Duration = Duration::from_secs(3);
/// Messages queued toward one client.
const CLIENT_QUEUE: usize = 1024;

pub(crate) async fn serve(tcp: TcpStream, remote: SocketAddr, shared: &Shared) {
    let session_id = SessionId(rand::random());
    let span = tracing::info_span!("session", id = %session_id, client = %remote);
    async {
        let mut new_tracker = SessionTracker::default();
        new_tracker.fast_start = Some(FastStart::default());
        let tracker = Mutex::new(new_tracker);
        let waiting = Arc::<WaitTimes>::default();
        let telemetry = &shared.telemetry;
        let reports = telemetry.session_started(session_id, remote.to_string(), waiting.clone());
        let run = run(tcp, session_id, shared, &tracker, waiting);
        let end = match reporting(&tracker, &reports, run).await {
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
            let handover = Handover::default();
            let session = Session {
                peer: RtmpPeer::Client,
                tracker,
                limits: &shared.settings.session_limits,
                queue: queue_policy(shared, &buffer),
                stop: shared.drain.end_sessions(),
                handover: &handover,
            };
            let mut edge = EdgeSession {
                shared,
                session_id,
                buffer,
                tracker,
                handover: &handover,
                tunnel_path: None,
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

/// One session at the edge: how it re-attaches to a gateway when its tunnel is lost, and
/// moves back to QUIC from the TCP carrier.
pub(crate) struct EdgeSession<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) session_id: SessionId,
    /// Its share of the process-wide buffer bound.
    pub(crate) buffer: Arc<SessionBuffer>,
    pub(crate) tracker: &'a Mutex<SessionTracker>,
    /// Its moves to a new tunnel at a key frame.
    pub(crate) handover: &'a Handover,
    /// The path of its current tunnel.
    pub(crate) tunnel_path: Option<Arc<PathWatch>>,
}

impl Reattach for EdgeSession<'_> {
    async fn before_run(&mut self, parts: &mut SessionParts) {
        self.tunnel_path = Some(parts.tunnel.path.clone());
    }

    /// With `transport = "auto"`, a session on the TCP carrier moves back to QUIC once UDP
    /// gets through again ([`crate::quic_return`]).
    async fn interrupt(&mut self) -> Interrupt {
        let on_tcp = self.tracker.lock().expect("tracker").carrier == Some("tcp");
        match &self.shared.transport {
            Transport::Auto(auto) if on_tcp => back_to_quic(self, auto).await,
            _ => std::future::pending().await,
        }
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

/// A session held while it is set up again: a new publish of its stream takes over.
struct Held {
    session_id: SessionId,
    app: String,
    stream: String,
}

impl Held {
    /// The end of a held session whose pusher came back by itself (its new session publishes
    /// the same stream): this one gives way instead of meeting the new one as `BadName`.
    fn taken_over(&self, live: &SessionRegistry) -> Option<SessionEnd> {
        live.publishing_elsewhere(self.session_id, &self.app, &self.stream)
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
        if let Some(end) = held.taken_over(shared.telemetry.live()) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rtmpq_proto::session::{Direction, SessionReport};

    #[test]
    fn a_held_session_gives_way_to_a_new_publish_of_its_stream_only() {
        let live = SessionRegistry::default();
        let held = Held {
            session_id: SessionId(1),
            app: "live".into(),
            stream: "cam".into(),
        };
        let publish = |id: u64, stream: &str, direction: Direction| {
            let reports = live.register(SessionId(id), "client".into(), Arc::default());
            reports.send_replace(SessionReport {
                app: Some("live".into()),
                stream: Some(stream.into()),
                direction: Some(direction),
                ..SessionReport::default()
            });
            reports
        };
        let _itself = publish(1, "cam", Direction::Publish);
        let _player = publish(2, "cam", Direction::Play);
        let _other = publish(3, "other", Direction::Publish);
        assert_eq!(held.taken_over(&live), None);
        let _back = publish(4, "cam", Direction::Publish);
        let end = held.taken_over(&live).expect("the pusher came back");
        assert_eq!(
            (end.code, end.ended_by),
            (CloseCode::Normal, EndedBy::Local)
        );
        assert!(end.reason.contains("live/cam"), "{}", end.reason);
    }
}
