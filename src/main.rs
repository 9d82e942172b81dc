//! The `rtmpq` command line: parses arguments and config files, then calls into the crates.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use rtmpq_edge::EdgeConfig;
use rtmpq_gateway::GatewayConfig;
use rtmpq_hop::config::ConfigArgs;
use tokio_util::sync::CancellationToken;

#[cfg(target_os = "linux")]
mod lab;

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
    /// The Linux-only tools: the demo, the bench, the soak and capacity runs.
    #[cfg(target_os = "linux")]
    #[command(flatten)]
    Lab(lab::LabCommand),
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo shows its own live view; its processes' logs are for when something is wrong.
    #[cfg(target_os = "linux")]
    let default_level = match cli.command {
        Command::Lab(lab::LabCommand::Demo(_)) => "warn",
        _ => "info",
    };
    #[cfg(not(target_os = "linux"))]
    let default_level = "info";
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
        #[cfg(target_os = "linux")]
        Command::Lab(command) => runtime()?.block_on(lab::run(command)),
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours are escape sequences, which a Windows console shows as text unless told
        // otherwise.
        .with_ansi(cfg!(unix) && std::io::IsTerminal::is_terminal(&std::io::stderr()))
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

/// Cancels the returned token on the first Ctrl-C or SIGTERM (Windows: Ctrl-C, Ctrl-Break or
/// the console window closing); a second one exits at once.
pub(crate) fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut signals = Signals::new();
        for n in 0.. {
            signals.next().await;
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

/// The signals that ask the process to stop.
#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        Signals { term }
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// The console events that ask the process to stop: Ctrl-C, Ctrl-Break, the console window
/// closing (Windows then gives the process a few seconds: the drain is cut short there).
#[cfg(windows)]
struct Signals {
    ctrl_break: tokio::signal::windows::CtrlBreak,
    ctrl_close: tokio::signal::windows::CtrlClose,
}

#[cfg(windows)]
impl Signals {
    fn new() -> Self {
        use tokio::signal::windows::{ctrl_break, ctrl_close};
        Signals {
            ctrl_break: ctrl_break().expect("Ctrl-Break handler"),
            ctrl_close: ctrl_close().expect("console close handler"),
        }
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = self.ctrl_break.recv() => {}
            _ = self.ctrl_close.recv() => {}
        }
    }
}

async fn run_gateway(args: ConfigArgs<GatewayConfig>) -> anyhow::Result<()> {
    let gateway = rtmpq_gateway::Gateway::bind(gateway_config(&args)?).await?;
    #[cfg(unix)]
    reload_on_hangup(gateway.reloader(), args)?;
    // Windows has no SIGHUP: a changed config there takes a restart.
    #[cfg(not(unix))]
    drop(args);
    gateway.run(shutdown_on_signal()).await;
    Ok(())
}

/// On SIGHUP the config file is read again, flags applied over it, and what can change live
/// (tokens, [[edge]] rules, certificates) changes; a config that does not load changes
/// nothing.
#[cfg(unix)]
fn reload_on_hangup(
    reloader: rtmpq_gateway::Reloader,
    args: ConfigArgs<GatewayConfig>,
) -> anyhow::Result<()> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let reloaded = gateway_config(&args)
                .and_then(|config| reloader.reload(config).map_err(anyhow::Error::from));
            if let Err(e) = reloaded {
                tracing::warn!(reason = %format!("{e:#}"), "SIGHUP: configuration not reloaded; the running one stays");
            }
        }
    });
    Ok(())
}

async fn run_edge(config: EdgeConfig) -> anyhow::Result<()> {
    let edge = rtmpq_edge::Edge::bind(config).await?;
    edge.run(shutdown_on_signal()).await;
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
