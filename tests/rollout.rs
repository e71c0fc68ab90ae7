//! Safe rollout against a real server: a version copied in under load is polled, validated,
//! promoted and rolled back without a failed request; broken, mis-checksummed and degraded
//! versions never get routed traffic; the split holds its shares and sticky keys stay put; shadow
//! copies leave responses untouched and their agreement matches a reference computed here; the
//! guard takes a failing canary out; live routing survives a restart with `--state-dir`.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{random_pixels, repo_root, v2_request, Repo, TestServer};
use rand::SeedableRng;
use serde_json::{json, Value};

const VERSION: &str = "x-ferrite-model-version";

/// Polls `f` every 20 ms until it is true; panics with `what` after `limit`.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Copies the digits weights to `dst` with `edit(tensor name, values)` applied.
fn digits_weights(dst: &std::path::Path, edit: impl Fn(&str, &mut Vec<f32>)) {
    let src = std::fs::read(repo_root().join("models/digits/1/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&src).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let mut v: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            edit(&name, &mut v);
            (name, view.shape().to_vec(), v)
        })
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    safetensors::serialize_to_file(views, None, dst).unwrap();
}

fn sha256_of(p: &std::path::Path) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(std::fs::read(p).unwrap());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Digits with a validation gate (the committed held-out split, accuracy >= 0.9) and the given
/// version policy and routing.
fn gated_digits(policy: &str, routing: &str) -> Repo {
    Repo::new().with_digits(&[
        (
            "version_policy = { latest = 1 }",
            &format!("version_policy = {policy}"),
        ),
        (
            "min_accuracy = 0.95\n",
            &format!("min_accuracy = 0.9\n\n{routing}\n"),
        ),
    ])
}

