//! AMF0 command inspection as both hops run it on peer bytes: the bounded check, then
//! rml_amf0, then the session tracker. Must never crash, overflow the stack or allocate
//! without bound, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rtmpq_proto::command::Command;
use rtmpq_proto::message::Message;
use rtmpq_proto::session::{Flow, SessionTracker};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    // Type 20 (AMF0 command) or 17 (AMF3 command with AMF0 values).
    let type_id = if selector & 1 == 0 { 20 } else { 17 };
    let msg = Message::new(type_id, 0, 0, body.to_vec());
    if let Ok(Some(cmd)) = Command::parse(&msg) {
        // What parses must also survive being written back and parsed again.
        let again = Command::parse(&cmd.to_message(0)).expect("re-encoded command is valid");
        assert!(again.is_some());
    }
    let mut tracker = SessionTracker::default();
    let _ = tracker.record(Flow::ToOrigin, &msg);
    let _ = tracker.record(Flow::ToClient, &msg);
});
