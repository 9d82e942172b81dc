//! Bad input from either side ends only its own session or connection, with a logged reason,
//! while a healthy ffmpeg push through the same edge and gateway stays byte-exact.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use rtmpq_demo::client::{ClientError, RtmpClient};
use rtmpq_gateway::{Gateway, GatewayConfig};
use rtmpq_proto::chunk::ChunkEncoder;
use rtmpq_proto::message::Control;
use rtmpq_proto::wire::CloseCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(60);

async fn garbage_instead_of_handshake(stack: &Stack) {
    let mut tcp = TcpStream::connect(stack.edge_addr).await.unwrap();
    tcp.write_all(&[0xff; 1537]).await.unwrap();
    expect_closed(&mut tcp, "garbage handshake").await;
    let wanted = ended_with("client_protocol_error", "rtmp handshake failed");
    ended_session(&stack.edge, "for a garbage handshake", wanted).await;
}

async fn truncated_handshake_that_stalls(stack: &Stack) {
    let mut tcp = TcpStream::connect(stack.edge_addr).await.unwrap();
    tcp.write_all(&[3u8]).await.unwrap();
    tcp.write_all(&[0u8; 700]).await.unwrap();
    expect_closed(&mut tcp, "stalled handshake").await;
    let wanted = ended_with("client_protocol_error", "handshake not finished within");
    ended_session(&stack.edge, "for a stalled handshake", wanted).await;
}

async fn absurd_chunk_size(stack: &Stack) {
    let mut tcp = handshaken(stack.edge_addr).await;
    let mut out = BytesMut::new();
    ChunkEncoder::default().encode(&Control::SetChunkSize(0x7fff_ffff).to_message(), &mut out);
    tcp.write_all(&out).await.unwrap();
    expect_closed(&mut tcp, "chunk size 0x7fffffff").await;
    let wanted = ended_with("client_protocol_error", "chunk size 2147483647");
    ended_session(&stack.edge, "for chunk size 0x7fffffff", wanted).await;
}

async fn sixteen_megabyte_message_that_never_completes(stack: &Stack) {
    let mut tcp = handshaken(stack.edge_addr).await;
    // Type 0 header on chunk stream 6: length 0xFFFFFF, video, stream 1; then one chunk.
    let mut bytes = vec![0x06, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0];
    bytes.extend_from_slice(&[0x17; 128]);
    tcp.write_all(&bytes).await.unwrap();
    expect_closed(&mut tcp, "16 MB message").await;
    let wanted = ended_with("client_protocol_error", "16777215 bytes announced");
    ended_session(&stack.edge, "for a 16 MB message", wanted).await;
}

async fn unknown_tunnel_frame_kind(stack: &Stack, tls: rustls::ClientConfig) {
    let mut tunnel = RawTunnel::open(stack.gateway_addr, tls).await;
    tunnel.send.write_all(&[0x02, 0x7f, 0x00]).await.unwrap();
    let (code, reason) = tunnel.closed().await;
    assert_eq!(code, CloseCode::ProtocolViolation);
    assert!(
        reason.contains("unknown tunnel frame kind 0x7f"),
        "{reason}"
    );
    let wanted = ended_with("protocol_violation", "unknown tunnel frame kind 0x7f");
    ended_session(&stack.gateway, "for an unknown frame kind", wanted).await;
    tunnel.conn.close(0u32.into(), b"done");
}

