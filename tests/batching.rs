//! Batching and overload behaviour through real HTTP: batches really form under concurrency, a
//! deadline that passes while queued is answered at once, a full queue answers 503 + Retry-After,
//! a client that leaves is dropped before compute, a panicking model fails only its batch, and
//! requests of different shapes (variable dims) are batched apart, never together.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rand::SeedableRng;
use serde_json::Value;

const L: &str = r#"{model="digits",version="1"}"#;

/// 64 concurrent clients, each sending `per_client` single-row requests back to back.
async fn hammer(s: &TestServer, clients: usize, per_client: usize) {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = s.client.clone();
        let url = format!("{}/v2/models/digits/infer", s.url);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
            for _ in 0..per_client {
                let body = v2_request("pixels", 1, 64, &random_pixels(&mut rng, 1));
                let r = client.post(&url).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_form_batches_larger_than_four() {
    let repo = Repo::new().with_digits(&[
        ("max_queue_delay_us = 200", "max_queue_delay_us = 5000"),
        ("count = 2", "count = 1"),
    ]);
    let s = TestServer::start(repo).await;
    hammer(&s, 64, 10).await;
    let count = s.metric(&format!("nv_inference_count{L}")).await;
    let execs = s.metric(&format!("nv_inference_exec_count{L}")).await;
    assert_eq!(count, 640.0);
    eprintln!(
        "average batch {:.2} ({count} inferences / {execs} executions)",
        count / execs
    );
    assert!(
        count / execs > 4.0,
        "average batch {} ({count} / {execs})",
        count / execs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_batch_size_one_never_batches() {
    let repo = Repo::new().with_digits(&[
        ("max_batch_size = 64", "max_batch_size = 1"),
        (
            "preferred_batch_sizes = [16, 32]",
            "preferred_batch_sizes = []",
        ),
    ]);
    let s = TestServer::start(repo).await;
    hammer(&s, 64, 5).await;
    let count = s.metric(&format!("nv_inference_count{L}")).await;
    let execs = s.metric(&format!("nv_inference_exec_count{L}")).await;
    assert_eq!(count, 320.0);
    assert_eq!(count, execs);
}

/// A slow echo model: one instance, no batching, `sleep_ms` per batch.
async fn slow_server(sleep_ms: u64, queue: usize) -> TestServer {
    let extra = format!(
        "[dynamic_batching]\nmax_queue_size = {queue}\n[parameters]\nsleep_us = {}\npanic_on = 666.0\nfail_on = 13.0\n",
        sleep_ms * 1000
    );
    TestServer::start(Repo::new().with_debug("slow", 1, &extra)).await
}

fn row(v: f32) -> Value {
    v2_request("x", 1, 4, &[v, 1.0, 2.0, 3.0])
}

/// Waits until the slow model's pending gauge is at least `n`: with one instance computing, that
/// many requests are proven queued behind it (the gauge counts admitted, not yet dispatched jobs).
async fn wait_pending_at_least(s: &TestServer, n: f64) {
    let series = r#"nv_inference_pending_request_count{model="slow",version="1"}"#;
    for _ in 0..2000 {
        if s.metric(series).await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("pending never reached {n}");
}

fn spawn_infer(s: &TestServer, body: Value) -> tokio::task::JoinHandle<(u16, Value)> {
    let (client, url) = (s.client.clone(), format!("{}/v2/models/slow/infer", s.url));
    tokio::spawn(async move {
        let r = client.post(url).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn deadline_passing_in_queue_is_answered_before_the_running_batch_ends() {
    let s = slow_server(1500, 16).await;
    // Two slow requests on one instance: one computes while the other is queued, so the pending
    // gauge reaching 1 proves that a 1.5 s batch is ahead of the request sent next.
    let busy: Vec<_> = (0..2).map(|i| spawn_infer(&s, row(i as f32))).collect();
    wait_pending_at_least(&s, 1.0).await;
    let mut body = row(1.0);
    body["parameters"] = serde_json::json!({"timeout": 100_000});
    let t0 = Instant::now();
    let r = s.post_json("/v2/models/slow/infer", &body).await;
    let waited = t0.elapsed();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let msg: Value = r.json().await.unwrap();
    assert!(
        msg["error"].as_str().unwrap().contains("100000 us"),
        "{msg}"
    );
    assert!(
        waited < Duration::from_millis(1000),
        "answered after {waited:?}, not at its deadline"
    );
    for b in busy {
        assert_eq!(b.await.unwrap().0, 200);
    }
    assert_eq!(
        s.metric(r#"nv_inference_request_failure{model="slow",reason="TIMEOUT",version="1"}"#)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn full_queue_answers_503_with_retry_after() {
    let s = slow_server(400, 2).await;
    // One instance, a queue of 2: with 3 sent, pending reaches 2 only once one of them is running
    // and the other two fill the queue (an idle worker takes a request as soon as it is queued).
    let sent: Vec<_> = (0..3).map(|i| spawn_infer(&s, row(i as f32))).collect();
    wait_pending_at_least(&s, 2.0).await;
    let r = s.post_json("/v2/models/slow/infer", &row(9.0)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let msg: Value = r.json().await.unwrap();
    assert!(msg["error"].as_str().unwrap().contains("full"), "{msg}");
    for q in sent {
        assert_eq!(
            q.await.unwrap().0,
            200,
            "running and queued requests are not lost"
        );
    }
    assert_eq!(
        s.metric(r#"nv_inference_request_failure{model="slow",reason="REJECTED",version="1"}"#)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_that_disconnects_is_dropped_before_compute() {
    let s = slow_server(600, 16).await;
    // Two slow requests on one instance: pending reaching 1 proves a 600 ms batch is ahead.
    let running: Vec<_> = (0..2).map(|i| spawn_infer(&s, row(i as f32))).collect();
    wait_pending_at_least(&s, 1.0).await;
    // This client gives up while its request is still queued behind them.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    let r = impatient
        .post(format!("{}/v2/models/slow/infer", s.url))
        .json(&row(1.0))
        .send()
        .await;
    assert!(r.is_err(), "the client timed out");
    for r in running {
        assert_eq!(r.await.unwrap().0, 200);
    }
    let r = s.post_json("/v2/models/slow/infer", &row(2.0)).await;
    assert_eq!(r.status(), 200);
    let m = |k: &'static str| format!("nv_inference_{k}{{model=\"slow\",version=\"1\"}}");
    assert_eq!(
        s.metric(&m("exec_count")).await,
        3.0,
        "the abandoned request was not computed (two ahead of it, one after)"
    );
    assert_eq!(
        s.metric(r#"nv_inference_request_failure{model="slow",reason="CANCELED",version="1"}"#)
            .await,
        1.0
    );
}

/// Waits until the slow model's pending gauge is back to 0: every admitted job was dispatched.
async fn wait_pending_zero(s: &TestServer) {
    let series = r#"nv_inference_pending_request_count{model="slow",version="1"}"#;
    for _ in 0..2000 {
        if s.metric(series).await == 0.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("pending never went back to 0");
}

/// Every request ends counted once, also when its client leaves while its batch is computing
/// (after the dispatcher could drop it, before the answer): success + failures = requests.
#[tokio::test(flavor = "multi_thread")]
async fn client_that_leaves_during_compute_is_counted_exactly_once() {
    // Batches of exactly two: a lone request waits (10 s) for its partner, two go at once (and
    // the warm-up, one request of the preferred size, at once).
    let extra = "[dynamic_batching]\nmax_queue_delay_us = 10000000\npreferred_batch_sizes = [2]\n\
                 [parameters]\nsleep_us = 600000\n";
    let s = TestServer::start(Repo::new().with_debug("slow", 2, extra)).await;
    let leaves = spawn_infer(&s, row(1.0));
    wait_pending_at_least(&s, 1.0).await;
    let stays = spawn_infer(&s, row(2.0));
    // Pending back to 0: both were dispatched together, and their 600 ms batch is running.
    wait_pending_zero(&s).await;
    leaves.abort();
    assert_eq!(stays.await.unwrap().0, 200);
    let series = |k: &str| format!("nv_inference_request_{k}{{model=\"slow\",version=\"1\"}}");
    let canceled = r#"nv_inference_request_failure{model="slow",reason="CANCELED",version="1"}"#;
    // The worker counts the request that left once the batch ends; give it the time to end.
    let mut counted = 0.0;
    for _ in 0..400 {
        let text = s.metrics_text().await;
        counted = metric_in(&text, &series("success")) + metric_in(&text, canceled);
        if counted >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let text = s.metrics_text().await;
    eprintln!(
        "success {}, canceled {}",
        metric_in(&text, &series("success")),
        metric_in(&text, canceled)
    );
    assert_eq!(counted, 2.0, "each of the two requests counted once");
}

#[tokio::test(flavor = "multi_thread")]
async fn panicking_model_fails_only_its_batch_and_keeps_serving() {
    let s = slow_server(0, 16).await;
    let r = s.post_json("/v2/models/slow/infer", &row(666.0)).await;
    assert_eq!(r.status(), 500);
    // The model's own error text stays in the server log; the client gets the request id.
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let msg: Value = r.json().await.unwrap();
    assert_eq!(
        msg["error"],
        format!("internal error, request id {id}"),
        "{msg}"
    );
    let r = s.post_json("/v2/models/slow/infer", &row(13.0)).await;
    assert_eq!(r.status(), 500, "a model error is a 500 too");
    for i in 0..3 {
        let r = s.post_json("/v2/models/slow/infer", &row(i as f32)).await;
        assert_eq!(r.status(), 200, "the worker survived");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["outputs"][0]["data"][0], i as f64);
    }
    assert_eq!(s.get("/v2/health/ready").await.status(), 200);
    assert_eq!(
        s.metric(r#"nv_inference_request_failure{model="slow",reason="BACKEND",version="1"}"#)
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn same_row_gives_same_answer_alone_and_in_a_batch() {
    let s = TestServer::start(Repo::new().with_digits(&[])).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(77);
    let batch = random_pixels(&mut rng, 48);
    let all: Value = s
        .post_json(
            "/v2/models/digits/infer",
            &v2_request("pixels", 48, 64, &batch),
        )
        .await
        .json()
        .await
        .unwrap();
    let all: Vec<f32> = serde_json::from_value(all["outputs"][0]["data"].clone()).unwrap();
    for i in [0, 17, 47] {
        let one: Value = s
            .post_json(
                "/v2/models/digits/infer",
                &v2_request("pixels", 1, 64, &batch[i * 64..(i + 1) * 64]),
            )
            .await
            .json()
            .await
            .unwrap();
        let one: Vec<f32> = serde_json::from_value(one["outputs"][0]["data"].clone()).unwrap();
        for (a, b) in one.iter().zip(&all[i * 10..(i + 1) * 10]) {
            assert!((a - b).abs() <= 1e-6, "row {i}: {a} vs {b}");
        }
    }
}

/// A `debug` model with a variable inner dimension (`dims = [-1, -1]`): it concatenates a batch's
/// rows, as a real batched model does, so a batch mixing widths would fail as a whole.
fn ragged_debug_repo() -> Repo {
    Repo::new()
        .with_file(
            "echo/config.toml",
            r#"architecture = "debug"
max_batch_size = 32
[[input]]
name = "x"
datatype = "FP32"
dims = [-1, -1]
[[output]]
name = "y"
datatype = "FP32"
dims = [-1, -1]
[dynamic_batching]
max_queue_delay_us = 50000
"#,
        )
        .with_file("echo/1/.keep", "")
}

/// Requests of four widths sent at once, on one instance with a 50 ms delay so that they queue
/// together: each is answered with its own data, and they did run batched (fewer executions than
/// requests), so without grouping by shape some batch would have mixed widths and failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_of_different_shapes_are_batched_apart_and_all_succeed() {
    let s = TestServer::start(ragged_debug_repo()).await;
    let widths = [1usize, 2, 3, 5];
    let mut tasks = Vec::new();
    for i in 0..24 {
        let w = widths[i % widths.len()];
        let data: Vec<f32> = (0..w).map(|k| (i * 10 + k) as f32).collect();
        let (client, url) = (s.client.clone(), format!("{}/v2/models/echo/infer", s.url));
        tasks.push(tokio::spawn(async move {
            let body = v2_request("x", 1, w, &data);
            let r = client.post(url).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (status, v, w, data)
        }));
    }
    for t in tasks {
        let (status, v, w, data) = t.await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["outputs"][0]["shape"], serde_json::json!([1, w]));
        let got: Vec<f32> = serde_json::from_value(v["outputs"][0]["data"].clone()).unwrap();
        assert_eq!(got, data, "each request gets its own rows back");
    }
    let m = |k: &str| format!("nv_inference_{k}{{model=\"echo\",version=\"1\"}}");
    let (count, execs) = (
        s.metric(&m("count")).await,
        s.metric(&m("exec_count")).await,
    );
    assert_eq!(count, 24.0);
    assert!(
        execs < count && execs >= widths.len() as f64,
        "{count} requests in {execs} executions: batched, one width per batch"
    );
}
