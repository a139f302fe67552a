//! Compiles the gRPC API's protos (../proto/imprint/v1/*.proto) into Rust in OUT_DIR with
//! the pure-Rust protox (no system protoc), and writes their encoded descriptor set for the
//! reflection service. Generated code is never committed.
use prost::Message;

fn main() {
    let protos = ["../proto/imprint/v1/imprint.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = match protox::compile(protos, ["../proto"]) {
        Ok(fds) => fds,
        Err(e) => panic!("the gRPC protos do not compile: {e:?}"),
    };
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("imprint_descriptor.bin"), fds.encode_to_vec()).expect("writing the descriptor set");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Payload chunks and inline data as `bytes::Bytes`: sliced, never copied.
        .bytes(".")
        .compile_fds(fds)
        .expect("generating the gRPC code");
}
