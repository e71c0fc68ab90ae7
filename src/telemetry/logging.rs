//! `tracing` subscriber setup: human-readable text or one JSON object per line, filtered by
//! `RUST_LOG` (default `info`), written to stderr through a buffer (`Sink`), plus the access-log
//! writer (`access`), which formats its one line per request itself.
//!
//! Why a buffer: with the access log on (the default) the server writes a line per request, and one
//! `write(2)` per line showed up in profiles (and a pipe to a container runtime costs a wake-up per
//! write). Lines go into a shared buffer that a `ferrite-log` thread writes out every
//! `FLUSH_EVERY`; a warning or an error is written at once (with everything before it, in order),
//! and a writer that finds `BUFFER_MAX` bytes pending writes them itself, so memory stays bounded
//! and a stalled stderr slows the server down as an unbuffered one would rather than growing the
//! buffer. Access lines go into one buffer per thread instead (`Sink::append_access`): with two
//! runtime threads writing one shared buffer, a line cost ~600 ns instead of ~140 (its lock and
//! tail moving between cores; `examples/log_rate.rs` with `THREADS=2`), ~200 ns with a buffer
//! each. What a request thread leaves there is the record, not the line: its strings, numbers and
//! body hash. The line is formatted when the buffer is written out: by the `ferrite-log` thread,
//! or by a request thread whose buffer reached `SHARD_MAX`, in one pass over many records, off the
//! request's path. `flush` runs at exit and in the panic hook. A per-line channel to a writer
//! thread (`tracing-appender`) was not used: it wakes that thread for nearly every line at this
//! rate, which on two cores costs more than the write it saves.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

pub use crate::config::LogFormat;

/// How long a line may wait in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Pending bytes at which the writer that adds a line writes the buffer out itself. Several flush
/// periods' worth at the highest request rates seen (~45,000 access lines/s of ~260 bytes is
/// ~230 KB per period): at 256 KiB, request threads wrote the buffer themselves now and then.
const BUFFER_MAX: usize = 1024 * 1024;

/// The installed sink; unset until `init` (then nothing is buffered or written here).
static SINK: OnceLock<Sink> = OnceLock::new();

/// Pending access-record bytes (strings and fixed parts) at which the thread that adds one formats
/// and writes its own buffer out.
const SHARD_MAX: usize = 256 * 1024;

/// The shared buffer in front of stderr, and one buffer per thread for access records.
pub struct Sink {
    pending: Mutex<Vec<u8>>,
    /// Access records, one buffer per writing thread (`append_access`): the one record per request
    /// goes into a buffer only its own thread writes between flushes, so request threads on
    /// different cores do not pass the buffer's lock and tail between them for every line. A
    /// buffer whose thread has ended is written out and dropped at the next flush.
    shards: Mutex<Vec<Shard>>,
    /// Held while writing out, taken before `pending` by whoever writes: lines reach stderr in the
    /// order they entered the buffer (access lines: in order per thread, each written before the
    /// other lines of the same flush).
    out: Mutex<Out>,
    write: fn(&[u8]),
    /// The format access lines are written in.
    format: LogFormat,
    /// Tells sinks apart in `SHARD` (an address could be reused by a later sink).
    id: usize,
}

/// One thread's access-record buffer, shared with the sink's list of them.
type Shard = Arc<Mutex<Records>>;

/// Access records as request threads leave them: the line is formatted when the buffer is written
/// out, off the request's path (by the `ferrite-log` thread, or by a thread that fills its buffer).
#[derive(Default)]
struct Records {
    /// The records' strings, back to back.
    text: String,
    records: Vec<Deferred>,
}

/// One access record but its strings (those are in `Records::text`).
struct Deferred {
    at: SystemTime,
    version: u64,
    request_bytes: u64,
    response_bytes: u64,
    duration_us: u64,
    body_hmac: Option<[u8; 32]>,
    status: u16,
    /// Where request id, principal, method, path and model end in `Records::text`.
    ends: [usize; 5],
}

impl Records {
    fn push(&mut self, at: SystemTime, r: &AccessRecord<'_>) {
        let mut ends = [0; 5];
        for (end, s) in ends
            .iter_mut()
            .zip([r.request_id, r.principal, r.method, r.path, r.model])
        {
            self.text.push_str(s);
            *end = self.text.len();
        }
        self.records.push(Deferred {
            at,
            version: r.version,
            request_bytes: r.request_bytes,
            response_bytes: r.response_bytes,
            duration_us: r.duration_us,
            body_hmac: r.body_hmac,
            status: r.status,
            ends,
        });
    }

