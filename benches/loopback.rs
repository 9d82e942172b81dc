//! Loopback figures, the tunnel beside a plain TCP relay and a TLS 1.3 relay pair in one run:
//! start-up time (pusher TCP connect to the first media message at a player of the origin),
//! and throughput with the CPU time each process spends per gigabit: the edge and the gateway
//! are real `rtmpq` processes, each relay is a process of its own, and the origin, publishers
//! and players run here, so no process's figure includes another's work. The TLS pair is what
//! a hop that must encrypt costs at least: the near relay takes plain RTMP and sends it over
//! TLS 1.3 (rustls, ring, AES-GCM) to the far one, which hands it to the origin, as the edge
//! and the gateway do over QUIC.
//!
//! Workloads: 64 KiB video messages (1 and 16 sessions) and a real media mix (30 fps video of
//! ~12 KB with a ~60 KB key frame every 2 s, plus ~300-byte AAC frames, 50 sessions), sent as
//! fast as the path takes them, so per-message costs show.
//!
//! `cargo bench --bench loopback` (uses `target/release/rtmpq`; `RTMPQ_BIN=PATH` to measure
//! another build, for a before/after comparison).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtmpq_demo::client::RtmpClient;
use rtmpq_gateway::EmbeddedOrigin;
use rtmpq_proto::message::{message_type, Message};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

const STARTUP_TRIALS: usize = 30;
/// Bytes pushed per throughput run (all sessions together).
const THROUGHPUT_BYTES: usize = 512 << 20;
/// Set in a child of this bench to make it a relay: `LISTEN=TARGET`.
const RELAY_ENV: &str = "RTMPQ_BENCH_RELAY";
/// With [`RELAY_ENV`]: the relay's TLS side, `near:PIN` (plain in, TLS to a far relay with
/// that certificate) or `far:STATE_DIR` (TLS in with the certificate kept there, plain out).
const RELAY_TLS_ENV: &str = "RTMPQ_BENCH_RELAY_TLS";

/// How the publishers' messages are shaped.
#[derive(Debug, Clone, Copy)]
enum Mix {
    /// 64 KiB video messages only.
    Big,
    /// 30 fps video (12 KB, a 60 KB key frame every 60 frames) and 1.5 AAC frames of 300
    /// bytes per video frame.
    Media,
}

impl Mix {
    fn name(self) -> &'static str {
        match self {
            Mix::Big => "64 KiB video messages",
            Mix::Media => "media mix (12 KB video at 30 fps, 60 KB key frames, AAC)",
        }
    }

    /// The `i`-th message of a stream; the last one is a key frame, so a player that fell
    /// behind and waits for one still gets it.
    fn message(self, i: usize, last: bool) -> Message {
        let (type_id, len, key) = match self {
            Mix::Big => (message_type::VIDEO, 64 << 10, true),
            // Per 2 video frames, 3 audio frames: positions 0, 2 video; 1, 3, 4 audio.
            Mix::Media => match i % 5 {
                0 | 2 => {
                    let frame = i / 5 * 2 + usize::from(i % 5 == 2);
                    let key = frame.is_multiple_of(60) || last;
                    (message_type::VIDEO, if key { 60_000 } else { 12_000 }, key)
                }
                _ => (message_type::AUDIO, 300, false),
            },
        };
        let mut p = match type_id {
            message_type::VIDEO => vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0],
            _ => vec![0xaf, 1],
        };
        p.resize(len, if last { 0xee } else { 0x11 });
        Message::new(type_id, 1, (i * 13) as u32, Bytes::from(p))
    }

    /// Messages per stream for `bytes` of payload.
    fn messages_for(self, bytes: usize) -> usize {
        match self {
            Mix::Big => bytes / (64 << 10),
            // Five messages average 2 × 13.6 KB of video and 900 B of audio; the count ends
            // on a video position.
            Mix::Media => bytes / (2 * 13_600 + 900) * 5 + 1,
        }
    }
}

/// CPU seconds (user + system) a process has used so far, from `/proc/PID/stat`.
fn process_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// A child process whose stderr is read for its "ready" line.
struct Child {
    child: tokio::process::Child,
    ready: String,
}

