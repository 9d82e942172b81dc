//! Synthetic live media: a publisher that paces 30 fps video (a key frame every 2 s) and AAC-like
//! audio in real time, stamping each frame with its due time on CLOCK_MONOTONIC, and a player
//! that measures how late each frame arrives.

use std::time::Duration;

use crate::clock::monotonic_ns;
use bytes::{BufMut, BytesMut};
use rtmpq_proto::command::{self, Amf0Value};
use rtmpq_proto::message::{message_type, MediaKind, Message};

use crate::client::{ClientError, RtmpClient};

const MAGIC: &[u8; 2] = b"RQ";
/// Video frames per second.
pub const FPS: u32 = 30;
/// Frames from one key frame to the next (2 s).
pub const GOP: u32 = 60;
const AUDIO_FRAME_NS: u64 = 1024 * 1_000_000_000 / 48_000;
const AUDIO_FRAME_BYTES: usize = 160;
/// How many inter frames a key frame weighs.
const KEYFRAME_WEIGHT: u32 = 5;

/// Settings for a synthetic stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamShape {
    /// Video bitrate in kbit/s.
    pub video_kbps: u32,
    /// How long to publish; `None` until the task is dropped.
    pub duration: Option<Duration>,
}

/// One frame's identity, carried in its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameStamp {
    /// When the frame was due, in ns on CLOCK_MONOTONIC.
    pub due_ns: u64,
    /// Its sequence number within its track.
    pub seq: u32,
}

impl FrameStamp {
    /// Reads the stamp from a media message made by [`publish_synthetic`].
    pub fn read(msg: &Message) -> Option<FrameStamp> {
        let offset = match msg.type_id {
            message_type::VIDEO => 5,
            message_type::AUDIO => 2,
            _ => return None,
        };
        let p = msg.payload.get(offset..offset + 14)?;
        (&p[..2] == MAGIC).then(|| FrameStamp {
            due_ns: u64::from_be_bytes(p[2..10].try_into().expect("8")),
            seq: u32::from_be_bytes(p[10..14].try_into().expect("4")),
        })
    }
}

fn stamped(header: &[u8], stamp: FrameStamp, size: usize, timestamp: u32, type_id: u8) -> Message {
    let mut p = BytesMut::with_capacity(size.max(header.len() + 14));
    p.put_slice(header);
    p.put_slice(MAGIC);
    p.put_u64(stamp.due_ns);
    p.put_u32(stamp.seq);
    p.resize(size.max(p.len()), 0x5a);
    Message::new(type_id, 1, timestamp, p.freeze())
}

