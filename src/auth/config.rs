//! `[auth]` in the server's TOML file: API keys (as SHA-256 digests), JWT verification, client
//! certificate names, rate limits. Parsing and validation only.

use std::path::PathBuf;

use serde::Deserialize;

use super::Scope;

/// Requests per second and burst for one principal.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

impl RateLimit {
    /// No limit (`per_second = 0`).
    pub const NONE: RateLimit = RateLimit {
        per_second: 0.0,
        burst: 0,
    };

    pub fn is_unlimited(&self) -> bool {
        self.per_second <= 0.0
    }
}

impl Eq for RateLimit {}

impl std::hash::Hash for RateLimit {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.per_second.to_bits().hash(h);
        self.burst.hash(h);
    }
}

fn scopes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Scope>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    names
        .iter()
        .map(|n| {
            Scope::parse(n).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown scope '{n}' (expected infer, infer:<model>, admin, feedback, jobs, metrics)"
                ))
            })
        })
        .collect()
}

/// `[[auth.api_keys]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub name: String,
    /// Hex SHA-256 of the key (`ferrite keygen` prints it); never the key itself.
    pub sha256: String,
    #[serde(deserialize_with = "scopes")]
    pub scopes: Vec<Scope>,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

/// `[[auth.clients]]`: a client certificate's subject CN (mutual TLS) and its scopes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    pub name: String,
    #[serde(deserialize_with = "scopes")]
    pub scopes: Vec<Scope>,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

/// `[auth.jwt]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Accepted algorithms: any of HS256, RS256, ES256. Anything else (and `none`) is refused.
    pub algorithms: Vec<String>,
    /// HS256: the shared secret, from a file ...
    #[serde(default)]
    pub hs256_secret_file: Option<PathBuf>,
    /// ... or from an environment variable (its name).
    #[serde(default)]
    pub hs256_secret_env: Option<String>,
    /// RS256/ES256: a PEM public key ...
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// ... or a JWKS file (keys chosen by `kid`).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// The claim holding scopes: a space-separated string (`scope`) or an array (`scopes`).
    #[serde(default = "default_scope_claim")]
    pub scope_claim: String,
    /// A claim whose value picks a rate limit from `rate_limits` (e.g. a plan or tier).
    #[serde(default)]
    pub rate_limit_claim: Option<String>,
    #[serde(default)]
    pub rate_limits: std::collections::BTreeMap<String, RateLimit>,
}

fn default_leeway() -> u64 {
    30
}

fn default_scope_claim() -> String {
    "scope".into()
}

impl JwtConfig {
    pub fn files(&self) -> Vec<PathBuf> {
        [
            &self.hs256_secret_file,
            &self.public_key_file,
            &self.jwks_file,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }
}

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub api_keys: Vec<KeyEntry>,
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    #[serde(default)]
    pub clients: Vec<ClientEntry>,
    /// The rate limit of principals whose entry sets none (default: unlimited).
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Require the `metrics` scope on the metrics port (default false: Prometheus scrapes it).
    #[serde(default)]
    pub protect_metrics: bool,
}

impl AuthConfig {
    pub fn default_rate(&self) -> RateLimit {
        self.rate_limit.unwrap_or(RateLimit::NONE)
    }

    pub fn validate(&self) -> Result<(), String> {
        for (i, k) in self.api_keys.iter().enumerate() {
            let hex_ok = k.sha256.len() == 64 && k.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex_ok {
                return Err(format!(
                    "auth.api_keys[{i}] ({}): sha256 must be 64 hex digits (`ferrite keygen` prints it)",
                    k.name
                ));
            }
            if self.api_keys[..i].iter().any(|o| o.name == k.name) {
                return Err(format!(
                    "auth.api_keys[{i}]: name '{}' is used twice",
                    k.name
                ));
            }
        }
        let rates = self
            .api_keys
            .iter()
            .filter_map(|k| k.rate_limit)
            .chain(self.clients.iter().filter_map(|c| c.rate_limit))
            .chain(self.rate_limit)
            .chain(
                self.jwt
                    .iter()
                    .flat_map(|j| j.rate_limits.values().copied()),
            );
        for r in rates {
            if !r.per_second.is_finite()
                || r.per_second < 0.0
                || (r.per_second > 0.0 && r.burst == 0)
            {
                return Err(format!(
                    "rate limit {r:?}: per_second must be >= 0 (0 = unlimited) and burst >= 1"
                ));
            }
        }
        if let Some(j) = &self.jwt {
            if j.algorithms.is_empty() {
                return Err(
                    "auth.jwt.algorithms: expected at least one of HS256, RS256, ES256".into(),
                );
            }
            for a in &j.algorithms {
                let needs = match a.as_str() {
                    "HS256" => j.hs256_secret_file.is_some() || j.hs256_secret_env.is_some(),
                    "RS256" | "ES256" => j.public_key_file.is_some() || j.jwks_file.is_some(),
                    other => {
                        return Err(format!(
                            "auth.jwt.algorithms: '{other}' is not supported (HS256, RS256, ES256)"
                        ))
                    }
                };
                if !needs {
                    return Err(format!(
                        "auth.jwt: {a} needs {}",
                        if a == "HS256" {
                            "hs256_secret_file or hs256_secret_env"
                        } else {
                            "public_key_file or jwks_file"
                        }
                    ));
                }
            }
        }
        Ok(())
    }
}
