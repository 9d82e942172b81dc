//! A gateway with a QUIC-LB server id behind a load balancer that routes QUIC by connection
//! ID: a UDP relay here, which reads each packet's destination connection ID the way such a
//! balancer does (plaintext QUIC-LB, config 0, 3-byte server ids).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rtmpq_gateway::connection_ids::route;
use rtmpq_gateway::{Gateway, GatewayConfig};
use tokio::net::UdpSocket;

mod common;
use common::wait_until;

const LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

const SERVER_ID: &str = "c4605e";
const SERVER_ID_BYTES: [u8; 3] = [0xc4, 0x60, 0x5e];
/// 1 + 3 + 8: the first octet, the server id, the nonce.
const CID_LEN: usize = 12;

/// What the relay saw of packets from the client: (short header, destination CID).
type Seen = Arc<Mutex<Vec<(bool, Vec<u8>)>>>;

/// Relays between one client and `gateway`, noting each client packet's destination CID.
async fn relay(gateway: SocketAddr, seen: Seen) -> SocketAddr {
    let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
        let mut client = None;
        loop {
            tokio::select! {
                r = front.recv_from(&mut up) => {
                    let (n, from) = r.unwrap();
                    client = Some(from);
                    let p = &up[..n];
                    let short = p[0] & 0x80 == 0;
                    let dcid = if short {
                        p[1..1 + CID_LEN].to_vec()
                    } else {
                        let len = usize::from(p[5]);
                        p[6..6 + len].to_vec()
                    };
                    seen.lock().unwrap().push((short, dcid));
                    back.send_to(p, gateway).await.unwrap();
                }
                r = back.recv_from(&mut down) => {
                    let (n, _) = r.unwrap();
                    if let Some(c) = client {
                        front.send_to(&down[..n], c).await.unwrap();
                    }
                }
            }
        }
    });
    addr
}

#[tokio::test]
async fn every_packet_after_the_first_flight_routes_to_the_gateways_server_id() {
    let state = tempfile::tempdir().unwrap();
    let gateway = Gateway::bind(GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: state.path().to_owned(),
        server_id: Some(SERVER_ID.into()),
        ..GatewayConfig::default()
    })
    .await
    .unwrap();
    let (gateway_addr, pin) = (gateway.local_addr(), gateway.pin());
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(gateway.run(shutdown.clone()));
    let seen = Seen::default();
    let front = relay(gateway_addr, seen.clone()).await;

    let trust = rtmpq_certs::GatewayTrust::Pin(pin);
    let tls = rtmpq_certs::client_tls(trust, None).unwrap();
    let config = rtmpq_hop::transport::client_config(tls, Default::default()).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(config, front, "localhost")
        .unwrap()
        .await
        .expect("the handshake completes through the relay");
    // Some 1-RTT data: short-header packets to the gateway's connection IDs.
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0u8; 4000]).await.unwrap();
    wait_until(LIMIT, "1-RTT packets through the relay", || {
        seen.lock().unwrap().iter().filter(|p| p.0).count() >= 3
    })
    .await;
    conn.close(0u32.into(), b"done");

    let seen = seen.lock().unwrap();
    let short: Vec<&Vec<u8>> = seen.iter().filter(|p| p.0).map(|p| &p.1).collect();
    assert!(!short.is_empty(), "1-RTT packets went through: {seen:?}");
    for dcid in &short {
        assert_eq!(
            route(dcid, 3),
            Some((0, &SERVER_ID_BYTES[..])),
            "{dcid:02x?}"
        );
        assert_eq!(
            usize::from(dcid[0] & 0x1f),
            CID_LEN - 1,
            "length self-encoded"
        );
    }
    // Only the client's first flight (its own random CID) is unroutable.
    let unroutable = seen
        .iter()
        .filter(|p| route(&p.1, 3) != Some((0, &SERVER_ID_BYTES[..])))
        .count();
    assert!(unroutable <= 2, "{seen:?}");
    shutdown.cancel();
}
