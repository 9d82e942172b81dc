//! A bulk TCP upload that shares the emulated link's bottleneck with the stream (the
//! `competing` profile): a CUBIC sender in one namespace writing as fast as it may to a sink
//! in the other, for a span of the run, and what it got through.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::netem::in_netns;

/// When the upload runs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BulkSpec {
    /// When it starts, from the pusher's start.
    pub at: Duration,
    /// How long it runs.
    pub length: Duration,
}

/// What the upload got through.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct BulkReport {
    /// Bytes the sink received while the upload ran.
    pub bytes: u64,
    /// How long it ran, s.
    pub seconds: f64,
    /// Its rate, bit/s.
    pub rate_bps: f64,
    /// The sender's congestion controller.
    pub congestion: &'static str,
}

/// The TCP port the sink listens on.
const SINK_PORT: u16 = 5201;
/// What the sender writes at a time.
const CHUNK: usize = 64 << 10;

/// A socket timeout ran out (what the sink and the sender wait in, to look at the clock).
fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Runs one upload from namespace `from` to the sink in namespace `to` at `to_addr`, by
/// `spec` (times from `started`), with CUBIC as the sender's controller (as real uploaders
/// on Windows, macOS and Android run). Blocking: call it from a blocking task.
pub fn upload(
    from: &str,
    to: &str,
    to_addr: &str,
    spec: BulkSpec,
    started: Instant,
) -> std::io::Result<BulkReport> {
    let listen: SocketAddr = format!("{to_addr}:{SINK_PORT}")
        .parse()
        .map_err(std::io::Error::other)?;
    let listener = in_netns(to, || TcpListener::bind(listen))?;
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    std::thread::sleep(spec.at.saturating_sub(started.elapsed()));
    // Connected before the sink waits to accept: a sender that cannot connect ends the
    // upload here, and the sink never waits for a peer that will not come.
    let mut conn = in_netns(from, || {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_tcp_congestion(b"cubic")?;
        socket.connect_timeout(&listen.into(), Duration::from_secs(5))?;
        Ok(TcpStream::from(socket))
    })?;
    let sink = {
        let received = received.clone();
        let done = done.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            let (mut conn, _) = listener.accept()?;
            conn.set_read_timeout(Some(Duration::from_millis(200)))?;
            let mut buf = vec![0u8; CHUNK];
            while !done.load(Ordering::Relaxed) {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        received.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if timed_out(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
    };
    conn.set_write_timeout(Some(Duration::from_millis(200)))?;
    let begun = Instant::now();
    let chunk = vec![0x5au8; CHUNK];
    while begun.elapsed() < spec.length {
        match conn.write(&chunk) {
            Ok(_) => {}
            Err(e) if timed_out(&e) => {}
            Err(e) => return Err(e),
        }
    }
    // What the sink has when the span ends is what the upload got through in it.
    let seconds = begun.elapsed().as_secs_f64();
    let bytes = received.load(Ordering::Relaxed);
    done.store(true, Ordering::Relaxed);
    let _ = conn.shutdown(std::net::Shutdown::Both);
    let _ = sink.join();
    Ok(BulkReport {
        bytes,
        seconds,
        rate_bps: bytes as f64 * 8.0 / seconds,
        congestion: "cubic",
    })
}
