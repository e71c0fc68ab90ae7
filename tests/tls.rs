//! TLS on the HTTP port, with certificates made here (rcgen: a CA, server certificates for
//! 127.0.0.1/localhost, client certificates with a CN) and real clients: reqwest (rustls), curl,
//! a raw tokio-rustls + hyper connection, and `ferrite bench`. The `ferrite` binary is started as
//! operators start it (flags, SIGHUP); the accept loop (`ferrite::net::serve`) is also driven
//! directly with a router that shows what a request carries.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::routing::{get, post};
use axum::{Extension, Json};
use common::{random_pixels, v2_request, Repo};
use ferrite::config::TlsSettings;
use ferrite::net::{self, tls::Tls, ClientCertName};
use rand::SeedableRng;
use rcgen::{CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};

/// A test CA and the files it signs, in a temporary folder. No key is ever committed.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(ca_name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, ca_name);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
        };
        std::fs::write(pki.path("ca.pem"), pki.ca.pem()).unwrap();
        pki
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Writes `{name}.pem` and `{name}.key`; returns the certificate's DER.
    fn issue(&self, name: &str, params: CertificateParams) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    /// A server certificate for 127.0.0.1 and localhost.
    fn server(&self, name: &str) -> Vec<u8> {
        let mut p = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(name, p)
    }

    /// A client certificate with subject CN `cn`.
    fn client(&self, name: &str, cn: &str) -> Vec<u8> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(name, p)
    }

    fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).unwrap()
    }

    /// reqwest trusting this CA; with `identity`, presenting `{identity}.pem`/`.key`.
    fn reqwest(&self, identity: Option<&str>, http1_only: bool) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&self.read("ca.pem")).unwrap();
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca);
        if let Some(id) = identity {
            let mut pem = self.read(&format!("{id}.pem"));
            pem.extend(self.read(&format!("{id}.key")));
            b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        if http1_only {
            b = b.http1_only();
        }
        b.build().unwrap()
    }

    fn settings(&self, cert: &str, client_ca: bool) -> TlsSettings {
        TlsSettings {
            cert: self.path(&format!("{cert}.pem")),
            key: self.path(&format!("{cert}.key")),
            client_ca: client_ca.then(|| self.path("ca.pem")),
        }
    }
}

/// `ferrite serve` as a child process with TLS flags, its log lines on a channel.
struct Proc {
    child: Child,
    addr: String,
    /// The metrics port (plain HTTP): `/metrics` and the probes.
    metrics_addr: String,
    log: mpsc::Receiver<String>,
    _repo: Repo,
}

