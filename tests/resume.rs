//! Resuming a session on the gateway that holds it: the edge's connection dies while both
//! processes live (here: a relay in its path stops forwarding), the edge takes the session
//! over on a new stream with its single-use token, and the origin sees only a gap.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rtmpq_edge::EdgeConfig;
use rtmpq_proto::wire::{CloseCode, Frame, ResumeToken, SessionId};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_connection_dies_is_resumed_and_the_origin_sees_one_publish() {
    capture_logs();
    let clip = clip(20).await;
    let (gateway, _state) = local_gateway(None).await;
    let (gateway_addr, pin) = (gateway.local_addr(), gateway.pin().to_string());
    let gateway_status = gateway.telemetry();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(gateway.run(shutdown.clone()));
    let cut = Arc::new(AtomicBool::new(false));
    let relay = cuttable_relay(gateway_addr, cut.clone()).await;
    // The relay first (it answers first), the gateway itself second: when the relay's path
    // dies, the edge moves to the direct one, where the gateway still holds the session.
    let (edge, edge_status) = spawn_edge(
        EdgeConfig {
            pin: Some(pin),
            gateway: vec![relay.to_string(), gateway_addr.to_string()],
            ..edge_config(gateway_addr)
        },
        &shutdown,
    )
    .await;
    let url = format!("rtmp://{edge}/live/resumed");
    let pusher = tokio::spawn(async move { push(&clip, &url).await });
    live_session(&gateway_status, "publishing to the origin", |s| {
        s.stream == "resumed" && s.video_frames > 0
    })
    .await;
    cut.store(true, Ordering::Relaxed);
    live_session(&edge_status, "resumed", |s| {
        s.stream == "resumed" && s.resumed >= 1
    })
    .await;
    // The new connection went to a gateway process the edge had talked to: 0-RTT.
    hop_event(&edge_status, "an accepted 0-RTT HELLO", |e| {
        e.zero_rtt_accepted >= 1
    })
    .await;
    let out = pusher.await.unwrap();
    assert!(
        out.status.success(),
        "the pusher noticed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One session at the gateway from start to end, resumed, never set up again: the origin
    // saw one publish.
    let ended = ended_session(&gateway_status, "of the pusher", |s| {
        s.session.stream == "resumed"
    })
    .await;
    assert!(ended.session.resumed >= 1, "{ended:?}");
    assert_eq!(ended.session.set_up_again, 0, "a second set-up: {ended:?}");
    let sessions = gateway_status
        .ended_sessions()
        .iter()
        .filter(|s| s.session.stream == "resumed")
        .count();
    assert_eq!(sessions, 1, "the origin saw one publish");
    shutdown.cancel();
}

/// The token is single use, bound to the edge that holds it, and a forged, replayed or
/// foreign one is refused with `resume_refused` and a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_tokens_are_single_use_and_bound_to_their_edge() {
    capture_logs();
    let gateway = RunningGateway::start().await;
    let (addr, shutdown) = (gateway.addr, gateway.shutdown.clone());
    let tls = || gateway.tls();
    let id = SessionId(rand_id());
    let open = Frame::SessionOpen {
        session_id: id,
        latency_budget_ms: 0,
        carrier: Default::default(),
    };
    let mut first = RawTunnel::open_as(addr, tls(), "cam-edge", open).await;
    let token = next_token(&mut first).await;
    let resume = |token| Frame::SessionResume {
        session_id: id,
        latency_budget_ms: 0,
        token,
        carrier: Default::default(),
    };
    let refused = |reason: &str| {
        let reason = reason.to_owned();
        move |(code, why): (CloseCode, String)| {
            assert_eq!(code, CloseCode::ResumeRefused, "{why}");
            assert!(why.contains(&reason), "{why}");
        }
    };
    // Forged.
    let mut forged =
        RawTunnel::open_as(addr, tls(), "cam-edge", resume(ResumeToken([7; 32]))).await;
    refused("does not match")(forged.closed().await);
    // The right token from another edge.
    let mut foreign = RawTunnel::open_as(addr, tls(), "other-edge", resume(token)).await;
    refused("another edge")(foreign.closed().await);
    // The right one: taken over, with a new token.
    let mut again = RawTunnel::open_as(addr, tls(), "cam-edge", resume(token)).await;
    let next = next_token(&mut again).await;
    assert!(!next.matches(&token), "a new token after each resume");
    // The first token again: spent.
    let mut replayed = RawTunnel::open_as(addr, tls(), "cam-edge", resume(token)).await;
    refused("used already")(replayed.closed().await);
    // A session nobody holds.
    let unknown = Frame::SessionResume {
        session_id: SessionId(rand_id()),
        latency_budget_ms: 0,
        token: next,
        carrier: Default::default(),
    };
    let mut nobody = RawTunnel::open_as(addr, tls(), "cam-edge", unknown).await;
    refused("no such session")(nobody.closed().await);
    shutdown.cancel();
}

