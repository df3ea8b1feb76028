//! Generates etcd's Auth, Lock and Election gRPC services (proto/, etcd's own
//! definitions with their HTTP annotations stripped): etcd-client builds the
//! server side of the other services but does not export these.
//! `ResponseHeader` and `KeyValue` map to etcd-client's types, so every
//! service shares one header type.
fn main() {
    for f in [
        "proto/etcdserverpb_auth.proto",
        "proto/authpb.proto",
        "proto/mvccpb.proto",
        "proto/v3lock.proto",
        "proto/v3election.proto",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(
            ".etcdserverpb.ResponseHeader",
            "::etcd_client::proto::PbResponseHeader",
        )
        .extern_path(".mvccpb.KeyValue", "::etcd_client::proto::PbKeyValue")
        .compile_protos(
            &[
                "proto/etcdserverpb_auth.proto",
                "proto/v3lock.proto",
                "proto/v3election.proto",
            ],
            &["proto"],
        )
        .expect("compiling proto/*.proto (is protoc installed? run .ci/install)");
}
