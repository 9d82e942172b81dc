//! The command line contract: `rtmpq demo`, `rtmpq certs`, and gateway/edge processes started
//! exactly as scripts start them.

use std::process::{Command, Stdio};

fn rtmpq() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rtmpq"))
}

#[test]
fn demo_runs_headless_and_reports_frames_delivered() {
    let out = rtmpq()
        .args(["demo", "--duration", "3", "--bitrate", "1500"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("frames delivered:"))
        .unwrap_or_else(|| panic!("no summary in {stdout}"));
    // "frames delivered: D of S video, ..."
    let words: Vec<&str> = summary.split_whitespace().collect();
    let delivered: u64 = words[2].parse().unwrap();
    let sent: u64 = words[4].parse().unwrap();
    assert!(
        sent >= 80,
        "3 s at 30 fps should send about 90 frames: {summary}"
    );
    assert_eq!(delivered, sent, "loopback loses nothing: {summary}");
    let per_second = stdout.lines().filter(|l| l.contains("Mbit/s")).count();
    assert!(per_second >= 2, "live figures each second: {stdout}");
}

#[test]
fn certs_init_prints_the_pin_and_edge_certs_are_signed() {
    let dir = tempfile::tempdir().unwrap();
    let out = rtmpq()
        .args(["certs", "init", "--dir"])
        .arg(dir.path())
        .args(["--san", "gw.example", "--san", "192.0.2.10"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let pin = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(pin.starts_with("sha256:") && pin.len() == 7 + 64, "{pin}");
    let identity = rtmpq_certs::Identity::load(
        &dir.path().join("gateway.pem"),
        &dir.path().join("gateway.key"),
    )
    .unwrap();
    assert_eq!(identity.fingerprint().to_string(), pin);

    let again = rtmpq()
        .args(["certs", "init", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success(), "init must not overwrite keys");

    let out = rtmpq()
        .args(["certs", "edge", "--dir"])
        .arg(dir.path())
        .args(["--name", "cam1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(dir.path().join("edge-cam1.pem").exists());
    assert!(dir.path().join("edge-cam1.key").exists());
}

#[test]
fn edge_without_trust_settings_explains_itself() {
    let out = rtmpq()
        .args([
            "edge",
            "--listen",
            "127.0.0.1:0",
            "--gateway",
            "127.0.0.1:4433",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ca") && err.contains("--pin"), "{err}");
}
