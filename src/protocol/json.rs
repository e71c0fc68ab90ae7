//! JSON <-> `TensorData`: flattening nested arrays into typed vectors, and serialising tensor data
//! without building intermediate `serde_json::Value`s.

use half::{bf16, f16};
use serde::ser::{SerializeSeq, Serializer};
use serde_json::Value;

use super::ProtocolError;
use crate::tensor::{BytesBuilder, BytesData, BytesError, DataType, TensorData};

/// An element type that JSON numbers and booleans decode into (the checks `data_from_json` makes
/// on a tree).
trait Elem: Sized {
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
}

macro_rules! int_elem {
    ($($t:ty),*) => {$(
        impl Elem for $t {
            fn from_i64(x: i64) -> Option<Self> { <$t>::try_from(x).ok() }
            fn from_u64(x: u64) -> Option<Self> { <$t>::try_from(x).ok() }
        }
    )*};
}
int_elem!(u8, u16, u32, u64, i8, i16, i32, i64);

macro_rules! float_elem {
    ($($t:ty => $conv:expr),*) => {$(
        impl Elem for $t {
            fn from_i64(x: i64) -> Option<Self> { Some($conv(x as f64)) }
            fn from_u64(x: u64) -> Option<Self> { Some($conv(x as f64)) }
            fn from_f64(x: f64) -> Option<Self> { Some($conv(x)) }
        }
    )*};
}
float_elem!(f32 => |x: f64| x as f32, f64 => |x: f64| x, f16 => f16::from_f64, bf16 => bf16::from_f64);

impl Elem for bool {
    fn from_bool(x: bool) -> Option<Self> {
        Some(x)
    }
}

/// A JSON scalar as `Flat` meets it; shown as the error names it.
#[derive(Clone, Copy)]
enum Scalar<'s> {
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
    Str(&'s str),
    Null,
    Object,
}

impl std::fmt::Display for Scalar<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::I64(v) => write!(f, "{v}"),
            Scalar::U64(v) => write!(f, "{v}"),
            Scalar::F64(v) => write!(f, "{v}"),
            Scalar::Bool(v) => write!(f, "{v}"),
            Scalar::Str(v) => write!(f, "{v:?}"),
            Scalar::Null => f.write_str("null"),
            Scalar::Object => f.write_str("an object"),
        }
    }
}

/// Why a sink did not take a scalar.
enum Refused {
    /// Not a value of the sink's type (checked first: the error names the element).
    Invalid,
    /// A valid value past the shape's count.
    Full,
    /// BYTES past their 4 GiB bound.
    TooLarge(BytesError),
}

/// Where `Flat` puts what it reads: a typed vector, or BYTES packed into one buffer (strings only).
trait Sink {
    fn count(&self) -> usize;
    /// Takes `v` when it is a valid value and `room` says the shape holds another element.
    fn put(&mut self, v: Scalar, room: bool) -> Result<(), Refused>;
}

impl<T: Elem> Sink for Vec<T> {
    fn count(&self) -> usize {
        self.len()
    }

    fn put(&mut self, v: Scalar, room: bool) -> Result<(), Refused> {
        let x = match v {
            Scalar::I64(x) => T::from_i64(x),
            Scalar::U64(x) => T::from_u64(x),
            Scalar::F64(x) => T::from_f64(x),
            Scalar::Bool(x) => T::from_bool(x),
            Scalar::Str(_) | Scalar::Null | Scalar::Object => None,
        }
        .ok_or(Refused::Invalid)?;
        if !room {
            return Err(Refused::Full);
        }
        self.push(x);
        Ok(())
    }
}

impl Sink for BytesBuilder {
    fn count(&self) -> usize {
        self.len()
    }

    fn put(&mut self, v: Scalar, room: bool) -> Result<(), Refused> {
        let Scalar::Str(s) = v else {
            return Err(Refused::Invalid);
        };
        if !room {
            return Err(Refused::Full);
        }
        self.push(s.as_bytes()).map_err(Refused::TooLarge)
    }
}

/// A serde seed that pushes every scalar of a (possibly nested) JSON array onto `out`, refusing
/// more than `max` elements: no tree, no per-element allocation but the sink's own.
struct Flat<'a, S> {
    out: &'a mut S,
    max: usize,
    dt: DataType,
}

