//! Many sessions at once on loopback, with the built-in publishers and players and a real
//! nginx-rtmp origin: the soak (one edge and one gateway for minutes: memory and descriptors
//! flat, nothing late, every session ending normally) and the capacity ramp (3 Mbit/s
//! sessions added step by step until a frame is late beyond 500 ms, with the hops' CPU per
//! gigabit beside a plain TCP relay of the same streams).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtmpq_demo::client::RtmpClient;
use rtmpq_demo::clock::monotonic_ns;
use rtmpq_demo::media::{publish_synthetic, PlayStats, StreamShape};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::harness::{nginx_conf, rss_of, spawn_in, sum_by_label, NsProcess, RunError};

/// A frame later than this (arrival minus due time) is late.
pub const LATE_MS: f64 = 500.0;

/// What a load run starts from.
#[derive(Debug, Clone)]
pub struct LoadContext {
    /// The rtmpq binary.
    pub rtmpq: PathBuf,
    /// The plain TCP relay (`benches/tcp_relay.rs`).
    pub tcp_relay: PathBuf,
    /// A cert dir from `rtmpq certs init`, and its pin.
    pub certs: PathBuf,
    /// Its gateway pin.
    pub pin: String,
    /// Logs and state.
    pub dir: PathBuf,
}

/// The value after `key=` in a log line, with `Some(..)` unwrapped.
fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    let value = line[start..].split_whitespace().next()?;
    Some(
        value
            .trim_start_matches("Some(")
            .trim_end_matches(')')
            .to_owned(),
    )
}

fn free_port() -> Result<u16, RunError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| RunError::Setup(format!("free port: {e}")))?;
    Ok(l.local_addr().expect("bound").port())
}

/// nginx, and what media enters through: an edge and a gateway, or a TCP relay.
struct Stack {
    nginx: NsProcess,
    /// The hops' processes (gateway, edge) or the relay's, with names.
    hops: Vec<(&'static str, NsProcess)>,
    /// Where publishers connect.
    ingest: String,
    /// Where players connect (nginx).
    origin: String,
    /// The hops' metrics addresses (gateway, edge).
    metrics: Vec<String>,
}

/// Which path media takes to nginx.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum IngestPath {
    /// Through an edge and a gateway.
    Rtmpq,
    /// Through a plain TCP relay.
    TcpRelay,
}

