//! The link profiles `rtmpq bench` runs: the conditions live pushers meet on Wi-Fi and 4G.

use std::time::Duration;

use serde::Serialize;

use crate::bulk::BulkSpec;
use crate::flood::FloodSpec;
use crate::netem::{DirectionSpec, GilbertElliott, LinkSpec};

/// A named link.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// Short name used on the command line and in results.
    pub name: &'static str,
    /// What it models.
    pub description: String,
    /// The link.
    pub link: LinkSpec,
    /// Frames due in the first and the last this long are left out of the figures (the
    /// blackout profiles, so the start and end of a clip do not dilute the event).
    pub window: Option<(Duration, Duration)>,
    /// A process killed and started again during the run.
    pub restart: Option<Restart>,
    /// A flood at the gateway's port during the run.
    pub flood: Option<FloodSpec>,
    /// A second gateway (rtmpq only) the edge keeps as a warm standby; the link's
    /// `cut_port` cuts the first one off.
    pub second_gateway: bool,
    /// A bulk CUBIC TCP upload through the same bottleneck, the stream's way, for a span.
    pub bulk: Option<BulkSpec>,
}

/// A process the bench kills (SIGKILL) and starts again at `at` into the run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Restart {
    /// Which.
    pub what: Restarted,
    /// When, from the pusher's start.
    pub at: Duration,
}

/// What a [`Restart`] restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Restarted {
    /// The server end of the tunnel: `rtmpq gateway`, the QUIC pipe's server (nothing for TCP
    /// and SRT, which have none).
    Gateway,
    /// nginx-rtmp.
    Origin,
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn lossy(rtt_ms: u64, loss: f64, mbps: f64) -> LinkSpec {
    LinkSpec::symmetric(DirectionSpec {
        delay: ms(rtt_ms / 2),
        loss,
        rate_bps: Some((mbps * 1e6) as u64),
        queue: ms(100),
        ..DirectionSpec::default()
    })
}

