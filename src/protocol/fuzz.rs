//! The fuzz harness of the body decoders: one function per target (KServe v2 JSON and binary, KServe
//! v1, OpenAI embeddings, TEI) that decodes arbitrary bytes the way the server does, under the same
//! budgets (the bundled models' declared inputs and `max_batch_size`, a text model's
//! `max_client_batch_size`, the body limit), and panics when a decoder panics, when its heap peak
//! passes `AMPLIFICATION` times the body (plus `SLACK`), or when a request the server would accept
//! is not within those budgets. `fuzz/` (cargo fuzz, nightly) and `tests/fuzz_corpus.rs` (the
//! committed corpus, on stable) call these same functions; both install `CountingAlloc`.
//!
//! Must not: use anything but `protocol`'s decoders, `spec::{TensorSpec, validate_inputs}` and
//! `tensor`'s data types: the fuzz crate compiles exactly those files, not the server.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{kserve_v1, kserve_v2, openai, tei};
use crate::spec::{validate_inputs, TensorSpec};
use crate::tensor::{Tensor, TensorData, Texts};

/// A decode may hold at most this many times its body on the heap at its peak (plus `SLACK`),
/// counting what it returns.
pub const AMPLIFICATION: usize = 8;
/// Fixed allowance on top of `AMPLIFICATION` (error messages, small maps and vectors).
pub const SLACK: usize = 4 << 10;
/// The server's default body limit (`--max-body-bytes`): larger bodies are refused unread.
pub const MAX_BODY_BYTES: usize = 64 << 20;

/// A target: the harness function for one door's bodies.
pub type Target = fn(&[u8]);

/// Every target, by the name of its fuzz binary and corpus folder.
pub const TARGETS: [(&str, Target); 5] = [
    ("kserve_v2_json", kserve_v2_json),
    ("kserve_v2_binary", kserve_v2_binary),
    ("kserve_v1", kserve_v1),
    ("openai", openai),
    ("tei", tei),
];

/// A model as the decoders see it: its declared inputs and batch budget.
#[derive(serde::Deserialize)]
struct Declared {
    #[serde(default)]
    max_batch_size: usize,
    #[serde(rename = "input")]
    inputs: Vec<TensorSpec>,
    #[serde(default)]
    parameters: toml::Table,
}

/// The models whose budgets requests are checked against: the bundled ones (their real configs)
/// and two that cover what they do not (several inputs of other datatypes; no batching).
const MODELS: [(&str, bool); 4] = [
    (include_str!("../../models/digits/config.toml"), false),
    (include_str!("../../models/minilm/config.toml"), true),
    (
        r#"max_batch_size = 8
        input = [{ name = "a", datatype = "FP32", dims = [-1, 4] },
                 { name = "b", datatype = "INT64", dims = [-1, 2] },
                 { name = "c", datatype = "BYTES", dims = [-1] },
                 { name = "d", datatype = "BOOL", dims = [-1, 2, 2] },
                 { name = "e", datatype = "FP16", dims = [-1, -1] }]"#,
        false,
    ),
    (
        r#"input = [{ name = "x", datatype = "UINT16", dims = [2, 3] }]"#,
        false,
    ),
];

struct Model {
    decl: Declared,
    /// Served through the text path (texts in, embeddings out; rows = texts).
    text: bool,
}

impl Model {
    /// Most rows a request may carry: `max_client_batch_size` for a text model (as the server's
    /// text path, default 256), else `max_batch_size` (0 = no batch dimension).
    fn max_rows(&self) -> usize {
        if !self.text {
            return self.decl.max_batch_size;
        }
        self.decl
            .parameters
            .get("max_client_batch_size")
            .and_then(toml::Value::as_integer)
            .map_or(256, |n| n.max(1) as usize)
    }
}

fn models() -> &'static [Model] {
    static M: std::sync::OnceLock<Vec<Model>> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        MODELS
            .iter()
            .map(|(text, is_text)| Model {
                decl: toml::from_str(text).expect("a harness model config parses. This is a bug."),
                text: *is_text,
            })
            .collect()
    })
}

/// Target `kserve_v2_json`: the body of `POST /v2/models/{m}/infer` without binary data.
pub fn kserve_v2_json(body: &[u8]) {
    v2(body, None);
}

/// Target `kserve_v2_binary`: 4 bytes of little-endian `Inference-Header-Content-Length`, then the
/// body (JSON header followed by the inputs' binary data).
pub fn kserve_v2_binary(data: &[u8]) {
    let Some((len, body)) = data.split_first_chunk::<4>() else {
        return;
    };
    v2(body, Some(u32::from_le_bytes(*len) as usize));
}

fn v2(body: &[u8], header_len: Option<usize>) {
    if body.len() > MAX_BODY_BYTES {
        return;
    }
    // The server hands the decoder its body as `Bytes` (binary BYTES are read in place); that copy
    // is the body's, not the decoder's, so it is made before measuring.
    let body = bytes::Bytes::copy_from_slice(body);
    let (got, peak) = measure(|| kserve_v2::decode_request(&body, header_len));
    check_peak("kserve_v2", body.len(), peak);
    let Ok(req) = got else { return };
    for t in &req.inputs {
        let held: usize = t.shape.iter().product();
        // JSON `data` is refused past the shape's count as it is read; binary data is bounded by
        // the body and checked against the shape by validation.
        if header_len.is_none() {
            assert!(
                t.data.len() <= held,
                "input '{}': {} elements decoded for shape {:?}",
                t.name,
                t.data.len(),
                t.shape
            );
        }
        // Binary data is a slice of the body; in JSON the densest element ("0,": 2 characters)
        // becomes 8 bytes of an INT64/UINT64/FP64.
        let most = body.len() * if header_len.is_none() { 4 } else { 1 };
        assert!(
            payload_bytes(&t.data) <= most,
            "input '{}' decoded to more than {most} bytes",
            t.name
        );
    }
    for m in models() {
        accepted(m, &req.inputs);
    }
}

