//! A bounded flood against a gateway's UDP port, sent from inside a network namespace: QUIC
//! handshakes in a protocol it does not speak, HELLOs with a wrong token, half-open handshakes
//! (a real client Initial sent from many source ports, never continued) and garbage datagrams.
//! Each kind is counted as sent and as the gateway answered it.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rtmpq_certs::{Fingerprint, GatewayTrust};
use rtmpq_proto::wire::{Frame, WIRE_VERSION};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::netem::in_netns;

/// How much of each kind to send.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FloodSpec {
    /// When the flood starts, from the pusher's start.
    pub at: Duration,
    /// Full QUIC handshakes offering an ALPN the gateway does not speak.
    pub wrong_alpn: usize,
    /// Handshakes that complete and then say HELLO with a wrong token.
    pub bad_hellos: usize,
    /// Client Initials sent from fresh source ports and never continued.
    pub half_open: usize,
    /// Datagrams of random bytes (half of them shaped like QUIC long-header packets).
    pub garbage: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
}

/// What the flood sent and what came of it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FloodReport {
    /// Wrong-ALPN handshakes the gateway refused.
    pub wrong_alpn_refused: usize,
    /// Wrong-ALPN handshakes that succeeded (must be 0).
    pub wrong_alpn_accepted: usize,
    /// Wrong-token HELLOs the gateway closed.
    pub bad_hellos_closed: usize,
    /// Wrong-token HELLOs that did not get through the handshake (refused, retried away,
    /// timed out).
    pub bad_hellos_not_connected: usize,
    /// Half-open Initials sent.
    pub half_open_sent: usize,
    /// Garbage datagrams sent.
    pub garbage_sent: usize,
    /// How long sending took, s.
    pub seconds: f64,
}

/// The QUIC client config a flood uses: the gateway's pin and `alpn`.
fn client(pin: Fingerprint, alpn: &[u8]) -> quinn::ClientConfig {
    let mut tls = rtmpq_certs::client_tls(GatewayTrust::Pin(pin), None).expect("client tls");
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(5)).expect("in range"),
    ));
    config.transport_config(Arc::new(transport));
    config
}

/// A UDP socket in namespace `ns` on an ephemeral port.
fn socket_in(ns: &str) -> std::io::Result<UdpSocket> {
    in_netns(ns, || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
}

fn endpoint_in(ns: &str) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket_in(ns)?,
        Arc::new(quinn::TokioRuntime),
    )
}

/// `n` real client Initials, each of its own connection (its own destination connection ID),
/// captured by a local socket in `ns` standing in for the gateway: each replayed once from a
/// new source port starts a handshake the gateway must work on (the same Initial twice would
/// be one connection to it).
async fn captured_initials(ns: &str, pin: Fingerprint, n: usize) -> std::io::Result<Vec<Vec<u8>>> {
    let capture = in_netns(ns, || UdpSocket::bind("127.0.0.1:0"))?;
    capture.set_read_timeout(Some(Duration::from_secs(5)))?;
    let addr = capture.local_addr()?;
    let endpoint = endpoint_in(ns)?;
    let config = client(pin, b"rtmpq/3");
    let mut connecting = Vec::with_capacity(n);
    for _ in 0..n {
        connecting.push(
            endpoint
                .connect_with(config.clone(), addr, "localhost")
                .map_err(std::io::Error::other)?,
        );
    }
    let grab = tokio::task::spawn_blocking(move || {
        let mut seen = std::collections::HashSet::new();
        let mut initials = Vec::with_capacity(n);
        let mut buf = vec![0u8; 65_536];
        while initials.len() < n {
            let Ok((len, _)) = capture.recv_from(&mut buf) else {
                break;
            };
            // Byte 5 is the destination connection ID's length, the ID follows.
            let dcid_end = 6 + usize::from(*buf.get(5).unwrap_or(&0));
            if len > dcid_end && seen.insert(buf[6..dcid_end].to_vec()) {
                initials.push(buf[..len].to_vec());
            }
        }
        initials
    });
    let initials = grab.await.map_err(std::io::Error::other)?;
    drop(connecting);
    endpoint.close(0u32.into(), b"");
    Ok(initials)
}

