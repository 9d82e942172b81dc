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

/// Help text for every metric this crate exports.
fn describe() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_gauge!("rtmpq_sessions_open", "RTMP sessions open now");
    describe_gauge!("rtmpq_connections_open", "QUIC connections open now");
    describe_gauge!(
        "rtmpq_buffered_bytes",
        Unit::Bytes,
        "Bytes buffered by all sessions (partial messages and queues)"
    );
    describe_gauge!(
        "rtmpq_buffered_bytes_limit",
        Unit::Bytes,
        "The process-wide bound on buffered bytes; a session past it ends with overloaded"
    );
    describe_counter!(
        "rtmpq_sessions_ended_total",
        "Sessions ended, by close reason"
    );
    describe_counter!(
        "rtmpq_handshake_failures_total",
        "Failed QUIC/tunnel handshakes, by reason"
    );
    describe_counter!(
        "rtmpq_quic_reconnects_total",
        "Reconnects to the gateway after a lost connection"
    );
    describe_counter!(
        "rtmpq_gateway_failovers_total",
        "Gateways the edge left for another because they stopped acknowledging"
    );
    describe_counter!(
        "rtmpq_sessions_set_up_again_total",
        "Live sessions set up again after what carried them was lost (gateway: the origin connection; edge: the tunnel)"
    );
    describe_counter!(
        "rtmpq_session_payload_bytes_total",
        Unit::Bytes,
        "End-to-end payload bytes, by flow (to_origin or to_client)"
    );
    describe_counter!(
        "rtmpq_session_messages_total",
        "End-to-end RTMP messages, by flow"
    );
    describe_counter!(
        "rtmpq_session_video_frames_total",
        "Video frames in the media direction"
    );
    describe_counter!(
        "rtmpq_session_keyframes_total",
        "Video key frames in the media direction"
    );
    describe_gauge!(
        "rtmpq_session_bitrate_bits_per_second",
        "Media bitrate over the last 5 s"
    );
    describe_gauge!(
        "rtmpq_session_keyframe_interval_seconds",
        Unit::Seconds,
        "Media time between the last two key frames"
    );
    describe_gauge!(
        "rtmpq_session_queue_age_seconds",
        Unit::Seconds,
        "Age of the oldest message waiting to be handed on"
    );
    describe_counter!(
        "rtmpq_session_dropped_frames_total",
        "Media frames the latency budget (reason stale) or the queue's byte bound (reason overflow) dropped, by kind"
    );
    describe_counter!(
        "rtmpq_session_dropped_gops_total",
        "GOPs cut by the media queue (whole or from some frame on), by reason"
    );
    describe_counter!(
        "rtmpq_session_dropped_bytes_total",
        Unit::Bytes,
        "Payload bytes of media the queue dropped, by reason"
    );
    describe_gauge!(
        "rtmpq_session_queue_media_bytes",
        Unit::Bytes,
        "Payload bytes of media waiting in the session's queue"
    );
    describe_gauge!(
        "rtmpq_session_path_bitrate_bits_per_second",
        "Estimated rate of the path the session's media leaves by (the congestion controller's)"
    );
    describe_gauge!(
        "rtmpq_session_latency_budget_seconds",
        Unit::Seconds,
        "Latency budget media waits under at this hop, after the room left for the path"
    );
    describe_gauge!(
        "rtmpq_quic_path_bitrate_bits_per_second",
        "Estimated rate of the connection's path (BBR's pacing rate)"
    );
    describe_gauge!(
        "rtmpq_session_duration_seconds",
        Unit::Seconds,
        "Time since the session started"
    );
    describe_gauge!(
        "rtmpq_quic_rtt_seconds",
        Unit::Seconds,
        "Smoothed RTT of the QUIC connection"
    );
    describe_gauge!(
        "rtmpq_quic_min_rtt_seconds",
        Unit::Seconds,
        "Minimum RTT of the QUIC connection"
    );
    describe_gauge!(
        "rtmpq_quic_congestion_window_bytes",
        Unit::Bytes,
        "Congestion window (BBR)"
    );
    describe_counter!("rtmpq_quic_sent_packets_total", "QUIC packets sent");
    describe_counter!(
        "rtmpq_quic_lost_packets_total",
        "QUIC packets declared lost"
    );
    describe_counter!("rtmpq_quic_congestion_events_total", "Congestion events");
    describe_counter!(
        "rtmpq_sessions_resumed_total",
        "Live sessions resumed on a new tunnel stream with their resume token"
    );
    describe_counter!(
        "rtmpq_zero_rtt_total",
        "Gateway connections whose HELLO went in 0-RTT data, by outcome"
    );
    describe_counter!(
        "rtmpq_standby_takeovers_total",
        "Times the standby gateway connection took over"
    );
    describe_counter!(
        "rtmpq_quic_path_changes_total",
        "Changes of the peer's address (migrations)"
    );
}
