//! KServe v2 / Open Inference Protocol inference request and response, JSON and Triton's binary
//! tensor data extension (`Inference-Header-Content-Length`, `binary_data_size`,
//! `binary_data_output`). BYTES elements in binary form are 4-byte little-endian length + bytes.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::json::JsonData;
use super::ProtocolError;
use crate::tensor::{BytesData, DataType, Tensor, TensorData};

/// The header that says how long the JSON part of a binary-extension body is.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

// Typed, borrowed structs down to each parameter: no `Value` tree anywhere (a `parameters` map of
// small objects cost ~100x its text as `serde_json::Map`s, found by fuzz/), unknown parameters
// skipped unread, each known one kept as its raw text until it is checked.
#[derive(Deserialize)]
struct RequestJson<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, borrow)]
    parameters: Option<RequestParams<'a>>,
    #[serde(borrow)]
    inputs: Vec<InputJson<'a>>,
    /// Each output checked as it is read (`try_from`): no second vector of the raw ones.
    #[serde(default)]
    outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Deserialize)]
struct RequestParams<'a> {
    #[serde(default, borrow)]
    priority: Option<&'a RawValue>,
    #[serde(default, borrow)]
    timeout: Option<&'a RawValue>,
    #[serde(default, borrow)]
    binary_data_output: Option<&'a RawValue>,
    #[serde(default, borrow)]
    cache: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct InputJson<'a> {
    name: String,
    shape: Vec<i64>,
    #[serde(borrow)]
    datatype: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    parameters: Option<InputParams<'a>>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct InputParams<'a> {
    #[serde(default, borrow)]
    binary_data_size: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OutputJson<'a> {
    name: String,
    #[serde(default, borrow)]
    parameters: Option<OutputParams<'a>>,
}

impl<'a> TryFrom<OutputJson<'a>> for RequestedOutput {
    type Error = ProtocolError;

    fn try_from(o: OutputJson<'a>) -> Result<RequestedOutput, ProtocolError> {
        let p = o.parameters.as_ref();
        Ok(RequestedOutput {
            binary: param_bool(p.and_then(|p| p.binary_data), "binary_data")?,
            classification: param_u64(p.and_then(|p| p.classification), "classification")?
                .map(|k| k as usize),
            name: o.name,
        })
    }
}

#[derive(Deserialize)]
struct OutputParams<'a> {
    #[serde(default, borrow)]
    binary_data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    classification: Option<&'a RawValue>,
}

/// An output the client asked for; `binary` is its own `binary_data` parameter if set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "OutputJson")]
pub struct RequestedOutput {
    pub name: String,
    pub binary: Option<bool>,
    /// Triton's classification extension: `parameters.classification` = k returns the top k
    /// classes of this output as BYTES "value:index[:label]" (`classification::top_k`).
    pub classification: Option<usize>,
}

/// A decoded inference request.
#[derive(Debug, Clone, PartialEq)]
pub struct V2Request {
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    /// Empty = every output of the model.
    pub outputs: Vec<RequestedOutput>,
    /// `parameters.binary_data_output`: default for outputs that do not say.
    pub binary_output: bool,
    /// `parameters.priority` (0 = default).
    pub priority: u32,
    /// `parameters.timeout`, in microseconds.
    pub timeout_us: Option<u64>,
    /// `parameters.cache`: false asks the response cache to be bypassed (neither read nor filled).
    pub cache: Option<bool>,
}

/// A parameter's raw value as `T`; `expected` says what it must be (the error shows the value, cut).
fn param<'a, T: Deserialize<'a>>(
    raw: Option<&'a RawValue>,
    key: &str,
    expected: &str,
) -> Result<Option<T>, ProtocolError> {
    match raw {
        None => Ok(None),
        Some(v) => serde_json::from_str(v.get()).map(Some).map_err(|_| {
            let got: String = v.get().chars().take(40).collect();
            ProtocolError::Json(format!("parameter '{key}' must be {expected}, got {got}"))
        }),
    }
}

fn param_u64(raw: Option<&RawValue>, key: &str) -> Result<Option<u64>, ProtocolError> {
    param(raw, key, "a non-negative integer")
}

fn param_bool(raw: Option<&RawValue>, key: &str) -> Result<Option<bool>, ProtocolError> {
    param(raw, key, "true or false")
}

