//! How one run of a session ends ([`SessionEnd`]) and what a hop does next ([`next_step`]):
//! finish, resume on a new tunnel stream, set the session up again, or hold it for its edge.
//! Pure decisions; the hops' async layers carry them out.

use std::time::Duration;

use crate::session::SessionTracker;
use crate::wire::CloseCode;

/// Which side ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    /// The RTMP peer closed or misbehaved.
    Rtmp,
    /// The far hop sent SESSION_CLOSE.
    RemoteClose,
    /// The tunnel stream broke or carried bad frames.
    Tunnel,
    /// This hop ended it (shutdown, a deadline, a right withdrawn).
    Local,
}

/// How a session (or one run of it, on one tunnel stream and one origin connection) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnd {
    /// The close code.
    pub code: CloseCode,
    /// Words for the log and for the client.
    pub reason: String,
    /// Who ended it.
    pub ended_by: EndedBy,
}

impl SessionEnd {
    /// A session ended with `code` for `reason`.
    pub fn new(code: CloseCode, reason: impl Into<String>, ended_by: EndedBy) -> Self {
        SessionEnd {
            code,
            reason: reason.into(),
            ended_by,
        }
    }

    /// The tunnel stream broke under the session (not a close the far hop asked for).
    pub fn tunnel_lost(&self) -> bool {
        self.ended_by == EndedBy::Tunnel && self.code == CloseCode::TunnelLost
    }

    /// The origin closed or could not be reached (at the gateway).
    pub fn origin_lost(&self) -> bool {
        self.ended_by == EndedBy::Rtmp
            && matches!(
                self.code,
                CloseCode::OriginClosed | CloseCode::OriginUnreachable
            )
    }
}

/// The hop deciding: they recover from different losses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Beside the client: it recovers a lost tunnel (resume, or set up again elsewhere).
    Edge,
    /// Beside the origin: it holds a session whose tunnel was lost for its edge to resume, and
    /// sets a session up again on a new origin connection when the origin goes.
    Gateway,
}

/// How long a hop may spend recovering a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// How long to keep trying to set the session up again (the edge's reconnect limit, the
    /// gateway's origin retry); zero: never.
    pub set_up_again_for: Duration,
    /// At the gateway: how long the session is held for its edge to resume it, when its edge
    /// got a resume token for the stream that was lost; `None`: not held.
    pub hold_for: Option<Duration>,
}

/// What a hop does after a run of a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The session is over: tell each side and end it.
    Finish,
    /// Edge: take the session over on a new stream with the gateway's resume token (and set
    /// it up again if that fails).
    Resume,
    /// Replay the client's set-up on a new tunnel session (edge) or origin connection
    /// (gateway), retrying for [`Recovery::set_up_again_for`].
    SetUpAgain,
    /// Gateway: keep the origin connection and wait [`Recovery::hold_for`] for the edge to
    /// resume the session on a new stream.
    Hold,
}

/// What `hop` does after a run of its session ended with `end`, from what its tracker knows
/// and how long it may recover. Only a loss is recovered (a tunnel at the edge and for a held
/// session at the gateway, the origin at the gateway), and only once the client has asked to
/// publish or play: before that there is nothing to set up again.
pub fn next_step(hop: Hop, end: &SessionEnd, tracker: &SessionTracker, recovery: Recovery) -> Step {
    let journal = &tracker.journal;
    let set_up = journal.direction().is_some();
    let replayable = journal.can_replay();
    let may_set_up_again = replayable && !recovery.set_up_again_for.is_zero();
    match hop {
        Hop::Edge if end.tunnel_lost() && may_set_up_again => {
            if tracker.resume_token.is_some() {
                Step::Resume
            } else {
                Step::SetUpAgain
            }
        }
        Hop::Gateway if end.tunnel_lost() && set_up && recovery.hold_for.is_some() => Step::Hold,
        Hop::Gateway if end.origin_lost() && may_set_up_again => Step::SetUpAgain,
        _ => Step::Finish,
    }
}

/// The waits between attempts to recover a session: from [`Backoff::FIRST`], doubling up to
/// [`Backoff::MAX`], never past the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
    attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Self::FIRST,
            attempts: 0,
        }
    }
}

impl Backoff {
    /// The first wait.
    pub const FIRST: Duration = Duration::from_millis(100);
    /// The longest wait.
    pub const MAX: Duration = Duration::from_secs(2);

