//! `ferrite bench` end to end: builds the requests (metadata-shaped random data or a file), walks
//! the sweep with a progress bar per step, and writes the table, CSV, JSON and plot.

use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::args::BenchArgs;
use super::client::HttpClient;
use super::request::{self, Payload, Protocol};
use super::runner::{run_step, StepResult, Target};
use super::{plot, report, LoadgenError};

/// Distinct random requests built per step set (cycled through while sending).
const RANDOM_PAYLOADS: usize = 16;

fn read(path: &std::path::Path) -> Result<String, LoadgenError> {
    std::fs::read_to_string(path).map_err(|e| LoadgenError::io(path, e))
}

/// Requests drawn up front for `--zipf` (cycled through like any input list; at 1.1 over 10,000
/// inputs, 2^20 draws reach the tail hundreds of times).
const ZIPF_SEQUENCE: usize = 1 << 20;

/// Builds the target: HTTP client, metrics URL and the requests to cycle through.
pub async fn prepare(args: &BenchArgs) -> Result<Target, LoadgenError> {
    let client = HttpClient::with_options(&args.url, &args.client_options()?)?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let payloads: Vec<Payload> = if args.protocol.is_v2() {
        let path = request::v2_path(&args.model, args.model_version.as_deref());
        let binary = args.protocol == Protocol::V2Binary;
        let version = args.model_version.as_deref();
        let make = |ins: &[crate::tensor::Tensor]| match args.protocol {
            Protocol::Grpc => request::grpc_payload(&args.model, version, ins),
            _ => request::v2_payload(&path, ins, binary),
        };
        match &args.input_data {
            Some(f) => request::v2_payloads_from_jsonl(&read(f)?, &path, binary)?
                .into_iter()
                .map(|p| match args.protocol {
                    Protocol::Grpc => {
                        let req = crate::protocol::kserve_v2::decode_request(&p.body, p.header_len)
                            .expect("re-decoding a request we encoded. This is a bug.");
                        make(&req.inputs)
                    }
                    _ => p,
                })
                .collect(),
            None => {
                let meta_path = match &args.model_version {
                    Some(v) => format!("/v2/models/{}/versions/{v}", args.model),
                    None => format!("/v2/models/{}", args.model),
                };
                let meta: serde_json::Value =
                    serde_json::from_str(&client.get_text(&meta_path).await?)
                        .map_err(|e| LoadgenError::Metadata(e.to_string()))?;
                let specs =
                    request::specs_from_metadata(&meta, args.batch_size, &args.shape_map()?)?;
                (0..RANDOM_PAYLOADS)
                    .map(|_| {
                        let ins: Vec<_> = specs
                            .iter()
                            .map(|s| request::random_tensor(s, &mut rng))
                            .collect();
                        make(&ins)
                    })
                    .collect()
            }
        }
    } else {
        let texts = match &args.input_data {
            Some(f) => request::texts_from_lines(&read(f)?),
            None => request::random_texts(
                &mut rng,
                RANDOM_PAYLOADS * args.batch_size.max(1),
                args.text_words,
            ),
        };
        request::text_payloads(args.protocol, &args.model, &texts, args.batch_size)
    };
    if payloads.is_empty() {
        return Err(LoadgenError::Args(
            "the input data file has no requests".into(),
        ));
    }
    let payloads = match args.zipf {
        None => payloads,
        Some(s) => request::zipf_sequence(&payloads, s, ZIPF_SEQUENCE, &mut rng)?,
    };
    Ok(Target {
        client,
        metrics_url: args.metrics_url(),
        scrape_warned: Arc::default(),
        model: args.model.clone(),
        payloads: Arc::new(payloads),
        client_threads: args.client_threads(),
    })
}

/// Runs every step of the sweep; stops early after a step whose p99 exceeds `stop_above_p99_ms`.
pub async fn sweep(
    target: &Target,
    args: &BenchArgs,
    stop_above_p99_ms: Option<f64>,
) -> Result<Vec<StepResult>, LoadgenError> {
    let plan = args.plan();
    let style = ProgressStyle::with_template("{prefix:>18} [{bar:20}] {pos}/{len} windows  {msg}")
        .expect("static template. This is a bug.")
        .progress_chars("=> ");
    let mut out = Vec::new();
    for (i, load) in args.loads().into_iter().enumerate() {
        let bar = ProgressBar::new(plan.max_windows as u64).with_style(style.clone());
        bar.set_prefix(report::load_label(&load));
        let step = run_step(
            target,
            load,
            &plan,
            args.seed.wrapping_add(i as u64),
            |n, w| {
                bar.set_position(n as u64);
                bar.set_message(format!(
                    "{:.1} req/s, p99 {:.2} ms",
                    w.throughput,
                    w.p99_us / 1000.0
                ));
            },
        )
        .await?;
        bar.finish_with_message(format!(
            "{:.1} infer/s, p99 {:.2} ms{}",
            step.throughput * args.batch_size as f64,
            step.latency.p99_us / 1000.0,
            if step.stable { "" } else { " (not stable)" }
        ));
        for w in &step.warnings {
            eprintln!("warning: {}: {w}", report::load_label(&load));
        }
        let over = stop_above_p99_ms.is_some_and(|ms| step.latency.p99_us > ms * 1000.0);
        out.push(step);
        if over {
            break;
        }
    }
    Ok(out)
}

/// Prints the table and writes the files the flags ask for.
pub fn write_outputs(args: &BenchArgs, steps: &[StepResult]) -> Result<(), LoadgenError> {
    print!("{}", report::table(steps, args.batch_size));
    if is_loopback(&args.url) {
        println!("note: the server is on this machine; client and server share its cores.");
    }
    if let Some(p) = &args.csv {
        let bytes = report::csv(steps, args.batch_size)?;
        std::fs::write(p, bytes).map_err(|e| LoadgenError::io(p, e))?;
    }
    if let Some(p) = &args.json {
        let text = report::json(args, steps);
        std::fs::write(p, text).map_err(|e| LoadgenError::io(p, e))?;
    }
    if let Some(p) = &args.plot {
        let curve = plot::Curve::of(&args.model, steps, args.batch_size);
        plot::latency_throughput(p, &format!("ferrite bench: {}", args.model), &[curve])?;
    }
    Ok(())
}

pub fn is_loopback(url: &str) -> bool {
    ["//127.", "//localhost", "//[::1]"]
        .iter()
        .any(|h| url.contains(h))
}