async fn start_stack(ctx: &LoadContext, path: IngestPath, tag: &str) -> Result<Stack, RunError> {
    let dir = ctx.dir.join(tag);
    std::fs::create_dir_all(&dir).map_err(|e| RunError::Setup(e.to_string()))?;
    let log = |name: &str| dir.join(format!("{name}.log"));
    let s = |v: &str| v.to_owned();
    let origin = format!("127.0.0.1:{}", free_port()?);
    std::fs::write(dir.join("nginx.conf"), nginx_conf(&dir, &origin, false))
        .map_err(|e| RunError::Setup(e.to_string()))?;
    let nginx = spawn_in(
        "",
        &[
            s("nginx"),
            s("-p"),
            dir.display().to_string(),
            s("-c"),
            dir.join("nginx.conf").display().to_string(),
            s("-e"),
            dir.join("nginx-error.log").display().to_string(),
        ],
        &log("nginx"),
        None,
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&origin).is_err() {
        if Instant::now() > deadline {
            return Err(RunError::Setup(format!("nginx never listened on {origin}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rtmpq = ctx.rtmpq.display().to_string();
    // One edge carries every session on one connection: the default limits (256 sessions per
    // edge and per connection) would refuse the ramp's upper steps.
    let (gateway_toml, edge_toml) = (dir.join("gateway.toml"), dir.join("edge.toml"));
    std::fs::write(
        &gateway_toml,
        "max_sessions_per_connection = 4096\nmax_sessions_per_edge = 4096\nmax_sessions = 4096\n",
    )
    .map_err(|e| RunError::Setup(e.to_string()))?;
    std::fs::write(&edge_toml, "max_sessions = 4096\n")
        .map_err(|e| RunError::Setup(e.to_string()))?;
    let (hops, ingest, metrics) = match path {
        IngestPath::Rtmpq => {
            let gateway = spawn_in(
                "",
                &[
                    rtmpq.clone(),
                    s("gateway"),
                    s("--config"),
                    gateway_toml.display().to_string(),
                    s("--listen"),
                    s("127.0.0.1:0"),
                    s("--origin"),
                    format!("rtmp://{origin}"),
                    s("--cert-dir"),
                    ctx.certs.display().to_string(),
                    s("--state-dir"),
                    dir.display().to_string(),
                    s("--metrics"),
                    s("127.0.0.1:0"),
                ],
                &log("gateway"),
                Some("gateway ready"),
            )
            .await?;
            let quic = field(&gateway.ready_line, "listen").unwrap_or_default();
            let gateway_metrics = field(&gateway.ready_line, "metrics").unwrap_or_default();
            let edge = spawn_in(
                "",
                &[
                    rtmpq,
                    s("edge"),
                    s("--config"),
                    edge_toml.display().to_string(),
                    s("--listen"),
                    s("127.0.0.1:0"),
                    s("--gateway"),
                    quic,
                    s("--pin"),
                    ctx.pin.clone(),
                    s("--metrics"),
                    s("127.0.0.1:0"),
                ],
                &log("edge"),
                Some("edge ready"),
            )
            .await?;
            let ingest = field(&edge.ready_line, "listen").unwrap_or_default();
            let edge_metrics = field(&edge.ready_line, "metrics").unwrap_or_default();
            (
                vec![("gateway", gateway), ("edge", edge)],
                ingest,
                vec![gateway_metrics, edge_metrics],
            )
        }
        IngestPath::TcpRelay => {
            let relay = spawn_in(
                "",
                &[
                    ctx.tcp_relay.display().to_string(),
                    s("127.0.0.1:0"),
                    origin.clone(),
                ],
                &log("relay"),
                Some("ready"),
            )
            .await?;
            let ingest = field(&relay.ready_line, "listen").unwrap_or_default();
            (vec![("tcp relay", relay)], ingest, Vec::new())
        }
    };
    Ok(Stack {
        nginx,
        hops,
        ingest,
        origin,
        metrics,
    })
}

/// What one session's player saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionOutcome {
    /// Video frames the publisher sent.
    pub sent: u32,
    /// Video frames the player received.
    pub received: u64,
    /// Of those, later than [`LATE_MS`].
    pub late: u64,
    /// Media payload bytes the player received.
    pub bytes: u64,
    /// The latest, ms.
    pub max_latency_ms: f64,
    /// Whether the publisher published to the end without an error.
    pub published: bool,
}

/// Runs `n` sessions named `{prefix}{i}`: each a player on nginx, then a publisher of a
/// synthetic `kbps` stream through `ingest` for `duration`. Returns when all have ended.
async fn run_sessions(
    stack: &Stack,
    prefix: &str,
    n: usize,
    kbps: u32,
    duration: Duration,
) -> Vec<SessionOutcome> {
    let mut sessions = JoinSet::new();
    for i in 0..n {
        let (ingest, origin) = (stack.ingest.clone(), stack.origin.clone());
        let name = format!("{prefix}{i}");
        sessions.spawn(async move {
            let mut outcome = SessionOutcome::default();
            let Ok(mut player) = RtmpClient::connect(&origin, "live").await else {
                return outcome;
            };
            if player.play(&name).await.is_err() {
                return outcome;
            }
            let sent = Arc::new(AtomicU32::new(0));
            let publishing = {
                let sent = sent.clone();
                async move {
                    let mut client = RtmpClient::connect(&ingest, "live").await.ok()?;
                    client.publish(&name).await.ok()?;
                    let shape = StreamShape {
                        video_kbps: kbps,
                        duration: Some(duration),
                    };
                    publish_synthetic(&client, shape, &sent).await.ok()?;
                    client.close().await;
                    Some(())
                }
            };
            let mut stats = PlayStats::default();
            let playing = async {
                while let Ok(Some(msg)) = player.next_message().await {
                    stats.record(&msg, monotonic_ns());
                }
            };
            // The player goes on until the publisher is done and what it sent had time to land.
            let published = tokio::select! {
                published = publishing => published.is_some(),
                _ = playing => false,
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Ok(Some(msg)) = player.next_message().await {
                    stats.record(&msg, monotonic_ns());
                }
            })
            .await;
            outcome.published = published;
            outcome.sent = sent.load(std::sync::atomic::Ordering::Relaxed);
            outcome.received = stats.video_frames;
            outcome.bytes = stats.bytes;
            outcome.late = stats
                .video_latency_ms
                .iter()
                .filter(|&&l| l > LATE_MS)
                .count() as u64;
            outcome.max_latency_ms = stats.latency_quantile(1.0).unwrap_or(f64::NAN);
            outcome
        });
        // Sessions start spread out, as real pushers do (and their key frames do not align).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut out = Vec::with_capacity(n);
    while let Some(done) = sessions.join_next().await {
        out.push(done.unwrap_or_default());
    }
    out
}

/// CPU time (user + system) a process has used, s.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// Context switches (voluntary and not) of every thread of a process so far: each is a
/// thread put to sleep or woken, the cost of a wake-up the CPU figure alone hides.
fn context_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(total)
}

/// Open file descriptors of a process.
fn fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// A metrics page over plain HTTP/1.0.
async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let _ = tcp
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: rtmpq\r\n\r\n")
        .await;
    let mut page = String::new();
    let _ = tcp.read_to_string(&mut page).await;
    page
}

/// One look at a hop process.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the sessions started.
    pub at: f64,
    /// Resident memory, bytes.
    pub rss: u64,
    /// Open descriptors.
    pub fds: usize,
}

/// What the soak measured.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// Sessions run at once.
    pub sessions: usize,
    /// Their video bitrate, kbit/s.
    pub video_kbps: u32,
    /// How long they ran, s.
    pub seconds: f64,
    /// The warm-up left out of the growth figures, s.
    pub warmup_seconds: f64,
    /// Samples per hop (`gateway`, `edge`).
    pub samples: Vec<(String, Vec<Sample>)>,
    /// Per hop: memory growth from the end of the warm-up to the end, as a share.
    pub rss_growth: Vec<(String, f64)>,
    /// Per hop: descriptors at the end of the warm-up and at the end.
    pub fds: Vec<(String, usize, usize)>,
    /// Video frames sent and received, over all sessions.
    pub frames_sent: u64,
    /// Received.
    pub frames_received: u64,
    /// Frames later than [`LATE_MS`].
    pub late_frames: u64,
    /// The latest frame, ms.
    pub max_latency_ms: f64,
    /// Sessions whose publisher finished without an error.
    pub published: usize,
    /// Per hop: sessions ended by reason (`rtmpq_sessions_ended_total`).
    pub ended: Vec<(String, std::collections::BTreeMap<String, f64>)>,
    /// Per hop: video frames its latency budget or byte bound dropped, by reason
    /// (`rtmpq_session_dropped_frames_total{kind="video"}`): every frame a player missed is
    /// one of these, or it was lost.
    pub dropped_video: Vec<(String, std::collections::BTreeMap<String, f64>)>,
}

