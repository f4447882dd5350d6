//! Compiles `vsr/inference/v1/inference.proto` with a vendored `protoc`.
//! Messages always; tonic client/server code only under the `client`/`server`
//! features (see Cargo.toml), so the default build stays wasm-friendly.

use std::path::PathBuf;

const PROTO: &str = "vsr/inference/v1/inference.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    config.file_descriptor_set_path(out.join("vsr_inference_v1_descriptor.bin"));
    compile(config)
}

#[cfg(any(feature = "server", feature = "client"))]
fn compile(config: prost_build::Config) -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .build_server(cfg!(feature = "server"))
        .build_client(cfg!(feature = "client"))
        .compile_with_config(config, &[PROTO], &["."])?;
    Ok(())
}

#[cfg(not(any(feature = "server", feature = "client")))]
fn compile(mut config: prost_build::Config) -> Result<(), Box<dyn std::error::Error>> {
    config.compile_protos(&[PROTO], &["."])?;
    Ok(())
}
