//! The short soak (`rtmpq soak --short`: 50 sessions of built-in publishers and players
//! through one edge and one gateway to a real nginx for 90 s) runs in CI and prints its
//! figures. It asserts what must hold however loaded the machine is: every session ends
//! normally at both hops, every publisher finishes, every frame arrives or was dropped by a
//! hop that counted it, and descriptors come back to where they were; the ≤ 5 % memory growth
//! target is the full soak's figure (BENCHMARKS.md), here only a leak would fail it. Lateness
//! and budget drops are printed, and drops bounded loosely, not asserted to be nil: the soak
//! drives a debug build with 50 sessions, nginx and 100 clients on two cores, where a frame
//! more than 500 ms late on loopback says how loaded the machine was, not a defect, and a GOP
//! tail that waited there half the 1 s budget with a newer key frame behind it is dropped,
//! as the budget says it must be (CI lost 10 to 394 of 135 050 frames that way).

mod rtmpq_run;

use rtmpq_run::run_rtmpq;

use serde_json::Value;

#[test]
fn fifty_sessions_for_ninety_seconds_end_normally_with_flat_descriptors() {
    let (stdout, r, _) = run_rtmpq(&["soak", "--short"], "soak-short", "soak.json");
    let sessions = r["sessions"].as_f64().unwrap();
    assert_eq!(sessions, 50.0);
    assert_eq!(r["published"].as_f64().unwrap(), sessions, "{stdout}");
    eprintln!(
        "soak: {} frames late beyond the bound on loopback (a figure of the machine's load)",
        r["late_frames"]
    );
    let (sent, received) = (
        r["frames_sent"].as_u64().unwrap(),
        r["frames_received"].as_u64().unwrap(),
    );
    assert!(sent > 50 * 80 * 30, "{stdout}");
    let dropped = soak_dropped(&r);
    eprintln!(
        "soak: {dropped} video frames dropped by the hops' budget (a figure of the machine's load)"
    );
    let missed = sent.saturating_sub(received);
    assert!(
        missed <= dropped,
        "{missed} frames missed and only {dropped} counted as dropped: frames lost on loopback: {stdout}"
    );
    assert!(
        dropped * 50 <= sent,
        "over 2 % of the frames dropped on loopback: the budget misjudges a fast path: {stdout}"
    );
    for hop in r["ended"].as_array().unwrap() {
        let (name, reasons) = (&hop[0], hop[1].as_object().unwrap());
        assert_eq!(
            reasons.get("normal").and_then(Value::as_f64),
            Some(sessions),
            "{name}: {reasons:?}"
        );
        assert_eq!(
            reasons.len(),
            1,
            "{name} ended sessions otherwise: {reasons:?}"
        );
    }
    for fds in r["fds"].as_array().unwrap() {
        let (start, end) = (fds[1].as_u64().unwrap(), fds[2].as_u64().unwrap());
        assert!(
            end <= start + 2,
            "{} descriptors grew {start} -> {end}",
            fds[0]
        );
    }
    for growth in r["rss_growth"].as_array().unwrap() {
        let g = growth[1].as_f64().unwrap();
        assert!(
            g < 0.25,
            "{} memory grew {:.1} % in 60 s",
            growth[0],
            g * 100.0
        );
    }
}

/// Video frames the hops counted as dropped (both hops, every reason).
fn soak_dropped(r: &Value) -> u64 {
    let total: f64 = r["dropped_video"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|hop| hop[1].as_object().unwrap().values())
        .map(|v| v.as_f64().unwrap())
        .sum();
    total as u64
}
