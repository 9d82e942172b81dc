//! What lets a gateway's connections be recognised after a restart and behind a load balancer:
//! the stateless-reset key kept in the state directory, and QUIC-LB plaintext connection IDs
//! that carry the gateway's server id (draft-ietf-quic-load-balancers, "Unencrypted CIDs").

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use quinn_proto::{ConnectionId, ConnectionIdGenerator};
use rand::RngCore;
use rtmpq_hop::config::ConfigError;
use rtmpq_hop::scaffold::StartError;

/// The file in the state directory that holds the stateless-reset key.
pub const RESET_KEY_FILE: &str = "reset.key";
/// Bytes of the stateless-reset key (an HMAC-SHA256 key; the connection-ID key is derived
/// from it).
pub const RESET_KEY_LEN: usize = 32;

/// Longest connection ID QUIC allows.
const MAX_CID_LEN: usize = 20;
/// Nonce bytes after the server id: QUIC-LB wants at least 4; 8 keep collisions unlikely
/// among many connections of one gateway.
const NONCE_LEN: usize = 8;
/// The longest server id, so that a 4-byte nonce still fits: 1 + 15 + 4 = 20 (the message
/// of [`ConfigError::BadServerId`] says 15).
pub const MAX_SERVER_ID_LEN: usize = MAX_CID_LEN - 1 - 4;

/// The stateless-reset key in `state_dir`, made (owner-only) on first use. A gateway that
/// restarts with the same key answers packets of connections it lost with a stateless reset
/// the edge trusts, so the edge knows at once instead of after its idle timeout.
pub fn reset_key(state_dir: &Path) -> Result<[u8; RESET_KEY_LEN], StartError> {
    let path = state_dir.join(RESET_KEY_FILE);
    let err = |source| StartError::State {
        path: path.clone(),
        source,
    };
    match std::fs::read(&path) {
        Ok(bytes) => bytes.try_into().map_err(|b: Vec<u8>| {
            err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "holds {} bytes, not {RESET_KEY_LEN}; remove it to make a new one",
                    b.len()
                ),
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut key = [0u8; RESET_KEY_LEN];
            rand::rng().fill_bytes(&mut key);
            std::fs::create_dir_all(state_dir).map_err(err)?;
            let mut file = owner_only_new_file(&path).map_err(err)?;
            file.write_all(&key).map_err(err)?;
            file.sync_all().map_err(err)?;
            Ok(key)
        }
        Err(e) => Err(err(e)),
    }
}

fn owner_only_new_file(path: &Path) -> io::Result<std::fs::File> {
    rtmpq_certs::create_secret_file(path)
}

/// A QUIC-LB server id: 1 to [`MAX_SERVER_ID_LEN`] bytes, configured as hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerId(Vec<u8>);

impl std::str::FromStr for ServerId {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::BadServerId(s.to_owned());
        if s.is_empty() || !s.len().is_multiple_of(2) || s.len() / 2 > MAX_SERVER_ID_LEN {
            return Err(bad());
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
            .collect::<Result<Vec<u8>, _>>()
            .map(ServerId)
    }
}

