//! rtmpq-telemetry: what edge and gateway report about themselves. A [`Telemetry`] registry of
//! live sessions and QUIC connections, turned once a second into Prometheus metrics (through
//! the `metrics` facade) and into the JSON status API, served together by [`serve`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rtmpq_hop::rtmp::WaitTimes;
use rtmpq_proto::budget::MemoryBudget;
use rtmpq_proto::media_queue::Dropped;
use rtmpq_proto::session::{Flow, SessionTracker};
use rtmpq_proto::wire::{CloseCode, SessionId};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How far back the bitrate gauge looks.
const BITRATE_WINDOW: Duration = Duration::from_secs(5);
/// How often figures are refreshed.
pub const TICK: Duration = Duration::from_secs(1);
/// At most one log line about failed handshakes per this interval; the metric counts each.
pub const HANDSHAKE_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Which process reports: the `role` label of every metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The edge beside the pusher.
    Edge,
    /// The gateway beside the origin.
    Gateway,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Edge => "edge",
            Role::Gateway => "gateway",
        }
    }
}

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

#[derive(Debug)]
struct SessionEntry {
    id: SessionId,
    peer: String,
    /// When the session started.
    started: Instant,
    tracker: Arc<Mutex<SessionTracker>>,
    /// The messages waiting for the session's RTMP writer.
    waiting: Arc<WaitTimes>,
    /// (when, media bytes) samples for the bitrate window.
    samples: VecDeque<(Instant, u64)>,
    reported: Reported,
    last_status: Option<SessionStatus>,
    last_video_frames: u64,
}

/// Counter values already pushed to the metrics recorder.
#[derive(Debug, Default, Clone, Copy)]
struct Reported {
    to_origin_bytes: u64,
    to_client_bytes: u64,
    to_origin_messages: u64,
    to_client_messages: u64,
    video_frames: u64,
    keyframes: u64,
    stale: Dropped,
    overflow: Dropped,
    late: Dropped,
    reset: Dropped,
}

#[derive(Debug)]
struct ConnectionEntry {
    peer: String,
    conn: quinn::Connection,
    remote: SocketAddr,
    path_changes: u64,
    reported_lost: u64,
    reported_sent: u64,
    reported_congestion: u64,
    last_status: Option<ConnectionStatus>,
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
}

/// [`EventCounts`] as they are counted.
#[derive(Debug, Default)]
struct Events(Mutex<EventCounts>);

impl Events {
    fn count(&self, which: impl FnOnce(&mut EventCounts) -> &mut u64) {
        *which(&mut self.0.lock().expect("events")) += 1;
    }
}

/// The live registry of one edge or gateway.
#[derive(Debug)]
pub struct Telemetry {
    role: Role,
    events: Events,
    sessions: Mutex<HashMap<SessionId, SessionEntry>>,
    connections: Mutex<HashMap<usize, ConnectionEntry>>,
    budget: OnceLock<MemoryBudget>,
    handshake_log: Mutex<HandshakeLog>,
    ended: Mutex<VecDeque<EndedSession>>,
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

/// Failed handshakes not yet logged: a flood of them writes one line per interval.
#[derive(Debug, Default)]
struct HandshakeLog {
    last_line: Option<Instant>,
    unlogged: BTreeMap<&'static str, u64>,
}

impl HandshakeLog {
    /// Writes the counts not yet logged as one line, if any.
    fn flush(&mut self, now: Instant) {
        if self.unlogged.is_empty() {
            return;
        }
        let counts: Vec<String> = self
            .unlogged
            .iter()
            .map(|(reason, n)| format!("{reason}={n}"))
            .collect();
        let total: u64 = self.unlogged.values().sum();
        tracing::warn!(
            failures = total,
            by_reason = %counts.join(" "),
            "{total} more failed handshakes since the last line"
        );
        self.unlogged.clear();
        self.last_line = Some(now);
    }
}

impl Telemetry {
    /// An empty registry for `role`.
    pub fn new(role: Role) -> Arc<Telemetry> {
        Arc::new(Telemetry {
            role,
            sessions: Mutex::default(),
            connections: Mutex::default(),
            budget: OnceLock::new(),
            handshake_log: Mutex::default(),
            ended: Mutex::default(),
            events: Events::default(),
        })
    }

