//! Enhanced RTMP v2 through the tunnel and a real nginx-rtmp (application `elive`, with
//! `wait_key off`: nginx-rtmp takes no ex-header key frame for one): every framing, and
//! ex-header Opus audio, arrives byte-exact, and after a gateway SIGKILL the new publish
//! carries every track's headers before its first frame and decodes on its own.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rtmpq_demo::client::RtmpClient;
use rtmpq_demo::enhanced::{self, ClipItem, Framing};
use rtmpq_proto::command::Amf0Value;
use rtmpq_proto::media_packet::Media;
use rtmpq_proto::message::{message_type, MediaKind, Message};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(30);

/// The test clip (H.264 + AAC, made by ffmpeg) as clip items.
async fn clip_items(seconds: u32) -> Vec<ClipItem> {
    let flv = std::fs::read(clip(seconds).await).unwrap();
    enhanced::read_flv(&flv).unwrap()
}

/// The test clip's H.264 with its audio made Opus by libopus (48 kHz) in place of the AAC.
async fn opus_clip_items(seconds: u32) -> Vec<ClipItem> {
    let flv = clip(seconds).await;
    let items = enhanced::read_flv(&std::fs::read(&flv).unwrap()).unwrap();
    let ogg = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audio.ogg");
        let status = std::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-i"])
            .arg(&flv)
            .args(["-vn", "-c:a", "libopus", "-b:a", "96k", "-f", "ogg"])
            .arg(&path)
            .status()
            .expect("ffmpeg runs");
        assert!(
            status.success(),
            "ffmpeg could not encode the clip's audio as Opus"
        );
        std::fs::read(path).unwrap()
    })
    .await
    .unwrap();
    let opus = enhanced::read_ogg_opus(&ogg).unwrap();
    enhanced::with_video_of(opus, &items)
}

/// Everything a player of `stream` on nginx receives, with when it arrived.
type Received = Arc<Mutex<Vec<(Instant, Message)>>>;

async fn play(nginx: &Nginx, stream: &str) -> Received {
    let mut player = RtmpClient::connect(&nginx.rtmp.to_string(), "elive")
        .await
        .unwrap();
    player.play(stream).await.unwrap();
    let received: Received = Arc::default();
    let sink = received.clone();
    tokio::spawn(async move {
        while let Ok(Some(msg)) = player.next_message().await {
            sink.lock().unwrap().push((Instant::now(), msg));
        }
    });
    received
}

/// Whether `msg` is nginx telling a player that a publish of its stream started.
fn publish_notify(msg: &Message) -> bool {
    rtmpq_proto::command::Command::parse(msg)
        .ok()
        .flatten()
        .and_then(|c| c.status().map(|s| s.code == "NetStream.Play.PublishNotify"))
        .unwrap_or(false)
}

/// Whether video at or past `ms` reached the player.
fn video_reached(received: &Received, ms: u32) -> bool {
    received
        .lock()
        .unwrap()
        .iter()
        .any(|(_, m)| m.type_id == message_type::VIDEO && m.timestamp >= ms)
}

/// Connects to the edge as an E-RTMP client and publishes `stream`.
async fn enhanced_publisher(edge: std::net::SocketAddr, stream: &str) -> RtmpClient {
    let tcp = TcpStream::connect(edge).await.unwrap();
    let (mut client, connected) = RtmpClient::over_enhanced(tcp, &edge.to_string(), "elive")
        .await
        .unwrap();
    assert_eq!(connected.name, "_result");
    // nginx's own answer (its information object carries objectEncoding; an edge's fast-start
    // answer does not): an E-RTMP client reads the origin's capabilities, not the edge's.
    let from_origin = matches!(
        connected.values.get(1),
        Some(Amf0Value::Object(info)) if info.contains_key("objectEncoding")
    );
    assert!(
        from_origin,
        "connect was answered by the edge: {connected:?}"
    );
    client.publish(stream).await.unwrap();
    client
}

fn media(msgs: impl IntoIterator<Item = Message>) -> Vec<(u8, Vec<u8>)> {
    msgs.into_iter()
        .filter(|m| matches!(m.type_id, message_type::AUDIO | message_type::VIDEO))
        .map(|m| (m.type_id, m.payload.to_vec()))
        .collect()
}

/// Every framing (ex-header with HDR metadata, multitrack one and two tracks, ModEx) with
/// AAC, and ex-header H.264 with Opus, pushed at once through one edge and gateway to nginx:
/// each player gets every audio and video message, byte for byte, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_enhanced_rtmp_framing_arrives_byte_exact_through_nginx() {
    capture_logs();
    let items = clip_items(4).await;
    let opus = enhanced::frame_clip(&opus_clip_items(4).await, Framing::ExHeader);
    let nginx = Nginx::start().await;
    let stack = Stack::start(Some(format!("rtmp://{}", nginx.rtmp))).await;
    let streams = Framing::ALL
        .into_iter()
        .map(|framing| {
            let name = format!("{framing:?}").to_lowercase();
            (name, enhanced::frame_clip(&items, framing))
        })
        .chain([("opus".to_string(), opus)]);
    let mut runs = Vec::new();
    for (name, msgs) in streams {
        let received = play(&nginx, &name).await;
        let (edge, stream) = (stack.edge_addr, name.clone());
        let pusher = tokio::spawn(async move {
            let client = enhanced_publisher(edge, &stream).await;
            enhanced::publish_paced(&client, &msgs).await.unwrap();
            msgs
        });
        runs.push((name, received, pusher));
    }
    for (stream, received, pusher) in runs {
        let sent = media(pusher.await.unwrap());
        wait_until(LIMIT, "every message at the player", || {
            received
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, m)| m.type_id == 8 || m.type_id == 9)
                .count()
                >= sent.len()
        })
        .await;
        let got = media(received.lock().unwrap().iter().map(|(_, m)| m.clone()));
        // Audio may overtake video (the queue sends it first); each kind keeps its order.
        for kind in [message_type::AUDIO, message_type::VIDEO] {
            let of = |v: &[(u8, Vec<u8>)]| -> Vec<Vec<u8>> {
                v.iter()
                    .filter(|(t, _)| *t == kind)
                    .map(|(_, p)| p.clone())
                    .collect()
            };
            let (got, sent) = (of(&got), of(&sent));
            if let Some(i) = (0..got.len().min(sent.len())).find(|&i| got[i] != sent[i]) {
                let head = |p: &[u8]| p[..p.len().min(12)].to_vec();
                panic!(
                    "{stream}: type {kind} message {i} changed: {:?} sent {:?}",
                    head(&got[i]),
                    head(&sent[i])
                );
            }
            assert_eq!(got.len(), sent.len(), "{stream}: type {kind} messages");
        }
    }
    stack.shutdown.cancel();
}

