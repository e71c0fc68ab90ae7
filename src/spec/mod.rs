//! Model specifications, the leaf every layer reads: a model's `config.toml` (`ModelConfig`:
//! architecture, inputs/outputs as `TensorSpec`s, batching, instance groups, version policy,
//! quantization, architecture parameters and free-form metadata), parsing plus semantic validation
//! (every error names the file, the field and what was expected), and the check of request tensors
//! against the declared inputs (`validate_inputs`). Plain data: no models, devices, queues or I/O
//! beyond reading the config file. Depends on `tensor` only.

mod monitoring;
mod rollout;
mod tensor_spec;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use monitoring::Monitoring;
pub use rollout::{CompareTo, RoutingConfig, Validation, VersionMeta, VERSION_FILE};
pub use tensor_spec::{validate_inputs, TensorSpec, ValidationError};

/// The architectures a config may name (`architecture = "bert"`); `model::load` builds each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// A dense multi-layer perceptron over one FP32 input (`model/mlp.rs`).
    Mlp,
    /// A BERT-family text encoder with mean pooling (`model/bert.rs`).
    Bert,
    /// The test and benchmark model (`model/debug.rs`).
    Debug,
}

impl Architecture {
    pub const ALL: [Architecture; 3] = [Architecture::Mlp, Architecture::Bert, Architecture::Debug];

    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Mlp => "mlp",
            Architecture::Bert => "bert",
            Architecture::Debug => "debug",
        }
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A quantization format for dense weights (`quantization = "q8"`; `ferrite quantize --to`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum QuantFormat {
    Q8,
    Q4,
}

impl QuantFormat {
    pub fn suffix(self) -> &'static str {
        match self {
            QuantFormat::Q8 => "q8",
            QuantFormat::Q4 => "q4",
        }
    }

    pub fn parse(s: &str) -> Option<QuantFormat> {
        match s {
            "q8" => Some(QuantFormat::Q8),
            "q4" => Some(QuantFormat::Q4),
            _ => None,
        }
    }
}

/// The arithmetic of a model's linear layers (`precision = "auto" | "f32" | "bf16" | "q8"`); what
/// each means on a device: `quant::resolve`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Auto,
    F32,
    Bf16,
    Q8,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Q8 => "q8",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Optional; must equal the folder name when given.
    #[serde(default)]
    pub name: Option<String>,
    pub architecture: Architecture,
    /// Most rows in one batch; 0 = the model does not batch (no batch dimension).
    #[serde(default)]
    pub max_batch_size: usize,
    #[serde(rename = "input")]
    pub inputs: Vec<TensorSpec>,
    #[serde(rename = "output")]
    pub outputs: Vec<TensorSpec>,
    #[serde(default)]
    pub dynamic_batching: DynamicBatching,
    #[serde(default = "default_instance_groups")]
    pub instance_group: Vec<InstanceGroup>,
    #[serde(default)]
    pub version_policy: VersionPolicy,
    /// Quantize dense weights when loading: "q8" or "q4" (versions already quantized load as is).
    #[serde(default)]
    pub quantization: Option<QuantFormat>,
    /// The arithmetic of the linear layers: "auto" (default), "f32", "bf16" or "q8" (pins it, for
    /// fleets that need the same outputs on every CPU). `quantization` is the older spelling of
    /// "q8" and the only one of "q4"; the two must not disagree.
    #[serde(default)]
    pub precision: Precision,
    /// With q8 (quantized at load, or written by `ferrite quantize`): the linear layers whose
    /// weight name ends with one of these stay in floating point, bf16 where the CPU runs it in
    /// hardware, else f32. Unset: the architecture's choice (`model::float_layers`; for bert the
    /// attention values and the first FFN layer). `[]` quantizes every layer.
    #[serde(default)]
    pub float_layers: Option<Vec<String>>,
    /// Stage batch N+1 (gather inputs, copy them to the device through pinned buffers) on a second
    /// thread while batch N computes, one batch deep. Default: on for GPU instances, off on the CPU
    /// (there staging is a few microseconds and the compute owns the cores).
    #[serde(default)]
    pub prefetch: Option<bool>,
    /// On CUDA instances, run the models through the custom kernels (`kernels/*.cu`: fused bias +
    /// GELU, residual add + LayerNorm, masked mean pooling, and the int8 matmul, which keeps q8
    /// weights int8 on the device) instead of plain candle ops. Off by default until a GPU run has
    /// validated them (`benches/gpu.sh` runs MiniLM on the GPU both ways). The CPU always runs them.
    #[serde(default)]
    pub cuda_fused_ops: bool,
    /// The response cache (`[response_cache]`; off unless `enable = true`).
    #[serde(default)]
    pub response_cache: ResponseCache,
    /// The gate a version passes before requests are routed to it (`[validation]`; none when
    /// absent).
    #[serde(default)]
    pub validation: Option<Validation>,
    /// Split, shadow and guard of requests that name no version (`[routing]`).
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Model-quality monitoring (`[monitoring]`; off unless `enable = true`).
    #[serde(default)]
    pub monitoring: Monitoring,
    /// Architecture-specific settings.
    #[serde(default)]
    pub parameters: toml::Table,
    /// Free-form: semantic version, training date, metrics, ...
    #[serde(default)]
    pub metadata: toml::Table,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DynamicBatching {
    pub max_queue_delay_us: u64,
    pub preferred_batch_sizes: Vec<usize>,
    /// Per priority level.
    pub max_queue_size: usize,
    /// 0 = no deadline unless the request sets one.
    pub default_timeout_us: u64,
    pub priority_levels: u32,
    /// 0 = the lowest level (the last).
    pub default_priority_level: u32,
    /// Sequence models: most tokens in one batch counting padding (rows x longest); 0 = no limit.
    pub max_batch_tokens: usize,
    /// Bulk jobs (the job lane): the percentage of the workers their batches may hold while online
    /// traffic is active (at least one, never all of several); all idle workers otherwise.
    pub job_share_percent: u32,
    /// Online traffic counts as active this long after its last request (job batches stay capped).
    pub job_quiet_ms: u64,
    /// Queue-time budget: an online request whose expected wait in the queue (queued work ahead of
    /// it over the measured service rate) is longer is refused at once with 503 + Retry-After;
    /// 0 = off (shed by `max_queue_size` only).
    pub max_queue_time_us: u64,
}