    /// The events this hop counted since it started.
    pub fn events(&self) -> EventCounts {
        *self.events.0.lock().expect("events")
    }

    /// Bytes buffered now under the process-wide bound, once one is watched.
    pub fn buffered_bytes(&self) -> Option<usize> {
        self.budget.get().map(MemoryBudget::used)
    }

    /// Reports `budget`'s use and bound as `rtmpq_buffered_bytes` and
    /// `rtmpq_buffered_bytes_limit` on every tick.
    pub fn watch_budget(&self, budget: MemoryBudget) {
        let _ = self.budget.set(budget);
    }

    /// Registers a live session, starting now: its tracker, and the messages waiting for its
    /// RTMP writer (for its queue age).
    pub fn session_started(
        &self,
        id: SessionId,
        peer: String,
        tracker: Arc<Mutex<SessionTracker>>,
        waiting: Arc<WaitTimes>,
    ) {
        self.sessions.lock().expect("lock").insert(
            id,
            SessionEntry {
                id,
                peer,
                started: Instant::now(),
                tracker,
                waiting,
                samples: VecDeque::new(),
                reported: Reported::default(),
                last_status: None,
                last_video_frames: 0,
            },
        );
        gauge!("rtmpq_sessions_open", "role" => self.role.as_str()).increment(1.0);
    }

    /// Removes a session, pushing its final counts, counts why it ended, and keeps it among
    /// the last [`ENDED_KEPT`] ended sessions.
    pub fn session_ended(&self, id: SessionId, code: CloseCode, reason: &str) {
        let entry = self.sessions.lock().expect("lock").remove(&id);
        if let Some(mut entry) = entry {
            self.report_session(&mut entry, Instant::now());
            gauge!("rtmpq_sessions_open", "role" => self.role.as_str()).decrement(1.0);
            if let Some(session) = entry.last_status {
                let mut ended = self.ended.lock().expect("lock");
                if ended.len() == ENDED_KEPT {
                    ended.pop_front();
                }
                ended.push_back(EndedSession {
                    session,
                    code: code.as_str().to_owned(),
                    reason: reason.to_owned(),
                });
            }
        }
        self.count_end(code);
    }

    /// The last [`ENDED_KEPT`] sessions that ended, oldest first, with why.
    pub fn ended_sessions(&self) -> Vec<EndedSession> {
        self.ended.lock().expect("lock").iter().cloned().collect()
    }

    /// Counts a session refused before it started (a full edge) by `code`.
    pub fn session_refused(&self, code: CloseCode) {
        self.events.count(|e| &mut e.sessions_refused);
        self.count_end(code);
    }

    fn count_end(&self, code: CloseCode) {
        counter!("rtmpq_sessions_ended_total", "role" => self.role.as_str(), "reason" => code.as_str())
            .increment(1);
    }

    /// Registers a QUIC connection with `peer` (an edge id, or the gateway's address).
    pub fn connection_opened(&self, conn: &quinn::Connection, peer: String) {
        // Rare events start at zero so dashboards and alerts see the series.
        counter!("rtmpq_quic_path_changes_total", "role" => self.role.as_str(), "peer" => peer.clone())
            .increment(0);
        if self.role == Role::Edge {
            counter!("rtmpq_quic_reconnects_total", "role" => self.role.as_str()).increment(0);
        }
        self.connections.lock().expect("lock").insert(
            conn.stable_id(),
            ConnectionEntry {
                peer,
                remote: conn.remote_address(),
                conn: conn.clone(),
                path_changes: 0,
                reported_lost: 0,
                reported_sent: 0,
                reported_congestion: 0,
                last_status: None,
            },
        );
        gauge!("rtmpq_connections_open", "role" => self.role.as_str()).increment(1.0);
    }

    /// Removes a QUIC connection.
    pub fn connection_closed(&self, conn: &quinn::Connection) {
        let entry = self
            .connections
            .lock()
            .expect("lock")
            .remove(&conn.stable_id());
        if let Some(mut entry) = entry {
            self.report_connection(&mut entry);
            gauge!("rtmpq_connections_open", "role" => self.role.as_str()).decrement(1.0);
        }
    }

