//! Edge identities and stream ACLs (`[[edge]]` tables): a real ffmpeg pusher through a real
//! edge to a gateway that knows each edge by token or client-certificate name. Allowed streams
//! flow; a denied publish ends with `unauthorized` and words the pusher's log shows; a reload
//! that takes a right away ends the live session using it and no other.

mod common;

use std::time::Duration;

use common::*;
use rtmpq_gateway::access::EdgeRuleConfig;
use rtmpq_gateway::{Gateway, GatewayConfig, Reloader};
use rtmpq_hop::secret::Secret;
use rtmpq_proto::command::{self, Amf0Value};
use rtmpq_proto::message::Message;

fn edge_rule(name: &str, token: &str, publish: &[&str]) -> EdgeRuleConfig {
    EdgeRuleConfig {
        name: name.into(),
        token: Some(Secret::new(token)),
        cert: None,
        publish: publish.iter().map(|s| s.to_string()).collect(),
        play: vec!["live/*".into()],
    }
}

fn gateway_config(state: &std::path::Path, edges: Vec<EdgeRuleConfig>) -> GatewayConfig {
    GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: state.to_owned(),
        edges,
        ..GatewayConfig::default()
    }
}

/// `rtmpq_unauthorized_total` for `edge` and `action`, from this process's recorder.
fn unauthorized(edge: &str, action: &str) -> f64 {
    let scrape = rtmpq_telemetry::prometheus().render();
    let labels = [format!("edge=\"{edge}\""), format!("action=\"{action}\"")];
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    sample(&scrape, "rtmpq_unauthorized_total", &labels).unwrap_or(0.0)
}

/// A gateway listing `edges` and an edge presenting `token`, and the gateway's reloader.
async fn stack_with_edges(edges: Vec<EdgeRuleConfig>, token: &str) -> (Stack, Reloader) {
    let state = tempfile::tempdir().unwrap();
    let gateway = Gateway::bind(gateway_config(state.path(), edges))
        .await
        .unwrap();
    let reloader = gateway.reloader();
    let stack = Stack::with_gateway(gateway, state, |c| rtmpq_edge::EdgeConfig {
        token: Some(Secret::new(token)),
        ..c
    })
    .await;
    (stack, reloader)
}

/// Starts an ffmpeg pusher of `clip` to `url` in the background.
fn start_push(clip: &std::path::Path, url: &str) -> tokio::task::JoinHandle<std::process::Output> {
    let (clip, url) = (clip.to_owned(), url.to_owned());
    tokio::spawn(async move { push(&clip, &url).await })
}

