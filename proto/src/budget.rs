//! The process-wide bound on buffered bytes: [`MemoryBudget`] is shared by every session of a
//! hop, and each session takes from it through its own [`SessionBudget`], which gives back
//! whatever it still holds when dropped. Partial messages in the chunk decoder and messages
//! queued toward a writer are charged; a session that cannot get more ends with `overloaded`.
//! This is the last resort behind the per-session limits, not a policy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A bound on bytes buffered by all sessions of one process.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    inner: Arc<BudgetInner>,
}

#[derive(Debug)]
struct BudgetInner {
    used: AtomicUsize,
    limit: usize,
}

/// A session's share would push the process past its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("buffered bytes would pass the process-wide limit of {limit} bytes")]
pub struct BudgetExceeded {
    /// The process-wide limit.
    pub limit: usize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        MemoryBudget {
            inner: Arc::new(BudgetInner {
                used: AtomicUsize::new(0),
                limit,
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
    pub fn session(&self) -> Arc<SessionBudget> {
        Arc::new(SessionBudget {
            budget: self.clone(),
            held: AtomicUsize::new(0),
        })
    }

    fn take(&self, n: usize) -> Result<(), BudgetExceeded> {
        let limit = self.inner.limit;
        self.inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= limit)
            })
            .map(|_| ())
            .map_err(|_| BudgetExceeded { limit })
    }

    fn give_back(&self, n: usize) {
        self.inner.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// One session's bytes within a [`MemoryBudget`]; gives them all back when dropped.
#[derive(Debug)]
pub struct SessionBudget {
    budget: MemoryBudget,
    held: AtomicUsize,
}

impl SessionBudget {
    /// Takes `n` bytes, or fails without taking any.
    pub fn take(&self, n: usize) -> Result<(), BudgetExceeded> {
        self.budget.take(n)?;
        self.held.fetch_add(n, Ordering::AcqRel);
        Ok(())
    }

    /// Takes `n` bytes even past the bound: only for the few small messages that tell a
    /// client why its session ends, which must reach it even when the process is full.
    pub fn take_anyway(&self, n: usize) {
        self.budget.inner.used.fetch_add(n, Ordering::AcqRel);
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
        self.budget.give_back(n);
    }

    /// Brings what a holder has taken, `charged`, to `held` bytes: takes the difference or
    /// gives it back. On failure nothing changes.
    pub fn charge_to(&self, charged: &mut usize, held: usize) -> Result<(), BudgetExceeded> {
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

impl Drop for SessionBudget {
    fn drop(&mut self) {
        self.budget.give_back(*self.held.get_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_share_one_bound_and_give_back_on_drop() {
        let budget = MemoryBudget::new(100);
        let a = budget.session();
        let b = budget.session();
        a.take(60).unwrap();
        assert_eq!(b.take(50), Err(BudgetExceeded { limit: 100 }));
        assert_eq!(budget.used(), 60, "a failed take takes nothing");
        b.take(40).unwrap();
        a.give_back(10);
        assert_eq!((a.held(), budget.used()), (50, 90));
        // Giving back more than held gives back only what is held.
        b.give_back(1000);
        assert_eq!((b.held(), budget.used()), (0, 50));
        drop(a);
        assert_eq!(budget.used(), 0);
    }
}
