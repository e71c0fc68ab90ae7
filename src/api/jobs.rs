//! Bulk jobs over HTTP (`jobs::Manager` does the work): `POST /v2/models/{m}/jobs` with a JSON-lines
//! body (streamed to disk under `--jobs-max-upload-bytes`, not the request body limit) or
//! `?input_path=` inside `--jobs-input-dir` -> 202 and the job; `GET /v2/jobs/{id}`; `GET
//! /v2/jobs/{id}/result` and `/rejects` (streamed from disk); `DELETE /v2/jobs/{id}` cancels. The
//! `jobs` scope is required when `[auth]` is configured, and a job is visible to its owner only.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use super::auth::Caller;
#[allow(unused_imports)]
use super::openapi::*;
use super::{ApiError, AppState};
use crate::jobs::manager::{ManagerError, NewJob};
use crate::jobs::{InputFormat, InputSpec};

/// How long a cancel waits for the job to stop before answering.
const CANCEL_WAIT: Duration = Duration::from_secs(1);

/// `POST /v2/models/{m}/jobs` query parameters.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateQuery {
    input_path: Option<String>,
    version: Option<u64>,
    id_field: Option<String>,
    text_field: Option<String>,
    /// Input format of `input_path` (jsonl, csv, text); uploads are JSON lines.
    format: Option<String>,
    truncate: Option<bool>,
}

fn owner(p: &Caller) -> Option<String> {
    p.0.as_ref().map(|p| p.name.clone())
}

fn api_error(e: ManagerError) -> ApiError {
    match e {
        ManagerError::Off => ApiError::Disabled(e.to_string()),
        ManagerError::NotFound(_) => ApiError::NotFound(e.to_string()),
        ManagerError::BadRequest(m) => ApiError::BadRequest(m),
        ManagerError::Conflict(m) => ApiError::Conflict(m),
        ManagerError::Io(e) => ApiError::internal(e),
    }
}

fn query(uri: &Uri) -> Result<CreateQuery, ApiError> {
    serde_urlencoded::from_str(uri.query().unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("bad query parameters: {e}")))
}

#[utoipa::path(
    post,
    path = "/v2/models/{model}/jobs",
    tag = "jobs",
    params(("model" = String, Path, description = "Model name", example = "digits"), ("input_path" = Option<String>, Query, description = "A file under the jobs input folder instead of a body"), ("version" = Option<u64>, Query), ("id_field" = Option<String>, Query), ("text_field" = Option<String>, Query), ("format" = Option<String>, Query, description = "jsonl, csv or text (input_path only)"), ("truncate" = Option<bool>, Query)),
    request_body(content = String, content_type = "text/plain", description = "JSON lines, one record each"),
    responses((status = 202, description = "The job, queued", body = AnyJson), KServeErrors)
)]
pub async fn create(
    State(s): State<AppState>,
    Path(model): Path<String>,
    principal: Caller,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let jobs = &s.jobs;
    let q = query(&uri)?;
    if !s.is_accepting() {
        return Err(ApiError::Unavailable(
            "server is shutting down or starting".into(),
        ));
    }
    s.repo.get(&model, q.version)?;
    let (id, dir) = jobs.new_job_dir().map_err(api_error)?;
    let input = match &q.input_path {
        Some(p) => jobs.resolve_input(p).map(|p| (p, false)).map_err(api_error),
        None => upload(&s, &headers, body, &dir.join("input.jsonl"))
            .await
            .map(|p| (p, true)),
    };
    let spec = input.and_then(|(input, uploaded)| {
        input_spec(&q, uploaded, &input).map(|spec| (input, uploaded, spec))
    });
    let (input, uploaded, spec) = match spec {
        Ok(i) => i,
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(e);
        }
    };
    let view = jobs
        .create(NewJob {
            id: id.clone(),
            owner: owner(&principal),
            model,
            version: q.version,
            input,
            uploaded,
            input_spec: spec,
            truncate: q.truncate.unwrap_or(true),
        })
        .map_err(api_error)?;
    let location = format!("/v2/jobs/{id}");
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response())
}

