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

/// Waits until `hop` lists a QUIC connection (the edge's to the gateway).
async fn quic_connection_up(hop: &rtmpq_telemetry::Telemetry) {
    poll_for("the edge's QUIC connection", || hop.connections(), |_| true).await;
}

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
        // The kernel here has BBR, which the carrier asks for.
        assert_eq!(ended.session.congestion, "bbr", "{hop}: {ended:?}");
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
    quic_connection_up(&stack.edge).await;
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
    quic_connection_up(&stack.edge).await;
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

// The hostile-input defences of the QUIC listener, on the TCP listener.

/// A session's opening frame with a fresh id.
fn session_open() -> rtmpq_proto::wire::Frame {
    rtmpq_proto::wire::Frame::SessionOpen {
        session_id: rtmpq_proto::wire::SessionId(rand_id()),
        latency_budget_ms: 0,
        carrier: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_connection_that_never_says_hello_hears_why_within_the_hello_deadline() {
    let stack = Stack::start(None).await;
    let tls = RawTcpTunnel::dial(stack.gateway_addr, &stack.pin)
        .await
        .unwrap();
    let (_send, recv) = rtmpq_hop::stream::tls_halves(tls);
    let mut frames = rtmpq_hop::tunnel::FrameReader::control(recv);
    let started = std::time::Instant::now();
    let said = tokio::time::timeout(LIMIT, frames.next()).await.unwrap();
    let deadline = rtmpq_gateway::HELLO_DEADLINE;
    match said {
        Ok(Some(rtmpq_proto::wire::Frame::SessionClose { code, reason })) => {
            assert_eq!(code, rtmpq_proto::wire::CloseCode::Timeout, "{reason}");
            assert!(
                reason.contains(&format!("no HELLO within {deadline:?}")),
                "{reason}"
            );
        }
        other => panic!("expected SESSION_CLOSE, got {other:?}"),
    }
    assert!(started.elapsed() < deadline * 2, "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_edge_id_is_refused_over_tcp_and_never_logged() {
    capture_logs();
    let stack = Stack::start(None).await;
    let refused = RawTcpTunnel::greet(
        stack.gateway_addr,
        &stack.pin,
        "cam\nFORGED-TCP-LOG-LINE gateway shutting down",
    )
    .await;
    match refused {
        Err(rtmpq_hop::tcp::GreetError::Refused { code, reason }) => {
            assert_eq!(code, rtmpq_proto::wire::CloseCode::ProtocolViolation);
            assert!(reason.contains("printable ASCII"), "{reason}");
        }
        Err(other) => panic!("not refused with why: {other}"),
        Ok(_) => panic!("a forged edge id was welcomed"),
    }
    assert_eq!(
        count_logs(&["FORGED-TCP-LOG-LINE"]),
        0,
        "the edge id was logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_frame_on_a_tcp_session_ends_that_session_with_why() {
    let stack = Stack::start(None).await;
    let mut bad = RawTcpTunnel::greet(stack.gateway_addr, &stack.pin, "rogue")
        .await
        .unwrap();
    // length 2, kind 0x7f (no such frame), one byte of body.
    bad.send.write_all(&[0x02, 0x7f, 0x00]).await.unwrap();
    let (code, why) = tokio::time::timeout(LIMIT, bad.closed()).await.unwrap();
    assert_eq!(
        code,
        rtmpq_proto::wire::CloseCode::ProtocolViolation,
        "{why}"
    );
    // Nothing else is lost: a pusher through the edge goes on.
    let clip = clip(2).await;
    push_ok(&clip, &stack.edge_url("after-bad-frame")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_edge_holds_at_most_its_sessions_over_all_its_tcp_connections() {
    let stack = Stack::with_gateway_config(|c| GatewayConfig {
        max_sessions_per_edge: 2,
        ..c
    })
    .await;
    let url = format!("rtmp://{}/live", stack.gateway_addr);
    let connect = rtmpq_proto::command::request(
        "connect",
        1.0,
        0,
        vec![rtmpq_proto::command::connect_object("live", &url)],
    );
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut t =
            RawTcpTunnel::open_as(stack.gateway_addr, &stack.pin, "greedy", session_open()).await;
        let msg = rtmpq_proto::wire::Frame::Msg(connect.clone());
        rtmpq_hop::tunnel::write_frame(&mut t.send, &msg)
            .await
            .unwrap();
        // The session runs: the gateway answers the connect.
        let answered = tokio::time::timeout(LIMIT, async {
            loop {
                match t.frames.next().await {
                    Ok(Some(rtmpq_proto::wire::Frame::ResumeToken(_))) => continue,
                    other => return other,
                }
            }
        })
        .await;
        assert!(
            matches!(answered, Ok(Ok(Some(rtmpq_proto::wire::Frame::Msg(_))))),
            "{answered:?}"
        );
        held.push(t);
    }
    let mut third =
        RawTcpTunnel::open_as(stack.gateway_addr, &stack.pin, "greedy", session_open()).await;
    let (code, why) = tokio::time::timeout(LIMIT, third.closed()).await.unwrap();
    assert_eq!(code, rtmpq_proto::wire::CloseCode::Overloaded, "{why}");
    assert!(why.contains("this edge has 2 sessions"), "{why}");
    // Another edge is not affected.
    let clip = clip(2).await;
    push_ok(&clip, &stack.edge_url("other-edge")).await;
}

/// One TCP connection (one session) buffers at most its share of `max_buffered_mb` (a
/// quarter): a session holding an unfinished 12 MiB message against an 8 MiB share ends
/// `overloaded`, and a pusher beside it is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tcp_connection_holds_at_most_its_share_of_the_buffer_bound() {
    const MB: usize = 1 << 20;
    let stack = Stack::with_gateway_config(|c| GatewayConfig {
        max_buffered_mb: 32,
        ..c
    })
    .await;
    let mut greedy =
        RawTcpTunnel::open_as(stack.gateway_addr, &stack.pin, "greedy", session_open()).await;
    // A MSG frame announcing 12 MiB, of which most is sent and the rest never.
    let len = 12 * MB;
    let mut head = bytes::BytesMut::new();
    rtmpq_proto::wire::put_varint(&mut head, len as u64);
    head.extend_from_slice(&[0x11, 9, 1, 0, 0, 0, 0]);
    greedy.send.write_all(&head).await.unwrap();
    let chunk = vec![0x27u8; MB];
    let writer = tokio::spawn(async move {
        for _ in 0..11 {
            if greedy.send.write_all(&chunk).await.is_err() {
                break;
            }
        }
        greedy
    });
    wait_until(LIMIT, "the greedy session to end overloaded", || {
        stack
            .gateway
            .ended_sessions()
            .iter()
            .any(|s| s.code == "overloaded")
    })
    .await;
    let held = stack.gateway.buffered_bytes().unwrap();
    assert!(held <= 8 * MB, "one connection holds {} MiB", held / MB);
    let clip = clip(2).await;
    push_ok(&clip, &stack.edge_url("victim")).await;
    writer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_from_one_address_beyond_its_limit_are_refused() {
    capture_logs();
    let stack = Stack::with_gateway_config(|c| GatewayConfig {
        max_connections_per_address: 3,
        ..c
    })
    .await;
    // The edge's own QUIC connection is one of the address's three.
    quic_connection_up(&stack.gateway).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            RawTcpTunnel::greet(stack.gateway_addr, &stack.pin, "many")
                .await
                .unwrap(),
        );
    }
    let refused = RawTcpTunnel::dial(stack.gateway_addr, &stack.pin).await;
    assert!(
        refused.is_err(),
        "a fourth connection from one address got in"
    );
    wait_until(LIMIT, "the refusal's log line", || {
        count_logs(&["refused at the admission limits"]) > 0
    })
    .await;
    // Once one goes, another gets in.
    drop(held.pop());
    let deadline = std::time::Instant::now() + LIMIT;
    while RawTcpTunnel::dial(stack.gateway_addr, &stack.pin)
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_pinned_to_another_certificate_is_refused_over_tcp_with_why() {
    let stack = Stack::start(None).await;
    let other = rtmpq_certs::Fingerprint::of(&rustls::pki_types::CertificateDer::from(
        b"another certificate".to_vec(),
    ));
    let refused = RawTcpTunnel::dial(stack.gateway_addr, &other.to_string()).await;
    let Err(e) = refused else {
        panic!("a wrong pin was accepted");
    };
    assert!(e.to_string().contains("tls"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_failed_tcp_handshakes_writes_a_bounded_log() {
    const ATTEMPTS: usize = 400;
    let GatewayProcess {
        process: mut gateway,
        addr,
        pin,
        ..
    } = GatewayProcess::start(&[]).await;
    let lines_before = gateway.lines_so_far().len();
    // TLS handshakes the gateway must refuse: a protocol it does not speak (wrong ALPN).
    let trust = rtmpq_certs::GatewayTrust::Pin(pin.parse().unwrap());
    let mut tls = rtmpq_certs::client_tls(trust, None).unwrap();
    tls.alpn_protocols = vec![b"not-rtmpq".to_vec()];
    let tls = std::sync::Arc::new(tls);
    let started = std::time::Instant::now();
    for batch in 0..ATTEMPTS / 50 {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let tls = tls.clone();
            set.spawn(async move {
                rtmpq_hop::tcp::dial(&addr.to_string(), "127.0.0.1", &tls, LIMIT)
                    .await
                    .is_err()
            });
        }
        while let Some(failed) = set.join_next().await {
            assert!(
                failed.unwrap(),
                "batch {batch}: a wrong-ALPN handshake succeeded"
            );
        }
    }
    assert_handshake_log_bounded(&mut gateway, lines_before, started, ATTEMPTS).await;
}
