//! One session across a hop: two one-way pumps, [`RtmpToTunnel`] and [`TunnelToRtmp`], each
//! with its own state and sharing the session's tracker, run side by side by [`run_session`]
//! until either ends; [`finish_session`] then tells each side what it must hear. Both hops use
//! them: at the edge the RTMP peer is the client, at the gateway it is the origin.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rtmpq_proto::chunk::ChunkError;
use rtmpq_proto::message::{Control, MessageClass};
use rtmpq_proto::session::{Flow, SessionTracker};
use rtmpq_proto::wire::{CloseCode, Frame};
use tokio_util::sync::CancellationToken;

use crate::rtmp::{Inbound, Outbound, OutboundError, RtmpIoError, RtmpReader};
use crate::tunnel::{close_stream, FrameReadError, StreamLost, TunnelRecv, TunnelSend};

/// Which RTMP peer a hop serves a session for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtmpPeer {
    /// The edge's peer: a pusher or player.
    Client,
    /// The gateway's peer: the origin.
    Origin,
}

impl RtmpPeer {
    fn name(self) -> &'static str {
        match self {
            RtmpPeer::Client => "client",
            RtmpPeer::Origin => "origin",
        }
    }

    /// The flow of the messages this hop reads from its RTMP peer.
    pub fn from_rtmp(self) -> Flow {
        match self {
            RtmpPeer::Client => Flow::ToOrigin,
            RtmpPeer::Origin => Flow::ToClient,
        }
    }

    /// The flow of the messages this hop reads from the tunnel.
    pub fn from_tunnel(self) -> Flow {
        match self {
            RtmpPeer::Client => Flow::ToClient,
            RtmpPeer::Origin => Flow::ToOrigin,
        }
    }

    /// The close code for bad RTMP from this peer.
    fn protocol_error(self) -> CloseCode {
        match self {
            RtmpPeer::Client => CloseCode::ClientProtocolError,
            RtmpPeer::Origin => CloseCode::OriginProtocolError,
        }
    }

    /// How this hop names the far end of the tunnel.
    fn tunnel_name(self) -> &'static str {
        match self {
            RtmpPeer::Client => "tunnel to the gateway",
            RtmpPeer::Origin => "tunnel from the edge",
        }
    }

    /// The end of a session whose RTMP peer went away (`how`): normal for a client, the
    /// origin closing for an origin.
    fn closed(self, how: &str) -> SessionEnd {
        let code = match self {
            RtmpPeer::Client => CloseCode::Normal,
            RtmpPeer::Origin => CloseCode::OriginClosed,
        };
        SessionEnd::new(code, format!("{} {how}", self.name()), EndedBy::Rtmp)
    }

    fn hop_name(self) -> &'static str {
        match self {
            RtmpPeer::Client => "edge",
            RtmpPeer::Origin => "gateway",
        }
    }
}

/// What a hop enforces on a session besides the codec's limits.
#[derive(Debug, Clone, Default)]
pub struct SessionLimits {
    /// The client must ask to publish or play within this long of the session's start.
    pub setup_deadline: Option<Duration>,
    /// The RTMP peer is pinged after this long without a byte from it, and the session ends
    /// after twice this long (set on the client-facing side only: an idle player still
    /// answers pings, a dead or hostile one does not).
    pub silence_period: Option<Duration>,
}

/// Which side ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    /// The RTMP peer closed or misbehaved.
    Rtmp,
    /// The far hop sent SESSION_CLOSE.
    RemoteClose,
    /// The tunnel stream broke or carried bad frames.
    Tunnel,
    /// This hop ended it (shutdown, a deadline).
    Local,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnd {
    /// The close code.
    pub code: CloseCode,
    /// Words for the log and for the client.
    pub reason: String,
    /// Who ended it.
    pub ended_by: EndedBy,
}

impl SessionEnd {
    /// A session ended with `code` for `reason`.
    pub fn new(code: CloseCode, reason: impl Into<String>, ended_by: EndedBy) -> Self {
        SessionEnd {
            code,
            reason: reason.into(),
            ended_by,
        }
    }

    fn queue_failed(peer: RtmpPeer, e: OutboundError) -> Self {
        match e {
            OutboundError::Overloaded(e) => {
                SessionEnd::new(CloseCode::Overloaded, e.to_string(), EndedBy::Rtmp)
            }
            OutboundError::Closed => SessionEnd::new(
                CloseCode::Normal,
                format!("{} connection closed", peer.name()),
                EndedBy::Rtmp,
            ),
        }
    }

    /// How a session ends when its tunnel stream breaks: with the code the far hop asked for
    /// (a stream stopped or reset with a close code, a connection closed with one), else
    /// [`CloseCode::TunnelLost`]. Never `normal`: a tunnel that breaks under a live session is
    /// a failure the client must hear about.
    pub fn tunnel_lost(peer: RtmpPeer, lost: &StreamLost) -> Self {
        let code = match lost.code.map(CloseCode::from_code) {
            Some(CloseCode::Normal | CloseCode::Unknown(_)) | None => CloseCode::TunnelLost,
            Some(code) => code,
        };
        SessionEnd::new(
            code,
            format!("{} lost: {}", peer.tunnel_name(), lost.reason),
            EndedBy::Tunnel,
        )
    }
}

