//! The OpenAPI 3.1 description of the HTTP API, served at `GET /openapi.json`. Paths, methods,
//! parameters and statuses come from each handler's `#[utoipa::path]`, which is also what
//! registers the handler with the router (`utoipa_axum::routes!` in `api::router`): a route cannot
//! be served without being described. The bodies are the schemas below (the doors decode with
//! typed, tree-free code in `protocol/`, so these state the wire contract; `tests/python/
//! test_openapi.py` runs schemathesis against a live server to hold the two together).
//!
//! Must not: describe a route or status the server does not have, or leave one it has out.

// The body types here are schemas only: utoipa's derives read them, nothing builds them.
#![allow(dead_code)]

use std::collections::BTreeMap;

use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, Response, ResponseBuilder};
use utoipa::{IntoResponses, Modify, OpenApi, PartialSchema, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ferrite",
        description = "Model inference server: KServe v2 / Open Inference Protocol (JSON and \
                       Triton's binary tensor extension), KServe v1, OpenAI embeddings, Text \
                       Embeddings Inference, and the model repository, rollout, monitoring and \
                       bulk-job routes. With `[auth]` configured every route but the health \
                       probes needs a bearer credential (an API key or a JWT) or a client \
                       certificate; without it every route is open.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    security((), ("bearer" = []), ("api_key" = [])),
    components(schemas(KServeError, OpenAiError, TeiError)),
    tags(
        (name = "kserve-v2", description = "KServe v2 / Open Inference Protocol"),
        (name = "kserve-v1", description = "KServe v1 `:predict`"),
        (name = "openai", description = "OpenAI embeddings"),
        (name = "tei", description = "Text Embeddings Inference"),
        (name = "health", description = "Liveness and readiness (always open)"),
        (name = "repository", description = "Model repository and rollout (scope `admin`)"),
        (name = "monitoring", description = "Drift and feedback"),
        (name = "jobs", description = "Bulk jobs (scope `jobs`; off without --jobs-state-dir)"),
        (name = "metrics", description = "Prometheus metrics (on the metrics port)")
    )
)]
pub struct ApiDoc;

/// `[auth]`'s credentials: `bearer`, an API key or a JWT in `Authorization: Bearer ...`; `api_key`,
/// an API key in `x-api-key`. (A client certificate under mutual TLS is the third way.)
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        c.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
        );
    }
}

/// A refusal in each door's own error shape: status and when it is given.
const FAILURES: [(&str, &str); 9] = [
    ("400", "The request is malformed or does not fit the model."),
    ("401", "Credentials are missing or invalid (`[auth]`)."),
    (
        "403",
        "The caller lacks the scope, or the route is disabled by a flag.",
    ),
    ("404", "No such model, version, job or route."),
    ("408", "The body did not arrive within --body-timeout-secs."),
    ("409", "The resource's state does not allow this."),
    ("413", "The body or the request is larger than a limit."),
    (
        "429",
        "Rate limited or overloaded; retry after `Retry-After`.",
    ),
    (
        "503",
        "Not ready, draining, queue full or timed out; retry after `Retry-After`.",
    ),
];

fn failures<T: ToSchema>(extra: &[(&str, &str)]) -> BTreeMap<String, RefOr<Response>> {
    FAILURES
        .iter()
        .chain(extra)
        .chain(&[("500", "Internal error (the detail is in the server log).")])
        .map(|(code, text)| {
            let content = ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    T::name(),
                ))))
                .build();
            let r = ResponseBuilder::new()
                .description(*text)
                .content("application/json", content)
                .build();
            (code.to_string(), RefOr::T(r))
        })
        .collect()
}

/// The KServe doors' and management routes' refusals: `{"error": "..."}`.
pub struct KServeErrors;
impl IntoResponses for KServeErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        failures::<KServeError>(&[])
    }
}

/// The OpenAI door's refusals.
pub struct OpenAiErrors;
impl IntoResponses for OpenAiErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        failures::<OpenAiError>(&[])
    }
}

/// The TEI door's refusals (TEI answers validation errors with 422 and backend errors with 424).
pub struct TeiErrors;
impl IntoResponses for TeiErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        failures::<TeiError>(&[
            ("422", "The request does not validate."),
            ("424", "The model failed."),
        ])
    }
}

#[derive(ToSchema)]
pub struct KServeError {
    pub error: String,
}

#[derive(ToSchema)]
pub struct OpenAiError {
    pub error: OpenAiErrorDetail,
}

#[derive(serde::Serialize, ToSchema)]
pub struct OpenAiErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

#[derive(ToSchema)]
pub struct TeiError {
    pub error: String,
    pub error_type: String,
}

/// Any JSON value (tensor data: numbers, booleans or strings, in arrays nested to the shape).
pub struct AnyJson;
impl PartialSchema for AnyJson {
    fn schema() -> RefOr<Schema> {
        RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(SchemaType::AnyValue)
                .build(),
        ))
    }
}
impl ToSchema for AnyJson {}

