//! The rollout parts of a model's config: `[validation]` (the gate a version passes before it
//! serves), `[routing]` (split, shadow, guard) and a version folder's own `version.toml`
//! (metadata, the weights' checksum, `[parameters]` overrides).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::rollout::{CompareKind, GuardConfig, ShadowSpec, Split};

/// `[validation]`: thresholds a version's validation set must meet. Unset thresholds are not
/// checked; a section with no threshold still runs the set (figures are reported).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Validation {
    /// The validation set, relative to the model folder. Default: `<version>/validation.*`, then
    /// `validation.*` in the model folder (`.safetensors` for tensor models, `.jsonl` for text).
    pub set: Option<String>,
    /// Share of rows whose argmax equals the expected label.
    pub min_accuracy: Option<f64>,
    /// Smallest per-row cosine against the reference outputs (or the live version's, with
    /// `compare_to = "live"`).
    pub min_cosine: Option<f64>,
    /// `"reference"` (the set's expected outputs; default) or `"live"` (the serving version's
    /// outputs on the same inputs).
    pub compare_to: CompareTo,
    /// p99 of `p99_requests` sequential requests of `p99_batch_size` rows, in milliseconds.
    pub max_p99_ms: Option<f64>,
    pub p99_batch_size: usize,
    pub p99_requests: usize,
    /// Mean absolute difference against the reference (or live) outputs, over every element.
    pub max_mean_abs_diff: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CompareTo {
    #[default]
    Reference,
    Live,
}

/// `[routing]`: how requests that name no version are split, mirrored and guarded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Weights per version (`{ "1" = 90, "2" = 10 }`); empty: the newest version that passed its
    /// gate takes everything.
    pub weights: BTreeMap<String, u32>,
    pub shadow: Option<ShadowSpec>,
    /// How shadow outputs are compared; default: cosine for text models, argmax for models with
    /// `labels.txt`, else max abs diff.
    pub compare: Option<CompareKind>,
    pub guard: Option<GuardConfig>,
}

impl RoutingConfig {
    /// The weights as a `Split` (keys already validated as numbers).
    pub fn split(&self) -> Split {
        Split {
            weights: self
                .weights
                .iter()
                .filter_map(|(k, &w)| Some((k.parse().ok()?, w)))
                .collect(),
        }
    }

    /// A hash of the section, to tell whether the file's routing changed.
    pub fn hash(&self) -> u64 {
        let text = serde_json::to_string(self).unwrap_or_default();
        xxhash_rust::xxh3::xxh3_64(text.as_bytes())
    }

    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        for k in self.weights.keys() {
            if k.parse::<u64>().is_err() {
                return Err((
                    "routing.weights".into(),
                    format!("expected version numbers as keys, got '{k}'"),
                ));
            }
        }
        if let Some(s) = &self.shadow {
            if !(0.0..=100.0).contains(&s.percent) {
                return Err((
                    "routing.shadow.percent".into(),
                    format!("expected 0..=100, got {}", s.percent),
                ));
            }
        }
        if let Some(g) = &self.guard {
            g.validate().map_err(|m| ("routing.guard".to_string(), m))?;
        }
        Ok(())
    }
}

impl Validation {
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        for (f, v) in [
            ("min_accuracy", self.min_accuracy),
            ("min_cosine", self.min_cosine),
        ] {
            if v.is_some_and(|v| !(-1.0..=1.0).contains(&v)) {
                return Err((
                    format!("validation.{f}"),
                    "expected a value in -1..=1".into(),
                ));
            }
        }
        if self.set.as_deref().is_some_and(|s| {
            Path::new(s).is_absolute() || Path::new(s).components().any(|c| c.as_os_str() == "..")
        }) {
            return Err((
                "validation.set".into(),
                "expected a path inside the model folder".into(),
            ));
        }
        Ok(())
    }

    pub fn batch_size(&self) -> usize {
        self.p99_batch_size.max(1)
    }

    pub fn requests(&self) -> usize {
        if self.p99_requests == 0 {
            100
        } else {
            self.p99_requests
        }
    }
}

/// A version folder's `version.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct VersionMeta {
    pub semantic_version: Option<String>,
    pub created: Option<String>,
    pub source: Option<String>,
    /// SHA-256 (hex) of the version's `model.safetensors`; checked before loading.
    pub weights_sha256: Option<String>,
    /// Overrides of the model's `[parameters]` for this version only.
    pub parameters: toml::Table,
    /// Anything else worth showing.
    pub metadata: toml::Table,
}

pub const VERSION_FILE: &str = "version.toml";

impl VersionMeta {
    /// Reads `vdir/version.toml`; a folder without one has empty metadata.
    pub fn load(vdir: &Path) -> Result<VersionMeta, ConfigError> {
        let file = vdir.join(VERSION_FILE);
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(ConfigError {
                    file,
                    field: "-".into(),
                    message: format!("cannot read: {e}"),
                })
            }
        };
        let meta: VersionMeta = toml::from_str(&text).map_err(|e| ConfigError {
            file: file.clone(),
            field: e
                .span()
                .map(|s| super::field_at(&text, s.start))
                .unwrap_or_else(|| "-".into()),
            message: e.message().to_string(),
        })?;
        if let Some(h) = &meta.weights_sha256 {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError {
                    file,
                    field: "weights_sha256".into(),
                    message: "expected 64 hex digits".into(),
                });
            }
        }
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_meta_rejects_a_short_checksum_and_reads_overrides() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(VERSION_FILE), "weights_sha256 = \"abc\"\n").unwrap();
        let e = VersionMeta::load(d.path()).unwrap_err();
        assert_eq!(e.field, "weights_sha256");
        std::fs::write(
            d.path().join(VERSION_FILE),
            "semantic_version = \"2.0.0\"\n[parameters]\nsleep_us = 5\n",
        )
        .unwrap();
        let m = VersionMeta::load(d.path()).unwrap();
        assert_eq!(m.parameters["sleep_us"].as_integer(), Some(5));
        assert_eq!(
            VersionMeta::load(&d.path().join("nope")).unwrap(),
            VersionMeta::default()
        );
    }
}
