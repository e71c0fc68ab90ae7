//! Triton's classification extension: an output requested with `classification` = k is answered
//! with, per batch row, the k largest values of that output as BYTES strings
//! `"value:index"` or `"value:index:label"` (labels from the model's `labels.txt`), largest first,
//! ties by lower index. The raw output values are ranked as they are (no softmax added), as Triton
//! does. Pure code: the doors call it on the finished output.

use super::ProtocolError;
use crate::tensor::{BytesBuilder, Tensor, TensorData};

/// The top `k` classes of every row of `t` (rows: its first dim when `batched`, else one row),
/// as a BYTES tensor of shape `[rows, k']` (`[k']` unbatched) with k' = min(k, classes).
pub fn top_k(
    t: &Tensor,
    k: usize,
    batched: bool,
    labels: Option<&[String]>,
) -> Result<Tensor, ProtocolError> {
    let bad = |message: String| ProtocolError::Field(format!("output '{}': {message}", t.name));
    if k == 0 {
        return Err(bad("classification count must be at least 1".into()));
    }
    let values = as_f64(&t.data).ok_or_else(|| {
        bad(format!(
            "classification needs a numeric output, this one is {}",
            t.data.datatype()
        ))
    })?;
    let rows = if batched {
        t.shape.first().copied().unwrap_or(1)
    } else {
        1
    };
    let classes = values.len().checked_div(rows).unwrap_or(0);
    let k = k.min(classes);
    let mut out = BytesBuilder::with_capacity(rows * k, rows * k * 16);
    for row in values.chunks(classes.max(1)).take(rows) {
        let mut idx: Vec<usize> = (0..row.len()).collect();
        // Largest first; NaN ranks last; equal values keep the lower index first (stable sort).
        idx.sort_by(|&a, &b| {
            row[b]
                .partial_cmp(&row[a])
                .unwrap_or_else(|| row[a].is_nan().cmp(&row[b].is_nan()))
        });
        for &i in idx.iter().take(k) {
            let s = match labels.and_then(|l| l.get(i)) {
                Some(label) => format!("{:.6}:{i}:{label}", row[i]),
                None => format!("{:.6}:{i}", row[i]),
            };
            out.push(s.as_bytes()).map_err(|e| bad(e.to_string()))?;
        }
    }
    let shape = if batched { vec![rows, k] } else { vec![k] };
    Ok(Tensor::new(
        t.name.clone(),
        shape,
        TensorData::Bytes(out.finish()),
    ))
}

fn as_f64(d: &TensorData) -> Option<Vec<f64>> {
    macro_rules! conv {
        ($v:expr) => {
            Some($v.iter().map(|&x| x as f64).collect())
        };
    }
    match d {
        TensorData::F32(v) => conv!(v),
        TensorData::F64(v) => Some(v.clone()),
        TensorData::F16(v) => Some(v.iter().map(|x| x.to_f64()).collect()),
        TensorData::BF16(v) => Some(v.iter().map(|x| x.to_f64()).collect()),
        TensorData::I8(v) => conv!(v),
        TensorData::I16(v) => conv!(v),
        TensorData::I32(v) => conv!(v),
        TensorData::I64(v) => conv!(v),
        TensorData::U8(v) => conv!(v),
        TensorData::U16(v) => conv!(v),
        TensorData::U32(v) => conv!(v),
        TensorData::U64(v) => conv!(v),
        TensorData::Bool(_) | TensorData::Bytes(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(t: &Tensor) -> Vec<String> {
        match &t.data {
            TensorData::Bytes(v) => v
                .iter()
                .map(|b| String::from_utf8(b.to_vec()).unwrap())
                .collect(),
            _ => panic!("not BYTES"),
        }
    }

    #[test]
    fn top_k_ranks_each_row_largest_first_with_labels() {
        let t = Tensor::new(
            "p",
            vec![2, 4],
            TensorData::F32(vec![0.1, 0.5, 0.3, 0.1, 0.7, 0.0, 0.2, 0.1]),
        );
        let labels: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let got = top_k(&t, 2, true, Some(&labels)).unwrap();
        assert_eq!(got.shape, vec![2, 2]);
        assert_eq!(
            strings(&got),
            [
                "0.500000:1:b",
                "0.300000:2:c",
                "0.700000:0:a",
                "0.200000:2:c"
            ]
        );
        let no_labels = top_k(&t, 9, true, None).unwrap();
        assert_eq!(
            no_labels.shape,
            vec![2, 4],
            "k is capped at the class count"
        );
        // ties: the lower index first
        assert_eq!(strings(&no_labels)[2..4], ["0.100000:0", "0.100000:3"]);
    }

    #[test]
    fn top_k_refuses_zero_and_non_numeric_outputs() {
        let t = Tensor::new("p", vec![1, 2], TensorData::F32(vec![0.1, 0.2]));
        assert!(top_k(&t, 0, true, None).is_err());
        let b = Tensor::new(
            "s",
            vec![1],
            TensorData::Bytes([b"x"].into_iter().collect()),
        );
        assert!(top_k(&b, 1, true, None).is_err());
    }
}
