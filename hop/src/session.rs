//! One session's life on either hop: runs of the two pumps on its RTMP side and its tunnel,
//! the recovery the core decides on after each run ([`next_step`]), and what each side hears
//! at the end. What differs between the hops is [`Reattach`]: the edge re-attaches to a
//! gateway, the gateway to an origin (or holds the session for its edge).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtmpq_proto::buffer_bound::SessionBuffer;
use rtmpq_proto::journal::{Replay, ResumeFilter};
use rtmpq_proto::session::SessionTracker;
use rtmpq_proto::session_end::{next_step, Recovery, SessionEnd, Step};
use rtmpq_proto::wire::{Carrier, CloseCode};
use tokio_util::sync::CancellationToken;

use crate::handover::Handover;
use crate::lanes::{LaneRouter, SessionRecv, SessionSend};
use crate::pump::{finish_session, run_session, QueuePolicy, RtmpPeer, SessionLimits, SessionRun};
use crate::rtmp::RtmpSide;
use crate::stream::SendHalf;
use crate::transport::PathWatch;
use crate::tunnel::FrameReader;

/// A session's tunnel: the stream (and media lanes) it runs on and the path of their
/// connection. It changes when the session resumes or is set up again.
pub struct Tunnel {
    /// What the session sends.
    pub send: SessionSend,
    /// What it receives.
    pub frames: SessionRecv,
    /// The path of the connection it runs on.
    pub path: Arc<PathWatch>,
    /// `quic` or `tcp`.
    pub carrier: &'static str,
}

impl Tunnel {
    /// Gives the tunnel up for one that replaced it: the far hop's reads of it end.
    pub fn abandon(mut self) {
        self.send.stream.reset(CloseCode::TunnelLost);
    }

    /// Ends the tunnel after what was written, for one that replaced it at a key frame: the
    /// far hop reads it to its end.
    pub fn finish(mut self) {
        self.send.stream.finish();
    }
}

/// A tunnel connection between the hops, what each of its sessions' tunnels is built from: a
/// QUIC connection (many sessions, media lanes), or a TLS connection over TCP (one session,
/// everything on it).
#[derive(Clone)]
pub struct TunnelLink {
    /// The QUIC connection; `None` on the TCP carrier.
    pub conn: Option<quinn::Connection>,
    /// Its path, kept up to date (and its send window bounded) while it lives.
    pub path: Arc<PathWatch>,
    /// Hands the media streams the far hop opens (lanes sessions) to their sessions (QUIC).
    pub lanes: Option<Arc<LaneRouter>>,
}

impl std::fmt::Debug for TunnelLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelLink")
            .field("carrier", &self.carrier())
            .finish_non_exhaustive()
    }
}

impl TunnelLink {
    /// Watches the path of `conn` and routes its media streams.
    pub fn start(conn: &quinn::Connection) -> Self {
        TunnelLink {
            conn: Some(conn.clone()),
            path: PathWatch::start(conn),
            lanes: Some(LaneRouter::start(conn)),
        }
    }

    /// A TLS connection over TCP carrying one session, its path watched by `path`
    /// ([`crate::tcp::watch_path`]).
    pub fn tcp(path: Arc<PathWatch>) -> Self {
        TunnelLink {
            conn: None,
            path,
            lanes: None,
        }
    }

    /// `quic` or `tcp`, as the status API and metrics name it.
    pub fn carrier(&self) -> &'static str {
        match self.conn {
            Some(_) => "quic",
            None => "tcp",
        }
    }

    /// The tunnel of a session on `send` / `frames` carried as `carrier` (media lanes only on
    /// QUIC): what this hop sends waits under `latency`, what it receives is charged to
    /// `buffer`.
    pub fn tunnel(
        &self,
        send: impl Into<SendHalf>,
        mut frames: FrameReader,
        carrier: Carrier,
        latency: Option<Duration>,
        buffer: &Arc<SessionBuffer>,
    ) -> Tunnel {
        frames.set_buffer(buffer.clone());
        let path = Some(self.path.clone());
        let (conn, lanes) = (self.conn.as_ref(), self.lanes.as_ref());
        Tunnel {
            send: SessionSend::carried(send.into(), carrier, conn, latency, path),
            frames: SessionRecv::carried(frames, carrier, lanes, Some(buffer.clone())),
            path: self.path.clone(),
            carrier: self.carrier(),
        }
    }
}

