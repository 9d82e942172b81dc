//! What edge and gateway share around their sessions: the TCP accept loop, the errors that
//! stop a hop from starting, and [`Drain`], the task tree that stops accepting on shutdown,
//! lets live sessions go on for a grace period, then ends the rest.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

/// What stops a hop from starting, whichever hop it is.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Certificates could not be made or loaded.
    #[error("certificates: {0}")]
    Certs(#[from] rtmpq_certs::CertError),
    /// The TLS config could not be used for QUIC.
    #[error("{0}")]
    Tls(#[from] crate::transport::TlsConfigError),
    /// A file the hop keeps in its state directory could not be read or made.
    #[error("state file {path}: {source}")]
    State {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A socket could not be bound.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

impl StartError {
    /// A bind of `addr` that failed with `source`.
    pub fn bind(addr: SocketAddr) -> impl FnOnce(std::io::Error) -> StartError {
        move |source| StartError::Bind { addr, source }
    }
}

/// Binds a TCP listener on `addr`.
pub async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(StartError::bind(addr))
}

/// How long to pause after a failed accept (out of file descriptors, say) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The next TCP connection on `listener`, or `None` once `shutdown` is cancelled. A failed
/// accept is logged and retried after a short pause instead of spinning.
pub async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let failure = tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => return Some(accepted),
                Err(e) => e,
            },
        };
        tracing::warn!(listen = ?listener.local_addr().ok(), reason = %failure, "accept failed");
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(ACCEPT_RETRY) => {}
        }
    }
}

/// How long ending sessions may take once the grace period is over.
pub const END_LIMIT: Duration = Duration::from_secs(3);

/// A hop's session tasks and how they end on shutdown.
#[derive(Debug, Clone)]
pub struct Drain {
    tasks: TaskTracker,
    end_sessions: CancellationToken,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            tasks: TaskTracker::new(),
            end_sessions: CancellationToken::new(),
        }
    }
}

impl Drain {
    /// Runs `task` (a session, a connection) as part of this hop.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Cancelled when the grace period is over: live sessions end, telling both sides.
    pub fn end_sessions(&self) -> &CancellationToken {
        &self.end_sessions
    }

    /// After the accept loop stopped: waits up to `grace` for live tasks (`live` sessions)
    /// to finish, then cancels [`end_sessions`](Self::end_sessions) and waits up to
    /// [`END_LIMIT`] for them to end.
    pub async fn finish(&self, hop: &str, live: usize, grace: Duration) {
        self.tasks.close();
        info!(
            sessions = live,
            ?grace,
            "{hop} stopping: no new sessions; waiting for live ones"
        );
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            info!("grace period over: ending live sessions");
            self.end_sessions.cancel();
            let _ = tokio::time::timeout(END_LIMIT, self.tasks.wait()).await;
        }
    }
}
