//! Request bodies the bench sends: KServe v2 (JSON or Triton's binary extension) built from the
//! model's metadata or from a JSON-lines file, OpenAI `/v1/embeddings` and TEI `/embed` from texts.
//! Bodies are built once before a step and reused (cheap `Bytes` clones), so the client spends its
//! time on the wire, not on serialisation. Pure: no sockets here.

use std::collections::HashMap;

use bytes::Bytes;
use rand::{Rng, RngCore};
use serde_json::{json, Value};

use super::LoadgenError;
use crate::protocol::json::JsonData;
use crate::protocol::kserve_v2::{data_to_bytes, decode_request, HEADER_LENGTH};
use crate::tensor::{DataType, Tensor, TensorData};

/// The API the target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// KServe v2 `/v2/models/{m}/infer`, JSON tensors.
    V2Json,
    /// KServe v2 with Triton's binary tensor data extension (inputs and outputs binary).
    V2Binary,
    /// OpenAI `/v1/embeddings`: `{"input": [texts], "model": m}`.
    Openai,
    /// Hugging Face TEI `/embed`: `{"inputs": [texts]}`.
    Tei,
    /// KServe v2 / Triton gRPC `ModelInfer` with `raw_input_contents` (to `--grpc-url`; metadata
    /// still read over HTTP from `--url`).
    Grpc,
}

impl Protocol {
    pub fn is_v2(self) -> bool {
        matches!(self, Protocol::V2Json | Protocol::V2Binary | Protocol::Grpc)
    }
}

/// One ready-to-send request: path, body and headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    pub path: String,
    pub body: Bytes,
    pub content_type: &'static str,
    /// (`Inference-Header-Content-Length`, value) for binary bodies.
    pub header_len: Option<usize>,
    /// A gRPC `ModelInfer` request (then `path` and `body` are unused).
    pub grpc: Option<crate::protocol::grpc::pb::ModelInferRequest>,
}

impl Payload {
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![("content-type", self.content_type.to_string())];
        if let Some(n) = self.header_len {
            h.push((HEADER_LENGTH, n.to_string()));
        }
        h
    }
}

/// An input to generate: name, datatype and full shape (batch dimension included).
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<usize>,
}

