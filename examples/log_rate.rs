//! The whole cost of one access-log line (the record, its formatting, the write), without a server
//! around it: `cargo run --release --example log_rate 2>/dev/null` (issue 14). A writer here hands
//! records over as fast as it can, so it fills its buffer (`SHARD_MAX`) every thousand-odd records
//! and formats and writes it itself; in the server, at tens of thousands of lines a second, the
//! `ferrite-log` thread formats them and the request path pays for the record only.
//! `THREADS=2` runs that many writers at once (as the server's runtime threads write), each its
//! own lines: the figure is then per line per writer, so cost from sharing the buffer shows.
use std::time::Instant;

use ferrite::telemetry::logging::{self, AccessRecord, LogFormat};

fn main() {
    logging::init(LogFormat::Text);
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    for round in 0..3 {
        let per_line: Vec<f64> = std::thread::scope(|s| {
            let writers: Vec<_> = (0..threads).map(|_| s.spawn(write_lines)).collect();
            writers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let ns: Vec<String> = per_line.iter().map(|ns| format!("{ns:.1}")).collect();
        println!(
            "round {round}: {} ns per access line (record + format + write to stderr; {threads} writer(s))",
            ns.join(" / ")
        );
    }
    logging::flush();
}

/// Writes 2 M lines; the mean time of one, in ns.
fn write_lines() -> f64 {
    let n = 2_000_000u64;
    let id = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
    let hmac: [u8; 32] = std::array::from_fn(|i| i as u8);
    let t = Instant::now();
    for i in 0..n {
        logging::access(&AccessRecord {
            request_id: id,
            principal: "bench",
            method: "POST",
            path: "/v2/models/digits/infer",
            model: "digits",
            version: 1,
            status: 200,
            request_bytes: 712,
            response_bytes: 398 + (i & 7),
            duration_us: 1234 + (i & 63),
            body_hmac: Some(hmac),
        });
    }
    t.elapsed().as_nanos() as f64 / n as f64
}