/// The gateway is killed (SIGKILL) under two E-RTMP pushes and started again: one with two
/// video tracks (HDR metadata) and two AAC tracks in multitrack messages, one with ex-header
/// H.264 and Opus. The new publish nginx gets of each starts with every track's headers, then
/// each video track's key frame, and every track decodes on its own (ffmpeg, 0 errors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_gateway_restart_the_new_enhanced_publish_decodes_on_its_own() {
    require("ffmpeg");
    capture_logs();
    let pushes = [
        (
            "multi",
            enhanced::frame_clip(&clip_items(12).await, Framing::TwoTracks),
            [
                (Media::Audio, 0),
                (Media::Audio, 1),
                (Media::Video, 0),
                (Media::Video, 1),
            ]
            .as_slice(),
        ),
        (
            "opus",
            enhanced::frame_clip(&opus_clip_items(12).await, Framing::ExHeader),
            [(Media::Audio, 0), (Media::Video, 0)].as_slice(),
        ),
    ];
    let nginx = Nginx::start().await;
    let origin = format!("rtmp://{}", nginx.rtmp);
    let mut stack = CrashableGateway::start(&origin).await;
    let edge = stack.edge;
    let mut runs = Vec::new();
    for (stream, msgs, tracks) in pushes {
        let received = play(&nginx, stream).await;
        let pusher = tokio::spawn(async move {
            let client = enhanced_publisher(edge, stream).await;
            enhanced::publish_paced(&client, &msgs).await
        });
        runs.push((stream, tracks, received, pusher));
    }
    // Kill it two seconds into the streams (mid-GOP), when the headers are long past.
    for (_, _, received, _) in &runs {
        wait_until(LIMIT, "two seconds of video at the player", || {
            video_reached(received, 2000)
        })
        .await;
    }
    // What each player got before the crash is the old publish; nginx tells its players when
    // the new one starts (NetStream.Play.PublishNotify), in order with the media, so what the
    // old publish still had in flight is not taken for the new one.
    let crash_at: Vec<usize> = runs.iter().map(|r| r.2.lock().unwrap().len()).collect();
    stack.crash_and_restart().await;
    let dir = tempfile::tempdir().unwrap();
    for ((stream, tracks, received, pusher), crash_at) in runs.into_iter().zip(crash_at) {
        pusher
            .await
            .unwrap()
            .expect("the pusher noticed the gateway restart");
        wait_until(LIMIT, "the end of the clip at the player", || {
            video_reached(&received, 11_000)
        })
        .await;
        let got: Vec<Message> = received.lock().unwrap()[crash_at..]
            .iter()
            .map(|(_, m)| m.clone())
            .collect();
        let notified = got
            .iter()
            .rposition(publish_notify)
            .unwrap_or_else(|| panic!("{stream}: nginx announced no new publish"));
        let new_publish: Vec<Message> = got[notified..]
            .iter()
            .filter(|m| matches!(m.type_id, 8 | 9))
            .cloned()
            .collect();
        // Headers first: the video sequence start and metadata, the audio sequence start
        // (each for every track of the push).
        let first_frame = new_publish
            .iter()
            .position(|m| m.media_kind() != MediaKind::Header)
            .expect("frames after the restart");
        let headers = &new_publish[..first_frame];
        assert_eq!(
            headers.len(),
            3,
            "{stream}: video sequence start, video metadata, audio sequence start"
        );
        let streams = enhanced::elementary_streams(&new_publish);
        assert_eq!(
            streams.keys().copied().collect::<Vec<_>>(),
            tracks.to_vec(),
            "{stream}: its tracks"
        );
        for ((media, track), s) in &streams {
            assert_eq!(
                s.frames_before_config, 0,
                "{stream}: {media:?} track {track}"
            );
            assert!(
                s.frames > 50,
                "{stream}: {media:?} track {track}: {} frames",
                s.frames
            );
            if *media == Media::Video {
                assert_eq!(
                    s.starts_with_key_frame,
                    Some(true),
                    "{stream}: video track {track}"
                );
            }
        }
        let errors = tokio::task::spawn_blocking({
            let dir = dir.path().join(stream);
            std::fs::create_dir(&dir).unwrap();
            move || enhanced::decode_errors(&streams, &dir)
        })
        .await
        .unwrap();
        for (track, errors) in errors {
            assert_eq!(errors, Some(0), "{stream}: {track:?} after the restart");
        }
    }
    stack.shutdown.cancel();
}
