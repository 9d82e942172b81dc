//! One bench run: for a profile and a transport, build the link, start nginx-rtmp and a player
//! on the server side, the transport's pieces, and a real ffmpeg pusher on the pusher side; record
//! when every video frame reaches the player and turn that into figures.

use std::collections::BTreeMap;
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

use crate::bulk::BulkReport;
use crate::flood::FloodReport;
use crate::netem::{self, in_netns, CountsSnapshot, Link, ADDR_B};
use crate::profiles::{Profile, Restarted};

/// The token of the one edge identity the bench's gateway lists.
const BENCH_TOKEN: &str = "bench-edge-token";
/// Where the bench's gateway serves metrics, inside its namespace.
const GATEWAY_METRICS: &str = "127.0.0.1:9464";
/// The UDP port the bench's rtmpq gateway listens on in B.
pub const GATEWAY_PORT: u16 = 4433;
/// The port of the second gateway of profiles that have one.
const SECOND_GATEWAY_PORT: u16 = 4435;

/// How a pusher reaches nginx-rtmp (or, playing, how a player reaches it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Transport {
    /// Plain RTMP over TCP, CUBIC congestion control on the sending side.
    TcpCubic,
    /// Plain RTMP over TCP, BBR on the sending side.
    TcpBbr,
    /// SRT through ffmpeg (MPEG-TS), remuxed to RTMP beside nginx (publish only).
    Srt,
    /// A plain QUIC byte pipe, one stream per TCP connection, rtmpq's quinn settings.
    QuicPipe,
    /// The rtmpq tunnel: edge beside the pusher (or player), gateway beside nginx.
    Rtmpq {
        /// The edge's `--latency-budget-ms`.
        budget_ms: u32,
        /// The edge's `--backpressure-ms` (0: off).
        backpressure_ms: u32,
        /// The edge's `--carrier`: lanes (audio and each GOP on QUIC streams of their own, the
        /// default) or the session stream.
        lanes: bool,
        /// The edge's `--transport`: `quic`, `tcp` (the TCP carrier, TLS 1.3 over TCP) or
        /// `auto` (QUIC, and TCP where QUIC does not answer).
        transport: &'static str,
        /// Both ends' `--congestion`: `live` (rtmpq's own) or `bbr` (quinn's).
        congestion: &'static str,
    },
}

/// The edge's default latency budget, ms.
pub const DEFAULT_BUDGET_MS: u32 = 1000;
/// The back-pressure threshold `rtmpq-bp` runs with, ms.
pub const BENCH_BACKPRESSURE_MS: u32 = 250;

impl Transport {
    /// The latency budget the transport holds the stream to, ms: the edge's; a pipe has
    /// none, and is judged at the default's.
    pub fn budget_ms(&self) -> u32 {
        match self {
            Transport::Rtmpq { budget_ms, .. } => *budget_ms,
            _ => DEFAULT_BUDGET_MS,
        }
    }

    /// rtmpq with its defaults.
    pub const RTMPQ: Transport = Transport::Rtmpq {
        budget_ms: DEFAULT_BUDGET_MS,
        backpressure_ms: 0,
        lanes: true,
        transport: "quic",
        congestion: "live",
    };

    /// Every transport, in report order.
    pub const ALL: [Transport; 5] = [
        Transport::TcpCubic,
        Transport::TcpBbr,
        Transport::Srt,
        Transport::QuicPipe,
        Transport::RTMPQ,
    ];

    /// Short name for tables and the command line: `rtmpq` with the default budget,
    /// `rtmpq:MS` with another, `rtmpq-bp` in back-pressure mode, `rtmpq-stream` with
    /// everything on the session stream (no media lanes), `rtmpq-tcp` on the TCP carrier;
    /// `-bbr` after any of them (before the budget) with quinn's BBR, not rtmpq's `live`.
    pub fn name(self) -> String {
        match self {
            Transport::TcpCubic => "tcp-cubic".into(),
            Transport::TcpBbr => "tcp-bbr".into(),
            Transport::Srt => "srt".into(),
            Transport::QuicPipe => "quic-pipe".into(),
            Transport::Rtmpq {
                budget_ms,
                backpressure_ms,
                lanes,
                transport,
                congestion,
            } => {
                let mut name = "rtmpq".to_owned();
                if backpressure_ms > 0 {
                    name.push_str("-bp");
                }
                if transport != "quic" {
                    name.push('-');
                    name.push_str(transport);
                } else if !lanes {
                    name.push_str("-stream");
                }
                if congestion != "live" {
                    name.push('-');
                    name.push_str(congestion);
                }
                if budget_ms != DEFAULT_BUDGET_MS {
                    name.push_str(&format!(":{budget_ms}"));
                }
                name
            }
        }
    }

    /// Whether it has a server end beside nginx to kill and start again (the restart
    /// profiles): rtmpq's gateway, the QUIC pipe's server.
    pub fn has_server_end(self) -> bool {
        matches!(self, Transport::Rtmpq { .. } | Transport::QuicPipe)
    }

    /// The transport called `name` (see [`Transport::name`]).
    pub fn parse(name: &str) -> Option<Transport> {
        let (base, budget) = match name.split_once(':') {
            Some((base, ms)) => (base, ms.parse().ok()?),
            None => (name, DEFAULT_BUDGET_MS),
        };
        if let Some(base) = base.strip_suffix("-bbr").filter(|b| b.starts_with("rtmpq")) {
            return match Transport::parse(&format!("{base}:{budget}"))? {
                Transport::Rtmpq {
                    budget_ms,
                    backpressure_ms,
                    lanes,
                    transport,
                    ..
                } => Some(Transport::Rtmpq {
                    budget_ms,
                    backpressure_ms,
                    lanes,
                    transport,
                    congestion: "bbr",
                }),
                _ => None,
            };
        }
        match base {
            "rtmpq" => Some(Transport::Rtmpq {
                budget_ms: budget,
                backpressure_ms: 0,
                lanes: true,
                transport: "quic",
                congestion: "live",
            }),
            "rtmpq-bp" => Some(Transport::Rtmpq {
                budget_ms: budget,
                backpressure_ms: BENCH_BACKPRESSURE_MS,
                lanes: true,
                transport: "quic",
                congestion: "live",
            }),
            "rtmpq-stream" => Some(Transport::Rtmpq {
                budget_ms: budget,
                backpressure_ms: 0,
                lanes: false,
                transport: "quic",
                congestion: "live",
            }),
            // Media lanes where QUIC runs; on TCP everything rides the session's connection.
            "rtmpq-tcp" | "rtmpq-auto" => Some(Transport::Rtmpq {
                budget_ms: budget,
                backpressure_ms: 0,
                lanes: true,
                transport: if base == "rtmpq-tcp" { "tcp" } else { "auto" },
                congestion: "live",
            }),
            _ if budget != DEFAULT_BUDGET_MS => None,
            _ => Transport::ALL.into_iter().find(|t| t.name() == name),
        }
    }
}

/// Which way the media goes through the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Direction {
    /// The pusher is behind the link (A), nginx and the player beside each other (B).
    Publish,
    /// The pusher is beside nginx (B), the player behind the link (A): play through the edge.
    Play,
}

impl Direction {
    /// `publish` or `play`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Publish => "publish",
            Direction::Play => "play",
        }
    }
}