/// Input specs from `/v2/models/{m}` metadata. With `max_batch_size > 0` the first `-1` is the
/// batch dimension (`batch` rows); every other `-1` must be given in `shapes` (name -> full shape).
pub fn specs_from_metadata(
    meta: &Value,
    batch: usize,
    shapes: &HashMap<String, Vec<usize>>,
) -> Result<Vec<InputSpec>, LoadgenError> {
    let bad = |m: String| LoadgenError::Metadata(m);
    let batching = meta["parameters"]["max_batch_size"].as_u64().unwrap_or(0) > 0;
    let inputs = meta["inputs"]
        .as_array()
        .ok_or_else(|| bad("no 'inputs' array".into()))?;
    inputs
        .iter()
        .map(|i| {
            let name = i["name"].as_str().ok_or_else(|| bad("input without name".into()))?;
            let dt = i["datatype"].as_str().unwrap_or("");
            let datatype = DataType::parse(dt)
                .ok_or_else(|| bad(format!("input '{name}': unknown datatype '{dt}'")))?;
            if let Some(s) = shapes.get(name) {
                return Ok(InputSpec { name: name.into(), datatype, shape: s.clone() });
            }
            let dims: Vec<i64> = serde_json::from_value(i["shape"].clone())
                .map_err(|_| bad(format!("input '{name}': shape is not a list of integers")))?;
            let shape = dims
                .iter()
                .enumerate()
                .map(|(k, &d)| match d {
                    d if d >= 0 => Ok(d as usize),
                    _ if k == 0 && batching => Ok(batch),
                    _ => Err(bad(format!(
                        "input '{name}' has variable dimension {k} in {dims:?}: give --shape {name}:D1,D2,.."
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(InputSpec { name: name.into(), datatype, shape })
        })
        .collect()
}

/// Random contents for one input: floats uniform in [0, 16) (the digits model's pixel range),
/// integers in 0..16, booleans, BYTES as 8 random letters.
pub fn random_tensor(spec: &InputSpec, rng: &mut impl RngCore) -> Tensor {
    let n: usize = spec.shape.iter().product();
    let mut f = || rng.random_range(0.0f64..16.0);
    let data = match spec.datatype {
        DataType::Bool => TensorData::Bool((0..n).map(|_| f() < 8.0).collect()),
        DataType::U8 => TensorData::U8((0..n).map(|_| f() as u8).collect()),
        DataType::U16 => TensorData::U16((0..n).map(|_| f() as u16).collect()),
        DataType::U32 => TensorData::U32((0..n).map(|_| f() as u32).collect()),
        DataType::U64 => TensorData::U64((0..n).map(|_| f() as u64).collect()),
        DataType::I8 => TensorData::I8((0..n).map(|_| f() as i8).collect()),
        DataType::I16 => TensorData::I16((0..n).map(|_| f() as i16).collect()),
        DataType::I32 => TensorData::I32((0..n).map(|_| f() as i32).collect()),
        DataType::I64 => TensorData::I64((0..n).map(|_| f() as i64).collect()),
        DataType::F16 => TensorData::F16((0..n).map(|_| half::f16::from_f64(f())).collect()),
        DataType::BF16 => TensorData::BF16((0..n).map(|_| half::bf16::from_f64(f())).collect()),
        DataType::F32 => TensorData::F32((0..n).map(|_| f() as f32).collect()),
        DataType::F64 => TensorData::F64((0..n).map(|_| f()).collect()),
        DataType::Bytes => TensorData::Bytes(
            (0..n)
                .map(|_| (0..8).map(|_| b'a' + f() as u8).collect::<Vec<u8>>())
                .collect(),
        ),
    };
    Tensor::new(spec.name.clone(), spec.shape.clone(), data)
}

/// `/v2/models/{m}[/versions/{v}]/infer`.
pub fn v2_path(model: &str, version: Option<&str>) -> String {
    match version {
        Some(v) => format!("/v2/models/{model}/versions/{v}/infer"),
        None => format!("/v2/models/{model}/infer"),
    }
}

/// A KServe v2 request for `inputs`: JSON `data`, or binary data after a JSON header with every
/// output asked for in binary form (`binary_data_output`).
pub fn v2_payload(path: &str, inputs: &[Tensor], binary: bool) -> Payload {
    let specs =
        |t: &Tensor| json!({"name": t.name, "shape": t.shape, "datatype": t.datatype().as_str()});
    if !binary {
        let ins: Vec<Value> = inputs
            .iter()
            .map(|t| {
                let mut v = specs(t);
                v["data"] = serde_json::to_value(JsonData::all(&t.data))
                    .expect("tensor data serialises. This is a bug.");
                v
            })
            .collect();
        let body =
            serde_json::to_vec(&json!({ "inputs": ins })).expect("JSON value. This is a bug.");
        return Payload {
            path: path.into(),
            body: body.into(),
            content_type: "application/json",
            header_len: None,
            grpc: None,
        };
    }
    let mut tail = Vec::new();
    let ins: Vec<Value> = inputs
        .iter()
        .map(|t| {
            let before = tail.len();
            data_to_bytes(&t.data, &mut tail);
            let mut v = specs(t);
            v["parameters"] = json!({"binary_data_size": tail.len() - before});
            v
        })
        .collect();
    let mut body =
        serde_json::to_vec(&json!({"inputs": ins, "parameters": {"binary_data_output": true}}))
            .expect("JSON value. This is a bug.");
    let header_len = body.len();
    body.extend_from_slice(&tail);
    Payload {
        path: path.into(),
        body: body.into(),
        content_type: "application/octet-stream",
        header_len: Some(header_len),
        grpc: None,
    }
}

/// A gRPC `ModelInfer` request for `inputs`, tensors in `raw_input_contents`.
pub fn grpc_payload(model: &str, version: Option<&str>, inputs: &[Tensor]) -> Payload {
    use crate::protocol::grpc::pb;
    let req = pb::ModelInferRequest {
        model_name: model.into(),
        model_version: version.unwrap_or_default().into(),
        inputs: inputs
            .iter()
            .map(|t| pb::model_infer_request::InferInputTensor {
                name: t.name.clone(),
                datatype: t.datatype().as_str().into(),
                shape: t.shape.iter().map(|&d| d as i64).collect(),
                ..Default::default()
            })
            .collect(),
        raw_input_contents: inputs
            .iter()
            .map(|t| {
                let mut b = Vec::new();
                data_to_bytes(&t.data, &mut b);
                b.into()
            })
            .collect(),
        ..Default::default()
    };
    Payload {
        path: String::new(),
        body: Bytes::new(),
        content_type: "application/grpc",
        header_len: None,
        grpc: Some(req),
    }
}

/// KServe v2 payloads from JSON lines, each a full request body (`{"inputs": [...]}`); with
/// `binary` each line is decoded and re-encoded in the binary extension. Blank lines are skipped.
pub fn v2_payloads_from_jsonl(
    text: &str,
    path: &str,
    binary: bool,
) -> Result<Vec<Payload>, LoadgenError> {
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let req = decode_request(&Bytes::copy_from_slice(line.as_bytes()), None).map_err(|e| {
            LoadgenError::InputFile {
                line: i + 1,
                message: e.to_string(),
            }
        })?;
        out.push(v2_payload(path, &req.inputs, binary));
    }
    Ok(out)
}

/// Texts from a file with one text per line; a line that is a JSON string is unquoted.
pub fn texts_from_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<String>(l).unwrap_or_else(|_| l.to_string()))
        .collect()
}

/// `n` random texts of `words` lowercase words each (3-8 letters).
pub fn random_texts(rng: &mut impl RngCore, n: usize, words: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            (0..words)
                .map(|_| {
                    let len = rng.random_range(3..=8);
                    (0..len)
                        .map(|_| rng.random_range(b'a'..=b'z') as char)
                        .collect::<String>()
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// OpenAI embeddings: `POST /v1/embeddings` `{"input": [texts], "model": m}`.
pub fn openai_payload(model: &str, texts: &[String]) -> Payload {
    let body = serde_json::to_vec(&json!({"input": texts, "model": model}))
        .expect("JSON value. This is a bug.");
    Payload {
        path: "/v1/embeddings".into(),
        body: body.into(),
        content_type: "application/json",
        header_len: None,
        grpc: None,
    }
}

/// TEI: `POST /embed` `{"inputs": [texts]}`.
pub fn tei_payload(texts: &[String]) -> Payload {
    let body = serde_json::to_vec(&json!({ "inputs": texts })).expect("JSON value. This is a bug.");
    Payload {
        path: "/embed".into(),
        body: body.into(),
        content_type: "application/json",
        header_len: None,
        grpc: None,
    }
}

/// `len` requests drawn from `payloads` with a Zipf(`s`) distribution over their order (rank 1,
/// the first, most often), each a cheap clone (the body is shared).
pub fn zipf_sequence(
    payloads: &[Payload],
    s: f64,
    len: usize,
    rng: &mut impl rand::Rng,
) -> Result<Vec<Payload>, LoadgenError> {
    let zipf = rand_distr::Zipf::new(payloads.len() as f64, s)
        .map_err(|e| LoadgenError::Args(format!("--zipf {s}: {e}")))?;
    Ok((0..len)
        .map(|_| {
            let rank: f64 = rand_distr::Distribution::sample(&zipf, rng);
            payloads[(rank as usize).clamp(1, payloads.len()) - 1].clone()
        })
        .collect())
}

/// Groups `texts` into requests of `batch` texts (the last may be shorter), cycling if there are
/// fewer texts than one batch.
pub fn text_payloads(
    protocol: Protocol,
    model: &str,
    texts: &[String],
    batch: usize,
) -> Vec<Payload> {
    if texts.is_empty() {
        return Vec::new();
    }
    let batch = batch.max(1);
    let groups: Vec<Vec<String>> = if texts.len() < batch {
        vec![texts.iter().cycle().take(batch).cloned().collect()]
    } else {
        texts.chunks(batch).map(<[String]>::to_vec).collect()
    };
    groups
        .iter()
        .map(|g| match protocol {
            Protocol::Tei => tei_payload(g),
            _ => openai_payload(model, g),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn body(p: &Payload) -> Value {
        serde_json::from_slice(&p.body).unwrap()
    }

    #[test]
    fn openai_payload_has_input_list_and_model() {
        let p = openai_payload("bge", &["a b".into(), "c".into()]);
        assert_eq!(p.path, "/v1/embeddings");
        assert_eq!(body(&p), json!({"input": ["a b", "c"], "model": "bge"}));
        assert_eq!(
            p.headers(),
            vec![("content-type", "application/json".to_string())]
        );
    }

    #[test]
    fn tei_payload_has_inputs_list() {
        let p = tei_payload(&["hello".into()]);
        assert_eq!(p.path, "/embed");
        assert_eq!(body(&p), json!({"inputs": ["hello"]}));
    }

    #[test]
    fn text_payloads_batches_and_cycles() {
        let texts: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let ps = text_payloads(Protocol::Tei, "m", &texts, 2);
        assert_eq!(ps.len(), 2);
        assert_eq!(body(&ps[1]), json!({"inputs": ["c"]}));
        let ps = text_payloads(Protocol::Openai, "m", &texts[..1], 3);
        assert_eq!(body(&ps[0])["input"], json!(["a", "a", "a"]));
    }

    #[test]
    fn zipf_sequence_favours_the_first_inputs() {
        use rand::SeedableRng;
        let texts: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        let ps = text_payloads(Protocol::Tei, "m", &texts, 1);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let seq = zipf_sequence(&ps, 1.1, 20_000, &mut rng).unwrap();
        let count = |i: usize| seq.iter().filter(|p| p.body == ps[i].body).count();
        // Zipf(1.1) over 100: rank 1 has p = 1/H ≈ 0.23, rank 10 about 8x less.
        assert!(count(0) > 3000 && count(0) < 6000, "{}", count(0));
        assert!(count(0) > 5 * count(9), "{} vs {}", count(0), count(9));
        assert!(count(99) > 0, "the tail is reached");
        assert!(zipf_sequence(&ps, -1.0, 10, &mut rng).is_err());
    }

    #[test]
    fn texts_from_lines_unquotes_json_strings() {
        assert_eq!(
            texts_from_lines("plain text\n\n\"quoted \\\"x\\\"\"\n"),
            vec!["plain text", "quoted \"x\""]
        );
    }

    #[test]
    fn specs_from_metadata_fills_batch_dim() {
        let meta = json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
                          "parameters": {"max_batch_size": 64}});
        let s = specs_from_metadata(&meta, 4, &HashMap::new()).unwrap();
        assert_eq!(
            s,
            vec![InputSpec {
                name: "pixels".into(),
                datatype: DataType::F32,
                shape: vec![4, 64]
            }]
        );
    }

    #[test]
    fn specs_from_metadata_other_variable_dim_needs_shape() {
        let meta = json!({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [-1, -1]}],
                          "parameters": {"max_batch_size": 8}});
        let err = specs_from_metadata(&meta, 1, &HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("--shape ids:"), "{err}");
        let shapes = HashMap::from([("ids".to_string(), vec![1, 7])]);
        assert_eq!(
            specs_from_metadata(&meta, 1, &shapes).unwrap()[0].shape,
            vec![1, 7]
        );
    }

    #[test]
    fn v2_payload_binary_roundtrips_through_server_decoder() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let spec = InputSpec {
            name: "x".into(),
            datatype: DataType::F32,
            shape: vec![2, 4],
        };
        let t = random_tensor(&spec, &mut rng);
        for binary in [false, true] {
            let p = v2_payload("/v2/models/m/infer", std::slice::from_ref(&t), binary);
            let req = decode_request(&p.body, p.header_len).unwrap();
            assert_eq!(req.inputs, vec![t.clone()]);
            assert_eq!(req.binary_output, binary);
        }
    }

    #[test]
    fn v2_payloads_from_jsonl_reads_each_line() {
        let text = "{\"inputs\": [{\"name\": \"x\", \"shape\": [1, 2], \"datatype\": \"FP32\", \"data\": [1, 2]}]}\n\n\
                    {\"inputs\": [{\"name\": \"x\", \"shape\": [1, 2], \"datatype\": \"FP32\", \"data\": [3, 4]}]}\n";
        let ps = v2_payloads_from_jsonl(text, "/p", true).unwrap();
        assert_eq!(ps.len(), 2);
        let req = decode_request(&ps[1].body, ps[1].header_len).unwrap();
        assert_eq!(req.inputs[0].data, TensorData::F32(vec![3.0, 4.0]));
        let err = v2_payloads_from_jsonl("{}\n", "/p", false).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
