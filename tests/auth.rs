//! Access control, model control and request-path edges against a real server on port 0: API keys
//! in either header, scopes per route and per model on every door (KServe, OpenAI, TEI) with each
//! door's error shape, open probes, model control none/explicit/poll, per-principal rate limits
//! (429 + Retry-After, counted), internal errors that name only the request id, checked shapes and
//! priorities, and the text doors refusing work while draining. Tokens minted by an independent
//! JWT implementation are tested in tests/python/test_auth.py.

mod common;

use std::time::{Duration, Instant};

use common::{Repo, TestServer};
use ferrite::auth::{sha256_hex, AuthConfig};
use ferrite::config::ModelControl;
use serde_json::{json, Value};

const READER: &str = "key-reader-digits-only";
const OPS: &str = "key-ops-admin-and-infer";
const SLOW: &str = "key-limited-to-three";

fn auth() -> AuthConfig {
    toml::from_str(&format!(
        r#"
[[api_keys]]
name = "reader"
sha256 = "{}"
scopes = ["infer:digits"]
[[api_keys]]
name = "ops"
sha256 = "{}"
scopes = ["admin", "infer"]
[[api_keys]]
name = "slow"
sha256 = "{}"
scopes = ["infer"]
rate_limit = {{ per_second = 0.5, burst = 3 }}
"#,
        sha256_hex(READER),
        sha256_hex(OPS),
        sha256_hex(SLOW)
    ))
    .unwrap()
}

/// digits plus MiniLM (weights linked from models/, fetched by scripts/fetch-models.sh).
fn repo() -> Repo {
    let repo = Repo::new().with_digits(&[]);
    let src = common::repo_root().join("models/minilm");
    let dst = repo.path().join("minilm/1");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "config.json"] {
        std::os::unix::fs::symlink(src.join("1").join(f), dst.join(f)).unwrap();
    }
    // The gate's validation set (models/minilm/config.toml [validation]).
    std::os::unix::fs::symlink(
        src.join("validation.jsonl"),
        dst.parent().unwrap().join("validation.jsonl"),
    )
    .unwrap();
    std::fs::copy(
        src.join("config.toml"),
        repo.path().join("minilm/config.toml"),
    )
    .unwrap();
    repo
}