/// Target `kserve_v1`: the body of `POST /v1/models/{m}:predict`, decoded for each model.
pub fn kserve_v1(body: &[u8]) {
    if body.len() > MAX_BODY_BYTES {
        return;
    }
    for m in models() {
        let batching = m.decl.max_batch_size > 0;
        let (got, peak) =
            measure(|| kserve_v1::decode_request(body, &m.decl.inputs, batching, m.max_rows()));
        check_peak("kserve_v1", body.len(), peak);
        if let Ok(inputs) = got {
            accepted(m, &inputs);
        }
    }
}

/// Target `openai`: the body of `POST /v1/embeddings`.
pub fn openai(body: &[u8]) {
    if body.len() > MAX_BODY_BYTES {
        return;
    }
    let (got, peak) = measure(|| openai::decode_request(body));
    check_peak("openai", body.len(), peak);
    if let Ok(req) = got {
        texts(body, &req.input);
    }
}

/// Target `tei`: the body of `POST /embed`.
pub fn tei(body: &[u8]) {
    if body.len() > MAX_BODY_BYTES {
        return;
    }
    let (got, peak) = measure(|| tei::decode_request(body));
    check_peak("tei", body.len(), peak);
    if let Ok(req) = got {
        texts(body, &req.inputs);
    }
}

/// Decoded texts are never more than the body they came from (each at least its two quotes).
fn texts(body: &[u8], texts: &Texts) {
    let bytes: usize = texts.iter().map(str::len).sum();
    assert!(
        bytes <= body.len(),
        "{bytes} bytes of text out of a {}-byte body",
        body.len()
    );
    assert!(
        texts.len() <= body.len() / 2,
        "{} texts out of a {}-byte body",
        texts.len(),
        body.len()
    );
}

/// When the server's validation accepts `inputs` for `m`, they are within its budgets: batch rows
/// within `max_rows`, every tensor holding exactly its shape's elements, and the shape within the
/// declared dims.
fn accepted(m: &Model, inputs: &[Tensor]) {
    let max_rows = m.max_rows();
    let Ok(rows) = validate_inputs(&m.decl.inputs, max_rows, inputs) else {
        return;
    };
    let batched = max_rows > 0;
    assert!(
        rows >= 1 && rows <= max_rows.max(1),
        "{rows} rows accepted (max {max_rows})"
    );
    for t in inputs {
        let spec = m
            .decl
            .inputs
            .iter()
            .find(|s| s.name == t.name)
            .expect("validated");
        let held: usize = t.shape.iter().product();
        assert_eq!(
            t.data.len(),
            held,
            "input '{}' accepted with {} elements for shape {:?}",
            t.name,
            t.data.len(),
            t.shape
        );
        assert_eq!(t.shape.len(), spec.dims.len(), "input '{}' rank", t.name);
        if batched {
            assert_eq!(t.shape[0], rows, "input '{}' rows", t.name);
        }
        for (i, (&got, &want)) in t.shape.iter().zip(&spec.dims).enumerate() {
            let batch_dim = batched && i == 0;
            assert!(
                batch_dim || want < 0 || got as i64 == want,
                "input '{}' dim {i}: {got} for {want}",
                t.name
            );
        }
    }
}

/// The bytes a tensor's elements take (BYTES: their lengths).
fn payload_bytes(d: &TensorData) -> usize {
    match d {
        TensorData::Bytes(v) => v.byte_len(),
        other => other.len() * other.datatype().byte_size().unwrap_or(1),
    }
}

fn check_peak(target: &str, body: usize, peak: usize) {
    let budget = AMPLIFICATION * body + SLACK;
    assert!(
        peak <= budget,
        "{target}: decoding a {body}-byte body held {peak} bytes of heap at its peak \
         (budget {AMPLIFICATION} x body + {SLACK} = {budget})"
    );
}

/// A global allocator that counts, per thread, the bytes live and their peak since the last
/// `measure`; install it with `#[global_allocator]` in the binary that runs the harness.
pub struct CountingAlloc;

static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    // Signed: memory allocated before a measurement may be freed during it, or on another thread.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(add: isize) {
    // `try_with`: a thread being torn down still allocates; it is simply not counted.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + add;
        live.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

// SAFETY: every call is forwarded to `System` with the caller's arguments unchanged; the counting
// around it touches only const-initialised thread-locals (no allocation, no destructor).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Ordering::Relaxed);
        // SAFETY: forwarded unchanged (see the impl).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged (see the impl).
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged (see the impl).
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as a move: old and new blocks both live for a moment, as when it copies.
            count(new_size as isize);
            count(-(layout.size() as isize));
        }
        p
    }
}

/// Runs `f` and returns its result with the most heap it held at once on this thread (what it
/// returns included).
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    assert!(
        INSTALLED.load(Ordering::Relaxed),
        "protocol::fuzz::CountingAlloc is not the global allocator: the heap bound is not checked"
    );
    let peak = PEAK.with(Cell::get) - base;
    (r, peak.max(0) as usize)
}
