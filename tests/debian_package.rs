//! The Debian package (scripts/build-deb.sh) on this machine: it installs with `dpkg -i`
//! (the `rtmpq` user, /var/lib/rtmpq owner-only, certificates with owner-only keys), its units
//! pass `systemd-analyze verify`, a gateway started from the installed config as the `rtmpq`
//! user carries a real ffmpeg push to nginx byte-exact, `dpkg -r` keeps the configs, keys and
//! state, and `dpkg -P` removes them. Needs root (CI is).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(90);

/// Runs `program args`, asserting it succeeds; its stdout and stderr.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?}: {text}");
    text
}

/// The mode bits and owner of `path`.
fn mode_and_owner(path: &str) -> (u32, u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (meta.permissions().mode() & 0o777, meta.uid())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debian_package_installs_serves_a_push_from_its_config_and_removes_cleanly() {
    capture_logs();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let deb = run(
        root.join("scripts/build-deb.sh").to_str().unwrap(),
        &["--binary", env!("CARGO_BIN_EXE_rtmpq")],
    );
    let deb = deb
        .lines()
        .rfind(|l| l.starts_with('/') && l.ends_with(".deb"))
        .expect("the script prints the package's path")
        .to_owned();
    // A package left by an earlier run goes first.
    let _ = Command::new("dpkg").args(["-P", "rtmpq"]).output();

    let installed = run("dpkg", &["-i", &deb]);
    let version = run("/usr/bin/rtmpq", &["--version"]);
    assert!(version.starts_with("rtmpq "), "{version}");
    let units = [
        "/lib/systemd/system/rtmpq-gateway.service",
        "/lib/systemd/system/rtmpq-edge.service",
    ];
    let verified = run("systemd-analyze", &["verify", units[0], units[1]]);
    assert!(verified.trim().is_empty(), "{verified}");
    let uid: u32 = run("id", &["-u", "rtmpq"]).trim().parse().unwrap();
    assert_eq!(mode_and_owner("/var/lib/rtmpq"), (0o700, uid));
    assert_eq!(mode_and_owner("/etc/rtmpq/gateway.key"), (0o600, uid));
    assert_eq!(mode_and_owner("/etc/rtmpq/gateway.toml").0, 0o640);
    // The pin install printed is the installed certificate's.
    let pin = installed
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .expect("install says the pin")
        .to_owned();
    let cert = rtmpq_certs::load_certs(Path::new("/etc/rtmpq/gateway.pem")).unwrap();
    assert_eq!(rtmpq_certs::Fingerprint::of(&cert[0]).to_string(), pin);

    // A gateway from the installed config, as the service runs it (its user); flags put it
    // on free ports and in front of this test's nginx.
    let clip = clip(6).await;
    let pushed = framemd5_of(&clip).await;
    let nginx = Nginx::start().await;
    let origin = format!("rtmp://{}", nginx.rtmp);
    // The operator's one edit before starting it: a real token for the example's edge.
    let token = format!("deb-test-{}", rand_id());
    let config = std::fs::read_to_string("/etc/rtmpq/gateway.toml").unwrap();
    let config = config.replace("change-me-to-a-long-random-string", &token);
    std::fs::write("/etc/rtmpq/gateway.toml", config).unwrap();
    let gid: u32 = run("id", &["-g", "rtmpq"]).trim().parse().unwrap();
    let mut command = tokio::process::Command::new("/usr/bin/rtmpq");
    command.uid(uid).gid(gid).arg("gateway");
    command.args([
        "--config",
        "/etc/rtmpq/gateway.toml",
        "--listen",
        "127.0.0.1:0",
    ]);
    command.args(["--origin", &origin, "--metrics", "127.0.0.1:0"]);
    let mut gateway = Process::spawn(command);
    let ready = gateway.wait_for("gateway ready").await;
    let gateway_addr = field(&ready, "listen");
    let edge_dir = tempfile::tempdir().unwrap();
    let edge_config = write_config(
        edge_dir.path(),
        &format!(
            "gateway = \"{gateway_addr}\"\npin = \"{pin}\"\ntoken = \"{token}\"\nlisten = \"127.0.0.1:0\"\n"
        ),
    );
    let mut edge = Process::start(&["edge", "--config", &edge_config]);
    let edge_ready = edge.wait_for("edge ready").await;
    let edge_addr = field(&edge_ready, "listen");
    let player = Player::start(&format!("rtmp://{}/live/studio-a-deb", nginx.rtmp));
    nginx.wait_for_players("studio-a-deb", 1, LIMIT).await;
    push_ok(&clip, &format!("rtmp://{edge_addr}/live/studio-a-deb")).await;
    let played = player.finish(pushed.len(), LIMIT).await;
    assert_same_packets(&pushed, &played, "push through the packaged gateway");
    // The gateway as its user kept its state where the package put it, owner-only.
    assert_eq!(mode_and_owner("/var/lib/rtmpq/reset.key"), (0o600, uid));
    drop(edge);
    drop(gateway);

    // Removed: the program goes, configs, keys and state stay.
    run("dpkg", &["-r", "rtmpq"]);
    assert!(!Path::new("/usr/bin/rtmpq").exists());
    for kept in [
        "/etc/rtmpq/gateway.toml",
        "/etc/rtmpq/gateway.key",
        "/var/lib/rtmpq/reset.key",
    ] {
        assert!(Path::new(kept).exists(), "{kept} went with dpkg -r");
    }
    // Purged: they go too.
    run("dpkg", &["-P", "rtmpq"]);
    for gone in ["/etc/rtmpq", "/var/lib/rtmpq"] {
        assert!(!Path::new(gone).exists(), "{gone} stayed after dpkg -P");
    }
}
