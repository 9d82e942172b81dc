//! One RTMP session at the gateway: SESSION_OPEN, a TCP connection and client handshake to the
//! origin, then the two pumps until either side ends.

use std::sync::{Arc, Mutex};

use std::time::Duration;

use rtmpq_hop::handover::{Handover, KEY_FRAME_WAIT};
use rtmpq_hop::pump::{log_session_end, QueuePolicy, RtmpPeer};
use rtmpq_hop::recovery::{self, GaveUp, Retry};
use rtmpq_hop::registry::reporting;
use rtmpq_hop::rtmp::{RtmpSide, WaitTimes};
use rtmpq_hop::session::{
    Interrupt, Loss, Moved, Reattach, Recovered, Session, SessionParts, Tunnel, TunnelLink,
};
use rtmpq_hop::stream::SendHalf;
use rtmpq_hop::transport::PathWatch;
use rtmpq_hop::tunnel::{close_stream, write_frame, FrameReader, TunnelRecv};
use rtmpq_proto::buffer_bound::{BufferBound, SessionBuffer};
use rtmpq_proto::journal::{Replay, ResumeFilter};
use rtmpq_proto::session::SessionTracker;
use rtmpq_proto::session_end::{EndedBy, Recovery, SessionEnd, Step};
use rtmpq_proto::wire::{Carrier, CloseCode, Frame, SessionId};
use std::convert::Infallible;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn, Instrument};

use crate::access::{rights_withdrawn, AccessPolicy, Credentials};
use crate::resumable::{handed_over, EdgeIdentity, SessionOwner};
use crate::{origin, Shared};

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

