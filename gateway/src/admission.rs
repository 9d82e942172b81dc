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
    /// Connections (pending or established) per source, see [`source`].
    per_address: HashMap<IpAddr, usize>,
    /// Pending handshakes per source.
    pending_per_address: HashMap<IpAddr, usize>,
}

/// One source address: an IPv4 address, or an IPv6 /64 (one host or site gets a whole /64,
/// so counting its addresses one by one would count nothing).
pub fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
        v4 => v4,
    }
}

/// One source may hold at most this fraction (1/n) of the pending handshake slots.
pub const PENDING_SHARE: usize = 8;

fn count_up(map: &mut HashMap<IpAddr, usize>, key: IpAddr) {
    *map.entry(key).or_insert(0) += 1;
}

fn count_down(map: &mut HashMap<IpAddr, usize>, key: IpAddr) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
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
        let ip = source(ip);
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
        let pending_share = (self.limits.max_pending / PENDING_SHARE).max(1);
        if counts.pending_per_address.get(&ip).copied().unwrap_or(0) >= pending_share {
            return Verdict::Refuse("address_pending_limit");
        }
        counts.pending += 1;
        count_up(&mut counts.per_address, ip);
        count_up(&mut counts.pending_per_address, ip);
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
            let mut counts = self.admission.counts.lock().expect("admission");
            counts.pending -= 1;
            count_down(&mut counts.pending_per_address, self.ip);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.established();
        let mut counts = self.admission.counts.lock().expect("admission");
        count_down(&mut counts.per_address, self.ip);
    }
}

/// Live sessions per edge identity, each at most `limit`: one edge cannot take every session
/// slot of the gateway, however many connections it opens.
#[derive(Debug)]
pub struct EdgeSessions {
    limit: usize,
    counts: Mutex<HashMap<String, usize>>,
}

/// One live session's place in its edge's count, given back when dropped.
#[derive(Debug)]
pub struct EdgeSlot {
    owner: Arc<EdgeSessions>,
    edge: String,
}

impl EdgeSessions {
    /// No sessions yet; each edge may hold `limit`.
    pub fn new(limit: usize) -> Arc<EdgeSessions> {
        Arc::new(EdgeSessions {
            limit,
            counts: Mutex::default(),
        })
    }

    /// A place for one more session of `edge`, unless it holds its limit already.
    pub fn take(self: &Arc<Self>, edge: &str) -> Option<EdgeSlot> {
        let mut counts = self.counts.lock().expect("edge sessions");
        let n = counts.entry(edge.to_owned()).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(EdgeSlot {
            owner: self.clone(),
            edge: edge.to_owned(),
        })
    }

    /// The most sessions one edge may hold.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl Drop for EdgeSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().expect("edge sessions");
        if let Some(n) = counts.get_mut(&self.edge) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.edge);
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

    #[test]
    fn one_source_holds_a_share_of_the_pending_slots_and_a_v6_64_is_one_source() {
        let a = Admission::new(AdmissionLimits {
            retry_above_pending: 1000,
            max_pending: 64,
            max_per_address: 64,
        });
        // The probe: handshakes that never say HELLO from a few addresses.
        let mut pending = Vec::new();
        for n in 0..64 / PENDING_SHARE {
            let t = a.judge(ip(1), false);
            assert!(matches!(t, Verdict::Accept(_)), "{n}: {t:?}");
            pending.push(t);
        }
        assert!(matches!(
            a.judge(ip(1), false),
            Verdict::Refuse("address_pending_limit")
        ));
        // Another source still gets in.
        assert!(matches!(a.judge(ip(2), false), Verdict::Accept(_)));
        // Addresses of one IPv6 /64 count together; another /64 is another source.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        for n in 0..64 / PENDING_SHARE {
            let t = a.judge(v6(&format!("2001:db8:1:2::{n:x}")), false);
            assert!(matches!(t, Verdict::Accept(_)), "{n}: {t:?}");
            pending.push(t);
        }
        assert!(matches!(
            a.judge(v6("2001:db8:1:2:ffff::1"), false),
            Verdict::Refuse("address_pending_limit")
        ));
        assert!(matches!(
            a.judge(v6("2001:db8:1:3::1"), false),
            Verdict::Accept(_)
        ));
        assert_eq!(source(v6("::ffff:10.0.0.1")), ip(1));
        drop(pending);
        assert_eq!((a.pending(), a.addresses()), (0, 0));
    }

    #[test]
    fn one_edge_holds_at_most_its_sessions_until_they_end() {
        let sessions = EdgeSessions::new(2);
        let a1 = sessions.take("a").unwrap();
        let _a2 = sessions.take("a").unwrap();
        assert!(sessions.take("a").is_none());
        let _b = sessions.take("b").unwrap();
        drop(a1);
        assert!(sessions.take("a").is_some());
    }
}
