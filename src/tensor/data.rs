//! The element types and named tensors themselves (`DataType`, `TensorData`, `Tensor`), with no
//! candle in them: the protocol layer builds on these alone (the fuzz crate, `fuzz/`, compiles this
//! file with the decoders and nothing of the server).

use half::{bf16, f16};

// A path relative to this file, so that the fuzz crate, which compiles this file as its `tensor`
// module, finds it too.
#[path = "packed.rs"]
mod packed;

pub use packed::{BytesBuilder, BytesData, BytesError, Texts, TextsBuilder};

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
    /// One buffer for all elements (`BytesData`), not one allocation each.
    Bytes(BytesData),
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

/// Same as `each_variant!`, but rebuilds the same variant from the expression's result; BYTES
/// (`$b`) has its own expression, its data not being a `Vec`.
macro_rules! map_variant {
    ($data:expr, $v:ident => $body:expr, $b:ident => $bytes:expr) => {
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
            TensorData::Bytes($b) => TensorData::Bytes($bytes),
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
            // Packed BYTES are built by `BytesBuilder`; concatenation sizes its own buffer.
            DataType::Bytes => TensorData::Bytes(BytesData::new()),
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

    /// Elements `[start, end)` (BYTES: sharing the buffer).
    pub fn slice(&self, start: usize, end: usize) -> TensorData {
        map_variant!(self, v => v[start..end].to_vec(), b => b.slice(start, end))
    }

    /// Appends `other` (same type) to `self`. The error says what could not be concatenated: a
    /// type mismatch, or BYTES data that would pass its 4 GiB bound (`self` is then unchanged).
    pub fn extend_from(&mut self, other: &TensorData) -> Result<(), String> {
        macro_rules! ext {
            ($($var:ident),*) => {
                match (self, other) {
                    $((TensorData::$var(a), TensorData::$var(b)) => a.extend_from_slice(b),)*
                    (TensorData::Bytes(a), TensorData::Bytes(b)) => {
                        a.extend_from(b).map_err(|e| format!("its parts: {e}"))?
                    }
                    (a, b) => return Err(format!("{} with {}", b.datatype(), a.datatype())),
                }
            };
        }
        ext!(Bool, U8, U16, U32, U64, I8, I16, I32, I64, F16, BF16, F32, F64);
        Ok(())
    }
}

/// A named tensor with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
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
}

/// `v / |v|` (unchanged when |v| is 0).
pub fn l2_normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}
