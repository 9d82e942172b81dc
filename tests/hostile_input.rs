//! Hostile input never takes a process down: deeply nested AMF0 commands at both hops, clients
//! that say nothing, unfinished messages past the process-wide buffer bound, a full edge, a
//! gateway killed under a push, and a flood of failed handshakes. Each drives the real hop
//! code (in-process, or the `rtmpq` binary where a process must be killed or measured).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use rtmpq_demo::client::{ClientError, RtmpClient};
use rtmpq_edge::EdgeConfig;
use rtmpq_hop::rtmp::{Inbound, Outbound, RtmpReader};
use rtmpq_hop::tunnel::write_frame;
use rtmpq_proto::chunk::{ChunkDecoder, ChunkEncoder, ChunkLimits};
use rtmpq_proto::command::{self, Amf0Value, Command};
use rtmpq_proto::message::{Control, Message};
use rtmpq_proto::wire::{Carrier, CloseCode, Frame, SessionId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(60);

/// `rtmpq_sessions_ended_total` of `role` for `reason`, from this process's recorder.
fn ended(role: &str, reason: &str) -> f64 {
    let scrape = rtmpq_telemetry::prometheus().render();
    let labels = [format!("role=\"{role}\""), format!("reason=\"{reason}\"")];
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    sample(&scrape, "rtmpq_sessions_ended_total", &labels).unwrap_or(0.0)
}

/// A `connect` command (type 20, or 17 with its format byte) whose command object is
/// `depth` containers deep: `container` opens one, `inner` is what stands before the next.
fn nested_connect(type_id: u8, container: &[u8], inner: &[u8], depth: usize) -> Message {
    let mut body = if type_id == 17 { vec![0] } else { Vec::new() };
    body.extend_from_slice(&[0x02, 0, 7]);
    body.extend_from_slice(b"connect");
    body.push(0x00);
    body.extend_from_slice(&1f64.to_be_bytes());
    for _ in 0..depth {
        body.extend_from_slice(container);
        body.extend_from_slice(inner);
    }
    body.push(0x05);
    Message::new(type_id, 0, 0, body)
}

/// The probe's payloads: objects, ECMA arrays, strict arrays and typed objects nested 50 000
/// deep, each as an AMF0 (20) and an AMF3-wrapped (17) command.
fn deep_commands() -> Vec<(String, Message)> {
    let shapes: [(&str, &[u8], &[u8]); 4] = [
        ("object", &[0x03], &[0, 1, b'a']),
        ("ecma array", &[0x08, 0, 0, 0, 1], &[0, 1, b'a']),
        ("strict array", &[0x0a, 0, 0, 0, 1], &[]),
        ("typed object", &[0x10, 0, 1, b'T'], &[0, 1, b'a']),
    ];
    let mut all = Vec::new();
    for type_id in [20u8, 17] {
        for (name, container, inner) in shapes {
            let msg = nested_connect(type_id, container, inner, 50_000);
            all.push((format!("{name} in type {type_id}"), msg));
        }
    }
    all
}

fn encode(msgs: &[Message]) -> BytesMut {
    let mut enc = ChunkEncoder::default();
    let mut out = BytesMut::new();
    for msg in msgs {
        enc.encode(msg, &mut out);
    }
    out
}

/// One byte that starts an empty message, repeated: the amplification probe.
async fn empty_message_flood(edge: SocketAddr) {
    let tcp = handshaken(edge).await;
    let (mut read, mut write) = tcp.into_split();
    let writer = tokio::spawn(async move {
        // A type-0 header of an empty video message on chunk stream 6, then 16 MiB of
        // 1-byte type-3 headers, each starting another empty message.
        let _ = write
            .write_all(&[0x06, 0, 0, 0, 0, 0, 0, 9, 1, 0, 0, 0])
            .await;
        let block = vec![0xc6u8; 1 << 20];
        for _ in 0..16 {
            if write.write_all(&block).await.is_err() {
                return;
            }
        }
    });
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(n) = read.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the edge kept an empty-message flood open");
    writer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_commands_end_only_their_own_session_at_both_hops() {
    capture_logs();
    rtmpq_telemetry::prometheus();
    let clip = clip(10).await;
    let pushed = framemd5_of(&clip).await;
    let nginx = Nginx::start().await;
    let stack = Stack::start(Some(format!("rtmp://{}", nginx.rtmp))).await;

    let player = Player::start(&format!("rtmp://{}/live/healthy", nginx.rtmp));
    nginx.wait_for_players("healthy", 1, LIMIT).await;
    let healthy_url = stack.edge_url("healthy");
    let healthy = tokio::spawn(async move { push(&clip, &healthy_url).await });
    nginx.wait_for_publisher("healthy", true, LIMIT).await;

    // To the edge, from a pusher: each ends its own session with client_protocol_error.
    let before = ended("edge", "client_protocol_error");
    let probes = deep_commands();
    for (what, msg) in &probes {
        let mut tcp = handshaken(stack.edge_addr).await;
        tcp.write_all(&encode(std::slice::from_ref(msg)))
            .await
            .unwrap();
        expect_closed(&mut tcp, what).await;
    }
    empty_message_flood(stack.edge_addr).await;
    let expected = before + probes.len() as f64 + 1.0;
    wait_until(LIMIT, "the edge to count the refused sessions", || {
        ended("edge", "client_protocol_error") >= expected
    })
    .await;
    assert_eq!(ended("edge", "client_protocol_error"), expected);

    // To the gateway, through a raw tunnel client that skips the edge's checks.
    let trust = rtmpq_certs::GatewayTrust::Pin(stack.pin.parse().unwrap());
    for (what, msg) in probes {
        let tls = rtmpq_certs::client_tls(trust.clone(), None).unwrap();
        let mut tunnel = RawTunnel::open(stack.gateway_addr, tls).await;
        write_frame(&mut tunnel.send, &Frame::Msg(msg))
            .await
            .unwrap();
        let (code, reason) = tunnel.closed().await;
        assert_eq!(code, CloseCode::ProtocolViolation, "{what}: {reason}");
        assert!(
            reason.contains("nested deeper than 64 levels"),
            "{what}: {reason}"
        );
        tunnel.conn.close(0u32.into(), b"done");
    }

    assert_healthy_push(
        healthy,
        player,
        &pushed,
        "healthy push beside deep commands",
    )
    .await;
}

/// A raw RTMP player of `stream` through `edge`: handshake, then connect, createStream and
/// play sent at once (the embedded origin gives the first stream id 1).
async fn raw_player(edge: SocketAddr, stream: &str) -> (RtmpReader, Outbound) {
    let play = command::request(
        "play",
        0.0,
        1,
        vec![Amf0Value::Null, Amf0Value::Utf8String(stream.into())],
    );
    raw_rtmp_client(edge, "live", vec![play]).await
}

/// Reads from a player until the edge closes it, reporting each ping it receives on `pings`
/// and answering only if `answer`; returns how many pings came.
async fn watch_pings(
    mut reader: RtmpReader,
    tx: Outbound,
    pings: mpsc::UnboundedSender<u32>,
    answer: bool,
) -> u32 {
    let mut seen = 0;
    loop {
        match reader.next().await {
            Ok(Some(Inbound::Reply(reply))) => {
                if matches!(Control::parse(&reply), Some(Control::PingResponse(_))) {
                    seen += 1;
                    let _ = pings.send(seen);
                    if !answer {
                        continue;
                    }
                }
                let _ = tx.send(reply).await;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return seen,
        }
    }
}

/// Waits until a player watched by [`watch_pings`] has been pinged `n` times.
async fn pinged(pings: &mut mpsc::UnboundedReceiver<u32>, n: u32) {
    let got = tokio::time::timeout(LIMIT, async {
        while let Some(seen) = pings.recv().await {
            if seen >= n {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(got, Ok(true), "the player was not pinged {n} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_end_with_timeout_while_idle_players_stay() {
    capture_logs();
    rtmpq_telemetry::prometheus();
    let stack = Stack::start_with(None, |c| EdgeConfig {
        setup_timeout_ms: 1500,
        client_timeout_ms: 2000,
        ..c
    })
    .await;
    let before = ended("edge", "timeout");

    // Handshake, then nothing: closed by the setup deadline.
    let mut silent = handshaken(stack.edge_addr).await;
    expect_closed(&mut silent, "a client silent after its handshake").await;

    // A player of a stream nobody publishes answers pings and is never cut off: it is pinged
    // after each silent second and stays open.
    let (reader, tx) = raw_player(stack.edge_addr, "nobody").await;
    let (idle_pings, mut idle_rx) = mpsc::unbounded_channel();
    let idle = tokio::spawn(watch_pings(reader, tx, idle_pings, true));
    pinged(&mut idle_rx, 3).await;

    // A player that stops answering is pinged once, then closed.
    let (reader, tx) = raw_player(stack.edge_addr, "nobody").await;
    let (deaf_pings, _deaf_rx) = mpsc::unbounded_channel();
    let deaf = tokio::time::timeout(LIMIT, watch_pings(reader, tx, deaf_pings, false))
        .await
        .expect("the deaf player was never closed");
    assert_eq!(deaf, 1, "one ping, then the end");

    wait_until(LIMIT, "the edge to count both timeouts", || {
        ended("edge", "timeout") >= before + 2.0
    })
    .await;
    // The idle player is still served: pinged again after the deaf one ended, never closed.
    pinged(&mut idle_rx, 6).await;
    assert!(!idle.is_finished(), "the idle player was cut off");
    assert_eq!(ended("edge", "timeout"), before + 2.0);
    idle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_edge_answers_connect_with_an_error() {
    capture_logs();
    let clip = clip(4).await;
    let stack = Stack::start_with(None, |c| EdgeConfig {
        max_sessions: 1,
        ..c
    })
    .await;
    let holder = RtmpClient::connect(&stack.edge_addr.to_string(), "live")
        .await
        .unwrap();
    match RtmpClient::connect(&stack.edge_addr.to_string(), "live").await {
        Err(ClientError::Refused {
            code, description, ..
        }) => {
            assert_eq!(code, "NetConnection.Connect.Rejected");
            assert!(description.contains("edge full"), "{description}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A real ffmpeg pusher says why instead of "Cannot read RTMP handshake response".
    let out = push(&clip, &stack.edge_url("full")).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("edge full"), "{stderr}");
    holder.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_bytes_stay_under_the_process_bound() {
    const CLIENTS: usize = 20;
    const PART: usize = 15 << 19; // 7.5 MiB: two unfinished messages make 15 MiB a client
    capture_logs();
    let (gateway, state) = local_gateway(None).await;
    let gateway_addr = gateway.local_addr();
    let pin = gateway.pin().to_string();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(gateway.run(shutdown.clone()));
    let config = write_config(
        state.path(),
        &format!(
            "listen = \"127.0.0.1:0\"\ngateway = \"{gateway_addr}\"\npin = \"{pin}\"\n\
             metrics = \"127.0.0.1:0\"\nmax_buffered_mb = 64\n"
        ),
    );
    let mut edge = Process::start(&["edge", "--config", &config]);
    let ready = edge.wait_for("edge ready").await;
    let edge_addr: SocketAddr = field(&ready, "listen").parse().unwrap();
    let metrics: SocketAddr = field(&ready, "metrics").parse().unwrap();
    let rss_before = edge.rss();

    // Each client: two video messages of 7.5 MiB on chunk streams 6 and 7, all but their
    // last byte sent, held open.
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut tcp = handshaken(edge_addr).await;
        clients.push(tokio::spawn(async move {
            for csid in [6u8, 7] {
                let len = (PART as u32).to_be_bytes();
                let header = [csid, 0, 0, 0, len[1], len[2], len[3], 9, 1, 0, 0, 0];
                if tcp.write_all(&header).await.is_err() {
                    return tcp;
                }
                // All but the last 128-byte chunk, so the message never completes and the
                // next header starts at a chunk boundary.
                let chunks = with_continuations(csid, &vec![0x17u8; PART - 128]);
                if tcp.write_all(&chunks).await.is_err() {
                    return tcp;
                }
            }
            tcp
        }));
    }
    let scrape = || async { http_get(metrics, "/metrics").await };
    // Sessions that would pass 64 MiB end with `overloaded`; at most 4 hold 15 MiB each.
    let deadline = Instant::now() + LIMIT;
    loop {
        let text = scrape().await;
        let overloaded = sample(
            &text,
            "rtmpq_sessions_ended_total",
            &["role=\"edge\"", "reason=\"overloaded\""],
        )
        .unwrap_or(0.0);
        if overloaded >= (CLIENTS - 4) as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {overloaded} sessions ended overloaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = scrape().await;
    let buffered = sample(&text, "rtmpq_buffered_bytes", &["role=\"edge\""]).unwrap();
    let limit = sample(&text, "rtmpq_buffered_bytes_limit", &["role=\"edge\""]).unwrap();
    assert_eq!(limit, (64u64 << 20) as f64);
    assert!(buffered <= limit, "{buffered} buffered past {limit}");
    let grown = edge.rss().saturating_sub(rss_before);
    eprintln!(
        "edge resident memory grew by {} MiB with {CLIENTS} clients of 15 MiB each",
        grown >> 20
    );
    assert!(
        grown < (64 + 48) << 20,
        "edge grew by {} MiB, past the 64 MiB bound plus slack",
        grown >> 20
    );
    // A healthy publisher still gets through the same edge.
    let mut client = RtmpClient::connect(&edge_addr.to_string(), "live")
        .await
        .unwrap();
    client.publish("after-the-flood").await.unwrap();
    client.close().await;
    for c in clients {
        drop(c.await);
    }
    shutdown.cancel();
}

/// `payload` (the rest of a message whose first chunk follows a type-0 header) split into
/// 128-byte chunks with a 1-byte type-3 header on `csid` before each after the first.
fn with_continuations(csid: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload.len() / 128 + 1);
    for (i, chunk) in payload.chunks(128).enumerate() {
        if i > 0 {
            out.push(0xc0 | csid);
        }
        out.extend_from_slice(chunk);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_gives_the_pusher_an_rtmp_error() {
    capture_logs();
    rtmpq_telemetry::prometheus();
    let clip = clip(40).await;
    let GatewayProcess {
        process: mut gateway,
        addr: gateway_addr,
        pin,
        ..
    } = GatewayProcess::start(&[]).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    // A gateway that does not come back: after a second of trying, the pusher is told.
    let (edge, edge_status) = spawn_edge(
        EdgeConfig {
            pin: Some(pin),
            reconnect_limit_ms: 1000,
            ..edge_config(gateway_addr)
        },
        &shutdown,
    )
    .await;
    let before = ended("edge", "tunnel_lost");
    let url = format!("rtmp://{edge}/live/victim");
    let pusher = tokio::spawn(async move { push(&clip, &url).await });
    wait_until(LIMIT, "the push to reach the gateway", || {
        gateway
            .lines_so_far()
            .iter()
            .any(|l| l.contains("publish started"))
    })
    .await;
    gateway.crash().await;

    let out = tokio::time::timeout(LIMIT, pusher)
        .await
        .expect("the pusher was never told")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ffmpeg must fail: {stderr}");
    assert!(
        stderr.contains("tunnel to the gateway lost"),
        "ffmpeg shows the RTMP error's reason: {stderr}"
    );
    assert!(
        stderr.contains("no gateway took the session within 1s"),
        "after trying to set the session up again: {stderr}"
    );
    wait_until(LIMIT, "the edge to count a lost tunnel", || {
        ended("edge", "tunnel_lost") > before
    })
    .await;
    // Not normal (the counter is shared with tests running beside this one; the edge's own
    // record of the session is not).
    let victim = ended_session(&edge_status, "of the victim", |s| {
        s.session.stream == "victim"
    })
    .await;
    assert_eq!(victim.code, "tunnel_lost", "{victim:?}");
    shutdown.cancel();
}

/// A gateway that crashes and comes back on the same port with the same state directory
/// answers the old connection's next packet with a stateless reset (its reset key is kept in
/// the state directory), so the edge learns at once, not after the 15 s idle timeout; it then
/// sets the live publish up again through the restarted gateway from its journal, and the
/// pusher never notices: ffmpeg pushes its whole clip and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_takes_the_live_publish_again() {
    capture_logs();
    rtmpq_telemetry::prometheus();
    let clip = clip(15).await;
    let GatewayProcess {
        process: mut gateway,
        addr: gateway_addr,
        pin,
        dir,
        ..
    } = GatewayProcess::start(&[]).await;
    assert!(dir.path().join("reset.key").exists(), "the key is kept");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (edge, edge_status) = spawn_edge(
        EdgeConfig {
            pin: Some(pin.clone()),
            ..edge_config(gateway_addr)
        },
        &shutdown,
    )
    .await;
    let url = format!("rtmp://{edge}/live/restarted");
    let pusher = tokio::spawn(async move { push(&clip, &url).await });
    gateway.wait_for("publish started").await;
    gateway.crash().await;
    let mut restarted = GatewayProcess::start_in(dir, pin, &gateway_addr.to_string(), &[]).await;
    let again = live_session(&edge_status, "set up again", set_up_again("restarted")).await;
    assert!(
        again.last_loss.contains("reset by peer"),
        "the edge learnt of the restart from the stateless reset: {}",
        again.last_loss
    );
    restarted.process.wait_for("publish started").await;

    let out = tokio::time::timeout(LIMIT, pusher)
        .await
        .expect("the pusher finishes")
        .unwrap();
    assert!(
        out.status.success(),
        "the pusher noticed the restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_failed_handshakes_writes_a_bounded_log() {
    const ATTEMPTS: usize = 2000;
    capture_logs();
    let GatewayProcess {
        process: mut gateway,
        addr: gateway_addr,
        pin,
        ready,
        ..
    } = GatewayProcess::start(&["--metrics", "127.0.0.1:0"]).await;
    let metrics: SocketAddr = field(&ready, "metrics").parse().unwrap();
    let lines_before = gateway.lines_so_far().len();

    // Handshakes the gateway must refuse: a protocol it does not speak (wrong ALPN).
    let trust = rtmpq_certs::GatewayTrust::Pin(pin.parse().unwrap());
    let mut tls = rtmpq_certs::client_tls(trust, None).unwrap();
    tls.alpn_protocols = vec![b"not-rtmpq".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let config = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let started = Instant::now();
    for batch in 0..ATTEMPTS / 100 {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let connecting = endpoint
                .connect_with(config.clone(), gateway_addr, "localhost")
                .unwrap();
            set.spawn(async move { connecting.await.is_err() });
        }
        while let Some(failed) = set.join_next().await {
            assert!(
                failed.unwrap(),
                "batch {batch}: a wrong-ALPN handshake succeeded"
            );
        }
    }
    // Each is counted once: refused by TLS, or first by a limit (one address, 100 at once:
    // past 64 connections from it, or past the pending bound).
    let failures = || async {
        let text = http_get(metrics, "/metrics").await;
        [
            "tls",
            "address_limit",
            "address_pending_limit",
            "pending_limit",
        ]
        .iter()
        .map(|reason| {
            let reason = format!("reason=\"{reason}\"");
            sample(
                &text,
                "rtmpq_handshake_failures_total",
                &["role=\"gateway\"", &reason],
            )
            .unwrap_or(0.0)
        })
        .sum::<f64>()
    };
    let deadline = Instant::now() + LIMIT;
    while failures().await < ATTEMPTS as f64 {
        assert!(
            Instant::now() < deadline,
            "the gateway did not count them all"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_handshake_log_bounded(&mut gateway, lines_before, started, ATTEMPTS).await;
}

#[test]
fn nested_probe_is_what_the_issue_describes() {
    // `03`, then the property `00 01 61` with the value `03`, about 3100 deep: about 12 KB.
    let msg = nested_connect(20, &[0x03], &[0, 1, b'a'], 3100);
    assert!((12_000..13_000).contains(&msg.payload.len()));
    assert!(Command::parse(&msg).is_err());
    let mut dec = ChunkDecoder::new(ChunkLimits::default());
    let got = dec
        .decode(&mut encode(std::slice::from_ref(&msg)))
        .unwrap()
        .unwrap();
    assert_eq!(got, msg);
}

/// A TLS config that trusts `stack`'s gateway by its pin, for raw tunnel clients.
fn pinned_tls(stack: &Stack) -> rustls::ClientConfig {
    let trust = rtmpq_certs::GatewayTrust::Pin(stack.pin.parse().unwrap());
    rtmpq_certs::client_tls(trust, None).unwrap()
}

/// A QUIC connection to `stack`'s gateway that has said nothing yet (and its endpoint).
async fn quic_connection(stack: &Stack) -> (quinn::Endpoint, quinn::Connection) {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let config =
        rtmpq_hop::transport::client_config(pinned_tls(stack), Default::default()).unwrap();
    let conn = endpoint
        .connect_with(config, stack.gateway_addr, "127.0.0.1")
        .unwrap()
        .await
        .unwrap();
    (endpoint, conn)
}

/// Opens a media-lanes session as edge `edge_id` on a raw tunnel and publishes `stream` on it.
async fn raw_lanes_publisher(stack: &Stack, edge_id: &str, stream: &str) -> (RawTunnel, SessionId) {
    let session_id = SessionId(rand_id());
    let open = Frame::SessionOpen {
        session_id,
        latency_budget_ms: 0,
        carrier: Carrier::MediaLanes,
    };
    let mut tunnel = RawTunnel::open_as(stack.gateway_addr, pinned_tls(stack), edge_id, open).await;
    let url = format!("rtmp://{}/live", stack.gateway_addr);
    let publish = vec![Amf0Value::Null, Amf0Value::Utf8String(stream.into())];
    for msg in [
        command::request(
            "connect",
            1.0,
            0,
            vec![command::connect_object("live", &url)],
        ),
        command::request("createStream", 2.0, 0, vec![Amf0Value::Null]),
        command::request("publish", 3.0, 1, publish),
    ] {
        write_frame(&mut tunnel.send, &Frame::Msg(msg))
            .await
            .unwrap();
    }
    (tunnel, session_id)
}

/// A lanes session whose edge vanishes while its merge waits: the session stream carries a
/// FENCE naming audio that never comes and a data message behind it, then ends without
/// SESSION_CLOSE, and the connection closes. The session must end at the gateway (its origin
/// side with it), the connection must leave the status API, and the stream name must be free
/// for the next publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_edge_mid_merge_leaves_no_session_behind() {
    let stack = Stack::start(None).await;
    let (mut tunnel, session_id) = raw_lanes_publisher(&stack, "vanishing", "held-name").await;
    let id = session_id.to_string();
    wait_until(LIMIT, "the gateway to publish held-name", || {
        stack
            .gateway
            .sessions()
            .iter()
            .any(|s| s.stream == "held-name" && s.id == id)
    })
    .await;
    let fence = Frame::Fence {
        audio_before: 1,
        video_before: 0,
    };
    write_frame(&mut tunnel.send, &fence).await.unwrap();
    let data = command::data_message(1, vec![Amf0Value::Utf8String("onTextData".into())]);
    write_frame(&mut tunnel.send, &Frame::Msg(data))
        .await
        .unwrap();
    tunnel.send.finish().unwrap();
    // Everything, FIN included, reached the gateway before the connection goes.
    let acknowledged = tokio::time::timeout(LIMIT, tunnel.send.stopped()).await;
    assert!(matches!(acknowledged, Ok(Ok(None))), "{acknowledged:?}");
    tunnel.conn.close(0u32.into(), b"gone");
    let ended = ended_session(&stack.gateway, "for the vanished edge", |s| {
        s.session.id == id
    })
    .await;
    eprintln!("ended: {} {}", ended.code, ended.reason);
    wait_until(LIMIT, "the connection to leave the status API", || {
        stack
            .gateway
            .connections()
            .iter()
            .all(|c| !c.peer.contains("vanishing"))
    })
    .await;
    // The name is free: a publisher through the edge gets it.
    let mut client = RtmpClient::connect(&stack.edge_addr.to_string(), "live")
        .await
        .unwrap();
    client.publish("held-name").await.unwrap();
}

/// Writes a MSG frame header announcing `len` payload bytes on a session stream, then `sent`
/// of them: a message that never completes.
async fn unfinished_message(send: &mut quinn::SendStream, len: usize, sent: usize) {
    // kind, type, stream id (varint 1), timestamp, then the payload.
    let frame_len = (1 + 1 + 1 + 4 + len) as u32;
    let mut head = (frame_len | 0x8000_0000).to_be_bytes().to_vec();
    head.extend_from_slice(&[0x11, 9, 1, 0, 0, 0, 0]);
    if send.write_all(&head).await.is_err() {
        return;
    }
    let piece = vec![0x17u8; 1 << 20];
    for _ in 0..sent >> 20 {
        if send.write_all(&piece).await.is_err() {
            return;
        }
    }
}

/// The probe: a peer that only says HELLO opens session streams whose first frame announces
/// 16 MiB (refused at once: frames before SESSION_OPEN are small), then sessions that each
/// hold an unfinished 12 MiB message. One connection holds at most its share of
/// `max_buffered_mb` (a quarter); its own sessions end `overloaded`, and a pusher through
/// another connection is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_edge_connection_holds_at_most_its_share_of_the_buffer_bound() {
    const MB: usize = 1 << 20;
    let clip = clip(4).await;
    let stack = Stack::with_gateway_config(|c| rtmpq_gateway::GatewayConfig {
        max_buffered_mb: 64,
        ..c
    })
    .await;
    let tls = pinned_tls(&stack);
    let tunnel = RawTunnel::open(stack.gateway_addr, tls).await;
    for _ in 0..4 {
        let (mut send, recv) = tunnel.conn.open_bi().await.unwrap();
        unfinished_message(&mut send, 16 * MB - 64, MB).await;
        let mut frames = rtmpq_hop::tunnel::FrameReader::new(recv);
        match frames.next().await {
            Ok(Some(Frame::SessionClose { code, reason })) => {
                assert_eq!(code, CloseCode::ProtocolViolation, "{reason}");
                assert!(reason.contains("exceeds the limit"), "{reason}");
            }
            other => panic!("a 16 MiB first frame was not refused: {other:?}"),
        }
    }
    let overloaded = || {
        stack
            .gateway
            .ended_sessions()
            .iter()
            .filter(|s| s.code == "overloaded")
            .count()
    };
    let mut holders = Vec::new();
    for _ in 0..6 {
        let (mut send, _recv) = tunnel.conn.open_bi().await.unwrap();
        let open = Frame::SessionOpen {
            session_id: SessionId(rand_id()),
            latency_budget_ms: 0,
            carrier: Carrier::SessionStream,
        };
        write_frame(&mut send, &open).await.unwrap();
        holders.push(tokio::spawn(async move {
            unfinished_message(&mut send, 15 * MB, 12 * MB).await;
            send
        }));
    }
    // A 16 MiB share holds one 12 MiB message: the other five end overloaded.
    wait_until(LIMIT, "five of the six holders to end overloaded", || {
        overloaded() >= 5
    })
    .await;
    let held = stack.gateway.buffered_bytes().unwrap();
    eprintln!(
        "the gateway buffers {} MiB for the greedy connection",
        held / MB
    );
    assert!(held <= 16 * MB, "one connection holds {} MiB", held / MB);
    let pushed = push(&clip, &stack.edge_url("victim")).await;
    assert!(
        pushed.status.success(),
        "the pusher on another connection failed: {}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    for h in holders {
        h.abort();
    }
}

/// While a lanes session is held for resume (its stream lost, its connection alive), media
/// streams that name it are stopped, not read into an inbox nobody drains (the probe wrote
/// 963 MiB that way and the gateway grew past a gigabyte).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_streams_naming_a_held_session_are_stopped() {
    // Held for a minute: the streams must be stopped while it is held, not when it ends.
    let stack = Stack::with_gateway_config(|c| rtmpq_gateway::GatewayConfig {
        resume_grace_ms: 60_000,
        ..c
    })
    .await;
    let (mut tunnel, session_id) = raw_lanes_publisher(&stack, "holder", "held").await;
    // Set up and offered for resume: the gateway sends the token.
    loop {
        match tunnel.frames.next().await.unwrap() {
            Some(Frame::ResumeToken(_)) => break,
            Some(_) => continue,
            None => panic!("no resume token"),
        }
    }
    let session_stream = u64::from(tunnel.send.id());
    tunnel.send.reset(0u32.into()).unwrap();
    let mut streams = Vec::new();
    for n in 0..64u64 {
        let mut send = tunnel.conn.open_uni().await.unwrap();
        streams.push(tokio::spawn(async move {
            let head = Frame::MediaStream {
                session_stream,
                lane: rtmpq_proto::wire::Lane::Audio,
                first_index: n * 1000,
            };
            let _ = write_frame(&mut send, &head).await;
            for i in 0..64u32 {
                let msg = Message::new(8, 1, i, vec![0xaf; 16 << 10]);
                let media = Frame::Media {
                    control_before: 0,
                    msg,
                };
                if write_frame(&mut send, &media).await.is_err() {
                    break;
                }
            }
            tokio::time::timeout(LIMIT / 3, send.stopped()).await
        }));
    }
    for (n, s) in streams.into_iter().enumerate() {
        let stopped = s.await.unwrap();
        assert!(
            matches!(stopped, Ok(Ok(Some(_)))),
            "media stream {n} naming a held session was not stopped: {stopped:?}"
        );
    }
    let id = session_id.to_string();
    assert!(
        stack.gateway.sessions().iter().any(|s| s.id == id),
        "the session is still held"
    );
}

/// Names a peer chooses stay bounded where they land: an edge id with a newline (a forged log
/// line) is refused at HELLO and never logged, and a 1000-byte stream name becomes a label of
/// at most 64 bytes (the probe's 60 KB names grew the gateway 16 MB a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_chosen_names_are_bounded_in_logs_and_labels() {
    capture_logs();
    rtmpq_telemetry::prometheus();
    let stack = Stack::start(None).await;
    let (_endpoint, conn) = quic_connection(&stack).await;
    let (mut control, _recv) = conn.open_bi().await.unwrap();
    let hello = Frame::Hello {
        version: rtmpq_proto::wire::WIRE_VERSION,
        edge_id: "cam\nFORGED-LOG-LINE gateway shutting down".into(),
        token: String::new(),
        release_after_ms: 0,
    };
    write_frame(&mut control, &hello).await.unwrap();
    let closed = tokio::time::timeout(LIMIT, conn.closed()).await;
    match closed.expect("the HELLO was answered, not refused") {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code.into_inner(),
                CloseCode::ProtocolViolation.to_code()
            );
            let reason = String::from_utf8_lossy(&close.reason);
            assert!(reason.contains("printable ASCII"), "{reason}");
        }
        other => panic!("the HELLO was not refused: {other}"),
    }
    // The log is the feature: a forged edge id never makes a line of its own.
    assert_eq!(
        count_logs(&["FORGED-LOG-LINE"]),
        0,
        "the edge id was logged"
    );

    let long = format!("long-{}", "x".repeat(1000));
    let mut client = RtmpClient::connect(&stack.edge_addr.to_string(), "live")
        .await
        .unwrap();
    client.publish(&long).await.unwrap();
    let labelled = |scrape: &str| scrape.contains("stream=\"long-xxx");
    wait_until(LIMIT, "the session's series", || {
        labelled(&rtmpq_telemetry::prometheus().render())
    })
    .await;
    let scrape = rtmpq_telemetry::prometheus().render();
    for value in scrape.split("stream=\"").skip(1) {
        let value = &value[..value.find('"').unwrap()];
        assert!(value.len() <= 64, "a {} byte label", value.len());
    }
    client.close().await;
}

/// One edge cannot take every session slot, however many connections it opens: its sessions
/// over all its connections are bounded (`max_sessions_per_edge`), and another edge still
/// gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_edge_holds_at_most_its_sessions_over_all_its_connections() {
    let stack = Stack::with_gateway_config(|c| rtmpq_gateway::GatewayConfig {
        max_sessions_per_edge: 2,
        ..c
    })
    .await;
    let tls = || pinned_tls(&stack);
    let open = || Frame::SessionOpen {
        session_id: SessionId(rand_id()),
        latency_budget_ms: 0,
        carrier: Carrier::SessionStream,
    };
    let url = format!("rtmp://{}/live", stack.gateway_addr);
    let connect = command::request(
        "connect",
        1.0,
        0,
        vec![command::connect_object("live", &url)],
    );
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut t = RawTunnel::open_as(stack.gateway_addr, tls(), "greedy", open()).await;
        write_frame(&mut t.send, &Frame::Msg(connect.clone()))
            .await
            .unwrap();
        // The session runs: the gateway answers the connect.
        let answered = tokio::time::timeout(LIMIT, async {
            loop {
                match t.frames.next().await {
                    Ok(Some(Frame::ResumeToken(_))) => continue,
                    other => return other,
                }
            }
        })
        .await;
        assert!(
            matches!(answered, Ok(Ok(Some(Frame::Msg(_))))),
            "{answered:?}"
        );
        held.push(t);
    }
    let mut third = RawTunnel::open_as(stack.gateway_addr, tls(), "greedy", open()).await;
    let (code, why) = tokio::time::timeout(LIMIT, third.closed()).await.unwrap();
    assert_eq!(code, CloseCode::Overloaded, "{why}");
    assert!(why.contains("this edge has 2 sessions"), "{why}");
    // Another edge is not affected.
    let mut client = RtmpClient::connect(&stack.edge_addr.to_string(), "live")
        .await
        .unwrap();
    client.publish("other-edge").await.unwrap();
}

/// A connection that completes the QUIC handshake and never says HELLO holds a pending slot
/// for only a few seconds (it held `handshake_timeout_ms`, 10 s: 512 of them from 10
/// addresses kept ordinary edges out that long).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_hello_is_closed_within_the_hello_deadline() {
    let stack = Stack::start(None).await;
    let (_endpoint, conn) = quic_connection(&stack).await;
    let closed = tokio::time::timeout(LIMIT, conn.closed()).await.unwrap();
    let quinn::ConnectionError::ApplicationClosed(close) = closed else {
        panic!("{closed}");
    };
    let reason = String::from_utf8_lossy(&close.reason);
    let deadline = rtmpq_gateway::HELLO_DEADLINE;
    assert!(
        reason.contains(&format!("no HELLO within {deadline:?}")),
        "{reason}"
    );
}
