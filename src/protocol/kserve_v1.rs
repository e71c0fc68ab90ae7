//! KServe v1 / TF-Serving style `:predict`: `{"instances": [...]}` -> `{"predictions": [...]}`.
//! Each instance is one batch row: a (nested) array for a single-input model, or an object keyed by
//! input name. Each prediction is the matching output row (an object when there are several).

use serde_json::{Map, Value};

use super::json::{data_from_raw_json, nested};
use super::ProtocolError;
use crate::spec::TensorSpec;
use crate::tensor::Tensor;

#[derive(serde::Deserialize)]
struct Instances<'a> {
    #[serde(borrow)]
    instances: Option<Vec<&'a serde_json::value::RawValue>>,
}

/// Decodes `{"instances": [...]}` into one tensor per declared input, rows = instances. No tree of
/// the data is built: each instance stays a slice of the body until it is decoded, in one typed
/// pass, into its input's vector (`json::data_from_raw_json`).
pub fn decode_request(
    body: &[u8],
    inputs: &[TensorSpec],
    batching: bool,
) -> Result<Vec<Tensor>, ProtocolError> {
    let parsed: Instances =
        serde_json::from_slice(body).map_err(|e| ProtocolError::Json(e.to_string()))?;
    let instances = parsed.instances.ok_or_else(|| {
        ProtocolError::Json("expected an object with an 'instances' array".into())
    })?;
    if instances.is_empty() {
        return Err(ProtocolError::Json("'instances' is empty".into()));
    }
    if !batching && instances.len() != 1 {
        return Err(ProtocolError::Json(format!(
            "this model does not batch: expected exactly 1 instance, got {}",
            instances.len()
        )));
    }
    let objects = instances[0].get().trim_start().starts_with('{');
    if !objects && inputs.len() != 1 {
        return Err(ProtocolError::Json(format!(
            "this model has {} inputs: each instance must be an object keyed by input name",
            inputs.len()
        )));
    }
    // Objects: each instance's value per input, still as slices of the body.
    let keyed: Vec<std::collections::HashMap<String, &serde_json::value::RawValue>> = if objects {
        instances
            .iter()
            .map(|i| {
                serde_json::from_str(i.get()).map_err(|_| {
                    ProtocolError::Json(
                        "every instance must be an object keyed by input name".into(),
                    )
                })
            })
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    inputs
        .iter()
        .map(|spec| {
            let missing = || ProtocolError::Input {
                name: spec.name.clone(),
                message: "missing from an instance".into(),
            };
            let rows: Vec<&str> = if objects {
                keyed
                    .iter()
                    .map(|m| m.get(&spec.name).map(|r| r.get()).ok_or_else(missing))
                    .collect::<Result<_, _>>()?
            } else {
                instances.iter().map(|r| r.get()).collect()
            };
            let first: Value = serde_json::from_str(rows[0]).map_err(|e| ProtocolError::Input {
                name: spec.name.clone(),
                message: format!("malformed data: {e}"),
            })?;
            let inner = inner_shape(&first);
            let per_row: usize = inner.iter().product();
            let elements = per_row
                .checked_mul(rows.len())
                .ok_or_else(|| ProtocolError::Input {
                    name: spec.name.clone(),
                    message: "more elements than can be addressed".into(),
                })?;
            let mut shape = if batching {
                vec![rows.len()]
            } else {
                Vec::new()
            };
            shape.extend(inner);
            // One array of the rows: the body's own text when it is all of `instances`.
            let joined;
            let text = if objects {
                joined = format!("[{}]", rows.join(","));
                joined.as_str()
            } else {
                instances_text(body).unwrap_or_default()
            };
            let data = data_from_raw_json(spec.datatype, text, elements, &spec.name)?;
            Ok(Tensor::new(spec.name.clone(), shape, data))
        })
        .collect()
}

/// Dimensions of a (nested) array, following first elements.
fn inner_shape(v: &Value) -> Vec<usize> {
    let mut shape = Vec::new();
    let mut cur = v;
    while let Value::Array(a) = cur {
        shape.push(a.len());
        match a.first() {
            Some(x) => cur = x,
            None => break,
        }
    }
    shape
}

/// The raw text of the body's `instances` array.
fn instances_text(body: &[u8]) -> Option<&str> {
    #[derive(serde::Deserialize)]
    struct Raw<'a> {
        #[serde(borrow)]
        instances: &'a serde_json::value::RawValue,
    }
    serde_json::from_slice::<Raw>(body)
        .ok()
        .map(|r| r.instances.get())
}

/// Encodes outputs (each with a leading batch dim when `batching`) as `{"predictions": [...]}`.
pub fn encode_response(outputs: &[Tensor], batching: bool) -> Value {
    let rows = if batching {
        outputs.first().map_or(0, Tensor::rows)
    } else {
        1
    };
    let predictions = (0..rows)
        .map(|r| {
            let row = |t: &Tensor| {
                let inner = if batching {
                    &t.shape[1..]
                } else {
                    &t.shape[..]
                };
                let stride: usize = inner.iter().product();
                nested(&t.data, r * stride, inner)
            };
            match outputs {
                [one] => row(one),
                many => Value::Object(
                    many.iter()
                        .map(|t| (t.name.clone(), row(t)))
                        .collect::<Map<_, _>>(),
                ),
            }
        })
        .collect();
    serde_json::json!({ "predictions": Value::Array(predictions) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{DataType, TensorData};
    use serde_json::json;

    fn spec(name: &str) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype: DataType::F32,
            dims: vec![-1, 2],
        }
    }

    #[test]
    fn decode_instances_single_input_makes_rows() {
        let t = decode_request(br#"{"instances": [[1, 2], [3, 4]]}"#, &[spec("x")], true).unwrap();
        assert_eq!(t[0].shape, vec![2, 2]);
        assert_eq!(t[0].data, TensorData::F32(vec![1.0, 2.0, 3.0, 4.0]));
    }

    #[test]
    fn decode_instances_objects_for_several_inputs() {
        let body = br#"{"instances": [{"a": [1, 2], "b": [5, 6]}]}"#;
        let t = decode_request(body, &[spec("a"), spec("b")], true).unwrap();
        assert_eq!(t[1].data, TensorData::F32(vec![5.0, 6.0]));
        let e = decode_request(br#"{"instances": [[1, 2]]}"#, &[spec("a"), spec("b")], true);
        assert!(e.is_err());
    }

    #[test]
    fn decode_without_instances_is_error() {
        assert!(decode_request(br#"{"inputs": []}"#, &[spec("x")], true).is_err());
        assert!(decode_request(br#"{"instances": []}"#, &[spec("x")], true).is_err());
    }

    #[test]
    fn encode_predictions_one_row_per_instance() {
        let t = Tensor::new("y", vec![2, 2], TensorData::F32(vec![0.25, 0.75, 1.0, 0.0]));
        assert_eq!(
            encode_response(&[t], true),
            json!({"predictions": [[0.25, 0.75], [1.0, 0.0]]})
        );
    }
}
