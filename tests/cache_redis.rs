//! The response cache with real parts: a real `redis-server` (Debian's package; started here on a
//! free port with its data folder in a temporary directory) shared by two Ferrite servers, its
//! per-entry TTL, a new version missing, Redis killed (`kill -9`) in the middle of a 20 s
//! `ferrite bench` run (no client errors, counted backend errors) and restarted (hits come back),
//! a stalled Redis (`DEBUG SLEEP`) costing each request at most its timeout, `rediss://` with a
//! password and a private CA, and a real `ferrite serve` process whose RSS stays within the in-process budget when filled far
//! past it. Without `redis-server` the Redis tests say SKIPPED, and fail when `CI` is set
//! (scripts/test.sh installs it).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use common::{Repo, TestServer};
use ferrite::loadgen::args::BenchArgs;
use ferrite::loadgen::bench::{prepare, sweep};
use serde_json::json;

/// A `redis-server` child on 127.0.0.1:`port`, its data in a temporary folder; killed on drop.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One command in RESP, its reply's first line (enough for PING, DBSIZE, PTTL, KEYS count).
fn redis_cmd(port: u16, args: &[&str]) -> std::io::Result<String> {
    redis_cmd_within(port, args, Duration::from_secs(2))
}

fn redis_cmd_within(port: u16, args: &[&str], timeout: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(timeout))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req += &format!("${}\r\n{a}\r\n", a.len());
    }
    s.write_all(req.as_bytes())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

impl Redis {
    /// None (after printing SKIPPED) when redis-server is not installed and CI is not set.
    fn start(test: &str) -> Option<Redis> {
        let have = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !have {
            assert!(
                !common::tools_required(),
                "{test}: redis-server is not installed, and CI requires it (scripts/test.sh installs it)"
            );
            eprintln!("{test}: SKIPPED, redis-server is not installed (with CI set this fails)");
            return None;
        }
        Some(Redis::start_on(free_port()))
    }

