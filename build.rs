//! Compiles the OpAMP wire contract with protox, so no `protoc` is needed on any machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/opamp/v1/opamp.proto",
        "proto/opamp/v1/anyvalue.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
