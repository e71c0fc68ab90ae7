//! `Linear` (y = x W^T + b) and `Embedding` (row lookup) over dense f32 or quantized weights. On the
//! CPU quantized weights stay quantized in memory: q8 is packed at load for `ops::q8_amx_matmul`
//! where the CPU has AMX int8 or AVX-512 VNNI (activations quantized per row, exact i32 sums), else
//! runs through `ops::q8_matmul` (int8 weights read directly; never the whole matrix dequantized
//! per call); q4 is dequantized per call into a temporary f32 matrix (about
//! in x out work, small next to the matmul's rows x in x out). On a GPU, q8 weights stay int8 on
//! the device and run through the same op's CUDA kernel when the model asks for it
//! (`cuda_fused_ops`); otherwise, and for q4, they are dequantized once at load. Dense weights
//! load as f32, or, for the CPU's bf16 path (`Path::Bf16`), packed as bf16 for
//! `ops::bf16_matmul`.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{bail, DType, Device, Result, Tensor};

use super::{Format, Path, QMatrix};
use crate::ops::{Bf16Kernel, Bf16Weights, Q8Packed};

enum Weight {
    /// Transposed: [in, out].
    Dense(Tensor),
    /// q8 for `ops::q8_matmul` (CPU, or CUDA with `q8_kernel`): `q` [out, in] U8 (i8 bit patterns),
    /// `scale` [out] F32, on the layer's device.
    Q8 { q: Tensor, scale: Tensor },
    /// q4 on the CPU (dequantized per call).
    Quant(QMatrix),
    /// bf16 on the CPU, packed for `ops::bf16_matmul` with this kernel.
    Bf16(Arc<Bf16Weights>, Bf16Kernel),
    /// q8 on a CPU with AMX int8 or AVX-512 VNNI, packed for `ops::q8_amx_matmul` (AMX tiles, or
    /// VNNI over the same layout; same arithmetic as `q8_matmul`'s VNNI path, several times its
    /// rate).
    Q8Amx(Arc<Q8Packed>),
}

/// How `Linear::load` keeps dense weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightOptions {
    /// Quantize dense weights to this format (weights stored quantized load as they are).
    pub quantize: Option<Format>,
    /// Pack dense weights as bf16 for this kernel (CPU only; the layer stays f32 on a GPU).
    pub bf16: Option<Bf16Kernel>,
    /// Keep q8 weights int8 on a GPU for the `q8_matmul` kernel (`cuda_fused_ops`).
    pub q8_kernel: bool,
}

impl WeightOptions {
    /// The options for a resolved precision path.
    pub fn for_path(path: Path, q8_kernel: bool) -> WeightOptions {
        let (quantize, bf16) = match path {
            Path::F32 => (None, None),
            Path::Bf16(k) => (None, Some(k)),
            // Layers a q8 model keeps in floating point (`model::float_layers`) run in bf16
            // where the CPU does it in hardware.
            Path::Q8 => (
                Some(Format::Q8),
                Bf16Kernel::hardware().then(Bf16Kernel::detect),
            ),
            Path::Q4 => (Some(Format::Q4), None),
        };
        WeightOptions {
            quantize,
            bf16,
            q8_kernel,
        }
    }
}

pub struct Linear {
    w: Weight,
    b: Option<Tensor>,
    /// The bias as f32 values, for the CPU kernels that add it as they write y (q8 on AMX, bf16).
    b_vec: Option<Arc<[f32]>>,
    device: Device,
}

fn f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

enum Taken {
    Quant(QMatrix),
    Dense(Tensor),
}

/// Takes `name` from the weights map as a quantized matrix if it is stored quantized
/// (`name.q8` / `name.q4` with scales), or as dense f32 (`name`), quantizing it when asked.
fn take_matrix(
    map: &mut HashMap<String, Tensor>,
    name: &str,
    quantize: Option<Format>,
) -> Result<Taken> {
    for format in [Format::Q8, Format::Q4] {
        let key = format!("{name}.{}", format.suffix());
        if let Some(q) = map.remove(&key) {
            let scale = map
                .remove(&format!("{key}_scale"))
                .ok_or_else(|| candle_core::Error::Msg(format!("'{key}_scale' is missing")))?;
            let (rows, packed) = q.dims2()?;
            let bytes: Vec<u8> = q.flatten_all()?.to_vec1()?;
            let scale = f32_vec(&scale)?;
            return Ok(Taken::Quant(match format {
                Format::Q8 => QMatrix::Q8 {
                    q: bytemuck::cast_vec(bytes),
                    scale,
                    rows,
                    cols: packed,
                },
                Format::Q4 => QMatrix::Q4 {
                    q: bytes,
                    scale,
                    rows,
                    cols: packed * 2,
                },
            }));
        }
    }
    let w = map
        .remove(name)
        .ok_or_else(|| candle_core::Error::Msg(format!("tensor '{name}' is missing")))?;
    match quantize {
        Some(format) => {
            let (rows, cols) = w.dims2()?;
            QMatrix::quantize(&f32_vec(&w)?, rows, cols, format)
                .map(Taken::Quant)
                .map_err(candle_core::Error::Msg)
        }
        None => Ok(Taken::Dense(w.to_dtype(DType::F32)?)),
    }
}

