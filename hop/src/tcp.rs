//! The TCP carrier's transport, for networks that block UDP: TLS 1.3 over TCP with the same
//! certificates as QUIC and an ALPN of its own, one session per connection (HELLO, WELCOME,
//! then the session's frames, as on a QUIC connection's control and session streams), and the
//! socket kept so the queue stays in rtmpq, not in the kernel: `TCP_NOTSENT_LOWAT` holds
//! unsent bytes in the socket small, so the media queue still drops whole stale GOPs and
//! audio still goes first; BBR where the kernel has it.

use std::sync::Arc;
use std::time::Duration;

use rtmpq_proto::wire::{Frame, WireError};
use tokio::net::TcpStream;

use crate::stream::{tls_halves, RecvHalf, SendHalf, TlsConnection};
use crate::transport::PathWatch;
#[cfg(target_os = "linux")]
use crate::transport::{SocketPath, PATH_WATCH_INTERVAL};
use crate::tunnel::{write_frame, FrameReadError, FrameReader, StreamLost};

/// The ALPN protocol id of the TCP carrier, wire version 4 (as QUIC's `rtmpq/4`).
pub const TCP_ALPN: &[u8] = b"rtmpq-tcp/4";

/// Every TCP ALPN offered and accepted, newest first (one wire version so far).
pub const TCP_ALPNS: [&[u8]; 1] = [TCP_ALPN];

/// Unsent bytes the kernel may hold per TCP connection: about one large video message. Past
/// it the socket is not writable and the media queue holds what waits, where it can drop a
/// stale GOP; without it Linux lets a socket buffer megabytes (seconds of a live stream).
pub const NOTSENT_LOWAT: u32 = 64 << 10;

/// The congestion controller asked for on the TCP carrier's sockets: BBR keeps the
/// bottleneck's queue short; where the kernel lacks it, its default runs (CUBIC on most).
pub const TCP_CONGESTION: &str = "bbr";

/// TLS for the TCP carrier at the edge: `tls` (the same trust and client identity as QUIC's)
/// with the TCP ALPN.
pub fn client_tls(mut tls: rustls::ClientConfig) -> Arc<rustls::ClientConfig> {
    tls.alpn_protocols = TCP_ALPNS.iter().map(|a| a.to_vec()).collect();
    Arc::new(tls)
}

/// TLS for the TCP carrier at the gateway: `tls` (the same certificate and client-certificate
/// check as QUIC's) with the TCP ALPN; no early data (HELLO waits for the handshake).
pub fn server_tls(mut tls: rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
    tls.alpn_protocols = TCP_ALPNS.iter().map(|a| a.to_vec()).collect();
    tls.max_early_data_size = 0;
    Arc::new(tls)
}

/// Sets a carrier socket up: no Nagle delay, little unsent data in the kernel, BBR if the
/// kernel has it. Returns the congestion controller that runs (for logs and status).
pub fn tune(tcp: &TcpStream) -> String {
    let _ = tcp.set_nodelay(true);
    let sock = socket2::SockRef::from(tcp);
    tune_linux(&sock)
}

#[cfg(target_os = "linux")]
fn tune_linux(sock: &socket2::SockRef<'_>) -> String {
    let _ = sock.set_tcp_notsent_lowat(NOTSENT_LOWAT);
    let _ = sock.set_tcp_congestion(TCP_CONGESTION.as_bytes());
    controller_of(sock).to_owned()
}

