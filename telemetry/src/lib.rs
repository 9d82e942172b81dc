//! rtmpq-telemetry: what edge and gateway report about themselves. [`Telemetry`] reads the
//! reports the hop's live sessions publish (its [`SessionRegistry`]) and its QUIC connections'
//! stats once a second, and turns them into Prometheus metrics (through the `metrics` facade)
//! and into the JSON status API, served together by [`serve`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use rtmpq_hop::registry::SessionRegistry;
use rtmpq_hop::rtmp::WaitTimes;
use rtmpq_hop::session::Recovered;
use rtmpq_proto::buffer_bound::BufferBound;
use rtmpq_proto::media_queue::Dropped;
use rtmpq_proto::session::SessionReport;
use rtmpq_proto::wire::{CloseCode, SessionId};
use tokio::sync::watch;

mod http;
mod prometheus;
mod report;
mod status;
mod status_line;

pub use http::serve;
use prometheus::evict_idle_series;
pub use prometheus::{prometheus, MAX_LABEL_LEN};
pub use status::{
    ConnectionStatus, DroppedStatus, EndedSession, EventCounts, SessionStatus, ENDED_KEPT,
};
pub use status_line::status_line;
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

/// What telemetry keeps of a live session between ticks (the session itself is in the hop's
/// [`SessionRegistry`]).
#[derive(Debug, Default)]
struct SessionEntry {
    /// (when, media bytes) samples for the bitrate window.
    samples: VecDeque<(Instant, u64)>,
    reported: Reported,
    last_status: Option<SessionStatus>,
    last_video_frames: u64,
}

