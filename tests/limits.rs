//! Connection limits and timeouts (`ConnectionLimits`, `net::serve`), over raw TCP against a real
//! server: a half-sent header is cut off, an idle keep-alive connection is closed, a stalled body
//! gets 408, and connections over `max_connections` get a prompt 503 with `Retry-After` while the
//! open ones keep working and the cap frees up as they close.

mod common;

use std::time::{Duration, Instant};

use common::{read_response_within, Repo, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound on "promptly": the timeouts under test are 1 s.
const WITHIN: Duration = Duration::from_secs(10);

async fn read_response(tcp: &mut TcpStream) -> String {
    read_response_within(tcp, WITHIN).await
}

fn addr(s: &TestServer) -> String {
    s.url.trim_start_matches("http://").to_string()
}

/// Reads until the peer closes or `WITHIN` passes; the bytes and whether it closed.
async fn read_to_close(tcp: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let deadline = Instant::now() + WITHIN;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

const LIVE: &[u8] = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn half_sent_headers_and_idle_keep_alive_are_closed_after_the_header_timeout() {
    let s = TestServer::start_with(Repo::new().with_digits(&[]), |c| {
        c.limits.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    // Half a header, then nothing: closed, without a response.
    let mut half = TcpStream::connect(addr(&s)).await.unwrap();
    half.write_all(b"POST /v2/models/digits/infer HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let (bytes, closed) = read_to_close(&mut half).await;
    assert!(closed, "a half-sent header kept its connection open");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "closed before the timeout"
    );
    assert!(!String::from_utf8_lossy(&bytes).contains("200 OK"));

    // A connection that sends nothing at all is closed too.
    let mut silent = TcpStream::connect(addr(&s)).await.unwrap();
    assert!(
        read_to_close(&mut silent).await.1,
        "a silent connection stayed open"
    );

    // Keep-alive: one request served, then idle: closed.
    let mut idle = TcpStream::connect(addr(&s)).await.unwrap();
    idle.write_all(LIVE).await.unwrap();
    assert!(read_response(&mut idle).await.starts_with("HTTP/1.1 200"));
    assert!(
        read_to_close(&mut idle).await.1,
        "an idle keep-alive connection stayed open"
    );
}

/// Reads HTTP/2 frames (type, flags, stream, when) until the peer closes, answering its PINGs as
/// a client must (a graceful GOAWAY waits for one); payloads skipped.
async fn h2_frames_to_close(tcp: &mut TcpStream) -> Vec<(u8, u8, u32, Instant)> {
    let mut frames = Vec::new();
    let mut head = [0u8; 9];
    loop {
        match tokio::time::timeout(WITHIN, tcp.read_exact(&mut head)).await {
            Err(_) => panic!("the connection stayed open; frames so far: {frames:?}"),
            Ok(Err(_)) => return frames,
            Ok(Ok(_)) => {}
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        frames.push((head[3], head[4], stream, Instant::now()));
        let mut payload = vec![0u8; len];
        if tcp.read_exact(&mut payload).await.is_err() {
            return frames;
        }
        const PING: u8 = 6;
        if head[3] == PING && head[4] & 1 == 0 {
            let mut ack = vec![0, 0, 8, PING, 1, 0, 0, 0, 0];
            ack.extend_from_slice(&payload);
            let _ = tcp.write_all(&ack).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_http2_connection_is_closed_with_goaway() {
    let s = TestServer::start_with(Repo::new().with_digits(&[]), |c| {
        c.limits.http2_idle_timeout = Duration::from_secs(1);
    })
    .await;
    let mut tcp = TcpStream::connect(addr(&s)).await.unwrap();
    // Preface, empty SETTINGS, then one GET / on stream 1 (HPACK static table: :method GET,
    // :scheme http, :path /), END_STREAM | END_HEADERS.
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&[0, 0, 3, 1, 5, 0, 0, 0, 1, 0x82, 0x86, 0x84]);
    tcp.write_all(&out).await.unwrap();
    let frames = h2_frames_to_close(&mut tcp).await;
    const HEADERS: u8 = 1;
    const GOAWAY: u8 = 7;
    let answered = frames
        .iter()
        .find(|f| f.0 == HEADERS && f.2 == 1)
        .unwrap_or_else(|| panic!("no response on stream 1: {frames:?}"));
    let goaway = frames
        .iter()
        .find(|f| f.0 == GOAWAY)
        .unwrap_or_else(|| panic!("closed without GOAWAY: {frames:?}"));
    assert!(
        goaway.3.duration_since(answered.3) >= Duration::from_millis(900),
        "GOAWAY came before the connection was idle for the timeout"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_stalls_half_way_gets_408() {
    let s = TestServer::start_with(Repo::new().with_digits(&[]), |c| {
        c.limits.body_timeout = Duration::from_secs(1);
    })
    .await;
    let mut tcp = TcpStream::connect(addr(&s)).await.unwrap();
    tcp.write_all(
        b"POST /v2/models/digits/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          content-length: 1000\r\n\r\n{\"inputs\": [",
    )
    .await
    .unwrap();
    let resp = read_response(&mut tcp).await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("did not arrive within 1 s"), "{resp}");
    // The server still serves.
    assert_eq!(s.get("/v2/health/ready").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_cap_get_503_at_once_and_the_cap_frees_as_they_close() {
    let s = TestServer::start_with(Repo::new().with_digits(&[]), |c| {
        c.limits.max_connections = 2;
    })
    .await;
    let mut first = TcpStream::connect(addr(&s)).await.unwrap();
    let mut second = TcpStream::connect(addr(&s)).await.unwrap();
    for c in [&mut first, &mut second] {
        c.write_all(LIVE).await.unwrap();
        assert!(read_response(c).await.starts_with("HTTP/1.1 200"));
    }
    // A third: answered 503 with Retry-After and closed, promptly.
    let mut third = TcpStream::connect(addr(&s)).await.unwrap();
    third.write_all(LIVE).await.unwrap();
    let (bytes, closed) = read_to_close(&mut third).await;
    let text = String::from_utf8_lossy(&bytes).to_string();
    assert!(closed, "the refused connection stayed open");
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    // The open ones keep working.
    first.write_all(LIVE).await.unwrap();
    assert!(read_response(&mut first).await.starts_with("HTTP/1.1 200"));
    // Once one closes, a new connection is served again (the server sees the close first).
    drop(second);
    let deadline = Instant::now() + WITHIN;
    loop {
        let mut next = TcpStream::connect(addr(&s)).await.unwrap();
        next.write_all(LIVE).await.unwrap();
        let (bytes, _) = read_to_close_or_response(&mut next).await;
        if bytes.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "the cap never freed up: {bytes}");
        tokio::task::yield_now().await;
    }
}

/// The first response on a new connection: a 200 (kept alive) or a refusal (then closed).
async fn read_to_close_or_response(tcp: &mut TcpStream) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WITHIN, tcp.read(&mut buf)).await {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&got).to_string(), true)
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&got).to_string();
        if text.starts_with("HTTP/1.1 200") && text.contains("\r\n\r\n") {
            return (text, false);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_request_id_is_echoed_capped() {
    let s = TestServer::start(Repo::new().with_digits(&[])).await;
    let long = "a".repeat(10_000);
    let r = s
        .client
        .get(format!("{}/v2/health/live", s.url))
        .header("x-request-id", &long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echoed = r.headers()["x-request-id"].as_bytes().len();
    assert!((256..300).contains(&echoed), "echoed {echoed} bytes");
}

/// `--max-inflight-bytes`: bodies being read count against one server-wide budget; a body that
/// does not fit within a second gets 503 with `Retry-After`, and the budget comes back when the
/// holding request ends.
#[tokio::test(flavor = "multi_thread")]
async fn bodies_past_the_inflight_budget_get_503_and_the_budget_comes_back() {
    let s = TestServer::start_with(Repo::new().with_digits(&[]), |c| {
        c.max_body_bytes = 1000;
        c.limits.max_inflight_bytes = 1000;
    })
    .await;
    let infer = format!("{}/v2/models/digits/infer", s.url);
    // A holds 800 of the 1000 bytes while it trickles.
    let mut a = TcpStream::connect(addr(&s)).await.unwrap();
    a.write_all(
        b"POST /v2/models/digits/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n",
    )
    .await
    .unwrap();
    a.write_all(&[b' '; 800]).await.unwrap();
    // B needs 500: it waits, then 503 with Retry-After. Polled: A's bytes reach the server first.
    let deadline = Instant::now() + WITHIN;
    loop {
        let r = s
            .client
            .post(&infer)
            .body(vec![b' '; 500])
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            assert_eq!(r.headers()["retry-after"], "1");
            let body: serde_json::Value = r.json().await.unwrap();
            assert!(
                body["error"].as_str().unwrap().contains("in flight"),
                "{body}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never refused: {}", r.status());
    }
    // A finishes (a bad body: 400), giving its bytes back; B's size fits again.
    a.write_all(&[b' '; 200]).await.unwrap();
    assert!(read_response(&mut a).await.starts_with("HTTP/1.1 400"));
    let r = s
        .client
        .post(&infer)
        .body(vec![b' '; 500])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a fitting body is read and judged");
}
