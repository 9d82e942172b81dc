//! Config files: the shipped examples load and pass every check, each invalid fixture fails
//! at load with the error a user sees (through the library and the CLI), unknown keys fail
//! with their name, and secrets stay out of Debug output.

use std::path::{Path, PathBuf};
use std::process::Command;

use rtmpq_edge::EdgeConfig;
use rtmpq_gateway::GatewayConfig;

fn example(name: &str) -> String {
    std::fs::read_to_string(format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn every_example_config_loads_and_resolves() {
    let gateway: GatewayConfig = toml::from_str(&example("gateway.toml")).unwrap();
    let settings = gateway.resolve().unwrap();
    assert_eq!(settings.origin.as_deref(), Some("127.0.0.1:1935"));
    assert_eq!(gateway.listen.port(), 4433);
    assert_eq!(gateway.origin.as_deref(), Some("rtmp://127.0.0.1:1935"));
    assert_eq!(gateway.shutdown_grace_ms, 10_000);
    assert!(
        settings.access.has_identities(),
        "the example shows [[edge]] tables"
    );
    assert!(
        !format!("{gateway:?}").contains("change-me"),
        "tokens stay out of Debug"
    );
    let edge: EdgeConfig = toml::from_str(&example("edge.toml")).unwrap();
    let settings = edge.resolve().unwrap();
    assert_eq!(settings.gateways[0].server_name, "ingest.example.com");
    assert_eq!(edge.gateway, ["ingest.example.com:4433"]);
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

/// The invalid fixtures, each with the error text its first line promises (`# error: ...`).
fn invalid_fixtures() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config/invalid");
    let mut fixtures: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let expected = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# error: "))
                .unwrap_or_else(|| panic!("{} has no '# error: ' line", path.display()))
                .to_owned();
            (path, expected)
        })
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 10, "{fixtures:?}");
    fixtures
}

fn load_error(path: &Path) -> String {
    let name = path.file_name().unwrap().to_string_lossy();
    if name.starts_with("edge-") {
        match EdgeConfig::load(path) {
            Ok(config) => config.resolve().map(|_| ()),
            Err(e) => Err(e),
        }
        .expect_err("an invalid edge config was accepted")
        .to_string()
    } else {
        match GatewayConfig::load(path) {
            Ok(config) => config.resolve().map(|_| ()),
            Err(e) => Err(e),
        }
        .expect_err("an invalid gateway config was accepted")
        .to_string()
    }
}

#[test]
fn every_invalid_fixture_fails_at_load_with_its_error() {
    for (path, expected) in invalid_fixtures() {
        let err = load_error(&path);
        assert!(
            err.contains(&expected),
            "{}: expected {expected:?} in {err:?}",
            path.display()
        );
    }
}

#[test]
fn the_cli_refuses_each_invalid_fixture_before_starting() {
    for (path, expected) in invalid_fixtures() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let command = if name.starts_with("edge-") {
            "edge"
        } else {
            "gateway"
        };
        let out = Command::new(env!("CARGO_BIN_EXE_rtmpq"))
            .args([command, "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} started");
        assert!(
            err.contains(&expected),
            "{name}: expected {expected:?} in {err}"
        );
        assert!(
            !err.contains("ready"),
            "{name}: refused only after starting: {err}"
        );
    }
}
