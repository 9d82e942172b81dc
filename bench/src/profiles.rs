//! The link profiles `rtmpq bench` runs: the conditions live pushers meet on Wi-Fi and 4G.

use std::time::Duration;

use serde::Serialize;

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
    let mut blackout = lossy(50, 0.0, 10.0);
    blackout.blackouts = vec![(event_at, Duration::from_secs(3))];
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
    vec![
        Profile {
            name: "clean",
            description: "50 ms RTT, no loss, 100 Mbit/s".into(),
            link: lossy(50, 0.0, 100.0),
        },
        Profile {
            name: "loss1",
            description: "1 % random loss, 50 ms RTT, 10 Mbit/s".into(),
            link: lossy(50, 0.01, 10.0),
        },
        Profile {
            name: "loss2",
            description: "2 % random loss, 50 ms RTT, 10 Mbit/s".into(),
            link: lossy(50, 0.02, 10.0),
        },
        Profile {
            name: "loss5",
            description: "5 % random loss, 50 ms RTT, 10 Mbit/s".into(),
            link: lossy(50, 0.05, 10.0),
        },
        Profile {
            name: "loss1-rtt150",
            description: "1 % random loss, 150 ms RTT, 8 Mbit/s".into(),
            link: lossy(150, 0.01, 8.0),
        },
        Profile {
            name: "bursty",
            description: format!(
                "Gilbert-Elliott bursts (mean loss {:.1} %), 50 ms RTT, 10 Mbit/s",
                bursty.up.burst.expect("burst").mean_loss() * 100.0
            ),
            link: bursty,
        },
        Profile {
            name: "near-capacity",
            description: "stream at 75 % of the link rate, 200 ms queue, 50 ms RTT".into(),
            link: capacity(1.0 / 0.75, 200),
        },
        Profile {
            name: "under-capacity",
            description: "link at 80 % of the stream's bitrate, 200 ms queue, 50 ms RTT".into(),
            link: capacity(0.8, 200),
        },
        Profile {
            name: "blackout",
            description: format!(
                "3 s blackout at {} s, 50 ms RTT, 10 Mbit/s",
                event_at.as_secs()
            ),
            link: blackout,
        },
        Profile {
            name: "address-change",
            description: format!(
                "pusher address changes at {} s (old address removed), 50 ms RTT",
                event_at.as_secs()
            ),
            link: moved,
        },
    ]
}