/// Floods `target` from namespace `ns` as `spec` says; returns what came of it.
pub async fn flood(
    ns: &str,
    target: SocketAddr,
    pin: Fingerprint,
    spec: FloodSpec,
) -> std::io::Result<FloodReport> {
    let started = Instant::now();
    let mut report = FloodReport::default();
    let initials = captured_initials(ns, pin, spec.half_open).await?;

    // Garbage and half-open Initials interleaved with the handshakes below.
    let (ns_owned, garbage) = (ns.to_owned(), spec.garbage);
    let datagrams = tokio::task::spawn_blocking(move || {
        let mut rng = rand::rng();
        let spray = socket_in(&ns_owned)?;
        let steps = garbage.max(initials.len()).max(1);
        let (mut sent_garbage, mut sent_initials) = (0, 0);
        for i in 0..steps {
            if i < garbage {
                let len = rng.random_range(1..1400);
                let mut d: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                if i % 2 == 0 && len > 6 {
                    // A long header, QUIC version 1: parsed further before it is dropped.
                    d[0] = 0xc0 | (d[0] & 0x0f);
                    d[1..5].copy_from_slice(&1u32.to_be_bytes());
                }
                if spray.send_to(&d, target).is_ok() {
                    sent_garbage += 1;
                }
            }
            if let Some(initial) = initials.get(i) {
                // A fresh source port per Initial: each is a new handshake to the gateway.
                let s = socket_in(&ns_owned)?;
                if s.send_to(initial, target).is_ok() {
                    sent_initials += 1;
                }
            }
            if i % 200 == 199 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok::<_, std::io::Error>((sent_garbage, sent_initials))
    });

    let endpoint = endpoint_in(ns)?;
    let wrong_alpn = client(pin, b"not-rtmpq");
    let right_alpn = client(pin, b"rtmpq/3");
    let mut inflight = JoinSet::new();
    // The two kinds of handshake, interleaved.
    let (mut alpn_left, mut hellos_left) = (spec.wrong_alpn, spec.bad_hellos);
    while alpn_left + hellos_left > 0 {
        while inflight.len() >= spec.concurrency.max(1) {
            tally(&mut report, inflight.join_next().await);
        }
        let bad_hello = hellos_left > 0 && hellos_left >= alpn_left;
        if bad_hello {
            hellos_left -= 1;
        } else {
            alpn_left -= 1;
        }
        let config = if bad_hello {
            right_alpn.clone()
        } else {
            wrong_alpn.clone()
        };
        let Ok(connecting) = endpoint.connect_with(config, target, "localhost") else {
            continue;
        };
        inflight.spawn(async move {
            let Ok(conn) = connecting.await else {
                return Outcome::NotConnected { bad_hello };
            };
            if !bad_hello {
                conn.close(0u32.into(), b"");
                return Outcome::WrongAlpnAccepted;
            }
            let said = async {
                let (mut send, _recv) = conn.open_bi().await.ok()?;
                let hello = Frame::Hello {
                    version: WIRE_VERSION,
                    edge_id: "flood".into(),
                    token: "wrong-token".into(),
                    release_after_ms: 0,
                };
                rtmpq_hop::tunnel::write_frame(&mut send, &hello).await.ok()
            };
            let _ = said.await;
            let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
            Outcome::HelloClosed
        });
    }
    while let Some(done) = inflight.join_next().await {
        tally(&mut report, Some(done));
    }
    let (garbage_sent, half_open_sent) = datagrams.await.map_err(std::io::Error::other)??;
    report.garbage_sent = garbage_sent;
    report.half_open_sent = half_open_sent;
    report.seconds = started.elapsed().as_secs_f64();
    endpoint.close(0u32.into(), b"");
    Ok(report)
}

enum Outcome {
    NotConnected { bad_hello: bool },
    WrongAlpnAccepted,
    HelloClosed,
}

fn tally(report: &mut FloodReport, done: Option<Result<Outcome, tokio::task::JoinError>>) {
    match done {
        Some(Ok(Outcome::NotConnected { bad_hello: false })) => report.wrong_alpn_refused += 1,
        Some(Ok(Outcome::NotConnected { bad_hello: true })) => report.bad_hellos_not_connected += 1,
        Some(Ok(Outcome::WrongAlpnAccepted)) => report.wrong_alpn_accepted += 1,
        Some(Ok(Outcome::HelloClosed)) => report.bad_hellos_closed += 1,
        _ => {}
    }
}
