//! Workers on real threads with a probe model that logs when and where each batch is staged and
//! computed. Assertions are on the order of events that the channels force, not on durations; the
//! probe's compute sleep only makes the overlap window wide.

use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::batcher::{BatchConfig, QueueMetrics, SubmitOptions};
use crate::model::ModelError;
use crate::tensor::{Tensor, TensorData};

#[derive(Debug, Clone, Copy, PartialEq)]
enum What {
    StageStart,
    StageEnd,
    ComputeStart,
    ComputeEnd,
}

#[derive(Debug, Clone)]
struct Event {
    what: What,
    value: f32,
    at: std::time::Instant,
    thread: String,
}

/// Echo model: batch identity = its first input value. Stage panics on 13; compute fails on 7; a
/// gated probe's compute of 1 waits until the test opens the gate (at most `WAIT`).
struct Probe {
    log: Mutex<Vec<Event>>,
    compute_sleep: Duration,
    gate: Option<(flume::Sender<()>, flume::Receiver<()>)>,
}

/// Longest a test waits for an event before failing.
const WAIT: Duration = Duration::from_secs(20);

impl Probe {
    fn new(compute_sleep: Duration) -> Arc<Probe> {
        Arc::new(Probe {
            log: Mutex::new(Vec::new()),
            compute_sleep,
            gate: None,
        })
    }

    fn gated() -> Arc<Probe> {
        Arc::new(Probe {
            log: Mutex::new(Vec::new()),
            compute_sleep: Duration::ZERO,
            gate: Some(flume::bounded(1)),
        })
    }

    /// Lets the gated compute of 1 finish.
    fn open(&self) {
        self.gate
            .as_ref()
            .expect("a gated probe")
            .0
            .send(())
            .unwrap();
    }

