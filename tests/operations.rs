//! Operating rtmpq: metrics and the status API during a real push, the Grafana dashboard against
//! a real scrape, and SIGTERM draining a gateway process while nginx-rtmp watches.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use rtmpq_edge::{Edge, EdgeConfig};
use rtmpq_gateway::{Gateway, GatewayConfig};
use serde_json::Value;

use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(60);

/// Polls `GET path` on `addr` until `pick` finds what it wants in the JSON.
async fn poll_json<T>(addr: SocketAddr, path: &str, pick: impl Fn(&Value) -> Option<T>) -> T {
    let deadline = Instant::now() + LIMIT;
    loop {
        let body = http_get(addr, path).await;
        let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if let Some(found) = pick(&json) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never showed what was expected: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn session_named<'a>(json: &'a Value, stream: &str) -> Option<&'a Value> {
    json.as_array()?.iter().find(|s| s["stream"] == stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_status_api_during_a_real_push() {
    capture_logs();
    let clip = clip(10).await;
    let pushed = framemd5_of(&clip).await;
    let pushed_bps = (pushed
        .video
        .iter()
        .chain(&pushed.audio)
        .map(|p| p.size)
        .sum::<u64>()
        * 8) as f64
        / 10.0;
    let nginx = Nginx::start().await;
    let state = tempfile::tempdir().unwrap();
    let gateway = Gateway::bind(GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        origin: Some(format!("rtmp://{}", nginx.rtmp)),
        state_dir: state.path().to_owned(),
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        ..GatewayConfig::default()
    })
    .await
    .unwrap();
    let gateway_metrics = gateway.metrics_addr().unwrap();
    let edge = Edge::bind(EdgeConfig {
        pin: Some(gateway.pin().to_string()),
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        ..edge_config(gateway.local_addr())
    })
    .await
    .unwrap();
    let edge_metrics = edge.metrics_addr().unwrap();
    let edge_rtmp = edge.local_addr();
    let shutdown = CancellationToken::new();
    tokio::spawn(gateway.run(shutdown.clone()));
    tokio::spawn(edge.run(shutdown.clone()));

    let url = format!("rtmp://{edge_rtmp}/live/metered?key=s3cret");
    let push = {
        let clip = clip.clone();
        tokio::spawn(async move { push(&clip, &url).await })
    };

    // Six seconds into the push the session is listed with its app, stream and figures.
    let session = poll_json(edge_metrics, "/api/v1/sessions", |j| {
        session_named(j, "metered")
            .filter(|s| s["duration_seconds"].as_f64() >= Some(6.0))
            .cloned()
    })
    .await;
    assert_eq!(session["app"], "live");
    assert_eq!(session["direction"], "publish");
    let bitrate = session["bitrate_bps"].as_f64().unwrap();
    assert!(
        (bitrate - pushed_bps).abs() <= pushed_bps * 0.10,
        "edge bitrate {bitrate:.0} bit/s vs pushed {pushed_bps:.0} bit/s"
    );
    let frames = session["video_frames"].as_u64().unwrap();
    assert!(
        frames > 0 && frames <= pushed.video.len() as u64,
        "{session}"
    );
    let gateway_session = poll_json(gateway_metrics, "/api/v1/sessions", |j| {
        session_named(j, "metered").cloned()
    })
    .await;
    assert_eq!(gateway_session["app"], "live");

    let connection = poll_json(edge_metrics, "/api/v1/connections", |j| {
        j.as_array()?.first().cloned()
    })
    .await;
    assert!(
        connection["rtt_seconds"].as_f64().unwrap() > 0.0,
        "{connection}"
    );
    // One connection made, nothing recovered yet; the session never lost anything.
    let events = poll_json(edge_metrics, "/api/v1/events", |j| {
        j.get("reconnects").map(|_| j.clone())
    })
    .await;
    assert_eq!(events["sessions_set_up_again"], 0, "{events}");
    assert_eq!(events["failovers"], 0, "{events}");
    assert_eq!(session["set_up_again"], 0, "{session}");
    assert_eq!(session["last_loss"], "", "{session}");

    let scrape = http_get(edge_metrics, "/metrics").await;
    let rtt = sample(&scrape, "rtmpq_quic_rtt_seconds", &["role=\"edge\""]).expect("rtt metric");
    assert!(rtt > 0.0, "rtt {rtt}");
    let gauge = sample(
        &scrape,
        "rtmpq_session_bitrate_bits_per_second",
        &["role=\"edge\"", "stream=\"metered\""],
    )
    .expect("bitrate gauge");
    assert!(
        (gauge - pushed_bps).abs() <= pushed_bps * 0.10,
        "bitrate gauge {gauge:.0} vs pushed {pushed_bps:.0}"
    );
    assert!(
        !scrape.contains("s3cret"),
        "the stream key's secret leaked into metrics"
    );

    let out = push.await.unwrap();
    assert!(
        out.status.success(),
        "pusher failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // When the session has ended, the frame counters equal the frames pushed, at both hops.
    let deadline = Instant::now() + LIMIT;
    loop {
        let scrape = http_get(gateway_metrics, "/metrics").await;
        let counts: Vec<Option<f64>> = ["edge", "gateway"]
            .iter()
            .map(|role| {
                sample(
                    &scrape,
                    "rtmpq_session_video_frames_total",
                    &[&format!("role=\"{role}\""), "stream=\"metered\""],
                )
            })
            .collect();
        if counts.iter().all(|c| *c == Some(pushed.video.len() as f64)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "frame counters {counts:?} never reached {}:\n{}",
            pushed.video.len(),
            scrape
                .lines()
                .filter(|l| !l.starts_with("#"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A refused edge makes the handshake failure series exist, then every metric the Grafana
    // dashboard queries must be in a real scrape.
    start_edge(
        EdgeConfig {
            pin: Some(format!("sha256:{}", "11".repeat(32))),
            ..edge_config(connection_gateway(&connection))
        },
        &shutdown,
    )
    .await;
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/rtmpq-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if token.starts_with("rtmpq_") {
                    used.insert(token.to_owned());
                }
            }
        }
    }
    assert!(used.len() >= 15, "dashboard uses {used:?}");
    let deadline = Instant::now() + LIMIT;
    loop {
        let scrape = http_get(gateway_metrics, "/metrics").await;
        let exported: BTreeSet<String> = scrape
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
            .collect();
        let missing: Vec<&String> = used.difference(&exported).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard queries metrics the code does not export: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shutdown.cancel();
}

/// The gateway address an edge's connection reports as its peer.
fn connection_gateway(connection: &Value) -> SocketAddr {
    connection["peer"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_gateway_and_nginx_sees_the_publisher_leave() {
    capture_logs();
    let clip = clip(30).await;
    let nginx = Nginx::start().await;
    let grace = Duration::from_millis(2000);
    let GatewayProcess {
        process: mut gateway,
        addr: gateway_addr,
        pin,
        ..
    } = GatewayProcess::start(&[
        "--origin",
        &format!("rtmp://{}", nginx.rtmp),
        "--shutdown-grace",
        &grace.as_millis().to_string(),
    ])
    .await;

    let shutdown = CancellationToken::new();
    let edge = start_edge(
        EdgeConfig {
            pin: Some(pin),
            ..edge_config(gateway_addr)
        },
        &shutdown,
    )
    .await;
    let url = format!("rtmp://{edge}/live/drain");
    let pusher = tokio::spawn(async move { push(&clip, &url).await });
    nginx.wait_for_publisher("drain", true, LIMIT).await;

    let signalled = Instant::now();
    let pid = gateway.pid().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(grace + Duration::from_secs(8), gateway.child.wait())
        .await
        .expect("gateway did not exit after SIGTERM")
        .unwrap();
    let took = signalled.elapsed();
    assert!(status.success(), "gateway exit status {status}");
    assert!(
        took >= grace,
        "the gateway did not wait for the grace period: {took:?}"
    );
    // A bound where a miss means a defect, not load: past its grace the gateway ends every
    // session and flushes its few goodbye messages to nginx on loopback (milliseconds; the
    // flush itself is cut at 5 s), so 4 s of margin covers a loaded machine, and a drain that
    // waits on something unbounded misses it.
    assert!(
        took <= grace + Duration::from_secs(4),
        "shutdown took {took:?}"
    );
    nginx
        .wait_for_publisher("drain", false, Duration::from_secs(10))
        .await;

    let out = tokio::time::timeout(Duration::from_secs(15), pusher)
        .await
        .expect("the pusher was not told the session ended")
        .unwrap();
    assert!(
        !out.status.success(),
        "the pusher's session ended early, so ffmpeg reports an error"
    );
    let log = gateway.lines_so_far().join("\n");
    assert!(log.contains("grace period over"), "{log}");
    assert!(log.contains("gateway shutting down"), "{log}");
    shutdown.cancel();
}