impl Linear {
    /// `prefix.weight` ([out, in], dense or quantized) and `prefix.bias` (optional).
    /// Loads `prefix.weight` (dense, or `.q8` / `.q4` with scales) and `prefix.bias`. q8 weights stay
    /// int8 for `ops::q8_matmul` on the CPU, and on other devices when `q8_kernel` is set; dense
    /// weights are packed as bf16 on the CPU when `opts.bf16` says so.
    pub fn load(
        map: &mut HashMap<String, Tensor>,
        prefix: &str,
        device: &Device,
        opts: &WeightOptions,
    ) -> Result<Linear> {
        let q8_kernel = opts.q8_kernel;
        let w = match take_matrix(map, &format!("{prefix}.weight"), opts.quantize)? {
            Taken::Quant(QMatrix::Q8 { q, scale, cols, .. })
                if device.is_cpu() && Q8Packed::selected() =>
            {
                Weight::Q8Amx(Arc::new(Q8Packed::pack(&q, &scale, cols)))
            }
            Taken::Quant(QMatrix::Q8 {
                q,
                scale,
                rows,
                cols,
            }) if device.is_cpu() || q8_kernel => Weight::Q8 {
                q: Tensor::from_vec(bytemuck::cast_vec::<i8, u8>(q), (rows, cols), device)?,
                scale: Tensor::from_vec(scale, rows, device)?,
            },
            Taken::Quant(q) if device.is_cpu() => Weight::Quant(q),
            Taken::Quant(q) => Weight::Dense(Tensor::from_vec(
                q.dequantize_transposed(),
                (q.cols(), q.rows()),
                device,
            )?),
            Taken::Dense(dense) => match opts.bf16 {
                Some(kernel) if device.is_cpu() => {
                    let (n, k) = dense.dims2()?;
                    let w = Bf16Weights::pack(&f32_vec(&dense)?, n, k);
                    Weight::Bf16(Arc::new(w), kernel)
                }
                _ => Weight::Dense(dense.t()?.contiguous()?),
            },
        };
        let b = match map.remove(&format!("{prefix}.bias")) {
            Some(b) => Some(b.to_dtype(DType::F32)?),
            None => None,
        };
        Linear::new(w, b, device.clone())
    }

    /// One layer computing the outputs of `parts` side by side (`[rows, Σ out]`, in order) with one
    /// matmul: for bf16 layers (same kernel, same input width), whose results are exactly those of
    /// the separate layers (each output's sum runs in the same order). `None` for other weights, or
    /// when only some parts have a bias.
    pub fn stack_outputs(parts: &[&Linear]) -> Result<Option<Linear>> {
        let mut packed = Vec::with_capacity(parts.len());
        let mut kernel = None;
        for p in parts {
            match &p.w {
                Weight::Bf16(w, k) if kernel.is_none_or(|kk| kk == *k) => {
                    packed.push(w.as_ref());
                    kernel = Some(*k);
                }
                _ => return Ok(None),
            }
        }
        let (Some(kernel), Some(w)) = (kernel, Bf16Weights::stack(&packed)) else {
            return Ok(None);
        };
        let b = match parts
            .iter()
            .map(|p| p.b.as_ref())
            .collect::<Option<Vec<_>>>()
        {
            Some(bs) => Some(Tensor::cat(&bs, 0)?),
            None if parts.iter().all(|p| p.b.is_none()) => None,
            None => return Ok(None),
        };
        Ok(Some(Linear::new(
            Weight::Bf16(Arc::new(w), kernel),
            b,
            parts[0].device.clone(),
        )?))
    }