/// Counter values already pushed to the metrics recorder.
#[derive(Debug, Default, Clone)]
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
    /// The carrier and congestion controller last reported.
    carrier: Option<(String, String)>,
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
    /// The hop's live sessions and their reports.
    live: Arc<SessionRegistry>,
    /// What was reported of each, for metric deltas and the status API.
    sessions: Mutex<HashMap<SessionId, SessionEntry>>,
    connections: Mutex<HashMap<usize, ConnectionEntry>>,
    buffer: OnceLock<BufferBound>,
    handshake_log: Mutex<HandshakeLog>,
    ended: Mutex<VecDeque<EndedSession>>,
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
    /// Telemetry for `role`, reporting the sessions in `live`.
    pub fn new(role: Role, live: Arc<SessionRegistry>) -> Arc<Telemetry> {
        Arc::new(Telemetry {
            role,
            live,
            sessions: Mutex::default(),
            connections: Mutex::default(),
            buffer: OnceLock::new(),
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
        self.buffer.get().map(BufferBound::used)
    }

    /// Reports `buffer`'s use and bound as `rtmpq_buffered_bytes` and
    /// `rtmpq_buffered_bytes_limit` on every tick.
    pub fn watch_buffer(&self, buffer: BufferBound) {
        let _ = self.buffer.set(buffer);
    }

    /// The live sessions this reports.
    pub fn live(&self) -> &Arc<SessionRegistry> {
        &self.live
    }

    /// Registers a live session, starting now, with the messages waiting for its RTMP writer
    /// (for its queue age); it publishes its reports on what is returned.
    pub fn session_started(
        &self,
        id: SessionId,
        peer: String,
        waiting: Arc<WaitTimes>,
    ) -> watch::Sender<SessionReport> {
        gauge!("rtmpq_sessions_open", "role" => self.role.as_str()).increment(1.0);
        self.live.register(id, peer, waiting)
    }

    /// Removes a session, pushing its final counts from its last report, counts why it
    /// ended, and keeps it among the last [`ENDED_KEPT`] ended sessions.
    pub fn session_ended(&self, id: SessionId, code: CloseCode, reason: &str) {
        // The same order as a tick (metrics, then the registry): a tick never sees a session
        // between its two removals and counts it again from zero.
        let mut sessions = self.sessions.lock().expect("lock");
        let entry = sessions.remove(&id);
        if let Some(live) = self.live.remove(id) {
            let mut entry = entry.unwrap_or_default();
            self.report_session(id, &live, &mut entry, Instant::now());
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

    /// Counts a live session recovered after what carried it was lost: resumed on a new
    /// tunnel stream, or set up again on a new origin connection (gateway) or a new tunnel
    /// session on a gateway (edge).
    pub fn session_recovered(&self, how: Recovered) {
        let role = self.role.as_str();
        match how {
            Recovered::Resumed => {
                self.events.count(|e| &mut e.sessions_resumed);
                counter!("rtmpq_sessions_resumed_total", "role" => role).increment(1);
            }
            Recovered::SetUpAgain => {
                self.events.count(|e| &mut e.sessions_set_up_again);
                counter!("rtmpq_sessions_set_up_again_total", "role" => role).increment(1);
            }
        }
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

    /// Counts a session that took the TCP carrier instead of QUIC, and why (`quic_unanswered`,
    /// `udp_died`).
    pub fn tcp_fallback(&self, reason: &'static str) {
        self.events.count(|e| &mut e.tcp_fallbacks);
        counter!("rtmpq_tcp_fallbacks_total", "role" => self.role.as_str(), "reason" => reason)
            .increment(1);
    }

    /// Counts a live session moved from the TCP carrier back to QUIC, and why
    /// (`udp_returned`).
    pub fn quic_return(&self, reason: &'static str) {
        self.events.count(|e| &mut e.quic_returns);
        counter!("rtmpq_quic_returns_total", "role" => self.role.as_str(), "reason" => reason)
            .increment(1);
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
        let mut sessions = self.sessions.lock().expect("lock");
        let live = self.live.live();
        sessions.retain(|id, _| live.iter().any(|(l, _)| l == id));
        for (id, session) in &live {
            self.report_session(*id, session, sessions.entry(*id).or_default(), now);
        }
        drop(sessions);
        for entry in self.connections.lock().expect("lock").values_mut() {
            self.report_connection(entry);
        }
        if let Some(buffer) = self.buffer.get() {
            let role = self.role.as_str();
            gauge!("rtmpq_buffered_bytes", "role" => role).set(buffer.used() as f64);
            gauge!("rtmpq_buffered_bytes_limit", "role" => role).set(buffer.limit() as f64);
        }
        let mut log = self.handshake_log.lock().expect("lock");
        if log
            .last_line
            .is_none_or(|t| now.duration_since(t) >= HANDSHAKE_LOG_INTERVAL)
        {
            log.flush(now);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rtmpq_proto::session::{Direction, SessionReport};

    #[test]
    fn the_status_api_shows_what_sessions_last_reported_and_their_end() {
        let telemetry = Telemetry::new(Role::Edge, Arc::default());
        let id = SessionId(1);
        let reports = telemetry.session_started(id, "client".into(), Arc::default());
        telemetry.tick();
        assert_eq!(telemetry.sessions()[0].app, "", "nothing reported yet");
        reports.send_replace(SessionReport {
            app: Some("live".into()),
            stream: Some("cam".into()),
            direction: Some(Direction::Publish),
            ..SessionReport::default()
        });
        telemetry.tick();
        let live = telemetry.sessions();
        assert_eq!(
            (live[0].app.as_str(), live[0].peer.as_str()),
            ("live", "client")
        );
        telemetry.session_ended(id, CloseCode::Normal, "client closed");
        assert!(telemetry.sessions().is_empty());
        assert!(telemetry.live().live().is_empty(), "gone from the registry");
        let ended = telemetry.ended_sessions();
        assert_eq!(
            (ended[0].session.stream.as_str(), ended[0].code.as_str()),
            ("cam", "normal")
        );
    }

    #[test]
    fn the_status_line_says_which_carrier_and_controller_each_session_runs_on() {
        let telemetry = Telemetry::new(Role::Edge, Arc::default());
        let reports = telemetry.session_started(SessionId(1), "client".into(), Arc::default());
        reports.send_replace(SessionReport {
            app: Some("live".into()),
            stream: Some("cam".into()),
            direction: Some(Direction::Publish),
            carrier: Some("tcp"),
            congestion: Some("cubic"),
            ..SessionReport::default()
        });
        telemetry.tick();
        let line = telemetry.status_summary();
        assert!(line.contains("live/cam publish over tcp (cubic)"), "{line}");
        assert!(
            line.starts_with("[QUIC not connected, sessions on the TCP carrier]"),
            "{line}"
        );
        assert_eq!(telemetry.sessions()[0].congestion, "cubic");
    }
}
