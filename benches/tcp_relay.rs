//! A plain TCP relay, the reference `rtmpq capacity` measures the hops' CPU against: every
//! connection accepted is copied byte for byte to a new connection to the target. Not a mode
//! of the product.
//!
//! `tcp_relay LISTEN TARGET` (prints `ready listen=ADDR` once bound; LISTEN may use port 0)

use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, target] = &args[..] else {
        eprintln!("usage: tcp_relay LISTEN TARGET");
        std::process::exit(2);
    };
    let listener = TcpListener::bind(listen).await.expect("bind");
    eprintln!("ready listen={}", listener.local_addr().expect("bound"));
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        let target = target.clone();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(&target).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    }
}
