//! Password hashing: bcrypt, etcd's algorithm, with etcd's cost bounds.
//!
//! Both functions are CPU-bound on purpose (a cost of 10 is ~2^10 key
//! expansions); callers on an async runtime run them on a blocking thread
//! and bound how many run at once.

/// etcd's `--bcrypt-cost` default.
pub const DEFAULT_COST: u32 = 10;
/// bcrypt's own bounds (etcd accepts the same).
pub const MIN_COST: u32 = 4;
pub const MAX_COST: u32 = 31;
/// bcrypt uses the first 72 bytes of a password; longer ones are refused
/// rather than silently truncated.
pub const MAX_PASSWORD_BYTES: usize = 72;

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("bcrypt cost {0} is outside {MIN_COST}..={MAX_COST}")]
    Cost(u32),
    #[error("password longer than {MAX_PASSWORD_BYTES} bytes")]
    TooLong,
    #[error("bcrypt: {0}")]
    Bcrypt(String),
}

/// Check a cost setting.
pub fn check_cost(cost: u32) -> Result<(), HashError> {
    if (MIN_COST..=MAX_COST).contains(&cost) {
        Ok(())
    } else {
        Err(HashError::Cost(cost))
    }
}

/// Hash `password` with a fresh random salt at `cost`.
pub fn hash(password: &str, cost: u32) -> Result<String, HashError> {
    check_cost(cost)?;
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(HashError::TooLong);
    }
    bcrypt::hash(password, cost).map_err(|e| HashError::Bcrypt(e.to_string()))
}

/// Whether `password` matches `hash` (false for a malformed hash).
pub fn verify(password: &str, hash: &str) -> bool {
    if hash.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    bcrypt::verify(password, hash).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn hash_and_verify() {
        let h = super::hash("pw", super::MIN_COST).unwrap();
        assert!(super::verify("pw", &h));
        assert!(!super::verify("px", &h));
        assert!(!super::verify("pw", ""));
        assert!(super::hash("pw", 3).is_err());
    }
}