/// A debug (echo) model with two versions and the given extra config (tables only).
fn echo_two_versions(extra: &str, v2_toml: &str) -> Repo {
    let cfg = format!(
        r#"architecture = "debug"
max_batch_size = 8
version_policy = {{ latest = 2 }}
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
    Repo::new()
        .with_file("echo/config.toml", &cfg)
        .with_file("echo/1/version.toml", "semantic_version = \"1.0.0\"\n")
        .with_file("echo/2/version.toml", v2_toml)
}

async fn status(s: &TestServer, model: &str) -> Value {
    let r = s.get(&format!("/v2/models/{model}/rollout")).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn put_json(s: &TestServer, path: &str, body: &Value) -> reqwest::Response {
    s.client
        .put(format!("{}{path}", s.url))
        .json(body)
        .send()
        .await
        .unwrap()
}

fn version_of(r: &reqwest::Response) -> String {
    r.headers()
        .get(VERSION)
        .expect("every inference response names its version")
        .to_str()
        .unwrap()
        .to_string()
}

#[derive(Default)]
struct Tally {
    ok: u64,
    bad: Vec<u16>,
    by_version: BTreeMap<String, u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swap_under_load_validate_promote_rollback_reload_fails_nothing() {
    let repo = gated_digits("{ latest = 2 }", "[routing]\nweights = { \"1\" = 100 }");
    let root = repo.path().to_path_buf();
    let s = Arc::new(
        TestServer::start_with(repo, |c| {
            c.model_control = ferrite::config::ModelControl::Poll;
            c.repository_poll = Duration::from_millis(200);
        })
        .await,
    );
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..32u64 {
        let (s, tally, stop) = (s.clone(), tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(t);
            while !stop.load(Ordering::Relaxed) {
                let body = v2_request("pixels", 1, 64, &random_pixels(&mut rng, 1));
                let r = s.post_json("/v2/models/digits/infer", &body).await;
                let mut t = tally.lock().unwrap();
                if r.status() == 200 {
                    t.ok += 1;
                    *t.by_version.entry(version_of(&r)).or_default() += 1;
                } else {
                    t.bad.push(r.status().as_u16());
                }
            }
        }));
    }
    let count = |v: &str| {
        tally
            .lock()
            .unwrap()
            .by_version
            .get(v)
            .copied()
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(30), "traffic on version 1", || async {
        count("1") > 200
    })
    .await;
    // Copy version 2 in (same weights, a version.toml with their checksum), atomically.
    let tmp = root.join("digits/.incoming");
    digits_weights(&tmp.join("model.safetensors"), |_, _| {});
    let sha = sha256_of(&tmp.join("model.safetensors"));
    std::fs::write(
        tmp.join("version.toml"),
        format!("semantic_version = \"1.1.0\"\nweights_sha256 = \"{sha}\"\n"),
    )
    .unwrap();
    std::fs::rename(&tmp, root.join("digits/2")).unwrap();
    wait_until(
        Duration::from_secs(60),
        "version 2 loaded and validated",
        || async {
            let st = status(&s, "digits").await;
            st["versions"].as_array().unwrap().iter().any(|v| {
                v["version"] == "2" && v["state"] == "READY" && v["validation"]["passed"] == true
            })
        },
    )
    .await;
    assert_eq!(
        count("2"),
        0,
        "a loaded version gets nothing before it is promoted"
    );
    let r = s
        .post_json(
            "/v2/repository/models/digits/promote",
            &json!({"version": "2"}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let two = count("2");
    wait_until(Duration::from_secs(30), "traffic on version 2", || async {
        count("2") > two + 200
    })
    .await;
    let r = s
        .post_json("/v2/repository/models/digits/rollback", &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let one = count("1");
    wait_until(
        Duration::from_secs(30),
        "traffic back on version 1",
        || async { count("1") > one + 200 },
    )
    .await;
    // A batching change in config.toml reloads both versions (new queues and workers, gated
    // again) while the old ones serve and then drain: still nothing fails.
    let cfg = root.join("digits/config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("max_queue_delay_us = 200"));
    std::fs::write(
        &cfg,
        text.replace("max_queue_delay_us = 200", "max_queue_delay_us = 300"),
    )
    .unwrap();
    wait_until(
        Duration::from_secs(60),
        "the changed batching config serving",
        || async {
            let c: Value = s
                .get("/v2/models/digits/config")
                .await
                .json()
                .await
                .unwrap();
            c["dynamic_batching"]["max_queue_delay_microseconds"] == 300
        },
    )
    .await;
    let after = tally.lock().unwrap().ok;
    wait_until(
        Duration::from_secs(30),
        "traffic after the reload",
        || async { tally.lock().unwrap().ok > after + 200 },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let t = std::mem::take(&mut *tally.lock().unwrap());
    assert!(
        t.bad.is_empty(),
        "non-2xx answers: {:?}",
        &t.bad[..t.bad.len().min(20)]
    );
    assert!(
        t.by_version.keys().all(|v| v == "1" || v == "2"),
        "{:?}",
        t.by_version
    );
    let m = s.metrics_text().await;
    let ok2 = common::metric_in(
        &m,
        r#"nv_inference_request_success{model="digits",version="2"}"#,
    );
    assert!(ok2 >= 200.0, "version 2 served {ok2} in its metrics");
    assert_eq!(
        common::metric_in(
            &m,
            r#"ferrite_routing_weight_percent{model="digits",version="1"}"#
        ),
        100.0
    );
    let st = status(&s, "digits").await;
    assert_eq!(st["live_version"], "1");
    assert_eq!(st["rollout"]["history"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_mischecksummed_or_degraded_versions_never_get_routed_traffic() {
    let repo = gated_digits("{ latest = 4 }", "");
    let root = repo.path().join("digits");
    // 2: corrupt weights; 3: a checksum that does not match; 4: the last layer negated (argmax
    // becomes argmin: accuracy far under 0.9).
    std::fs::create_dir_all(root.join("2")).unwrap();
    std::fs::write(
        root.join("2/model.safetensors"),
        b"\x10\x00\x00\x00not a header",
    )
    .unwrap();
    digits_weights(&root.join("3/model.safetensors"), |_, _| {});
    std::fs::write(
        root.join("3/version.toml"),
        format!("weights_sha256 = \"{}\"\n", "0".repeat(64)),
    )
    .unwrap();
    digits_weights(&root.join("4/model.safetensors"), |n, v| {
        if n.starts_with("layers.1.") {
            v.iter_mut().for_each(|x| *x = -*x);
        }
    });
    let cli_root = repo.path().to_path_buf();
    let s = TestServer::start(repo).await;
    let index: Vec<Value> = s
        .post_json("/v2/repository/index", &json!({}))
        .await
        .json()
        .await
        .unwrap();
    let row = |v: &str| {
        index
            .iter()
            .find(|e| e["name"] == "digits" && e["version"] == v)
            .unwrap_or_else(|| panic!("no index row for version {v}: {index:?}"))
            .clone()
    };
    assert_eq!(row("1")["state"], "READY");
    assert_eq!(row("2")["state"], "UNAVAILABLE");
    assert_eq!(row("3")["state"], "UNAVAILABLE");
    assert!(row("3")["reason"]
        .as_str()
        .unwrap()
        .contains("weights_sha256"));
    assert_eq!(row("4")["state"], "FAILED_VALIDATION");
    let acc = row("4")["validation"]["accuracy"].as_f64().unwrap();
    assert!(acc < 0.9, "degraded accuracy {acc}");
    let v4 = s.get("/v2/models/digits/versions/4").await;
    assert_eq!(v4.status(), 200);
    let v4: Value = v4.json().await.unwrap();
    assert_eq!(v4["state"], "FAILED_VALIDATION");
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    for _ in 0..100 {
        let body = v2_request("pixels", 1, 64, &random_pixels(&mut rng, 1));
        let r = s.post_json("/v2/models/digits/infer", &body).await;
        assert_eq!(r.status(), 200);
        assert_eq!(version_of(&r), "1");
    }
    let body = v2_request("pixels", 1, 64, &random_pixels(&mut rng, 1));
    let r = s
        .post_json("/v2/models/digits/versions/4/infer", &body)
        .await;
    assert_eq!(
        r.status(),
        503,
        "a version that failed its gate serves nothing"
    );
    let r = s
        .post_json(
            "/v2/repository/models/digits/promote",
            &json!({"version": "4"}),
        )
        .await;
    assert_eq!(r.status(), 409);
    let r = put_json(
        &s,
        "/v2/repository/models/digits/routing",
        &json!({"weights": {"1": 90, "4": 10}}),
    )
    .await;
    assert_eq!(r.status(), 409);
    let r = put_json(
        &s,
        "/v2/repository/models/digits/routing",
        &json!({"weights": {"1": 90, "3": 10}}),
    )
    .await;
    assert_eq!(r.status(), 409, "version 3 is not loaded");
    // The offline gate says the same, with exit codes.
    let bin = env!("CARGO_BIN_EXE_ferrite");
    let run = |v: &str| {
        std::process::Command::new(bin)
            .args([
                "validate",
                "digits",
                "--version",
                v,
                "--gpus",
                "none",
                "--json",
                "-",
            ])
            .arg("--model-repository")
            .arg(&cli_root)
            .output()
            .unwrap()
    };
    let good = run("1");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let bad = run("4");
    assert_eq!(bad.status.code(), Some(1));
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(out.contains("accuracy"), "{out}");
    // Forced, it serves.
    let r = s
        .post_json(
            "/v2/repository/models/digits/promote",
            &json!({"version": 4, "force": true}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = s.post_json("/v2/models/digits/infer", &body).await;
    assert_eq!(version_of(&r), "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_90_10_holds_and_sticky_keys_move_only_the_needed_share() {
    let repo = echo_two_versions(
        "[routing]\nweights = { \"1\" = 90, \"2\" = 10 }",
        "semantic_version = \"2.0.0\"\n",
    );
    let s = Arc::new(TestServer::start(repo).await);
    let body = v2_request("x", 1, 4, &[1.0, 2.0, 3.0, 4.0]);
    let twos = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let n = 20_000u64;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (s, body, twos) = (s.clone(), body.clone(), twos.clone());
        tasks.push(tokio::spawn(async move {
            for _ in (t..n).step_by(16) {
                let r = s.post_json("/v2/models/echo/infer", &body).await;
                assert_eq!(r.status(), 200);
                if version_of(&r) == "2" {
                    twos.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let share = 100.0 * twos.load(Ordering::Relaxed) as f64 / n as f64;
    assert!(
        (share - 10.0).abs() <= 1.5,
        "version 2 got {share}% of 20,000"
    );
    let keyed = |key: String| {
        let s = s.clone();
        let body = body.clone();
        async move {
            let r = s
                .client
                .post(format!("{}/v2/models/echo/infer", s.url))
                .header("x-ferrite-routing-key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            version_of(&r)
        }
    };
    let keys: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let mut before = Vec::new();
    for k in &keys {
        let v = keyed(k.clone()).await;
        for _ in 0..2 {
            assert_eq!(keyed(k.clone()).await, v, "key {k} changed version");
        }
        before.push(v);
    }
    let r = put_json(
        &s,
        "/v2/repository/models/echo/routing",
        &json!({"weights": {"1": 80, "2": 20}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let mut moved = 0;
    for (k, b) in keys.iter().zip(&before) {
        let a = keyed(k.clone()).await;
        if &a != b {
            assert_eq!((b.as_str(), a.as_str()), ("1", "2"), "only 1 -> 2 may move");
            moved += 1;
        }
    }
    let share = 100.0 * moved as f64 / keys.len() as f64;
    assert!(
        (share - 10.0).abs() <= 4.0,
        "{share}% of keys moved for a 10-point change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_leaves_responses_alone_and_agreement_matches_a_reference() {
    // No gate here: the candidate is deliberately worse, and shadowing it is the point.
    let repo = Repo::new().with_digits(&[
        (
            "version_policy = { latest = 1 }",
            "version_policy = { latest = 2 }",
        ),
        (
            "[validation]\nset = \"test-split.safetensors\"\nmin_accuracy = 0.95\n",
            "[routing]\nweights = { \"1\" = 100 }\n",
        ),
    ]);
    // Version 2 swaps classes 0 and 1 in the last layer: it disagrees on those rows only.
    digits_weights(&repo.path().join("digits/2/model.safetensors"), |n, v| {
        let w = if n == "layers.1.weight" { 64 } else { 1 };
        if n.starts_with("layers.1.") {
            for i in 0..w {
                v.swap(i, w + i);
            }
        }
    });
    let s = TestServer::start(repo).await;
    // Real digits (the held-out split), two per request: every class appears.
    let split = std::fs::read(repo_root().join("models/digits/test-split.safetensors")).unwrap();
    let split = safetensors::SafeTensors::deserialize(&split).unwrap();
    let pixels: Vec<f32> = split
        .tensor("pixels")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let bodies: Vec<Value> = pixels
        .chunks(128)
        .take(150)
        .map(|two| v2_request("pixels", 2, 64, two))
        .collect();
    let run_all = || async {
        let mut out = Vec::new();
        for b in &bodies {
            let r = s.post_json("/v2/models/digits/infer", b).await;
            assert_eq!(r.status(), 200);
            assert_eq!(version_of(&r), "1");
            out.push(r.bytes().await.unwrap());
        }
        out
    };
    let off = run_all().await;
    let r = put_json(
        &s,
        "/v2/repository/models/digits/routing",
        &json!({"shadow": {"version": "2", "percent": 100}}),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let on = run_all().await;
    assert!(off == on, "responses changed with shadow on");
    wait_until(Duration::from_secs(30), "150 shadow copies", || async {
        let st = status(&s, "digits").await;
        let sh = &st["shadow"];
        sh["compared"].as_u64().unwrap()
            + sh["dropped"].as_u64().unwrap()
            + sh["failed"].as_u64().unwrap()
            == 150
    })
    .await;
    let st = status(&s, "digits").await;
    assert_eq!(st["shadow"]["compared"], 150, "{}", st["shadow"]);
    // The reference: both versions' direct outputs, argmax per row.
    let argmaxes = |v: Value| -> Vec<usize> {
        let d: Vec<f64> = serde_json::from_value(v["outputs"][0]["data"].clone()).unwrap();
        d.chunks(10)
            .map(|r| {
                r.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .unwrap()
                    .0
            })
            .collect()
    };
    let mut agree = 0usize;
    for b in &bodies {
        let one: Value = s
            .post_json("/v2/models/digits/versions/1/infer", b)
            .await
            .json()
            .await
            .unwrap();
        let two: Value = s
            .post_json("/v2/models/digits/versions/2/infer", b)
            .await
            .json()
            .await
            .unwrap();
        agree += argmaxes(one)
            .iter()
            .zip(argmaxes(two))
            .filter(|(a, b)| **a == *b)
            .count();
    }
    assert!(
        (1..300).contains(&agree),
        "the candidate must agree on some rows and not on others for this test to mean anything ({agree})"
    );
    let m = s.metrics_text().await;
    let l = r#"{candidate="2",live="1",model="digits"}"#;
    assert_eq!(
        common::metric_in(&m, &format!("ferrite_shadow_agreement_count{l}")),
        300.0
    );
    assert_eq!(
        common::metric_in(&m, &format!("ferrite_shadow_agreement_sum{l}")),
        agree as f64
    );
    // Shadow copies are not the candidate's served requests.
    assert_eq!(
        common::metric_value(
            &m,
            r#"nv_inference_request_success{model="digits",version="2"}"#
        )
        .unwrap_or(-1.0),
        150.0,
        "only the 150 direct calls above count as version 2's requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_takes_a_canary_failing_30_percent_out_of_the_split() {
    let repo = echo_two_versions(
        "[routing]\nweights = { \"1\" = 50, \"2\" = 50 }\n[routing.guard]\nwindow_secs = 5\nmin_requests = 20\nmax_error_rate_increase = 0.1\n",
        "semantic_version = \"2.0.0\"\n[parameters]\nfail_fraction = 0.3\n",
    );
    let s = Arc::new(TestServer::start(repo).await);
    let body = v2_request("x", 1, 4, &[1.0, 2.0, 3.0, 4.0]);
    let started = Instant::now();
    loop {
        let st = status(&s, "echo").await;
        if st["rollout"]["split"]["weights"]["2"] == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no rollback: {st}"
        );
        let reqs = (0..4).map(|_| s.post_json("/v2/models/echo/infer", &body));
        futures::future::join_all(reqs).await;
    }
    let st = status(&s, "echo").await;
    assert_eq!(st["rollout"]["source"]["kind"], "auto_rollback");
    let ev = &st["rollout"]["events"][0];
    assert_eq!(ev["version"], 2);
    assert!(
        ev["reason"].as_str().unwrap().contains("error rate"),
        "{ev}"
    );
    assert_eq!(
        s.metric(r#"ferrite_rollbacks_total{model="echo",version="2"}"#)
            .await,
        1.0
    );
    for _ in 0..50 {
        let r = s.post_json("/v2/models/echo/infer", &body).await;
        assert_eq!(r.status(), 200);
        assert_eq!(version_of(&r), "1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_routing_survives_a_restart_with_state_dir() {
    let state = tempfile::tempdir().unwrap();
    let make = || echo_two_versions("", "semantic_version = \"2.0.0\"\n");
    let dir = state.path().to_path_buf();
    let s = TestServer::start_with(make(), |c| c.state_dir = Some(dir.clone())).await;
    let r = put_json(
        &s,
        "/v2/repository/models/echo/routing",
        &json!({"weights": {"1": 30, "2": 70}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    s.server.shutdown().await;
    let s = TestServer::start_with(make(), |c| c.state_dir = Some(dir.clone())).await;
    let st = status(&s, "echo").await;
    assert_eq!(st["effective"]["1"], 30.0);
    assert_eq!(st["effective"]["2"], 70.0);
    assert_eq!(st["rollout"]["source"]["kind"], "live");
    // Routing changes are refused without model control.
    let s2 = TestServer::start_with(make(), |c| {
        c.model_control = ferrite::config::ModelControl::None
    })
    .await;
    let r = put_json(
        &s2,
        "/v2/repository/models/echo/routing",
        &json!({"weights": {"1": 30, "2": 70}}),
    )
    .await;
    assert_eq!(r.status(), 403);
    // The version that served is named on the KServe v1 door and in gRPC metadata too.
    let r = s
        .post_json(
            "/v1/models/echo:predict",
            &json!({"instances": [[1.0, 2.0, 3.0, 4.0]]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(["1", "2"].contains(&version_of(&r).as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_against_the_live_version_with_p99_and_mean_difference() {
    // Version 1 has nothing live to compare with (it passes on its other figures); version 2 (the
    // same weights) matches it; version 3 (classes 0 and 1 swapped) does not.
    let repo = Repo::new().with_digits(&[
        (
            "version_policy = { latest = 1 }",
            "version_policy = { latest = 3 }",
        ),
        (
            "min_accuracy = 0.95\n",
            "min_accuracy = 0.5\ncompare_to = \"live\"\nmin_cosine = 0.999\n\
             max_mean_abs_diff = 0.001\nmax_p99_ms = 10000\np99_requests = 20\n",
        ),
    ]);
    let root = repo.path().join("digits");
    digits_weights(&root.join("2/model.safetensors"), |_, _| {});
    digits_weights(&root.join("3/model.safetensors"), |n, v| {
        let w = if n == "layers.1.weight" { 64 } else { 1 };
        if n.starts_with("layers.1.") {
            for i in 0..w {
                v.swap(i, w + i);
            }
        }
    });
    let s = TestServer::start(repo).await;
    let st = status(&s, "digits").await;
    let gate = |v: &str| {
        st["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["version"] == v)
            .unwrap_or_else(|| panic!("no version {v}: {st}"))
            .clone()
    };
    let (g1, g2, g3) = (gate("1"), gate("2"), gate("3"));
    assert_eq!(g1["state"], "READY", "{g1}");
    assert_eq!(
        g1["validation"]["compared_to"],
        "live (none serving: skipped)"
    );
    assert_eq!(g2["state"], "READY", "{g2}");
    assert_eq!(g2["validation"]["compared_to"], "live version 1");
    assert!(g2["validation"]["min_cosine"].as_f64().unwrap() > 0.999999);
    assert!(g2["validation"]["mean_abs_diff"].as_f64().unwrap() < 1e-6);
    assert!(g2["validation"]["p99_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(g3["state"], "FAILED_VALIDATION", "{g3}");
    let failures = g3["validation"]["failures"].to_string();
    assert!(
        failures.contains("min cosine") && failures.contains("mean abs diff"),
        "{failures}"
    );
    // Unnamed requests go to the newest version that passed.
    let r = s
        .post_json(
            "/v2/models/digits/infer",
            &v2_request("pixels", 1, 64, &[1.0; 64]),
        )
        .await;
    assert_eq!(version_of(&r), "2");
}