/// Latency budgets the late ratio is reported at, ms.
pub const BUDGETS_MS: [f64; 5] = [200.0, 300.0, 500.0, 1000.0, 2000.0];
/// A gap between video frames longer than this is a stall.
pub const STALL_MS: f64 = 300.0;

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Profile name.
    pub profile: String,
    /// Transport name, with " play" for the play direction.
    pub transport: String,
    /// `publish` or `play`.
    pub direction: &'static str,
    /// Video frames in the clip.
    pub frames_expected: u64,
    /// Video frames the player received.
    pub frames_received: u64,
    /// Latency (arrival minus due time), ms: p50, p95, p99, max.
    pub latency_ms: [f64; 4],
    /// What latency is counted from: `pusher` (the due time on the pusher's own clock, read by
    /// its tap; nothing subtracted) or `smallest` (a pusher the tap cannot read: above the
    /// run's smallest latency).
    pub latency_from: &'static str,
    /// With `latency_from` `pusher`: how much higher every latency would be were the source's
    /// clock taken to start at the earliest departure less the frame's own timestamp (no frame
    /// early), ms ([`crate::tap::SourceClock::spread_ns`]).
    pub source_spread_ms: Option<f64>,
    /// Share of frames later than each of [`BUDGETS_MS`] (missing frames count as late).
    pub late_ratio: [f64; 5],
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
    /// The run's smallest latency, ms (with `latency_from` `smallest`, from the pusher's
    /// start: what was subtracted).
    pub floor_ms: f64,
    /// Share of the clip's audio frames the player received.
    pub audio_delivered: f64,
    /// Audio's latency, ms, p99 over the window's frames, counted as video's is (audio behind
    /// a lost video packet on the same QUIC stream waits for its retransmission).
    pub audio_p99_ms: f64,
    /// Errors ffmpeg reports decoding exactly what the player received.
    pub decode_errors: Option<u64>,
    /// Audio or video frames whose timestamp was below the one before on the same track, in
    /// what one player connection received from the origin (a re-setup that restarted a
    /// track's clock would show here).
    pub timestamps_back: u64,
    /// After each blackout, from the link's return to the first video frame within 100 ms of
    /// the run's smallest latency, s (`None` if none came).
    pub recovery_seconds: Vec<Option<f64>>,
    /// Link counts A → B.
    pub link_up: CountsSnapshot,
    /// Link counts B → A.
    pub link_down: CountsSnapshot,
    /// (seconds since the pusher started, latency ms) per received frame, thinned.
    pub timeline: Vec<(f64, f64)>,
    /// The flood sent at the gateway during the run, and what came of it.
    pub flood: Option<FloodReport>,
    /// The bulk upload beside the stream, and what it got through.
    pub bulk: Option<BulkReport>,
    /// The link's floor and the video frames it can carry at most ([`link_limits`]).
    pub link_limits: Option<LinkLimits>,
    /// The server end's (gateway's, QUIC pipe server's) largest resident memory during the
    /// run, bytes.
    pub server_rss_peak_bytes: Option<u64>,
    /// The gateway's refusal counters at the run's end (`reason` of
    /// `rtmpq_handshake_failures_total`, `retries` for `rtmpq_quic_retries_total`).
    pub server_refusals: BTreeMap<String, f64>,
}

/// What a video frame is to the frames after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameRole {
    /// A key frame: a GOP starts here.
    Key,
    /// An inter frame later frames of its GOP reference.
    Reference,
    /// A picture nothing references (`rtmpq_proto::picture::is_disposable`).
    Disposable,
}

/// One video frame of a clip, in decode order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClipFrame {
    /// Its timestamp (decode time), ms: when the pusher sends it.
    pub due_ms: u32,
    /// Its size, bytes.
    pub bytes: u64,
    /// What it is to the frames after it.
    pub role: FrameRole,
}

/// What a clip holds, bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClipSizes {
    /// The largest video key frame.
    pub largest_key_frame: u64,
    /// All video frames.
    pub video_bytes: u64,
    /// All audio frames.
    pub audio_bytes: u64,
}

/// What packet headers (IP, UDP, QUIC short header and AEAD tag, about 50 bytes of a 1200-byte
/// packet) take of a link's rate.
pub const HEADER_SHARE: f64 = 0.04;

/// The bottleneck the stream's way: its one-way delay and its rate over the run, as
/// (from, bit/s) steps in time order (`None` when the rate is not limited).
fn bottleneck(profile: &Profile, direction: Direction) -> Option<(Duration, Vec<(Duration, u64)>)> {
    let spec = match direction {
        Direction::Publish => &profile.link.up,
        Direction::Play => &profile.link.down,
    };
    let first = spec.rate_bps?;
    let mut steps = vec![(Duration::ZERO, first)];
    steps.extend(profile.link.rate_steps.iter().copied());
    Some((spec.delay, steps))
}

/// What a link lets through of a clip: see [`link_limits`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LinkLimits {
    /// The one-way delay and the largest key frame's serialization at the link's rate, ms
    /// (`None` when the rate changes during the run).
    pub floor_ms: Option<f64>,
    /// The video frames the link can carry at most: at each rate, what is left of it once
    /// packet headers and audio pass, over the video's rate, for the time it lasts.
    pub frames_ceiling: u64,
    /// The latency budget the run was held to, ms (the edge's; for the pipes, the default
    /// budget's figures).
    pub budget_ms: u32,
    /// The most video frames that arrive within that budget of their due time and decode,
    /// whichever a sender that knows the link ahead of time sends ([`frames_in_budget`]).
    pub frames_in_budget: u64,
    /// The video frames the run's figures judge (those due in the profile's window).
    pub frames_judged: u64,
}

/// What the profile's link lets through of the run's clip, the stream's way (`None` for a
/// link whose rate is not limited). `dark` holds the link's blackouts in this run as (from,
/// length) on the clip's clock (timestamp zero due at zero): where a blackout falls against the
/// key frames decides how much of the clip any sender can save.
pub fn link_limits(
    profile: &Profile,
    direction: Direction,
    ctx: &RunContext,
    budget_ms: u32,
    dark: &[(Duration, Duration)],
) -> Option<LinkLimits> {
    let (delay, steps) = bottleneck(profile, direction)?;
    let sizes = ctx.sizes;
    let seconds = ctx.duration.as_secs_f64();
    let video_bps = sizes.video_bytes as f64 * 8.0 / seconds;
    let audio_bps = sizes.audio_bytes as f64 * 8.0 / seconds;
    // What a link rate leaves for video once packet headers and audio pass, bit/s.
    let for_video = |rate: u64| rate as f64 * (1.0 - HEADER_SHARE) - audio_bps;
    let share_at = |rate: u64| (for_video(rate) / video_bps).clamp(0.0, 1.0);
    let mut carried = 0.0;
    for (i, &(from, rate)) in steps.iter().enumerate() {
        let until = steps
            .get(i + 1)
            .map_or(ctx.duration, |s| s.0)
            .min(ctx.duration);
        carried += share_at(rate) * until.saturating_sub(from).as_secs_f64();
    }
    let floor_ms = (steps.len() == 1).then(|| {
        delay.as_secs_f64() * 1e3 + sizes.largest_key_frame as f64 * 8.0 / steps[0].1 as f64 * 1e3
    });
    let video_rate_at = |at: Duration| {
        let rate = steps
            .iter()
            .rev()
            .find(|s| s.0 <= at)
            .unwrap_or(&steps[0])
            .1;
        for_video(rate)
    };
    // Latency is judged as the runs judge it: arrival minus due time on the pusher's clock.
    let allowed = Duration::from_millis(u64::from(budget_ms));
    Some(LinkLimits {
        floor_ms,
        frames_ceiling: (carried / seconds * ctx.frames_expected as f64).round() as u64,
        budget_ms,
        frames_in_budget: frames_in_budget(&ctx.frames, delay, video_rate_at, allowed, dark),
        frames_judged: frames_judged(profile, ctx.duration, ctx.frames_expected),
    })
}