/// What a session runs on: its RTMP side and its tunnel, either of which a recovery replaces.
pub struct SessionParts {
    /// The client (edge) or origin (gateway) connection.
    pub rtmp: RtmpSide,
    /// The tunnel.
    pub tunnel: Tunnel,
}

/// How a session was recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovered {
    /// On a new tunnel stream of the same session (its far hop held it).
    Resumed,
    /// Its set-up replayed on a new tunnel session (edge) or origin connection (gateway).
    SetUpAgain,
}

/// A run of the session that ended in a loss the core said to recover.
pub struct Loss<'a> {
    /// What the core decided ([`Step::Resume`], [`Step::SetUpAgain`] or [`Step::Hold`]).
    pub step: Step,
    /// How the run ended.
    pub end: &'a SessionEnd,
    /// The client's set-up to replay (for a resume or set-up; `None` for a hold).
    pub replay: Option<Replay>,
}

/// What a run ended with early, besides the pumps.
pub enum Interrupt {
    /// The session ends (a right withdrawn).
    Ended(SessionEnd),
    /// The session goes on on a new tunnel stream.
    Moved(Moved),
}

/// A session's new tunnel stream, and how it came.
pub struct Moved {
    /// The new tunnel.
    pub tunnel: Tunnel,
    /// The move was made at a key frame with the old tunnel drained ([`Handover`]): the old
    /// one is finished, not reset.
    pub drained: bool,
    /// Why, as the status API shows it.
    pub why: &'static str,
}

impl Moved {
    /// `tunnel` taken over by the far hop after this hop lost the old one.
    pub fn after_loss(tunnel: Tunnel) -> Self {
        Moved {
            tunnel,
            drained: false,
            why: "the far hop moved the session to a new stream",
        }
    }
}

/// What differs between the hops in a session's life: how it re-attaches after a loss.
pub trait Reattach {
    /// Before each run: the gateway offers the edge a resume token on the tunnel.
    fn before_run(&mut self, parts: &mut SessionParts) -> impl Future<Output = ()> + Send;
    /// Cuts a run short (never ready when nothing will): the gateway's resume by its edge,
    /// withdrawn rights, the edge's move back to QUIC. Must be cancel-safe: it is raced
    /// against the pumps.
    fn interrupt(&mut self) -> impl Future<Output = Interrupt> + Send;
    /// How long this hop may spend recovering now.
    fn recovery(&self) -> Recovery;
    /// Carries out `loss.step`, replacing what was lost in `parts`; how the client's
    /// messages continue, or how the session ends.
    fn recover(
        &mut self,
        loss: Loss<'_>,
        parts: &mut SessionParts,
    ) -> impl Future<Output = Result<(Recovered, ResumeFilter), SessionEnd>> + Send;
    /// Counts a recovery where the operator sees it.
    fn recovered(&self, how: Recovered);
}

/// One session on either hop: what each run of it shares.
pub struct Session<'a> {
    /// Which RTMP peer this hop serves.
    pub peer: RtmpPeer,
    /// The session's tracker.
    pub tracker: &'a Mutex<SessionTracker>,
    /// What the hop enforces.
    pub limits: &'a SessionLimits,
    /// How media read from the RTMP peer waits (the path is each tunnel's own).
    pub queue: QueuePolicy,
    /// Cancelled: the session ends with [`CloseCode::Shutdown`].
    pub stop: &'a CancellationToken,
    /// Its moves to a new tunnel at a key frame, which its pumps carry out.
    pub handover: &'a Handover,
}

