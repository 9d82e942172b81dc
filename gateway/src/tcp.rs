//! The TCP carrier at the gateway, for edges on networks that block UDP: TLS 1.3 over TCP on
//! the QUIC port's number, one session per connection. The same defences as QUIC's accept
//! loop (admission per source and pending handshakes, a deadline for TLS and HELLO), the same
//! HELLO judged against the same access policy, and the same sessions (`session::serve`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rtmpq_hop::session::TunnelLink;
use rtmpq_hop::stream::{tls_halves, SendHalf};
use rtmpq_hop::transport::PathWatch;
use rtmpq_hop::tunnel::{close_stream, FrameReader};
use rtmpq_proto::wire::{CloseCode, Frame};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::access::Credentials;
use crate::{
    admission, refusal, refuse_session, resumable, session, session_slots, welcome, Shared,
    CONNECTION_SHARE_OF_BUFFER, HELLO_DEADLINE,
};

/// Accepts TCP carrier connections on `listener` until `shutdown`, each judged by the same
/// admission as a QUIC handshake (TCP's own handshake has proved the source address).
pub(crate) async fn accept(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, most likely: the next accept may work.
                    warn!(reason = %e, "tcp carrier: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ticket = match shared.admission.judge(remote.ip(), true) {
            admission::Verdict::Accept(ticket) => ticket,
            admission::Verdict::Retry | admission::Verdict::Refuse(_) => {
                let reason = "admission";
                shared.telemetry.handshake_failed(
                    reason,
                    &format_args!("tcp connection from {remote} refused at the admission limits"),
                );
                continue;
            }
        };
        let span = tracing::info_span!("edge", %remote, carrier = "tcp");
        let shared_task = shared.clone();
        shared
            .drain
            .spawn(serve(tcp, remote, ticket, shared_task).instrument(span));
    }
}

/// One TCP carrier connection: TLS and HELLO within the deadlines, the edge admitted (or
/// refused with SESSION_CLOSE and why) and welcomed, then its one session.
async fn serve(
    tcp: TcpStream,
    remote: SocketAddr,
    mut ticket: admission::Ticket,
    shared: Arc<Shared>,
) {
    rtmpq_hop::tcp::tune(&tcp);
    let hello_limit = shared.settings.handshake_timeout.min(HELLO_DEADLINE);
    let greeted = tokio::time::timeout(
        shared.settings.handshake_timeout,
        greet(tcp, &shared, hello_limit),
    )
    .await;
    ticket.established();
    let greeted = match greeted {
        Ok(Ok(greeted)) => greeted,
        Ok(Err((reason, detail))) => {
            shared.telemetry.handshake_failed(reason, &detail);
            return;
        }
        Err(_) => {
            shared.telemetry.handshake_failed(
                "timeout",
                &"tcp carrier: no TLS handshake and HELLO in time",
            );
            return;
        }
    };
    let Some(Admitted {
        send,
        frames,
        path,
        edge_id,
        creds,
        identity,
    }) = admit(greeted, &shared).await
    else {
        return;
    };
    // One session per connection: its place on the connection is the connection itself.
    let per_connection = Arc::new(Semaphore::new(1));
    let slots = match session_slots(&shared, &per_connection, &identity) {
        Ok(slots) => slots,
        Err((limit, reason)) => {
            refuse_session(&shared, send, limit, &reason).await;
            return;
        }
    };
    info!(edge = %edge_id, "edge connected over tcp");
    let who = session::Who {
        peer: format!("{edge_id}@{remote} (tcp)"),
        edge: identity,
        edge_id,
        creds: Arc::new(creds),
        hold: shared.settings.resume_grace,
    };
    let link = session::EdgeLink {
        link: TunnelLink::tcp(path),
        buffer: shared
            .buffer
            .share(shared.buffer.limit() / CONNECTION_SHARE_OF_BUFFER),
    };
    session::serve(send, frames, &shared, who, link).await;
    drop(slots);
    drop(ticket);
}

/// An edge admitted and welcomed on its carrier connection.
struct Admitted {
    send: SendHalf,
    frames: FrameReader,
    path: Arc<PathWatch>,
    edge_id: String,
    creds: Credentials,
    identity: resumable::EdgeIdentity,
}

/// Judges the edge's HELLO (its id, wire version, token and certificate against the access
/// policy, as on QUIC) and answers WELCOME, or refuses it with SESSION_CLOSE and why.
async fn admit(greeted: Greeted, shared: &Shared) -> Option<Admitted> {
    let Greeted {
        mut send,
        frames,
        cert,
        path,
        hello,
    } = greeted;
    let Frame::Hello {
        version,
        edge_id,
        token,
        ..
    } = hello
    else {
        let why = format!("expected HELLO, got {hello:?}");
        refuse(shared, &mut send, CloseCode::ProtocolViolation, &why).await;
        return None;
    };
    let creds = Credentials::of(cert.as_ref(), token);
    if let Some((code, reason)) = refusal(shared, version, &edge_id, &creds) {
        refuse(shared, &mut send, code, &reason).await;
        return None;
    }
    welcome(&mut send).await?;
    let identity = resumable::EdgeIdentity::of(&edge_id, cert.as_ref(), creds.token.expose());
    Some(Admitted {
        send,
        frames,
        path,
        edge_id,
        creds,
        identity,
    })
}

/// A carrier connection whose TLS handshake is done and whose first frame arrived.
struct Greeted {
    send: SendHalf,
    /// Still read with the control frames' limit: the session's first frame is due next.
    frames: FrameReader,
    /// The client certificate the edge presented, if any.
    cert: Option<rustls::pki_types::CertificateDer<'static>>,
    /// The connection's path, from the kernel.
    path: Arc<PathWatch>,
    hello: Frame,
}

/// The TLS handshake and the first frame (within `hello_limit` of the handshake); else the
/// reason label and words of the failure.
async fn greet(
    tcp: TcpStream,
    shared: &Shared,
    hello_limit: Duration,
) -> Result<Greeted, (&'static str, String)> {
    let config = shared.tcp_tls.borrow().clone();
    let tls = rtmpq_hop::tcp::accept(tcp, config)
        .await
        .map_err(|e| ("tls", format!("tcp carrier: tls handshake: {e}")))?;
    let cert = rtmpq_hop::tcp::peer_certificate(&tls);
    let path = rtmpq_hop::tcp::watch_path(&tls);
    let (mut send, recv) = tls_halves(tls);
    let mut frames = FrameReader::control(recv);
    let Ok(first) = tokio::time::timeout(hello_limit, frames.next()).await else {
        // As on QUIC, where the connection closes with these words.
        let why = format!("no HELLO within {hello_limit:?}");
        close_stream(&mut send, CloseCode::Timeout, &why).await;
        return Err(("hello_timeout", format!("tcp carrier: {why}")));
    };
    match first {
        Ok(Some(hello)) => Ok(Greeted {
            send,
            frames,
            cert,
            path,
            hello,
        }),
        Ok(None) => Err((
            "no_hello",
            "tcp carrier: connection ended before HELLO".into(),
        )),
        Err(e) => Err(("no_hello", format!("tcp carrier: edge sent no HELLO: {e}"))),
    }
}

/// Refuses an edge on a carrier connection: counted and logged, and it hears the close code
/// and why in SESSION_CLOSE (where QUIC closes the connection with them).
async fn refuse(shared: &Shared, send: &mut SendHalf, code: CloseCode, reason: &str) {
    shared.telemetry.handshake_failed(
        code.as_str(),
        &format_args!("edge refused: {code}: {reason}"),
    );
    close_stream(send, code, reason).await;
}