    /// `x W^T` without the bias; `x` [rows, in].
    pub fn forward_no_bias(&self, x: &Tensor) -> Result<Tensor> {
        match &self.w {
            Weight::Dense(w_t) => x.matmul(w_t),
            Weight::Q8 { q, scale } => crate::ops::q8_matmul(x, q, scale),
            Weight::Q8Amx(w) => crate::ops::q8_amx_matmul(x, w),
            Weight::Bf16(w, kernel) => crate::ops::bf16_matmul_with(x, w, *kernel),
            Weight::Quant(q) => {
                // Row-major dequantization, then W^T as a strided view: no transposing copy.
                let w = Tensor::from_vec(q.dequantize(), (q.rows(), q.cols()), &self.device)?;
                x.matmul(&w.t()?)
            }
        }
    }

    fn new(w: Weight, b: Option<Tensor>, device: Device) -> Result<Linear> {
        let b_vec = match (&w, &b) {
            (Weight::Q8Amx(_) | Weight::Bf16(..), Some(b)) => Some(f32_vec(b)?.into()),
            _ => None,
        };
        Ok(Linear {
            w,
            b,
            b_vec,
            device,
        })
    }

    /// `x W^T + b`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match (&self.w, &self.b_vec) {
            (Weight::Q8Amx(w), Some(b)) => return crate::ops::q8_amx_matmul_bias(x, w, Some(b)),
            (Weight::Bf16(w, kernel), Some(b)) => {
                return crate::ops::bf16_matmul_bias(x, w, *kernel, Some(b))
            }
            _ => {}
        }
        let y = self.forward_no_bias(x)?;
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// `self.forward(gelu(pre + gelu_bias))` where `gelu_bias` is `inter`'s bias and `pre` its
    /// output without it: a q8 layer on AMX takes the GELU into its quantization of x, a bf16 one
    /// on AMX into its conversion of x (one pass, no f32 activation stored; bit for bit the same
    /// result), others run `ops::gelu_bias` first.
    pub fn forward_gelu_of(&self, pre: &Tensor, inter: &Linear) -> Result<Tensor> {
        match (&self.w, &inter.b_vec) {
            (Weight::Q8Amx(w), Some(gb)) if gb.len() == w.dims().1 => {
                return crate::ops::q8_amx_matmul_gelu(pre, gb, w, self.b_vec.as_ref());
            }
            (Weight::Bf16(w, kernel), Some(gb)) if gb.len() == w.dims().1 => {
                return crate::ops::bf16_matmul_gelu(pre, gb, w, *kernel, self.b_vec.as_ref());
            }
            _ => {}
        }
        match inter.bias() {
            Some(b) => self.forward(&crate::ops::gelu_bias(pre, b)?),
            None => self.forward(&pre.gelu_erf()?),
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.b.as_ref()
    }

    pub fn is_quantized(&self) -> bool {
        matches!(
            self.w,
            Weight::Quant(_) | Weight::Q8 { .. } | Weight::Q8Amx(_)
        )
    }

    /// The path this layer runs, as loaded (weights stored quantized run as stored).
    pub fn path(&self) -> Path {
        match &self.w {
            Weight::Dense(_) => Path::F32,
            Weight::Bf16(_, k) => Path::Bf16(*k),
            Weight::Q8 { .. } | Weight::Q8Amx(_) => Path::Q8,
            Weight::Quant(QMatrix::Q8 { .. }) => Path::Q8,
            Weight::Quant(QMatrix::Q4 { .. }) => Path::Q4,
        }
    }
}

/// A lookup table [vocab, hidden], dense or quantized (rows dequantized on lookup).
pub enum Embedding {
    Dense(Tensor),
    Quant(QMatrix, Device),
}

impl Embedding {
    pub fn load(
        map: &mut HashMap<String, Tensor>,
        name: &str,
        device: &Device,
        quantize: Option<Format>,
    ) -> Result<Embedding> {
        Ok(match take_matrix(map, name, quantize)? {
            Taken::Quant(q) if device.is_cpu() => Embedding::Quant(q, device.clone()),
            Taken::Quant(q) => {
                let (rows, cols) = (q.rows(), q.cols());
                let mut out = vec![0f32; rows * cols];
                out.chunks_exact_mut(cols)
                    .enumerate()
                    .for_each(|(r, o)| q.dequantize_row(r, o));
                Embedding::Dense(Tensor::from_vec(out, (rows, cols), device)?)
            }
            Taken::Dense(dense) => Embedding::Dense(dense),
        })
    }

