//! Opening a session's tunnel on the carrier the edge uses (a stream of the connector's QUIC
//! connection, or a TLS connection over TCP of its own): SESSION_OPEN for a new session (or
//! one set up again), SESSION_RESUME with the gateway's single-use token for one it holds.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtmpq_hop::session::{Tunnel, TunnelLink};
use rtmpq_hop::stream::SendHalf;
use rtmpq_hop::tcp::GreetError;
use rtmpq_hop::tunnel::{write_frame, FrameReader, StreamLost, TunnelRecv};
use rtmpq_proto::buffer_bound::SessionBuffer;
use rtmpq_proto::session::SessionTracker;
use rtmpq_proto::session_end::Backoff;
use rtmpq_proto::wire::{CloseCode, Frame, ResumeToken, SessionId};
use tracing::info;

use crate::connector::{ConnectError, GatewayUnavailable};
use crate::happy_eyeballs::Reached;
use crate::session::EdgeSession;
use crate::tcp_dial::TcpOpenError;
use crate::{Shared, Transport};

/// Why a session could not get its tunnel stream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// No connection to the gateway.
    #[error("{0}")]
    Unavailable(#[from] GatewayUnavailable),
    /// The connection would not open a stream.
    #[error("gateway: {0}")]
    Stream(#[from] quinn::ConnectionError),
    /// The stream broke before SESSION_OPEN was sent.
    #[error("gateway: {0}")]
    Lost(#[from] StreamLost),
    /// No gateway took a TCP carrier connection.
    #[error("{0}")]
    Tcp(#[from] TcpOpenError),
}

impl OpenError {
    /// The close code the session ends with: the gateway's own when it refused this edge
    /// (`unauthorized`, `unsupported_version`), else `gateway_unreachable`.
    pub(crate) fn code(&self) -> CloseCode {
        match self {
            OpenError::Unavailable(GatewayUnavailable::Down(ConnectError::Refused(
                quinn::ConnectionError::ApplicationClosed(close),
            ))) => CloseCode::from_code(close.error_code.into_inner()),
            OpenError::Tcp(TcpOpenError::Greeting(GreetError::Refused { code, .. })) => *code,
            _ => CloseCode::GatewayUnreachable,
        }
    }
}

/// A session stream opened on a gateway (SESSION_OPEN or SESSION_RESUME sent).
pub(crate) struct OpenedStream {
    send: SendHalf,
    frames: FrameReader,
    link: TunnelLink,
}

impl OpenedStream {
    /// A stream opened on `link` (its first frame sent).
    pub(crate) fn new(send: SendHalf, frames: FrameReader, link: TunnelLink) -> Self {
        OpenedStream { send, frames, link }
    }

    /// The session's tunnel over it, carrying media as the edge is configured to; what the
    /// edge sends keeps to its budget.
    pub(crate) fn tunnel(self, shared: &Shared, buffer: &Arc<SessionBuffer>) -> Tunnel {
        let OpenedStream { send, frames, link } = self;
        let (carrier, latency) = (shared.settings.carrier, shared.settings.latency_budget);
        link.tunnel(send, frames, carrier, latency, buffer)
    }
}

/// A new stream for the session on a gateway (waiting up to `wait` for one), `first` sent on
/// it: on the TCP carrier a connection of its own, else a stream of the connector's QUIC
/// connection. The gateway it went to is noted in `tracker`.
async fn open_stream(
    shared: &Shared,
    tracker: &Mutex<SessionTracker>,
    first: &Frame,
    wait: Duration,
) -> Result<OpenedStream, OpenError> {
    let reached = match &shared.transport {
        Transport::Tcp(tcp) => Reached::Tcp(tcp.open(wait).await?),
        Transport::Quic(connector) => Reached::Quic(connector.connection(wait).await?),
        Transport::Auto(auto) => auto.reach(wait, &shared.telemetry).await?,
    };
    let (mut send, frames, link, address) = match reached {
        Reached::Tcp(tcp) => (tcp.send, tcp.frames, TunnelLink::tcp(tcp.path), tcp.address),
        Reached::Quic(link) => {
            let (send, recv) = link.conn.open_bi().await?;
            (send.into(), FrameReader::new(recv), link.link, link.address)
        }
    };
    tracker.lock().expect("tracker").gateway = Some(address);
    write_frame(&mut send, first).await?;
    Ok(OpenedStream { send, frames, link })
}

/// The latency budget as SESSION_OPEN and SESSION_RESUME carry it: ms, 0 for none.
pub(crate) fn budget_ms(shared: &Shared) -> u32 {
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
pub(crate) async fn resume_within(
    session: &EdgeSession<'_>,
    token: ResumeToken,
    deadline: tokio::time::Instant,
) -> Result<Tunnel, String> {
    let gateway_wait = session.shared.settings.gateway_wait;
    until_a_gateway(deadline, gateway_wait, |wait| resume(session, token, wait)).await
}

/// Runs `attempt` (given how long it may wait for a gateway connection: `gateway_wait`, never
/// past `deadline`) again after [`Backoff::FIRST`] while it finds no gateway and `deadline`
/// has not passed; how the first attempt that met a gateway went.
async fn until_a_gateway<T, F: Future<Output = Result<T, ResumeError>>>(
    deadline: tokio::time::Instant,
    gateway_wait: Duration,
    mut attempt: impl FnMut(Duration) -> F,
) -> Result<T, String> {
    loop {
        let wait =
            gateway_wait.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match attempt(wait).await {
            Err(ResumeError::NoGateway(why)) if tokio::time::Instant::now() < deadline => {
                info!(reason = %why, "no gateway to resume the session on yet; waiting for one");
                tokio::time::sleep(Backoff::FIRST).await;
            }
            Err(e) => return Err(e.to_string()),
            Ok(done) => return Ok(done),
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
    let frame = Frame::SessionResume {
        session_id,
        latency_budget_ms: budget_ms(shared),
        token,
        carrier: shared.settings.carrier,
    };
    let opened = match open_stream(shared, tracker, &frame, wait).await {
        Ok(opened) => opened,
        // Nobody saw the token: it is still good.
        Err(e @ (OpenError::Unavailable(_) | OpenError::Tcp(TcpOpenError::Unreachable(_)))) => {
            return Err(ResumeError::NoGateway(e.to_string()))
        }
        Err(e) => return Err(ResumeError::Failed(e.to_string())),
    };
    let attempt = async {
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

/// Opens a stream for session `session_id` on a gateway (waiting up to the configured
/// gateway wait for one) and sends SESSION_OPEN on it.
pub(crate) async fn open_tunnel(
    session_id: SessionId,
    shared: &Shared,
    tracker: &Mutex<SessionTracker>,
) -> Result<OpenedStream, OpenError> {
    let open = Frame::SessionOpen {
        session_id,
        latency_budget_ms: budget_ms(shared),
        carrier: shared.settings.carrier,
    };
    open_stream(shared, tracker, &open, shared.settings.gateway_wait).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_resume_waits_for_a_gateway_until_the_deadline_and_no_longer() {
        use tokio::time::Instant;
        let start = Instant::now();
        let deadline = start + Duration::from_secs(1);
        let gateway_wait = Duration::from_millis(300);
        // No gateway twice (each attempt waits for one as long as it may), then one answers.
        let mut tried = Vec::new();
        let resumed = until_a_gateway(deadline, gateway_wait, |wait| {
            tried.push((start.elapsed().as_millis(), wait.as_millis()));
            let n = tried.len();
            async move {
                tokio::time::sleep(wait).await;
                match n {
                    1 | 2 => Err(ResumeError::NoGateway("unreachable".into())),
                    _ => Ok(n),
                }
            }
        })
        .await;
        assert_eq!(resumed, Ok(3));
        // The third attempt may wait only for what is left of the deadline.
        assert_eq!(tried, [(0, 300), (400, 300), (800, 200)]);
        // Past the deadline the edge stops waiting and says why.
        let late = until_a_gateway(deadline, gateway_wait, |wait| async move {
            tokio::time::sleep(wait).await;
            Err::<(), _>(ResumeError::NoGateway("still unreachable".into()))
        })
        .await;
        assert_eq!(late, Err("still unreachable".to_owned()));
        assert!(Instant::now() >= deadline);
        // A gateway that answered and refused ends the resume at once: the token is spent.
        let at = Instant::now();
        let refused = until_a_gateway(at + Duration::from_secs(5), gateway_wait, |_| async {
            Err::<(), _>(ResumeError::Failed("resume refused".into()))
        })
        .await;
        assert_eq!(
            (refused, at.elapsed()),
            (Err("resume refused".to_owned()), Duration::ZERO)
        );
    }

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
