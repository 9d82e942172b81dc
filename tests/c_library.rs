//! The edge as a C library: a C program (edge-ffi/tests/push_app.c, built here with
//! AddressSanitizer against `librtmpqedge.a` and the cbindgen header) starts an edge through
//! the C API, a real ffmpeg pushes through it to a gateway and a real nginx-rtmp byte-exact,
//! the program reads the edge's figures and events, stops it, and exits without a leak.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(90);

/// Builds the C program against the static library cargo built for this test.
fn build_c_program() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // This test is target/<profile>/deps/c_library-HASH; the library, built as its
    // dependency, is beside it (a top-level build puts it in target/<profile>).
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    let library = [deps.clone(), deps.parent().unwrap().to_owned()]
        .map(|dir| dir.join("librtmpqedge.a"))
        .into_iter()
        .find(|a| a.exists())
        .unwrap_or_else(|| panic!("librtmpqedge.a was not built beside {}", deps.display()));
    let program = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("push_app");
    let out = std::process::Command::new("cc")
        .args(["-fsanitize=address", "-g", "-Wall", "-Werror", "-I"])
        .arg(root.join("edge-ffi/include"))
        .arg(root.join("edge-ffi/tests/push_app.c"))
        .arg(&library)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&program)
        .output()
        .expect("a C compiler (cc)");
    assert!(
        out.status.success(),
        "the C program did not build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    program
}

/// The C program's next line of output.
async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(LIMIT, lines.next_line())
        .await
        .expect("the C program answers")
        .unwrap()
        .expect("the C program ended early")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c_program_carries_a_push_through_the_edge_library_byte_exact_and_stops_clean() {
    capture_logs();
    let program = tokio::task::spawn_blocking(build_c_program).await.unwrap();
    let clip = clip(8).await;
    let pushed = framemd5_of(&clip).await;
    let nginx = Nginx::start().await;
    let (gateway, _state) = local_gateway(Some(format!("rtmp://{}", nginx.rtmp))).await;
    let config = format!(
        "gateway = \"{}\"\npin = \"{}\"\nlisten = \"127.0.0.1:0\"\n",
        gateway.local_addr(),
        gateway.pin()
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(gateway.run(shutdown.clone()));

    let mut app = tokio::process::Command::new(&program)
        .arg(&config)
        .env("ASAN_OPTIONS", "detect_leaks=1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut to_app = app.stdin.take().unwrap();
    let mut lines = BufReader::new(app.stdout.take().unwrap()).lines();
    let refused = next_line(&mut lines).await;
    assert!(refused.starts_with("refused config:"), "{refused}");
    let url = next_line(&mut lines).await;
    let url = url.strip_prefix("url ").expect("the edge's URL").to_owned();

    let player = Player::start(&format!("rtmp://{}/live/ccam", nginx.rtmp));
    nginx.wait_for_players("ccam", 1, LIMIT).await;
    let push_url = format!("{url}/live/ccam");
    let pusher = tokio::spawn(async move { push_ok(&clip, &push_url).await });
    // The figures while the push runs: connected, one session, media flowing.
    let deadline = std::time::Instant::now() + LIMIT;
    let figures = loop {
        to_app.write_all(b"figures\n").await.unwrap();
        let figures = next_line(&mut lines).await;
        let bitrate: f64 = field(&figures, "bitrate_bps").parse().unwrap();
        if figures.contains("connected=1 sessions=1") && bitrate > 0.0 {
            break figures;
        }
        if pusher.is_finished() {
            pusher.await.unwrap();
            panic!("the push ended before the figures showed it: {figures}");
        }
        assert!(std::time::Instant::now() < deadline, "{figures}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("{figures}");
    pusher.await.unwrap();
    let played = player.finish(pushed.len(), LIMIT).await;
    assert_same_packets(&pushed, &played, "push through the edge library");

    // The events: connected, the session's start and its normal end (looked for every
    // 200 ms by the library).
    let mut events = Vec::new();
    while !events
        .iter()
        .any(|e: &String| e.contains("\"event\":\"session_ended\""))
    {
        assert!(std::time::Instant::now() < deadline, "{events:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        to_app.write_all(b"events\n").await.unwrap();
        loop {
            let line = next_line(&mut lines).await;
            if line == "end" {
                break;
            }
            events.push(line);
        }
    }
    assert!(events[0].contains("\"event\":\"connected\""), "{events:#?}");
    assert!(
        events
            .iter()
            .any(|e| e.contains("\"event\":\"session_started\"")),
        "{events:#?}"
    );
    let ended = events.iter().find(|e| e.contains("session_ended")).unwrap();
    assert!(
        ended.contains("\"stream\":\"ccam\"") && ended.contains("\"code\":\"normal\""),
        "{ended}"
    );
    // Stop: drained, and no leak (AddressSanitizer fails the exit on one).
    to_app.write_all(b"stop\n").await.unwrap();
    assert_eq!(next_line(&mut lines).await, "stopped");
    let status = tokio::time::timeout(LIMIT, app.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "the C program failed at stop: {status}");
    shutdown.cancel();
}
