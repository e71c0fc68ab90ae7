//! The per-request access log and the request id every handler can reach. One `info` line per
//! request (target `access`): request id, principal, method, path, model, version, status, request
//! and response sizes, duration, and a keyed hash (HMAC-SHA-256 with a per-server random key) of
//! the request body — never payloads or texts: a plain hash of a short text could be guessed, a
//! keyed one cannot without the key, which never leaves the process.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use hmac::{KeyInit, Mac};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::AppState;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

tokio::task_local! {
    /// The request id (`x-request-id`) of the request this task serves.
    pub static REQUEST_ID: String;
}

/// The request id of the current request, or "-" outside one.
pub fn request_id() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "-".into())
}

/// Which model version served a response (a response extension set by the inference handlers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub model: String,
    pub version: u64,
}

/// What the body tap saw: bytes, and the HMAC once the body was read to its end.
#[derive(Default)]
struct Seen {
    bytes: u64,
    mac: Option<HmacSha256>,
    digest: Option<String>,
}

/// A request body that feeds every data frame to an HMAC on its way to the handler (no copy).
struct Tap {
    inner: Body,
    seen: Arc<Mutex<Seen>>,
}

impl HttpBody for Tap {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // Short section, no await: one frame's update.
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    seen.bytes += data.len() as u64;
                    if let Some(mac) = seen.mac.as_mut() {
                        mac.update(data);
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(mac) = seen.mac.take() {
                    seen.digest = Some(hex::encode(mac.finalize().into_bytes()));
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The per-server key of the body hashes: random at start, never logged or stored.
pub struct BodyKey([u8; 32]);

impl BodyKey {
    pub fn random() -> BodyKey {
        BodyKey(rand::random())
    }
}

/// The one edge layer: sets the request id for the task, applies access control (`[auth]`,
/// `auth::check`) and, with the access log on, taps the body and logs one line when the response
/// is ready. One layer, not three: each axum layer costs a boxed service clone per request.
pub async fn edge(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let auth = s.security.current();
    if auth.is_none() && !s.access_log {
        return REQUEST_ID.scope(id, next.run(req)).await;
    }
    let start = Instant::now();
    let principal = match &auth {
        Some(a) => super::auth::check(&s, a, &mut req),
        None => Ok(None),
    };
    if !s.access_log {
        return match principal {
            Err(refusal) => *refusal,
            Ok(_) => REQUEST_ID.scope(id, next.run(req)).await,
        };
    }
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let seen = Arc::new(Mutex::new(Seen {
        mac: Some(
            <HmacSha256 as KeyInit>::new_from_slice(&s.body_key.0)
                .expect("HMAC takes any key length. This is a bug."),
        ),
        ..Seen::default()
    }));
    let (resp, principal) = match principal {
        Err(refusal) => (*refusal, None),
        Ok(principal) => {
            let req = req.map(|inner| {
                Body::new(Tap {
                    inner,
                    seen: seen.clone(),
                })
            });
            (REQUEST_ID.scope(id.clone(), next.run(req)).await, principal)
        }
    };
    let served = resp.extensions().get::<Served>();
    let (bytes, digest) = {
        let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        (seen.bytes, seen.digest.clone())
    };
    tracing::info!(
        target: "access",
        request_id = %id,
        principal = principal.as_ref().map_or("-", |p| p.name.as_str()),
        method = %method,
        path = %path,
        model = served.map_or("-", |s| s.model.as_str()),
        version = served.map_or(0, |s| s.version),
        status = resp.status().as_u16(),
        request_bytes = bytes,
        response_bytes = resp.body().size_hint().exact().unwrap_or(0),
        duration_us = start.elapsed().as_micros() as u64,
        body_hmac = digest.as_deref().unwrap_or("-"),
        "request"
    );
    resp
}
