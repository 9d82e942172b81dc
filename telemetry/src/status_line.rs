//! The edge's one-line terminal status, redrawn each second.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{Telemetry, TICK};

/// Redraws one line on the terminal each second: per session bitrate, fps, queue age, and the
/// connection's RTT and loss.
pub async fn status_line(telemetry: Arc<Telemetry>, stop: CancellationToken) {
    use std::io::Write;
    let mut ticker = tokio::time::interval(TICK);
    let mut last_width: usize = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let line = telemetry.status_summary();
        // Back to the line's start and over the last one, spaces past its end: no escape
        // sequences, which a Windows console shows as text unless told otherwise.
        let width = line.chars().count();
        let pad = last_width.saturating_sub(width);
        last_width = width;
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}{:pad$}", "");
        let _ = err.flush();
    }
}

impl Telemetry {
    /// One line of the hop's state: the connection's RTT and loss, then per session its
    /// stream, bitrate, fps and queue age.
    pub fn status_summary(&self) -> String {
        let link = match self.connections().first() {
            Some(c) => format!(
                "rtt {:.1} ms loss {:.1}% path {:.2} Mbit/s",
                c.rtt_seconds * 1e3,
                c.loss_percent,
                c.path_bitrate_bps as f64 / 1e6
            ),
            None if self.sessions().iter().any(|s| s.carrier == "tcp") => {
                "QUIC not connected, sessions on the TCP carrier".to_owned()
            }
            None => "gateway not connected".to_owned(),
        };
        let sessions: Vec<String> = self
            .sessions()
            .iter()
            .map(|s| {
                let dropped = s.dropped_stale.video_frames + s.dropped_overflow.video_frames;
                let dropped_audio = s.dropped_stale.audio_frames + s.dropped_overflow.audio_frames;
                let carrier = match (s.carrier.as_str(), s.congestion.as_str()) {
                    ("", _) => String::new(),
                    (carrier, "") => format!(" over {carrier}"),
                    (carrier, congestion) => format!(" over {carrier} ({congestion})"),
                };
                format!(
                    "{}/{} {}{carrier} {:.2} Mbit/s {:.0} fps queue {:.0} ms dropped {} video {} audio",
                    s.app,
                    s.stream,
                    s.direction,
                    s.bitrate_bps / 1e6,
                    s.fps,
                    s.queue_age_seconds * 1e3,
                    dropped,
                    dropped_audio
                )
            })
            .collect();
        format!("[{link}] {}", sessions.join(" | "))
    }
}
