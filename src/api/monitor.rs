//! Model-quality routes: `GET /v2/models/{m}[/versions/{v}]/drift` (the drift table of the live
//! window against the version's profile) and `POST /v2/models/{m}/feedback` (ground-truth labels
//! joined with recent predictions by id; `feedback` or `admin` scope when `[auth]` is configured).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::infer::parse_version;
#[allow(unused_imports)]
use super::openapi::*;
use super::{read_body, ApiError, AppState};
use crate::monitor::feedback::Outcome;
use crate::monitor::{DriftReport, FeedbackItem, Monitor};
use crate::repository::LoadedVersion;

/// Most feedback items in one request.
pub const MAX_FEEDBACK_ITEMS: usize = 10_000;

fn monitor_of(lv: &LoadedVersion) -> Result<&Arc<Monitor>, ApiError> {
    lv.monitor.as_ref().ok_or_else(|| {
        ApiError::NotFound(format!(
            "model '{}' version {} is not monitored (set [monitoring] enable = true in its config.toml)",
            lv.name, lv.version
        ))
    })
}

async fn report(lv: &LoadedVersion) -> Result<Json<DriftReport>, ApiError> {
    monitor_of(lv)?
        .report()
        .await
        .map(Json)
        .ok_or_else(|| ApiError::internal(format!("the monitor of '{}' stopped", lv.name)))
}

#[utoipa::path(
    get,
    path = "/v2/models/{model}/drift",
    tag = "monitoring",
    params(("model" = String, Path, description = "Model name", example = "digits")),
    responses((status = 200, description = "Drift of live inputs against the reference profile", body = AnyJson), KServeErrors)
)]
pub async fn drift(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<DriftReport>, ApiError> {
    report(&*s.repo.get(&model, None)?).await
}

#[utoipa::path(
    get,
    path = "/v2/models/{model}/versions/{version}/drift",
    tag = "monitoring",
    params(("model" = String, Path, description = "Model name", example = "digits"), ("version" = String, Path, description = "Version number", example = "1")),
    responses((status = 200, description = "Drift of the version's live inputs", body = AnyJson), KServeErrors)
)]
pub async fn drift_v(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<DriftReport>, ApiError> {
    let v = parse_version(&model, &version)?;
    report(&*s.repo.get(&model, Some(v))?).await
}

/// A label: a class index or a class name from the model's `labels.txt`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Label {
    Index(u64),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(Label),
    Many(Vec<Label>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    id: String,
    #[serde(alias = "labels")]
    label: OneOrMany,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FeedbackBody {
    One(Item),
    Many(Vec<Item>),
}

/// Decodes a feedback body into (id, class per row). Pure.
pub fn decode_feedback(
    body: &[u8],
    classes: usize,
    labels: Option<&[String]>,
) -> Result<Vec<FeedbackItem>, ApiError> {
    let bad = |m: String| ApiError::BadRequest(m);
    let items =
        match serde_json::from_slice::<FeedbackBody>(body) {
            Ok(FeedbackBody::One(i)) => vec![i],
            Ok(FeedbackBody::Many(v)) => v,
            Err(_) => return Err(bad(
                "expected {\"id\": \"<request id>\", \"label\": <class>} (label: a class index or \
                 name, or a list of them for a multi-row request), or a list of such objects"
                    .into(),
            )),
        };
    if items.is_empty() {
        return Err(bad("no feedback items given".into()));
    }
    if items.len() > MAX_FEEDBACK_ITEMS {
        return Err(ApiError::TooLarge(format!(
            "{} feedback items is more than the limit of {MAX_FEEDBACK_ITEMS} per request",
            items.len()
        )));
    }
    let class = |l: &Label| -> Result<u32, ApiError> {
        let i = match l {
            Label::Index(i) => *i as usize,
            Label::Name(n) => match labels.and_then(|ls| ls.iter().position(|x| x == n)) {
                Some(i) => i,
                None => n
                    .parse()
                    .map_err(|_| bad(format!("label '{n}' is not a class name of this model")))?,
            },
        };
        if i >= classes {
            return Err(bad(format!(
                "label {i} is out of range: the model has {classes} classes"
            )));
        }
        Ok(i as u32)
    };
    items
        .into_iter()
        .map(|it| {
            if it.id.is_empty() || it.id.len() > 256 {
                return Err(bad("'id' must be 1..=256 bytes".into()));
            }
            let ls = match &it.label {
                OneOrMany::One(l) => vec![class(l)?],
                OneOrMany::Many(v) => v.iter().map(class).collect::<Result<_, _>>()?,
            };
            Ok((it.id.into_boxed_str(), ls))
        })
        .collect()
}

#[utoipa::path(
    post,
    path = "/v2/models/{model}/feedback",
    tag = "monitoring",
    params(("model" = String, Path, description = "Model name", example = "digits")),
    request_body(content = AnyJson, content_type = "application/json", description = "Ground-truth labels by prediction id"),
    responses((status = 200, description = "What was joined", body = AnyJson), KServeErrors)
)]
pub async fn feedback(
    State(s): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let lv = s.repo.get(&model, None)?;
    let m = monitor_of(&lv)?;
    if !m.is_classifier() {
        return Err(ApiError::BadRequest(format!(
            "model '{model}' is not a classifier: feedback takes class labels"
        )));
    }
    let bytes = read_body(&s, &headers, body).await?;
    let items = decode_feedback(&bytes, m.classes(), lv.labels.as_deref().map(Vec::as_slice))?;
    let reply = join(&s, &lv, items).await?;
    Ok(Json(reply))
}