    /// Counts a failed handshake by reason without logging it (for callers whose own log
    /// lines are already paced, like the edge's reconnect backoff).
    pub fn count_handshake_failure(&self, reason: &'static str) {
        counter!("rtmpq_handshake_failures_total", "role" => self.role.as_str(), "reason" => reason)
            .increment(1);
    }

    /// Counts a failed QUIC or tunnel handshake by reason, and logs it: the first failure
    /// after a quiet [`HANDSHAKE_LOG_INTERVAL`] at once with its detail, later ones as counts
    /// per reason in one line per interval, so a flood of forged handshakes cannot flood the
    /// log.
    pub fn handshake_failed(&self, reason: &'static str, detail: &dyn std::fmt::Display) {
        self.count_handshake_failure(reason);
        let now = Instant::now();
        let mut log = self.handshake_log.lock().expect("lock");
        let quiet = log
            .last_line
            .is_none_or(|t| now.duration_since(t) >= HANDSHAKE_LOG_INTERVAL);
        if quiet && log.unlogged.is_empty() {
            tracing::warn!(reason, detail = %detail, "handshake failed");
            log.last_line = Some(now);
        } else {
            *log.unlogged.entry(reason).or_default() += 1;
            if quiet {
                log.flush(now);
            }
        }
    }

    /// Counts a live session set up again after what carried it was lost: a new origin
    /// connection (gateway), a new tunnel session on a gateway (edge).
    pub fn session_set_up_again(&self) {
        self.events.count(|e| &mut e.sessions_set_up_again);
        counter!("rtmpq_sessions_set_up_again_total", "role" => self.role.as_str()).increment(1);
    }

    /// Counts a session resumed on a new tunnel stream.
    pub fn session_resumed(&self) {
        self.events.count(|e| &mut e.sessions_resumed);
        counter!("rtmpq_sessions_resumed_total", "role" => self.role.as_str()).increment(1);
    }

    /// Counts a gateway connection that sent HELLO in 0-RTT data: `accepted` by the gateway,
    /// or refused (a gateway process without this edge's ticket).
    pub fn zero_rtt(&self, accepted: bool) {
        let outcome = if accepted {
            self.events.count(|e| &mut e.zero_rtt_accepted);
            "accepted"
        } else {
            self.events.count(|e| &mut e.zero_rtt_refused);
            "refused"
        };
        counter!("rtmpq_zero_rtt_total", "role" => self.role.as_str(), "outcome" => outcome)
            .increment(1);
    }

    /// Counts a standby gateway connection made ready.
    pub fn standby_ready(&self) {
        self.events.count(|e| &mut e.standby_ready);
    }

    /// Counts the standby connection taking over from the one in use.
    pub fn standby_took_over(&self) {
        self.events.count(|e| &mut e.standby_takeovers);
        counter!("rtmpq_standby_takeovers_total", "role" => self.role.as_str()).increment(1);
    }

    /// Counts an edge refused what it asked for: `action` `connect` (its identity is not
    /// listed or its token is wrong), `publish` or `play` (its rights do not cover the
    /// stream); `edge` is the `[[edge]]` name, or `unlisted`.
    pub fn unauthorized(&self, edge: &str, action: &'static str) {
        counter!(
            "rtmpq_unauthorized_total",
            "role" => self.role.as_str(),
            "edge" => edge.to_owned(),
            "action" => action
        )
        .increment(1);
    }

    /// Sets when the certificate `name` (`gateway`, `ca`) expires, in seconds since the Unix
    /// epoch (`rtmpq_certificate_expiry_timestamp_seconds`; alert on it minus `time()`).
    pub fn certificate_expiry(&self, name: &'static str, unix_seconds: i64) {
        gauge!(
            "rtmpq_certificate_expiry_timestamp_seconds",
            "role" => self.role.as_str(),
            "certificate" => name
        )
        .set(unix_seconds as f64);
    }

    /// Counts a QUIC Retry sent: a handshake asked to prove its source address first.
    pub fn quic_retry(&self) {
        counter!("rtmpq_quic_retries_total", "role" => self.role.as_str()).increment(1);
    }

