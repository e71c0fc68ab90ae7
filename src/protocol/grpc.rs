//! The KServe v2 / Triton gRPC protocol (`proto/grpc_service.proto`, compiled by `build.rs`): the
//! generated message types (`pb`, `health`) and pure conversions between them and Ferrite's typed
//! tensors and model configs. Inputs come as typed `contents` or as `raw_input_contents`
//! (little-endian bytes, BYTES elements length-prefixed, as in the binary tensor extension);
//! outputs always go back as `raw_output_contents`, as Triton answers. Both raw fields are
//! `bytes::Bytes` (`build.rs`): decoding reads each raw input straight from the received message's
//! buffer into its typed vector, the only copy (BYTES: none, the elements stay slices of that
//! buffer). No tonic server, no tokio.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::kserve_v2::{data_from_shared, data_to_bytes, RequestedOutput, V2Request};
use super::ProtocolError;
use crate::spec::{InstanceKind, ModelConfig, TensorSpec, VersionPolicy};
use crate::tensor::{BytesBuilder, DataType, Tensor, TensorData};

/// `package inference`: the service, its messages and the model-config subset.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");
}

/// `package grpc.health.v1`: the standard health service.
#[allow(clippy::all, missing_docs)]
pub mod health {
    tonic::include_proto!("grpc.health.v1");
}

use pb::infer_parameter::ParameterChoice;
use pb::model_infer_response::InferOutputTensor;
use pb::{InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse};

/// A parameter as an unsigned integer (int64 >= 0 or uint64), `None` when absent.
fn param_u64(p: &HashMap<String, InferParameter>, key: &str) -> Result<Option<u64>, ProtocolError> {
    match p.get(key).and_then(|v| v.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(ParameterChoice::Int64Param(n)) if *n >= 0 => Ok(Some(*n as u64)),
        Some(ParameterChoice::Uint64Param(n)) => Ok(Some(*n)),
        Some(other) => Err(ProtocolError::Field(format!(
            "parameter '{key}' must be a non-negative integer, got {other:?}"
        ))),
    }
}

