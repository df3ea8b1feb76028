//! Auth tokens: etcd's `simple` tokens and JWTs (`--auth-token`).
//!
//! * Simple: `<16 random letters>.<counter>`, issued by the member serving
//!   `Authenticate` and installed on **every** member through Raft, as etcd
//!   does (`AuthCommand::Authenticate`, applied by each member, which calls
//!   [`Tokens::install`]): a client may present it to any member. Only the
//!   token's SHA-256 is proposed, so the Raft log never holds a usable
//!   token; members keep tokens in memory only (never in `kv.redb`, its
//!   snapshots or backups), and a restarted member has none (etcd's
//!   behaviour too): clients re-authenticate on `etcdserver: invalid auth
//!   token`, as etcd's clients do. Each member counts a token's lifetime on
//!   its own clock from its own install, and each use there pushes its
//!   expiry `ttl` ahead (etcd's `--auth-token-ttl`, 300 s by default). At
//!   most [`MAX_SIMPLE_TOKENS`] live at once per member; past that the one
//!   closest to expiry is dropped.
//! * JWT: claims `{"username", "revision", "exp"}` as etcd's, signed with the
//!   private key; any member with the public key verifies it, so a token
//!   works on every member, and it expires at `exp` (no leeway).

use crate::AuthError;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Most simple tokens a member holds.
pub const MAX_SIMPLE_TOKENS: usize = 100_000;
/// etcd's default `--auth-token-ttl` (simple tokens), seconds.
pub const DEFAULT_SIMPLE_TTL: Duration = Duration::from_secs(300);
/// etcd's default JWT `ttl`.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
/// Longest token lifetime accepted for either kind.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest token accepted from a client, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Random letters in a simple token (etcd's `simpleTokenPrefix` length):
/// 62^16 ≈ 2^95 choices, so neither guessing a live token nor inverting a
/// hash in the Raft log is feasible.
pub const SIMPLE_TOKEN_RANDOM_CHARS: usize = 16;
/// Bytes of the hash a simple token is proposed and installed under (SHA-256).
pub const TOKEN_HASH_BYTES: usize = 32;

/// The hash a simple token is installed under: what `AuthCommand::Authenticate`
/// carries instead of the token.
pub fn simple_token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// What a valid token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    pub user: String,
    /// Auth revision when it was issued.
    pub revision: u64,
}

/// The parsed `--auth-token` setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenConfig {
    Simple {
        ttl: Duration,
    },
    Jwt {
        algorithm: String,
        public_key: Option<PathBuf>,
        private_key: Option<PathBuf>,
        ttl: Duration,
    },
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig::Simple {
            ttl: DEFAULT_SIMPLE_TTL,
        }
    }
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("ttl {s:?}: {e}"))?;
    if d.is_zero() || d > MAX_TOKEN_TTL {
        return Err(format!("ttl {s:?} must be within 1s..=24h"));
    }
    Ok(d)
}

