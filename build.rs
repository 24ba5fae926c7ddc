//! Compiles the OpAMP wire contract with protox, so no `protoc` is needed on any machine; and
//! rebuilds when a migration is added (`sqlx::migrate!` embeds them at compile time, and cargo
//! would not otherwise notice a new file).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/opamp/v1/opamp.proto",
        "proto/opamp/v1/anyvalue.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-changed=migrations");
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