impl Child {
    async fn start(cmd: &mut tokio::process::Command, ready: &str) -> Child {
        let mut child = cmd
            .stderr(Stdio::piped())
            .env("RUST_LOG", "warn,rtmpq_edge=info,rtmpq_gateway=info")
            .kill_on_drop(true)
            .spawn()
            .expect("start child");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let line = loop {
            match lines.next_line().await.unwrap() {
                Some(line) if line.contains(ready) => break line,
                Some(_) => continue,
                None => panic!("child ended before {ready:?}"),
            }
        };
        // Keep draining so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Child { child, ready: line }
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// The value after `key=` in the ready line.
    fn field(&self, key: &str) -> String {
        let start = self.ready.find(&format!("{key}=")).unwrap() + key.len() + 1;
        self.ready[start..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }
}

async fn player(origin: &str, name: &str) -> RtmpClient {
    let mut p = RtmpClient::connect(origin, "live").await.unwrap();
    p.play(name).await.unwrap();
    p
}

async fn startup(target: &str, origin: &str, name: &str) -> Duration {
    let mut p = player(origin, name).await;
    let t0 = Instant::now();
    let mut publisher = RtmpClient::connect(target, "live").await.unwrap();
    publisher.publish(name).await.unwrap();
    let id = publisher.stream_id();
    let first = Message {
        stream_id: id,
        ..Mix::Big.message(0, false)
    };
    publisher.send(first).await.unwrap();
    while let Some(m) = p.next_message().await.unwrap() {
        if m.type_id == message_type::VIDEO {
            break;
        }
    }
    let elapsed = t0.elapsed();
    publisher.close().await;
    elapsed
}

struct Throughput {
    gbps: f64,
    /// CPU-s per Gbit of each measured process, in the order given.
    cpu_per_gbit: Vec<f64>,
    delivered: u64,
}

/// `sessions` publishers push `total` bytes between them through `target`; one player per
/// stream on the origin receives them; `pids` are the processes whose CPU is measured.
async fn throughput(
    target: &str,
    origin: &str,
    sessions: usize,
    mix: Mix,
    pids: &[u32],
    tag: &str,
) -> Throughput {
    let messages = mix.messages_for(THROUGHPUT_BYTES / sessions);
    let mut players = Vec::new();
    let mut publishers = Vec::new();
    for i in 0..sessions {
        let name = format!("{tag}{i}");
        players.push(player(origin, &name).await);
        let mut p = RtmpClient::connect(target, "live").await.unwrap();
        p.publish(&name).await.unwrap();
        publishers.push(p);
    }
    let cpu0: Vec<f64> = pids.iter().map(|&p| process_cpu(p)).collect();
    let t0 = Instant::now();
    let senders: Vec<_> = publishers
        .into_iter()
        .map(|publisher| {
            tokio::spawn(async move {
                let id = publisher.stream_id();
                for i in 0..messages {
                    let m = Message {
                        stream_id: id,
                        ..mix.message(i, i + 1 == messages)
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
                    if m.type_id == message_type::VIDEO || m.type_id == message_type::AUDIO {
                        received += m.payload.len() as u64;
                        if m.payload.last() == Some(&0xee) {
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
    let gbit = delivered as f64 * 8.0 / 1e9;
    let cpu_per_gbit = pids
        .iter()
        .zip(cpu0)
        .map(|(&p, c0)| (process_cpu(p) - c0) / gbit)
        .collect();
    for s in senders {
        s.await.unwrap().close().await;
    }
    Throughput {
        gbps: gbit / secs,
        cpu_per_gbit,
        delivered,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A relay's TLS side ([`RELAY_TLS_ENV`]).
#[derive(Clone)]
enum RelayTls {
    /// Plain in, plain out.
    None,
    /// Plain in, TLS out (the far relay's certificate pinned).
    Near(tokio_rustls::TlsConnector),
    /// TLS in, plain out.
    Far(tokio_rustls::TlsAcceptor),
}

impl RelayTls {
    fn from_env() -> RelayTls {
        let Ok(spec) = std::env::var(RELAY_TLS_ENV) else {
            return RelayTls::None;
        };
        match spec.split_once(':') {
            Some(("near", pin)) => {
                let trust = rtmpq_certs::GatewayTrust::Pin(pin.parse().expect("a pin"));
                let tls = rtmpq_certs::client_tls(trust, None).unwrap();
                RelayTls::Near(std::sync::Arc::new(tls).into())
            }
            Some(("far", dir)) => {
                let identity = rtmpq_certs::self_signed(std::path::Path::new(dir)).unwrap();
                let tls = rtmpq_certs::server_tls(identity, None).unwrap();
                RelayTls::Far(std::sync::Arc::new(tls).into())
            }
            _ => panic!("{RELAY_TLS_ENV}: near:PIN or far:DIR"),
        }
    }

    /// Relays `client` to `target` until either side closes.
    async fn relay(self, mut client: tokio::net::TcpStream, target: String) {
        let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        match self {
            RelayTls::None => {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
            RelayTls::Near(tls) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                if let Ok(mut upstream) = tls.connect(name, upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            }
            RelayTls::Far(tls) => {
                if let Ok(mut client) = tls.accept(client).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            }
        }
    }
}

/// A relay, when this bench runs as its own child: plain TCP, or one side of the TLS pair.
fn run_relay(spec: &str) {
    let (listen, target) = spec.split_once('=').expect("LISTEN=TARGET");
    let tls = RelayTls::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        eprintln!("relay ready listen={}", listener.local_addr().unwrap());
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(tls.clone().relay(client, target.to_owned()));
        }
    });
}

fn main() {
    if let Ok(spec) = std::env::var(RELAY_ENV) {
        return run_relay(&spec);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench());
}

async fn bench() {
    let bin = std::env::var("RTMPQ_BIN")
        .unwrap_or_else(|_| format!("{}/target/release/rtmpq", env!("CARGO_MANIFEST_DIR")));
    assert!(
        std::path::Path::new(&bin).exists(),
        "{bin} not found: cargo build --release first, or set RTMPQ_BIN"
    );
    let shutdown = CancellationToken::new();
    let origin = EmbeddedOrigin::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let origin_addr = origin.local_addr().to_string();
    tokio::spawn(origin.run(shutdown.clone()));

    let state = tempfile::tempdir().unwrap();
    let gateway = Child::start(
        tokio::process::Command::new(&bin)
            .args(["gateway", "--listen", "127.0.0.1:0", "--origin"])
            .arg(format!("rtmp://{origin_addr}"))
            .arg("--state-dir")
            .arg(state.path()),
        "gateway ready",
    )
    .await;
    let gateway_addr: SocketAddr = gateway.field("listen").parse().unwrap();
    let pin = rtmpq_certs::self_signed(state.path())
        .unwrap()
        .fingerprint()
        .to_string();
    let edge = Child::start(
        tokio::process::Command::new(&bin).args([
            "edge",
            "--listen",
            "127.0.0.1:0",
            "--gateway",
            &gateway_addr.to_string(),
            "--pin",
            &pin,
        ]),
        "edge ready",
    )
    .await;
    let edge_addr = edge.field("listen");
    let relay = Child::start(
        tokio::process::Command::new(std::env::current_exe().unwrap())
            .env(RELAY_ENV, format!("127.0.0.1:0={origin_addr}")),
        "relay ready",
    )
    .await;
    let relay_addr = relay.field("listen");
    let tls_state = tempfile::tempdir().unwrap();
    let tls_pin = rtmpq_certs::self_signed(tls_state.path())
        .unwrap()
        .fingerprint()
        .to_string();
    let far = Child::start(
        tokio::process::Command::new(std::env::current_exe().unwrap())
            .env(RELAY_ENV, format!("127.0.0.1:0={origin_addr}"))
            .env(RELAY_TLS_ENV, format!("far:{}", tls_state.path().display())),
        "relay ready",
    )
    .await;
    let near = Child::start(
        tokio::process::Command::new(std::env::current_exe().unwrap())
            .env(RELAY_ENV, format!("127.0.0.1:0={}", far.field("listen")))
            .env(RELAY_TLS_ENV, format!("near:{tls_pin}")),
        "relay ready",
    )
    .await;
    let tls_addr = near.field("listen");
    println!("measuring {bin}");

    // Warm up the QUIC connection so start-up measures sessions, not the first handshake.
    startup(&edge_addr, &origin_addr, "warm").await;
    let (mut direct, mut tunnel) = (Vec::new(), Vec::new());
    for i in 0..STARTUP_TRIALS {
        direct.push(startup(&origin_addr, &origin_addr, &format!("d{i}")).await);
        tunnel.push(startup(&edge_addr, &origin_addr, &format!("t{i}")).await);
    }
    let (d, t) = (median(direct), median(tunnel));
    println!(
        "startup (connect -> first media at the origin's player), median of {STARTUP_TRIALS}: direct {:.2} ms, tunnel {:.2} ms, ratio {:.2}",
        d.as_secs_f64() * 1e3,
        t.as_secs_f64() * 1e3,
        t.as_secs_f64() / d.as_secs_f64()
    );

    println!("| workload | sessions | relay Gbit/s | TLS pair Gbit/s | tunnel Gbit/s | relay CPU-s/Gbit | TLS near / far CPU-s/Gbit | edge CPU-s/Gbit | gateway CPU-s/Gbit | edge / TLS near | gateway / TLS far |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (mix, sessions) in [
        (Mix::Big, 1usize),
        (Mix::Big, 16),
        (Mix::Media, 1),
        (Mix::Media, 50),
    ] {
        let tag = format!(
            "{}{sessions}-",
            if matches!(mix, Mix::Big) { "b" } else { "m" }
        );
        let run = async |target: &str, pids: &[u32], path: &str| {
            throughput(
                target,
                &origin_addr,
                sessions,
                mix,
                pids,
                &format!("{path}{tag}"),
            )
            .await
        };
        let tcp = run(&relay_addr, &[relay.pid()], "r").await;
        let tls = run(&tls_addr, &[near.pid(), far.pid()], "s").await;
        let quic = run(&edge_addr, &[edge.pid(), gateway.pid()], "q").await;
        assert!(tcp.delivered > 0 && tls.delivered > 0 && quic.delivered > 0);
        let (near_cpu, far_cpu) = (tls.cpu_per_gbit[0], tls.cpu_per_gbit[1]);
        println!(
            "| {} | {sessions} | {:.2} | {:.2} | {:.2} | {:.3} | {:.3} / {:.3} | {:.3} | {:.3} | {:.2} | {:.2} |",
            mix.name(),
            tcp.gbps,
            tls.gbps,
            quic.gbps,
            tcp.cpu_per_gbit[0],
            near_cpu,
            far_cpu,
            quic.cpu_per_gbit[0],
            quic.cpu_per_gbit[1],
            quic.cpu_per_gbit[0] / near_cpu,
            quic.cpu_per_gbit[1] / far_cpu,
        );
    }
    shutdown.cancel();
}
