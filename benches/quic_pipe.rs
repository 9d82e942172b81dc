//! A plain byte pipe over QUIC, the reference `rtmpq bench` compares the tunnel with: every TCP
//! connection accepted on one side becomes one bidirectional QUIC stream and a TCP connection on
//! the other side, bytes copied untouched. rtmpq's quinn settings (timeouts, windows) with quinn's
//! BBR, what a generic QUIC tunnel runs (not rtmpq's `live` controller). Not a mode of the
//! product.
//!
//! client: `quic_pipe client LISTEN_TCP GATEWAY_UDP PIN`
//! server: `quic_pipe server LISTEN_UDP TARGET_TCP CERT_DIR`

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

async fn pump(tcp: TcpStream, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let _ = tcp.set_nodelay(true);
    let (mut read, mut write) = tcp.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut read, &mut send).await;
        let _ = send.finish();
    };
    let down = async {
        let _ = tokio::io::copy(&mut recv, &mut write).await;
    };
    tokio::join!(up, down);
}

async fn client(listen: SocketAddr, gateway: SocketAddr, pin: &str) {
    let tls = rtmpq_certs::client_tls(rtmpq_certs::GatewayTrust::Pin(pin.parse().unwrap()), None)
        .unwrap();
    let config =
        rtmpq_hop::transport::client_config(tls, rtmpq_hop::transport::Congestion::Bbr).unwrap();
    // The wildcard address lets quinn migrate when the route or address changes.
    let endpoint = quinn::Endpoint::client("0.0.0.0:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(config, gateway, "localhost")
        .unwrap()
        .await
        .expect("connect to the pipe server");
    let listener = TcpListener::bind(listen).await.unwrap();
    eprintln!("quic_pipe client ready");
    loop {
        let (tcp, _) = listener.accept().await.unwrap();
        let (send, recv) = conn.open_bi().await.expect("open stream");
        tokio::spawn(pump(tcp, send, recv));
    }
}

async fn server(listen: SocketAddr, target: String, cert_dir: &str) {
    let dir = std::path::Path::new(cert_dir);
    let identity =
        rtmpq_certs::Identity::load(&dir.join("gateway.pem"), &dir.join("gateway.key")).unwrap();
    let tls = rtmpq_certs::server_tls(identity, None).unwrap();
    let config =
        rtmpq_hop::transport::server_config(tls, rtmpq_hop::transport::Congestion::Bbr).unwrap();
    let endpoint = quinn::Endpoint::server(config, listen).unwrap();
    eprintln!("quic_pipe server ready");
    let target = Arc::new(target);
    while let Some(incoming) = endpoint.accept().await {
        let target = target.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((send, recv)) = conn.accept_bi().await {
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(tcp) = TcpStream::connect(target.as_str()).await {
                        pump(tcp, send, recv).await;
                    }
                });
            }
        });
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("client") if args.len() == 5 => {
            client(args[2].parse().unwrap(), args[3].parse().unwrap(), &args[4]).await
        }
        Some("server") if args.len() == 5 => {
            server(args[2].parse().unwrap(), args[3].clone(), &args[4]).await
        }
        _ => {
            eprintln!("usage: quic_pipe client LISTEN_TCP GATEWAY_UDP PIN | server LISTEN_UDP TARGET_TCP CERT_DIR");
            std::process::exit(2);
        }
    }
}
