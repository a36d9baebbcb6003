//! The gRPC example's generated code is committed (a `build.rs` would make every user of the
//! library compile a protobuf compiler). This test generates it again, with the pure-Rust
//! `protox` and `tonic-prost-build` (no `protoc`), and fails when the committed files are stale.
//!
//! To regenerate after changing `examples/grpc/weather.proto`:
//!
//! ```text
//! KEYGATE_REGENERATE=1 cargo test -p keygate-grpc-example --test proto_current
//! ```

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use prost::Message;

const REGENERATE: &str =
    "KEYGATE_REGENERATE=1 cargo test -p keygate-grpc-example --test proto_current";

fn proto_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The descriptor set (with source info, which carries the comments) and the Rust code,
/// generated once per test run.
fn generated() -> &'static (Vec<u8>, String) {
    static GENERATED: OnceLock<(Vec<u8>, String)> = OnceLock::new();
    GENERATED.get_or_init(generate)
}

fn generate() -> (Vec<u8>, String) {
    let dir = proto_dir();
    let fds = protox::compile(["weather.proto"], [&dir]).expect("weather.proto compiles");
    let descriptor = fds.encode_to_vec();

    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("grpc_proto_current-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("a temporary directory");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        .emit_rerun_if_changed(false)
        .out_dir(&out)
        .compile_fds(fds)
        .expect("code generation");
    let code = std::fs::read_to_string(out.join("weather.v1.rs")).expect("generated weather.v1.rs");
    let _ = std::fs::remove_dir_all(&out);
    (descriptor, code)
}

fn check(name: &str, generated: &[u8]) {
    let path = proto_dir().join(name);
    if std::env::var_os("KEYGATE_REGENERATE").is_some() {
        std::fs::write(&path, generated).expect("write the generated file");
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{} cannot be read ({e}); generate it with `{REGENERATE}`",
            path.display()
        )
    });
    if committed != generated {
        // Where they part, to show what changed.
        let at = committed
            .iter()
            .zip(generated)
            .position(|(a, b)| a != b)
            .unwrap_or(committed.len().min(generated.len()));
        let line = 1 + generated[..at].iter().filter(|&&b| b == b'\n').count();
        panic!(
            "{} is stale: it differs from what weather.proto generates now from byte {at} \
             (line {line}; {} bytes committed, {} generated); regenerate it with \
             `{REGENERATE}` and commit it",
            path.display(),
            committed.len(),
            generated.len(),
        );
    }
}

#[test]
fn committed_generated_code_is_current() {
    let (descriptor, code) = generated();
    check("weather_descriptor.bin", descriptor);
    check("weather.v1.rs", code.as_bytes());
}

#[test]
fn descriptor_describes_the_weather_service() {
    let (descriptor, _) = generated();
    let fds = prost_types_of(descriptor);
    let file = fds
        .iter()
        .find(|f| f.0 == "weather.proto")
        .expect("weather.proto in the set");
    assert_eq!(file.1, "weather.v1");
    assert_eq!(file.2, ["Weather"]);
}

/// (file name, package, service names) of each file in an encoded descriptor set.
fn prost_types_of(encoded: &[u8]) -> Vec<(String, String, Vec<String>)> {
    let fds = protox::prost_reflect::DescriptorPool::decode(encoded).expect("a descriptor set");
    fds.files()
        .map(|f| {
            (
                f.name().to_owned(),
                f.package_name().to_owned(),
                f.services().map(|s| s.name().to_owned()).collect(),
            )
        })
        .collect()
}
