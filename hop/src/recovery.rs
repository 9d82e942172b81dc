//! Carrying out a recovery the core decided on ([`rtmpq_proto::session_end::next_step`]) on
//! either hop: retrying with backoff until a deadline ([`retry_until`]), and replaying the
//! client's set-up until the origin takes the session again ([`replay_set_up`]), the two
//! together in [`set_up_again`].

use std::future::Future;

use rtmpq_proto::journal::{Replay, ReplayStep, ResumeFilter};
use rtmpq_proto::message::Message;
use rtmpq_proto::session_end::Backoff;
use tokio::time::Instant;
use tracing::info;

use crate::rtmp::{Inbound, RtmpSide};

/// Why one attempt failed.
#[derive(Debug)]
pub enum Retry<E> {
    /// Worth another attempt: why this one failed.
    Again(String),
    /// No attempt can succeed now (the session ends with `E`).
    Stop(E),
}

/// Why [`retry_until`] returned without success.
#[derive(Debug)]
pub enum GaveUp<E> {
    /// An attempt said to stop.
    Stopped(E),
    /// The deadline came: how many attempts were made and why the last failed.
    OutOfTime {
        /// Attempts made.
        attempts: u32,
        /// Why the last one failed.
        last: String,
    },
}

/// Runs `attempt` until it succeeds, each attempt bounded by `deadline` and the next one after
/// a [`Backoff`] wait, until an attempt says stop or the deadline would pass; `what` names the
/// thing retried in the log.
pub async fn retry_until<T, E, F>(
    deadline: Instant,
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> Result<T, GaveUp<E>>
where
    F: Future<Output = Result<T, Retry<E>>>,
{
    let mut backoff = Backoff::default();
    loop {
        backoff.attempt();
        let last = match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Ok(done)) => return Ok(done),
            Ok(Err(Retry::Stop(e))) => return Err(GaveUp::Stopped(e)),
            Ok(Err(Retry::Again(why))) => why,
            Err(_) => "no answer in time".to_owned(),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(wait) = backoff.wait(left) else {
            let attempts = backoff.attempts();
            return Err(GaveUp::OutOfTime { attempts, last });
        };
        info!(attempt = backoff.attempts(), reason = %last, "{what} not yet; retrying in {wait:?}");
        tokio::time::sleep(wait).await;
    }
}

/// The way to the origin a set-up is replayed on: through a new tunnel session at the edge,
/// on a new origin connection at the gateway.
pub trait OriginExchange {
    /// Sends `msgs` toward the origin.
    fn send(&mut self, msgs: Vec<Message>) -> impl Future<Output = Result<(), String>> + Send;
    /// The origin's next message.
    fn next(&mut self) -> impl Future<Output = Result<Message, String>> + Send;
    /// The attempt on it is given up (`why`): whoever is on the other side hears it.
    fn give_up(&mut self, why: &str) -> impl Future<Output = ()> + Send {
        let _ = why;
        async {}
    }
}

/// Sets a session up again: opens a new way to the origin with `open` and replays `replay`
/// through it ([`replay_set_up`]), retrying with backoff ([`retry_until`]) until the origin
/// takes the session, an attempt says stop, or `deadline` would pass. Returns the way and how
/// the client's messages continue on it.
pub async fn set_up_again<X, E, F>(
    deadline: Instant,
    what: &str,
    replay: &Replay,
    mut open: impl FnMut() -> F,
) -> Result<(X, ResumeFilter), GaveUp<E>>
where
    X: OriginExchange,
    F: Future<Output = Result<X, Retry<E>>>,
{
    retry_until(deadline, what, || {
        let (replay, opening) = (replay.clone(), open());
        async move {
            let mut way = opening.await?;
            match replay_set_up(replay, &mut way).await {
                Ok(filter) => Ok((way, filter)),
                Err(why) => {
                    way.give_up(&why).await;
                    Err(Retry::Again(why))
                }
            }
        }
    })
    .await
}

/// An origin connection a set-up is replayed on (the gateway's): what the hop itself must
/// answer is answered meanwhile.
impl OriginExchange for RtmpSide {
    async fn send(&mut self, msgs: Vec<Message>) -> Result<(), String> {
        for m in msgs {
            self.outbound
                .send(m)
                .await
                .map_err(|e| format!("origin write: {e}"))?;
        }
        Ok(())
    }

