//! Architecture `bert`: a BERT-family encoder (embeddings, N self-attention layers with an
//! attention mask, GELU feed-forward) and mean pooling over real tokens, loaded from any checkpoint
//! with the Hugging Face `config.json` + `model.safetensors` layout (`bert.` prefix optional).
//! Each job carries one sequence as `input_ids` I64 [1, len]; the batch is padded to its longest.
//! Output: `[1, hidden]` per job, not normalised (the API normalises on request).

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor as CT, D};

use super::{gather_input, LoadOptions, Model, ModelError, StageTimings, Staged, TextSpec};
use crate::device::Transfer;
use crate::quant::{Embedding, Linear, Path as PrecisionPath, WeightOptions};
use crate::tensor::{Tensor, TensorData};

/// Tokens per group in the packed CPU path (see `Bert::encode_packed`).
const PACK_TOKENS: usize = 256;

/// The input name jobs carry after tokenization (callers learn it from `Model::text_input`).
const INPUT_IDS: &str = "input_ids";

#[derive(Debug, Clone, serde::Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub hidden_act: Option<String>,
}

fn default_eps() -> f64 {
    1e-12
}

impl BertConfig {
    pub fn load(dir: &Path) -> Result<BertConfig, ModelError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Load {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        serde_json::from_str(&text).map_err(|e| ModelError::Load {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }
}

struct LayerNorm {
    w: CT,
    b: CT,
    eps: f32,
}

impl LayerNorm {
    fn forward(&self, x: &CT) -> candle_core::Result<CT> {
        candle_nn::ops::layer_norm(x, &self.w, &self.b, self.eps)
    }

    /// `layer_norm(x + residual)`: one fused pass (`ops::add_layer_norm`) when `fused` (always on
    /// the CPU), else plain candle ops.
    fn forward_residual(&self, x: &CT, residual: &CT, fused: bool) -> candle_core::Result<CT> {
        if fused {
            crate::ops::add_layer_norm(x, residual, &self.w, &self.b, self.eps)
        } else {
            self.forward(&(x + residual)?)
        }
    }
}

/// The query, key and value projections of a layer.
// One per layer, built once at load and never moved after: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Qkv {
    Separate {
        q: Linear,
        k: Linear,
        v: Linear,
    },
    /// One layer giving q, k and v side by side, [tokens, 3 · hidden] (`Linear::stack_outputs`: bf16
    /// weights): x converted once and one matmul instead of three.
    Stacked(Linear),
}

impl Qkv {
    /// The linear layers, for what they run in.
    fn linears(&self) -> Vec<&Linear> {
        match self {
            Qkv::Separate { q, k, v } => vec![q, k, v],
            Qkv::Stacked(qkv) => vec![qkv],
        }
    }

    fn new(q: Linear, k: Linear, v: Linear) -> candle_core::Result<Qkv> {
        Ok(match Linear::stack_outputs(&[&q, &k, &v])? {
            Some(qkv) => Qkv::Stacked(qkv),
            None => Qkv::Separate { q, k, v },
        })
    }

    /// q, k and v, each [rows, hidden].
    fn forward(&self, x: &CT, h: usize) -> candle_core::Result<(CT, CT, CT)> {
        match self {
            Qkv::Separate { q, k, v } => Ok((q.forward(x)?, k.forward(x)?, v.forward(x)?)),
            Qkv::Stacked(qkv) => {
                let y = qkv.forward(x)?;
                Ok((
                    y.narrow(1, 0, h)?,
                    y.narrow(1, h, h)?,
                    y.narrow(1, 2 * h, h)?,
                ))
            }
        }
    }

