//! Auth tokens: etcd's `simple` tokens and JWTs (`--auth-token`).
//!
//! * Simple: `<16 random letters>.<counter>`, known only to the member that
//!   issued it (kept in memory, lost on restart — clients re-authenticate on
//!   `etcdserver: invalid auth token`, as etcd's clients do). Each use
//!   pushes its expiry `ttl` ahead (etcd's `--auth-token-ttl`, 300 s by
//!   default). At most [`MAX_SIMPLE_TOKENS`] live at once; past that the one
//!   closest to expiry is dropped.
//! * JWT: claims `{"username", "revision", "exp"}` as etcd's, signed with the
//!   private key; any member with the public key verifies it, so a token
//!   works on every member, and it expires at `exp` (no leeway).

use crate::AuthError;
use rand::Rng;
use serde::{Deserialize, Serialize};
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

struct Simple {
    ttl: Duration,
    tokens: Mutex<HashMap<String, (String, u64, Instant)>>,
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

    /// Issue a token for `user` at auth revision `revision`.
    pub fn assign(&self, user: &str, revision: u64, now: Instant) -> Result<String, AuthError> {
        match &self.kind {
            Kind::Simple(s) => {
                let n = s.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let rnd: String = rand::thread_rng()
                    .sample_iter(&rand::distributions::Alphanumeric)
                    .take(16)
                    .map(char::from)
                    .collect();
                let token = format!("{rnd}.{n}");
                let mut map = s.tokens.lock().unwrap_or_else(|e| e.into_inner());
                if map.len() >= MAX_SIMPLE_TOKENS {
                    map.retain(|_, (_, _, exp)| *exp > now);
                    if map.len() >= MAX_SIMPLE_TOKENS {
                        if let Some(k) = map
                            .iter()
                            .min_by_key(|(_, (_, _, exp))| *exp)
                            .map(|(k, _)| k.clone())
                        {
                            map.remove(&k);
                        }
                    }
                }
                map.insert(token.clone(), (user.to_string(), revision, now + s.ttl));
                Ok(token)
            }
            // Only without a priv-key (see `can_issue`): nothing to sign with.
            Kind::Jwt(j) => j.sign(user, revision).map_err(|_| AuthError::AuthFailed),
        }
    }

    /// What `token` says, or `InvalidAuthToken` (unknown, expired, forged).
    pub fn info(&self, token: &str, now: Instant) -> Result<TokenInfo, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::InvalidAuthToken);
        }
        match &self.kind {
            Kind::Simple(s) => {
                let mut map = s.tokens.lock().unwrap_or_else(|e| e.into_inner());
                match map.get_mut(token) {
                    Some((user, rev, exp)) if *exp > now => {
                        *exp = now + s.ttl;
                        Ok(TokenInfo {
                            user: user.clone(),
                            revision: *rev,
                        })
                    }
                    Some(_) => {
                        map.remove(token);
                        Err(AuthError::InvalidAuthToken)
                    }
                    None => Err(AuthError::InvalidAuthToken),
                }
            }
            Kind::Jwt(j) => j.verify(token).map_err(|_| AuthError::InvalidAuthToken),
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
                .retain(|_, (u, _, _)| u != user);
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
        let tok = t.assign("u", 3, now).unwrap();
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
        let tok = t.assign("u", 3, now).unwrap();
        t.invalidate_user("u");
        assert!(t.info(&tok, now).is_err());
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
        let tok = issuer.assign("alice", 7, Instant::now()).unwrap();
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
        assert!(verifier.assign("x", 0, Instant::now()).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
