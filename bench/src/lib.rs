//! rtmpq-bench: a packet-level link emulator ([`netem`]) and `rtmpq bench`, which compares
//! plain RTMP over TCP (CUBIC and BBR), SRT, a plain QUIC byte pipe and the rtmpq tunnel with
//! real ffmpeg pushers and a real nginx-rtmp on emulated links.

pub mod bulk;
pub mod flood;
pub mod harness;
pub mod load;
pub mod netem;
pub mod profiles;
pub mod report;
pub mod tap;

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::{Direction, RunContext, RunResult, Transport};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Profile names; empty runs every profile.
    pub profiles: Vec<String>,
    /// Transports to compare.
    pub transports: Vec<Transport>,
    /// Directions to run each in.
    pub directions: Vec<Direction>,
    /// Clip length.
    pub duration: Duration,
    /// Video bitrate of the clip, kbit/s.
    pub video_kbps: u32,
    /// Results folder.
    pub out: PathBuf,
    /// The rtmpq binary (edge and gateway).
    pub rtmpq: PathBuf,
    /// The QUIC byte pipe reference (`benches/quic_pipe.rs`).
    pub quic_pipe: PathBuf,
    /// Push the clip's Enhanced RTMP variant (HEVC, E-RTMP v2 framing) with rtmpq's own
    /// E-RTMP pusher instead of the legacy clip with ffmpeg.
    pub enhanced: bool,
    /// The legacy clip has B-frames ([`ClipShape::b_frames`]).
    pub b_frames: bool,
}

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Not root.
    #[error("rtmpq bench needs root: it creates network namespaces and TUN devices (try sudo)")]
    NotRoot,
    /// A tool is missing.
    #[error("{0} is required (apt-get install ffmpeg nginx libnginx-mod-rtmp iproute2)")]
    Missing(&'static str),
    /// Profile names that do not exist.
    #[error("unknown profile {0:?}; known: {1}")]
    UnknownProfile(String, String),
    /// Something else.
    #[error("{0}")]
    Other(String),
}

const AUDIO_KBPS: u32 = 96;

fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The shape of a generated test clip.
#[derive(Debug, Clone, Copy)]
pub struct ClipShape {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Constant video bitrate, kbit/s.
    pub video_kbps: u32,
    /// Length.
    pub duration: Duration,
    /// Two B-frames between reference pictures, no pyramid (x264 `-bf 2`, `b-pyramid=none`,
    /// as OBS's `veryfast` commonly sends): every B-frame is disposable (`nal_ref_idc` 0).
    pub b_frames: bool,
}

impl ClipShape {
    /// The clip's file name without its extension: what it is, so one is made once per shape.
    fn name(&self) -> String {
        let ClipShape {
            width,
            height,
            video_kbps,
            duration,
            b_frames,
        } = self;
        format!(
            "clip-{width}x{height}p30-{video_kbps}k-{}s{}",
            duration.as_secs(),
            if *b_frames { "-bf2" } else { "" }
        )
    }
}

