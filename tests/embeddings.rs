//! all-MiniLM-L6-v2 through the real server: reference embeddings from sentence-transformers
//! (cosine >= 0.999), the same answer alone and inside a mixed-length batch (>= 0.9999), the
//! OpenAI, TEI and KServe v2 front doors, and their errors. Needs `scripts/fetch-models.sh`.

mod common;

use common::*;
use serde_json::{json, Value};

struct Fixture {
    sentences: Vec<String>,
    embeddings: Vec<Vec<f32>>,
}

fn fixture() -> Fixture {
    let v: Value = serde_json::from_str(&common::fixture("minilm-reference.json")).unwrap();
    Fixture {
        sentences: serde_json::from_value(v["sentences"].clone()).unwrap(),
        embeddings: serde_json::from_value(v["embeddings"].clone()).unwrap(),
    }
}

/// A repository holding minilm (weights from scripts/fetch-models.sh) with config edits.
fn minilm_repo(edits: &[(&str, &str)]) -> Repo {
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
    // The gate's validation set (models/minilm/config.toml [validation]).
    std::os::unix::fs::symlink(
        src.join("validation.jsonl"),
        dst.parent().unwrap().join("validation.jsonl"),
    )
    .unwrap();
    let mut cfg = std::fs::read_to_string(src.join("config.toml")).unwrap();
    for (from, to) in edits {
        assert!(cfg.contains(from), "config has no '{from}'");
        cfg = cfg.replace(from, to);
    }
    std::fs::write(repo.path().join("minilm/config.toml"), cfg).unwrap();
    repo
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

async fn embed(s: &TestServer, body: Value) -> Vec<Vec<f32>> {
    let r = s.post_json("/embed", &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ferrite-model-version"], "1");
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn reference_embeddings_match_alone_and_in_a_mixed_batch() {
    let f = fixture();
    // A small token budget and batch so that the 64 sentences really spread over several batches.
    let s = TestServer::start(minilm_repo(&[(
        "max_batch_tokens = 8192",
        "max_batch_tokens = 1024",
    )]))
    .await;
    let batch = embed(&s, json!({"inputs": f.sentences})).await;
    assert_eq!(batch.len(), 64);
    for (i, (got, want)) in batch.iter().zip(&f.embeddings).enumerate() {
        assert_eq!(got.len(), 384);
        let c = cosine(got, want);
        assert!(c >= 0.999, "sentence {i}: cosine {c}");
    }
    for i in [0usize, 7, 31, 63] {
        let alone = embed(&s, json!({"inputs": f.sentences[i]})).await;
        let c = cosine(&alone[0], &batch[i]);
        assert!(c >= 0.9999, "sentence {i}: alone vs batch cosine {c}");
    }
    let execs = s
        .metric(r#"nv_inference_exec_count{model="minilm",version="1"}"#)
        .await;
    assert!(
        execs >= 3.0,
        "64 sentences under a 1024-token budget need several batches, got {execs}"
    );
    let text = s.metrics_text().await;
    let count = metric_value(
        &text,
        r#"ferrite_batch_padding_ratio_count{model="minilm",version="1"}"#,
    )
    .unwrap();
    // The test server runs on the CPU, where BERT packs a batch without padding: no padding
    // ratio is recorded for it (only padded batches have one, e.g. on a GPU).
    assert_eq!(count, 0.0, "padding ratio recorded for packed batches");
    // The precision path `auto` picked on this CPU (bf16 where it has bf16 instructions) is the
    // one the metadata and the metrics report.
    let cfg = ferrite::spec::ModelConfig::parse(
        &std::fs::read_to_string(repo_root().join("models/minilm/config.toml")).unwrap(),
        "minilm",
    )
    .unwrap();
    let path = ferrite::quant::resolve(&cfg, true).to_string();
    let md: Value = s.get("/v2/models/minilm").await.json().await.unwrap();
    assert_eq!(md["parameters"]["precision"], path.as_str());
    let series =
        format!(r#"ferrite_model_precision{{model="minilm",precision="{path}",version="1"}}"#);
    assert_eq!(metric_value(&text, &series), Some(1.0), "{series}");
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_embeddings_shape_base64_and_dimensions() {
    let f = fixture();
    let s = TestServer::start(minilm_repo(&[]).with_digits(&[])).await;
    let r = s
        .post_json(
            "/v1/embeddings",
            &json!({"input": [f.sentences[0], f.sentences[1]], "model": "minilm"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ferrite-model-version"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "minilm");
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(v["data"][0]["object"], "embedding");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 10);
    let e0: Vec<f32> = serde_json::from_value(v["data"][0]["embedding"].clone()).unwrap();
    assert!(cosine(&e0, &f.embeddings[0]) >= 0.999);

    let v: Value = s
        .post_json(
            "/v1/embeddings",
            &json!({"input": f.sentences[0], "encoding_format": "base64"}),
        )
        .await
        .json()
        .await
        .unwrap();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(decoded, e0);

    let v: Value = s
        .post_json(
            "/v1/embeddings",
            &json!({"input": f.sentences[0], "dimensions": 8}),
        )
        .await
        .json()
        .await
        .unwrap();
    let d: Vec<f32> = serde_json::from_value(v["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(d.len(), 8);
    assert!(
        (d.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5,
        "renormalised"
    );

    for (body, needle) in [
        (json!({"input": [1, 2]}), "list of strings"),
        (
            json!({"input": "x", "model": "digits"}),
            "does not take text",
        ),
        (json!({"input": "x", "dimensions": 999}), "1..=384"),
        (
            json!({"input": "x", "encoding_format": "int8"}),
            "encoding_format",
        ),
        (json!({"input": ""}), "empty"),
    ] {
        let r = s.post_json("/v1/embeddings", &body).await;
        assert_eq!(r.status(), 400, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(needle),
            "{e}"
        );
    }
    let r = s
        .post_json("/v1/embeddings", &json!({"input": "x", "model": "nope"}))
        .await;
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn tei_embed_normalize_truncate_and_limits() {
    let f = fixture();
    let s = TestServer::start(minilm_repo(&[(
        "max_client_batch_size = 256",
        "max_client_batch_size = 4",
    )]))
    .await;
    let raw = embed(&s, json!({"inputs": f.sentences[2], "normalize": false})).await;
    let norm: f32 = raw[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(
        (norm - 1.0).abs() > 1e-3,
        "normalize=false keeps the raw mean-pooled norm ({norm})"
    );
    assert!(cosine(&raw[0], &f.embeddings[2]) >= 0.999);

    let long = "word ".repeat(400);
    let r = s.post_json("/embed", &json!({"inputs": long})).await;
    assert_eq!(r.status(), 413);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error_type"], "Validation");
    assert!(e["error"].as_str().unwrap().contains("256"), "{e}");
    assert_eq!(
        s.post_json("/embed", &json!({"inputs": long, "truncate": true}))
            .await
            .status(),
        200
    );

    let r = s
        .post_json("/embed", &json!({"inputs": ["a", "b", "c", "d", "e"]}))
        .await;
    assert_eq!(r.status(), 413, "more than max_client_batch_size");
    let invalid = r#"nv_inference_request_failure{model="minilm",reason="INVALID",version="1"}"#;
    let before = s.metric(invalid).await;
    let r = s.post_json("/embed", &json!({"inputs": []})).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error_type"], "Empty");
    let r = s
        .post_json("/embed", &json!({"inputs": "a", "normalize": "yes"}))
        .await;
    assert_eq!(r.status(), 422);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("'normalize'"), "{e}");
    assert_eq!(
        s.metric(invalid).await,
        before + 2.0,
        "empty inputs and a bad option count as INVALID"
    );
    let r = s
        .client
        .post(format!("{}/embed", s.url))
        .body(vec![b'"', 0xff, 0xfe, b'"'])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "not UTF-8 / not JSON");
    let info: Value = s.get("/info").await.json().await.unwrap();
    assert_eq!(info["max_input_length"], 256);
}

/// A text of megabytes is tokenized only as far as the limit needs: refused with the count of its
/// head ("at least"), and truncated to the same tokens (so the same embedding) as a text of its
/// first few hundred words.
#[tokio::test(flavor = "multi_thread")]
async fn a_huge_text_is_refused_or_cut_by_its_head() {
    let f = fixture();
    let s = TestServer::start(minilm_repo(&[])).await;
    let para = f.sentences.join(" ");
    let head: String = para.split(' ').take(600).collect::<Vec<_>>().join(" ");
    let mut huge = head.clone();
    while huge.len() < 6 << 20 {
        huge.push(' ');
        huge.push_str(&para);
    }
    let r = s.post_json("/embed", &json!({"inputs": huge})).await;
    assert_eq!(r.status(), 413);
    let e: Value = r.json().await.unwrap();
    let msg = e["error"].as_str().unwrap();
    assert!(msg.contains("at least") && msg.contains("256"), "{e}");
    let cut = embed(&s, json!({"inputs": huge, "truncate": true})).await;
    let short = embed(&s, json!({"inputs": head, "truncate": true})).await;
    let c = cosine(&cut[0], &short[0]);
    assert!(c >= 0.99999, "same 256 tokens, same embedding: cosine {c}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kserve_bytes_input_matches_tei_and_rejects_bad_utf8() {
    let f = fixture();
    let s = TestServer::start(minilm_repo(&[])).await;
    let body = json!({"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": &f.sentences[..3]}]});
    let v: Value = s
        .post_json("/v2/models/minilm/infer", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["outputs"][0]["shape"], json!([3, 384]));
    let flat: Vec<f32> = serde_json::from_value(v["outputs"][0]["data"].clone()).unwrap();
    for i in 0..3 {
        assert!(cosine(&flat[i * 384..(i + 1) * 384], &f.embeddings[i]) >= 0.999);
    }
    // Binary BYTES element that is not UTF-8.
    let header = json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]});
    let mut b = serde_json::to_vec(&header).unwrap();
    let n = b.len();
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&[0xff, 0xfe]);
    let r = s
        .client
        .post(format!("{}/v2/models/minilm/infer", s.url))
        .header("Inference-Header-Content-Length", n)
        .body(b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("UTF-8"));
}

#[tokio::test(flavor = "multi_thread")]
async fn many_texts_in_one_request_come_back_in_order_across_batches() {
    many_texts_in_order(&[]).await;
}

/// The same through a staging thread (prefetch depth 1): 25 queued batches, each staged while the
/// one before computes.
#[tokio::test(flavor = "multi_thread")]
async fn many_texts_in_order_across_batches_with_prefetch() {
    many_texts_in_order(&[(
        "architecture = \"bert\"",
        "architecture = \"bert\"\nprefetch = true",
    )])
    .await;
}

async fn many_texts_in_order(edits: &[(&str, &str)]) {
    let f = fixture();
    let mut edits = edits.to_vec();
    edits.push(("max_batch_size = 64", "max_batch_size = 4"));
    let s = TestServer::start(minilm_repo(&edits)).await;
    let texts: Vec<&String> = f.sentences.iter().cycle().take(100).collect();
    let all = embed(&s, json!({"inputs": texts})).await;
    assert_eq!(all.len(), 100);
    for (i, e) in all.iter().enumerate() {
        assert!(
            cosine(e, &f.embeddings[i % 64]) >= 0.999,
            "text {i} out of order"
        );
    }
    assert!(
        s.metric(r#"nv_inference_exec_count{model="minilm",version="1"}"#)
            .await
            >= 25.0
    );
}

/// The bundled MiniLM loaded straight into a `Bert` on the CPU, with its tokenizer.
fn bert_on_cpu() -> (ferrite::model::bert::Bert, tokenizers::Tokenizer) {
    let repo = minilm_repo(&[]);
    let dir = repo.path().join("minilm");
    let cfg = ferrite::spec::ModelConfig::load(&dir).unwrap();
    let device = candle_core::Device::Cpu;
    let bert = ferrite::model::bert::Bert::load(
        &ferrite::model::LoadOptions::from_config(&cfg),
        &dir.join("1"),
        &device,
    )
    .unwrap();
    let tok = tokenizers::Tokenizer::from_file(dir.join("1/tokenizer.json")).unwrap();
    (bert, tok)
}

#[test]
fn packed_cpu_path_equals_padded_path() {
    use candle_core::{Device, Tensor as CT};
    let f = fixture();
    let (bert, tok) = bert_on_cpu();
    let seqs: Vec<Vec<u32>> = [0usize, 5, 9]
        .iter()
        .map(|&i| {
            tok.encode(f.sentences[i].as_str(), true)
                .unwrap()
                .get_ids()
                .to_vec()
        })
        .collect();
    let l = seqs.iter().map(Vec::len).max().unwrap();
    let mut ids = vec![0u32; 3 * l];
    let mut mask = vec![0f32; 3 * l];
    for (r, s) in seqs.iter().enumerate() {
        for (j, &id) in s.iter().enumerate() {
            ids[r * l + j] = id;
            mask[r * l + j] = 1.0;
        }
    }
    let padded = bert
        .encode(
            &CT::from_vec(ids, (3, l), &Device::Cpu).unwrap(),
            &CT::from_vec(mask, (3, l), &Device::Cpu).unwrap(),
        )
        .unwrap();
    let views: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let packed = bert.encode_packed(&views).unwrap();
    let (p, q): (Vec<Vec<f32>>, Vec<Vec<f32>>) =
        (padded.to_vec2().unwrap(), packed.to_vec2().unwrap());
    for r in 0..3 {
        let c = cosine(&p[r], &q[r]);
        assert!(c >= 0.99999, "row {r}: padded vs packed cosine {c}");
    }
}

/// Every precision path this CPU runs embeds every fixture sentence at cosine >= 0.999 to
/// sentence-transformers and says which path it runs: f32, and bf16 with each hardware kernel the
/// CPU has (AMX, AVX512_BF16). The portable bf16 kernel (for CPUs without bf16 instructions) is
/// checked against its reference at the op level (`ops::bf16_matmul`'s tests); a whole model through
/// it in an unoptimised test build takes minutes.
#[test]
fn each_precision_path_matches_the_reference() {
    use ferrite::model::Model;
    use ferrite::ops::Bf16Kernel;
    use ferrite::quant::Path;
    let f = fixture();
    let repo = minilm_repo(&[]);
    let dir = repo.path().join("minilm");
    let base = ferrite::spec::ModelConfig::load(&dir).unwrap();
    // The server's tokenizer setup (unpadded) and truncation (max_seq_length 256).
    let tok = ferrite::preprocess::load_tokenizer(&dir.join("1/tokenizer.json")).unwrap();
    let seqs: Vec<Vec<u32>> = f
        .sentences
        .iter()
        .enumerate()
        .map(|(i, s)| ferrite::preprocess::encode_text(&tok, i, s, true, 256).unwrap())
        .collect();
    let views: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let mut paths = vec![(ferrite::spec::Precision::F32, None, Path::F32)];
    for k in [Bf16Kernel::Amx, Bf16Kernel::Avx512] {
        if k.available() {
            paths.push((ferrite::spec::Precision::Bf16, Some(k), Path::Bf16(k)));
        } else {
            eprintln!("bf16 kernel {}: SKIPPED, not on this CPU", k.as_str());
        }
    }
    for (precision, kernel, want) in paths {
        let mut cfg = base.clone();
        cfg.precision = precision;
        let mut opts = ferrite::model::LoadOptions::from_config(&cfg);
        opts.bf16_kernel = kernel;
        let bert =
            ferrite::model::bert::Bert::load(&opts, &dir.join("1"), &candle_core::Device::Cpu)
                .unwrap();
        assert_eq!(bert.precision(), want);
        let name = want.to_string();
        let all: Vec<Vec<f32>> = bert.encode_packed(&views).unwrap().to_vec2().unwrap();
        let mut worst = 1f64;
        for (i, (got, reference)) in all.iter().zip(&f.embeddings).enumerate() {
            let c = cosine(got, reference);
            assert!(c >= 0.999, "{name}: sentence {i}: cosine {c}");
            worst = worst.min(c);
        }
        eprintln!("{name}: min cosine {worst:.6}");
    }
}

/// A packed batch longer than one packing group (256 tokens) is cut into groups of whole sequences;
/// every row must equal that sentence encoded alone, in order.
#[test]
fn packed_batch_over_many_groups_equals_one_at_a_time() {
    let f = fixture();
    let (bert, tok) = bert_on_cpu();
    let seqs: Vec<Vec<u32>> = f
        .sentences
        .iter()
        .map(|s| tok.encode(s.as_str(), true).unwrap().get_ids().to_vec())
        .collect();
    let total: usize = seqs.iter().map(Vec::len).sum();
    assert!(
        total > 3 * 256,
        "the fixture spans several groups ({total} tokens)"
    );
    let views: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let all: Vec<Vec<f32>> = bert.encode_packed(&views).unwrap().to_vec2().unwrap();
    assert_eq!(all.len(), seqs.len());
    for (i, s) in views.iter().enumerate() {
        let alone: Vec<Vec<f32>> = bert.encode_packed(&[*s]).unwrap().to_vec2().unwrap();
        let c = cosine(&all[i], &alone[0]);
        assert!(c >= 0.99999, "sentence {i}: batch vs alone cosine {c}");
    }
}

/// A checkpoint whose config.json claims more token ids or positions than its embedding tables hold
/// fails to load (ids are checked against config.json, and a GPU gather has no bounds check).
#[test]
fn config_larger_than_the_embedding_tables_fails_to_load() {
    let repo = minilm_repo(&[]);
    let dir = repo.path().join("minilm");
    let cfg = ferrite::spec::ModelConfig::load(&dir).unwrap();
    let json = std::fs::read_to_string(dir.join("1/config.json")).unwrap();
    let mut v: Value = serde_json::from_str(&json).unwrap();
    let vocab = v["vocab_size"].as_u64().unwrap();
    let positions = v["max_position_embeddings"].as_u64().unwrap();
    for (key, value, want) in [
        ("vocab_size", vocab + 1, "word embedding table has"),
        (
            "max_position_embeddings",
            positions + 1,
            "position embedding table has",
        ),
    ] {
        let mut bad = v.clone();
        bad[key] = json!(value);
        std::fs::remove_file(dir.join("1/config.json")).unwrap();
        std::fs::write(dir.join("1/config.json"), bad.to_string()).unwrap();
        let err = ferrite::model::bert::Bert::load(
            &ferrite::model::LoadOptions::from_config(&cfg),
            &dir.join("1"),
            &candle_core::Device::Cpu,
        )
        .err()
        .unwrap_or_else(|| panic!("{key} = {value} must not load"))
        .to_string();
        assert!(err.contains(want), "{key}: {err}");
    }
    v["vocab_size"] = json!(vocab);
    std::fs::write(dir.join("1/config.json"), v.to_string()).unwrap();
    assert!(ferrite::model::bert::Bert::load(
        &ferrite::model::LoadOptions::from_config(&cfg),
        &dir.join("1"),
        &candle_core::Device::Cpu
    )
    .is_ok());
}

/// A build without the `cuda` feature has no GPU tests at all: under `FERRITE_REQUIRE_GPU=1` that
/// is a failure too (benches/gpu.sh runs the tests named `cuda_*`), not a run that checked nothing.
#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_tests_exist_when_a_gpu_is_required() {
    assert!(
        !gpu_required(),
        "FERRITE_REQUIRE_GPU=1 but this test binary was built without the cuda feature"
    );
}

/// On a GPU, MiniLM runs the padded path (ids and mask staged through pinned buffers, embeddings
/// gathered on the device); each row must match the CPU's packed path (cosine >= 0.9999), alone and
/// in a mixed-length batch, with plain candle ops and with the custom kernels (`cuda_fused_ops`).
/// q8 on the GPU: the int8 kernel (weights int8 on the device) against the weights dequantized at
/// load, same bar. Without a CUDA device it skips (and says so), or fails under
/// `FERRITE_REQUIRE_GPU=1` (what benches/gpu.sh sets).
#[cfg(feature = "cuda")]
#[test]
fn cuda_padded_path_matches_cpu_packed_path() {
    use ferrite::model::Model;
    use ferrite::tensor::{Tensor, TensorData};
    let device = match candle_core::Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            skip_gpu_test(
                "cuda_padded_path_matches_cpu_packed_path",
                &format!("no CUDA device ({e})"),
            );
            return;
        }
    };
    let f = fixture();
    let (cpu, tok) = bert_on_cpu();
    let seqs: Vec<Vec<u32>> = f
        .sentences
        .iter()
        .take(9)
        .map(|s| tok.encode(s.as_str(), true).unwrap().get_ids().to_vec())
        .collect();
    let jobs: Vec<Vec<Tensor>> = seqs
        .iter()
        .map(|s| {
            let ids = s.iter().map(|&v| i64::from(v)).collect();
            vec![Tensor::new(
                "input_ids",
                vec![1, s.len()],
                TensorData::I64(ids),
            )]
        })
        .collect();
    let views: Vec<&[Tensor]> = jobs.iter().map(Vec::as_slice).collect();
    // Each sentence's embedding on the GPU, (in the batch, alone), for a config edit.
    let on_gpu = |top: &str| -> Vec<(Vec<f32>, Vec<f32>)> {
        let edit = format!("architecture = \"bert\"\n{top}");
        let repo = minilm_repo(&[("architecture = \"bert\"", edit.as_str())]);
        let dir = repo.path().join("minilm");
        let cfg = ferrite::spec::ModelConfig::load(&dir).unwrap();
        let gpu = ferrite::model::bert::Bert::load(
            &ferrite::model::LoadOptions::from_config(&cfg),
            &dir.join("1"),
            &device,
        )
        .unwrap();
        let mut t = ferrite::model::StageTimings::default();
        let f32s = |out: &Tensor| match &out.data {
            TensorData::F32(v) => v.clone(),
            _ => panic!("FP32 output"),
        };
        let batch = gpu.forward(&views, &mut t).unwrap();
        (0..views.len())
            .map(|i| {
                let alone = gpu.forward(&views[i..i + 1], &mut t).unwrap();
                (f32s(&batch[i][0]), f32s(&alone[0][0]))
            })
            .collect()
    };
    let check = |what: &str, got: &[(Vec<f32>, Vec<f32>)], want: &dyn Fn(usize) -> Vec<f32>| {
        for (i, (in_batch, alone)) in got.iter().enumerate() {
            let w = want(i);
            for (how, v) in [("batch", in_batch), ("alone", alone)] {
                let c = cosine(v, &w);
                assert!(c >= 0.9999, "{what}: sentence {i} {how}: cosine {c}");
            }
        }
    };
    let cpu_row = |i: usize| -> Vec<f32> {
        let rows: Vec<Vec<f32>> = cpu
            .encode_packed(&[seqs[i].as_slice()])
            .unwrap()
            .to_vec2()
            .unwrap();
        rows[0].clone()
    };
    check("GPU candle ops vs CPU", &on_gpu(""), &cpu_row);
    check(
        "GPU fused ops vs CPU",
        &on_gpu("cuda_fused_ops = true"),
        &cpu_row,
    );
    let q8_dense = on_gpu("quantization = \"q8\"");
    check(
        "GPU q8 kernel vs GPU q8 dequantized at load",
        &on_gpu("quantization = \"q8\"\ncuda_fused_ops = true"),
        &|i| q8_dense[i].1.clone(),
    );
}