/// The congestion controller the kernel runs on `sock`, by a name from a fixed set (status
/// and metric labels stay bounded): `bbr`, `cubic`, `reno`, else `other` (empty if the kernel
/// will not say).
#[cfg(target_os = "linux")]
fn controller_of(sock: &socket2::SockRef<'_>) -> &'static str {
    let Ok(raw) = sock.tcp_congestion() else {
        return "";
    };
    match raw.split(|&b| b == 0).next().unwrap_or_default() {
        b"bbr" => "bbr",
        b"cubic" => "cubic",
        b"reno" => "reno",
        b"" => "",
        _ => "other",
    }
}

#[cfg(not(target_os = "linux"))]
fn tune_linux(_: &socket2::SockRef<'_>) -> String {
    String::new()
}

/// A path watch of the carrier connection `tls`, kept up to date from the kernel's `TCP_INFO`
/// every [`PATH_WATCH_INTERVAL`] while anyone else holds it (Linux; elsewhere it stays empty
/// and the media queue keeps its whole budget).
pub fn watch_path(tls: &TlsConnection) -> Arc<PathWatch> {
    let watch = Arc::new(PathWatch::default());
    watch_socket(tls.get_ref().0, &watch);
    watch
}

#[cfg(target_os = "linux")]
fn watch_socket(tcp: &TcpStream, watch: &Arc<PathWatch>) {
    use std::os::fd::AsFd;
    // A descriptor of its own: the socket stays the sampler's to read, never another one
    // that took a closed descriptor's number. It is let go within a look of the last other
    // holder of the watch (the session's tunnel) letting go.
    watch.set_controller(controller_of(&socket2::SockRef::from(tcp)));
    let Ok(fd) = tcp.as_fd().try_clone_to_owned() else {
        return;
    };
    let watch = watch.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PATH_WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if Arc::strong_count(&watch) == 1 {
                return;
            }
            match socket_path(&fd) {
                Some(path) => watch.record_socket(&path),
                None => return,
            }
        }
    });
}

#[cfg(not(target_os = "linux"))]
fn watch_socket(_: &TcpStream, _: &Arc<PathWatch>) {}

/// What the kernel says of the TCP socket `fd`'s path; `None` if it will not say.
#[cfg(target_os = "linux")]
fn socket_path(fd: &std::os::fd::OwnedFd) -> Option<SocketPath> {
    use std::os::fd::AsRawFd;
    // SAFETY: `tcp_info` is plain integers, valid zeroed; getsockopt writes at most `len`
    // bytes into it (an older kernel writes fewer, leaving the newer fields zero) and `fd` is
    // a descriptor this function's caller owns.
    let (info, ok) = unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let ok = libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        ) == 0;
        (info, ok)
    };
    if !ok {
        return None;
    }
    let ms = |v: u32| Duration::from_millis(v.into());
    let in_flight = u64::from(info.tcpi_unacked) * u64::from(info.tcpi_snd_mss);
    Some(SocketPath {
        rtt: Duration::from_micros(info.tcpi_rtt.into()),
        min_rtt: Duration::from_micros(info.tcpi_min_rtt.into()),
        rate_bps: info.tcpi_delivery_rate.saturating_mul(8),
        queued_bytes: u64::from(info.tcpi_notsent_bytes) + in_flight,
        unacknowledged_for: if info.tcpi_unacked > 0 {
            ms(info.tcpi_last_ack_recv)
        } else {
            Duration::ZERO
        },
        heard_ago: ms(info.tcpi_last_data_recv),
    })
}

/// Why a TCP carrier connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// TCP did not connect.
    #[error("tcp connect to {address}: {source}")]
    Connect {
        /// Where to.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS handshake failed (a certificate not trusted, no common ALPN).
    #[error("tls to {address}: {source}")]
    Tls {
        /// Where to.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// Nothing within the limit.
    #[error("{address} did not answer within {limit:?}")]
    Timeout {
        /// Where to.
        address: String,
        /// The limit.
        limit: Duration,
    },
    /// The server name is not a valid TLS name.
    #[error("server name {0:?} is not a DNS name or an IP address")]
    ServerName(String),
}

/// Connects to `address` over TCP and runs the TLS handshake as `server_name`, within
/// `limit`; the socket tuned ([`tune`]).
pub async fn dial(
    address: &str,
    server_name: &str,
    tls: &Arc<rustls::ClientConfig>,
    limit: Duration,
) -> Result<TlsConnection, DialError> {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|_| DialError::ServerName(server_name.to_owned()))?;
    let attempt = async {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|source| DialError::Connect {
                address: address.to_owned(),
                source,
            })?;
        tune(&tcp);
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|source| DialError::Tls {
                address: address.to_owned(),
                source,
            })?;
        Ok(TlsConnection::Client(tls))
    };
    tokio::time::timeout(limit, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(DialError::Timeout {
                address: address.to_owned(),
                limit,
            })
        })
}

