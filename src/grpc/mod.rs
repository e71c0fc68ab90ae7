//! The gRPC front door (KServe v2 / Triton `inference.GRPCInferenceService`, `grpc.health.v1`),
//! served by tonic as an axum router through the same accept loop as HTTP (`net::serve`: TLS,
//! mutual TLS, graceful drain). A thin adapter: decoding and encoding live in
//! `protocol::grpc`, inference in `api::infer` (the one infer path HTTP uses), access control in
//! `auth` (this file maps a method to the scope it needs and a refusal to a gRPC status).
//! Nothing here touches a device.

mod health;
mod service;
mod status;

use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::api::{AppState, RequestCtx, REQUEST_ID};
use crate::auth::{AuthError, Need, RateDecision};
use crate::protocol::grpc::{health as hpb, pb};

pub use status::status_of;

/// The gRPC router: the inference service and the health service, behind the edge layer.
pub fn router(state: AppState, max_message_bytes: usize) -> axum::Router {
    let infer = pb::grpc_inference_service_server::GrpcInferenceServiceServer::new(
        service::Inference::new(state.clone()),
    )
    .max_decoding_message_size(max_message_bytes)
    .max_encoding_message_size(max_message_bytes);
    let health = hpb::health_server::HealthServer::new(health::Health::new(state.clone()));
    tonic::service::Routes::new(infer)
        .add_service(health)
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(state, edge))
}

/// What a gRPC method needs: health and liveness are open, repository calls need `admin`, the
/// rest any infer scope here (the handler checks the model named in the message).
pub fn need_of(path: &str) -> Need<'static> {
    let method = path.rsplit('/').next().unwrap_or_default();
    match (path.starts_with("/grpc.health.v1.Health/"), method) {
        (true, _) | (false, "ServerLive" | "ServerReady") => Need::Nothing,
        (false, m) if m.starts_with("Repository") => Need::Admin,
        _ => Need::Infer(None),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The edge layer: request id, access control (`[auth]`: the same verifiers, scopes and rate
/// limits as HTTP; refusals as UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED) and one
/// access-log line per call (never payloads).
async fn edge(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let path = req.uri().path().to_string();
    let need = need_of(&path);
    let mut principal = None;
    let current = (*s.security.current()).clone();
    if let Some(auth) = current.filter(|_| need != Need::Nothing) {
        let cn = req
            .extensions()
            .get::<crate::net::ClientCertName>()
            .map(|c| c.0.clone());
        let refused = match auth.verify(req.headers(), cn.as_deref(), now()) {
            Err(e) => Some(status::refusal(e)),
            Ok(p) if !p.allows(need) => {
                tracing::info!(principal = %p.name, path = %path, "insufficient scope");
                Some(status::refusal(AuthError::Forbidden))
            }
            Ok(p) => match s.security.rates.check(&p) {
                RateDecision::Deny { retry_after } => {
                    s.metrics.record_rate_limited(need.label());
                    tracing::info!(principal = %p.name, scope = need.label(), "rate limited");
                    Some(status::rate_limited(retry_after))
                }
                RateDecision::Allow => {
                    req.extensions_mut().insert(p.clone());
                    principal = Some(p);
                    None
                }
            },
        };
        if let Some(st) = refused {
            return st.into_http();
        }
    }
    let start = Instant::now();
    let resp = REQUEST_ID
        .scope(RequestCtx::new(id.clone()), next.run(req))
        .await;
    if s.access_log {
        tracing::info!(
            target: "access",
            request_id = %id,
            principal = principal.as_ref().map_or("-", |p| p.name.as_str()),
            method = "gRPC",
            path = %path,
            // trailers-only answers (errors) carry grpc-status in the headers
            grpc_status = resp.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("0"),
            duration_us = start.elapsed().as_micros() as u64,
            "request"
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_map_to_scopes() {
        assert_eq!(need_of("/grpc.health.v1.Health/Check"), Need::Nothing);
        assert_eq!(
            need_of("/inference.GRPCInferenceService/ServerLive"),
            Need::Nothing
        );
        assert_eq!(
            need_of("/inference.GRPCInferenceService/ServerReady"),
            Need::Nothing
        );
        for m in [
            "RepositoryIndex",
            "RepositoryModelLoad",
            "RepositoryModelUnload",
        ] {
            assert_eq!(
                need_of(&format!("/inference.GRPCInferenceService/{m}")),
                Need::Admin
            );
        }
        for m in [
            "ModelInfer",
            "ModelStreamInfer",
            "ModelMetadata",
            "ModelStatistics",
            "Nope",
        ] {
            assert_eq!(
                need_of(&format!("/inference.GRPCInferenceService/{m}")),
                Need::Infer(None)
            );
        }
    }
}
