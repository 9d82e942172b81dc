//! Shared harness for the integration tests: a real nginx-rtmp, real ffmpeg pushers and players,
//! the gateway and edge started in-process, and captured log lines.

#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rtmpq_edge::{Edge, EdgeConfig};
use rtmpq_gateway::{Gateway, GatewayConfig};
use rtmpq_hop::rtmp::{handshake, HandshakeRole, Outbound, RtmpConnection, RtmpReader};
use rtmpq_hop::tunnel::{write_frame, FrameReader};
use rtmpq_proto::wire::{Frame, SessionId, WIRE_VERSION};
use rtmpq_telemetry::{EndedSession, EventCounts, SessionStatus, Telemetry};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Panics with a clear message when a tool the test needs is missing: these tests never skip.
pub fn require(tool: &str) {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is required for this test and was not found on PATH; run .ci/run (it installs ffmpeg, nginx and libnginx-mod-rtmp)"
    );
}

static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

struct CaptureWriter;

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.get_or_init(Default::default)
            .lock()
            .unwrap()
            .extend_from_slice(buf);
        // Through the test harness's capture (threads spawned by a test inherit it), so a
        // test's process logs are printed only when that test fails.
        eprint!("{}", String::from_utf8_lossy(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs a log subscriber that keeps every line for [`wait_for_log`].
pub fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(|| CaptureWriter)
            .try_init();
    });
}

