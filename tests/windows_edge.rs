//! The Windows edge (`rtmpq.exe` for x86_64-pc-windows-gnu, built here by
//! `scripts/build-windows.sh --wine`) under wine: a real ffmpeg pushes through it to a Linux
//! gateway and a real nginx-rtmp, byte-exact; its status API and metrics answer; Ctrl-C drains
//! it as SIGTERM drains the Linux edge.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(90);

/// The wine build of the Windows edge, built by the script (it installs what it needs: Debian's
/// Rust, MinGW, wine) once for all the tests here. Fails loudly when it cannot be built.
async fn windows_edge() -> PathBuf {
    static BUILT: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();
    BUILT.get_or_init(build_windows_edge).await.clone()
}

async fn build_windows_edge() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let built = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let out = std::process::Command::new(root.join("scripts/build-windows.sh"))
            .arg("--wine")
            .output()
            .expect("scripts/build-windows.sh runs");
        assert!(
            out.status.success(),
            "the Windows edge did not build: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "{} ({:?})",
            String::from_utf8_lossy(&out.stdout).trim(),
            started.elapsed()
        );
        root.join("target/windows-wine")
    })
    .await
    .unwrap();
    built.join("rtmpq.exe")
}

/// `rtmpq.exe ARGS` under wine in `prefix`, to its end; its stdout.
fn wine_run(exe: &std::path::Path, prefix: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("wine")
        .arg(exe)
        .args(args)
        .env("WINEPREFIX", prefix)
        .env("WINEDEBUG", "-all")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rtmpq.exe {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_windows_exe_makes_certificates_and_reads_its_own_owner_only_keys() {
    let exe = windows_edge().await;
    let prefix = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path().display().to_string();
    let (exe2, prefix2) = (exe.clone(), prefix.path().to_owned());
    let pin = tokio::task::spawn_blocking(move || {
        let pin = wine_run(&exe2, &prefix2, &["certs", "init", "--dir", &dir]);
        // Signing an edge certificate reads the CA key back: the owner can read what was
        // created owner-only.
        let issued = wine_run(
            &exe2,
            &prefix2,
            &["certs", "edge", "--dir", &dir, "--name", "cam"],
        );
        assert!(issued.contains("cam"), "{issued}");
        pin
    })
    .await
    .unwrap();
    // The certificate the exe wrote is the one its pin names.
    let cert =
        rtmpq_certs::load_certs(&certs.path().join(rtmpq_certs::files::GATEWAY_CERT)).unwrap();
    let fingerprint = rtmpq_certs::Fingerprint::of(&cert[0]).to_string();
    assert_eq!(pin.trim(), fingerprint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_windows_edge_carries_a_push_to_nginx_byte_exact_under_wine() {
    capture_logs();
    let exe = windows_edge().await;
    let clip = clip(10).await;
    let pushed = framemd5_of(&clip).await;
    let nginx = Nginx::start().await;
    let (gateway, _state) = local_gateway(Some(format!("rtmp://{}", nginx.rtmp))).await;
    let gateway_addr = gateway.local_addr().to_string();
    let pin = gateway.pin().to_string();
    let shutdown = CancellationToken::new();
    tokio::spawn(gateway.run(shutdown.clone()));

    let prefix = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new("wine");
    command
        .arg(&exe)
        .args([
            "edge",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ])
        .args(["--gateway", &gateway_addr, "--pin", &pin])
        .env("WINEPREFIX", prefix.path())
        .env("WINEDEBUG", "-all");
    let mut edge = Process::spawn(command);
    let ready = edge.wait_for("edge ready").await;
    let listen = field(&ready, "listen");
    let metrics: std::net::SocketAddr = field(&ready, "metrics").parse().unwrap();

    let player = Player::start(&format!("rtmp://{}/live/wincam", nginx.rtmp));
    nginx.wait_for_players("wincam", 1, LIMIT).await;
    push_ok(&clip, &format!("rtmp://{listen}/live/wincam")).await;
    let played = player.finish(pushed.len(), LIMIT).await;
    assert_same_packets(&pushed, &played, "push through the windows edge under wine");

    // Its status API and metrics answer, with the session it carried.
    let ended = http_get(metrics, "/api/v1/sessions/ended").await;
    assert!(ended.contains("\"stream\":\"wincam\""), "{ended}");
    assert!(ended.contains("\"code\":\"normal\""), "{ended}");
    let scrape = http_get(metrics, "/metrics").await;
    let normal = sample(
        &scrape,
        "rtmpq_sessions_ended_total",
        &["role=\"edge\"", "reason=\"normal\""],
    );
    assert_eq!(normal, Some(1.0), "{scrape}");

    // Ctrl-C (wine turns SIGINT into the console's Ctrl-C event) drains and exits.
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &edge.pid().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    edge.wait_for("edge stopped").await;
    let exited = tokio::time::timeout(LIMIT, edge.child.wait()).await;
    assert!(
        matches!(exited, Ok(Ok(status)) if status.success()),
        "{exited:?}"
    );
    shutdown.cancel();
}
