//! The per-request access log and the request id every handler can reach. One `info` line per
//! request (target `access`): request id, principal, method, path, model, version, status, request
//! and response sizes, duration, and a keyed hash (HMAC-SHA-256 with a per-server random key) of
//! the request body — never payloads or texts: a plain hash of a short text could be guessed, a
//! keyed one cannot without the key, which never leaves the process. The line is written by
//! `telemetry::logging::access` (buffered, formatted off the request's path, in the server's log
//! format); `RUST_LOG` can turn the `access` target off like any other.

use std::cell::Cell;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use hmac::{KeyInit, Mac};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::AppState;
use crate::auth::Principal;
use crate::telemetry::logging::{self, AccessRecord};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The context of the request a task serves: its id (`x-request-id`), its caller, and what the
/// access log's body tap saw of its body. One task-local rather than shared state: the tap runs in
/// the task that reads the body (the handler's), and the edge takes the context back when the
/// handler is done, so the log costs no allocation or lock per request for it.
pub struct RequestCtx {
    pub id: String,
    /// Who is calling (`auth::check`'s principal): `None` with no `[auth]` or on an open route.
    /// Handlers read it through the `Caller` extractor. Carried here rather than as a request
    /// extension: no allocation, insert or lookup per request.
    pub principal: Option<Arc<Principal>>,
    /// Body bytes read so far.
    body_bytes: Cell<u64>,
    /// The body's HMAC, once the body was read to its end.
    body_digest: Cell<Option<[u8; 32]>>,
}

impl RequestCtx {
    pub fn new(id: String) -> RequestCtx {
        RequestCtx::with_principal(id, None)
    }

    pub fn with_principal(id: String, principal: Option<Arc<Principal>>) -> RequestCtx {
        RequestCtx {
            id,
            principal,
            body_bytes: Cell::new(0),
            body_digest: Cell::new(None),
        }
    }
}

tokio::task_local! {
    /// The context (request id, body tap) of the request this task serves.
    pub static REQUEST_ID: RequestCtx;
}

/// The request id of the current request, or "-" outside one.
pub fn request_id() -> String {
    REQUEST_ID
        .try_with(|c| c.id.clone())
        .unwrap_or_else(|_| "-".into())
}

/// Which model version served a response (a response extension set by the inference handlers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub model: String,
    pub version: u64,
}

/// A request body that feeds every data frame to an HMAC on its way to the handler (no copy) and
/// counts it in the task's `RequestCtx`. A body read outside the request's task (none is today)
/// would be logged as 0 bytes and no hash, never wrongly.
struct Tap {
    inner: Body,
    /// `None` once the body ended (the digest is in the context).
    mac: Option<HmacSha256>,
}

