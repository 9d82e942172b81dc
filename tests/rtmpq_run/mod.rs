//! Runs an `rtmpq` subcommand that writes a results folder (bench, soak) the way the tests that
//! check its figures need: a fresh folder under target/ (kept after the run, so a failure's logs
//! can be read), success asserted with both outputs, the JSON it wrote parsed.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// `rtmpq ARGS --out target/tmp/OUT`; returns its stdout, the parsed `OUT/JSON`, and the folder.
pub fn run_rtmpq(args: &[&str], out: &str, json: &str) -> (String, Value, PathBuf) {
    let exe = Path::new(env!("CARGO_BIN_EXE_rtmpq"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(out);
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(exe)
        .args(args)
        .arg("--out")
        .arg(&out)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    println!("{stdout}");
    assert!(
        run.status.success(),
        "rtmpq {} failed:\n{stdout}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&run.stderr)
    );
    let value = serde_json::from_str(&std::fs::read_to_string(out.join(json)).unwrap()).unwrap();
    (stdout, value, out)
}
