//! etcd-api (skeleton; see ARCHITECTURE.md)