#[tokio::test(flavor = "multi_thread")]
async fn each_edge_publishes_what_its_rules_allow_and_nothing_else() {
    rtmpq_telemetry::prometheus();
    let clip = clip(4).await;
    let (stack, _) = stack_with_edges(
        vec![edge_rule("cam-a", "token-a", &["live/cam-*"])],
        "token-a",
    )
    .await;

    let allowed = push(&clip, &stack.edge_url("cam-1")).await;
    assert!(
        allowed.status.success(),
        "an allowed publish failed: {}",
        String::from_utf8_lossy(&allowed.stderr)
    );

    let before = unauthorized("cam-a", "publish");
    let denied = push(&clip, &stack.edge_url("studio")).await;
    assert!(!denied.status.success(), "a denied publish succeeded");
    let said = String::from_utf8_lossy(&denied.stderr);
    assert!(
        said.contains("may not publish live/studio"),
        "the pusher's log does not say why: {said}"
    );
    let ended = ended_session(&stack.gateway, "denied at the gateway", |s| {
        s.code == "unauthorized"
    })
    .await;
    assert!(
        ended
            .reason
            .contains("\"cam-a\" may not publish live/studio"),
        "{ended:?}"
    );
    ended_session(&stack.edge, "denied at the edge", |s| {
        s.code == "unauthorized"
    })
    .await;
    assert_eq!(unauthorized("cam-a", "publish"), before + 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_no_rule_names_is_refused_with_words_its_pusher_shows() {
    rtmpq_telemetry::prometheus();
    let clip = clip(4).await;
    let before = unauthorized("unlisted", "connect");
    let (stack, _) = stack_with_edges(
        vec![edge_rule("cam-a", "token-a", &["live/*"])],
        "not-a-listed-token",
    )
    .await;
    let refused = push(&clip, &stack.edge_url("cam-1")).await;
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("not listed at the gateway"), "{said}");
    assert!(
        !said.contains("not-a-listed-token"),
        "the token is never shown"
    );
    let ended = ended_session(&stack.edge, "refused edge", |s| s.code == "unauthorized").await;
    assert!(!ended.reason.contains("not-a-listed-token"));
    assert!(unauthorized("unlisted", "connect") > before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_name_is_an_identity() {
    let clip = clip(4).await;
    let certs = tempfile::tempdir().unwrap();
    let pin = rtmpq_certs::init(certs.path(), &[]).unwrap();
    let (cert, key) = rtmpq_certs::issue_edge(certs.path(), "studio-1").unwrap();
    let state = tempfile::tempdir().unwrap();
    let gateway = Gateway::bind(GatewayConfig {
        cert_dir: Some(certs.path().to_owned()),
        client_auth: true,
        ..gateway_config(
            state.path(),
            vec![EdgeRuleConfig {
                name: "studio".into(),
                token: None,
                cert: Some("studio-1".into()),
                publish: vec!["live/studio".into()],
                play: vec![],
            }],
        )
    })
    .await
    .unwrap();
    assert_eq!(gateway.pin(), pin);
    let stack = Stack::with_gateway(gateway, state, |c| rtmpq_edge::EdgeConfig {
        client_cert: Some(cert),
        client_key: Some(key),
        ..c
    })
    .await;
    let allowed = push(&clip, &stack.edge_url("studio")).await;
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    let denied = push(&clip, &stack.edge_url("cam-1")).await;
    assert!(!denied.status.success());
    let ended = ended_session(&stack.gateway, "denied by cert name", |s| {
        s.code == "unauthorized"
    })
    .await;
    assert!(
        ended
            .reason
            .contains("\"studio\" may not publish live/cam-1"),
        "{ended:?}"
    );

    // Its rules list nothing to play.
    let play = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-i", &stack.edge_url("studio")])
        .args(["-t", "1", "-f", "null", "-"])
        .kill_on_drop(true)
        .output();
    let play = tokio::time::timeout(Duration::from_secs(60), play)
        .await
        .expect("the denied player was told")
        .unwrap();
    assert!(!play.status.success());
    let said = String::from_utf8_lossy(&play.stderr);
    assert!(said.contains("may not play live/studio"), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_ends_only_the_sessions_whose_rights_it_took() {
    let clip = clip(30).await;
    let rules = |a_publishes: &str| {
        vec![
            edge_rule("cam-a", "token-a", &[a_publishes]),
            edge_rule("cam-b", "token-b", &["live/cam-b"]),
        ]
    };
    let (stack, reloader) = stack_with_edges(rules("live/cam-a"), "token-a").await;
    let edge_b = start_edge(
        rtmpq_edge::EdgeConfig {
            pin: Some(stack.pin.clone()),
            token: Some(Secret::new("token-b")),
            ..edge_config(stack.gateway_addr)
        },
        &stack.shutdown,
    )
    .await;
    let push_a = start_push(&clip, &stack.edge_url("cam-a"));
    let push_b = start_push(&clip, &format!("rtmp://{edge_b}/live/cam-b"));
    let publishing = |gateway: &rtmpq_telemetry::Telemetry, stream: &str| {
        gateway
            .sessions()
            .iter()
            .any(|s| s.stream == stream && s.video_frames > 30)
    };
    wait_until(Duration::from_secs(30), "both pushes under way", || {
        publishing(&stack.gateway, "cam-a") && publishing(&stack.gateway, "cam-b")
    })
    .await;

    // A config that does not load changes nothing.
    let mut bad = gateway_config(stack._state.path(), rules("live//x"));
    bad.listen = "127.0.0.1:0".parse().unwrap();
    assert!(reloader.reload(bad).is_err());
    assert!(publishing(&stack.gateway, "cam-a"));

    reloader
        .reload(gateway_config(stack._state.path(), rules("live/other")))
        .unwrap();
    let ended = ended_session(&stack.gateway, "cam-a revoked", |s| {
        s.code == "unauthorized"
    })
    .await;
    assert!(
        ended.reason.contains("rights changed on reload"),
        "{ended:?}"
    );
    let out_a = push_a.await.unwrap();
    assert!(!out_a.status.success(), "the revoked pusher was not told");
    assert!(
        String::from_utf8_lossy(&out_a.stderr).contains("may not publish live/cam-a"),
        "{}",
        String::from_utf8_lossy(&out_a.stderr)
    );
    // cam-b's rights did not change: its push goes on to the end.
    let out_b = push_b.await.unwrap();
    assert!(
        out_b.status.success(),
        "cam-b was cut: {}",
        String::from_utf8_lossy(&out_b.stderr)
    );
    assert!(
        !stack
            .gateway
            .ended_sessions()
            .iter()
            .any(|s| s.session.stream == "cam-b" && s.code != "normal"),
        "{:#?}",
        stack.gateway.ended_sessions()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_config_file_of_a_running_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let config = |publish: &str| {
        format!("[[edge]]\nname = \"cam-a\"\ntoken = \"token-a\"\npublish = [\"{publish}\"]\n")
    };
    let path = write_config(dir.path(), &config("live/a"));
    let mut gateway = GatewayProcess::start(&["--config", &path]).await;
    let hangup = |pid: u32| {
        let sent = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    std::fs::write(&path, config("live/b")).unwrap();
    hangup(gateway.process.pid());
    gateway.process.wait_for("configuration reloaded").await;
    std::fs::write(&path, config("live//broken")).unwrap();
    hangup(gateway.process.pid());
    let line = gateway.process.wait_for("configuration not reloaded").await;
    assert!(line.contains("empty segment"), "{line}");
    assert!(!line.contains("token-a"));
}

/// A gateway process of its own: the expiry gauge is per process, and other tests' gateways
/// here would set it too.
#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_near_its_end_is_a_gauge_and_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let pin = rtmpq_certs::init_valid_for(dir.path(), &[], Some(3))
        .unwrap()
        .to_string();
    let mut gateway =
        GatewayProcess::start_in(dir, pin, "127.0.0.1:0", &["--metrics", "127.0.0.1:0"]).await;
    let metrics: std::net::SocketAddr = field(&gateway.ready, "metrics").parse().unwrap();
    let warning = gateway
        .process
        .lines_so_far()
        .iter()
        .find(|l| l.contains("certificate expires in 3 days"))
        .cloned()
        .unwrap_or_default();
    assert!(
        warning.contains("WARN") && warning.contains("gateway"),
        "{warning:?}"
    );
    let scrape = http_get(metrics, "/metrics").await;
    let expiry = sample(
        &scrape,
        "rtmpq_certificate_expiry_timestamp_seconds",
        &["certificate=\"gateway\""],
    )
    .expect("the expiry gauge");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let days = (expiry - now) / 86_400.0;
    assert!((2.9..3.01).contains(&days), "expires in {days} days");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_connection_carries_at_most_its_share_of_sessions() {
    capture_logs();
    let state = tempfile::tempdir().unwrap();
    let gateway = Gateway::bind(GatewayConfig {
        max_sessions_per_connection: 2,
        ..gateway_config(state.path(), Vec::new())
    })
    .await
    .unwrap();
    let stack = Stack::with_gateway(gateway, state, |c| c).await;
    let edge = stack.edge_addr.to_string();
    let mut held = Vec::new();
    for n in 0..2 {
        let mut client = rtmpq_demo::client::RtmpClient::connect(&edge, "live")
            .await
            .unwrap();
        client.publish(&format!("held-{n}")).await.unwrap();
        held.push(client);
    }
    wait_until(
        Duration::from_secs(10),
        "two sessions at the gateway",
        || stack.gateway.sessions().len() == 2,
    )
    .await;
    // The third is refused by the gateway, whatever the edge answered first (with fast start
    // the client may hear a refusal of its connect or of its publish).
    let mut third = rtmpq_demo::client::RtmpClient::connect(&edge, "live")
        .await
        .ok();
    if let Some(third) = third.as_mut() {
        let _ = third.publish("third").await;
    }
    hop_event(&stack.gateway, "a session refused at the limit", |e| {
        e.sessions_refused >= 1
    })
    .await;
    drop(third);
    assert_eq!(stack.gateway.sessions().len(), 2, "the held ones stay");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_address_opens_at_most_its_share_of_connections() {
    rtmpq_telemetry::prometheus();
    let state = tempfile::tempdir().unwrap();
    let gateway = Gateway::bind(GatewayConfig {
        max_connections_per_address: 1,
        ..gateway_config(state.path(), Vec::new())
    })
    .await
    .unwrap();
    let before = {
        let scrape = rtmpq_telemetry::prometheus().render();
        sample(
            &scrape,
            "rtmpq_handshake_failures_total",
            &["reason=\"address_limit\""],
        )
        .unwrap_or(0.0)
    };
    let stack = Stack::with_gateway(gateway, state, |c| c).await;
    // The first edge's connection is up (its session reaches the gateway).
    let mut first = rtmpq_demo::client::RtmpClient::connect(&stack.edge_addr.to_string(), "live")
        .await
        .unwrap();
    first.publish("first").await.unwrap();
    wait_until(Duration::from_secs(10), "the first edge's session", || {
        stack.gateway.sessions().len() == 1
    })
    .await;
    // A second edge from the same address is refused at the QUIC handshake.
    let second = start_edge(
        rtmpq_edge::EdgeConfig {
            pin: Some(stack.pin.clone()),
            ..edge_config(stack.gateway_addr)
        },
        &stack.shutdown,
    )
    .await;
    let refused = rtmpq_demo::client::RtmpClient::connect(&second.to_string(), "live").await;
    assert!(refused.is_err(), "the second edge's client was served");
    let after = {
        let scrape = rtmpq_telemetry::prometheus().render();
        sample(
            &scrape,
            "rtmpq_handshake_failures_total",
            &["reason=\"address_limit\""],
        )
        .unwrap_or(0.0)
    };
    assert!(after > before, "the refusal was not counted");
    assert_eq!(stack.gateway.sessions().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_with_new_certificates_serves_them_to_new_edges_and_keeps_live_sessions() {
    let (old_dir, new_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let old_pin = rtmpq_certs::init(old_dir.path(), &[]).unwrap();
    let new_pin = rtmpq_certs::init(new_dir.path(), &[]).unwrap();
    let state = tempfile::tempdir().unwrap();
    let config = |dir: &std::path::Path| GatewayConfig {
        cert_dir: Some(dir.to_owned()),
        ..gateway_config(state.path(), Vec::new())
    };
    let gateway = Gateway::bind(config(old_dir.path())).await.unwrap();
    let reloader = gateway.reloader();
    let state_kept = tempfile::tempdir().unwrap();
    let stack = Stack::with_gateway(gateway, state_kept, |c| c).await;
    assert_eq!(stack.pin, old_pin.to_string());
    let mut live = rtmpq_demo::client::RtmpClient::connect(&stack.edge_addr.to_string(), "live")
        .await
        .unwrap();
    live.publish("live-across-reload").await.unwrap();
    wait_until(Duration::from_secs(10), "the live session", || {
        stack.gateway.sessions().len() == 1
    })
    .await;

    reloader.reload(config(new_dir.path())).unwrap();

    // A new edge that trusts only the new certificate gets in; one that trusts the old does not.
    let edge_for = |pin: String| rtmpq_edge::EdgeConfig {
        pin: Some(pin),
        ..edge_config(stack.gateway_addr)
    };
    let new_edge = start_edge(edge_for(new_pin.to_string()), &stack.shutdown).await;
    let mut fresh = rtmpq_demo::client::RtmpClient::connect(&new_edge.to_string(), "live")
        .await
        .unwrap();
    fresh.publish("after-reload").await.unwrap();
    wait_until(Duration::from_secs(10), "the new edge's session", || {
        stack.gateway.sessions().len() == 2
    })
    .await;
    let old_edge = start_edge(edge_for(old_pin.to_string()), &stack.shutdown).await;
    let refused = rtmpq_demo::client::RtmpClient::connect(&old_edge.to_string(), "live").await;
    assert!(
        refused.is_err(),
        "an edge pinned to the old certificate got in"
    );
    // The session that was live before the reload is still there.
    assert!(stack
        .gateway
        .sessions()
        .iter()
        .any(|s| s.stream == "live-across-reload"));
    drop((live, fresh));
}

/// A [`raw_rtmp_client`] of `live` that sends `then`; reads until the edge closes the connection.
/// `false` if it stays open for 20 s.
async fn raw_session_closed(edge: std::net::SocketAddr, then: Vec<Message>) -> bool {
    let (mut reader, _tx) = raw_rtmp_client(edge, "live", then).await;
    let closed = async { while let Ok(Some(_)) = reader.next().await {} };
    tokio::time::timeout(Duration::from_secs(20), closed)
        .await
        .is_ok()
}

/// A gateway in front of `nginx` that knows one edge, `cam-a` (token `token-a`), which may
/// publish `publish` and play `play`, and an edge presenting that token over `carrier`.
async fn stack_before_nginx(
    nginx: &Nginx,
    publish: &[&str],
    play: &[&str],
    carrier: rtmpq_edge::config::MediaCarrier,
) -> Stack {
    let state = tempfile::tempdir().unwrap();
    let rule = EdgeRuleConfig {
        play: play.iter().map(|s| s.to_string()).collect(),
        ..edge_rule("cam-a", "token-a", publish)
    };
    let gateway = Gateway::bind(GatewayConfig {
        origin: Some(format!("rtmp://{}", nginx.rtmp)),
        ..gateway_config(state.path(), vec![rule])
    })
    .await
    .unwrap();
    Stack::with_gateway(gateway, state, |c| rtmpq_edge::EdgeConfig {
        token: Some(Secret::new("token-a")),
        carrier,
        ..c
    })
    .await
}

/// `name` for `stream` as an AMF0 command body (transaction 0, null command object).
fn named_body(name: &str, stream: &str) -> Vec<u8> {
    let args = vec![Amf0Value::Null, Amf0Value::Utf8String(stream.into())];
    command::request(name, 0.0, 1, args).payload.to_vec()
}

/// Every spelling nginx-rtmp reads as `verb` of `stream` (lower-cased, cut at NUL, in data,
/// AMF3 and aggregate messages, with values after the arguments it never reads).
fn spellings(verb: &str, stream: &str) -> Vec<(String, Message)> {
    let msg = |type_id: u8, body: Vec<u8>| Message::new(type_id, 1, 0, body);
    let plain = named_body(verb, stream);
    let mut capital = verb.to_owned();
    capital[..1].make_ascii_uppercase();
    let mut prefixed = vec![0u8];
    prefixed.extend_from_slice(&plain);
    let mut dated = plain.clone();
    dated.push(0x0b);
    dated.extend_from_slice(&[0; 10]);
    let mut amf3_tail = plain.clone();
    amf3_tail.extend_from_slice(&[0x11, 0x00]);
    let mut aggregate = vec![20u8];
    aggregate.extend_from_slice(&(plain.len() as u32).to_be_bytes()[1..]);
    aggregate.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1]);
    aggregate.extend_from_slice(&plain);
    aggregate.extend_from_slice(&(plain.len() as u32 + 11).to_be_bytes());
    vec![
        (capital.clone(), msg(20, named_body(&capital, stream))),
        (
            format!("{verb}\\0"),
            msg(20, named_body(&format!("{verb}\0"), stream)),
        ),
        ("type 18".into(), msg(18, plain.clone())),
        ("type 15".into(), msg(15, prefixed.clone())),
        ("type 17".into(), msg(17, prefixed)),
        ("type 22".into(), msg(22, aggregate)),
        ("a trailing Date".into(), msg(20, dated)),
        ("a trailing AMF3 value".into(), msg(20, amf3_tail)),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn rights_hold_however_a_publish_or_play_is_spelled() {
    use rtmpq_edge::config::MediaCarrier;
    for carrier in [MediaCarrier::Lanes, MediaCarrier::Stream] {
        spellings_are_refused_on(carrier).await;
    }
}

async fn spellings_are_refused_on(carrier: rtmpq_edge::config::MediaCarrier) {
    let nginx = Nginx::start().await;
    let cam_a = ["live/cam-a-*"];
    let stack = stack_before_nginx(&nginx, &cam_a, &cam_a, carrier).await;
    let mut tries: Vec<(String, Vec<Message>)> = Vec::new();
    for (verb, stream) in [("publish", "studio"), ("play", "secret")] {
        for (how, msg) in spellings(verb, stream) {
            tries.push((format!("{verb} as {how}"), vec![msg]));
        }
    }
    let play2 = command::request(
        "play2",
        0.0,
        1,
        vec![Amf0Value::Null, Amf0Value::Utf8String("secret".into())],
    );
    tries.push(("play2".into(), vec![play2]));
    let fc = Message::new(20, 0, 0, named_body("FCPublish", "studio"));
    let allowed = Message::new(20, 1, 0, named_body("publish", "cam-a-2"));
    tries.push((
        "FCPublish studio, then an allowed publish".into(),
        vec![fc, allowed],
    ));
    let denied_play = Message::new(20, 1, 0, named_body("Play", "secret"));
    let allowed_play = Message::new(20, 1, 0, named_body("play", "cam-a-3"));
    tries.push((
        "an allowed play, then Play secret".into(),
        vec![allowed_play, denied_play],
    ));
    let n = tries.len();
    let sessions: Vec<_> = tries
        .into_iter()
        .map(|(what, msgs)| {
            let edge = stack.edge_addr;
            tokio::spawn(async move { (what, raw_session_closed(edge, msgs).await) })
        })
        .collect();
    for session in sessions {
        let (what, closed) = session.await.unwrap();
        assert!(closed, "{what}: the session was not ended");
    }
    let refused = || {
        stack
            .gateway
            .ended_sessions()
            .into_iter()
            .filter(|s| s.code == "unauthorized")
            .count()
    };
    wait_until(Duration::from_secs(20), "every try refused", || {
        refused() >= n
    })
    .await;
    // A control through the same path: nginx logs what it is asked to publish. (Log text
    // here is nginx's own, per instance: the only record of what the origin was asked.)
    let control = Message::new(20, 1, 0, named_body("Publish", "cam-a-9"));
    let edge = stack.edge_addr;
    let held = tokio::spawn(async move { raw_session_closed(edge, vec![control]).await });
    nginx
        .wait_for_log("name='cam-a-9'", Duration::from_secs(20))
        .await;
    held.abort();
    let log = nginx.log();
    for forbidden in ["name='studio'", "name='secret'"] {
        assert!(
            !log.contains(forbidden),
            "{carrier:?}: nginx saw {forbidden}:\n{log}"
        );
    }
}

/// A query string in connect's app (`live?token=...`, as some services hand out) is not part
/// of the app an edge's rights are judged on (nginx cuts it too), and its value never reaches
/// a log.
#[tokio::test(flavor = "multi_thread")]
async fn a_query_in_the_app_is_judged_without_it_and_never_logged() {
    capture_logs();
    let nginx = Nginx::start().await;
    let stack = stack_before_nginx(&nginx, &["live/cam-a-*"], &[], Default::default()).await;
    let (_reader, tx) = raw_rtmp_client(stack.edge_addr, "live?token=SECRET123", vec![]).await;
    let publish = Message::new(20, 1, 0, named_body("publish", "cam-a-1"));
    tx.send(publish).await.unwrap();
    // nginx's own log (per instance): the publish reached the origin.
    nginx
        .wait_for_log("name='cam-a-1'", Duration::from_secs(20))
        .await;
    wait_until(
        Duration::from_secs(20),
        "the session listed under app live",
        || {
            let live = stack.gateway.sessions();
            live.iter()
                .any(|s| s.app == "live" && s.stream == "cam-a-1")
        },
    )
    .await;
    // The log is the feature: no line of any test's hops carries the secret.
    assert_eq!(
        count_logs(&["SECRET123"]),
        0,
        "the query's secret was logged"
    );
}
