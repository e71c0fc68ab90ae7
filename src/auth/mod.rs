//! Access control as pure decisions, tested without HTTP: who is calling (`Principal`, from an API
//! key, a JWT or a verified client certificate), what they may do (`Scope`), and whether they are
//! over their request rate. `api/` wraps it as middleware; nothing here touches a socket, a model
//! or a queue. Secrets never leave this module: keys are kept as SHA-256 digests, tokens as their
//! digest in the verification cache; a connection's `CredentialMemo` holds the bytes its client
//! last sent, opaque to its holder, for the connection's life, zeroed when replaced or dropped.
//! Errors say only "missing", "invalid", "expired" or "insufficient scope".

mod config;
mod jwt;
mod keys;
mod rate;

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use axum::http::HeaderMap;

pub use config::{AuthConfig, ClientEntry, JwtConfig, KeyEntry, RateLimit};
pub use jwt::JwtVerifier;
pub use keys::{generate_key, sha256_hex, ApiKeys};
pub use rate::{RateDecision, RateLimiters};

/// What a request may touch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Inference and read-only model information on every model.
    Infer,
    /// Inference and model information on one model.
    InferModel(String),
    /// Repository load/unload/index and every management route (routing, promote, rollback).
    Admin,
    /// Ground-truth labels.
    Feedback,
    /// Bulk jobs.
    Jobs,
    /// The metrics port, when it is protected.
    Metrics,
}

impl Scope {
    /// Parses `infer`, `infer:<model>`, `admin`, `feedback`, `jobs`, `metrics`.
    pub fn parse(s: &str) -> Option<Scope> {
        Some(match s {
            "infer" => Scope::Infer,
            "admin" => Scope::Admin,
            "feedback" => Scope::Feedback,
            "jobs" => Scope::Jobs,
            "metrics" => Scope::Metrics,
            _ => match s.strip_prefix("infer:") {
                Some(m) if !m.is_empty() => Scope::InferModel(m.to_string()),
                _ => return None,
            },
        })
    }

    pub fn as_string(&self) -> String {
        match self {
            Scope::Infer => "infer".into(),
            Scope::InferModel(m) => format!("infer:{m}"),
            Scope::Admin => "admin".into(),
            Scope::Feedback => "feedback".into(),
            Scope::Jobs => "jobs".into(),
            Scope::Metrics => "metrics".into(),
        }
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// Open to anyone (liveness and readiness probes).
    Nothing,
    /// Inference or model information on this model (`None`: the model is not known yet, e.g. it
    /// is named in the body; any infer scope passes here and the handler checks the model).
    Infer(Option<&'a str>),
    Admin,
    Feedback,
    Jobs,
    Metrics,
}

impl Need<'_> {
    /// The label of `ferrite_rate_limited_total{scope}`.
    pub fn label(&self) -> &'static str {
        match self {
            Need::Nothing => "none",
            Need::Infer(_) => "infer",
            Need::Admin => "admin",
            Need::Feedback => "feedback",
            Need::Jobs => "jobs",
            Need::Metrics => "metrics",
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's name, the token's subject, or the client certificate's CN (logged, never a label).
    pub name: String,
    pub scopes: Vec<Scope>,
    /// Its request-rate limit.
    pub rate: RateLimit,
}

impl Principal {
    /// Whether this principal has what `need` asks for.
    pub fn allows(&self, need: Need) -> bool {
        let has = |s: &Scope| self.scopes.contains(s);
        match need {
            Need::Nothing => true,
            Need::Infer(None) => self
                .scopes
                .iter()
                .any(|s| matches!(s, Scope::Infer | Scope::InferModel(_))),
            Need::Infer(Some(m)) => self
                .scopes
                .iter()
                .any(|s| *s == Scope::Infer || matches!(s, Scope::InferModel(x) if x == m)),
            Need::Admin => has(&Scope::Admin),
            // Ground truth: a dedicated scope, or admin.
            Need::Feedback => has(&Scope::Feedback) || has(&Scope::Admin),
            Need::Jobs => has(&Scope::Jobs),
            Need::Metrics => has(&Scope::Metrics),
        }
    }
}

/// Why a request was refused. The text is all a client learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("credentials are missing")]
    Missing,
    #[error("credentials are invalid")]
    Invalid,
    #[error("credentials are expired")]
    Expired,
    #[error("insufficient scope")]
    Forbidden,
}

impl AuthError {
    /// The `error` parameter of `WWW-Authenticate: Bearer` (RFC 6750), for 401s.
    pub fn bearer_error(&self) -> Option<&'static str> {
        match self {
            AuthError::Missing => None,
            AuthError::Invalid | AuthError::Expired => Some("invalid_token"),
            AuthError::Forbidden => Some("insufficient_scope"),
        }
    }
}

/// The verifiers built from `[auth]`: API keys, JWT, client certificates. Immutable; a reload
/// builds a new one and swaps it in.
pub struct Authenticator {
    keys: ApiKeys,
    jwt: Option<JwtVerifier>,
    /// `[[auth.clients]]`: a verified client certificate's CN and its principal.
    clients: Vec<(String, Arc<Principal>)>,
}

impl Authenticator {
    /// Builds the verifiers (reads the JWT key files) from a validated config.
    pub fn new(cfg: &AuthConfig) -> Result<Arc<Authenticator>, String> {
        cfg.validate()?;
        Ok(Arc::new(Authenticator {
            keys: ApiKeys::new(&cfg.api_keys, cfg.default_rate()),
            jwt: cfg
                .jwt
                .as_ref()
                .map(|j| JwtVerifier::load(j, cfg.default_rate()))
                .transpose()?,
            clients: cfg
                .clients
                .iter()
                .map(|c| {
                    let p = Principal {
                        name: c.name.clone(),
                        scopes: c.scopes.clone(),
                        rate: c.rate_limit.unwrap_or(cfg.default_rate()),
                    };
                    (c.name.clone(), Arc::new(p))
                })
                .collect(),
        }))
    }