/// The most video frames of `frames` that arrive within `allowed` of their due time and
/// decode, whichever of them a sender that knows the link ahead of time chooses to send.
///
/// The link is a queue: a frame sent goes when it is due or once the link is free, is
/// serialized at `video_rate_at` (bit/s left for video when it starts) and then takes `delay`.
/// The link carries nothing over the `dark` spans ((from, length) on the clip's clock): a
/// frame that would be on the link then goes once the span ends. A frame decodes if the key
/// frame of its GOP and every reference frame before it in decode order were kept (a
/// B-frame's references come before it in decode order too); a frame not sent takes no link
/// time. Exact for this model: a dynamic programme over the frames in decode order whose
/// state is how far the link's free time runs behind the frame's due time and whether the GOP
/// is still whole, keeping for each the states no other beats on both counts (less behind,
/// more frames kept), so no rounding and at most a few hundred states.
///
/// The frame ceiling ([`LinkLimits::frames_ceiling`]) counts bytes only; this counts what a
/// budget and a GOP's references let through. On a link slower than the stream a GOP of
/// P-frames keeps only a head (each frame runs later than the one before, until one would
/// miss), and the link then idles until the next key frame: the ceiling's frames do not fit in
/// a short budget however they are sent.
pub fn frames_in_budget(
    frames: &[ClipFrame],
    delay: Duration,
    video_rate_at: impl Fn(Duration) -> f64,
    allowed: Duration,
    dark: &[(Duration, Duration)],
) -> u64 {
    /// How far the link's free time runs behind the current frame's due time, s, and the
    /// frames kept so far.
    #[derive(Clone, Copy)]
    struct Reach {
        behind: f64,
        kept: u64,
    }
    /// The reaches no other beats on both counts, least behind first.
    fn best(mut reaches: Vec<Reach>) -> Vec<Reach> {
        reaches.sort_by(|a, b| a.behind.total_cmp(&b.behind).then(b.kept.cmp(&a.kept)));
        let mut most = None;
        reaches.retain(|r| {
            let better = most.is_none_or(|m| r.kept > m);
            if better {
                most = Some(r.kept);
            }
            better
        });
        reaches
    }
    let Some(first) = frames.first() else {
        return 0;
    };
    let (delay, allowed) = (delay.as_secs_f64(), allowed.as_secs_f64());
    // The dark spans on the frames' clock below (the first frame due at zero), s.
    let first_due = f64::from(first.due_ms) / 1e3;
    let dark: Vec<(f64, f64)> = dark
        .iter()
        .map(|&(from, len)| {
            let from = from.as_secs_f64() - first_due;
            (from, from + len.as_secs_f64())
        })
        .collect();
    // When a frame that would start on the link at `start` for `takes` s starts: after every
    // dark span it would overlap.
    let lit_from = |mut start: f64, takes: f64| {
        for &(from, until) in &dark {
            if start < until && start + takes > from {
                start = start.max(until);
            }
        }
        start
    };
    // Reaches with the GOP whole (a frame may be kept) and broken (only a key frame may).
    let mut whole: Vec<Reach> = Vec::new();
    let mut broken = vec![Reach {
        behind: 0.0,
        kept: 0,
    }];
    let mut last_due = 0.0;
    for frame in frames {
        let due = f64::from(frame.due_ms.saturating_sub(first.due_ms)) / 1e3;
        let gap = due - last_due;
        last_due = due;
        let (mut next_whole, mut next_broken) = (Vec::new(), Vec::new());
        for (is_whole, reaches) in [(true, &whole), (false, &broken)] {
            for r in reaches {
                let behind = (r.behind - gap).max(0.0);
                let skipped = Reach { behind, ..*r };
                match frame.role {
                    FrameRole::Disposable if is_whole => next_whole.push(skipped),
                    _ => next_broken.push(skipped),
                }
                let may_keep = is_whole || frame.role == FrameRole::Key;
                let rate = video_rate_at(Duration::from_secs_f64(due + behind));
                if may_keep && rate > 0.0 {
                    let takes = frame.bytes as f64 * 8.0 / rate;
                    let behind = lit_from(due + behind, takes) - due + takes;
                    if behind + delay <= allowed {
                        next_whole.push(Reach {
                            behind,
                            kept: r.kept + 1,
                        });
                    }
                }
            }
        }
        whole = best(next_whole);
        broken = best(next_broken);
    }
    whole
        .iter()
        .chain(&broken)
        .map(|r| r.kept)
        .max()
        .unwrap_or(0)
}

/// What every run shares.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The clip to push (FLV, H.264 + AAC; or E-RTMP tags if `enhanced`).
    pub clip: PathBuf,
    /// The clip is Enhanced RTMP: `rtmpq push-enhanced` pushes it, and decoding reads the
    /// received elementary streams.
    pub enhanced: bool,
    /// Video frames in it.
    pub frames_expected: u64,
    /// Audio frames in it.
    pub audio_expected: u64,
    /// Its sizes.
    pub sizes: ClipSizes,
    /// Its video frames, in decode order.
    pub frames: Vec<ClipFrame>,
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
pub(crate) struct NsProcess {
    pub(crate) child: Child,
    /// The line that said it was ready, if one was awaited.
    pub(crate) ready_line: String,
}

/// Resident memory of the command `ip netns exec` (process `pid`) runs, or of `pid` itself
/// when it has no child, bytes.
pub(crate) fn rss_of(pid: u32) -> Option<u64> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    // `ip netns exec` execs the command in place: then the pid is the command itself.
    let pid = children
        .split_whitespace()
        .next()
        .map_or(pid.to_string(), str::to_owned);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The gateway's metrics page in `ns` at `addr`, over plain HTTP/1.0.
