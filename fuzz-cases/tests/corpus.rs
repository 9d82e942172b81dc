//! Replays every saved fuzz input (`fuzz/corpus/TARGET/` and the crashes fixed since,
//! `fuzz/regressions/TARGET/`) through its target on stable: a finding stays fixed.

use std::path::Path;

use rtmpq_fuzz_cases::TARGETS;

fn replay(dir: &str, target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(dir)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut n = 0;
    for entry in entries {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{target} fails on {}", path.display());
        n += 1;
    }
    n
}

#[test]
fn every_target_has_a_corpus_and_passes_it() {
    for (target, run) in TARGETS {
        let n = replay("corpus", target, run);
        assert!(
            n >= 10,
            "fuzz/corpus/{target} holds {n} inputs: run the fuzzer"
        );
        replay("regressions", target, run);
    }
}
