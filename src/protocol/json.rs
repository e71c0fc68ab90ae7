//! JSON <-> `TensorData`: flattening nested arrays into typed vectors, and serialising tensor data
//! without building intermediate `serde_json::Value`s.

use half::{bf16, f16};
use serde::ser::{SerializeSeq, Serializer};
use serde_json::Value;

use super::ProtocolError;
use crate::tensor::{DataType, TensorData};

/// Flattens (possibly nested) JSON arrays into typed data; each element must fit `dt`.
pub fn data_from_json(dt: DataType, v: &Value, name: &str) -> Result<TensorData, ProtocolError> {
    let mut out = TensorData::with_capacity(dt, 0);
    let mut index = 0usize;
    push_value(&mut out, v, name, &mut index)?;
    Ok(out)
}

fn push_value(
    out: &mut TensorData,
    v: &Value,
    name: &str,
    index: &mut usize,
) -> Result<(), ProtocolError> {
    if let Value::Array(items) = v {
        for item in items {
            push_value(out, item, name, index)?;
        }
        return Ok(());
    }
    let bad = |dt: DataType| ProtocolError::Input {
        name: name.into(),
        message: format!("element {index} ({v}) is not a valid {dt} value"),
    };
    macro_rules! int {
        ($vec:expr, $t:ty, $dt:expr) => {{
            let x = v
                .as_i64()
                .and_then(|x| <$t>::try_from(x).ok())
                .or_else(|| v.as_u64().and_then(|x| <$t>::try_from(x).ok()))
                .ok_or_else(|| bad($dt))?;
            $vec.push(x)
        }};
    }
    match out {
        TensorData::Bool(o) => o.push(v.as_bool().ok_or_else(|| bad(DataType::Bool))?),
        TensorData::U8(o) => int!(o, u8, DataType::U8),
        TensorData::U16(o) => int!(o, u16, DataType::U16),
        TensorData::U32(o) => int!(o, u32, DataType::U32),
        TensorData::U64(o) => int!(o, u64, DataType::U64),
        TensorData::I8(o) => int!(o, i8, DataType::I8),
        TensorData::I16(o) => int!(o, i16, DataType::I16),
        TensorData::I32(o) => int!(o, i32, DataType::I32),
        TensorData::I64(o) => int!(o, i64, DataType::I64),
        TensorData::F16(o) => o.push(f16::from_f64(v.as_f64().ok_or_else(|| bad(DataType::F16))?)),
        TensorData::BF16(o) => o.push(bf16::from_f64(
            v.as_f64().ok_or_else(|| bad(DataType::BF16))?,
        )),
        TensorData::F32(o) => o.push(v.as_f64().ok_or_else(|| bad(DataType::F32))? as f32),
        TensorData::F64(o) => o.push(v.as_f64().ok_or_else(|| bad(DataType::F64))?),
        TensorData::Bytes(o) => o.push(
            v.as_str()
                .ok_or_else(|| bad(DataType::Bytes))?
                .as_bytes()
                .to_vec(),
        ),
    }
    *index += 1;
    Ok(())
}

/// Serialises `data[start..end]` as a flat JSON array.
pub struct JsonData<'a> {
    pub data: &'a TensorData,
    pub start: usize,
    pub end: usize,
}

impl<'a> JsonData<'a> {
    pub fn all(data: &'a TensorData) -> Self {
        JsonData {
            data,
            start: 0,
            end: data.len(),
        }
    }
}

fn seq<S: Serializer, T, U: serde::Serialize>(
    s: S,
    items: &[T],
    f: impl Fn(&T) -> U,
) -> Result<S::Ok, S::Error> {
    let mut q = s.serialize_seq(Some(items.len()))?;
    for x in items {
        q.serialize_element(&f(x))?;
    }
    q.end()
}

impl serde::Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (a, b) = (self.start, self.end);
        match self.data {
            TensorData::Bool(v) => seq(s, &v[a..b], |x| *x),
            TensorData::U8(v) => seq(s, &v[a..b], |x| *x),
            TensorData::U16(v) => seq(s, &v[a..b], |x| *x),
            TensorData::U32(v) => seq(s, &v[a..b], |x| *x),
            TensorData::U64(v) => seq(s, &v[a..b], |x| *x),
            TensorData::I8(v) => seq(s, &v[a..b], |x| *x),
            TensorData::I16(v) => seq(s, &v[a..b], |x| *x),
            TensorData::I32(v) => seq(s, &v[a..b], |x| *x),
            TensorData::I64(v) => seq(s, &v[a..b], |x| *x),
            TensorData::F16(v) => seq(s, &v[a..b], |x| x.to_f32()),
            TensorData::BF16(v) => seq(s, &v[a..b], |x| x.to_f32()),
            TensorData::F32(v) => seq(s, &v[a..b], |x| *x),
            TensorData::F64(v) => seq(s, &v[a..b], |x| *x),
            TensorData::Bytes(v) => seq(s, &v[a..b], |x| String::from_utf8_lossy(x).into_owned()),
        }
    }
}

/// `data[start..end]` nested by `dims` (row-major) as a JSON value.
pub fn nested(data: &TensorData, start: usize, dims: &[usize]) -> Value {
    match dims.split_first() {
        None => {
            let v = serde_json::to_value(JsonData {
                data,
                start,
                end: start + 1,
            })
            .expect("tensor data always serialises. This is a bug.");
            match v {
                Value::Array(mut a) => a.pop().unwrap_or(Value::Null),
                other => other,
            }
        }
        Some((&n, rest)) => {
            let stride: usize = rest.iter().product();
            if rest.is_empty() {
                return serde_json::to_value(JsonData {
                    data,
                    start,
                    end: start + n,
                })
                .expect("tensor data always serialises. This is a bug.");
            }
            Value::Array(
                (0..n)
                    .map(|i| nested(data, start + i * stride, rest))
                    .collect(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn data_from_nested_json_flattens() {
        let d = data_from_json(DataType::I32, &json!([[1, 2], [3, 4]]), "x").unwrap();
        assert_eq!(d, TensorData::I32(vec![1, 2, 3, 4]));
    }

    #[test]
    fn data_from_json_out_of_range_names_element() {
        let e = data_from_json(DataType::U8, &json!([1, 300]), "x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "input 'x': element 1 (300) is not a valid UINT8 value"
        );
    }

    #[test]
    fn nested_rebuilds_shape() {
        let d = TensorData::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(
            nested(&d, 0, &[2, 3]),
            json!([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
        );
        assert_eq!(nested(&d, 3, &[3]), json!([4.0, 5.0, 6.0]));
        assert_eq!(nested(&d, 5, &[]), json!(6.0));
    }
}