/// Decodes a request body. `header_len` is the `Inference-Header-Content-Length` header, if any:
/// then the body is that many bytes of JSON followed by the inputs' binary data, in input order.
/// Binary BYTES inputs are read in place: their elements are slices of `body`, not copies.
pub fn decode_request(body: &Bytes, header_len: Option<usize>) -> Result<V2Request, ProtocolError> {
    let (json, mut binary) = match header_len {
        Some(n) if n > body.len() => {
            return Err(ProtocolError::Binary(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            )))
        }
        Some(n) => (&body[..n], body.slice(n..)),
        None => (&body[..], Bytes::new()),
    };
    let req: RequestJson =
        serde_json::from_slice(json).map_err(|e| ProtocolError::Json(e.to_string()))?;
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for input in req.inputs {
        let bad = |message: String| ProtocolError::Input {
            name: input.name.clone(),
            message,
        };
        let (dt, shape, elements) = tensor_header(&input.datatype, &input.shape).map_err(bad)?;
        let size = input.parameters.as_ref().and_then(|p| p.binary_data_size);
        let data = match (param_u64(size, "binary_data_size")?, input.data) {
            (Some(size), _) => {
                let size = size as usize;
                if size > binary.len() {
                    return Err(bad(format!(
                        "binary_data_size is {size} but only {} bytes of binary data remain",
                        binary.len()
                    )));
                }
                data_from_shared(dt, binary.split_to(size)).map_err(bad)?
            }
            (None, Some(raw)) => data_from_raw(dt, raw.get(), elements, &input.name)?,
            (None, None) => return Err(bad("has neither 'data' nor 'binary_data_size'".into())),
        };
        inputs.push(Tensor::new(input.name, shape, data));
    }
    if !binary.is_empty() {
        return Err(ProtocolError::Binary(format!(
            "{} bytes of binary data are not claimed by any input's binary_data_size",
            binary.len()
        )));
    }
    let outputs = req.outputs.unwrap_or_default();
    // The same output twice would be encoded twice: a small request could ask for a huge answer.
    // Sorted names, not a scan of the earlier ones: a million outputs must not cost 10^12
    // comparisons (nor a hash set's memory).
    let mut names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(ProtocolError::Field(format!(
            "output '{}' is requested more than once",
            cap(w[0])
        )));
    }
    drop(names);
    let p = req.parameters.as_ref();
    Ok(V2Request {
        id: req.id.map(|id| cap(&id).into_owned()),
        inputs,
        outputs,
        binary_output: param_bool(p.and_then(|p| p.binary_data_output), "binary_data_output")?
            .unwrap_or(false),
        priority: match param_u64(p.and_then(|p| p.priority), "priority")? {
            None => 0,
            Some(p) => u32::try_from(p).map_err(|_| {
                ProtocolError::Json(format!("parameters.priority {p} is out of range"))
            })?,
        },
        timeout_us: param_u64(p.and_then(|p| p.timeout), "timeout")?,
        cache: param_bool(p.and_then(|p| p.cache), "cache")?,
    })
}

/// JSON `data`: a flat array parses straight into the typed vector; nested arrays and values that
/// do not fit take the general path, which also names the offending element.
/// `data` as sent, flat or nested, in one typed pass that stops at `max` elements (the shape's
/// count) and reserves exactly that (bounded by what the text can hold): no tree, and none of the
/// doubling a growing vector does (serde's direct `Vec<f32>` path cost 6.7× the body at 11 MiB).
fn data_from_raw(
    dt: DataType,
    raw: &str,
    max: usize,
    name: &str,
) -> Result<TensorData, ProtocolError> {
    super::json::data_from_raw_json(dt, raw, max, name)
}

/// A request tensor's datatype, shape and element count, checked: a known datatype, no negative
/// dimension, and elements and bytes addressable (a hostile shape must not overflow). Shared by
/// the JSON and gRPC decoders; the error is the message for the input.
pub(crate) fn tensor_header(
    datatype: &str,
    dims: &[i64],
) -> Result<(DataType, Vec<usize>, usize), String> {
    let dt = DataType::parse(datatype).ok_or_else(|| format!("unknown datatype '{datatype}'"))?;
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| format!("shape {dims:?} has a negative dimension"))?;
    let elements = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|n| n.checked_mul(dt.byte_size().unwrap_or(1)).is_some())
        .ok_or_else(|| format!("shape {dims:?} holds more elements than can be addressed"))?;
    Ok((dt, shape, elements))
}

/// Longest client string echoed back (request id, names in errors), in bytes.
pub const MAX_ECHO: usize = 256;

/// `s`, cut to `MAX_ECHO` bytes at a character boundary.
pub fn cap(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= MAX_ECHO {
        return s.into();
    }
    let mut end = MAX_ECHO;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end]).into()
}

