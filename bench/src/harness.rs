//! One bench run: for a profile and a transport, build the link, start nginx-rtmp and a player
//! on the server side, the transport's pieces, and a real ffmpeg pusher on the pusher side; record
//! when every video frame reaches the player and turn that into figures.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtmpq_demo::client::RtmpClient;
use rtmpq_demo::clock::monotonic_ns;
use rtmpq_proto::message::{message_type, MediaKind};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::netem::{self, in_netns, CountsSnapshot, Link, ADDR_B};
use crate::profiles::Profile;

/// How a pusher reaches nginx-rtmp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Transport {
    /// Plain RTMP over TCP, CUBIC congestion control on the pusher's side.
    TcpCubic,
    /// Plain RTMP over TCP, BBR on the pusher's side.
    TcpBbr,
    /// SRT through ffmpeg (MPEG-TS), remuxed to RTMP beside nginx.
    Srt,
    /// A plain QUIC byte pipe, one stream per TCP connection, rtmpq's quinn settings.
    QuicPipe,
    /// The rtmpq tunnel: edge beside the pusher, gateway beside nginx.
    Rtmpq,
}

impl Transport {
    /// Every transport, in report order.
    pub const ALL: [Transport; 5] = [
        Transport::TcpCubic,
        Transport::TcpBbr,
        Transport::Srt,
        Transport::QuicPipe,
        Transport::Rtmpq,
    ];

    /// Short name for tables and the command line.
    pub fn name(self) -> &'static str {
        match self {
            Transport::TcpCubic => "tcp-cubic",
            Transport::TcpBbr => "tcp-bbr",
            Transport::Srt => "srt",
            Transport::QuicPipe => "quic-pipe",
            Transport::Rtmpq => "rtmpq",
        }
    }

    /// The transport called `name`.
    pub fn parse(name: &str) -> Option<Transport> {
        Transport::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// Latency budgets the late ratio is reported at, ms.
pub const BUDGETS_MS: [f64; 4] = [200.0, 500.0, 1000.0, 2000.0];
/// A gap between video frames longer than this is a stall.
pub const STALL_MS: f64 = 300.0;

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Profile name.
    pub profile: String,
    /// Transport name.
    pub transport: &'static str,
    /// Video frames in the clip.
    pub frames_expected: u64,
    /// Video frames the player received.
    pub frames_received: u64,
    /// Extra latency above the run's floor, ms: p50, p95, p99, max.
    pub extra_latency_ms: [f64; 4],
    /// Share of frames later than each of [`BUDGETS_MS`] (missing frames count as late).
    pub late_ratio: [f64; 4],
    /// Video gaps over [`STALL_MS`].
    pub stalls: u64,
    /// Total length of those gaps, s.
    pub stall_seconds: f64,
    /// Media goodput at the player, bit/s.
    pub goodput_bps: f64,
    /// Pusher start to the first frame at the player, s.
    pub start_seconds: Option<f64>,
    /// Whether the pusher pushed the whole clip without an error.
    pub pusher_survived: bool,
    /// Link counts A → B.
    pub link_up: CountsSnapshot,
    /// Link counts B → A.
    pub link_down: CountsSnapshot,
    /// (seconds since the pusher started, extra latency ms) per received frame, thinned.
    pub timeline: Vec<(f64, f64)>,
}

