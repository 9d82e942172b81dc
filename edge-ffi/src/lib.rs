//! The rtmpq edge as a C library (`librtmpqedge.so` / `.a`, header `include/rtmpq_edge.h`):
//! an app that encodes and pushes on the device (a phone app with an RTMP push SDK, a kiosk,
//! a camera) starts an edge inside itself ([`rtmpq_edge_start`]), pushes plain RTMP to its
//! local URL ([`rtmpq_edge_rtmp_url`]), reads its figures ([`rtmpq_edge_figures`]) and events
//! ([`rtmpq_edge_next_event`]), and stops it with a drain ([`rtmpq_edge_stop`]).
//!
//! Every function may be called from any thread, on one edge from several at once; no Rust
//! panic crosses into C (one inside becomes the function's error return). An edge runs on
//! threads of its own (a two-thread runtime); the app's threads only wait in start and stop.

use std::collections::{HashSet, VecDeque};
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtmpq_edge::{Edge, EdgeConfig};
use rtmpq_telemetry::Telemetry;
use tokio_util::sync::CancellationToken;

/// A running edge; opaque to C.
pub struct RtmpqEdge {
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: CancellationToken,
    running: Option<tokio::task::JoinHandle<()>>,
    telemetry: Arc<Telemetry>,
    url: String,
    events: Arc<Mutex<VecDeque<String>>>,
    grace: Duration,
}

/// An edge's figures at one moment (refreshed once a second).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RtmpqEdgeFigures {
    /// 1 while the QUIC connection to the gateway is up, else 0.
    pub connected: u8,
    /// The path's smoothed round trip, ms (0 while not connected).
    pub rtt_ms: f64,
    /// Packets lost on the path, percent of those sent.
    pub loss_percent: f64,
    /// The path's estimated rate (the congestion controller's), bit/s.
    pub path_bitrate_bps: u64,
    /// Live sessions (pushers and players on the local URL).
    pub sessions: u32,
    /// Of them, those carried over TCP (where UDP is blocked).
    pub sessions_on_tcp: u32,
    /// Media bitrate of all live sessions over the last 5 s, bit/s.
    pub bitrate_bps: f64,
    /// The longest time media has waited in a session's queue now, ms.
    pub queue_age_ms: f64,
    /// Video frames the live sessions dropped (past the latency budget or the queue bound).
    pub dropped_video_frames: u64,
    /// Audio frames they dropped.
    pub dropped_audio_frames: u64,
}

/// Most events kept for [`rtmpq_edge_next_event`]; past it the oldest go.
const MAX_EVENTS: usize = 256;
/// How often the events are looked for.
const EVENT_LOOK: Duration = Duration::from_millis(200);

/// Runs `f`, turning a panic into `failed`.
fn guarded<T>(failed: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(failed)
}

/// Copies `text` into `buf` of `len` bytes, cut to fit, NUL-terminated (nothing if `buf` is
/// NULL or `len` 0); returns `text`'s length.
///
/// # Safety
/// `buf` is NULL or points to `len` writable bytes.
unsafe fn write_c(text: &str, buf: *mut c_char, len: usize) -> usize {
    if !buf.is_null() && len > 0 {
        let n = text.len().min(len - 1);
        // SAFETY: the caller gives `len` writable bytes; `n + 1 <= len`.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
            *buf.add(n) = 0;
        }
    }
    text.len()
}

/// Starts an edge configured by `config_toml`, the `edge.toml` format (at least `gateway` and
/// `pin` or `ca`; `listen = "127.0.0.1:0"` takes a free port). Returns the edge, or NULL with
/// why in `error` (NUL-terminated, cut to `error_len` bytes; `error` may be NULL).
///
/// # Safety
/// `config_toml` is a NUL-terminated string; `error` is NULL or points to `error_len`
/// writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rtmpq_edge_start(
    config_toml: *const c_char,
    error: *mut c_char,
    error_len: usize,
) -> *mut RtmpqEdge {
    let started = guarded(Err("the edge panicked while starting".to_owned()), || {
        if config_toml.is_null() {
            return Err("no config".to_owned());
        }
        // SAFETY: the caller gives a NUL-terminated string.
        let text = unsafe { CStr::from_ptr(config_toml) }
            .to_str()
            .map_err(|_| "the config is not UTF-8".to_owned())?;
        start(text)
    });
    match started {
        Ok(edge) => Box::into_raw(Box::new(edge)),
        Err(why) => {
            // SAFETY: as the caller promised for `error`.
            unsafe { write_c(&why, error, error_len) };
            std::ptr::null_mut()
        }
    }
}

