//! Cache values, pure: a tensor request's outputs (name, datatype, shape, little-endian bytes) or
//! one text's embedding (its token count and the final vector). Values may come back from a shared
//! Redis, so decoding checks every length and answers `None` (served as a miss) on anything odd.

use bytes::Bytes;

use crate::protocol::kserve_v2::{data_from_bytes, data_to_bytes};
use crate::tensor::{DataType, Tensor};

const TENSORS: u8 = 1;
const EMBEDDING: u8 = 2;

fn put_field(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

/// A reader over a value that fails (None) instead of panicking on short input.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn field(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        self.take(n)
    }
}

/// A tensor model's outputs as one value.
pub fn encode_tensors(outputs: &[Tensor]) -> Bytes {
    let mut out = vec![TENSORS];
    out.extend_from_slice(&(outputs.len() as u64).to_le_bytes());
    let mut data = Vec::new();
    for t in outputs {
        put_field(&mut out, t.name.as_bytes());
        put_field(&mut out, t.datatype().as_str().as_bytes());
        out.extend_from_slice(&(t.shape.len() as u64).to_le_bytes());
        t.shape
            .iter()
            .for_each(|&d| out.extend_from_slice(&(d as u64).to_le_bytes()));
        data.clear();
        data_to_bytes(&t.data, &mut data);
        put_field(&mut out, &data);
    }
    Bytes::from(out)
}

/// The outputs `encode_tensors` wrote, or `None` for a value that is not one.
pub fn decode_tensors(v: &[u8]) -> Option<Vec<Tensor>> {
    let mut r = Reader(v);
    if r.take(1)? != [TENSORS] {
        return None;
    }
    let n = r.u64()?;
    let mut out = Vec::new();
    for _ in 0..n {
        let name = std::str::from_utf8(r.field()?).ok()?.to_string();
        let dt = DataType::parse(std::str::from_utf8(r.field()?).ok()?)?;
        let rank = r.u64()?;
        if rank > 16 {
            return None;
        }
        let shape = (0..rank)
            .map(|_| r.u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()?;
        let data = data_from_bytes(dt, r.field()?).ok()?;
        if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))? != data.len() {
            return None;
        }
        out.push(Tensor::new(name, shape, data));
    }
    r.0.is_empty().then_some(out)
}

/// One text's embedding and token count as one value.
pub fn encode_embedding(tokens: usize, vector: &[f32]) -> Bytes {
    let mut out = Vec::with_capacity(9 + 4 * vector.len());
    out.push(EMBEDDING);
    out.extend_from_slice(&(tokens as u32).to_le_bytes());
    out.extend_from_slice(&(vector.len() as u32).to_le_bytes());
    vector
        .iter()
        .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
    Bytes::from(out)
}

/// (tokens, vector) as `encode_embedding` wrote them, or `None`.
pub fn decode_embedding(v: &[u8]) -> Option<(usize, Vec<f32>)> {
    let mut r = Reader(v);
    if r.take(1)? != [EMBEDDING] {
        return None;
    }
    let tokens = r.u32()? as usize;
    let dim = r.u32()? as usize;
    let data = r.take(dim.checked_mul(4)?)?;
    if !r.0.is_empty() {
        return None;
    }
    let vector = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some((tokens, vector))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::TensorData;

    #[test]
    fn tensors_round_trip_bit_exact() {
        let t = vec![
            Tensor::new(
                "p",
                vec![2, 2],
                TensorData::F32(vec![0.1, -0.0, f32::MIN_POSITIVE, 1e30]),
            ),
            Tensor::new("s", vec![1], TensorData::Bytes(vec![b"a\0b".to_vec()])),
            Tensor::new("i", vec![3], TensorData::I64(vec![-1, 0, i64::MAX])),
        ];
        let v = encode_tensors(&t);
        assert_eq!(decode_tensors(&v).unwrap(), t);
    }

    #[test]
    fn embedding_round_trips_and_garbage_is_none() {
        let v = encode_embedding(7, &[0.5, -0.25, 1e-9]);
        assert_eq!(decode_embedding(&v), Some((7, vec![0.5, -0.25, 1e-9])));
        assert_eq!(
            decode_tensors(&v),
            None,
            "an embedding is not a tensor value"
        );
        for cut in 0..v.len() {
            assert_eq!(decode_embedding(&v[..cut]), None, "cut at {cut}");
        }
        let mut long = v.to_vec();
        long.push(0);
        assert_eq!(decode_embedding(&long), None);
        let t = encode_tensors(&[Tensor::new("x", vec![2], TensorData::F32(vec![1.0, 2.0]))]);
        for cut in 0..t.len() {
            assert_eq!(decode_tensors(&t[..cut]), None, "cut at {cut}");
        }
        // A shape that does not match the data.
        let bad = encode_tensors(&[Tensor::new("x", vec![3], TensorData::F32(vec![1.0, 2.0]))]);
        assert_eq!(decode_tensors(&bad), None);
    }
}
