//! What the embedding wire formats (OpenAI, TEI) share: the body read as a map of raw field values
//! (no generic JSON tree), `input(s)` as a string or a list of strings, and `dimensions`.

use std::borrow::Cow;

use serde::de::{Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
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

/// A body's known top-level fields, each still raw JSON text (decoded one by one, typed); other
/// fields are skipped unread (a map of every field cost tens of times the body for many small ones).
pub(super) struct Fields<'a> {
    names: &'static [&'static str],
    values: Vec<Option<&'a RawValue>>,
}

impl<'a> Fields<'a> {
    /// Reads a JSON object, keeping the fields named in `names`.
    pub(super) fn parse(
        body: &'a [u8],
        names: &'static [&'static str],
    ) -> Result<Fields<'a>, DecodeError> {
        let text = std::str::from_utf8(body).map_err(|e| {
            DecodeError::Malformed(ProtocolError::Json(format!("body is not UTF-8: {e}")))
        })?;
        let mut de = serde_json::Deserializer::from_str(text);
        de.deserialize_map(Known(names))
            .and_then(|values| de.end().map(|()| values))
            .map(|values| Fields { names, values })
            .map_err(|e| {
                DecodeError::Malformed(ProtocolError::Json(format!("expected a JSON object: {e}")))
            })
    }

    /// Field `key`'s raw text, or `None` when absent or null.
    fn raw(&self, key: &str) -> Option<&'a str> {
        let i = self.names.iter().position(|n| *n == key);
        debug_assert!(
            i.is_some(),
            "field '{key}' is not among the parsed names. This is a bug."
        );
        i.and_then(|i| self.values[i])
            .map(RawValue::get)
            .filter(|raw| *raw != "null")
    }

    /// Field `key` as a `T`, or `None` when absent or null; `expected` says what it must be.
    pub(super) fn get<T: Deserialize<'a>>(
        &self,
        key: &str,
        expected: &str,
    ) -> Result<Option<T>, ProtocolError> {
        match self.raw(key) {
            None => Ok(None),
            Some(raw) => serde_json::from_str(raw)
                .map(Some)
                .map_err(|_| field_error(key, expected, raw)),
        }
    }

    /// The optional `model` field (a string).
    pub(super) fn model(&self) -> Result<Option<String>, DecodeError> {
        self.get::<String>("model", "a string")
            .map_err(|error| DecodeError::Field { model: None, error })
    }
}

/// The visitor of a body object: each of the names' values as raw text, other fields ignored.
struct Known(&'static [&'static str]);

impl<'de> Visitor<'de> for Known {
    type Value = Vec<Option<&'de RawValue>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values = vec![None; self.0.len()];
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match self.0.iter().position(|n| *n == key) {
                Some(i) => values[i] = Some(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(values)
    }
}

fn field_error(key: &str, expected: &str, got: &str) -> ProtocolError {
    let got: String = got.chars().take(40).collect();
    ProtocolError::Field(format!("'{key}' must be {expected}, got {got}"))
}

/// Field `key` as texts: a string or a list of strings; absent is an error. A list is counted
/// first (nothing kept) and then read into a vector of exactly that many strings: no growth by
/// doubling, no buffered copy of the list (serde's untagged enums buffer the whole value).
pub(super) fn texts(fields: &Fields, key: &str) -> Result<Vec<String>, ProtocolError> {
    let expected = "a string or a list of strings (token arrays are not supported)";
    let Some(raw) = fields.raw(key) else {
        return Err(ProtocolError::Field(format!(
            "'{key}' is required: {expected}"
        )));
    };
    let bad = || field_error(key, expected, raw);
    if raw.starts_with('"') {
        return serde_json::from_str::<String>(raw)
            .map(|s| vec![s])
            .map_err(|_| bad());
    }
    struct Strings(Option<usize>);
    impl<'de> Visitor<'de> for Strings {
        type Value = (usize, Vec<String>);
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a list of strings")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let Some(n) = self.0 else {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                return Ok((n, Vec::new()));
            };
            let mut out = Vec::with_capacity(n);
            while let Some(s) = seq.next_element::<String>()? {
                out.push(s);
            }
            Ok((n, out))
        }
    }
    let read = |count: Option<usize>| {
        let mut de = serde_json::Deserializer::from_str(raw);
        let got = de.deserialize_seq(Strings(count))?;
        de.end().map(|()| got)
    };
    let (n, _) = read(None).map_err(|_| bad())?;
    read(Some(n)).map(|(_, v)| v).map_err(|_| bad())
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
                matches!(Fields::parse(body, &["a"]), Err(DecodeError::Malformed(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn texts_accepts_string_or_list_and_names_the_field() {
        let f = Fields::parse(
            br#"{"a": "x", "b": ["y", "z"], "c": [1, 2], "other": {"x": [1]}}"#,
            &["a", "b", "c", "d"],
        )
        .unwrap();
        assert_eq!(texts(&f, "a").unwrap(), vec!["x"]);
        assert_eq!(texts(&f, "b").unwrap(), vec!["y", "z"]);
        let e = texts(&f, "c").unwrap_err().to_string();
        assert!(e.contains("'c'") && e.contains("list of strings"), "{e}");
        assert!(texts(&f, "d").unwrap_err().to_string().contains("required"));
    }

    const DIMS: &[&str] = &["dimensions"];

    #[test]
    fn dimensions_must_be_a_positive_integer_and_null_is_absent() {
        let f = Fields::parse(br#"{"dimensions": null}"#, DIMS).unwrap();
        assert_eq!(dimensions(&f).unwrap(), None);
        let f = Fields::parse(br#"{"dimensions": 8}"#, DIMS).unwrap();
        assert_eq!(dimensions(&f).unwrap(), Some(8));
        for bad in [
            &br#"{"dimensions": -1}"#[..],
            br#"{"dimensions": "8"}"#,
            br#"{"dimensions": 1.5}"#,
        ] {
            let f = Fields::parse(bad, DIMS).unwrap();
            assert!(dimensions(&f).is_err());
        }
    }
}
