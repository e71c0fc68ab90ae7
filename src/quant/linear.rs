//! `Linear` (y = x W^T + b) and `Embedding` (row lookup) over dense f32 or quantized weights. On the
//! CPU quantized weights stay quantized in memory: q8 runs through `ops::q8_matmul` (int8 weights
//! read directly; with AVX-512 VNNI the activations are quantized per row too; never the whole
//! matrix dequantized per call); q4 is dequantized per call into a temporary f32 matrix (about
//! in x out work, small next to the matmul's rows x in x out). On a GPU, q8 weights stay int8 on
//! the device and run through the same op's CUDA kernel when the model asks for it
//! (`cuda_fused_ops`); otherwise, and for q4, they are dequantized once at load.

use std::collections::HashMap;

use candle_core::{bail, DType, Device, Result, Tensor};

use super::{Format, QMatrix};

enum Weight {
    /// Transposed: [in, out].
    Dense(Tensor),
    /// q8 for `ops::q8_matmul` (CPU, or CUDA with `q8_kernel`): `q` [out, in] U8 (i8 bit patterns),
    /// `scale` [out] F32, on the layer's device.
    Q8 { q: Tensor, scale: Tensor },
    /// q4 on the CPU (dequantized per call).
    Quant(QMatrix),
}

pub struct Linear {
    w: Weight,
    b: Option<Tensor>,
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
    /// int8 for `ops::q8_matmul` on the CPU, and on other devices when `q8_kernel` is set.
    pub fn load(
        map: &mut HashMap<String, Tensor>,
        prefix: &str,
        device: &Device,
        quantize: Option<Format>,
        q8_kernel: bool,
    ) -> Result<Linear> {
        let w = match take_matrix(map, &format!("{prefix}.weight"), quantize)? {
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
            Taken::Dense(dense) => Weight::Dense(dense.t()?.contiguous()?),
        };
        let b = match map.remove(&format!("{prefix}.bias")) {
            Some(b) => Some(b.to_dtype(DType::F32)?),
            None => None,
        };
        Ok(Linear {
            w,
            b,
            device: device.clone(),
        })
    }

    /// `x W^T` without the bias; `x` [rows, in].
    pub fn forward_no_bias(&self, x: &Tensor) -> Result<Tensor> {
        match &self.w {
            Weight::Dense(w_t) => x.matmul(w_t),
            Weight::Q8 { q, scale } => crate::ops::q8_matmul(x, q, scale),
            Weight::Quant(q) => {
                // Row-major dequantization, then W^T as a strided view: no transposing copy.
                let w = Tensor::from_vec(q.dequantize(), (q.rows(), q.cols()), &self.device)?;
                x.matmul(&w.t()?)
            }
        }
    }

    /// `x W^T + b`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.forward_no_bias(x)?;
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.b.as_ref()
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self.w, Weight::Quant(_) | Weight::Q8 { .. })
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

    fn weights(out: usize, inp: usize) -> HashMap<String, Tensor> {
        let w = Tensor::randn(0f32, 0.5, (out, inp), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 0.5, out, &Device::Cpu).unwrap();
        HashMap::from([("l.weight".to_string(), w), ("l.bias".to_string(), b)])
    }

    #[test]
    fn quantized_linear_is_close_to_dense() {
        let x = Tensor::randn(0f32, 1.0, (7, 64), &Device::Cpu).unwrap();
        let w0 = weights(33, 64);
        let dense = Linear::load(&mut w0.clone(), "l", &Device::Cpu, None, false).unwrap();
        let want: Vec<f32> = dense
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (format, tol) in [(Format::Q8, 0.02), (Format::Q4, 0.2)] {
            let q = Linear::load(&mut w0.clone(), "l", &Device::Cpu, Some(format), false).unwrap();
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