/// Without tokens or certificates an edge's identity is its own word: a second connection that
/// calls itself by a live session's edge id and opens a session with that session's id is
/// refused, and the live session's own resume still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_in_use_cannot_be_taken_by_another_connection() {
    let gateway = RunningGateway::start().await;
    let (addr, shutdown) = (gateway.addr, gateway.shutdown.clone());
    let tls = || gateway.tls();
    let id = SessionId(rand_id());
    let open = || Frame::SessionOpen {
        session_id: id,
        latency_budget_ms: 0,
        carrier: Default::default(),
    };
    let mut victim = RawTunnel::open_as(addr, tls(), "cam-edge", open()).await;
    let token = next_token(&mut victim).await;
    let mut squatter = RawTunnel::open_as(addr, tls(), "cam-edge", open()).await;
    let (code, why) = tokio::time::timeout(LIMIT, squatter.closed())
        .await
        .expect("a second session with a live session's id was taken");
    assert_eq!(code, CloseCode::ProtocolViolation, "{why}");
    assert!(why.contains("in use"), "{why}");
    let resume = Frame::SessionResume {
        session_id: id,
        latency_budget_ms: 0,
        token,
        carrier: Default::default(),
    };
    let mut again = RawTunnel::open_as(addr, tls(), "cam-edge", resume).await;
    let next = next_token(&mut again).await;
    assert!(!next.matches(&token));
    shutdown.cancel();
}

/// Reads frames until a RESUME_TOKEN.
async fn next_token(tunnel: &mut RawTunnel) -> ResumeToken {
    loop {
        match tunnel.frames.next().await.unwrap() {
            Some(Frame::ResumeToken(t)) => return t,
            Some(Frame::Msg(_)) => continue,
            other => panic!("expected RESUME_TOKEN, got {other:?}"),
        }
    }
}

/// A connection to a gateway process this client has talked to goes in 0-RTT: HELLO leaves
/// with the handshake (replay-safe: it opens nothing), WELCOME comes back in the gateway's first
/// flight, and the gateway took the early data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_to_the_same_gateway_says_hello_in_0rtt() {
    capture_logs();
    let gateway = RunningGateway::start().await;
    let (addr, shutdown) = (gateway.addr, gateway.shutdown.clone());
    let tls = gateway.tls();
    let config = rtmpq_hop::transport::client_config(tls, Default::default()).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connect = || {
        endpoint
            .connect_with(config.clone(), addr, "127.0.0.1")
            .unwrap()
    };
    // The first has no ticket: a full handshake, after which the gateway issues one. Its
    // ticket may land just after WELCOME, so a few more full connections are allowed.
    let first = connect();
    assert!(first.into_0rtt().is_err(), "no ticket yet, no 0-RTT");
    let mut early = None;
    for _ in 0..5 {
        match connect().into_0rtt() {
            Ok(pair) => {
                early = Some(pair);
                break;
            }
            Err(connecting) => {
                let conn = connecting.await.unwrap();
                hello_and_welcome(&conn).await;
                conn.close(0u32.into(), b"done");
            }
        }
    }
    let (conn, accepted) = early.expect("0-RTT after a connection to the same gateway");
    hello_and_welcome(&conn).await;
    assert!(accepted.await, "the gateway took the early data");
    shutdown.cancel();
}

/// HELLO on a new control stream of `conn`; asserts WELCOME.
async fn hello_and_welcome(conn: &quinn::Connection) {
    use rtmpq_hop::tunnel::{write_frame, FrameReader};
    let (mut control, recv) = conn.open_bi().await.unwrap();
    let hello = Frame::Hello {
        version: rtmpq_proto::wire::WIRE_VERSION,
        edge_id: "early".into(),
        token: String::new(),
        release_after_ms: 0,
    };
    write_frame(&mut control, &hello).await.unwrap();
    let welcome = FrameReader::control(recv).next().await.unwrap();
    assert!(
        matches!(welcome, Some(Frame::Welcome { .. })),
        "{welcome:?}"
    );
}
