//! The bundled digits model through the real server: accuracy on the committed held-out split is
//! the one its metadata states (>= 0.95), with the worker staging inline (the CPU default) and with
//! prefetch (a staging thread, as on GPUs).

mod common;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn digits_held_out_accuracy_matches_metadata() {
    held_out_accuracy(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn digits_held_out_accuracy_matches_metadata_with_prefetch() {
    held_out_accuracy(&[(
        "architecture = \"mlp\"",
        "architecture = \"mlp\"\nprefetch = true",
    )])
    .await;
}

async fn held_out_accuracy(edits: &[(&str, &str)]) {
    let split = candle_core::safetensors::load(
        repo_root().join("models/digits/test-split.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let pixels: Vec<f32> = split["pixels"].flatten_all().unwrap().to_vec1().unwrap();
    let labels: Vec<i64> = split["labels"].to_vec1().unwrap();
    assert_eq!(pixels.len(), labels.len() * 64);
    assert!(
        pixels
            .iter()
            .all(|&p| (0.0..=16.0).contains(&p) && p.fract() == 0.0),
        "raw 0..16 intensities"
    );

    let s = TestServer::start(Repo::new().with_digits(edits)).await;
    let mut correct = 0;
    for (chunk, labels) in pixels.chunks(60 * 64).zip(labels.chunks(60)) {
        let rows = labels.len();
        let r: Value = s
            .post_json(
                "/v2/models/digits/infer",
                &v2_request("pixels", rows, 64, chunk),
            )
            .await
            .json()
            .await
            .unwrap();
        let probs: Vec<f32> = serde_json::from_value(r["outputs"][0]["data"].clone()).unwrap();
        for (row, &label) in probs.chunks(10).zip(labels) {
            let argmax = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            correct += (argmax as i64 == label) as usize;
        }
    }
    let accuracy = correct as f64 / labels.len() as f64;
    let meta: Value = s.get("/v2/models/digits").await.json().await.unwrap();
    let stated = meta["parameters"]["metadata"]["test_accuracy"]
        .as_f64()
        .unwrap();
    assert!(accuracy >= 0.95, "accuracy {accuracy}");
    assert!(
        (accuracy - stated).abs() < 1e-3,
        "measured {accuracy}, metadata says {stated}"
    );
}
