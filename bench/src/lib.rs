//! rtmpq-bench: a packet-level link emulator ([`netem`]) and `rtmpq bench`, which compares
//! plain RTMP over TCP (CUBIC and BBR), SRT, a plain QUIC byte pipe and the rtmpq tunnel with
//! real ffmpeg pushers and a real nginx-rtmp on emulated links.

pub mod netem;