fn digits_body() -> Value {
    json!({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": vec![1.0; 64]}]})
}

async fn post(s: &TestServer, path: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut r = s.client.post(format!("{}{path}", s.url)).json(body);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    r.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn scopes_per_route_and_model_on_every_door_with_each_error_shape() {
    let s = TestServer::start_with(repo(), |c| c.auth = Some(auth())).await;
    // Probes stay open.
    for p in ["/v2/health/live", "/v2/health/ready"] {
        assert_eq!(s.get(p).await.status(), 200, "{p}");
    }
    // No credentials: 401 with a Bearer challenge, in each door's shape.
    let r = post(&s, "/v2/models/digits/infer", None, &digits_body()).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "credentials are missing"
    );
    let r = post(&s, "/v1/embeddings", None, &json!({"input": "x"})).await;
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "authentication_error", "{e}");
    let r = post(&s, "/embed", None, &json!({"inputs": "x"})).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error_type"],
        "Unauthorized"
    );
    // Metadata, devices and /info need infer too.
    for p in [
        "/v2",
        "/v2/models/digits",
        "/v2/models/digits/config",
        "/v2/devices",
        "/info",
    ] {
        assert_eq!(s.get(p).await.status(), 401, "{p}");
    }
    // A wrong key is "invalid" and says nothing more.
    let r = post(&s, "/v2/models/digits/infer", Some("nope"), &digits_body()).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "credentials are invalid"
    );

    // reader: digits only, through either header.
    assert_eq!(
        post(&s, "/v2/models/digits/infer", Some(READER), &digits_body())
            .await
            .status(),
        200
    );
    let r = s
        .client
        .post(format!("{}/v2/models/digits/infer", s.url))
        .header("x-api-key", READER)
        .json(&digits_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = post(
        &s,
        "/v1/models/digits:predict",
        Some(READER),
        &json!({"instances": [vec![1.0; 64]]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    // The embedding doors learn the model from the body: reader may not use minilm.
    let r = post(&s, "/embed", Some(READER), &json!({"inputs": "x"})).await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "insufficient scope"
    );
    let r = post(
        &s,
        "/v1/embeddings",
        Some(READER),
        &json!({"input": "x", "model": "minilm"}),
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "permission_error"
    );
    let r = post(&s, "/v2/models/minilm/infer", Some(READER), &json!({})).await;
    assert_eq!(r.status(), 403);
    // Admin routes need admin.
    let r = post(
        &s,
        "/v2/repository/models/digits/unload",
        Some(READER),
        &json!({}),
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(s.get("/v2/models/digits/ready").await.status(), 401);

    // ops: admin and every model.
    let r = post(&s, "/embed", Some(OPS), &json!({"inputs": "a sentence"})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        post(&s, "/v2/repository/index", Some(OPS), &json!({}))
            .await
            .status(),
        200
    );
    let r = post(
        &s,
        "/v2/repository/models/digits/unload",
        Some(OPS),
        &json!({}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = post(&s, "/v2/models/digits/infer", Some(OPS), &digits_body()).await;
    assert_eq!(r.status(), 404, "inference on an unloaded model stays 404");
    let r = post(
        &s,
        "/v2/repository/models/digits/load",
        Some(OPS),
        &json!({}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        post(&s, "/v2/models/digits/infer", Some(OPS), &digits_body())
            .await
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_answers_429_with_retry_after_per_principal_and_counts() {
    let s = TestServer::start_with(Repo::new().with_digits(&[]), |c| c.auth = Some(auth())).await;
    let series = r#"ferrite_rate_limited_total{scope="infer"}"#;
    let before = s.metric(series).await;
    let mut limited = 0;
    let mut ok = 0;
    for _ in 0..8 {
        let r = post(&s, "/v2/models/digits/infer", Some(SLOW), &digits_body()).await;
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                limited += 1;
                let after: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=2).contains(&after), "Retry-After {after}");
            }
            other => panic!("status {other}"),
        }
    }
    // Burst 3, then one token per 2 s: 8 requests within well under 2 s leave at most 4 through.
    assert!((3..=4).contains(&ok), "{ok} allowed");
    assert_eq!(ok + limited, 8);
    assert_eq!(s.metric(series).await, before + limited as f64);
    // Another key is unaffected.
    for _ in 0..8 {
        assert_eq!(
            post(&s, "/v2/models/digits/infer", Some(OPS), &digits_body())
                .await
                .status(),
            200
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn model_control_none_refuses_load_and_unload_naming_the_flag() {
    let s = TestServer::start_with(Repo::new().with_digits(&[]), |c| {
        c.model_control = ModelControl::None
    })
    .await;
    for action in ["load", "unload"] {
        let r = post(
            &s,
            &format!("/v2/repository/models/digits/{action}"),
            None,
            &json!({}),
        )
        .await;
        assert_eq!(r.status(), 403, "{action}");
        let e: Value = r.json().await.unwrap();
        assert!(
            e["error"]
                .as_str()
                .unwrap()
                .contains("--model-control explicit"),
            "{e}"
        );
    }
    assert_eq!(
        post(&s, "/v2/repository/index", None, &json!({}))
            .await
            .status(),
        200
    );
    assert_eq!(
        post(&s, "/v2/models/digits/infer", None, &digits_body())
            .await
            .status(),
        200
    );
}

/// Waits (bounded) until `path` answers `status`; polling a state, not sleeping for one.
async fn wait_status(s: &TestServer, path: &str, status: u16, within: Duration) {
    let start = Instant::now();
    loop {
        if s.get(path).await.status() == status {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{path} did not answer {status} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn model_control_poll_follows_the_folder_and_refuses_load() {
    let repo = Repo::new().with_digits(&[]);
    let root = repo.path().to_path_buf();
    let s = TestServer::start_with(repo, |c| {
        c.model_control = ModelControl::Poll;
        c.repository_poll = Duration::from_secs(1);
    })
    .await;
    let r = post(&s, "/v2/repository/models/digits/unload", None, &json!({})).await;
    assert_eq!(r.status(), 403);
    assert!(r.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("poll"));
    assert_eq!(s.get("/v2/models/twin/ready").await.status(), 404);
    // A new folder is picked up ...
    let copy = Repo::new().copy_digits("twin", &[]);
    std::fs::rename(copy.path().join("twin"), root.join("twin")).unwrap();
    wait_status(&s, "/v2/models/twin/ready", 200, Duration::from_secs(20)).await;
    // ... and a removed one unloaded.
    std::fs::remove_dir_all(root.join("twin")).unwrap();
    wait_status(&s, "/v2/models/twin/ready", 404, Duration::from_secs(20)).await;
    assert_eq!(s.get("/v2/models/digits/ready").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn model_failure_is_500_naming_only_the_request_id() {
    let repo = Repo::new().with_debug("echo", 4, "[parameters]\nfail_on = 7.0\n");
    let s = TestServer::start(repo).await;
    let body = json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [7.0, 0.0, 0.0, 0.0]}]});
    let r = post(&s, "/v2/models/echo/infer", None, &body).await;
    assert_eq!(r.status(), 500);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"], format!("internal error, request id {id}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_shapes_and_priorities_are_client_errors() {
    let s = TestServer::start(Repo::new().with_debug("echo", 4, "")).await;
    for shape in [
        json!([1, 4611686018427387904u64]),
        json!([4611686018427387904u64, 4611686018427387904u64]),
    ] {
        let body =
            json!({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": [1.0]}]});
        let r = post(&s, "/v2/models/echo/infer", None, &body).await;
        assert_eq!(r.status(), 400, "{shape}");
    }
    for p in [2u64, 4294967297] {
        let body = json!({"parameters": {"priority": p},
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]});
        let r = post(&s, "/v2/models/echo/infer", None, &body).await;
        assert_eq!(r.status(), 400, "priority {p}");
        assert!(r.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("priority"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn text_doors_refuse_new_work_while_draining() {
    let s = TestServer::start(repo()).await;
    assert_eq!(
        post(&s, "/embed", None, &json!({"inputs": "x"}))
            .await
            .status(),
        200
    );
    s.server
        .state()
        .accepting
        .store(false, std::sync::atomic::Ordering::Release);
    let r = post(&s, "/embed", None, &json!({"inputs": "x"})).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let r = post(&s, "/v1/embeddings", None, &json!({"input": "x"})).await;
    assert_eq!(r.status(), 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_reload_from_bad_weights_is_500_with_reason_and_keeps_serving() {
    let repo = Repo::new().with_digits(&[]);
    let weights = repo.path().join("digits/1/model.safetensors");
    let s = TestServer::start(repo).await;
    std::fs::write(&weights, b"not a safetensors file").unwrap();
    let r = post(&s, "/v2/repository/models/digits/load", None, &json!({})).await;
    assert_eq!(r.status(), 500);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("digits"), "{e}");
    assert_eq!(
        post(&s, "/v2/models/digits/infer", None, &digits_body())
            .await
            .status(),
        200
    );
    std::fs::remove_file(&weights).unwrap();
    let r = post(&s, "/v2/repository/models/digits/load", None, &json!({})).await;
    assert_eq!(r.status(), 500, "missing weights");
    assert_eq!(
        post(&s, "/v2/models/digits/infer", None, &digits_body())
            .await
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_reloaded_when_the_settings_file_changes_and_a_bad_file_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ferrite.toml");
    let stanza = |name: &str, key: &str| {
        format!(
            "[[auth.api_keys]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = [\"infer\"]\n",
            sha256_hex(key)
        )
    };
    std::fs::write(&file, stanza("old", "key-old")).unwrap();
    let cfg = ferrite::config::Settings::reload_auth(&file).unwrap();
    let s = TestServer::start_with(Repo::new().with_digits(&[]), |c| {
        c.auth = cfg;
        c.config_file = Some(file.clone());
    })
    .await;
    assert_eq!(
        post(
            &s,
            "/v2/models/digits/infer",
            Some("key-old"),
            &digits_body()
        )
        .await
        .status(),
        200
    );
    // Rotate: the new key works and the old one stops, without a restart or a signal; also on
    // the keep-alive connection that presented it before (the client reuses its idle connection,
    // and the connection's memo of its last credential holds only for the verifiers it was
    // checked by).
    std::fs::write(&file, stanza("new", "key-new")).unwrap();
    let start = Instant::now();
    while post(
        &s,
        "/v2/models/digits/infer",
        Some("key-new"),
        &digits_body(),
    )
    .await
    .status()
        != 200
    {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the new key was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        post(
            &s,
            "/v2/models/digits/infer",
            Some("key-old"),
            &digits_body()
        )
        .await
        .status(),
        401
    );
    // A broken file is refused (counted) and the current keys stay in force.
    let failed = r#"ferrite_auth_reloads_total{outcome="failed"}"#;
    let before = s.metric(failed).await;
    std::fs::write(
        &file,
        format!("{}\nbroken = [\n", stanza("other", "key-other")),
    )
    .unwrap();
    let start = Instant::now();
    while s.metric(failed).await == before {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the broken file was not seen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        post(
            &s,
            "/v2/models/digits/infer",
            Some("key-new"),
            &digits_body()
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        post(
            &s,
            "/v2/models/digits/infer",
            Some("key-other"),
            &digits_body()
        )
        .await
        .status(),
        401
    );
}

#[derive(clap::Parser)]
struct BenchCli {
    #[command(flatten)]
    bench: ferrite::loadgen::args::BenchArgs,
}

/// The issue's scenario end to end: `ferrite bench` drives a key limited to 50 req/s at 200 req/s
/// (open loop, `--header` carrying the key) while another key sends at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_limited_to_50_per_second_under_200_from_ferrite_bench_gets_50_and_429s() {
    use clap::Parser;
    let cfg: AuthConfig = toml::from_str(&format!(
        "[[api_keys]]\nname = \"fifty\"\nsha256 = \"{}\"\nscopes = [\"infer\"]\nrate_limit = {{ per_second = 50, burst = 5 }}\n\
         [[api_keys]]\nname = \"other\"\nsha256 = \"{}\"\nscopes = [\"infer\"]\nrate_limit = {{ per_second = 50, burst = 5 }}\n",
        sha256_hex("key-fifty"),
        sha256_hex("key-other")
    ))
    .unwrap();
    let s = TestServer::start_with(Repo::new().with_digits(&[]), |c| c.auth = Some(cfg)).await;
    // The other key: 20 req/s for as long as the bench runs, every answer must be a 200.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = {
        let (client, url, stop) = (s.client.clone(), s.url.clone(), stop.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let r = client
                    .post(format!("{url}/v2/models/digits/infer"))
                    .bearer_auth("key-other")
                    .json(&digits_body())
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status().as_u16());
            }
            statuses
        })
    };
    let args = BenchCli::parse_from([
        "bench",
        "-u",
        &s.url,
        "--metrics-url",
        &s.metrics_url,
        "-m",
        "digits",
        "--request-rate-range",
        "200",
        "--header",
        "Authorization:Bearer key-fifty",
        "--warmup-ms",
        "500",
        "--measurement-interval-ms",
        "2000",
        "--max-windows",
        "2",
        "--client-threads",
        "1",
    ])
    .bench;
    let target = ferrite::loadgen::bench::prepare(&args).await.unwrap();
    let steps = ferrite::loadgen::bench::sweep(&target, &args, None)
        .await
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let step = &steps[0];
    let limited = step.errors.get("429").copied().unwrap_or(0);
    assert_eq!(
        step.errors.keys().filter(|k| *k != "429").count(),
        0,
        "only 429s besides 200s: {:?}",
        step.errors
    );
    // ~50 of the 200 per second are served; the rest are refused.
    assert!(
        (40.0..=60.0).contains(&step.throughput),
        "{} req/s of 200s",
        step.throughput
    );
    assert!(
        limited as f64 > step.ok as f64 * 2.0,
        "{limited} 429s, {} 200s",
        step.ok
    );
    let statuses = other.await.unwrap();
    assert!(
        statuses.len() > 20 && statuses.iter().all(|&c| c == 200),
        "{statuses:?}"
    );
}

/// `protect_metrics`: `/metrics` needs the `metrics` scope, while the probes served on the same
/// port stay open (they are what kubelet calls when mutual TLS closes the HTTP port to it).
#[tokio::test(flavor = "multi_thread")]
async fn protected_metrics_need_the_metrics_scope_and_probes_there_stay_open() {
    const PROM: &str = "key-prometheus-scraper";
    let mut cfg = auth();
    cfg.protect_metrics = true;
    cfg.api_keys.push(
        toml::from_str(&format!(
            "name = \"prom\"\nsha256 = \"{}\"\nscopes = [\"metrics\"]",
            sha256_hex(PROM)
        ))
        .unwrap(),
    );
    let s = TestServer::start_with(repo(), |c| c.auth = Some(cfg)).await;
    let scrape = |key: Option<&'static str>| {
        let mut r = s.client.get(&s.metrics_url);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    assert_eq!(scrape(None).await.unwrap().status(), 401);
    assert_eq!(
        scrape(Some(OPS)).await.unwrap().status(),
        403,
        "admin is not metrics"
    );
    let r = scrape(Some(PROM)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("nv_inference_request_success"));
    let base = s.metrics_url.trim_end_matches("/metrics");
    for probe in ["/v2/health/live", "/v2/health/ready"] {
        let r = s.client.get(format!("{base}{probe}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{probe} on the metrics port");
    }
    // The metrics key does not open inference.
    let r = post(&s, "/v2/models/digits/infer", Some(PROM), &digits_body()).await;
    assert_eq!(r.status(), 403);
}
