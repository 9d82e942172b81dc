//! Config files: the shipped examples load, unknown keys fail with their name, secrets stay
//! out of Debug output, and flags override the file.

use std::process::Command;

use rtmpq_edge::EdgeConfig;
use rtmpq_gateway::GatewayConfig;

fn example(name: &str) -> String {
    std::fs::read_to_string(format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn every_example_config_loads() {
    let gateway: GatewayConfig = toml::from_str(&example("gateway.toml")).unwrap();
    assert_eq!(gateway.listen.port(), 4433);
    assert_eq!(gateway.origin.as_deref(), Some("rtmp://127.0.0.1:1935"));
    assert_eq!(gateway.shutdown_grace_ms, 10_000);
    let edge: EdgeConfig = toml::from_str(&example("edge.toml")).unwrap();
    assert_eq!(edge.gateway, "ingest.example.com:4433");
    assert_eq!(edge.listen.port(), 1935);
    let dir = std::fs::read_dir(format!("{}/examples", env!("CARGO_MANIFEST_DIR"))).unwrap();
    assert_eq!(dir.count(), 2, "a new example needs a check here");
}

#[test]
fn unknown_keys_fail_with_their_name_and_secrets_are_masked() {
    let err = toml::from_str::<GatewayConfig>("listen = \"0.0.0.0:4433\"\norigni = \"rtmp://x\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("origni"), "{err}");
    let gateway: GatewayConfig = toml::from_str("tokens = [\"t0p-secret\"]").unwrap();
    assert!(!format!("{gateway:?}").contains("t0p-secret"));
    let edge: EdgeConfig = toml::from_str("token = \"t0p-secret\"").unwrap();
    assert!(!format!("{edge:?}").contains("t0p-secret"));
}

#[test]
fn the_cli_names_an_unknown_key_in_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.toml");
    std::fs::write(&path, "gateway = \"127.0.0.1:4433\"\nmax_latncy_ms = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rtmpq"))
        .args(["edge", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_latncy_ms"), "{err}");
}
