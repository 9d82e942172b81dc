//! The emulator does what it is told: delay and rate within 10 %, loss within a binomial
//! tolerance, blackouts drop everything. Needs root (as CI is); fails loudly otherwise.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use rtmpq_bench::netem::{in_netns, DirectionSpec, Link, LinkSpec, ADDR_A, ADDR_B};

/// Timing assertions need a quiet machine: these tests run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn sockets(link: &Link, port: u16) -> (UdpSocket, UdpSocket) {
    let b = in_netns(&link.ns_b, || UdpSocket::bind((ADDR_B, port))).unwrap();
    let a = in_netns(&link.ns_a, || UdpSocket::bind((ADDR_A, 0))).unwrap();
    a.connect((ADDR_B, port)).unwrap();
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_matches_the_configured_value() {
    let _serial = SERIAL.lock().await;
    let spec = LinkSpec::symmetric(DirectionSpec {
        delay: Duration::from_millis(40),
        ..DirectionSpec::default()
    });
    let link = Link::start("rqtd", spec).await.unwrap();
    let (a, b) = sockets(&link, 7001);
    let rtts = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = b.recv_from(&mut buf) {
                let _ = b.send_to(&buf[..n], from);
            }
        });
        a.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut rtts = Vec::new();
        for i in 0..30u8 {
            let t = Instant::now();
            a.send(&[i; 32]).unwrap();
            let mut buf = [0u8; 64];
            a.recv(&mut buf).unwrap();
            rtts.push(t.elapsed());
        }
        rtts
    })
    .await
    .unwrap();
    let mut sorted = rtts.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2].as_secs_f64() * 1e3;
    assert!(
        (median - 80.0).abs() <= 8.0,
        "RTT {median:.1} ms, configured 80 ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_matches_the_configured_value() {
    let _serial = SERIAL.lock().await;
    let rate = 8_000_000u64;
    let spec = LinkSpec::symmetric(DirectionSpec {
        delay: Duration::from_millis(5),
        rate_bps: Some(rate),
        queue: Duration::from_millis(50),
        ..DirectionSpec::default()
    });
    let link = Link::start("rqtr", spec).await.unwrap();
    let (a, b) = sockets(&link, 7002);
    let (bytes, span) = tokio::task::spawn_blocking(move || {
        let receiver = std::thread::spawn(move || {
            b.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut buf = [0u8; 2048];
            let (mut bytes, mut first, mut last) = (0u64, None, Instant::now());
            while let Ok(n) = b.recv(&mut buf) {
                let now = Instant::now();
                // IP + UDP headers count on the link.
                if first.is_some() {
                    bytes += n as u64 + 28;
                }
                first.get_or_insert(now);
                last = now;
            }
            (bytes, last - first.unwrap())
        });
        // Offer about twice the link rate for 2 s.
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < Duration::from_secs(2) {
            let due = start + Duration::from_nanos(sent * 1228 * 8 * 1_000_000_000 / (2 * rate));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            a.send(&[7u8; 1200]).unwrap();
            sent += 1;
        }
        receiver.join().unwrap()
    })
    .await
    .unwrap();
    let measured = bytes as f64 * 8.0 / span.as_secs_f64();
    assert!(
        (measured - rate as f64).abs() <= rate as f64 * 0.10,
        "rate {measured:.0} bit/s, configured {rate}"
    );
    assert!(
        link.up.snapshot().queue_dropped > 0,
        "an overfull queue drops: {}",
        link.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_is_within_a_binomial_tolerance() {
    let _serial = SERIAL.lock().await;
    let p = 0.10;
    let spec = LinkSpec::symmetric(DirectionSpec {
        loss: p,
        ..DirectionSpec::default()
    });
    let link = Link::start("rqtl", spec).await.unwrap();
    let (a, b) = sockets(&link, 7003);
    let n = 3000u64;
    let received = tokio::task::spawn_blocking(move || {
        let receiver = std::thread::spawn(move || {
            b.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut buf = [0u8; 64];
            let mut got = 0u64;
            while b.recv(&mut buf).is_ok() {
                got += 1;
            }
            got
        });
        for i in 0..n {
            a.send(&i.to_be_bytes()).unwrap();
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        receiver.join().unwrap()
    })
    .await
    .unwrap();
    let lost = n - received;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (lost as f64 - n as f64 * p).abs() <= 4.0 * sigma,
        "lost {lost} of {n}, expected {:.0} ± {:.0}",
        n as f64 * p,
        4.0 * sigma
    );
    assert_eq!(link.up.snapshot().lost, lost, "{}", link.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackout_drops_everything() {
    let _serial = SERIAL.lock().await;
    let mut spec = LinkSpec::symmetric(DirectionSpec::default());
    spec.blackouts = vec![(Duration::from_millis(300), Duration::from_millis(1500))];
    let link = Link::start("rqtb", spec).await.unwrap();
    let (a, b) = sockets(&link, 7004);
    let started = Instant::now();
    let (sent_dark, received) = tokio::task::spawn_blocking(move || {
        let receiver = std::thread::spawn(move || {
            b.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut buf = [0u8; 64];
            let mut got = Vec::new();
            while started.elapsed() < Duration::from_millis(2600) {
                if let Ok(n) = b.recv(&mut buf) {
                    got.push(buf[..n].to_vec());
                }
            }
            got
        });
        // 400 ms into the link's life until 1.6 s: well inside the blackout.
        std::thread::sleep(Duration::from_millis(400).saturating_sub(started.elapsed()));
        let mut sent = 0u64;
        while started.elapsed() < Duration::from_millis(1600) {
            a.send(b"dark").unwrap();
            sent += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        // After the blackout the link works again.
        std::thread::sleep(Duration::from_millis(1900).saturating_sub(started.elapsed()));
        a.send(b"light").unwrap();
        (sent, receiver.join().unwrap())
    })
    .await
    .unwrap();
    assert!(sent_dark > 50);
    assert_eq!(
        received,
        vec![b"light".to_vec()],
        "only the packet after the blackout arrives"
    );
    assert_eq!(
        link.up.snapshot().blackout_dropped,
        sent_dark,
        "{}",
        link.summary()
    );
}