    /// The packed attention's context [tokens, hidden] for x [tokens, hidden] (`attention::packed`,
    /// straight on the stacked output when there is one).
    fn packed_attention(
        &self,
        x: &CT,
        lens: &[usize],
        h: usize,
        heads: usize,
    ) -> candle_core::Result<CT> {
        let shape = |ld| super::attention::Shape {
            lens,
            hidden: h,
            heads,
            ld,
        };
        let c = match self {
            Qkv::Separate { q, k, v } => {
                let (q, k, v) = (q.forward(x)?, k.forward(x)?, v.forward(x)?);
                with_f32(&q, |q| {
                    with_f32(&k, |k| {
                        with_f32(&v, |v| Ok(super::attention::packed(q, k, v, shape(h))))
                    })
                })?
            }
            Qkv::Stacked(qkv) => with_f32(&qkv.forward(x)?, |y| {
                Ok(super::attention::packed(
                    y,
                    &y[h..],
                    &y[2 * h..],
                    shape(3 * h),
                ))
            })?,
        };
        let tokens = lens.iter().sum::<usize>();
        CT::from_vec(c, (tokens, h), &Device::Cpu)
    }
}

struct Layer {
    qkv: Qkv,
    attn_out: Linear,
    ln1: LayerNorm,
    inter: Linear,
    out: Linear,
    ln2: LayerNorm,
}

pub struct Bert {
    device: Device,
    /// Run the custom ops (`ops::*`): always on the CPU, on CUDA with `cuda_fused_ops`.
    fused: bool,
    cfg: BertConfig,
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    emb_ln: LayerNorm,
    layers: Vec<Layer>,
    output: String,
    /// Set when the version folder has a `tokenizer.json`.
    text: Option<TextSpec>,
}

struct Weights {
    map: HashMap<String, CT>,
    prefix: &'static str,
    path: String,
    device: Device,
    opts: WeightOptions,
    /// Layers that stay in floating point under q8 (`model::float_layers`).
    float_layers: Vec<String>,
}

impl Weights {
    fn get(&mut self, name: &str) -> Result<CT, ModelError> {
        let key = format!("{}{name}", self.prefix);
        let t = self.map.remove(&key).ok_or_else(|| ModelError::Load {
            path: self.path.clone(),
            message: format!("tensor '{key}' is missing"),
        })?;
        Ok(t.to_dtype(DType::F32)?)
    }

    /// A linear layer; one of `float_layers` stays in floating point when the model is quantized
    /// at load (the q8 path packs dense weights as bf16 where the CPU runs it).
    fn linear(&mut self, name: &str) -> Result<Linear, ModelError> {
        let full = format!("{}{name}", self.prefix);
        let mut opts = self.opts;
        if opts.quantize == Some(crate::quant::Format::Q8)
            && crate::quant::is_float_layer(name, &self.float_layers)
        {
            opts.quantize = None;
        }
        Linear::load(&mut self.map, &full, &self.device, &opts).map_err(|e| self.err(e))
    }

    fn embedding(&mut self, name: &str) -> Result<Embedding, ModelError> {
        let full = format!("{}{name}", self.prefix);
        Embedding::load(&mut self.map, &full, &self.device, self.opts.quantize)
            .map_err(|e| self.err(e))
    }

