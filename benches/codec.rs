//! Criterion micro-benchmarks of the hot paths: chunk decode and encode (at the RTMP default
//! chunk size of 128 and at 4096) and tunnel framing (MSG frames out and back in).
//!
//! `cargo bench --bench codec`

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rtmpq_proto::chunk::{ChunkDecoder, ChunkEncoder, ChunkLimits};
use rtmpq_proto::wire::{Frame, FrameDecoder};
use rtmpq_proto::Message;

/// Two seconds of a 3 Mbit/s stream: 30 fps video (a 5x key frame every 60) and 47 audio
/// frames a second, interleaved like a real pusher's.
fn stream() -> Vec<Message> {
    let inter = 3_000_000 / 8 / 64;
    let mut msgs = Vec::new();
    for i in 0..60u32 {
        let size = if i == 0 { inter * 5 } else { inter };
        let mut video = vec![if i == 0 { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        video.resize(size, (i % 251) as u8);
        msgs.push(Message::new(9, 1, i * 33, video));
        for a in 0..2 {
            msgs.push(Message::new(
                8,
                1,
                i * 33 + a * 16,
                [0xaf, 1, 7, 7, 7].repeat(80),
            ));
        }
    }
    msgs
}

fn encode(msgs: &[Message], chunk_size: u32) -> BytesMut {
    let mut enc = ChunkEncoder::default();
    let mut out = BytesMut::with_capacity(1 << 20);
    enc.set_chunk_size(chunk_size, &mut out);
    for m in msgs {
        enc.encode(m, &mut out);
    }
    out
}

fn chunks(c: &mut Criterion) {
    let msgs = stream();
    let payload: u64 = msgs.iter().map(|m| m.payload.len() as u64).sum();
    let mut group = c.benchmark_group("chunk");
    group.throughput(Throughput::Bytes(payload));
    for size in [128u32, 4096] {
        group.bench_function(format!("encode/{size}"), |b| {
            b.iter(|| encode(&msgs, size).len())
        });
        let bytes = encode(&msgs, size);
        group.bench_function(format!("decode/{size}"), |b| {
            b.iter(|| {
                let mut dec = ChunkDecoder::new(ChunkLimits::default());
                let mut buf = bytes.clone();
                let mut n = 0;
                while let Some(m) = dec.decode(&mut buf).unwrap() {
                    n += m.payload.len();
                }
                n
            })
        });
    }
    group.finish();
}

fn framing(c: &mut Criterion) {
    let msgs = stream();
    let payload: u64 = msgs.iter().map(|m| m.payload.len() as u64).sum();
    let frames: Vec<Frame> = msgs.into_iter().map(Frame::Msg).collect();
    let mut group = c.benchmark_group("tunnel_frame");
    group.throughput(Throughput::Bytes(payload));
    group.bench_function("encode", |b| {
        b.iter(|| {
            let mut out = BytesMut::with_capacity(1 << 20);
            for f in &frames {
                f.encode(&mut out);
            }
            out.len()
        })
    });
    let mut bytes = BytesMut::new();
    for f in &frames {
        f.encode(&mut bytes);
    }
    group.bench_function("decode", |b| {
        b.iter(|| {
            let mut buf = bytes.clone();
            let mut n = 0;
            while let Some(f) = FrameDecoder::default().decode(&mut buf).unwrap() {
                if let Frame::Msg(m) = f {
                    n += m.payload.len();
                }
            }
            n
        })
    });
    group.finish();
}

criterion_group!(benches, chunks, framing);
criterion_main!(benches);
