//! A live session's move to a new tunnel at a key frame, made before the old one is broken:
//! the hop that moves asks ([`Handover::ask`]); its reading pump stops before the next video
//! key frame from its RTMP peer (at once when that peer sends no video) and holds it; its
//! sending pump hands everything read before it to the old tunnel and says it is drained; the
//! far hop finishes the old tunnel after its own drain. The next run sends the held key frame
//! first on the new tunnel, so each side's decoder goes on with nothing missing.

use std::sync::Mutex;
use std::time::Duration;

use rtmpq_proto::message::Message;
use tokio::sync::watch;

/// How long a reading pump asked to stop waits for a key frame from its RTMP peer before it
/// stops at the next message anyway (a stream with a longer GOP then loses video to its next
/// key frame on the new tunnel, as a resume does).
pub const KEY_FRAME_WAIT: Duration = Duration::from_secs(5);

/// Where a session's move stands in this run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Phase {
    /// The move was asked for.
    asked: bool,
    /// The reading pump stopped.
    stopped: bool,
    /// Everything read before the stop was handed to the old tunnel.
    drained: bool,
    /// The far hop finished the old tunnel (after its own drain).
    far_finished: bool,
}

/// One session's move to a new tunnel; see the module docs. One per session, shared by its
/// pumps and the hop that moves it.
#[derive(Debug)]
pub struct Handover {
    phase: watch::Sender<Phase>,
    /// The message the reading pump stopped before: the next run sends it first.
    held: Mutex<Option<Message>>,
}

impl Default for Handover {
    fn default() -> Self {
        Handover {
            phase: watch::Sender::new(Phase::default()),
            held: Mutex::default(),
        }
    }
}

impl Handover {
    /// Asks this run's pumps to stop at a key frame and drain to the old tunnel.
    pub fn ask(&self) {
        self.phase.send_modify(|p| p.asked = true);
    }

    /// Whether a move was asked for in this run.
    pub fn is_asked(&self) -> bool {
        self.phase.borrow().asked
    }

    /// A watch of this handover, for a loop that waits for the ask again and again.
    pub(crate) fn watch(&self) -> HandoverWatch {
        HandoverWatch(self.phase.subscribe())
    }

    /// The reading pump stopped before `msg` (`None`: between messages).
    pub(crate) fn stop_before(&self, msg: Option<Message>) {
        *self.held.lock().expect("handover") = msg;
        self.phase.send_modify(|p| p.stopped = true);
    }

    /// Whether the reading pump stopped for the move.
    pub(crate) fn stopped(&self) -> bool {
        self.phase.borrow().stopped
    }

    /// Everything read before the stop is in the old tunnel.
    pub(crate) fn set_drained(&self) {
        self.phase.send_modify(|p| p.drained = true);
    }

    /// Returns once everything read before the stop is in the old tunnel.
    pub async fn drained(&self) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| p.drained).await;
    }

    /// The far hop finished the old tunnel.
    pub(crate) fn set_far_finished(&self) {
        self.phase.send_modify(|p| p.far_finished = true);
    }

    /// Returns once the far hop has finished the old tunnel.
    pub async fn far_finished(&self) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| p.far_finished).await;
    }

    /// A new run starts: nothing asked (what was held stays for it to send first).
    pub(crate) fn new_run(&self) {
        self.phase.send_replace(Phase::default());
    }

    /// What the last run's reading pump stopped before, for this run to send first.
    pub(crate) fn take_held(&self) -> Option<Message> {
        self.held.lock().expect("handover").take()
    }
}

/// Waits for a [`Handover`]'s ask (cancel-safe).
pub(crate) struct HandoverWatch(watch::Receiver<Phase>);

impl HandoverWatch {
    /// Returns once a move is asked for.
    pub(crate) async fn asked(&mut self) {
        let _ = self.0.wait_for(|p| p.asked).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_move_goes_through_its_phases_and_a_new_run_starts_clean() {
        let h = Handover::default();
        assert!(!h.is_asked());
        h.ask();
        h.watch().asked().await;
        assert!(h.is_asked() && !h.stopped());
        let key = Message::new(9, 1, 0, vec![0x17, 1]);
        h.stop_before(Some(key.clone()));
        assert!(h.stopped());
        h.set_drained();
        h.drained().await;
        h.set_far_finished();
        h.far_finished().await;
        // The next run: nothing asked, the held frame once.
        h.new_run();
        assert!(!h.is_asked() && !h.stopped());
        assert_eq!(h.take_held(), Some(key));
        assert_eq!(h.take_held(), None);
        // Not drained in this run: waiting for it does not return.
        let not_yet = tokio::time::timeout(Duration::from_secs(1), h.drained()).await;
        assert!(not_yet.is_err());
    }
}