/// An FLV clip of `shape` (30 fps H.264 with a key frame every 2 s at a constant bitrate,
/// filler included, plus 96 kbit/s AAC) in `dir`, made once per shape.
pub fn make_clip(dir: &Path, shape: ClipShape) -> Result<PathBuf, BenchError> {
    let ClipShape {
        width,
        height,
        video_kbps,
        duration,
        ..
    } = shape;
    let secs = duration.as_secs();
    let path = dir.join(format!("{}.flv", shape.name()));
    if path.exists() {
        return Ok(path);
    }
    // Written aside and renamed, so a half-made clip is never taken for a whole one. The aside
    // name is unique per call: tests in one process make the same clip at once, and a shared
    // aside file would be renamed away under the second maker.
    static MAKERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let maker = MAKERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let partial = path.with_extension(format!("{}-{maker}.part", std::process::id()));
    let rate = format!("{video_kbps}k");
    let status = std::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!(
            "testsrc2=size={width}x{height}:rate=30:duration={secs}"
        ))
        .args(["-f", "lavfi", "-i"])
        .arg(format!(
            "sine=frequency=440:sample_rate=44100:duration={secs}"
        ))
        .args(["-c:v", "libx264", "-g", "60"])
        .args(if shape.b_frames {
            // ultrafast and zerolatency both turn B-frames off.
            [
                "-preset",
                "veryfast",
                "-bf",
                "2",
                "-x264-params",
                "nal-hrd=cbr:b-pyramid=none",
            ]
        } else {
            [
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
                "-x264-params",
                "nal-hrd=cbr",
            ]
        })
        .args([
            "-b:v", &rate, "-minrate", &rate, "-maxrate", &rate, "-bufsize", &rate,
        ])
        .args(["-pix_fmt", "yuv420p"])
        .args([
            "-c:a",
            "aac",
            "-b:a",
            &format!("{AUDIO_KBPS}k"),
            "-shortest",
            "-f",
            "flv",
        ])
        .arg(&partial)
        .status()
        .map_err(|e| BenchError::Other(format!("ffmpeg: {e}")))?;
    if !status.success() {
        return Err(BenchError::Other("ffmpeg could not make the clip".into()));
    }
    std::fs::rename(&partial, &path)
        .map_err(|e| BenchError::Other(format!("{}: {e}", partial.display())))?;
    Ok(path)
}

/// The Enhanced RTMP variant of a clip: the same picture as HEVC (libx265, same bitrate and
/// key frame interval, no B-frames) with `legacy`'s AAC, in E-RTMP v2 ex-header framing with
/// HDR metadata, as an FLV file of E-RTMP tags; with its video and audio frame counts.
pub fn make_enhanced_clip(
    dir: &Path,
    shape: ClipShape,
    legacy: &Path,
) -> Result<(PathBuf, u64, u64), BenchError> {
    use rtmpq_demo::enhanced;
    let ClipShape {
        width,
        height,
        video_kbps,
        duration,
        ..
    } = shape;
    let secs = duration.as_secs();
    let hevc = dir.join(format!("{}.{}.hevc", shape.name(), std::process::id()));
    let rate = video_kbps.to_string();
    let status = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!(
            "testsrc2=size={width}x{height}:rate=30:duration={secs}"
        ))
        .args(["-c:v", "libx265", "-preset", "ultrafast", "-tune", "zerolatency"])
        .args(["-pix_fmt", "yuv420p", "-x265-params"])
        .arg(format!(
            "log-level=error:keyint=60:min-keyint=60:scenecut=0:bframes=0:bitrate={rate}:vbv-maxrate={rate}:vbv-bufsize={rate}"
        ))
        .args(["-f", "hevc"])
        .arg(&hevc)
        .status()
        .map_err(|e| BenchError::Other(format!("ffmpeg: {e}")))?;
    if !status.success() {
        return Err(BenchError::Other(
            "ffmpeg could not make the HEVC clip".into(),
        ));
    }
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| BenchError::Other(format!("{}: {e}", p.display())));
    let video = enhanced::read_hevc_annex_b(&read(&hevc)?, 30);
    let _ = std::fs::remove_file(&hevc);
    let items = enhanced::read_flv(&read(legacy)?).map_err(BenchError::Other)?;
    let items = enhanced::with_audio_of(video, &items);
    let count = |media| {
        items
            .iter()
            .filter(|i| matches!(i, enhanced::ClipItem::Sample(s) if s.media == media && s.packet == rtmpq_proto::media_packet::PacketType::CodedFrames))
            .count() as u64
    };
    let (video_frames, audio_frames) = (
        count(rtmpq_proto::media_packet::Media::Video),
        count(rtmpq_proto::media_packet::Media::Audio),
    );
    let msgs = enhanced::frame_clip(&items, enhanced::Framing::ExHeader);
    let path = dir.join(format!("{}-hevc-ertmp.flv", shape.name()));
    std::fs::write(&path, enhanced::flv_file(&msgs))
        .map_err(|e| BenchError::Other(format!("{}: {e}", path.display())))?;
    Ok((path, video_frames, audio_frames))
}

