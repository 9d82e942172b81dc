//! Moving a live session from the TCP carrier back to QUIC once UDP gets through again
//! (`transport = "auto"`): when the connector's QUIC connection has been up for
//! [`QUIC_SETTLE`], the session is cut before its pusher's next key frame ([`Handover`]), what
//! came before drains down the TCP tunnel, SESSION_RESUME takes the session over on a QUIC
//! stream, and the gateway drains its side of the TCP tunnel the same way before it finishes
//! it. Neither the pusher nor the origin sees the move, and no frame is lost to it.

use std::time::Duration;

use rtmpq_hop::handover::KEY_FRAME_WAIT;
use rtmpq_hop::session::{Interrupt, Moved};
use rtmpq_hop::transport::PathWatch;
use rtmpq_hop::tunnel::{write_frame, FrameReader, TunnelRecv};
use rtmpq_proto::session_end::{EndedBy, SessionEnd};
use rtmpq_proto::wire::{CloseCode, Frame};
use tracing::{info, warn};

use crate::connector::GatewayLink;
use crate::happy_eyeballs::AutoTransport;
use crate::session::EdgeSession;
use crate::tcp_dial::tcp_address;
use crate::tunnel_open::{budget_ms, OpenedStream};

/// How long the QUIC connection must have been up before sessions move back to it: a path
/// that lets a handshake through and then drops again is not taken at once.
pub const QUIC_SETTLE: Duration = Duration::from_secs(2);
/// A QUIC path that has left something unacknowledged this long is not moved to.
const QUIC_ACKNOWLEDGES: Duration = Duration::from_millis(250);
/// How long the edge waits for the TCP tunnel to have everything before the cut acknowledged
/// before it hands the session over (the gateway has then read it before SESSION_RESUME
/// arrives).
const ACKNOWLEDGED_LIMIT: Duration = Duration::from_secs(1);
/// How long the pusher's media before the cut may take to go down the TCP tunnel.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How long the gateway may take to answer the SESSION_RESUME: it first waits for its
/// origin's next key frame and drains its side.
const ANSWER_LIMIT: Duration = Duration::from_secs(8);
/// How long after its answer the gateway's end of the TCP tunnel may take to arrive.
const FINISH_LIMIT: Duration = Duration::from_secs(1);

/// Waits until the session, carried on TCP, can go back to QUIC, and moves it there; a move
/// that fails after the cut ends the run as a lost tunnel (the session then recovers as
/// after any loss: the pusher still does not notice).
pub(crate) async fn back_to_quic(session: &EdgeSession<'_>, auto: &AutoTransport) -> Interrupt {
    let link = settled(session, auto).await;
    match move_to(session, link).await {
        Ok(moved) => {
            session.shared.telemetry.quic_return("udp_returned");
            info!(
                "UDP gets through again: session moved back to QUIC at a key frame, nothing lost"
            );
            Interrupt::Moved(moved)
        }
        Err(why) => {
            warn!(reason = %why, "moving the session back to QUIC failed: it recovers as after a loss");
            let reason = format!("move back to quic failed: {why}");
            Interrupt::Ended(SessionEnd::new(
                CloseCode::TunnelLost,
                reason,
                EndedBy::Tunnel,
            ))
        }
    }
}

/// The connector's QUIC connection once it has been up for [`QUIC_SETTLE`], acknowledges
/// what it is sent, and goes to the gateway that holds this session (with several gateways
/// QUIC may have reached another), which has offered the session a resume token.
async fn settled(session: &EdgeSession<'_>, auto: &AutoTransport) -> GatewayLink {
    loop {
        let Ok(link) = auto.quic.connection(Duration::from_secs(3600)).await else {
            tokio::time::sleep(QUIC_SETTLE).await;
            continue;
        };
        tokio::time::sleep(QUIC_SETTLE).await;
        let holds = {
            let t = session.tracker.lock().expect("tracker");
            let tcp_gateway = tcp_address(&link.address, auto.tcp.port);
            t.resume_token.is_some() && t.gateway.as_deref() == Some(tcp_gateway.as_str())
        };
        if link.conn.close_reason().is_none()
            && link.link.path.unacknowledged_for() < QUIC_ACKNOWLEDGES
            && holds
        {
            return link;
        }
    }
}

/// The move itself: cut, drain, SESSION_RESUME on a QUIC stream, the gateway's answer and its
/// end of the old tunnel.
async fn move_to(session: &EdgeSession<'_>, link: GatewayLink) -> Result<Moved, String> {
    let (shared, tracker, handover) = (session.shared, session.tracker, session.handover);
    let (send, recv) = link.conn.open_bi().await.map_err(|e| e.to_string())?;
    handover.ask();
    let limit = KEY_FRAME_WAIT + DRAIN_LIMIT;
    tokio::time::timeout(limit, handover.drained())
        .await
        .map_err(|_| format!("no key frame, or the tcp tunnel did not drain, within {limit:?}"))?;
    if let Some(path) = &session.tunnel_path {
        acknowledged(path).await;
    }
    let token = tracker
        .lock()
        .expect("tracker")
        .resume_token
        .take()
        .ok_or("no resume token")?;
    let resume = Frame::SessionResume {
        session_id: session.session_id,
        latency_budget_ms: budget_ms(shared),
        token,
        carrier: shared.settings.carrier,
    };
    let mut send = rtmpq_hop::stream::SendHalf::from(send);
    write_frame(&mut send, &resume)
        .await
        .map_err(|e| e.to_string())?;
    let opened = OpenedStream::new(send, FrameReader::new(recv), link.link);
    let mut tunnel = opened.tunnel(shared, &session.buffer);
    match tokio::time::timeout(ANSWER_LIMIT, tunnel.frames.next()).await {
        Ok(Ok(Some(Frame::ResumeToken(next)))) => {
            let mut t = tracker.lock().expect("tracker");
            t.resume_token = Some(next);
            t.gateway = Some(link.address);
        }
        Ok(Ok(Some(Frame::SessionClose { code, reason }))) => {
            return Err(format!("gateway refused: {reason} ({code})"))
        }
        Ok(Ok(other)) => return Err(format!("unexpected answer {other:?}")),
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no answer within {ANSWER_LIMIT:?}")),
    }
    if tokio::time::timeout(FINISH_LIMIT, handover.far_finished())
        .await
        .is_err()
    {
        warn!("the gateway's end of the tcp tunnel did not arrive within {FINISH_LIMIT:?}: what it still held is lost");
    }
    Ok(Moved {
        tunnel,
        drained: true,
        why: "moved back to quic at a key frame (udp gets through again)",
    })
}

/// Returns once the TCP tunnel has everything it was given acknowledged, or after
/// [`ACKNOWLEDGED_LIMIT`].
async fn acknowledged(path: &PathWatch) {
    let deadline = tokio::time::Instant::now() + ACKNOWLEDGED_LIMIT;
    // The kernel's figures are sampled every 25 ms: look after a fresh sample.
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    tick.tick().await;
    while tokio::time::Instant::now() < deadline {
        tick.tick().await;
        if path.unacknowledged_for().is_zero() {
            return;
        }
    }
}
