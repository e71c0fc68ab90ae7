//! Model-quality monitoring against a real server: digits drift against its training-split profile
//! (held-out images: no drift; intensities x 0.6: drift), the drift metrics scraped by a real
//! Prometheus whose drift rule fires and reaches a webhook through a real Alertmanager; ground-truth
//! feedback giving the exact accuracy; the alert rules' `promtool test rules` unit tests and
//! `amtool check-config` of the Alertmanager example. Without the Debian binaries (prometheus,
//! prometheus-alertmanager) those tests print SKIPPED, or fail when `CI` is set.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{metric_in, metric_value, repo_root, tools_required, Repo, TestServer};
use serde_json::{json, Value};

/// The held-out digits split: (pixels row-major [360 x 64], labels).
fn held_out() -> (Vec<f32>, Vec<i64>) {
    let path = repo_root().join("models/digits/test-split.safetensors");
    let t = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let pixels: Vec<f32> = t["pixels"].flatten_all().unwrap().to_vec1().unwrap();
    let labels: Vec<i64> = t["labels"].to_vec1().unwrap();
    (pixels, labels)
}

/// Digits with `[monitoring]` on and its shipped profile.json.
fn monitored_digits(extra: &str) -> Repo {
    let monitoring = format!("[monitoring]\nenable = true\n{extra}\n\n[metadata]");
    let repo = Repo::new().with_digits(&[("[metadata]", &monitoring)]);
    std::fs::copy(
        repo_root().join("models/digits/1/profile.json"),
        repo.path().join("digits/1/profile.json"),
    )
    .unwrap();
    repo
}

/// Sends `pixels` (rows of 64) in requests of `per` rows; returns the predicted class per row.
async fn infer_rows(s: &TestServer, pixels: &[f32], per: usize, id: Option<&str>) -> Vec<usize> {
    let mut classes = Vec::new();
    for (i, chunk) in pixels.chunks(per * 64).enumerate() {
        let rows = chunk.len() / 64;
        let mut body = json!({"inputs": [{"name": "pixels", "shape": [rows, 64], "datatype": "FP32", "data": chunk}]});
        if let Some(id) = id {
            body["id"] = json!(format!("{id}-{i}"));
        }
        let r = s.post_json("/v2/models/digits/infer", &body).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        let p: Vec<f32> = serde_json::from_value(v["outputs"][0]["data"].clone()).unwrap();
        classes.extend(p.chunks(10).map(|row| {
            row.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0
        }));
    }
    classes
}

