//! What the status API serves: one live session, one connection, an ended session, the
//! hop's event counts (JSON through serde).

use rtmpq_proto::media_queue::Dropped;
use serde::Serialize;

/// One live session as the status API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionStatus {
    /// Session id (hex).
    pub id: String,
    /// Who is on the other side: the client's address at the edge; at the gateway the edge's
    /// name and its connection's address, `NAME@IP:PORT`.
    pub peer: String,
    /// RTMP app.
    pub app: String,
    /// Stream name without its query string.
    pub stream: String,
    /// `publish`, `play` or empty before either.
    pub direction: String,
    /// Seconds since the session started.
    pub duration_seconds: f64,
    /// Session start to the first media message crossing this hop, s (start-up time).
    pub first_media_after_seconds: Option<f64>,
    /// Payload bytes toward the origin.
    pub to_origin_bytes: u64,
    /// Payload bytes toward the client.
    pub to_client_bytes: u64,
    /// Messages toward the origin.
    pub to_origin_messages: u64,
    /// Messages toward the client.
    pub to_client_messages: u64,
    /// Video frames in the media direction.
    pub video_frames: u64,
    /// Key frames in the media direction.
    pub keyframes: u64,
    /// Media bitrate over the last 5 s, bit/s.
    pub bitrate_bps: f64,
    /// Video frames per second over the last second.
    pub fps: f64,
    /// Media time between the last two key frames, s.
    pub keyframe_interval_seconds: Option<f64>,
    /// How long the oldest unsent message has waited, s.
    pub queue_age_seconds: f64,
    /// The latency budget media waits under at this hop (after the room left for the
    /// path), s; `None`: no budget.
    pub latency_budget_seconds: Option<f64>,
    /// Payload bytes of media waiting in the session's queue.
    pub queue_media_bytes: usize,
    /// Media dropped for waiting past the budget.
    pub dropped_stale: DroppedStatus,
    /// Media dropped at the queue's byte bound.
    pub dropped_overflow: DroppedStatus,
    /// The path's estimated rate (the congestion controller's), bit/s; 0 when unknown.
    pub path_bitrate_bps: u64,
    /// Media dropped on arrival at this hop for arriving past the budget.
    pub dropped_late: DroppedStatus,
    /// GOPs (and the frames they held) this hop reset inside QUIC once they went stale
    /// (media lanes).
    pub dropped_reset: DroppedStatus,
    /// At the edge: the gateway (`HOST:PORT` as configured) the session's tunnel runs
    /// through now; empty at the gateway.
    pub gateway: String,
    /// The tunnel's carrier now: `quic`, or `tcp` (TLS over TCP, where UDP is blocked).
    pub carrier: String,
    /// The congestion controller of the tunnel's connection now: `bbr` (QUIC; TCP where the
    /// kernel has it), `cubic`...; empty if not known.
    pub congestion: String,
    /// Times the session was set up again on a new tunnel session (edge) or origin
    /// connection (gateway).
    pub set_up_again: u32,
    /// Times the session was resumed on a new tunnel stream.
    pub resumed: u32,
    /// Why the session last lost its tunnel or origin; empty if it never did.
    pub last_loss: String,
}

/// Media a session's queue dropped for one reason.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DroppedStatus {
    /// Video frames.
    pub video_frames: u64,
    /// GOPs cut (whole or from some frame on).
    pub gops: u64,
    /// Audio frames.
    pub audio_frames: u64,
    /// Payload bytes.
    pub bytes: u64,
}

impl From<Dropped> for DroppedStatus {
    fn from(d: Dropped) -> Self {
        DroppedStatus {
            video_frames: d.video_frames,
            gops: d.gops,
            audio_frames: d.audio_frames,
            bytes: d.bytes,
        }
    }
}

/// One QUIC connection as the status API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionStatus {
    /// The edge's id at the gateway; the gateway's address at the edge.
    pub peer: String,
    /// The peer's current UDP address.
    pub remote: String,
    /// Smoothed RTT, s.
    pub rtt_seconds: f64,
    /// Minimum RTT seen, s.
    pub min_rtt_seconds: f64,
    /// Congestion window, bytes.
    pub congestion_window_bytes: u64,
    /// Packets sent.
    pub sent_packets: u64,
    /// Packets declared lost.
    pub lost_packets: u64,
    /// Loss over the last second, percent of packets sent.
    pub loss_percent: f64,
    /// Congestion events.
    pub congestion_events: u64,
    /// Times the peer's address changed (migrations).
    pub path_changes: u64,
    /// The congestion controller's estimate of the path's rate (BBR's pacing rate), bit/s.
    pub path_bitrate_bps: u64,
}

/// How many ended sessions the status API keeps.
pub const ENDED_KEPT: usize = 100;

/// A session that ended, as `GET /api/v1/sessions/ended` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct EndedSession {
    /// The session as last seen.
    #[serde(flatten)]
    pub session: SessionStatus,
    /// The close code's name (`normal`, `client_protocol_error`, ...).
    pub code: String,
    /// Why, in words.
    pub reason: String,
}

/// How often a hop met the events that change how it runs, since it started: what this
/// process counted (Prometheus counters are per process; tests run several hops in one).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    /// Sessions set up again on a new tunnel session or origin connection.
    pub sessions_set_up_again: u64,
    /// Sessions resumed on a new tunnel stream.
    pub sessions_resumed: u64,
    /// Sessions refused before they started (a full hop, an edge at its limit).
    pub sessions_refused: u64,
    /// Gateway connections whose HELLO went in 0-RTT data and was taken.
    pub zero_rtt_accepted: u64,
    /// Gateway connections whose 0-RTT data was refused (HELLO said again).
    pub zero_rtt_refused: u64,
    /// Standby gateway connections made ready.
    pub standby_ready: u64,
    /// Times the standby connection took over from the one in use.
    pub standby_takeovers: u64,
    /// Gateways left for another because they stopped acknowledging.
    pub failovers: u64,
    /// Reconnects to a gateway after a connection ended.
    pub reconnects: u64,
    /// Sessions that took the TCP carrier because QUIC did not answer or UDP died
    /// (`transport = "auto"`).
    pub tcp_fallbacks: u64,
    /// Live sessions moved from the TCP carrier back to QUIC once UDP got through again.
    pub quic_returns: u64,
}
