//! Each tick's figures: a live session's and a QUIC connection's status, built from what the
//! hop tracks and pushed to the metrics recorder.

use std::time::Instant;

use metrics::{counter, gauge};
use rtmpq_hop::registry::LiveSession;
use rtmpq_proto::session::{Flow, SessionReport};
use rtmpq_proto::wire::SessionId;

use crate::prometheus::label_value;
use crate::{
    ConnectionEntry, ConnectionStatus, Reported, SessionEntry, SessionStatus, Telemetry,
    BITRATE_WINDOW,
};

impl Telemetry {
    pub(crate) fn report_session(
        &self,
        id: SessionId,
        live: &LiveSession,
        entry: &mut SessionEntry,
        now: Instant,
    ) {
        let t = live.report.borrow().clone();
        let status = session_status(id, live, entry, &t, now);
        entry.last_video_frames = status.video_frames;
        self.push_session_metrics(&status, &t, &mut entry.reported);
        entry.last_status = Some(status);
    }

    /// Adds what a session's counters gained since the last tick to its series and sets its
    /// gauges.
    fn push_session_metrics(&self, status: &SessionStatus, t: &SessionReport, r: &mut Reported) {
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
        // 1 on the carrier and controller the session runs on now, 0 on the one it left.
        let on = (status.carrier.clone(), status.congestion.clone());
        let carrier = |(carrier, congestion): &(String, String)| {
            let mut l = labels.to_vec();
            l.push(("carrier", carrier.clone()));
            l.push(("congestion", congestion.clone()));
            l
        };
        if let Some(left) = r.carrier.take().filter(|before| *before != on) {
            gauge!("rtmpq_session_carrier", &carrier(&left)).set(0.0);
        }
        if !on.0.is_empty() {
            gauge!("rtmpq_session_carrier", &carrier(&on)).set(1.0);
            r.carrier = Some(on);
        }
    }

    pub(crate) fn report_connection(&self, entry: &mut ConnectionEntry) {
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
}

/// A live session's status now, from its report `t`: the media bitrate over the last
/// [`BITRATE_WINDOW`] (samples kept in `entry`), fps since the last tick.
fn session_status(
    id: SessionId,
    live: &LiveSession,
    entry: &mut SessionEntry,
    t: &SessionReport,
    now: Instant,
) -> SessionStatus {
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
    SessionStatus {
        id: id.to_string(),
        peer: live.peer.clone(),
        app: t.app.clone().unwrap_or_default(),
        stream: t.stream.clone().unwrap_or_default(),
        direction: t.direction.map_or("", |d| d.as_str()).to_owned(),
        duration_seconds: now.duration_since(live.started).as_secs_f64(),
        first_media_after_seconds: t
            .first_media
            .map(|at| at.saturating_duration_since(live.started).as_secs_f64()),
        to_origin_bytes: t.to_origin.bytes,
        to_client_bytes: t.to_client.bytes,
        to_origin_messages: t.to_origin.messages,
        to_client_messages: t.to_client.messages,
        video_frames: media.video_frames,
        keyframes: media.keyframes,
        bitrate_bps: bitrate,
        fps: media.video_frames.saturating_sub(entry.last_video_frames) as f64,
        keyframe_interval_seconds: media.keyframe_interval_ms.map(|ms| f64::from(ms) / 1000.0),
        queue_age_seconds: [t.queue.oldest, live.waiting.oldest()]
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
        carrier: t.carrier.unwrap_or_default().to_owned(),
        congestion: t.congestion.unwrap_or_default().to_owned(),
        set_up_again: t.recoveries.set_up_again,
        resumed: t.recoveries.resumed,
        last_loss: t.recoveries.last_loss.clone().unwrap_or_default(),
    }
}
