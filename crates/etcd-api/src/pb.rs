//! Generated code for etcd's Auth, Lock and Election services (see build.rs).
#![allow(clippy::all, missing_docs, dead_code)]

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
pub mod authpb {
    tonic::include_proto!("authpb");
}
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
