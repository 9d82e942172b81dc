//! Which carrier a session's tunnel takes when the edge may use either (`transport = "auto"`):
//! QUIC when its connection is up; else QUIC first and the TCP carrier [`TCP_AFTER`] later if
//! QUIC has not answered (as Chrome and Happy Eyeballs v3 race them), whichever is up first.
//! The winner is remembered per network (the local address the gateway is reached from), so
//! the next session on a network that blocks UDP does not wait for QUIC again; QUIC coming up
//! later (the connector keeps trying) takes new sessions back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtmpq_telemetry::Telemetry;
use tracing::info;

use crate::connector::{Connector, GatewayLink};
use crate::tcp_dial::{TcpDialer, TcpOpened};
use crate::tunnel_open::OpenError;

/// How long QUIC has to answer before the TCP carrier is tried beside it.
pub const TCP_AFTER: Duration = Duration::from_millis(250);

/// A gateway reached on one carrier or the other.
pub(crate) enum Reached {
    /// The connector's QUIC connection.
    Quic(GatewayLink),
    /// A welcomed TCP carrier connection.
    Tcp(TcpOpened),
}

/// The carrier that won on a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Winner {
    Quic,
    Tcp,
}

/// Both carriers and what each network taught.
#[derive(Debug)]
pub struct AutoTransport {
    /// QUIC, kept up (or retried) in the background.
    pub quic: Connector,
    /// The TCP carrier.
    pub tcp: Arc<TcpDialer>,
    /// Set by the connector when UDP stopped getting through mid-stream while TCP did.
    udp_blocked: Arc<AtomicBool>,
    /// The carrier that won last, by local address (`None`: the address was not found).
    learned: Mutex<HashMap<Option<IpAddr>, Winner>>,
}

impl AutoTransport {
    /// Both carriers, nothing learned yet; `udp_blocked` is the connector's verdict.
    pub fn new(quic: Connector, tcp: Arc<TcpDialer>, udp_blocked: Arc<AtomicBool>) -> Self {
        AutoTransport {
            quic,
            tcp,
            udp_blocked,
            learned: Mutex::default(),
        }
    }

    /// A gateway on whichever carrier is up first (see the module docs), waiting up to
    /// `wait`; when neither, why (a refusal by a gateway first: it says more).
    pub(crate) async fn reach(
        &self,
        wait: Duration,
        telemetry: &Telemetry,
    ) -> Result<Reached, OpenError> {
        if let Some(link) = self.quic.ready() {
            return Ok(Reached::Quic(link));
        }
        let network = local_address(&self.tcp).await;
        if self.udp_blocked.load(Ordering::Relaxed) {
            self.learn(network, Winner::Tcp);
        }
        if self.learned(network) == Some(Winner::Tcp) {
            return self.over_tcp(wait).await;
        }
        let quic = async {
            let link = self.quic.connection(wait).await?;
            Ok::<_, OpenError>(Reached::Quic(link))
        };
        let tcp = async {
            tokio::time::sleep(TCP_AFTER).await;
            self.over_tcp(wait.saturating_sub(TCP_AFTER)).await
        };
        let (mut quic, mut tcp) = (std::pin::pin!(quic), std::pin::pin!(tcp));
        let (first, winner) = tokio::select! {
            reached = &mut quic => (reached, Winner::Quic),
            reached = &mut tcp => (reached, Winner::Tcp),
        };
        let (reached, winner) = match (first, winner) {
            (Ok(reached), winner) => (reached, winner),
            (Err(quic_failed), Winner::Quic) => {
                (tcp.await.map_err(|e| e.or(quic_failed))?, Winner::Tcp)
            }
            (Err(tcp_failed), Winner::Tcp) => {
                (quic.await.map_err(|e| tcp_failed.or(e))?, Winner::Quic)
            }
        };
        if winner == Winner::Tcp {
            // The connector keeps probing QUIC, less often, until UDP gets through.
            self.udp_blocked.store(true, Ordering::Relaxed);
            info!(
                local = ?network,
                "QUIC did not answer within {TCP_AFTER:?} and TCP did: this session and the next ones from this network use the TCP carrier"
            );
            telemetry.tcp_fallback("quic_unanswered");
        }
        self.learn(network, winner);
        Ok(reached)
    }

    async fn over_tcp(&self, wait: Duration) -> Result<Reached, OpenError> {
        Ok(Reached::Tcp(self.tcp.open(wait).await?))
    }

    fn learned(&self, network: Option<IpAddr>) -> Option<Winner> {
        self.learned.lock().expect("learned").get(&network).copied()
    }

    fn learn(&self, network: Option<IpAddr>, winner: Winner) {
        self.learned
            .lock()
            .expect("learned")
            .insert(network, winner);
    }
}

impl OpenError {
    /// This failure, or `other` when it says more: a gateway's refusal beats "unreachable".
    fn or(self, other: OpenError) -> OpenError {
        if self.code() == rtmpq_proto::wire::CloseCode::GatewayUnreachable {
            other
        } else {
            self
        }
    }
}

/// The local address datagrams to the first gateway leave from: the network the edge is on
/// (a laptop moved from the office to a hotel has another). No packet is sent.
async fn local_address(tcp: &TcpDialer) -> Option<IpAddr> {
    let gateway = tcp.gateways.first()?;
    let remote = tokio::net::lookup_host(&gateway.address)
        .await
        .ok()?
        .next()?;
    let unspecified: IpAddr = match remote {
        std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = std::net::UdpSocket::bind((unspecified, 0)).ok()?;
    socket.connect(remote).ok()?;
    Some(socket.local_addr().ok()?.ip())
}
