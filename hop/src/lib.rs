//! rtmpq-hop: the async layer both hops share over the pure core (`rtmpq-proto`): RTMP
//! connections over TCP ([`rtmp`]), tunnel streams over QUIC or TLS over TCP ([`tunnel`],
//! [`stream`], [`tcp`]), the two one-way pumps of a session ([`pump`]), its life across
//! recoveries ([`session`]) and its moves to a new tunnel at a key frame ([`handover`]), the
//! live sessions' reports ([`registry`]), the QUIC settings ([`transport`]), the accept loop
//! and the shutdown drain ([`scaffold`]), what the hops' configs share ([`config`],
//! [`secret`]), and [`HopError`], what stops either hop from starting.

/// What stops a hop from starting: its configuration, or certificates, TLS and sockets.
#[derive(Debug, thiserror::Error)]
pub enum HopError {
    /// The configuration is unusable.
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    /// Certificates, TLS or a socket.
    #[error("{0}")]
    Start(#[from] scaffold::StartError),
}

impl From<rtmpq_certs::CertError> for HopError {
    fn from(e: rtmpq_certs::CertError) -> Self {
        HopError::Start(e.into())
    }
}

impl From<transport::TlsConfigError> for HopError {
    fn from(e: transport::TlsConfigError) -> Self {
        HopError::Start(e.into())
    }
}

pub mod config;
pub mod handover;
pub mod lanes;
pub mod pump;
pub mod recovery;
pub mod registry;
pub mod rtmp;
pub mod scaffold;
pub mod secret;
pub mod session;
pub mod stream;
pub mod tcp;
pub mod transport;
pub mod tunnel;
