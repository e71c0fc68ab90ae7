//! The response cache against real servers on port 0: tensor requests (digits) cached whole and
//! answered byte-identical, texts (MiniLM) cached one entry each so that a partly cached request
//! computes only the rest and keeps the order, the options that change an embedding never sharing
//! entries, bypass on request, per-principal partitions with `[auth]`, a new version never reading
//! an old one's entries, and TTL expiry. The Redis level (a real `redis-server`) and the memory
//! bound (a real `ferrite serve` process) are in tests/cache_redis.rs.

mod common;

use std::time::{Duration, Instant};

use common::{repo_root, Repo, TestServer};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

const CACHE: &str = "[response_cache]\nenable = true\nttl_secs = 600\nmax_bytes = 16777216\n";

fn digits_repo(cache: &str) -> Repo {
    Repo::new().with_digits(&[("[metadata]", &format!("{cache}\n[metadata]"))])
}

/// MiniLM (weights linked from models/, fetched by scripts/fetch-models.sh) with `cache` appended.
fn minilm_repo(cache: &str) -> Repo {
    let repo = Repo::new();
    let src = repo_root().join("models/minilm");
    assert!(
        src.join("1/model.safetensors").is_file(),
        "models/minilm/1 is missing: run scripts/fetch-models.sh (scripts/test.sh does)"
    );
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
    let cfg = std::fs::read_to_string(src.join("config.toml")).unwrap();
    let cfg = cfg.replace("[metadata]", &format!("{cache}\n[metadata]"));
    std::fs::write(repo.path().join("minilm/config.toml"), cfg).unwrap();
    repo
}

fn status(h: &HeaderMap) -> Option<String> {
    h.get("x-ferrite-cache")
        .map(|v| v.to_str().unwrap().to_string())
}

const PIXELS: [f32; 64] = [
    0., 0., 5., 13., 9., 1., 0., 0., 0., 0., 13., 15., 10., 15., 5., 0., 0., 3., 15., 2., 0., 11.,
    8., 0., 0., 4., 12., 0., 0., 8., 8., 0., 0., 5., 8., 0., 0., 9., 8., 0., 0., 4., 11., 0., 1.,
    12., 7., 0., 0., 2., 14., 5., 10., 12., 0., 0., 0., 0., 6., 13., 10., 0., 0., 0.,
];

/// POSTs `body` to `path` with extra headers; (status, x-ferrite-cache, body bytes).
async fn post(
    s: &TestServer,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, Vec<u8>) {
    let mut r = s
        .client
        .post(format!("{}{path}", s.url))
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.unwrap();
    let code = resp.status().as_u16();
    let st = status(resp.headers());
    (code, st, resp.bytes().await.unwrap().to_vec())
}

const EXEC: &str = r#"nv_inference_exec_count{model="digits",version="1"}"#;
const HITS: &str = r#"nv_cache_num_hits_per_model{model="digits",version="1"}"#;
const MISSES: &str = r#"nv_cache_num_misses_per_model{model="digits",version="1"}"#;

