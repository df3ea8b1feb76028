//! Password hashing: bcrypt, etcd's algorithm, with etcd's cost bounds.
//!
//! Both hashing and verifying are CPU-bound on purpose (a cost of 10 is
//! ~2^10 key expansions). Hashing uses the `bcrypt` crate; callers on an
//! async runtime run it on a blocking thread and bound how many run at
//! once. Verifying — what every login pays — runs on a [`VerifyPool`]: a
//! fixed set of threads, one per core, that verify two pending passwords
//! at a time interleaved (`eksblowfish`), about twice the logins per core
//! of one at a time, with bcrypt's exact result.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

use base64::Engine;

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

/// Hash `password` at `cost` with a caller-chosen salt. Only for runs that
/// must be reproducible byte for byte (the simulator: its log must not
/// depend on the OS's randomness); a member always uses [`hash`].
pub fn hash_with_salt(password: &str, cost: u32, salt: [u8; 16]) -> Result<String, HashError> {
    check_cost(cost)?;
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(HashError::TooLong);
    }
    bcrypt::hash_with_salt(password, cost, salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Bcrypt(e.to_string()))
}

/// A stored bcrypt hash, parsed: `$2a$`, `$2b$`, `$2x$` or `$2y$` (the
/// `bcrypt` crate computes all four alike), the cost, the 16-byte salt and
/// the 23 bytes of the hash.
struct Stored {
    cost: u32,
    salt: [u8; 16],
    hash: [u8; 23],
}

impl Stored {
    /// `None` for anything the `bcrypt` crate's `verify` refuses too.
    fn parse(hash: &str) -> Option<Stored> {
        let mut parts = hash.split('$').filter(|s| !s.is_empty());
        let (prefix, cost, rest) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || !matches!(prefix, "2a" | "2b" | "2x" | "2y") {
            return None;
        }
        let cost: u32 = cost.parse().ok()?;
        check_cost(cost).ok()?;
        if rest.len() != 53 || !rest.is_char_boundary(22) {
            return None;
        }
        let (salt, hash) = rest.split_at(22);
        Some(Stored {
            cost,
            salt: bcrypt::BASE_64.decode(salt).ok()?.try_into().ok()?,
            hash: bcrypt::BASE_64.decode(hash).ok()?.try_into().ok()?,
        })
    }