    /// Memory held by pending records.
    fn size(&self) -> usize {
        self.text.len() + self.records.len() * std::mem::size_of::<Deferred>()
    }

    /// Formats every record into `out`, in order.
    fn format_into(&self, out: &mut String, format: LogFormat) {
        let mut start = 0;
        for d in &self.records {
            let mut field = |end: usize| {
                let s = &self.text[start..end];
                start = end;
                s
            };
            let (request_id, principal, method) =
                (field(d.ends[0]), field(d.ends[1]), field(d.ends[2]));
            let (path, model) = (field(d.ends[3]), field(d.ends[4]));
            format_access(
                out,
                format,
                d.at,
                &AccessRecord {
                    request_id,
                    principal,
                    method,
                    path,
                    model,
                    version: d.version,
                    status: d.status,
                    request_bytes: d.request_bytes,
                    response_bytes: d.response_bytes,
                    duration_us: d.duration_us,
                    body_hmac: d.body_hmac,
                },
            );
        }
    }

    fn clear(&mut self) {
        self.text.clear();
        self.records.clear();
    }
}

/// What the writer out holds: the access lines being formatted, a spare record buffer to swap
/// with each thread's, and the other lines.
#[derive(Default)]
struct Out {
    access: String,
    spare: Records,
    lines: Vec<u8>,
}

thread_local! {
    /// This thread's access-record buffer, and the sink it belongs to (`Sink::id`).
    static SHARD: std::cell::RefCell<Option<(usize, Shard)>> =
        const { std::cell::RefCell::new(None) };
}

fn to_stderr(bytes: &[u8]) {
    let mut stderr = std::io::stderr().lock();
    // Nowhere to report a failed write to stderr; the lines are dropped.
    let _ = stderr.write_all(bytes).and_then(|_| stderr.flush());
}

impl Sink {
    fn new(write: fn(&[u8]), format: LogFormat) -> Sink {
        Sink {
            pending: Mutex::default(),
            shards: Mutex::default(),
            out: Mutex::default(),
            write,
            format,
            id: {
                static NEXT: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
        }
    }

    /// Adds an access record to this thread's buffer (its line is formatted when the buffer is
    /// written out); a thread whose buffer reaches `SHARD_MAX` writes everything out itself.
    fn append_access(&self, at: SystemTime, r: &AccessRecord<'_>) {
        let me = self.id;
        let full = SHARD.with(|slot| {
            let mut slot = slot.borrow_mut();
            let shard = match &*slot {
                Some((sink, shard)) if *sink == me => shard,
                _ => {
                    let shard = Arc::new(Mutex::new(Records::default()));
                    self.shards
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(shard.clone());
                    &slot.insert((me, shard)).1
                }
            };
            let mut records = shard.lock().unwrap_or_else(|e| e.into_inner());
            records.push(at, r);
            records.size() >= SHARD_MAX
        });
        if full {
            self.flush();
        }
    }

    fn push(&self, line: &[u8], urgent: bool) {
        let full = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.extend_from_slice(line);
            p.len() >= BUFFER_MAX
        };
        if urgent || full {
            self.flush();
        }
    }

    /// Writes out everything pending.
    pub fn flush(&self) {
        let mut guard = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let out = &mut *guard;
        self.shards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|shard| {
                // Swapped with the spare (both keep their capacity), so that the thread's lock is
                // held only for the swap, not while its lines are formatted.
                std::mem::swap(
                    &mut *shard.lock().unwrap_or_else(|e| e.into_inner()),
                    &mut out.spare,
                );
                out.spare.format_into(&mut out.access, self.format);
                out.spare.clear();
                // Only this list holds it once its thread has ended.
                Arc::strong_count(shard) > 1
            });
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            // Swapped, so that the buffers' capacity is kept and writers never wait on the write.
            std::mem::swap(&mut *p, &mut out.lines);
        }
        if !out.access.is_empty() {
            (self.write)(out.access.as_bytes());
            out.access.clear();
        }
        if !out.lines.is_empty() {
            (self.write)(&out.lines);
            out.lines.clear();
        }
    }
}