/// How to read the input: uploads are JSON lines; a path's format is `format=` or its extension.
fn input_spec(
    q: &CreateQuery,
    uploaded: bool,
    input: &std::path::Path,
) -> Result<InputSpec, ApiError> {
    let format = match (&q.format, uploaded) {
        (Some(f), _) => InputFormat::parse(f).ok_or_else(|| {
            ApiError::BadRequest(format!("format '{f}': expected jsonl, csv or text"))
        })?,
        (None, true) => InputFormat::Jsonl,
        (None, false) => InputFormat::of(input),
    };
    let d = InputSpec::default();
    Ok(InputSpec {
        format,
        id_field: q.id_field.clone().unwrap_or(d.id_field),
        text_field: q.text_field.clone().unwrap_or(d.text_field),
        max_record_bytes: d.max_record_bytes,
    })
}

/// Streams the request body into `path`: 413 past the upload limit (checked on `Content-Length`
/// first, then as the bytes arrive), 408 when it stalls past the body timeout between frames.
async fn upload(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
    path: &std::path::Path,
) -> Result<std::path::PathBuf, ApiError> {
    let limit = s.jobs.config().max_upload_bytes;
    let too_large = || {
        ApiError::TooLarge(format!(
            "job input is larger than the upload limit of {limit} bytes (--jobs-max-upload-bytes)"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(ApiError::internal)?;
    let mut body = body;
    let mut written = 0u64;
    loop {
        let frame = match tokio::time::timeout(s.body_timeout, body.frame()).await {
            Err(_) => {
                return Err(ApiError::Timeout(
                    "the upload stalled longer than the body timeout".into(),
                ))
            }
            Ok(None) => break,
            Ok(Some(f)) => {
                f.map_err(|e| ApiError::BadRequest(format!("cannot read request body: {e}")))?
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        written += data.len() as u64;
        if written > limit {
            return Err(too_large());
        }
        file.write_all(&data).await.map_err(ApiError::internal)?;
    }
    if written == 0 {
        return Err(ApiError::BadRequest(
            "no input: send JSON lines in the body or give input_path".into(),
        ));
    }
    file.sync_all().await.map_err(ApiError::internal)?;
    Ok(path.to_path_buf())
}

#[utoipa::path(
    get,
    path = "/v2/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "The job", body = AnyJson), KServeErrors)
)]
pub async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
    principal: Caller,
) -> Result<Response, ApiError> {
    let caller = owner(&principal);
    let view = s.jobs.get(&id, caller.as_deref()).map_err(api_error)?;
    Ok(Json(view).into_response())
}

#[utoipa::path(
    delete,
    path = "/v2/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "The job, canceled", body = AnyJson), KServeErrors)
)]
pub async fn cancel(
    State(s): State<AppState>,
    Path(id): Path<String>,
    principal: Caller,
) -> Result<Response, ApiError> {
    let caller = owner(&principal);
    let view = s
        .jobs
        .cancel(&id, caller.as_deref(), CANCEL_WAIT)
        .await
        .map_err(api_error)?;
    Ok(Json(view).into_response())
}

#[utoipa::path(
    get,
    path = "/v2/jobs/{id}/result",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "The results as JSON lines", body = String, content_type = "application/x-ndjson"), KServeErrors)
)]
pub async fn result(
    State(s): State<AppState>,
    Path(id): Path<String>,
    principal: Caller,
) -> Result<Response, ApiError> {
    stream_file(&s, &id, principal, false).await
}

#[utoipa::path(
    get,
    path = "/v2/jobs/{id}/rejects",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "The rejected records as JSON lines", body = String, content_type = "application/x-ndjson"), KServeErrors)
)]
pub async fn rejects(
    State(s): State<AppState>,
    Path(id): Path<String>,
    principal: Caller,
) -> Result<Response, ApiError> {
    stream_file(&s, &id, principal, true).await
}

/// A finished job's result (or rejects) file, streamed in 64 KiB chunks as JSON lines.
async fn stream_file(
    s: &AppState,
    id: &str,
    principal: Caller,
    rejects: bool,
) -> Result<Response, ApiError> {
    let caller = owner(&principal);
    let path = s
        .jobs
        .result(id, caller.as_deref(), rejects)
        .map_err(api_error)?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(ApiError::internal)?;
    let len = file.metadata().await.map_err(ApiError::internal)?.len();
    let chunks = futures::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
    .boxed();
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
}
