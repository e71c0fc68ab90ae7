//! The HTTP jobs API on a real server: a job uploaded as JSON lines runs on the job lane while
//! `ferrite bench` drives online traffic (online p99 within 20% of the same load without a job, or
//! 2 ms where 20% is less: the timer resolution of a debug build on a shared machine), finishes with
//! the right rows, and a cancel stops a job within one second; input paths stay inside the jobs
//! input folder; uploads have their own limit; jobs belong to their owner; a job survives a
//! restart and resumes from its checkpoint; a finished job is deleted after its retention; the job
//! metrics (`ferrite_jobs`, `ferrite_job_*`) are read back from `/metrics`.
//!
//! The online/job model is `debug` (echo) sleeping 20 ms per batch, two instances: a known service
//! time that does not compete for the CPU with the rest of the machine.

mod common;

use std::time::{Duration, Instant};

use clap::Parser;
use common::*;
use ferrite::auth::{sha256_hex, AuthConfig};
use ferrite::loadgen::args::BenchArgs;
use ferrite::loadgen::bench::{prepare, sweep};
use serde_json::{json, Value};

const SERVICE_MS: u64 = 20;

fn sleepy_repo() -> Repo {
    let extra = format!(
        "[parameters]\nsleep_us = {}\n[[instance_group]]\ncount = 2\nkind = \"auto\"\n",
        SERVICE_MS * 1000
    );
    Repo::new().with_debug("sleepy", 32, &extra)
}

