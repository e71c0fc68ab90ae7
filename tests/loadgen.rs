//! `ferrite bench` against a server with a known service time: the `debug` model sleeping 40 ms per
//! batch, max batch size 1, one instance. Queueing theory then says exactly what the bench must
//! measure: closed loop at concurrency N gives 25 req/s and N x 40 ms latency; an open loop at
//! 12 req/s with evenly spaced arrivals (never two requests in the system) gives 12 req/s and 40 ms.
//! 40 ms keeps HTTP and scheduling overhead (~1 ms in a debug build on a busy machine) small.
//! The bench must agree within 10%.

mod common;

use clap::Parser;
use common::{Repo, TestServer};
use ferrite::loadgen::args::BenchArgs;
use ferrite::loadgen::bench::{prepare, sweep};
use ferrite::loadgen::runner::StepResult;

const SERVICE_MS: f64 = 40.0;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn args(server: &TestServer, max_windows: &str, load: &[&str]) -> BenchArgs {
    let base = [
        "bench",
        "-u",
        &server.url,
        "--metrics-url",
        &server.metrics_url,
        "-m",
        "sleepy",
        "--warmup-ms",
        "300",
        "--measurement-interval-ms",
        "1000",
        "--max-windows",
        max_windows,
        "--client-threads",
        "1",
    ];
    Cli::parse_from(base.iter().chain(load)).bench
}

async fn sleepy_server() -> TestServer {
    let extra = format!(
        "[parameters]\nsleep_us = {}\n",
        (SERVICE_MS * 1000.0) as u64
    );
    TestServer::start(Repo::new().with_debug("sleepy", 1, &extra)).await
}

fn assert_near(what: &str, got: f64, want: f64) {
    let err = (got - want).abs() / want;
    assert!(
        err <= 0.10,
        "{what}: measured {got:.2}, theory {want:.2} ({:.1}% off)",
        err * 100.0
    );
}

fn check(s: &StepResult, tput: f64, latency_ms: f64) {
    assert!(s.errors.is_empty(), "errors: {:?}", s.errors);
    assert_near("throughput req/s", s.throughput, tput);
    assert_near("p50 latency ms", s.latency.p50_us / 1000.0, latency_ms);
    assert_near("mean latency ms", s.latency.mean_us / 1000.0, latency_ms);
    let srv = s.server.expect("server split scraped");
    assert_near(
        "server compute infer ms",
        srv.compute_infer_us / 1000.0,
        SERVICE_MS,
    );
}

/// The two tests measure time against theory: run them one at a time, not competing for 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_closed_loop_known_service_time_matches_theory() {
    let _one_at_a_time = SERIAL.lock().await;
    let server = sleepy_server().await;
    let a = args(
        &server,
        "4",
        &["--concurrency-range", "1:4:3", "--csv", "/dev/null"],
    );
    let target = prepare(&a).await.unwrap();
    let steps = sweep(&target, &a, None).await.unwrap();
    assert_eq!(steps.len(), 2);
    // concurrency 1: one request at a time, each takes the service time
    check(&steps[0], 1000.0 / SERVICE_MS, SERVICE_MS);
    // concurrency 4: the server still finishes one per service time; each waits for the other 3
    check(&steps[1], 1000.0 / SERVICE_MS, 4.0 * SERVICE_MS);
    let queue_ms = steps[1].server.unwrap().queue_us / 1000.0;
    assert_near(
        "server queue ms at concurrency 4",
        queue_ms,
        3.0 * SERVICE_MS,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_open_loop_half_load_matches_theory_and_overload_shows_queueing() {
    let _one_at_a_time = SERIAL.lock().await;
    let server = sleepy_server().await;
    // 12 req/s, evenly spaced, at 40 ms each: utilisation 0.48 and no request ever waits
    let a = args(&server, "4", &["--request-rate-range", "12"]);
    let target = prepare(&a).await.unwrap();
    let steps = sweep(&target, &a, None).await.unwrap();
    check(&steps[0], 12.0, SERVICE_MS);
    // late sends count in the latency above; on a busy 2-core machine one preempted send can be a
    // few ms late, and p99 of ~40 sends is their maximum: bound it well under the service time
    assert!(
        steps[0].send_lag_p99_us.unwrap() < 0.5 * SERVICE_MS * 1000.0,
        "sends left on time: lag p99 {:?} us",
        steps[0].send_lag_p99_us
    );
    // 50 req/s against a 25 req/s server: latency from the scheduled time grows with the backlog
    // (a closed-loop client would hide it); the bench must say it fell behind
    let a = args(&server, "2", &["--request-rate-range", "50"]);
    let steps = sweep(&target, &a, None).await.unwrap();
    assert_near(
        "overloaded throughput",
        steps[0].throughput,
        1000.0 / SERVICE_MS,
    );
    assert!(
        steps[0].latency.p99_us > 10.0 * SERVICE_MS * 1000.0,
        "{:?}",
        steps[0].latency
    );
    assert!(
        steps[0].warnings.iter().any(|w| w.contains("fell behind")),
        "{:?}",
        steps[0].warnings
    );
}