/// `data_from_bytes` of a buffer that can be shared: BYTES elements are read in place (slices of
/// `b`), other types copied into their typed vector.
pub fn data_from_shared(dt: DataType, b: Bytes) -> Result<TensorData, String> {
    match dt {
        DataType::Bytes => BytesData::from_length_prefixed(b)
            .map(TensorData::Bytes)
            .map_err(|e| e.to_string()),
        _ => data_from_bytes(dt, &b),
    }
}

/// Little-endian raw bytes (BYTES: length-prefixed elements, copied into one buffer) into typed
/// data.
pub fn data_from_bytes(dt: DataType, b: &[u8]) -> Result<TensorData, String> {
    let Some(size) = dt.byte_size() else {
        return data_from_shared(dt, Bytes::copy_from_slice(b));
    };
    if !b.len().is_multiple_of(size) {
        return Err(format!(
            "{} bytes of binary data is not a whole number of {dt} elements ({size} bytes each)",
            b.len()
        ));
    }
    macro_rules! le {
        ($t:ty, $n:expr) => {
            b.chunks_exact($n)
                .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk size. This is a bug.")))
                .collect()
        };
    }
    Ok(match dt {
        DataType::Bool => TensorData::Bool(b.iter().map(|&x| x != 0).collect()),
        DataType::U8 => TensorData::U8(b.to_vec()),
        DataType::I8 => TensorData::I8(b.iter().map(|&x| x as i8).collect()),
        DataType::U16 => TensorData::U16(le!(u16, 2)),
        DataType::I16 => TensorData::I16(le!(i16, 2)),
        DataType::F16 => TensorData::F16(
            b.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        DataType::BF16 => TensorData::BF16(
            b.chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        DataType::U32 => TensorData::U32(le!(u32, 4)),
        DataType::I32 => TensorData::I32(le!(i32, 4)),
        DataType::F32 => TensorData::F32(le!(f32, 4)),
        DataType::U64 => TensorData::U64(le!(u64, 8)),
        DataType::I64 => TensorData::I64(le!(i64, 8)),
        DataType::F64 => TensorData::F64(le!(f64, 8)),
        DataType::Bytes => unreachable!("handled above"),
    })
}

/// Typed data as little-endian raw bytes (BYTES: length-prefixed elements).
pub fn data_to_bytes(d: &TensorData, out: &mut Vec<u8>) {
    macro_rules! le {
        ($v:expr) => {
            $v.iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes()))
        };
    }
    match d {
        TensorData::Bool(v) => out.extend(v.iter().map(|&x| x as u8)),
        TensorData::U8(v) => out.extend_from_slice(v),
        TensorData::I8(v) => le!(v),
        TensorData::U16(v) => le!(v),
        TensorData::I16(v) => le!(v),
        TensorData::F16(v) => le!(v),
        TensorData::BF16(v) => le!(v),
        TensorData::U32(v) => le!(v),
        TensorData::I32(v) => le!(v),
        TensorData::F32(v) => le!(v),
        TensorData::U64(v) => le!(v),
        TensorData::I64(v) => le!(v),
        TensorData::F64(v) => le!(v),
        TensorData::Bytes(v) => v.write_length_prefixed(out),
    }
}

#[derive(Serialize)]
struct OutputOut<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParam>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

#[derive(Serialize)]
struct BinaryParam {
    binary_data_size: usize,
}

#[derive(Serialize)]
struct ResponseOut<'a> {
    model_name: &'a str,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputOut<'a>>,
}

/// An encoded response: the body and, when binary data follows the JSON, the JSON's length
/// (the value of `Inference-Header-Content-Length`).
pub struct EncodedResponse {
    pub body: Vec<u8>,
    pub header_len: Option<usize>,
}