/// JSON lines of `n` KServe v2 rows for the debug model's input `x` [1, 4]: row i is [i, i, i, i].
fn rows(n: usize, from: usize) -> String {
    let mut s = String::new();
    for i in from..from + n {
        let v = i as f32;
        s.push_str(
            &json!({"id": format!("r{i}"), "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [v, v, v, v]}]})
                .to_string(),
        );
        s.push('\n');
    }
    s
}

async fn start(
    repo: Repo,
    state: &std::path::Path,
    edit: impl FnOnce(&mut ferrite::config::Settings),
) -> TestServer {
    let state = state.to_path_buf();
    TestServer::start_with(repo, move |s| {
        s.jobs.state_dir = Some(state);
        edit(s);
    })
    .await
}

async fn create(
    s: &TestServer,
    model: &str,
    query: &str,
    body: String,
    key: Option<&str>,
) -> reqwest::Response {
    let mut r = s
        .client
        .post(format!("{}/v2/models/{model}/jobs{query}", s.url))
        .header("content-type", "application/x-ndjson")
        .body(body);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    r.send().await.unwrap()
}

async fn job(s: &TestServer, id: &str, key: Option<&str>) -> (u16, Value) {
    let mut r = s.client.get(format!("{}/v2/jobs/{id}", s.url));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Polls the job's state until `done` holds (the API is asynchronous: polling is how a client
/// learns); panics after `within`.
async fn wait_for(
    s: &TestServer,
    id: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let until = Instant::now() + within;
    loop {
        let (status, v) = job(s, id, None).await;
        assert_eq!(status, 200, "{v}");
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < until,
            "job did not get there in {within:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

/// `ferrite bench` at 20 requests/s of one row (evenly spaced: 50 ms apart, 20 ms each): its p99.
async fn online_p99_ms(s: &TestServer) -> f64 {
    let a = Cli::parse_from([
        "bench",
        "-u",
        &s.url,
        "--metrics-url",
        &s.metrics_url,
        "-m",
        "sleepy",
        "--warmup-ms",
        "300",
        "--measurement-interval-ms",
        "2000",
        "--max-windows",
        "3",
        "--client-threads",
        "1",
        "--request-rate-range",
        "20",
    ])
    .bench;
    let target = prepare(&a).await.unwrap();
    let steps = sweep(&target, &a, None).await.unwrap();
    assert!(steps[0].errors.is_empty(), "{:?}", steps[0].errors);
    steps[0].latency.p99_us / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_under_bench_load_keeps_online_p99_finishes_and_cancel_stops_within_a_second() {
    let state = tempfile::tempdir().unwrap();
    let s = start(sleepy_repo(), state.path(), |_| {}).await;
    let base = online_p99_ms(&s).await;

    // A long job: 200,000 rows would take minutes on the capped share; it runs during the bench.
    let r = create(&s, "sleepy", "", rows(200_000, 0), None).await;
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let long: Value = r.json().await.unwrap();
    let long_id = long["id"].as_str().unwrap().to_string();
    assert_eq!(loc, format!("/v2/jobs/{long_id}"));
    wait_for(&s, &long_id, Duration::from_secs(30), |v| {
        v["records_done"].as_u64().unwrap() > 0
    })
    .await;
    let with_job = online_p99_ms(&s).await;
    let (_, during) = job(&s, &long_id, None).await;
    assert_eq!(during["state"], "running", "{during}");
    assert!(during["rate"].as_f64().unwrap() > 0.0, "{during}");
    let bound = (base * 1.2).max(base + 2.0);
    assert!(
        with_job <= bound,
        "online p99 {with_job:.1} ms with a job running vs {base:.1} ms without (bound {bound:.1} ms)"
    );
    eprintln!("online p99: {base:.2} ms without a job, {with_job:.2} ms with one");

    // Cancel: answered once the job has stopped, within a second; its queued rows are dropped.
    let t = Instant::now();
    let r = s
        .client
        .delete(format!("{}/v2/jobs/{long_id}", s.url))
        .send()
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["state"], "canceled", "{v}");
    assert!(
        took < Duration::from_secs(1),
        "cancel answered after {took:?}"
    );
    // Its queued rows are dropped (by the next pull, after the batch running now): within the
    // same second.
    let pending = "nv_inference_pending_request_count{model=\"sleepy\",version=\"1\"}";
    while s.metric(pending).await != 0.0 {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "job rows still queued after {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, after) = job(&s, &long_id, None).await;
    assert_eq!(
        after["records_done"], v["records_done"],
        "no progress after the cancel"
    );
    let r = s.get(&format!("/v2/jobs/{long_id}/result")).await;
    assert_eq!(r.status(), 409, "no result for a canceled job");

    // A job that finishes while online traffic runs, with every row echoed, in order.
    let r = create(&s, "sleepy", "", rows(3000, 0), None).await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (p99, done) = tokio::join!(
        online_p99_ms(&s),
        wait_for(&s, &id, Duration::from_secs(60), |v| v["state"]
            == "succeeded")
    );
    assert!(
        p99 <= bound,
        "online p99 {p99:.1} ms while a job finished (bound {bound:.1})"
    );
    assert_eq!(done["rows_done"], 3000);
    assert_eq!(done["rows_failed"], 0);
    let r = s.get(&format!("/v2/jobs/{id}/result")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3000);
    for (i, l) in lines.iter().enumerate() {
        let v = i as f64;
        assert_eq!(
            l,
            &json!({"id": format!("r{i}"), "outputs": {"y": [v, v, v, v]}})
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_rows_go_to_the_rejects_and_limits_and_paths_are_enforced() {
    let state = tempfile::tempdir().unwrap();
    let inputs = tempfile::tempdir().unwrap();
    std::fs::write(inputs.path().join("in.jsonl"), rows(10, 0)).unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.jsonl"), rows(1, 0)).unwrap();
    let input_dir = inputs.path().to_path_buf();
    let s = start(sleepy_repo(), state.path(), move |c| {
        c.jobs.input_dir = Some(input_dir);
        c.jobs.max_upload_bytes = 4096;
    })
    .await;

    // Planted bad rows: wrong shape (the online door's 400 message), not JSON, empty line.
    let mut body = rows(3, 0);
    body.push_str("{\"id\": \"bad\", \"inputs\": [{\"name\": \"x\", \"shape\": [1, 3], \"datatype\": \"FP32\", \"data\": [1, 2, 3]}]}\n");
    body.push_str("nope\n\n");
    body.push_str(&rows(2, 3));
    let r = create(&s, "sleepy", "", body, None).await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = wait_for(&s, &id, Duration::from_secs(30), |v| {
        v["state"] == "succeeded"
    })
    .await;
    assert_eq!(
        (done["rows_done"].as_u64(), done["rows_failed"].as_u64()),
        (Some(5), Some(3))
    );
    let rej = s
        .get(&format!("/v2/jobs/{id}/rejects"))
        .await
        .text()
        .await
        .unwrap();
    let records: Vec<u64> = rej
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["record"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(records, [4, 5, 6]);
    assert!(rej.contains("\"id\":\"bad\""), "{rej}");
    // The job metrics, read back from /metrics (a missing series fails: `metric` panics).
    let mv = "model=\"sleepy\",version=\"1\"";
    assert_eq!(
        s.metric(&format!("ferrite_job_rows_total{{{mv}}}")).await,
        5.0
    );
    let rejected = |reason: &str| {
        format!(
            "ferrite_job_rows_rejected_total{{model=\"sleepy\",reason=\"{reason}\",version=\"1\"}}"
        )
    };
    assert_eq!(s.metric(&rejected("invalid")).await, 1.0, "the wrong shape");
    assert_eq!(
        s.metric(&rejected("malformed")).await,
        2.0,
        "not JSON, empty"
    );
    assert_eq!(s.metric(&rejected("backend")).await, 0.0);
    let batches = s
        .metric(&format!("ferrite_job_batches_total{{{mv}}}"))
        .await;
    assert!(
        (1.0..=5.0).contains(&batches),
        "5 rows in 1 to 5 batches: {batches}"
    );
    let jobs = |state: &str| format!("ferrite_jobs{{model=\"sleepy\",state=\"{state}\"}}");
    assert_eq!(s.metric(&jobs("succeeded")).await, 1.0);
    assert_eq!(s.metric(&jobs("running")).await, 0.0);

    // Uploads have their own limit (not --max-body-bytes).
    let r = create(&s, "sleepy", "", rows(100, 0), None).await;
    assert_eq!(r.status(), 413);
    // Path inputs: inside the folder only.
    for bad in ["../secret.jsonl", "/etc/passwd", "missing.jsonl"] {
        let q = format!("?input_path={}", bad.replace('/', "%2F"));
        let r = create(&s, "sleepy", &q, String::new(), None).await;
        assert_eq!(r.status(), 400, "{bad}");
    }
    let link = inputs.path().join("link.jsonl");
    std::os::unix::fs::symlink(outside.path().join("secret.jsonl"), &link).unwrap();
    let r = create(&s, "sleepy", "?input_path=link.jsonl", String::new(), None).await;
    assert_eq!(r.status(), 400, "a symbolic link out of the folder");
    let r = create(&s, "sleepy", "?input_path=in.jsonl", String::new(), None).await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = wait_for(&s, &id, Duration::from_secs(30), |v| {
        v["state"] == "succeeded"
    })
    .await;
    assert_eq!(done["rows_done"], 10);
    assert_eq!(
        s.metric(&format!("ferrite_job_rows_total{{{mv}}}")).await,
        15.0
    );
    assert_eq!(s.metric(&jobs("succeeded")).await, 2.0);
    assert_eq!(create(&s, "nope", "", rows(1, 0), None).await.status(), 404);
    assert_eq!(s.get("/v2/jobs/not-a-job").await.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn finished_job_is_deleted_after_its_retention() {
    let state = tempfile::tempdir().unwrap();
    let s = start(sleepy_repo(), state.path(), |c| {
        c.jobs.retention = Duration::from_secs(1);
    })
    .await;
    let r = create(&s, "sleepy", "", rows(3, 0), None).await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for(&s, &id, Duration::from_secs(30), |v| {
        v["state"] == "succeeded"
    })
    .await;
    assert_eq!(s.get(&format!("/v2/jobs/{id}/result")).await.status(), 200);
    assert!(state.path().join(&id).is_dir());
    // Gone (404, its folder deleted) once a second has passed since it finished: the sweep runs
    // every second at this retention, so within a few.
    let until = Instant::now() + Duration::from_secs(10);
    while s.get(&format!("/v2/jobs/{id}")).await.status() != 404 {
        assert!(
            Instant::now() < until,
            "job still there after its retention"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!state.path().join(&id).exists(), "its folder is deleted");
    assert_eq!(s.get(&format!("/v2/jobs/{id}/result")).await.status(), 404);
    let succeeded = "ferrite_jobs{model=\"sleepy\",state=\"succeeded\"}";
    assert_eq!(s.metric(succeeded).await, 0.0, "no longer counted");
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_off_without_a_state_dir() {
    let s = TestServer::start(sleepy_repo()).await;
    assert_eq!(
        create(&s, "sleepy", "", rows(1, 0), None).await.status(),
        403
    );
}

const ALICE: &str = "key-alice-jobs";
const BOB: &str = "key-bob-jobs";
const READER: &str = "key-reader-infer-only";

fn auth() -> AuthConfig {
    toml::from_str(&format!(
        "[[api_keys]]\nname = \"alice\"\nsha256 = \"{}\"\nscopes = [\"jobs\"]\n\
         [[api_keys]]\nname = \"bob\"\nsha256 = \"{}\"\nscopes = [\"jobs\"]\n\
         [[api_keys]]\nname = \"reader\"\nsha256 = \"{}\"\nscopes = [\"infer\"]\n",
        sha256_hex(ALICE),
        sha256_hex(BOB),
        sha256_hex(READER)
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_need_the_jobs_scope_and_belong_to_their_owner() {
    let state = tempfile::tempdir().unwrap();
    let s = start(sleepy_repo(), state.path(), |c| c.auth = Some(auth())).await;
    assert_eq!(
        create(&s, "sleepy", "", rows(5, 0), None).await.status(),
        401
    );
    assert_eq!(
        create(&s, "sleepy", "", rows(5, 0), Some(READER))
            .await
            .status(),
        403
    );
    let r = create(&s, "sleepy", "", rows(5, 0), Some(ALICE)).await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let get = |key: &'static str, path: String| {
        let c = s.client.clone();
        let url = format!("{}{path}", s.url);
        async move {
            c.get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(get(BOB, format!("/v2/jobs/{id}")).await, 404, "not bob's");
    assert_eq!(get(BOB, format!("/v2/jobs/{id}/result")).await, 404);
    let del = s
        .client
        .delete(format!("{}/v2/jobs/{id}", s.url))
        .bearer_auth(BOB)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 404, "bob cannot cancel it");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let r = s
            .client
            .get(format!("{}/v2/jobs/{id}", s.url))
            .bearer_auth(ALICE)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        if r.json::<Value>().await.unwrap()["state"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < until);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(ALICE, format!("/v2/jobs/{id}/result")).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn unfinished_job_resumes_after_a_restart_with_every_row_once() {
    let state = tempfile::tempdir().unwrap();
    let n = 60_000;
    // One instance, 32 rows per 5 ms batch: ~6,400 rows/s, so the job is mid-way at the restart.
    let make_repo = || {
        let extra = "[parameters]\nsleep_us = 5000\n";
        Repo::new().with_debug("sleepy", 32, extra)
    };
    let s = start(make_repo(), state.path(), |_| {}).await;
    let r = create(&s, "sleepy", "", rows(n, 0), None).await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // At least one part (10,000 records) committed.
    wait_for(&s, &id, Duration::from_secs(60), |v| {
        v["records_done"].as_u64().unwrap() > 10_000
    })
    .await;
    s.server.shutdown().await;
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(state.path().join(&id).join("job.json")).unwrap())
            .unwrap();
    assert_eq!(
        on_disk["state"], "queued",
        "paused for the restart: {on_disk}"
    );

    let s = start(make_repo(), state.path(), |_| {}).await;
    let done = wait_for(&s, &id, Duration::from_secs(120), |v| {
        v["state"] == "succeeded"
    })
    .await;
    assert_eq!(done["rows_done"], n);
    let text = s
        .get(&format!("/v2/jobs/{id}/result"))
        .await
        .text()
        .await
        .unwrap();
    let ids: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let want: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
    assert_eq!(ids, want, "every id once, in order");
}
