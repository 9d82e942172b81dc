//! Loopback figures, tunnel beside direct in one run: start-up time (pusher TCP connect to the
//! first media message at a player of the origin) and one session's throughput.
//!
//! `cargo bench --bench loopback`

use std::time::{Duration, Instant};

use bytes::Bytes;
use rtmpq_demo::client::RtmpClient;
use rtmpq_edge::{Edge, EdgeConfig};
use rtmpq_gateway::{Gateway, GatewayConfig};
use rtmpq_proto::message::{message_type, Message};
use tokio_util::sync::CancellationToken;

const STARTUP_TRIALS: usize = 30;
const THROUGHPUT_BYTES: usize = 512 << 20;
const FRAME: usize = 64 << 10;

fn keyframe(len: usize, last: bool) -> Message {
    let mut p = vec![0x17u8, 1, 0, 0, 0];
    p.resize(len, if last { 0xee } else { 0x11 });
    Message::new(message_type::VIDEO, 1, 0, Bytes::from(p))
}

async fn player(origin: &str, name: &str) -> RtmpClient {
    let mut p = RtmpClient::connect(origin, "live").await.unwrap();
    p.play(name).await.unwrap();
    p
}

async fn first_media(p: &mut RtmpClient) {
    while let Some(m) = p.next_message().await.unwrap() {
        if m.type_id == message_type::VIDEO {
            return;
        }
    }
    panic!("stream ended before media");
}

async fn startup(target: &str, origin: &str, name: &str) -> Duration {
    let mut p = player(origin, name).await;
    let t0 = Instant::now();
    let mut publisher = RtmpClient::connect(target, "live").await.unwrap();
    publisher.publish(name).await.unwrap();
    let id = publisher.stream_id();
    publisher
        .send(Message {
            stream_id: id,
            ..keyframe(1000, false)
        })
        .await
        .unwrap();
    first_media(&mut p).await;
    let elapsed = t0.elapsed();
    publisher.close().await;
    elapsed
}

async fn throughput(target: &str, origin: &str, name: &str) -> (f64, u64) {
    let mut p = player(origin, name).await;
    let mut publisher = RtmpClient::connect(target, "live").await.unwrap();
    publisher.publish(name).await.unwrap();
    let id = publisher.stream_id();
    let frames = THROUGHPUT_BYTES / FRAME;
    let t0 = Instant::now();
    let sender = tokio::spawn(async move {
        for i in 0..frames {
            let m = Message {
                stream_id: id,
                timestamp: i as u32,
                ..keyframe(FRAME, i + 1 == frames)
            };
            publisher.send(m).await.unwrap();
        }
        publisher
    });
    let mut received = 0u64;
    while let Some(m) = p.next_message().await.unwrap() {
        if m.type_id == message_type::VIDEO {
            received += m.payload.len() as u64;
            if m.payload[FRAME - 1] == 0xee {
                break;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    sender.await.unwrap().close().await;
    (received as f64 * 8.0 / secs / 1e9, received)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let state = tempfile::tempdir().unwrap();
    let gateway = Gateway::bind(GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: state.path().to_owned(),
        ..GatewayConfig::default()
    })
    .await
    .unwrap();
    let origin = gateway.origin().to_owned();
    let edge = Edge::bind(EdgeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        gateway: gateway.local_addr().to_string(),
        pin: Some(gateway.pin().to_string()),
        ..EdgeConfig::default()
    })
    .await
    .unwrap();
    let edge_addr = edge.local_addr().to_string();
    let shutdown = CancellationToken::new();
    tokio::spawn(gateway.run(shutdown.clone()));
    tokio::spawn(edge.run(shutdown.clone()));
    // Warm up the QUIC connection so start-up measures sessions, not the first handshake.
    startup(&edge_addr, &origin, "warm").await;

    let (mut direct, mut tunnel) = (Vec::new(), Vec::new());
    for i in 0..STARTUP_TRIALS {
        direct.push(startup(&origin, &origin, &format!("d{i}")).await);
        tunnel.push(startup(&edge_addr, &origin, &format!("t{i}")).await);
    }
    let (d, t) = (median(direct), median(tunnel));
    println!(
        "startup (connect -> first media at the origin's player), median of {STARTUP_TRIALS}: direct {:.2} ms, tunnel {:.2} ms, ratio {:.2}",
        d.as_secs_f64() * 1e3,
        t.as_secs_f64() * 1e3,
        t.as_secs_f64() / d.as_secs_f64()
    );

    let (direct_gbps, direct_bytes) = throughput(&origin, &origin, "tp-direct").await;
    let (tunnel_gbps, tunnel_bytes) = throughput(&edge_addr, &origin, "tp-tunnel").await;
    println!(
        "one session, {} MiB of 64 KiB video messages: direct {direct_gbps:.2} Gbit/s ({} MiB delivered), tunnel {tunnel_gbps:.2} Gbit/s ({} MiB delivered), ratio {:.2}",
        THROUGHPUT_BYTES >> 20,
        direct_bytes >> 20,
        tunnel_bytes >> 20,
        tunnel_gbps / direct_gbps
    );
    shutdown.cancel();
}
