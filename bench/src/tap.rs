//! The pusher's tap: a loopback relay between an RTMP pusher and its first hop that notes when
//! each media frame left the pusher, so a frame's latency is counted from its due time on the
//! source's own clock rather than from the pusher process's start.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use rtmpq_demo::clock::monotonic_ns;
use rtmpq_proto::chunk::{ChunkDecoder, ChunkLimits};
use rtmpq_proto::message::MediaKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::netem::in_netns;

/// Bytes a client sends before its first chunk: C0, C1 and C2 of the RTMP handshake.
const CLIENT_HANDSHAKE: usize = 1 + 1536 + 1536;

/// The most bytes the tap reads from the pusher at once (and holds before the first hop takes
/// them: the pusher feels the first hop's back-pressure as it would without the tap).
const READ_BYTES: usize = 64 << 10;

/// The source's clock as the tap sees it: when it read zero.
///
/// A live source sends no frame before its due time (its clock's start plus the frame's
/// timestamp). ffmpeg's `-re` comes close but not quite: it releases a packet once the packet
/// before it is due (and polls every 10 ms, and its muxer holds a video packet for the audio
/// beside it), so a packet leaves up to a packet interval early and up to about 40 ms late.
/// What holds for both kinds of pusher: a frame leaves no earlier than its clock's start plus
/// the smaller of its own timestamp and the one before it. The start is the earliest
/// departure less that timestamp. For a pusher that sends each frame at its due time this is
/// exact to within the smallest gap between two consecutive timestamps (0: audio and video
/// share timestamps); for ffmpeg it is the start of its `-re` clock to within its polling.
/// Taken from each frame's own timestamp alone, the start came out 22-23 ms earlier
/// with ffmpeg (measured over loopback on the clean profile), and every latency that much
/// higher.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SourceClock {
    start_ns: Option<i64>,
    /// The earliest departure less the frame's own timestamp: the start if no frame ever left
    /// before it was due.
    own_start_ns: Option<i64>,
    frames: u64,
}

impl SourceClock {
    /// Notes a media frame with timestamp `ts_ms` that left the pusher at `at_ns`, after a
    /// frame with timestamp `before_ms` (`None` for the first).
    pub fn note(&mut self, ts_ms: u32, before_ms: Option<u32>, at_ns: u64) {
        let start_at = |ts: u32| at_ns as i64 - i64::from(ts) * 1_000_000;
        let earliest = |was: Option<i64>, now: i64| Some(was.map_or(now, |w| w.min(now)));
        let bound = before_ms.map_or(ts_ms, |b| b.min(ts_ms));
        self.start_ns = earliest(self.start_ns, start_at(bound));
        self.own_start_ns = earliest(self.own_start_ns, start_at(ts_ms));
        self.frames += 1;
    }

    /// When the source's clock read zero, ns on CLOCK_MONOTONIC (`None` before a frame).
    pub fn start_ns(&self) -> Option<i64> {
        self.start_ns
    }

    /// How much later the start is than the earliest departure less the frame's own
    /// timestamp, ns: what every latency would gain were no frame taken to leave before it
    /// was due (with ffmpeg, 22-23 ms).
    pub fn spread_ns(&self) -> Option<i64> {
        Some(self.start_ns? - self.own_start_ns?)
    }

    /// Media frames noted.
    pub fn frames(&self) -> u64 {
        self.frames
    }
}

/// A running tap: connect the pusher to [`Tap::addr`] instead of its first hop.
#[derive(Debug)]
pub struct Tap {
    /// Where the tap listens, on the pusher's loopback.
    pub addr: SocketAddr,
    clock: Arc<Mutex<SourceClock>>,
    task: JoinHandle<()>,
}