impl Default for DynamicBatching {
    fn default() -> Self {
        DynamicBatching {
            max_queue_delay_us: 0,
            preferred_batch_sizes: Vec::new(),
            max_queue_size: 1024,
            default_timeout_us: 0,
            priority_levels: 1,
            default_priority_level: 0,
            max_batch_tokens: 0,
            job_share_percent: 50,
            job_quiet_ms: 100,
            max_queue_time_us: 0,
        }
    }
}

/// A model's response cache settings (`[response_cache]`). Entries are keyed by the model, its
/// version, a fingerprint of the weights and precision path, and a hash of the input (see
/// `cache::key`); the shared Redis level is the server's `--cache-redis-url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseCache {
    pub enable: bool,
    /// How long an entry lives, in the in-process cache and in Redis.
    pub ttl_secs: u64,
    /// Budget of the in-process cache of each version, entries and bookkeeping counted; 0 = no
    /// in-process level (Redis only, when the server has one).
    pub max_bytes: u64,
    /// With `[auth]` configured, entries are partitioned per principal unless this is true (one
    /// tenant could otherwise learn what another asked by timing or by its hits).
    pub shared: bool,
}

pub const DEFAULT_CACHE_TTL_SECS: u64 = 600;
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 64 * 1024 * 1024;

impl Default for ResponseCache {
    fn default() -> Self {
        ResponseCache {
            enable: false,
            ttl_secs: DEFAULT_CACHE_TTL_SECS,
            max_bytes: DEFAULT_CACHE_MAX_BYTES,
            shared: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InstanceKind {
    #[default]
    Auto,
    Cpu,
    Gpu,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceGroup {
    #[serde(default = "one")]
    pub count: usize,
    #[serde(default)]
    pub kind: InstanceKind,
    #[serde(default)]
    pub gpus: Option<Vec<usize>>,
}

fn one() -> usize {
    1
}

fn default_instance_groups() -> Vec<InstanceGroup> {
    vec![InstanceGroup {
        count: 1,
        kind: InstanceKind::Auto,
        gpus: None,
    }]
}

/// Which numbered version folders are served: `{ latest = N }`, `"all"`, `{ specific = [..] }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionPolicy {
    Latest(usize),
    All,
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// The versions to serve out of those present (sorted ascending).
    pub fn select(&self, present: &[u64]) -> Vec<u64> {
        let mut v: Vec<u64> = match self {
            VersionPolicy::Latest(n) => present.iter().rev().take(*n).copied().collect(),
            VersionPolicy::All => present.to_vec(),
            VersionPolicy::Specific(s) => {
                present.iter().filter(|v| s.contains(v)).copied().collect()
            }
        };
        v.sort_unstable();
        v
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: field `{field}`: {message}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    pub field: String,
    pub message: String,
}

impl ModelConfig {
    /// Reads and validates `dir/config.toml`; `dir`'s name is the model name.
    pub fn load(dir: &Path) -> Result<ModelConfig, ConfigError> {
        let file = dir.join("config.toml");
        let text = std::fs::read_to_string(&file).map_err(|e| ConfigError {
            file: file.clone(),
            field: "-".into(),
            message: format!("cannot read: {e}"),
        })?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self::parse(&text, &name).map_err(|(field, message)| ConfigError {
            file,
            field,
            message,
        })
    }

    /// Parses and validates config text for model `name`; errors are (field, message).
    pub fn parse(text: &str, name: &str) -> Result<ModelConfig, (String, String)> {
        let cfg: ModelConfig = toml::from_str(text).map_err(|e| {
            let field = e
                .span()
                .map(|s| field_at(text, s.start))
                .unwrap_or_else(|| "-".into());
            (field, e.message().to_string())
        })?;
        cfg.validate(name)?;
        Ok(cfg)
    }

    fn validate(&self, name: &str) -> Result<(), (String, String)> {
        let err = |f: &str, m: String| Err((f.to_string(), m));
        if let Some(n) = &self.name {
            if n != name {
                return err(
                    "name",
                    format!("expected the folder name '{name}', got '{n}'"),
                );
            }
        }
        match (self.precision, self.quantization) {
            (Precision::Auto, _) | (Precision::Q8, Some(QuantFormat::Q8)) | (_, None) => {}
            (p, Some(q)) => {
                return err(
                    "precision",
                    format!(
                        "\"{}\" contradicts quantization = \"{}\" (set one of them)",
                        p.as_str(),
                        q.suffix()
                    ),
                )
            }
        }
        for (field, specs) in [("input", &self.inputs), ("output", &self.outputs)] {
            if specs.is_empty() {
                return err(
                    field,
                    "expected at least one [[".to_string() + field + "]] table",
                );
            }
            for (i, s) in specs.iter().enumerate() {
                let f = format!("{field}[{i}].dims");
                if specs[..i].iter().any(|o| o.name == s.name) {
                    return err(
                        &format!("{field}[{i}].name"),
                        format!("'{}' is declared twice", s.name),
                    );
                }
                if s.dims.is_empty() || s.dims.iter().any(|&d| d == 0 || d < -1) {
                    return err(
                        &f,
                        format!(
                            "expected a non-empty list of positive sizes or -1, got {:?}",
                            s.dims
                        ),
                    );
                }
                if self.max_batch_size > 0 && s.dims[0] != -1 {
                    return err(&f, format!("expected the first (batch) dim to be -1 since max_batch_size > 0, got {:?}", s.dims));
                }
            }
        }
        let db = &self.dynamic_batching;
        let max = self.max_batch_size.max(1);
        if let Some(p) = db
            .preferred_batch_sizes
            .iter()
            .find(|&&p| p == 0 || p > max)
        {
            return err(
                "dynamic_batching.preferred_batch_sizes",
                format!("expected sizes in 1..={max} (max_batch_size), got {p}"),
            );
        }
        if db.max_queue_size == 0 {
            return err(
                "dynamic_batching.max_queue_size",
                "expected at least 1".into(),
            );
        }
        if db.priority_levels == 0 {
            return err(
                "dynamic_batching.priority_levels",
                "expected at least 1".into(),
            );
        }
        if db.default_priority_level > db.priority_levels {
            return err(
                "dynamic_batching.default_priority_level",
                format!(
                    "expected 0..={} (priority_levels), got {}",
                    db.priority_levels, db.default_priority_level
                ),
            );
        }
        if db.job_share_percent > 100 {
            return err(
                "dynamic_batching.job_share_percent",
                format!("expected 0..=100, got {}", db.job_share_percent),
            );
        }
        if self.instance_group.is_empty() || self.instance_group.iter().any(|g| g.count == 0) {
            return err(
                "instance_group",
                "expected at least one group, each with count >= 1".into(),
            );
        }
        self.routing.validate()?;
        if let Some(v) = &self.validation {
            v.validate()?;
        }
        self.monitoring.validate()?;
        if self.response_cache.enable && self.response_cache.ttl_secs == 0 {
            return err("response_cache.ttl_secs", "expected at least 1".into());
        }
        match &self.version_policy {
            VersionPolicy::Latest(0) => err("version_policy.latest", "expected at least 1".into()),
            VersionPolicy::Specific(v) if v.is_empty() => err(
                "version_policy.specific",
                "expected at least one version".into(),
            ),
            _ => Ok(()),
        }
    }

    /// Batch sizes to warm up with: each preferred size, or 1.
    pub fn warmup_batch_sizes(&self) -> Vec<usize> {
        if self.dynamic_batching.preferred_batch_sizes.is_empty() || self.max_batch_size == 0 {
            vec![1]
        } else {
            let mut sizes = self.dynamic_batching.preferred_batch_sizes.clone();
            sizes.sort_unstable();
            sizes.dedup();
            sizes
        }
    }
}

/// The key (or table header) on the line holding byte offset `pos` of `text`.
fn field_at(text: &str, pos: usize) -> String {
    let start = text[..pos.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("").trim();
    match line.split_once('=') {
        Some((key, _)) => key.trim().to_string(),
        None => line.trim_matches(|c| c == '[' || c == ']').to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
architecture = "mlp"
max_batch_size = 8
version_policy = { latest = 2 }
[[input]]
name = "x"
datatype = "FP32"
dims = [-1, 4]
[[output]]
name = "y"
datatype = "FP32"
dims = [-1, 2]
[dynamic_batching]
max_queue_delay_us = 100
preferred_batch_sizes = [4]
[metadata]
semantic_version = "1.0.0"
"#;

    #[test]
    fn parse_good_config_fills_defaults() {
        let c = ModelConfig::parse(GOOD, "m").unwrap();
        assert_eq!(c.version_policy, VersionPolicy::Latest(2));
        assert_eq!(c.instance_group, default_instance_groups());
        assert_eq!(c.dynamic_batching.max_queue_size, 1024);
        assert_eq!(c.dynamic_batching.max_queue_delay_us, 100);
        assert_eq!(c.architecture, Architecture::Mlp);
    }

    #[test]
    fn parse_negative_batch_size_names_field() {
        let text = GOOD.replace("max_batch_size = 8", "max_batch_size = -3");
        let (field, msg) = ModelConfig::parse(&text, "m").unwrap_err();
        assert_eq!(field, "max_batch_size");
        assert!(msg.contains("expected"), "{msg}");
    }

    #[test]
    fn parse_unknown_datatype_names_expected_set() {
        let text = GOOD.replace("\"FP32\"\ndims = [-1, 4]", "\"FLOAT\"\ndims = [-1, 4]");
        let (field, msg) = ModelConfig::parse(&text, "m").unwrap_err();
        assert_eq!(field, "datatype");
        assert!(msg.contains("FLOAT") && msg.contains("FP32"), "{msg}");
    }

    #[test]
    fn parse_preferred_over_max_is_rejected() {
        let text = GOOD.replace(
            "preferred_batch_sizes = [4]",
            "preferred_batch_sizes = [16]",
        );
        let (field, msg) = ModelConfig::parse(&text, "m").unwrap_err();
        assert_eq!(field, "dynamic_batching.preferred_batch_sizes");
        assert!(msg.contains("1..=8"), "{msg}");
    }

    #[test]
    fn parse_unknown_architecture_and_fields_are_rejected() {
        let text = GOOD.replace("\"mlp\"", "\"resnet\"");
        let (field, msg) = ModelConfig::parse(&text, "m").unwrap_err();
        assert_eq!(field, "architecture");
        assert!(msg.contains("resnet") && msg.contains("bert"), "{msg}");
        let text = format!("bogus = 1\n{GOOD}");
        assert_eq!(ModelConfig::parse(&text, "m").unwrap_err().0, "bogus");
    }

    #[test]
    fn parse_precision_defaults_to_auto_and_must_agree_with_quantization() {
        assert_eq!(
            ModelConfig::parse(GOOD, "m").unwrap().precision,
            Precision::Auto
        );
        for (p, want) in [
            ("f32", Precision::F32),
            ("bf16", Precision::Bf16),
            ("q8", Precision::Q8),
        ] {
            let text = format!("precision = \"{p}\"\n{GOOD}");
            assert_eq!(
                ModelConfig::parse(&text, "m").unwrap().precision,
                want,
                "{p}"
            );
        }
        let text = format!("precision = \"q8\"\nquantization = \"q8\"\n{GOOD}");
        assert_eq!(
            ModelConfig::parse(&text, "m").unwrap().precision,
            Precision::Q8
        );
        for (p, q) in [("bf16", "q8"), ("f32", "q4"), ("q8", "q4")] {
            let text = format!("precision = \"{p}\"\nquantization = \"{q}\"\n{GOOD}");
            let (field, msg) = ModelConfig::parse(&text, "m").unwrap_err();
            assert_eq!(field, "precision", "{p} vs {q}");
            assert!(msg.contains("contradicts"), "{msg}");
        }
        let text = format!("precision = \"fp8\"\n{GOOD}");
        assert!(ModelConfig::parse(&text, "m").is_err());
    }

    #[test]
    fn version_policy_selects_versions() {
        let present = [1, 2, 5];
        assert_eq!(VersionPolicy::Latest(2).select(&present), vec![2, 5]);
        assert_eq!(VersionPolicy::All.select(&present), vec![1, 2, 5]);
        assert_eq!(
            VersionPolicy::Specific(vec![1, 9]).select(&present),
            vec![1]
        );
        let c: ModelConfig = toml::from_str(&GOOD.replace("{ latest = 2 }", "\"all\"")).unwrap();
        assert_eq!(c.version_policy, VersionPolicy::All);
    }
}
