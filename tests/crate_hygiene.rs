//! The package as published: its `rust-version` is what its dependencies really need, and it
//! holds what a user needs and nothing else (no CI script, benches, fuzz targets or the tests'
//! private keys).
//!
//! Both tests ask cargo itself (`cargo metadata`, `cargo package --list`), offline.

use std::process::{Command, Output};
use std::time::Duration;

/// Runs `cargo ARGS` in this package's folder, offline, for at most two minutes.
fn cargo(args: &[&str]) -> String {
    let mut command = Command::new(env!("CARGO"));
    command
        .args(args)
        .arg("--offline")
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || send.send(command.output()));
    let Output {
        status,
        stdout,
        stderr,
    } = receive
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("cargo {args:?} did not finish in two minutes"))
        .expect("cargo runs");
    assert!(
        status.success(),
        "cargo {args:?} failed: {}",
        String::from_utf8_lossy(&stderr)
    );
    String::from_utf8(stdout).expect("UTF-8 output")
}

fn version_of(v: &str) -> Vec<u64> {
    v.split('.')
        .map(|n| n.parse().expect("a numeric version part"))
        .collect()
}

/// The platform this runs on, as `rustc -vV` names it.
fn host() -> String {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc runs");
    let out = String::from_utf8(out.stdout).expect("UTF-8 output");
    out.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc names its host")
        .to_owned()
}

#[test]
fn rust_version_is_what_the_default_features_need() {
    // What the library itself builds with its default features, and nothing a workspace member
    // or a dev-dependency adds: `cargo tree` of this package alone, normal dependencies.
    let tree = cargo(&[
        "tree", "-p", "keygate", "-e", "normal", "--prefix", "none", "--format", "{p}",
    ]);
    let built: Vec<(String, String)> = tree
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?.to_owned();
            let version = words.next()?.trim_start_matches('v').to_owned();
            Some((name, version))
        })
        .collect();
    assert!(built.iter().any(|(n, _)| n == "jsonwebtoken"), "{tree}");

    let metadata: serde_json::Value = serde_json::from_str(&cargo(&[
        "metadata",
        "--format-version",
        "1",
        "--filter-platform",
        &host(),
    ]))
    .unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let rust_version = |name: &str, version: &str| {
        packages
            .iter()
            .find(|p| p["name"] == name && p["version"] == version)
            .and_then(|p| p["rust_version"].as_str())
            .map(version_of)
    };
    let declared = rust_version("keygate", env!("CARGO_PKG_VERSION")).expect("rust-version is set");
    let needed = built
        .iter()
        .filter(|(name, _)| name != "keygate")
        .filter_map(|(name, version)| Some((rust_version(name, version)?, name)))
        .max()
        .expect("some dependency states a rust-version");
    let pad = |mut v: Vec<u64>| {
        v.resize(3, 0);
        v
    };
    assert_eq!(
        pad(declared),
        pad(needed.0.clone()),
        "rust-version in Cargo.toml must be the highest one of the dependencies ({} needs {:?})",
        needed.1,
        needed.0
    );
}

#[test]
fn the_package_holds_no_ci_bench_fuzz_or_test_files() {
    let files = cargo(&["package", "--list", "--allow-dirty"]);
    let files: Vec<&str> = files.lines().collect();
    for needed in [
        "Cargo.toml",
        "README.md",
        "LICENSE-MIT",
        "LICENSE-APACHE",
        "src/lib.rs",
        "examples/weather.rs",
        // The guide's chapters are the modules' docs (`include_str!`): without them the
        // published crate does not build.
        "docs/index.md",
        "docs/deployment.md",
    ] {
        assert!(files.contains(&needed), "{needed} missing from {files:?}");
    }
    for file in &files {
        for banned in [
            ".ci/",
            "benches/",
            "fuzz/",
            "tests/",
            ".pem",
            "examples/grpc/",
        ] {
            assert!(!file.contains(banned), "the package holds {file}");
        }
    }
}