/// One `tracing` event's writer: collects the formatted event and hands it to the sink whole.
pub struct EventWriter {
    sink: &'static Sink,
    urgent: bool,
}

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sink.push(buf, self.urgent);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `MakeWriter` over the global sink; warnings and errors are urgent.
struct MakeSinkWriter(&'static Sink);

impl<'a> MakeWriter<'a> for MakeSinkWriter {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter {
            sink: self.0,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> EventWriter {
        EventWriter {
            sink: self.0,
            urgent: *meta.level() <= tracing::Level::WARN,
        }
    }
}

/// Installs the global subscriber and the `ferrite-log` flusher; a second call (tests) is a no-op.
pub fn init(format: LogFormat) {
    if SINK.set(Sink::new(to_stderr, format)).is_err() {
        return;
    }
    let sink = SINK.get().expect("set above. This is a bug.");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(MakeSinkWriter(sink));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    let spawned = std::thread::Builder::new()
        .name("ferrite-log".into())
        .spawn(move || loop {
            // A periodic timer, not a synchronisation: lines wait at most this long.
            std::thread::sleep(FLUSH_EVERY);
            sink.flush();
        });
    if spawned.is_err() {
        eprintln!("cannot start the log flusher thread; logging unbuffered");
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        flush();
        previous(info);
    }));
}

/// Writes out the buffered log lines now (at exit; `init` flushes on panic).
pub fn flush() {
    if let Some(sink) = SINK.get() {
        sink.flush();
    }
}

/// One access-log record: what `api::access` logs per request. Strings are the client's (request
/// id, path) or the principal's name: escaped and capped when written, never trusted as-is.
pub struct AccessRecord<'a> {
    pub request_id: &'a str,
    pub principal: &'a str,
    /// An HTTP method (a token: written as it is).
    pub method: &'a str,
    pub path: &'a str,
    pub model: &'a str,
    pub version: u64,
    pub status: u16,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_us: u64,
    /// The body's keyed hash (written in lowercase hex), if the body was read to its end.
    pub body_hmac: Option<[u8; 32]>,
}

/// Longest client string written to a log line, in bytes (longer ones are cut and marked `…`).
const MAX_FIELD: usize = 256;

/// Whether access lines are written: `init` ran and `RUST_LOG` lets `access` at `info` through.
pub fn access_enabled() -> bool {
    SINK.get().is_some() && tracing::enabled!(target: "access", tracing::Level::INFO)
}

/// Logs one access line (target `access`, level `info`, message `request`) in the server's log
/// format: the record goes into this thread's buffer, and the line is formatted when the buffer is
/// written out. Formatted here rather than by `tracing`'s formatter: this is the one line per
/// request, and the generic formatter (span scope, field visitors, dynamic dispatch) cost ~1.5 µs
/// of a ~40 µs request in profiles.
pub fn access(r: &AccessRecord<'_>) {
    if let Some(sink) = SINK.get() {
        sink.append_access(SystemTime::now(), r);
    }
}

fn format_access(line: &mut String, format: LogFormat, now: SystemTime, r: &AccessRecord<'_>) {
    let mut ts = [0u8; 27];
    let ts = timestamp(now, &mut ts);
    let mut hex = [0u8; 64];
    let body_hmac = match &r.body_hmac {
        // 32 bytes into 64 hex digits: the sizes match; hex digits are ASCII.
        Some(d) => match hex::encode_to_slice(d, &mut hex) {
            Ok(()) => std::str::from_utf8(&hex).unwrap_or("-"),
            Err(_) => "-",
        },
        None => "-",
    };
    // `None`: a value the server made that never needs quoting or escaping (the method is an HTTP
    // token, the HMAC lowercase hex or "-"), written as it is.
    let strings = [
        ("request_id", Some(r.request_id)),
        ("principal", Some(r.principal)),
        ("method", None),
        ("path", Some(r.path)),
        ("model", Some(r.model)),
    ];
    debug_assert!(plain_bytes(r.method.as_bytes()));
    let numbers = [
        ("version", r.version),
        ("status", u64::from(r.status)),
        ("request_bytes", r.request_bytes),
        ("response_bytes", r.response_bytes),
        ("duration_us", r.duration_us),
    ];
    // `write!` into a String cannot fail.
    match format {
        LogFormat::Text => {
            line.push_str(ts);
            line.push_str("  INFO access: request");
            for (k, v) in strings {
                line.push(' ');
                line.push_str(k);
                line.push('=');
                match v {
                    Some(v) => text_value(line, v),
                    None => line.push_str(r.method),
                }
            }
            for (k, v) in numbers {
                line.push(' ');
                line.push_str(k);
                line.push('=');
                line.push_str(itoa::Buffer::new().format(v));
            }
            line.push_str(" body_hmac=");
            line.push_str(body_hmac);
        }
        LogFormat::Json => {
            let _ = write!(
                line,
                "{{\"timestamp\":\"{ts}\",\"level\":\"INFO\",\"message\":\"request\""
            );
            for (k, v) in strings {
                json_key(line, k);
                match v {
                    Some(v) => json_string(line, v),
                    None => {
                        line.push('"');
                        line.push_str(r.method);
                        line.push('"');
                    }
                }
            }
            for (k, v) in numbers {
                json_key(line, k);
                line.push_str(itoa::Buffer::new().format(v));
            }
            line.push_str(",\"body_hmac\":\"");
            line.push_str(body_hmac);
            line.push_str("\",\"target\":\"access\"}");
        }
    }
    line.push('\n');
}

