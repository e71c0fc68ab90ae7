//! API keys: kept as SHA-256 digests only; a presented key is hashed once and compared against
//! every entry in constant time (no early exit), so neither the key nor which entry matched leaks
//! through timing.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{KeyEntry, Principal, RateLimit};

pub struct ApiKeys {
    entries: Vec<([u8; 32], Arc<Principal>)>,
}

/// Hex SHA-256 of `s` (what `[[auth.api_keys]] sha256` holds).
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// A new random key: `fk_` then 43 URL-safe base64 characters (256 bits).
pub fn generate_key() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    format!(
        "fk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

impl ApiKeys {
    /// From validated entries (`AuthConfig::validate` checked the hex).
    pub fn new(entries: &[KeyEntry], default_rate: RateLimit) -> ApiKeys {
        ApiKeys {
            entries: entries
                .iter()
                .filter_map(|e| {
                    let mut digest = [0u8; 32];
                    hex::decode_to_slice(&e.sha256, &mut digest).ok()?;
                    Some((
                        digest,
                        Arc::new(Principal {
                            name: e.name.clone(),
                            scopes: e.scopes.clone(),
                            rate: e.rate_limit.unwrap_or(default_rate),
                        }),
                    ))
                })
                .collect(),
        }
    }

    /// The principal whose key this is (shared: a clone is a reference count, not a copy).
    pub fn verify(&self, key: &str) -> Option<Arc<Principal>> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for (i, (d, _)) in self.entries.iter().enumerate() {
            if bool::from(d.ct_eq(&digest)) {
                found = Some(i);
            }
        }
        found.map(|i| self.entries[i].1.clone())
    }
}