/// Pump from the RTMP peer into the tunnel: end-to-end messages become MSG frames, hop-by-hop
/// ones are answered here through `replies`, a silent peer is pinged and then given up on.
pub struct RtmpToTunnel<'a, S> {
    /// Whose messages these are.
    pub peer: RtmpPeer,
    /// The RTMP peer's messages.
    pub rtmp: &'a mut RtmpReader,
    /// The queue toward the RTMP peer, for hop-by-hop answers and pings.
    pub replies: &'a Outbound,
    /// The tunnel stream's sending half.
    pub tunnel: &'a mut S,
    /// The session's tracker.
    pub tracker: &'a Mutex<SessionTracker>,
    /// See [`SessionLimits::silence_period`].
    pub silence_period: Option<Duration>,
}

impl<S: TunnelSend> RtmpToTunnel<'_, S> {
    /// Runs until the RTMP peer or the tunnel ends.
    pub async fn run(self) -> SessionEnd {
        let peer = self.peer;
        let flow = peer.from_rtmp();
        let waiting = self.tracker.lock().expect("tracker").waiting(flow);
        // Tokio's clock, so ping timestamps follow a paused clock in tests.
        let started = tokio::time::Instant::now();
        loop {
            match self.rtmp.next().await {
                Ok(Some(Inbound::Message(msg))) => {
                    // An empty message carries nothing; forwarding it would only cost.
                    if msg.payload.is_empty() {
                        continue;
                    }
                    if let Err(e) = self.tracker.lock().expect("tracker").record(flow, &msg) {
                        let reason = format!("{}: {e}", peer.name());
                        return SessionEnd::new(peer.protocol_error(), reason, EndedBy::Rtmp);
                    }
                    waiting.arrived(Instant::now());
                    let sent = self.tunnel.send(&Frame::Msg(msg)).await;
                    waiting.handed_on(1);
                    if let Err(lost) = sent {
                        return SessionEnd::tunnel_lost(peer, &lost);
                    }
                }
                Ok(Some(Inbound::Reply(reply))) => {
                    if let Err(e) = self.replies.send(reply).await {
                        return SessionEnd::queue_failed(peer, e);
                    }
                }
                Ok(Some(Inbound::Silent(1))) => {
                    let now = started.elapsed().as_millis() as u32;
                    let ping = Control::PingRequest(now).to_message();
                    // A peer whose queue stays full for a whole period reads nothing either:
                    // waiting for room must not outlast the silence limit.
                    let period = self.silence_period.unwrap_or_default();
                    match tokio::time::timeout(period, self.replies.send(ping)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return SessionEnd::queue_failed(peer, e),
                        Err(_) => {
                            let reason = format!(
                                "{} read nothing and sent nothing for {:?}",
                                peer.name(),
                                period * 2
                            );
                            return SessionEnd::new(CloseCode::Timeout, reason, EndedBy::Rtmp);
                        }
                    }
                }
                Ok(Some(Inbound::Silent(_))) => {
                    let silent = self.silence_period.unwrap_or_default() * 2;
                    let reason = format!(
                        "{} sent nothing for {silent:?}, not even an answer to a ping",
                        peer.name()
                    );
                    return SessionEnd::new(CloseCode::Timeout, reason, EndedBy::Rtmp);
                }
                Ok(None) => return peer.closed("closed the connection"),
                // A peer that leaves with unread data in its socket resets it: it left, it
                // did not break the protocol (ffmpeg does this at the end of every push).
                Err(RtmpIoError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return peer.closed("reset the connection")
                }
                Err(e) => {
                    let code = match e {
                        RtmpIoError::Chunk(ChunkError::Overloaded(_)) => CloseCode::Overloaded,
                        _ => peer.protocol_error(),
                    };
                    return SessionEnd::new(code, format!("{}: {e}", peer.name()), EndedBy::Rtmp);
                }
            }
        }
    }
}

/// Pump from the tunnel to the RTMP peer: MSG frames become messages queued for the RTMP
/// writer; SESSION_CLOSE, a broken stream or bad frames end the session.
pub struct TunnelToRtmp<'a, R> {
    /// Whom the messages go to.
    pub peer: RtmpPeer,
    /// The tunnel stream's receiving half.
    pub tunnel: &'a mut R,
    /// The queue toward the RTMP peer.
    pub to_rtmp: &'a Outbound,
    /// The session's tracker.
    pub tracker: &'a Mutex<SessionTracker>,
}

