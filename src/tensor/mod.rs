//! Typed tensors as they travel between the protocol layer and the models: `DataType`, `TensorData`,
//! named `Tensor`s, row-wise concat/split for batching, and conversion to
//! and from candle. No I/O and no protocol wire types here.

use half::{bf16, f16};

/// Element type, with Triton's / KServe v2's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    BF16,
    F32,
    F64,
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::U8,
        DataType::U16,
        DataType::U32,
        DataType::U64,
        DataType::I8,
        DataType::I16,
        DataType::I32,
        DataType::I64,
        DataType::F16,
        DataType::BF16,
        DataType::F32,
        DataType::F64,
        DataType::Bytes,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::U8 => "UINT8",
            DataType::U16 => "UINT16",
            DataType::U32 => "UINT32",
            DataType::U64 => "UINT64",
            DataType::I8 => "INT8",
            DataType::I16 => "INT16",
            DataType::I32 => "INT32",
            DataType::I64 => "INT64",
            DataType::F16 => "FP16",
            DataType::BF16 => "BF16",
            DataType::F32 => "FP32",
            DataType::F64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    pub fn parse(s: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// Size of one element in the binary tensor extension; `None` for BYTES (length-prefixed).
    pub fn byte_size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::U8 | DataType::I8 => 1,
            DataType::U16 | DataType::I16 | DataType::F16 | DataType::BF16 => 2,
            DataType::U32 | DataType::I32 | DataType::F32 => 4,
            DataType::U64 | DataType::I64 | DataType::F64 => 8,
            DataType::Bytes => return None,
        })
    }

    pub fn is_float(self) -> bool {
        matches!(
            self,
            DataType::F16 | DataType::BF16 | DataType::F32 | DataType::F64
        )
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Flat, row-major tensor contents.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<Vec<u8>>),
}

/// Applies `$body` to the inner Vec of every variant, binding it as `$v`.
macro_rules! each_variant {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::Bool($v) => $body,
            TensorData::U8($v) => $body,
            TensorData::U16($v) => $body,
            TensorData::U32($v) => $body,
            TensorData::U64($v) => $body,
            TensorData::I8($v) => $body,
            TensorData::I16($v) => $body,
            TensorData::I32($v) => $body,
            TensorData::I64($v) => $body,
            TensorData::F16($v) => $body,
            TensorData::BF16($v) => $body,
            TensorData::F32($v) => $body,
            TensorData::F64($v) => $body,
            TensorData::Bytes($v) => $body,
        }
    };
}

/// Same as `each_variant!`, but rebuilds the same variant from the expression's result.
macro_rules! map_variant {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::Bool($v) => TensorData::Bool($body),
            TensorData::U8($v) => TensorData::U8($body),
            TensorData::U16($v) => TensorData::U16($body),
            TensorData::U32($v) => TensorData::U32($body),
            TensorData::U64($v) => TensorData::U64($body),
            TensorData::I8($v) => TensorData::I8($body),
            TensorData::I16($v) => TensorData::I16($body),
            TensorData::I32($v) => TensorData::I32($body),
            TensorData::I64($v) => TensorData::I64($body),
            TensorData::F16($v) => TensorData::F16($body),
            TensorData::BF16($v) => TensorData::BF16($body),
            TensorData::F32($v) => TensorData::F32($body),
            TensorData::F64($v) => TensorData::F64($body),
            TensorData::Bytes($v) => TensorData::Bytes($body),
        }
    };
}