    /// An attempt is made.
    pub fn attempt(&mut self) {
        self.attempts += 1;
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How long to wait before the next attempt with `left` until the deadline; `None` when
    /// the deadline would pass meanwhile (give up).
    pub fn wait(&mut self, left: Duration) -> Option<Duration> {
        let wait = self.next;
        if wait >= left {
            return None;
        }
        self.next = (self.next * 2).min(Self::MAX);
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{connect_object, request, Amf0Value};
    use crate::message::Message;
    use crate::session::Flow;
    use crate::wire::ResumeToken;

    /// A tracker whose client connected and, with `publish`, asked to publish.
    fn tracker(publish: bool) -> SessionTracker {
        let mut t = SessionTracker::default();
        let connect = request(
            "connect",
            1.0,
            0,
            vec![connect_object("live", "rtmp://h/live")],
        );
        t.record(Flow::ToOrigin, &connect, std::time::Instant::now())
            .unwrap();
        t.record(
            Flow::ToOrigin,
            &request("createStream", 2.0, 0, vec![Amf0Value::Null]),
            std::time::Instant::now(),
        )
        .unwrap();
        if publish {
            let args = vec![Amf0Value::Null, Amf0Value::Utf8String("cam".into())];
            let msg: Message = request("publish", 5.0, 1, args);
            t.record(Flow::ToOrigin, &msg, std::time::Instant::now())
                .unwrap();
        }
        t
    }

    fn end(code: CloseCode, by: EndedBy) -> SessionEnd {
        SessionEnd::new(code, "why", by)
    }

    const RETRY: Recovery = Recovery {
        set_up_again_for: Duration::from_secs(10),
        hold_for: None,
    };

    #[test]
    fn the_edge_recovers_only_a_lost_tunnel_of_a_set_up_session() {
        let lost = end(CloseCode::TunnelLost, EndedBy::Tunnel);
        let live = tracker(true);
        assert_eq!(next_step(Hop::Edge, &lost, &live, RETRY), Step::SetUpAgain);
        let mut with_token = tracker(true);
        with_token.resume_token = Some(ResumeToken([7; crate::wire::RESUME_TOKEN_LEN]));
        assert_eq!(
            next_step(Hop::Edge, &lost, &with_token, RETRY),
            Step::Resume
        );
        // Not set up yet: nothing to replay.
        assert_eq!(
            next_step(Hop::Edge, &lost, &tracker(false), RETRY),
            Step::Finish
        );
        // Recovery turned off.
        let never = Recovery::default();
        assert_eq!(
            next_step(Hop::Edge, &lost, &with_token, never),
            Step::Finish
        );
        // Every other end is final at the edge: the client left, the far hop closed it (even
        // with tunnel_lost as its code), an origin refusal, a shutdown.
        for other in [
            end(CloseCode::Normal, EndedBy::Rtmp),
            end(CloseCode::TunnelLost, EndedBy::RemoteClose),
            end(CloseCode::OriginClosed, EndedBy::RemoteClose),
            end(CloseCode::ProtocolViolation, EndedBy::Tunnel),
            end(CloseCode::Shutdown, EndedBy::Local),
        ] {
            assert_eq!(
                next_step(Hop::Edge, &other, &live, RETRY),
                Step::Finish,
                "{other:?}"
            );
        }
    }

    #[test]
    fn the_gateway_holds_for_a_lost_tunnel_and_sets_up_again_for_a_lost_origin() {
        let live = tracker(true);
        let lost = end(CloseCode::TunnelLost, EndedBy::Tunnel);
        let held = Recovery {
            hold_for: Some(Duration::from_secs(5)),
            ..RETRY
        };
        assert_eq!(next_step(Hop::Gateway, &lost, &live, held), Step::Hold);
        // No token went to the edge for this stream: nobody can resume it.
        assert_eq!(next_step(Hop::Gateway, &lost, &live, RETRY), Step::Finish);
        assert_eq!(
            next_step(Hop::Gateway, &lost, &tracker(false), held),
            Step::Finish
        );
        for origin in [CloseCode::OriginClosed, CloseCode::OriginUnreachable] {
            let gone = end(origin, EndedBy::Rtmp);
            assert_eq!(
                next_step(Hop::Gateway, &gone, &live, RETRY),
                Step::SetUpAgain
            );
            assert_eq!(
                next_step(Hop::Gateway, &gone, &live, Recovery::default()),
                Step::Finish
            );
            assert_eq!(
                next_step(Hop::Gateway, &gone, &tracker(false), RETRY),
                Step::Finish
            );
        }
        // The edge ended it, or the origin broke the protocol: final.
        for other in [
            end(CloseCode::Normal, EndedBy::RemoteClose),
            end(CloseCode::OriginProtocolError, EndedBy::Rtmp),
            end(CloseCode::Unauthorized, EndedBy::Local),
        ] {
            assert_eq!(
                next_step(Hop::Gateway, &other, &live, held),
                Step::Finish,
                "{other:?}"
            );
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_stops_before_the_deadline() {
        let mut b = Backoff::default();
        let waits: Vec<_> = std::iter::from_fn(|| b.wait(Duration::from_secs(60)))
            .take(7)
            .collect();
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000, 2000]);
        let mut b = Backoff::default();
        assert_eq!(
            b.wait(Duration::from_millis(100)),
            None,
            "the wait would reach the deadline"
        );
        assert_eq!(b.wait(Duration::from_millis(150)), Some(Backoff::FIRST));
        b.attempt();
        b.attempt();
        assert_eq!(b.attempts(), 2);
    }
}