impl TokenConfig {
    /// Parse etcd's `--auth-token` value: `simple`, or
    /// `jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256,ttl=5m`.
    /// `simple_ttl` is `--auth-token-ttl`.
    pub fn parse(spec: &str, simple_ttl: Duration) -> Result<TokenConfig, String> {
        if simple_ttl.is_zero() || simple_ttl > MAX_TOKEN_TTL {
            return Err("--auth-token-ttl must be within 1..=86400 seconds".into());
        }
        let mut parts = spec.split(',');
        match parts.next().unwrap_or("") {
            "simple" => {
                if parts.next().is_some() {
                    return Err("`simple` takes no options".into());
                }
                Ok(TokenConfig::Simple { ttl: simple_ttl })
            }
            "jwt" => {
                let (mut alg, mut public, mut private, mut ttl) =
                    (None, None, None, DEFAULT_JWT_TTL);
                for p in parts {
                    let (k, v) = p
                        .split_once('=')
                        .ok_or_else(|| format!("option {p:?} is not key=value"))?;
                    match k {
                        "pub-key" => public = Some(PathBuf::from(v)),
                        "priv-key" => private = Some(PathBuf::from(v)),
                        "sign-method" => alg = Some(v.to_string()),
                        "ttl" => ttl = parse_ttl(v)?,
                        _ => return Err(format!("unknown jwt option {k:?}")),
                    }
                }
                let algorithm = alg.ok_or("jwt needs sign-method=")?;
                if public.is_none() && private.is_none() {
                    return Err("jwt needs pub-key= and/or priv-key=".into());
                }
                Ok(TokenConfig::Jwt {
                    algorithm,
                    public_key: public,
                    private_key: private,
                    ttl,
                })
            }
            other => Err(format!(
                "unknown token type {other:?} (expected `simple` or `jwt,...`)"
            )),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

struct Jwt {
    algorithm: jsonwebtoken::Algorithm,
    encoding: Option<jsonwebtoken::EncodingKey>,
    decoding: jsonwebtoken::DecodingKey,
    ttl: Duration,
}

/// An installed simple token: whose, issued at which auth revision, and
/// when it expires on this member's clock.
struct SimpleEntry {
    user: String,
    revision: u64,
    expires: Instant,
}

struct Simple {
    ttl: Duration,
    /// Keyed by the token's SHA-256 ([`simple_token_hash`]).
    tokens: Mutex<HashMap<Vec<u8>, SimpleEntry>>,
    counter: std::sync::atomic::AtomicU64,
}

/// Issues and checks tokens; one per member.
pub struct Tokens {
    kind: Kind,
}

enum Kind {
    Simple(Simple),
    Jwt(Box<Jwt>),
}

fn read(path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

impl Tokens {
    /// Build from the configuration, reading key files (errors name them).
    pub fn new(cfg: &TokenConfig) -> Result<Tokens, String> {
        Ok(Tokens {
            kind: match cfg {
                TokenConfig::Simple { ttl } => Kind::Simple(Simple {
                    ttl: *ttl,
                    tokens: Mutex::new(HashMap::new()),
                    counter: Default::default(),
                }),
                TokenConfig::Jwt {
                    algorithm,
                    public_key,
                    private_key,
                    ttl,
                } => {
                    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
                    let alg: Algorithm = algorithm
                        .parse()
                        .map_err(|_| format!("unknown sign-method {algorithm:?}"))?;
                    let ec = match alg {
                        Algorithm::ES256 | Algorithm::ES384 => true,
                        Algorithm::RS256
                        | Algorithm::RS384
                        | Algorithm::RS512
                        | Algorithm::PS256
                        | Algorithm::PS384
                        | Algorithm::PS512 => false,
                        _ => {
                            return Err(format!(
                                "sign-method {algorithm:?} is not supported (RS256/384/512, PS256/384/512, ES256/384)"
                            ))
                        }
                    };
                    let encoding = match private_key {
                        None => None,
                        Some(p) => {
                            let pem = read(p)?;
                            let k = if ec {
                                EncodingKey::from_ec_pem(&pem)
                            } else {
                                EncodingKey::from_rsa_pem(&pem)
                            };
                            Some(k.map_err(|e| format!("private key {}: {e}", p.display()))?)
                        }
                    };
                    let Some(p) = public_key else {
                        return Err("jwt needs pub-key= to verify tokens".into());
                    };
                    let pem = read(p)?;
                    let decoding = if ec {
                        DecodingKey::from_ec_pem(&pem)
                    } else {
                        DecodingKey::from_rsa_pem(&pem)
                    }
                    .map_err(|e| format!("public key {}: {e}", p.display()))?;
                    let jwt = Jwt {
                        algorithm: alg,
                        encoding,
                        decoding,
                        ttl: *ttl,
                    };
                    // Refuse a mismatched key pair at start, not at the first login.
                    if jwt.encoding.is_some() {
                        let t = jwt.sign("probe", 0).map_err(|e| format!("signing: {e}"))?;
                        jwt.verify(&t)
                            .map_err(|_| "pub-key does not verify tokens signed with priv-key")?;
                    }
                    Kind::Jwt(Box::new(jwt))
                }
            },
        })
    }

    /// The wall clock as [`Tokens::install`] takes it (Unix ms).
    pub fn unix_ms_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    /// A new simple token and its hash, for the member serving
    /// `Authenticate` to propose (`AuthCommand::Authenticate`); it becomes
    /// valid on each member when that member applies it ([`Tokens::install`]).
    /// `None` for JWT, which needs no Raft round ([`Tokens::sign`]).
    pub fn generate_simple(&self) -> Option<(String, Vec<u8>)> {
        let Kind::Simple(s) = &self.kind else {
            return None;
        };
        let n = s.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rnd: String = rand::thread_rng()
            .sample_iter(&rand::distributions::Alphanumeric)
            .take(SIMPLE_TOKEN_RANDOM_CHARS)
            .map(char::from)
            .collect();
        let token = format!("{rnd}.{n}");
        let hash = simple_token_hash(&token);
        Some((token, hash))
    }

    /// Install a simple token (by its hash) for `user`, issued at auth
    /// revision `revision`, valid for the TTL from `now` (this member's
    /// clock). Called on every member as it applies the token's
    /// `AuthCommand::Authenticate`. A no-op for JWT members, for a hash of
    /// the wrong length, and for a token issued (`issued_unix_ms`, the
    /// issuer's wall clock) more than a TTL before `now_unix_ms` (this
    /// member's wall clock): a member that applies the entry that late
    /// lagged behind, and the token has expired on every member that had it
    /// in time unless it was used there — its client re-authenticates.
    pub fn install(
        &self,
        hash: &[u8],
        user: &str,
        revision: u64,
        issued_unix_ms: u64,
        now: Instant,
        now_unix_ms: u64,
    ) {
        let Kind::Simple(s) = &self.kind else {
            return;
        };
        if hash.len() != TOKEN_HASH_BYTES {
            return;
        }
        if now_unix_ms.saturating_sub(issued_unix_ms) > s.ttl.as_millis() as u64 {
            return;
        }
        let mut map = s.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_SIMPLE_TOKENS && !map.contains_key(hash) {
            map.retain(|_, e| e.expires > now);
            if map.len() >= MAX_SIMPLE_TOKENS {
                if let Some(k) = map
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(k, _)| k.clone())
                {
                    map.remove(&k);
                }
            }
        }
        map.insert(
            hash.to_vec(),
            SimpleEntry {
                user: user.to_string(),
                revision,
                expires: now + s.ttl,
            },
        );
    }

    /// Sign a JWT for `user` at auth revision `revision`. Simple tokens are
    /// not signed but generated and installed ([`Tokens::generate_simple`]),
    /// so this is `AuthFailed` for a simple-token member, as it is for a JWT
    /// member without a private key (see [`Tokens::can_issue`]).
    pub fn sign(&self, user: &str, revision: u64) -> Result<String, AuthError> {
        match &self.kind {
            Kind::Simple(_) => Err(AuthError::AuthFailed),
            Kind::Jwt(j) => j.sign(user, revision).map_err(|_| AuthError::AuthFailed),
        }
    }

    /// What `token` says, or `InvalidAuthToken` (unknown, expired, forged).
    /// A simple token's use here pushes its expiry on this member ahead.
    pub fn info(&self, token: &str, now: Instant) -> Result<TokenInfo, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::InvalidAuthToken);
        }
        match &self.kind {
            Kind::Simple(s) => {
                let hash = simple_token_hash(token);
                let mut map = s.tokens.lock().unwrap_or_else(|e| e.into_inner());
                match map.get_mut(&hash) {
                    Some(e) if e.expires > now => {
                        e.expires = now + s.ttl;
                        Ok(TokenInfo {
                            user: e.user.clone(),
                            revision: e.revision,
                        })
                    }
                    Some(_) => {
                        map.remove(&hash);
                        Err(AuthError::InvalidAuthToken)
                    }
                    None => Err(AuthError::InvalidAuthToken),
                }
            }
            Kind::Jwt(j) => j.verify(token).map_err(|_| AuthError::InvalidAuthToken),
        }
    }