impl TensorData {
    pub fn len(&self) -> usize {
        each_variant!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::U8(_) => DataType::U8,
            TensorData::U16(_) => DataType::U16,
            TensorData::U32(_) => DataType::U32,
            TensorData::U64(_) => DataType::U64,
            TensorData::I8(_) => DataType::I8,
            TensorData::I16(_) => DataType::I16,
            TensorData::I32(_) => DataType::I32,
            TensorData::I64(_) => DataType::I64,
            TensorData::F16(_) => DataType::F16,
            TensorData::BF16(_) => DataType::BF16,
            TensorData::F32(_) => DataType::F32,
            TensorData::F64(_) => DataType::F64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    /// An empty vector of the given type with room for `cap` elements.
    pub fn with_capacity(dt: DataType, cap: usize) -> TensorData {
        match dt {
            DataType::Bool => TensorData::Bool(Vec::with_capacity(cap)),
            DataType::U8 => TensorData::U8(Vec::with_capacity(cap)),
            DataType::U16 => TensorData::U16(Vec::with_capacity(cap)),
            DataType::U32 => TensorData::U32(Vec::with_capacity(cap)),
            DataType::U64 => TensorData::U64(Vec::with_capacity(cap)),
            DataType::I8 => TensorData::I8(Vec::with_capacity(cap)),
            DataType::I16 => TensorData::I16(Vec::with_capacity(cap)),
            DataType::I32 => TensorData::I32(Vec::with_capacity(cap)),
            DataType::I64 => TensorData::I64(Vec::with_capacity(cap)),
            DataType::F16 => TensorData::F16(Vec::with_capacity(cap)),
            DataType::BF16 => TensorData::BF16(Vec::with_capacity(cap)),
            DataType::F32 => TensorData::F32(Vec::with_capacity(cap)),
            DataType::F64 => TensorData::F64(Vec::with_capacity(cap)),
            DataType::Bytes => TensorData::Bytes(Vec::with_capacity(cap)),
        }
    }

    /// Index of the first NaN or infinite element, if any (always `None` for non-float types).
    pub fn first_non_finite(&self) -> Option<usize> {
        match self {
            TensorData::F16(v) => v.iter().position(|x| !x.is_finite()),
            TensorData::BF16(v) => v.iter().position(|x| !x.is_finite()),
            TensorData::F32(v) => v.iter().position(|x| !x.is_finite()),
            TensorData::F64(v) => v.iter().position(|x| !x.is_finite()),
            _ => None,
        }
    }

    /// Elements `[start, end)`.
    pub fn slice(&self, start: usize, end: usize) -> TensorData {
        map_variant!(self, v => v[start..end].to_vec())
    }

    /// Appends `other` (same type) to `self`; returns false on a type mismatch.
    pub fn extend_from(&mut self, other: &TensorData) -> bool {
        macro_rules! ext {
            ($($var:ident),*) => {
                match (self, other) {
                    $((TensorData::$var(a), TensorData::$var(b)) => { a.extend_from_slice(b); true })*
                    _ => false,
                }
            };
        }
        ext!(Bool, U8, U16, U32, U64, I8, I16, I32, I64, F16, BF16, F32, F64, Bytes)
    }
}

/// A named tensor with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    #[error("tensor '{name}': cannot concatenate {what}")]
    Concat { name: String, what: String },
    #[error("tensor '{name}': {rows} rows cannot be split into {parts} parts of {total} rows")]
    Split {
        name: String,
        rows: usize,
        parts: usize,
        total: usize,
    },
    #[error("tensor '{name}': datatype {dtype} has no candle equivalent")]
    Unsupported { name: String, dtype: DataType },
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

impl Tensor {
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: TensorData) -> Tensor {
        Tensor {
            name: name.into(),
            shape,
            data,
        }
    }

    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }

    /// Size of the leading (batch) dimension; 1 for a scalar.
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Concatenates tensors along the first dimension (their other dims and types must agree).
    pub fn concat_rows(parts: &[&Tensor]) -> Result<Tensor, TensorError> {
        let first = parts.first().ok_or_else(|| TensorError::Concat {
            name: String::new(),
            what: "an empty list".into(),
        })?;
        if parts.len() == 1 {
            return Ok((*first).clone());
        }
        let total: usize = parts.iter().map(|t| t.data.len()).sum();
        let mut data = TensorData::with_capacity(first.datatype(), total);
        let mut rows = 0;
        for t in parts {
            if t.shape.get(1..) != first.shape.get(1..) || t.shape.is_empty() {
                return Err(TensorError::Concat {
                    name: first.name.clone(),
                    what: format!("shape {:?} with {:?}", t.shape, first.shape),
                });
            }
            if !data.extend_from(&t.data) {
                return Err(TensorError::Concat {
                    name: first.name.clone(),
                    what: format!("{} with {}", t.datatype(), first.datatype()),
                });
            }
            rows += t.rows();
        }
        let mut shape = first.shape.clone();
        shape[0] = rows;
        Ok(Tensor::new(first.name.clone(), shape, data))
    }

    /// Splits along the first dimension into consecutive pieces of `rows[i]` rows each.
    pub fn split_rows(&self, rows: &[usize]) -> Result<Vec<Tensor>, TensorError> {
        let total: usize = rows.iter().sum();
        if self.shape.is_empty() || total != self.rows() {
            return Err(TensorError::Split {
                name: self.name.clone(),
                rows: self.rows(),
                parts: rows.len(),
                total,
            });
        }
        let row_len: usize = self.shape[1..].iter().product();
        let mut start = 0;
        Ok(rows
            .iter()
            .map(|&r| {
                let mut shape = self.shape.clone();
                shape[0] = r;
                let end = start + r * row_len;
                let t = Tensor::new(self.name.clone(), shape, self.data.slice(start, end));
                start = end;
                t
            })
            .collect())
    }

    /// Converts to a candle tensor on `device` (numeric types candle supports).
    pub fn to_candle(
        &self,
        device: &candle_core::Device,
    ) -> Result<candle_core::Tensor, TensorError> {
        use candle_core::Tensor as CT;
        let shape = self.shape.as_slice();
        Ok(match &self.data {
            TensorData::F32(v) => CT::from_slice(v, shape, device)?,
            TensorData::F16(v) => CT::from_slice(v, shape, device)?,
            TensorData::BF16(v) => CT::from_slice(v, shape, device)?,
            TensorData::F64(v) => CT::from_slice(v, shape, device)?,
            TensorData::U8(v) => CT::from_slice(v, shape, device)?,
            TensorData::U32(v) => CT::from_slice(v, shape, device)?,
            TensorData::I64(v) => CT::from_slice(v, shape, device)?,
            other => {
                return Err(TensorError::Unsupported {
                    name: self.name.clone(),
                    dtype: other.datatype(),
                })
            }
        })
    }

    /// Copies a candle tensor back to the host as a named tensor.
    pub fn from_candle(name: &str, t: &candle_core::Tensor) -> Result<Tensor, TensorError> {
        use candle_core::DType;
        let shape = t.dims().to_vec();
        let flat = t.flatten_all()?;
        let data = match t.dtype() {
            DType::F32 => TensorData::F32(flat.to_vec1()?),
            DType::F16 => TensorData::F16(flat.to_vec1()?),
            DType::BF16 => TensorData::BF16(flat.to_vec1()?),
            DType::F64 => TensorData::F64(flat.to_vec1()?),
            DType::U8 => TensorData::U8(flat.to_vec1()?),
            DType::U32 => TensorData::U32(flat.to_vec1()?),
            DType::I64 => TensorData::I64(flat.to_vec1()?),
            other => {
                return Err(TensorError::Concat {
                    name: name.into(),
                    what: format!("candle dtype {other:?}"),
                })
            }
        };
        Ok(Tensor::new(name, shape, data))
    }
}