impl Proc {
    fn start(pki: &Pki, cert: &str, client_ca: bool) -> Proc {
        let repo = Repo::new().with_digits(&[]);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
        cmd.arg("serve")
            .args([
                "--host",
                "127.0.0.1",
                "--http-port",
                "0",
                "--metrics-port",
                "0",
                "--grpc-port",
                "0",
            ])
            .arg("--model-repository")
            .arg(repo.path())
            .arg("--tls-cert")
            .arg(pki.path(&format!("{cert}.pem")))
            .env("FERRITE_TLS_KEY", pki.path(&format!("{cert}.key")))
            .env("RUST_LOG", "info,ferrite::net=debug")
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        if client_ca {
            cmd.arg("--tls-client-ca").arg(pki.path("ca.pem"));
        }
        let mut child = cmd.spawn().unwrap();
        let (tx, log) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut p = Proc {
            child,
            addr: String::new(),
            metrics_addr: String::new(),
            log,
            _repo: repo,
        };
        let line = p.wait_log("listening on https://");
        p.addr = line
            .split("listening on https://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap()
            .to_string();
        p.metrics_addr = line
            .split("metrics on http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap()
            .to_string();
        p.wait_log("server ready");
        p
    }

    /// The first log line (from now on) containing `needle`; panics after 60 s without one.
    fn wait_log(&self, needle: &str) -> String {
        loop {
            let line = self
                .log
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("no log line with '{needle}': {e}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn digits_body(seed: u64) -> Value {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    v2_request("pixels", 2, 64, &random_pixels(&mut rng, 2))
}

fn assert_digits_answer(v: &Value) {
    assert_eq!(v["outputs"][0]["name"], "probabilities", "{v}");
    assert_eq!(v["outputs"][0]["shape"], json!([2, 10]), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn https_inference_over_http1_and_http2_by_alpn() {
    let pki = Pki::new("test CA");
    pki.server("server");
    let p = Proc::start(&pki, "server", false);
    for (http1_only, want) in [
        (true, reqwest::Version::HTTP_11),
        (false, reqwest::Version::HTTP_2),
    ] {
        let r = pki
            .reqwest(None, http1_only)
            .post(p.url("/v2/models/digits/infer"))
            .json(&digits_body(1))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), want);
        assert_digits_answer(&r.json().await.unwrap());
    }
}

/// curl with `--cacert`, as the README shows it: HTTP/1.1 and HTTP/2 both negotiated.
#[tokio::test(flavor = "multi_thread")]
async fn curl_with_cacert_infers_over_both_http_versions() {
    let pki = Pki::new("test CA");
    pki.server("server");
    let p = Proc::start(&pki, "server", false);
    let body = digits_body(2).to_string();
    for (flag, want) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", flag, "--cacert"])
            .arg(pki.path("ca.pem"))
            .args(["-H", "content-type: application/json", "-d", &body])
            .args(["-w", "\n%{http_code} %{http_version}"])
            .arg(p.url("/v2/models/digits/infer"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text} {:?}", out.stderr);
        let (json_text, status) = text.rsplit_once('\n').unwrap();
        assert_eq!(status, format!("200 {want}"));
        assert_digits_answer(&serde_json::from_str(json_text).unwrap());
    }
    // and without the CA, curl refuses the server's certificate
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .arg(p.url("/v2/health/ready"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_to_tls_port_fails_and_tls_still_served() {
    let pki = Pki::new("test CA");
    pki.server("server");
    let p = Proc::start(&pki, "server", false);
    let plain = reqwest::Client::new()
        .get(format!("http://{}/v2/health/ready", p.addr))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.as_ref().unwrap().status().is_success(),
        "plain HTTP was answered: {plain:?}"
    );
    p.wait_log("TLS handshake refused");
    let r = pki
        .reqwest(None, false)
        .get(p.url("/v2/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_refuses_missing_or_foreign_client_certificate_accepts_signed_one() {
    let pki = Pki::new("test CA");
    pki.server("server");
    pki.client("alice", "alice-batch");
    let foreign = Pki::new("other CA");
    foreign.client("mallory", "alice-batch");
    std::fs::copy(pki.path("ca.pem"), foreign.path("ca.pem")).unwrap();
    let p = Proc::start(&pki, "server", true);
    let url = p.url("/v2/models/digits/infer");

    let none = pki.reqwest(None, false).post(&url).json(&digits_body(3));
    assert!(none.send().await.is_err(), "no client certificate accepted");
    p.wait_log("TLS handshake refused");
    let mallory = foreign.reqwest(Some("mallory"), false).post(&url);
    assert!(
        mallory.json(&digits_body(3)).send().await.is_err(),
        "a certificate from another CA was accepted"
    );
    p.wait_log("TLS handshake refused");

    for http1_only in [true, false] {
        let r = pki
            .reqwest(Some("alice"), http1_only)
            .post(&url)
            .json(&digits_body(3))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_digits_answer(&r.json().await.unwrap());
        let line = p.wait_log("TLS connection");
        assert!(line.contains("client_cn=\"alice-batch\""), "{line}");
    }

    // Kubelet presents no client certificate: its probes go to the metrics port (plain HTTP),
    // which answers them without one, while the HTTPS port still refuses such a client.
    let plain = reqwest::Client::new();
    for probe in ["/v2/health/live", "/v2/health/ready"] {
        let r = plain
            .get(format!("http://{}{probe}", p.metrics_addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{probe} on the metrics port");
        let over_tls = pki.reqwest(None, false).get(p.url(probe)).send().await;
        assert!(
            over_tls.is_err(),
            "{probe} on the mTLS port without a certificate"
        );
    }
}

/// What a request carries, served by the real accept loop: the client certificate's CN and the
/// peer address in its extensions.
async fn whoami(
    name: Option<Extension<ClientCertName>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
) -> Json<Value> {
    Json(json!({"cn": name.map(|n| n.0 .0), "peer_ip": peer.ip().to_string()}))
}

struct InProcess {
    addr: std::net::SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn serve_in_process(app: axum::Router, tls: Option<TlsSettings>) -> InProcess {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = tls.map(|t| Arc::new(Tls::load(&t).unwrap()));
    let (stop, rx) = tokio::sync::watch::channel(false);
    InProcess {
        addr,
        stop,
        task: net::serve(listener, app, tls, net::ConnectionLimits::DEFAULT, rx),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn client_cert_name_in_request_extensions_on_both_http_versions() {
    let pki = Pki::new("test CA");
    pki.server("server");
    pki.client("svc", "ingest-service");
    let app = axum::Router::new().route("/whoami", get(whoami));
    let s = serve_in_process(app, Some(pki.settings("server", true))).await;
    let url = format!("https://localhost:{}/whoami", s.addr.port());
    for http1_only in [true, false] {
        let r = pki
            .reqwest(Some("svc"), http1_only)
            .get(&url)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v, json!({"cn": "ingest-service", "peer_ip": "127.0.0.1"}));
    }
    // TLS without client certificates: no name
    let s2 = serve_in_process(
        axum::Router::new().route("/whoami", get(whoami)),
        Some(pki.settings("server", false)),
    )
    .await;
    let v: Value = pki
        .reqwest(None, false)
        .get(format!("https://127.0.0.1:{}/whoami", s2.addr.port()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["cn"], Value::Null);
    for s in [s, s2] {
        s.stop.send(true).unwrap();
        s.task.await.unwrap().unwrap();
    }
}

/// Plain HTTP through the same loop: HTTP/1.1 keep-alive and HTTP/2 (prior knowledge), and on the
/// stop signal an in-flight request still completes before the loop returns.
#[tokio::test(flavor = "multi_thread")]
async fn plain_loop_serves_both_versions_and_drains_in_flight_on_stop() {
    let (entered_tx, mut entered) = tokio::sync::mpsc::channel::<()>(1);
    let release = Arc::new(tokio::sync::Notify::new());
    let r2 = release.clone();
    let app = axum::Router::new().route("/whoami", get(whoami)).route(
        "/slow",
        post(move || {
            let (tx, release) = (entered_tx.clone(), r2.clone());
            async move {
                tx.send(()).await.unwrap();
                release.notified().await;
                "done"
            }
        }),
    );
    let s = serve_in_process(app, None).await;
    let base = format!("http://{}", s.addr);
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(format!("{base}/whoami")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.json::<Value>().await.unwrap()["cn"], Value::Null);
    let h1 = reqwest::Client::new();
    for _ in 0..2 {
        let r = h1.get(format!("{base}/whoami")).send().await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_11);
    }
    let slow = tokio::spawn(h1.post(format!("{base}/slow")).send());
    entered.recv().await.unwrap();
    s.stop.send(true).unwrap();
    assert!(!s.task.is_finished(), "returned with a request in flight");
    release.notify_one();
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.text().await.unwrap(), "done");
    s.task.await.unwrap().unwrap();
}

/// A raw TLS connection trusting `pki`'s CA: the server's leaf certificate and an HTTP/1.1 sender.
async fn raw_connection(
    pki: &Pki,
    addr: &str,
) -> (
    CertificateDer<'static>,
    hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    (leaf, sender)
}

async fn ready_on(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
) -> u16 {
    let req = hyper::Request::get("/v2/health/ready")
        .header("host", "localhost")
        .body(http_body_util::Empty::new())
        .unwrap();
    sender.send_request(req).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reload_serves_new_certificate_to_next_connection_open_one_keeps_working() {
    let pki = Pki::new("test CA");
    let first = pki.server("server");
    let p = Proc::start(&pki, "server", false);
    let (leaf, mut open) = raw_connection(&pki, &p.addr).await;
    assert_eq!(leaf.as_ref(), first.as_slice());
    assert_eq!(ready_on(&mut open).await, 200);

    let second = pki.server("server"); // new key and certificate over the same files
    assert_ne!(first, second);
    p.signal("-HUP");
    p.wait_log("TLS certificates reloaded");
    let (leaf, mut fresh) = raw_connection(&pki, &p.addr).await;
    assert_eq!(
        leaf.as_ref(),
        second.as_slice(),
        "next connection: new certificate"
    );
    assert_eq!(ready_on(&mut fresh).await, 200);
    assert_eq!(
        ready_on(&mut open).await,
        200,
        "open keep-alive connection dropped"
    );

    // a broken file: warned, and the last good certificate stays
    std::fs::write(pki.path("server.key"), "not a key").unwrap();
    p.signal("-HUP");
    let line = p.wait_log("TLS reload failed");
    assert!(line.contains("server.key"), "{line}");
    let (leaf, mut third) = raw_connection(&pki, &p.addr).await;
    assert_eq!(leaf.as_ref(), second.as_slice());
    assert_eq!(ready_on(&mut third).await, 200);
    assert_eq!(ready_on(&mut open).await, 200);
}

#[test]
fn serve_refuses_to_start_with_mismatched_key() {
    let pki = Pki::new("test CA");
    pki.server("a");
    pki.server("b");
    let repo = Repo::new();
    let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args([
            "serve",
            "--http-port",
            "0",
            "--metrics-port",
            "0",
            "--grpc-port",
            "0",
        ])
        .arg("--model-repository")
        .arg(repo.path())
        .arg("--tls-cert")
        .arg(pki.path("a.pem"))
        .arg("--tls-key")
        .arg(pki.path("b.key"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS") && err.contains("b.key"), "{err}");
}

/// A KServe v2 look-alike that counts inference requests carrying `x-api-key: s3cret`.
fn header_counting_app(with_key: Arc<AtomicUsize>, total: Arc<AtomicUsize>) -> axum::Router {
    let meta = json!({"name": "echo", "platform": "test",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 4]}]});
    axum::Router::new()
        .route("/v2/models/echo", get(move || async move { Json(meta) }))
        .route(
            "/v2/models/echo/infer",
            post(move |headers: axum::http::HeaderMap| async move {
                total.fetch_add(1, Ordering::Relaxed);
                if headers.get("x-api-key").is_some_and(|v| v == "s3cret") {
                    with_key.fetch_add(1, Ordering::Relaxed);
                }
                Json(json!({"model_name": "echo", "outputs": []}))
            }),
        )
}

/// `ferrite bench` against an https:// server with `--cacert`, sending `--header` on every request,
/// and saying once (not per window) that its metrics URL cannot be scraped.
#[tokio::test(flavor = "multi_thread")]
async fn bench_https_with_cacert_sends_header_and_warns_once_on_failed_scrape() {
    let pki = Pki::new("test CA");
    pki.server("server");
    let (with_key, total) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let app = header_counting_app(with_key.clone(), total.clone());
    let s = serve_in_process(app, Some(pki.settings("server", false))).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_metrics = dead.local_addr().unwrap().to_string();
    drop(dead); // nothing listens there now
    let json_out = pki.path("bench.json");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
    cmd.args(["bench", "-m", "echo", "-u"])
        .arg(format!("https://127.0.0.1:{}", s.addr.port()))
        .arg("--cacert")
        .arg(pki.path("ca.pem"))
        .args(["--header", "x-api-key: s3cret", "--header", "x-other:1"])
        .args(["--metrics-url", &dead_metrics])
        .args(["--concurrency-range", "2", "--warmup-ms", "100"])
        .args(["--measurement-interval-ms", "300", "--max-windows", "4"])
        .args(["--stability-percentage", "1000", "--client-threads", "1"])
        .arg("--json")
        .arg(&json_out);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&std::fs::read(&json_out).unwrap()).unwrap();
    let step = &report["steps"][0];
    assert!(step["ok"].as_u64().unwrap() > 0, "{step}");
    assert_eq!(step["errors"], json!({}), "{step}");
    let (with_key, total) = (
        with_key.load(Ordering::Relaxed),
        total.load(Ordering::Relaxed),
    );
    assert!(total > 0);
    assert_eq!(with_key, total, "requests without the header");
    assert_eq!(
        stderr.matches("cannot scrape server metrics").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("http://{dead_metrics}/metrics")),
        "{stderr}"
    );
    s.stop.send(true).unwrap();
    s.task.await.unwrap().unwrap();
}

/// Mutual TLS as access control: a verified client certificate's CN is the principal, with the
/// scopes of its `[[auth.clients]]` entry; a certificate the CA signed but no entry names is 401.
#[tokio::test(flavor = "multi_thread")]
async fn client_certificate_name_is_the_principal_with_its_scopes() {
    let pki = Pki::new("test CA");
    pki.server("server");
    pki.client("alice", "alice-batch");
    pki.client("bob", "bob-unlisted");
    let auth: ferrite::auth::AuthConfig =
        toml::from_str("[[clients]]\nname = \"alice-batch\"\nscopes = [\"infer:digits\"]\n")
            .unwrap();
    let s = common::TestServer::start_with(Repo::new().with_digits(&[]), |c| {
        c.tls = Some(pki.settings("server", true));
        c.auth = Some(auth);
    })
    .await;
    let url = |p: &str| format!("https://localhost:{}{p}", s.server.http_addr().port());
    let alice = pki.reqwest(Some("alice"), false);
    let r = alice
        .post(url("/v2/models/digits/infer"))
        .json(&digits_body(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_digits_answer(&r.json().await.unwrap());
    let r = alice
        .post(url("/v2/repository/index"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "alice has infer:digits only");
    let bob = pki.reqwest(Some("bob"), false);
    let r = bob
        .post(url("/v2/models/digits/infer"))
        .json(&digits_body(5))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "a verified certificate that no [[auth.clients]] entry names"
    );
}

/// The gRPC port shares the HTTP port's TLS (HTTP/2 by ALPN) and client-certificate principals: a
/// raw gRPC call (5-byte frame + protobuf) over reqwest's rustls client.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_port_serves_tls_and_client_certificate_principals() {
    let pki = Pki::new("test CA");
    pki.server("server");
    pki.client("alice", "alice-batch");
    let auth: ferrite::auth::AuthConfig =
        toml::from_str("[[clients]]\nname = \"alice-batch\"\nscopes = [\"infer:digits\"]\n")
            .unwrap();
    let s = common::TestServer::start_with(Repo::new().with_digits(&[]), |c| {
        c.tls = Some(pki.settings("server", true));
        c.auth = Some(auth);
    })
    .await;
    let url = |m: &str| {
        format!(
            "https://localhost:{}/inference.GRPCInferenceService/{m}",
            s.server.grpc_addr().port()
        )
    };
    let call = |client: reqwest::Client, method: &'static str, body: Vec<u8>| {
        let u = url(method);
        async move {
            let mut frame = vec![0u8];
            frame.extend((body.len() as u32).to_be_bytes());
            frame.extend(body);
            client
                .post(u)
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(frame)
                .send()
                .await
        }
    };
    let alice = pki.reqwest(Some("alice"), false);
    // ServerLive: open. Answer: frame of ServerLiveResponse { live: true } = 08 01.
    let r = call(alice.clone(), "ServerLive", vec![]).await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        [0, 0, 0, 0, 2, 0x08, 0x01]
    );
    // ModelReady { name: "digits" } needs infer:digits, which alice's certificate name carries.
    let ready_digits = [vec![0x0a, 6], b"digits".to_vec()].concat();
    let r = call(alice.clone(), "ModelReady", ready_digits)
        .await
        .unwrap();
    assert_eq!(r.headers().get("grpc-status"), None, "{:?}", r.headers());
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        [0, 0, 0, 0, 2, 0x08, 0x01]
    );
    // The repository needs admin: PERMISSION_DENIED (7), trailers-only.
    let r = call(alice, "RepositoryIndex", vec![]).await.unwrap();
    assert_eq!(r.headers()["grpc-status"], "7");
    // No client certificate: the handshake is refused, as on the HTTP port.
    assert!(call(pki.reqwest(None, false), "ServerLive", vec![])
        .await
        .is_err());
    s.server.shutdown().await;
}