/// Serves one session stream of an admitted edge: SESSION_OPEN starts a session (run until it
/// ends), SESSION_RESUME hands the stream to the live session it names.
pub(crate) async fn serve(
    send: SendHalf,
    frames: FrameReader,
    shared: &Shared,
    who: Who,
    link: EdgeLink,
) {
    let buffer = link.buffer.session();
    let Some(opened) = read_open(send, frames, shared, &who, &link, &buffer).await else {
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
        tracker.rights = Some(
            access
                .borrow_and_update()
                .rights_of(&who.creds, &who.edge_id),
        );
        let tracker = Mutex::new(tracker);
        let waiting = Arc::<WaitTimes>::default();
        let telemetry = &shared.telemetry;
        let reports = telemetry.session_started(session_id, who.peer.clone(), waiting.clone());
        // What the origin sends (a player's media) waits under the budget the edge asked for.
        let queue = QueuePolicy {
            budget: (latency_budget_ms > 0)
                .then(|| Duration::from_millis(u64::from(latency_budget_ms))),
            charge: Some(buffer.clone()),
            ..QueuePolicy::default()
        };
        let handover = Handover::default();
        let session = GatewaySession {
            shared,
            session_id,
            who: &who,
            tracker: &tracker,
            buffer,
            waiting,
            access,
            owner: SessionOwner::new(),
            handoff: None,
            handover: &handover,
            tunnel_path: None,
        };
        let end = reporting(&tracker, &reports, session.run(tunnel, queue)).await;
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

/// Reads a session stream's first frame from `frames` (read with the control limit until
/// then: a stream that announces a large first frame is refused at once, not buffered): a
/// SESSION_OPEN of a new id is a new session; a SESSION_RESUME hands the stream to the session
/// it names (or is refused with why); anything else, nothing in time, or an id in use is
/// refused. `None` once the stream is dealt with.
async fn read_open(
    mut send: SendHalf,
    mut frames: FrameReader,
    shared: &Shared,
    who: &Who,
    link: &EdgeLink,
    buffer: &Arc<SessionBuffer>,
) -> Option<Opened> {
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

/// The edge connection a session stream arrived on: what its tunnel is built from.
#[derive(Clone)]
pub(crate) struct EdgeLink {
    pub(crate) link: TunnelLink,
    /// The connection's share of the process-wide buffer bound.
    pub(crate) buffer: BufferBound,
}

impl EdgeLink {
    /// The tunnel of a session opened on `send`/`frames` with `carrier`; what the gateway
    /// sends keeps to the budget the edge asked for.
    fn tunnel(
        &self,
        send: SendHalf,
        frames: FrameReader,
        carrier: Carrier,
        latency_budget_ms: u32,
        buffer: &Arc<SessionBuffer>,
    ) -> Tunnel {
        let latency =
            (latency_budget_ms > 0).then(|| Duration::from_millis(u64::from(latency_budget_ms)));
        self.link.tunnel(send, frames, carrier, latency, buffer)
    }
}

/// One session at the gateway: how it re-attaches (to its edge's new stream, or to a new
/// origin connection) and ends when a reload withdraws its rights.
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
    /// The access policy, watched for reloads.
    access: watch::Receiver<Arc<AccessPolicy>>,
    /// Its claim on the resume registry.
    owner: SessionOwner,
    /// The stream of the edge's SESSION_RESUME, once offered on the current tunnel.
    handoff: Option<oneshot::Receiver<Tunnel>>,
    /// Its moves to a new stream at a key frame.
    handover: &'a Handover,
    /// The path of the current tunnel.
    tunnel_path: Option<Arc<PathWatch>>,
}

impl GatewaySession<'_> {
    /// Runs the session from its first tunnel stream to its end: connects to the origin, then
    /// runs it ([`Session::run`]) with `queue` for what the origin sends.
    async fn run(mut self, mut tunnel: Tunnel, queue: QueuePolicy) -> SessionEnd {
        let shared = self.shared;
        let rtmp = match origin::open(shared, &self.buffer, &self.waiting).await {
            Ok(rtmp) => rtmp,
            Err(e) => {
                let end = e.end();
                close_stream(&mut tunnel.send.stream, end.code, &end.reason).await;
                return end;
            }
        };
        let mut parts = SessionParts { rtmp, tunnel };
        let session = Session {
            peer: RtmpPeer::Origin,
            tracker: self.tracker,
            limits: &shared.settings.session_limits,
            queue,
            stop: shared.drain.end_sessions(),
            handover: self.handover,
        };
        let end = session.run(&mut parts, &mut self).await;
        shared.resumable.withdraw(self.session_id, self.owner);
        origin::close(parts.rtmp).await;
        end
    }

    /// Holds a session whose tunnel was lost (`end`) for its edge's hold time, the origin
    /// connection kept alive: the stream the edge resumes it on, or `None` (not resumed in
    /// time, or the origin went meanwhile).
    async fn hold(&mut self, end: &SessionEnd, parts: &mut SessionParts) -> Option<Tunnel> {
        let grace = self.who.hold;
        warn!(reason = %end.reason, "tunnel lost under a live session: holding it for {grace:?} for its edge to resume it");
        // Nothing more is read from the lost stream or its media lanes while held.
        TunnelRecv::stop(&mut parts.tunnel.frames, CloseCode::TunnelLost);
        let held = tokio::select! {
            new = handed_over(&mut self.handoff) => Some(new),
            _ = tokio::time::sleep(grace) => None,
            _ = origin::keep_alive(&mut parts.rtmp) => None,
        };
        if held.is_none() {
            info!("not resumed within {grace:?}: the session ends");
        }
        held
    }

    /// Sets the session up again on a new origin connection after the origin went (`end`).
    async fn origin_again(
        &self,
        end: &SessionEnd,
        replay: Replay,
        parts: &mut SessionParts,
    ) -> Result<ResumeFilter, SessionEnd> {
        let limit = self.shared.settings.origin_retry;
        warn!(
            reason = %end.reason,
            "origin lost under a live session: setting the session up again (for up to {limit:?})"
        );
        // Nothing more is written to the origin that went.
        parts.rtmp.abort();
        let (link, filter) = set_up_again(self, replay, limit).await?;
        std::mem::replace(&mut parts.rtmp, link).abort();
        info!("session set up again on the origin; media resumes at the next key frame");
        Ok(filter)
    }
}

/// An old tunnel that has left nothing unacknowledged for longer than this still carries: the
/// edge that resumed the session on a new stream moves it by choice (back to QUIC), it did
/// not lose the old one.
const OLD_TUNNEL_CARRIES: Duration = Duration::from_millis(500);
/// How long draining the old tunnel may take once the cut is made, beyond the wait for a key
/// frame.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

impl GatewaySession<'_> {
    /// The edge's new stream for this session. If the old tunnel still carries (the edge moves
    /// the session by choice), what the origin sends is cut before its next key frame,
    /// everything before it goes down the old tunnel, and the old tunnel is finished: the edge
    /// reads it to its end and its player misses nothing. If the edge lost the old tunnel, the
    /// session moves at once.
    async fn take_over(&self, tunnel: Tunnel) -> Moved {
        let carries = self
            .tunnel_path
            .as_ref()
            .is_some_and(|p| p.unacknowledged_for() < OLD_TUNNEL_CARRIES);
        if !carries {
            return Moved::after_loss(tunnel);
        }
        self.handover.ask();
        let limit = KEY_FRAME_WAIT + DRAIN_LIMIT;
        if tokio::time::timeout(limit, self.handover.drained())
            .await
            .is_err()
        {
            warn!("the old stream did not drain within {limit:?}: the session moves without it");
            return Moved::after_loss(tunnel);
        }
        info!("its edge moved the session to a new stream: cut at a key frame, the old stream drained and finished");
        Moved {
            tunnel,
            drained: true,
            why: "its edge moved it to a new stream at a key frame",
        }
    }
}

