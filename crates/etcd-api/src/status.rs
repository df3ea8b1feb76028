//! etcd's gRPC status codes for the errors the MVCC state machine returns.
//! The messages (`EtcdError::message`) belong to mvcc, which implements
//! etcd's semantics; how they travel over gRPC belongs here, so mvcc needs no
//! gRPC library (ARCHITECTURE.md, dependency rules).

use mvcc::EtcdError;
use tonic::{Code, Status};

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
        let st = status(&EtcdError::EmptyKey);
        assert_eq!(st.code(), Code::InvalidArgument);
        assert_eq!(st.message(), "etcdserver: key is not provided");
    }
}