impl Tap {
    /// The source's clock as noted so far.
    pub fn clock(&self) -> SourceClock {
        *self.clock.lock().expect("source clock")
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a tap in network namespace `ns` (`""` for this one) that relays each connection to
/// `target`, noting the pusher's media frames on the way.
pub async fn start(ns: &str, target: SocketAddr) -> std::io::Result<Tap> {
    let listener = in_netns(ns, || {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.set_nonblocking(true)?;
        Ok(l)
    })?;
    let listener = TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    let clock = Arc::new(Mutex::new(SourceClock::default()));
    let ns = ns.to_owned();
    let noted = clock.clone();
    let task = tokio::spawn(async move {
        // The relays end with the tap (dropping the set aborts them).
        let mut relays = JoinSet::new();
        while let Ok((pusher, _)) = listener.accept().await {
            let (ns, clock) = (ns.clone(), noted.clone());
            relays.spawn(async move {
                if let Err(e) = relay(pusher, &ns, target, &clock).await {
                    tracing::debug!(reason = %e, "tap relay ended");
                }
            });
            while relays.try_join_next().is_some() {}
        }
    });
    Ok(Tap { addr, clock, task })
}

/// Relays one pusher connection to `target`, noting each media frame the pusher sends.
async fn relay(
    mut pusher: TcpStream,
    ns: &str,
    target: SocketAddr,
    clock: &Mutex<SourceClock>,
) -> std::io::Result<()> {
    let ns = ns.to_owned();
    let hop = tokio::task::spawn_blocking(move || {
        in_netns(&ns, || {
            let tcp = std::net::TcpStream::connect(target)?;
            tcp.set_nonblocking(true)?;
            Ok(tcp)
        })
    })
    .await
    .map_err(std::io::Error::other)??;
    let mut hop = TcpStream::from_std(hop)?;
    hop.set_nodelay(true)?;
    pusher.set_nodelay(true)?;
    let (mut from_pusher, mut to_pusher) = pusher.split();
    let (mut from_hop, mut to_hop) = hop.split();
    let upstream = async {
        let mut reader = FrameReader::default();
        let mut buf = vec![0; READ_BYTES];
        loop {
            let n = from_pusher.read(&mut buf).await?;
            if n == 0 {
                return to_hop.shutdown().await;
            }
            let at = monotonic_ns();
            // As the edge's RTMP reader does: a pusher with Nagle's algorithm on (ffmpeg)
            // holds a frame's tail until what it sent before is acknowledged.
            rtmpq_hop::rtmp::acknowledge_at_once(from_pusher.as_ref());
            reader.read(&buf[..n], |ts, before| {
                clock.lock().expect("source clock").note(ts, before, at);
            });
            to_hop.write_all(&buf[..n]).await?;
        }
    };
    let downstream = async {
        tokio::io::copy(&mut from_hop, &mut to_pusher).await?;
        to_pusher.shutdown().await
    };
    tokio::try_join!(upstream, downstream).map(|_| ())
}

/// Finds the media frames in what a client sends: the handshake skipped, then its chunks.
#[derive(Debug)]
struct FrameReader {
    /// Handshake bytes still to skip.
    handshake_left: usize,
    decoder: ChunkDecoder,
    pending: BytesMut,
    /// Set once the chunks could not be read: the relay goes on, the noting stops.
    broken: bool,
    /// The timestamp of the last media frame read.
    last_ts: Option<u32>,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader {
            handshake_left: CLIENT_HANDSHAKE,
            decoder: ChunkDecoder::new(ChunkLimits::default()),
            pending: BytesMut::new(),
            broken: false,
            last_ts: None,
        }
    }
}

impl FrameReader {
    /// Reads `bytes`, calling `frame` for each audio or video frame they complete with its
    /// timestamp and the one of the media frame before it (see [`SourceClock`]).
    fn read(&mut self, mut bytes: &[u8], mut frame: impl FnMut(u32, Option<u32>)) {
        let skip = self.handshake_left.min(bytes.len());
        self.handshake_left -= skip;
        bytes = &bytes[skip..];
        if self.broken || bytes.is_empty() {
            return;
        }
        self.pending.extend_from_slice(bytes);
        loop {
            match self.decoder.decode(&mut self.pending) {
                Ok(Some(msg)) => {
                    if matches!(
                        msg.media_kind(),
                        MediaKind::VideoFrame | MediaKind::VideoKeyframe | MediaKind::Audio
                    ) {
                        frame(msg.timestamp, self.last_ts);
                        self.last_ts = Some(msg.timestamp);
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(reason = %e, "tap: the pusher's chunks could not be read; its frames are not noted");
                    self.broken = true;
                    self.pending.clear();
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rtmpq_proto::chunk::ChunkEncoder;
    use rtmpq_proto::message::{message_type, Control, Message};

    fn video(ts: u32, key: bool, len: usize) -> Message {
        let mut payload = vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        payload.resize(len, 0xab);
        Message {
            type_id: message_type::VIDEO,
            stream_id: 1,
            timestamp: ts,
            payload: Bytes::from(payload),
        }
    }

    #[test]
    fn the_clock_starts_at_the_earliest_departure_less_the_smaller_timestamp() {
        let mut clock = SourceClock::default();
        assert_eq!(clock.start_ns(), None);
        clock.note(0, None, 5_000_000_000);
        clock.note(33, Some(0), 5_040_000_000); // 7 ms behind its due time
        clock.note(66, Some(33), 5_060_000_000); // released once the frame before was due
        assert_eq!(clock.start_ns(), Some(5_000_000_000));
        // Counted from its own timestamp the 66 ms frame left 6 ms early: that start is 6 ms
        // sooner.
        assert_eq!(clock.spread_ns(), Some(6_000_000));
        // A timestamp below the one before bounds the start by its own.
        clock.note(40, Some(66), 5_030_000_000);
        assert_eq!(clock.start_ns(), Some(4_990_000_000));
        assert_eq!(clock.frames(), 4);
    }

    #[test]
    fn frames_are_found_after_the_handshake_across_any_split() {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&[3; CLIENT_HANDSHAKE]);
        let mut encoder = ChunkEncoder::default();
        encoder.set_chunk_size(4096, &mut wire);
        let frames = [
            video(0, true, 9000),
            video(33, false, 300),
            video(66, false, 5000),
            video(40, false, 100),
        ];
        for f in &frames {
            encoder.encode(f, &mut wire);
        }
        for split in [1, 7, 128, 1537, 4000, wire.len()] {
            let mut reader = FrameReader::default();
            let mut seen = Vec::new();
            for piece in wire.chunks(split) {
                reader.read(piece, |ts, before| seen.push((ts, before)));
            }
            let expected = [(0, None), (33, Some(0)), (66, Some(33)), (40, Some(66))];
            assert_eq!(seen, expected, "read {split} bytes at a time");
        }
    }

    #[tokio::test]
    async fn the_tap_relays_both_ways_and_notes_the_frames_that_pass() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tap = start("", server.local_addr().unwrap()).await.unwrap();
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&[3; CLIENT_HANDSHAKE]);
        let mut encoder = ChunkEncoder::default();
        encoder.encode(&video(0, true, 3000), &mut wire);
        encoder.encode(&video(40, false, 200), &mut wire);
        let before = monotonic_ns();
        let mut pusher = TcpStream::connect(tap.addr).await.unwrap();
        pusher.write_all(&wire).await.unwrap();
        let (mut hop, _) = server.accept().await.unwrap();
        let mut relayed = vec![0; wire.len()];
        hop.read_exact(&mut relayed).await.unwrap();
        assert_eq!(relayed, wire[..]);
        hop.write_all(b"reply").await.unwrap();
        let mut reply = [0; 5];
        pusher.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"reply");
        // Noted before the bytes went on, so by now.
        let clock = tap.clock();
        assert_eq!(clock.frames(), 2);
        let start = clock.start_ns().unwrap();
        assert!(start >= before as i64 && start <= monotonic_ns() as i64);
    }

    #[test]
    fn unreadable_chunks_stop_the_noting_not_the_reader() {
        let mut reader = FrameReader::default();
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&[3; CLIENT_HANDSHAKE]);
        // A chunk size past what the decoder accepts.
        let too_large = Control::SetChunkSize(0x7fff_ffff).to_message();
        ChunkEncoder::default().encode(&too_large, &mut wire);
        ChunkEncoder::default().encode(&video(0, true, 100), &mut wire);
        let mut seen = 0;
        reader.read(&wire, |_, _| seen += 1);
        assert!(reader.broken);
        reader.read(&[0; 64], |_, _| seen += 1);
        assert_eq!(seen, 0);
        assert!(reader.pending.is_empty());
    }
}