impl<S: Sink> Flat<'_, S> {
    fn push<E: serde::de::Error>(self, v: Scalar) -> Result<(), E> {
        let index = self.out.count();
        self.out.put(v, index < self.max).map_err(|r| match r {
            Refused::Invalid => E::custom(format!(
                "element {index} ({v}) is not a valid {} value",
                self.dt
            )),
            Refused::Full => E::custom(format!(
                "more than the {} elements its shape holds",
                self.max
            )),
            Refused::TooLarge(e) => E::custom(e),
        })
    }
}

impl<'de, S: Sink> serde::de::DeserializeSeed<'de> for Flat<'_, S> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, S: Sink> serde::de::Visitor<'de> for Flat<'_, S> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{} values, in arrays nested to any depth", self.dt)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (out, max, dt) = (self.out, self.max, self.dt);
        while seq
            .next_element_seed(Flat {
                out: &mut *out,
                max,
                dt,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.push(Scalar::I64(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.push(Scalar::U64(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.push(Scalar::F64(v))
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.push(Scalar::Bool(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.push(Scalar::Str(v))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.push(Scalar::Null)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.push(Scalar::Object)
    }
}

/// Decodes the raw JSON text of a tensor's `data` (a flat or nested array, or a lone scalar) into
/// typed data in one pass, without a `Value` tree: memory is the typed vector (reserved up to what
/// the text can hold), and more than `max` elements (the shape's count) is refused as it is read.
pub fn data_from_raw_json(
    dt: DataType,
    raw: &str,
    max: usize,
    name: &str,
) -> Result<TensorData, ProtocolError> {
    // Every JSON element takes at least two characters ("0,"), a string three (`"",`): a hostile
    // shape cannot make this reserve more than the text could ever fill.
    let shortest = if dt == DataType::Bytes { 3 } else { 2 };
    let reserve = max.min(raw.len() / shortest + 1);
    fn run<S: Sink>(
        mut out: S,
        raw: &str,
        dt: DataType,
        max: usize,
        name: &str,
    ) -> Result<S, ProtocolError> {
        use serde::de::DeserializeSeed;
        let mut de = serde_json::Deserializer::from_str(raw);
        Flat {
            out: &mut out,
            max,
            dt,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| ProtocolError::Input {
            name: name.into(),
            message: format!("malformed data: {e}"),
        })?;
        Ok(out)
    }
    macro_rules! typed {
        ($var:ident) => {
            TensorData::$var(run(Vec::with_capacity(reserve), raw, dt, max, name)?)
        };
    }
    Ok(match dt {
        DataType::Bool => typed!(Bool),
        DataType::U8 => typed!(U8),
        DataType::U16 => typed!(U16),
        DataType::U32 => typed!(U32),
        DataType::U64 => typed!(U64),
        DataType::I8 => typed!(I8),
        DataType::I16 => typed!(I16),
        DataType::I32 => typed!(I32),
        DataType::I64 => typed!(I64),
        DataType::F16 => typed!(F16),
        DataType::BF16 => typed!(BF16),
        DataType::F32 => typed!(F32),
        DataType::F64 => typed!(F64),
        // The strings' bytes are at most the text less two quotes each: exact room when the
        // shape's count is honest, growth (never a wrong answer) when it is not.
        DataType::Bytes => {
            let bytes = raw.len().saturating_sub(2 * reserve);
            let out = BytesBuilder::with_capacity(reserve, bytes);
            TensorData::Bytes(run(out, raw, dt, max, name)?.finish())
        }
    })
}

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
        // The tree path is the reference the one-pass decoder is tested against: one element at
        // a time is fine here.
        TensorData::Bytes(o) => {
            let s = v.as_str().ok_or_else(|| bad(DataType::Bytes))?;
            o.extend_from(&std::iter::once(s).collect::<BytesData>())
                .map_err(|e| ProtocolError::Input {
                    name: name.into(),
                    message: e.to_string(),
                })?
        }
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
            TensorData::Bytes(v) => {
                let mut q = s.serialize_seq(Some(b - a))?;
                for i in a..b {
                    q.serialize_element(&String::from_utf8_lossy(&v[i]))?;
                }
                q.end()
            }
        }
    }
}

/// Appends `v` as a JSON array, byte for byte what `serde_json` writes for a `[f32]` (the same
/// formatter, `zmij`; a NaN or an infinity as `null`), without serde's per-element writer calls:
/// the embedding doors write 384 or more floats per vector.
pub fn write_f32_array(out: &mut Vec<u8>, v: &[f32]) {
    // The longest f32 zmij writes is 15 bytes ("-1.1754944e-38"), plus a comma.
    out.reserve(2 + 16 * v.len());
    out.push(b'[');
    let mut buf = zmij::Buffer::new();
    for (i, &x) in v.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if x.is_finite() {
            out.extend_from_slice(buf.format_finite(x).as_bytes());
        } else {
            out.extend_from_slice(b"null");
        }
    }
    out.push(b']');
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
    fn write_f32_array_is_serde_json_byte_for_byte() {
        let mut cases: Vec<Vec<f32>> = vec![
            vec![],
            vec![0.0],
            vec![
                -0.0,
                1.0,
                -1.5,
                0.1,
                1e-9,
                1e30,
                -3.4028235e38,
                f32::MIN_POSITIVE,
            ],
            vec![
                1e-45,
                f32::EPSILON,
                123456.79,
                16777216.0,
                0.33333334,
                -2.5e-7,
            ],
            vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 2.0],
        ];
        // Seeded random bit patterns (every exponent, subnormals, NaNs) and unit-range values.
        let mut x = 0x9e37_79b9_u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        cases.push((0..4096).map(|_| f32::from_bits(next())).collect());
        cases.push(
            (0..384)
                .map(|_| next() as f32 / u32::MAX as f32 - 0.5)
                .collect(),
        );
        for v in cases {
            let mut out = b"x".to_vec();
            write_f32_array(&mut out, &v);
            assert_eq!(
                std::str::from_utf8(&out[1..]).unwrap(),
                serde_json::to_string(&v).unwrap()
            );
        }
    }

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

    /// The one-pass decoder agrees with the tree decoder on fresh random nested inputs of every
    /// datatype, including the ones without a direct serde path.
    #[test]
    fn one_pass_decoder_matches_the_tree_decoder_on_random_nested_data() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
        let types = [
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
        for dt in types {
            let (rows, cols) = (rng.random_range(1..5usize), rng.random_range(1..7usize));
            let scalar = |rng: &mut rand::rngs::StdRng| -> Value {
                match dt {
                    DataType::Bool => json!(rng.random::<bool>()),
                    DataType::Bytes => json!(format!("t{}", rng.random::<u16>())),
                    DataType::F16 | DataType::BF16 | DataType::F32 | DataType::F64 => {
                        json!(rng.random_range(-100.0..100.0f64))
                    }
                    DataType::I8 | DataType::I16 | DataType::I32 | DataType::I64 => {
                        json!(rng.random_range(-100..100i64))
                    }
                    _ => json!(rng.random_range(0..200u64)),
                }
            };
            let v = Value::Array(
                (0..rows)
                    .map(|_| Value::Array((0..cols).map(|_| scalar(&mut rng)).collect()))
                    .collect(),
            );
            let text = v.to_string();
            // The tree from the same text (serde_json's float parsing is not exactly round-trip).
            let tree: Value = serde_json::from_str(&text).unwrap();
            let want = data_from_json(dt, &tree, "x").unwrap();
            let got = data_from_raw_json(dt, &text, rows * cols, "x").unwrap();
            assert_eq!(got, want, "{dt}: {text}");
        }
    }

    #[test]
    fn one_pass_decoder_refuses_excess_elements_and_bad_values_naming_them() {
        let e = data_from_raw_json(DataType::I8, "[[1, 2], [3, 4]]", 3, "x").unwrap_err();
        assert!(
            e.to_string()
                .contains("more than the 3 elements its shape holds"),
            "{e}"
        );
        let e = data_from_raw_json(DataType::U16, "[[1], [70000]]", 9, "x").unwrap_err();
        assert!(
            e.to_string()
                .contains("element 1 (70000) is not a valid UINT16 value"),
            "{e}"
        );
        for bad in ["[1, null]", "[1, {}]", "[1, \"2\"]", "[1, 2", "[1] 2"] {
            assert!(
                data_from_raw_json(DataType::F32, bad, 9, "x").is_err(),
                "{bad}"
            );
        }
        // Deep nesting is refused by the parser's depth limit, not by the stack.
        let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(data_from_raw_json(DataType::F32, &deep, 9, "x").is_err());
        // A lone scalar is one element.
        assert_eq!(
            data_from_raw_json(DataType::BF16, "1.5", 1, "x").unwrap(),
            TensorData::BF16(vec![bf16::from_f32(1.5)])
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
