//! The `rtmpq` command line: parses arguments and config files, then calls into the crates.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use rtmpq_edge::EdgeConfig;
use rtmpq_gateway::GatewayConfig;
use rtmpq_hop::config::ConfigArgs;
use tokio_util::sync::CancellationToken;

/// RTMP over QUIC: an edge beside the pusher, a gateway in front of the origin.
#[derive(Debug, Parser)]
#[command(name = "rtmpq", version)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make certificates: a CA and gateway certificate, or an edge client certificate.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Run the gateway: QUIC in, RTMP out to the origin.
    Gateway(ConfigArgs<GatewayConfig>),
    /// Run the edge: RTMP in from pushers and players, QUIC out to the gateway.
    Edge(ConfigArgs<EdgeConfig>),
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
struct BenchArgs {
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
    /// The clip: `legacy` (H.264 + AAC pushed by ffmpeg) or `hevc-ertmp` (the same picture in
    /// HEVC, Enhanced RTMP v2 framing, pushed by rtmpq's own E-RTMP pusher).
    #[arg(long, default_value = "legacy", value_parser = ["legacy", "hevc-ertmp"])]
    clip: String,
}

#[derive(Debug, Args)]
struct SoakArgs {
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
struct CapacityArgs {
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

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a CA and a gateway certificate and key in DIR; print the gateway's pin.
    Init {
        /// Directory for ca.pem, ca.key, gateway.pem, gateway.key.
        #[arg(long)]
        dir: PathBuf,
        /// A name or IP address the gateway is reached by (repeat for more).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// How long the gateway certificate is valid, days [default: until 4096].
        #[arg(long)]
        days: Option<u32>,
    },
    /// Create an edge client certificate signed by DIR's CA (for mutual TLS).
    Edge {
        /// The directory `certs init` made.
        #[arg(long)]
        dir: PathBuf,
        /// The edge's name.
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Video bitrate of the synthetic stream, kbit/s.
    #[arg(long, default_value_t = 2500)]
    bitrate: u32,
    /// Stop after this many seconds [default: run until Ctrl-C].
    #[arg(long)]
    duration: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo shows its own live view; its processes' logs are for when something is wrong.
    let default_level = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    init_logging(cli.log_format, default_level);
    match cli.command {
        Command::Certs(CertsCommand::Init { dir, sans, days }) => {
            let pin = rtmpq_certs::init_valid_for(&dir, &sans, days)?;
            println!("{pin}");
            eprintln!(
                "wrote {}/{{ca.pem,ca.key,gateway.pem,gateway.key}}; edges trust the gateway with --ca {}/ca.pem or --pin {pin}",
                dir.display(),
                dir.display()
            );
            Ok(())
        }
        Command::Certs(CertsCommand::Edge { dir, name }) => {
            let (cert, key) = rtmpq_certs::issue_edge(&dir, &name)?;
            println!("{}\n{}", cert.display(), key.display());
            Ok(())
        }
        Command::Gateway(args) => runtime()?.block_on(run_gateway(args)),
        Command::Edge(args) => runtime()?.block_on(run_edge(edge_config(&args)?)),
        Command::Demo(args) => runtime()?.block_on(run_demo(args)),
        Command::Bench(args) => runtime()?.block_on(run_bench(args)),
        Command::Soak(args) => runtime()?.block_on(run_soak(args)),
        Command::Capacity(args) => runtime()?.block_on(run_capacity(args)),
        Command::PushEnhanced { clip, url } => runtime()?.block_on(push_enhanced(&clip, &url)),
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn gateway_config(args: &ConfigArgs<GatewayConfig>) -> anyhow::Result<GatewayConfig> {
    Ok(args.load()?)
}

fn edge_config(args: &ConfigArgs<EdgeConfig>) -> anyhow::Result<EdgeConfig> {
    let mut c = args.load()?;
    // A trust flag replaces whatever trust the file gave.
    match (args.given("ca"), args.given("pin")) {
        (true, false) => c.pin = None,
        (false, true) => c.ca = None,
        _ => {}
    }
    // `Edge::bind` and `Gateway::bind` resolve (check) the config before they touch anything.
    Ok(c)
}

/// Cancels the returned token on the first Ctrl-C or SIGTERM; a second one exits at once.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        for n in 0.. {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if n > 0 {
                tracing::warn!("second signal: exiting now");
                std::process::exit(130);
            }
            tracing::info!("shutting down (signal again to exit at once)");
            cancel.cancel();
        }
    });
    token
}

async fn run_gateway(args: ConfigArgs<GatewayConfig>) -> anyhow::Result<()> {
    let gateway = rtmpq_gateway::Gateway::bind(gateway_config(&args)?).await?;
    let reloader = gateway.reloader();
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    // SIGHUP: the config file is read again, flags applied over it, and what can change live
    // (tokens, [[edge]] rules, certificates) changes; a config that does not load changes
    // nothing.
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let reloaded = gateway_config(&args)
                .and_then(|config| reloader.reload(config).map_err(anyhow::Error::from));
            if let Err(e) = reloaded {
                tracing::warn!(reason = %format!("{e:#}"), "SIGHUP: configuration not reloaded; the running one stays");
            }
        }
    });
    gateway.run(shutdown_on_signal()).await;
    Ok(())
}

async fn run_edge(config: EdgeConfig) -> anyhow::Result<()> {
    let edge = rtmpq_edge::Edge::bind(config).await?;
    edge.run(shutdown_on_signal()).await;
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
    };
    rtmpq_bench::run(options).await?;
    println!("results in {}", args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trust_flag_replaces_the_files_trust_and_other_flags_go_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("edge.toml");
        std::fs::write(
            &file,
            "ca = \"ca.pem\"\nreconnect_limit_ms = 5\nstandby = true\n",
        )
        .unwrap();
        let pin = format!("sha256:{}", "ab".repeat(32));
        let file = file.display().to_string();
        let argv = [
            "rtmpq",
            "edge",
            "--config",
            &file,
            "--pin",
            &pin,
            "--max-latency",
            "250",
        ];
        let Command::Edge(args) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("not the edge command");
        };
        let c = edge_config(&args).unwrap();
        assert_eq!((c.ca, c.pin.as_deref()), (None, Some(pin.as_str())));
        assert_eq!((c.latency_budget_ms, c.reconnect_limit_ms), (250, 5));
        assert!(c.standby, "a switch not given keeps the file's value");
    }
}