impl<R: TunnelRecv> TunnelToRtmp<'_, R> {
    /// Runs until the tunnel or the RTMP writer ends.
    pub async fn run(self) -> SessionEnd {
        let peer = self.peer;
        let flow = peer.from_tunnel();
        let violation =
            |what: String| SessionEnd::new(CloseCode::ProtocolViolation, what, EndedBy::Tunnel);
        loop {
            match self.tunnel.next().await {
                Ok(Some(Frame::Msg(msg))) if msg.class() == MessageClass::EndToEnd => {
                    if msg.payload.is_empty() {
                        continue;
                    }
                    if let Err(e) = self.tracker.lock().expect("tracker").record(flow, &msg) {
                        return violation(format!("through the tunnel: {e}"));
                    }
                    if let Err(e) = self.to_rtmp.send(msg).await {
                        return SessionEnd::queue_failed(peer, e);
                    }
                }
                Ok(Some(Frame::Msg(msg))) => {
                    return violation(format!(
                        "hop-by-hop message type {} sent through the tunnel",
                        msg.type_id
                    ))
                }
                Ok(Some(Frame::SessionClose { code, reason })) => {
                    return SessionEnd::new(code, reason, EndedBy::RemoteClose)
                }
                Ok(Some(other)) => {
                    return violation(format!("unexpected {other:?} on a session stream"))
                }
                Ok(None) => return violation("tunnel stream ended without SESSION_CLOSE".into()),
                Err(e @ (FrameReadError::Wire(_) | FrameReadError::Truncated)) => {
                    return violation(e.to_string())
                }
                Err(FrameReadError::Overloaded(e)) => {
                    return SessionEnd::new(CloseCode::Overloaded, e.to_string(), EndedBy::Tunnel)
                }
                Err(FrameReadError::Lost(lost)) => return SessionEnd::tunnel_lost(peer, &lost),
            }
        }
    }
}

/// Runs both pumps of a session until one ends, the client misses `limits`' setup deadline,
/// or `stop` is cancelled ([`CloseCode::Shutdown`]). A stalled RTMP peer or tunnel stalls
/// only the pump that writes to it.
#[allow(clippy::too_many_arguments)]
pub async fn run_session<S: TunnelSend, R: TunnelRecv>(
    peer: RtmpPeer,
    rtmp: &mut RtmpReader,
    to_rtmp: &Outbound,
    tunnel_recv: &mut R,
    tunnel_send: &mut S,
    tracker: &Mutex<SessionTracker>,
    limits: &SessionLimits,
    stop: &CancellationToken,
) -> SessionEnd {
    if let Some(period) = limits.silence_period {
        rtmp.set_silence_period(period);
    }
    let from_rtmp = RtmpToTunnel {
        peer,
        rtmp,
        replies: to_rtmp,
        tunnel: tunnel_send,
        tracker,
        silence_period: limits.silence_period,
    };
    let to_rtmp_pump = TunnelToRtmp {
        peer,
        tunnel: &mut *tunnel_recv,
        to_rtmp,
        tracker,
    };
    let setup_deadline = async {
        let Some(deadline) = limits.setup_deadline else {
            return std::future::pending().await;
        };
        tokio::time::sleep(deadline).await;
        if tracker.lock().expect("tracker").set_up() {
            return std::future::pending().await;
        }
        let reason = format!("no publish or play within {deadline:?}");
        SessionEnd::new(CloseCode::Timeout, reason, EndedBy::Local)
    };
    let end = tokio::select! {
        end = from_rtmp.run() => end,
        end = to_rtmp_pump.run() => end,
        end = setup_deadline => end,
        _ = stop.cancelled() => SessionEnd::new(
            CloseCode::Shutdown,
            format!("{} shutting down", peer.hop_name()),
            EndedBy::Local,
        ),
    };
    if end.code == CloseCode::ProtocolViolation {
        tunnel_recv.stop(end.code);
    }
    end
}

/// Tells each side what it must hear after [`run_session`]: the far hop gets SESSION_CLOSE
/// with the reason (unless it closed first) and FIN; a client whose session failed elsewhere
/// gets its RTMP error (`_error` for a pending connect, else `onStatus NetStream.Failed`); an
/// origin this hop leaves gets what a leaving client sends (`FCUnpublish`, `deleteStream`).
pub async fn finish_session<S: TunnelSend>(
    peer: RtmpPeer,
    end: &SessionEnd,
    tracker: &Mutex<SessionTracker>,
    to_rtmp: &Outbound,
    tunnel_send: &mut S,
) {
    match end.ended_by {
        EndedBy::RemoteClose => tunnel_send.finish(),
        EndedBy::Rtmp | EndedBy::Tunnel | EndedBy::Local => {
            close_stream(tunnel_send, end.code, &end.reason).await
        }
    }
    let to_tell = {
        let t = tracker.lock().expect("tracker");
        match peer {
            RtmpPeer::Client if end.ended_by != EndedBy::Rtmp && end.code != CloseCode::Normal => {
                t.failure_messages(&end.reason)
            }
            RtmpPeer::Origin if end.ended_by == EndedBy::Local => t.goodbye_messages(),
            _ => Vec::new(),
        }
    };
    // Past the budget the peer still learns why (small, unbudgeted); a peer that reads
    // nothing does not hold the session open.
    let tell = async {
        for msg in to_tell {
            if to_rtmp.send_unbudgeted(msg).await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(TELL_LIMIT, tell).await;
}

/// How long the last messages to an RTMP peer may wait for room in its queue.
const TELL_LIMIT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests;