    /// Counts a gateway left for another because it stopped acknowledging.
    pub fn failed_over(&self) {
        self.events.count(|e| &mut e.failovers);
        counter!("rtmpq_gateway_failovers_total", "role" => self.role.as_str()).increment(1);
    }

    /// Counts a reconnect to the gateway.
    pub fn reconnected(&self) {
        self.events.count(|e| &mut e.reconnects);
        counter!("rtmpq_quic_reconnects_total", "role" => self.role.as_str()).increment(1);
    }

    /// The live sessions as of the last tick.
    pub fn sessions(&self) -> Vec<SessionStatus> {
        let sessions = self.sessions.lock().expect("lock");
        sessions
            .values()
            .filter_map(|s| s.last_status.clone())
            .collect()
    }

    /// Whether a live session other than `id` publishes `app`/`stream` now (a pusher that
    /// came back by itself while its old session was held).
    pub fn publishing_elsewhere(&self, id: SessionId, app: &str, stream: &str) -> bool {
        let sessions = self.sessions.lock().expect("lock");
        sessions.values().any(|s| {
            let t = s.tracker.lock().expect("tracker");
            s.id != id
                && t.direction == Some(rtmpq_proto::session::Direction::Publish)
                && t.app.as_deref() == Some(app)
                && t.stream.as_deref() == Some(stream)
        })
    }

    /// The live connections as of the last tick.
    pub fn connections(&self) -> Vec<ConnectionStatus> {
        let connections = self.connections.lock().expect("lock");
        connections
            .values()
            .filter_map(|c| c.last_status.clone())
            .collect()
    }

    /// Refreshes every figure; call once per [`TICK`].
    pub fn tick(&self) {
        let now = Instant::now();
        for entry in self.sessions.lock().expect("lock").values_mut() {
            self.report_session(entry, now);
        }
        for entry in self.connections.lock().expect("lock").values_mut() {
            self.report_connection(entry);
        }
        if let Some(budget) = self.budget.get() {
            let role = self.role.as_str();
            gauge!("rtmpq_buffered_bytes", "role" => role).set(budget.used() as f64);
            gauge!("rtmpq_buffered_bytes_limit", "role" => role).set(budget.limit() as f64);
        }
        let mut log = self.handshake_log.lock().expect("lock");
        if log
            .last_line
            .is_none_or(|t| now.duration_since(t) >= HANDSHAKE_LOG_INTERVAL)
        {
            log.flush(now);
        }
    }

