//! JWT verification (`jsonwebtoken`): HS256 with a shared secret, RS256/ES256 with a PEM public key
//! or a JWKS file (key chosen by `kid`). Only the configured algorithms are accepted (`alg: none`
//! and HS/RS confusion are refused); `exp` is required, `nbf` checked, `iss`/`aud` when configured,
//! all with a leeway. Scopes come from a configurable claim (space-separated string or array).
//! Verified tokens are cached by their SHA-256 until they expire, so an RS256 signature is checked
//! once per token, not once per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{AuthError, JwtConfig, Principal, RateLimit, Scope};

/// Most verified tokens kept; past it, expired ones go, then all.
const CACHE_MAX: usize = 10_000;

/// A verified token's principal and its `exp` (seconds since the epoch).
pub type Verified = (Arc<Principal>, u64);

pub struct JwtVerifier {
    hs256: Option<DecodingKey>,
    /// A PEM public key and the algorithm it serves.
    public: Option<(Algorithm, DecodingKey)>,
    /// JWKS keys by `kid`, with the algorithm each serves.
    jwks: HashMap<String, (Algorithm, DecodingKey)>,
    validations: HashMap<Algorithm, Validation>,
    scope_claim: String,
    rate_limit_claim: Option<String>,
    rate_limits: std::collections::BTreeMap<String, RateLimit>,
    default_rate: RateLimit,
    /// Short sections, no await.
    cache: Mutex<HashMap<[u8; 32], Verified>>,
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("auth.jwt: cannot read {}: {e}", path.display()))
}

fn parse_alg(a: &str) -> Result<Algorithm, String> {
    match a {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        other => Err(format!("auth.jwt: algorithm '{other}' is not supported")),
    }
}

impl JwtVerifier {
    /// Reads the key files named by `cfg` (validated).
    pub fn load(cfg: &JwtConfig, default_rate: RateLimit) -> Result<JwtVerifier, String> {
        let algs: Vec<Algorithm> = cfg
            .algorithms
            .iter()
            .map(|a| parse_alg(a))
            .collect::<Result<_, _>>()?;
        let hs256 = if algs.contains(&Algorithm::HS256) {
            let secret = match (&cfg.hs256_secret_file, &cfg.hs256_secret_env) {
                (Some(f), _) => read(f)?,
                (None, Some(var)) => std::env::var(var)
                    .map_err(|_| format!("auth.jwt: environment variable {var} is not set"))?
                    .into_bytes(),
                (None, None) => return Err("auth.jwt: HS256 needs a secret".into()),
            };
            let secret = String::from_utf8_lossy(&secret).trim().as_bytes().to_vec();
            if secret.len() < 32 {
                return Err("auth.jwt: the HS256 secret must be at least 32 bytes".into());
            }
            Some(DecodingKey::from_secret(&secret).map_err(|e| format!("auth.jwt: {e}"))?)
        } else {
            None
        };
        let asym: Vec<Algorithm> = algs
            .iter()
            .copied()
            .filter(|a| *a != Algorithm::HS256)
            .collect();
        let public = match (&cfg.public_key_file, asym.as_slice()) {
            (Some(f), [alg]) => {
                let pem = read(f)?;
                let key = match alg {
                    Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                    _ => DecodingKey::from_ec_pem(&pem),
                }
                .map_err(|e| format!("auth.jwt: {}: not a {alg:?} public key: {e}", f.display()))?;
                Some((*alg, key))
            }
            (Some(_), _) => {
                return Err(
                    "auth.jwt: public_key_file serves one of RS256/ES256; use jwks_file for both"
                        .into(),
                )
            }
            (None, _) => None,
        };
        let mut jwks = HashMap::new();
        if let Some(f) = &cfg.jwks_file {
            let set: JwkSet = serde_json::from_slice(&read(f)?)
                .map_err(|e| format!("auth.jwt: {}: not a JWKS: {e}", f.display()))?;
            for jwk in &set.keys {
                let kid =
                    jwk.common.key_id.clone().ok_or_else(|| {
                        format!("auth.jwt: {}: every key needs a kid", f.display())
                    })?;
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| format!("auth.jwt: {}: key '{kid}': {e}", f.display()))?;
                let alg = match key.family() {
                    jsonwebtoken::AlgorithmFamily::Rsa => Algorithm::RS256,
                    jsonwebtoken::AlgorithmFamily::Ec => Algorithm::ES256,
                    _ => continue,
                };
                if asym.contains(&alg) {
                    jwks.insert(kid, (alg, key));
                }
            }
        }
        let validations = algs
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = cfg.leeway_secs;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.set_required_spec_claims(&["exp"]);
                match &cfg.audience {
                    Some(a) => v.set_audience(&[a]),
                    None => v.validate_aud = false,
                }
                if let Some(i) = &cfg.issuer {
                    v.set_issuer(&[i]);
                }
                (alg, v)
            })
            .collect();
        Ok(JwtVerifier {
            hs256,
            public,
            jwks,
            validations,
            scope_claim: cfg.scope_claim.clone(),
            rate_limit_claim: cfg.rate_limit_claim.clone(),
            rate_limits: cfg.rate_limits.clone(),
            default_rate,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The principal a token stands for, and its `exp`. `now`: seconds since the epoch (for the
    /// cache).
    pub fn verify(&self, token: &str, now: u64) -> Result<Verified, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((p, exp)) = cache.get(&digest) {
                if now < *exp {
                    return Ok((p.clone(), *exp));
                }
            }
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let validation = self
            .validations
            .get(&header.alg)
            .ok_or(AuthError::Invalid)?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            alg => match header.kid.as_deref() {
                Some(kid) => self
                    .jwks
                    .get(kid)
                    .filter(|(a, _)| *a == alg)
                    .map(|(_, k)| k)
                    .or_else(|| {
                        // A token with a kid and a single PEM key: the kid must be one we know
                        // only when a JWKS is configured.
                        self.jwks.is_empty().then_some(()).and(
                            self.public
                                .as_ref()
                                .filter(|(a, _)| *a == alg)
                                .map(|(_, k)| k),
                        )
                    }),
                None => self
                    .public
                    .as_ref()
                    .filter(|(a, _)| *a == alg)
                    .map(|(_, k)| k),
            },
        }
        .ok_or(AuthError::Invalid)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            },
        )?;
        let claims = data.claims;
        let principal = Arc::new(self.principal(&claims)?);
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, e)| now < *e);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        // Cached until exp (not exp + leeway: a cached token expires on time or early).
        cache.insert(digest, (principal.clone(), exp));
        Ok((principal, exp))
    }

    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, AuthError> {
        let names: Vec<&str> = match claims.get(&self.scope_claim) {
            Some(Value::String(s)) => s.split_whitespace().collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        // Unknown scope names are ignored (an identity provider may issue others).
        let scopes: Vec<Scope> = names.into_iter().filter_map(Scope::parse).collect();
        let name = claims
            .get("sub")
            .and_then(Value::as_str)
            .map(|s| format!("jwt:{s}"))
            .ok_or(AuthError::Invalid)?;
        let rate = self
            .rate_limit_claim
            .as_ref()
            .and_then(|c| claims.get(c))
            .and_then(Value::as_str)
            .and_then(|v| self.rate_limits.get(v).copied())
            .unwrap_or(self.default_rate);
        Ok(Principal { name, scopes, rate })
    }
}