/// The median of the samples in `[from, to)` seconds (memory wobbles with allocator timing).
fn median_rss(samples: &[Sample], from: f64, to: f64) -> f64 {
    let mut v: Vec<f64> = samples
        .iter()
        .filter(|s| s.at >= from && s.at < to)
        .map(|s| s.rss as f64)
        .collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs `sessions` sessions of `video_kbps` through one edge and one gateway for `duration`.
pub async fn soak(
    ctx: &LoadContext,
    sessions: usize,
    video_kbps: u32,
    duration: Duration,
    warmup: Duration,
) -> Result<SoakReport, RunError> {
    let stack = start_stack(ctx, IngestPath::Rtmpq, "soak").await?;
    let started = Instant::now();
    let pids: Vec<(&str, u32)> = stack
        .hops
        .iter()
        .filter_map(|(name, p)| Some((*name, p.child.id()?)))
        .collect();
    let samples: std::sync::Mutex<Vec<(String, Vec<Sample>)>> = std::sync::Mutex::new(
        pids.iter()
            .map(|(n, _)| (n.to_string(), Vec::new()))
            .collect(),
    );
    let look = |at: f64| {
        let mut samples = samples.lock().expect("samples");
        for ((_, pid), (_, list)) in pids.iter().zip(samples.iter_mut()) {
            if let (Some(rss), Some(fds)) = (rss_of(*pid), fds(*pid)) {
                list.push(Sample { at, rss, fds });
            }
        }
    };
    let sampling = async {
        loop {
            look(started.elapsed().as_secs_f64());
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    };
    let outcomes = tokio::select! {
        outcomes = run_sessions(&stack, "soak", sessions, video_kbps, duration) => outcomes,
        _ = sampling => unreachable!("sampling never ends"),
    };
    // One last look after every session ended.
    look(started.elapsed().as_secs_f64());
    let samples = samples.into_inner().expect("samples");
    let w = warmup.as_secs_f64();
    let span = duration.as_secs_f64();
    let window = ((span - w) / 5.0).max(4.0);
    let rss_growth = samples
        .iter()
        .map(|(name, list)| {
            let early = median_rss(list, w, w + window);
            let late = median_rss(list, span - window, span);
            (name.clone(), late / early - 1.0)
        })
        .collect();
    let fds = samples
        .iter()
        .map(|(name, list)| {
            let at_warmup = list.iter().find(|s| s.at >= w).map_or(0, |s| s.fds);
            let at_end = list
                .iter()
                .rev()
                .find(|s| s.at <= span)
                .map_or(0, |s| s.fds);
            (name.clone(), at_warmup, at_end)
        })
        .collect();
    let (mut ended, mut dropped_video) = (Vec::new(), Vec::new());
    for (name, addr) in ["gateway", "edge"].iter().zip(&stack.metrics) {
        let page = scrape(addr).await;
        ended.push((
            name.to_string(),
            sum_by_label(&page, "rtmpq_sessions_ended_total", "reason"),
        ));
        let video: String = page
            .lines()
            .filter(|l| l.contains("kind=\"video\""))
            .flat_map(|l| [l, "\n"])
            .collect();
        dropped_video.push((
            name.to_string(),
            sum_by_label(&video, "rtmpq_session_dropped_frames_total", "reason"),
        ));
    }
    Ok(SoakReport {
        sessions,
        video_kbps,
        seconds: span,
        warmup_seconds: w,
        samples,
        rss_growth,
        fds,
        frames_sent: outcomes.iter().map(|o| u64::from(o.sent)).sum(),
        frames_received: outcomes.iter().map(|o| o.received).sum(),
        late_frames: outcomes.iter().map(|o| o.late).sum(),
        max_latency_ms: outcomes
            .iter()
            .map(|o| o.max_latency_ms)
            .filter(|l| l.is_finite())
            .fold(0.0, f64::max),
        published: outcomes.iter().filter(|o| o.published).count(),
        ended,
        dropped_video,
    })
}

/// One step of the capacity ramp on one path.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityStep {
    /// The path media took.
    pub path: IngestPath,
    /// Sessions at once.
    pub sessions: usize,
    /// Media carried, Mbit/s: the payload bytes the players received over the step's wall
    /// time (session start-up and the last frames' landing included, as in the CPU figure).
    pub mbps: f64,
    /// Frames later than [`LATE_MS`], over all sessions.
    pub late_frames: u64,
    /// Sessions whose publisher published to the end (the others were refused or failed).
    pub published: usize,
    /// Frames sent and received.
    pub frames_sent: u64,
    /// Received.
    pub frames_received: u64,
    /// The latest frame, ms.
    pub max_latency_ms: f64,
    /// CPU each hop process used, in cores (CPU seconds per second), by name.
    pub cpu_cores: Vec<(String, f64)>,
    /// CPU per gigabit carried, by name: CPU seconds per gigabit of media delivered (cores
    /// busy per Gbit/s).
    pub cores_per_gbps: Vec<(String, f64)>,
    /// Context switches of each process's threads per video frame delivered (a frame and its
    /// share of audio: about 2.4 RTMP messages at 30 fps with 44.1 kHz AAC), by name.
    pub switches_per_frame: Vec<(String, f64)>,
}

/// Runs `sessions` sessions of `video_kbps` for `duration` on `path`; measures the hops' CPU.
pub async fn capacity_step(
    ctx: &LoadContext,
    path: IngestPath,
    sessions: usize,
    video_kbps: u32,
    duration: Duration,
) -> Result<CapacityStep, RunError> {
    let tag = format!(
        "capacity-{}-{sessions}",
        match path {
            IngestPath::Rtmpq => "rtmpq",
            IngestPath::TcpRelay => "relay",
        }
    );
    let stack = start_stack(ctx, path, &tag).await?;
    // The hops, and for the whole machine's picture nginx and this process (the clients).
    let mut pids: Vec<(&str, u32)> = stack
        .hops
        .iter()
        .filter_map(|(name, p)| Some((*name, p.child.id()?)))
        .collect();
    pids.extend(stack.nginx.child.id().map(|pid| ("nginx", pid)));
    pids.push(("clients", std::process::id()));
    let cpu_before: Vec<f64> = pids
        .iter()
        .map(|(_, pid)| cpu_seconds(*pid).unwrap_or(0.0))
        .collect();
    let switches_before: Vec<u64> = pids
        .iter()
        .map(|(_, pid)| context_switches(*pid).unwrap_or(0))
        .collect();
    let started = Instant::now();
    let outcomes = run_sessions(&stack, "cap", sessions, video_kbps, duration).await;
    let wall = started.elapsed().as_secs_f64();
    let received: u64 = outcomes.iter().map(|o| o.received).sum();
    let sent: u64 = outcomes.iter().map(|o| u64::from(o.sent)).sum();
    // What the sessions carried over the same wall time the CPU is divided by.
    let bytes: u64 = outcomes.iter().map(|o| o.bytes).sum();
    let mbps = bytes as f64 * 8.0 / wall / 1e6;
    let cpu_cores: Vec<(String, f64)> = pids
        .iter()
        .zip(&cpu_before)
        .map(|((name, pid), before)| {
            let used = cpu_seconds(*pid).unwrap_or(*before) - before;
            (name.to_string(), used / wall)
        })
        .collect();
    let cores_per_gbps = cpu_cores
        .iter()
        .map(|(n, c)| (n.clone(), c / (mbps / 1e3)))
        .collect();
    let switches_per_frame = pids
        .iter()
        .zip(&switches_before)
        .map(|((name, pid), before)| {
            let switches = context_switches(*pid).unwrap_or(*before) - before;
            (name.to_string(), switches as f64 / received.max(1) as f64)
        })
        .collect();
    Ok(CapacityStep {
        path,
        sessions,
        published: outcomes.iter().filter(|o| o.published).count(),
        mbps,
        late_frames: outcomes.iter().map(|o| o.late).sum(),
        frames_sent: sent,
        frames_received: received,
        max_latency_ms: outcomes
            .iter()
            .map(|o| o.max_latency_ms)
            .filter(|l| l.is_finite())
            .fold(0.0, f64::max),
        cpu_cores,
        cores_per_gbps,
        switches_per_frame,
    })
}

/// The figures of a whole capacity ramp.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityReport {
    /// Video bitrate per session, kbit/s.
    pub video_kbps: u32,
    /// Each step, both paths.
    pub steps: Vec<CapacityStep>,
    /// The most sessions the rtmpq path carried with no frame late beyond [`LATE_MS`].
    pub rtmpq_capacity: usize,
}

