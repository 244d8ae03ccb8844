//! Compiles the verifier's protobuf API with protox (pure Rust; no protoc needed).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "teesql/verifier/v1/verifier.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["."])?;
    // Kept for gRPC server reflection, so generic clients (grpcurl, grpcio) work.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("teesql_verifier_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // Decode errors are the caller's (INVALID_ARGUMENT naming the field), see codec.rs.
    tonic_prost_build::configure()
        .codec_path("crate::codec::TeesqlCodec")
        .compile_fds(fds)?;
    Ok(())
}
