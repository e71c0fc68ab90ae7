//! What the embedding wire formats (OpenAI, TEI) share: the body read as a map of raw field values
//! (no generic JSON tree), `input(s)` as a string or a list of strings, and `dimensions`.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::ProtocolError;

/// Why an embeddings body was refused. `Field` keeps the model the body names (when it could be
/// read), so that the server can count the bad request against that model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Not a JSON object.
    #[error("{0}")]
    Malformed(ProtocolError),
    /// A JSON object with a field of the wrong type or value.
    #[error("{error}")]
    Field {
        model: Option<String>,
        error: ProtocolError,
    },
}

/// A body's top-level fields, each still raw JSON text (decoded one by one, typed).
pub(super) struct Fields<'a>(HashMap<&'a str, &'a RawValue>);

impl<'a> Fields<'a> {
    pub(super) fn parse(body: &'a [u8]) -> Result<Fields<'a>, DecodeError> {
        let text = std::str::from_utf8(body).map_err(|e| {
            DecodeError::Malformed(ProtocolError::Json(format!("body is not UTF-8: {e}")))
        })?;
        serde_json::from_str::<HashMap<&'a str, &'a RawValue>>(text)
            .map(Fields)
            .map_err(|e| {
                DecodeError::Malformed(ProtocolError::Json(format!("expected a JSON object: {e}")))
            })
    }

    /// Field `key` as a `T`, or `None` when absent or null; `expected` says what it must be.
    pub(super) fn get<T: Deserialize<'a>>(
        &self,
        key: &str,
        expected: &str,
    ) -> Result<Option<T>, ProtocolError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => serde_json::from_str(raw.get())
                .map(Some)
                .map_err(|_| field_error(key, expected, raw.get())),
        }
    }

    /// The optional `model` field (a string).
    pub(super) fn model(&self) -> Result<Option<String>, DecodeError> {
        self.get::<String>("model", "a string")
            .map_err(|error| DecodeError::Field { model: None, error })
    }
}

fn field_error(key: &str, expected: &str, got: &str) -> ProtocolError {
    let got: String = got.chars().take(40).collect();
    ProtocolError::Field(format!("'{key}' must be {expected}, got {got}"))
}

/// A string or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Field `key` as texts: a string or a list of strings; absent is an error.
pub(super) fn texts(fields: &Fields, key: &str) -> Result<Vec<String>, ProtocolError> {
    let expected = "a string or a list of strings (token arrays are not supported)";
    match fields.get::<OneOrMany>(key, expected)? {
        Some(OneOrMany::One(s)) => Ok(vec![s]),
        Some(OneOrMany::Many(v)) => Ok(v),
        None => Err(ProtocolError::Field(format!(
            "'{key}' is required: {expected}"
        ))),
    }
}

/// The optional `dimensions` field (a positive integer; its upper bound is the model's).
pub(super) fn dimensions(fields: &Fields) -> Result<Option<usize>, ProtocolError> {
    fields.get::<usize>("dimensions", "a positive integer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_a_non_object_body_are_malformed() {
        for body in [&b"[1]"[..], b"{", b"\"x\"", &[b'"', 0xff, b'"']] {
            assert!(
                matches!(Fields::parse(body), Err(DecodeError::Malformed(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn texts_accepts_string_or_list_and_names_the_field() {
        let f = Fields::parse(br#"{"a": "x", "b": ["y", "z"], "c": [1, 2]}"#).unwrap();
        assert_eq!(texts(&f, "a").unwrap(), vec!["x"]);
        assert_eq!(texts(&f, "b").unwrap(), vec!["y", "z"]);
        let e = texts(&f, "c").unwrap_err().to_string();
        assert!(e.contains("'c'") && e.contains("list of strings"), "{e}");
        assert!(texts(&f, "d").unwrap_err().to_string().contains("required"));
    }

    #[test]
    fn dimensions_must_be_a_positive_integer_and_null_is_absent() {
        let f = Fields::parse(br#"{"dimensions": null}"#).unwrap();
        assert_eq!(dimensions(&f).unwrap(), None);
        let f = Fields::parse(br#"{"dimensions": 8}"#).unwrap();
        assert_eq!(dimensions(&f).unwrap(), Some(8));
        for bad in [
            &br#"{"dimensions": -1}"#[..],
            br#"{"dimensions": "8"}"#,
            br#"{"dimensions": 1.5}"#,
        ] {
            let f = Fields::parse(bad).unwrap();
            assert!(dimensions(&f).is_err());
        }
    }
}
