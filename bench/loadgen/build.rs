//! The gRPC client for `watch` from Imprint's committed proto (../../proto), with the
//! pure-Rust protox (no system protoc).
fn main() {
    let proto = "../../proto/imprint/v1/imprint.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["../../proto"]).expect("the proto compiles");
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .bytes(".")
        .compile_fds(fds)
        .expect("generating the gRPC client");
}