fn start(text: &str) -> Result<RtmpqEdge, String> {
    let config: EdgeConfig = toml::from_str(text).map_err(|e| format!("config: {e}"))?;
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rtmpq-edge")
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let edge = runtime
        .block_on(Edge::bind(config))
        .map_err(|e| e.to_string())?
        .without_status_line();
    let telemetry = edge.telemetry();
    let url = format!("rtmp://{}", edge.local_addr());
    let shutdown = CancellationToken::new();
    let events = Arc::new(Mutex::new(VecDeque::new()));
    runtime.spawn(watch_events(
        telemetry.clone(),
        events.clone(),
        shutdown.clone(),
    ));
    let running = runtime.spawn(edge.run(shutdown.clone()));
    Ok(RtmpqEdge {
        runtime: Some(runtime),
        shutdown,
        running: Some(running),
        telemetry,
        url,
        events,
        grace,
    })
}

/// Writes the URL to push to, `rtmp://127.0.0.1:PORT` (add `/APP/STREAM`), into `buf`
/// (NUL-terminated, cut to `len` bytes); returns its length without the NUL (one not below
/// `len` means `buf` was too small). 0 for a NULL edge.
///
/// # Safety
/// `edge` is NULL or an edge [`rtmpq_edge_start`] returned and not yet stopped; `buf` is NULL
/// or points to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rtmpq_edge_rtmp_url(
    edge: *const RtmpqEdge,
    buf: *mut c_char,
    len: usize,
) -> usize {
    guarded(0, || {
        // SAFETY: as the caller promised.
        let Some(edge) = (unsafe { edge.as_ref() }) else {
            return 0;
        };
        // SAFETY: as the caller promised.
        unsafe { write_c(&edge.url, buf, len) }
    })
}

/// Fills `out` with the edge's figures now; 0 on success, -1 for a NULL argument (or a
/// panic).
///
/// # Safety
/// `edge` is NULL or a live edge; `out` is NULL or points to a writable
/// [`RtmpqEdgeFigures`].
#[no_mangle]
pub unsafe extern "C" fn rtmpq_edge_figures(
    edge: *const RtmpqEdge,
    out: *mut RtmpqEdgeFigures,
) -> i32 {
    guarded(-1, || {
        // SAFETY: as the caller promised.
        let (Some(edge), false) = (unsafe { edge.as_ref() }, out.is_null()) else {
            return -1;
        };
        let figures = figures(&edge.telemetry);
        // SAFETY: `out` is writable, as the caller promised.
        unsafe { out.write(figures) };
        0
    })
}

fn figures(telemetry: &Telemetry) -> RtmpqEdgeFigures {
    let mut f = RtmpqEdgeFigures::default();
    if let Some(c) = telemetry.connections().first() {
        f.connected = 1;
        f.rtt_ms = c.rtt_seconds * 1e3;
        f.loss_percent = c.loss_percent;
        f.path_bitrate_bps = c.path_bitrate_bps;
    }
    for s in telemetry.sessions() {
        f.sessions += 1;
        f.sessions_on_tcp += u32::from(s.carrier == "tcp");
        f.bitrate_bps += s.bitrate_bps;
        f.queue_age_ms = f.queue_age_ms.max(s.queue_age_seconds * 1e3);
        f.dropped_video_frames += s.dropped_stale.video_frames + s.dropped_overflow.video_frames;
        f.dropped_audio_frames += s.dropped_stale.audio_frames + s.dropped_overflow.audio_frames;
    }
    f
}