    fn start_on(port: u16) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // DEBUG SLEEP: a Redis that stalls (the slow-Redis test).
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let r = Redis {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis_cmd(port, &["PING"]).ok().as_deref() != Some("+PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server never answered PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill9(&mut self) {
        let ok = Command::new("kill")
            .args(["-9", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let _ = self.child.wait();
    }

    fn int(&self, args: &[&str]) -> i64 {
        let r = redis_cmd(self.port, args).unwrap();
        r.strip_prefix(':')
            .unwrap_or_else(|| panic!("{args:?}: {r}"))
            .parse()
            .unwrap()
    }

    /// Polls (every 10 ms, 10 s deadline) until DBSIZE is at least `n`.
    fn wait_keys(&self, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.int(&["DBSIZE"]) < n {
            assert!(Instant::now() < deadline, "Redis never held {n} keys");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// digits with the Redis level only (`max_bytes = 0`), so that every hit is Redis's.
fn redis_only(ttl: u64) -> String {
    format!("[response_cache]\nenable = true\nttl_secs = {ttl}\nmax_bytes = 0\n")
}

fn digits(cache: &str) -> Repo {
    Repo::new().with_digits(&[("[metadata]", &format!("{cache}\n[metadata]"))])
}

async fn start(repo: Repo, redis: &Redis) -> TestServer {
    let url = redis.url();
    TestServer::start_with(repo, move |s| {
        s.cache_redis = Some(ferrite::config::RedisSettings {
            url,
            timeout: Duration::from_millis(ferrite::config::DEFAULT_CACHE_REDIS_TIMEOUT_MS),
            ca: None,
        })
    })
    .await
}

fn pixels(seed: f32) -> serde_json::Value {
    let data: Vec<f32> = (0..64)
        .map(|i| ((i as f32 + seed) % 17.0).floor())
        .collect();
    common::v2_request("pixels", 1, 64, &data)
}

async fn infer(s: &TestServer, model: &str, body: &serde_json::Value) -> (Option<String>, String) {
    let r = s
        .post_json(&format!("/v2/models/{model}/infer"), body)
        .await;
    assert_eq!(r.status(), 200);
    let st = r
        .headers()
        .get("x-ferrite-cache")
        .map(|v| v.to_str().unwrap().to_string());
    (st, r.text().await.unwrap())
}

/// Polls until the server's Redis connection is up: a request that fills, then DBSIZE grows.
async fn wait_connected(s: &TestServer, redis: &Redis, model: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 1000.0;
    loop {
        let before = redis.int(&["DBSIZE"]);
        infer(s, model, &pixels(i)).await;
        i += 1.0;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(200) {
            if redis.int(&["DBSIZE"]) > before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(Instant::now() < deadline, "the server never filled Redis");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_servers_share_redis_entries_with_ttl_and_versions_apart() {
    let Some(redis) = Redis::start("two_servers_share_redis_entries") else {
        return;
    };
    let a = start(digits(&redis_only(600)), &redis).await;
    let repo_b = digits(&redis_only(600)).copy_digits(
        "short",
        &[("[metadata]", &format!("{}\n[metadata]", redis_only(1)))],
    );
    let b_dir = repo_b.path().join("digits");
    let b = start(repo_b, &redis).await;
    wait_connected(&a, &redis, "digits").await;
    wait_connected(&b, &redis, "digits").await;

    let body = pixels(0.0);
    let keys = redis.int(&["DBSIZE"]);
    let (st, from_a) = infer(&a, "digits", &body).await;
    assert_eq!(st.as_deref(), Some("miss"));
    redis.wait_keys(keys + 1);
    let (st, from_b) = infer(&b, "digits", &body).await;
    assert_eq!(st.as_deref(), Some("hit"), "B reads the entry A filled");
    assert_eq!(from_a, from_b);

    // TTL per entry: ttl_secs = 600 in Redis's own terms.
    let script = "local m = 0 for _, k in ipairs(redis.call('KEYS', 'ferrite:*')) do \
                  m = math.max(m, redis.call('PTTL', k)) end return m";
    let max_pttl = redis.int(&["EVAL", script, "0"]);
    assert!(max_pttl > 590_000 && max_pttl <= 600_000, "PTTL {max_pttl}");

    // ttl_secs = 1: the entry is gone from Redis after a second (poll, 10 s deadline).
    let keys = redis.int(&["DBSIZE"]);
    let t0 = Instant::now();
    assert_eq!(infer(&b, "short", &body).await.0.as_deref(), Some("miss"));
    // The entry is written to Redis after the answer: until it lands, a request is a miss too.
    redis.wait_keys(keys + 1);
    let deadline = t0 + Duration::from_secs(10);
    loop {
        let (st, _) = infer(&b, "short", &body).await;
        if st.as_deref() == Some("miss") {
            assert!(
                t0.elapsed() >= Duration::from_millis(900),
                "{:?}",
                t0.elapsed()
            );
            break;
        }
        assert!(Instant::now() < deadline, "the 1 s entry never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A new version on B never reads version 1's entries, in Redis either.
    std::fs::create_dir_all(b_dir.join("2")).unwrap();
    std::fs::copy(
        b_dir.join("1/model.safetensors"),
        b_dir.join("2/model.safetensors"),
    )
    .unwrap();
    let r = b
        .post_json("/v2/repository/models/digits/load", &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let (st, from_v2) = infer(&b, "digits", &body).await;
    assert_eq!(st.as_deref(), Some("miss"));
    assert!(from_v2.contains("\"model_version\":\"2\""), "{from_v2}");
    assert_eq!(
        infer(&a, "digits", &body).await.0.as_deref(),
        Some("hit"),
        "A's version 1 still hits"
    );
    a.server.shutdown().await;
    b.server.shutdown().await;
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_killed_mid_bench_costs_no_client_error_and_restart_restores_hits() {
    let Some(mut redis) = Redis::start("redis_killed_mid_bench") else {
        return;
    };
    let s = start(digits(&redis_only(600)), &redis).await;
    wait_connected(&s, &redis, "digits").await;
    // 16 distinct requests, cycled: hits from Redis once each was seen.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let lines: Vec<String> = (0..16).map(|i| pixels(i as f32).to_string()).collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let input = input.to_str().unwrap().to_string();
    let args = Cli::parse_from([
        "bench",
        "-u",
        &s.url,
        "--metrics-url",
        &s.metrics_url,
        "-m",
        "digits",
        "--input-data",
        &input,
        "--concurrency-range",
        "8",
        "--warmup-ms",
        "500",
        "--measurement-interval-ms",
        "20000",
        "--max-windows",
        "1",
        "--client-threads",
        "1",
    ])
    .bench;
    let bench = tokio::spawn(async move {
        let target = prepare(&args).await.unwrap();
        sweep(&target, &args, None).await.unwrap()
    });
    let hits = r#"nv_cache_num_hits_per_model{model="digits",version="1"}"#;
    let errors = r#"ferrite_cache_backend_errors_total{backend="redis"}"#;
    // Redis serves hits under load first (poll, 20 s deadline), then dies.
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.metric(hits).await < 100.0 {
        assert!(Instant::now() < deadline, "no Redis hits under load");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let errors_before = s.metric(errors).await;
    redis.kill9();
    let steps = bench.await.unwrap();
    let step = &steps[0];
    assert!(step.errors.is_empty(), "client errors: {:?}", step.errors);
    assert!(step.ok > 1000, "only {} requests", step.ok);
    assert!(
        s.metric(errors).await > errors_before,
        "the dead Redis is counted"
    );

    // Restarted (empty) on the same port: the server reconnects and hits come back.
    let redis = Redis::start_on(redis.port);
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = pixels(3.0);
    loop {
        let (st, _) = infer(&s, "digits", &body).await;
        if st.as_deref() == Some("hit") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hits never came back after Redis restarted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(redis);
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_redis_costs_each_request_at_most_its_timeout() {
    let Some(redis) = Redis::start("a_stalled_redis") else {
        return;
    };
    let s = start(digits(&redis_only(600)), &redis).await;
    wait_connected(&s, &redis, "digits").await;
    let errors = r#"ferrite_cache_backend_errors_total{backend="redis"}"#;
    let before = s.metric(errors).await;
    // Redis answers nothing for 5 s (poll until a PING goes unanswered for 100 ms).
    let port = redis.port;
    let stall = std::thread::spawn(move || {
        redis_cmd_within(port, &["DEBUG", "SLEEP", "5"], Duration::from_secs(30))
    });
    let deadline = Instant::now() + Duration::from_secs(3);
    while redis_cmd_within(port, &["PING"], Duration::from_millis(100)).is_ok() {
        assert!(Instant::now() < deadline, "Redis never stalled");
    }
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let t = Instant::now();
        let (st, _) = infer(&s, "digits", &pixels(100.0 + i as f32)).await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(st.as_deref(), Some("miss"), "served uncached");
    }
    // 20 ms timeout per lookup; a second of slack for a loaded machine, against a 5 s stall.
    assert!(
        slowest < Duration::from_secs(1),
        "a request waited {slowest:?} on a stalled Redis"
    );
    assert!(s.metric(errors).await > before, "the timeouts are counted");
    stall.join().unwrap().unwrap();
    // Redis is back: hits return once the server has reconnected (poll, 15 s deadline).
    let body = pixels(7.0);
    let deadline = Instant::now() + Duration::from_secs(15);
    while infer(&s, "digits", &body).await.0.as_deref() != Some("hit") {
        assert!(
            Instant::now() < deadline,
            "hits never came back after the stall"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.server.shutdown().await;
}

/// `ferrite serve` as a child process on free ports; killed on drop.
struct Proc {
    child: Child,
    url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(repo: &Repo) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--http-port",
            "0",
            "--metrics-port",
            "0",
        ])
        .arg("--model-repository")
        .arg(repo.path())
        .args(["--access-log", "false"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut url = None;
    let mut ready = false;
    while !(url.is_some() && ready) {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("server logs its address and readiness");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            url = Some(format!(
                "http://{}",
                rest.split_whitespace().next().unwrap()
            ));
        }
        ready |= line.contains("server ready");
    }
    Proc {
        child,
        url: url.unwrap(),
    }
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// Elements per request and response (64 KiB of FP32 each way).
const WIDE: usize = 16384;
const BUDGET: u64 = 16 << 20;
/// What the process may grow by besides the budget: allocator pages, connection buffers, metrics.
const OVERHEAD: u64 = 32 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn in_process_cache_filled_far_past_max_bytes_keeps_rss_within_budget() {
    let extra = format!("[response_cache]\nenable = true\nttl_secs = 600\nmax_bytes = {BUDGET}\n");
    let repo = Repo::new().with_debug("wide", 8, &extra);
    let cfg = repo.path().join("wide/config.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("dims = [-1, 4]", &format!("dims = [-1, {WIDE}]"));
    std::fs::write(&cfg, text).unwrap();
    let p = serve(&repo);
    let client = reqwest::Client::new();
    let send = |i: usize| {
        let data: Vec<f32> = (0..WIDE).map(|j| (i * 7 + j) as f32).collect();
        let (body, n) = common::v2_binary_request("x", &[1, WIDE], &data, true);
        let c = client.clone();
        let url = format!("{}/v2/models/wide/infer", p.url);
        async move {
            let r = c
                .post(url)
                .header("inference-header-content-length", n)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let st = r
                .headers()
                .get("x-ferrite-cache")
                .map(|v| v.to_str().unwrap().to_string());
            r.bytes().await.unwrap();
            st
        }
    };
    let send_uncached = |i: usize| {
        let data: Vec<f32> = (0..WIDE).map(|j| (i * 7 + j) as f32).collect();
        let (body, n) = common::v2_binary_request("x", &[1, WIDE], &data, true);
        let c = client.clone();
        let url = format!("{}/v2/models/wide/infer", p.url);
        async move {
            let r = c
                .post(url)
                .header("inference-header-content-length", n)
                .header("cache-control", "no-cache")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
        }
    };
    // Warm up uncached (allocator pools, connection buffers), 8 at a time as below.
    for i in (0..64).step_by(8) {
        futures::future::join_all((i..i + 8).map(&send_uncached)).await;
    }
    let base = rss_bytes(p.child.id());
    // 16x the budget, 8 at a time.
    let per_entry = (WIDE * 4) as u64;
    let total = 16 * (BUDGET / per_entry) as usize;
    let fill = 0;
    let mut i = 0;
    while i < total {
        let batch: Vec<_> = (i..i + 8).map(&send).collect();
        for st in futures::future::join_all(batch).await {
            assert_eq!(st.as_deref(), Some("miss"));
        }
        i += 8;
    }
    let grown = rss_bytes(p.child.id()).saturating_sub(base);
    let inserted = total as u64 * per_entry;
    eprintln!(
        "RSS grew by {:.1} MiB after {} MiB inserted into a {} MiB cache",
        grown as f64 / 1048576.0,
        inserted >> 20,
        BUDGET >> 20
    );
    assert!(
        grown <= BUDGET + OVERHEAD,
        "RSS grew by {} MiB after inserting {} MiB into a {} MiB cache (+{} MiB allowed overhead)",
        grown >> 20,
        inserted >> 20,
        BUDGET >> 20,
        OVERHEAD >> 20
    );
    // The most recent entry is still there; the first ones were evicted.
    assert_eq!(send(fill + total - 1).await.as_deref(), Some("hit"));
    assert_eq!(send(0).await.as_deref(), Some("miss"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rediss_with_a_password_and_a_private_ca_serves_hits() {
    use rcgen::{CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, KeyPair};
    if Redis::start("rediss_with_a_password").is_none() {
        return;
    }
    // A CA and a server certificate for 127.0.0.1, made here; no key is committed.
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "cache test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut p = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca).unwrap();
    let path = |f: &str| dir.path().join(f);
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("server.pem"), cert.pem()).unwrap();
    std::fs::write(path("server.key"), key.serialize_pem()).unwrap();
    let port = free_port();
    let password = "s3cret-cache-pw";
    let mut child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--tls-cert-file")
        .arg(path("server.pem"))
        .arg("--tls-key-file")
        .arg(path("server.key"))
        .args(["--tls-auth-clients", "no", "--requirepass", password])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("rediss://:{password}@127.0.0.1:{port}");
    let ca_file = path("ca.pem");
    let s = TestServer::start_with(digits(&redis_only(600)), move |c| {
        c.cache_redis = Some(ferrite::config::RedisSettings {
            url,
            timeout: Duration::from_millis(200),
            ca: Some(ca_file),
        })
    })
    .await;
    // Redis only (max_bytes = 0): a hit can only come through the TLS connection.
    let body = pixels(5.0);
    let deadline = Instant::now() + Duration::from_secs(15);
    while infer(&s, "digits", &body).await.0.as_deref() != Some("hit") {
        assert!(Instant::now() < deadline, "no hit through rediss://");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = s.metrics_text().await;
    assert!(
        !metrics.contains(password),
        "the password is in the metrics"
    );
    s.server.shutdown().await;
    let _ = child.kill();
    let _ = child.wait();
}
