//! The TCP carrier (TLS 1.3 over TCP, for networks that block UDP): real ffmpeg pushers and
//! players through an edge on `transport = "tcp"` and a gateway to a real nginx-rtmp, byte
//! exact; a refused edge hears why; the TCP listener keeps the QUIC listener's deadlines.

mod common;

use std::time::Duration;

use common::*;
use rtmpq_edge::config::EdgeTransport;
use rtmpq_edge::EdgeConfig;
use rtmpq_gateway::{Gateway, GatewayConfig};
use tokio::io::AsyncReadExt;

const LIMIT: Duration = Duration::from_secs(90);

fn over_tcp(c: EdgeConfig) -> EdgeConfig {
    EdgeConfig {
        transport: EdgeTransport::Tcp,
        ..c
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_over_the_tcp_carrier_reaches_nginx_byte_exact() {
    capture_logs();
    let clip = clip(20).await;
    let pushed = framemd5_of(&clip).await;
    let nginx = Nginx::start().await;
    let stack = Stack::start_with(Some(format!("rtmp://{}", nginx.rtmp)), over_tcp).await;

    let player = Player::start(&format!("rtmp://{}/live/tcpcam", nginx.rtmp));
    nginx.wait_for_players("tcpcam", 1, LIMIT).await;
    push_ok(&clip, &stack.edge_url("tcpcam")).await;
    let played = player.finish(pushed.len(), LIMIT).await;
    assert_same_packets(&pushed, &played, "push over the tcp carrier");
    // Both hops ran the session on TCP; no QUIC connection was ever made.
    for (hop, telemetry) in [("edge", &stack.edge), ("gateway", &stack.gateway)] {
        let ended = ended_session(telemetry, hop, |s| s.session.stream == "tcpcam").await;
        assert_eq!(ended.session.carrier, "tcp", "{hop}: {ended:?}");
        assert_eq!(ended.code, "normal", "{hop}: {ended:?}");
    }
    assert!(stack.gateway.connections().is_empty(), "no QUIC connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_play_over_the_tcp_carrier_is_byte_exact() {
    capture_logs();
    let clip = clip(20).await;
    let pushed = framemd5_of(&clip).await;
    let nginx = Nginx::start().await;
    let stack = Stack::start_with(Some(format!("rtmp://{}", nginx.rtmp)), over_tcp).await;

    let player = Player::start(&stack.edge_url("tcpshow"));
    nginx.wait_for_players("tcpshow", 1, LIMIT).await;
    push_ok(&clip, &format!("rtmp://{}/live/tcpshow", nginx.rtmp)).await;
    let played = player.finish(pushed.len(), LIMIT).await;
    assert_same_packets(&pushed, &played, "play over the tcp carrier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_refused_over_tcp_hears_why() {
    capture_logs();
    let state = tempfile::tempdir().unwrap();
    let gateway = Gateway::bind(GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: state.path().to_owned(),
        tokens: vec![rtmpq_hop::secret::Secret::new("right")],
        ..GatewayConfig::default()
    })
    .await
    .unwrap();
    let stack = Stack::with_gateway(gateway, state, |c| EdgeConfig {
        token: Some(rtmpq_hop::secret::Secret::new("wrong")),
        ..over_tcp(c)
    })
    .await;
    let clip = clip(2).await;
    let out = push(&clip, &stack.edge_url("nope")).await;
    assert!(!out.status.success(), "a refused edge's push must fail");
    let ended = ended_session(&stack.edge, "refused over tcp", |_| true).await;
    assert_eq!(ended.code, "unauthorized", "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tcp_connection_is_closed_at_the_handshake_deadline() {
    capture_logs();
    let state = tempfile::tempdir().unwrap();
    let gateway = Gateway::bind(GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: state.path().to_owned(),
        handshake_timeout_ms: 300,
        ..GatewayConfig::default()
    })
    .await
    .unwrap();
    let tcp_addr = gateway.tcp_addr().expect("the tcp carrier listens");
    assert_eq!(
        tcp_addr.port(),
        gateway.local_addr().port(),
        "the same port number as QUIC"
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(gateway.run(shutdown.clone()));
    // A slowloris: connects and never starts TLS. The gateway lets go at its deadline.
    let mut tcp = tokio::net::TcpStream::connect(tcp_addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the gateway must close a silent connection: {read:?}"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_quic_goes_unanswered_sessions_take_tcp_and_the_next_one_does_not_race() {
    capture_logs();
    let clip = clip(3).await;
    // The gateway's QUIC port is unreachable for this edge: its gateway address is a UDP
    // socket that swallows every datagram (a network that blocks UDP), with the gateway's TCP
    // carrier port beside it.
    let (gateway, state) = local_gateway(None).await;
    let tcp_port = gateway.tcp_addr().expect("tcp carrier").port();
    let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let hole = black_hole.local_addr().unwrap();
    let stack = Stack::with_gateway(gateway, state, |c| EdgeConfig {
        gateway: vec![hole.to_string()],
        tcp_port: Some(tcp_port),
        transport: EdgeTransport::Auto,
        ..c
    })
    .await;
    for stream in ["auto1", "auto2"] {
        push_ok(&clip, &stack.edge_url(stream)).await;
        let ended = ended_session(&stack.edge, stream, |s| s.session.stream == stream).await;
        assert_eq!(ended.session.carrier, "tcp", "{ended:?}");
        assert_eq!(ended.code, "normal", "{ended:?}");
    }
    // The race ran once; the second session went to TCP at once, as this network taught.
    assert_eq!(stack.edge.events().tcp_fallbacks, 1);
    drop(black_hole);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_quic_answers_auto_sessions_stay_on_quic() {
    capture_logs();
    let clip = clip(3).await;
    let stack = Stack::start_with(None, |c| EdgeConfig {
        transport: EdgeTransport::Auto,
        ..c
    })
    .await;
    // The edge's QUIC connection is up (the connector's first handshake) before the push.
    poll_for(
        "the edge's QUIC connection",
        || stack.edge.connections(),
        |_| true,
    )
    .await;
    push_ok(&clip, &stack.edge_url("autoquic")).await;
    let ended = ended_session(&stack.edge, "autoquic", |s| s.session.stream == "autoquic").await;
    assert_eq!(ended.session.carrier, "quic", "{ended:?}");
    assert_eq!(stack.edge.events().tcp_fallbacks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_udp_dies_mid_stream_the_session_moves_to_tcp_and_the_pusher_never_notices() {
    capture_logs();
    let clip = clip(15).await;
    let (gateway, state) = local_gateway(None).await;
    let tcp_port = gateway.tcp_addr().expect("tcp carrier").port();
    // QUIC goes through a relay that stops forwarding on `cut` (UDP blocked mid-stream);
    // TCP reaches the gateway directly.
    let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let relay = cuttable_relay(gateway.local_addr(), cut.clone()).await;
    let stack = Stack::with_gateway(gateway, state, |c| EdgeConfig {
        gateway: vec![relay.to_string()],
        tcp_port: Some(tcp_port),
        transport: EdgeTransport::Auto,
        ..c
    })
    .await;
    poll_for(
        "the edge's QUIC connection",
        || stack.edge.connections(),
        |_| true,
    )
    .await;
    let url = stack.edge_url("udpdies");
    let pusher = tokio::spawn(async move { push_ok(&clip, &url).await });
    live_session(&stack.edge, "media on quic", |s| {
        s.stream == "udpdies" && s.carrier == "quic" && s.video_frames > 60
    })
    .await;
    let cut_at = std::time::Instant::now();
    cut.store(true, std::sync::atomic::Ordering::Relaxed);
    live_session(&stack.edge, "moved to tcp", |s| {
        s.stream == "udpdies" && s.carrier == "tcp"
    })
    .await;
    let moved_after = cut_at.elapsed();
    // A figure, not a gate: the status API is read once a second. Without the move the session
    // would wait for QUIC's 15 s idle timeout.
    eprintln!("moved to tcp {moved_after:?} after udp stopped");
    assert!(moved_after < Duration::from_secs(12), "{moved_after:?}");
    pusher.await.unwrap();
    let ended = ended_session(&stack.edge, "udpdies", |s| s.session.stream == "udpdies").await;
    assert_eq!(
        (ended.code.as_str(), ended.session.carrier.as_str()),
        ("normal", "tcp"),
        "{ended:?}"
    );
    assert_eq!(ended.session.resumed, 1, "{ended:?}");
    assert_eq!(stack.edge.events().tcp_fallbacks, 1);
}

/// A stack whose edge (`transport = "auto"`) reaches the gateway's QUIC port only through a
/// relay that drops everything while `blocked` is set (UDP blocked), and its TCP carrier
/// directly; the gateway's origin is `origin`.
async fn udp_blockable_stack(
    origin: Option<String>,
    blocked: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Stack {
    let (gateway, state) = local_gateway(origin).await;
    let tcp_port = gateway.tcp_addr().expect("tcp carrier").port();
    let relay = cuttable_relay(gateway.local_addr(), blocked).await;
    Stack::with_gateway(gateway, state, |c| EdgeConfig {
        gateway: vec![relay.to_string()],
        tcp_port: Some(tcp_port),
        transport: EdgeTransport::Auto,
        ..c
    })
    .await
}

/// Opens UDP once the edge's live session on `stream` runs on TCP with media flowing, and
/// waits until it runs on QUIC.
async fn open_udp_and_wait_for_quic(
    stack: &Stack,
    stream: &str,
    blocked: &std::sync::atomic::AtomicBool,
) {
    live_session(&stack.edge, "media on tcp", |s| {
        s.stream == stream && s.carrier == "tcp" && s.video_frames > 30
    })
    .await;
    let opened_at = std::time::Instant::now();
    blocked.store(false, std::sync::atomic::Ordering::Relaxed);
    live_session(&stack.edge, "moved back to quic", |s| {
        s.stream == stream && s.carrier == "quic"
    })
    .await;
    // A figure, not a gate (the status API is read once a second).
    eprintln!("back on quic {:?} after udp opened", opened_at.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_udp_returns_a_live_push_moves_back_to_quic_and_nginx_gets_every_frame() {
    capture_logs();
    let clip = clip(20).await;
    let pushed = framemd5_of(&clip).await;
    let nginx = Nginx::start().await;
    let blocked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let stack = udp_blockable_stack(Some(format!("rtmp://{}", nginx.rtmp)), blocked.clone()).await;

    let player = Player::start(&format!("rtmp://{}/live/udpback", nginx.rtmp));
    nginx.wait_for_players("udpback", 1, LIMIT).await;
    let url = stack.edge_url("udpback");
    let pusher = tokio::spawn(async move { push_ok(&clip, &url).await });
    open_udp_and_wait_for_quic(&stack, "udpback", &blocked).await;
    pusher.await.unwrap();
    // Cut at a key frame and drained: not one frame lost or changed.
    let played = player.finish(pushed.len(), LIMIT).await;
    assert_same_packets(&pushed, &played, "push moved from tcp back to quic");
    let ended = ended_session(&stack.edge, "udpback", |s| s.session.stream == "udpback").await;
    assert_eq!(
        (ended.code.as_str(), ended.session.carrier.as_str()),
        ("normal", "quic"),
        "{ended:?}"
    );
    assert_eq!(ended.session.resumed, 1, "{ended:?}");
    let events = stack.edge.events();
    assert_eq!((events.tcp_fallbacks, events.quic_returns), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_udp_returns_a_live_play_moves_back_to_quic_and_the_player_gets_every_frame() {
    capture_logs();
    let clip = clip(20).await;
    let pushed = framemd5_of(&clip).await;
    let nginx = Nginx::start().await;
    let blocked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let stack = udp_blockable_stack(Some(format!("rtmp://{}", nginx.rtmp)), blocked.clone()).await;

    let player = Player::start(&stack.edge_url("udpshow"));
    nginx.wait_for_players("udpshow", 1, LIMIT).await;
    let url = format!("rtmp://{}/live/udpshow", nginx.rtmp);
    let pusher = tokio::spawn(async move { push_ok(&clip, &url).await });
    open_udp_and_wait_for_quic(&stack, "udpshow", &blocked).await;
    pusher.await.unwrap();
    let played = player.finish(pushed.len(), LIMIT).await;
    assert_same_packets(&pushed, &played, "play moved from tcp back to quic");
    let events = stack.edge.events();
    assert_eq!(events.quic_returns, 1);
}
