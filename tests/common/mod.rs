//! Test harness: temporary model repositories and real servers on 127.0.0.1:0.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferrite::config::Settings;
use ferrite::device::GpuSelection;
use ferrite::server::Server;
use ferrite::telemetry::gpu::{GpuError, GpuSource};
use ferrite::telemetry::logging::LogFormat;
use serde_json::{json, Value};

/// The checkout the tests read models (`models/`) and fixtures (`tests/fixtures/`) from: the one they
/// were built in, or `FERRITE_REPO_ROOT` where prebuilt test binaries run elsewhere
/// (benches/gpu-bundle.sh packs a checkout-shaped folder for them).
pub fn repo_root() -> PathBuf {
    match std::env::var_os("FERRITE_REPO_ROOT") {
        // Absolute: tests symlink model files from here into temporary repositories.
        Some(dir) => std::fs::canonicalize(&dir)
            .unwrap_or_else(|e| panic!("FERRITE_REPO_ROOT {}: {e}", Path::new(&dir).display())),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    }
}

/// A file of `tests/fixtures/` (under `repo_root()`); panics naming the path if it is missing.
pub fn fixture(name: &str) -> String {
    let path = repo_root().join("tests/fixtures").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// A temporary model repository.
pub struct Repo {
    pub dir: tempfile::TempDir,
}

impl Repo {
    pub fn new() -> Repo {
        Repo {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies the bundled digits model, optionally with config lines replaced (`from` -> `to`).
    pub fn with_digits(self, edits: &[(&str, &str)]) -> Repo {
        self.copy_digits("digits", edits)
    }

    pub fn copy_digits(self, name: &str, edits: &[(&str, &str)]) -> Repo {
        let src = repo_root().join("models/digits");
        let dst = self.path().join(name);
        std::fs::create_dir_all(dst.join("1")).unwrap();
        std::fs::copy(
            src.join("1/model.safetensors"),
            dst.join("1/model.safetensors"),
        )
        .unwrap();
        std::fs::copy(
            src.join("test-split.safetensors"),
            dst.join("test-split.safetensors"),
        )
        .unwrap();
        std::fs::copy(src.join("labels.txt"), dst.join("labels.txt")).unwrap();
        let mut cfg = std::fs::read_to_string(src.join("config.toml")).unwrap();
        cfg = cfg.replace("name = \"digits\"\n", "");
        for (from, to) in edits {
            assert!(cfg.contains(from), "config has no '{from}'");
            cfg = cfg.replace(from, to);
        }
        std::fs::write(dst.join("config.toml"), cfg).unwrap();
        self
    }

    /// A `debug` (echo) model on FP32 [-1, 4] with the given extra config text.
    pub fn with_debug(self, name: &str, max_batch: usize, extra: &str) -> Repo {
        let dst = self.path().join(name);
        std::fs::create_dir_all(dst.join("1")).unwrap();
        let cfg = format!(
            r#"architecture = "debug"
max_batch_size = {max_batch}
[[input]]
name = "x"
datatype = "FP32"
dims = [-1, 4]
[[output]]
name = "y"
datatype = "FP32"
dims = [-1, 4]
{extra}
"#
        );
        std::fs::write(dst.join("config.toml"), cfg).unwrap();
        self
    }

    pub fn with_file(self, rel: &str, text: &str) -> Repo {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
        self
    }
}

pub fn settings(repo: &Path) -> Settings {
    Settings {
        host: "127.0.0.1".parse().unwrap(),
        http_port: 0,
        metrics_port: 0,
        grpc_port: 0,
        log_format: LogFormat::Text,
        exit_timeout: Duration::from_secs(10),
        gpus: GpuSelection::None,
        intra_op_threads: 1,
        metrics_interval: Duration::from_millis(200),
        // Tests load and unload models through the repository routes.
        model_control: ferrite::config::ModelControl::Explicit,
        ..Settings::with_defaults(repo.to_path_buf())
    }
}

/// A server running in this process, and an HTTP client for it.
pub struct TestServer {
    pub server: Server,
    pub url: String,
    pub metrics_url: String,
    /// `http://127.0.0.1:PORT` of the gRPC port (what tonic's `Endpoint` takes).
    pub grpc_url: String,
    pub client: reqwest::Client,
    _repo: Repo,
}

impl TestServer {
    pub async fn start(repo: Repo) -> TestServer {
        Self::start_with(repo, |_| {}).await
    }

    pub async fn start_with(repo: Repo, edit: impl FnOnce(&mut Settings)) -> TestServer {
        let mut s = settings(repo.path());
        edit(&mut s);
        Self::launch(repo, s, ferrite::telemetry::gpu::open_default()).await
    }

    /// With a given GPU telemetry source (a simulated one, or a missing-NVML error).
    pub async fn start_with_gpu_source(
        repo: Repo,
        gpu: Result<Box<dyn GpuSource>, GpuError>,
    ) -> TestServer {
        let s = settings(repo.path());
        Self::launch(repo, s, gpu).await
    }

    async fn launch(
        repo: Repo,
        s: Settings,
        gpu: Result<Box<dyn GpuSource>, GpuError>,
    ) -> TestServer {
        if std::env::var_os("RUST_LOG").is_some() {
            ferrite::telemetry::logging::init(LogFormat::Text);
        }
        let server = Server::start_with_gpu_source(&s, gpu)
            .await
            .expect("server starts");
        TestServer {
            url: format!("http://{}", server.http_addr()),
            metrics_url: format!("http://{}/metrics", server.metrics_addr()),
            grpc_url: format!("http://{}", server.grpc_addr()),
            server,
            client: reqwest::Client::new(),
            _repo: repo,
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// The metrics port's whole Prometheus text.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(&self.metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Value of one metric series, e.g. `nv_inference_count{model="digits",version="1"}`. Panics if
    /// the server does not export that series: a missing series is never read as 0. Where a test
    /// means "not exported", it says so with `metric_value(..) == None`.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_in(&self.metrics_text().await, series)
    }
}

/// Finds `series` (name with labels exactly as exported, e.g. `nv_cpu_utilization` or
/// `nv_inference_count{model="digits",version="1"}`) in Prometheus text; `None` if not exported.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// The value of `series` in Prometheus text; panics, listing the series of the same metric (or, if
/// there are none, of the same `prefix_word_`), when it is not exported.
pub fn metric_in(text: &str, series: &str) -> f64 {
    metric_value(text, series).unwrap_or_else(|| {
        let name = series.split('{').next().unwrap_or(series);
        let samples: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect();
        let named = |n: &str| {
            samples
                .iter()
                .filter(|l| l.split(['{', ' ']).next() == Some(n))
                .copied()
                .collect::<Vec<_>>()
        };
        let mut similar = named(name);
        if similar.is_empty() {
            let stem: String = name.split('_').take(2).collect::<Vec<_>>().join("_");
            similar = samples
                .iter()
                .filter(|l| l.starts_with(&format!("{stem}_")))
                .copied()
                .collect();
        }
        similar.truncate(30);
        panic!(
            "series {series} is not exported; similar series:\n  {}",
            if similar.is_empty() {
                "(none)".to_string()
            } else {
                similar.join("\n  ")
            }
        )
    })
}

/// Whether GPU tests must run rather than skip: `FERRITE_REQUIRE_GPU=1` (benches/gpu.sh sets it
/// where a GPU is present).
pub fn gpu_required() -> bool {
    std::env::var("FERRITE_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// The "no GPU here" branch of a GPU test: prints SKIPPED, or fails when `gpu_required()`, so that a
/// GPU run cannot pass by skipping.
pub fn skip_gpu_test(test: &str, why: &str) {
    assert!(
        !gpu_required(),
        "{test}: {why}, and FERRITE_REQUIRE_GPU=1 requires a GPU"
    );
    eprintln!("{test}: SKIPPED, {why} (with FERRITE_REQUIRE_GPU=1 this fails)");
}

/// Whether a test needing an external tool (promtool, prometheus) must fail rather than skip when
/// the tool is missing: when `CI` is set (to anything but "" / "0" / "false"). scripts/test.sh, which
/// installs those tools, sets `CI=1` for its `cargo test`.
pub fn tools_required() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// A KServe v2 JSON request for `x` FP32 [rows, n].
pub fn v2_request(name: &str, rows: usize, n: usize, data: &[f32]) -> Value {
    json!({"inputs": [{"name": name, "shape": [rows, n], "datatype": "FP32", "data": data}]})
}

/// Triton binary-extension request body with one FP32 input; returns (body, json header length).
pub fn v2_binary_request(
    name: &str,
    shape: &[usize],
    data: &[f32],
    binary_output: bool,
) -> (Vec<u8>, usize) {
    let header = json!({
        "inputs": [{"name": name, "shape": shape, "datatype": "FP32",
                    "parameters": {"binary_data_size": data.len() * 4}}],
        "parameters": {"binary_data_output": binary_output},
    });
    let mut body = serde_json::to_vec(&header).unwrap();
    let n = body.len();
    for v in data {
        body.extend_from_slice(&v.to_le_bytes());
    }
    (body, n)
}

/// Seeded random pixels in 0..=16, as the digits data set has them.
pub fn random_pixels(rng: &mut impl rand::Rng, rows: usize) -> Vec<f32> {
    (0..rows * 64)
        .map(|_| rng.random_range(0..=16) as f32)
        .collect()
}

/// One whole HTTP/1.1 response on a kept-alive connection (headers plus `content-length` bytes),
/// each read within `within`.
pub async fn read_response_within(tcp: &mut tokio::net::TcpStream, within: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(within, tcp.read(&mut buf))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "closed before a whole response");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return text;
            }
        }
    }
}
