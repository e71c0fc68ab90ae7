//! Telemetry against a real server: `/v2/devices`, GPU gauges from a simulated NVML source, the
//! missing-NVML path, model readiness, `promtool check metrics` on `/metrics`, and a real Prometheus
//! server scraping it. The promtool/Prometheus tests skip (with a message) only when the binary is
//! absent; `scripts/test.sh` installs Debian's `prometheus` so CI always runs them.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{metric_value, v2_request, Repo, TestServer};
use ferrite::telemetry::gpu::{GpuError, GpuSource, SimulatedSource};
use serde_json::Value;

async fn start_with_gpus(repo: Repo, n: usize) -> TestServer {
    let src: Result<Box<dyn GpuSource>, GpuError> = if n == 0 {
        Err(GpuError::Unavailable("simulated: no libnvidia-ml".into()))
    } else {
        Ok(Box::new(SimulatedSource::new(n)))
    };
    let server = TestServer::start_with_gpu_source(repo, src).await;
    // one inference so the per-model counters have a value
    let r = server
        .post_json(
            "/v2/models/digits/infer",
            &v2_request("pixels", 1, 64, &[0.0; 64]),
        )
        .await;
    assert_eq!(r.status(), 200);
    server
}

async fn metrics_text(s: &TestServer) -> String {
    s.client
        .get(&s.metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_endpoint_lists_cpu_with_instances_and_sample() {
    let s = start_with_gpus(Repo::new().with_digits(&[]), 0).await;
    let v: Value = s.get("/v2/devices").await.json().await.unwrap();
    let devs = v["devices"].as_array().unwrap();
    assert_eq!(devs.len(), 1, "{v}");
    let cpu = &devs[0];
    assert_eq!(cpu["id"], "cpu");
    assert_eq!(cpu["kind"], "cpu");
    assert!(cpu["memory_total_bytes"].as_u64().unwrap() > 0, "{v}");
    assert!(cpu["memory_used_bytes"].as_u64().unwrap() > 0, "{v}");
    let inst = &cpu["instances"][0];
    assert_eq!(
        (&inst["model"], &inst["version"], &inst["count"]),
        (&Value::from("digits"), &Value::from("1"), &Value::from(2))
    );
    let u = cpu["telemetry"]["utilization"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&u), "{v}");
    assert!(v["sampled_at_unix_ms"].as_u64().unwrap() > 0);
    assert!(v["gpu_telemetry_error"]
        .as_str()
        .unwrap()
        .contains("libnvidia-ml"));
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_with_simulated_gpus_have_triton_gpu_gauges_labelled_by_uuid() {
    let s = start_with_gpus(Repo::new().with_digits(&[]), 2).await;
    let text = metrics_text(&s).await;
    for i in 0..2 {
        let l = format!("{{gpu_uuid=\"GPU-00000000-0000-0000-0000-00000000000{i}\"}}");
        assert_eq!(
            metric_value(&text, &format!("nv_gpu_utilization{l}")),
            Some(0.5)
        );
        assert_eq!(
            metric_value(&text, &format!("nv_gpu_power_limit{l}")),
            Some(700.0)
        );
        assert!(metric_value(&text, &format!("nv_energy_consumption{l}")).is_some());
    }
    let cpu = metric_value(&text, "nv_cpu_utilization").unwrap();
    assert!((0.0..=1.0).contains(&cpu));
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_without_nvml_have_cpu_gauges_and_no_gpu_gauges() {
    let s = start_with_gpus(Repo::new().with_digits(&[]), 0).await;
    let text = metrics_text(&s).await;
    assert!(!text.contains("nv_gpu_"), "{text}");
    for name in [
        "nv_cpu_utilization",
        "nv_cpu_memory_total_bytes",
        "nv_cpu_memory_used_bytes",
        "ferrite_process_resident_memory_bytes",
    ] {
        assert!(metric_value(&text, name).is_some(), "no {name}");
    }
    assert_eq!(
        metric_value(&text, "nv_inference_count{model=\"digits\",version=\"1\"}"),
        Some(1.0)
    );
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn model_ready_gauge_follows_load_unload_and_gpu_only_failure() {
    let repo = Repo::new()
        .with_digits(&[])
        .copy_digits("gpuonly", &[("kind = \"auto\"", "kind = \"gpu\"")]);
    let s = start_with_gpus(repo, 0).await;
    let ready = "ferrite_model_ready{model=\"digits\",version=\"1\"}";
    assert_eq!(s.metric(ready).await, 1.0);
    let gpu = "ferrite_model_ready{model=\"gpuonly\",version=\"1\"}";
    let text = metrics_text(&s).await;
    assert_eq!(metric_value(&text, gpu), Some(0.0), "{text}");
    let idx: Value = s
        .post_json("/v2/repository/index", &serde_json::json!({}))
        .await
        .json()
        .await
        .unwrap();
    let row = idx
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "gpuonly")
        .unwrap();
    assert_eq!(row["state"], "UNAVAILABLE");
    assert!(row["reason"].as_str().unwrap().contains("no GPU"), "{row}");
    let r = s
        .post_json(
            "/v2/repository/models/digits/unload",
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.metric(ready).await, 0.0);
    s.server.shutdown().await;
}

fn on_path(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Lint findings promtool reports for names fixed by Triton compatibility (counters without
/// `_total`, `_us` units, a gauge ending in `_count`). Anything else it reports fails the test.
const TRITON_NAMES: &[&str] = &[
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_pending_request_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_energy_consumption",
];

#[tokio::test(flavor = "multi_thread")]
async fn promtool_check_metrics_is_clean_apart_from_triton_names() {
    if !on_path("promtool") {
        println!("SKIPPED: promtool not found (Debian package `prometheus`; scripts/test.sh installs it)");
        return;
    }
    let s = start_with_gpus(Repo::new().with_digits(&[]), 1).await;
    let text = metrics_text(&s).await;
    s.server.shutdown().await;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!report.contains("error while linting"), "{report}");
    let unexpected: Vec<&str> = report
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            let name = l.split_whitespace().next().unwrap_or("");
            !TRITON_NAMES.contains(&name)
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "promtool findings:\n{}",
        unexpected.join("\n")
    );
}

/// A Prometheus server process, killed on drop.
struct Prom(Child);

impl Drop for Prom {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn query(client: &reqwest::Client, base: &str, q: &str) -> Option<f64> {
    let v: Value = client
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_server_and_answers_queries() {
    if !on_path("prometheus") {
        println!("SKIPPED: prometheus not found (Debian package `prometheus`; scripts/test.sh installs it)");
        return;
    }
    let s = start_with_gpus(Repo::new().with_digits(&[]), 0).await;
    let dir = tempfile::tempdir().unwrap();
    let target = s
        .metrics_url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let cfg = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: ferrite\n    static_configs:\n      - targets: ['{target}']\n"
    );
    std::fs::write(dir.path().join("prometheus.yml"), cfg).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _prom = Prom(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}/prometheus.yml",
                dir.path().display()
            ))
            .arg(format!("--storage.tsdb.path={}/data", dir.path().display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut count, mut cpu) = (None, None);
    while Instant::now() < deadline && (count.is_none() || cpu.is_none()) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        count = query(
            &s.client,
            &base,
            "nv_inference_count{job=\"ferrite\",model=\"digits\"}",
        )
        .await;
        cpu = query(&s.client, &base, "nv_cpu_utilization{job=\"ferrite\"}").await;
    }
    assert_eq!(
        count,
        Some(1.0),
        "Prometheus never answered nv_inference_count"
    );
    let cpu = cpu.expect("Prometheus never answered nv_cpu_utilization");
    assert!((0.0..=1.0).contains(&cpu));
    s.server.shutdown().await;
}
