//! Command-line options of `ferrite bench` and `ferrite capacity` (clap derive), and their
//! translation into the runner's plan. Defaults live here, next to the flags that show them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::client::{parse_header, ClientOptions};
use super::request::Protocol;
use super::runner::{Load, WindowPlan};
use super::schedule::{Arrivals, RangeSpec};
use super::LoadgenError;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Server base URL (http:// or https://; https needs --cacert)
    #[arg(short = 'u', long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Header sent on every request, `NAME:VALUE` (repeatable), e.g. `authorization:Bearer KEY`
    #[arg(long = "header", value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    /// PEM CA certificate(s) an https:// server's certificate must chain to
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Model name (KServe v2 path and metrics label; the `model` field for OpenAI)
    #[arg(short = 'm', long)]
    pub model: String,
    /// Model version (KServe v2); default: the server's choice
    #[arg(long)]
    pub model_version: Option<String>,
    /// Wire protocol of the target
    #[arg(long, value_enum, default_value = "v2-json")]
    pub protocol: Protocol,
    /// gRPC endpoint for `--protocol grpc` (`http://host:port`); default: the URL's host, port
    /// 8001. Metadata and metrics are still read over HTTP.
    #[arg(long)]
    pub grpc_url: Option<String>,
    /// Prometheus endpoint for the server-side split: a URL, or `host:port` (then `http://` and
    /// `/metrics` are added); default: http:// on the URL's host, port 8002. `none` turns scraping
    /// off. A failed scrape is reported once and leaves the server-side columns empty.
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// Closed loop: `start:end[:step]`, step `xK` multiplies, a number adds, none doubles
    /// (default when no range is given: concurrency 1)
    #[arg(long, conflicts_with = "request_rate_range")]
    pub concurrency_range: Option<RangeSpec>,
    /// Open loop: requests per second, `start:end[:step]` as above
    #[arg(long)]
    pub request_rate_range: Option<RangeSpec>,
    /// Open-loop arrivals
    #[arg(long, value_enum, default_value = "constant")]
    pub arrivals: Arrivals,
    /// Rows per request (KServe v2 batch dimension) or texts per request (embeddings)
    #[arg(short = 'b', long, default_value_t = 1)]
    pub batch_size: usize,
    /// Full shape for an input with variable dimensions, `name:d1,d2` (repeatable)
    #[arg(long = "shape")]
    pub shapes: Vec<String>,
    /// Inputs from a file: JSON lines, each a KServe v2 request body; one text per line for
    /// embeddings. Default: random data shaped from the model's metadata (random texts)
    #[arg(long)]
    pub input_data: Option<PathBuf>,
    /// Draw each request from the inputs with a Zipf(S) distribution over their order (the first
    /// is the most frequent; e.g. 1.1) instead of cycling through them in order: a workload with
    /// repeats, for the response cache. Seeded by --seed
    #[arg(long, value_name = "S")]
    pub zipf: Option<f64>,
    /// Words per random text (embeddings)
    #[arg(long, default_value_t = 16)]
    pub text_words: usize,
    /// Warm-up before measuring each step (not reported)
    #[arg(long, default_value_t = 1000)]
    pub warmup_ms: u64,
    /// Length of one measurement window
    #[arg(long, default_value_t = 2000)]
    pub measurement_interval_ms: u64,
    /// Most windows per step; a step ends earlier once the last 3 are stable
    #[arg(long, default_value_t = 10)]
    pub max_windows: usize,
    /// Stability rule: the last 3 windows' throughput and p99 within ± this percent of their mean
    #[arg(long, default_value_t = 10.0)]
    pub stability_percentage: f64,
    /// Open loop: most requests in flight (later sends wait, and that wait is counted)
    #[arg(long, default_value_t = 1024)]
    pub max_in_flight: usize,
    /// Stop the sweep after the first step whose p99 exceeds this
    #[arg(long)]
    pub latency_threshold_ms: Option<f64>,
    /// Threads of the client's runtime (default: all cores)
    #[arg(long)]
    pub client_threads: Option<usize>,
    /// Seed for random inputs and Poisson arrivals
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write perf_analyzer-style CSV here
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Write the full results as JSON here
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw the latency-throughput curve (SVG) here
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

impl BenchArgs {
    pub fn plan(&self) -> WindowPlan {
        WindowPlan {
            warmup: Duration::from_millis(self.warmup_ms),
            window: Duration::from_millis(self.measurement_interval_ms.max(1)),
            max_windows: self.max_windows.max(1),
            stability: self.stability_percentage / 100.0,
            max_in_flight: self.max_in_flight,
        }
    }

    /// The steps of the sweep, in order.
    pub fn loads(&self) -> Vec<Load> {
        match (&self.request_rate_range, &self.concurrency_range) {
            (Some(r), _) => r
                .values()
                .into_iter()
                .map(|rate| Load::Rate {
                    rate,
                    arrivals: self.arrivals,
                })
                .collect(),
            (None, Some(c)) => {
                let mut v: Vec<usize> =
                    c.values().into_iter().map(|x| x.round() as usize).collect();
                v.dedup();
                v.into_iter()
                    .map(|concurrency| Load::Concurrency { concurrency })
                    .collect()
            }
            (None, None) => vec![Load::Concurrency { concurrency: 1 }],
        }
    }

    pub fn client_threads(&self) -> usize {
        self.client_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }

    /// The metrics URL: `none`; given (scheme and `/metrics` added to a bare `host:port`); or
    /// plain http on the server URL's host, port 8002 (the metrics port never speaks TLS).
    pub fn metrics_url(&self) -> Option<String> {
        match self.metrics_url.as_deref() {
            Some("none") => None,
            Some(u) => {
                let (scheme, rest) = u.split_once("://").unwrap_or(("http", u));
                let rest = rest.trim_end_matches('/');
                let path = if rest.contains('/') { "" } else { "/metrics" };
                Some(format!("{scheme}://{rest}{path}"))
            }
            None => {
                let (_, rest) = self.url.split_once("://")?;
                let host = rest.split('/').next()?;
                let host = match host.rsplit_once(':') {
                    Some((h, port)) if !port.contains(']') => h,
                    _ => host,
                };
                Some(format!("http://{host}:8002/metrics"))
            }
        }
    }

    /// `--header` and `--cacert` as the client takes them.
    pub fn client_options(&self) -> Result<ClientOptions, LoadgenError> {
        Ok(ClientOptions {
            headers: self
                .headers
                .iter()
                .map(|h| parse_header(h))
                .collect::<Result<_, _>>()?,
            cacert: self.cacert.clone(),
            grpc_url: (self.protocol == super::request::Protocol::Grpc).then(|| self.grpc_url()),
        })
    }

    /// The gRPC endpoint: `--grpc-url`, or http:// on the URL's host, port 8001.
    pub fn grpc_url(&self) -> String {
        if let Some(u) = &self.grpc_url {
            return u.clone();
        }
        let rest = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, r)| r);
        let host = rest.split('/').next().unwrap_or(rest);
        let host = match host.rsplit_once(':') {
            Some((h, port)) if !port.contains(']') => h,
            _ => host,
        };
        format!("http://{host}:8001")
    }

    /// `--shape name:d1,d2` flags as a map.
    pub fn shape_map(&self) -> Result<HashMap<String, Vec<usize>>, LoadgenError> {
        self.shapes
            .iter()
            .map(|s| {
                let bad = || LoadgenError::Args(format!("--shape '{s}': expected name:d1,d2,.."));
                let (name, dims) = s.rsplit_once(':').ok_or_else(bad)?;
                let dims = dims
                    .split(',')
                    .map(|d| d.trim().parse::<usize>().map_err(|_| bad()))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((name.to_string(), dims))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        b: BenchArgs,
    }

    fn parse(args: &[&str]) -> BenchArgs {
        T::parse_from(std::iter::once("t").chain(args.iter().copied())).b
    }

    #[test]
    fn loads_concurrency_range_doubles() {
        let b = parse(&["-m", "x", "--concurrency-range", "1:8"]);
        let c: Vec<f64> = b.loads().iter().map(Load::value).collect();
        assert_eq!(c, vec![1.0, 2.0, 4.0, 8.0]);
    }

    #[test]
    fn loads_rate_range_poisson() {
        let b = parse(&[
            "-m",
            "x",
            "--request-rate-range",
            "100:300:100",
            "--arrivals",
            "poisson",
        ]);
        assert_eq!(
            b.loads()[2],
            Load::Rate {
                rate: 300.0,
                arrivals: Arrivals::Poisson
            }
        );
    }

    #[test]
    fn metrics_url_defaults_to_port_8002() {
        let b = parse(&["-m", "x", "-u", "http://10.0.0.5:9000"]);
        assert_eq!(
            b.metrics_url().as_deref(),
            Some("http://10.0.0.5:8002/metrics")
        );
        let b = parse(&["-m", "x", "--metrics-url", "none"]);
        assert_eq!(b.metrics_url(), None);
        let b = parse(&["-m", "x", "-u", "https://[::1]:8443/"]);
        assert_eq!(
            b.metrics_url().as_deref(),
            Some("http://[::1]:8002/metrics")
        );
    }

    #[test]
    fn metrics_url_bare_host_port_gets_path_and_scheme() {
        let url = |m: &str| parse(&["-m", "x", "--metrics-url", m]).metrics_url();
        let want = Some("http://127.0.0.1:9102/metrics".to_string());
        assert_eq!(url("http://127.0.0.1:9102"), want);
        assert_eq!(url("http://127.0.0.1:9102/"), want);
        assert_eq!(url("127.0.0.1:9102"), want);
        assert_eq!(url("http://127.0.0.1:9102/metrics"), want);
        assert_eq!(
            url("http://h:1/custom/path").as_deref(),
            Some("http://h:1/custom/path")
        );
    }

    #[test]
    fn client_options_headers_parsed_repeatable() {
        let b = parse(&["-m", "x", "--header", "x-api-key: k1", "--header", "x-b:2"]);
        let o = b.client_options().unwrap();
        assert_eq!(o.headers.len(), 2);
        assert_eq!(o.headers[0].0.as_str(), "x-api-key");
        assert_eq!(o.headers[0].1.to_str().unwrap(), "k1");
        assert!(parse(&["-m", "x", "--header", "novalue"])
            .client_options()
            .is_err());
    }

    #[test]
    fn shape_map_parses_dims() {
        let b = parse(&["-m", "x", "--shape", "ids:1,128"]);
        assert_eq!(b.shape_map().unwrap()["ids"], vec![1, 128]);
        assert!(parse(&["-m", "x", "--shape", "ids"]).shape_map().is_err());
    }
}
