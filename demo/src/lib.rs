//! rtmpq-demo: the built-in RTMP client, synthetic publisher and latency-measuring player, and
//! `rtmpq demo`, which runs gateway, embedded origin, edge, publisher and player on loopback in
//! one process and prints live figures.

pub mod client;
pub mod clock;
pub mod enhanced;
pub mod media;

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clock::monotonic_ns;
use rtmpq_edge::{Edge, EdgeConfig};
use rtmpq_gateway::{Gateway, GatewayConfig};
use rtmpq_telemetry::Telemetry;
use tokio_util::sync::CancellationToken;

use client::{ClientError, RtmpClient};
use media::{PlayStats, StreamShape};

/// Settings for `rtmpq demo`.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// Video bitrate of the synthetic stream, kbit/s.
    pub bitrate_kbps: u32,
    /// Stop after this long; `None` runs until cancelled.
    pub duration: Option<Duration>,
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Video frames the publisher sent.
    pub video_sent: u32,
    /// Video frames the player received.
    pub video_delivered: u64,
    /// Audio frames the player received.
    pub audio_delivered: u64,
    /// Median video latency (arrival minus due time), ms.
    pub latency_p50_ms: f64,
    /// 99th percentile video latency, ms.
    pub latency_p99_ms: f64,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The gateway did not start.
    #[error("gateway: {0}")]
    Gateway(rtmpq_gateway::GatewayError),
    /// The edge did not start.
    #[error("edge: {0}")]
    Edge(rtmpq_edge::EdgeError),
    /// The publisher or player failed.
    #[error("rtmp client: {0}")]
    Client(#[from] ClientError),
    /// The temporary state dir could not be made.
    #[error("state dir: {0}")]
    StateDir(#[from] std::io::Error),
}

/// Runs the whole path on loopback: publisher → edge → QUIC → gateway → embedded origin →
/// gateway → QUIC → edge → player. Prints one line of figures per second.
pub async fn run(
    options: DemoOptions,
    shutdown: CancellationToken,
) -> Result<DemoReport, DemoError> {
    let state_dir = tempfile::tempdir()?;
    let gateway = Gateway::bind(GatewayConfig {
        listen: "127.0.0.1:0".parse().expect("valid"),
        state_dir: state_dir.path().to_owned(),
        ..GatewayConfig::default()
    })
    .await
    .map_err(DemoError::Gateway)?;
    let edge = Edge::bind(EdgeConfig {
        listen: "127.0.0.1:0".parse().expect("valid"),
        gateway: vec![gateway.local_addr().to_string()],
        pin: Some(gateway.pin().to_string()),
        ..EdgeConfig::default()
    })
    .await
    .map_err(DemoError::Edge)?
    .without_status_line();
    let edge_addr = edge.local_addr().to_string();
    println!(
        "rtmpq demo: publisher -> edge {edge_addr} -> quic {} -> gateway -> origin {} -> back through the edge -> player",
        gateway.local_addr(),
        gateway.origin()
    );
    let hops = [edge.telemetry(), gateway.telemetry()];
    let (gateway_stop, edge_stop) = (CancellationToken::new(), CancellationToken::new());
    let gateway_task = tokio::spawn(gateway.run(gateway_stop.clone()));
    let edge_task = tokio::spawn(edge.run(edge_stop.clone()));

    let result = measure(&edge_addr, options, &hops, shutdown).await;
    // The edge leaves first, so the gateway going away is no surprise to it.
    edge_stop.cancel();
    let _ = edge_task.await;
    gateway_stop.cancel();
    let _ = gateway_task.await;
    result
}

/// The demo's one writer: a block of lines redrawn in place on a terminal, plain lines in a
/// pipe.
struct LiveView {
    terminal: bool,
    drawn: usize,
}

impl LiveView {
    fn new() -> Self {
        LiveView {
            terminal: std::io::stdout().is_terminal(),
            drawn: 0,
        }
    }

    fn show(&mut self, lines: &[String]) {
        let mut out = std::io::stdout().lock();
        if self.terminal {
            if self.drawn > 0 {
                let _ = write!(out, "\x1b[{}A", self.drawn);
            }
            for line in lines {
                let _ = writeln!(out, "\r\x1b[2K{line}");
            }
            self.drawn = lines.len();
        } else {
            let _ = writeln!(out, "{}", lines[0]);
        }
        let _ = out.flush();
    }
}

async fn measure(
    edge_addr: &str,
    options: DemoOptions,
    hops: &[Arc<Telemetry>; 2],
    shutdown: CancellationToken,
) -> Result<DemoReport, DemoError> {
    let mut player = RtmpClient::connect(edge_addr, "live").await?;
    player.play("demo").await?;
    let mut publisher = RtmpClient::connect(edge_addr, "live").await?;
    publisher.publish("demo").await?;

    let stats = Arc::new(Mutex::new(PlayStats::default()));
    let player_stats = stats.clone();
    // Video frames received so far, for waiting on the last ones.
    let (frames_tx, mut frames_rx) = tokio::sync::watch::channel(0u64);
    let player_task = tokio::spawn(async move {
        while let Ok(Some(msg)) = player.next_message().await {
            let mut s = player_stats.lock().expect("stats");
            s.record(&msg, monotonic_ns());
            frames_tx.send_if_modified(|n| std::mem::replace(n, s.video_frames) != s.video_frames);
        }
    });
    let sent = Arc::new(AtomicU32::new(0));
    let shape = StreamShape {
        video_kbps: options.bitrate_kbps,
        duration: options.duration,
    };
    let publisher_sent = sent.clone();
    let mut publish_task = tokio::spawn(async move {
        let report = media::publish_synthetic(&publisher, shape, &publisher_sent).await;
        publisher.close().await;
        report
    });

    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut view = LiveView::new();
    let (mut last_frames, mut last_bytes, mut last_index) = (0u64, 0u64, 0usize);
    let mut seconds = 0u32;
    let published = loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                publish_task.abort();
                break None;
            }
            done = &mut publish_task => break done.ok(),
            _ = ticker.tick() => {
                seconds += 1;
                let s = stats.lock().expect("stats");
                let window = &s.video_latency_ms[last_index..];
                let p50 = media::quantile(window, 0.5).unwrap_or(f64::NAN);
                let max = media::quantile(window, 1.0).unwrap_or(f64::NAN);
                let figures = format!(
                    "{seconds:>4}s  {:>6.2} Mbit/s  {:>5.1} fps  latency p50 {p50:>6.1} ms  max {max:>6.1} ms  frames {}/{}",
                    (s.bytes - last_bytes) as f64 * 8.0 / 1e6,
                    (s.video_frames - last_frames) as f64,
                    s.video_frames,
                    sent.load(Ordering::Relaxed),
                );
                view.show(&[
                    figures,
                    format!("  edge    {}", hops[0].status_summary()),
                    format!("  gateway {} sessions", hops[1].sessions().len()),
                ]);
                (last_frames, last_bytes, last_index) = (s.video_frames, s.bytes, s.video_latency_ms.len());
            }
        }
    };
    if let Some(Err(e)) = published {
        return Err(e.into());
    }
    // Let the last frames in flight arrive (for at most 2 s).
    let sent = sent.load(Ordering::Relaxed);
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        frames_rx.wait_for(|n| *n >= u64::from(sent)),
    )
    .await;
    player_task.abort();
    let s = stats.lock().expect("stats").clone();
    let report = DemoReport {
        video_sent: sent,
        video_delivered: s.video_frames,
        audio_delivered: s.audio_frames,
        latency_p50_ms: s.latency_quantile(0.5).unwrap_or(f64::NAN),
        latency_p99_ms: s.latency_quantile(0.99).unwrap_or(f64::NAN),
    };
    println!(
        "frames delivered: {} of {} video, {} audio; latency p50 {:.1} ms, p99 {:.1} ms",
        report.video_delivered,
        report.video_sent,
        report.audio_delivered,
        report.latency_p50_ms,
        report.latency_p99_ms
    );
    Ok(report)
}