    /// The files this config reads (reloaded when they change).
    pub fn watched_files(cfg: &AuthConfig) -> Vec<std::path::PathBuf> {
        cfg.jwt.as_ref().map(JwtConfig::files).unwrap_or_default()
    }

    /// Who sent `headers` (`Authorization: Bearer <key or JWT>` or `x-api-key: <key>`), or, with
    /// no credentials in the headers, the verified client certificate's CN (`peer_cn`) when an
    /// `[[auth.clients]]` entry names it. `now`: seconds since the epoch.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        peer_cn: Option<&str>,
        now: u64,
    ) -> Result<Arc<Principal>, AuthError> {
        match credential(headers)? {
            Some(credential) => self.verify_credential(credential, now).map(|(p, _)| p),
            None => self.verify_peer(peer_cn),
        }
    }

    /// `verify`, remembering the credential in `memo` (one connection's): the next request on the
    /// same connection that presents the same bytes, to the same verifiers, before the token's
    /// `exp`, is answered from it without the digest or the shared cache.
    pub fn verify_remembered(
        self: &Arc<Self>,
        headers: &HeaderMap,
        peer_cn: Option<&str>,
        now: u64,
        memo: &mut CredentialMemo,
    ) -> Result<Arc<Principal>, AuthError> {
        let Some(credential) = credential(headers)? else {
            return self.verify_peer(peer_cn);
        };
        if let Some(m) = &memo.0 {
            if now < m.until
                && std::ptr::eq(m.by.as_ptr(), Arc::as_ptr(self))
                && same_bytes(&m.credential, credential.as_bytes())
            {
                return Ok(m.principal.clone());
            }
        }
        let (shared, until) = self.verify_credential(credential, now)?;
        // The connection's own copy: every request's clone and drop of it then writes a reference
        // count that only this connection's thread touches, not one all runtime threads share.
        let principal = Arc::new(Principal::clone(&shared));
        memo.0 = Some(Memo {
            credential: credential.as_bytes().into(),
            principal: principal.clone(),
            until,
            by: Arc::downgrade(self),
        });
        Ok(principal)
    }

    fn verify_peer(&self, peer_cn: Option<&str>) -> Result<Arc<Principal>, AuthError> {
        let cn = peer_cn.ok_or(AuthError::Missing)?;
        self.clients
            .iter()
            .find(|(name, _)| name == cn)
            .map(|(_, p)| p.clone())
            .ok_or(AuthError::Invalid)
    }

    /// The principal and until when (seconds since the epoch) its verification holds: a token's
    /// `exp`, or forever for an API key (a reload builds new verifiers).
    fn verify_credential(
        &self,
        credential: &str,
        now: u64,
    ) -> Result<(Arc<Principal>, u64), AuthError> {
        let looks_like_jwt = credential.bytes().filter(|&b| b == b'.').count() == 2;
        match (&self.jwt, looks_like_jwt) {
            (Some(jwt), true) => jwt.verify(credential, now),
            _ => self
                .keys
                .verify(credential)
                .map(|p| (p, u64::MAX))
                .ok_or(AuthError::Invalid),
        }
    }
}

tokio::task_local! {
    /// The credential memo of the HTTP/1.1 connection this task serves (`net` sets it around each
    /// connection; HTTP/2 streams run in tasks of their own and verify without one).
    pub static CONNECTION_CREDENTIAL: RefCell<CredentialMemo>;
}

/// The last credential one connection presented and what it verified to (`verify_remembered`).
/// A keep-alive client sends the same `Authorization` header on every request; remembering it per
/// connection skips hashing it (~0.2 µs for a 190-byte JWT) and the verifiers' shared cache, whose
/// lock every runtime thread takes. Kept only for the connection's life, zeroed when replaced.
#[derive(Default)]
pub struct CredentialMemo(Option<Memo>);

struct Memo {
    credential: Box<[u8]>,
    principal: Arc<Principal>,
    until: u64,
    /// The verifiers it was checked by: compared by address, and while this is held their
    /// allocation (hence the address) cannot be reused by newer ones.
    by: Weak<Authenticator>,
}

impl Drop for Memo {
    fn drop(&mut self) {
        for b in self.credential.iter_mut() {
            // Volatile: the compiler may not drop the zeroing of memory about to be freed.
            // SAFETY: `b` is a valid, aligned, exclusive reference to a byte.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths (a presented
/// credential against a remembered one: no early exit at the first differing byte).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("chunks of 8"));
    let (wa, wb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = wa
        .remainder()
        .iter()
        .zip(wb.remainder())
        .fold(0u64, |acc, (x, y)| acc | u64::from(x ^ y));
    let diff = wa
        .zip(wb)
        .fold(tail, |acc, (x, y)| acc | (word(x) ^ word(y)));
    bool::from(subtle::ConstantTimeEq::ct_eq(&diff, &0))
}

/// The credential in `Authorization: Bearer <x>` or `x-api-key: <x>`; a malformed header is
/// invalid, none at all is `None`.
fn credential(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        let v = v.to_str().map_err(|_| AuthError::Invalid)?;
        let (scheme, rest) = v.split_once(' ').ok_or(AuthError::Invalid)?;
        if !scheme.eq_ignore_ascii_case("bearer") || rest.trim().is_empty() {
            return Err(AuthError::Invalid);
        }
        return Ok(Some(rest.trim()));
    }
    match headers.get("x-api-key") {
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| AuthError::Invalid),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests;