/// Waits until a captured log line contains every one of `needles`; returns that line.
pub async fn wait_for_log(needles: &[&str], limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        {
            let logs = LOGS.get_or_init(Default::default).lock().unwrap();
            let text = String::from_utf8_lossy(&logs);
            if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no log line containing {needles:?} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many captured log lines contain every one of `needles`.
pub fn count_logs(needles: &[&str]) -> usize {
    let logs = LOGS.get_or_init(Default::default).lock().unwrap();
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

/// Reads until the peer closes; fails if it does not within the limit.
pub async fn expect_closed(tcp: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{what}: the edge kept the connection open");
}

/// Connects and completes a proper RTMP handshake with the edge.
pub async fn handshaken(edge: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(edge).await.unwrap();
    handshake(&mut tcp, HandshakeRole::Client, Duration::from_secs(5))
        .await
        .unwrap();
    tcp
}

/// The value of the first sample of `name` whose labels contain all of `labels`.
pub fn sample(scrape: &str, name: &str, labels: &[&str]) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A session stream opened on `gateway` by a raw tunnel client speaking the documented wire
/// format (HELLO, WELCOME, SESSION_OPEN), for sending what a real edge never would.
pub struct RawTunnel {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub frames: FrameReader,
    /// The control stream stays open for the connection's life.
    _control: quinn::SendStream,
    _endpoint: quinn::Endpoint,
}

impl RawTunnel {
    /// Connects with `tls`, says HELLO, waits for WELCOME and opens one session.
    pub async fn open(gateway: SocketAddr, tls: rustls::ClientConfig) -> RawTunnel {
        let open = Frame::SessionOpen {
            session_id: SessionId(rand_id()),
            latency_budget_ms: 0,
            carrier: Default::default(),
        };
        RawTunnel::open_as(gateway, tls, "rogue", open).await
    }

    /// Connects with `tls` as `edge_id`, says HELLO, waits for WELCOME and opens a session
    /// stream whose first frame is `first`.
    pub async fn open_as(
        gateway: SocketAddr,
        tls: rustls::ClientConfig,
        edge_id: &str,
        first: Frame,
    ) -> RawTunnel {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let config = rtmpq_hop::transport::client_config(tls, Default::default()).unwrap();
        let conn = endpoint
            .connect_with(config, gateway, "127.0.0.1")
            .unwrap()
            .await
            .unwrap();
        let (mut control, recv) = conn.open_bi().await.unwrap();
        let hello = Frame::Hello {
            version: WIRE_VERSION,
            edge_id: edge_id.into(),
            token: String::new(),
            release_after_ms: 0,
        };
        write_frame(&mut control, &hello).await.unwrap();
        let welcome = FrameReader::new(recv).next().await.unwrap();
        assert!(
            matches!(welcome, Some(Frame::Welcome { .. })),
            "{welcome:?}"
        );
        let (mut send, recv) = conn.open_bi().await.unwrap();
        write_frame(&mut send, &first).await.unwrap();
        RawTunnel {
            conn,
            send,
            frames: FrameReader::new(recv),
            _control: control,
            _endpoint: endpoint,
        }
    }

    /// Reads until SESSION_CLOSE; returns its code and reason.
    pub async fn closed(&mut self) -> (rtmpq_proto::wire::CloseCode, String) {
        session_closed(&mut self.frames).await
    }
}

/// A TCP carrier connection to a gateway by a raw client speaking the documented wire format
/// (TLS with the TCP ALPN, HELLO, WELCOME, then one session's frames).
pub struct RawTcpTunnel {
    pub send: rtmpq_hop::stream::SendHalf,
    pub frames: FrameReader,
}

impl RawTcpTunnel {
    /// The TLS handshake to `gateway` (its TCP carrier) trusting `pin`, nothing said yet.
    pub async fn dial(
        gateway: SocketAddr,
        pin: &str,
    ) -> Result<rtmpq_hop::stream::TlsConnection, rtmpq_hop::tcp::DialError> {
        let trust = rtmpq_certs::GatewayTrust::Pin(pin.parse().unwrap());
        let tls = rtmpq_hop::tcp::client_tls(rtmpq_certs::client_tls(trust, None).unwrap());
        rtmpq_hop::tcp::dial(&gateway.to_string(), "127.0.0.1", &tls, LIMIT_RAW).await
    }

    /// Connects, says HELLO as `edge_id`, and waits for WELCOME (or the refusal).
    pub async fn greet(
        gateway: SocketAddr,
        pin: &str,
        edge_id: &str,
    ) -> Result<RawTcpTunnel, rtmpq_hop::tcp::GreetError> {
        let tls = Self::dial(gateway, pin).await.unwrap();
        let hello = Frame::Hello {
            version: WIRE_VERSION,
            edge_id: edge_id.into(),
            token: String::new(),
            release_after_ms: 0,
        };
        let (send, frames) = rtmpq_hop::tcp::greet(tls, &hello).await?;
        Ok(RawTcpTunnel { send, frames })
    }

    /// Connects as `edge_id` and sends `first` as the session's first frame.
    pub async fn open_as(gateway: SocketAddr, pin: &str, edge_id: &str, first: Frame) -> Self {
        let mut t = Self::greet(gateway, pin, edge_id).await.unwrap();
        write_frame(&mut t.send, &first).await.unwrap();
        t
    }

    /// Reads until SESSION_CLOSE; returns its code and reason.
    pub async fn closed(&mut self) -> (rtmpq_proto::wire::CloseCode, String) {
        session_closed(&mut self.frames).await
    }
}

/// How long a raw client waits for a gateway's TCP and TLS handshake.
const LIMIT_RAW: Duration = Duration::from_secs(10);

pub fn rand_id() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// Waits until `ready` says yes (checked every 20 ms), failing after `limit` with `what`.
pub async fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The body of `GET path` from an HTTP server on `addr`.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    match response.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_owned(),
        None => response,
    }
}

/// A port that was free a moment ago (for servers like nginx that cannot report port 0).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_for_port(addr: SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "{addr} did not open within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A real nginx with the RTMP module, in its own temp dir.
pub struct Nginx {
    pub rtmp: SocketAddr,
    pub http: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx-rtmp with a `live` application, an `elive` one with `wait_key off` (for
    /// Enhanced RTMP; its players are told `NetStream.Play.PublishNotify` when a publisher
    /// starts) and a stat page.
    pub async fn start() -> Nginx {
        require("nginx");
        let module = Path::new("/usr/lib/nginx/modules/ngx_rtmp_module.so");
        assert!(
            module.exists(),
            "{} missing: install libnginx-mod-rtmp",
            module.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let (rtmp_port, http_port) = (free_port(), free_port());
        let conf = format!(
            r#"
load_module {module};
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
rtmp {{
    server {{
        listen 127.0.0.1:{rtmp_port};
        chunk_size 4096;
        application live {{
            live on;
            record off;
        }}
        # For Enhanced RTMP: nginx-rtmp reads no ex-header key frame as one. Players hear
        # when a new publish starts (the tests split what they got there).
        application elive {{
            live on;
            record off;
            wait_key off;
            publish_notify on;
        }}
    }}
}}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{http_port};
        location /stat {{ rtmp_stat all; }}
    }}
}}
"#,
            module = module.display()
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let rtmp: SocketAddr = format!("127.0.0.1:{rtmp_port}").parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
        let child = Nginx::spawn(dir.path(), rtmp, http).await;
        Nginx {
            rtmp,
            http,
            child,
            _dir: dir,
        }
    }

    async fn spawn(dir: &Path, rtmp: SocketAddr, http: SocketAddr) -> Child {
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .kill_on_drop(true)
            .spawn()
            .expect("start nginx");
        wait_for_port(rtmp, Duration::from_secs(10)).await;
        wait_for_port(http, Duration::from_secs(10)).await;
        child
    }

    /// Stops nginx (SIGKILL: every connection drops, as in a crash or `systemctl restart`)
    /// and starts it again on the same ports.
    pub async fn restart(&mut self) {
        self.child.kill().await.unwrap();
        self.child = Nginx::spawn(self._dir.path(), self.rtmp, self.http).await;
    }

    /// nginx's error log (at `info`: it names every stream published or played).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("error.log")).unwrap_or_default()
    }

    /// Waits until nginx's log contains `needle` (nginx's own words are the fact here).
    pub async fn wait_for_log(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "nginx never logged {needle:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The stat page's XML.
    pub async fn stat(&self) -> String {
        http_get(self.http, "/stat").await
    }

    /// Waits until nginx lists `n` players (non-publishing clients) of `stream`.
    pub async fn wait_for_players(&self, stream: &str, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let stat = self.stat().await;
            let players = stream_section(&stat, stream)
                .map(|s| s.matches("<client>").count() - s.matches("<publishing/>").count())
                .unwrap_or(0);
            if players >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not list {n} players of {stream} within {limit:?}:\n{stat}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until nginx lists `stream` with a publisher, or without one (`publishing` false).
    pub async fn wait_for_publisher(&self, stream: &str, publishing: bool, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let stat = self.stat().await;
            let has = stream_section(&stat, stream).is_some_and(|s| s.contains("<publishing/>"));
            if has == publishing {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx publisher state of {stream} never became {publishing}:\n{stat}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn stream_section<'a>(stat: &'a str, stream: &str) -> Option<&'a str> {
    let start = stat.find(&format!("<name>{stream}</name>"))?;
    let rest = &stat[start..];
    Some(&rest[..rest.find("</stream>").unwrap_or(rest.len())])
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A 640x360 H.264 + AAC FLV clip of `seconds` at a constant 1500 kbit/s (cached under
/// target/), made by the bench's clip generator.
pub async fn clip(seconds: u32) -> PathBuf {
    require("ffmpeg");
    let shape = rtmpq_bench::ClipShape {
        width: 640,
        height: 360,
        video_kbps: 1500,
        duration: Duration::from_secs(seconds.into()),
        b_frames: false,
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tokio::task::spawn_blocking(move || rtmpq_bench::make_clip(dir, shape))
        .await
        .unwrap()
        .expect("ffmpeg could not generate the test clip")
}

/// One packet as `-f framemd5` lists it: size and MD5 of the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketHash {
    pub size: u64,
    pub md5: String,
}

/// The packets of a stream's two tracks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tracks {
    pub video: Vec<PacketHash>,
    pub audio: Vec<PacketHash>,
}

impl Tracks {
    /// Packets in both tracks.
    pub fn len(&self) -> usize {
        self.video.len() + self.audio.len()
    }

    fn read(dir: &Path) -> Tracks {
        let read = |name: &str| {
            parse_framemd5(&std::fs::read_to_string(dir.join(name)).unwrap_or_default())
        };
        Tracks {
            video: read("video.framemd5"),
            audio: read("audio.framemd5"),
        }
    }
}

/// ffmpeg arguments that write each track's framemd5 to its own file in `dir`, flushed per
/// packet: with one output per track, ffmpeg's interleaver never holds a packet back.
fn framemd5_outputs(dir: &Path) -> Vec<String> {
    let mut args = Vec::new();
    for (map, name) in [("0:v", "video.framemd5"), ("0:a", "audio.framemd5")] {
        args.extend(
            [
                "-map",
                map,
                "-c",
                "copy",
                "-flush_packets",
                "1",
                "-f",
                "framemd5",
            ]
            .map(String::from),
        );
        args.push(dir.join(name).display().to_string());
    }
    args
}

/// Parses framemd5 output into per-packet hashes.
pub fn parse_framemd5(text: &str) -> Vec<PacketHash> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            PacketHash {
                size: f[4].parse().unwrap(),
                md5: f[5].to_owned(),
            }
        })
        .collect()
}

