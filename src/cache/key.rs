//! Cache keys, pure: a version's `Fingerprint` (what determines its outputs: model, version, the
//! weights' bytes, the config fields the model reads, the precision path actually used) and the
//! xxh3-128 key of one entry under it (a tensor request's canonical inputs, or one text with the
//! options that change its embedding). Every field is length-prefixed, so that no two different
//! inputs hash the same bytes.

use std::io::Read;
use std::path::Path;

use xxhash_rust::xxh3::Xxh3;

use crate::protocol::kserve_v2::data_to_bytes;
use crate::spec::ModelConfig;
use crate::tensor::Tensor;

/// One entry's key: a 128-bit hash.
pub type Key = u128;

/// What determines a version's outputs, hashed: two versions (or one version on a CPU with a
/// different precision path) never share entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub u128);

struct Hasher(Xxh3);

impl Hasher {
    fn new(domain: &[u8]) -> Hasher {
        let mut h = Hasher(Xxh3::new());
        h.field(domain);
        h
    }

    /// A length-prefixed field.
    fn field(&mut self, b: &[u8]) -> &mut Hasher {
        self.0.update(&(b.len() as u64).to_le_bytes());
        self.0.update(b);
        self
    }

    fn u64(&mut self, v: u64) -> &mut Hasher {
        self.0.update(&v.to_le_bytes());
        self
    }

    fn finish(&self) -> u128 {
        self.0.digest128()
    }
}

/// xxh3-128 of every file in `version_dir` (sorted by name, names included). Blocking: a few tens
/// of milliseconds for 90 MB of weights.
pub fn hash_weights(version_dir: &Path) -> std::io::Result<u128> {
    let mut files: Vec<_> = std::fs::read_dir(version_dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut h = Hasher::new(b"ferrite-weights-1");
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
        h.field(name.unwrap_or_default().as_bytes());
        let mut file = std::fs::File::open(&f)?;
        h.u64(file.metadata()?.len());
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.0.update(&buf[..n]);
        }
    }
    Ok(h.finish())
}

impl Fingerprint {
    /// Model `name` version `version` with weights hash `weights`, read through the config fields
    /// a model sees (architecture, tensors, quantization and float layers, fused ops, parameters), on `precision`
    /// (e.g. "cpu:avx512:f32", "cuda:q8"): what the repository says the version actually runs.
    pub fn new(
        name: &str,
        version: u64,
        weights: u128,
        config: &ModelConfig,
        precision: &str,
    ) -> Fingerprint {
        let relevant = serde_json::json!({
            "architecture": config.architecture,
            "inputs": config.inputs,
            "outputs": config.outputs,
            "quantization": config.quantization,
            "float_layers": config.float_layers,
            "cuda_fused_ops": config.cuda_fused_ops,
            "parameters": config.parameters,
        });
        let mut h = Hasher::new(b"ferrite-fingerprint-1");
        h.field(name.as_bytes())
            .u64(version)
            .field(&weights.to_le_bytes())
            .field(relevant.to_string().as_bytes())
            .field(precision.as_bytes());
        Fingerprint(h.finish())
    }
}

/// Who may see an entry: everyone (no `[auth]`, or a `shared` model), or one principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partition {
    Shared,
    Principal(String),
}

impl Partition {
    fn hash_into(&self, h: &mut Hasher) {
        match self {
            Partition::Shared => h.field(b"shared"),
            Partition::Principal(p) => h.field(b"principal").field(p.as_bytes()),
        };
    }
}

/// The options that change a text's embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TextOptions {
    pub truncate: bool,
    pub normalize: bool,
    pub dimensions: Option<usize>,
}

/// A tensor request's key: its inputs sorted by name, each as name, datatype, shape and bytes
/// (Triton's binary layout; BYTES elements length-prefixed).
pub fn tensor_key(fp: Fingerprint, partition: &Partition, inputs: &[Tensor]) -> Key {
    let mut h = Hasher::new(b"ferrite-tensor-1");
    h.field(&fp.0.to_le_bytes());
    partition.hash_into(&mut h);
    let mut sorted: Vec<&Tensor> = inputs.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    h.u64(sorted.len() as u64);
    let mut bytes = Vec::new();
    for t in sorted {
        h.field(t.name.as_bytes())
            .field(t.datatype().as_str().as_bytes());
        h.u64(t.shape.len() as u64);
        t.shape.iter().for_each(|&d| {
            h.u64(d as u64);
        });
        bytes.clear();
        data_to_bytes(&t.data, &mut bytes);
        h.field(&bytes);
    }
    h.finish()
}

