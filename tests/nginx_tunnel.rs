//! Real ffmpeg pushers and players through edge and gateway to a real nginx-rtmp: every packet
//! played equals the packet pushed, for video and audio.

mod common;

use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(90);

/// Pushes a clip through an edge (its config changed by `tweak`) and gateway to nginx under
/// `name`, a player reading it straight from nginx: every packet played equals the packet
/// pushed. Returns the stack, to look at its telemetry.
async fn push_byte_exact(
    seconds: u32,
    name: &str,
    tweak: impl FnOnce(rtmpq_edge::EdgeConfig) -> rtmpq_edge::EdgeConfig,
) -> (Stack, Nginx) {
    let clip = clip(seconds).await;
    let pushed = framemd5_of(&clip).await;
    let nginx = Nginx::start().await;
    let stack = Stack::start_with(Some(format!("rtmp://{}", nginx.rtmp)), tweak).await;
    let player = Player::start(&format!("rtmp://{}/live/{name}", nginx.rtmp));
    nginx.wait_for_players(name, 1, LIMIT).await;
    let out = push(&clip, &stack.edge_url(name)).await;
    assert!(
        out.status.success(),
        "pusher failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let played = player.finish(pushed.len(), LIMIT).await;
    assert_same_packets(
        &pushed,
        &played,
        &format!("push of {name} through the tunnel"),
    );
    nginx.wait_for_publisher(name, false, LIMIT).await;
    (stack, nginx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_push_through_the_tunnel_reaches_nginx_byte_exact() {
    capture_logs();
    let (stack, _nginx) = push_byte_exact(30, "cam", |c| c).await;
    // Both ends ran rtmpq's own congestion controller, the default.
    for (hop, telemetry) in [("edge", &stack.edge), ("gateway", &stack.gateway)] {
        let ended = ended_session(telemetry, hop, |s| s.session.stream == "cam").await;
        assert_eq!(ended.session.carrier, "quic", "{hop}: {ended:?}");
        assert_eq!(ended.session.congestion, "live", "{hop}: {ended:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_under_quinns_bbr_is_byte_exact_and_each_end_names_its_controller() {
    capture_logs();
    let (stack, _nginx) = push_byte_exact(20, "bbrcam", |c| rtmpq_edge::EdgeConfig {
        congestion: rtmpq_hop::transport::Congestion::Bbr,
        ..c
    })
    .await;
    // The edge chose BBR for what it sends; the gateway kept its own default.
    let ended = ended_session(&stack.edge, "edge", |s| s.session.stream == "bbrcam").await;
    assert_eq!(ended.session.congestion, "bbr", "{ended:?}");
    let ended = ended_session(&stack.gateway, "gateway", |s| s.session.stream == "bbrcam").await;
    assert_eq!(ended.session.congestion, "live", "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_play_through_the_tunnel_is_byte_exact() {
    capture_logs();
    let clip = clip(30).await;
    let pushed = framemd5_of(&clip).await;
    let nginx = Nginx::start().await;
    let stack = Stack::start(Some(format!("rtmp://{}", nginx.rtmp))).await;

    // Player through its own edge; pusher straight to nginx.
    let player = Player::start(&stack.edge_url("show"));
    nginx.wait_for_players("show", 1, LIMIT).await;
    let out = push(&clip, &format!("rtmp://{}/live/show", nginx.rtmp)).await;
    assert!(
        out.status.success(),
        "pusher failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let played = player.finish(pushed.len(), LIMIT).await;
    assert_same_packets(&pushed, &played, "play through the tunnel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_play_over_the_session_stream_carrier_are_byte_exact() {
    capture_logs();
    let clip = clip(20).await;
    let pushed = framemd5_of(&clip).await;
    let nginx = Nginx::start().await;
    let stack = Stack::start_with(Some(format!("rtmp://{}", nginx.rtmp)), |c| {
        rtmpq_edge::EdgeConfig {
            carrier: rtmpq_edge::config::MediaCarrier::Stream,
            ..c
        }
    })
    .await;

    // Media lanes are the default (the other tests); this one carries everything on the
    // session stream, both ways: the player plays through the edge, the pusher pushes through it.
    let player = Player::start(&stack.edge_url("onestream"));
    nginx.wait_for_players("onestream", 1, LIMIT).await;
    let out = push(&clip, &stack.edge_url("onestream")).await;
    assert!(
        out.status.success(),
        "pusher failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let played = player.finish(pushed.len(), LIMIT).await;
    assert_same_packets(&pushed, &played, "push and play over the session stream");
    nginx.wait_for_publisher("onestream", false, LIMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_pushes_share_one_edge_and_one_quic_connection() {
    capture_logs();
    let clip = clip(10).await;
    let pushed = framemd5_of(&clip).await;
    let nginx = Nginx::start().await;
    let stack = Stack::start(Some(format!("rtmp://{}", nginx.rtmp))).await;

    let names: Vec<String> = (0..8).map(|i| format!("multi{i}")).collect();
    let players: Vec<Player> = names
        .iter()
        .map(|n| Player::start(&format!("rtmp://{}/live/{n}", nginx.rtmp)))
        .collect();
    for n in &names {
        nginx.wait_for_players(n, 1, LIMIT).await;
    }
    let pushes = names.iter().map(|n| {
        let url = stack.edge_url(n);
        let clip = clip.clone();
        tokio::spawn(async move { push(&clip, &url).await })
    });
    for out in futures_join(pushes.collect()).await {
        assert!(
            out.status.success(),
            "pusher failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (player, name) in players.into_iter().zip(&names) {
        let played = player.finish(pushed.len(), LIMIT).await;
        assert_same_packets(&pushed, &played, name);
    }
    // Every session ended at the gateway under the same edge connection (`edge@IP:PORT`).
    let mut remotes = Vec::new();
    for n in &names {
        let ended = ended_session(&stack.gateway, n, |s| &s.session.stream == n).await;
        assert_eq!(ended.code, "normal", "{ended:?}");
        remotes.push(ended.session.peer);
    }
    remotes.dedup();
    assert_eq!(
        remotes.len(),
        1,
        "sessions came over several connections: {remotes:?}"
    );
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// nginx restarts under a live push through the tunnel: the gateway connects again and sets
/// the session up from what the pusher said; ffmpeg never notices and pushes its whole clip,
/// and a player that connects to the restarted nginx receives the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nginx_restart_under_a_push_is_not_noticed_by_the_pusher() {
    capture_logs();
    let clip = clip(20).await;
    let mut nginx = Nginx::start().await;
    let stack = Stack::start(Some(format!("rtmp://{}", nginx.rtmp))).await;
    let url = stack.edge_url("cam");
    let pusher = tokio::spawn(async move { push(&clip, &url).await });
    nginx.wait_for_publisher("cam", true, LIMIT).await;
    nginx.restart().await;
    // The restarted nginx has the publisher again, set up by the gateway (ffmpeg would have
    // failed, not reconnected).
    live_session(
        &stack.gateway,
        "set up again on the origin",
        set_up_again("cam"),
    )
    .await;
    nginx.wait_for_publisher("cam", true, LIMIT).await;
    let player = Player::start(&format!("rtmp://{}/live/cam", nginx.rtmp));
    let out = pusher.await.unwrap();
    assert!(
        out.status.success(),
        "the pusher noticed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let played = player.finish(30, LIMIT).await;
    assert!(
        played.video.len() >= 30,
        "the player on the restarted nginx got {} video packets",
        played.video.len()
    );
}

/// The gateway is killed (SIGKILL) under a live push to nginx and started again: the edge
/// sets the session up again through it, ffmpeg pushes its whole clip and exits 0, and a
/// player connected to nginx throughout receives the stream after the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restart_under_a_push_to_nginx_is_not_noticed_by_the_pusher() {
    capture_logs();
    let clip = clip(20).await;
    let pushed = framemd5_of(&clip).await;
    let nginx = Nginx::start().await;
    let origin = format!("rtmp://{}", nginx.rtmp);
    let mut stack = CrashableGateway::start(&origin).await;
    let edge = stack.edge;
    let player = Player::start(&format!("rtmp://{}/live/show", nginx.rtmp));
    nginx.wait_for_players("show", 1, LIMIT).await;
    let url = format!("rtmp://{edge}/live/show");
    let pusher = tokio::spawn(async move { push(&clip, &url).await });
    nginx.wait_for_publisher("show", true, LIMIT).await;
    stack.crash_and_restart().await;
    live_session(&stack.edge_status, "set up again", set_up_again("show")).await;
    // The restarted process has no resumption state: the edge's 0-RTT HELLO is refused and
    // said again in 1-RTT.
    hop_event(&stack.edge_status, "a refused 0-RTT HELLO", |e| {
        e.zero_rtt_refused >= 1
    })
    .await;
    let out = pusher.await.unwrap();
    assert!(
        out.status.success(),
        "the pusher noticed the gateway restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The outage costs the frames until the next key frame after the restart; the player
    // still gets most of the clip, which it cannot without frames from after the event.
    let most = pushed.video.len() * 6 / 10;
    let played = player
        .finish(pushed.video.len(), Duration::from_secs(5))
        .await;
    eprintln!(
        "player on nginx: {} of {} video packets across the gateway restart",
        played.video.len(),
        pushed.video.len()
    );
    assert!(
        played.video.len() >= most,
        "the player got {} of {} video packets",
        played.video.len(),
        pushed.video.len()
    );
    stack.shutdown.cancel();
}

/// Two gateways in front of nginx; the active one is killed under a live push and stays
/// dead: the edge notices it stopped acknowledging, moves the session to the other, and
/// ffmpeg pushes its whole clip; a player connected to nginx throughout gets the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_active_gateway_dies_the_other_takes_the_push() {
    failover_under_a_push(false).await;
}

/// As above with a warm standby: the edge holds a welcomed connection to the second gateway
/// before the first dies, and the session moves onto that connection (no new handshake).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_standby_the_failover_takes_the_warm_connection() {
    failover_under_a_push(true).await;
}

async fn failover_under_a_push(standby: bool) {
    capture_logs();
    let clip = clip(20).await;
    let pushed = framemd5_of(&clip).await;
    let nginx = Nginx::start().await;
    let origin = format!("rtmp://{}", nginx.rtmp);
    // Both gateways share a certificate (one cert dir), as a pool behind one name would.
    let mut first = GatewayProcess::start(&["--origin", &origin]).await;
    let shared_dir = first.dir.path().display().to_string();
    let second_state = tempfile::tempdir().unwrap();
    let second_state = second_state.path().display().to_string();
    let mut second = Process::start(&[
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--cert-dir",
        &shared_dir,
        "--state-dir",
        &second_state,
        "--origin",
        &origin,
    ]);
    let ready = second.wait_for("gateway ready").await;
    let second_addr = field(&ready, "listen");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (edge, edge_status) = spawn_edge(
        rtmpq_edge::EdgeConfig {
            pin: Some(first.pin.clone()),
            gateway: vec![first.addr.to_string(), second_addr.clone()],
            standby,
            ..edge_config(first.addr)
        },
        &shutdown,
    )
    .await;
    let player = Player::start(&format!("rtmp://{}/live/pool", nginx.rtmp));
    nginx.wait_for_players("pool", 1, LIMIT).await;
    let url = format!("rtmp://{edge}/live/pool");
    let pusher = tokio::spawn(async move { push(&clip, &url).await });
    nginx.wait_for_publisher("pool", true, LIMIT).await;
    assert!(
        first
            .process
            .lines_so_far()
            .iter()
            .any(|l| l.contains("edge connected")),
        "the first gateway answered first"
    );
    if standby {
        hop_event(&edge_status, "a standby ready", |e| e.standby_ready >= 1).await;
        second.wait_for("edge connected").await;
    }
    first.process.crash().await;
    hop_event(&edge_status, "a failover", |e| e.failovers >= 1).await;
    if standby {
        hop_event(&edge_status, "the standby taking over", |e| {
            e.standby_takeovers >= 1
        })
        .await;
    }
    live_session(&edge_status, "set up again", set_up_again("pool")).await;
    if !standby {
        second.wait_for("edge connected").await;
    }
    // The status API names the gateway the session runs through now.
    wait_until(LIMIT, "the session's gateway in the status API", || {
        edge_status
            .sessions()
            .iter()
            .any(|s| s.stream == "pool" && s.gateway == second_addr)
    })
    .await;
    let out = pusher.await.unwrap();
    assert!(
        out.status.success(),
        "the pusher noticed the failover: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let most = pushed.video.len() * 6 / 10;
    let played = player
        .finish(pushed.video.len(), Duration::from_secs(5))
        .await;
    eprintln!(
        "player on nginx: {} of {} video packets across the failover",
        played.video.len(),
        pushed.video.len()
    );
    assert!(
        played.video.len() >= most,
        "the player got {} of {} video packets",
        played.video.len(),
        pushed.video.len()
    );
    shutdown.cancel();
}

/// Fast start: the edge answers the pusher's publish itself, so a refusal comes later, from
/// nginx, through the tunnel: the pusher still gets nginx's own code and words and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_nginx_refuses_fails_with_nginx_words_despite_fast_start() {
    capture_logs();
    let clip = clip(10).await;
    let nginx = Nginx::start().await;
    let stack = Stack::start(Some(format!("rtmp://{}", nginx.rtmp))).await;
    // The name is taken by a pusher straight to nginx.
    let direct = format!("rtmp://{}/live/taken", nginx.rtmp);
    let first = {
        let clip = clip.clone();
        tokio::spawn(async move { push(&clip, &direct).await })
    };
    nginx.wait_for_publisher("taken", true, LIMIT).await;
    let out = push(&clip, &stack.edge_url("taken")).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the second publisher must fail: {stderr}"
    );
    assert!(
        stderr.contains("Already publishing"),
        "ffmpeg shows nginx's words: {stderr}"
    );
    assert!(first.await.unwrap().status.success());
}

/// A player through the edge while the gateway is killed and started again: the edge sets
/// its session up again (play replayed through the restarted gateway) and the player keeps
/// receiving the stream, from nginx's next key frame on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_through_the_edge_survives_a_gateway_restart() {
    capture_logs();
    let clip = clip(20).await;
    let pushed = framemd5_of(&clip).await;
    let nginx = Nginx::start().await;
    let origin = format!("rtmp://{}", nginx.rtmp);
    let mut stack = CrashableGateway::start(&origin).await;
    let edge = stack.edge;
    let player = Player::start(&format!("rtmp://{edge}/live/watched"));
    nginx.wait_for_players("watched", 1, LIMIT).await;
    let direct = format!("rtmp://{}/live/watched", nginx.rtmp);
    let pusher = tokio::spawn(async move { push(&clip, &direct).await });
    nginx.wait_for_publisher("watched", true, LIMIT).await;
    stack.crash_and_restart().await;
    live_session(&stack.edge_status, "set up again", set_up_again("watched")).await;
    assert!(pusher.await.unwrap().status.success());
    let played = player
        .finish(pushed.video.len(), Duration::from_secs(5))
        .await;
    eprintln!(
        "player through the edge: {} of {} video packets across the gateway restart",
        played.video.len(),
        pushed.video.len()
    );
    let most = pushed.video.len() * 6 / 10;
    assert!(
        played.video.len() >= most,
        "the player got {} of {} video packets",
        played.video.len(),
        pushed.video.len()
    );
    stack.shutdown.cancel();
}
