//! A packet-level link emulator: two network namespaces (pusher side A, server side B), each
//! with a TUN device, and one process forwarding packets between them. Per direction it applies
//! one-way delay, jitter without reordering, random loss, Gilbert-Elliott burst loss, a rate
//! limit with a drop-tail queue sized in time, and blackouts; it can change A's address at a
//! given second. TCP and QUIC see the same link because it acts on IP packets.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The pusher side's address (RFC 2544 benchmarking range, only inside our namespaces).
pub const ADDR_A: &str = "198.18.0.1";
/// The pusher side's address after an address change.
pub const ADDR_A_NEW: &str = "198.18.0.3";
/// The server side's address.
pub const ADDR_B: &str = "198.18.0.2";
const PREFIX: &str = "/24";

/// What went wrong building or running the link.
#[derive(Debug, thiserror::Error)]
pub enum NetemError {
    /// Not root: namespaces and TUN devices need CAP_NET_ADMIN.
    #[error("the link emulator needs root (network namespaces and TUN devices); run as root")]
    NotRoot,
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Gilbert-Elliott burst loss: a good and a bad state with their own loss probabilities.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GilbertElliott {
    /// Probability per packet of going from good to bad.
    pub p: f64,
    /// Probability per packet of going from bad to good.
    pub r: f64,
    /// Loss probability in the good state.
    pub loss_good: f64,
    /// Loss probability in the bad state.
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// The long-run loss rate.
    pub fn mean_loss(&self) -> f64 {
        let bad = self.p / (self.p + self.r);
        bad * self.loss_bad + (1.0 - bad) * self.loss_good
    }
}

/// Impairments of one direction.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DirectionSpec {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly from 0..jitter per packet (never reorders).
    pub jitter: Duration,
    /// Random loss probability per packet.
    pub loss: f64,
    /// Burst loss, on top of random loss.
    pub burst: Option<GilbertElliott>,
    /// Bottleneck rate in bit/s (IP bytes); `None` is unlimited.
    pub rate_bps: Option<u64>,
    /// Drop-tail queue size in time at the bottleneck rate.
    pub queue: Duration,
}

/// A whole link: both directions plus events.
#[derive(Debug, Clone, Serialize)]
pub struct LinkSpec {
    /// A → B (pusher to server).
    pub up: DirectionSpec,
    /// B → A.
    pub down: DirectionSpec,
    /// (start, length) from the link's start: both directions dark.
    pub blackouts: Vec<(Duration, Duration)>,
    /// When A's address changes (old removed, new added).
    pub address_change_at: Option<Duration>,
    /// When a NAT in front of A rebinds: from then on A's UDP packets leave from another
    /// source port (and only answers to that port come back).
    pub rebind_at: Option<Duration>,
    /// Extra random loss in both directions until this long after the start (handshakes
    /// under loss).
    pub early_loss: Option<(f64, Duration)>,
    /// From this long after the start, UDP packets to or from this port (a server in B) are
    /// dropped both ways: that server's host is cut off; others in B still answer.
    pub cut_port: Option<(Duration, u16)>,
    /// (start, length) from the link's start: every UDP packet dropped both ways (a network
    /// that blocks UDP; TCP passes).
    pub udp_blocked: Vec<(Duration, Duration)>,
    /// (from, bit/s), in time order: the bottleneck's rate both ways from each time on (a link
    /// whose capacity changes); before the first, each direction's own `rate_bps`.
    pub rate_steps: Vec<(Duration, u64)>,
}

impl LinkSpec {
    /// The same impairments both ways.
    pub fn symmetric(dir: DirectionSpec) -> LinkSpec {
        LinkSpec {
            up: dir,
            down: dir,
            blackouts: Vec::new(),
            address_change_at: None,
            rebind_at: None,
            early_loss: None,
            cut_port: None,
            udp_blocked: Vec::new(),
            rate_steps: Vec::new(),
        }
    }
}

/// The bottleneck rate at `since` from the link's start: the last of `steps` begun by then,
/// else `before`.
fn rate_at(steps: &[(Duration, u64)], since: Duration, before: Option<u64>) -> Option<u64> {
    steps
        .iter()
        .rev()
        .find(|(from, _)| since >= *from)
        .map(|(_, rate)| *rate)
        .or(before)
}

/// Packet counts of one direction.
#[derive(Debug, Default)]
pub struct DirectionCounts {
    /// Delivered to the far side.
    pub sent: AtomicU64,
    /// Dropped by random or burst loss.
    pub lost: AtomicU64,
    /// Dropped because the bottleneck queue was full.
    pub queue_dropped: AtomicU64,
    /// Dropped during a blackout.
    pub blackout_dropped: AtomicU64,
}

