//! One RTMP session at the gateway: SESSION_OPEN, a TCP connection and client handshake to the
//! origin, then the two pumps until either side ends.

use std::sync::{Arc, Mutex};

use rtmpq_hop::transport::quic_code;
use rtmpq_hop::tunnel::write_frame;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

use rtmpq_hop::lanes::{LaneRouter, SessionRecv, SessionSend};
use rtmpq_hop::pump::{
    finish_session, log_session_end, run_session, QueuePolicy, RtmpPeer, SessionRun,
};
use rtmpq_hop::recovery::{replay_set_up, retry_until, GaveUp, Retry};
use rtmpq_hop::rtmp::{Inbound, RtmpConnection, RtmpIoError, RtmpSide, WaitTimes, WriterEnd};
use rtmpq_hop::transport::PathWatch;
use rtmpq_hop::tunnel::{close_stream, FrameReader, TunnelRecv};
use rtmpq_proto::buffer_bound::{BufferBound, SessionBuffer};
use rtmpq_proto::journal::{Replay, ResumeFilter};
use rtmpq_proto::session::SessionTracker;
use rtmpq_proto::session_end::{next_step, EndedBy, Hop, Recovery, SessionEnd, Step};
use rtmpq_proto::wire::{Carrier, CloseCode, Frame, SessionId};
use std::convert::Infallible;
use tokio::net::TcpStream;
use tracing::{info, warn, Instrument};

use crate::access::{AccessPolicy, Credentials};
use crate::resumable::{handed_over, EdgeIdentity, SessionOwner};
use crate::Shared;
use rtmpq_proto::access::Rights;

/// How long the writer toward the origin may take to flush after the session ends.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);
/// Messages queued toward the origin.
const ORIGIN_QUEUE: usize = 1024;

/// Who a session belongs to: the edge as its connection proved it.
pub(crate) struct Who {
    /// What the edge calls itself and the address its connection comes from.
    pub peer: String,
    /// Who may resume its sessions.
    pub edge: EdgeIdentity,
    /// What the edge calls itself (HELLO).
    pub edge_id: String,
    /// What it proved: judged against the access policy now and after each reload.
    pub creds: Arc<Credentials>,
    /// How long its sessions are held for a resume when their tunnel is lost (zero for an
    /// edge that has other gateways: it moves them there).
    pub hold: Duration,
}

impl Who {
    /// Its rights under `policy` (none at all once the policy no longer lists it).
    fn rights(&self, policy: &AccessPolicy) -> Arc<Rights> {
        policy
            .admit(&self.creds, &self.edge_id)
            .unwrap_or_else(|refused| Arc::new(Rights::nothing(refused.identity)))
    }
}

/// Ends when a reloaded access policy takes away the right the session uses; meanwhile keeps
/// the tracker's rights current (a session not set up yet is judged when it asks).
async fn rights_withdrawn(
    access: &mut watch::Receiver<Arc<AccessPolicy>>,
    who: &Who,
    tracker: &Mutex<SessionTracker>,
) -> SessionEnd {
    loop {
        if access.changed().await.is_err() {
            return std::future::pending().await;
        }
        let rights = who.rights(&access.borrow_and_update());
        let mut t = tracker.lock().expect("tracker");
        t.rights = Some(rights);
        if let Some(why) = t.refusal() {
            let reason = format!("{why} (rights changed on reload)");
            return SessionEnd::new(CloseCode::Unauthorized, reason, EndedBy::Local);
        }
    }
}

/// Serves one session stream of an admitted edge: SESSION_OPEN starts a session (run until it
/// ends), SESSION_RESUME hands the stream to the live session it names.
pub(crate) async fn serve(
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    shared: &Shared,
    who: Who,
    link: EdgeLink,
) {
    let buffer = link.buffer.session();
    let Some(opened) = read_open(send, recv, shared, &who, &link, &buffer).await else {
        return;
    };
    let Opened {
        session_id,
        latency_budget_ms,
        tunnel,
    } = opened;
    let span = tracing::info_span!("session", id = %session_id);
    async {
        let mut access = shared.access.subscribe();
        let mut tracker = SessionTracker::default();
        tracker.rights = Some(who.rights(&access.borrow_and_update()));
        let tracker = Arc::new(Mutex::new(tracker));
        let waiting = Arc::<WaitTimes>::default();
        let (peer, registered) = (who.peer.clone(), tracker.clone());
        let telemetry = &shared.telemetry;
        telemetry.session_started(session_id, peer, registered, waiting.clone());
        // What the origin sends (a player's media) waits under the budget the edge asked for.
        let queue = QueuePolicy {
            budget: (latency_budget_ms > 0)
                .then(|| Duration::from_millis(u64::from(latency_budget_ms))),
            charge: Some(buffer.clone()),
            ..QueuePolicy::default()
        };
        let session = GatewaySession {
            shared,
            session_id,
            who: &who,
            tracker: &tracker,
            buffer,
            waiting,
        };
        let end = session.run(tunnel, queue, &mut access).await;
        telemetry.session_ended(session_id, end.code, &end.reason);
        let t = tracker.lock().expect("tracker");
        if let (CloseCode::Unauthorized, Some(rights), Some(direction)) =
            (end.code, &t.rights, t.direction)
        {
            telemetry.unauthorized(&rights.identity, direction.as_str());
        }
        log_session_end(&end, &t);
    }
    .instrument(span)
    .await
}

