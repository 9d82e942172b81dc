//! The process-wide Prometheus recorder: installed once, every metric described, series of
//! ended sessions evicted when idle.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// The recorder drops series idle for [`SERIES_IDLE`] only when it renders; render once per
/// period (off the runtime) so ended sessions' series go even when nothing scrapes.
pub(crate) async fn evict_idle_series(stop: CancellationToken) {
    let mut ticker = tokio::time::interval(SERIES_IDLE);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let _ = tokio::task::spawn_blocking(|| drop(prometheus().render())).await;
    }
}

/// Longest label value a client's name becomes (the rest is cut): one series costs about its
/// labels' length, and a peer chooses stream names.
pub const MAX_LABEL_LEN: usize = 64;

/// `name` as a metric label value: at most [`MAX_LABEL_LEN`] bytes.
pub(crate) fn label_value(name: &str) -> String {
    name[..name.floor_char_boundary(MAX_LABEL_LEN)].to_owned()
}

/// How long a series nothing updates is kept (a session's series go this long after it ends).
const SERIES_IDLE: Duration = Duration::from_secs(60);

/// The process-wide Prometheus recorder (the `metrics` facade has one per process).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            // Series of ended sessions disappear after a while instead of lingering forever.
            .idle_timeout(metrics_util::MetricKindMask::ALL, Some(SERIES_IDLE))
            .install_recorder()
            .expect("no other metrics recorder is installed");
        describe();
        handle
    })
}

/// A metric's kind, for its help text.
#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

