//! Declared inputs/outputs (`TensorSpec`) and the validation of request tensors against them: names,
//! datatypes, shapes, element counts, batch size and finite floats. Pure code; the error messages go
//! to clients verbatim.

use crate::tensor::{DataType, Tensor, TensorData};

/// One declared input or output: name, datatype and dims (-1 = variable; the first dim is the
/// batch dim when the model batches).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    #[serde(with = "datatype_serde")]
    pub datatype: DataType,
    pub dims: Vec<i64>,
}

impl TensorSpec {
    /// The dims with every -1 replaced by `fill` (used for warm-up inputs).
    pub fn concrete_shape(&self, fill: usize) -> Vec<usize> {
        self.dims
            .iter()
            .map(|&d| if d < 0 { fill } else { d as usize })
            .collect()
    }
}

mod datatype_serde {
    use super::DataType;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(dt: &DataType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(dt.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DataType, D::Error> {
        let s = String::deserialize(d)?;
        DataType::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown datatype '{s}', expected one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, \
                 INT16, INT32, INT64, FP16, BF16, FP32, FP64, BYTES"
            ))
        })
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    #[error("unexpected input '{name}', model expects {expected:?}")]
    UnknownInput { name: String, expected: Vec<String> },
    #[error("missing input '{name}'")]
    MissingInput { name: String },
    #[error("input '{name}' given more than once")]
    DuplicateInput { name: String },
    #[error("input '{name}': expected datatype {expected}, got {got}")]
    Datatype {
        name: String,
        expected: DataType,
        got: DataType,
    },
    #[error("input '{name}': expected shape {expected:?}, got {got:?}")]
    Shape {
        name: String,
        expected: Vec<i64>,
        got: Vec<usize>,
    },
    #[error("input '{name}': shape {shape:?} holds {expected} elements, but {got} were given")]
    ElementCount {
        name: String,
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
    #[error("input '{name}': batch size {got} is not within 1..={max} (max_batch_size)")]
    BatchSize {
        name: String,
        got: usize,
        max: usize,
    },
    #[error("input '{name}': batch dimension {got} differs from input '{first}' ({expected})")]
    BatchMismatch {
        name: String,
        first: String,
        expected: usize,
        got: usize,
    },
    #[error("input '{name}': element {index} is {value} (NaN and infinity are not accepted)")]
    NonFinite {
        name: String,
        index: usize,
        value: String,
    },
}

/// Checks `inputs` against `specs`; returns the number of batch rows the request holds
/// (1 for a model that does not batch, `max_batch_size == 0`).
pub fn validate_inputs(
    specs: &[TensorSpec],
    max_batch_size: usize,
    inputs: &[Tensor],
) -> Result<usize, ValidationError> {
    for (i, t) in inputs.iter().enumerate() {
        if inputs[..i].iter().any(|o| o.name == t.name) {
            return Err(ValidationError::DuplicateInput {
                name: t.name.clone(),
            });
        }
        if !specs.iter().any(|s| s.name == t.name) {
            return Err(ValidationError::UnknownInput {
                name: t.name.clone(),
                expected: specs.iter().map(|s| s.name.clone()).collect(),
            });
        }
    }
    let mut rows: Option<(usize, &str)> = None;
    for spec in specs {
        let t = inputs.iter().find(|t| t.name == spec.name).ok_or_else(|| {
            ValidationError::MissingInput {
                name: spec.name.clone(),
            }
        })?;
        check_one(spec, t)?;
        if max_batch_size > 0 {
            let r = t.rows();
            match rows {
                None => {
                    if r == 0 || r > max_batch_size {
                        return Err(ValidationError::BatchSize {
                            name: t.name.clone(),
                            got: r,
                            max: max_batch_size,
                        });
                    }
                    rows = Some((r, &spec.name));
                }
                Some((expected, first)) if expected != r => {
                    return Err(ValidationError::BatchMismatch {
                        name: t.name.clone(),
                        first: first.to_string(),
                        expected,
                        got: r,
                    })
                }
                Some(_) => {}
            }
        }
    }
    Ok(rows.map(|(r, _)| r).unwrap_or(1))
}

