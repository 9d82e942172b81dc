//! The Linux-only tools of the `rtmpq` command line: the demo (its clock is Linux's
//! `CLOCK_MONOTONIC`, shared by network namespaces), the bench (TUN devices in network
//! namespaces), the soak and capacity runs, and the bench's Enhanced RTMP pusher.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::shutdown_on_signal;

/// The Linux-only commands.
#[derive(Debug, Subcommand)]
pub(crate) enum LabCommand {
    /// Run everything on loopback with a built-in publisher and player; print live figures.
    Demo(DemoArgs),
    /// Compare plain RTMP/TCP, SRT, a QUIC byte pipe and rtmpq on emulated links (needs root).
    Bench(BenchArgs),
    /// Many sessions through one edge and one gateway for minutes, on loopback with nginx:
    /// memory, descriptors, lateness and how sessions end.
    Soak(SoakArgs),
    /// How many sessions one gateway carries before a frame is late beyond 500 ms, on loopback
    /// with nginx, and its CPU per gigabit beside a plain TCP relay.
    Capacity(CapacityArgs),
    /// The bench's Enhanced RTMP pusher: publishes an FLV file of E-RTMP tags to an RTMP URL
    /// (rtmp://host:port/app/stream) as an E-RTMP client, paced by its timestamps.
    #[command(hide = true)]
    PushEnhanced {
        /// The FLV file of E-RTMP tags (`rtmpq bench --clip hevc-ertmp` makes one).
        clip: PathBuf,
        /// Where to publish.
        url: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Profiles to run, comma separated [default: all].
    #[arg(long, value_delimiter = ',')]
    profiles: Vec<String>,
    /// Transports to compare, comma separated: tcp-cubic, tcp-bbr, srt, quic-pipe, rtmpq;
    /// `rtmpq:MS` runs rtmpq with another latency budget, `rtmpq-bp` in back-pressure mode, `rtmpq-stream` with media on the session stream (no lanes).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tcp-cubic,tcp-bbr,srt,quic-pipe,rtmpq"
    )]
    transports: Vec<String>,
    /// Directions, comma separated: publish (pusher behind the link), play (player behind it).
    #[arg(long, value_delimiter = ',', default_value = "publish")]
    directions: Vec<String>,
    /// Length of the pushed clip, seconds.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Video bitrate of the clip, kbit/s (plus 96 kbit/s audio).
    #[arg(long, default_value_t = 3000)]
    bitrate: u32,
    /// Results folder (results.md, results.json, SVG charts, logs).
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// The short run for CI: the 2 % loss and under-capacity profiles with an 8 s clip, both
    /// directions.
    #[arg(long)]
    short: bool,
    /// The QUIC byte pipe reference [default: examples/quic_pipe beside this binary].
    #[arg(long)]
    quic_pipe: Option<PathBuf>,
    /// The clip: `legacy` (H.264 + AAC pushed by ffmpeg), `bframes` (the same with two
    /// B-frames between reference pictures, no pyramid) or `hevc-ertmp` (the same picture in
    /// HEVC, Enhanced RTMP v2 framing, pushed by rtmpq's own E-RTMP pusher).
    #[arg(long, default_value = "legacy", value_parser = ["legacy", "bframes", "hevc-ertmp"])]
    clip: String,
}

#[derive(Debug, Args)]
pub(crate) struct SoakArgs {
    /// Sessions at once.
    #[arg(long, default_value_t = 50)]
    sessions: usize,
    /// How long, seconds.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Left out of the memory growth figure, seconds.
    #[arg(long, default_value_t = 60)]
    warmup: u64,
    /// Video bitrate of each session, kbit/s.
    #[arg(long, default_value_t = 1000)]
    bitrate: u32,
    /// The short run for CI: 90 s with a 30 s warm-up.
    #[arg(long)]
    short: bool,
    /// Results folder (soak.json, logs).
    #[arg(long, default_value = "soak-results")]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct CapacityArgs {
    /// Session counts to step through, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "25,50,100,150,200,250,300"
    )]
    steps: Vec<usize>,
    /// How long each step runs, seconds.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Video bitrate of each session, kbit/s.
    #[arg(long, default_value_t = 3000)]
    bitrate: u32,
    /// Results folder (capacity.json, logs).
    #[arg(long, default_value = "capacity-results")]
    out: PathBuf,
    /// The rtmpq binary the edge and gateway run from [default: this one]: two builds under
    /// one harness, for a before/after.
    #[arg(long, value_name = "FILE")]
    hops: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Video bitrate of the synthetic stream, kbit/s.
    #[arg(long, default_value_t = 2500)]
    bitrate: u32,
    /// Stop after this many seconds [default: run until Ctrl-C].
    #[arg(long)]
    duration: Option<u64>,
}

/// Runs `command`.
pub(crate) async fn run(command: LabCommand) -> anyhow::Result<()> {
    match command {
        LabCommand::Demo(args) => run_demo(args).await,
        LabCommand::Bench(args) => run_bench(args).await,
        LabCommand::Soak(args) => run_soak(args).await,
        LabCommand::Capacity(args) => run_capacity(args).await,
        LabCommand::PushEnhanced { clip, url } => push_enhanced(&clip, &url).await,
    }
}