/// Asks the serving version, then the model's other loaded versions, to join each item; ids no
/// version knows are counted `unknown` once, on the serving version.
async fn join(
    s: &AppState,
    lv: &Arc<LoadedVersion>,
    items: Vec<FeedbackItem>,
) -> Result<Value, ApiError> {
    let mut versions = vec![lv.clone()];
    for e in s.repo.index() {
        let v = e.version.as_deref().and_then(|v| v.parse::<u64>().ok());
        if e.name == lv.name && v.is_some_and(|v| v != lv.version) {
            if let Ok(other) = s.repo.get(&lv.name, v) {
                versions.push(other);
            }
        }
    }
    let mut counts = [0usize; 6];
    let mut pending = items;
    let (mut accuracy, mut rows) = (None, 0);
    for (i, v) in versions.iter().enumerate() {
        let Some(m) = v.monitor.as_ref().filter(|m| m.is_classifier()) else {
            continue;
        };
        let reply = m
            .feedback(pending.clone())
            .await
            .ok_or_else(|| ApiError::internal(format!("the monitor of '{}' stopped", v.name)))?;
        if i == 0 {
            (accuracy, rows) = (reply.accuracy, reply.labelled_rows);
        }
        let mut next = Vec::new();
        for (item, o) in pending.into_iter().zip(reply.outcomes) {
            match o {
                Outcome::Unknown => next.push(item),
                o => counts[index(o)] += 1,
            }
        }
        pending = next;
        if pending.is_empty() {
            break;
        }
    }
    let unknown = pending.len();
    counts[index(Outcome::Unknown)] += unknown;
    if let Some(m) = &lv.monitor {
        m.metrics().feedback[index(Outcome::Unknown)].inc_by(unknown as u64);
    }
    let mut out = json!({
        "model": lv.name,
        "version": lv.version.to_string(),
        "accuracy": accuracy,
        "labelled_rows": rows,
    });
    for o in Outcome::ALL {
        out[o.as_str()] = json!(counts[index(o)]);
    }
    Ok(out)
}

fn index(o: Outcome) -> usize {
    Outcome::ALL
        .iter()
        .position(|x| *x == o)
        .expect("every outcome is listed. This is a bug.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedback_bodies_decode_to_class_indices() {
        let labels = vec!["zero".to_string(), "one".to_string(), "two".to_string()];
        let one = decode_feedback(br#"{"id": "a", "label": 2}"#, 3, Some(&labels)).unwrap();
        assert_eq!(one, vec![("a".into(), vec![2])]);
        let many = decode_feedback(
            br#"[{"id": "a", "labels": ["one", 0]}, {"id": "b", "label": "2"}]"#,
            3,
            Some(&labels),
        )
        .unwrap();
        assert_eq!(many, vec![("a".into(), vec![1, 0]), ("b".into(), vec![2])]);
        for bad in [
            &br#"{"id": "a", "label": 3}"#[..],
            br#"{"id": "a", "label": "three"}"#,
            br#"{"id": "", "label": 1}"#,
            br#"{"label": 1}"#,
            br#"[]"#,
            br#"not json"#,
        ] {
            let e = decode_feedback(bad, 3, Some(&labels)).unwrap_err();
            assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}");
        }
    }
}