/// Every metric this crate exports: name, kind, unit and help text.
const METRICS: &[(&str, Kind, Option<metrics::Unit>, &str)] = {
    use metrics::Unit;
    &[
    (
        "rtmpq_sessions_open",
        Kind::Gauge,
        None,
        "RTMP sessions open now",
    ),
    (
        "rtmpq_connections_open",
        Kind::Gauge,
        None,
        "QUIC connections open now",
    ),
    (
        "rtmpq_buffered_bytes",
        Kind::Gauge,
        Some(Unit::Bytes),
        "Bytes buffered by all sessions (partial messages and queues)",
    ),
    (
        "rtmpq_buffered_bytes_limit",
        Kind::Gauge,
        Some(Unit::Bytes),
        "The process-wide bound on buffered bytes; a session past it ends with overloaded",
    ),
    (
        "rtmpq_sessions_ended_total",
        Kind::Counter,
        None,
        "Sessions ended, by close reason",
    ),
    (
        "rtmpq_handshake_failures_total",
        Kind::Counter,
        None,
        "Failed QUIC/tunnel handshakes, by reason",
    ),
    (
        "rtmpq_quic_reconnects_total",
        Kind::Counter,
        None,
        "Reconnects to the gateway after a lost connection",
    ),
    (
        "rtmpq_gateway_failovers_total",
        Kind::Counter,
        None,
        "Gateways the edge left for another because they stopped acknowledging",
    ),
    (
        "rtmpq_sessions_set_up_again_total",
        Kind::Counter,
        None,
        "Live sessions set up again after what carried them was lost (gateway: the origin connection; edge: the tunnel)",
    ),
    (
        "rtmpq_session_payload_bytes_total",
        Kind::Counter,
        Some(Unit::Bytes),
        "End-to-end payload bytes, by flow (to_origin or to_client)",
    ),
    (
        "rtmpq_session_messages_total",
        Kind::Counter,
        None,
        "End-to-end RTMP messages, by flow",
    ),
    (
        "rtmpq_session_video_frames_total",
        Kind::Counter,
        None,
        "Video frames in the media direction",
    ),
    (
        "rtmpq_session_keyframes_total",
        Kind::Counter,
        None,
        "Video key frames in the media direction",
    ),
    (
        "rtmpq_session_bitrate_bits_per_second",
        Kind::Gauge,
        None,
        "Media bitrate over the last 5 s",
    ),
    (
        "rtmpq_session_keyframe_interval_seconds",
        Kind::Gauge,
        Some(Unit::Seconds),
        "Media time between the last two key frames",
    ),
    (
        "rtmpq_session_queue_age_seconds",
        Kind::Gauge,
        Some(Unit::Seconds),
        "Age of the oldest message waiting to be handed on",
    ),
    (
        "rtmpq_session_dropped_frames_total",
        Kind::Counter,
        None,
        "Media frames dropped, by kind and reason: stale (past the latency budget in the sending hop's queue), overflow (past its byte bound), late (arrived past the budget), reset (in a GOP stream reset inside QUIC; an upper bound, some may have crossed)",
    ),
    (
        "rtmpq_session_dropped_gops_total",
        Kind::Counter,
        None,
        "GOPs cut by the media queue (whole or from some frame on), by reason",
    ),
    (
        "rtmpq_session_dropped_bytes_total",
        Kind::Counter,
        Some(Unit::Bytes),
        "Payload bytes of media the queue dropped, by reason",
    ),
    (
        "rtmpq_session_queue_media_bytes",
        Kind::Gauge,
        Some(Unit::Bytes),
        "Payload bytes of media waiting in the session's queue",
    ),
    (
        "rtmpq_session_path_bitrate_bits_per_second",
        Kind::Gauge,
        None,
        "Estimated rate of the path the session's media leaves by (the congestion controller's)",
    ),
    (
        "rtmpq_session_latency_budget_seconds",
        Kind::Gauge,
        Some(Unit::Seconds),
        "Latency budget media waits under at this hop, after the room left for the path",
    ),
    (
        "rtmpq_quic_path_bitrate_bits_per_second",
        Kind::Gauge,
        None,
        "Estimated rate of the connection's path (BBR's pacing rate)",
    ),
    (
        "rtmpq_session_carrier",
        Kind::Gauge,
        None,
        "1 on the carrier (quic, tcp) and congestion controller a session's tunnel runs on now, 0 on one it left",
    ),
    (
        "rtmpq_session_duration_seconds",
        Kind::Gauge,
        Some(Unit::Seconds),
        "Time since the session started",
    ),
    (
        "rtmpq_quic_rtt_seconds",
        Kind::Gauge,
        Some(Unit::Seconds),
        "Smoothed RTT of the QUIC connection",
    ),
    (
        "rtmpq_quic_min_rtt_seconds",
        Kind::Gauge,
        Some(Unit::Seconds),
        "Minimum RTT of the QUIC connection",
    ),
    (
        "rtmpq_quic_congestion_window_bytes",
        Kind::Gauge,
        Some(Unit::Bytes),
        "Congestion window (BBR)",
    ),
    (
        "rtmpq_quic_sent_packets_total",
        Kind::Counter,
        None,
        "QUIC packets sent",
    ),
    (
        "rtmpq_quic_lost_packets_total",
        Kind::Counter,
        None,
        "QUIC packets declared lost",
    ),
    (
        "rtmpq_quic_congestion_events_total",
        Kind::Counter,
        None,
        "Congestion events",
    ),
    (
        "rtmpq_sessions_resumed_total",
        Kind::Counter,
        None,
        "Live sessions resumed on a new tunnel stream with their resume token",
    ),
    (
        "rtmpq_zero_rtt_total",
        Kind::Counter,
        None,
        "Gateway connections whose HELLO went in 0-RTT data, by outcome",
    ),
    (
        "rtmpq_standby_takeovers_total",
        Kind::Counter,
        None,
        "Times the standby gateway connection took over",
    ),
    (
        "rtmpq_tcp_fallbacks_total",
        Kind::Counter,
        None,
        "Sessions that took the TCP carrier because QUIC did not answer or UDP died, by reason",
    ),
    (
        "rtmpq_quic_returns_total",
        Kind::Counter,
        None,
        "Live sessions moved from the TCP carrier back to QUIC at a key frame, by reason",
    ),
    (
        "rtmpq_quic_path_changes_total",
        Kind::Counter,
        None,
        "Changes of the peer's address (migrations)",
    ),
    ]
};

/// Help text for every metric this crate exports.
fn describe() {
    for &(name, kind, unit, help) in METRICS {
        match (kind, unit) {
            (Kind::Gauge, Some(unit)) => metrics::describe_gauge!(name, unit, help),
            (Kind::Gauge, None) => metrics::describe_gauge!(name, help),
            (Kind::Counter, Some(unit)) => metrics::describe_counter!(name, unit, help),
            (Kind::Counter, None) => metrics::describe_counter!(name, help),
        }
    }
}