    async fn next(&mut self) -> Result<Message, String> {
        loop {
            match self.reader.next().await {
                Ok(Some(Inbound::Message(msg))) => return Ok(msg),
                Ok(Some(Inbound::Reply(reply))) => self.send(vec![reply]).await?,
                Ok(Some(Inbound::Silent(_))) => {}
                Ok(None) => return Err("origin closed the connection".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// Drives `replay` on `origin` until the origin takes the session; returns how the client's
/// messages continue on the new stream id.
pub async fn replay_set_up(
    mut replay: Replay,
    origin: &mut impl OriginExchange,
) -> Result<ResumeFilter, String> {
    origin.send(replay.begin()).await?;
    loop {
        let msg = origin.next().await?;
        match replay.on_origin(&msg).map_err(|e| e.to_string())? {
            ReplayStep::Waiting => {}
            ReplayStep::Send(msgs) => origin.send(msgs).await?,
            ReplayStep::Started { stream_id, then } => {
                origin.send(then).await?;
                return Ok(ResumeFilter::new(replay.client_stream_id(), stream_id));
            }
            ReplayStep::Refused { code, description } => {
                return Err(format!("origin refused: {code} {description}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtmpq_proto::command::{
        connect_object, connect_result, on_status, request, result, Amf0Value, Command,
    };
    use rtmpq_proto::journal::SessionJournal;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// A publisher's set-up as the journal keeps it.
    fn publisher_replay() -> Replay {
        let text = |s: &str| Amf0Value::Utf8String(s.into());
        let mut journal = SessionJournal::default();
        for m in [
            request(
                "connect",
                1.0,
                0,
                vec![connect_object("live", "rtmp://o/live")],
            ),
            request("createStream", 2.0, 0, vec![Amf0Value::Null]),
            request(
                "publish",
                3.0,
                1,
                vec![Amf0Value::Null, text("cam"), text("live")],
            ),
        ] {
            journal.observe(&m, Command::parse(&m).unwrap().as_ref());
        }
        journal.replay().expect("set up")
    }

    /// An origin that answers a set-up as nginx-rtmp does; `publish_code` is its answer to
    /// publish (`NetStream.Publish.BadName` while it still holds the old publisher).
    struct FakeOrigin {
        publish_code: &'static str,
        answers: VecDeque<Message>,
        given_up: Arc<Mutex<Vec<String>>>,
    }

    impl OriginExchange for FakeOrigin {
        async fn send(&mut self, msgs: Vec<Message>) -> Result<(), String> {
            for m in msgs {
                let Some(cmd) = Command::parse(&m).unwrap() else {
                    continue;
                };
                let answer = match cmd.name.as_str() {
                    "connect" => connect_result(cmd.transaction_id),
                    "createStream" => result(cmd.transaction_id, Amf0Value::Number(7.0)),
                    "publish" if self.publish_code.ends_with("Start") => {
                        on_status(7, "status", self.publish_code, "")
                    }
                    "publish" => on_status(7, "error", self.publish_code, "already publishing"),
                    _ => continue,
                };
                self.answers.push_back(answer);
            }
            Ok(())
        }

        async fn next(&mut self) -> Result<Message, String> {
            self.answers
                .pop_front()
                .ok_or_else(|| "origin closed".to_owned())
        }

        async fn give_up(&mut self, why: &str) {
            self.given_up.lock().unwrap().push(why.to_owned());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_set_up_is_replayed_on_each_new_way_until_the_origin_takes_it() {
        let start = Instant::now();
        let given_up = Arc::new(Mutex::new(Vec::new()));
        let mut opened = Vec::new();
        let replay = publisher_replay();
        let out = set_up_again(start + Duration::from_secs(5), "test", &replay, || {
            opened.push(start.elapsed().as_millis());
            let n = opened.len();
            let given_up = given_up.clone();
            async move {
                match n {
                    // No way to the origin yet (a gateway still down).
                    1 => Err(Retry::<()>::Again("unreachable".into())),
                    // The origin still holds the old publisher.
                    2 => Ok(FakeOrigin {
                        publish_code: "NetStream.Publish.BadName",
                        answers: VecDeque::new(),
                        given_up,
                    }),
                    _ => Ok(FakeOrigin {
                        publish_code: "NetStream.Publish.Start",
                        answers: VecDeque::new(),
                        given_up,
                    }),
                }
            }
        })
        .await;
        let (_, mut filter) = out.expect("set up on the third way");
        // The client's messages on its stream 1 go on the origin's stream 7.
        let later = request("FCUnpublish", 4.0, 1, vec![Amf0Value::Null]);
        assert_eq!(filter.toward_origin(later).map(|m| m.stream_id), Some(7));
        assert_eq!(opened, [0, 100, 300], "the core's backoff between attempts");
        let given_up = given_up.lock().unwrap();
        assert_eq!(
            given_up.len(),
            1,
            "the refused attempt is told why: {given_up:?}"
        );
        assert!(given_up[0].contains("BadName"), "{given_up:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_that_says_stop_ends_the_set_up_at_once() {
        let start = Instant::now();
        let out = set_up_again::<FakeOrigin, _, _>(
            start + Duration::from_secs(5),
            "test",
            &publisher_replay(),
            || async { Err(Retry::Stop("taken over by a new publish")) },
        )
        .await;
        assert!(matches!(
            out,
            Err(GaveUp::Stopped("taken over by a new publish"))
        ));
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_backoff_until_the_deadline_then_says_why() {
        let start = Instant::now();
        let mut tried = Vec::new();
        let out: Result<(), GaveUp<()>> =
            retry_until(start + Duration::from_secs(1), "test", || {
                tried.push(start.elapsed().as_millis());
                let n = tried.len();
                async move { Err(Retry::Again(format!("attempt {n}"))) }
            })
            .await;
        // 100, 200, 400 ms waits; the next (800 ms) would pass the deadline.
        assert_eq!(tried, [0, 100, 300, 700]);
        match out {
            Err(GaveUp::OutOfTime { attempts, last }) => {
                assert_eq!((attempts, last.as_str()), (4, "attempt 4"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_may_stop_the_retries_or_succeed() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut n = 0;
        let out = retry_until(deadline, "test", || {
            n += 1;
            let n = n;
            async move {
                if n < 3 {
                    Err(Retry::Again("not yet".into()))
                } else {
                    Ok::<_, Retry<&str>>(n)
                }
            }
        })
        .await;
        assert_eq!(out.unwrap(), 3);
        let stopped = retry_until::<(), _, _>(deadline, "test", || async {
            Err(Retry::Stop("taken over"))
        })
        .await;
        assert!(matches!(stopped, Err(GaveUp::Stopped("taken over"))));
        // An attempt that never answers is cut at the deadline.
        let silent = retry_until::<(), (), _>(
            Instant::now() + Duration::from_secs(1),
            "test",
            async || std::future::pending().await,
        )
        .await;
        assert!(
            matches!(silent, Err(GaveUp::OutOfTime { attempts: 1, .. })),
            "{silent:?}"
        );
    }
}
