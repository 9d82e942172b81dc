//! Media lanes over real QUIC connections on loopback, through a relay that can black-hole every
//! packet: a GOP that goes stale in QUIC's buffer while the path is dark is reset and skipped,
//! and what the receiving hop hands on stays valid RTMP (whole messages, each track in order,
//! every GOP a prefix of itself, nothing after a cut GOP until the next key frame). Also: a
//! connection under the `live` controller sends its probe train, the gateway's end first, and an
//! edge's end is measured once its own train went, and over a slow path once it crossed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rtmpq_hop::lanes::{LaneRouter, SessionRecv, SessionSend};
use rtmpq_hop::transport::{
    client_config, server_config, Congestion, PathWatch, PROBE_TRAIN_CROSSING,
    PROBE_TRAIN_PACKET_MIN, PROBE_TRAIN_WAIT,
};
use rtmpq_hop::tunnel::{FrameReader, TunnelRecv, TunnelSend};
use rtmpq_proto::congestion::PROBE_TRAIN_PACKETS;
use rtmpq_proto::message::{message_type, MediaKind, Message};
use rtmpq_proto::wire::{Carrier, CloseCode, Frame};
use tokio::net::UdpSocket;

/// Forwards datagrams between a client and `server`, or drops them all while `dark` is set.
async fn relay(server: SocketAddr, dark: Arc<AtomicBool>) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut client = None;
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let to = if from == server {
                match client {
                    Some(c) => c,
                    None => continue,
                }
            } else {
                client = Some(from);
                server
            };
            if !dark.load(Ordering::Relaxed) {
                let _ = socket.send_to(&buf[..n], to).await;
            }
        }
    });
    addr
}

fn video(key: bool, ts: u32, n: u8) -> Message {
    let first = if key { 0x17 } else { 0x27 };
    Message::new(
        message_type::VIDEO,
        1,
        ts,
        vec![first, 1, 0, 0, 0, n, 7, 7, 7],
    )
}

fn audio(ts: u32) -> Message {
    Message::new(message_type::AUDIO, 1, ts, vec![0xaf, 1, ts as u8, 3, 3])
}

