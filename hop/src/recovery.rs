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
    use std::time::Duration;

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
