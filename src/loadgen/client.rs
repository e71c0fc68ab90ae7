//! The HTTP side of the bench: a pooled hyper client (HTTP/1, keep-alive), one request per call,
//! and the outcome as the bench counts it (success, status code, or transport error). No timing
//! and no statistics here.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::request::Payload;
use super::LoadgenError;

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A non-2xx status, e.g. 503.
    Status(u16),
    /// No response: `"connect"`, `"io"`, ...
    Transport(&'static str),
}

impl Outcome {
    /// The error kind as counted in reports (`"503"`, `"connect"`); `None` for success.
    pub fn error_kind(&self) -> Option<String> {
        match self {
            Outcome::Ok => None,
            Outcome::Status(s) => Some(s.to_string()),
            Outcome::Transport(k) => Some((*k).to_string()),
        }
    }
}

/// A cheap-to-clone HTTP client bound to one server.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl HttpClient {
    /// `base` is `http://host:port` (no trailing slash needed).
    pub fn new(base: &str) -> Result<HttpClient, LoadgenError> {
        let base = base.trim_end_matches('/').to_string();
        base.parse::<Uri>()
            .map_err(|e| LoadgenError::Args(format!("bad URL '{base}': {e}")))?;
        if !base.starts_with("http://") {
            return Err(LoadgenError::Args(format!(
                "URL '{base}' must start with http:// (no TLS in the bench)"
            )));
        }
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(usize::MAX)
            .build(conn);
        Ok(HttpClient { client, base })
    }

    fn uri(&self, path: &str) -> Result<Uri, LoadgenError> {
        format!("{}{path}", self.base)
            .parse()
            .map_err(|e| LoadgenError::Args(format!("bad path '{path}': {e}")))
    }

    /// Sends one request and reads the whole response body.
    pub async fn send(&self, p: &Payload) -> Outcome {
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
        match self.client.request(req).await {
            Err(e) if e.is_connect() => Outcome::Transport("connect"),
            Err(_) => Outcome::Transport("io"),
            Ok(resp) => {
                let status = resp.status();
                match resp.into_body().collect().await {
                    Err(_) => Outcome::Transport("io"),
                    Ok(_) if status.is_success() => Outcome::Ok,
                    Ok(_) => Outcome::Status(status.as_u16()),
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
            .request(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
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
