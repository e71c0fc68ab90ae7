//! The gRPC door (KServe v2 / Triton GRPCInferenceService, grpc.health.v1) against a real server
//! on 127.0.0.1:0 with tonic's client: metadata and config, inference with raw and typed contents
//! agreeing with HTTP, streaming with per-message errors, statuses (NOT_FOUND, INVALID_ARGUMENT,
//! UNAVAILABLE with a retry hint, DEADLINE_EXCEEDED), statistics and classification on both doors.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use ferrite::protocol::grpc::health::health_client::HealthClient;
use ferrite::protocol::grpc::health::HealthCheckRequest;
use ferrite::protocol::grpc::pb;
use ferrite::protocol::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use rand::SeedableRng;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

async fn channel(s: &TestServer) -> Channel {
    tonic::transport::Endpoint::from_shared(s.grpc_url.clone())
        .unwrap()
        .connect()
        .await
        .expect("gRPC connects")
}

async fn client(s: &TestServer) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::new(channel(s).await)
}

fn pixels(seed: u64, rows: usize) -> Vec<f32> {
    random_pixels(&mut rand::rngs::StdRng::seed_from_u64(seed), rows)
}

fn raw_request(model: &str, id: &str, rows: usize, x: &[f32]) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: model.into(),
        id: id.into(),
        inputs: vec![InferInputTensor {
            name: "pixels".into(),
            datatype: "FP32".into(),
            shape: vec![rows as i64, 64],
            ..Default::default()
        }],
        raw_input_contents: vec![x.iter().flat_map(|v| v.to_le_bytes()).collect()],
        ..Default::default()
    }
}