/// What every run shares.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The clip to push (FLV, H.264 + AAC).
    pub clip: PathBuf,
    /// Video frames in it.
    pub frames_expected: u64,
    /// Its length.
    pub duration: Duration,
    /// The rtmpq binary.
    pub rtmpq: PathBuf,
    /// The QUIC byte pipe binary.
    pub quic_pipe: PathBuf,
    /// A cert dir from `rtmpq certs init`.
    pub certs: PathBuf,
    /// Its gateway pin.
    pub pin: String,
    /// Where logs go.
    pub logs: PathBuf,
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The link could not be built.
    #[error("{0}")]
    Link(#[from] netem::NetemError),
    /// A process or socket failed.
    #[error("{what}: {source}")]
    Io {
        /// What.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// A piece did not come up.
    #[error("{0}")]
    Setup(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

/// A process in a namespace whose stderr goes to a log file; killed on drop.
struct NsProcess {
    child: Child,
}

async fn spawn_in(
    ns: &str,
    args: &[String],
    log: &Path,
    ready: Option<&str>,
) -> Result<NsProcess, RunError> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(io_err(format!("start {}", args[0])))?;
    let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
    let mut file = std::fs::File::create(log).map_err(io_err(log.display().to_string()))?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let wanted = ready.map(str::to_owned);
    tokio::spawn(async move {
        use std::io::Write;
        let mut ready_tx = Some(ready_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = writeln!(file, "{line}");
            if wanted.as_deref().is_some_and(|w| line.contains(w)) {
                if let Some(tx) = ready_tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    if let Some(text) = ready {
        tokio::time::timeout(Duration::from_secs(15), ready_rx)
            .await
            .map_err(|_| {
                RunError::Setup(format!(
                    "{} never said {text:?}; see {}",
                    args[0],
                    log.display()
                ))
            })?
            .map_err(|_| {
                RunError::Setup(format!(
                    "{} exited before {text:?}; see {}",
                    args[0],
                    log.display()
                ))
            })?;
    }
    Ok(NsProcess { child })
}

/// Waits until something in `ns` accepts TCP on `addr`.
async fn wait_tcp(ns: &str, addr: &str) -> Result<(), RunError> {
    for _ in 0..300 {
        let addr = addr.to_owned();
        if in_netns(ns, move || std::net::TcpStream::connect(addr)).is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(RunError::Setup(format!(
        "nothing listens on {addr} in {ns}"
    )))
}

/// Waits until a UDP socket is bound to `port` in `ns` (SRT's listener says nothing).
async fn wait_udp(ns: &str, port: u16) -> Result<(), RunError> {
    for _ in 0..300 {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "ss", "-Hlun"])
            .output()
            .await
            .map_err(io_err("ss"))?;
        if String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} ")) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(RunError::Setup(format!("nothing bound UDP {port} in {ns}")))
}

fn nginx_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log info;
events {{ worker_connections 256; }}
rtmp {{
    server {{
        listen 0.0.0.0:1935;
        chunk_size 4096;
        application live {{ live on; record off; }}
    }}
}}
"#
    )
}

#[derive(Debug, Default)]
struct Arrivals {
    /// (RTMP timestamp ms, arrival ns) of each video frame.
    video: Vec<(u32, u64)>,
    media_bytes: u64,
}

/// Runs `transport` over `profile`'s link; `index` keeps namespace names unique.
pub async fn run_one(
    profile: &Profile,
    transport: Transport,
    index: usize,
    ctx: &RunContext,
) -> Result<RunResult, RunError> {
    let tag = format!("rq{}x{index}", std::process::id() % 100_000);
    let link = Link::start(&tag, profile.link.clone()).await?;
    let (a, b) = (link.ns_a.clone(), link.ns_b.clone());
    let run_dir = tempdir(&ctx.logs, &format!("{}-{}", profile.name, transport.name()))?;
    let log = |name: &str| run_dir.join(format!("{name}.log"));
    let s = |v: &str| v.to_owned();

    std::fs::write(run_dir.join("nginx.conf"), nginx_conf(&run_dir))
        .map_err(io_err("nginx.conf"))?;
    let mut procs = vec![
        spawn_in(
            &b,
            &[
                s("nginx"),
                s("-p"),
                run_dir.display().to_string(),
                s("-c"),
                run_dir.join("nginx.conf").display().to_string(),
                s("-e"),
                run_dir.join("nginx-error.log").display().to_string(),
            ],
            &log("nginx"),
            None,
        )
        .await?,
    ];
    wait_tcp(&b, "127.0.0.1:1935").await?;

    // The player: our own RTMP client in B; it never probes, so arrival is arrival.
    let std_tcp = in_netns(&b, || {
        let tcp = std::net::TcpStream::connect("127.0.0.1:1935")?;
        tcp.set_nonblocking(true)?;
        Ok(tcp)
    })
    .map_err(io_err("player connect"))?;
    let tcp = tokio::net::TcpStream::from_std(std_tcp).map_err(io_err("player socket"))?;
    let mut player = RtmpClient::over(tcp, "127.0.0.1:1935", "live")
        .await
        .map_err(|e| RunError::Setup(format!("player: {e}")))?;
    player
        .play("s")
        .await
        .map_err(|e| RunError::Setup(format!("player: {e}")))?;
    let arrivals = Arc::new(Mutex::new(Arrivals::default()));
    let recorder = {
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = player.next_message().await {
                let now = monotonic_ns();
                let kind = msg.media_kind();
                let mut a = arrivals.lock().expect("arrivals");
                if matches!(kind, MediaKind::VideoFrame | MediaKind::VideoKeyframe) {
                    a.video.push((msg.timestamp, now));
                }
                if matches!(msg.type_id, message_type::AUDIO | message_type::VIDEO) {
                    a.media_bytes += msg.payload.len() as u64;
                }
            }
        })
    };

    let rtt = profile.link.up.delay + profile.link.down.delay;
    let rtmpq = ctx.rtmpq.display().to_string();
    let pipe = ctx.quic_pipe.display().to_string();
    let certs = ctx.certs.display().to_string();
    let (url, format) = match transport {
        Transport::TcpCubic | Transport::TcpBbr => {
            let cc = if transport == Transport::TcpCubic {
                "cubic"
            } else {
                "bbr"
            };
            // ffmpeg cannot set its socket's congestion control; the pusher's namespace can,
            // once the host allows the algorithm in other namespaces.
            netem::run(&[
                "sysctl",
                "-qw",
                "net.ipv4.tcp_allowed_congestion_control=reno cubic bbr",
            ])?;
            netem::run(&[
                "ip",
                "netns",
                "exec",
                &a,
                "sysctl",
                "-qw",
                &format!("net.ipv4.tcp_congestion_control={cc}"),
            ])?;
            (format!("rtmp://{ADDR_B}:1935/live/s"), "flv")
        }
        Transport::Rtmpq => {
            procs.push(
                spawn_in(
                    &b,
                    &[
                        rtmpq.clone(),
                        s("gateway"),
                        s("--listen"),
                        s("0.0.0.0:4433"),
                        s("--origin"),
                        s("rtmp://127.0.0.1:1935"),
                        s("--cert-dir"),
                        certs.clone(),
                    ],
                    &log("gateway"),
                    Some("gateway ready"),
                )
                .await?,
            );
            procs.push(
                spawn_in(
                    &a,
                    &[
                        rtmpq,
                        s("edge"),
                        s("--listen"),
                        s("127.0.0.1:1935"),
                        s("--gateway"),
                        format!("{ADDR_B}:4433"),
                        s("--pin"),
                        ctx.pin.clone(),
                    ],
                    &log("edge"),
                    Some("connected to gateway"),
                )
                .await?,
            );
            (s("rtmp://127.0.0.1:1935/live/s"), "flv")
        }
        Transport::QuicPipe => {
            procs.push(
                spawn_in(
                    &b,
                    &[
                        pipe.clone(),
                        s("server"),
                        s("0.0.0.0:4434"),
                        s("127.0.0.1:1935"),
                        certs,
                    ],
                    &log("pipe-server"),
                    Some("ready"),
                )
                .await?,
            );
            procs.push(
                spawn_in(
                    &a,
                    &[
                        pipe,
                        s("client"),
                        s("127.0.0.1:1935"),
                        format!("{ADDR_B}:4434"),
                        ctx.pin.clone(),
                    ],
                    &log("pipe-client"),
                    Some("ready"),
                )
                .await?,
            );
            (s("rtmp://127.0.0.1:1935/live/s"), "flv")
        }
        Transport::Srt => {
            // SRT's guides: latency about 4 x RTT, never under the 120 ms default. The receiver
            // probes briefly but keeps what it probed (`-fflags nobuffer` would discard it and
            // lose the first GOP; default probing would hold the stream for 5 s).
            let latency_us = (rtt.as_micros() as u64 * 4).max(120_000);
            procs.push(
                spawn_in(
                    &b,
                    &[
                        s("ffmpeg"),
                        s("-hide_banner"),
                        s("-loglevel"),
                        s("warning"),
                        s("-probesize"),
                        s("200000"),
                        s("-analyzeduration"),
                        s("500000"),
                        s("-i"),
                        format!("srt://0.0.0.0:9000?mode=listener&latency={latency_us}"),
                        s("-c"),
                        s("copy"),
                        s("-f"),
                        s("flv"),
                        s("rtmp://127.0.0.1:1935/live/s"),
                    ],
                    &log("srt-receiver"),
                    None,
                )
                .await?,
            );
            wait_udp(&b, 9000).await?;
            (
                format!("srt://{ADDR_B}:9000?latency={latency_us}&pkt_size=1316"),
                "mpegts",
            )
        }
    };

    let started_ns = monotonic_ns();
    let mut pusher = spawn_in(
        &a,
        &[
            s("ffmpeg"),
            s("-hide_banner"),
            s("-loglevel"),
            s("warning"),
            s("-re"),
            s("-i"),
            ctx.clip.display().to_string(),
            s("-c"),
            s("copy"),
            s("-f"),
            s(format),
            url,
        ],
        &log("pusher"),
        None,
    )
    .await?;
    let limit = ctx.duration + Duration::from_secs(30);
    let survived = match tokio::time::timeout(limit, pusher.child.wait()).await {
        Ok(Ok(status)) => status.success(),
        _ => false,
    };
    // Frames still in flight get a little time to land; late ones count as late anyway.
    let settle = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < settle
        && (arrivals.lock().expect("arrivals").video.len() as u64) < ctx.frames_expected
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    recorder.abort();
    drop(procs);
    let arrivals = std::mem::take(&mut *arrivals.lock().expect("arrivals"));
    let result = summarize(
        profile.name,
        transport,
        &arrivals,
        started_ns,
        ctx.frames_expected,
        survived,
        link.up.snapshot(),
        link.down.snapshot(),
    );
    tracing::info!("link {}: {}", profile.name, link.summary());
    Ok(result)
}

fn tempdir(parent: &Path, name: &str) -> Result<PathBuf, RunError> {
    let dir = parent.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io_err(dir.display().to_string()))?;
    Ok(dir)
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    profile: &str,
    transport: Transport,
    arrivals: &Arrivals,
    started_ns: u64,
    expected: u64,
    pusher_survived: bool,
    link_up: CountsSnapshot,
    link_down: CountsSnapshot,
) -> RunResult {
    let frames = &arrivals.video;
    let received = (frames.len() as u64).min(expected);
    let latency: Vec<f64> = frames
        .iter()
        .map(|&(ts, at)| (at as f64 - started_ns as f64) / 1e6 - f64::from(ts))
        .collect();
    let floor = latency.iter().copied().fold(f64::INFINITY, f64::min);
    let extra: Vec<f64> = latency.iter().map(|l| l - floor).collect();
    let q = |p: f64| rtmpq_demo::media::quantile(&extra, p).unwrap_or(f64::NAN);
    let missing = expected - received;
    let late_ratio = BUDGETS_MS.map(|budget| {
        let late = extra.iter().filter(|&&e| e > budget).count() as u64;
        ((late.min(received) + missing) as f64 / expected as f64).min(1.0)
    });
    let mut stalls = 0;
    let mut stall_seconds = 0.0;
    for pair in frames.windows(2) {
        let gap = (pair[1].1 - pair[0].1) as f64 / 1e6;
        if gap > STALL_MS {
            stalls += 1;
            stall_seconds += gap / 1e3;
        }
    }
    let span = match (frames.first(), frames.last()) {
        (Some(first), Some(last)) if last.1 > first.1 => (last.1 - first.1) as f64 / 1e9,
        _ => f64::NAN,
    };
    let step = (frames.len() / 600).max(1);
    RunResult {
        profile: profile.to_owned(),
        transport: transport.name(),
        frames_expected: expected,
        frames_received: received,
        extra_latency_ms: [q(0.5), q(0.95), q(0.99), q(1.0)],
        late_ratio,
        stalls,
        stall_seconds,
        goodput_bps: arrivals.media_bytes as f64 * 8.0 / span,
        start_seconds: frames
            .first()
            .map(|&(_, at)| (at.saturating_sub(started_ns)) as f64 / 1e9),
        pusher_survived,
        link_up,
        link_down,
        timeline: frames
            .iter()
            .zip(&extra)
            .step_by(step)
            .map(|(&(_, at), &e)| ((at.saturating_sub(started_ns)) as f64 / 1e9, e))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_missing_frames_as_late_and_finds_stalls() {
        let t0 = 1_000_000_000u64;
        // 10 frames at 100 ms; frame 5 arrives 700 ms late, frames 8 and 9 never arrive.
        let mut video: Vec<(u32, u64)> = (0..8u32)
            .map(|i| (i * 100, t0 + 50_000_000 + u64::from(i) * 100_000_000))
            .collect();
        video[5].1 += 700_000_000;
        video.sort_by_key(|v| v.1);
        let arrivals = Arrivals {
            video,
            media_bytes: 8000,
        };
        let r = summarize(
            "p",
            Transport::Rtmpq,
            &arrivals,
            t0,
            10,
            true,
            CountsSnapshot::default(),
            CountsSnapshot::default(),
        );
        assert_eq!(r.frames_received, 8);
        assert!((r.extra_latency_ms[3] - 700.0).abs() < 1e-6);
        // 200 and 500 ms budgets: frame 5 plus 2 missing; 1000 ms: only the missing.
        assert_eq!(r.late_ratio, [0.3, 0.3, 0.2, 0.2]);
        assert_eq!(r.stalls, 1, "the gap before the late frame");
        assert!((r.start_seconds.unwrap() - 0.05).abs() < 1e-9);
    }
}