/// Ramps sessions up through `steps`, each held for `duration`, on the rtmpq path and then the
/// TCP relay; stops climbing a path after its first step with a late frame.
pub async fn capacity(
    ctx: &LoadContext,
    steps: &[usize],
    video_kbps: u32,
    duration: Duration,
) -> Result<CapacityReport, RunError> {
    let mut out = Vec::new();
    let mut rtmpq_capacity = 0;
    for path in [IngestPath::Rtmpq, IngestPath::TcpRelay] {
        for &n in steps {
            let step = capacity_step(ctx, path, n, video_kbps, duration).await?;
            println!("{}", step_line(&step));
            let clean = step.late_frames == 0
                && step.published == n
                && step.frames_received * 100 >= step.frames_sent * 99;
            if path == IngestPath::Rtmpq && clean {
                rtmpq_capacity = n;
            }
            out.push(step);
            if !clean {
                break;
            }
        }
    }
    Ok(CapacityReport {
        video_kbps,
        steps: out,
        rtmpq_capacity,
    })
}

/// One line per capacity step.
pub fn step_line(s: &CapacityStep) -> String {
    let cpu: Vec<String> = s
        .cpu_cores
        .iter()
        .zip(&s.cores_per_gbps)
        .zip(&s.switches_per_frame)
        .map(|(((n, c), (_, g)), (_, w))| {
            format!("{n} {c:.2} cores ({g:.2}/Gbit/s, {w:.1} switches/frame)")
        })
        .collect();
    format!(
        "{:?} {:>4} sessions ({} published) {:>7.1} Mbit/s frames {}/{} late>{LATE_MS} ms {} max {:.0} ms; {}",
        s.path,
        s.sessions,
        s.published,
        s.mbps,
        s.frames_received,
        s.frames_sent,
        s.late_frames,
        s.max_latency_ms,
        cpu.join(", ")
    )
}

