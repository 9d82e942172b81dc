//! Telling a client the edge cannot serve why, in RTMP words it shows: `_error` for its
//! connect when no gateway takes the session or the edge is full.

use std::sync::Mutex;
use std::time::Duration;

use rtmpq_hop::rtmp::{Inbound, Outbound, RtmpConnection, RtmpReader};
use rtmpq_proto::command;
use rtmpq_proto::session::{Flow, SessionTracker};
use rtmpq_proto::wire::CloseCode;
use tokio::net::TcpStream;

use crate::session::{FLUSH_LIMIT, LINGER};

/// How long a refused client has to send its connect command so it can be told why.
const REFUSAL_WAIT: Duration = Duration::from_secs(5);
/// Waits up to [`REFUSAL_WAIT`] for the client's connect; records what it sent in `tracker`.
/// `false` if it never came (the client left, misbehaved or said nothing).
async fn wait_for_connect(
    reader: &mut RtmpReader,
    to_client: &Outbound,
    tracker: &mut SessionTracker,
) -> bool {
    let wait = async {
        loop {
            match reader.next().await {
                Ok(Some(Inbound::Message(msg))) => {
                    if tracker
                        .record(Flow::ToOrigin, &msg, std::time::Instant::now())
                        .is_err()
                    {
                        return false;
                    }
                    if tracker.connect_seen() {
                        return true;
                    }
                }
                Ok(Some(Inbound::Reply(reply))) => {
                    let _ = to_client.send(reply).await;
                }
                Ok(Some(Inbound::Silent(_))) => {}
                Ok(None) | Err(_) => return false,
            }
        }
    };
    tokio::time::timeout(REFUSAL_WAIT, wait)
        .await
        .unwrap_or(false)
}

/// Tells a client we cannot serve it: waits for its connect and answers `_error`.
pub(crate) async fn refuse(
    reader: &mut RtmpReader,
    to_client: &Outbound,
    tracker: &Mutex<SessionTracker>,
    code: CloseCode,
    reason: &str,
) {
    let mut t = tracker.lock().expect("tracker").clone();
    if wait_for_connect(reader, to_client, &mut t).await {
        for msg in t.failure_messages(code, reason) {
            let _ = to_client.send_unbudgeted(msg).await;
        }
    }
    *tracker.lock().expect("tracker") = t;
}

/// Serves a client the edge has no room for: completes the RTMP handshake, waits for its
/// connect and answers `_error` `NetConnection.Connect.Rejected`, so the pusher's log says
/// why instead of "Cannot read RTMP handshake response".
pub(crate) async fn refuse_full(tcp: TcpStream, handshake_limit: Duration, limit: usize) {
    let Ok(RtmpConnection { mut reader, writer }) =
        RtmpConnection::accept(tcp, handshake_limit).await
    else {
        return;
    };
    let (to_client, writer_task) = writer.spawn(16, None);
    let mut tracker = SessionTracker::default();
    if wait_for_connect(&mut reader, &to_client, &mut tracker).await {
        let txn = tracker.connect_transaction().unwrap_or(1.0);
        let reason = format!("edge full: {limit} sessions live, try again later");
        let refusal = command::error_response(txn, "NetConnection.Connect.Rejected", &reason);
        let _ = to_client.send(refusal).await;
    }
    drop(to_client);
    let _ = tokio::time::timeout(FLUSH_LIMIT, writer_task).await;
    reader.discard_until_closed(LINGER).await;
}
