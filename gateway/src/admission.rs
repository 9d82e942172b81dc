//! Which incoming QUIC handshakes the gateway takes on: past a number of pending handshakes a
//! source must prove its address first (QUIC Retry, which costs the gateway no state), and
//! pending handshakes and connections per source address are bounded. Plain counting; the
//! accept loop applies the [`Verdict`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The bounds, from the gateway's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// From this many pending handshakes on, a source whose address is not validated gets a
    /// Retry instead of a handshake.
    pub retry_above_pending: usize,
    /// Most handshakes in progress at once; more are refused.
    pub max_pending: usize,
    /// Most connections (pending or established) from one IP address.
    pub max_per_address: usize,
}

/// What to do with an incoming handshake.
#[derive(Debug)]
pub enum Verdict {
    /// Take it on; the ticket holds its place until dropped.
    Accept(Ticket),
    /// Ask the source to prove its address (QUIC Retry) first.
    Retry,
    /// Refuse it, for this reason (a metric label).
    Refuse(&'static str),
}

#[derive(Debug, Default)]
struct Counts {
    pending: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// Counts of pending handshakes and connections per address.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    counts: Mutex<Counts>,
}

impl Admission {
    /// Nothing pending yet.
    pub fn new(limits: AdmissionLimits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            counts: Mutex::default(),
        })
    }

    /// Judges a handshake from `ip`; `validated`: the source already answered a Retry.
    pub fn judge(self: &Arc<Self>, ip: IpAddr, validated: bool) -> Verdict {
        let mut counts = self.counts.lock().expect("admission");
        if counts.pending >= self.limits.max_pending {
            return Verdict::Refuse("pending_limit");
        }
        if !validated && counts.pending >= self.limits.retry_above_pending {
            return Verdict::Retry;
        }
        let from_ip = counts.per_address.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.limits.max_per_address {
            return Verdict::Refuse("address_limit");
        }
        counts.pending += 1;
        counts.per_address.insert(ip, from_ip + 1);
        Verdict::Accept(Ticket {
            admission: self.clone(),
            ip,
            pending: true,
        })
    }

    /// Handshakes in progress.
    pub fn pending(&self) -> usize {
        self.counts.lock().expect("admission").pending
    }

    /// Addresses with a connection (pending or established).
    pub fn addresses(&self) -> usize {
        self.counts.lock().expect("admission").per_address.len()
    }
}

/// One admitted connection's place: pending until [`established`](Ticket::established),
/// counted against its address until dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    ip: IpAddr,
    pending: bool,
}

impl Ticket {
    /// The handshake finished (or failed): it no longer counts as pending.
    pub fn established(&mut self) {
        if std::mem::take(&mut self.pending) {
            self.admission.counts.lock().expect("admission").pending -= 1;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.established();
        let mut counts = self.admission.counts.lock().expect("admission");
        if let Some(n) = counts.per_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_address.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            retry_above_pending: 2,
            max_pending: 4,
            max_per_address: 3,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn past_the_threshold_unvalidated_sources_get_a_retry_and_validated_ones_a_handshake() {
        let a = Admission::new(limits());
        let t1 = a.judge(ip(1), false);
        let t2 = a.judge(ip(2), false);
        assert!(matches!(
            (&t1, &t2),
            (Verdict::Accept(_), Verdict::Accept(_))
        ));
        assert!(matches!(a.judge(ip(3), false), Verdict::Retry));
        let t3 = a.judge(ip(3), true);
        let t4 = a.judge(ip(4), true);
        assert!(matches!(
            (&t3, &t4),
            (Verdict::Accept(_), Verdict::Accept(_))
        ));
        assert_eq!(a.pending(), 4);
        assert!(matches!(
            a.judge(ip(5), true),
            Verdict::Refuse("pending_limit")
        ));
        // Established connections no longer count as pending.
        for t in [t1, t2, t3, t4] {
            if let Verdict::Accept(mut t) = t {
                t.established();
                std::mem::forget(t);
            }
        }
        assert_eq!(a.pending(), 0);
        assert!(matches!(a.judge(ip(5), false), Verdict::Accept(_)));
    }

    #[test]
    fn one_address_holds_a_bounded_number_of_connections_until_they_end() {
        let a = Admission::new(limits());
        let mut held = Vec::new();
        for _ in 0..3 {
            match a.judge(ip(1), true) {
                Verdict::Accept(mut t) => {
                    t.established();
                    held.push(t);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            a.judge(ip(1), true),
            Verdict::Refuse("address_limit")
        ));
        assert!(matches!(a.judge(ip(2), true), Verdict::Accept(_)));
        held.pop();
        assert!(matches!(a.judge(ip(1), true), Verdict::Accept(_)));
        drop(held);
        assert_eq!((a.pending(), a.addresses()), (0, 0));
    }
}
