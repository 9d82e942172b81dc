//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) through the same code the fuzz targets
//! run, as an ordinary test: every input that ever found new coverage or a crash stays fixed.

use std::path::Path;

use rtmpq_proto::command::Command;
use rtmpq_proto::message::Message;
use rtmpq_proto::session::{Flow, SessionTracker};

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no corpus in {}", dir.display());
    inputs
}

#[test]
fn amf0_command_corpus_replays() {
    let inputs = corpus("amf0_command");
    let mut parsed = 0;
    for (name, data) in &inputs {
        let Some((&selector, body)) = data.split_first() else {
            continue;
        };
        let type_id = if selector & 1 == 0 { 20 } else { 17 };
        let msg = Message::new(type_id, 0, 0, body.to_vec());
        if let Ok(Some(cmd)) = Command::parse(&msg) {
            parsed += 1;
            let again = Command::parse(&cmd.to_message(0));
            assert!(matches!(again, Ok(Some(_))), "{name}: re-encoded command");
        }
        let mut tracker = SessionTracker::default();
        let _ = tracker.record(Flow::ToOrigin, &msg);
        let _ = tracker.record(Flow::ToClient, &msg);
    }
    // The hand-written seeds (connect, publish, onStatus, ...) are real commands.
    assert!(
        parsed >= 4,
        "only {parsed} of {} inputs parsed",
        inputs.len()
    );
}