#[tokio::test(flavor = "multi_thread")]
async fn tensor_request_hit_is_byte_identical_and_counted() {
    let s = TestServer::start(digits_repo(CACHE)).await;
    let body = serde_json::to_vec(&common::v2_request("pixels", 1, 64, &PIXELS)).unwrap();
    let path = "/v2/models/digits/infer";
    let (c1, st1, b1) = post(&s, path, body.clone(), &[]).await;
    assert_eq!((c1, st1.as_deref()), (200, Some("miss")));
    let exec = s.metric(EXEC).await;
    let (c2, st2, b2) = post(&s, path, body.clone(), &[]).await;
    assert_eq!((c2, st2.as_deref()), (200, Some("hit")));
    assert_eq!(b1, b2, "a cached response is byte-identical");
    assert_eq!(s.metric(EXEC).await, exec, "a hit runs no model");
    assert_eq!(s.metric(HITS).await, 1.0);
    assert_eq!(s.metric(MISSES).await, 1.0);
    let t = s.metrics_text().await;
    for series in [
        r#"nv_cache_hit_duration_per_model{model="digits",version="1"}"#,
        r#"nv_cache_miss_duration_per_model{model="digits",version="1"}"#,
        r#"ferrite_cache_bytes{model="digits",version="1"}"#,
    ] {
        assert!(common::metric_in(&t, series) > 0.0, "{series}");
    }
    common::metric_in(
        &t,
        r#"ferrite_cache_evictions_total{model="digits",reason="size",version="1"}"#,
    );

    // The binary extension and KServe v1 hit the same entry (same inputs), byte for byte too.
    let (bin, n) = common::v2_binary_request("pixels", &[1, 64], &PIXELS, true);
    let hl = n.to_string();
    let bh = [("inference-header-content-length", hl.as_str())];
    let (c, st, b_bin1) = post(&s, path, bin.clone(), &bh).await;
    assert_eq!((c, st.as_deref()), (200, Some("hit")));
    let nc = [bh[0], ("cache-control", "no-cache")];
    let (c, st, b_bin3) = post(&s, path, bin, &nc).await;
    assert_eq!((c, st), (200, None), "no-cache bypasses: no header");
    assert_eq!(
        b_bin1, b_bin3,
        "binary: cached equals computed, byte for byte"
    );
    let v1 = serde_json::to_vec(&json!({"instances": [PIXELS.to_vec()]})).unwrap();
    let (c, st, _) = post(&s, "/v1/models/digits:predict", v1, &[]).await;
    assert_eq!((c, st.as_deref()), (200, Some("hit")));

    // Bypass on request: computed, not counted as hit or miss.
    let exec = s.metric(EXEC).await;
    let (hits, misses) = (s.metric(HITS).await, s.metric(MISSES).await);
    let mut no = common::v2_request("pixels", 1, 64, &PIXELS);
    no["parameters"] = json!({"cache": false});
    let (c, st, b3) = post(&s, path, serde_json::to_vec(&no).unwrap(), &[]).await;
    assert_eq!((c, st), (200, None));
    assert_eq!(b3, b1);
    let (c, st, _) = post(&s, path, body, &[("cache-control", "no-store")]).await;
    assert_eq!((c, st), (200, None));
    assert_eq!(
        s.metric(EXEC).await,
        exec + 2.0,
        "bypassed requests run the model"
    );
    assert_eq!(
        (s.metric(HITS).await, s.metric(MISSES).await),
        (hits, misses)
    );

    // A different input misses.
    let mut other = PIXELS;
    other[0] = 1.0;
    let body = serde_json::to_vec(&common::v2_request("pixels", 1, 64, &other)).unwrap();
    let (_, st, _) = post(&s, path, body, &[]).await;
    assert_eq!(st.as_deref(), Some("miss"));
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn model_without_cache_sends_no_header_and_exports_no_cache_series() {
    let s = TestServer::start(digits_repo("")).await;
    let body = serde_json::to_vec(&common::v2_request("pixels", 1, 64, &PIXELS)).unwrap();
    for _ in 0..2 {
        let (c, st, _) = post(&s, "/v2/models/digits/infer", body.clone(), &[]).await;
        assert_eq!((c, st), (200, None));
    }
    assert_eq!(common::metric_value(&s.metrics_text().await, HITS), None);
    s.server.shutdown().await;
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// TEI `/embed`: (status, cache header, vectors).
async fn embed(
    s: &TestServer,
    body: Value,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, Vec<Vec<f32>>) {
    let (c, st, b) = post(s, "/embed", serde_json::to_vec(&body).unwrap(), headers).await;
    assert_eq!(c, 200, "{}", String::from_utf8_lossy(&b));
    let v: Value = serde_json::from_slice(&b).unwrap();
    (c, st, v.as_array().unwrap().iter().map(floats).collect())
}

const SENTENCES: [&str; 5] = [
    "The quick brown fox jumps over the lazy dog.",
    "A cached embedding costs microseconds instead of milliseconds.",
    "Ferrite is a model inference server written in Rust.",
    "Embedding workloads repeat heavily.",
    "the quick brown fox jumps over the lazy dog.",
];

/// Float tolerance between a cached and a computed embedding: both are the same f32 values, the
/// cached one through a binary round trip and JSON; JSON prints f32 exactly (shortest round trip),
/// so any difference is a bug, but batching may change summation order by a few ulp.
const TOL: f32 = 1e-5;

#[tokio::test(flavor = "multi_thread")]
async fn texts_are_entries_partial_requests_compute_the_rest_in_order() {
    let s = TestServer::start(minilm_repo(CACHE)).await;
    let inf = r#"nv_inference_count{model="minilm",version="1"}"#;
    let hits = r#"nv_cache_num_hits_per_model{model="minilm",version="1"}"#;
    let misses = r#"nv_cache_num_misses_per_model{model="minilm",version="1"}"#;
    // The reference: every text computed, cache bypassed.
    let all: Vec<&str> = SENTENCES.to_vec();
    let (_, st, reference) =
        embed(&s, json!({"inputs": all}), &[("cache-control", "no-cache")]).await;
    assert_eq!(st, None);
    let (_, st, first) = embed(&s, json!({"inputs": [SENTENCES[1], SENTENCES[3]]}), &[]).await;
    assert_eq!(st.as_deref(), Some("miss"));
    assert!(max_diff(&first[0], &reference[1]) < TOL);
    let rows = s.metric(inf).await;
    // 2 of 5 cached: only 3 computed, in one request, and all five come back in order.
    let (_, st, mixed) = embed(&s, json!({"inputs": all}), &[]).await;
    assert_eq!(st.as_deref(), Some("partial"));
    assert_eq!(
        s.metric(inf).await,
        rows + 3.0,
        "only the uncached texts run"
    );
    assert_eq!(mixed.len(), 5);
    for (i, (m, r)) in mixed.iter().zip(&reference).enumerate() {
        assert!(max_diff(m, r) < TOL, "text {i} out of place or wrong");
    }
    // Exact bytes, no normalisation: "The ..." and "the ..." were both computed above (the model
    // is uncased, so their vectors agree), and a trailing space is another entry again.
    assert!(max_diff(&mixed[0], &mixed[4]) < TOL);
    let (_, st, again) = embed(&s, json!({"inputs": all}), &[]).await;
    assert_eq!(st.as_deref(), Some("hit"));
    assert_eq!(again, mixed, "a full hit returns the same floats");
    assert_eq!(s.metric(inf).await, rows + 3.0);
    assert_eq!(s.metric(hits).await, 2.0 + 5.0);
    assert_eq!(s.metric(misses).await, 2.0 + 3.0);
    let spaced = format!("{} ", SENTENCES[0]);
    let (_, st, _) = embed(&s, json!({"inputs": [spaced]}), &[]).await;
    assert_eq!(st.as_deref(), Some("miss"));

    // KServe v2 BYTES (truncate on, the model's normalize) shares TEI's entries with truncate.
    let (_, st, _) = embed(&s, json!({"inputs": [SENTENCES[2]], "truncate": true}), &[]).await;
    assert_eq!(st.as_deref(), Some("miss"));
    let v2 = json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [SENTENCES[2]]}]});
    let (c, st, b) = post(
        &s,
        "/v2/models/minilm/infer",
        serde_json::to_vec(&v2).unwrap(),
        &[],
    )
    .await;
    assert_eq!((c, st.as_deref()), (200, Some("hit")));
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert!(max_diff(&floats(&v["outputs"][0]["data"]), &reference[2]) < TOL);
    s.server.shutdown().await;
}

