//! Cache values, pure: a tensor request's outputs (name, datatype, shape, little-endian bytes) or
//! one text's embedding (its token count, the final vector and that vector as JSON text). Values may come back from a shared
//! Redis, so decoding checks every length and answers `None` (served as a miss) on anything odd.

use bytes::Bytes;

use crate::protocol::json::write_f32_array;
use crate::protocol::kserve_v2::{data_from_bytes, data_to_bytes};
use crate::tensor::{DataType, Tensor};

const TENSORS: u8 = 1;
/// An embedding without its JSON text (written before the text was added; still read).
const EMBEDDING: u8 = 2;
const EMBEDDING_JSON: u8 = 3;

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

/// One text's embedding as one value: its token count, the final vector (little-endian f32) and
/// the vector as JSON array text (`protocol::json::write_f32_array`), so that a hit answered in
/// JSON (TEI) copies the text instead of formatting hundreds of floats. Returns the value and
/// the JSON text (a view into it).
pub fn encode_embedding(tokens: usize, vector: &[f32]) -> (Bytes, Bytes) {
    let mut out = Vec::with_capacity(9 + 4 * vector.len() + 2 + 16 * vector.len());
    out.push(EMBEDDING_JSON);
    out.extend_from_slice(&(tokens as u32).to_le_bytes());
    out.extend_from_slice(&(vector.len() as u32).to_le_bytes());
    vector
        .iter()
        .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
    let json_at = out.len();
    write_f32_array(&mut out, vector);
    let value = Bytes::from(out);
    let json = value.slice(json_at..);
    (value, json)
}

/// A cached embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    pub tokens: usize,
    pub vector: Vec<f32>,
    /// The vector as a JSON array, a view into the value; `None` in a value written without it
    /// (an older Ferrite sharing the Redis level).
    pub json: Option<Bytes>,
}

/// The embedding `encode_embedding` wrote (or the older value without the JSON text), or `None`.
pub fn decode_embedding(v: &Bytes) -> Option<Embedding> {
    let mut r = Reader(v);
    let with_json = match r.take(1)? {
        [EMBEDDING] => false,
        [EMBEDDING_JSON] => true,
        _ => return None,
    };
    let tokens = r.u32()? as usize;
    let dim = r.u32()? as usize;
    let data = r.take(dim.checked_mul(4)?)?;
    let json = match (with_json, r.0.is_empty()) {
        (false, true) => None,
        (true, false) if json_array_of(r.0, dim) => Some(v.slice(v.len() - r.0.len()..)),
        _ => return None,
    };
    let vector = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some(Embedding {
        tokens,
        vector,
        json,
    })
}

/// The bytes a JSON array of numbers (or `null`s) is written with, apart from its brackets.
const NUMBER_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let s = b"0123456789.-+eEnul,";
    let mut i = 0;
    while i < s.len() {
        t[s[i] as usize] = true;
        i += 1;
    }
    t
};

/// Whether `text` can be sent as a JSON array of `dim` numbers: brackets, `dim - 1` commas and
/// only the characters of numbers and `null` (a value from a shared Redis is checked before its
/// text goes into a response; it cannot open a string or an object). Runs on every hit, so it
/// has no branch per byte (branches on digits mispredict).
fn json_array_of(text: &[u8], dim: usize) -> bool {
    let [b'[', inner @ .., b']'] = text else {
        return false;
    };
    let allowed = inner
        .iter()
        .fold(true, |ok, &c| ok & NUMBER_BYTES[usize::from(c)]);
    let commas = inner.iter().filter(|&&c| c == b',').count();
    allowed
        && match dim {
            0 => inner.is_empty(),
            d => commas == d - 1 && !inner.is_empty(),
        }
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
            Tensor::new(
                "s",
                vec![1],
                TensorData::Bytes([b"a\0b"].into_iter().collect()),
            ),
            Tensor::new("i", vec![3], TensorData::I64(vec![-1, 0, i64::MAX])),
        ];
        let v = encode_tensors(&t);
        assert_eq!(decode_tensors(&v).unwrap(), t);
    }

    #[test]
    fn embedding_round_trips_and_garbage_is_none() {
        let vector = vec![0.5, -0.25, 1e-9, f32::NAN];
        let (v, json) = encode_embedding(7, &vector);
        let e = decode_embedding(&v).unwrap();
        assert_eq!(e.json.as_ref(), Some(&json));
        assert_eq!((e.tokens, e.vector.len()), (7, 4));
        assert_eq!(e.vector[..3], vector[..3]);
        assert!(e.vector[3].is_nan());
        assert_eq!(
            e.json.as_deref(),
            Some(&serde_json::to_vec(&vector).unwrap()[..]),
            "the JSON text is serde_json's"
        );
        assert_eq!(
            decode_tensors(&v),
            None,
            "an embedding is not a tensor value"
        );
        for cut in 0..v.len() {
            assert_eq!(decode_embedding(&v.slice(..cut)), None, "cut at {cut}");
        }
        let mut long = v.to_vec();
        long.push(b' ');
        assert_eq!(decode_embedding(&Bytes::from(long)), None);
        let t = encode_tensors(&[Tensor::new("x", vec![2], TensorData::F32(vec![1.0, 2.0]))]);
        for cut in 0..t.len() {
            assert_eq!(decode_tensors(&t[..cut]), None, "cut at {cut}");
        }
        // A shape that does not match the data.
        let bad = encode_tensors(&[Tensor::new("x", vec![3], TensorData::F32(vec![1.0, 2.0]))]);
        assert_eq!(decode_tensors(&bad), None);
    }

    #[test]
    fn embedding_without_json_text_still_reads() {
        // The value an older Ferrite wrote into a shared Redis: tokens, dim, floats.
        let mut old = vec![EMBEDDING];
        old.extend_from_slice(&3u32.to_le_bytes());
        old.extend_from_slice(&2u32.to_le_bytes());
        [1.5f32, -2.0]
            .iter()
            .for_each(|x| old.extend_from_slice(&x.to_le_bytes()));
        let e = decode_embedding(&Bytes::from(old)).unwrap();
        assert_eq!((e.tokens, e.vector, e.json), (3, vec![1.5, -2.0], None));
    }

    #[test]
    fn embedding_json_text_that_is_not_an_array_of_dim_numbers_is_none() {
        let value = |json: &[u8]| {
            let mut v = vec![EMBEDDING_JSON];
            v.extend_from_slice(&0u32.to_le_bytes());
            v.extend_from_slice(&2u32.to_le_bytes());
            [1.0f32, 2.0]
                .iter()
                .for_each(|x| v.extend_from_slice(&x.to_le_bytes()));
            v.extend_from_slice(json);
            Bytes::from(v)
        };
        assert!(decode_embedding(&value(b"[1.0,2.0]")).is_some());
        assert!(decode_embedding(&value(b"[null,-2e-3]")).is_some());
        for bad in [
            &b"[1.0]"[..],
            b"[1.0,2.0,3.0]",
            b"1.0,2.0",
            b"[1.0,\"x\"]",
            b"[1.0,{}]",
            b"[]",
        ] {
            assert_eq!(decode_embedding(&value(bad)), None, "{bad:?}");
        }
        assert!(json_array_of(b"[]", 0) && !json_array_of(b"[1]", 0));
    }
}