    fn input<'a>(&self, password: &'a str) -> crate::eksblowfish::Input<'a> {
        crate::eksblowfish::Input {
            password: password.as_bytes(),
            salt: self.salt,
            cost: self.cost,
        }
    }

    /// Constant-time comparison with bcrypt's output.
    fn matches(&self, out: &[u8; 24]) -> bool {
        self.hash
            .iter()
            .zip(out)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Whether `password` matches `hash` (false for a malformed hash).
pub fn verify(password: &str, hash: &str) -> bool {
    if hash.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    match Stored::parse(hash) {
        Some(stored) => stored.matches(&crate::eksblowfish::bcrypt(&stored.input(password))),
        None => false,
    }
}

/// [`verify`] for two (password, hash) pairs, computed interleaved when
/// their costs are equal (about the CPU time of one); the same answers as
/// two [`verify`] calls.
pub fn verify_pair(a: (&str, &str), b: (&str, &str)) -> [bool; 2] {
    let usable = |(password, hash): (&str, &str)| {
        (!hash.is_empty() && password.len() <= MAX_PASSWORD_BYTES)
            .then(|| Stored::parse(hash))
            .flatten()
    };
    match (usable(a), usable(b)) {
        (Some(sa), Some(sb)) if sa.cost == sb.cost => {
            let [oa, ob] = crate::eksblowfish::bcrypt_pair(&sa.input(a.0), &sb.input(b.0));
            [sa.matches(&oa), sb.matches(&ob)]
        }
        _ => [verify(a.0, a.1), verify(b.0, b.1)],
    }
}

/// Passwords one [`VerifyPool`] thread verifies together (interleaved).
pub const VERIFY_INTERLEAVE: usize = 2;

/// One password verification waiting in a [`VerifyPool`].
struct Job {
    password: String,
    hash: String,
    done: Box<dyn FnOnce(bool) + Send>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closing: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// Threads that verify passwords, [`VERIFY_INTERLEAVE`] at a time each
/// ([`verify_pair`]) when that many are waiting. A fixed number of threads
/// (one per core is the intent) keeps a burst of logins from taking more
/// than those cores; the caller bounds how many jobs it queues (etcd-api
/// holds a permit per queued job). Dropping the pool lets its threads
/// finish the queued jobs and exit.
pub struct VerifyPool {
    shared: Arc<Shared>,
}

impl VerifyPool {
    /// Start `threads` (at least one) threads named `bcrypt-verify`.
    pub fn new(threads: usize) -> std::io::Result<VerifyPool> {
        let shared = Arc::new(Shared::default());
        for _ in 0..threads.max(1) {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("bcrypt-verify".into())
                .spawn(move || Self::work(&shared))?;
        }
        Ok(VerifyPool { shared })
    }

    /// Queue a verification of `password` against `hash`; `done` gets
    /// [`verify`]'s answer, on a pool thread.
    pub fn submit(&self, password: String, hash: String, done: impl FnOnce(bool) + Send + 'static) {
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.jobs.push_back(Job {
            password,
            hash,
            done: Box::new(done),
        });
        drop(q);
        self.shared.ready.notify_one();
    }

    fn work(shared: &Shared) {
        loop {
            let (first, second) = {
                let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                while q.jobs.is_empty() && !q.closing {
                    q = shared.ready.wait(q).unwrap_or_else(|e| e.into_inner());
                }
                let Some(first) = q.jobs.pop_front() else {
                    return; // closing, and nothing left
                };
                (first, q.jobs.pop_front())
            };
            match second {
                Some(second) => {
                    let [a, b] = verify_pair(
                        (&first.password, &first.hash),
                        (&second.password, &second.hash),
                    );
                    (first.done)(a);
                    (second.done)(b);
                }
                None => (first.done)(verify(&first.password, &first.hash)),
            }
        }
    }
}

impl Drop for VerifyPool {
    fn drop(&mut self) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closing = true;
        self.shared.ready.notify_all();
    }
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
        let salted = super::hash_with_salt("pw", super::MIN_COST, [7; 16]).unwrap();
        assert_eq!(
            salted,
            super::hash_with_salt("pw", super::MIN_COST, [7; 16]).unwrap(),
            "same salt, same hash"
        );
        assert!(super::verify("pw", &salted));
        assert!(!super::verify("px", &salted));
    }

    /// The interleaved verification is bcrypt, bit for bit: against hashes
    /// from the `bcrypt` crate, for passwords of every length class (empty,
    /// 71, 72 bytes — the NUL-terminated key is cut at 72 —, non-ASCII),
    /// several costs and salts, alone and in pairs (equal and different
    /// costs, one right and one wrong password).
    #[test]
    fn interleaved_verify_agrees_with_the_bcrypt_crate() {
        let long71 = "x".repeat(71);
        let long72 = "y".repeat(72);
        let passwords = [
            "",
            "pw",
            "correct horse battery staple",
            "pässwörd ✓",
            &long71,
            &long72,
        ];
        let mut cases = Vec::new();
        for (i, pw) in passwords.iter().enumerate() {
            for cost in [super::MIN_COST, super::MIN_COST + 1] {
                let salt = [(i as u8).wrapping_mul(37) ^ cost as u8; 16];
                let h = bcrypt::hash_with_salt(pw, cost, salt).unwrap().to_string();
                assert_eq!(h, super::hash_with_salt(pw, cost, salt).unwrap());
                cases.push((pw.to_string(), h));
            }
        }
        // A 72-byte password and its 73-byte extension share a hash (bcrypt
        // reads 72 bytes), but a 73-byte password is refused outright.
        assert!(super::verify(&long72, &cases[cases.len() - 1].1));
        assert!(!super::verify(
            &format!("{long72}z"),
            &cases[cases.len() - 1].1
        ));
        for (pw, h) in &cases {
            assert!(super::verify(pw, h), "{pw:?} against {h}");
            assert!(!super::verify(&format!("{pw}!"), h), "{pw:?}! against {h}");
            assert_eq!(bcrypt::verify(pw, h).unwrap(), super::verify(pw, h));
        }
        for (a, b) in cases.iter().zip(cases.iter().rev()) {
            let wrong = format!("{}?", b.0);
            assert_eq!(
                super::verify_pair((&a.0, &a.1), (&wrong, &b.1)),
                [true, false],
                "{a:?} / {b:?}"
            );
            assert_eq!(super::verify_pair((&b.0, &b.1), (&a.0, &a.1)), [true, true]);
        }
        // The usual $2y$ / $2a$ / $2x$ prefixes verify as the crate does;
        // malformed hashes are refused.
        let h = &cases[3].1;
        for prefix in ["$2a$", "$2x$", "$2y$"] {
            let alt = h.replacen("$2b$", prefix, 1);
            assert_eq!(
                super::verify(&cases[3].0, &alt),
                bcrypt::verify(&cases[3].0, &alt).unwrap()
            );
        }
        for bad in [
            "",
            "$2b$",
            "$2b$04$short",
            "$3b$04$AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            &h.replacen("$05$", "$99$", 1),
        ] {
            assert!(!super::verify("pw", bad), "{bad:?}");
        }
    }

    /// A published test vector (OpenBSD's / John the Ripper's), so the
    /// check does not rest on the `bcrypt` crate alone.
    #[test]
    fn a_published_vector() {
        let h = "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW";
        assert!(super::verify("U*U", h));
        assert!(!super::verify("U*V", h));
    }

    /// The pool answers every job, right or wrong, from many threads.
    #[test]
    fn the_pool_answers_every_verification() {
        let pool = super::VerifyPool::new(2).unwrap();
        let h = super::hash("pw", super::MIN_COST).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..20 {
            let tx = tx.clone();
            let pw = if i % 3 == 0 { "nope" } else { "pw" };
            pool.submit(pw.into(), h.clone(), move |ok| tx.send((i, ok)).unwrap());
        }
        drop(tx);
        let mut answers: Vec<(i32, bool)> = rx.iter().collect();
        answers.sort();
        assert_eq!(answers.len(), 20);
        for (i, ok) in answers {
            assert_eq!(ok, i % 3 != 0, "job {i}");
        }
    }
}
