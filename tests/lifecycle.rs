//! The `ferrite` binary as operators run it: settings from env and TOML, SIGTERM drain with no
//! request lost and exit code 0, and `ferrite models`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::Value;

struct Proc {
    child: Child,
    url: String,
    log: mpsc::Receiver<String>,
}

impl Proc {
    /// Waits (at most 30 s) for the process to exit.
    async fn wait_exit(&mut self) -> std::process::ExitStatus {
        for _ in 0..1500 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("server did not exit");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ferrite serve` on free ports (settings given through env and a TOML file) and waits
/// until it is ready.
async fn spawn_server(repo: &Repo, exit_timeout_secs: u64) -> Proc {
    let cfg = repo.path().join("ferrite.toml");
    std::fs::write(
        &cfg,
        format!("exit_timeout_secs = {exit_timeout_secs}\nhost = \"127.0.0.1\"\n"),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .arg("serve")
        .env("FERRITE_MODEL_REPOSITORY", repo.path())
        .env("FERRITE_HTTP_PORT", "0")
        .env("FERRITE_METRICS_PORT", "0")
        .env("FERRITE_GRPC_PORT", "0")
        .env("FERRITE_CONFIG", &cfg)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let mut p = Proc {
        child,
        url: String::new(),
        log: rx,
    };
    let stderr = p.child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut url = None;
    while url.is_none() {
        let line = p
            .log
            .recv_timeout(Duration::from_secs(30))
            .expect("server logs its address");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            url = Some(format!(
                "http://{}",
                rest.split_whitespace().next().unwrap()
            ));
        }
    }
    p.url = url.unwrap();
    let client = reqwest::Client::new();
    for _ in 0..400 {
        if let Ok(r) = client
            .get(format!("{}/v2/health/ready", p.url))
            .send()
            .await
        {
            if r.status() == 200 {
                return p;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server never became ready");
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let repo = Repo::new().with_debug(
        "slow",
        4,
        "[dynamic_batching]\nmax_queue_delay_us = 1000\n[parameters]\nsleep_us = 150000\n",
    );
    let mut p = spawn_server(&repo, 20).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v2/models/slow/infer", p.url);
    let inflight: Vec<_> = (0..16)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let r = client
                    .post(url)
                    .json(&v2_request("x", 1, 4, &[i as f32, 0.0, 0.0, 1.0]))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap();
                (status, v["outputs"][0]["data"][0].as_f64())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    sigterm(&p.child);
    for (i, h) in inflight.into_iter().enumerate() {
        let (status, first) = h.await.unwrap();
        assert_eq!(status, 200, "request {i} was lost in the drain");
        assert_eq!(first, Some(i as f64));
    }
    let status = p.wait_exit().await;
    assert_eq!(status.code(), Some(0));
    let logs: Vec<String> = p.log.try_iter().collect();
    assert!(
        logs.iter().any(|l| l.contains("SIGTERM received")),
        "{logs:?}"
    );
    assert!(
        logs.iter().any(|l| l.contains("shutdown complete")),
        "{logs:?}"
    );
    assert!(
        client
            .get(format!("{}/v2/health/live", p.url))
            .send()
            .await
            .is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_turns_false_while_draining() {
    let repo = Repo::new().with_debug("slow", 1, "[parameters]\nsleep_us = 1500000\n");
    let mut p = spawn_server(&repo, 20).await;
    let client = reqwest::Client::new();
    // Keep one connection busy so the drain lasts, then probe readiness on a kept-alive connection.
    let probe = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    assert_eq!(
        probe
            .get(format!("{}/v2/health/ready", p.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let busy = {
        let (client, url) = (client.clone(), format!("{}/v2/models/slow/infer", p.url));
        tokio::spawn(async move {
            client
                .post(url)
                .json(&v2_request("x", 1, 4, &[1.0; 4]))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    sigterm(&p.child);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A new request on the old connection (if hyper still reads it) or a new one must not be 200.
    let r = probe.get(format!("{}/v2/health/ready", p.url)).send().await;
    assert!(
        r.map(|r| r.status() != 200).unwrap_or(true),
        "ready while draining"
    );
    assert_eq!(busy.await.unwrap(), 200);
    let status = p.wait_exit().await;
    assert_eq!(status.code(), Some(0));
}

#[test]
fn models_command_lists_models_and_flags_bad_configs() {
    let repo = Repo::new().with_digits(&[]).copy_digits(
        "broken",
        &[(
            "datatype = \"FP32\"\ndims = [-1, 64]",
            "datatype = \"FLOAT\"\ndims = [-1, 64]",
        )],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["models", "--model-repository"])
        .arg(repo.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "an invalid config makes the command fail"
    );
    let digits = stdout.lines().find(|l| l.starts_with("digits")).unwrap();
    assert!(digits.contains("ok (serves [1])"), "{stdout}");
    let broken = stdout.lines().find(|l| l.starts_with("broken")).unwrap();
    assert!(
        broken.contains("invalid") && broken.contains("FLOAT"),
        "{stdout}"
    );
    assert!(
        stderr.contains("1 model(s) have an invalid configuration"),
        "{stderr}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["models", "--model-repository"])
        .arg(repo_root().join("models"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn serve_with_missing_repository_fails_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args([
            "serve",
            "--model-repository",
            "/nonexistent/models",
            "--http-port",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("model_repository") && stderr.contains("/nonexistent/models"),
        "{stderr}"
    );
}

async fn read_response(tcp: &mut tokio::net::TcpStream) -> String {
    read_response_within(tcp, Duration::from_secs(20)).await
}

/// The process runs out of file descriptors (its limit lowered, while running, to a few more
/// than it has open): `accept` fails and is retried, the connections it already has keep being
/// served, and once descriptors are released the waiting and new connections are served again,
/// with no restart.
#[tokio::test(flavor = "multi_thread")]
async fn out_of_file_descriptors_open_connections_keep_working_and_it_recovers() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    const LIVE: &[u8] = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n";
    let repo = Repo::new().with_digits(&[]);
    let p = spawn_server(&repo, 5).await;
    let addr = p.url.trim_start_matches("http://").to_string();
    let mut first = TcpStream::connect(&addr).await.unwrap();
    first.write_all(LIVE).await.unwrap();
    assert!(read_response(&mut first).await.starts_with("HTTP/1.1 200"));

    let pid = p.child.id() as libc::pid_t;
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let low = libc::rlimit {
        rlim_cur: open + 4,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit reads and writes the two rlimit structs given; the pid is our child.
    let rc = unsafe {
        libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old);
        libc::prlimit(
            pid,
            libc::RLIMIT_NOFILE,
            &libc::rlimit {
                rlim_max: old.rlim_max,
                ..low
            },
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());

    // More connections than descriptors left: the kernel queues them, the server cannot take them.
    let mut crowd = Vec::new();
    for _ in 0..12 {
        let mut c = TcpStream::connect(&addr).await.unwrap();
        c.write_all(LIVE).await.unwrap();
        crowd.push(c);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let line = p
            .log
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("the server logs that accept failed");
        if line.contains("accept failed") {
            break;
        }
    }
    // The connection it already had is still served.
    first.write_all(LIVE).await.unwrap();
    assert!(read_response(&mut first).await.starts_with("HTTP/1.1 200"));

    // Descriptors come back: every waiting connection, and a new one, get answered.
    drop(first);
    let served = crowd.len();
    for (i, mut c) in crowd.into_iter().enumerate() {
        assert!(
            read_response(&mut c).await.starts_with("HTTP/1.1 200"),
            "waiting connection {i} of {served}"
        );
    }
    let mut late = TcpStream::connect(&addr).await.unwrap();
    late.write_all(LIVE).await.unwrap();
    assert!(read_response(&mut late).await.starts_with("HTTP/1.1 200"));
}
