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

fn version(v: &str) -> Vec<u64> {
    v.split('.')
        .map(|n| n.parse().expect("a numeric version part"))
        .collect()
}

#[test]
fn rust_version_is_what_the_default_features_need() {
    let metadata: serde_json::Value =
        serde_json::from_str(&cargo(&["metadata", "--format-version", "1"])).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let by_id = |id: &str| packages.iter().find(|p| p["id"] == id).unwrap();
    let nodes = metadata["resolve"]["nodes"].as_array().unwrap();
    let root = packages
        .iter()
        .find(|p| p["name"] == "keygate")
        .expect("the keygate package");
    let declared = version(root["rust_version"].as_str().expect("rust-version is set"));

    // Every package the library itself builds with its default features: normal dependencies,
    // transitively (not dev-dependencies, which users never build).
    let mut seen = vec![root["id"].as_str().unwrap().to_owned()];
    let mut todo = seen.clone();
    let mut needed = (version("1.0"), String::from("none"));
    while let Some(id) = todo.pop() {
        let node = nodes.iter().find(|n| n["id"] == id.as_str()).unwrap();
        for dep in node["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            let dep_id = dep["pkg"].as_str().unwrap();
            if normal && !seen.iter().any(|s| s == dep_id) {
                seen.push(dep_id.to_owned());
                todo.push(dep_id.to_owned());
                let package = by_id(dep_id);
                if let Some(v) = package["rust_version"].as_str() {
                    let v = version(v);
                    if v > needed.0 {
                        needed = (v, package["name"].as_str().unwrap().to_owned());
                    }
                }
            }
        }
    }
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