async fn push_enhanced(clip: &std::path::Path, url: &str) -> anyhow::Result<()> {
    use rtmpq_demo::{client::RtmpClient, enhanced};
    let msgs = enhanced::flv_messages(&std::fs::read(clip)?).map_err(anyhow::Error::msg)?;
    let rest = url
        .strip_prefix("rtmp://")
        .context("the URL must start with rtmp://")?;
    let mut parts = rest.splitn(3, '/');
    let (host, app, stream) = match (parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(a), Some(s)) => (h, a, s),
        _ => anyhow::bail!("the URL must be rtmp://host:port/app/stream"),
    };
    let tcp = tokio::net::TcpStream::connect(host).await?;
    let (mut client, _) = RtmpClient::over_enhanced(tcp, host, app).await?;
    client.publish(stream).await?;
    enhanced::publish_paced(&client, &msgs).await?;
    client.close().await;
    Ok(())
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    let options = rtmpq_demo::DemoOptions {
        bitrate_kbps: args.bitrate,
        duration: args.duration.map(Duration::from_secs),
    };
    let report = rtmpq_demo::run(options, shutdown_on_signal()).await?;
    anyhow::ensure!(report.video_delivered > 0, "the player received no frames");
    Ok(())
}

/// What a soak or capacity run starts from: this binary, the TCP relay beside it, fresh
/// certificates in `out`.
fn load_context(out: &std::path::Path) -> anyhow::Result<rtmpq_bench::load::LoadContext> {
    let exe = std::env::current_exe()?;
    let tcp_relay = exe
        .parent()
        .map(|d| d.join("examples/tcp_relay"))
        .unwrap_or_default();
    anyhow::ensure!(
        tcp_relay.exists(),
        "{} not found: build it with `cargo build --release --example tcp_relay`",
        tcp_relay.display()
    );
    anyhow::ensure!(
        std::process::Command::new("nginx")
            .arg("-v")
            .output()
            .is_ok(),
        "nginx not found (apt-get install nginx libnginx-mod-rtmp)"
    );
    let _ = std::fs::remove_dir_all(out);
    let certs = out.join("certs");
    let pin = rtmpq_certs::init(&certs, &[])?;
    Ok(rtmpq_bench::load::LoadContext {
        rtmpq: exe,
        tcp_relay,
        certs,
        pin: pin.to_string(),
        dir: out.to_owned(),
    })
}

async fn run_soak(args: SoakArgs) -> anyhow::Result<()> {
    let ctx = load_context(&args.out)?;
    let (duration, warmup) = if args.short {
        (90, 30)
    } else {
        (args.duration, args.warmup)
    };
    anyhow::ensure!(
        warmup < duration,
        "the warm-up must be shorter than the run"
    );
    let report = rtmpq_bench::load::soak(
        &ctx,
        args.sessions,
        args.bitrate,
        Duration::from_secs(duration),
        Duration::from_secs(warmup),
    )
    .await?;
    for line in rtmpq_bench::load::soak_lines(&report) {
        println!("{line}");
    }
    rtmpq_bench::load::write_json(&args.out.join("soak.json"), &report)?;
    println!("results in {}", args.out.display());
    Ok(())
}

async fn run_capacity(args: CapacityArgs) -> anyhow::Result<()> {
    let mut ctx = load_context(&args.out)?;
    if let Some(hops) = &args.hops {
        ctx.rtmpq = hops.clone();
    }
    let report = rtmpq_bench::load::capacity(
        &ctx,
        &args.steps,
        args.bitrate,
        Duration::from_secs(args.duration),
    )
    .await?;
    println!(
        "rtmpq carried {} sessions of {} kbit/s with no frame late beyond {} ms",
        report.rtmpq_capacity,
        args.bitrate,
        rtmpq_bench::load::LATE_MS
    );
    rtmpq_bench::load::write_json(&args.out.join("capacity.json"), &report)?;
    println!("results in {}", args.out.display());
    Ok(())
}

async fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let quic_pipe = args.quic_pipe.unwrap_or_else(|| {
        exe.parent()
            .map(|d| d.join("examples/quic_pipe"))
            .unwrap_or_default()
    });
    anyhow::ensure!(
        quic_pipe.exists(),
        "{} not found: build it with `cargo build --release --example quic_pipe` or pass --quic-pipe",
        quic_pipe.display()
    );
    let transports = args
        .transports
        .iter()
        .map(|t| {
            rtmpq_bench::harness::Transport::parse(t)
                .with_context(|| format!("unknown transport {t:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    use rtmpq_bench::harness::Direction;
    let directions = args
        .directions
        .iter()
        .map(|d| match d.as_str() {
            "publish" => Ok(Direction::Publish),
            "play" => Ok(Direction::Play),
            _ => anyhow::bail!("unknown direction {d:?}: publish or play"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (profiles, duration, directions) = if args.short {
        (
            vec!["loss2".to_owned(), "under-capacity".to_owned()],
            8,
            vec![Direction::Publish, Direction::Play],
        )
    } else {
        (args.profiles, args.duration, directions)
    };
    let options = rtmpq_bench::BenchOptions {
        profiles,
        transports,
        directions,
        duration: Duration::from_secs(duration),
        video_kbps: args.bitrate,
        out: args.out.clone(),
        rtmpq: exe,
        quic_pipe,
        enhanced: args.clip == "hevc-ertmp",
        b_frames: args.clip == "bframes",
    };
    rtmpq_bench::run(options).await?;
    println!("results in {}", args.out.display());
    Ok(())
}