/// A new session's first frame read: its id, the budget its edge asked for, its tunnel.
struct Opened {
    session_id: SessionId,
    latency_budget_ms: u32,
    tunnel: Tunnel,
}

/// Reads a session stream's first frame: a SESSION_OPEN of a new id is a new session; a
/// SESSION_RESUME hands the stream to the session it names (or is refused with why); anything
/// else, nothing in time, or an id in use is refused. `None` once the stream is dealt with.
async fn read_open(
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    shared: &Shared,
    who: &Who,
    link: &EdgeLink,
    buffer: &Arc<SessionBuffer>,
) -> Option<Opened> {
    // Until SESSION_OPEN or SESSION_RESUME (tens of bytes), only small frames: a stream that
    // announces a large first frame is refused at once, not buffered.
    let mut frames = FrameReader::control(recv);
    let open = tokio::time::timeout(shared.settings.handshake_timeout, frames.next()).await;
    frames.lift_limit();
    frames.set_buffer(buffer.clone());
    let reason = match open {
        Ok(Ok(Some(Frame::SessionOpen {
            session_id,
            latency_budget_ms,
            carrier,
        }))) if !shared.resumable.holds(session_id) => {
            let tunnel = link.tunnel(send, frames, carrier, latency_budget_ms, buffer);
            return Some(Opened {
                session_id,
                latency_budget_ms,
                tunnel,
            });
        }
        // Edges choose ids at random; one that names a live session here is not that
        // session's (it would resume it) and must not take its place.
        Ok(Ok(Some(Frame::SessionOpen { session_id, .. }))) => {
            format!("session id {session_id} is in use by a live session here")
        }
        Ok(Ok(Some(Frame::SessionResume {
            session_id,
            token,
            latency_budget_ms,
            carrier,
        }))) => {
            let tunnel = link.tunnel(send, frames, carrier, latency_budget_ms, buffer);
            match shared
                .resumable
                .hand_over(session_id, &token, &who.edge, tunnel)
            {
                Ok(()) => info!(session = %session_id, "session resumed on a new stream"),
                Err(refused) => {
                    let (mut tunnel, why) = *refused;
                    warn!(session = %session_id, code = %CloseCode::ResumeRefused, reason = %why, "resume refused");
                    close_stream(&mut tunnel.send.stream, CloseCode::ResumeRefused, &why).await;
                }
            }
            return None;
        }
        Err(_) => "no SESSION_OPEN in time".to_owned(),
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(frame)) => format!("expected SESSION_OPEN, got {frame:?}"),
    };
    warn!(code = %CloseCode::ProtocolViolation, %reason, "session refused");
    TunnelRecv::stop(&mut frames, CloseCode::ProtocolViolation);
    close_stream(&mut send, CloseCode::ProtocolViolation, &reason).await;
    None
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

/// Closes the origin side: everything queued is written first (for up to [`FLUSH_LIMIT`]).
async fn close_origin(link: RtmpSide) {
    match link.close(FLUSH_LIMIT).await.1 {
        WriterEnd::Failed(e) => info!(reason = %e, "origin write side ended with an error"),
        WriterEnd::Stalled => warn!("origin did not take the last messages within {FLUSH_LIMIT:?}"),
        WriterEnd::Flushed => {}
    }
}

/// A session's tunnel (it changes when the edge resumes the session on a new stream).
pub(crate) struct Tunnel {
    send: SessionSend,
    frames: SessionRecv,
    path: Arc<PathWatch>,
}

/// The edge connection a session stream arrived on: what its tunnel is built from.
#[derive(Clone)]
pub(crate) struct EdgeLink {
    pub(crate) conn: quinn::Connection,
    pub(crate) path: Arc<PathWatch>,
    pub(crate) lanes: Arc<LaneRouter>,
    /// The connection's share of the process-wide buffer bound.
    pub(crate) buffer: BufferBound,
}

