//! The QUIC interop runner's cases that apply to us, and a flood, each on the link emulator with
//! a real ffmpeg push through a real edge and gateway to real nginx (`rtmpq bench`, 12 s clips):
//! a handshake under 30 % loss, a path blackholing 5 s of every 7, a NAT rebinding the edge's
//! port, the edge's address changing, and a bounded flood at the gateway's port (sent from the
//! gateway's side, so it does not fill the pusher's uplink). Each push must finish. Needs root
//! (CI is).

mod rtmpq_run;

use rtmpq_run::run_rtmpq;
use std::path::Path;

/// The gateway's resident memory stays under this through the flood (the README states it).
const FLOOD_RSS_BOUND: f64 = 128.0 * 1024.0 * 1024.0;

fn log(out: &Path, profile: &str, name: &str) -> String {
    std::fs::read_to_string(out.join(format!("logs/{profile}-rtmpq/{name}.log")))
        .unwrap_or_default()
}

#[test]
fn every_interop_case_and_a_flood_leave_the_push_alive() {
    let profiles = [
        "handshake-loss30",
        "blackhole-cycles",
        "nat-rebinding",
        "address-change",
        "flood",
    ];
    let profile_list = profiles.join(",");
    let (stdout, json, out) = run_rtmpq(
        &[
            "bench",
            "--duration",
            "12",
            "--transports",
            "rtmpq",
            "--directions",
            "publish",
            "--profiles",
            &profile_list,
        ],
        "bench-interop",
        "results.json",
    );
    let runs = json["runs"].as_array().unwrap();
    for profile in profiles {
        let r = runs
            .iter()
            .find(|r| r["profile"] == profile)
            .unwrap_or_else(|| panic!("no result for {profile}: {stdout}"));
        assert_eq!(
            r["pusher_survived"], true,
            "{profile}: the push died: {stdout}"
        );
        assert!(
            r["frames_received"].as_u64().unwrap() > 0,
            "{profile}: nothing arrived"
        );
        assert_eq!(
            r["decode_errors"], 0,
            "{profile}: what arrived does not decode"
        );
    }

    // The path really moved: the gateway saw the edge's port, then its address, change.
    let rebound = log(&out, "nat-rebinding", "gateway");
    let moved = rebound
        .lines()
        .find(|l| l.contains("peer address changed"))
        .unwrap_or_else(|| panic!("no rebinding seen by the gateway:\n{rebound}"));
    assert!(moved.matches("198.18.0.1:").count() == 2, "{moved}");
    let changed = log(&out, "address-change", "gateway");
    assert!(
        changed
            .lines()
            .any(|l| l.contains("peer address changed") && l.contains("198.18.0.3:")),
        "no address change seen by the gateway:\n{changed}"
    );
    // The edge saw its own address change and told the gateway at once, not at its next
    // keep-alive.
    let edge = log(&out, "address-change", "edge");
    assert!(
        edge.lines()
            .any(|l| l.contains("this end's address changed") && l.contains("198.18.0.3")),
        "the edge did not notice its address change:\n{edge}"
    );

    let flood = runs.iter().find(|r| r["profile"] == "flood").unwrap();
    let report = &flood["flood"];
    assert_eq!(report["wrong_alpn_accepted"], 0, "{report}");
    assert!(
        report["wrong_alpn_refused"].as_u64().unwrap() >= 1000,
        "{report}"
    );
    // Every wrong token was closed, or its handshake refused by a limit first.
    let closed = report["bad_hellos_closed"].as_u64().unwrap();
    let not_connected = report["bad_hellos_not_connected"].as_u64().unwrap();
    assert!(closed + not_connected >= 1000 && closed >= 500, "{report}");
    assert!(
        report["half_open_sent"].as_u64().unwrap() >= 1000,
        "{report}"
    );
    let refusals = &flood["server_refusals"];
    let count = |key: &str| refusals[key].as_f64().unwrap_or(0.0);
    // Each refused handshake is counted once, by why: a wrong ALPN (tls), a wrong token, or
    // a limit reached first (the flood comes from one address).
    // (A few the flooder gave up on under the load time out at the gateway: `timeout`.)
    let refused = [
        "tls",
        "unauthorized_connect",
        "address_limit",
        "address_pending_limit",
        "pending_limit",
        "timeout",
    ]
    .iter()
    .map(|k| count(k))
    .sum::<f64>();
    assert!(refused >= 2000.0, "refusals not counted: {refusals}");
    assert!(
        count("tls") >= 500.0 && count("unauthorized_connect") >= 500.0,
        "{refusals}"
    );
    assert!(
        count("retries") > 0.0,
        "no Retry under the flood: {refusals}"
    );
    let rss = flood["server_rss_peak_bytes"].as_f64().unwrap();
    assert!(
        rss < FLOOD_RSS_BOUND,
        "the gateway grew to {:.0} MiB under the flood",
        rss / 1048576.0
    );
}