/// A client of `edge` must be refused with an RTMP error whose description contains `words`.
/// The edge answers `connect` itself (fast start), so a refusal from beyond it may come as
/// the answer to `publish` instead.
async fn expect_refused(edge: SocketAddr, words: &str) -> String {
    let err = match RtmpClient::connect(&edge.to_string(), "live").await {
        Ok(mut client) => match client.publish("refused").await {
            Err(e) => e,
            // Answered at the edge before the failure came back: it comes next.
            Ok(()) => loop {
                let msg = client
                    .next_message()
                    .await
                    .expect("the session must fail with an RTMP error")
                    .expect("the session must fail with an RTMP error, not just close");
                let status = rtmpq_proto::command::Command::parse(&msg)
                    .ok()
                    .flatten()
                    .and_then(|c| c.status());
                if let Some(s) = status.filter(|s| s.level == "error") {
                    break ClientError::Refused {
                        step: "publish",
                        code: s.code,
                        description: s.description,
                    };
                }
            },
        },
        Err(e) => e,
    };
    match err {
        ClientError::Refused { description, .. } => {
            assert!(description.contains(words), "{description}");
            description
        }
        other => panic!("expected an RTMP error mentioning {words:?}, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_ends_only_its_own_session() {
    capture_logs();
    rtmpq_telemetry::prometheus();
    let clip = clip(10).await;
    let pushed = framemd5_of(&clip).await;
    let nginx = Nginx::start().await;

    // A gateway that requires client certificates, and a healthy edge that has one.
    let certs = tempfile::tempdir().unwrap();
    rtmpq_certs::init(certs.path(), &[]).unwrap();
    let (edge_cert, edge_key) = rtmpq_certs::issue_edge(certs.path(), "healthy").unwrap();
    let ca = certs.path().join("ca.pem");
    let gateway = Gateway::bind(GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        origin: Some(format!("rtmp://{}", nginx.rtmp)),
        cert_dir: Some(certs.path().to_owned()),
        client_auth: true,
        ..GatewayConfig::default()
    })
    .await
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let stack = Stack::with_gateway(gateway, state, |c| rtmpq_edge::EdgeConfig {
        pin: None,
        ca: Some(ca.clone()),
        client_cert: Some(edge_cert.clone()),
        client_key: Some(edge_key.clone()),
        handshake_timeout_ms: 1000,
        ..c
    })
    .await;

    let player = Player::start(&format!("rtmp://{}/live/healthy", nginx.rtmp));
    nginx.wait_for_players("healthy", 1, LIMIT).await;
    let healthy_url = stack.edge_url("healthy");
    let healthy = tokio::spawn(async move { push(&clip, &healthy_url).await });
    nginx.wait_for_publisher("healthy", true, LIMIT).await;

    garbage_instead_of_handshake(&stack).await;
    truncated_handshake_that_stalls(&stack).await;
    absurd_chunk_size(&stack).await;
    sixteen_megabyte_message_that_never_completes(&stack).await;

    let identity = rtmpq_certs::Identity::load(&edge_cert, &edge_key).unwrap();
    let trust = rtmpq_certs::GatewayTrust::Ca(rtmpq_certs::load_certs(&ca).unwrap());
    let tls = rtmpq_certs::client_tls(trust.clone(), Some(identity)).unwrap();
    unknown_tunnel_frame_kind(&stack, tls).await;

    // An edge with a wrong pin: its pusher gets an RTMP error naming the certificate.
    let wrong_pin = start_edge(
        rtmpq_edge::EdgeConfig {
            pin: Some(format!("sha256:{}", "00".repeat(32))),
            gateway_wait_ms: 1000,
            ..edge_config(stack.gateway_addr)
        },
        &stack.shutdown,
    )
    .await;
    let description = expect_refused(wrong_pin, "gateway unreachable").await;
    assert!(description.contains("PinMismatch"), "{description}");

    // An edge without a client certificate where mutual TLS is required.
    let no_cert = start_edge(
        rtmpq_edge::EdgeConfig {
            ca: Some(ca.clone()),
            gateway_wait_ms: 1000,
            ..edge_config(stack.gateway_addr)
        },
        &stack.shutdown,
    )
    .await;
    let tls_failures = || {
        let scrape = rtmpq_telemetry::prometheus().render();
        sample(
            &scrape,
            "rtmpq_handshake_failures_total",
            &["role=\"gateway\"", "reason=\"tls\""],
        )
        .unwrap_or(0.0)
    };
    let before = tls_failures();
    expect_refused(no_cert, "gateway unreachable").await;
    // The gateway counts each failed TLS handshake (and logs them at a bounded rate).
    wait_until(LIMIT, "the gateway to count the failed handshake", || {
        tls_failures() > before
    })
    .await;

    assert_healthy_push(healthy, player, &pushed, "healthy push beside bad input").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_refuses_connections_fails_the_session_with_a_reason() {
    capture_logs();
    // A port with nothing listening: connections are refused.
    let dead = free_port();
    let stack = Stack::start(Some(format!("rtmp://127.0.0.1:{dead}"))).await;
    let description = expect_refused(stack.edge_addr, "unreachable").await;
    assert!(description.contains(&dead.to_string()), "{description}");
    let port = dead.to_string();
    let wanted = ended_with("origin_unreachable", &port);
    ended_session(&stack.gateway, "for the dead origin", wanted).await;

    // The edge and gateway still serve: the embedded origin behind a second gateway works.
    let healthy = Stack::start(None).await;
    let mut client = RtmpClient::connect(&healthy.edge_addr.to_string(), "live")
        .await
        .unwrap();
    client.publish("after").await.unwrap();
    client.close().await;
}