/// Encodes `outputs`; `binary[i]` says whether output i goes in binary form.
pub fn encode_response(
    model: &str,
    version: u64,
    id: Option<&str>,
    outputs: &[Tensor],
    binary: &[bool],
) -> EncodedResponse {
    let mut tail = Vec::new();
    let outs = outputs
        .iter()
        .zip(binary)
        .map(|(t, &bin)| {
            let (parameters, data) = if bin {
                let before = tail.len();
                data_to_bytes(&t.data, &mut tail);
                let size = tail.len() - before;
                (
                    Some(BinaryParam {
                        binary_data_size: size,
                    }),
                    None,
                )
            } else {
                (None, Some(JsonData::all(&t.data)))
            };
            OutputOut {
                name: &t.name,
                datatype: t.datatype().as_str(),
                shape: &t.shape,
                parameters,
                data,
            }
        })
        .collect();
    let resp = ResponseOut {
        model_name: model,
        model_version: version.to_string(),
        id,
        outputs: outs,
    };
    let mut body = serde_json::to_vec(&resp).expect("responses always serialise. This is a bug.");
    let header_len = (!tail.is_empty() || binary.iter().any(|&b| b)).then_some(body.len());
    body.extend_from_slice(&tail);
    EncodedResponse { body, header_len }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn decode_json_request_reads_parameters() {
        let body =
            br#"{"id":"a","parameters":{"priority":2,"timeout":5000,"binary_data_output":true},
            "inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[[1.5,2.5]]}],
            "outputs":[{"name":"y","parameters":{"binary_data":false}}]}"#;
        let r = decode_request(&Bytes::from_static(body), None).unwrap();
        assert_eq!(r.id.as_deref(), Some("a"));
        assert_eq!(
            (r.priority, r.timeout_us, r.binary_output),
            (2, Some(5000), true)
        );
        assert_eq!(r.inputs[0].data, TensorData::F32(vec![1.5, 2.5]));
        assert_eq!(r.outputs[0].binary, Some(false));
    }

    #[test]
    fn decode_binary_request_splits_inputs_in_order() {
        let header = br#"{"inputs":[{"name":"a","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}},{"name":"s","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":13}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&7i32.to_le_bytes());
        body.extend_from_slice(&(-1i32).to_le_bytes());
        let strings: BytesData = [&b"hi"[..], b"you"].into_iter().collect();
        data_to_bytes(&TensorData::Bytes(strings.clone()), &mut body);
        let body = Bytes::from(body);
        let r = decode_request(&body, Some(header.len())).unwrap();
        assert_eq!(r.inputs[0].data, TensorData::I32(vec![7, -1]));
        assert_eq!(r.inputs[1].data, TensorData::Bytes(strings));
        // The BYTES elements are the body's own bytes, not copies.
        let TensorData::Bytes(got) = &r.inputs[1].data else {
            panic!("not BYTES")
        };
        let body_range = body.as_ptr_range();
        assert!(got.iter().all(|x| body_range.contains(&x.as_ptr())));
    }

    #[test]
    fn decode_binary_size_past_end_is_error() {
        let header = br#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&[0, 0, 0, 0]);
        let e = decode_request(&Bytes::from(body), Some(header.len())).unwrap_err();
        assert!(e.to_string().contains("only 4 bytes"), "{e}");
    }

    #[test]
    fn encode_binary_output_appends_data_and_sets_size() {
        let t = Tensor::new("y", vec![2], TensorData::F32(vec![1.0, 2.0]));
        let r = encode_response("m", 1, None, &[t], &[true]);
        let n = r.header_len.unwrap();
        let head: Value = serde_json::from_slice(&r.body[..n]).unwrap();
        assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(
            data_from_bytes(DataType::F32, &r.body[n..]).unwrap(),
            TensorData::F32(vec![1.0, 2.0])
        );
    }

    #[test]
    fn encode_json_output_has_flat_data() {
        let t = Tensor::new("y", vec![1, 2], TensorData::I64(vec![3, 4]));
        let r = encode_response("m", 2, Some("q"), &[t], &[false]);
        assert!(r.header_len.is_none());
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["model_version"], "2");
        assert_eq!(v["id"], "q");
        assert_eq!(v["outputs"][0]["data"], serde_json::json!([3, 4]));
    }

    #[test]
    fn decode_overflowing_shape_and_huge_priority_are_client_errors() {
        let e = decode_request(
            &Bytes::from_static(br#"{"inputs":[{"name":"x","shape":[1,4611686018427387904],"datatype":"FP32","data":[1]}]}"#),
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("more elements than can be addressed"),
            "{e}"
        );
        let e = decode_request(
            &Bytes::from_static(br#"{"parameters":{"priority":4294967297},"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("priority"), "{e}");
    }

    #[test]
    fn duplicate_outputs_are_refused_and_long_ids_capped() {
        let body = r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],
            "outputs":[{"name":"y"},{"name":"z"},{"name":"y"}]}"#;
        let e = decode_request(&Bytes::from_static(body.as_bytes()), None).unwrap_err();
        assert_eq!(e.to_string(), "output 'y' is requested more than once");
        let id = "é".repeat(MAX_ECHO);
        let body = format!(
            r#"{{"id":"{id}","inputs":[{{"name":"x","shape":[2,2],"datatype":"INT8","data":[[1,2],[3,-4]]}}]}}"#
        );
        let r = decode_request(&Bytes::from(body), None).unwrap();
        let got = r.id.unwrap();
        assert!(
            got.len() <= MAX_ECHO + '…'.len_utf8() && got.ends_with('…'),
            "{got}"
        );
        assert_eq!(r.inputs[0].data, TensorData::I8(vec![1, 2, 3, -4]));
    }
}