/// A snapshot of [`DirectionCounts`].
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct CountsSnapshot {
    /// Delivered.
    pub sent: u64,
    /// Lost at random or in bursts.
    pub lost: u64,
    /// Dropped at the full queue.
    pub queue_dropped: u64,
    /// Dropped in blackouts.
    pub blackout_dropped: u64,
}

impl DirectionCounts {
    /// The current counts.
    pub fn snapshot(&self) -> CountsSnapshot {
        CountsSnapshot {
            sent: self.sent.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            queue_dropped: self.queue_dropped.load(Ordering::Relaxed),
            blackout_dropped: self.blackout_dropped.load(Ordering::Relaxed),
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`; sockets and devices it creates
/// stay in that namespace. An empty `ns` is this process's own namespace, as for `spawn_in`.
pub fn in_netns<T: Send>(
    ns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    if ns.is_empty() {
        return f();
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(format!("/var/run/netns/{ns}"))?;
            // SAFETY: setns on a valid namespace fd affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

fn open_tun(name: &str) -> std::io::Result<OwnedFd> {
    // SAFETY: plain open(2) of a device node; the fd is owned below.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF with a properly sized ifreq.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd stays open and is the same descriptor for the AsyncFd's whole life.
    Ok(unsafe { AsyncFd::register(fd) }?)
}

/// Runs a command, turning a failure into an error with its output.
pub fn run(cmd: &[&str]) -> Result<(), NetemError> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|source| NetemError::Io {
            what: cmd.join(" "),
            source,
        })?;
    if !out.status.success() {
        return Err(NetemError::Command {
            command: cmd.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Two namespaces joined by the emulated link; removed on drop.
#[derive(Debug)]
pub struct Link {
    /// The pusher side's namespace.
    pub ns_a: String,
    /// The server side's namespace.
    pub ns_b: String,
    /// A → B counts.
    pub up: Arc<DirectionCounts>,
    /// B → A counts.
    pub down: Arc<DirectionCounts>,
    /// When forwarding started (CLOCK_MONOTONIC ns): blackouts and the address change are
    /// timed from here.
    pub started_ns: u64,
    stop: CancellationToken,
}

const TUN: &str = "rq0";
/// Most packets in flight on one direction's delay line (far above any profile's need:
/// 100 Mbit/s with 25 ms of delay holds about 200).
const DELAY_LINE_PACKETS: usize = 65_536;

impl Link {
    /// Creates namespaces `<tag>-<pid>-a` and `<tag>-<pid>-b` (unique to this process, so
    /// concurrent runs never share one) and starts forwarding with `spec`.
    pub async fn start(tag: &str, spec: LinkSpec) -> Result<Link, NetemError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(NetemError::NotRoot);
        }
        let pid = std::process::id();
        let (ns_a, ns_b) = (format!("{tag}-{pid}-a"), format!("{tag}-{pid}-b"));
        for ns in [&ns_a, &ns_b] {
            let _ = run(&["ip", "netns", "del", ns]);
            run(&["ip", "netns", "add", ns])?;
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            // IPv6 router solicitations would cross the link and muddle the counts.
            for key in ["all", "default"] {
                let sysctl = format!("net.ipv6.conf.{key}.disable_ipv6=1");
                run(&["ip", "netns", "exec", ns, "sysctl", "-qw", &sysctl])?;
            }
        }
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| NetemError::Io { what, source }
        };
        let tun_a = in_netns(&ns_a, || open_tun(TUN)).map_err(io("tun in A"))?;
        let tun_b = in_netns(&ns_b, || open_tun(TUN)).map_err(io("tun in B"))?;
        for (ns, addr) in [(&ns_a, ADDR_A), (&ns_b, ADDR_B)] {
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}{PREFIX}"),
                "dev",
                TUN,
            ])?;
            run(&["ip", "-n", ns, "link", "set", TUN, "up"])?;
        }
        let tun_a = Arc::new(register(tun_a).map_err(io("register tun A"))?);
        let tun_b = Arc::new(register(tun_b).map_err(io("register tun B"))?);
        let (up, down) = (Arc::default(), Arc::default());
        let stop = CancellationToken::new();
        let start = Instant::now();
        let started_ns = rtmpq_demo::clock::monotonic_ns();
        let blackouts = Arc::new(spec.blackouts.clone());
        let udp_blocked = Arc::new(spec.udp_blocked.clone());
        let rate_steps = Arc::new(spec.rate_steps.clone());
        for (from, to, dir, counts, rebind) in [
            (
                tun_a.clone(),
                tun_b.clone(),
                spec.up,
                Arc::clone(&up),
                spec.rebind_at.map(|at| (at, Rebind::SourcePort)),
            ),
            (
                tun_b,
                tun_a,
                spec.down,
                Arc::clone(&down),
                spec.rebind_at.map(|at| (at, Rebind::DestinationPort)),
            ),
        ] {
            let events = Events {
                blackouts: blackouts.clone(),
                rebind,
                early_loss: spec.early_loss,
                cut_port: spec.cut_port,
                udp_blocked: udp_blocked.clone(),
                rate_steps: rate_steps.clone(),
            };
            tokio::spawn(forward(from, to, dir, events, start, counts, stop.clone()));
        }
        if let Some(at) = spec.address_change_at {
            let ns = ns_a.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep_until(start + at) => {
                        let old = format!("{ADDR_A}{PREFIX}");
                        let new = format!("{ADDR_A_NEW}{PREFIX}");
                        let _ = run(&["ip", "-n", &ns, "addr", "del", &old, "dev", TUN]);
                        let _ = run(&["ip", "-n", &ns, "addr", "add", &new, "dev", TUN]);
                        tracing::info!("link: pusher address changed {ADDR_A} -> {ADDR_A_NEW}");
                    }
                }
            });
        }
        Ok(Link {
            ns_a,
            ns_b,
            up,
            down,
            started_ns,
            stop,
        })
    }

    /// A one-line summary of both directions' counts.
    pub fn summary(&self) -> String {
        let fmt = |c: CountsSnapshot| {
            format!(
                "sent {} lost {} queue-dropped {} blackout-dropped {}",
                c.sent, c.lost, c.queue_dropped, c.blackout_dropped
            )
        };
        format!(
            "up: {}; down: {}",
            fmt(self.up.snapshot()),
            fmt(self.down.snapshot())
        )
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.cancel();
        for ns in [&self.ns_a, &self.ns_b] {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

/// Per-direction loss state.
struct LossModel {
    spec: DirectionSpec,
    bad: bool,
}

impl LossModel {
    fn drop_packet(&mut self, rng: &mut impl Rng) -> bool {
        if let Some(ge) = self.spec.burst {
            let flip = if self.bad { ge.r } else { ge.p };
            if rng.random_bool(flip) {
                self.bad = !self.bad;
            }
            let p = if self.bad { ge.loss_bad } else { ge.loss_good };
            if rng.random_bool(p) {
                return true;
            }
        }
        self.spec.loss > 0.0 && rng.random_bool(self.spec.loss)
    }
}

/// Which port of UDP packets a NAT rebinding rewrites in a direction.
#[derive(Debug, Clone, Copy)]
enum Rebind {
    /// A → B: the source port.
    SourcePort,
    /// B → A: the destination port (back to what A bound).
    DestinationPort,
}

/// The timed events one direction applies.
#[derive(Debug, Clone)]
struct Events {
    blackouts: Arc<Vec<(Duration, Duration)>>,
    rebind: Option<(Duration, Rebind)>,
    early_loss: Option<(f64, Duration)>,
    cut_port: Option<(Duration, u16)>,
    udp_blocked: Arc<Vec<(Duration, Duration)>>,
    rate_steps: Arc<Vec<(Duration, u64)>>,
}

/// Whether `packet` is IPv4 UDP to or from `port`.
fn udp_port_is(packet: &[u8], port: u16) -> bool {
    if packet.len() < 20 || packet[0] >> 4 != 4 || packet[9] != 17 {
        return false;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    if packet.len() < ihl + 4 {
        return false;
    }
    let at = |i: usize| u16::from_be_bytes([packet[ihl + i], packet[ihl + i + 1]]);
    at(0) == port || at(2) == port
}

/// Whether `packet` is an IPv4 UDP datagram.
fn is_udp(packet: &[u8]) -> bool {
    packet.len() >= 20 && packet[0] >> 4 == 4 && packet[9] == 17
}

/// The port a rebinding NAT maps A's port to (and back: the map is its own inverse).
fn rebound(port: u16) -> u16 {
    port ^ 0x2000
}

/// Rewrites a UDP packet's port as `rebind` says; its checksum becomes 0 (none, valid in
/// IPv4). Other packets pass untouched.
fn rebind_udp(packet: &mut [u8], rebind: Rebind) {
    if packet.len() < 20 || packet[0] >> 4 != 4 || packet[9] != 17 {
        return;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    if packet.len() < ihl + 8 {
        return;
    }
    let at = match rebind {
        Rebind::SourcePort => ihl,
        Rebind::DestinationPort => ihl + 2,
    };
    let port = u16::from_be_bytes([packet[at], packet[at + 1]]);
    packet[at..at + 2].copy_from_slice(&rebound(port).to_be_bytes());
    packet[ihl + 6..ihl + 8].copy_from_slice(&[0, 0]);
}

async fn forward(
    from: Arc<AsyncFd<OwnedFd>>,
    to: Arc<AsyncFd<OwnedFd>>,
    spec: DirectionSpec,
    events: Events,
    start: Instant,
    counts: Arc<DirectionCounts>,
    stop: CancellationToken,
) {
    // The delay line: packets with their delivery times, never reordered. Bounded; a full delay
    // line drops like a full queue.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(DELAY_LINE_PACKETS);
    let writer_counts = counts.clone();
    let writer_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            let (at, packet) = tokio::select! {
                _ = writer_stop.cancelled() => return,
                next = rx.recv() => match next { Some(p) => p, None => return },
            };
            tokio::time::sleep_until(at).await;
            if write_packet(&to, &packet).await.is_ok() {
                writer_counts.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let mut loss = LossModel { spec, bad: false };
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut link_free_at = start;
    let mut last_delivery = start;
    let mut buf = vec![0u8; 65536];
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => return,
            n = read_packet(&from, &mut buf) => match n { Ok(n) => n, Err(_) => return },
        };
        let now = Instant::now();
        let since = now - start;
        if events
            .blackouts
            .iter()
            .any(|(at, len)| since >= *at && since < *at + *len)
            || events
                .cut_port
                .is_some_and(|(at, port)| since >= at && udp_port_is(&buf[..n], port))
            || (is_udp(&buf[..n])
                && events
                    .udp_blocked
                    .iter()
                    .any(|(at, len)| since >= *at && since < at.saturating_add(*len)))
        {
            counts.blackout_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let early_lost = events
            .early_loss
            .is_some_and(|(p, until)| since < until && rng.random::<f64>() < p);
        if early_lost || loss.drop_packet(&mut rng) {
            counts.lost.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let departure = match rate_at(&events.rate_steps, since, spec.rate_bps) {
            Some(rate) => {
                let begin = link_free_at.max(now);
                if begin - now > spec.queue {
                    counts.queue_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                link_free_at = begin + Duration::from_nanos(n as u64 * 8 * 1_000_000_000 / rate);
                link_free_at
            }
            None => now,
        };
        let jitter = if spec.jitter.is_zero() {
            Duration::ZERO
        } else {
            spec.jitter.mul_f64(rng.random::<f64>())
        };
        let delivery = (departure + spec.delay + jitter).max(last_delivery);
        last_delivery = delivery;
        let mut packet = buf[..n].to_vec();
        if let Some((at, rebind)) = events.rebind {
            if since >= at {
                rebind_udp(&mut packet, rebind);
            }
        }
        match tx.try_send((delivery, packet)) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                counts.queue_dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

/// One read(2) or write(2) on a non-blocking TUN descriptor, waiting until it is ready.
async fn tun_io(
    fd: &AsyncFd<OwnedFd>,
    interest: Interest,
    mut op: impl FnMut(libc::c_int) -> isize,
) -> std::io::Result<usize> {
    loop {
        let mut guard = fd.ready(interest).await?;
        let result = guard.try_io(|inner| {
            let n = op(inner.as_fd().as_raw_fd());
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        if let Ok(done) = result {
            return done;
        }
    }
}

async fn read_packet(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: reading into a buffer we own, at most its length.
    tun_io(fd, Interest::READABLE, |raw| unsafe {
        libc::read(raw, buf.as_mut_ptr().cast(), buf.len())
    })
    .await
}

async fn write_packet(fd: &AsyncFd<OwnedFd>, packet: &[u8]) -> std::io::Result<usize> {
    // SAFETY: writing a buffer we own, of its length.
    tun_io(fd, Interest::WRITABLE, |raw| unsafe {
        libc::write(raw, packet.as_ptr().cast(), packet.len())
    })
    .await
}

#[cfg(test)]
mod rate_step_tests {
    use super::*;

    #[test]
    fn the_rate_in_force_is_the_last_step_begun_else_the_directions_own() {
        let s = Duration::from_secs;
        let steps = [(s(6), 2_000_000), (s(12), 6_000_000)];
        assert_eq!(rate_at(&steps, s(0), Some(8_000_000)), Some(8_000_000));
        assert_eq!(rate_at(&steps, s(6), Some(8_000_000)), Some(2_000_000));
        assert_eq!(rate_at(&steps, s(11), None), Some(2_000_000));
        assert_eq!(rate_at(&steps, s(30), None), Some(6_000_000));
        assert_eq!(rate_at(&[], s(30), None), None);
    }
}
