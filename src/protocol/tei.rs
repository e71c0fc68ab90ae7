//! Text Embeddings Inference: `POST /embed` (`inputs`, `normalize`, `truncate`,
//! `truncation_direction`, `dimensions`; `model` is Ferrite's addition) -> `[[f32]]`, `GET /info`,
//! and errors in TEI's shape `{"error": "...", "error_type": "Validation|Overloaded|Backend|
//! Unhealthy|Empty"}`. Typed structs and pure functions.

use bytes::Bytes;
use serde::Serialize;

use super::embeddings::{dimensions, texts, DecodeError, Fields};
use super::json::write_f32_array;
use super::ProtocolError;
use crate::tensor::Texts;

#[derive(Debug, Clone, PartialEq)]
pub struct EmbedRequest {
    /// May be empty: TEI answers that with its own `Empty` error.
    pub inputs: Texts,
    pub model: Option<String>,
    /// L2-normalise (default true).
    pub normalize: bool,
    /// Cut texts over the model's limit instead of refusing them (default false).
    pub truncate: bool,
    pub dimensions: Option<usize>,
}

/// The body fields this door reads (others are ignored).
const FIELDS: &[&str] = &[
    "inputs",
    "model",
    "normalize",
    "truncate",
    "truncation_direction",
    "dimensions",
];

/// Decodes a request body. Only right-side truncation is supported.
pub fn decode_request(body: &[u8]) -> Result<EmbedRequest, DecodeError> {
    let f = Fields::parse(body, FIELDS)?;
    let model = f.model()?;
    let field = |error: ProtocolError| DecodeError::Field {
        model: model.clone(),
        error,
    };
    let flag = |key: &str, default: bool| {
        f.get::<bool>(key, "true or false")
            .map(|v| v.unwrap_or(default))
            .map_err(field)
    };
    let (normalize, truncate) = (flag("normalize", true)?, flag("truncate", false)?);
    if let Some(dir) = f
        .get::<String>("truncation_direction", "'Left' or 'Right'")
        .map_err(field)?
    {
        if !dir.eq_ignore_ascii_case("right") {
            return Err(field(ProtocolError::Field(format!(
                "truncation_direction '{dir}' is not supported (only Right)"
            ))));
        }
    }
    Ok(EmbedRequest {
        inputs: texts(&f, "inputs").map_err(field)?,
        normalize,
        truncate,
        dimensions: dimensions(&f).map_err(field)?,
        model,
    })
}

/// The `/embed` answer, `[[f32]]` as JSON: vector `i` copied from `arrays[i]` where given (its JSON
/// array text, from the response cache), else written from the floats; the same bytes either way
/// (`json::write_f32_array` is `serde_json`'s formatting).
pub fn encode_embeddings(vectors: &[Vec<f32>], arrays: &[Option<Bytes>]) -> Vec<u8> {
    let given: usize = arrays.iter().flatten().map(Bytes::len).sum();
    let mut out = Vec::with_capacity(2 + vectors.len() + given);
    out.push(b'[');
    for (i, v) in vectors.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match arrays.get(i) {
            Some(Some(a)) => out.extend_from_slice(a),
            _ => write_f32_array(&mut out, v),
        }
    }
    out.push(b']');
    out
}

/// TEI's error kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ErrorType {
    /// Missing or bad credentials, or a missing scope (Ferrite's addition).
    Unauthorized,
    Validation,
    Overloaded,
    Backend,
    Unhealthy,
    Empty,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorBody {
    pub error: String,
    pub error_type: ErrorType,
}

pub fn encode_error(message: &str, error_type: ErrorType) -> ErrorBody {
    ErrorBody {
        error: message.to_string(),
        error_type,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pooling {
    pub pooling: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelType {
    pub embedding: Pooling,
}

/// `GET /info`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Info {
    pub model_id: String,
    pub model_type: ModelType,
    pub max_input_length: usize,
    pub max_client_batch_size: usize,
    pub max_batch_tokens: usize,
    pub version: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_defaults_and_options() {
        let r = decode_request(br#"{"inputs": "x"}"#).unwrap();
        assert_eq!(r.inputs.iter().collect::<Vec<_>>(), vec!["x"]);
        assert!(r.normalize && !r.truncate);
        assert_eq!((r.model, r.dimensions), (None, None));
        let r = decode_request(
            br#"{"inputs": ["a", "b"], "normalize": false, "truncate": true,
                 "truncation_direction": "right", "dimensions": 4, "model": "m"}"#,
        )
        .unwrap();
        assert_eq!(r.inputs.iter().collect::<Vec<_>>(), vec!["a", "b"]);
        assert!(!r.normalize && r.truncate);
        assert_eq!(r.dimensions, Some(4));
        assert_eq!(r.model.as_deref(), Some("m"));
        assert_eq!(
            decode_request(br#"{"inputs": []}"#).unwrap().inputs.len(),
            0
        );
    }

    #[test]
    fn decode_bad_option_is_a_field_error_naming_it() {
        for (body, needle) in [
            (
                &br#"{"inputs": "a", "normalize": "yes"}"#[..],
                "'normalize'",
            ),
            (br#"{"inputs": "a", "truncate": 1}"#, "'truncate'"),
            (
                br#"{"inputs": "a", "truncation_direction": "Left"}"#,
                "only Right",
            ),
            (br#"{"inputs": 5}"#, "'inputs'"),
        ] {
            match decode_request(body) {
                Err(DecodeError::Field { error, .. }) => {
                    assert!(error.to_string().contains(needle), "{error}")
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            decode_request(&[b'"', 0xff, 0xfe, b'"']),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn encode_embeddings_from_floats_or_given_text_is_serde_json() {
        let vectors = vec![vec![0.25, -1e-7, f32::NAN], vec![], vec![3.0, 0.1]];
        let want = serde_json::to_vec(&vectors).unwrap();
        assert_eq!(encode_embeddings(&vectors, &[]), want);
        let text = |v: &[f32]| Some(Bytes::from(serde_json::to_vec(v).unwrap()));
        let some = [text(&vectors[0]), None, text(&vectors[2])];
        assert_eq!(encode_embeddings(&vectors, &some), want);
    }

    #[test]
    fn error_and_info_have_tei_shape() {
        let j = serde_json::to_value(encode_error("too long", ErrorType::Validation)).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"error": "too long", "error_type": "Validation"})
        );
        let info = Info {
            model_id: "m".into(),
            model_type: ModelType {
                embedding: Pooling { pooling: "mean" },
            },
            max_input_length: 256,
            max_client_batch_size: 32,
            max_batch_tokens: 0,
            version: "0.1.0",
        };
        let j = serde_json::to_value(info).unwrap();
        assert_eq!(j["model_type"]["embedding"]["pooling"], "mean");
        assert_eq!(j["max_input_length"], 256);
    }
}