    /// Waits (polling, at most `WAIT`) until `what` happened to batch `value`.
    async fn wait_for(&self, what: What, value: f32) {
        let start = std::time::Instant::now();
        while self.at(what, value).is_none() {
            assert!(
                start.elapsed() < WAIT,
                "{what:?} of {value} never happened: {:?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn note(&self, what: What, value: f32) {
        self.log.lock().unwrap().push(Event {
            what,
            value,
            at: std::time::Instant::now(),
            thread: std::thread::current().name().unwrap_or("").to_string(),
        });
    }

    fn events(&self) -> Vec<Event> {
        self.log.lock().unwrap().clone()
    }

    /// Batch values in the order their compute started (the queue's order; spawned clients may
    /// enqueue in any order).
    fn compute_order(&self) -> Vec<f32> {
        self.events()
            .iter()
            .filter(|e| e.what == What::ComputeStart)
            .map(|e| e.value)
            .collect()
    }

    fn at(&self, what: What, value: f32) -> Option<std::time::Instant> {
        self.events()
            .iter()
            .find(|e| e.what == what && e.value == value)
            .map(|e| e.at)
    }
}

fn first(t: &Tensor) -> f32 {
    match &t.data {
        TensorData::F32(v) => v[0],
        _ => f32::NAN,
    }
}

impl Model for Probe {
    fn device(&self) -> &candle_core::Device {
        &candle_core::Device::Cpu
    }

    fn stage(
        &self,
        batch: &[&[Tensor]],
        _xfer: &mut Transfer,
    ) -> Result<Staged, crate::model::ModelError> {
        let inputs: Vec<Tensor> = batch.iter().map(|r| r[0].clone()).collect();
        let v = first(&inputs[0]);
        self.note(What::StageStart, v);
        if v == 13.0 {
            panic!("probe asked to panic in stage");
        }
        self.note(What::StageEnd, v);
        Ok(Staged::new(inputs))
    }

    fn compute(
        &self,
        staged: Staged,
        _xfer: &mut Transfer,
        _timings: &mut StageTimings,
    ) -> Result<Vec<Vec<Tensor>>, ModelError> {
        let inputs: Vec<Tensor> = staged.take()?;
        let v = first(&inputs[0]);
        self.note(What::ComputeStart, v);
        std::thread::sleep(self.compute_sleep);
        if let Some((_, open)) = self.gate.as_ref().filter(|_| v == 1.0) {
            open.recv_timeout(WAIT).expect("the test opens the gate");
        }
        self.note(What::ComputeEnd, v);
        if v == 7.0 {
            return Err(ModelError::Failed("probe asked to fail".into()));
        }
        Ok(inputs.into_iter().map(|t| vec![t]).collect())
    }
}

fn queue() -> Queue {
    let metrics = QueueMetrics {
        pending: prometheus::IntGauge::new("p", "p").unwrap(),
        canceled: prometheus::IntCounter::new("c", "c").unwrap(),
    };
    let cfg = BatchConfig {
        max_batch_size: 1,
        max_queue_size: 64,
        ..BatchConfig::default()
    };
    Queue::spawn("probe", cfg, metrics).unwrap()
}

fn start(probe: &Arc<Probe>, queue: &Queue, prefetch: bool) -> JoinHandle<()> {
    start_with_metrics(probe, queue, prefetch, &crate::telemetry::Metrics::new())
}

fn start_with_metrics(
    probe: &Arc<Probe>,
    queue: &Queue,
    prefetch: bool,
    metrics: &crate::telemetry::Metrics,
) -> JoinHandle<()> {
    let spec = WorkerSpec {
        model: "probe".into(),
        version: 1,
        device: DeviceId::Cpu,
        index: 0,
    };
    let metrics = metrics.for_model("probe", 1);
    spawn(spec, probe.clone(), queue.clone(), metrics, prefetch).unwrap()
}

/// The value of `nv_inference_request_failure` for the probe with `reason`.
fn failures(metrics: &crate::telemetry::Metrics, reason: &str) -> f64 {
    let text = metrics.encode();
    text.lines()
        .find(|l| {
            l.starts_with("nv_inference_request_failure{")
                && l.contains(r#"model="probe""#)
                && l.contains(&format!(r#"reason="{reason}""#))
        })
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

type Reply = tokio::task::JoinHandle<Result<JobOutput, JobError>>;

/// With a gated probe: submits 1 and, once 1 computes, `v`; returns both clients once `v` is
/// staged behind 1.
async fn staged_behind_1(
    probe: &Probe,
    queue: &Queue,
    v: f32,
    opts: SubmitOptions,
) -> (Reply, Reply) {
    let q = queue.clone();
    let a = tokio::spawn(async move { q.submit(row(1.0), 1, SubmitOptions::default()).await });
    probe.wait_for(What::ComputeStart, 1.0).await;
    let q = queue.clone();
    let b = tokio::spawn(async move { q.submit(row(v), 1, opts).await });
    probe.wait_for(What::StageEnd, v).await;
    assert!(
        probe.at(What::ComputeEnd, 1.0).is_none(),
        "{v} must be staged while 1 computes"
    );
    (a, b)
}

/// After the gate opens: 1 succeeds, a later 3 is served, and `v` was never computed.
async fn served_but_not(probe: &Probe, queue: &Queue, a: Reply, v: f32, why: &str) {
    assert!(a.await.unwrap().is_ok());
    assert_eq!(run_all(queue, &[3.0]).await[0].as_ref().unwrap(), &3.0);
    assert!(
        probe.at(What::ComputeStart, v).is_none(),
        "computed a batch {why}: {:?}",
        probe.events()
    );
}

fn row(v: f32) -> Vec<Tensor> {
    vec![Tensor::new("x", vec![1, 1], TensorData::F32(vec![v]))]
}

/// Submits `values` in order (each its own batch), returns each request's first output or error.
async fn run_all(queue: &Queue, values: &[f32]) -> Vec<Result<f32, JobError>> {
    let mut handles = Vec::new();
    for &v in values {
        let q = queue.clone();
        handles.push(tokio::spawn(async move {
            q.submit(row(v), 1, SubmitOptions::default()).await
        }));
        tokio::task::yield_now().await;
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap().map(|o| first(&o.outputs[0])));
    }
    out
}

async fn stop(queue: Queue, handle: JoinHandle<()>) {
    queue.close();
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .expect("worker thread panicked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_on_stages_next_batch_during_compute_one_batch_deep() {
    let probe = Probe::new(Duration::from_millis(40));
    let q = queue();
    let h = start(&probe, &q, true);
    let values = [1.0, 2.0, 3.0, 4.0, 5.0];
    let got = run_all(&q, &values).await;
    assert_eq!(
        got.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        values
    );
    stop(q, h).await;
    let ev = probe.events();
    for e in &ev {
        let want = match e.what {
            What::StageStart | What::StageEnd => "ferrite-sprobe-cpu-0",
            _ => "ferrite-wprobe-cpu-0",
        };
        assert_eq!(e.thread, want, "{e:?}");
    }
    let order = probe.compute_order();
    assert_eq!(order.len(), values.len(), "{ev:?}");
    let overlapped = order
        .windows(2)
        .filter(|w| probe.at(What::StageEnd, w[1]) < probe.at(What::ComputeEnd, w[0]))
        .count();
    assert!(
        overlapped >= 1,
        "no batch was staged while another computed: {ev:?}"
    );
    for w in order.windows(3) {
        // Depth 1: batch i+2 is staged only after batch i has finished computing.
        assert!(
            probe.at(What::StageStart, w[2]) > probe.at(What::ComputeEnd, w[0]),
            "staged two batches ahead: {ev:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_off_stages_and_computes_in_turn_on_one_thread() {
    let probe = Probe::new(Duration::from_millis(5));
    let q = queue();
    let h = start(&probe, &q, false);
    let values = [1.0, 2.0, 3.0];
    assert!(run_all(&q, &values).await.iter().all(Result::is_ok));
    stop(q, h).await;
    let ev = probe.events();
    assert!(
        ev.iter().all(|e| e.thread == "ferrite-wprobe-cpu-0"),
        "{ev:?}"
    );
    let order = probe.compute_order();
    assert_eq!(order.len(), values.len(), "{ev:?}");
    for w in order.windows(2) {
        assert!(
            probe.at(What::StageStart, w[1]) > probe.at(What::ComputeEnd, w[0]),
            "{ev:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_stage_panic_or_compute_error_fails_only_that_batch() {
    let probe = Probe::new(Duration::from_millis(5));
    let q = queue();
    let h = start(&probe, &q, true);
    let got = run_all(&q, &[1.0, 13.0, 7.0, 4.0]).await;
    assert_eq!(got[0].as_ref().unwrap(), &1.0);
    let msg = got[1].as_ref().unwrap_err().to_string();
    assert!(msg.contains("staging the inputs panicked"), "{msg}");
    let msg = got[2].as_ref().unwrap_err().to_string();
    assert!(msg.contains("probe asked to fail"), "{msg}");
    assert_eq!(got[3].as_ref().unwrap(), &4.0);
    assert!(probe.at(What::ComputeStart, 13.0).is_none());
    stop(q, h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_staged_batch_whose_client_left_is_not_computed() {
    let probe = Probe::gated();
    let q = queue();
    let metrics = crate::telemetry::Metrics::new();
    let h = start_with_metrics(&probe, &q, true, &metrics);
    let (a, b) = staged_behind_1(&probe, &q, 2.0, SubmitOptions::default()).await;
    b.abort(); // the client of 2 leaves while 2 sits staged
    let _ = b.await;
    probe.open();
    served_but_not(&probe, &q, a, 2.0, "nobody waits for").await;
    assert_eq!(failures(&metrics, "CANCELED"), 1.0, "{}", metrics.encode());
    stop(q, h).await;
}

/// A request whose queue timeout passes while its batch waits staged is answered with the
/// timeout error (as if it had expired in the queue), and its batch is not computed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_staged_batch_past_its_deadline_times_out_without_compute() {
    let probe = Probe::gated();
    let q = queue();
    let h = start(&probe, &q, true);
    let opts = SubmitOptions {
        timeout: Some(Duration::from_millis(300)),
        ..SubmitOptions::default()
    };
    let (a, b) = staged_behind_1(&probe, &q, 2.0, opts).await;
    tokio::time::sleep(Duration::from_millis(350)).await; // 2's deadline passes while staged
    probe.open();
    let err = b.await.unwrap().expect_err("2 timed out while staged");
    assert!(
        matches!(
            err,
            JobError::Timeout {
                timeout_us: 300_000,
                ..
            }
        ),
        "{err}"
    );
    served_but_not(&probe, &q, a, 2.0, "past its deadline").await;
    stop(q, h).await;
}

/// Echo model that says whether it pads (`Model::is_padded`).
struct Seqs {
    padded: bool,
}

impl Model for Seqs {
    fn device(&self) -> &candle_core::Device {
        &candle_core::Device::Cpu
    }
    fn stage(&self, batch: &[&[Tensor]], _: &mut Transfer) -> Result<Staged, ModelError> {
        Ok(Staged::new(
            batch.iter().map(|r| r[0].clone()).collect::<Vec<_>>(),
        ))
    }
    fn compute(
        &self,
        staged: Staged,
        _: &mut Transfer,
        _: &mut StageTimings,
    ) -> Result<Vec<Vec<Tensor>>, ModelError> {
        let inputs: Vec<Tensor> = staged.take()?;
        Ok(inputs.into_iter().map(|t| vec![t]).collect())
    }
    fn is_padded(&self) -> bool {
        self.padded
    }
}

/// Sequence batches (a queue with a token budget) report their padding only from a model that
/// pads them; a packed model has none to report. `SerialCompute` passes the answer through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn padding_ratio_is_recorded_only_for_padded_models() {
    for padded in [true, false] {
        let model: Arc<dyn Model> =
            Arc::new(crate::model::SerialCompute::new(Arc::new(Seqs { padded })));
        assert_eq!(model.is_padded(), padded);
        let metrics = crate::telemetry::Metrics::new();
        let cfg = BatchConfig {
            max_batch_size: 8,
            max_batch_tokens: Some(1000),
            ..BatchConfig::default()
        };
        let q = Queue::spawn("probe", cfg, metrics.for_model("probe", 1).queue()).unwrap();
        let spec = WorkerSpec {
            model: "probe".into(),
            version: 1,
            device: DeviceId::Cpu,
            index: 0,
        };
        let h = spawn(spec, model, q.clone(), metrics.for_model("probe", 1), false).unwrap();
        for len in [3, 5] {
            let opts = SubmitOptions {
                cost: len,
                ..SubmitOptions::default()
            };
            q.submit(row(len as f32), 1, opts).await.unwrap();
        }
        stop(q, h).await;
        let count = metrics
            .encode()
            .lines()
            .find_map(|l| {
                l.strip_prefix(r#"ferrite_batch_padding_ratio_count{model="probe",version="1"} "#)
            })
            .map(|v| v.parse::<f64>().unwrap())
            .expect("the padding histogram is exported");
        let want = if padded { 2.0 } else { 0.0 };
        assert_eq!(count, want, "padded: {padded}");
    }
}