/// Takes the oldest event not yet taken into `buf` (NUL-terminated), a JSON object on one
/// line: `{"event":"connected"}`, `{"event":"disconnected"}`, `{"event":"session_started",
/// "id":...}`, `{"event":"session_ended","id":...,"stream":...,"code":"normal","reason":...}`,
/// `{"event":"tcp_fallback"}`, `{"event":"quic_return"}`. Returns its length without the NUL;
/// 0 when none waits. One not below `len` means `buf` was too small: the event stays for a
/// bigger one. The edge keeps the last 256.
///
/// # Safety
/// `edge` is NULL or a live edge; `buf` is NULL or points to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rtmpq_edge_next_event(
    edge: *const RtmpqEdge,
    buf: *mut c_char,
    len: usize,
) -> usize {
    guarded(0, || {
        // SAFETY: as the caller promised.
        let Some(edge) = (unsafe { edge.as_ref() }) else {
            return 0;
        };
        let mut events = edge.events.lock().expect("events");
        let Some(event) = events.front() else {
            return 0;
        };
        // SAFETY: as the caller promised.
        let n = unsafe { write_c(event, buf, len) };
        if n < len {
            events.pop_front();
        }
        n
    })
}

/// Stops the edge and frees it: no new sessions, live ones told and drained (for up to its
/// `shutdown_grace_ms`), its threads ended. `edge` must not be used again; NULL is ignored.
/// Call it from an app thread (it waits for the drain).
///
/// # Safety
/// `edge` is NULL or an edge [`rtmpq_edge_start`] returned and not yet stopped, used by no
/// other thread from now on.
#[no_mangle]
pub unsafe extern "C" fn rtmpq_edge_stop(edge: *mut RtmpqEdge) {
    if edge.is_null() {
        return;
    }
    // SAFETY: made by `Box::into_raw` in `rtmpq_edge_start`, given back once.
    let mut edge = unsafe { Box::from_raw(edge) };
    guarded((), || {
        edge.shutdown.cancel();
        let runtime = edge.runtime.take().expect("a running edge has its runtime");
        if let Some(running) = edge.running.take() {
            let limit = edge.grace + Duration::from_secs(5);
            let _ = runtime.block_on(async { tokio::time::timeout(limit, running).await });
        }
        runtime.shutdown_timeout(Duration::from_secs(1));
    });
}

/// Turns what the edge's telemetry shows into events, every [`EVENT_LOOK`], until
/// `shutdown`.
async fn watch_events(
    telemetry: Arc<Telemetry>,
    events: Arc<Mutex<VecDeque<String>>>,
    shutdown: CancellationToken,
) {
    let push = |event: serde_json::Value| {
        let mut events = events.lock().expect("events");
        if events.len() == MAX_EVENTS {
            events.pop_front();
        }
        events.push_back(event.to_string());
    };
    let mut tick = tokio::time::interval(EVENT_LOOK);
    let mut connected = false;
    let mut live = HashSet::new();
    let mut ended = HashSet::new();
    let mut counts = telemetry.events();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now_connected = !telemetry.connections().is_empty();
        if now_connected != connected {
            connected = now_connected;
            let event = if connected {
                "connected"
            } else {
                "disconnected"
            };
            push(serde_json::json!({ "event": event }));
        }
        let sessions = telemetry.sessions();
        for s in &sessions {
            if live.insert(s.id.clone()) {
                push(serde_json::json!({ "event": "session_started", "id": s.id }));
            }
        }
        live.retain(|id| sessions.iter().any(|s| &s.id == id));
        let ended_now = telemetry.ended_sessions();
        for e in &ended_now {
            if !ended.contains(&e.session.id) {
                push(serde_json::json!({
                    "event": "session_ended",
                    "id": e.session.id,
                    "app": e.session.app,
                    "stream": e.session.stream,
                    "direction": e.session.direction,
                    "code": e.code,
                    "reason": e.reason,
                }));
            }
        }
        ended = ended_now.iter().map(|e| e.session.id.clone()).collect();
        let now = telemetry.events();
        for _ in counts.tcp_fallbacks..now.tcp_fallbacks {
            push(serde_json::json!({ "event": "tcp_fallback" }));
        }
        for _ in counts.quic_returns..now.quic_returns {
            push(serde_json::json!({ "event": "quic_return" }));
        }
        counts = now;
    }
}