/// Every profile, for a stream of `stream_kbps` (audio included) lasting `duration`.
pub fn all(stream_kbps: u32, duration: Duration) -> Vec<Profile> {
    let stream_bps = f64::from(stream_kbps) * 1e3;
    let event_at = duration / 3;
    // Blackouts at 15 s of a 40 s clip (3/8 of it), judged from 6 s to 2 s before the end.
    let blackout_at = duration * 3 / 8;
    let blackout_window = Some((Duration::from_secs(6), Duration::from_secs(2)));
    let dark = |secs: u64| {
        let mut link = lossy(50, 0.0, 10.0);
        link.blackouts = vec![(blackout_at, Duration::from_secs(secs))];
        link
    };
    let mut moved = lossy(50, 0.0, 10.0);
    moved.address_change_at = Some(event_at);
    let bursty = LinkSpec::symmetric(DirectionSpec {
        delay: ms(25),
        burst: Some(GilbertElliott {
            p: 0.01,
            r: 0.25,
            loss_good: 0.0,
            loss_bad: 0.5,
        }),
        rate_bps: Some(10_000_000),
        queue: ms(100),
        ..DirectionSpec::default()
    });
    let capacity = |factor: f64, queue_ms: u64| {
        LinkSpec::symmetric(DirectionSpec {
            delay: ms(25),
            rate_bps: Some((stream_bps * factor) as u64),
            queue: ms(queue_ms),
            ..DirectionSpec::default()
        })
    };
    let capacity_at = |bps: u64, queue_ms: u64| {
        LinkSpec::symmetric(DirectionSpec {
            delay: ms(25),
            rate_bps: Some(bps),
            queue: ms(queue_ms),
            ..DirectionSpec::default()
        })
    };
    let profile = |name: &'static str, description: String, link: LinkSpec| Profile {
        name,
        description,
        link,
        window: None,
        restart: None,
        flood: None,
        second_gateway: false,
        bulk: None,
    };
    let blackout = |name: &'static str, secs: u64| {
        Profile {
        name,
        description: format!(
            "{secs} s blackout at {} s, 50 ms RTT, 10 Mbit/s (judged from 6 s to 2 s before the end)",
            blackout_at.as_secs()
        ),
        link: dark(secs),
        window: blackout_window,
        restart: None,
        flood: None,
        second_gateway: false,
        bulk: None,
    }
    };
    vec![
        profile(
            "clean",
            "50 ms RTT, no loss, 100 Mbit/s".into(),
            lossy(50, 0.0, 100.0),
        ),
        profile(
            "loss1",
            "1 % random loss, 50 ms RTT, 10 Mbit/s".into(),
            lossy(50, 0.01, 10.0),
        ),
        profile(
            "loss2",
            "2 % random loss, 50 ms RTT, 10 Mbit/s".into(),
            lossy(50, 0.02, 10.0),
        ),
        profile(
            "loss5",
            "5 % random loss, 50 ms RTT, 10 Mbit/s".into(),
            lossy(50, 0.05, 10.0),
        ),
        profile(
            "loss1-rtt150",
            "1 % random loss, 150 ms RTT, 8 Mbit/s".into(),
            lossy(150, 0.01, 8.0),
        ),
        profile(
            "bursty",
            format!(
                "Gilbert-Elliott bursts (mean loss {:.1} %), 50 ms RTT, 10 Mbit/s",
                bursty.up.burst.expect("burst").mean_loss() * 100.0
            ),
            bursty.clone(),
        ),
        profile(
            "near-capacity",
            "stream at 75 % of the link rate, 200 ms queue, 50 ms RTT".into(),
            capacity(1.0 / 0.75, 200),
        ),
        profile(
            "under-capacity",
            "link at 80 % of the stream's bitrate, 200 ms queue, 50 ms RTT".into(),
            capacity(0.8, 200),
        ),
        profile(
            "under50",
            "link at 50 % of the stream's bitrate, 200 ms queue, 50 ms RTT".into(),
            capacity(0.5, 200),
        ),
        blackout("blackout", 3),
        blackout("blackout10", 10),
        blackout("blackout20", 20),
        Profile {
            restart: Some(Restart {
                what: Restarted::Gateway,
                at: duration / 2,
            }),
            ..profile(
                "gateway-restart",
                format!(
                    "the gateway (or the QUIC pipe's server) killed and started again at {} s, 50 ms RTT, 10 Mbit/s",
                    (duration / 2).as_secs()
                ),
                lossy(50, 0.0, 10.0),
            )
        },
        Profile {
            restart: Some(Restart {
                what: Restarted::Origin,
                at: duration / 2,
            }),
            ..profile(
                "origin-restart",
                format!(
                    "nginx killed and started again at {} s (its players reconnect), 50 ms RTT, 10 Mbit/s",
                    (duration / 2).as_secs()
                ),
                lossy(50, 0.0, 10.0),
            )
        },
        Profile {
            second_gateway: true,
            bulk: None,
            ..profile(
                "gateway-cutoff",
                format!(
                    "two gateways, the edge on the first with the second as a warm standby; the first one's host cut off at {} s for good, 50 ms RTT, 10 Mbit/s",
                    (duration / 2).as_secs()
                ),
                LinkSpec {
                    cut_port: Some((duration / 2, crate::harness::GATEWAY_PORT)),
                    ..lossy(50, 0.0, 10.0)
                },
            )
        },
        profile(
            "start-rtt20",
            "start-up: 20 ms RTT, no loss, 100 Mbit/s".into(),
            lossy(20, 0.0, 100.0),
        ),
        profile(
            "start-rtt150",
            "start-up: 150 ms RTT, no loss, 100 Mbit/s".into(),
            lossy(150, 0.0, 100.0),
        ),
        profile(
            "start-rtt250",
            "start-up: 250 ms RTT, no loss, 100 Mbit/s".into(),
            lossy(250, 0.0, 100.0),
        ),
        Profile {
            flood: Some(FloodSpec {
                at: duration / 4,
                wrong_alpn: 1000,
                bad_hellos: 1000,
                half_open: 2000,
                garbage: 20_000,
                concurrency: 64,
            }),
            ..profile(
                "flood",
                format!(
                    "as clean, and from {} s a flood at the gateway's port from beside it: 1000 wrong-ALPN handshakes, 1000 HELLOs with a wrong token, 2000 half-open Initials, 20000 garbage datagrams",
                    (duration / 4).as_secs()
                ),
                lossy(50, 0.0, 100.0),
            )
        },
        Profile {
            window: None,
            ..profile(
                "handshake-loss30",
                "30 % random loss both ways for the first 10 s (the edge's handshake and the start), then 50 ms RTT, 10 Mbit/s".into(),
                LinkSpec {
                    early_loss: Some((0.3, Duration::from_secs(10))),
                    ..lossy(50, 0.0, 10.0)
                },
            )
        },
        profile(
            "blackhole-cycles",
            "the path blackholes 5 s, then passes 2 s, over and over from 3 s, 50 ms RTT, 10 Mbit/s"
                .into(),
            LinkSpec {
                blackouts: (0..)
                    .map(|n| (Duration::from_secs(3 + 7 * n), Duration::from_secs(5)))
                    .take_while(|(at, _)| *at < duration)
                    .collect(),
                ..lossy(50, 0.0, 10.0)
            },
        ),
        profile(
            "nat-rebinding",
            format!(
                "a NAT rebinds the pusher side's UDP port at {} s (the old port gets nothing back), 50 ms RTT",
                event_at.as_secs()
            ),
            LinkSpec {
                rebind_at: Some(event_at),
                ..lossy(50, 0.0, 10.0)
            },
        ),
        profile(
            "address-change",
            format!(
                "pusher address changes at {} s (old address removed), 50 ms RTT",
                event_at.as_secs()
            ),
            moved,
        ),
        profile(
            "udp-blocked",
            format!(
                "every UDP packet dropped (TCP passes), Wi-Fi-like bursts (mean loss {:.1} %), 50 ms RTT, 10 Mbit/s",
                bursty.up.burst.expect("burst").mean_loss() * 100.0
            ),
            LinkSpec {
                udp_blocked: vec![(Duration::ZERO, Duration::MAX)],
                ..bursty.clone()
            },
        ),
        profile(
            "udp-dies",
            format!(
                "UDP dropped from {} s on (TCP passes), 50 ms RTT, 10 Mbit/s",
                (duration / 2).as_secs()
            ),
            LinkSpec {
                udp_blocked: vec![(duration / 2, Duration::MAX)],
                ..lossy(50, 0.0, 10.0)
            },
        ),
        profile(
            "udp-returns",
            format!(
                "UDP dropped for the first {} s, then passes (TCP always), 50 ms RTT, 10 Mbit/s",
                (duration / 3).as_secs()
            ),
            LinkSpec {
                udp_blocked: vec![(Duration::ZERO, duration / 3)],
                ..lossy(50, 0.0, 10.0)
            },
        ),
        Profile {
            name: "competing",
            description: format!(
                "6 Mbit/s, 300 ms queue, 50 ms RTT; a bulk CUBIC TCP upload the stream's way from {} s for {} s (judged while it runs)",
                (duration / 3).as_secs(),
                (duration / 2).as_secs()
            ),
            link: capacity_at(6_000_000, 300),
            // Judged while the upload runs: from a third of the run to a sixth before its end.
            window: Some((duration / 3, duration - duration / 3 - duration / 2)),
            restart: None,
            flood: None,
            second_gateway: false,
            bulk: Some(BulkSpec {
                at: duration / 3,
                length: duration / 2,
            }),
        },
        profile(
            "rate-steps",
            format!(
                "the link's rate steps 8 → 2 → 6 → 1.5 → 8 Mbit/s every {} s, 0.5 % loss, 300 ms queue, 50 ms RTT",
                (duration / 5).as_secs()
            ),
            LinkSpec {
                rate_steps: [2.0, 6.0, 1.5, 8.0]
                    .iter()
                    .enumerate()
                    .map(|(i, mbps)| (duration / 5 * (i as u32 + 1), (mbps * 1e6) as u64))
                    .collect(),
                ..LinkSpec::symmetric(DirectionSpec {
                    delay: ms(25),
                    loss: 0.005,
                    rate_bps: Some(8_000_000),
                    queue: ms(300),
                    ..DirectionSpec::default()
                })
            },
        ),
        profile(
            "udp-blocked-slow",
            "every UDP packet dropped (TCP passes), link at 80 % of the stream's bitrate, 200 ms queue, 50 ms RTT".into(),
            LinkSpec {
                udp_blocked: vec![(Duration::ZERO, Duration::MAX)],
                ..capacity(0.8, 200)
            },
        ),
    ]
}