/// Publishes a synthetic stream on `client` (already publishing), paced in real time, counting
/// the video frames sent in `sent`.
pub async fn publish_synthetic(
    client: &RtmpClient,
    shape: StreamShape,
    sent: &std::sync::atomic::AtomicU32,
) -> Result<(), ClientError> {
    let stream_id = client.stream_id();
    let on_stream = |m: Message| Message { stream_id, ..m };
    let mut meta = std::collections::HashMap::new();
    meta.insert("width".to_owned(), Amf0Value::Number(1280.0));
    meta.insert("height".to_owned(), Amf0Value::Number(720.0));
    meta.insert("framerate".to_owned(), Amf0Value::Number(f64::from(FPS)));
    meta.insert("videocodecid".to_owned(), Amf0Value::Number(7.0));
    meta.insert("audiocodecid".to_owned(), Amf0Value::Number(10.0));
    let metadata = command::data_message(
        stream_id,
        vec![
            Amf0Value::Utf8String("@setDataFrame".into()),
            Amf0Value::Utf8String("onMetaData".into()),
            Amf0Value::Object(meta),
        ],
    );
    client.send(metadata).await?;
    let avc_config = [
        0x17, 0, 0, 0, 0, 0x01, 0x42, 0x00, 0x1e, 0xff, 0xe1, 0x00, 0x04, 0x67, 0x42, 0x00, 0x1e,
        0x01, 0x00, 0x04, 0x68, 0xce, 0x3c, 0x80,
    ];
    client
        .send(on_stream(Message::new(
            message_type::VIDEO,
            0,
            0,
            avc_config.to_vec(),
        )))
        .await?;
    client
        .send(on_stream(Message::new(
            message_type::AUDIO,
            0,
            0,
            vec![0xaf, 0, 0x11, 0x90],
        )))
        .await?;

    let gop_bytes = u64::from(shape.video_kbps) * 1000 / 8 * u64::from(GOP) / u64::from(FPS);
    let inter_size = (gop_bytes / u64::from(GOP - 1 + KEYFRAME_WEIGHT)) as usize;
    let frame_ns = 1_000_000_000 / u64::from(FPS);
    let start_ns = monotonic_ns();
    let start = tokio::time::Instant::now();
    let end_ns = shape.duration.map(|d| d.as_nanos() as u64);
    let (mut video_seq, mut audio_seq) = (0u32, 0u32);
    loop {
        let video_at = u64::from(video_seq) * frame_ns;
        let audio_at = u64::from(audio_seq) * AUDIO_FRAME_NS;
        let at = video_at.min(audio_at);
        if end_ns.is_some_and(|end| at >= end) {
            return Ok(());
        }
        tokio::time::sleep_until(start + Duration::from_nanos(at)).await;
        let timestamp = (at / 1_000_000) as u32;
        let msg = if video_at <= audio_at {
            let key = video_seq % GOP == 0;
            let header = [if key { 0x17 } else { 0x27 }, 1, 0, 0, 0];
            let size = inter_size * if key { KEYFRAME_WEIGHT as usize } else { 1 };
            let stamp = FrameStamp {
                due_ns: start_ns + at,
                seq: video_seq,
            };
            video_seq += 1;
            sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            stamped(&header, stamp, size, timestamp, message_type::VIDEO)
        } else {
            let stamp = FrameStamp {
                due_ns: start_ns + at,
                seq: audio_seq,
            };
            audio_seq += 1;
            stamped(
                &[0xaf, 1],
                stamp,
                AUDIO_FRAME_BYTES,
                timestamp,
                message_type::AUDIO,
            )
        };
        client.send(on_stream(msg)).await?;
    }
}

/// Per-frame arrival figures a player collects.
#[derive(Debug, Default, Clone)]
pub struct PlayStats {
    /// Video frames received.
    pub video_frames: u64,
    /// Audio frames received.
    pub audio_frames: u64,
    /// Media payload bytes received.
    pub bytes: u64,
    /// Latency of each video frame, arrival minus due time, in ms.
    pub video_latency_ms: Vec<f64>,
    /// Video frames skipped (sequence gaps).
    pub video_gaps: u64,
    last_video_seq: Option<u32>,
}

impl PlayStats {
    /// Records one message received at `now_ns`.
    pub fn record(&mut self, msg: &Message, now_ns: u64) {
        let Some(stamp) = FrameStamp::read(msg) else {
            return;
        };
        self.bytes += msg.payload.len() as u64;
        match msg.media_kind() {
            MediaKind::VideoFrame | MediaKind::VideoKeyframe => {
                self.video_frames += 1;
                self.video_latency_ms
                    .push(now_ns.saturating_sub(stamp.due_ns) as f64 / 1e6);
                if let Some(last) = self.last_video_seq {
                    self.video_gaps += u64::from(stamp.seq.saturating_sub(last + 1));
                }
                self.last_video_seq = Some(stamp.seq);
            }
            MediaKind::Audio => self.audio_frames += 1,
            _ => {}
        }
    }

    /// The q-quantile (0..=1) of the video latencies, in ms.
    pub fn latency_quantile(&self, q: f64) -> Option<f64> {
        quantile(&self.video_latency_ms, q)
    }
}

/// The q-quantile of `values` (nearest rank), or `None` if empty.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}
