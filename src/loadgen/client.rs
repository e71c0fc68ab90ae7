//! The HTTP side of the bench: a pooled hyper client (HTTP/1, keep-alive; `https://` through
//! rustls with the CA certificates of `--cacert`), the `--header`s added to every request, one
//! request per call, and the outcome as the bench counts it (success, status code, an overload
//! refusal without `Retry-After`, or transport error). No timing and no statistics here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::request::Payload;
use super::LoadgenError;

/// How long the bench keeps an idle keep-alive connection: under the servers' usual keep-alive
/// limits (ferrite's `--header-read-timeout-secs`, 10 s by default; nginx 75 s).
const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(4);

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A non-2xx status, e.g. 503.
    Status(u16),
    /// A 429 or 503 without the `Retry-After` header an overload refusal must carry: counted
    /// apart (`"503-no-retry-after"`), so that a bench shows a server that sheds without it.
    NoRetryAfter(u16),
    /// No response: `"connect"`, `"io"`, ...
    Transport(&'static str),
}

impl Outcome {
    /// The error kind as counted in reports (`"503"`, `"connect"`); `None` for success.
    pub fn error_kind(&self) -> Option<String> {
        match self {
            Outcome::Ok => None,
            Outcome::Status(s) => Some(s.to_string()),
            Outcome::NoRetryAfter(s) => Some(format!("{s}-no-retry-after")),
            Outcome::Transport(k) => Some((*k).to_string()),
        }
    }
}

/// How a complete HTTP response counts: success, a status, or an overload status (429, 503)
/// without `Retry-After`.
fn outcome(status: u16, retry_after: bool) -> Outcome {
    match status {
        200..=299 => Outcome::Ok,
        429 | 503 if !retry_after => Outcome::NoRetryAfter(status),
        s => Outcome::Status(s),
    }
}

/// Headers and trust beyond the URL.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Sent on every request (inference, metadata, metrics scrapes); each replaces a header of the
    /// same name the bench would set.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// PEM CA certificate(s) that `https://` servers must chain to; required for `https://`.
    pub cacert: Option<PathBuf>,
    /// The gRPC endpoint (`http://host:port`) gRPC payloads go to; one HTTP/2 connection.
    pub grpc_url: Option<String>,
}

/// `NAME:VALUE` as a header (the value trimmed of surrounding spaces).
pub fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), LoadgenError> {
    let bad = |why: String| LoadgenError::Args(format!("--header '{s}': {why}"));
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| bad("expected NAME:VALUE".into()))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|e| bad(e.to_string()))?;
    let value = HeaderValue::from_str(value.trim()).map_err(|e| bad(e.to_string()))?;
    Ok((name, value))
}

/// TLS client config trusting exactly the certificates in `cacert` (ring provider).
fn tls_config(cacert: &Path) -> Result<rustls::ClientConfig, LoadgenError> {
    let bad = |m: String| LoadgenError::Args(format!("--cacert {}: {m}", cacert.display()));
    let pem = std::fs::read(cacert).map_err(|e| LoadgenError::io(cacert, e))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A cheap-to-clone HTTP client bound to one server.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    headers: Arc<[(HeaderName, HeaderValue)]>,
    grpc: Option<Grpc>,
}

type Grpc = crate::protocol::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient<
    tonic::transport::Channel,
>;

impl HttpClient {
    /// `base` is `http://host:port` (no trailing slash needed).
    pub fn new(base: &str) -> Result<HttpClient, LoadgenError> {
        Self::with_options(base, &ClientOptions::default())
    }