    /// Whether `token` is a simple token this member does not hold at all
    /// (neither live nor expired): it may have been issued by another
    /// member in an entry this member has not applied yet. False for JWTs.
    /// Neither refreshes nor removes anything.
    pub fn simple_unknown(&self, token: &str) -> bool {
        match &self.kind {
            Kind::Simple(s) => {
                token.len() <= MAX_TOKEN_BYTES
                    && !s
                        .tokens
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains_key(&simple_token_hash(token))
            }
            Kind::Jwt(_) => false,
        }
    }

    /// Forget every simple token (auth disabled, as etcd's
    /// `tokenProvider.disable()`; or a snapshot replaced this member's state,
    /// so invalidations in the entries it skipped are unknown).
    pub fn clear(&self) {
        if let Kind::Simple(s) = &self.kind {
            s.tokens.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    /// Forget every simple token of `user` (deleted, or its password
    /// changed). JWTs cannot be recalled; they end at their expiry, and a
    /// deleted user's token no longer passes permission checks.
    pub fn invalidate_user(&self, user: &str) {
        if let Kind::Simple(s) = &self.kind {
            s.tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, e| e.user != user);
        }
    }

    /// Live simple tokens (0 for JWT).
    pub fn len(&self) -> usize {
        match &self.kind {
            Kind::Simple(s) => s.tokens.lock().unwrap_or_else(|e| e.into_inner()).len(),
            Kind::Jwt(_) => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this member can issue tokens (false for a JWT member given
    /// only a public key: it verifies tokens issued elsewhere).
    pub fn can_issue(&self) -> bool {
        match &self.kind {
            Kind::Simple(_) => true,
            Kind::Jwt(j) => j.encoding.is_some(),
        }
    }

    /// Whether these are simple tokens (installed through the log), not JWTs.
    pub fn is_simple(&self) -> bool {
        matches!(self.kind, Kind::Simple(_))
    }

    /// `simple` or `jwt`.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            Kind::Simple(_) => "simple",
            Kind::Jwt(_) => "jwt",
        }
    }
}

impl Jwt {
    fn sign(&self, user: &str, revision: u64) -> Result<String, String> {
        let Some(key) = &self.encoding else {
            return Err("no priv-key: this member only verifies tokens".into());
        };
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            + self.ttl.as_secs().max(1);
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(self.algorithm),
            &Claims {
                username: user.to_string(),
                revision,
                exp,
            },
            key,
        )
        .map_err(|e| e.to_string())
    }

    fn verify(&self, token: &str) -> Result<TokenInfo, String> {
        let mut v = jsonwebtoken::Validation::new(self.algorithm);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).map_err(|e| e.to_string())?;
        Ok(TokenInfo {
            user: data.claims.username,
            revision: data.claims.revision,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_specs() {
        assert_eq!(
            TokenConfig::parse("simple", DEFAULT_SIMPLE_TTL).unwrap(),
            TokenConfig::default()
        );
        let c = TokenConfig::parse(
            "jwt,pub-key=/a.pub,priv-key=/a,sign-method=RS256,ttl=10m",
            DEFAULT_SIMPLE_TTL,
        )
        .unwrap();
        assert!(matches!(c, TokenConfig::Jwt { ttl, .. } if ttl == Duration::from_secs(600)));
        assert!(TokenConfig::parse("jwt,sign-method=RS256", DEFAULT_SIMPLE_TTL).is_err());
        assert!(TokenConfig::parse("opaque", DEFAULT_SIMPLE_TTL).is_err());
        assert!(TokenConfig::parse(
            "jwt,pub-key=/a,sign-method=ES256,ttl=48h",
            DEFAULT_SIMPLE_TTL
        )
        .is_err());
    }

    #[test]
    fn simple_tokens_expire_and_refresh() {
        let t = Tokens::new(&TokenConfig::Simple {
            ttl: Duration::from_secs(10),
        })
        .unwrap();
        let now = Instant::now();
        let (tok, hash) = t.generate_simple().unwrap();
        assert_eq!(hash, simple_token_hash(&tok));
        // Unknown until installed (on apply of its Raft entry).
        assert_eq!(t.info(&tok, now), Err(AuthError::InvalidAuthToken));
        let wall = Tokens::unix_ms_now();
        // Applied more than a TTL after its issue (a lagging member): not
        // installed.
        t.install(&hash, "u", 3, wall - 10_001, now, wall);
        assert_eq!(t.info(&tok, now), Err(AuthError::InvalidAuthToken));
        t.install(&hash, "u", 3, wall, now, wall);
        assert_eq!(
            t.info(&tok, now + Duration::from_secs(9)).unwrap().user,
            "u"
        );
        // refreshed at +9: valid until +19
        assert!(t.info(&tok, now + Duration::from_secs(18)).is_ok());
        assert_eq!(
            t.info(&tok, now + Duration::from_secs(40)),
            Err(AuthError::InvalidAuthToken)
        );
        assert_eq!(t.info("nope", now), Err(AuthError::InvalidAuthToken));
        let (tok, hash) = t.generate_simple().unwrap();
        t.install(&hash, "u", 3, wall, now, wall);
        t.invalidate_user("u");
        assert!(t.info(&tok, now).is_err());
        let (tok, hash) = t.generate_simple().unwrap();
        t.install(&hash, "v", 3, wall, now, wall);
        t.clear();
        assert!(t.info(&tok, now).is_err());
        // Only the hash is kept: the token itself cannot be read back.
        assert!(t.sign("u", 3).is_err());
    }

    #[test]
    fn jwt_es256_round_trip_and_forgery() {
        let dir = std::env::temp_dir().join(format!("phalanx-auth-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::write(dir.join("k"), kp.serialize_pem()).unwrap();
        std::fs::write(dir.join("k.pub"), kp.public_key_pem()).unwrap();
        let cfg = TokenConfig::Jwt {
            algorithm: "ES256".into(),
            public_key: Some(dir.join("k.pub")),
            private_key: Some(dir.join("k")),
            ttl: Duration::from_secs(60),
        };
        let issuer = Tokens::new(&cfg).unwrap();
        let tok = issuer.sign("alice", 7).unwrap();
        let verifier = Tokens::new(&TokenConfig::Jwt {
            algorithm: "ES256".into(),
            public_key: Some(dir.join("k.pub")),
            private_key: None,
            ttl: Duration::from_secs(60),
        })
        .unwrap();
        assert_eq!(
            verifier.info(&tok, Instant::now()).unwrap(),
            TokenInfo {
                user: "alice".into(),
                revision: 7
            }
        );
        let mut forged = tok.clone();
        forged.insert(forged.len() - 3, 'A');
        assert!(verifier.info(&forged, Instant::now()).is_err());
        assert!(verifier.sign("x", 0).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