    fn err(&self, e: candle_core::Error) -> ModelError {
        ModelError::Load {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn layer_norm(&mut self, name: &str, eps: f64) -> Result<LayerNorm, ModelError> {
        Ok(LayerNorm {
            w: self.get(&format!("{name}.weight"))?,
            b: self.get(&format!("{name}.bias"))?,
            eps: eps as f32,
        })
    }
}

impl Bert {
    pub fn load(config: &LoadOptions, dir: &Path, device: &Device) -> Result<Bert, ModelError> {
        let cfg = BertConfig::load(dir)?;
        if cfg.hidden_size % cfg.num_attention_heads != 0 {
            return Err(ModelError::Load {
                path: dir.join("config.json").display().to_string(),
                message: "hidden_size is not a multiple of num_attention_heads".into(),
            });
        }
        if let Some(act) = cfg.hidden_act.as_deref().filter(|a| *a != "gelu") {
            return Err(ModelError::Load {
                path: dir.join("config.json").display().to_string(),
                message: format!("hidden_act '{act}' is not supported (only gelu)"),
            });
        }
        let path = dir.join("model.safetensors");
        let map = candle_core::safetensors::load(&path, device).map_err(|e| ModelError::Load {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let prefix = if map
            .keys()
            .any(|k| k.starts_with("bert.embeddings.word_embeddings.weight"))
        {
            "bert."
        } else {
            ""
        };
        let mut w = Weights {
            map,
            prefix,
            path: path.display().to_string(),
            device: device.clone(),
            opts: config.weights(device),
            float_layers: super::float_layers(config.architecture, config.float_layers),
        };
        let eps = cfg.layer_norm_eps;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let qkv = Qkv::new(
                w.linear(&format!("{p}.attention.self.query"))?,
                w.linear(&format!("{p}.attention.self.key"))?,
                w.linear(&format!("{p}.attention.self.value"))?,
            )
            .map_err(|e| w.err(e))?;
            layers.push(Layer {
                qkv,
                attn_out: w.linear(&format!("{p}.attention.output.dense"))?,
                ln1: w.layer_norm(&format!("{p}.attention.output.LayerNorm"), eps)?,
                inter: w.linear(&format!("{p}.intermediate.dense"))?,
                out: w.linear(&format!("{p}.output.dense"))?,
                ln2: w.layer_norm(&format!("{p}.output.LayerNorm"), eps)?,
            });
        }
        let output = match config.outputs {
            [o] => o.name.clone(),
            _ => {
                return Err(ModelError::Parameter {
                    name: "output".into(),
                    message: "bert has exactly one output (the pooled embedding)".into(),
                })
            }
        };
        let word = w.embedding("embeddings.word_embeddings.weight")?;
        let position = w.embedding("embeddings.position_embeddings.weight")?;
        // Ids are checked against config.json's sizes, and a GPU gather does not bounds-check: the
        // tables must hold at least that many rows.
        for (what, table, want) in [
            ("word", &word, cfg.vocab_size),
            ("position", &position, cfg.max_position_embeddings),
        ] {
            let rows = table.rows()?;
            if rows < want {
                return Err(ModelError::Load {
                    path: path.display().to_string(),
                    message: format!(
                        "the {what} embedding table has {rows} rows, config.json says {want}"
                    ),
                });
            }
        }
        Ok(Bert {
            device: device.clone(),
            fused: device.is_cpu() || config.cuda_fused_ops,
            word,
            position,
            token_type: w.embedding("embeddings.token_type_embeddings.weight")?,
            emb_ln: w.layer_norm("embeddings.LayerNorm", eps)?,
            layers,
            output,
            text: dir.join("tokenizer.json").is_file().then(|| TextSpec {
                input: INPUT_IDS.into(),
                max_positions: cfg.max_position_embeddings,
                tokenizer: dir.join("tokenizer.json"),
            }),
            cfg,
        })
    }

    /// Most positions the checkpoint has.
    pub fn max_positions(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    /// Encodes a padded batch: `ids` [b, l] (u32) and `mask` [b, l] (f32, 1 = real token) on the
    /// model's device. The word embeddings are gathered on the device from `ids`, so a GPU batch's
    /// ids cross the bus once, in `stage`. Returns mean-pooled embeddings [b, hidden].
    pub fn encode(&self, ids: &CT, mask: &CT) -> candle_core::Result<CT> {
        let (b, l) = ids.dims2()?;
        let h = self.cfg.hidden_size;
        let heads = self.cfg.num_attention_heads;
        let d = h / heads;
        let words = self
            .word
            .lookup_staged(&ids.flatten_all()?)?
            .reshape((b, l, h))?;
        let pos = self.position.first_rows(l)?;
        let typ = self.token_type.first_rows(1)?;
        let x = words.broadcast_add(&pos)?.broadcast_add(&typ)?;
        let mut x = self.emb_ln.forward(&x)?.reshape((b * l, h))?;
        // 0 for real tokens, a large negative number for padding: [b, 1, 1, l].
        let bias = ((mask.ones_like()? - mask)? * -1e9f64)?.reshape((b, 1, 1, l))?;
        let scale = 1.0 / (d as f64).sqrt();
        for layer in &self.layers {
            let split = |t: CT| -> candle_core::Result<CT> {
                t.reshape((b, l, heads, d))?.transpose(1, 2)?.contiguous()
            };
            let (q, k, v) = layer.qkv.forward(&x, h)?;
            let (q, k, v) = (split(q)?, split(k)?, split(v)?);
            let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b * l, h))?;
            let a = layer
                .ln1
                .forward_residual(&layer.attn_out.forward(&ctx)?, &x, self.fused)?;
            let i = gelu_bias(&layer.inter, &a, self.fused)?;
            x = layer
                .ln2
                .forward_residual(&layer.out.forward(&i)?, &a, self.fused)?;
        }
        let x = x.reshape((b, l, h))?;
        if self.fused {
            return crate::ops::mean_pool_l2(&x, mask, false);
        }
        let m = mask.unsqueeze(D::Minus1)?;
        let summed = x.broadcast_mul(&m)?.sum(1)?;
        let counts = mask.sum_keepdim(1)?.clamp(1e-9, f64::MAX)?;
        summed.broadcast_div(&counts)
    }
}

/// `gelu(x W^T + b)`: the bias add fused into the GELU (`ops::gelu_bias`) when `fused`.
fn gelu_bias(lin: &Linear, x: &CT, fused: bool) -> candle_core::Result<CT> {
    match lin.bias() {
        Some(b) if fused => crate::ops::gelu_bias(&lin.forward_no_bias(x)?, b),
        _ => lin.forward(x)?.gelu_erf(),
    }
}

impl Bert {
    /// A job's token ids, checked against the vocabulary.
    fn checked_ids(&self, t: &Tensor) -> Result<Vec<u32>, ModelError> {
        let TensorData::I64(v) = &t.data else {
            return Err(ModelError::Failed(format!("{INPUT_IDS} must be INT64")));
        };
        v.iter()
            .map(|&id| {
                if id < 0 || id as usize >= self.cfg.vocab_size {
                    Err(ModelError::Failed(format!(
                        "token id {id} is outside the vocabulary"
                    )))
                } else {
                    Ok(id as u32)
                }
            })
            .collect()
    }

    /// CPU path without padding: the batch's tokens are packed into one [tokens, hidden] matrix for
    /// every linear layer (where nearly all FLOPs are), and attention runs per sequence on its own
    /// rows. Returns mean-pooled embeddings [b, hidden]. Same result as `encode` on a padded batch.
    pub fn encode_packed(&self, seqs: &[&[u32]]) -> candle_core::Result<CT> {
        // Whole sequences in groups of about PACK_TOKENS tokens: the matmuls stay as efficient (this
        // CPU's GEMM runs at the same rate from ~20 rows up), and the activations of one group stay
        // small and cache-resident whatever the batch size (a 64 x 22-token batch held ~25 MB of
        // temporaries per worker when run as one group).
        let mut groups = Vec::new();
        let (mut start, mut tokens) = (0, 0);
        for (i, s) in seqs.iter().enumerate() {
            if tokens > 0 && tokens + s.len() > PACK_TOKENS {
                groups.push(self.encode_packed_group(&seqs[start..i])?);
                (start, tokens) = (i, 0);
            }
            tokens += s.len();
        }
        groups.push(self.encode_packed_group(&seqs[start..])?);
        if groups.len() == 1 {
            return Ok(groups.pop().expect("one group"));
        }
        CT::cat(&groups, 0)
    }

    fn encode_packed_group(&self, seqs: &[&[u32]]) -> candle_core::Result<CT> {
        let h = self.cfg.hidden_size;
        let heads = self.cfg.num_attention_heads;
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
        let positions: Vec<u32> = lens.iter().flat_map(|&l| 0..l as u32).collect();
        let typ = self.token_type.lookup(&[0])?;
        let x =
            (self.word.lookup(&ids)? + self.position.lookup(&positions)?)?.broadcast_add(&typ)?;
        let mut x = self.emb_ln.forward(&x)?;
        for layer in &self.layers {
            let ctx = layer.qkv.packed_attention(&x, &lens, h, heads)?;
            // The packed path runs on the CPU only, where the ops are always fused.
            let a = layer
                .ln1
                .forward_residual(&layer.attn_out.forward(&ctx)?, &x, true)?;
            let o = layer
                .out
                .forward_gelu_of(&layer.inter.forward_no_bias(&a)?, &layer.inter)?;
            x = layer.ln2.forward_residual(&o, &a, true)?;
        }
        // Mean of each sequence's rows, in one pass over x (as candle's `mean(0)` computes it: the
        // rows summed in order, times 1 / len).
        let pooled = with_f32(&x.contiguous()?, |x| {
            let mut out = vec![0f32; lens.len() * h];
            let mut rows = x.chunks_exact(h);
            for (o, &len) in out.chunks_exact_mut(h).zip(&lens) {
                for row in rows.by_ref().take(len) {
                    o.iter_mut().zip(row).for_each(|(o, &v)| *o += v);
                }
                let inv = (1.0 / len as f64) as f32;
                o.iter_mut().for_each(|o| *o *= inv);
            }
            Ok(out)
        })?;
        CT::from_vec(pooled, (lens.len(), h), &Device::Cpu)
    }
}

/// A BERT batch ready to run: on the CPU the checked ids of each sequence (run packed, no padding);
/// on a GPU the padded ids and mask, already on the device.
enum BertStaged {
    Packed(Vec<Vec<u32>>),
    Padded { ids: CT, mask: CT },
}

impl Model for Bert {
    fn device(&self) -> &Device {
        &self.device
    }

    fn text_input(&self) -> Option<TextSpec> {
        self.text.clone()
    }

    fn stage(&self, batch: &[&[Tensor]], xfer: &mut Transfer) -> Result<Staged, ModelError> {
        let seqs = gather_input(batch, INPUT_IDS)?;
        let longest = seqs.iter().map(|t| t.data.len()).max().unwrap_or(0).max(1);
        if longest > self.cfg.max_position_embeddings {
            return Err(ModelError::Failed(format!(
                "sequence of {longest} tokens exceeds the model's {} positions",
                self.cfg.max_position_embeddings
            )));
        }
        if self.device.is_cpu() {
            let packed = seqs
                .iter()
                .map(|t| self.checked_ids(t))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Staged::new(BertStaged::Packed(packed)));
        }
        let (b, l) = (seqs.len(), longest);
        let mut ids = vec![0u32; b * l];
        let mut mask = vec![0f32; b * l];
        for (row, t) in seqs.iter().enumerate() {
            for (j, id) in self.checked_ids(t)?.into_iter().enumerate() {
                ids[row * l + j] = id;
                mask[row * l + j] = 1.0;
            }
        }
        let ids = xfer.upload(ids, (b, l))?;
        let mask = xfer.upload(mask, (b, l))?;
        Ok(Staged::new(BertStaged::Padded { ids, mask }))
    }

    fn compute(
        &self,
        staged: Staged,
        xfer: &mut Transfer,
        timings: &mut StageTimings,
    ) -> Result<Vec<Vec<Tensor>>, ModelError> {
        let t1 = Instant::now();
        let pooled = match staged.take()? {
            BertStaged::Packed(packed) => {
                let views: Vec<&[u32]> = packed.iter().map(Vec::as_slice).collect();
                self.encode_packed(&views)?
            }
            BertStaged::Padded { ids, mask } => self.encode(&ids, &mask)?,
        };
        // GPU kernels run asynchronously: wait for them so that infer and output time split here.
        self.device.synchronize()?;
        let t2 = Instant::now();
        let b = pooled.dim(0)?;
        let out = xfer
            .download(&self.output, &pooled)?
            .split_rows(&vec![1; b])?;
        timings.infer = t2 - t1;
        timings.output = t2.elapsed();
        Ok(out.into_iter().map(|t| vec![t]).collect())
    }

    /// Padded on a GPU; packed (no padding, `encode_packed`) on the CPU, as `stage` chooses.
    fn is_padded(&self) -> bool {
        !self.device.is_cpu()
    }

    /// The path of the quantized layers if any (a q8 model keeps some in floating point, see
    /// `model::float_layers`), else that of the linear layers.
    fn precision(&self) -> PrecisionPath {
        let linears: Vec<&Linear> = self
            .layers
            .iter()
            .flat_map(|l| {
                let mut all = l.qkv.linears();
                all.extend([&l.attn_out, &l.inter, &l.out]);
                all
            })
            .collect();
        linears
            .iter()
            .find(|l| l.is_quantized())
            .or(linears.first())
            .map_or(PrecisionPath::F32, |l| l.path())
    }
}

/// Runs `f` on the elements of a contiguous CPU tensor as f32 (borrowed when f32).
fn with_f32<R>(t: &CT, f: impl FnOnce(&[f32]) -> candle_core::Result<R>) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(s) => f(&crate::ops::f32_view(s, layout, "attention input")?),
        _ => candle_core::bail!("expected a CPU tensor"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{Device, Tensor as CT};
    use rand::{Rng, SeedableRng};

    use super::Bert;
    use crate::model::LoadOptions;
    use crate::spec::ModelConfig;

    /// A small BERT with random weights (hidden 32, 4 heads, 2 layers, vocab 50) in a temporary
    /// folder, loaded on the CPU in f32.
    fn tiny_bert(seed: u64) -> (tempfile::TempDir, Bert) {
        // These tests compare op paths with each other at f32 tolerances: pinned to f32 (`auto`
        // would be bf16 on a CPU with bf16 instructions; bf16 is checked in `ops::bf16_matmul` and
        // tests/embeddings.rs).
        tiny_bert_in(seed, crate::spec::Precision::F32)
    }

    fn tiny_bert_in(seed: u64, precision: crate::spec::Precision) -> (tempfile::TempDir, Bert) {
        let (vocab, h, inter, pos) = (50, 32, 64, 16);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            format!(
                r#"{{"vocab_size": {vocab}, "hidden_size": {h}, "num_hidden_layers": 2,
                "num_attention_heads": 4, "intermediate_size": {inter},
                "max_position_embeddings": {pos}, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}}"#
            ),
        )
        .unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut w = HashMap::new();
        let mut add = |name: String, shape: &[usize], around: f32| {
            let n = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| around + rng.random_range(-0.5f32..0.5))
                .collect();
            w.insert(name, CT::from_vec(v, shape, &Device::Cpu).unwrap());
        };
        add("embeddings.word_embeddings.weight".into(), &[vocab, h], 0.0);
        add(
            "embeddings.position_embeddings.weight".into(),
            &[pos, h],
            0.0,
        );
        add(
            "embeddings.token_type_embeddings.weight".into(),
            &[2, h],
            0.0,
        );
        add("embeddings.LayerNorm.weight".into(), &[h], 1.0);
        add("embeddings.LayerNorm.bias".into(), &[h], 0.0);
        for i in 0..2 {
            let p = format!("encoder.layer.{i}");
            for (name, out, inp) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", inter, h),
                ("output.dense", h, inter),
            ] {
                add(format!("{p}.{name}.weight"), &[out, inp], 0.0);
                add(format!("{p}.{name}.bias"), &[out], 0.0);
            }
            for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
                add(format!("{p}.{ln}.weight"), &[h], 1.0);
                add(format!("{p}.{ln}.bias"), &[h], 0.0);
            }
        }
        candle_core::safetensors::save(&w, dir.path().join("model.safetensors")).unwrap();
        let cfg = ModelConfig::parse(
            "architecture = \"bert\"\nmax_batch_size = 8\n\
             [[input]]\nname = \"text\"\ndatatype = \"BYTES\"\ndims = [-1]\n\
             [[output]]\nname = \"embedding\"\ndatatype = \"FP32\"\ndims = [-1, 32]\n",
            "tiny",
        )
        .unwrap();
        let mut opts = LoadOptions::from_config(&cfg);
        opts.precision = precision;
        let bert = Bert::load(&opts, dir.path(), &Device::Cpu).unwrap();
        (dir, bert)
    }

    /// Random ids for sequences of `lens`, padded to the longest: (ids, mask, the sequences).
    fn batch(seed: u64, lens: &[usize]) -> (CT, CT, Vec<Vec<u32>>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (b, l) = (lens.len(), lens.iter().copied().max().unwrap_or(0));
        let mut ids = vec![0u32; b * l];
        let mut mask = vec![0f32; b * l];
        let mut seqs = Vec::new();
        for (row, &len) in lens.iter().enumerate() {
            for j in 0..len {
                ids[row * l + j] = rng.random_range(0..50);
                mask[row * l + j] = 1.0;
            }
            seqs.push(ids[row * l..row * l + len].to_vec());
        }
        let ids = CT::from_vec(ids, (b, l), &Device::Cpu).unwrap();
        let mask = CT::from_vec(mask, (b, l), &Device::Cpu).unwrap();
        (ids, mask, seqs)
    }

    /// bf16 weights stack q, k and v into one layer; the packed path (attention straight on the
    /// stacked output) and the padded one (its column slices) give the same embeddings. Each row's
    /// bf16 products are the same in both; only attention's f32 sums run in a different order,
    /// which can flip the bf16 rounding of a later input (2^-8 relative): 1e-3 of the row's scale.
    #[test]
    fn bf16_stacked_qkv_packed_path_matches_padded_path() {
        let (_dir, bert) = tiny_bert_in(5, crate::spec::Precision::Bf16);
        assert!(bert
            .layers
            .iter()
            .all(|l| matches!(l.qkv, super::Qkv::Stacked(_))));
        let (ids, mask, seqs) = batch(6, &[13, 1, 7, 12, 4]);
        let padded: Vec<Vec<f32>> = bert.encode(&ids, &mask).unwrap().to_vec2().unwrap();
        let views: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let packed: Vec<Vec<f32>> = bert.encode_packed(&views).unwrap().to_vec2().unwrap();
        assert_eq!(packed.len(), padded.len());
        for (row, (p, q)) in packed.iter().zip(&padded).enumerate() {
            let scale = q.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (i, (a, c)) in p.iter().zip(q).enumerate() {
                assert!(
                    (a - c).abs() <= 1e-3 * scale,
                    "row {row} element {i}: packed {a} vs padded {c} (scale {scale})"
                );
            }
        }
    }

    /// `cuda_fused_ops` switches the padded path between the custom ops and plain candle ops; the
    /// two must agree (checked here on the CPU, where the switch can be forced; benches/gpu.sh runs
    /// the same comparison on a GPU): random ids, mixed lengths with padding, 1e-5 relative.
    #[test]
    fn padded_path_same_with_and_without_fused_ops() {
        let (_dir, mut bert) = tiny_bert(7);
        let b = 5;
        let (ids, mask, _) = batch(8, &[13, 1, 7, 12, 4]);
        assert!(bert.fused, "the CPU always runs the fused ops");
        let fused: Vec<Vec<f32>> = bert.encode(&ids, &mask).unwrap().to_vec2().unwrap();
        bert.fused = false;
        let plain: Vec<Vec<f32>> = bert.encode(&ids, &mask).unwrap().to_vec2().unwrap();
        assert_eq!(fused.len(), b);
        for (row, (f, p)) in fused.iter().zip(&plain).enumerate() {
            assert_eq!(f.len(), 32);
            for (i, (a, c)) in f.iter().zip(p).enumerate() {
                assert!(
                    (a - c).abs() <= 1e-5 * c.abs().max(0.1),
                    "row {row} element {i}: fused {a} vs plain {c}"
                );
            }
        }
        // Not trivially equal: the rows differ from one another.
        assert!(fused[0]
            .iter()
            .zip(&fused[1])
            .any(|(a, c)| (a - c).abs() > 1e-3));
    }
}
