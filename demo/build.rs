//! Generates the shop's gRPC code without `protoc`: `protox` parses the proto files into a
//! descriptor set and `tonic-prost-build` turns that into messages, clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["shop.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
