//! What the embedding wire formats (OpenAI, TEI) share: the body read as a map of raw field values
//! (no generic JSON tree), `input(s)` as a string or a list of strings, and `dimensions`.

use std::borrow::Cow;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::ProtocolError;
use crate::tensor::{BytesError, Texts, TextsBuilder};

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

/// Field `key` as texts: a string or a list of strings; absent is an error. Read twice without
/// keeping anything, first to count the texts and their bytes, then into one buffer of exactly
/// that size (`Texts`): no allocation per text, no growth by doubling, no buffered copy of the
/// list (serde's untagged enums buffer the whole value).
pub(super) fn texts(fields: &Fields, key: &str) -> Result<Texts, ProtocolError> {
    let expected = "a string or a list of strings (token arrays are not supported)";
    let Some(raw) = fields.raw(key) else {
        return Err(ProtocolError::Field(format!(
            "'{key}' is required: {expected}"
        )));
    };
    let bad = || field_error(key, expected, raw);
    let (mut n, mut bytes) = (0usize, 0u64);
    each_text(raw, |s| {
        n += 1;
        bytes += s.len() as u64;
        Ok(())
    })
    .map_err(|_| bad())?;
    if bytes > u64::from(u32::MAX) {
        let e = BytesError::TooLarge(bytes);
        return Err(ProtocolError::Field(format!("'{key}': {e}")));
    }
    let mut b = TextsBuilder::with_capacity(n, bytes as usize);
    each_text(raw, |s| b.push(s)).map_err(|_| bad())?;
    Ok(b.finish())
}

/// Hands each text of `raw` (a JSON string or a list of strings) to `f`, as serde reads it:
/// borrowed from `raw`, or from serde's scratch buffer when it has escapes.
fn each_text(
    raw: &str,
    mut f: impl FnMut(&str) -> Result<(), BytesError>,
) -> Result<(), serde_json::Error> {
    /// One JSON string.
    struct Str<'f, F>(&'f mut F);
    impl<'de, F: FnMut(&str) -> Result<(), BytesError>> DeserializeSeed<'de> for Str<'_, F> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_str(self)
        }
    }
    impl<'de, F: FnMut(&str) -> Result<(), BytesError>> Visitor<'de> for Str<'_, F> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
            (self.0)(v).map_err(E::custom)
        }
    }
    /// A JSON list of strings.
    struct List<'f, F>(&'f mut F);
    impl<'de, F: FnMut(&str) -> Result<(), BytesError>> Visitor<'de> for List<'_, F> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a list of strings")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Str(&mut *self.0))?.is_some() {}
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw);
    if raw.starts_with('"') {
        Str(&mut f).deserialize(&mut de)?;
    } else {
        de.deserialize_seq(List(&mut f))?;
    }
    de.end()
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
        let got =
            |key: &str| texts(&f, key).map(|t| t.iter().map(String::from).collect::<Vec<_>>());
        assert_eq!(got("a").unwrap(), vec!["x"]);
        assert_eq!(got("b").unwrap(), vec!["y", "z"]);
        let e = texts(&f, "c").unwrap_err().to_string();
        assert!(e.contains("'c'") && e.contains("list of strings"), "{e}");
        assert!(texts(&f, "d").unwrap_err().to_string().contains("required"));
    }

    #[test]
    fn texts_with_escapes_and_empty_ones_are_read_whole_into_one_buffer() {
        let f = Fields::parse(
            br#"{"a": ["q\"uote", "", "caf\u00e9", "tab\t"], "b": "\u65e5\u672c"}"#,
            &["a", "b"],
        )
        .unwrap();
        let t = texts(&f, "a").unwrap();
        assert_eq!(
            t.iter().collect::<Vec<_>>(),
            vec!["q\"uote", "", "café", "tab\t"]
        );
        assert_eq!(
            texts(&f, "b").unwrap().iter().collect::<Vec<_>>(),
            vec!["日本"]
        );
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
