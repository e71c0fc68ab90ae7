//! `ferrite batch` (the real binary, CPU): its outputs equal the online API's for the same inputs
//! (digits: |a - b| <= 1e-6, the tolerance between a row alone and in a batch in
//! `tests/batching.rs`; MiniLM: cosine >= 0.9999, the alone-vs-batch bound of
//! `tests/embeddings.rs`), the rejects file lists exactly the bad records planted in the input, and
//! a run killed with SIGKILL half-way and run again writes every id exactly once, resuming from its
//! checkpoint instead of starting over.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use arrow_array::{Array, FixedSizeListArray, Float32Array, StringArray};
use common::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

fn batch_cmd(repo: &Path, model: &str, input: &Path, output: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferrite"));
    c.args(["batch", "--gpus", "none", "--no-progress", "-m", model])
        .arg("--model-repository")
        .arg(repo)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output);
    c
}

fn run_ok(mut c: Command) -> String {
    let out = c.output().expect("ferrite batch runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "ferrite batch failed: {stderr}");
    stderr
}

/// The rejects file as record number -> reason.
fn rejects(output: &Path) -> BTreeMap<u64, String> {
    let text = std::fs::read_to_string(output.with_extension("rejects.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["record"].as_u64().unwrap(),
                v["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// 1,797 digit images (the 360 held-out rows, then seeded random pixels), as KServe v2 lines.
fn digit_rows(n: usize) -> Vec<Vec<f32>> {
    let split = candle_core::safetensors::load(
        repo_root().join("models/digits/test-split.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut pixels: Vec<f32> = split["pixels"].flatten_all().unwrap().to_vec1().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    if pixels.len() < n * 64 {
        let more = n - pixels.len() / 64;
        pixels.extend(random_pixels(&mut rng, more));
    }
    pixels.truncate(n * 64);
    pixels.chunks(64).map(<[f32]>::to_vec).collect()
}

fn v2_line(id: &str, row: &[f32]) -> String {
    json!({"id": id, "inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": row}]})
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_digits_equals_online_and_rejects_exactly_the_planted_rows() {
    let rows = digit_rows(1797);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("digits.jsonl");
    let mut f = std::fs::File::create(&input).unwrap();
    // Bad records planted at these record numbers (1-based), each a different fault.
    let bad: BTreeMap<u64, Vec<u8>> = [
        (3, b"".to_vec()),
        (250, b"{\"id\": \"bad-json\", \"inputs\": [".to_vec()),
        (
            777,
            v2_line("bad-shape", &[1.0; 63])
                .replace("[1,64]", "[1,63]")
                .into_bytes(),
        ),
        (1200, b"{\"id\": \"bad-utf8\", \"text\": \"\xff\xfe\"}".to_vec()),
        (1800, {
            let two: Vec<f32> = rows[0].iter().chain(&rows[1]).copied().collect();
            json!({"id": "two-rows", "inputs": [{"name": "pixels", "shape": [2, 64], "datatype": "FP32", "data": two}]})
                .to_string()
                .into_bytes()
        }),
    ]
    .into();
    let mut good = rows.iter().enumerate();
    for number in 1..=(rows.len() + bad.len()) as u64 {
        match bad.get(&number) {
            Some(line) => f.write_all(line).unwrap(),
            None => {
                let (i, row) = good.next().unwrap();
                f.write_all(v2_line(&format!("d{i}"), row).as_bytes())
                    .unwrap()
            }
        }
        f.write_all(b"\n").unwrap();
    }
    drop(f);

    let repo = Repo::new().with_digits(&[]);
    let output = dir.path().join("digits.jsonl.out.jsonl");
    let mut c = batch_cmd(repo.path(), "digits", &input, &output);
    c.args(["--part-records", "500"]);
    run_ok(c);

    let got = rejects(&output);
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        bad.keys().copied().collect::<Vec<_>>(),
        "exactly the planted records: {got:?}"
    );
    assert!(
        got[&777].contains("pixels"),
        "online message: {}",
        got[&777]
    );
    assert!(got[&1800].contains("2 rows"), "{}", got[&1800]);

    // Offline rows, by id.
    let text = std::fs::read_to_string(&output).unwrap();
    let offline: BTreeMap<String, Vec<f32>> = text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let probs = serde_json::from_value(v["outputs"]["probabilities"].clone()).unwrap();
            (v["id"].as_str().unwrap().to_string(), probs)
        })
        .collect();
    assert_eq!(offline.len(), rows.len(), "one line per good row");

    // The online API, in requests of 64 rows.
    let s = TestServer::start(repo).await;
    for (c, chunk) in rows.chunks(64).enumerate() {
        let flat: Vec<f32> = chunk.concat();
        let r: Value = s
            .post_json(
                "/v2/models/digits/infer",
                &v2_request("pixels", chunk.len(), 64, &flat),
            )
            .await
            .json()
            .await
            .unwrap();
        let probs: Vec<f32> = serde_json::from_value(r["outputs"][0]["data"].clone()).unwrap();
        for (k, online) in probs.chunks(10).enumerate() {
            let id = format!("d{}", c * 64 + k);
            for (a, b) in offline[&id].iter().zip(online) {
                assert!((a - b).abs() <= 1e-6, "{id}: offline {a} vs online {b}");
            }
        }
    }
}

/// Seeded sentences of 4 to 13 words.
fn sentences(n: usize) -> Vec<String> {
    const WORDS: &[&str] = &[
        "the",
        "server",
        "batches",
        "requests",
        "quickly",
        "while",
        "a",
        "model",
        "reads",
        "text",
        "embeddings",
        "search",
        "index",
        "corpus",
        "document",
        "fast",
        "slow",
        "river",
        "blue",
        "mountain",
        "learns",
        "from",
        "data",
        "and",
        "writes",
        "results",
        "to",
        "disk",
        "every",
        "night",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    (0..n)
        .map(|i| {
            let len = rng.random_range(3..=12);
            let mut s: Vec<&str> = (0..len)
                .map(|_| WORDS[rng.random_range(0..WORDS.len())])
                .collect();
            s.push(if i % 2 == 0 { "today" } else { "again" });
            s.join(" ")
        })
        .collect()
}

fn minilm_repo() -> Repo {
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
        repo.path().join("minilm/validation.jsonl"),
    )
    .unwrap();
    std::fs::copy(
        src.join("config.toml"),
        repo.path().join("minilm/config.toml"),
    )
    .unwrap();
    repo
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Reads a Parquet output: ids and embeddings (schema: id utf8, embedding fixed-size list of
/// float32 [384]).
fn read_parquet(path: &Path) -> Vec<(String, Vec<f32>)> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let emb = b
            .column(1)
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .unwrap();
        assert_eq!(emb.value_length(), 384);
        for r in 0..b.num_rows() {
            let v = emb.value(r);
            let v = v.as_any().downcast_ref::<Float32Array>().unwrap();
            out.push((ids.value(r).to_string(), v.values().to_vec()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_minilm_sentences_equal_online_embeddings_and_rejects_exactly_the_planted_rows() {
    let texts = sentences(5000);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("corpus.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    let long = "word ".repeat(400);
    let bad: BTreeMap<u64, Vec<u8>> = [
        (1, b"{\"id\": \"empty\", \"text\": \"   \"}".to_vec()),
        (
            1000,
            format!("{{\"id\": \"long\", \"text\": \"{long}\"}}").into_bytes(),
        ),
        (
            2500,
            b"{\"id\": \"latin1\", \"text\": \"caf\xe9\"}".to_vec(),
        ),
        (4000, b"{\"id\": \"no-text\", \"body\": \"x\"}".to_vec()),
        (5004, b"".to_vec()),
    ]
    .into();
    let mut good = texts.iter().enumerate();
    for number in 1..=(texts.len() + bad.len()) as u64 {
        match bad.get(&number) {
            Some(line) => f.write_all(line).unwrap(),
            None => {
                let (i, t) = good.next().unwrap();
                serde_json::to_writer(&mut f, &json!({"id": format!("s{i}"), "text": t})).unwrap();
            }
        }
        f.write_all(b"\n").unwrap();
    }
    drop(f);

    let repo = minilm_repo();
    let output = dir.path().join("embeddings.parquet");
    let mut c = batch_cmd(repo.path(), "minilm", &input, &output);
    c.args(["--no-truncate", "--part-records", "2000"]);
    run_ok(c);

    let got = rejects(&output);
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        bad.keys().copied().collect::<Vec<_>>(),
        "exactly the planted records: {got:?}"
    );
    assert!(got[&1000].contains("tokens"), "{}", got[&1000]);
    let offline = read_parquet(&output);
    assert_eq!(offline.len(), texts.len());

    let s = TestServer::start(repo).await;
    let by_id: BTreeMap<&str, &Vec<f32>> = offline.iter().map(|(i, v)| (i.as_str(), v)).collect();
    for (c, chunk) in texts.chunks(128).enumerate() {
        let r = s.post_json("/embed", &json!({"inputs": chunk})).await;
        assert_eq!(r.status(), 200);
        let online: Vec<Vec<f32>> = r.json().await.unwrap();
        for (k, e) in online.iter().enumerate() {
            let id = format!("s{}", c * 128 + k);
            let cos = cosine(by_id[id.as_str()], e);
            assert!(cos >= 0.9999, "{id}: offline vs online cosine {cos}");
        }
    }
}

/// Reads `<output>.ids.jsonl` (the `.npy` sidecar).
fn npy_ids(output: &Path) -> Vec<String> {
    std::fs::read_to_string(output.with_extension("ids.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The committed records of a `part committed` log line (`records=N`).
fn committed_records(line: &str) -> Option<u64> {
    let at = line.find("records=")? + "records=".len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[test]
fn batch_killed_half_way_resumes_and_writes_every_id_once() {
    let n = 20_000usize;
    let rows = digit_rows(360);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    for i in 0..n {
        writeln!(f, "{}", v2_line(&format!("id{i}"), &rows[i % rows.len()])).unwrap();
    }
    drop(f);
    let repo = Repo::new().with_digits(&[]);
    let output: PathBuf = dir.path().join("probs.npy");

    // First run: killed (SIGKILL) half-way, as soon as half the records are committed.
    let mut c = batch_cmd(repo.path(), "digits", &input, &output);
    c.args(["--part-records", "1000"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    let mut child = c.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("the run ended before half was committed: {seen:?}"))
            .unwrap();
        let half_way = line.contains("part committed")
            && committed_records(&line).is_some_and(|r| r >= n as u64 / 2);
        seen.push(line);
        if half_way {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !output.exists(),
        "killed before the end: nothing merged yet"
    );
    let ckpt: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("probs.npy.parts/checkpoint.json")).unwrap(),
    )
    .unwrap();
    let committed = ckpt["parts"].as_array().unwrap().len();
    assert!(
        committed >= n / 2000 && committed < n / 1000,
        "{committed} parts of 1000"
    );

    // Second run: resumes from the checkpoint and finishes.
    let mut c = batch_cmd(repo.path(), "digits", &input, &output);
    c.args(["--part-records", "1000"]).env("RUST_LOG", "info");
    let stderr = run_ok(c);
    assert!(
        stderr.contains("resuming from the checkpoint"),
        "the rerun resumed: {stderr}"
    );
    assert!(
        stderr.contains(&format!("{} records resumed", committed * 1000)),
        "the committed half was not recomputed: {stderr}"
    );
    let ids = npy_ids(&output);
    assert_eq!(ids.len(), n);
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), n, "every id exactly once");
    let want: Vec<String> = (0..n).map(|i| format!("id{i}")).collect();
    assert_eq!(ids, want, "in input order");
    let bytes = std::fs::read(&output).unwrap();
    assert_eq!(bytes.len() % 64, 0, "header and data");
    let header = String::from_utf8_lossy(&bytes[..192]);
    assert!(header.contains(&format!("'shape': ({n}, 10)")), "{header}");
    assert_eq!(bytes.len(), 192 + n * 10 * 4);
    assert!(
        !dir.path().join("probs.npy.parts").exists(),
        "parts removed"
    );
    assert!(rejects(&output).is_empty());
}

#[test]
fn batch_refuses_a_checkpoint_of_another_job_and_restart_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "a\nb\n").unwrap();
    let parts = dir.path().join("out.jsonl.parts");
    std::fs::create_dir_all(&parts).unwrap();
    std::fs::write(
        parts.join("checkpoint.json"),
        r#"{"identity": {"input_len": 1, "input_modified_ns": 0, "model": "digits", "version": 1,
            "input": {"format": "text", "id_field": "id", "text_field": "text", "max_record_bytes": 10},
            "output": "jsonl", "part_records": 1, "truncate": true}, "parts": []}"#,
    )
    .unwrap();
    let repo = Repo::new().with_digits(&[]);
    let output = dir.path().join("out.jsonl");
    let out = batch_cmd(repo.path(), "digits", &input, &output)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("takes tensors"),
        "text input for digits: {err}"
    );
    let mut c = batch_cmd(repo.path(), "digits", &input, &output);
    c.args(["--input-format", "jsonl"]);
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--restart"),
        "a different job's checkpoint: {err}"
    );
    let mut c = batch_cmd(repo.path(), "digits", &input, &output);
    c.args(["--input-format", "jsonl", "--restart"]);
    run_ok(c);
    // Plain text lines are not JSON: both rejected, with the reason.
    let got = rejects(&output);
    assert_eq!(got.len(), 2);
    assert!(got[&1].starts_with("not a JSON object"), "{}", got[&1]);
}