    fn report_session(&self, entry: &mut SessionEntry, now: Instant) {
        let t = entry.tracker.lock().expect("tracker").clone();
        let media = *t.media_flow();
        entry.samples.push_back((now, media.media_bytes));
        while entry
            .samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > BITRATE_WINDOW)
        {
            entry.samples.pop_front();
        }
        let (oldest_at, oldest_bytes) = *entry.samples.front().expect("just pushed");
        let window = now.duration_since(oldest_at).as_secs_f64();
        let bitrate = if window > 0.0 {
            (media.media_bytes - oldest_bytes) as f64 * 8.0 / window
        } else {
            0.0
        };
        let status = SessionStatus {
            id: entry.id.to_string(),
            peer: entry.peer.clone(),
            app: t.app.clone().unwrap_or_default(),
            stream: t.stream.clone().unwrap_or_default(),
            direction: t.direction.map_or("", |d| d.as_str()).to_owned(),
            duration_seconds: now.duration_since(entry.started).as_secs_f64(),
            first_media_after_seconds: t
                .first_media
                .map(|at| at.saturating_duration_since(entry.started).as_secs_f64()),
            to_origin_bytes: t.to_origin.bytes,
            to_client_bytes: t.to_client.bytes,
            to_origin_messages: t.to_origin.messages,
            to_client_messages: t.to_client.messages,
            video_frames: media.video_frames,
            keyframes: media.keyframes,
            bitrate_bps: bitrate,
            fps: media.video_frames.saturating_sub(entry.last_video_frames) as f64,
            keyframe_interval_seconds: media.keyframe_interval_ms.map(|ms| f64::from(ms) / 1000.0),
            queue_age_seconds: [t.queue.oldest, entry.waiting.oldest()]
                .into_iter()
                .flatten()
                .map(|at| now.saturating_duration_since(at))
                .max()
                .unwrap_or_default()
                .as_secs_f64(),
            latency_budget_seconds: t.queue.budget.map(|b| b.as_secs_f64()),
            queue_media_bytes: t.queue.media_bytes,
            dropped_stale: t.queue.stale.into(),
            dropped_overflow: t.queue.overflow.into(),
            path_bitrate_bps: t.queue.path_rate_bps,
            dropped_late: t.arrived_late.into(),
            dropped_reset: t.reset_in_quic.into(),
            gateway: t.gateway.clone().unwrap_or_default(),
            set_up_again: t.recoveries.set_up_again,
            resumed: t.recoveries.resumed,
            last_loss: t.recoveries.last_loss.clone().unwrap_or_default(),
        };
        entry.last_video_frames = media.video_frames;
        let labels = [
            ("role", self.role.as_str().to_owned()),
            ("app", label_value(&status.app)),
            ("stream", label_value(&status.stream)),
            ("direction", status.direction.clone()),
        ];
        let with_flow = |flow: &'static str| {
            let mut l = labels.to_vec();
            l.push(("flow", flow.to_owned()));
            l
        };
        let r = &mut entry.reported;
        let delta = |now: u64, before: &mut u64| {
            let d = now.saturating_sub(*before);
            *before = now;
            d
        };
        counter!(
            "rtmpq_session_payload_bytes_total",
            &with_flow(Flow::ToOrigin.as_str())
        )
        .increment(delta(status.to_origin_bytes, &mut r.to_origin_bytes));
        counter!(
            "rtmpq_session_payload_bytes_total",
            &with_flow(Flow::ToClient.as_str())
        )
        .increment(delta(status.to_client_bytes, &mut r.to_client_bytes));
        counter!(
            "rtmpq_session_messages_total",
            &with_flow(Flow::ToOrigin.as_str())
        )
        .increment(delta(status.to_origin_messages, &mut r.to_origin_messages));
        counter!(
            "rtmpq_session_messages_total",
            &with_flow(Flow::ToClient.as_str())
        )
        .increment(delta(status.to_client_messages, &mut r.to_client_messages));
        counter!("rtmpq_session_video_frames_total", &labels)
            .increment(delta(status.video_frames, &mut r.video_frames));
        counter!("rtmpq_session_keyframes_total", &labels)
            .increment(delta(status.keyframes, &mut r.keyframes));
        gauge!("rtmpq_session_bitrate_bits_per_second", &labels).set(status.bitrate_bps);
        gauge!("rtmpq_session_keyframe_interval_seconds", &labels)
            .set(status.keyframe_interval_seconds.unwrap_or(0.0));
        gauge!("rtmpq_session_queue_age_seconds", &labels).set(status.queue_age_seconds);
        for (reason, now_dropped, before) in [
            ("stale", t.queue.stale, &mut r.stale),
            ("overflow", t.queue.overflow, &mut r.overflow),
            ("late", t.arrived_late, &mut r.late),
            ("reset", t.reset_in_quic, &mut r.reset),
        ] {
            let with_reason = |kind: Option<&'static str>| {
                let mut l = labels.to_vec();
                l.push(("reason", reason.to_owned()));
                if let Some(kind) = kind {
                    l.push(("kind", kind.to_owned()));
                }
                l
            };
            counter!(
                "rtmpq_session_dropped_frames_total",
                &with_reason(Some("video"))
            )
            .increment(now_dropped.video_frames.saturating_sub(before.video_frames));
            counter!(
                "rtmpq_session_dropped_frames_total",
                &with_reason(Some("audio"))
            )
            .increment(now_dropped.audio_frames.saturating_sub(before.audio_frames));
            counter!("rtmpq_session_dropped_gops_total", &with_reason(None))
                .increment(now_dropped.gops.saturating_sub(before.gops));
            counter!("rtmpq_session_dropped_bytes_total", &with_reason(None))
                .increment(now_dropped.bytes.saturating_sub(before.bytes));
            *before = now_dropped;
        }
        gauge!("rtmpq_session_queue_media_bytes", &labels).set(status.queue_media_bytes as f64);
        gauge!("rtmpq_session_path_bitrate_bits_per_second", &labels)
            .set(status.path_bitrate_bps as f64);
        if let Some(budget) = status.latency_budget_seconds {
            gauge!("rtmpq_session_latency_budget_seconds", &labels).set(budget);
        }
        gauge!("rtmpq_session_duration_seconds", &labels).set(status.duration_seconds);
        entry.last_status = Some(status);
    }

    fn report_connection(&self, entry: &mut ConnectionEntry) {
        let stats = entry.conn.stats();
        let remote = entry.conn.remote_address();
        if remote != entry.remote {
            entry.remote = remote;
            entry.path_changes += 1;
            counter!("rtmpq_quic_path_changes_total", "role" => self.role.as_str(), "peer" => entry.peer.clone())
                .increment(1);
        }
        let path = stats.path;
        let sent = path.sent_packets - entry.reported_sent;
        let lost = path.lost_packets - entry.reported_lost;
        let labels = [
            ("role", self.role.as_str().to_owned()),
            ("peer", entry.peer.clone()),
        ];
        counter!("rtmpq_quic_sent_packets_total", &labels).increment(sent);
        counter!("rtmpq_quic_lost_packets_total", &labels).increment(lost);
        counter!("rtmpq_quic_congestion_events_total", &labels)
            .increment(path.congestion_events - entry.reported_congestion);
        gauge!("rtmpq_quic_rtt_seconds", &labels).set(path.rtt.as_secs_f64());
        gauge!("rtmpq_quic_min_rtt_seconds", &labels).set(path.min_rtt.as_secs_f64());
        gauge!("rtmpq_quic_congestion_window_bytes", &labels).set(path.cwnd as f64);
        let path_bitrate = entry
            .conn
            .congestion_state()
            .metrics()
            .pacing_rate
            .unwrap_or(0);
        gauge!("rtmpq_quic_path_bitrate_bits_per_second", &labels).set(path_bitrate as f64);
        entry.reported_sent = path.sent_packets;
        entry.reported_lost = path.lost_packets;
        entry.reported_congestion = path.congestion_events;
        entry.last_status = Some(ConnectionStatus {
            peer: entry.peer.clone(),
            remote: remote.to_string(),
            rtt_seconds: path.rtt.as_secs_f64(),
            min_rtt_seconds: path.min_rtt.as_secs_f64(),
            congestion_window_bytes: path.cwnd,
            sent_packets: path.sent_packets,
            lost_packets: path.lost_packets,
            loss_percent: if sent > 0 {
                lost as f64 * 100.0 / sent as f64
            } else {
                0.0
            },
            congestion_events: path.congestion_events,
            path_changes: entry.path_changes,
            path_bitrate_bps: path_bitrate,
        });
    }

    /// Starts refreshing the figures every [`TICK`], whether or not anything serves them,
    /// and serves them on `metrics` if given ([`serve`]), until `stop`.
    pub fn start(self: &Arc<Self>, metrics: Option<TcpListener>, stop: CancellationToken) {
        tokio::spawn(self.clone().run_ticks(stop.clone()));
        if let Some(listener) = metrics {
            tokio::spawn(evict_idle_series(stop.clone()));
            tokio::spawn(serve(self.clone(), listener, stop));
        }
    }

    /// Refreshes figures every [`TICK`] until `shutdown`.
    pub async fn run_ticks(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => self.tick(),
            }
        }
    }
}