    /// `base` is `http://host:port` or `https://host:port` (then `opts.cacert` is required).
    pub fn with_options(base: &str, opts: &ClientOptions) -> Result<HttpClient, LoadgenError> {
        let base = base.trim_end_matches('/').to_string();
        base.parse::<Uri>()
            .map_err(|e| LoadgenError::Args(format!("bad URL '{base}': {e}")))?;
        let https = base.starts_with("https://");
        if !https && !base.starts_with("http://") {
            return Err(LoadgenError::Args(format!(
                "URL '{base}' must start with http:// or https://"
            )));
        }
        let tls = match (&opts.cacert, https) {
            (Some(ca), _) => tls_config(ca)?,
            (None, true) => {
                return Err(LoadgenError::Args(format!(
                    "URL '{base}' is https: give the server's CA certificate with --cacert FILE"
                )))
            }
            // plain http: the TLS side is never used; trust nothing
            (None, false) => rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| LoadgenError::Args(e.to_string()))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        };
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.enforce_http(false);
        let conn = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(conn);
        // Idle connections are dropped after POOL_IDLE, before a server's keep-alive limit closes
        // them (ferrite's default: 10 s): reusing a connection the server is closing at that moment
        // fails the request with an I/O error, which is the client's race, not the server's fault.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(usize::MAX)
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .build(conn);
        let grpc = match &opts.grpc_url {
            None => None,
            Some(u) => {
                let endpoint = tonic::transport::Endpoint::from_shared(u.clone())
                    .map_err(|e| LoadgenError::Args(format!("bad gRPC URL '{u}': {e}")))?
                    .tcp_nodelay(true);
                Some(
                    Grpc::new(endpoint.connect_lazy())
                        .max_decoding_message_size(usize::MAX)
                        .max_encoding_message_size(usize::MAX),
                )
            }
        };
        Ok(HttpClient {
            client,
            base,
            headers: opts.headers.clone().into(),
            grpc,
        })
    }

    /// Adds the `--header`s, replacing any of the same name.
    fn with_headers(&self, mut req: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
        for (k, v) in self.headers.iter() {
            req.headers_mut().insert(k.clone(), v.clone());
        }
        req
    }

    fn uri(&self, path: &str) -> Result<Uri, LoadgenError> {
        format!("{}{path}", self.base)
            .parse()
            .map_err(|e| LoadgenError::Args(format!("bad path '{path}': {e}")))
    }

    /// Sends one gRPC `ModelInfer`; a status counts as the HTTP status KServe gives that error.
    async fn send_grpc(&self, req: &crate::protocol::grpc::pb::ModelInferRequest) -> Outcome {
        let Some(mut c) = self.grpc.clone() else {
            return Outcome::Transport("no-grpc-url");
        };
        let mut r = tonic::Request::new(req.clone());
        for (k, v) in self.headers.iter() {
            if let Ok(v) = tonic::metadata::MetadataValue::try_from(v.as_bytes()) {
                r.metadata_mut().insert(
                    tonic::metadata::MetadataKey::from_bytes(k.as_str().as_bytes())
                        .expect("a header name is a metadata key. This is a bug."),
                    v,
                );
            }
        }
        use tonic::Code;
        match c.model_infer(r).await {
            Ok(_) => Outcome::Ok,
            Err(st) => match st.code() {
                Code::InvalidArgument => Outcome::Status(400),
                Code::Unauthenticated => Outcome::Status(401),
                Code::PermissionDenied => Outcome::Status(403),
                Code::NotFound => Outcome::Status(404),
                Code::ResourceExhausted => Outcome::Status(429),
                Code::Unavailable if st.metadata().get("retry-after").is_some() => {
                    Outcome::Status(503)
                }
                // no answer from the server: the channel could not connect or broke
                Code::Unavailable | Code::Unknown => Outcome::Transport("grpc"),
                Code::DeadlineExceeded => Outcome::Status(504),
                _ => Outcome::Status(500),
            },
        }
    }

    /// Sends one request and reads the whole response body.
    pub async fn send(&self, p: &Payload) -> Outcome {
        if let Some(req) = &p.grpc {
            return self.send_grpc(req).await;
        }
        let Ok(uri) = self.uri(&p.path) else {
            return Outcome::Transport("uri");
        };
        let mut req = Request::builder().method(Method::POST).uri(uri);
        for (k, v) in p.headers() {
            req = req.header(k, v);
        }
        let req = req
            .body(Full::new(p.body.clone()))
            .expect("valid method, URI and headers. This is a bug.");
        match self.client.request(self.with_headers(req)).await {
            Err(e) if e.is_connect() => Outcome::Transport("connect"),
            Err(_) => Outcome::Transport("io"),
            Ok(resp) => {
                let status = resp.status();
                let retry_after = resp.headers().contains_key(hyper::header::RETRY_AFTER);
                match resp.into_body().collect().await {
                    Err(_) => Outcome::Transport("io"),
                    Ok(_) => outcome(status.as_u16(), retry_after),
                }
            }
        }
    }

    /// GET a URL (absolute, or a path on this server) and return the body as text; non-2xx is an
    /// error.
    pub async fn get_text(&self, url: &str) -> Result<String, LoadgenError> {
        let uri: Uri = if url.starts_with("http") {
            url.parse()
                .map_err(|e| LoadgenError::Args(format!("bad URL '{url}': {e}")))?
        } else {
            self.uri(url)?
        };
        let fail = |m: String| LoadgenError::Http {
            url: url.to_string(),
            message: m,
        };
        let req = Request::get(uri)
            .body(Full::new(Bytes::new()))
            .expect("valid GET. This is a bug.");
        let resp = self
            .client
            .request(self.with_headers(req))
            .await
            .map_err(|e| fail(error_chain(&e)))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            return Err(fail(format!("status {status}: {text}")));
        }
        Ok(text)
    }
}

/// An error with its causes (hyper's own message alone says only "client error (Connect)").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_overload_without_retry_after_counted_apart() {
        assert_eq!(outcome(200, false), Outcome::Ok);
        assert_eq!(outcome(503, true), Outcome::Status(503));
        assert_eq!(outcome(429, true), Outcome::Status(429));
        assert_eq!(outcome(503, false), Outcome::NoRetryAfter(503));
        assert_eq!(
            outcome(429, false).error_kind().as_deref(),
            Some("429-no-retry-after")
        );
        assert_eq!(outcome(500, false), Outcome::Status(500));
    }

    #[test]
    fn parse_header_name_value_trimmed() {
        let (k, v) = parse_header("Authorization: Bearer abc:def").unwrap();
        assert_eq!(k.as_str(), "authorization");
        assert_eq!(v.to_str().unwrap(), "Bearer abc:def");
        assert!(parse_header("no-colon").is_err());
        assert!(parse_header("bad name:x").is_err());
        assert!(parse_header("x-a:line\nbreak").is_err());
    }

    #[test]
    fn with_options_https_without_cacert_is_error() {
        let e = HttpClient::with_options("https://127.0.0.1:1", &ClientOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--cacert"), "{e}");
        assert!(HttpClient::new("ftp://x").is_err());
        assert!(HttpClient::new("http://127.0.0.1:1").is_ok());
    }
}
