//! Hops of different wire versions refuse each other by name, on both sides, instead of failing
//! the TLS handshake in silence (what a mismatch in ALPN alone would do).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rtmpq_hop::tunnel::{write_frame, FrameReader};
use rtmpq_proto::wire::{Frame, WIRE_VERSION};
use tokio_util::sync::CancellationToken;

/// What an edge of wire version 1 offered: its ALPN only.
const OLD_ALPN: &[u8] = b"rtmpq/1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_refuses_an_edge_of_another_wire_version_naming_both() {
    capture_logs();
    let (gateway, _state) = local_gateway(None).await;
    let (addr, pin) = (gateway.local_addr(), gateway.pin());
    let stop = CancellationToken::new();
    tokio::spawn(gateway.run(stop.clone()));

    let trust = rtmpq_certs::GatewayTrust::Pin(pin);
    let mut tls = rtmpq_certs::client_tls(trust, None).unwrap();
    tls.alpn_protocols = vec![OLD_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let config = quinn::ClientConfig::new(Arc::new(crypto));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(config, addr, "localhost")
        .unwrap()
        .await
        .expect("the TLS handshake completes with the old ALPN");
    let (mut control, _recv) = conn.open_bi().await.unwrap();
    let hello = Frame::Hello {
        version: 1,
        edge_id: "old-edge".into(),
        token: String::new(),
        release_after_ms: 0,
    };
    write_frame(&mut control, &hello).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("the gateway closes the connection");
    let quinn::ConnectionError::ApplicationClosed(close) = closed else {
        panic!("{closed:?}");
    };
    assert_eq!(
        close.error_code,
        quinn::VarInt::from_u32(2),
        "unsupported_version"
    );
    let reason = String::from_utf8_lossy(&close.reason);
    let both = format!("edge speaks wire version 1, this gateway speaks {WIRE_VERSION}");
    assert!(reason.contains(&both), "{reason}");
    // The log is the feature: the gateway's operator reads which versions met.
    wait_for_log(&["unsupported_version", &both], Duration::from_secs(10)).await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_refuses_a_gateway_of_another_wire_version_naming_both() {
    capture_logs();
    // An old gateway: accepts `rtmpq/1` only and welcomes in version 1.
    let state = tempfile::tempdir().unwrap();
    let identity = rtmpq_certs::self_signed(state.path()).unwrap();
    let pin = identity.fingerprint();
    let mut tls = rtmpq_certs::server_tls(identity, None).unwrap();
    tls.alpn_protocols = vec![OLD_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let Ok(conn) = incoming.await else { continue };
            tokio::spawn(async move {
                let (mut send, recv) = conn.accept_bi().await.unwrap();
                let hello = FrameReader::control(recv).next().await.unwrap();
                assert!(matches!(hello, Some(Frame::Hello { .. })), "{hello:?}");
                let welcome = Frame::Welcome {
                    version: 1,
                    gateway_id: "old".into(),
                };
                write_frame(&mut send, &welcome).await.unwrap();
                conn.closed().await;
            });
        }
    });

    let edge = rtmpq_edge::Edge::bind(rtmpq_edge::EdgeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        gateway: vec![addr.to_string()],
        pin: Some(pin.to_string()),
        ..rtmpq_edge::EdgeConfig::default()
    })
    .await
    .unwrap()
    .without_status_line();
    let stop = CancellationToken::new();
    tokio::spawn(edge.run(stop.clone()));
    let both = format!("gateway speaks wire version 1, this edge speaks {WIRE_VERSION}");
    // The log is the feature: the edge's operator reads which versions met (no session
    // exists to carry it).
    wait_for_log(
        &["cannot connect to gateway", &both],
        Duration::from_secs(10),
    )
    .await;
    stop.cancel();
}