/// The soak's figures as lines.
pub fn soak_lines(r: &SoakReport) -> Vec<String> {
    let mut lines = vec![format!(
        "soak: {} sessions of {} kbit/s for {:.0} s (warm-up {:.0} s): frames {}/{}, late>{LATE_MS} ms {}, max {:.0} ms, publishers finished {}/{}",
        r.sessions,
        r.video_kbps,
        r.seconds,
        r.warmup_seconds,
        r.frames_received,
        r.frames_sent,
        r.late_frames,
        r.max_latency_ms,
        r.published,
        r.sessions
    )];
    for ((name, growth), (_, fd_start, fd_end)) in r.rss_growth.iter().zip(&r.fds) {
        let peak = r
            .samples
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, l)| l.iter().map(|s| s.rss).max().unwrap_or(0));
        lines.push(format!(
            "  {name}: memory {:+.1} % after warm-up (peak {:.1} MiB), descriptors {fd_start} -> {fd_end}",
            growth * 100.0,
            peak as f64 / 1048576.0
        ));
    }
    for ((name, ended), (_, dropped)) in r.ended.iter().zip(&r.dropped_video) {
        lines.push(format!(
            "  {name}: sessions ended {ended:?}, video frames dropped {dropped:?}"
        ));
    }
    lines
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), RunError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| RunError::Setup(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| RunError::Setup(e.to_string()))
}