/// `v / |v|` (unchanged when |v| is 0).
pub fn l2_normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_then_split_rows_round_trips() {
        let a = Tensor::new("x", vec![1, 3], TensorData::F32(vec![1.0, 2.0, 3.0]));
        let b = Tensor::new(
            "x",
            vec![2, 3],
            TensorData::F32(vec![4.0, 5.0, 6.0, 7.0, 8.0, 9.0]),
        );
        let c = Tensor::concat_rows(&[&a, &b]).unwrap();
        assert_eq!(c.shape, vec![3, 3]);
        let parts = c.split_rows(&[1, 2]).unwrap();
        assert_eq!(parts, vec![a, b]);
    }

    #[test]
    fn concat_rows_mismatched_inner_dims_is_error() {
        let a = Tensor::new("x", vec![1, 2], TensorData::I32(vec![1, 2]));
        let b = Tensor::new("x", vec![1, 3], TensorData::I32(vec![1, 2, 3]));
        assert!(Tensor::concat_rows(&[&a, &b]).is_err());
    }

    #[test]
    fn datatype_names_round_trip() {
        for dt in DataType::ALL {
            assert_eq!(DataType::parse(dt.as_str()), Some(dt));
        }
        assert_eq!(DataType::parse("FLOAT"), None);
    }

    #[test]
    fn first_non_finite_finds_nan_and_inf() {
        assert_eq!(
            TensorData::F32(vec![1.0, f32::NAN]).first_non_finite(),
            Some(1)
        );
        assert_eq!(
            TensorData::F64(vec![f64::INFINITY]).first_non_finite(),
            Some(0)
        );
        assert_eq!(TensorData::F32(vec![1.0, 2.0]).first_non_finite(), None);
    }
}
