//! rtmpq-hop: the async layer both hops share over the pure core (`rtmpq-proto`): RTMP
//! connections over TCP ([`rtmp`]), tunnel streams over QUIC ([`tunnel`]), the two one-way
//! pumps of a session ([`pump`]), the QUIC settings ([`transport`]), the accept loop and the
//! shutdown drain ([`scaffold`]), and the config type for secrets ([`secret`]).

pub mod pump;
pub mod rtmp;
pub mod scaffold;
pub mod secret;
pub mod transport;
pub mod tunnel;