impl EdgeLink {
    /// The tunnel of a session opened on `send`/`frames` with `carrier`; what the gateway
    /// sends keeps to the budget the edge asked for.
    fn tunnel(
        &self,
        send: quinn::SendStream,
        frames: FrameReader,
        carrier: Carrier,
        latency_budget_ms: u32,
        buffer: &Arc<SessionBuffer>,
    ) -> Tunnel {
        let latency =
            (latency_budget_ms > 0).then(|| Duration::from_millis(u64::from(latency_budget_ms)));
        Tunnel {
            send: SessionSend::carried(send, carrier, &self.conn, latency, Some(self.path.clone())),
            frames: SessionRecv::carried(frames, carrier, &self.lanes, Some(buffer.clone())),
            path: self.path.clone(),
        }
    }
}

/// Reads the origin while its session is held: answers what the hop must answer, drops the
/// rest; returns when the origin connection ends.
async fn keep_origin_alive(link: &mut RtmpSide) {
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

/// Notes a session resumed on a new stream after it lost its tunnel (`lost`: why).
fn note_resumed(shared: &Shared, tracker: &Mutex<SessionTracker>, lost: &str) {
    let mut t = tracker.lock().expect("tracker");
    t.recoveries.resumed += 1;
    t.recoveries.last_loss = Some(lost.to_owned());
    shared.telemetry.session_resumed();
}

/// How a turn of the session loop ended.
enum Turn {
    Ended(SessionEnd),
    Resumed(Tunnel),
}

/// One session at the gateway, what every run of it is built from.
struct GatewaySession<'a> {
    shared: &'a Shared,
    session_id: SessionId,
    /// The edge it belongs to.
    who: &'a Who,
    tracker: &'a Mutex<SessionTracker>,
    /// Its share of the process-wide buffer bound.
    buffer: Arc<SessionBuffer>,
    /// The messages waiting for its origin writer (whichever origin connection is current).
    waiting: Arc<WaitTimes>,
}