#[derive(ToSchema)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

#[derive(ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    /// -1 is a variable dimension.
    pub shape: Vec<i64>,
}

/// A model version's metadata (more fields follow: state, version_meta, validation).
#[derive(ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

#[derive(ToSchema)]
pub struct InferParameters {
    /// 1 (highest) ..= the model's priority levels; 0 = its default.
    pub priority: Option<u32>,
    /// Microseconds the request may wait in the queue.
    pub timeout: Option<u64>,
    pub binary_data_output: Option<bool>,
    /// false: neither read nor fill the response cache.
    pub cache: Option<bool>,
}

#[derive(ToSchema)]
pub struct InputParameters {
    /// Bytes of this input in the binary part of the body (binary tensor extension).
    pub binary_data_size: Option<u64>,
}

#[derive(ToSchema)]
pub struct InferInput {
    pub name: String,
    pub shape: Vec<i64>,
    /// BOOL, UINT8..64, INT8..64, FP16, BF16, FP32, FP64 or BYTES.
    pub datatype: String,
    pub parameters: Option<InputParameters>,
    /// Row-major values, flat or nested to the shape.
    pub data: Option<Vec<AnyJson>>,
}

#[derive(ToSchema)]
pub struct OutputParameters {
    pub binary_data: Option<bool>,
    /// Triton's classification extension: the top k classes as BYTES "value:index[:label]".
    pub classification: Option<u64>,
}

#[derive(ToSchema)]
pub struct RequestedOutput {
    pub name: String,
    pub parameters: Option<OutputParameters>,
}

/// An inference request. With `Inference-Header-Content-Length: N` the body is N bytes of this
/// JSON followed by the inputs' binary data (binary tensor extension).
#[derive(ToSchema)]
pub struct InferRequest {
    pub id: Option<String>,
    pub parameters: Option<InferParameters>,
    pub inputs: Vec<InferInput>,
    /// Each at most once; none = every output.
    pub outputs: Option<Vec<RequestedOutput>>,
}

#[derive(ToSchema)]
pub struct OutputBinary {
    pub binary_data_size: u64,
}

#[derive(ToSchema)]
pub struct InferOutput {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<u64>,
    pub parameters: Option<OutputBinary>,
    pub data: Option<Vec<AnyJson>>,
}

#[derive(ToSchema)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: Option<String>,
    pub outputs: Vec<InferOutput>,
}

#[derive(ToSchema)]
pub struct V1ModelStatus {
    pub name: String,
    pub ready: bool,
}

/// One instance per batch row: the row for a single-input model, or an object keyed by input name.
#[derive(ToSchema)]
pub struct PredictRequest {
    pub instances: Vec<AnyJson>,
}

#[derive(ToSchema)]
pub struct PredictResponse {
    pub predictions: Vec<AnyJson>,
}

#[derive(serde::Serialize, ToSchema)]
#[serde(untagged)]
pub enum Texts {
    One(String),
    Many(Vec<String>),
}

#[derive(serde::Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    Float,
    Base64,
}

#[derive(ToSchema)]
pub struct EmbeddingsRequest {
    pub input: Texts,
    /// The embedding model (the only one when absent).
    pub model: Option<String>,
    pub encoding_format: Option<EncodingFormat>,
    /// Keep the first `dimensions` values (renormalised).
    pub dimensions: Option<u32>,
    pub user: Option<String>,
}

#[derive(serde::Serialize, ToSchema)]
#[serde(untagged)]
pub enum Embedding {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(ToSchema)]
pub struct EmbeddingData {
    pub object: String,
    pub embedding: Embedding,
    pub index: u64,
}

#[derive(ToSchema)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
}

#[derive(ToSchema)]
pub struct EmbeddingsResponse {
    pub object: String,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: Usage,
}

#[derive(ToSchema)]
pub struct EmbedRequest {
    pub inputs: Texts,
    /// Ferrite's addition: the embedding model (the only one when absent).
    pub model: Option<String>,
    /// L2-normalise (default true).
    pub normalize: Option<bool>,
    /// Cut texts over the model's limit instead of refusing them (default false).
    pub truncate: Option<bool>,
    /// Only "Right" is supported.
    pub truncation_direction: Option<String>,
    pub dimensions: Option<u32>,
}

#[derive(ToSchema)]
pub struct TeiInfo {
    pub model_id: String,
    pub max_input_length: u64,
    pub max_client_batch_size: u64,
    pub max_batch_tokens: u64,
    pub version: String,
}

/// `POST .../promote`.
#[derive(ToSchema)]
pub struct PromoteRequest {
    /// A version number (or its string).
    pub version: AnyJson,
    pub force: Option<bool>,
}

/// The document, as served (built once).
pub fn document(api: utoipa::openapi::OpenApi) -> axum::body::Bytes {
    api.to_json()
        .expect("the OpenAPI document serialises. This is a bug.")
        .into()
}
