//! Compiles `proto/` with protox (no `protoc` needed) and generates the tonic client and server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/gannet/control/v1/control.proto"];
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