/// `s` cut to `MAX_FIELD` bytes at a character boundary; whether it was cut.
fn capped(s: &str) -> (&str, bool) {
    if s.len() <= MAX_FIELD {
        return (s, false);
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

/// A text-format value: as-is when it is plain, else quoted with `"`, `\` and control characters
/// escaped (a value can never start a new log line or fake another field).
fn text_value(line: &mut String, s: &str) {
    let (s, cut) = capped(s);
    // Printable ASCII but `"`, `\` and `=`; anything else (spaces, control characters, non-ASCII)
    // is quoted. Bytes, not chars: this runs over every field of every request.
    let plain = !s.is_empty() && plain_bytes(s.as_bytes());
    if plain && !cut {
        line.push_str(s);
        return;
    }
    line.push('"');
    escape_into(line, s);
    if cut {
        line.push('…');
    }
    line.push('"');
}

/// Whether every byte is printable ASCII but `"`, `\` and `=`. A fold without an early exit, so
/// that the compiler can check 16 to 64 bytes per instruction (the byte-at-a-time `all` was ~1 µs
/// of a ~45 µs request in a server profile).
fn plain_bytes(s: &[u8]) -> bool {
    s.iter().fold(true, |ok, &b| {
        ok & (b > b' ') & (b < 0x7f) & (b != b'"') & (b != b'\\') & (b != b'=')
    })
}

/// `,"key":`
fn json_key(line: &mut String, k: &str) {
    line.push_str(",\"");
    line.push_str(k);
    line.push_str("\":");
}

fn json_string(line: &mut String, s: &str) {
    let (s, cut) = capped(s);
    line.push('"');
    // ASCII with nothing to escape (the usual field) goes in whole.
    let plain = s.as_bytes().iter().fold(true, |ok, &b| {
        ok & (b' '..0x7f).contains(&b) & (b != b'"') & (b != b'\\')
    });
    if plain {
        line.push_str(s);
    } else {
        escape_into(line, s);
    }
    if cut {
        line.push('…');
    }
    line.push('"');
}

/// JSON string escaping (also what the text format's quoted values use).
fn escape_into(line: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(line, "\\u{:04x}", c as u32);
            }
            c => line.push(c),
        }
    }
}