impl GatewaySession<'_> {
    /// Runs the session from its first tunnel stream to its end: connects to the origin, runs
    /// the pumps, takes a stream its edge resumes it on, holds it for a resume when its tunnel
    /// is lost, sets it up again on a new origin connection when the origin goes, and ends it
    /// when a reload withdraws its rights.
    async fn run(
        self,
        mut tunnel: Tunnel,
        mut queue: QueuePolicy,
        access: &mut watch::Receiver<Arc<AccessPolicy>>,
    ) -> SessionEnd {
        let (shared, tracker) = (self.shared, self.tracker);
        let mut link = match connect_origin(shared).await {
            Ok(conn) => RtmpSide::start(conn, ORIGIN_QUEUE, &self.buffer, &self.waiting),
            Err(e) => {
                let end = e.end();
                close_stream(&mut tunnel.send.stream, end.code, &end.reason).await;
                return end;
            }
        };
        let owner = SessionOwner::new();
        let mut resume = None;
        loop {
            let mut handoff = self.offer_resume(owner, &mut tunnel).await;
            queue.path = Some(tunnel.path.clone());
            let turn = tokio::select! {
                end = run_session(SessionRun {
                    peer: RtmpPeer::Origin,
                    rtmp: &mut link.reader,
                    to_rtmp: &link.outbound,
                    tunnel_recv: &mut tunnel.frames,
                    tunnel_send: &mut tunnel.send,
                    tracker,
                    limits: &shared.settings.session_limits,
                    queue: queue.clone(),
                    resume: resume.take(),
                    stop: shared.drain.end_sessions(),
                }) => Turn::Ended(end),
                // The edge took the session over on a new stream (it lost the old one first).
                new = handed_over(&mut handoff) => Turn::Resumed(new),
                end = rights_withdrawn(access, self.who, tracker) => Turn::Ended(end),
            };
            let end = match turn {
                Turn::Resumed(new) => {
                    note_resumed(
                        shared,
                        tracker,
                        "the edge moved the session to a new stream",
                    );
                    let mut old = std::mem::replace(&mut tunnel, new);
                    old.send.stream.reset(quic_code(CloseCode::TunnelLost)).ok();
                    resume = Some(ResumeFilter::same_stream());
                    continue;
                }
                Turn::Ended(end) => end,
            };
            let recovery = Recovery {
                set_up_again_for: shared.settings.origin_retry,
                hold_for: handoff.as_ref().map(|_| self.who.hold),
            };
            let step = next_step(
                Hop::Gateway,
                &end,
                &tracker.lock().expect("tracker"),
                recovery,
            );
            if step == Step::Hold {
                if let Some(new) = self.hold(&end, &mut handoff, &mut tunnel, &mut link).await {
                    tunnel = new;
                    resume = Some(ResumeFilter::same_stream());
                    continue;
                }
            }
            shared.resumable.withdraw(self.session_id, owner);
            // The journal's replay (a copy of the set-up and headers) only when it is used.
            let replay = (step == Step::SetUpAgain)
                .then(|| tracker.lock().expect("tracker").journal.replay())
                .flatten();
            let Some(replay) = replay else {
                let (outbound, send) = (&link.outbound, &mut tunnel.send);
                finish_session(RtmpPeer::Origin, &end, tracker, outbound, send).await;
                close_origin(link).await;
                return end;
            };
            link.abort();
            match self.origin_again(&end, replay).await {
                Ok((new_link, filter)) => {
                    link = new_link;
                    resume = Some(filter);
                }
                Err(end) => {
                    close_stream(&mut tunnel.send.stream, end.code, &end.reason).await;
                    return end;
                }
            }
        }
    }

    /// Offers the session for a resume by its edge with a new single-use token (one for each
    /// stream the session runs on), sent on `tunnel`; the receiver gets the stream of a
    /// SESSION_RESUME. `None` when its sessions are not held (an edge with other gateways) or
    /// the token could not be sent.
    async fn offer_resume(
        &self,
        owner: SessionOwner,
        tunnel: &mut Tunnel,
    ) -> Option<oneshot::Receiver<Tunnel>> {
        if self.who.hold.is_zero() {
            return None;
        }
        let resumable = &self.shared.resumable;
        let (token, rx) = resumable.offer(self.session_id, &self.who.edge, owner)?;
        let sent = write_frame(&mut tunnel.send.stream, &Frame::ResumeToken(token)).await;
        sent.is_ok().then_some(rx)
    }

    /// Holds a session whose tunnel was lost (`end`) for its edge's hold time, the origin
    /// connection kept alive: the stream the edge resumes it on, or `None` (not resumed in
    /// time, or the origin went meanwhile).
    async fn hold(
        &self,
        end: &SessionEnd,
        handoff: &mut Option<oneshot::Receiver<Tunnel>>,
        tunnel: &mut Tunnel,
        link: &mut RtmpSide,
    ) -> Option<Tunnel> {
        let grace = self.who.hold;
        warn!(reason = %end.reason, "tunnel lost under a live session: holding it for {grace:?} for its edge to resume it");
        // Nothing more is read from the lost stream or its media lanes while held.
        TunnelRecv::stop(&mut tunnel.frames, CloseCode::TunnelLost);
        let held = tokio::select! {
            new = handed_over(handoff) => Some(new),
            _ = tokio::time::sleep(grace) => None,
            _ = keep_origin_alive(link) => None,
        };
        match &held {
            Some(_) => note_resumed(self.shared, self.tracker, &end.reason),
            None => info!("not resumed within {grace:?}: the session ends"),
        }
        held
    }

    /// Sets the session up again on a new origin connection after the origin went (`end`).
    async fn origin_again(
        &self,
        end: &SessionEnd,
        replay: Replay,
    ) -> Result<(RtmpSide, ResumeFilter), SessionEnd> {
        let shared = self.shared;
        let limit = shared.settings.origin_retry;
        warn!(
            reason = %end.reason,
            "origin lost under a live session: setting the session up again (for up to {limit:?})"
        );
        let again = set_up_again(shared, &self.buffer, &self.waiting, replay, limit).await?;
        let mut t = self.tracker.lock().expect("tracker");
        t.recoveries.set_up_again += 1;
        t.recoveries.last_loss = Some(end.reason.clone());
        drop(t);
        shared.telemetry.session_set_up_again();
        info!("session set up again on the origin; media resumes at the next key frame");
        Ok(again)
    }
}

/// Connects to the origin and replays the session's set-up, with backoff, for up to `limit`.
/// nginx-rtmp answers a publish of a name it still holds with `NetStream.Publish.BadName`
/// until it notices the old publisher is gone: that is retried too.
async fn set_up_again(
    shared: &Shared,
    buffer: &Arc<SessionBuffer>,
    waiting: &Arc<WaitTimes>,
    replay: Replay,
    limit: Duration,
) -> Result<(RtmpSide, ResumeFilter), SessionEnd> {
    let deadline = tokio::time::Instant::now() + limit;
    let attempt = || {
        let replay = replay.clone();
        async move {
            let conn = connect_origin(shared)
                .await
                .map_err(|e| Retry::Again(e.to_string()))?;
            let mut link = RtmpSide::start(conn, ORIGIN_QUEUE, buffer, waiting);
            let filter = replay_set_up(replay, &mut link)
                .await
                .map_err(Retry::Again)?;
            Ok::<_, Retry<Infallible>>((link, filter))
        }
    };
    retry_until(deadline, "session set-up on the origin", attempt)
        .await
        .map_err(|gave_up| {
            // An attempt here never says stop (`Infallible`): only the deadline ends them.
            let GaveUp::OutOfTime { attempts, last } = gave_up;
            let reason = format!(
                "origin {} lost and not back within {limit:?} ({attempts} attempts; last: {last})",
                shared.origin
            );
            SessionEnd::new(CloseCode::OriginUnreachable, reason, EndedBy::Rtmp)
        })
}
