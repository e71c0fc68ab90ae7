//! The direct cost of one access-log line (formatting it and handing it to the log buffer), without
//! a server around it: `cargo run --release --example log_rate 2>/dev/null` (issue 14).
use std::time::Instant;

use ferrite::telemetry::logging::{self, AccessRecord, LogFormat};

fn main() {
    logging::init(LogFormat::Text);
    let n = 2_000_000u64;
    let id = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
    let hmac = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    for round in 0..3 {
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
                body_hmac: hmac,
            });
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        println!("round {round}: {ns:.1} ns per access line (format + push, log to stderr)");
    }
    logging::flush();
}