/// Decodes a `ModelInferRequest` into the request every door runs (`V2Request`).
pub fn decode_infer(req: ModelInferRequest) -> Result<V2Request, ProtocolError> {
    let raw = req.raw_input_contents;
    if !raw.is_empty() && raw.len() != req.inputs.len() {
        return Err(ProtocolError::Field(format!(
            "raw_input_contents has {} entries for {} inputs: give one per input, in order",
            raw.len(),
            req.inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for input in req.inputs {
        let bad = |message: String| ProtocolError::Input {
            name: input.name.clone(),
            message,
        };
        let (dt, shape, _) =
            super::kserve_v2::tensor_header(&input.datatype, &input.shape).map_err(bad)?;
        let data = match (raw.next(), input.contents) {
            (Some(_), Some(c)) if c != InferTensorContents::default() => {
                return Err(bad(
                    "has both contents and raw_input_contents: give one".into()
                ))
            }
            (Some(bytes), _) => data_from_shared(dt, bytes).map_err(bad)?,
            (None, Some(c)) => data_from_contents(dt, c).map_err(bad)?,
            (None, None) => return Err(bad("has neither contents nor raw_input_contents".into())),
        };
        inputs.push(Tensor::new(input.name, shape, data));
    }
    let outputs = req
        .outputs
        .into_iter()
        .map(|o| {
            Ok(RequestedOutput {
                classification: param_u64(&o.parameters, "classification")?.map(|k| k as usize),
                binary: Some(true),
                name: o.name,
            })
        })
        .collect::<Result<_, ProtocolError>>()?;
    Ok(V2Request {
        id: (!req.id.is_empty()).then_some(req.id),
        inputs,
        outputs,
        binary_output: true,
        priority: match param_u64(&req.parameters, "priority")? {
            None => 0,
            Some(p) => u32::try_from(p).map_err(|_| {
                ProtocolError::Field(format!("parameters.priority {p} is out of range"))
            })?,
        },
        timeout_us: param_u64(&req.parameters, "timeout")?,
        // The gRPC door does not consult the response cache yet.
        cache: None,
    })
}

/// Typed `contents` into data of `dt`: each datatype reads its own field (the narrow integers the
/// 32-bit ones, checked for range); FP16/BF16 have no typed field and must come raw.
fn data_from_contents(dt: DataType, c: InferTensorContents) -> Result<TensorData, String> {
    fn narrow<S: Copy + std::fmt::Display, T: TryFrom<S>>(
        v: Vec<S>,
        dt: DataType,
    ) -> Result<Vec<T>, String> {
        v.into_iter()
            .map(|x| T::try_from(x).map_err(|_| format!("value {x} does not fit {dt}")))
            .collect()
    }
    Ok(match dt {
        DataType::Bool => TensorData::Bool(c.bool_contents),
        DataType::I8 => TensorData::I8(narrow(c.int_contents, dt)?),
        DataType::I16 => TensorData::I16(narrow(c.int_contents, dt)?),
        DataType::I32 => TensorData::I32(c.int_contents),
        DataType::I64 => TensorData::I64(c.int64_contents),
        DataType::U8 => TensorData::U8(narrow(c.uint_contents, dt)?),
        DataType::U16 => TensorData::U16(narrow(c.uint_contents, dt)?),
        DataType::U32 => TensorData::U32(c.uint_contents),
        DataType::U64 => TensorData::U64(c.uint64_contents),
        DataType::F32 => TensorData::F32(c.fp32_contents),
        DataType::F64 => TensorData::F64(c.fp64_contents),
        // prost has already made one vector per element; they are packed into one buffer here.
        DataType::Bytes => {
            let c = c.bytes_contents;
            let mut b = BytesBuilder::with_capacity(c.len(), c.iter().map(Vec::len).sum());
            for x in &c {
                b.push(x).map_err(|e| e.to_string())?;
            }
            TensorData::Bytes(b.finish())
        }
        DataType::F16 | DataType::BF16 => {
            return Err(format!(
                "{dt} has no typed contents field: send it in raw_input_contents"
            ))
        }
    })
}

/// The response to one request: `outputs` in the order asked, as raw little-endian bytes.
pub fn encode_infer(
    model: &str,
    version: u64,
    id: Option<&str>,
    outputs: &[Tensor],
) -> ModelInferResponse {
    let mut raw = Vec::with_capacity(outputs.len());
    let tensors = outputs
        .iter()
        .map(|t| {
            let mut bytes =
                Vec::with_capacity(t.data.len() * t.datatype().byte_size().unwrap_or(8));
            data_to_bytes(&t.data, &mut bytes);
            raw.push(bytes.into());
            InferOutputTensor {
                name: t.name.clone(),
                datatype: t.datatype().as_str().into(),
                shape: t.shape.iter().map(|&d| d as i64).collect(),
                parameters: HashMap::new(),
                contents: None,
            }
        })
        .collect();
    ModelInferResponse {
        model_name: model.into(),
        model_version: version.to_string(),
        id: id.unwrap_or_default().into(),
        parameters: HashMap::new(),
        outputs: tensors,
        raw_output_contents: raw,
    }
}

fn type_enum(dt: DataType) -> pb::DataType {
    use pb::DataType as T;
    match dt {
        DataType::Bool => T::TypeBool,
        DataType::U8 => T::TypeUint8,
        DataType::U16 => T::TypeUint16,
        DataType::U32 => T::TypeUint32,
        DataType::U64 => T::TypeUint64,
        DataType::I8 => T::TypeInt8,
        DataType::I16 => T::TypeInt16,
        DataType::I32 => T::TypeInt32,
        DataType::I64 => T::TypeInt64,
        DataType::F16 => T::TypeFp16,
        DataType::BF16 => T::TypeBf16,
        DataType::F32 => T::TypeFp32,
        DataType::F64 => T::TypeFp64,
        DataType::Bytes => T::TypeString,
    }
}

/// Triton's dims: without the batch dimension when the model batches.
fn triton_dims(s: &TensorSpec, batched: bool) -> Vec<i64> {
    let skip = usize::from(batched && !s.dims.is_empty());
    s.dims[skip..].to_vec()
}

/// Ferrite's model config as Triton's `ModelConfig` (the fields clients read). `labels`: whether
/// the model folder has a `labels.txt` (named as each output's `label_filename`).
pub fn triton_config(name: &str, c: &ModelConfig, labels: bool) -> pb::ModelConfig {
    let batched = c.max_batch_size > 0;
    let db = &c.dynamic_batching;
    use pb::model_version_policy::{All, Latest, PolicyChoice, Specific};
    let policy = match &c.version_policy {
        VersionPolicy::Latest(n) => PolicyChoice::Latest(Latest {
            num_versions: *n as u32,
        }),
        VersionPolicy::All => PolicyChoice::All(All {}),
        VersionPolicy::Specific(v) => PolicyChoice::Specific(Specific {
            versions: v.iter().map(|&x| x as i64).collect(),
        }),
    };
    pb::ModelConfig {
        name: name.into(),
        platform: format!("ferrite_{}", c.architecture),
        backend: "ferrite".into(),
        version_policy: Some(pb::ModelVersionPolicy {
            policy_choice: Some(policy),
        }),
        max_batch_size: c.max_batch_size as i32,
        input: c
            .inputs
            .iter()
            .map(|s| pb::ModelInput {
                name: s.name.clone(),
                data_type: type_enum(s.datatype) as i32,
                dims: triton_dims(s, batched),
            })
            .collect(),
        output: c
            .outputs
            .iter()
            .map(|s| pb::ModelOutput {
                name: s.name.clone(),
                data_type: type_enum(s.datatype) as i32,
                dims: triton_dims(s, batched),
                label_filename: if labels {
                    "labels.txt".into()
                } else {
                    String::new()
                },
            })
            .collect(),
        instance_group: c
            .instance_group
            .iter()
            .enumerate()
            .map(|(i, g)| pb::ModelInstanceGroup {
                name: format!("{name}_{i}"),
                count: g.count as i32,
                gpus: g.gpus.iter().flatten().map(|&x| x as i32).collect(),
                kind: match g.kind {
                    InstanceKind::Auto => pb::model_instance_group::Kind::Auto,
                    InstanceKind::Cpu => pb::model_instance_group::Kind::Cpu,
                    InstanceKind::Gpu => pb::model_instance_group::Kind::Gpu,
                } as i32,
            })
            .collect(),
        scheduling_choice: Some(pb::model_config::SchedulingChoice::DynamicBatching(
            pb::ModelDynamicBatching {
                preferred_batch_size: db.preferred_batch_sizes.iter().map(|&x| x as i32).collect(),
                max_queue_delay_microseconds: db.max_queue_delay_us,
                preserve_ordering: false,
                priority_levels: u64::from(db.priority_levels),
                default_priority_level: u64::from(db.default_priority_level),
                default_queue_policy: Some(pb::ModelQueuePolicy {
                    timeout_action: 0,
                    default_timeout_microseconds: db.default_timeout_us,
                    allow_timeout_override: true,
                    max_queue_size: db.max_queue_size.min(u32::MAX as usize) as u32,
                }),
            },
        )),
        model_transaction_policy: Some(pb::ModelTransactionPolicy { decoupled: false }),
    }
}

/// The same config as Triton's JSON (`GET /v2/models/{m}/config`): proto field names, enums by
/// name, 64-bit integers as numbers.
pub fn config_json(c: &pb::ModelConfig) -> Value {
    let tensor = |name: &str, dt: i32, dims: &[i64]| {
        let dt = pb::DataType::try_from(dt).unwrap_or(pb::DataType::TypeInvalid);
        json!({"name": name, "data_type": dt.as_str_name(), "dims": dims})
    };
    let mut v = json!({
        "name": c.name,
        "platform": c.platform,
        "backend": c.backend,
        "max_batch_size": c.max_batch_size,
        "input": c.input.iter().map(|i| tensor(&i.name, i.data_type, &i.dims)).collect::<Vec<_>>(),
        "output": c.output.iter().map(|o| {
            let mut t = tensor(&o.name, o.data_type, &o.dims);
            t["label_filename"] = json!(o.label_filename);
            t
        }).collect::<Vec<_>>(),
        "instance_group": c.instance_group.iter().map(|g| json!({
            "name": g.name,
            "count": g.count,
            "gpus": g.gpus,
            "kind": pb::model_instance_group::Kind::try_from(g.kind)
                .unwrap_or(pb::model_instance_group::Kind::Auto).as_str_name(),
        })).collect::<Vec<_>>(),
        "model_transaction_policy": {"decoupled": false},
    });
    use pb::model_version_policy::PolicyChoice;
    v["version_policy"] = match c
        .version_policy
        .as_ref()
        .and_then(|p| p.policy_choice.as_ref())
    {
        Some(PolicyChoice::Latest(l)) => json!({"latest": {"num_versions": l.num_versions}}),
        Some(PolicyChoice::All(_)) => json!({"all": {}}),
        Some(PolicyChoice::Specific(s)) => json!({"specific": {"versions": s.versions}}),
        None => Value::Null,
    };
    if let Some(pb::model_config::SchedulingChoice::DynamicBatching(d)) = &c.scheduling_choice {
        let q = d.default_queue_policy.unwrap_or_default();
        v["dynamic_batching"] = json!({
            "preferred_batch_size": d.preferred_batch_size,
            "max_queue_delay_microseconds": d.max_queue_delay_microseconds,
            "preserve_ordering": d.preserve_ordering,
            "priority_levels": d.priority_levels,
            "default_priority_level": d.default_priority_level,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": q.default_timeout_microseconds,
                "allow_timeout_override": q.allow_timeout_override,
                "max_queue_size": q.max_queue_size,
            },
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};

    fn input(
        name: &str,
        dt: &str,
        shape: Vec<i64>,
        contents: Option<InferTensorContents>,
    ) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: dt.into(),
            shape,
            parameters: HashMap::new(),
            contents,
        }
    }

    #[test]
    fn raw_and_typed_contents_decode_to_the_same_tensor() {
        let x = [1.5f32, -2.0, 3.25, 0.0];
        let raw: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let by_raw = decode_infer(ModelInferRequest {
            inputs: vec![input("x", "FP32", vec![2, 2], None)],
            raw_input_contents: vec![raw.into()],
            ..Default::default()
        })
        .unwrap();
        let typed = decode_infer(ModelInferRequest {
            inputs: vec![input(
                "x",
                "FP32",
                vec![2, 2],
                Some(InferTensorContents {
                    fp32_contents: x.to_vec(),
                    ..Default::default()
                }),
            )],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(by_raw.inputs, typed.inputs);
        assert_eq!(by_raw.inputs[0].data, TensorData::F32(x.to_vec()));
    }

    #[test]
    fn raw_input_contents_decode_as_slices_of_the_received_buffer() {
        use prost::Message;
        let raw: Vec<u8> = (0..64u8).collect();
        let wire = ModelInferRequest {
            inputs: vec![input("x", "FP32", vec![1, 16], None)],
            raw_input_contents: vec![raw.clone().into()],
            ..Default::default()
        }
        .encode_to_vec();
        // tonic decodes each message out of a `BytesMut` holding the received frames
        let mut received = bytes::BytesMut::from(&wire[..]);
        let span = received.as_ptr() as usize..received.as_ptr() as usize + received.len();
        let req = ModelInferRequest::decode(&mut received).unwrap();
        assert_eq!(req.raw_input_contents[0], raw);
        let at = req.raw_input_contents[0].as_ptr() as usize;
        assert!(
            span.contains(&at),
            "raw_input_contents was copied out of the message"
        );
    }

    #[test]
    fn raw_bytes_input_elements_are_slices_of_the_received_buffer() {
        use prost::Message;
        let mut raw = Vec::new();
        for s in [&b"hello"[..], b"", &[0xff, 0xfe]] {
            raw.extend_from_slice(&(s.len() as u32).to_le_bytes());
            raw.extend_from_slice(s);
        }
        let wire = ModelInferRequest {
            inputs: vec![input("t", "BYTES", vec![3], None)],
            raw_input_contents: vec![raw.into()],
            ..Default::default()
        }
        .encode_to_vec();
        let mut received = bytes::BytesMut::from(&wire[..]);
        let span = received.as_ptr_range();
        let r = decode_infer(ModelInferRequest::decode(&mut received).unwrap()).unwrap();
        let TensorData::Bytes(got) = &r.inputs[0].data else {
            panic!("not BYTES")
        };
        let want: Vec<&[u8]> = vec![b"hello", b"", &[0xff, 0xfe]];
        assert_eq!(got.iter().collect::<Vec<_>>(), want);
        assert!(got
            .iter()
            .all(|x| span.contains(&x.as_ptr()) || x.is_empty()));
    }

    #[test]
    fn decode_reads_parameters_and_classification() {
        let mut params = HashMap::new();
        params.insert(
            "priority".into(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::Int64Param(1)),
            },
        );
        params.insert(
            "timeout".into(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::Uint64Param(500)),
            },
        );
        let mut out_params = HashMap::new();
        out_params.insert(
            "classification".into(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::Int64Param(3)),
            },
        );
        let r = decode_infer(ModelInferRequest {
            id: "q".into(),
            parameters: params,
            inputs: vec![input(
                "t",
                "BYTES",
                vec![1],
                Some(InferTensorContents {
                    bytes_contents: vec![b"hi".to_vec()],
                    ..Default::default()
                }),
            )],
            outputs: vec![InferRequestedOutputTensor {
                name: "p".into(),
                parameters: out_params,
            }],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (r.id.as_deref(), r.priority, r.timeout_us),
            (Some("q"), 1, Some(500))
        );
        assert_eq!(r.outputs[0].classification, Some(3));
        assert_eq!(
            r.inputs[0].data,
            TensorData::Bytes([b"hi"].into_iter().collect())
        );
    }

    #[test]
    fn decode_refuses_mismatched_raw_counts_negative_shapes_and_bad_narrowing() {
        let two_raw = ModelInferRequest {
            inputs: vec![input("x", "FP32", vec![1], None)],
            raw_input_contents: vec![vec![0; 4].into(), vec![0; 4].into()],
            ..Default::default()
        };
        assert!(decode_infer(two_raw)
            .unwrap_err()
            .to_string()
            .contains("raw_input_contents has 2"));
        let negative = ModelInferRequest {
            inputs: vec![input("x", "FP32", vec![-1], None)],
            raw_input_contents: vec![vec![0; 4].into()],
            ..Default::default()
        };
        assert!(decode_infer(negative)
            .unwrap_err()
            .to_string()
            .contains("negative"));
        let narrow = ModelInferRequest {
            inputs: vec![input(
                "x",
                "INT8",
                vec![1],
                Some(InferTensorContents {
                    int_contents: vec![300],
                    ..Default::default()
                }),
            )],
            ..Default::default()
        };
        assert!(decode_infer(narrow)
            .unwrap_err()
            .to_string()
            .contains("does not fit INT8"));
    }

    #[test]
    fn encode_writes_raw_little_endian_outputs() {
        let t = Tensor::new("p", vec![1, 2], TensorData::F32(vec![0.25, 0.75]));
        let r = encode_infer("m", 3, Some("id1"), &[t]);
        assert_eq!((r.model_version.as_str(), r.id.as_str()), ("3", "id1"));
        assert_eq!(r.outputs[0].shape, vec![1, 2]);
        assert_eq!(
            r.raw_output_contents[0],
            [0.25f32.to_le_bytes(), 0.75f32.to_le_bytes()].concat()
        );
    }
}