/// A gateway's endpoint on loopback with a self-signed certificate kept in `state`, and an
/// edge's endpoint that trusts it by its pin; both under `live`.
fn endpoints(state: &std::path::Path) -> (quinn::Endpoint, quinn::Endpoint) {
    let identity = rtmpq_certs::self_signed(state).unwrap();
    let pin = identity.fingerprint();
    let tls = rtmpq_certs::server_tls(identity, None).unwrap();
    let server = quinn::Endpoint::server(
        server_config(tls, Congestion::Live).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let tls = rtmpq_certs::client_tls(rtmpq_certs::GatewayTrust::Pin(pin), None).unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(client_config(tls, Congestion::Live).unwrap());
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gop_gone_stale_in_a_dark_path_is_reset_and_the_output_stays_valid() {
    let state = tempfile::tempdir().unwrap();
    let (server, client) = endpoints(state.path());
    let server_addr = server.local_addr().unwrap();
    let dark = Arc::new(AtomicBool::new(false));
    let relay_addr = relay(server_addr, dark.clone()).await;

    // The receiving hop: every frame the merge hands on, until SESSION_CLOSE.
    let received = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let router = LaneRouter::start(&conn);
        let (_send, recv) = conn.accept_bi().await.unwrap();
        let mut frames = SessionRecv::carried(
            FrameReader::new(recv),
            Carrier::MediaLanes,
            Some(&router),
            None,
        );
        let mut got = Vec::new();
        loop {
            match frames.next().await.unwrap() {
                Some(Frame::Msg(m)) => got.push(m),
                Some(Frame::SessionClose { code, .. }) => {
                    assert_eq!(code, CloseCode::Normal);
                    return got;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });

    let conn = client
        .connect(relay_addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    let (send, _recv) = conn.open_bi().await.unwrap();
    // A 600 ms budget: an older GOP is stale 300 ms after its last frame.
    let budget = Some(Duration::from_millis(600));
    let mut send =
        SessionSend::carried(send.into(), Carrier::MediaLanes, Some(&conn), budget, None);
    let command = Message::new(message_type::COMMAND_AMF0, 0, 0, vec![2, 0, 1, b'x']);
    send.send(&Frame::Msg(command.clone())).await.unwrap();

    // Three GOPs of 12 frames, 33 ms apart, with audio; the path is dark through the second
    // and until the third has begun 400 ms of media time after the second's last frame.
    let mut ts = 0u32;
    let mut sent_audio = 0;
    for gop in 0..3u8 {
        if gop == 1 {
            dark.store(true, Ordering::Relaxed);
        }
        if gop == 2 {
            ts += 400;
        }
        for n in 0..12u8 {
            let msg = video(n == 0, ts, gop * 16 + n);
            send.send(&Frame::Msg(msg)).await.unwrap();
            send.send(&Frame::Msg(audio(ts))).await.unwrap();
            sent_audio += 1;
            if gop == 2 && n == 0 {
                dark.store(false, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(33)).await;
            ts += 33;
        }
    }
    send.send(&Frame::SessionClose {
        code: CloseCode::Normal,
        reason: "done".into(),
    })
    .await
    .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), received)
        .await
        .expect("the receiving hop gets the session's end")
        .unwrap();

    assert_eq!(got[0], command, "the command goes first");
    // Each track in order; every GOP written is a prefix of itself, and a cut GOP is followed
    // only by the next key frame.
    let frames: Vec<(u8, bool)> = got
        .iter()
        .filter(|m| m.type_id == message_type::VIDEO)
        .map(|m| (m.payload[5], m.media_kind() == MediaKind::VideoKeyframe))
        .collect();
    for pair in got.windows(2) {
        if pair[0].type_id == pair[1].type_id {
            assert!(pair[0].timestamp <= pair[1].timestamp, "{pair:?}");
        }
    }
    let mut expected_next: Option<u8> = None;
    for &(n, key) in &frames {
        if key {
            assert_eq!(n % 16, 0);
        } else {
            assert_eq!(Some(n), expected_next, "frame {n} after a gap: {frames:?}");
        }
        expected_next = Some(n + 1);
    }
    let of = |gop: u8| frames.iter().filter(|(n, _)| n / 16 == gop).count();
    assert_eq!(of(0), 12, "the GOP before the dark: whole");
    assert_eq!(of(2), 12, "the GOP after the dark: whole");
    assert!(
        of(1) < 12,
        "the GOP sent into the dark went stale and was reset, not retransmitted ({} of 12 written)",
        of(1)
    );
    // Audio is never reset: all of it arrives.
    let audio_got = got
        .iter()
        .filter(|m| m.type_id == message_type::AUDIO)
        .count();
    assert_eq!(audio_got, sent_audio);
}

/// Reads DATAGRAMs from `conn` until `PROBE_TRAIN_PACKETS` train packets came (10 s at most
/// for each; the one-byte path probes are passed over); their sizes.
async fn read_probe_train(conn: &quinn::Connection) -> Vec<usize> {
    let mut sizes = Vec::new();
    while sizes.len() < PROBE_TRAIN_PACKETS {
        let datagram = tokio::time::timeout(Duration::from_secs(10), conn.read_datagram())
            .await
            .expect("the probe train came within 10 s")
            .unwrap();
        if datagram.len() >= PROBE_TRAIN_PACKET_MIN {
            sizes.push(datagram.len());
        }
    }
    sizes
}

/// A gateway's and an edge's ends of a new connection on loopback ([`endpoints`]).
async fn live_connection(state: &std::path::Path) -> (quinn::Connection, quinn::Connection) {
    let (server, client) = endpoints(state);
    let server_addr = server.local_addr().unwrap();
    let (edge, gateway) = tokio::join!(
        async {
            client
                .connect(server_addr, "localhost")
                .unwrap()
                .await
                .unwrap()
        },
        async { server.accept().await.unwrap().await.unwrap() }
    );
    (gateway, edge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_live_the_gateway_sends_its_probe_train_at_once_and_the_edge_after_it() {
    let state = tempfile::tempdir().unwrap();
    // The gateway's end, watched, sends its train at once: each packet padding as large as a
    // datagram may be.
    let (gateway, edge) = live_connection(state.path()).await;
    let _watch = PathWatch::start(&gateway);
    let sizes = read_probe_train(&edge).await;
    assert!(sizes.iter().all(|&n| n <= 1500), "probe sizes {sizes:?}");
    // An edge's end that hears no train from its gateway (not watched here) sends its own
    // after the wait, not at once.
    let (gateway, edge) = live_connection(state.path()).await;
    let watched = std::time::Instant::now();
    let _watch = PathWatch::start(&edge);
    let sizes = read_probe_train(&gateway).await;
    assert!(
        watched.elapsed() >= PROBE_TRAIN_WAIT,
        "{:?}",
        watched.elapsed()
    );
    assert!(
        sizes.iter().all(|&n| (1000..=1500).contains(&n)),
        "probe sizes {sizes:?}"
    );
}

/// Forwards datagrams between a client and `server` as a link of `bps` each way would: each
/// direction's datagrams leave one after another, each after its bytes' time at that rate.
async fn paced_relay(server: SocketAddr, bps: u64) -> SocketAddr {
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = socket.local_addr().unwrap();
    let (to_client, mut client_queue) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let (to_server, mut server_queue) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let client = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    let serialize = move |len: usize| Duration::from_secs_f64(len as f64 * 8.0 / bps as f64);
    let out = socket.clone();
    tokio::spawn(async move {
        while let Some(datagram) = server_queue.recv().await {
            tokio::time::sleep(serialize(datagram.len())).await;
            let _ = out.send_to(&datagram, server).await;
        }
    });
    let (out, to) = (socket.clone(), client.clone());
    tokio::spawn(async move {
        while let Some(datagram) = client_queue.recv().await {
            tokio::time::sleep(serialize(datagram.len())).await;
            let addr = *to.lock().unwrap();
            if let Some(addr) = addr {
                let _ = out.send_to(&datagram, addr).await;
            }
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let datagram = buf[..n].to_vec();
            if from == server {
                let _ = to_client.send(datagram);
            } else {
                *client.lock().unwrap() = Some(from);
                let _ = to_server.send(datagram);
            }
        }
    });
    addr
}

/// Waits (5 s at most) until `watch` says its path is measured; how long that was after `since`.
async fn measured(watch: &PathWatch, since: std::time::Instant) -> Duration {
    tokio::time::timeout(Duration::from_secs(5), watch.probe_train_crossed())
        .await
        .expect("measured within 5 s");
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_slow_path_an_edge_is_measured_only_once_its_own_train_crossed() {
    let state = tempfile::tempdir().unwrap();
    let (server, client) = endpoints(state.path());
    // 1.5 Mbit/s each way: a train of 20 packets of about 1.2 kB takes about 130 ms.
    let bps = 1_500_000;
    let relay = paced_relay(server.local_addr().unwrap(), bps).await;
    let (edge, gateway) = tokio::join!(
        async { client.connect(relay, "localhost").unwrap().await.unwrap() },
        async { server.accept().await.unwrap().await.unwrap() }
    );
    let size = edge.max_datagram_size().expect("datagrams") as u64;
    let train =
        Duration::from_secs_f64((PROBE_TRAIN_PACKETS as u64 * size * 8) as f64 / bps as f64);
    let watched = std::time::Instant::now();
    let _gateway_watch = PathWatch::start(&gateway);
    // The gateway's train came at the link's rate, slower than a fast path's: the edge sent
    // its own and waited for it to cross, so both trains' time at the link's rate passed.
    let waited = measured(&PathWatch::start(&edge), watched).await;
    assert!(
        waited >= train * 2,
        "measured after {waited:?}, two trains take {:?}",
        train * 2
    );
    assert!(
        waited < PROBE_TRAIN_WAIT + PROBE_TRAIN_CROSSING,
        "{waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_fast_path_an_edge_is_measured_once_its_train_went_and_without_a_gateways_after_the_wait(
) {
    let state = tempfile::tempdir().unwrap();
    // Both ends watched on loopback: the gateway's train comes at once (a fast path), so the
    // edge does not wait for its own to cross, nor for the wait a train that never came takes.
    let (gateway, edge) = live_connection(state.path()).await;
    let watched = std::time::Instant::now();
    let _gateway_watch = PathWatch::start(&gateway);
    let waited = measured(&PathWatch::start(&edge), watched).await;
    assert!(waited < PROBE_TRAIN_WAIT, "{waited:?}");

    // The gateway's end not watched: it sends no train, so the edge's goes after the wait,
    // and only then is the edge measured.
    let (gateway, edge) = live_connection(state.path()).await;
    let watched = std::time::Instant::now();
    let watch = PathWatch::start(&edge);
    let waited = tokio::spawn({
        let watch = watch.clone();
        async move { measured(&watch, watched).await }
    });
    let sizes = read_probe_train(&gateway).await;
    assert_eq!(sizes.len(), PROBE_TRAIN_PACKETS);
    let waited = waited.await.unwrap();
    assert!(
        waited >= PROBE_TRAIN_WAIT,
        "measured {waited:?} after the watch started, before the train could go"
    );
    // Once measured, it stays so.
    tokio::time::timeout(Duration::from_secs(1), watch.probe_train_crossed())
        .await
        .expect("measured once, measured for good");
}
