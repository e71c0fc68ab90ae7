//! Typed tensors as they travel between the protocol layer and the models: `DataType`, `TensorData`,
//! named `Tensor`s, row-wise concat/split for batching, and conversion to
//! and from candle. No I/O and no protocol wire types here.

mod data;

pub use data::{
    l2_normalized, BytesBuilder, BytesData, BytesError, DataType, Tensor, TensorData, Texts,
    TextsBuilder,
};

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
            data.extend_from(&t.data)
                .map_err(|what| TensorError::Concat {
                    name: first.name.clone(),
                    what,
                })?;
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