impl ServerId {
    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A QUIC-LB plaintext connection ID: the first octet (config rotation `config_id` in its top
/// three bits, the length of the rest in its low five), the server id, the nonce.
pub fn plaintext_cid(config_id: u8, server_id: &[u8], nonce: &[u8]) -> Vec<u8> {
    let rest = server_id.len() + nonce.len();
    debug_assert!(config_id < 7 && rest < MAX_CID_LEN);
    let mut cid = Vec::with_capacity(1 + rest);
    cid.push((config_id << 5) | rest as u8);
    cid.extend_from_slice(server_id);
    cid.extend_from_slice(nonce);
    cid
}

/// What a load balancer configured with `server_id_len` reads from a plaintext CID: its
/// config rotation and server id; `None` when the CID is too short or says it is unroutable.
pub fn route(cid: &[u8], server_id_len: usize) -> Option<(u8, &[u8])> {
    let config_id = cid.first()? >> 5;
    if config_id == 7 {
        return None;
    }
    Some((config_id, cid.get(1..1 + server_id_len)?))
}

/// quinn's connection IDs for a gateway with a server id: every ID it issues (the first, in
/// its long headers, and each NEW_CONNECTION_ID) is a QUIC-LB plaintext CID with config
/// rotation 0, that id, and a random nonce; length self-encoded.
#[derive(Debug, Clone)]
pub struct QuicLbConnectionIds {
    server_id: ServerId,
    nonce_len: usize,
}

impl QuicLbConnectionIds {
    /// Connection IDs carrying `server_id`.
    pub fn new(server_id: ServerId) -> Self {
        let nonce_len = NONCE_LEN.min(MAX_CID_LEN - 1 - server_id.0.len());
        QuicLbConnectionIds {
            server_id,
            nonce_len,
        }
    }
}

impl ConnectionIdGenerator for QuicLbConnectionIds {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        ConnectionId::new(&plaintext_cid(
            0,
            &self.server_id.0,
            &nonce[..self.nonce_len],
        ))
    }

    fn cid_len(&self) -> usize {
        1 + self.server_id.0.len() + self.nonce_len
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// The gateway's endpoint settings: stateless resets from `reset_key`, and QUIC-LB connection
/// IDs when a server id is configured, else quinn's hashed 8-byte IDs keyed from `reset_key`.
///
/// Both must survive a restart for the restarted gateway to reset the old connections: quinn
/// drops a packet whose connection ID its generator does not recognise without a word, and
/// its default generator's key is random per process.
pub fn endpoint_config(
    reset_key: &[u8; RESET_KEY_LEN],
    server_id: Option<&ServerId>,
) -> quinn::EndpointConfig {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_key);
    let cid_key = ring::hmac::sign(&key, b"rtmpq connection-id key");
    let cid_key = u64::from_be_bytes(cid_key.as_ref()[..8].try_into().expect("32 bytes"));
    let mut config = quinn::EndpointConfig::new(Arc::new(key));
    match server_id {
        Some(id) => {
            let ids = QuicLbConnectionIds::new(id.clone());
            config.cid_generator(move || Box::new(ids.clone()));
        }
        None => {
            config.cid_generator(move || {
                Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            });
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.parse::<ServerId>().unwrap().0
    }

    #[test]
    fn plaintext_cids_match_the_drafts_test_vectors() {
        // draft-ietf-quic-load-balancers, "Unencrypted CIDs": cr_bits 0, sid c4605e,
        // nonce 4504cc4f, cid 07c4605e4504cc4f.
        let cid = plaintext_cid(0, &hex("c4605e"), &hex("4504cc4f"));
        assert_eq!(cid, hex("07c4605e4504cc4f"));
        assert_eq!(route(&cid, 3), Some((0, &hex("c4605e")[..])));
        // The second vector (cr_bits 1, sid 350d28b420) prints a 9-digit nonce and its CID as
        // "2" "0a" + sid + nonce: a first octet of 0x2a (config 1, 10 bytes follow) and the
        // sid right after it, which is what this makes.
        let cid = plaintext_cid(1, &hex("350d28b420"), &hex("3487d970b0"));
        assert_eq!(cid[0], 0x2a);
        assert_eq!(route(&cid, 5), Some((1, &hex("350d28b420")[..])));
    }

    #[test]
    fn every_generated_id_routes_to_the_server_id() {
        let mut ids = QuicLbConnectionIds::new("c4605e".parse().unwrap());
        assert_eq!(ids.cid_len(), 12);
        let a = ids.generate_cid();
        let b = ids.generate_cid();
        assert_ne!(a, b, "random nonces");
        for cid in [a, b] {
            assert_eq!(cid.len(), 12);
            assert_eq!(cid[0], 11, "config 0, 11 bytes follow");
            assert_eq!(route(&cid, 3), Some((0, &hex("c4605e")[..])));
        }
        // The longest id leaves a 4-byte nonce: 20 bytes in all.
        let long = "ab".repeat(MAX_SERVER_ID_LEN);
        let mut ids = QuicLbConnectionIds::new(long.parse().unwrap());
        assert_eq!(ids.generate_cid().len(), 20);
    }

    #[test]
    fn server_ids_are_hex_of_a_routable_length() {
        assert!("c4605e".parse::<ServerId>().is_ok());
        for bad in ["", "c", "zz", "c4605", &"ab".repeat(MAX_SERVER_ID_LEN + 1)] {
            assert!(
                matches!(bad.parse::<ServerId>(), Err(ConfigError::BadServerId(s)) if s == bad),
                "{bad}"
            );
        }
        // Unroutable: config 7, or too short for the server id.
        assert_eq!(route(&[0xe7, 1, 2, 3], 3), None);
        assert_eq!(route(&[0x07, 1], 3), None);
    }

    #[test]
    fn the_reset_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = reset_key(&state).unwrap();
        assert_eq!(
            reset_key(&state).unwrap(),
            first,
            "the same key after a restart"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join(RESET_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "owner only");
        let other = tempfile::tempdir().unwrap();
        assert_ne!(
            reset_key(other.path()).unwrap(),
            first,
            "random per gateway"
        );
        std::fs::write(state.join(RESET_KEY_FILE), b"short").unwrap();
        let err = reset_key(&state).unwrap_err().to_string();
        assert!(err.contains("holds 5 bytes, not 32"), "{err}");
    }
}