/// What a clip holds, by ffprobe: its largest video key frame and its video and audio bytes.
fn clip_sizes(clip: &Path) -> Result<harness::ClipSizes, BenchError> {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "packet=codec_type,size,flags",
        ])
        .args(["-of", "csv=p=0"])
        .arg(clip)
        .output()
        .map_err(|e| BenchError::Other(format!("ffprobe: {e}")))?;
    let mut sizes = harness::ClipSizes::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut fields = line.split(',');
        let (Some(kind), Some(size), flags) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let Ok(size) = size.parse::<u64>() else {
            continue;
        };
        match kind {
            "video" => {
                sizes.video_bytes += size;
                if flags.is_some_and(|f| f.starts_with('K')) {
                    sizes.largest_key_frame = sizes.largest_key_frame.max(size);
                }
            }
            "audio" => sizes.audio_bytes += size,
            _ => {}
        }
    }
    Ok(sizes)
}

/// The clip's video frames in decode order, with what each is to the frames after it.
fn clip_frames(clip: &Path) -> Result<Vec<harness::ClipFrame>, BenchError> {
    use harness::FrameRole;
    use rtmpq_proto::message::MediaKind;
    let flv =
        std::fs::read(clip).map_err(|e| BenchError::Other(format!("{}: {e}", clip.display())))?;
    let msgs = rtmpq_demo::enhanced::flv_messages(&flv).map_err(BenchError::Other)?;
    Ok(msgs
        .iter()
        .filter_map(|m| {
            let role = match m.media_kind() {
                MediaKind::VideoKeyframe => FrameRole::Key,
                MediaKind::VideoFrame if rtmpq_proto::picture::is_disposable(m) => {
                    FrameRole::Disposable
                }
                MediaKind::VideoFrame => FrameRole::Reference,
                _ => return None,
            };
            Some(harness::ClipFrame {
                due_ms: m.timestamp,
                bytes: m.payload.len() as u64,
                role,
            })
        })
        .collect())
}

fn count_frames(clip: &Path, stream: &str) -> Result<u64, BenchError> {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", stream, "-count_packets"])
        .args(["-show_entries", "stream=nb_read_packets", "-of", "csv=p=0"])
        .arg(clip)
        .output()
        .map_err(|e| BenchError::Other(format!("ffprobe: {e}")))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| BenchError::Other("ffprobe could not count the clip's frames".into()))
}

