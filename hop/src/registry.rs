//! The live sessions of one hop, each with the report it last published: who publishes what
//! (a held session gives way to a new publish of its stream) and what the status API and
//! metrics read. A session owns its tracker; the registry only ever sees its reports.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtmpq_proto::session::{Direction, SessionReport, SessionTracker};
use rtmpq_proto::wire::SessionId;
use tokio::sync::watch;

use crate::rtmp::WaitTimes;

/// How often a running session publishes its report.
pub const REPORT_EVERY: Duration = Duration::from_millis(100);

/// One live session as the registry knows it.
#[derive(Debug, Clone)]
pub struct LiveSession {
    /// Its client (edge) or edge (gateway), for the status API.
    pub peer: String,
    /// When it started.
    pub started: Instant,
    /// Its latest report.
    pub report: watch::Receiver<SessionReport>,
    /// The messages waiting for its RTMP writer (for its queue age).
    pub waiting: Arc<WaitTimes>,
}

/// The live sessions of one hop.
#[derive(Debug, Default)]
pub struct SessionRegistry {
    sessions: Mutex<HashMap<SessionId, LiveSession>>,
}

impl SessionRegistry {
    /// Registers session `id`, started now; it publishes its reports on what is returned.
    pub fn register(
        &self,
        id: SessionId,
        peer: String,
        waiting: Arc<WaitTimes>,
    ) -> watch::Sender<SessionReport> {
        let (reports, report) = watch::channel(SessionReport::default());
        let live = LiveSession {
            peer,
            started: Instant::now(),
            report,
            waiting,
        };
        self.sessions.lock().expect("sessions").insert(id, live);
        reports
    }

    /// Removes session `id`: what it was, with its last report.
    pub fn remove(&self, id: SessionId) -> Option<LiveSession> {
        self.sessions.lock().expect("sessions").remove(&id)
    }

    /// Every live session now.
    pub fn live(&self) -> Vec<(SessionId, LiveSession)> {
        let sessions = self.sessions.lock().expect("sessions");
        sessions.iter().map(|(id, s)| (*id, s.clone())).collect()
    }

    /// Whether a live session other than `id` publishes `app`/`stream` now (a pusher that
    /// came back by itself while its old session was held).
    pub fn publishing_elsewhere(&self, id: SessionId, app: &str, stream: &str) -> bool {
        let sessions = self.sessions.lock().expect("sessions");
        sessions.iter().any(|(other, s)| {
            let r = s.report.borrow();
            *other != id
                && r.direction == Some(Direction::Publish)
                && r.app.as_deref() == Some(app)
                && r.stream.as_deref() == Some(stream)
        })
    }
}

/// Runs `session`, publishing `tracker`'s report on `reports` every [`REPORT_EVERY`] and once
/// when it ends.
pub async fn reporting<T>(
    tracker: &Mutex<SessionTracker>,
    reports: &watch::Sender<SessionReport>,
    session: impl Future<Output = T>,
) -> T {
    let publish = || reports.send_replace(tracker.lock().expect("tracker").report());
    let mut session = std::pin::pin!(session);
    let mut every = tokio::time::interval(REPORT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = &mut session => {
                publish();
                return out;
            }
            _ = every.tick() => {
                publish();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtmpq_proto::session::Direction;

    fn report(app: &str, stream: &str, direction: Direction) -> SessionReport {
        SessionReport {
            app: Some(app.into()),
            stream: Some(stream.into()),
            direction: Some(direction),
            ..SessionReport::default()
        }
    }

    #[test]
    fn a_held_session_sees_a_new_publish_of_its_stream_and_nothing_else() {
        let registry = SessionRegistry::default();
        let register = |n: u64, r: SessionReport| {
            let tx = registry.register(SessionId(n), "peer".into(), Arc::default());
            tx.send_replace(r);
            tx
        };
        let held = SessionId(1);
        let _own = register(1, report("live", "cam", Direction::Publish));
        assert!(
            !registry.publishing_elsewhere(held, "live", "cam"),
            "itself"
        );
        let _player = register(2, report("live", "cam", Direction::Play));
        let _other = register(3, report("live", "other", Direction::Publish));
        assert!(!registry.publishing_elsewhere(held, "live", "cam"));
        let _new = register(4, report("live", "cam", Direction::Publish));
        assert!(registry.publishing_elsewhere(held, "live", "cam"));
        registry.remove(SessionId(4));
        assert!(!registry.publishing_elsewhere(held, "live", "cam"));
        assert_eq!(registry.live().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_session_publishes_its_report_and_a_last_one_at_its_end() {
        let tracker = Mutex::new(SessionTracker::default());
        let (tx, rx) = watch::channel(SessionReport::default());
        let session = async {
            tokio::time::sleep(REPORT_EVERY * 3 / 2).await;
            // Published within one period of a change.
            tracker.lock().unwrap().gateway = Some("gw:1".into());
            tokio::time::sleep(REPORT_EVERY).await;
            assert_eq!(rx.borrow().gateway.as_deref(), Some("gw:1"));
            tracker.lock().unwrap().app = Some("live".into());
            7
        };
        assert_eq!(reporting(&tracker, &tx, session).await, 7);
        assert_eq!(rx.borrow().app.as_deref(), Some("live"), "the last report");
    }
}