fn check_one(spec: &TensorSpec, t: &Tensor) -> Result<(), ValidationError> {
    if t.datatype() != spec.datatype {
        return Err(ValidationError::Datatype {
            name: t.name.clone(),
            expected: spec.datatype,
            got: t.datatype(),
        });
    }
    let shape_ok = t.shape.len() == spec.dims.len()
        && t.shape
            .iter()
            .zip(&spec.dims)
            .all(|(&g, &e)| e < 0 || g as i64 == e);
    if !shape_ok {
        return Err(ValidationError::Shape {
            name: t.name.clone(),
            expected: spec.dims.clone(),
            got: t.shape.clone(),
        });
    }
    let expected = t
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .unwrap_or(usize::MAX);
    if expected != t.data.len() {
        return Err(ValidationError::ElementCount {
            name: t.name.clone(),
            shape: t.shape.clone(),
            expected,
            got: t.data.len(),
        });
    }
    if let Some(index) = t.data.first_non_finite() {
        let value = match &t.data {
            TensorData::F16(v) => v[index].to_string(),
            TensorData::BF16(v) => v[index].to_string(),
            TensorData::F32(v) => v[index].to_string(),
            TensorData::F64(v) => v[index].to_string(),
            _ => String::from("?"),
        };
        return Err(ValidationError::NonFinite {
            name: t.name.clone(),
            index,
            value,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Vec<TensorSpec> {
        vec![TensorSpec {
            name: "pixels".into(),
            datatype: DataType::F32,
            dims: vec![-1, 4],
        }]
    }

    fn input(shape: Vec<usize>, v: Vec<f32>) -> Vec<Tensor> {
        vec![Tensor::new("pixels", shape, TensorData::F32(v))]
    }

    #[test]
    fn validate_good_batch_returns_rows() {
        let r = validate_inputs(&spec(), 8, &input(vec![2, 4], vec![0.5; 8]));
        assert_eq!(r, Ok(2));
    }

    #[test]
    fn validate_wrong_inner_dim_names_expected_and_got() {
        let e = validate_inputs(&spec(), 8, &input(vec![1, 3], vec![0.5; 3])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "input 'pixels': expected shape [-1, 4], got [1, 3]"
        );
    }

    #[test]
    fn validate_nan_is_rejected_with_index() {
        let e = validate_inputs(
            &spec(),
            8,
            &input(vec![1, 4], vec![0.0, 1.0, f32::NAN, 2.0]),
        )
        .unwrap_err();
        assert!(
            matches!(e, ValidationError::NonFinite { index: 2, .. }),
            "{e}"
        );
    }

    #[test]
    fn validate_batch_over_max_is_rejected() {
        let e = validate_inputs(&spec(), 2, &input(vec![3, 4], vec![0.0; 12])).unwrap_err();
        assert!(matches!(
            e,
            ValidationError::BatchSize { got: 3, max: 2, .. }
        ));
    }

    #[test]
    fn validate_wrong_dtype_missing_and_unknown_inputs() {
        let t = vec![Tensor::new(
            "pixels",
            vec![1, 4],
            TensorData::I32(vec![0; 4]),
        )];
        assert!(matches!(
            validate_inputs(&spec(), 8, &t),
            Err(ValidationError::Datatype { .. })
        ));
        assert!(matches!(
            validate_inputs(&spec(), 8, &[]),
            Err(ValidationError::MissingInput { .. })
        ));
        let t = vec![Tensor::new("x", vec![1, 4], TensorData::F32(vec![0.0; 4]))];
        assert!(matches!(
            validate_inputs(&spec(), 8, &t),
            Err(ValidationError::UnknownInput { .. })
        ));
    }

    #[test]
    fn validate_element_count_mismatch_is_rejected() {
        let e = validate_inputs(&spec(), 8, &input(vec![2, 4], vec![0.0; 7])).unwrap_err();
        assert!(matches!(
            e,
            ValidationError::ElementCount {
                expected: 8,
                got: 7,
                ..
            }
        ));
    }
}