    pub fn rows(&self) -> Result<usize> {
        match self {
            Embedding::Dense(t) => Ok(t.dim(0)?),
            Embedding::Quant(q, _) => Ok(q.rows()),
        }
    }

    /// Rows `ids` as [n, hidden] f32, where `ids` is a u32 vector of n ids already on the table's
    /// device: a dense table gathers there (no copy); a quantized one lives on the host (`load`
    /// dequantizes for a GPU), where reading `ids` costs nothing.
    pub fn lookup_staged(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Embedding::Dense(t) => t.index_select(ids, 0),
            Embedding::Quant(..) => self.lookup(&ids.to_vec1::<u32>()?),
        }
    }

    /// Rows `0..n` as [n, hidden] f32 (position ids of a padded batch): a view of a dense table.
    pub fn first_rows(&self, n: usize) -> Result<Tensor> {
        match self {
            Embedding::Dense(t) => t.narrow(0, 0, n),
            Embedding::Quant(..) => self.lookup(&(0..n as u32).collect::<Vec<_>>()),
        }
    }

    /// Rows `ids` as [ids.len(), hidden] f32.
    pub fn lookup(&self, ids: &[u32]) -> Result<Tensor> {
        match self {
            Embedding::Dense(t) => {
                let idx = Tensor::from_slice(ids, ids.len(), t.device())?;
                t.index_select(&idx, 0)
            }
            Embedding::Quant(q, device) => {
                let cols = q.cols();
                let mut out = vec![0f32; ids.len() * cols];
                for (o, &id) in out.chunks_exact_mut(cols).zip(ids) {
                    if id as usize >= q.rows() {
                        bail!("embedding row {id} is out of range ({} rows)", q.rows())
                    }
                    q.dequantize_row(id as usize, o);
                }
                Tensor::from_vec(out, (ids.len(), cols), device)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(quantize: Option<Format>) -> WeightOptions {
        WeightOptions {
            quantize,
            bf16: None,
            q8_kernel: false,
        }
    }

    fn weights(out: usize, inp: usize) -> HashMap<String, Tensor> {
        let w = Tensor::randn(0f32, 0.5, (out, inp), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 0.5, out, &Device::Cpu).unwrap();
        HashMap::from([("l.weight".to_string(), w), ("l.bias".to_string(), b)])
    }

    #[test]
    fn quantized_linear_is_close_to_dense() {
        let x = Tensor::randn(0f32, 1.0, (7, 64), &Device::Cpu).unwrap();
        let w0 = weights(33, 64);
        let dense = Linear::load(&mut w0.clone(), "l", &Device::Cpu, &opts(None)).unwrap();
        let want: Vec<f32> = dense
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (format, tol) in [(Format::Q8, 0.02), (Format::Q4, 0.2)] {
            let q = Linear::load(&mut w0.clone(), "l", &Device::Cpu, &opts(Some(format))).unwrap();
            assert!(q.is_quantized());
            let got: Vec<f32> = q
                .forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let err = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err <= tol * scale,
                "{format:?}: max error {err} vs output scale {scale}"
            );
        }
    }

    /// A bf16 layer (each kernel the CPU runs) gives the dense layer's output within bf16 rounding
    /// of x and W (relative 2^-8 each, summed over k products), and says what it runs.
    #[test]
    fn bf16_linear_is_close_to_dense_and_reports_its_path() {
        let x = Tensor::randn(0f32, 1.0, (7, 64), &Device::Cpu).unwrap();
        let w0 = weights(33, 64);
        let dense = Linear::load(&mut w0.clone(), "l", &Device::Cpu, &opts(None)).unwrap();
        assert_eq!(dense.path(), Path::F32);
        let want: Vec<f32> = dense
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let ws: Vec<f32> = w0["l.weight"].flatten_all().unwrap().to_vec1().unwrap();
        for kernel in [Bf16Kernel::Amx, Bf16Kernel::Avx512, Bf16Kernel::Portable] {
            if !kernel.available() {
                eprintln!("bf16 kernel {}: SKIPPED, not on this CPU", kernel.as_str());
                continue;
            }
            let o = WeightOptions {
                bf16: Some(kernel),
                ..opts(None)
            };
            let l = Linear::load(&mut w0.clone(), "l", &Device::Cpu, &o).unwrap();
            assert_eq!(l.path(), Path::Bf16(kernel));
            assert!(!l.is_quantized());
            let got: Vec<f32> = l
                .forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                let (i, j) = (idx / 33, idx % 33);
                let abs: f32 = (0..64)
                    .map(|c| (xs[i * 64 + c] * ws[j * 64 + c]).abs())
                    .sum();
                let tol = 2.0 * 2f32.powi(-8) * abs + 1e-5;
                assert!(
                    (g - w).abs() <= tol,
                    "{kernel:?} ({i}, {j}): {g} vs {w} ({tol})"
                );
            }
        }
    }

    /// Stacked bf16 layers give the separate layers' outputs (bias included) side by side, bit for
    /// bit; other weights, or a bias on only some parts, are not stacked.
    #[test]
    fn bf16_linears_stack_to_the_separate_outputs() {
        let x = Tensor::randn(0f32, 1.0, (9, 64), &Device::Cpu).unwrap();
        let o = WeightOptions {
            bf16: Some(Bf16Kernel::detect()),
            ..opts(None)
        };
        let parts: Vec<Linear> = [33, 48, 5]
            .iter()
            .map(|&n| Linear::load(&mut weights(n, 64), "l", &Device::Cpu, &o).unwrap())
            .collect();
        let refs: Vec<&Linear> = parts.iter().collect();
        let stacked = Linear::stack_outputs(&refs).unwrap().unwrap();
        assert_eq!(stacked.path(), Path::Bf16(Bf16Kernel::detect()));
        let want: Vec<Tensor> = parts.iter().map(|p| p.forward(&x).unwrap()).collect();
        let want: Vec<Vec<f32>> = Tensor::cat(&want, 1).unwrap().to_vec2().unwrap();
        let got: Vec<Vec<f32>> = stacked.forward(&x).unwrap().to_vec2().unwrap();
        assert_eq!(got, want);

        let dense = Linear::load(&mut weights(8, 64), "l", &Device::Cpu, &opts(None)).unwrap();
        assert!(Linear::stack_outputs(&[&parts[0], &dense])
            .unwrap()
            .is_none());
        let mut no_bias = weights(8, 64);
        no_bias.remove("l.bias");
        let no_bias = Linear::load(&mut no_bias, "l", &Device::Cpu, &o).unwrap();
        assert!(Linear::stack_outputs(&[&parts[0], &no_bias])
            .unwrap()
            .is_none());
    }

    #[test]
    fn quantized_embedding_lookup_matches_rows() {
        let t = Tensor::randn(0f32, 1.0, (50, 32), &Device::Cpu).unwrap();
        let mut map = HashMap::from([("e".to_string(), t.clone())]);
        let e = Embedding::load(&mut map, "e", &Device::Cpu, Some(Format::Q8)).unwrap();
        let got: Vec<Vec<f32>> = e.lookup(&[3, 49]).unwrap().to_vec2().unwrap();
        let want: Vec<Vec<f32>> = t.to_vec2().unwrap();
        for (g, w) in got.iter().zip([&want[3], &want[49]]) {
            for (a, b) in g.iter().zip(w) {
                assert!((a - b).abs() <= 0.02, "{a} vs {b}");
            }
        }
        assert!(e.lookup(&[50]).is_err());
    }

    /// The padded path's lookups (ids already on the device, position rows `0..n`) give the rows
    /// `lookup` gives, for a dense and a quantized table.
    #[test]
    fn staged_lookup_and_first_rows_equal_lookup() {
        let t = Tensor::randn(0f32, 1.0, (40, 24), &Device::Cpu).unwrap();
        for quantize in [None, Some(Format::Q8)] {
            let mut map = HashMap::from([("e".to_string(), t.clone())]);
            let e = Embedding::load(&mut map, "e", &Device::Cpu, quantize).unwrap();
            let host = [7u32, 0, 39, 7, 12];
            let ids = Tensor::new(&host[..], &Device::Cpu).unwrap();
            let want: Vec<Vec<f32>> = e.lookup(&host).unwrap().to_vec2().unwrap();
            let got: Vec<Vec<f32>> = e.lookup_staged(&ids).unwrap().to_vec2().unwrap();
            assert_eq!(got, want, "{quantize:?}");
            let first: Vec<Vec<f32>> = e.first_rows(5).unwrap().to_vec2().unwrap();
            let want: Vec<Vec<f32>> = e.lookup(&[0, 1, 2, 3, 4]).unwrap().to_vec2().unwrap();
            assert_eq!(first, want, "{quantize:?}");
        }
    }
}