impl Session<'_> {
    /// Runs the session on `parts` until it ends, recovering what `hop` can after each run;
    /// then tells each side what it must hear. The caller closes the parts.
    pub async fn run(&self, parts: &mut SessionParts, hop: &mut impl Reattach) -> SessionEnd {
        let mut resume = None;
        loop {
            hop.before_run(parts).await;
            let end = match self.run_once(parts, hop, resume.take()).await {
                Interrupt::Ended(end) => end,
                Interrupt::Moved(moved) => {
                    let old = std::mem::replace(&mut parts.tunnel, moved.tunnel);
                    match moved.drained {
                        true => old.finish(),
                        false => old.abandon(),
                    }
                    self.lost(moved.why);
                    self.note(hop, Recovered::Resumed);
                    resume = Some(ResumeFilter::same_stream());
                    continue;
                }
            };
            let (step, replay) = {
                let t = self.tracker.lock().expect("tracker");
                let step = next_step(self.peer.hop(), &end, &t, hop.recovery());
                // A copy of the set-up and headers only for a session set up again.
                let replay = matches!(step, Step::Resume | Step::SetUpAgain)
                    .then(|| t.journal.replay())
                    .flatten();
                (step, replay)
            };
            if step == Step::Finish {
                return self.finish(end, parts).await;
            }
            self.lost(&end.reason);
            let loss = Loss {
                step,
                end: &end,
                replay,
            };
            match hop.recover(loss, parts).await {
                Ok((how, filter)) => {
                    self.note(hop, how);
                    resume = Some(filter);
                }
                Err(end) => return self.finish(end, parts).await,
            }
        }
    }

    /// One run of the pumps on `parts`, unless `hop` cuts it short.
    async fn run_once(
        &self,
        parts: &mut SessionParts,
        hop: &mut impl Reattach,
        resume: Option<ResumeFilter>,
    ) -> Interrupt {
        let SessionParts { rtmp, tunnel } = parts;
        {
            let mut t = self.tracker.lock().expect("tracker");
            t.carrier = Some(tunnel.carrier);
            t.congestion = Some(tunnel.path.controller()).filter(|c| !c.is_empty());
        }
        self.handover.new_run();
        let mut queue = self.queue.clone();
        queue.path = Some(tunnel.path.clone());
        tokio::select! {
            end = run_session(SessionRun {
                peer: self.peer,
                rtmp: &mut rtmp.reader,
                to_rtmp: &rtmp.outbound,
                tunnel_recv: &mut tunnel.frames,
                tunnel_send: &mut tunnel.send,
                tracker: self.tracker,
                limits: self.limits,
                queue,
                resume,
                stop: self.stop,
                handover: self.handover,
            }) => Interrupt::Ended(end),
            cut = hop.interrupt() => cut,
        }
    }

    /// Notes why the session is being recovered (the status API shows it meanwhile).
    fn lost(&self, why: &str) {
        let mut t = self.tracker.lock().expect("tracker");
        t.recoveries.last_loss = Some(why.to_owned());
    }

    /// Counts a recovery in the tracker and where the hop shows it.
    fn note(&self, hop: &impl Reattach, how: Recovered) {
        let mut t = self.tracker.lock().expect("tracker");
        match how {
            Recovered::Resumed => t.recoveries.resumed += 1,
            Recovered::SetUpAgain => t.recoveries.set_up_again += 1,
        }
        drop(t);
        hop.recovered(how);
    }

    /// Tells each side how the session ended.
    async fn finish(&self, end: SessionEnd, parts: &mut SessionParts) -> SessionEnd {
        let (outbound, send) = (&parts.rtmp.outbound, &mut parts.tunnel.send);
        finish_session(self.peer, &end, self.tracker, outbound, send).await;
        end
    }
}