/// Runs every chosen profile with every chosen transport and writes the results into
/// `options.out`. Prints one line per run.
pub async fn run(options: BenchOptions) -> Result<Vec<RunResult>, BenchError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BenchError::NotRoot);
    }
    for tool in ["ffmpeg", "ffprobe", "nginx", "ip", "ss"] {
        if !have(tool) {
            return Err(BenchError::Missing(tool));
        }
    }
    let stream_kbps = options.video_kbps + AUDIO_KBPS;
    let all = profiles::all(stream_kbps, options.duration);
    let chosen: Vec<profiles::Profile> = if options.profiles.is_empty() {
        all
    } else {
        let mut chosen = Vec::new();
        for name in &options.profiles {
            let found = all
                .iter()
                .find(|p| p.name == name)
                .cloned()
                .ok_or_else(|| {
                    let known: Vec<&str> = all.iter().map(|p| p.name).collect();
                    BenchError::UnknownProfile(name.clone(), known.join(", "))
                })?;
            chosen.push(found);
        }
        chosen
    };
    let io = |e: std::io::Error| BenchError::Other(e.to_string());
    std::fs::create_dir_all(&options.out).map_err(io)?;
    let out = options.out.canonicalize().map_err(io)?;
    let shape = ClipShape {
        width: 1280,
        height: 720,
        video_kbps: options.video_kbps,
        duration: options.duration,
        b_frames: options.b_frames,
    };
    let clip = make_clip(&out, shape)?;
    let certs = out.join("certs");
    let pin = match rtmpq_certs::init(&certs, &[]) {
        Ok(pin) => pin,
        Err(rtmpq_certs::CertError::Exists(_)) => rtmpq_certs::Identity::load(
            &certs.join(rtmpq_certs::files::GATEWAY_CERT),
            &certs.join(rtmpq_certs::files::GATEWAY_KEY),
        )
        .map_err(|e| BenchError::Other(e.to_string()))?
        .fingerprint(),
        Err(e) => return Err(BenchError::Other(e.to_string())),
    };
    let (clip, frames_expected, audio_expected) = if options.enhanced {
        make_enhanced_clip(&out, shape, &clip)?
    } else {
        let (v, a) = (count_frames(&clip, "v")?, count_frames(&clip, "a")?);
        (clip, v, a)
    };
    let sizes = clip_sizes(&clip)?;
    let frames = clip_frames(&clip)?;
    let ctx = RunContext {
        frames_expected,
        audio_expected,
        sizes,
        frames,
        clip,
        enhanced: options.enhanced,
        duration: options.duration,
        rtmpq: options.rtmpq.clone(),
        quic_pipe: options.quic_pipe.clone(),
        certs,
        pin: pin.to_string(),
        logs: out.join("logs"),
    };
    let mut results = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for &direction in &options.directions {
        for t in &options.transports {
            if direction == Direction::Play && *t == Transport::Srt {
                continue;
            }
            let restarts_server = chosen.iter().all(|p| {
                p.restart
                    .is_some_and(|r| r.what == profiles::Restarted::Gateway)
            });
            if restarts_server && !t.has_server_end() {
                continue;
            }
            names.push(match direction {
                Direction::Publish => t.name(),
                Direction::Play => format!("{} play", t.name()),
            });
        }
    }
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut index = 0;
    for profile in &chosen {
        for &direction in &options.directions {
            for &transport in &options.transports {
                if direction == Direction::Play && transport == Transport::Srt {
                    println!(
                        "{:<15} srt play   not measured: SRT is an ingest",
                        profile.name
                    );
                    continue;
                }
                let restarts_server = profile
                    .restart
                    .is_some_and(|r| r.what == profiles::Restarted::Gateway);
                if restarts_server && !transport.has_server_end() {
                    println!(
                        "{:<15} {:<16} not measured: no server end to restart",
                        profile.name,
                        transport.name()
                    );
                    continue;
                }
                if profile.second_gateway && !matches!(transport, Transport::Rtmpq { .. }) {
                    println!(
                        "{:<15} {:<16} not measured: one server end, nowhere to fail over",
                        profile.name,
                        transport.name()
                    );
                    continue;
                }
                index += 1;
                let r = harness::run_one(profile, transport, direction, index, &ctx)
                    .await
                    .map_err(|e| {
                        BenchError::Other(format!(
                            "{} {} over {}: {e}",
                            transport.name(),
                            direction.name(),
                            profile.name
                        ))
                    })?;
                println!(
                    "{:<15} {:<16} frames {:>4}/{:<4} audio {:>5.1} % (p99 {:>5.0} ms) latency p50 {:>6.0} ms p99 {:>6.0} ms (smallest {:>4.0}, from {}) late>1s {:>5.1} % stalls {:>3} decode errors {} ts back {} start {:>5.2} s back at floor {} survived {}",
                    r.profile,
                    r.transport,
                    r.frames_received,
                    r.frames_expected,
                    r.audio_delivered * 100.0,
                    r.audio_p99_ms,
                    r.latency_ms[0],
                    r.latency_ms[2],
                    r.floor_ms,
                    r.latency_from,
                    r.late_ratio[3] * 100.0,
                    r.stalls,
                    r.decode_errors.map_or("?".into(), |n| n.to_string()),
                    r.timestamps_back,
                    r.start_seconds.unwrap_or(f64::NAN),
                    report::recovery_text(&r),
                    r.pusher_survived
                );
                if let Some(limits) = r.link_limits {
                    println!(
                        "{:<15} {:<16} link floor {}, at most {} video frames fit, {} of them within {} ms",
                        r.profile,
                        r.transport,
                        limits
                            .floor_ms
                            .map_or("– (its rate changes)".into(), |f| format!("{f:.0} ms")),
                        limits.frames_ceiling,
                        limits.frames_in_budget,
                        limits.budget_ms
                    );
                }
                results.push(r);
                report::write_all(&out, &chosen, &results, &name_refs).map_err(io)?;
            }
        }
    }
    Ok(results)
}
