//! The process-wide bound on buffered bytes: [`BufferBound`] is shared by every session of a
//! hop, and each session takes from it through its own [`SessionBuffer`], which gives back
//! whatever it still holds when dropped. Partial messages in the chunk decoder and messages
//! queued toward a writer are charged; a session that cannot get more ends with `overloaded`.
//! A [`BufferBound::share`] is a part of the bound with a limit of its own (the gateway gives
//! each edge connection one): what its sessions take counts against both, so one peer cannot
//! take the whole bound from the others. This is the last resort behind the per-session
//! limits, not a policy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A bound on bytes buffered by all sessions of one process.
#[derive(Debug, Clone)]
pub struct BufferBound {
    inner: Arc<BoundInner>,
}

#[derive(Debug)]
struct BoundInner {
    used: AtomicUsize,
    limit: usize,
    /// The bound this one is a share of.
    parent: Option<BufferBound>,
}

/// A session's share would push the process past its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("buffered bytes would pass the process-wide limit of {limit} bytes")]
pub struct BufferFull {
    /// The process-wide limit.
    pub limit: usize,
}

impl BufferBound {
    /// A buffer of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        BufferBound {
            inner: Arc::new(BoundInner {
                used: AtomicUsize::new(0),
                limit,
                parent: None,
            }),
        }
    }

    /// A share of this bound of at most `limit` bytes: takes through it count against both.
    pub fn share(&self, limit: usize) -> Self {
        BufferBound {
            inner: Arc::new(BoundInner {
                used: AtomicUsize::new(0),
                limit: limit.min(self.inner.limit),
                parent: Some(self.clone()),
            }),
        }
    }

    /// Bytes held now by all sessions.
    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// The bound.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// A new session's account.
    pub fn session(&self) -> Arc<SessionBuffer> {
        Arc::new(SessionBuffer {
            buffer: self.clone(),
            held: AtomicUsize::new(0),
        })
    }

    fn take(&self, n: usize) -> Result<(), BufferFull> {
        let limit = self.inner.limit;
        self.inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= limit)
            })
            .map_err(|_| BufferFull { limit })?;
        if let Some(parent) = &self.inner.parent {
            if let Err(e) = parent.take(n) {
                self.inner.used.fetch_sub(n, Ordering::AcqRel);
                return Err(e);
            }
        }
        Ok(())
    }

    fn take_anyway(&self, n: usize) {
        self.inner.used.fetch_add(n, Ordering::AcqRel);
        if let Some(parent) = &self.inner.parent {
            parent.take_anyway(n);
        }
    }

    fn give_back(&self, n: usize) {
        self.inner.used.fetch_sub(n, Ordering::AcqRel);
        if let Some(parent) = &self.inner.parent {
            parent.give_back(n);
        }
    }
}

/// One session's bytes within a [`BufferBound`]; gives them all back when dropped.
#[derive(Debug)]
pub struct SessionBuffer {
    buffer: BufferBound,
    held: AtomicUsize,
}

impl SessionBuffer {
    /// Takes `n` bytes, or fails without taking any.
    pub fn take(&self, n: usize) -> Result<(), BufferFull> {
        self.buffer.take(n)?;
        self.held.fetch_add(n, Ordering::AcqRel);
        Ok(())
    }

    /// Takes `n` bytes even past the bound: only for the few small messages that tell a
    /// client why its session ends, which must reach it even when the process is full.
    pub fn take_anyway(&self, n: usize) {
        self.buffer.take_anyway(n);
        self.held.fetch_add(n, Ordering::AcqRel);
    }

    /// Gives back `n` bytes taken before (never more than this session holds).
    pub fn give_back(&self, n: usize) {
        let n = match self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Some(held.saturating_sub(n))
            }) {
            Ok(before) => before.min(n),
            Err(_) => 0,
        };
        self.buffer.give_back(n);
    }

    /// Brings what a holder has taken, `charged`, to `held` bytes: takes the difference or
    /// gives it back. On failure nothing changes.
    pub fn charge_to(&self, charged: &mut usize, held: usize) -> Result<(), BufferFull> {
        if held > *charged {
            self.take(held - *charged)?;
        } else {
            self.give_back(*charged - held);
        }
        *charged = held;
        Ok(())
    }

    /// Bytes this session holds.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

impl Drop for SessionBuffer {
    fn drop(&mut self) {
        self.buffer.give_back(*self.held.get_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_share_one_bound_and_give_back_on_drop() {
        let buffer = BufferBound::new(100);
        let a = buffer.session();
        let b = buffer.session();
        a.take(60).unwrap();
        assert_eq!(b.take(50), Err(BufferFull { limit: 100 }));
        assert_eq!(buffer.used(), 60, "a failed take takes nothing");
        b.take(40).unwrap();
        a.give_back(10);
        assert_eq!((a.held(), buffer.used()), (50, 90));
        // Giving back more than held gives back only what is held.
        b.give_back(1000);
        assert_eq!((b.held(), buffer.used()), (0, 50));
        drop(a);
        assert_eq!(buffer.used(), 0);
    }

    #[test]
    fn a_share_holds_at_most_its_limit_and_counts_against_the_whole() {
        let buffer = BufferBound::new(100);
        let greedy = buffer.share(40);
        let other = buffer.share(40);
        let a = greedy.session();
        a.take(30).unwrap();
        // The greedy share is full at 40; the process has room, and others get it.
        assert_eq!(a.take(20), Err(BufferFull { limit: 40 }));
        assert_eq!((greedy.used(), buffer.used()), (30, 30));
        let b = other.session();
        b.take(40).unwrap();
        assert_eq!(buffer.used(), 70);
        // The whole bound still holds when shares add up past it.
        let c = buffer.share(40).session();
        assert_eq!(c.take(31), Err(BufferFull { limit: 100 }));
        assert_eq!(buffer.used(), 70, "a refused take takes nothing anywhere");
        c.take_anyway(50);
        assert_eq!(buffer.used(), 120);
        drop((a, b, c));
        assert_eq!((buffer.used(), greedy.used(), other.used()), (0, 0, 0));
    }
}
