//! Generates the Protobuf types of the Centrifugo client protocol from the vendored
//! `proto/client.proto` with prost, compiled by protox (pure Rust: no `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/client.proto");
    let descriptors = protox::compile(["client.proto"], ["proto"])?;
    prost_build::Config::new()
        // Payloads stay reference-counted slices of the received frame.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
