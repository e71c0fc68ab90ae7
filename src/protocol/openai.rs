//! OpenAI `POST /v1/embeddings`: `input` (string or list), `model`, `encoding_format`
//! (float | base64), `dimensions`, `user` -> `{object, data: [{object, embedding, index}], model,
//! usage}`, and errors in OpenAI's shape `{"error": {"message", "type", "param", "code"}}`.
//! Typed structs and pure functions.

use base64::Engine;
use serde::Serialize;

use super::embeddings::{dimensions, texts, DecodeError, Fields};
use super::ProtocolError;
use crate::tensor::Texts;

/// How the response carries each embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncodingFormat {
    /// A JSON array of numbers.
    #[default]
    Float,
    /// Base64 of the little-endian f32 bytes.
    Base64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsRequest {
    pub input: Texts,
    pub model: Option<String>,
    pub encoding_format: EncodingFormat,
    pub dimensions: Option<usize>,
    /// The end user, as the client names them (a routing key for sticky assignment later).
    pub user: Option<String>,
}

/// The body fields this door reads (others are ignored).
const FIELDS: &[&str] = &["input", "model", "encoding_format", "dimensions", "user"];

/// Decodes a request body.
pub fn decode_request(body: &[u8]) -> Result<EmbeddingsRequest, DecodeError> {
    let f = Fields::parse(body, FIELDS)?;
    let model = f.model()?;
    let field = |error: ProtocolError| DecodeError::Field {
        model: model.clone(),
        error,
    };
    let encoding_format = match f
        .get::<String>("encoding_format", "'float' or 'base64'")
        .map_err(field)?
        .as_deref()
    {
        None | Some("float") => EncodingFormat::Float,
        Some("base64") => EncodingFormat::Base64,
        Some(other) => {
            return Err(field(ProtocolError::Field(format!(
                "encoding_format must be 'float' or 'base64', got '{other}'"
            ))))
        }
    };
    Ok(EmbeddingsRequest {
        input: texts(&f, "input").map_err(field)?,
        encoding_format,
        dimensions: dimensions(&f).map_err(field)?,
        user: f.get("user", "a string").map_err(field)?,
        model,
    })
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Embedding {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmbeddingData {
    pub object: &'static str,
    pub embedding: Embedding,
    pub index: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmbeddingsResponse {
    pub object: &'static str,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: Usage,
}

/// The response for `vectors` (in input order) computed by `model` from `tokens` tokens.
pub fn encode_response(
    vectors: Vec<Vec<f32>>,
    model: &str,
    tokens: usize,
    format: EncodingFormat,
) -> EmbeddingsResponse {
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| EmbeddingData {
            object: "embedding",
            embedding: match format {
                EncodingFormat::Float => Embedding::Float(v),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Embedding::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            },
            index,
        })
        .collect();
    EmbeddingsResponse {
        object: "list",
        data,
        model: model.to_string(),
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    }
}

/// OpenAI's error kinds, as its `type` field names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidRequestError,
    AuthenticationError,
    PermissionError,
    NotFoundError,
    RateLimitError,
    ServerError,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: ErrorKind,
    pub param: Option<String>,
    pub code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

pub fn encode_error(message: &str, kind: ErrorKind) -> ErrorBody {
    ErrorBody {
        error: ErrorDetail {
            message: message.to_string(),
            kind,
            param: None,
            code: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_string_or_list_with_defaults() {
        let r = decode_request(br#"{"input": "hi"}"#).unwrap();
        assert_eq!(r.input.iter().collect::<Vec<_>>(), vec!["hi"]);
        assert_eq!(r.encoding_format, EncodingFormat::Float);
        assert_eq!((r.model, r.dimensions, r.user), (None, None, None));
        let r = decode_request(
            br#"{"input": ["a", "b"], "model": "m", "encoding_format": "base64",
                 "dimensions": 8, "user": "u1", "extra": {"ignored": true}}"#,
        )
        .unwrap();
        assert_eq!(r.input.iter().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(r.model.as_deref(), Some("m"));
        assert_eq!(r.encoding_format, EncodingFormat::Base64);
        assert_eq!(r.dimensions, Some(8));
        assert_eq!(r.user.as_deref(), Some("u1"));
    }

    #[test]
    fn decode_bad_field_keeps_the_model_and_names_the_field() {
        for (body, needle) in [
            (
                &br#"{"model": "m", "input": [1, 2]}"#[..],
                "list of strings",
            ),
            (
                br#"{"model": "m", "input": "x", "encoding_format": "int8"}"#,
                "encoding_format",
            ),
            (
                br#"{"model": "m", "input": "x", "dimensions": "8"}"#,
                "'dimensions'",
            ),
            (br#"{"model": "m"}"#, "'input' is required"),
        ] {
            match decode_request(body) {
                Err(DecodeError::Field { model, error }) => {
                    assert_eq!(model.as_deref(), Some("m"));
                    assert!(error.to_string().contains(needle), "{error}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            decode_request(b"not json"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode_request(br#"{"model": 3, "input": "x"}"#),
            Err(DecodeError::Field { model: None, .. })
        ));
    }

    #[test]
    fn encode_float_and_base64_round_trip() {
        let v = vec![vec![1.0f32, -0.5], vec![0.25, 2.0]];
        let r = encode_response(v.clone(), "m", 7, EncodingFormat::Float);
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"object": "list", "model": "m",
                "data": [{"object": "embedding", "embedding": [1.0, -0.5], "index": 0},
                         {"object": "embedding", "embedding": [0.25, 2.0], "index": 1}],
                "usage": {"prompt_tokens": 7, "total_tokens": 7}})
        );
        let r = encode_response(v.clone(), "m", 7, EncodingFormat::Base64);
        let Embedding::Base64(b) = &r.data[1].embedding else {
            panic!("base64 expected")
        };
        let bytes = base64::engine::general_purpose::STANDARD.decode(b).unwrap();
        let back: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(back, v[1]);
    }

    #[test]
    fn error_body_has_openai_shape() {
        let j = serde_json::to_value(encode_error("nope", ErrorKind::NotFoundError)).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"error": {"message": "nope", "type": "not_found_error",
                                         "param": null, "code": null}})
        );
    }
}
