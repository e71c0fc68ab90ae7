//! The per-request access log and the request id every handler can reach. One `info` line per
//! request (target `access`): request id, principal, method, path, model, version, status, request
//! and response sizes, duration, and a keyed hash (HMAC-SHA-256 with a per-server random key) of
//! the request body — never payloads or texts: a plain hash of a short text could be guessed, a
//! keyed one cannot without the key, which never leaves the process. The line is written by
//! `telemetry::logging::access` (buffered, in the server's log format); `RUST_LOG` can turn the
//! `access` target off like any other.

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
use crate::telemetry::logging::{self, AccessRecord};

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
struct Seen {
    bytes: u64,
    mac: Option<HmacSha256>,
    /// Lowercase hex of the HMAC, once the body ended.
    digest: Option<[u8; 64]>,
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
                    let mut hex = [0u8; 64];
                    // 32 bytes into 64 hex digits: the sizes match.
                    let _ = hex::encode_to_slice(mac.finalize().into_bytes(), &mut hex);
                    seen.digest = Some(hex);
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

/// The per-server key of the body hashes: random at start, never logged or stored. Kept as the
/// keyed HMAC state, cloned per request (keying costs two SHA-256 blocks).
pub struct BodyKey(HmacSha256);

impl BodyKey {
    pub fn random() -> BodyKey {
        let key: [u8; 32] = rand::random();
        BodyKey(
            <HmacSha256 as KeyInit>::new_from_slice(&key)
                .expect("HMAC takes any key length. This is a bug."),
        )
    }
}

/// The one edge layer: sets the request id for the task, applies access control (`[auth]`,
/// `auth::check`) and, with the access log on, taps the body and logs one line when the response
/// is ready. One layer, not three: each axum layer costs a boxed service clone per request.
pub async fn edge(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let sent = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    // A client's id is echoed back and logged: capped (the response then carries the capped one).
    let capped = crate::protocol::kserve_v2::cap(sent);
    let recap = capped.len() != sent.len();
    let id = capped.into_owned();
    if recap {
        let mut resp = edge_inner(s, req, next, id.clone()).await;
        if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
            resp.headers_mut().insert("x-request-id", v);
        }
        return resp;
    }
    edge_inner(s, req, next, id).await
}

async fn edge_inner(s: AppState, mut req: Request, next: Next, id: String) -> Response {
    let log = s.access_log && logging::access_enabled();
    // The guard lives for this statement only (never across an await).
    let principal = match &*s.security.current() {
        Some(auth) => super::auth::check(&s, auth, &mut req),
        None => Ok(None),
    };
    if !log {
        return match principal {
            Err(refusal) => *refusal,
            Ok(_) => REQUEST_ID.scope(id, next.run(req)).await,
        };
    }
    let start = Instant::now();
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let seen = Arc::new(Mutex::new(Seen {
        bytes: 0,
        mac: Some(s.body_key.0.clone()),
        digest: None,
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
        (seen.bytes, seen.digest)
    };
    logging::access(&AccessRecord {
        request_id: &id,
        principal: principal.as_ref().map_or("-", |p| p.name.as_str()),
        method: method.as_str(),
        path: uri.path(),
        model: served.map_or("-", |s| s.model.as_str()),
        version: served.map_or(0, |s| s.version),
        status: resp.status().as_u16(),
        request_bytes: bytes,
        response_bytes: resp.body().size_hint().exact().unwrap_or(0),
        duration_us: {
            // Not `as_micros`: its u128 division showed in profiles.
            let d = start.elapsed();
            d.as_secs() * 1_000_000 + u64::from(d.subsec_micros())
        },
        // Hex digits are ASCII.
        body_hmac: digest
            .as_ref()
            .and_then(|d| std::str::from_utf8(d).ok())
            .unwrap_or("-"),
    });
    resp
}