/// Runs the gateway's side of the TLS handshake on a carrier connection.
pub async fn accept(
    tcp: TcpStream,
    tls: Arc<rustls::ServerConfig>,
) -> std::io::Result<TlsConnection> {
    let tls = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await?;
    Ok(TlsConnection::Server(tls))
}

/// The first certificate the peer of `tls` presented, if any (an edge's client certificate).
pub fn peer_certificate(tls: &TlsConnection) -> Option<rustls::pki_types::CertificateDer<'static>> {
    tls.get_ref().1.peer_certificates()?.first().cloned()
}

/// Why a carrier connection's greeting failed.
#[derive(Debug, thiserror::Error)]
pub enum GreetError {
    /// The connection broke.
    #[error("{0}")]
    Lost(#[from] StreamLost),
    /// The far hop sent bad frames.
    #[error("{0}")]
    Frames(#[from] FrameReadError),
    /// The gateway refused this edge, with its close code and words.
    #[error("gateway refused: {reason}")]
    Refused {
        /// The close code (`unauthorized`, `unsupported_version`, ...).
        code: rtmpq_proto::wire::CloseCode,
        /// Why.
        reason: String,
    },
    /// The gateway answered something else than WELCOME.
    #[error("expected WELCOME, got {0}")]
    Unexpected(String),
}

impl From<WireError> for GreetError {
    fn from(e: WireError) -> Self {
        GreetError::Frames(e.into())
    }
}

/// Says `hello` on a fresh carrier connection and waits for the gateway's WELCOME (a refusal
/// comes as SESSION_CLOSE with its code); returns the connection's halves, ready for the
/// session's first frame.
pub async fn greet(
    tls: TlsConnection,
    hello: &Frame,
) -> Result<(SendHalf, FrameReader), GreetError> {
    let (mut send, recv): (SendHalf, RecvHalf) = tls_halves(tls);
    write_frame(&mut send, hello).await?;
    let mut frames = FrameReader::control(recv);
    match frames.next().await? {
        Some(Frame::Welcome { .. }) => {
            frames.lift_limit();
            Ok((send, frames))
        }
        Some(Frame::SessionClose { code, reason }) => Err(GreetError::Refused { code, reason }),
        Some(other) => Err(GreetError::Unexpected(format!("{other:?}"))),
        None => Err(GreetError::Unexpected("the end of the connection".into())),
    }
}

// The kernel's figures are read on Linux only.
#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn what_waits_in_the_socket_counts_as_the_paths_wait() {
        let watch = PathWatch::default();
        watch.record_socket(&SocketPath {
            rtt: Duration::from_millis(60),
            min_rtt: Duration::from_millis(50),
            rate_bps: 8_000_000,
            // 100 kB unsent and in flight: 100 ms at 8 Mbit/s.
            queued_bytes: 100_000,
            unacknowledged_for: Duration::from_millis(40),
            heard_ago: Duration::ZERO,
        });
        assert_eq!(
            watch.quic_wait(),
            Duration::from_millis(130),
            "100 ms + half the RTT"
        );
        assert_eq!(watch.rtt(), Duration::from_millis(60));
        assert_eq!(watch.rate_bps(), 8_000_000);
        assert_eq!(watch.unacknowledged_for(), Duration::from_millis(40));
        // No rate known yet: only half the round trip.
        watch.record_socket(&SocketPath {
            rtt: Duration::from_millis(60),
            queued_bytes: 100_000,
            ..SocketPath::default()
        });
        assert_eq!(watch.quic_wait(), Duration::from_millis(30));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_kernel_reports_a_connected_sockets_path() {
        use std::os::fd::AsFd;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        client.write_all(&[7; 4096]).await.unwrap();
        let mut got = vec![0; 4096];
        server.read_exact(&mut got).await.unwrap();
        server.write_all(b"ack").await.unwrap();
        client.read_exact(&mut [0; 3]).await.unwrap();
        let fd = client.as_fd().try_clone_to_owned().unwrap();
        let path = socket_path(&fd).expect("TCP_INFO");
        assert!(path.rtt > Duration::ZERO, "{path:?}");
        assert_eq!(
            path.queued_bytes, 0,
            "everything was acknowledged: {path:?}"
        );
    }
}
