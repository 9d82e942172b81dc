//! What both hops' configurations share: reading a TOML file with unknown keys named, the
//! errors a config can have, and the checks on limits and times that must be above zero.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

/// Why a configuration cannot be used. Each hop's `resolve` returns the variants that apply
/// to it; the text is what a user sees.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this config (names the key).
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's words.
        message: String,
    },
    /// A limit or time that must be above zero.
    #[error("{0} must be above zero")]
    Zero(&'static str),
    /// Edge: no gateway address.
    #[error("no gateway address: give --gateway HOST:PORT (TOML: gateway)")]
    NoGateway,
    /// Edge: the gateway address is not `HOST:PORT`.
    #[error("gateway {0:?} is not HOST:PORT")]
    BadGateway(String),
    /// An edge id a gateway would refuse.
    #[error("edge_id {0:?}: {1}")]
    BadEdgeId(String, String),
    /// Edge: neither `--ca` nor `--pin`, or both.
    #[error("give exactly one of --ca FILE or --pin sha256:HEX to trust the gateway")]
    NoTrust,
    /// Edge: the pin is not `sha256:` and 64 hex digits.
    #[error("pin: {0}")]
    BadPin(rtmpq_certs::CertError),
    /// Edge: a client certificate without its key, or the reverse.
    #[error("client_cert and client_key go together")]
    HalfClientIdentity,
    /// Gateway: the QUIC-LB server id is not 1 to 15 bytes of hex.
    #[error("server_id {0:?} is not 1 to 15 bytes of hex (e.g. \"c4605e\")")]
    BadServerId(String),
    /// Gateway: the origin URL is not `rtmp://HOST[:PORT]`.
    #[error("origin {0:?} is not rtmp://HOST[:PORT]")]
    BadOrigin(String),
    /// Gateway: mutual TLS without a CA to check edges against.
    #[error("client_auth needs a cert dir with ca.pem (--cert-dir, TOML: cert_dir)")]
    ClientAuthWithoutCa,
    /// Edge: a back-pressure threshold the budget never lets the queue reach.
    #[error("backpressure_ms ({0}) must be under latency_budget_ms ({1}): past the budget media is dropped, so the pusher would never feel it")]
    BackpressureAboveBudget(u64, u64),
    /// Gateway: `[[edge]]` tables that cannot be applied.
    #[error("{0}")]
    Access(String),
    /// Gateway: an empty token would let any edge in.
    #[error("tokens must not be empty strings")]
    EmptyToken,
}

/// Reads a TOML file into `T` (a config struct with `deny_unknown_fields`).
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_toml(&text, path)
}

/// Parses TOML `text` into `T`; `path` names where it came from in the error.
pub fn parse_toml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })
}

/// `ms` milliseconds, refused when zero (named by its TOML `key`).
pub fn millis(ms: u64, key: &'static str) -> Result<Duration, ConfigError> {
    match ms {
        0 => Err(ConfigError::Zero(key)),
        ms => Ok(Duration::from_millis(ms)),
    }
}

/// `n`, refused when zero (named by its TOML `key`).
pub fn above_zero(n: usize, key: &'static str) -> Result<usize, ConfigError> {
    match n {
        0 => Err(ConfigError::Zero(key)),
        n => Ok(n),
    }
}
