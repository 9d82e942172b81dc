//! Loopback figures, the tunnel beside the alternatives in one run: start-up time (pusher TCP
//! connect to the first media message at a player of the origin), and throughput with 1 and 16
//! sessions through the tunnel and through a plain TCP relay of the same bytes, with the CPU
//! time (user + system, whole process) per gigabit.
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

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// A plain TCP relay: every connection to `listener` is copied byte for byte to `origin`.
async fn tcp_relay(listener: tokio::net::TcpListener, origin: String) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            return;
        };
        let origin = origin.clone();
        tokio::spawn(async move {
            if let Ok(mut upstream) = tokio::net::TcpStream::connect(&origin).await {
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        });
    }
}

struct Throughput {
    gbps: f64,
    cpu_per_gbit: f64,
    delivered: u64,
}

/// `sessions` publishers push `total` bytes between them through `target`; one player per
/// stream on the origin receives them.
async fn throughput(
    target: &str,
    origin: &str,
    sessions: usize,
    total: usize,
    tag: &str,
) -> Throughput {
    let frames = total / sessions / FRAME;
    let mut players = Vec::new();
    let mut publishers = Vec::new();
    for i in 0..sessions {
        let name = format!("{tag}{i}");
        players.push(player(origin, &name).await);
        let mut p = RtmpClient::connect(target, "live").await.unwrap();
        p.publish(&name).await.unwrap();
        publishers.push(p);
    }
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let senders: Vec<_> = publishers
        .into_iter()
        .map(|publisher| {
            tokio::spawn(async move {
                let id = publisher.stream_id();
                for i in 0..frames {
                    let m = Message {
                        stream_id: id,
                        timestamp: i as u32,
                        ..keyframe(FRAME, i + 1 == frames)
                    };
                    publisher.send(m).await.unwrap();
                }
                publisher
            })
        })
        .collect();
    let receivers: Vec<_> = players
        .into_iter()
        .map(|mut p| {
            tokio::spawn(async move {
                let mut received = 0u64;
                while let Some(m) = p.next_message().await.unwrap() {
                    if m.type_id == message_type::VIDEO {
                        received += m.payload.len() as u64;
                        if m.payload[FRAME - 1] == 0xee {
                            break;
                        }
                    }
                }
                received
            })
        })
        .collect();
    let mut delivered = 0;
    for r in receivers {
        delivered += r.await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    for s in senders {
        s.await.unwrap().close().await;
    }
    let gbit = delivered as f64 * 8.0 / 1e9;
    Throughput {
        gbps: gbit / secs,
        cpu_per_gbit: cpu / gbit,
        delivered,
    }
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

    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap().to_string();
    tokio::spawn(tcp_relay(relay, origin.clone()));
    for sessions in [1usize, 16] {
        let tcp = throughput(
            &relay_addr,
            &origin,
            sessions,
            THROUGHPUT_BYTES,
            &format!("r{sessions}-"),
        )
        .await;
        let quic = throughput(
            &edge_addr,
            &origin,
            sessions,
            THROUGHPUT_BYTES,
            &format!("q{sessions}-"),
        )
        .await;
        println!(
            "{sessions:>2} session(s), {} MiB of 64 KiB video messages: TCP relay {:.2} Gbit/s, {:.2} CPU-s/Gbit ({} MiB delivered); tunnel {:.2} Gbit/s, {:.2} CPU-s/Gbit ({} MiB delivered); tunnel/relay CPU per Gbit {:.1}x",
            THROUGHPUT_BYTES >> 20,
            tcp.gbps,
            tcp.cpu_per_gbit,
            tcp.delivered >> 20,
            quic.gbps,
            quic.cpu_per_gbit,
            quic.delivered >> 20,
            quic.cpu_per_gbit / tcp.cpu_per_gbit
        );
    }
    shutdown.cancel();
}