/// RFC 3339 UTC with microseconds, as `tracing-subscriber` prints it (`2026-12-01T18:38:00.123456Z`),
/// written into `buf`. The part up to the seconds changes once a second and is kept per thread.
fn timestamp(now: SystemTime, buf: &mut [u8; 27]) -> &str {
    thread_local! {
        static SECOND: std::cell::Cell<(u64, [u8; 20])> = const { std::cell::Cell::new((u64::MAX, [0; 20])) };
    }
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (cached, mut prefix) = SECOND.get();
    if cached != secs {
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let (y, m, dd) = civil_from_days(days);
        let text = format!(
            "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        );
        // Years 0..=9999 give exactly 20 bytes; anything else is not a clock we can print.
        if text.len() == 20 {
            prefix.copy_from_slice(text.as_bytes());
            SECOND.set((secs, prefix));
        } else {
            prefix.copy_from_slice(b"0000-00-00T00:00:00.");
        }
    }
    buf[..20].copy_from_slice(&prefix);
    let mut micros = d.subsec_micros();
    for i in (20..26).rev() {
        buf[i] = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    buf[26] = b'Z';
    // ASCII digits and punctuation only.
    std::str::from_utf8(buf).unwrap_or("0000-00-00T00:00:00.000000Z")
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian; Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(request_id: &'a str, principal: &'a str, path: &'a str) -> AccessRecord<'a> {
        AccessRecord {
            request_id,
            principal,
            method: "POST",
            path,
            model: "digits",
            version: 1,
            status: 200,
            request_bytes: 612,
            response_bytes: 301,
            duration_us: 1234,
            body_hmac: Some([0xab; 32]),
        }
    }

    fn at(secs: u64, micros: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, micros * 1000)
    }

    #[test]
    fn timestamps_match_rfc3339_utc() {
        // Reference values from `date -u -d @SECS +%Y-%m-%dT%H:%M:%S`.
        for (secs, want) in [
            (0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, "2000-02-29T00:00:00.000000Z"),
            (1_796_149_080, "2026-12-01T18:18:00.000000Z"),
            (4_107_542_399, "2100-02-28T23:59:59.000000Z"),
        ] {
            assert_eq!(timestamp(at(secs, 0), &mut [0; 27]), want, "{secs}");
        }
        // Same second again (the cached date), then the next one.
        assert_eq!(
            timestamp(at(4_107_542_399, 999_999), &mut [0; 27]),
            "2100-02-28T23:59:59.999999Z"
        );
        assert_eq!(
            timestamp(at(4_107_542_400, 42), &mut [0; 27]),
            "2100-03-01T00:00:00.000042Z"
        );
    }

    #[test]
    fn plain_bytes_agrees_with_the_byte_rule_on_every_byte_and_long_strings() {
        let rule = |b: u8| b.is_ascii_graphic() && b != b'"' && b != b'\\' && b != b'=';
        for b in 0..=255u8 {
            assert_eq!(plain_bytes(&[b]), rule(b), "byte {b:#x}");
            // In the middle and at the end of strings longer than one vector.
            let mut long = vec![b'a'; 100];
            long[37] = b;
            assert_eq!(plain_bytes(&long), rule(b), "byte {b:#x} at 37");
            long[37] = b'a';
            long[99] = b;
            assert_eq!(plain_bytes(&long), rule(b), "byte {b:#x} at 99");
        }
        assert!(
            plain_bytes(b""),
            "empty is plain here; text_value quotes it"
        );
    }

    #[test]
    fn text_lines_have_every_field_and_cannot_be_forged() {
        let mut line = String::new();
        format_access(
            &mut line,
            LogFormat::Text,
            at(1_796_149_080, 7),
            &record("req-1", "bob\nFAKE status=500", "/v2/models/digits/infer"),
        );
        assert_eq!(
            line,
            "2026-12-01T18:18:00.000007Z  INFO access: request request_id=req-1 \
             principal=\"bob\\nFAKE status=500\" method=POST path=/v2/models/digits/infer \
             model=digits version=1 status=200 request_bytes=612 response_bytes=301 \
             duration_us=1234 body_hmac=abababababababababababababababababababababababababababababababab\n"
        );
    }

    #[test]
    fn json_lines_parse_and_long_client_strings_are_capped() {
        let long = "é".repeat(400);
        let mut line = String::new();
        format_access(
            &mut line,
            LogFormat::Json,
            at(0, 0),
            &record(&long, "alice \"admin\"", "/embed"),
        );
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object");
        assert_eq!(v["target"], "access");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "request");
        assert_eq!(v["principal"], "alice \"admin\"");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_us"], 1234);
        let id = v["request_id"].as_str().expect("a string");
        assert!(
            id.ends_with('…') && id.len() <= MAX_FIELD + '…'.len_utf8(),
            "{id}"
        );
        assert!(id.starts_with("éé"));
    }

    static WRITTEN: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    fn capture(bytes: &[u8]) {
        WRITTEN.lock().unwrap().extend_from_slice(bytes);
    }

    #[test]
    fn the_sink_writes_in_order_at_once_when_urgent_or_full() {
        let sink = Sink::new(capture, LogFormat::Text);
        sink.push(b"one\n", false);
        sink.push(b"two\n", false);
        assert!(WRITTEN.lock().unwrap().is_empty(), "buffered until a flush");
        sink.push(b"WARN three\n", true);
        assert_eq!(&*WRITTEN.lock().unwrap(), b"one\ntwo\nWARN three\n");
        assert!(sink.pending.lock().unwrap().is_empty());
        // A writer that fills the buffer writes it out itself: pending memory stays bounded.
        sink.push(&vec![b'x'; BUFFER_MAX], false);
        assert!(sink.pending.lock().unwrap().is_empty());
        assert_eq!(WRITTEN.lock().unwrap().len(), 19 + BUFFER_MAX);
        sink.push(b"four\n", false);
        sink.flush();
        assert!(WRITTEN.lock().unwrap().ends_with(b"xxfour\n"));
    }

    static ACCESS_WRITTEN: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    fn capture_access(bytes: &[u8]) {
        ACCESS_WRITTEN.lock().unwrap().extend_from_slice(bytes);
    }

    /// A record whose numbers and hash differ from thread to thread and record to record.
    fn numbered<'a>(id: &'a str, path: &'a str, t: u8, i: u32) -> AccessRecord<'a> {
        AccessRecord {
            version: u64::from(t),
            request_bytes: u64::from(i),
            duration_us: u64::from(i) * 7,
            body_hmac: (!i.is_multiple_of(3)).then_some([t ^ i as u8; 32]),
            ..record(id, "bob", path)
        }
    }

    #[test]
    fn access_records_from_many_threads_are_all_written_in_order_per_thread() {
        let sink = Arc::new(Sink::new(capture_access, LogFormat::Text));
        // Joined one by one (not `thread::scope`, which may return before a thread's locals are
        // dropped): once `join` returns, the thread's hold on its buffer is gone.
        let writers: Vec<_> = (0..4u8)
            .map(|t| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        let id = format!("t{t}-{i}");
                        let path = format!("/v2/models/m{t}/infer");
                        sink.append_access(at(1_796_149_080, i), &numbered(&id, &path, t, i));
                    }
                })
            })
            .collect();
        writers.into_iter().for_each(|w| w.join().unwrap());
        sink.push(b"after\n", false);
        assert!(
            ACCESS_WRITTEN.lock().unwrap().is_empty(),
            "buffered until a flush"
        );
        assert_eq!(
            sink.shards.lock().unwrap().len(),
            4,
            "one buffer per writing thread"
        );
        sink.flush();
        // The threads have ended: their buffers were written out and dropped.
        assert!(sink.shards.lock().unwrap().is_empty());
        let written = String::from_utf8(ACCESS_WRITTEN.lock().unwrap().clone()).unwrap();
        assert!(
            written.ends_with("after\n"),
            "access lines go before the other lines of a flush"
        );
        for t in 0..4 {
            let prefix = format!(" request_id=t{t}-");
            let seen: Vec<u32> = written
                .lines()
                .filter_map(|l| {
                    let (_, rest) = l.split_once(&prefix)?;
                    let (i, _) = rest.split_once(' ')?;
                    // Each record's own strings and numbers, back in its line.
                    let mut want = String::new();
                    let (id, path) = (format!("t{t}-{i}"), format!("/v2/models/m{t}/infer"));
                    let i: u32 = i.parse().unwrap();
                    let r = numbered(&id, &path, t, i);
                    format_access(&mut want, LogFormat::Text, at(1_796_149_080, i), &r);
                    assert_eq!(format!("{l}\n"), want);
                    Some(i)
                })
                .collect();
            assert_eq!(seen, (0..1000).collect::<Vec<_>>(), "thread {t}");
        }
        // A thread that fills its buffer formats and writes it out itself: pending memory stays
        // bounded.
        let before = ACCESS_WRITTEN.lock().unwrap().len();
        let long = "x".repeat(1000);
        let mut pushed = 0;
        while ACCESS_WRITTEN.lock().unwrap().len() == before {
            sink.append_access(at(0, 0), &record("r", "bob", &long));
            pushed += 1;
            assert!(
                pushed * 1000 <= SHARD_MAX,
                "written out by {SHARD_MAX} bytes"
            );
        }
        assert!(
            pushed * 1000 >= SHARD_MAX / 2,
            "not before it was nearly full"
        );
        let lines = String::from_utf8(ACCESS_WRITTEN.lock().unwrap()[before..].to_vec()).unwrap();
        assert_eq!(lines.lines().count(), pushed, "every record, in full");
    }
}
