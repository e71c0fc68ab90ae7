//! KServe v2 / v1 HTTP API against a real server on 127.0.0.1:0: health, metadata, inference
//! (JSON and binary extension), every client-error case, repository load/unload, headers, metrics.

mod common;

use common::*;
use rand::SeedableRng;
use serde_json::{json, Value};

async fn digits_server() -> TestServer {
    TestServer::start(Repo::new().with_digits(&[])).await
}

fn pixels(seed: u64, rows: usize) -> Vec<f32> {
    random_pixels(&mut rand::rngs::StdRng::seed_from_u64(seed), rows)
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_server_metadata_answer() {
    let s = digits_server().await;
    assert_eq!(s.get("/v2/health/live").await.status(), 200);
    assert_eq!(s.get("/v2/health/ready").await.status(), 200);
    let meta: Value = s.get("/v2").await.json().await.unwrap();
    assert_eq!(meta["name"], "ferrite");
    assert!(meta["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));
}

#[tokio::test(flavor = "multi_thread")]
async fn model_metadata_states_the_contract() {
    let s = digits_server().await;
    let m: Value = s.get("/v2/models/digits").await.json().await.unwrap();
    assert_eq!(m["name"], "digits");
    assert_eq!(m["versions"], json!(["1"]));
    assert_eq!(
        m["inputs"],
        json!([{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}])
    );
    assert_eq!(
        m["outputs"],
        json!([{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}])
    );
    assert!(
        m["parameters"]["metadata"]["test_accuracy"]
            .as_f64()
            .unwrap()
            >= 0.95
    );
    assert_eq!(s.get("/v2/models/digits/versions/1").await.status(), 200);
    assert_eq!(s.get("/v2/models/digits/ready").await.status(), 200);
    assert_eq!(
        s.get("/v2/models/digits/versions/1/ready").await.status(),
        200
    );
    assert_eq!(
        s.get("/v2/models/digits/versions/7/ready").await.status(),
        404
    );
    assert_eq!(s.get("/v2/models/nope/ready").await.status(), 404);
    let c: Value = s
        .get("/v2/models/digits/config")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(c["max_batch_size"], 64);
}

#[tokio::test(flavor = "multi_thread")]
async fn infer_json_returns_softmax_rows_and_headers() {
    let s = digits_server().await;
    let x = pixels(1, 3);
    let r = s
        .client
        .post(format!("{}/v2/models/digits/infer", s.url))
        .header("x-request-id", "req-123")
        .json(&json!({"id": "abc", "inputs": [{"name": "pixels", "shape": [3, 64], "datatype": "FP32", "data": x}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "req-123");
    for h in ["x-queue-time", "x-inference-time", "x-total-time"] {
        let v: f64 = r.headers()[h].to_str().unwrap().parse().unwrap();
        assert!(v >= 0.0, "{h}");
    }
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], "abc");
    assert_eq!(body["model_version"], "1");
    let out = &body["outputs"][0];
    assert_eq!(out["name"], "probabilities");
    assert_eq!(out["shape"], json!([3, 10]));
    let p: Vec<f64> = serde_json::from_value(out["data"].clone()).unwrap();
    for row in p.chunks(10) {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{row:?}");
        assert!(row.iter().all(|&v| (0.0..=1.0).contains(&v)));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn infer_generates_request_id_when_absent() {
    let s = digits_server().await;
    let r = s
        .post_json(
            "/v2/models/digits/infer",
            &v2_request("pixels", 1, 64, &pixels(2, 1)),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["x-request-id"].to_str().unwrap().len() >= 16);
}

#[tokio::test(flavor = "multi_thread")]
async fn infer_binary_extension_matches_json() {
    let s = digits_server().await;
    let x = pixels(3, 2);
    let json_out: Value = s
        .post_json(
            "/v2/models/digits/versions/1/infer",
            &v2_request("pixels", 2, 64, &x),
        )
        .await
        .json()
        .await
        .unwrap();
    let want: Vec<f32> = serde_json::from_value(json_out["outputs"][0]["data"].clone()).unwrap();

    let (body, n) = v2_binary_request("pixels", &[2, 64], &x, true);
    let r = s
        .client
        .post(format!("{}/v2/models/digits/infer", s.url))
        .header("Inference-Header-Content-Length", n)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let hl: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = r.bytes().await.unwrap();
    let head: Value = serde_json::from_slice(&bytes[..hl]).unwrap();
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 80);
    let got: Vec<f32> = bytes[hl..]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(got, want);

    // Binary input, JSON output (per-output binary_data = false wins).
    let (mut body, _) = v2_binary_request("pixels", &[2, 64], &x, true);
    let header = json!({
        "inputs": [{"name": "pixels", "shape": [2, 64], "datatype": "FP32", "parameters": {"binary_data_size": 512}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": false}}],
        "parameters": {"binary_data_output": true},
    });
    let mut head = serde_json::to_vec(&header).unwrap();
    let hn = head.len();
    head.extend_from_slice(&body.split_off(body.len() - 512));
    let r = s
        .client
        .post(format!("{}/v2/models/digits/infer", s.url))
        .header("Inference-Header-Content-Length", hn)
        .body(head)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let got: Vec<f32> = serde_json::from_value(v["outputs"][0]["data"].clone()).unwrap();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn v1_predict_returns_one_prediction_per_instance() {
    let s = digits_server().await;
    let x = pixels(4, 2);
    let instances: Vec<&[f32]> = x.chunks(64).collect();
    let r = s
        .post_json(
            "/v1/models/digits:predict",
            &json!({"instances": instances}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let preds = v["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 2);
    let v2: Value = s
        .post_json("/v2/models/digits/infer", &v2_request("pixels", 2, 64, &x))
        .await
        .json()
        .await
        .unwrap();
    let flat: Vec<f64> = serde_json::from_value(v2["outputs"][0]["data"].clone()).unwrap();
    for (i, p) in preds.iter().enumerate() {
        let p: Vec<f64> = serde_json::from_value(p.clone()).unwrap();
        for (a, b) in p.iter().zip(&flat[i * 10..i * 10 + 10]) {
            assert!((a - b).abs() < 1e-6);
        }
    }
    assert_eq!(
        s.post_json(
            "/v1/models/digits/versions/1:predict",
            &json!({"instances": instances})
        )
        .await
        .status(),
        200
    );
    let st: Value = s.get("/v1/models/digits").await.json().await.unwrap();
    assert_eq!(st["ready"], true);
    let r = s
        .post_json("/v1/models/digits:predict", &json!({"instances": []}))
        .await;
    assert_eq!(r.status(), 400);
}

async fn expect_error(r: reqwest::Response, status: u16, needles: &[&str]) {
    assert_eq!(r.status(), status);
    let body: Value = r.json().await.unwrap();
    let msg = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field: {body}"));
    for n in needles {
        assert!(msg.contains(n), "'{msg}' lacks '{n}'");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn infer_errors_say_what_was_wrong() {
    let s = digits_server().await;
    let x = pixels(5, 1);
    expect_error(
        s.post_json("/v2/models/nope/infer", &v2_request("pixels", 1, 64, &x))
            .await,
        404,
        &["nope"],
    )
    .await;
    expect_error(
        s.post_json(
            "/v2/models/digits/versions/9/infer",
            &v2_request("pixels", 1, 64, &x),
        )
        .await,
        404,
        &["version 9"],
    )
    .await;
    // Wrong shape.
    expect_error(
        s.post_json(
            "/v2/models/digits/infer",
            &v2_request("pixels", 1, 63, &x[..63]),
        )
        .await,
        400,
        &["pixels", "[-1, 64]", "[1, 63]"],
    )
    .await;
    // Wrong datatype.
    let body = json!({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "INT32", "data": vec![1; 64]}]});
    expect_error(
        s.post_json("/v2/models/digits/infer", &body).await,
        400,
        &["pixels", "FP32", "INT32"],
    )
    .await;
    // Missing input / unknown input.
    let body =
        json!({"inputs": [{"name": "image", "shape": [1, 64], "datatype": "FP32", "data": x}]});
    expect_error(
        s.post_json("/v2/models/digits/infer", &body).await,
        400,
        &["image", "pixels"],
    )
    .await;
    let body = json!({"inputs": []});
    expect_error(
        s.post_json("/v2/models/digits/infer", &body).await,
        400,
        &["missing input 'pixels'"],
    )
    .await;
    // Element count does not match the shape.
    expect_error(
        s.post_json("/v2/models/digits/infer", &v2_request("pixels", 2, 64, &x))
            .await,
        400,
        &["128", "64"],
    )
    .await;
    // Batch over max_batch_size.
    let big = pixels(6, 65);
    expect_error(
        s.post_json(
            "/v2/models/digits/infer",
            &v2_request("pixels", 65, 64, &big),
        )
        .await,
        400,
        &["max_batch_size"],
    )
    .await;
    // Infinity (1e39 overflows FP32) and NaN in binary form.
    let mut inf = x.clone();
    let mut body = v2_request("pixels", 1, 64, &inf);
    body["inputs"][0]["data"][3] = serde_json::from_str("1e39").unwrap();
    expect_error(
        s.post_json("/v2/models/digits/infer", &body).await,
        400,
        &["element 3", "inf"],
    )
    .await;
    inf[10] = f32::NAN;
    let (b, n) = v2_binary_request("pixels", &[1, 64], &inf, false);
    let r = s
        .client
        .post(format!("{}/v2/models/digits/infer", s.url))
        .header("Inference-Header-Content-Length", n)
        .body(b)
        .send()
        .await
        .unwrap();
    expect_error(r, 400, &["element 10", "NaN"]).await;
    // Malformed JSON, unknown output, bad priority, bad binary header.
    let r = s
        .client
        .post(format!("{}/v2/models/digits/infer", s.url))
        .body("{not json")
        .send()
        .await
        .unwrap();
    expect_error(r, 400, &["malformed"]).await;
    let mut body = v2_request("pixels", 1, 64, &x);
    body["outputs"] = json!([{"name": "logits"}]);
    expect_error(
        s.post_json("/v2/models/digits/infer", &body).await,
        400,
        &["logits", "probabilities"],
    )
    .await;
    let mut body = v2_request("pixels", 1, 64, &x);
    body["parameters"] = json!({"priority": 9});
    expect_error(
        s.post_json("/v2/models/digits/infer", &body).await,
        400,
        &["priority 9"],
    )
    .await;
    let r = s
        .client
        .post(format!("{}/v2/models/digits/infer", s.url))
        .header("Inference-Header-Content-Length", 99999)
        .body("{}")
        .send()
        .await
        .unwrap();
    expect_error(r, 400, &["Inference-Header-Content-Length"]).await;
    // The invalid requests are counted, and the model still serves.
    assert!(
        s.metric(r#"nv_inference_request_failure{model="digits",reason="INVALID",version="1"}"#)
            .await
            >= 10.0
    );
    assert_eq!(
        s.post_json("/v2/models/digits/infer", &v2_request("pixels", 1, 64, &x))
            .await
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_body_is_413() {
    let s = TestServer::start_with(Repo::new().with_digits(&[]), |c| c.max_body_bytes = 1024).await;
    let x = pixels(7, 8);
    let r = s
        .post_json("/v2/models/digits/infer", &v2_request("pixels", 8, 64, &x))
        .await;
    expect_error(r, 413, &["1024 bytes"]).await;
    let r = s
        .post_json(
            "/v2/models/digits/infer",
            &v2_request("pixels", 1, 64, &x[..64]),
        )
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn repository_index_unload_and_load() {
    let s = digits_server().await;
    let idx: Value = s
        .post_json("/v2/repository/index", &json!({}))
        .await
        .json()
        .await
        .unwrap();
    // The bundled digits config gates versions on its held-out split (0.9778 for version 1).
    let acc = idx[0]["validation"]["accuracy"].as_f64().unwrap();
    assert!((acc - 0.9778).abs() < 1e-3, "{idx}");
    let mut row = idx[0].clone();
    row.as_object_mut().unwrap().remove("validation");
    assert_eq!(
        json!([row]),
        json!([{"name": "digits", "version": "1", "state": "READY", "reason": ""}])
    );
    let x = pixels(8, 1);
    assert_eq!(
        s.post_json("/v2/repository/models/digits/unload", &json!({}))
            .await
            .status(),
        200
    );
    expect_error(
        s.post_json("/v2/models/digits/infer", &v2_request("pixels", 1, 64, &x))
            .await,
        404,
        &["unloaded"],
    )
    .await;
    assert_eq!(s.get("/v2/models/digits/ready").await.status(), 404);
    let idx: Value = s
        .post_json("/v2/repository/index", &json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(idx[0]["state"], "UNAVAILABLE");
    assert_eq!(
        s.post_json("/v2/repository/models/digits/load", &json!({}))
            .await
            .status(),
        200
    );
    assert_eq!(
        s.post_json("/v2/models/digits/infer", &v2_request("pixels", 1, 64, &x))
            .await
            .status(),
        200
    );
    expect_error(
        s.post_json("/v2/repository/models/ghost/load", &json!({}))
            .await,
        404,
        &["ghost"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_config_is_rejected_and_others_serve() {
    let repo = Repo::new()
        .with_digits(&[])
        .copy_digits("broken", &[("max_batch_size = 64", "max_batch_size = -3")]);
    let s = TestServer::start(repo).await;
    assert_eq!(s.get("/v2/health/ready").await.status(), 200);
    let idx: Value = s
        .post_json("/v2/repository/index", &json!({}))
        .await
        .json()
        .await
        .unwrap();
    let broken = idx
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "broken")
        .unwrap();
    assert_eq!(broken["state"], "UNAVAILABLE");
    let reason = broken["reason"].as_str().unwrap();
    assert!(
        reason.contains("broken/config.toml") && reason.contains("max_batch_size"),
        "{reason}"
    );
    assert_eq!(
        s.post_json(
            "/v2/models/digits/infer",
            &v2_request("pixels", 1, 64, &pixels(9, 1))
        )
        .await
        .status(),
        200
    );
    let r = s
        .post_json("/v2/repository/models/broken/load", &json!({}))
        .await;
    // The model's own files are at fault: 500 with the reason (an admin route), not a 400.
    expect_error(r, 500, &["max_batch_size", "expected"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_follow_the_version_policy() {
    let repo = Repo::new().with_digits(&[(
        "version_policy = { latest = 1 }",
        "version_policy = \"all\"",
    )]);
    let d = repo.path().join("digits");
    std::fs::create_dir_all(d.join("2")).unwrap();
    std::fs::copy(d.join("1/model.safetensors"), d.join("2/model.safetensors")).unwrap();
    let s = TestServer::start(repo).await;
    let m: Value = s.get("/v2/models/digits").await.json().await.unwrap();
    assert_eq!(m["versions"], json!(["1", "2"]));
    let x = pixels(10, 1);
    let r: Value = s
        .post_json("/v2/models/digits/infer", &v2_request("pixels", 1, 64, &x))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        r["model_version"], "2",
        "the newest version serves by default"
    );
    let r: Value = s
        .post_json(
            "/v2/models/digits/versions/1/infer",
            &v2_request("pixels", 1, 64, &x),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["model_version"], "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_with_triton_names() {
    let s = digits_server().await;
    for i in 0..3 {
        let r = s
            .post_json(
                "/v2/models/digits/infer",
                &v2_request("pixels", 2, 64, &pixels(20 + i, 2)),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    let l = r#"{model="digits",version="1"}"#;
    assert_eq!(
        s.metric(&format!("nv_inference_request_success{l}")).await,
        3.0
    );
    assert_eq!(s.metric(&format!("nv_inference_count{l}")).await, 6.0);
    assert!(s.metric(&format!("nv_inference_exec_count{l}")).await >= 1.0);
    assert!(
        s.metric(&format!("nv_inference_request_duration_us{l}"))
            .await
            > 0.0
    );
    assert_eq!(
        s.metric(&format!("ferrite_request_duration_seconds_count{l}"))
            .await,
        3.0
    );
    assert_eq!(
        s.metric(&format!("nv_inference_pending_request_count{l}"))
            .await,
        0.0
    );
    // The stage counters and histograms exist for this model (a family's HELP line alone, or
    // another model's series, would not do), and the histograms counted each request/execution.
    let text = s.metrics_text().await;
    for name in [
        "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us",
    ] {
        metric_in(&text, &format!("{name}{l}"));
    }
    assert_eq!(
        metric_in(&text, &format!("ferrite_queue_duration_seconds_count{l}")),
        3.0
    );
    assert_eq!(
        metric_in(&text, &format!("ferrite_batch_size_count{l}")),
        metric_in(&text, &format!("nv_inference_exec_count{l}"))
    );
    assert_eq!(
        metric_in(&text, &format!("ferrite_batch_size_sum{l}")),
        6.0,
        "rows per execution add up to the 6 rows sent"
    );
}
