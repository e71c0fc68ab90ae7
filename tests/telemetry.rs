//! Telemetry against a real server: `/v2/devices`, GPU gauges from a simulated NVML source, the
//! missing-NVML path, model readiness, `promtool check metrics` on `/metrics`, and a real Prometheus
//! server scraping it. Without the `promtool`/`prometheus` binaries those two tests print SKIPPED,
//! unless `CI` is set: then they fail (`scripts/test.sh` installs Debian's `prometheus` and sets
//! `CI=1` for `cargo test`, so a run from it never passes by skipping).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{metric_in, metric_value, tools_required, v2_request, Repo, TestServer};
use ferrite::telemetry::gpu::{GpuError, GpuSource, SimulatedGpus, SimulatedSource};
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

/// A server whose GPU readings the test steps one sample at a time. `gpus` is dropped first (field
/// order), letting a sampler that waits for its next step go, so that the server also stops after a
/// failed assertion.
struct SteppedServer {
    gpus: SimulatedGpus,
    s: TestServer,
}

impl SteppedServer {
    async fn start(n: usize) -> SteppedServer {
        let (src, gpus) = SimulatedSource::stepped(n);
        let s = TestServer::start_with_gpu_source(Repo::new().with_digits(&[]), Ok(Box::new(src)))
            .await;
        SteppedServer { gpus, s }
    }

    /// One more GPU sample, exported; returns how many the server has taken.
    fn step(&self) -> u64 {
        tokio::task::block_in_place(|| self.gpus.step())
    }
}

fn gpu_label(i: usize) -> String {
    format!("{{gpu_uuid=\"GPU-00000000-0000-0000-0000-00000000000{i}\"}}")
}

const GPU_SERIES: [&str; 8] = [
    "nv_gpu_utilization",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage",
    "nv_gpu_power_limit",
    "nv_energy_consumption",
    "ferrite_gpu_temperature_celsius",
    "ferrite_gpu_sm_clock_hz",
];

/// What the server exports from its GPU source, sample by sample: Triton's gauges labelled by UUID,
/// energy counted from the server's first reading (not NVML's since-driver-load figure); a GPU that
/// stops answering loses every series while the others update; a failed query keeps the last
/// gauges and says why in /v2/devices; a GPU that comes back counts energy from its new reading.
#[tokio::test(flavor = "multi_thread")]
async fn gpu_series_follow_each_sample_and_an_unreadable_gpu_loses_them() {
    let t = SteppedServer::start(2).await;
    // Readings 1 and 2: each GPU's NVML energy goes 1300 J -> 1600 J.
    assert_eq!(t.step(), 2);
    let text = t.s.metrics_text().await;
    for i in 0..2 {
        let l = gpu_label(i);
        for (name, want) in [
            ("nv_gpu_utilization", 0.5),
            ("nv_gpu_memory_total_bytes", (80u64 << 30) as f64),
            ("nv_gpu_memory_used_bytes", (20u64 << 30) as f64),
            ("nv_gpu_power_usage", 300.0),
            ("nv_gpu_power_limit", 700.0),
            ("nv_energy_consumption", 300.0),
            ("ferrite_gpu_temperature_celsius", 55.0),
            ("ferrite_gpu_sm_clock_hz", 1.98e9),
        ] {
            assert_eq!(metric_in(&text, &format!("{name}{l}")), want, "{name}{l}");
        }
    }
    assert!(
        text.contains("# TYPE nv_energy_consumption counter"),
        "{text}"
    );

    // Reading 3: GPU 0 busier, GPU 1 no longer answers.
    t.gpus.update(0, |g| g.utilization = Some(0.75));
    t.gpus.set_unreadable(1, true);
    assert_eq!(t.step(), 3);
    let text = t.s.metrics_text().await;
    assert_eq!(
        metric_in(&text, &format!("nv_gpu_utilization{}", gpu_label(0))),
        0.75
    );
    assert_eq!(
        metric_in(&text, &format!("nv_energy_consumption{}", gpu_label(0))),
        600.0
    );
    for name in GPU_SERIES {
        let series = format!("{name}{}", gpu_label(1));
        assert_eq!(
            metric_value(&text, &series),
            None,
            "{series} still exported"
        );
    }

    // Reading 4: the whole NVML query fails: GPU 0's gauges stay, and /v2/devices says why.
    t.gpus
        .set_failure(Some(GpuError::Query("simulated ECC storm".into())));
    assert_eq!(t.step(), 4);
    let text = t.s.metrics_text().await;
    assert_eq!(
        metric_in(&text, &format!("nv_gpu_utilization{}", gpu_label(0))),
        0.75
    );
    assert_eq!(
        metric_in(&text, &format!("nv_energy_consumption{}", gpu_label(0))),
        600.0
    );
    let v: Value = t.s.get("/v2/devices").await.json().await.unwrap();
    let why = v["gpu_telemetry_error"].as_str().unwrap_or_default();
    assert!(why.contains("simulated ECC storm"), "{v}");

    // Reading 5: both back. GPU 0's energy includes the failed interval (NVML's counter kept
    // running: 1900 J -> 2500 J); GPU 1 counts from this reading, not across its gap.
    t.gpus.set_failure(None);
    t.gpus.set_unreadable(1, false);
    assert_eq!(t.step(), 5);
    let text = t.s.metrics_text().await;
    assert_eq!(
        metric_in(&text, &format!("nv_energy_consumption{}", gpu_label(0))),
        1200.0
    );
    assert_eq!(
        metric_in(&text, &format!("nv_energy_consumption{}", gpu_label(1))),
        0.0
    );
    assert_eq!(
        metric_in(&text, &format!("nv_gpu_utilization{}", gpu_label(1))),
        0.5
    );
    let v: Value = t.s.get("/v2/devices").await.json().await.unwrap();
    assert!(v.get("gpu_telemetry_error").is_none(), "{v}");
    let SteppedServer { gpus, s } = t;
    drop(gpus);
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

/// Whether `bin` can run here; if not, says SKIPPED, or fails where `CI` is set (`tools_required`).
fn tool_present(bin: &str) -> bool {
    if on_path(bin) {
        return true;
    }
    let why = format!("{bin} not found (Debian package `prometheus`; scripts/test.sh installs it)");
    assert!(!tools_required(), "{why}, and CI is set: install it");
    println!("SKIPPED: {why}; with CI set this fails");
    false
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
    "nv_cache_num_hits_per_model",
    "nv_cache_num_misses_per_model",
    "nv_cache_hit_duration_per_model",
    "nv_cache_miss_duration_per_model",
];

#[tokio::test(flavor = "multi_thread")]
async fn promtool_check_metrics_is_clean_apart_from_triton_names() {
    if !tool_present("promtool") {
        return;
    }
    // With the response cache on, so that its series are exported and linted too.
    let cache = "[response_cache]\nenable = true\n\n[metadata]";
    let s = start_with_gpus(Repo::new().with_digits(&[("[metadata]", cache)]), 1).await;
    let text = metrics_text(&s).await;
    assert!(text.contains("nv_cache_num_hits_per_model{"), "{text}");
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
    if !tool_present("prometheus") {
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