/// The packet hashes of a file (what a stream-copy push sends).
pub async fn framemd5_of(path: &Path) -> Tracks {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i"])
        .arg(path)
        .args(framemd5_outputs(dir.path()))
        .status()
        .await
        .unwrap();
    assert!(status.success());
    Tracks::read(dir.path())
}

/// A real ffmpeg player writing the framemd5 of what it receives.
pub struct Player {
    child: Child,
    dir: tempfile::TempDir,
}

impl Player {
    /// Starts playing `url`.
    pub fn start(url: &str) -> Player {
        require("ffmpeg");
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-i", url])
            .args(framemd5_outputs(dir.path()))
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Player { child, dir }
    }

    /// Waits until the player has written `expected` packets (ffmpeg keeps waiting after an
    /// nginx stream ends, so the packets arriving are the signal), then stops it and returns
    /// what it received. Fails after `limit` with what arrived so far.
    pub async fn finish(mut self, expected: usize, limit: Duration) -> Tracks {
        let deadline = Instant::now() + limit;
        let read = Tracks::read;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let got = read(self.dir.path());
                assert!(
                    got.len() >= expected,
                    "player exited ({status}) after {} of {expected} packets",
                    got.len()
                );
                return got;
            }
            let got = read(self.dir.path());
            if got.len() >= expected || Instant::now() >= deadline {
                let _ = self.child.kill().await;
                // Packets are flushed one by one, so what is on disk is complete lines.
                return read(self.dir.path());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Pushes `clip` to `url` with ffmpeg (see [`push`]) and fails the test if ffmpeg does.
pub async fn push_ok(clip: &Path, url: &str) {
    let out = push(clip, url).await;
    assert!(
        out.status.success(),
        "pusher to {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pushes `clip` to `url` in real time with a real ffmpeg (stream copy); waits for the end.
pub async fn push(clip: &Path, url: &str) -> std::process::Output {
    require("ffmpeg");
    Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-re",
            "-i",
        ])
        .arg(clip)
        .args(["-c", "copy", "-f", "flv", url])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

/// Asserts two packet lists are equal, per track, with a readable message.
pub fn assert_same_packets(pushed: &Tracks, played: &Tracks, what: &str) {
    for (track, a, b) in [
        ("video", &pushed.video, &played.video),
        ("audio", &pushed.audio, &played.audio),
    ] {
        assert!(!a.is_empty(), "{what}: nothing pushed on {track}");
        let first_diff = a.iter().zip(b).position(|(x, y)| x != y);
        assert!(
            a.len() == b.len() && first_diff.is_none(),
            "{what}: {track}: pushed {} packets, played {}; first difference at {:?}",
            a.len(),
            b.len(),
            first_diff
        );
    }
}

/// A `rtmpq` child process and the lines it writes to stderr.
pub struct Process {
    pub child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Process {
    pub fn start(args: &[&str]) -> Process {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_rtmpq"));
        command.args(args);
        Process::spawn(command)
    }

    /// Starts `command` (logging at info, its stderr read line by line).
    pub fn spawn(mut command: tokio::process::Command) -> Process {
        let mut child = command
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                eprintln!("[child] {line}");
                let _ = tx.send(line);
            }
        });
        Process {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`; returns it.
    pub async fn wait_for(&mut self, needle: &str) -> String {
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
            panic!("process ended without a line containing {needle:?}")
        })
        .await;
        found.unwrap_or_else(|_| panic!("no line containing {needle:?} within 60 s"))
    }

    /// Every line so far.
    pub fn lines_so_far(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// Kills it with SIGKILL (a crash: nothing is closed or flushed) and waits until it is gone.
    pub async fn crash(&mut self) {
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        self.child.wait().await.unwrap();
    }

    /// Resident memory, bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kib * 1024
    }
}

/// The value after `key=` in a log line (up to the next space), with `Some(..)` unwrapped.
pub fn field(line: &str, key: &str) -> String {
    let start = line.find(&format!("{key}=")).unwrap() + key.len() + 1;
    let value = line[start..].split_whitespace().next().unwrap();
    value
        .trim_start_matches("Some(")
        .trim_end_matches(')')
        .to_owned()
}

pub fn write_config(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A `rtmpq gateway` process with certificates from `rtmpq certs init`, on a UDP port of
/// its own choosing (read from its ready line).
pub struct GatewayProcess {
    pub process: Process,
    pub addr: SocketAddr,
    /// Its certificate's pin, for edges.
    pub pin: String,
    /// The "gateway ready" log line (listen and metrics addresses).
    pub ready: String,
    /// Its cert dir, also its state dir: a restart in it keeps the pin and the reset key.
    pub dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Starts `rtmpq gateway --listen 127.0.0.1:0 --cert-dir DIR` with `extra` arguments.
    pub async fn start(extra: &[&str]) -> GatewayProcess {
        let dir = tempfile::tempdir().unwrap();
        let pin = rtmpq_certs::init(dir.path(), &[]).unwrap().to_string();
        GatewayProcess::start_in(dir, pin, "127.0.0.1:0", extra).await
    }

    /// Starts `rtmpq gateway --listen LISTEN --cert-dir DIR --state-dir DIR` with `extra`
    /// arguments, in a `dir` made by [`GatewayProcess::start`] (a restart).
    pub async fn start_in(
        dir: tempfile::TempDir,
        pin: String,
        listen: &str,
        extra: &[&str],
    ) -> GatewayProcess {
        let path = dir.path().display().to_string();
        let mut args = vec![
            "gateway",
            "--listen",
            listen,
            "--cert-dir",
            &path,
            "--state-dir",
            &path,
        ];
        args.extend_from_slice(extra);
        let mut process = Process::start(&args);
        let ready = process.wait_for("gateway ready").await;
        let addr = field(&ready, "listen").parse().unwrap();
        GatewayProcess {
            process,
            addr,
            pin,
            ready,
            dir,
        }
    }
}

/// Waits for a healthy push and its player, and checks the player got every packet.
pub async fn assert_healthy_push(
    pusher: tokio::task::JoinHandle<std::process::Output>,
    player: Player,
    pushed: &Tracks,
    what: &str,
) {
    let out = pusher.await.unwrap();
    assert!(
        out.status.success(),
        "{what}: the healthy pusher failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let played = player.finish(pushed.len(), Duration::from_secs(60)).await;
    assert_same_packets(pushed, &played, what);
}

/// A gateway bound on loopback for `origin` (None: embedded), its self-signed identity in a
/// temp dir.
pub async fn local_gateway(origin: Option<String>) -> (Gateway, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let gateway = Gateway::bind(GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        origin,
        state_dir: state.path().to_owned(),
        ..GatewayConfig::default()
    })
    .await
    .unwrap();
    (gateway, state)
}

/// A gateway and an edge running in-process.
pub struct Stack {
    pub gateway_addr: SocketAddr,
    pub edge_addr: SocketAddr,
    pub pin: String,
    /// The hops' live registries: what their status APIs serve.
    pub gateway: Arc<Telemetry>,
    pub edge: Arc<Telemetry>,
    pub shutdown: CancellationToken,
    pub _state: tempfile::TempDir,
}

impl Stack {
    /// Starts a gateway for `origin` (None: embedded) and an edge pinned to it.
    pub async fn start(origin: Option<String>) -> Stack {
        Self::start_with(origin, |c| c).await
    }

    /// Like [`start`](Self::start), with the edge configured further by `tweak`.
    pub async fn start_with(
        origin: Option<String>,
        tweak: impl FnOnce(EdgeConfig) -> EdgeConfig,
    ) -> Stack {
        let (gateway, state) = local_gateway(origin).await;
        Self::with_gateway(gateway, state, tweak).await
    }

    /// Starts a gateway on loopback with the embedded origin, configured further by `tweak`,
    /// and an edge pinned to it.
    pub async fn with_gateway_config(tweak: impl FnOnce(GatewayConfig) -> GatewayConfig) -> Stack {
        let state = tempfile::tempdir().unwrap();
        let gateway = Gateway::bind(tweak(GatewayConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            state_dir: state.path().to_owned(),
            ..GatewayConfig::default()
        }))
        .await
        .unwrap();
        Self::with_gateway(gateway, state, |c| c).await
    }

    /// Starts `gateway` and an edge (configured further by `tweak`).
    pub async fn with_gateway(
        gateway: Gateway,
        state: tempfile::TempDir,
        tweak: impl FnOnce(EdgeConfig) -> EdgeConfig,
    ) -> Stack {
        let gateway_addr = gateway.local_addr();
        let pin = gateway.pin().to_string();
        let gateway_telemetry = gateway.telemetry();
        let shutdown = CancellationToken::new();
        tokio::spawn(gateway.run(shutdown.clone()));
        let (edge_addr, edge) = spawn_edge(
            tweak(EdgeConfig {
                pin: Some(pin.clone()),
                ..edge_config(gateway_addr)
            }),
            &shutdown,
        )
        .await;
        Stack {
            gateway_addr,
            edge_addr,
            pin,
            gateway: gateway_telemetry,
            edge,
            shutdown,
            _state: state,
        }
    }

    /// `rtmp://EDGE/app/stream`.
    pub fn edge_url(&self, stream: &str) -> String {
        format!("rtmp://{}/live/{stream}", self.edge_addr)
    }
}

/// An edge config for `gateway` listening on a loopback port chosen by the OS.
pub fn edge_config(gateway: SocketAddr) -> EdgeConfig {
    EdgeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        gateway: vec![gateway.to_string()],
        // QUIC only: what these tests assert of QUIC must not depend on a race a loaded
        // machine could tip to TCP (the TCP carrier and `auto` have tests of their own).
        transport: rtmpq_edge::config::EdgeTransport::Quic,
        ..EdgeConfig::default()
    }
}

/// Starts an edge; returns its RTMP address.
pub async fn start_edge(config: EdgeConfig, shutdown: &CancellationToken) -> SocketAddr {
    spawn_edge(config, shutdown).await.0
}

/// Starts an edge; returns its RTMP address and its live registry.
pub async fn spawn_edge(
    config: EdgeConfig,
    shutdown: &CancellationToken,
) -> (SocketAddr, Arc<Telemetry>) {
    let edge = Edge::bind(config).await.unwrap();
    let addr = edge.local_addr();
    let telemetry = edge.telemetry();
    tokio::spawn(edge.run(shutdown.clone()));
    (addr, telemetry)
}

/// Waits until `hop` lists an ended session that `wanted` picks (the status API's
/// `/api/v1/sessions/ended`); returns it.
pub async fn ended_session(
    hop: &Telemetry,
    what: &str,
    wanted: impl Fn(&EndedSession) -> bool,
) -> EndedSession {
    poll_for(
        &format!("ended session {what}"),
        || hop.ended_sessions(),
        wanted,
    )
    .await
}

/// Polls `list` every 20 ms for up to 60 s until `wanted` picks an item; returns it.
pub async fn poll_for<T: std::fmt::Debug>(
    what: &str,
    list: impl Fn() -> Vec<T>,
    wanted: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let items = list();
        if let Some(found) = items.into_iter().find(|s| wanted(s)) {
            return found;
        }
        assert!(Instant::now() < deadline, "no {what}: {:#?}", list());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `hop` lists a live session that `wanted` picks (the status API's
/// `/api/v1/sessions`, refreshed once a second); returns it.
pub async fn live_session(
    hop: &Telemetry,
    what: &str,
    wanted: impl Fn(&SessionStatus) -> bool,
) -> SessionStatus {
    poll_for(&format!("live session {what}"), || hop.sessions(), wanted).await
}

/// A live session of `stream` set up again at least once.
pub fn set_up_again(stream: &str) -> impl Fn(&SessionStatus) -> bool + '_ {
    move |s| s.stream == stream && s.set_up_again >= 1
}

/// Waits until `hop`'s own event counts (not the process-wide Prometheus counters, which
/// tests running beside this one add to) satisfy `wanted`.
pub async fn hop_event(hop: &Telemetry, what: &str, wanted: impl Fn(&EventCounts) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !wanted(&hop.events()) {
        assert!(
            Instant::now() < deadline,
            "{what} never happened: {:?}",
            hop.events()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An ended session with close code `code` whose reason contains `words`.
pub fn ended_with<'a>(code: &'a str, words: &'a str) -> impl Fn(&EndedSession) -> bool + 'a {
    move |s| s.code == code && s.reason.contains(words)
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A raw RTMP client through `edge`: handshake, then `connect` to `app`, `createStream` and
/// `then`, sent at once without waiting for answers (until the edge closes the connection).
pub async fn raw_rtmp_client(
    edge: SocketAddr,
    app: &str,
    then: Vec<rtmpq_proto::message::Message>,
) -> (RtmpReader, Outbound) {
    use rtmpq_proto::command::{self, Amf0Value};
    let tcp = TcpStream::connect(edge).await.unwrap();
    let RtmpConnection { reader, writer } = RtmpConnection::connect(tcp, Duration::from_secs(10))
        .await
        .unwrap();
    let (tx, _writer) = writer.spawn(64, None);
    let url = format!("rtmp://{edge}/{app}");
    let setup = [
        command::request("connect", 1.0, 0, vec![command::connect_object(app, &url)]),
        command::request("createStream", 2.0, 0, vec![Amf0Value::Null]),
    ];
    for msg in setup.into_iter().chain(then) {
        if tx.send(msg).await.is_err() {
            break;
        }
    }
    (reader, tx)
}

/// A gateway process for `origin` with an in-process edge pinned to it: for tests that kill
/// the gateway under a live session.
pub struct CrashableGateway {
    gateway: Option<GatewayProcess>,
    origin: String,
    /// The edge's RTMP address.
    pub edge: SocketAddr,
    /// The edge's live registry.
    pub edge_status: Arc<Telemetry>,
    /// Stops the edge.
    pub shutdown: CancellationToken,
}

impl CrashableGateway {
    /// Starts `rtmpq gateway --origin ORIGIN` and an edge pinned to it.
    pub async fn start(origin: &str) -> CrashableGateway {
        let gateway = GatewayProcess::start(&["--origin", origin]).await;
        let shutdown = CancellationToken::new();
        let config = EdgeConfig {
            pin: Some(gateway.pin.clone()),
            ..edge_config(gateway.addr)
        };
        let (edge, edge_status) = spawn_edge(config, &shutdown).await;
        CrashableGateway {
            gateway: Some(gateway),
            origin: origin.to_owned(),
            edge,
            edge_status,
            shutdown,
        }
    }

    /// Kills the gateway (SIGKILL) and starts it again at once, on the same address with the
    /// same identity and state directory.
    pub async fn crash_and_restart(&mut self) {
        let mut old = self.gateway.take().expect("a gateway runs");
        old.process.crash().await;
        let GatewayProcess { dir, pin, addr, .. } = old;
        let args = ["--origin", self.origin.as_str()];
        let restarted = GatewayProcess::start_in(dir, pin, &addr.to_string(), &args).await;
        self.gateway = Some(restarted);
    }
}

/// A gateway on loopback with the embedded origin, running until `shutdown`: for tests that
/// talk to it over raw tunnels.
pub struct RunningGateway {
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// Its certificate's pin.
    pub pin: rtmpq_certs::Fingerprint,
    /// Stops it.
    pub shutdown: CancellationToken,
    _state: tempfile::TempDir,
}

impl RunningGateway {
    /// Binds and runs it.
    pub async fn start() -> RunningGateway {
        let (gateway, state) = local_gateway(None).await;
        let (addr, pin) = (gateway.local_addr(), gateway.pin());
        let shutdown = CancellationToken::new();
        tokio::spawn(gateway.run(shutdown.clone()));
        RunningGateway {
            addr,
            pin,
            shutdown,
            _state: state,
        }
    }

    /// TLS for a raw tunnel to it, pinned to its certificate.
    pub fn tls(&self) -> rustls::ClientConfig {
        rtmpq_certs::client_tls(rtmpq_certs::GatewayTrust::Pin(self.pin), None).unwrap()
    }
}

/// A UDP relay to `to` that forwards until `cut` is set, then drops everything.
pub async fn cuttable_relay(to: SocketAddr, cut: Arc<std::sync::atomic::AtomicBool>) -> SocketAddr {
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
        let mut client = None;
        loop {
            tokio::select! {
                r = front.recv_from(&mut up) => {
                    let (n, from) = r.unwrap();
                    client = Some(from);
                    if !cut.load(std::sync::atomic::Ordering::Relaxed) {
                        let _ = back.send_to(&up[..n], to).await;
                    }
                }
                r = back.recv_from(&mut down) => {
                    let (n, _) = r.unwrap();
                    if let (Some(c), false) = (client, cut.load(std::sync::atomic::Ordering::Relaxed)) {
                        let _ = front.send_to(&down[..n], c).await;
                    }
                }
            }
        }
    });
    addr
}

/// Asserts that a flood of `attempts` failed handshakes since `started` (the gateway's lines
/// from `lines_before` on) wrote at most one log line per interval, the remainder summed up
/// in one "more failed handshakes" line with the TLS failures counted.
pub async fn assert_handshake_log_bounded(
    gateway: &mut Process,
    lines_before: usize,
    started: Instant,
    attempts: usize,
) {
    // The flood's remainder is summed up in one line once the interval passes.
    let summary = gateway.wait_for("more failed handshakes").await;
    let took = started.elapsed();
    let lines: Vec<&String> = gateway.lines_so_far()[lines_before..]
        .iter()
        .filter(|l| l.contains("handshake"))
        .collect();
    let intervals = took.as_secs() / rtmpq_telemetry::HANDSHAKE_LOG_INTERVAL.as_secs() + 2;
    eprintln!(
        "{attempts} failed handshakes in {took:?}: {} log lines",
        lines.len()
    );
    assert!(
        lines.len() as u64 <= intervals,
        "{} lines for {attempts} failures in {took:?}: {lines:#?}",
        lines.len()
    );
    assert!(summary.contains("tls="), "{summary}");
}

/// Reads `frames` until SESSION_CLOSE (skipping messages and resume tokens); its code and
/// reason.
pub async fn session_closed(frames: &mut FrameReader) -> (rtmpq_proto::wire::CloseCode, String) {
    loop {
        match frames.next().await.unwrap() {
            Some(Frame::SessionClose { code, reason }) => return (code, reason),
            Some(Frame::Msg(_) | Frame::ResumeToken(_)) => continue,
            other => panic!("expected SESSION_CLOSE, got {other:?}"),
        }
    }
}
