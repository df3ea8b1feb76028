//! How errors travel to etcd clients: etcd's gRPC status codes and message
//! prefixes for the errors of the MVCC state machine (`mvcc::EtcdError`,
//! whose messages are etcd's, since mvcc implements etcd's semantics) and of
//! a member (`consensus::NodeError`, which knows nothing of etcd's wire
//! format). Neither mvcc nor consensus needs a gRPC library for this
//! (ARCHITECTURE.md, dependency rules).

use consensus::NodeError;
use mvcc::EtcdError;
use tonic::{Code, Status};

/// The gRPC status code etcd uses for a member-level error.
pub fn node_code(e: &NodeError) -> Code {
    match e {
        NodeError::NoLeader
        | NodeError::Timeout
        | NodeError::LeaderChanged
        | NodeError::Stopped
        | NodeError::Halted(_) => Code::Unavailable,
        NodeError::MemberNotFound => Code::NotFound,
        NodeError::MemberNotLearner | NodeError::LearnerNotReady | NodeError::PeerUrlExists => {
            Code::FailedPrecondition
        }
        NodeError::Internal(_) => Code::Internal,
    }
}

/// The gRPC status etcd sends for a member-level error: etcd's code and its
/// message, which etcd prefixes with `etcdserver: ` (clients match on it).
pub fn node_status(e: &NodeError) -> Status {
    Status::new(node_code(e), format!("etcdserver: {e}"))
}

/// The gRPC status code etcd uses for `e`.
pub fn code(e: &EtcdError) -> Code {
    match e {
        EtcdError::Compacted | EtcdError::FutureRevision | EtcdError::TtlTooLarge => {
            Code::OutOfRange
        }
        EtcdError::EmptyKey
        | EtcdError::KeyNotFound
        | EtcdError::DuplicateKey
        | EtcdError::TooManyOps
        | EtcdError::ValueProvided
        | EtcdError::LeaseProvided
        | EtcdError::InvalidSortOption => Code::InvalidArgument,
        EtcdError::LeaseNotFound => Code::NotFound,
        EtcdError::LeaseExists => Code::FailedPrecondition,
        EtcdError::NoSpace => Code::ResourceExhausted,
        EtcdError::Corrupt => Code::DataLoss,
        EtcdError::StorageFailure => Code::Internal,
        EtcdError::Auth(a) => Code::from_i32(a.grpc_code()),
    }
}

/// The gRPC status etcd sends for `e`: its code and exact message.
pub fn status(e: &EtcdError) -> Status {
    Status::new(code(e), e.message())
}

/// `.to_status()` on mvcc's errors, as etcd's services answer them.
pub(crate) trait ToStatus {
    fn to_status(&self) -> Status;
}

impl ToStatus for EtcdError {
    fn to_status(&self) -> Status {
        status(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_are_etcds() {
        assert_eq!(code(&EtcdError::Compacted), Code::OutOfRange);
        assert_eq!(code(&EtcdError::LeaseNotFound), Code::NotFound);
        assert_eq!(code(&EtcdError::LeaseExists), Code::FailedPrecondition);
        assert_eq!(code(&EtcdError::NoSpace), Code::ResourceExhausted);
        assert_eq!(
            node_status(&NodeError::NoLeader).message(),
            "etcdserver: no leader"
        );
        assert_eq!(node_code(&NodeError::NoLeader), Code::Unavailable);
        let st = status(&EtcdError::EmptyKey);
        assert_eq!(st.code(), Code::InvalidArgument);
        assert_eq!(st.message(), "etcdserver: key is not provided");
    }
}