impl HttpBody for Tap {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(mac) = self.mac.as_mut() {
                        mac.update(data);
                    }
                    let n = data.len() as u64;
                    let _ = REQUEST_ID.try_with(|c| c.body_bytes.set(c.body_bytes.get() + n));
                }
            }
            Poll::Ready(None) => {
                if let Some(mac) = self.mac.take() {
                    let digest: [u8; 32] = mac.finalize().into_bytes().into();
                    let _ = REQUEST_ID.try_with(|c| c.body_digest.set(Some(digest)));
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

async fn edge_inner(s: AppState, req: Request, next: Next, id: String) -> Response {
    let log = s.access_log && logging::access_enabled();
    // The guard lives for this statement only (never across an await).
    let principal = match &*s.security.current() {
        Some(auth) => super::auth::check(&s, auth, &req),
        None => Ok(None),
    };
    if !log {
        return match principal {
            Err(refusal) => *refusal,
            Ok(principal) => {
                REQUEST_ID
                    .scope(RequestCtx::with_principal(id, principal), next.run(req))
                    .await
            }
        };
    }
    let start = Instant::now();
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let (resp, ctx) = match principal {
        Err(refusal) => (*refusal, RequestCtx::new(id)),
        Ok(principal) => {
            let req = req.map(|inner| {
                Body::new(Tap {
                    inner,
                    mac: Some(s.body_key.0.clone()),
                })
            });
            let ctx = RequestCtx::with_principal(id, principal);
            let mut served = pin!(REQUEST_ID.scope(ctx, next.run(req)));
            let resp = served.as_mut().await;
            let ctx = served
                .as_mut()
                .take_value()
                .expect("the scope's value is taken once, here. This is a bug.");
            (resp, ctx)
        }
    };
    let served = resp.extensions().get::<Served>();
    logging::access(&AccessRecord {
        request_id: &ctx.id,
        principal: ctx.principal.as_ref().map_or("-", |p| p.name.as_str()),
        method: method.as_str(),
        path: uri.path(),
        model: served.map_or("-", |s| s.model.as_str()),
        version: served.map_or(0, |s| s.version),
        status: resp.status().as_u16(),
        request_bytes: ctx.body_bytes.get(),
        response_bytes: resp.body().size_hint().exact().unwrap_or(0),
        duration_us: {
            // Not `as_micros`: its u128 division showed in profiles.
            let d = start.elapsed();
            d.as_secs() * 1_000_000 + u64::from(d.subsec_micros())
        },
        body_hmac: ctx.body_digest.get(),
    });
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn key() -> HmacSha256 {
        <HmacSha256 as KeyInit>::new_from_slice(b"a test key, 32 bytes long.......").unwrap()
    }

    /// A body of several frames, as a client sending in chunks gives.
    fn chunked(parts: &[&'static [u8]]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )))
    }

    #[tokio::test]
    async fn the_tap_counts_and_hashes_the_body_in_the_request_context() {
        let parts: [&'static [u8]; 3] = [b"{\"inputs\": [", b"1, 2, 3", b"]}"];
        let whole: Vec<u8> = parts.concat();
        let tap = Body::new(Tap {
            inner: chunked(&parts),
            mac: Some(key()),
        });
        let mut scoped = pin!(REQUEST_ID.scope(RequestCtx::new("r1".into()), async move {
            // The handler reads the body (and passes it on unchanged).
            tap.collect().await.unwrap().to_bytes()
        }));
        let read = scoped.as_mut().await;
        let ctx = scoped.as_mut().take_value().unwrap();
        assert_eq!(&read[..], &whole[..]);
        assert_eq!(ctx.id, "r1");
        assert_eq!(ctx.body_bytes.get(), whole.len() as u64);
        let mut want = key();
        want.update(&whole);
        let want = hex::encode(want.finalize().into_bytes());
        let got = ctx.body_digest.get().expect("the body was read to its end");
        assert_eq!(hex::encode(got), want);
        // Another body gives another digest; the same body with another key does too.
        let mut other = key();
        other.update(b"{\"inputs\": [1, 2, 4]}");
        assert_ne!(hex::encode(other.finalize().into_bytes()), want);
    }

    #[tokio::test]
    async fn a_body_not_read_to_its_end_has_no_digest_and_outside_a_request_nothing_breaks() {
        let mut tap = Body::new(Tap {
            inner: chunked(&[b"first", b"second"]),
            mac: Some(key()),
        });
        let mut scoped = pin!(REQUEST_ID.scope(RequestCtx::new("r2".into()), async move {
            tap.frame().await.unwrap().unwrap().into_data().unwrap()
        }));
        let first = scoped.as_mut().await;
        let ctx = scoped.as_mut().take_value().unwrap();
        assert_eq!(&first[..], b"first");
        assert_eq!(ctx.body_bytes.get(), 5);
        assert!(ctx.body_digest.get().is_none());
        // Read outside any request's task: passed on unchanged, nothing recorded, no panic.
        let tap = Body::new(Tap {
            inner: chunked(&[b"abc"]),
            mac: Some(key()),
        });
        assert_eq!(&tap.collect().await.unwrap().to_bytes()[..], b"abc");
        assert_eq!(request_id(), "-");
    }
}
