//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`, seeded from the tests' bodies and
//! minimised with `cargo fuzz cmin`) through the same harness the fuzz targets run
//! (`ferrite::protocol::fuzz`), on stable: no input panics a decoder, holds more heap than the
//! harness's bound, or is accepted outside the models' budgets. `fuzz/regressions/<target>/*` are
//! inputs that once failed; they replay too. The long runs are in scripts/test-long.sh.

use std::path::Path;

use ferrite::protocol::fuzz::{CountingAlloc, TARGETS};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn replay(folder: &str, at_least: usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(folder);
    for (name, run) in TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.map(|e| e.expect("corpus entry").path()).collect())
            .unwrap_or_default();
        files.sort();
        assert!(
            files.len() >= at_least,
            "{}: {} inputs, expected at least {at_least}",
            dir.display(),
            files.len()
        );
        for f in files {
            let data = std::fs::read(&f).expect("corpus file");
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{name}: {} fails the harness", f.display());
        }
    }
}

#[test]
fn fuzz_corpus_every_input_passes_the_harness() {
    replay("corpus", 5);
}

#[test]
fn fuzz_regressions_every_input_passes_the_harness() {
    replay("regressions", 0);
}

/// What the fuzzer found, at sizes where the old decoders were far past the bound: every one of
/// these bodies passes the harness (heap within `AMPLIFICATION` x body + `SLACK`, and fast).
#[test]
fn fuzz_findings_large_bodies_stay_within_the_heap_bound() {
    use ferrite::protocol::fuzz::{kserve_v1, kserve_v2_json, openai, tei};
    let n = 50_000;
    let input = r#"{"name":"x","shape":[1],"datatype":"FP32","data":[1]}"#;
    // KServe v2 `parameters` of many small objects: a `serde_json::Map` tree cost ~100x the text.
    let params = (0..n)
        .map(|i| format!(r#""p{i}":{{"a":[{{}}]}}"#))
        .collect::<Vec<_>>()
        .join(",");
    kserve_v2_json(format!(r#"{{"parameters":{{{params}}},"inputs":[{input}]}}"#).as_bytes());
    // Many requested outputs: the duplicate check compared every pair (10^9 comparisons here).
    let outs = (0..n)
        .map(|i| format!(r#"{{"name":"o{i}"}}"#))
        .collect::<Vec<_>>()
        .join(",");
    kserve_v2_json(format!(r#"{{"inputs":[{input}],"outputs":[{outs}]}}"#).as_bytes());
    // KServe v1: the first instance was parsed into a tree to find its shape; a long list of
    // instances was read whole before the batch limit was checked.
    let row = vec!["1"; n].join(",");
    kserve_v1(format!(r#"{{"instances":[[{row}]]}}"#).as_bytes());
    let rows = vec!["{}"; n].join(",");
    kserve_v1(format!(r#"{{"instances":[{rows}]}}"#).as_bytes());
    // OpenAI/TEI: many tiny texts (an untagged enum buffered the list as a tree) and many
    // unknown fields (every field was kept in a map).
    let texts = vec![r#""""#; n].join(",");
    openai(format!(r#"{{"input":[{texts}]}}"#).as_bytes());
    tei(format!(r#"{{"inputs":[{texts}]}}"#).as_bytes());
    let fields = (0..n)
        .map(|i| format!(r#""f{i}":0"#))
        .collect::<Vec<_>>()
        .join(",");
    tei(format!(r#"{{{fields},"inputs":"x"}}"#).as_bytes());
}

/// The heap bound is live: `measure` sees what a closure allocates.
#[test]
fn counting_allocator_measures_the_peak_of_a_closure() {
    let (len, peak) = ferrite::protocol::fuzz::measure(|| vec![0u8; 1 << 20].len());
    assert_eq!(len, 1 << 20);
    assert!(peak >= 1 << 20, "peak {peak}");
}