fn scrape_in(ns: &str, addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr = addr.to_owned();
    in_netns(ns, move || {
        let mut tcp = std::net::TcpStream::connect(&addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: gateway\r\n\r\n")?;
        let mut body = String::new();
        tcp.read_to_string(&mut body)?;
        Ok(body)
    })
    .ok()
}

/// The refusal counters of a gateway's metrics page: failed handshakes by reason, Retries,
/// unauthorized edges by action.
fn refusals(page: &str) -> BTreeMap<String, f64> {
    let mut out = sum_by_label(page, "rtmpq_handshake_failures_total", "reason");
    let retries: f64 = sum_by_label(page, "rtmpq_quic_retries_total", "role")
        .values()
        .sum();
    if retries > 0.0 {
        out.insert("retries".to_owned(), retries);
    }
    for (action, n) in sum_by_label(page, "rtmpq_unauthorized_total", "action") {
        out.insert(format!("unauthorized_{action}"), n);
    }
    out
}

/// Most refusals the gateway still has to count after a flood: the handshakes the flooder
/// saw refused may be counted a moment later, and those it gave up on at its handshake limit.
const REFUSALS_SETTLE: Duration = Duration::from_secs(12);

/// The gateway's refusal counters in `ns`; after a flood, once they account for every
/// handshake the flooder saw refused or gave up on (a wrong ALPN, a wrong token, or a limit or
/// the handshake timeout that came first), or after [`REFUSALS_SETTLE`]. Under a loaded machine
/// a single scrape right after the flood missed the last few still in flight.
async fn settled_refusals(ns: &str, flood: Option<&FloodReport>) -> BTreeMap<String, f64> {
    let scrape = || {
        scrape_in(ns, GATEWAY_METRICS)
            .map(|page| refusals(&page))
            .unwrap_or_default()
    };
    let Some(flood) = flood else {
        return scrape();
    };
    let expected = (flood.wrong_alpn_refused
        + flood.bad_hellos_closed
        + flood.bad_hellos_not_connected) as f64;
    let deadline = tokio::time::Instant::now() + REFUSALS_SETTLE;
    loop {
        let counted = scrape();
        let refused: f64 = [
            "tls",
            "unauthorized_connect",
            "address_limit",
            "address_pending_limit",
            "pending_limit",
            "timeout",
        ]
        .iter()
        .filter_map(|k| counted.get(*k))
        .sum();
        if refused >= expected || tokio::time::Instant::now() >= deadline {
            return counted;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The samples of `metric` on a Prometheus page, summed by the value of their `label`.
pub(crate) fn sum_by_label(page: &str, metric: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let prefix = format!("{metric}{{");
    let key = format!("{label}=\"");
    for line in page.lines().filter(|l| l.starts_with(&prefix)) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (Ok(value), Some(start)) = (value.parse::<f64>(), series.find(&key)) else {
            continue;
        };
        let rest = &series[start + key.len()..];
        let Some(len) = rest.find('"') else {
            continue;
        };
        *out.entry(rest[..len].to_owned()).or_insert(0.0) += value;
    }
    out
}

/// Starts `args` in namespace `ns` (the host's with `ns` empty), its stderr to `log`; waits
/// for a line containing `ready`, if given.
pub(crate) async fn spawn_in(
    ns: &str,
    args: &[String],
    log: &Path,
    ready: Option<&str>,
) -> Result<NsProcess, RunError> {
    let mut command = if ns.is_empty() {
        Command::new(&args[0])
    } else {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, &args[0]]);
        c
    };
    let mut child = command
        .args(&args[1..])
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
                    let _ = tx.send(line);
                }
            }
        }
    });
    let mut ready_line = String::new();
    if let Some(text) = ready {
        ready_line = tokio::time::timeout(Duration::from_secs(15), ready_rx)
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
    Ok(NsProcess { child, ready_line })
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

/// An nginx-rtmp config keeping its files in `dir`, listening on `listen` (`live` app).
/// nginx-rtmp's configuration; `wait_key off` for Enhanced RTMP (nginx-rtmp takes no
/// ex-header frame for a key frame, and with `wait_key on` holds back all video).
pub(crate) fn nginx_conf(dir: &Path, listen: &str, enhanced: bool) -> String {
    let d = dir.display();
    let wait_key = if enhanced { " wait_key off;" } else { "" };
    format!(
        r#"load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log info;
events {{ worker_connections 2048; }}
rtmp {{
    server {{
        listen {listen};
        chunk_size 4096;
        application live {{ live on; record off;{wait_key} }}
    }}
}}
"#
    )
}

#[derive(Debug, Default)]
struct Arrivals {
    /// (RTMP timestamp ms, arrival ns) of each video frame.
    video: Vec<(u32, u64)>,
    /// The same of each audio frame.
    audio: Vec<(u32, u64)>,
    media_bytes: u64,
    /// Frames whose timestamp went below their track's previous one (per player connection).
    timestamps_back: u64,
}

/// The last frame timestamp per track of one player connection; counts those that go back.
#[derive(Debug, Default)]
struct TrackClocks {
    audio: Option<u32>,
    video: Option<u32>,
}

impl TrackClocks {
    /// Notes a frame of `kind` at `timestamp`; true if it is below its track's last one.
    fn went_back(&mut self, kind: MediaKind, timestamp: u32) -> bool {
        let last = match kind {
            MediaKind::Audio => &mut self.audio,
            MediaKind::VideoFrame | MediaKind::VideoKeyframe => &mut self.video,
            _ => return false,
        };
        let back = last.is_some_and(|l| timestamp < l);
        *last = Some(timestamp);
        back
    }
}

/// Writes what a player receives as an FLV file, for ffmpeg to decode afterwards.
struct FlvRecorder {
    out: std::io::BufWriter<std::fs::File>,
}

impl FlvRecorder {
    fn create(path: &Path) -> std::io::Result<FlvRecorder> {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        out.write_all(rtmpq_demo::enhanced::FLV_HEADER)?;
        Ok(FlvRecorder { out })
    }

    fn write(&mut self, msg: &rtmpq_proto::Message) -> std::io::Result<()> {
        use std::io::Write;
        match rtmpq_demo::enhanced::flv_tag(msg) {
            Some(tag) => self.out.write_all(&tag),
            None => Ok(()),
        }
    }
}

/// How many errors ffmpeg reports decoding the elementary streams of a received E-RTMP `flv`
/// (every track, written into `dir`).
async fn enhanced_decode_errors(flv: &Path, dir: &Path) -> Option<u64> {
    use rtmpq_demo::enhanced;
    let (flv, dir) = (flv.to_owned(), dir.to_owned());
    tokio::task::spawn_blocking(move || {
        let msgs = enhanced::flv_messages(&std::fs::read(&flv).ok()?).ok()?;
        let streams = enhanced::elementary_streams(&msgs);
        let before_config: u64 = streams.values().map(|s| s.frames_before_config).sum();
        let errors = enhanced::decode_errors(&streams, &dir);
        errors
            .into_values()
            .try_fold(before_config, |sum, e| e.map(|e| sum + e))
    })
    .await
    .ok()?
}

/// How many errors ffmpeg reports decoding `flv` (every frame decoded, nothing written).
async fn decode_errors(flv: &Path) -> Option<u64> {
    let flv = flv.to_owned();
    let decoded = move || rtmpq_demo::enhanced::ffmpeg_decode(None, &flv);
    let (lines, _) = tokio::task::spawn_blocking(decoded).await.ok()??;
    Some(lines)
}

/// Runs `transport` over `profile`'s link in `direction`; `index` keeps namespace names
/// unique.
pub async fn run_one(
    profile: &Profile,
    transport: Transport,
    direction: Direction,
    index: usize,
    ctx: &RunContext,
) -> Result<RunResult, RunError> {
    let tag = format!("rq{}x{index}", std::process::id() % 100_000);
    let link = Link::start(&tag, profile.link.clone()).await?;
    let (a, b) = (link.ns_a.clone(), link.ns_b.clone());
    let play = direction == Direction::Play;
    let label = if play {
        format!("{} play", transport.name())
    } else {
        transport.name()
    };
    let run_dir = tempdir(
        &ctx.logs,
        &format!("{}-{}", profile.name, label.replace(' ', "-")),
    )?;
    let log = |name: &str| run_dir.join(format!("{name}.log"));
    let s = |v: &str| v.to_owned();

    std::fs::write(
        run_dir.join("nginx.conf"),
        nginx_conf(&run_dir, "0.0.0.0:1935", ctx.enhanced),
    )
    .map_err(io_err("nginx.conf"))?;
    let nginx_args = vec![
        s("nginx"),
        s("-p"),
        run_dir.display().to_string(),
        s("-c"),
        run_dir.join("nginx.conf").display().to_string(),
        s("-e"),
        run_dir.join("nginx-error.log").display().to_string(),
    ];
    let mut nginx = spawn_in(&b, &nginx_args, &log("nginx"), None).await?;
    wait_tcp(&b, "127.0.0.1:1935").await?;
    let mut procs = Vec::new();
    // The server end of the tunnel, to kill and start again: (process, args, ready line).
    let mut server: Option<(NsProcess, Vec<String>, &str)> = None;

    let rtt = profile.link.up.delay + profile.link.down.delay;
    let rtmpq = ctx.rtmpq.display().to_string();
    let pipe = ctx.quic_pipe.display().to_string();
    let certs = ctx.certs.display().to_string();
    // The side media leaves from over the link, and where the pusher and player are.
    let (sender_ns, pusher_ns, player_ns) = if play { (&b, &b, &a) } else { (&a, &a, &b) };
    let direct = s("rtmp://127.0.0.1:1935/live/s");
    let (mut url, mut format) = (direct.clone(), "flv");
    let mut player_addr = s("127.0.0.1:1935");
    match transport {
        Transport::TcpCubic | Transport::TcpBbr => {
            let cc = if transport == Transport::TcpCubic {
                "cubic"
            } else {
                "bbr"
            };
            // ffmpeg and nginx cannot set their sockets' congestion control; the sending
            // side's namespace can, once the host allows the algorithm in other namespaces.
            netem::run(&[
                "sysctl",
                "-qw",
                "net.ipv4.tcp_allowed_congestion_control=reno cubic bbr",
            ])?;
            netem::run(&[
                "ip",
                "netns",
                "exec",
                sender_ns,
                "sysctl",
                "-qw",
                &format!("net.ipv4.tcp_congestion_control={cc}"),
            ])?;
            if play {
                player_addr = format!("{ADDR_B}:1935");
            } else {
                url = format!("rtmp://{ADDR_B}:1935/live/s");
            }
        }
        Transport::Rtmpq {
            budget_ms,
            backpressure_ms,
            lanes,
            transport,
            congestion,
        } => {
            // One listed edge identity (a token), as a deployment has: flooders know no token.
            let gateway_toml = run_dir.join("gateway.toml");
            let edge_toml = run_dir.join("edge.toml");
            std::fs::write(
                &gateway_toml,
                format!("[[edge]]\nname = \"bench\"\ntoken = \"{BENCH_TOKEN}\"\npublish = [\"live/*\"]\nplay = [\"live/*\"]\n"),
            )
            .map_err(io_err("gateway.toml"))?;
            std::fs::write(&edge_toml, format!("token = \"{BENCH_TOKEN}\"\n"))
                .map_err(io_err("edge.toml"))?;
            let args = vec![
                rtmpq.clone(),
                s("gateway"),
                s("--config"),
                gateway_toml.display().to_string(),
                s("--metrics"),
                s(GATEWAY_METRICS),
                s("--listen"),
                format!("0.0.0.0:{GATEWAY_PORT}"),
                s("--origin"),
                s("rtmp://127.0.0.1:1935"),
                s("--cert-dir"),
                certs.clone(),
                s("--state-dir"),
                run_dir.display().to_string(),
                s("--congestion"),
                s(congestion),
            ];
            let gateway = spawn_in(&b, &args, &log("gateway"), Some("gateway ready")).await?;
            let mut edge_args = vec![
                rtmpq.clone(),
                s("edge"),
                s("--config"),
                edge_toml.display().to_string(),
                s("--listen"),
                s("127.0.0.1:1935"),
                s("--gateway"),
                format!("{ADDR_B}:{GATEWAY_PORT}"),
                s("--pin"),
                ctx.pin.clone(),
                s("--latency-budget-ms"),
                budget_ms.to_string(),
                s("--backpressure-ms"),
                backpressure_ms.to_string(),
                s("--carrier"),
                s(if lanes { "lanes" } else { "stream" }),
                s("--transport"),
                s(transport),
                s("--congestion"),
                s(congestion),
            ];
            if profile.second_gateway {
                // Same certificate and identities; its own port, metrics and state.
                let state = run_dir.join("second-gateway");
                std::fs::create_dir_all(&state).map_err(io_err("second gateway state"))?;
                let mut second = args.clone();
                let value_after = |args: &mut Vec<String>, flag: &str, value: String| {
                    if let Some(i) = args.iter().position(|a| a == flag) {
                        args[i + 1] = value;
                    }
                };
                value_after(
                    &mut second,
                    "--listen",
                    format!("0.0.0.0:{SECOND_GATEWAY_PORT}"),
                );
                value_after(&mut second, "--metrics", s("127.0.0.1:9465"));
                value_after(&mut second, "--state-dir", state.display().to_string());
                procs.push(
                    spawn_in(&b, &second, &log("gateway-second"), Some("gateway ready")).await?,
                );
                edge_args.extend([
                    s("--gateway"),
                    format!("{ADDR_B}:{SECOND_GATEWAY_PORT}"),
                    s("--standby"),
                ]);
            }
            server = Some((gateway, args, "gateway ready"));
            // A QUIC edge starts its connection at once; a TCP or auto one opens its carrier
            // when the first session comes (and on a network that blocks UDP QUIC never says
            // it connected).
            let ready = match transport {
                "quic" => "connected to gateway",
                _ => "edge ready",
            };
            procs.push(spawn_in(&a, &edge_args, &log("edge"), Some(ready)).await?);
        }
        Transport::QuicPipe => {
            let args = vec![
                pipe.clone(),
                s("server"),
                s("0.0.0.0:4434"),
                s("127.0.0.1:1935"),
                certs,
            ];
            let pipe_server = spawn_in(&b, &args, &log("pipe-server"), Some("ready")).await?;
            server = Some((pipe_server, args, "ready"));
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
        }
        Transport::Srt if play => {
            return Err(RunError::Setup(
                "SRT is measured for publishing only (an SRT ingest)".into(),
            ))
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
                        direct.clone(),
                    ],
                    &log("srt-receiver"),
                    None,
                )
                .await?,
            );
            wait_udp(&b, 9000).await?;
            url = format!("srt://{ADDR_B}:9000?latency={latency_us}&pkt_size=1316");
            format = "mpegts";
        }
    }

    // The player: our own RTMP client; it never probes, so arrival is arrival. It plays
    // before the pusher starts (nginx-rtmp keeps idle streams), so it gets the whole clip.
    if profile.flood.is_some() && !matches!(transport, Transport::Rtmpq { .. }) {
        return Err(RunError::Setup(format!(
            "the flood is aimed at rtmpq's gateway, not {}",
            transport.name()
        )));
    }
    if ctx.enhanced && format != "flv" {
        return Err(RunError::Setup(format!(
            "the Enhanced RTMP clip goes over RTMP only, not {format}"
        )));
    }
    if profile.second_gateway && !matches!(transport, Transport::Rtmpq { .. }) {
        return Err(RunError::Setup(format!(
            "{} has no second server to fail over to",
            transport.name()
        )));
    }
    if profile
        .restart
        .is_some_and(|r| r.what == Restarted::Gateway)
        && server.is_none()
    {
        return Err(RunError::Setup(format!(
            "{} has no server end to restart",
            transport.name()
        )));
    }
    // The pusher's tap: an RTMP pusher connects through it, so each frame's due time is on
    // the pusher's own clock (SRT's MPEG-TS is not read: its latency counts from the smallest).
    let tap = if format == "flv" {
        let (target, path) = url
            .strip_prefix("rtmp://")
            .and_then(|rest| rest.split_once('/'))
            .ok_or_else(|| RunError::Setup(format!("not an RTMP URL: {url}")))?;
        let target = target
            .parse()
            .map_err(|e| RunError::Setup(format!("{target}: {e}")))?;
        let tap = crate::tap::start(pusher_ns, target)
            .await
            .map_err(io_err("pusher's tap"))?;
        url = format!("rtmp://{}/{path}", tap.addr);
        Some(tap)
    } else {
        None
    };
    let mut player = play_in(player_ns, &player_addr)
        .await
        .map_err(|e| RunError::Setup(format!("player: {e}")))?;
    let arrivals = Arc::new(Mutex::new(Arrivals::default()));
    let received_flv = run_dir.join("received.flv");
    let mut flv = FlvRecorder::create(&received_flv).map_err(io_err("received.flv"))?;
    // A player of a restarted nginx connects again, as players do.
    let replay_after_restart = profile.restart.is_some_and(|r| r.what == Restarted::Origin);
    let recorder = {
        let arrivals = arrivals.clone();
        let (player_ns, player_addr) = (player_ns.clone(), player_addr.clone());
        tokio::spawn(async move {
            loop {
                let mut clocks = TrackClocks::default();
                while let Ok(Some(msg)) = player.next_message().await {
                    let now = monotonic_ns();
                    let kind = msg.media_kind();
                    let back = clocks.went_back(kind, msg.timestamp);
                    let mut a = arrivals.lock().expect("arrivals");
                    a.timestamps_back += back as u64;
                    if matches!(kind, MediaKind::VideoFrame | MediaKind::VideoKeyframe) {
                        a.video.push((msg.timestamp, now));
                    }
                    if kind == MediaKind::Audio {
                        a.audio.push((msg.timestamp, now));
                    }
                    if matches!(msg.type_id, message_type::AUDIO | message_type::VIDEO) {
                        a.media_bytes += msg.payload.len() as u64;
                    }
                    drop(a);
                    let _ = flv.write(&msg);
                }
                if !replay_after_restart {
                    break;
                }
                player = loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if let Ok(p) = play_in(&player_ns, &player_addr).await {
                        break p;
                    }
                };
            }
            flv
        })
    };

    let started_ns = monotonic_ns();
    let started = std::time::Instant::now();
    let pusher_args = if ctx.enhanced {
        vec![
            rtmpq.clone(),
            s("push-enhanced"),
            ctx.clip.display().to_string(),
            url,
        ]
    } else {
        let clip = ctx.clip.display().to_string();
        let ffmpeg = [
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "warning",
            "-re",
            "-i",
        ];
        let mut args: Vec<String> = ffmpeg.map(s).to_vec();
        args.extend([clip, s("-c"), s("copy"), s("-f"), s(format), url]);
        args
    };
    let mut pusher = spawn_in(pusher_ns, &pusher_args, &log("pusher"), None).await?;
    let limit = ctx.duration + Duration::from_secs(30);
    let pushing = async {
        match tokio::time::timeout(limit, pusher.child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => false,
        }
    };
    // The restart: killed at its time, started again at once; when it is back is the
    // event's end for "back at floor".
    let server_pid = std::sync::atomic::AtomicU32::new(
        server
            .as_ref()
            .and_then(|(p, _, _)| p.child.id())
            .unwrap_or(0),
    );
    let restarting = async {
        let restart = profile.restart?;
        tokio::time::sleep_until((started + restart.at).into()).await;
        let (proc, args, ready, log_name) = match restart.what {
            Restarted::Gateway => {
                let (proc, args, ready) = server.as_mut()?;
                (proc, args.clone(), Some(*ready), "server-restarted")
            }
            Restarted::Origin => (&mut nginx, nginx_args.clone(), None, "nginx-restarted"),
        };
        let _ = proc.child.kill().await;
        *proc = spawn_in(&b, &args, &log(log_name), ready).await.ok()?;
        if restart.what == Restarted::Gateway {
            server_pid.store(
                proc.child.id().unwrap_or(0),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        if restart.what == Restarted::Origin {
            wait_tcp(&b, "127.0.0.1:1935").await.ok()?;
        }
        Some(monotonic_ns())
    };
    // The flood at the gateway's port from beside it (its own namespace, not across the
    // emulated link: a flood that fills the pusher's own uplink defeats any server).
    let flooding = async {
        let spec = profile.flood?;
        tokio::time::sleep_until((started + spec.at).into()).await;
        let pin = ctx.pin.parse().ok()?;
        let target = format!("{ADDR_B}:{GATEWAY_PORT}").parse().ok()?;
        match crate::flood::flood(&b, target, pin, spec).await {
            Ok(report) => Some(report),
            Err(e) => {
                tracing::warn!(reason = %e, "flood failed");
                None
            }
        }
    };
    // The bulk upload through the bottleneck, the stream's way.
    let uploading = async {
        let spec = profile.bulk?;
        let (from, to, to_addr) = if play {
            (b.clone(), a.clone(), crate::netem::ADDR_A)
        } else {
            (a.clone(), b.clone(), ADDR_B)
        };
        let run = tokio::task::spawn_blocking(move || {
            crate::bulk::upload(&from, &to, to_addr, spec, started)
        });
        match run.await {
            Ok(Ok(report)) => Some(report),
            Ok(Err(e)) => {
                tracing::warn!(reason = %e, "bulk upload failed");
                None
            }
            Err(_) => None,
        }
    };
    // The server end's memory, sampled until the pusher is done.
    let rss_peak = std::sync::atomic::AtomicU64::new(0);
    let sampling = async {
        loop {
            let pid = server_pid.load(std::sync::atomic::Ordering::Relaxed);
            if let Some(rss) = (pid > 0).then(|| rss_of(pid)).flatten() {
                rss_peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let pushing_sampled = async {
        tokio::select! {
            survived = pushing => survived,
            _ = sampling => unreachable!("sampling never ends"),
        }
    };
    let (survived, restarted_ns, flood, bulk) =
        tokio::join!(pushing_sampled, restarting, flooding, uploading);
    let server_refusals = match transport {
        Transport::Rtmpq { .. } => settled_refusals(&b, flood.as_ref()).await,
        _ => BTreeMap::new(),
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
    drop(server);
    drop(nginx);
    // The aborted recorder drops its file, which flushes it.
    let _ = recorder.await;
    let arrivals = std::mem::take(&mut *arrivals.lock().expect("arrivals"));
    let mut returns_ns: Vec<u64> = profile
        .link
        .blackouts
        .iter()
        .map(|&(at, len)| link.started_ns + (at + len).as_nanos() as u64)
        .collect();
    returns_ns.extend(restarted_ns);
    // A host cut off for good: recovery counts from the cut (failure detection included).
    returns_ns.extend(
        profile
            .link
            .cut_port
            .map(|(at, _)| link.started_ns + at.as_nanos() as u64),
    );
    let source_clock = tap.as_ref().map(|t| t.clock());
    drop(tap);
    let observed = Observed {
        arrivals: &arrivals,
        started_ns,
        source_start_ns: source_clock.and_then(|c| c.start_ns()),
        source_spread_ns: source_clock.and_then(|c| c.spread_ns()),
        pusher_survived: survived,
        returns_ns: &returns_ns,
    };
    let mut result = summarize(profile, label, direction, observed, ctx);
    // The blackouts on the clip's clock: from the source's zero (the pusher's start for a
    // pusher the tap cannot read).
    let clip_zero_ns = source_clock
        .and_then(|c| c.start_ns())
        .unwrap_or(started_ns as i64);
    let dark: Vec<(Duration, Duration)> = profile
        .link
        .blackouts
        .iter()
        .map(|&(at, len)| {
            let from_ns = (link.started_ns + at.as_nanos() as u64) as i64 - clip_zero_ns;
            let until_ns = from_ns + len.as_nanos() as i64;
            let from = Duration::from_nanos(from_ns.max(0) as u64);
            (from, Duration::from_nanos(until_ns.max(0) as u64) - from)
        })
        .collect();
    result.link_limits = link_limits(profile, direction, ctx, transport.budget_ms(), &dark);
    result.link_up = link.up.snapshot();
    result.link_down = link.down.snapshot();
    result.decode_errors = if ctx.enhanced {
        enhanced_decode_errors(&received_flv, &run_dir).await
    } else {
        decode_errors(&received_flv).await
    };
    result.flood = flood;
    result.bulk = bulk;
    result.server_rss_peak_bytes = Some(rss_peak.into_inner()).filter(|&b| b > 0);
    result.server_refusals = server_refusals;
    tracing::info!("link {}: {}", profile.name, link.summary());
    Ok(result)
}

/// Our RTMP player in `ns`, connected to `addr` and playing `live/s`.
async fn play_in(ns: &str, addr: &str) -> Result<RtmpClient, String> {
    let target = addr.to_owned();
    let std_tcp = in_netns(ns, move || {
        let tcp = std::net::TcpStream::connect(&target)?;
        tcp.set_nonblocking(true)?;
        Ok(tcp)
    })
    .map_err(|e| format!("connect: {e}"))?;
    let tcp = tokio::net::TcpStream::from_std(std_tcp).map_err(|e| e.to_string())?;
    let mut player = RtmpClient::over(tcp, addr, "live")
        .await
        .map_err(|e| e.to_string())?;
    player.play("s").await.map_err(|e| e.to_string())?;
    Ok(player)
}

fn tempdir(parent: &Path, name: &str) -> Result<PathBuf, RunError> {
    let dir = parent.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io_err(dir.display().to_string()))?;
    Ok(dir)
}

/// The frames a run is judged on: those due in the profile's window (all by default).
fn in_window(profile: &Profile, duration: Duration, due_ms: u32) -> bool {
    match profile.window {
        Some((skip_first, skip_last)) => {
            let due = Duration::from_millis(u64::from(due_ms));
            due >= skip_first && due + skip_last <= duration
        }
        None => true,
    }
}

/// How many of a clip's `expected_all` video frames lasting `duration` are due in the
/// profile's window (at least one).
fn frames_judged(profile: &Profile, duration: Duration, expected_all: u64) -> u64 {
    let share = match profile.window {
        Some((first, last)) => {
            (duration.saturating_sub(first + last)).as_secs_f64() / duration.as_secs_f64()
        }
        None => 1.0,
    };
    ((expected_all as f64 * share).round() as u64).max(1)
}

/// Where a run's latencies are counted from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum DueClock {
    /// The source's own clock, from the pusher's tap ([`crate::tap`]): when it read zero, ns.
    /// Latency is arrival minus due time, nothing subtracted.
    Source(i64),
    /// The pusher process's start, ns, for a pusher the tap cannot read (SRT): its own start-up
    /// is unknown, so the run's smallest latency is subtracted (with the path's constant part).
    Smallest(u64),
}

impl DueClock {
    /// What is subtracted from every latency when the run's smallest is `smallest`, ms.
    fn subtracted(self, smallest: f64) -> f64 {
        match self {
            DueClock::Source(_) => 0.0,
            DueClock::Smallest(_) => smallest,
        }
    }

    /// What the table says latencies are counted from.
    fn name(self) -> &'static str {
        match self {
            DueClock::Source(_) => "pusher",
            DueClock::Smallest(_) => "smallest",
        }
    }
}

/// The latency of each of `frames` (timestamp ms, arrival ns), ms, as `clock` counts it: the
/// run's smallest before anything is subtracted, every frame's, and those of the frames in the
/// profile's window.
fn latencies(
    profile: &Profile,
    duration: Duration,
    frames: &[(u32, u64)],
    clock: DueClock,
) -> (f64, Vec<f64>, Vec<f64>) {
    let zero_ns = match clock {
        DueClock::Source(start) => start as f64,
        DueClock::Smallest(started) => started as f64,
    };
    let raw = frames
        .iter()
        .map(|&(ts, at)| (at as f64 - zero_ns) / 1e6 - f64::from(ts));
    let smallest = raw.clone().fold(f64::INFINITY, f64::min);
    let less = clock.subtracted(smallest);
    let latency: Vec<f64> = raw.map(|l| l - less).collect();
    // Latency and lateness over the window's frames; missing frames count as late.
    let windowed = frames
        .iter()
        .zip(&latency)
        .filter(|((ts, _), _)| in_window(profile, duration, *ts))
        .map(|(_, &l)| l)
        .collect();
    (smallest, latency, windowed)
}

/// What one run saw at its player and pusher.
struct Observed<'a> {
    /// What reached the player, and when.
    arrivals: &'a Arrivals,
    /// When the pusher started, ns on CLOCK_MONOTONIC.
    started_ns: u64,
    /// When the source's clock read zero, from the pusher's tap (`None` without one).
    source_start_ns: Option<i64>,
    /// How much later that is than if no frame left before it was due, ns.
    source_spread_ns: Option<i64>,
    /// Whether the pusher ran to the end.
    pusher_survived: bool,
    /// When each outage ended (the link back, a server restarted, a host cut off), ns.
    returns_ns: &'a [u64],
}

fn summarize(
    profile: &Profile,
    transport: String,
    direction: Direction,
    observed: Observed<'_>,
    ctx: &RunContext,
) -> RunResult {
    let Observed {
        arrivals,
        started_ns,
        source_start_ns,
        source_spread_ns,
        pusher_survived,
        returns_ns,
    } = observed;
    let frames = &arrivals.video;
    let expected_all = ctx.frames_expected;
    let clock = source_start_ns.map_or(DueClock::Smallest(started_ns), DueClock::Source);
    let (floor, latency, windowed) = latencies(profile, ctx.duration, frames, clock);
    let (_, _, audio_windowed) = latencies(profile, ctx.duration, &arrivals.audio, clock);
    // Back at the floor: within RECOVERED_MS of the run's smallest latency, as counted.
    let least = floor - clock.subtracted(floor);
    let expected = frames_judged(profile, ctx.duration, expected_all);
    let received_in_window = (windowed.len() as u64).min(expected);
    let q = |p: f64| rtmpq_demo::media::quantile(&windowed, p).unwrap_or(f64::NAN);
    let missing = expected - received_in_window;
    let late_ratio = BUDGETS_MS.map(|budget| {
        let late = windowed.iter().filter(|&&e| e > budget).count() as u64;
        ((late.min(received_in_window) + missing) as f64 / expected as f64).min(1.0)
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
    let recovery_seconds = returns_ns
        .iter()
        .map(|&back| {
            frames
                .iter()
                .zip(&latency)
                .find(|((_, at), &l)| *at >= back && l - least <= RECOVERED_MS)
                .map(|((_, at), _)| (at - back) as f64 / 1e9)
        })
        .collect();
    let step = (frames.len() / 600).max(1);
    RunResult {
        profile: profile.name.to_owned(),
        transport,
        direction: direction.name(),
        frames_expected: expected_all,
        frames_received: (frames.len() as u64).min(expected_all),
        latency_ms: [q(0.5), q(0.95), q(0.99), q(1.0)],
        latency_from: clock.name(),
        source_spread_ms: source_spread_ns.map(|ns| ns as f64 / 1e6),
        late_ratio,
        stalls,
        stall_seconds,
        goodput_bps: arrivals.media_bytes as f64 * 8.0 / span,
        start_seconds: frames
            .first()
            .map(|&(_, at)| (at.saturating_sub(started_ns)) as f64 / 1e9),
        pusher_survived,
        floor_ms: floor,
        audio_delivered: arrivals.audio.len() as f64 / ctx.audio_expected.max(1) as f64,
        audio_p99_ms: rtmpq_demo::media::quantile(&audio_windowed, 0.99).unwrap_or(f64::NAN),
        decode_errors: None,
        timestamps_back: arrivals.timestamps_back,
        recovery_seconds,
        link_up: CountsSnapshot::default(),
        link_down: CountsSnapshot::default(),
        timeline: frames
            .iter()
            .zip(&latency)
            .step_by(step)
            .map(|(&(_, at), &l)| ((at.saturating_sub(started_ns)) as f64 / 1e9, l))
            .collect(),
        flood: None,
        bulk: None,
        link_limits: None,
        server_rss_peak_bytes: None,
        server_refusals: BTreeMap::new(),
    }
}

/// A frame this close to the floor, ms, marks the end of a recovery.
pub const RECOVERED_MS: f64 = 100.0;

#[cfg(test)]
mod tests {
    #[test]
    fn every_transport_name_parses_back_to_itself() {
        use super::Transport;
        for name in [
            "rtmpq",
            "rtmpq-bbr",
            "rtmpq:300",
            "rtmpq-bbr:300",
            "rtmpq-auto-bbr",
            "rtmpq-stream",
            "tcp-bbr",
            "quic-pipe",
        ] {
            let t = Transport::parse(name).unwrap_or_else(|| panic!("{name} parses"));
            assert_eq!(t.name(), name);
        }
        assert!(matches!(
            Transport::parse("rtmpq-bbr:500"),
            Some(Transport::Rtmpq {
                congestion: "bbr",
                budget_ms: 500,
                ..
            })
        ));
        assert!(Transport::parse("tcp-bbr-bbr").is_none());
    }

    #[test]
    fn a_track_whose_timestamp_goes_below_its_last_counts_once_per_frame() {
        let mut clocks = TrackClocks::default();
        assert!(!clocks.went_back(MediaKind::VideoKeyframe, 1000));
        // Audio has its own clock; a header is no frame.
        assert!(!clocks.went_back(MediaKind::Audio, 990));
        assert!(!clocks.went_back(MediaKind::Header, 0));
        assert!(!clocks.went_back(MediaKind::VideoFrame, 1000));
        assert!(clocks.went_back(MediaKind::VideoFrame, 999));
        assert!(!clocks.went_back(MediaKind::VideoFrame, 1033));
        assert!(clocks.went_back(MediaKind::Audio, 0));
    }

    use super::*;

    #[test]
    fn refusals_sum_each_reason_from_a_metrics_page() {
        let page = "# TYPE x counter\n\
rtmpq_handshake_failures_total{role=\"gateway\",reason=\"tls\"} 989\n\
rtmpq_handshake_failures_total{role=\"gateway\",reason=\"address_limit\"} 23\n\
rtmpq_quic_retries_total{role=\"gateway\"} 3924\n\
rtmpq_unauthorized_total{role=\"gateway\",edge=\"unlisted\",action=\"connect\"} 988\n\
rtmpq_sessions_ended_total{role=\"gateway\",reason=\"normal\"} 1\n";
        let r = refusals(page);
        assert_eq!(r["tls"], 989.0);
        assert_eq!(r["address_limit"], 23.0);
        assert_eq!(r["retries"], 3924.0);
        assert_eq!(r["unauthorized_connect"], 988.0);
        assert_eq!(r.len(), 4);
    }
    use crate::netem::LinkSpec;

    fn profile(window: Option<(Duration, Duration)>) -> Profile {
        Profile {
            name: "p",
            description: String::new(),
            link: LinkSpec::symmetric(crate::netem::DirectionSpec::default()),
            window,
            restart: None,
            flood: None,
            second_gateway: false,
            bulk: None,
        }
    }

    fn context(frames: u64, duration: Duration) -> RunContext {
        RunContext {
            clip: PathBuf::new(),
            enhanced: false,
            frames_expected: frames,
            audio_expected: 20,
            sizes: ClipSizes::default(),
            frames: Vec::new(),
            duration,
            rtmpq: PathBuf::new(),
            quic_pipe: PathBuf::new(),
            certs: PathBuf::new(),
            pin: String::new(),
            logs: PathBuf::new(),
        }
    }

    #[test]
    fn the_link_floor_and_ceiling_follow_the_link_and_the_clip() {
        let mut p = profile(None);
        p.link = LinkSpec::symmetric(crate::netem::DirectionSpec {
            delay: Duration::from_millis(25),
            rate_bps: Some(2_400_000),
            ..crate::netem::DirectionSpec::default()
        });
        let mut ctx = context(600, Duration::from_secs(20));
        ctx.sizes = ClipSizes {
            largest_key_frame: 33_000,
            video_bytes: 7_500_000,
            audio_bytes: 240_000,
        };
        let limits = link_limits(&p, Direction::Play, &ctx, 1000, &[]).unwrap();
        // 25 ms and 33 kB at 2.4 Mbit/s (110 ms).
        assert!(
            (limits.floor_ms.unwrap() - 135.0).abs() < 1e-9,
            "{limits:?}"
        );
        // (2.4 Mbit/s less 4 % and 96 kbit/s of audio) / 3 Mbit/s of video: 73.6 %.
        assert_eq!(limits.frames_ceiling, 442);
        // A link whose rate steps to 12 Mbit/s half way: no one floor, and the second half
        // carries everything.
        p.link.rate_steps = vec![(Duration::from_secs(10), 12_000_000)];
        let limits = link_limits(&p, Direction::Publish, &ctx, 1000, &[]).unwrap();
        assert_eq!(limits.floor_ms, None);
        assert_eq!(limits.frames_ceiling, 221 + 300);
        // No rate limit: nothing to say.
        p.link = LinkSpec::symmetric(crate::netem::DirectionSpec::default());
        assert_eq!(link_limits(&p, Direction::Publish, &ctx, 1000, &[]), None);
    }

    /// `gops` GOPs of 60 frames at 30 fps: a 33 kB key frame, then 12 kB inter frames, those
    /// at odd places `odd` (reference or disposable).
    fn gop_clip(gops: u32, odd: FrameRole) -> Vec<ClipFrame> {
        (0..gops * 60)
            .map(|i| ClipFrame {
                due_ms: i * 100 / 3,
                bytes: if i % 60 == 0 { 33_000 } else { 12_000 },
                role: match i % 60 {
                    0 => FrameRole::Key,
                    n if n % 2 == 1 => odd,
                    _ => FrameRole::Reference,
                },
            })
            .collect()
    }

    #[test]
    fn frames_in_budget_keep_a_gop_head_of_p_frames_and_shed_disposable_pictures_alone() {
        let ms = Duration::from_millis;
        let p_only = gop_clip(2, FrameRole::Reference);
        // A link faster than the stream: everything.
        assert_eq!(
            frames_in_budget(&p_only, ms(50), |_| 10e6, ms(300), &[]),
            120
        );
        // 1.5 Mbit/s, 50 ms, 300 ms allowed: the key frame arrives 226 ms after its due
        // time, P1 257 ms and P2 287 ms after theirs; P3 would at 318 ms, and its GOP's tail
        // goes with it.
        assert_eq!(
            frames_in_budget(&p_only, ms(50), |_| 1.5e6, ms(300), &[]),
            6
        );
        // The same with every other inter frame disposable: every reference frame fits (64 ms
        // on the link each 67 ms) once no disposable picture takes its place, so more than
        // half of each GOP arrives (a sender that kept each picture that fits, in order, got
        // 24: the disposable ones took the link the references needed).
        let with_disposable = gop_clip(2, FrameRole::Disposable);
        let kept = frames_in_budget(&with_disposable, ms(50), |_| 1.5e6, ms(300), &[]);
        assert!((60..120).contains(&kept), "{kept}");
        // A link with nothing left for video: nothing.
        assert_eq!(frames_in_budget(&p_only, ms(50), |_| 0.0, ms(1000), &[]), 0);
        // A rate that steps up at the second GOP: that one arrives whole.
        let stepped = |at: Duration| {
            if at >= Duration::from_secs(2) {
                10e6
            } else {
                1.5e6
            }
        };
        assert_eq!(frames_in_budget(&p_only, ms(50), stepped, ms(300), &[]), 63);
        // Frames before the first key frame never decode.
        assert_eq!(
            frames_in_budget(&p_only[1..], ms(50), |_| 10e6, ms(300), &[]),
            60
        );
    }

    #[test]
    fn frames_in_budget_lose_a_blackout_up_to_the_first_key_frame_that_can_arrive_in_time() {
        let ms = Duration::from_millis;
        let clip = gop_clip(5, FrameRole::Reference);
        let in_budget = |dark: &[(Duration, Duration)]| {
            frames_in_budget(&clip, ms(25), |_| 10e6, ms(1000), dark)
        };
        assert_eq!(in_budget(&[]), 300);
        // Dark from 3.0 s to 6.0 s (key frames every 2 s): the GOP from 4 s cannot arrive in
        // time (its key frame would go at 6 s, 2 s late), nor can the rest of the one from 2 s
        // (frames due from 3.0 s are lost or break it). Frames due 3.0 s to 6.0 s are lost: 90.
        assert_eq!(in_budget(&[(ms(3000), ms(3000))]), 210);
        // Dark from 3.0 s to 4.5 s: the key frame due at 4 s goes at 4.5 s, 0.5 s late but
        // within the budget, and its GOP follows; only frames due 3.0 s to 4.0 s are lost
        // (a GOP's frames after a lost one are lost too).
        assert_eq!(in_budget(&[(ms(3000), ms(1500))]), 270);
        // A blackout ending 0.3 s after a key frame was due: that GOP survives too.
        assert_eq!(in_budget(&[(ms(2500), ms(1800))]), 270 - 15);
    }

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
            // 15 audio frames at 60 ms, one of them 300 ms late.
            audio: (0..15u32)
                .map(|i| {
                    let late = if i == 9 { 300_000_000 } else { 0 };
                    (i * 60, t0 + 30_000_000 + u64::from(i) * 60_000_000 + late)
                })
                .collect(),
            media_bytes: 8000,
            timestamps_back: 2,
        };
        let ctx = context(10, Duration::from_secs(1));
        // The arrivals summarized with the pusher's clock (its start and spread, ns) or without.
        let summary = |source: Option<(i64, i64)>| {
            summarize(
                &profile(None),
                "rtmpq".into(),
                Direction::Publish,
                Observed {
                    arrivals: &arrivals,
                    started_ns: t0,
                    source_start_ns: source.map(|s| s.0),
                    source_spread_ns: source.map(|s| s.1),
                    pusher_survived: true,
                    returns_ns: &[],
                },
                &ctx,
            )
        };
        let r = summary(None);
        assert_eq!(r.frames_received, 8);
        assert!((r.latency_ms[3] - 700.0).abs() < 1e-6);
        assert_eq!(r.latency_from, "smallest");
        // 200, 300 and 500 ms budgets: frame 5 plus 2 missing; 1000 ms: only the missing.
        assert_eq!(r.late_ratio, [0.3, 0.3, 0.3, 0.2, 0.2]);
        assert_eq!(r.stalls, 1, "the gap before the late frame");
        assert!((r.start_seconds.unwrap() - 0.05).abs() < 1e-9);
        assert!((r.floor_ms - 50.0).abs() < 1e-6);
        assert!((r.audio_delivered - 0.75).abs() < 1e-9);
        // Audio against its own floor (30 ms): the late frame is its p99.
        assert!((r.audio_p99_ms - 300.0).abs() < 1e-6);
        assert_eq!(r.timestamps_back, 2, "carried from the arrivals");

        // The same arrivals on the pusher's clock (its tap saw the source start 10 ms after
        // the process): nothing subtracted, so the path's 40 ms counts in every frame.
        let r = summary(Some((t0 as i64 + 10_000_000, 3_000_000)));
        assert_eq!(r.latency_from, "pusher");
        assert_eq!(r.source_spread_ms, Some(3.0));
        assert!((r.floor_ms - 40.0).abs() < 1e-6);
        assert!((r.latency_ms[0] - 40.0).abs() < 1e-6);
        assert!((r.latency_ms[3] - 740.0).abs() < 1e-6);
        assert_eq!(r.late_ratio, [0.3, 0.3, 0.3, 0.2, 0.2]);
        // Audio's 20 ms path counts too.
        assert!((r.audio_p99_ms - 320.0).abs() < 1e-6);
        assert_eq!(r.timeline[0], (0.05, 40.0));
    }

    #[test]
    fn the_report_gives_each_directions_ceiling_once_and_its_best_once_per_budget() {
        let ctx = context(10, Duration::from_secs(1));
        let arrivals = Arrivals::default();
        let run = |transport: &str, direction, budget_ms, best| {
            let mut r = summarize(
                &profile(None),
                transport.into(),
                direction,
                Observed {
                    arrivals: &arrivals,
                    started_ns: 0,
                    source_start_ns: None,
                    source_spread_ns: None,
                    pusher_survived: true,
                    returns_ns: &[],
                },
                &ctx,
            );
            r.link_limits = Some(LinkLimits {
                floor_ms: Some(151.0),
                frames_ceiling: 7,
                budget_ms,
                frames_in_budget: best,
                frames_judged: 10,
            });
            r
        };
        let results = [
            run("rtmpq", Direction::Publish, 1000, 6),
            run("rtmpq-bbr", Direction::Publish, 1000, 6),
            run("rtmpq:300", Direction::Publish, 300, 3),
            run("rtmpq", Direction::Play, 1000, 6),
        ];
        let md = crate::report::markdown(&[profile(None)], &results);
        let count = |text: &str| md.matches(text).count();
        assert_eq!(count("Link the stream's way (publish)"), 1, "{md}");
        assert_eq!(count("Link the stream's way (play)"), 1, "{md}");
        assert_eq!(count("Within 1000 ms (publish): 6 of them"), 1, "{md}");
        assert_eq!(count("Within 300 ms (publish): 3 of them"), 1, "{md}");
        assert_eq!(count("Within 1000 ms (play): 6 of them"), 1, "{md}");
        // With a blackout, where it fell differs run by run: each run's best is given.
        let mut dark = profile(None);
        dark.link.blackouts = vec![(Duration::from_millis(300), Duration::from_millis(300))];
        let results = [
            run("rtmpq", Direction::Publish, 1000, 6),
            run("rtmpq-bbr", Direction::Publish, 1000, 7),
        ];
        let md = crate::report::markdown(&[dark], &results);
        assert!(
            md.contains("Within 1000 ms (rtmpq, publish): 6 of the 10 frames")
                && md.contains("the 4 it cannot save are 40.0 % of the 10 judged"),
            "{md}"
        );
        assert!(
            md.contains("Within 1000 ms (rtmpq-bbr, publish): 7 of the 10 frames"),
            "{md}"
        );
    }

    #[test]
    fn the_window_and_the_recovery_after_a_blackout() {
        let t0 = 0u64;
        let ms = 1_000_000u64;
        // 100 frames at 100 ms over 10 s; a blackout from 3 s to 5 s holds frames 30..50,
        // which arrive at 5.2 s; frames from 5.3 s on are back at the floor.
        let mut video: Vec<(u32, u64)> = (0..100u32)
            .map(|i| {
                let due = u64::from(i) * 100;
                let at = if (30..50).contains(&i) {
                    5200
                } else {
                    due + 10
                };
                (i * 100, t0 + at * ms)
            })
            .collect();
        video.sort_by_key(|v| v.1);
        let arrivals = Arrivals {
            video,
            audio: Vec::new(),
            media_bytes: 1,
            timestamps_back: 0,
        };
        let ctx = context(100, Duration::from_secs(10));
        let window = Some((Duration::from_secs(2), Duration::from_secs(2)));
        let r = summarize(
            &profile(window),
            "rtmpq".into(),
            Direction::Publish,
            Observed {
                arrivals: &arrivals,
                started_ns: t0,
                source_start_ns: None,
                source_spread_ns: None,
                pusher_survived: true,
                returns_ns: &[5000 * ms],
            },
            &ctx,
        );
        // The window holds the 60 frames due from 2 s to 8 s; the 20 held ones are late
        // beyond 200 ms, 12 of them (due before 4.2 s) beyond 1 s.
        assert_eq!(r.late_ratio[0], 20.0 / 60.0);
        assert_eq!(r.late_ratio[3], 12.0 / 60.0);
        // Frame 50 (due 5.0 s, at 5.01 s) is the first back at the floor.
        let back = r.recovery_seconds[0].unwrap();
        assert!((back - 0.01).abs() < 1e-6, "{back}");
    }
}