fn f32s(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

async fn http_probabilities(s: &TestServer, rows: usize, x: &[f32]) -> Vec<f32> {
    let r: Value = s
        .post_json(
            "/v2/models/digits/infer",
            &json!({"inputs": [{"name": "pixels", "shape": [rows, 64], "datatype": "FP32", "data": x}]}),
        )
        .await
        .json()
        .await
        .unwrap();
    r["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn assert_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 1e-6, "element {i}: {x} vs {y}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_config_and_health_answer_over_grpc() {
    let s = TestServer::start(Repo::new().with_digits(&[])).await;
    let mut c = client(&s).await;
    assert!(
        c.server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let ready = |name: &str| pb::ModelReadyRequest {
        name: name.into(),
        version: String::new(),
    };
    assert!(
        c.model_ready(ready("digits"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !c.model_ready(ready("nope"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let meta = c
        .model_metadata(pb::ModelMetadataRequest {
            name: "digits".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.versions, ["1"]);
    assert_eq!(
        (
            meta.inputs[0].name.as_str(),
            meta.inputs[0].datatype.as_str()
        ),
        ("pixels", "FP32")
    );
    assert_eq!(meta.inputs[0].shape, [-1, 64]);
    let server = c
        .server_metadata(pb::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(server.name, "ferrite");
    for ext in ["statistics", "classification", "model_repository"] {
        assert!(server.extensions.iter().any(|e| e == ext), "{ext}");
    }
    let config = c
        .model_config(pb::ModelConfigRequest {
            name: "digits".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(config.max_batch_size, 64);
    assert_eq!(
        config.input[0].dims,
        [64],
        "Triton's dims leave out the batch dim"
    );
    assert_eq!(config.input[0].data_type, pb::DataType::TypeFp32 as i32);
    assert_eq!(config.output[0].label_filename, "labels.txt");
    let Some(pb::model_config::SchedulingChoice::DynamicBatching(db)) = config.scheduling_choice
    else {
        panic!("no dynamic_batching")
    };
    assert_eq!(
        (
            db.preferred_batch_size.as_slice(),
            db.max_queue_delay_microseconds
        ),
        (&[16, 32][..], 200)
    );
    // HTTP /config answers the same Triton fields.
    let http: Value = s
        .get("/v2/models/digits/config")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(http["max_batch_size"], 64);
    assert_eq!(
        http["input"],
        json!([{"name": "pixels", "data_type": "TYPE_FP32", "dims": [64]}])
    );
    assert_eq!(
        http["dynamic_batching"]["preferred_batch_size"],
        json!([16, 32])
    );
    let err = c
        .model_config(pb::ModelConfigRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let mut h = HealthClient::new(channel(&s).await);
    for service in ["", "inference.GRPCInferenceService"] {
        let r = h
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, 1, "SERVING for '{service}'");
    }
    let unknown = h
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_and_typed_inference_agree_with_http() {
    let s = TestServer::start(Repo::new().with_digits(&[])).await;
    let mut c = client(&s).await;
    let x = pixels(7, 3);
    let want = http_probabilities(&s, 3, &x).await;
    let raw = c
        .model_infer(raw_request("digits", "r1", 3, &x))
        .await
        .unwrap();
    // The version that served, in the response metadata as on the HTTP doors.
    assert_eq!(raw.metadata().get("x-ferrite-model-version").unwrap(), "1");
    let raw = raw.into_inner();
    assert_eq!(
        (
            raw.id.as_str(),
            raw.model_name.as_str(),
            raw.model_version.as_str()
        ),
        ("r1", "digits", "1")
    );
    assert_eq!(raw.outputs[0].shape, [3, 10]);
    assert_eq!(raw.outputs[0].datatype, "FP32");
    assert_close(&f32s(&raw.raw_output_contents[0]), &want);
    let mut typed = raw_request("digits", "t1", 3, &x);
    typed.raw_input_contents.clear();
    typed.inputs[0].contents = Some(pb::InferTensorContents {
        fp32_contents: x.clone(),
        ..Default::default()
    });
    let typed = c.model_infer(typed).await.unwrap().into_inner();
    assert_close(&f32s(&typed.raw_output_contents[0]), &want);
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_errors_map_to_grpc_codes() {
    let s = TestServer::start(Repo::new().with_digits(&[])).await;
    let mut c = client(&s).await;
    let x = pixels(1, 1);
    let unknown = c
        .model_infer(raw_request("nope", "", 1, &x))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let mut bad_shape = raw_request("digits", "", 1, &x[..63]);
    bad_shape.inputs[0].shape = vec![1, 63];
    let err = c.model_infer(bad_shape).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("expected shape [-1, 64], got [1, 63]"),
        "{}",
        err.message()
    );
    let mut nan = x.clone();
    nan[5] = f32::NAN;
    assert_eq!(
        c.model_infer(raw_request("digits", "", 1, &nan))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let mut bad_version = raw_request("digits", "", 1, &x);
    bad_version.model_version = "7".into();
    assert_eq!(
        c.model_infer(bad_version).await.unwrap_err().code(),
        Code::NotFound
    );
    let load = c
        .repository_model_load(pb::RepositoryModelLoadRequest {
            model_name: "digits".into(),
            ..Default::default()
        })
        .await;
    assert!(
        load.is_ok(),
        "model control explicit in the test settings: {load:?}"
    );
    s.server.shutdown().await;
}

/// One FP32 row for the debug model "slow" (the overload and queued-work tests).
fn slow_request() -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: "slow".into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, 4],
            contents: Some(pb::InferTensorContents {
                fp32_contents: vec![1.0; 4],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

const SLOW_PENDING: &str = r#"nv_inference_pending_request_count{model="slow",version="1"}"#;

/// Waits until at least `n` requests are queued for "slow" (20 s at most).
async fn wait_slow_pending(s: &TestServer, n: f64) {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while s.metric(SLOW_PENDING).await < n {
        assert!(
            std::time::Instant::now() < until,
            "never {n} requests queued"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn overload_is_unavailable_with_retry_and_the_client_deadline_is_honoured() {
    let repo = Repo::new().with_debug(
        "slow",
        1,
        "[dynamic_batching]\nmax_queue_size = 1\n[parameters]\nsleep_us = 400000\n",
    );
    let s = TestServer::start(repo).await;
    let c = client(&s).await;
    let req = slow_request;
    // One computing, one queued (the queue holds one): the rest are refused at once.
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let mut c = c.clone();
            let r = req();
            tokio::spawn(async move { c.model_infer(r).await })
        })
        .collect();
    let mut refused = 0;
    for call in calls {
        if let Err(st) = call.await.unwrap() {
            assert_eq!(st.code(), Code::Unavailable, "{st:?}");
            assert_eq!(st.metadata().get("retry-after").unwrap(), "1");
            assert!(!st.details().is_empty(), "RetryInfo in the details");
            refused += 1;
        }
    }
    assert!(
        refused >= 3,
        "only {refused} of 6 refused with a queue of 1"
    );
    // The deadline as the wire carries it, sent by a plain HTTP/2 client: tonic's client enforces
    // `grpc-timeout` on its own side too, which would not show what the server does.
    let msg = prost::Message::encode_to_vec(&req());
    let mut frame = vec![0u8];
    frame.extend((msg.len() as u32).to_be_bytes());
    frame.extend(msg);
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let late = h2
        .post(format!(
            "{}/inference.GRPCInferenceService/ModelInfer",
            s.grpc_url
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "50m")
        .body(frame)
        .send()
        .await
        .unwrap();
    // trailers-only answer: the status is in the headers (4 = DEADLINE_EXCEEDED)
    assert_eq!(
        late.headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("4"),
        "{:?}",
        late.headers()
    );
    assert!(
        started.elapsed() < Duration::from_millis(350),
        "answered at the deadline, not after the compute"
    );
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_answers_each_request_with_its_id_and_errors_in_band() {
    let s = TestServer::start(Repo::new().with_digits(&[])).await;
    let mut c = client(&s).await;
    let x = pixels(3, 1);
    let mut bad = raw_request("digits", "bad", 1, &x);
    bad.inputs[0].datatype = "INT32".into();
    let reqs = vec![
        raw_request("digits", "a", 1, &x),
        bad,
        raw_request("nope", "missing", 1, &x),
        raw_request("digits", "b", 1, &x),
    ];
    let mut answers = c
        .model_stream_infer(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut by_id = HashMap::new();
    while let Some(m) = answers.message().await.unwrap() {
        let r = m.infer_response.unwrap();
        by_id.insert(r.id.clone(), (m.error_message, r));
    }
    assert_eq!(by_id.len(), 4, "{:?}", by_id.keys());
    let want = http_probabilities(&s, 1, &x).await;
    for id in ["a", "b"] {
        let (err, r) = &by_id[id];
        assert!(err.is_empty(), "{id}: {err}");
        assert_close(&f32s(&r.raw_output_contents[0]), &want);
    }
    assert!(
        by_id["bad"].0.contains("expected datatype FP32, got INT32"),
        "{}",
        by_id["bad"].0
    );
    assert!(
        by_id["missing"].0.contains("nope"),
        "{}",
        by_id["missing"].0
    );
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn statistics_count_requests_on_both_doors() {
    let s = TestServer::start(Repo::new().with_digits(&[])).await;
    let mut c = client(&s).await;
    for i in 0..5 {
        c.model_infer(raw_request("digits", "", 2, &pixels(i, 2)))
            .await
            .unwrap();
    }
    let mut bad = raw_request("digits", "", 1, &pixels(9, 1));
    bad.inputs[0].shape = vec![2, 64];
    c.model_infer(bad).await.unwrap_err();
    let st = c
        .model_statistics(pb::ModelStatisticsRequest {
            name: "digits".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.model_stats.len(), 1);
    let m = &st.model_stats[0];
    assert_eq!((m.name.as_str(), m.version.as_str()), ("digits", "1"));
    let i = m.inference_stats.as_ref().unwrap();
    assert_eq!(i.success.unwrap().count, 5);
    assert!(i.success.unwrap().ns > 0);
    assert_eq!(i.fail.unwrap().count, 1);
    assert_eq!(m.inference_count, 10, "5 requests of 2 rows");
    assert!(
        m.execution_count >= 1 && m.execution_count <= 5,
        "{}",
        m.execution_count
    );
    let rows: u64 = m
        .batch_stats
        .iter()
        .map(|b| b.batch_size * b.compute_infer.unwrap().count)
        .sum();
    assert_eq!(rows, 10, "batch stats cover every row: {:?}", m.batch_stats);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(m.last_inference > 0 && m.last_inference <= now_ms);
    // HTTP: the same numbers in Triton's JSON, all models and one version.
    for path in [
        "/v2/models/stats",
        "/v2/models/digits/stats",
        "/v2/models/digits/versions/1/stats",
    ] {
        let h: Value = s.get(path).await.json().await.unwrap();
        let d = &h["model_stats"][0];
        assert_eq!(d["name"], "digits", "{path}");
        assert_eq!(d["inference_count"], 10, "{path}");
        assert_eq!(d["execution_count"], m.execution_count, "{path}");
        assert_eq!(d["inference_stats"]["success"]["count"], 5, "{path}");
        assert_eq!(d["inference_stats"]["fail"]["count"], 1, "{path}");
    }
    assert_eq!(s.get("/v2/models/nope/stats").await.status(), 404);
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn classification_returns_the_top_k_of_the_full_output_on_both_doors() {
    let s = TestServer::start(Repo::new().with_digits(&[])).await;
    let mut c = client(&s).await;
    let labels = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    let x = pixels(11, 2);
    let full = http_probabilities(&s, 2, &x).await;
    let expect: Vec<Vec<usize>> = full
        .chunks(10)
        .map(|row| {
            let mut idx: Vec<usize> = (0..10).collect();
            idx.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap());
            idx[..3].to_vec()
        })
        .collect();
    let check = |strings: Vec<String>| {
        assert_eq!(strings.len(), 6);
        for (r, row) in strings.chunks(3).enumerate() {
            for (j, s) in row.iter().enumerate() {
                let parts: Vec<&str> = s.split(':').collect();
                let idx: usize = parts[1].parse().unwrap();
                assert_eq!(idx, expect[r][j], "row {r} rank {j}: {s}");
                assert_eq!(parts[2], labels[idx]);
                let v: f32 = parts[0].parse().unwrap();
                assert!((v - full[r * 10 + idx]).abs() <= 1e-6, "{s}");
            }
        }
    };
    let mut req = raw_request("digits", "", 2, &x);
    let mut params = HashMap::new();
    params.insert(
        "classification".to_string(),
        pb::InferParameter {
            parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(3)),
        },
    );
    req.outputs = vec![InferRequestedOutputTensor {
        name: "probabilities".into(),
        parameters: params,
    }];
    let r = c.model_infer(req).await.unwrap().into_inner();
    assert_eq!(
        (
            r.outputs[0].datatype.as_str(),
            r.outputs[0].shape.as_slice()
        ),
        ("BYTES", &[2, 3][..])
    );
    let mut raw = &r.raw_output_contents[0][..];
    let mut strings = Vec::new();
    while !raw.is_empty() {
        let n = u32::from_le_bytes(raw[..4].try_into().unwrap()) as usize;
        strings.push(String::from_utf8(raw[4..4 + n].to_vec()).unwrap());
        raw = &raw[4 + n..];
    }
    check(strings);
    let h: Value = s
        .post_json(
            "/v2/models/digits/infer",
            &json!({"inputs": [{"name": "pixels", "shape": [2, 64], "datatype": "FP32", "data": x}],
                    "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(h["outputs"][0]["datatype"], "BYTES");
    check(
        h["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect(),
    );
    let zero = s
        .post_json(
            "/v2/models/digits/infer",
            &json!({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": &x[..64]}],
                    "outputs": [{"name": "probabilities", "parameters": {"classification": 0}}]}),
        )
        .await;
    assert_eq!(zero.status(), 400);
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_scopes_apply_to_grpc_methods_and_models() {
    const READER: &str = "grpc-reader-digits-only";
    const OPS: &str = "grpc-ops-admin-and-infer";
    let auth: ferrite::auth::AuthConfig = toml::from_str(&format!(
        "[[api_keys]]\nname = \"reader\"\nsha256 = \"{}\"\nscopes = [\"infer:digits\"]\n\
         [[api_keys]]\nname = \"ops\"\nsha256 = \"{}\"\nscopes = [\"admin\", \"infer\"]\n",
        ferrite::auth::sha256_hex(READER),
        ferrite::auth::sha256_hex(OPS)
    ))
    .unwrap();
    let repo = Repo::new().with_digits(&[]).copy_digits("other", &[]);
    let s = TestServer::start_with(repo, |c| c.auth = Some(auth)).await;
    let mut c = client(&s).await;
    let with_key = |key: &str, req: pb::ModelInferRequest| {
        let mut r = tonic::Request::new(req);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        r
    };
    let x = pixels(2, 1);
    // Probes stay open; inference needs a key.
    assert!(
        c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let mut h = HealthClient::new(channel(&s).await);
    assert_eq!(
        h.check(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status,
        1
    );
    let none = c
        .model_infer(raw_request("digits", "", 1, &x))
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated);
    let wrong = c
        .model_infer(with_key("nope", raw_request("digits", "", 1, &x)))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    c.model_infer(with_key(READER, raw_request("digits", "", 1, &x)))
        .await
        .unwrap();
    let other = c
        .model_infer(with_key(READER, raw_request("other", "", 1, &x)))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);
    // Statistics of every model: only those the key may use.
    let mut st = tonic::Request::new(pb::ModelStatisticsRequest::default());
    st.metadata_mut()
        .insert("x-api-key", READER.parse().unwrap());
    let names: Vec<String> = c
        .model_statistics(st)
        .await
        .unwrap()
        .into_inner()
        .model_stats
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["digits"]);
    // Repository calls need admin.
    let unload = |key: &str| {
        let mut r = tonic::Request::new(pb::RepositoryModelUnloadRequest {
            model_name: "other".into(),
            ..Default::default()
        });
        r.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        r
    };
    assert_eq!(
        c.repository_model_unload(unload(READER))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    c.repository_model_unload(unload(OPS)).await.unwrap();
    let mut ready = tonic::Request::new(pb::ModelReadyRequest {
        name: "other".into(),
        version: String::new(),
    });
    ready
        .metadata_mut()
        .insert("x-api-key", OPS.parse().unwrap());
    assert!(!c.model_ready(ready).await.unwrap().into_inner().ready);
    s.server.shutdown().await;
}

/// A request whose client deadline passes while it waits in the queue is dropped there: never
/// computed, counted as canceled.
#[tokio::test(flavor = "multi_thread")]
async fn a_queued_request_past_its_deadline_is_dropped_not_computed() {
    let repo = Repo::new().with_debug("slow", 1, "[parameters]\nsleep_us = 300000\n");
    let s = TestServer::start(repo).await;
    let c = client(&s).await;
    let req = slow_request;
    let ahead: Vec<_> = (0..2)
        .map(|_| {
            let (mut c, r) = (c.clone(), req());
            tokio::spawn(async move { c.model_infer(r).await })
        })
        .collect();
    // One computing, one proven queued behind it.
    wait_slow_pending(&s, 1.0).await;
    let msg = prost::Message::encode_to_vec(&req());
    let mut frame = vec![0u8];
    frame.extend((msg.len() as u32).to_be_bytes());
    frame.extend(msg);
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let late = h2
        .post(format!(
            "{}/inference.GRPCInferenceService/ModelInfer",
            s.grpc_url
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "50m")
        .body(frame)
        .send()
        .await
        .unwrap();
    assert_eq!(
        late.headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("4")
    );
    for a in ahead {
        a.await.unwrap().unwrap();
    }
    c.clone().model_infer(req()).await.unwrap();
    let m = |k: &str| format!("nv_inference_{k}{{model=\"slow\",version=\"1\"}}");
    assert_eq!(
        s.metric(&m("exec_count")).await,
        3.0,
        "the late request was not computed"
    );
    assert_eq!(
        s.metric(r#"nv_inference_request_failure{model="slow",reason="CANCELED",version="1"}"#)
            .await,
        1.0
    );
    s.server.shutdown().await;
}

/// A client that goes away (its call dropped: HTTP/2 RST_STREAM) while its request is queued: the
/// queued work is dropped, never computed, and counted as canceled.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_goes_away_has_its_queued_request_dropped() {
    let repo = Repo::new().with_debug("slow", 1, "[parameters]\nsleep_us = 300000\n");
    let s = TestServer::start(repo).await;
    let c = client(&s).await;
    let req = slow_request;
    let spawn = || {
        let (mut c, r) = (c.clone(), req());
        tokio::spawn(async move { c.model_infer(r).await })
    };
    // One computing, one queued behind it, then the one that leaves, queued behind both.
    let ahead: Vec<_> = (0..2).map(|_| spawn()).collect();
    wait_slow_pending(&s, 1.0).await;
    let leaves = spawn();
    wait_slow_pending(&s, 2.0).await;
    leaves.abort();
    for a in ahead {
        a.await.unwrap().unwrap();
    }
    c.clone().model_infer(req()).await.unwrap();
    let canceled = r#"nv_inference_request_failure{model="slow",reason="CANCELED",version="1"}"#;
    assert_eq!(s.metric(canceled).await, 1.0, "the abandoned request");
    assert_eq!(
        s.metric(r#"nv_inference_request_success{model="slow",version="1"}"#)
            .await,
        3.0,
        "two ahead of it and one after were computed, it was not"
    );
    assert_eq!(s.metric(SLOW_PENDING).await, 0.0);
    s.server.shutdown().await;
}