/// A TEI hit answers the very bytes of the miss that filled it (the entry keeps the JSON text the
/// miss was answered with), alone and inside a partly cached request, and a partly cached body is
/// `serde_json`'s writing of its own floats (cached text and freshly written floats agree).
#[tokio::test(flavor = "multi_thread")]
async fn tei_hit_answers_the_bytes_of_its_miss() {
    let s = TestServer::start(minilm_repo(CACHE)).await;
    let body = |texts: &[&str]| serde_json::to_vec(&json!({ "inputs": texts })).unwrap();
    let (c, st, miss) = post(&s, "/embed", body(&SENTENCES[..1]), &[]).await;
    assert_eq!((c, st.as_deref()), (200, Some("miss")));
    let (c, st, hit) = post(&s, "/embed", body(&SENTENCES[..1]), &[]).await;
    assert_eq!((c, st.as_deref()), (200, Some("hit")));
    assert_eq!(hit, miss);
    let (c, st, partial) = post(&s, "/embed", body(&SENTENCES[..2]), &[]).await;
    assert_eq!((c, st.as_deref()), (200, Some("partial")));
    let floats: Vec<Vec<f32>> = serde_json::from_slice(&partial).unwrap();
    assert_eq!(serde_json::to_vec(&floats).unwrap(), partial);
    assert_eq!(
        partial[..miss.len() - 1],
        miss[..miss.len() - 1],
        "the cached vector's text comes first"
    );
    let (c, st, full) = post(&s, "/embed", body(&SENTENCES[..2]), &[]).await;
    assert_eq!((c, st.as_deref()), (200, Some("hit")));
    assert_eq!(full, partial);
    // Bypassing the cache computes again: the same floats within the file's tolerance.
    let (c, st, bypass) = post(
        &s,
        "/embed",
        body(&SENTENCES[..2]),
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!((c, st), (200, None));
    let computed: Vec<Vec<f32>> = serde_json::from_slice(&bypass).unwrap();
    for (a, b) in computed.iter().zip(&floats) {
        assert!(max_diff(a, b) < TOL);
    }
    s.server.shutdown().await;
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[tokio::test(flavor = "multi_thread")]
async fn truncate_normalize_and_dimensions_never_share_entries() {
    let s = TestServer::start(minilm_repo(CACHE)).await;
    let t = SENTENCES[0];
    let variants = [
        json!({"inputs": [t]}),
        json!({"inputs": [t], "truncate": true}),
        json!({"inputs": [t], "normalize": false}),
        json!({"inputs": [t], "dimensions": 16}),
        json!({"inputs": [t], "dimensions": 16, "normalize": false}),
        json!({"inputs": [t], "dimensions": 32}),
    ];
    let mut got = Vec::new();
    for v in &variants {
        let (_, st, e) = embed(&s, v.clone(), &[]).await;
        assert_eq!(
            st.as_deref(),
            Some("miss"),
            "{v} must not hit another variant's entry"
        );
        got.push(e.into_iter().next().unwrap());
    }
    for (v, e) in variants.iter().zip(&got) {
        let (_, st, again) = embed(&s, v.clone(), &[]).await;
        assert_eq!(st.as_deref(), Some("hit"), "{v}");
        assert_eq!(&again[0], e, "{v}");
    }
    assert!((norm(&got[0]) - 1.0).abs() < 1e-4);
    assert!(
        (norm(&got[2]) - 1.0).abs() > 1e-2,
        "normalize=false is not normalised"
    );
    assert_eq!((got[3].len(), got[5].len()), (16, 32));
    assert!((norm(&got[3]) - 1.0).abs() < 1e-4, "cut and renormalised");
    assert!((norm(&got[4]) - 1.0).abs() > 1e-2);

    // OpenAI: float and base64 answers come from one entry and agree after decoding.
    let openai = |fmt: &str| json!({"input": [t], "model": "minilm", "encoding_format": fmt});
    let (c, st, fl) = post(
        &s,
        "/v1/embeddings",
        serde_json::to_vec(&openai("float")).unwrap(),
        &[],
    )
    .await;
    assert_eq!(
        (c, st.as_deref()),
        (200, Some("hit")),
        "OpenAI truncates and normalises: TEI's truncate=true entry"
    );
    let (c, st, b64) = post(
        &s,
        "/v1/embeddings",
        serde_json::to_vec(&openai("base64")).unwrap(),
        &[],
    )
    .await;
    assert_eq!((c, st.as_deref()), (200, Some("hit")));
    let fl: Value = serde_json::from_slice(&fl).unwrap();
    let b64: Value = serde_json::from_slice(&b64).unwrap();
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert!(max_diff(&decoded, &floats(&fl["data"][0]["embedding"])) < TOL);
    assert!(max_diff(&decoded, &got[1]) < TOL);
    assert_eq!(fl["usage"]["prompt_tokens"], b64["usage"]["prompt_tokens"]);
    assert!(
        fl["usage"]["prompt_tokens"].as_u64().unwrap() > 5,
        "token counts survive the cache"
    );
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_version_misses_the_old_versions_entries() {
    let repo = digits_repo(CACHE);
    let dir = repo.path().join("digits");
    let s = TestServer::start(repo).await;
    let body = serde_json::to_vec(&common::v2_request("pixels", 1, 64, &PIXELS)).unwrap();
    let path = "/v2/models/digits/infer";
    assert_eq!(
        post(&s, path, body.clone(), &[]).await.1.as_deref(),
        Some("miss")
    );
    assert_eq!(
        post(&s, path, body.clone(), &[]).await.1.as_deref(),
        Some("hit")
    );
    // Version 2: the same weights, a new version folder.
    std::fs::create_dir_all(dir.join("2")).unwrap();
    std::fs::copy(
        dir.join("1/model.safetensors"),
        dir.join("2/model.safetensors"),
    )
    .unwrap();
    let r = s
        .post_json("/v2/repository/models/digits/load", &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let (c, st, _) = post(&s, path, body.clone(), &[]).await;
    assert_eq!(
        (c, st.as_deref()),
        (200, Some("miss")),
        "version 2 never sees version 1's entries"
    );
    assert_eq!(post(&s, path, body, &[]).await.1.as_deref(), Some("hit"));
    assert_eq!(
        s.metric(r#"nv_cache_num_hits_per_model{model="digits",version="2"}"#)
            .await,
        1.0
    );
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn entries_expire_after_ttl() {
    let cache = CACHE.replace("ttl_secs = 600", "ttl_secs = 1");
    let s = TestServer::start(digits_repo(&cache)).await;
    let body = serde_json::to_vec(&common::v2_request("pixels", 1, 64, &PIXELS)).unwrap();
    let path = "/v2/models/digits/infer";
    let t0 = Instant::now();
    assert_eq!(
        post(&s, path, body.clone(), &[]).await.1.as_deref(),
        Some("miss")
    );
    // Poll (every 50 ms, 10 s deadline) until the entry is gone: hits until a second has passed
    // (a hit does not extend it), then a miss.
    let deadline = t0 + Duration::from_secs(10);
    let mut hits = 0;
    loop {
        let (_, st, _) = post(&s, path, body.clone(), &[]).await;
        if st.as_deref() == Some("miss") {
            assert!(
                t0.elapsed() >= Duration::from_millis(990),
                "expired early: {:?}",
                t0.elapsed()
            );
            break;
        }
        assert_eq!(st.as_deref(), Some("hit"));
        hits += 1;
        assert!(Instant::now() < deadline, "the entry never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(hits > 0, "the entry was served before it expired");
    s.server.shutdown().await;
}

fn two_tenants() -> ferrite::auth::AuthConfig {
    use ferrite::auth::sha256_hex;
    toml::from_str(&format!(
        "[[api_keys]]\nname = \"alice\"\nsha256 = \"{}\"\nscopes = [\"infer\"]\n\
         [[api_keys]]\nname = \"bob\"\nsha256 = \"{}\"\nscopes = [\"infer\"]\n",
        sha256_hex("key-alice"),
        sha256_hex("key-bob")
    ))
    .unwrap()
}

/// (status, x-ferrite-cache) of the digits request as `key`, to model `model`.
async fn as_tenant(s: &TestServer, model: &str, key: &str) -> (u16, Option<String>) {
    let r = s
        .client
        .post(format!("{}/v2/models/{model}/infer", s.url))
        .bearer_auth(key)
        .json(&common::v2_request("pixels", 1, 64, &PIXELS))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), status(r.headers()))
}

#[tokio::test(flavor = "multi_thread")]
async fn with_auth_entries_are_per_principal_unless_the_model_is_shared() {
    let shared = format!("{CACHE}shared = true\n");
    let repo =
        digits_repo(CACHE).copy_digits("open", &[("[metadata]", &format!("{shared}\n[metadata]"))]);
    let s = TestServer::start_with(repo, |c| c.auth = Some(two_tenants())).await;
    assert_eq!(
        as_tenant(&s, "digits", "key-alice").await,
        (200, Some("miss".into()))
    );
    assert_eq!(
        as_tenant(&s, "digits", "key-alice").await,
        (200, Some("hit".into()))
    );
    assert_eq!(
        as_tenant(&s, "digits", "key-bob").await,
        (200, Some("miss".into())),
        "bob never sees what alice asked"
    );
    assert_eq!(
        as_tenant(&s, "digits", "key-bob").await,
        (200, Some("hit".into()))
    );
    // `shared = true`: one partition for everyone.
    assert_eq!(
        as_tenant(&s, "open", "key-alice").await,
        (200, Some("miss".into()))
    );
    assert_eq!(
        as_tenant(&s, "open", "key-bob").await,
        (200, Some("hit".into()))
    );
    s.server.shutdown().await;
}