async fn drift(s: &TestServer) -> Value {
    let r = s.get("/v2/models/digits/drift").await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn digits_drift_stays_under_threshold_on_held_out_data_and_rises_when_scaled() {
    let s = TestServer::start(monitored_digits(
        "window = 360\nmin_rows = 100\nperiod_ms = 600000",
    ))
    .await;
    let before = drift(&s).await;
    assert_eq!(before["status"], "warming_up", "{before}");
    // No drift series before a window was computed (never a 0 that reads as "no drift").
    let text = s.metrics_text().await;
    assert_eq!(
        metric_value(
            &text,
            "ferrite_drift_features_over_threshold{model=\"digits\",version=\"1\"}"
        ),
        None
    );
    let (pixels, _) = held_out();
    infer_rows(&s, &pixels, 8, None).await;
    let d = drift(&s).await;
    assert_eq!(d["status"], "ok", "{d}");
    assert_eq!(d["window_rows"], 360);
    assert_eq!(d["dropped_samples"], 0);
    let features = d["features"].as_array().unwrap();
    assert_eq!(features.len(), 65, "64 pixels and the predicted class");
    let constant: Vec<&str> = features
        .iter()
        .filter(|f| f["status"] == "constant")
        .map(|f| f["feature"].as_str().unwrap())
        .collect();
    assert!(constant.contains(&"pixels[0]"), "{constant:?}");
    for f in features.iter().filter(|f| f["status"] != "constant") {
        let ks = f["ks"].as_f64().unwrap();
        assert!(ks < 0.2, "no drift expected on held-out data: {f}");
    }
    assert_eq!(d["summary"]["over_threshold"], 0);
    // The drift route exports what it computed: the metrics agree from now on.
    let text = s.metrics_text().await;
    assert_eq!(
        metric_in(
            &text,
            "ferrite_drift_window_rows{model=\"digits\",version=\"1\"}"
        ),
        360.0
    );
    assert_eq!(
        metric_in(
            &text,
            "ferrite_drift_features_over_threshold{model=\"digits\",version=\"1\"}"
        ),
        0.0
    );

    // The same images, intensities scaled by 0.6: the window is all shifted rows.
    let shifted: Vec<f32> = pixels.iter().map(|p| p * 0.6).collect();
    infer_rows(&s, &shifted, 8, None).await;
    let d = drift(&s).await;
    let over = d["summary"]["over_threshold"].as_u64().unwrap();
    assert!(
        over >= 20,
        "most pixels drift when scaled: {}",
        d["summary"]
    );
    assert!(d["summary"]["max_ks"].as_f64().unwrap() > 0.5);
    let text = s.metrics_text().await;
    assert_eq!(
        metric_in(
            &text,
            "ferrite_drift_features_over_threshold{model=\"digits\",version=\"1\"}"
        ),
        over as f64
    );
    // Per-feature series are capped to the top 10 by KS.
    let ks_series = text
        .lines()
        .filter(|l| l.starts_with("ferrite_drift_ks{"))
        .count();
    assert_eq!(ks_series, 10, "{text}");
    assert!(
        metric_in(
            &text,
            "ferrite_drift_ks_max{model=\"digits\",version=\"1\"}"
        ) > 0.5
    );
    assert_eq!(
        metric_in(
            &text,
            "ferrite_monitor_dropped_samples_total{model=\"digits\",version=\"1\"}"
        ),
        0.0
    );
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn feedback_for_1000_predictions_gives_the_exact_accuracy_and_counts_unknown_ids() {
    let s = TestServer::start(monitored_digits("accuracy_window = 1000")).await;
    let (pixels, _) = held_out();
    // 1000 single-row requests (the held-out images, cycled), each with its own body id.
    let rows: Vec<f32> = pixels.iter().copied().cycle().take(1000 * 64).collect();
    let predicted = infer_rows(&s, &rows, 1, Some("fb")).await;
    assert_eq!(predicted.len(), 1000);
    // Every fourth label is wrong: accuracy exactly 0.75.
    let items: Vec<Value> = predicted
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let label = if i % 4 == 0 { (p + 1) % 10 } else { p };
            json!({"id": format!("fb-{i}"), "label": label})
        })
        .collect();
    let r = s
        .post_json("/v2/models/digits/feedback", &json!(items))
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["joined"], 1000, "{v}");
    assert_eq!(v["accuracy"], 0.75, "{v}");
    // Unknown ids and a repeated label are counted, not errors; a label name works too.
    let r = s
        .post_json(
            "/v2/models/digits/feedback",
            &json!([{"id": "never-seen", "label": 3}, {"id": "fb-1", "label": 1}]),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["unknown"].as_u64(), v["duplicate"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    // A label outside the classes is the client's error.
    let r = s
        .post_json(
            "/v2/models/digits/feedback",
            &json!({"id": "fb-2", "label": 10}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let text = s.metrics_text().await;
    let m = |o: &str| {
        metric_in(
            &text,
            &format!("ferrite_feedback_total{{model=\"digits\",outcome=\"{o}\",version=\"1\"}}"),
        )
    };
    assert_eq!(
        (m("joined"), m("unknown"), m("duplicate")),
        (1000.0, 1.0, 1.0)
    );
    assert_eq!(
        metric_in(
            &text,
            "ferrite_model_accuracy{model=\"digits\",version=\"1\"}"
        ),
        0.75
    );
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unmonitored_model_has_no_drift_route_and_no_monitor_series() {
    let s = TestServer::start(Repo::new().with_digits(&[])).await;
    assert_eq!(s.get("/v2/models/digits/drift").await.status(), 404);
    let r = s
        .post_json(
            "/v2/models/digits/feedback",
            &json!({"id": "a", "label": 1}),
        )
        .await;
    assert_eq!(r.status(), 404);
    let text = s.metrics_text().await;
    assert!(
        !text.contains("ferrite_monitor_dropped_samples_total{"),
        "{text}"
    );
    s.server.shutdown().await;
}

/// Whether `bin` runs here; if not, SKIPPED (or a failure where `CI` is set).
fn tool_present(bin: &str, package: &str) -> bool {
    let ok = Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        let why =
            format!("{bin} not found (Debian package `{package}`; scripts/test.sh installs it)");
        assert!(!tools_required(), "{why}, and CI is set: install it");
        println!("SKIPPED: {why}; with CI set this fails");
    }
    ok
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    if !tool_present("promtool", "prometheus") {
        return;
    }
    let out = Command::new("promtool")
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(repo_root().join("deploy/prometheus"))
        .output()
        .unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && report.contains("SUCCESS"),
        "{report}"
    );
}

#[test]
fn alertmanager_example_config_is_valid() {
    if !tool_present("amtool", "prometheus-alertmanager") {
        return;
    }
    let out = Command::new("amtool")
        .args(["check-config", "deploy/compose/alertmanager.yml"])
        .current_dir(repo_root())
        .output()
        .unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("3 receivers"), "{report}");
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A webhook receiver on 127.0.0.1:0: every POSTed JSON body goes to the channel.
async fn webhook() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/alerts",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(v);
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_alert_fires_in_prometheus_and_reaches_a_webhook_through_alertmanager() {
    if !tool_present("prometheus", "prometheus")
        || !tool_present("prometheus-alertmanager", "prometheus-alertmanager")
    {
        return;
    }
    let s = TestServer::start(monitored_digits(
        "window = 360\nmin_rows = 100\nperiod_ms = 100",
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (hook, mut alerts) = webhook().await;
    // Alertmanager: the test's webhook, no waiting to group.
    let am_port = free_port();
    std::fs::write(
        dir.path().join("alertmanager.yml"),
        format!(
            "route:\n  receiver: test\n  group_by: [alertname, model, version]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: test\n    webhook_configs:\n      - url: {hook}\n"
        ),
    )
    .unwrap();
    let _am = Proc(
        Command::new("prometheus-alertmanager")
            .arg(format!(
                "--config.file={}/alertmanager.yml",
                dir.path().display()
            ))
            .arg(format!("--storage.path={}/am", dir.path().display()))
            .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The shipped rules, with the drift rule's `for` cut from 15m to 2s.
    let rules = std::fs::read_to_string(repo_root().join("deploy/prometheus/alerts.yml")).unwrap();
    let drift_rule = rules
        .find("- alert: FerriteInputDrift")
        .expect("alerts.yml has the drift rule");
    let for_at = drift_rule + rules[drift_rule..].find("for: 15m").unwrap();
    let rules = format!(
        "{}for: 2s{}",
        &rules[..for_at],
        &rules[for_at + "for: 15m".len()..]
    );
    std::fs::write(dir.path().join("alerts.yml"), rules).unwrap();
    let target = s
        .metrics_url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}/alerts.yml\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\nscrape_configs:\n  - job_name: ferrite\n    static_configs:\n      - targets: ['{target}']\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let prom_port = free_port();
    let _prom = Proc(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}/prometheus.yml",
                dir.path().display()
            ))
            .arg(format!("--storage.tsdb.path={}/data", dir.path().display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // No drift on held-out data, then drift.
    let (pixels, _) = held_out();
    infer_rows(&s, &pixels, 8, None).await;
    assert_eq!(drift(&s).await["summary"]["over_threshold"], 0);
    let shifted: Vec<f32> = pixels.iter().map(|p| p * 0.6).collect();
    infer_rows(&s, &shifted, 8, None).await;
    assert!(
        drift(&s).await["summary"]["over_threshold"]
            .as_u64()
            .unwrap()
            > 0
    );
    let got = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let v = alerts.recv().await.expect("webhook channel open");
            let firing = v["alerts"].as_array().into_iter().flatten().find(|a| {
                a["labels"]["alertname"] == "FerriteInputDrift" && a["status"] == "firing"
            });
            if let Some(a) = firing {
                return a.clone();
            }
        }
    })
    .await
    .expect("the drift alert reached the webhook within 90 s");
    assert_eq!(got["labels"]["model"], "digits");
    assert_eq!(got["labels"]["version"], "1");
    assert!(
        got["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("features drifted"),
        "{got}"
    );
    s.server.shutdown().await;
}

/// MiniLM with `[monitoring]` on and its shipped profile (weights from scripts/fetch-models.sh).
fn monitored_minilm(extra: &str) -> Repo {
    let src = repo_root().join("models/minilm");
    assert!(
        src.join("1/model.safetensors").is_file(),
        "models/minilm/1 is missing: run scripts/fetch-models.sh (scripts/test.sh does)"
    );
    let repo = Repo::new();
    let dst = repo.path().join("minilm/1");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "config.json"] {
        std::os::unix::fs::symlink(src.join("1").join(f), dst.join(f)).unwrap();
    }
    std::fs::copy(src.join("1/profile.json"), dst.join("profile.json")).unwrap();
    // The gate's validation set (models/minilm/config.toml [validation]).
    std::os::unix::fs::symlink(
        src.join("validation.jsonl"),
        repo.path().join("minilm/validation.jsonl"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(src.join("config.toml")).unwrap();
    let cfg = cfg.replace(
        "[metadata]",
        &format!("[monitoring]\nenable = true\n{extra}\n\n[metadata]"),
    );
    std::fs::write(repo.path().join("minilm/config.toml"), cfg).unwrap();
    repo
}

async fn embed_all(s: &TestServer, texts: &[String]) {
    for chunk in texts.chunks(32) {
        let r = s.post_json("/embed", &json!({"inputs": chunk})).await;
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn minilm_projection_drift_stays_low_on_held_out_docs_and_rises_on_code() {
    let s = TestServer::start(monitored_minilm("window = 240\nmin_rows = 100")).await;
    let f: Value = serde_json::from_str(&common::fixture("minilm-drift-sentences.json")).unwrap();
    let take = |k: &str| -> Vec<String> {
        serde_json::from_value::<Vec<String>>(f[k].clone()).unwrap()[..240].to_vec()
    };
    embed_all(&s, &take("heldout")).await;
    let r = s.get("/v2/models/minilm/drift").await;
    let d: Value = r.json().await.unwrap();
    assert_eq!(d["status"], "ok", "{d}");
    assert_eq!(d["window_rows"], 240);
    assert_eq!(
        d["features"].as_array().unwrap().len(),
        17,
        "tokens + 16 projections"
    );
    assert_eq!(d["summary"]["over_threshold"], 0, "same distribution: {d}");
    embed_all(&s, &take("code")).await;
    let d: Value = s.get("/v2/models/minilm/drift").await.json().await.unwrap();
    let projections_over = d["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["feature"].as_str().unwrap().starts_with("embedding.proj"))
        .filter(|f| f["status"] == "over_threshold")
        .count();
    assert!(projections_over >= 4, "code is another domain: {d}");
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prediction_log_writes_a_line_per_request_and_a_broken_log_never_fails_one() {
    let logs = tempfile::tempdir().unwrap();
    let not_a_dir = logs.path().join("file");
    std::fs::write(&not_a_dir, "x").unwrap();
    let section = |dir: &std::path::Path| {
        format!(
            "[monitoring]\nenable = true\nlog_dir = \"{}\"\n\n[metadata]",
            dir.display()
        )
    };
    let (good, bad) = (section(logs.path()), section(&not_a_dir));
    let repo = Repo::new()
        .copy_digits("digits", &[("[metadata]", &good)])
        .copy_digits("broken", &[("[metadata]", &bad)]);
    let s = TestServer::start(repo).await;
    let (pixels, _) = held_out();
    for model in ["digits", "broken"] {
        for i in 0..5 {
            let body = json!({"id": format!("log-{i}"), "inputs": [{"name": "pixels", "shape": [2, 64], "datatype": "FP32", "data": &pixels[i * 128..(i + 1) * 128]}]});
            let r = s
                .post_json(&format!("/v2/models/{model}/infer"), &body)
                .await;
            assert_eq!(r.status(), 200, "a broken log never fails a request");
        }
        // A round trip through the monitor's queue: every sample before it was handled.
        let d: Value = s
            .get(&format!("/v2/models/{model}/drift"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(d["status"], "no_profile", "{d}");
    }
    let text = std::fs::read_to_string(logs.path().join("digits-1.jsonl")).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[3]["id"], "log-3");
    assert_eq!(lines[3]["rows"], 2);
    assert_eq!(lines[3]["classes"].as_array().unwrap().len(), 2);
    assert!(lines[3]["input_xxh3"].is_string());
    assert!(
        lines[3].get("inputs").is_none(),
        "no payloads unless log_payloads"
    );
    let m = s.metrics_text().await;
    assert_eq!(
        metric_in(
            &m,
            "ferrite_prediction_log_errors_total{model=\"broken\",version=\"1\"}"
        ),
        5.0
    );
    assert_eq!(
        metric_in(
            &m,
            "ferrite_prediction_log_errors_total{model=\"digits\",version=\"1\"}"
        ),
        0.0
    );
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn feedback_needs_the_feedback_or_admin_scope_when_auth_is_configured() {
    use ferrite::auth::{sha256_hex, AuthConfig};
    let keys = [
        ("infer", "key-infer-only"),
        ("feedback", "key-feedback-only"),
        ("admin", "key-admin-only"),
    ];
    let mut text = String::new();
    for (scope, key) in keys {
        text += &format!(
            "[[api_keys]]\nname = \"{scope}\"\nsha256 = \"{}\"\nscopes = [\"{scope}\"]\n",
            sha256_hex(key)
        );
    }
    let auth: AuthConfig = toml::from_str(&text).unwrap();
    let s = TestServer::start_with(monitored_digits(""), |c| c.auth = Some(auth)).await;
    let post = |key: Option<&'static str>| {
        let mut r = s
            .client
            .post(format!("{}/v2/models/digits/feedback", s.url))
            .json(&json!({"id": "nobody", "label": 1}));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    assert_eq!(post(None).await.unwrap().status(), 401);
    assert_eq!(post(Some("key-infer-only")).await.unwrap().status(), 403);
    for k in ["key-feedback-only", "key-admin-only"] {
        let r = post(Some(k)).await.unwrap();
        assert_eq!(r.status(), 200, "{k}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["unknown"], 1);
    }
    // The drift table is model information: the infer scope reads it, feedback alone does not.
    let get = |k: &'static str| {
        s.client
            .get(format!("{}/v2/models/digits/drift", s.url))
            .bearer_auth(k)
            .send()
    };
    assert_eq!(get("key-infer-only").await.unwrap().status(), 200);
    assert_eq!(get("key-feedback-only").await.unwrap().status(), 403);
    s.server.shutdown().await;
}