/// The recorder drops series idle for [`SERIES_IDLE`] only when it renders; render once per
/// period (off the runtime) so ended sessions' series go even when nothing scrapes.
async fn evict_idle_series(stop: CancellationToken) {
    let mut ticker = tokio::time::interval(SERIES_IDLE);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let _ = tokio::task::spawn_blocking(|| drop(prometheus().render())).await;
    }
}

/// Redraws one line on the terminal each second: per session bitrate, fps, queue age, and the
/// connection's RTT and loss.
pub async fn status_line(telemetry: Arc<Telemetry>, stop: CancellationToken) {
    use std::io::Write;
    let mut ticker = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let line = telemetry.status_summary();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
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
            None => "gateway not connected".to_owned(),
        };
        let sessions: Vec<String> = self
            .sessions()
            .iter()
            .map(|s| {
                let dropped = s.dropped_stale.video_frames + s.dropped_overflow.video_frames;
                let dropped_audio = s.dropped_stale.audio_frames + s.dropped_overflow.audio_frames;
                format!(
                    "{}/{} {} {:.2} Mbit/s {:.0} fps queue {:.0} ms dropped {} video {} audio",
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

/// Longest label value a client's name becomes (the rest is cut): one series costs about its
/// labels' length, and a peer chooses stream names.
pub const MAX_LABEL_LEN: usize = 64;

/// `name` as a metric label value: at most [`MAX_LABEL_LEN`] bytes.
fn label_value(name: &str) -> String {
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
        "rtmpq_quic_path_changes_total",
        "Changes of the peer's address (migrations)"
    );
}

/// Serves `GET /metrics` (Prometheus text), `GET /api/v1/sessions`,
/// `GET /api/v1/sessions/ended` and `GET /api/v1/connections` (JSON) on `listener` until
/// `shutdown`. The figures are refreshed by [`Telemetry::run_ticks`], which the hop runs
/// whether or not anything is served.
pub async fn serve(telemetry: Arc<Telemetry>, listener: TcpListener, shutdown: CancellationToken) {
    use axum::routing::get;
    let handle = prometheus();
    let role = telemetry.role.as_str();
    gauge!("rtmpq_sessions_open", "role" => role).increment(0.0);
    gauge!("rtmpq_connections_open", "role" => role).increment(0.0);
    let sessions = telemetry.clone();
    let ended = telemetry.clone();
    let connections = telemetry.clone();
    let events = telemetry.clone();
    let app = axum::Router::new()
        // Rendering walks every series: off the runtime's worker threads.
        .route(
            "/metrics",
            get(move || async move {
                tokio::task::spawn_blocking(move || handle.render())
                    .await
                    .unwrap_or_default()
            }),
        )
        .route(
            "/api/v1/sessions",
            get(move || async move { axum::Json(sessions.sessions()) }),
        )
        .route(
            "/api/v1/sessions/ended",
            get(move || async move { axum::Json(ended.ended_sessions()) }),
        )
        .route(
            "/api/v1/connections",
            get(move || async move { axum::Json(connections.connections()) }),
        )
        .route(
            "/api/v1/events",
            get(move || async move { axum::Json(events.events()) }),
        );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::warn!(reason = %e, "metrics server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtmpq_proto::session::Direction;

    fn tracker(app: &str, stream: &str, direction: Direction) -> Arc<Mutex<SessionTracker>> {
        let mut t = SessionTracker::default();
        t.app = Some(app.into());
        t.stream = Some(stream.into());
        t.direction = Some(direction);
        Arc::new(Mutex::new(t))
    }

    #[test]
    fn a_new_publish_of_the_same_stream_is_seen_by_a_held_session() {
        let telemetry = Telemetry::new(Role::Edge);
        let held = SessionId(1);
        telemetry.session_started(
            held,
            "a".into(),
            tracker("live", "cam", Direction::Publish),
            Arc::default(),
        );
        assert!(
            !telemetry.publishing_elsewhere(held, "live", "cam"),
            "only itself"
        );
        telemetry.session_started(
            SessionId(2),
            "b".into(),
            tracker("live", "cam", Direction::Play),
            Arc::default(),
        );
        telemetry.session_started(
            SessionId(3),
            "c".into(),
            tracker("live", "other", Direction::Publish),
            Arc::default(),
        );
        assert!(
            !telemetry.publishing_elsewhere(held, "live", "cam"),
            "a player, another stream"
        );
        telemetry.session_started(
            SessionId(4),
            "d".into(),
            tracker("live", "cam", Direction::Publish),
            Arc::default(),
        );
        assert!(
            telemetry.publishing_elsewhere(held, "live", "cam"),
            "the pusher came back"
        );
    }
}
