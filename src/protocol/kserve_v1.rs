//! KServe v1 / TF-Serving style `:predict`: `{"instances": [...]}` -> `{"predictions": [...]}`.
//! Each instance is one batch row: a (nested) array for a single-input model, or an object keyed by
//! input name. Each prediction is the matching output row (an object when there are several).

use serde::de::{DeserializeSeed, Deserializer as _, IgnoredAny, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::json::{data_from_raw_json, nested};
use super::ProtocolError;
use crate::spec::TensorSpec;
use crate::tensor::Tensor;

#[derive(serde::Deserialize)]
struct Instances<'a> {
    #[serde(borrow)]
    instances: Option<&'a RawValue>,
}

/// Decodes `{"instances": [...]}` into one tensor per declared input, rows = instances. No tree of
/// the data is built: each instance stays a slice of the body until it is decoded, in one typed
/// pass, into its input's vector (`json::data_from_raw_json`); more than `max_rows` instances
/// (the model's batch budget; 1 when it does not batch) are refused as the list is read.
pub fn decode_request(
    body: &[u8],
    inputs: &[TensorSpec],
    batching: bool,
    max_rows: usize,
) -> Result<Vec<Tensor>, ProtocolError> {
    let parsed: Instances =
        serde_json::from_slice(body).map_err(|e| ProtocolError::Json(e.to_string()))?;
    let list = parsed.instances.ok_or_else(|| {
        ProtocolError::Json("expected an object with an 'instances' array".into())
    })?;
    let max_rows = if batching { max_rows.max(1) } else { 1 };
    let instances = bounded_list(list.get(), max_rows).map_err(|e| {
        ProtocolError::Json(if e.is_data() && !batching {
            "this model does not batch: expected exactly 1 instance".into()
        } else {
            format!("'instances': {e}")
        })
    })?;
    if instances.is_empty() {
        return Err(ProtocolError::Json("'instances' is empty".into()));
    }
    let objects = instances[0].get().trim_start().starts_with('{');
    if !objects && inputs.len() != 1 {
        return Err(ProtocolError::Json(format!(
            "this model has {} inputs: each instance must be an object keyed by input name",
            inputs.len()
        )));
    }
    // Objects: each instance's value per declared input, still as slices of the body (other keys
    // are skipped unread).
    let keyed: Vec<Vec<Option<&RawValue>>> = if objects {
        instances
            .iter()
            .map(|i| {
                keyed_row(i.get(), inputs).map_err(|_| {
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
        .enumerate()
        .map(|(k, spec)| {
            let missing = || ProtocolError::Input {
                name: spec.name.clone(),
                message: "missing from an instance".into(),
            };
            let rows: Vec<&str> = if objects {
                keyed
                    .iter()
                    .map(|m| m[k].map(RawValue::get).ok_or_else(missing))
                    .collect::<Result<_, _>>()?
            } else {
                instances.iter().map(|r| r.get()).collect()
            };
            let inner = inner_shape(rows[0]).map_err(|e| ProtocolError::Input {
                name: spec.name.clone(),
                message: format!("malformed data: {e}"),
            })?;
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
                list.get()
            };
            let data = data_from_raw_json(spec.datatype, text, elements, &spec.name)?;
            Ok(Tensor::new(spec.name.clone(), shape, data))
        })
        .collect()
}

/// The elements of a JSON array as slices of its text, refusing more than `max` as they are read.
fn bounded_list(raw: &str, max: usize) -> Result<Vec<&RawValue>, serde_json::Error> {
    struct List(usize);
    impl<'de> Visitor<'de> for List {
        type Value = Vec<&'de RawValue>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "an array of at most {} instances", self.0)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element::<&'de RawValue>()? {
                if out.len() == self.0 {
                    return Err(serde::de::Error::custom(format!(
                        "more than {} instances (the model's batch limit)",
                        self.0
                    )));
                }
                out.push(item);
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw);
    let out = de.deserialize_seq(List(max))?;
    de.end()?;
    Ok(out)
}

/// Dimensions of a (nested) array, following first elements; read without building it.
fn inner_shape(raw: &str) -> Result<Vec<usize>, serde_json::Error> {
    struct Dims<'a>(&'a mut Vec<usize>);
    impl<'de> DeserializeSeed<'de> for Dims<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Dims<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a value or nested arrays")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let depth = self.0.len();
            self.0.push(0);
            if seq.next_element_seed(Dims(&mut *self.0))?.is_some() {
                let mut n = 1;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                self.0[depth] = n;
            }
            Ok(())
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }
    let mut shape = Vec::new();
    let mut de = serde_json::Deserializer::from_str(raw);
    Dims(&mut shape).deserialize(&mut de)?;
    de.end()?;
    Ok(shape)
}

/// An instance object's value for each of `inputs` (by position), as slices of its text.
fn keyed_row<'a>(
    raw: &'a str,
    inputs: &[TensorSpec],
) -> Result<Vec<Option<&'a RawValue>>, serde_json::Error> {
    struct Key<'s>(&'s [TensorSpec]);
    impl<'de> DeserializeSeed<'de> for Key<'_> {
        type Value = Option<usize>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl Visitor<'_> for Key<'_> {
        type Value = Option<usize>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "an input name")
        }
        fn visit_str<E>(self, v: &str) -> Result<Option<usize>, E> {
            Ok(self.0.iter().position(|s| s.name == v))
        }
    }
    struct Row<'s>(&'s [TensorSpec]);
    impl<'de> Visitor<'de> for Row<'_> {
        type Value = Vec<Option<&'de RawValue>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "an object keyed by input name")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut row = vec![None; self.0.len()];
            while let Some(key) = map.next_key_seed(Key(self.0))? {
                match key {
                    Some(k) => row[k] = Some(map.next_value::<&'de RawValue>()?),
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(row)
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw);
    let row = de.deserialize_map(Row(inputs))?;
    de.end()?;
    Ok(row)
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
        let t =
            decode_request(br#"{"instances": [[1, 2], [3, 4]]}"#, &[spec("x")], true, 8).unwrap();
        assert_eq!(t[0].shape, vec![2, 2]);
        assert_eq!(t[0].data, TensorData::F32(vec![1.0, 2.0, 3.0, 4.0]));
    }

    #[test]
    fn decode_instances_objects_for_several_inputs() {
        let body = br#"{"instances": [{"a": [1, 2], "b": [5, 6]}]}"#;
        let t = decode_request(body, &[spec("a"), spec("b")], true, 8).unwrap();
        assert_eq!(t[1].data, TensorData::F32(vec![5.0, 6.0]));
        let e = decode_request(
            br#"{"instances": [[1, 2]]}"#,
            &[spec("a"), spec("b")],
            true,
            8,
        );
        assert!(e.is_err());
    }

    #[test]
    fn decode_without_instances_is_error() {
        assert!(decode_request(br#"{"inputs": []}"#, &[spec("x")], true, 8).is_err());
        assert!(decode_request(br#"{"instances": []}"#, &[spec("x")], true, 8).is_err());
    }

    #[test]
    fn decode_refuses_instances_past_the_batch_limit_and_reads_shapes_without_a_tree() {
        let body = br#"{"instances": [[1, 2], [3, 4], [5, 6]]}"#;
        let e = decode_request(body, &[spec("x")], true, 2).unwrap_err();
        assert!(e.to_string().contains("more than 2 instances"), "{e}");
        let e = decode_request(body, &[spec("x")], false, 8).unwrap_err();
        assert!(e.to_string().contains("does not batch"), "{e}");
        // Unknown keys are skipped; nested shapes come from the first row.
        let body = br#"{"instances": [{"x": [[1, 2]], "junk": {"a": [1, {"b": null}]}}]}"#;
        let t = decode_request(body, &[spec("x")], true, 8).unwrap();
        assert_eq!(t[0].shape, vec![1, 1, 2]);
        assert_eq!(inner_shape("[[1, 2, 3], [4]]").unwrap(), vec![2, 3]);
        assert_eq!(inner_shape("[]").unwrap(), vec![0]);
        assert_eq!(inner_shape("{\"a\": 1}").unwrap(), Vec::<usize>::new());
        assert!(inner_shape("[1, 2").is_err());
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