/// One text's key: its exact bytes (no normalisation) and the options that change its embedding.
pub fn text_key(fp: Fingerprint, partition: &Partition, text: &[u8], opts: TextOptions) -> Key {
    let mut h = Hasher::new(b"ferrite-text-1");
    h.field(&fp.0.to_le_bytes());
    partition.hash_into(&mut h);
    h.field(text)
        .u64(u64::from(opts.truncate))
        .u64(u64::from(opts.normalize))
        .u64(opts.dimensions.map_or(0, |d| d as u64 + 1));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::TensorData;

    const FP: Fingerprint = Fingerprint(7);
    const OPTS: TextOptions = TextOptions {
        truncate: false,
        normalize: true,
        dimensions: None,
    };

    fn config() -> ModelConfig {
        ModelConfig::parse(
            "architecture = \"mlp\"\nmax_batch_size = 4\n[[input]]\nname = \"x\"\ndatatype = \"FP32\"\ndims = [-1, 2]\n[[output]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [-1, 2]\n",
            "m",
        )
        .unwrap()
    }

    #[test]
    fn fingerprint_differs_by_version_weights_precision_and_parameters() {
        let c = config();
        let base = Fingerprint::new("m", 1, 42, &c, "cpu:avx512:f32");
        assert_eq!(base, Fingerprint::new("m", 1, 42, &c, "cpu:avx512:f32"));
        assert_ne!(base, Fingerprint::new("m", 2, 42, &c, "cpu:avx512:f32"));
        assert_ne!(base, Fingerprint::new("n", 1, 42, &c, "cpu:avx512:f32"));
        assert_ne!(base, Fingerprint::new("m", 1, 43, &c, "cpu:avx512:f32"));
        assert_ne!(base, Fingerprint::new("m", 1, 42, &c, "cpu:avx2:f32"));
        let mut q = c.clone();
        q.quantization = Some(crate::spec::QuantFormat::Q8);
        assert_ne!(base, Fingerprint::new("m", 1, 42, &q, "cpu:avx512:f32"));
        let mut p = c.clone();
        p.parameters
            .insert("normalize".into(), toml::Value::Boolean(false));
        assert_ne!(base, Fingerprint::new("m", 1, 42, &p, "cpu:avx512:f32"));
        // Batching and metadata do not change outputs.
        let mut b = c.clone();
        b.dynamic_batching.max_queue_delay_us = 999;
        b.metadata.insert("x".into(), toml::Value::Integer(1));
        assert_eq!(base, Fingerprint::new("m", 1, 42, &b, "cpu:avx512:f32"));
    }

    #[test]
    fn text_key_separates_every_option_and_partition() {
        let s = Partition::Shared;
        let k = text_key(FP, &s, b"hello", OPTS);
        assert_eq!(k, text_key(FP, &s, b"hello", OPTS));
        let variants = [
            text_key(FP, &s, b"hello ", OPTS),
            text_key(FP, &s, b"Hello", OPTS),
            text_key(Fingerprint(8), &s, b"hello", OPTS),
            text_key(FP, &Partition::Principal("a".into()), b"hello", OPTS),
            text_key(
                FP,
                &s,
                b"hello",
                TextOptions {
                    truncate: true,
                    ..OPTS
                },
            ),
            text_key(
                FP,
                &s,
                b"hello",
                TextOptions {
                    normalize: false,
                    ..OPTS
                },
            ),
            text_key(
                FP,
                &s,
                b"hello",
                TextOptions {
                    dimensions: Some(0),
                    ..OPTS
                },
            ),
            text_key(
                FP,
                &s,
                b"hello",
                TextOptions {
                    dimensions: Some(8),
                    ..OPTS
                },
            ),
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(*v, k, "variant {i}");
            for (j, w) in variants.iter().enumerate().skip(i + 1) {
                assert_ne!(v, w, "variants {i} and {j}");
            }
        }
        // A principal named "shared" is not the shared partition.
        assert_ne!(
            text_key(FP, &Partition::Principal("shared".into()), b"x", OPTS),
            text_key(FP, &s, b"x", OPTS)
        );
    }

    #[test]
    fn tensor_key_ignores_input_order_but_not_shape_or_type() {
        let s = Partition::Shared;
        let a = Tensor::new("a", vec![1, 2], TensorData::F32(vec![1.0, 2.0]));
        let b = Tensor::new("b", vec![1], TensorData::I32(vec![3]));
        let k = tensor_key(FP, &s, &[a.clone(), b.clone()]);
        assert_eq!(k, tensor_key(FP, &s, &[b.clone(), a.clone()]));
        let reshaped = Tensor::new("a", vec![2, 1], TensorData::F32(vec![1.0, 2.0]));
        assert_ne!(k, tensor_key(FP, &s, &[reshaped, b.clone()]));
        let retyped = Tensor::new("b", vec![1], TensorData::U32(vec![3]));
        assert_ne!(k, tensor_key(FP, &s, &[a.clone(), retyped]));
        let renamed = Tensor::new("c", vec![1], TensorData::I32(vec![3]));
        assert_ne!(k, tensor_key(FP, &s, &[a.clone(), renamed]));
        // BYTES elements are length-prefixed: ["ab", "c"] is not ["a", "bc"].
        let x = Tensor::new(
            "t",
            vec![2],
            TensorData::Bytes([&b"ab"[..], b"c"].into_iter().collect()),
        );
        let y = Tensor::new(
            "t",
            vec![2],
            TensorData::Bytes([&b"a"[..], b"bc"].into_iter().collect()),
        );
        assert_ne!(tensor_key(FP, &s, &[x]), tensor_key(FP, &s, &[y]));
    }
}