impl Reattach for GatewaySession<'_> {
    /// Offers the session for a resume by its edge with a new single-use token (one for each
    /// stream the session runs on). Not offered when its sessions are not held (an edge with
    /// other gateways) or the token could not be sent.
    async fn before_run(&mut self, parts: &mut SessionParts) {
        self.handoff = None;
        self.tunnel_path = Some(parts.tunnel.path.clone());
        if self.who.hold.is_zero() {
            return;
        }
        let resumable = &self.shared.resumable;
        let Some((token, rx)) = resumable.offer(self.session_id, &self.who.edge, self.owner) else {
            return;
        };
        let sent = write_frame(&mut parts.tunnel.send.stream, &Frame::ResumeToken(token)).await;
        self.handoff = sent.is_ok().then_some(rx);
    }

    /// The edge took the session over on a new stream ([`GatewaySession::take_over`]), or a
    /// reload withdrew its rights.
    async fn interrupt(&mut self) -> Interrupt {
        let new = tokio::select! {
            new = handed_over(&mut self.handoff) => new,
            end = rights_withdrawn(&mut self.access, &self.who.creds, &self.who.edge_id, self.tracker) => return Interrupt::Ended(end),
        };
        Interrupt::Moved(self.take_over(new).await)
    }

    fn recovery(&self) -> Recovery {
        Recovery {
            set_up_again_for: self.shared.settings.origin_retry,
            hold_for: self.handoff.as_ref().map(|_| self.who.hold),
        }
    }

    async fn recover(
        &mut self,
        loss: Loss<'_>,
        parts: &mut SessionParts,
    ) -> Result<(Recovered, ResumeFilter), SessionEnd> {
        let Loss { step, end, replay } = loss;
        if step == Step::Hold {
            if let Some(new) = self.hold(end, parts).await {
                parts.tunnel = new;
                return Ok((Recovered::Resumed, ResumeFilter::same_stream()));
            }
        }
        self.shared.resumable.withdraw(self.session_id, self.owner);
        match replay {
            Some(replay) if step == Step::SetUpAgain => {
                let filter = self.origin_again(end, replay, parts).await?;
                Ok((Recovered::SetUpAgain, filter))
            }
            _ => Err(end.clone()),
        }
    }

    fn recovered(&self, how: Recovered) {
        self.shared.telemetry.session_recovered(how);
    }
}

/// Connects to the origin and replays the session's set-up, with backoff, for up to `limit`.
/// nginx-rtmp answers a publish of a name it still holds with `NetStream.Publish.BadName`
/// until it notices the old publisher is gone: that is retried too.
async fn set_up_again(
    session: &GatewaySession<'_>,
    replay: Replay,
    limit: Duration,
) -> Result<(RtmpSide, ResumeFilter), SessionEnd> {
    let (shared, buffer, waiting) = (session.shared, &session.buffer, &session.waiting);
    let deadline = tokio::time::Instant::now() + limit;
    let open = || async {
        origin::open(shared, buffer, waiting)
            .await
            .map_err(|e| Retry::<Infallible>::Again(e.to_string()))
    };
    let what = "session set-up on the origin";
    recovery::set_up_again(deadline, what, &replay, open)
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
