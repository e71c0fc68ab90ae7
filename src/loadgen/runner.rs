//! Runs one load step against a server and measures it: closed loop (N workers, each sending its
//! next request when the last one is answered) or open loop (sends at scheduled times, latency
//! counted from the *scheduled* time, so a slow server cannot hide its queueing: no coordinated
//! omission). A step is a warm-up (discarded), then back-to-back measurement windows until the last
//! three are stable or the window cap is hit. Server counters are scraped at the start of the first
//! measured window and after the last one; the client's own CPU time is taken over the same span.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;

use super::client::{HttpClient, Outcome};
use super::request::Payload;
use super::schedule::{Arrivals, Schedule};
use super::scrape::{self, GpuSample, ServerSplit};
use super::stats::{is_stable, percentiles, Percentiles, Window, WindowSummary, STABLE_WINDOWS};
use super::LoadgenError;

/// The load of one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Load {
    Concurrency { concurrency: usize },
    Rate { rate: f64, arrivals: Arrivals },
}

impl Load {
    /// The step's x value as printed: concurrency or requests/s.
    pub fn value(&self) -> f64 {
        match *self {
            Load::Concurrency { concurrency } => concurrency as f64,
            Load::Rate { rate, .. } => rate,
        }
    }
}

/// Warm-up, window length, window cap and the stability tolerance.
#[derive(Debug, Clone, Copy)]
pub struct WindowPlan {
    pub warmup: Duration,
    pub window: Duration,
    pub max_windows: usize,
    /// 0.10 = last three windows within ±10%.
    pub stability: f64,
    /// Open loop: most requests in flight at once; beyond it sends wait (their wait still counts).
    pub max_in_flight: usize,
}

/// What the bench talks to and sends.
#[derive(Clone)]
pub struct Target {
    pub client: HttpClient,
    /// Prometheus text endpoint of the server, for the server-side split.
    pub metrics_url: Option<String>,
    /// Set once a failed scrape has been reported (once per target, not per window).
    pub scrape_warned: Arc<AtomicBool>,
    pub model: String,
    pub payloads: Arc<Vec<Payload>>,
    /// Threads of the client's runtime (for the client-bottleneck check).
    pub client_threads: usize,
}

/// The measured result of one step.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub load: Load,
    /// Successful requests per second over the reported windows.
    pub throughput: f64,
    pub latency: Percentiles,
    pub ok: u64,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub windows: Vec<WindowSummary>,
    pub stable: bool,
    /// p99 of how late sends left against their schedule (open loop).
    pub send_lag_p99_us: Option<f64>,
    pub server: Option<ServerSplit>,
    pub gpu: Option<GpuSample>,
    /// Client CPU time / wall time over the measured windows (1.0 = one core busy).
    pub client_cpu_cores: f64,
    pub warnings: Vec<String>,
}

type Shared = Arc<Mutex<Window>>;

/// Open loop: a send-lag p99 above this (or under 95% of the rate completed) means the client
/// could not keep its schedule. Lag is counted in the latency either way.
const LATE_SEND_US: f64 = 5000.0;

/// Records one outcome. A std Mutex: the section is a few counter and histogram updates with no
/// `.await`, far shorter than a request; contention is negligible next to the HTTP round trip.
fn record(shared: &Shared, out: &Outcome, latency: Duration, lag: Option<Duration>) {
    let mut w = shared
        .lock()
        .expect("no panics while recording. This is a bug.");
    match out.error_kind() {
        None => w.record_ok(latency),
        Some(kind) => w.record_error(&kind),
    }
    if let Some(l) = lag {
        w.record_send_lag(l);
    }
}

fn take(shared: &Shared) -> Window {
    std::mem::take(
        &mut *shared
            .lock()
            .expect("no panics while recording. This is a bug."),
    )
}

async fn closed_loop(t: Target, mut i: usize, shared: Shared, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let p = &t.payloads[i % t.payloads.len()];
        i += 1;
        let t0 = Instant::now();
        let out = t.client.send(p).await;
        record(&shared, &out, t0.elapsed(), None);
        if matches!(out, Outcome::Transport(_)) {
            // a refused connection fails in microseconds: do not spin on it
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The open-loop scheduler: a plain OS thread, because tokio's timer has 1 ms granularity and would
/// add up to 1 ms of (measured) lateness to every send; `thread::sleep` wakes within ~0.1 ms.
fn open_loop(
    t: Target,
    mut schedule: Schedule,
    sem: Arc<tokio::sync::Semaphore>,
    shared: Shared,
    stop: Arc<AtomicBool>,
    rt: tokio::runtime::Handle,
) -> Vec<tokio::task::AbortHandle> {
    let start = Instant::now();
    let mut handles: Vec<tokio::task::AbortHandle> = Vec::new();
    for i in 0usize.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let at = start
            + schedule
                .next()
                .expect("the schedule is endless. This is a bug.");
        if let Some(d) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let permit = match sem.clone().try_acquire_owned() {
            Ok(p) => p,
            // closed at the end of the step, so this wait cannot outlive it
            Err(_) => match rt.block_on(sem.clone().acquire_owned()) {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (t2, shared) = (t.clone(), shared.clone());
        let h = rt.spawn(async move {
            let lag = at.elapsed();
            let out = t2.client.send(&t2.payloads[i % t2.payloads.len()]).await;
            // from the scheduled send time, not the actual one
            record(&shared, &out, at.elapsed(), Some(lag));
            drop(permit);
        });
        if handles.len() >= 4096 {
            handles.retain(|h| !h.is_finished());
        }
        handles.push(h.abort_handle());
    }
    handles
}

/// Process CPU time (user + system) so far.
fn cpu_time() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the pointer we own; RUSAGE_SELF is always valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return Duration::ZERO;
    }
    // SAFETY: getrusage returned 0, so it filled the struct (and it was zeroed before anyway).
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The metrics text; `None` when scraping is off or failed (the first failure is reported on
/// stderr: without it the server-side columns would just stay empty).
async fn scrape_text(t: &Target) -> Option<String> {
    let url = t.metrics_url.as_deref()?;
    match t.client.get_text(url).await {
        Ok(text) => Some(text),
        Err(e) => {
            if !t.scrape_warned.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "warning: cannot scrape server metrics ({e}); the server-side columns stay \
                     empty. Set --metrics-url (host:port of the metrics port) or --metrics-url none"
                );
            }
            None
        }
    }
}

/// Runs one step; `on_window` sees each finished window (for progress display).
pub async fn run_step(
    t: &Target,
    load: Load,
    plan: &WindowPlan,
    seed: u64,
    mut on_window: impl FnMut(usize, &WindowSummary),
) -> Result<StepResult, LoadgenError> {
    if t.payloads.is_empty() {
        return Err(LoadgenError::Args("no requests to send".into()));
    }
    let shared: Shared = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = JoinSet::new();
    let mut scheduler = None;
    let sem = Arc::new(tokio::sync::Semaphore::new(plan.max_in_flight.max(1)));
    match load {
        Load::Concurrency { concurrency } => {
            for i in 0..concurrency.max(1) {
                workers.spawn(closed_loop(t.clone(), i, shared.clone(), stop.clone()));
            }
        }
        Load::Rate { rate, arrivals } => {
            let schedule = Schedule::new(rate, arrivals, seed)?;
            let (t2, sh, st, sem) = (t.clone(), shared.clone(), stop.clone(), sem.clone());
            let rt = tokio::runtime::Handle::current();
            scheduler = Some(
                std::thread::Builder::new()
                    .name("ferrite-bench-sched".into())
                    .spawn(move || open_loop(t2, schedule, sem, sh, st, rt))
                    .map_err(|e| LoadgenError::Args(format!("cannot start scheduler: {e}")))?,
            );
        }
    }
    tokio::time::sleep(plan.warmup).await;
    let _ = take(&shared);
    let before = scrape_text(t).await.map(|s| scrape::counters(&s, &t.model));
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    let mut summaries = Vec::new();
    let mut kept: VecDeque<(Window, Duration)> = VecDeque::new();
    let mut gpus = Vec::new();
    let mut edge = tokio::time::Instant::now();
    loop {
        let from = Instant::now();
        edge += plan.window;
        tokio::time::sleep_until(edge).await;
        let win = take(&shared);
        let elapsed = from.elapsed();
        let s = WindowSummary::of(&win, elapsed);
        summaries.push(s);
        on_window(summaries.len(), &s);
        kept.push_back((win, elapsed));
        if kept.len() > STABLE_WINDOWS {
            kept.pop_front();
        }
        if let Some(g) = scrape_text(t).await.and_then(|s| scrape::gpu(&s)) {
            gpus.push(g);
        }
        if is_stable(&summaries, plan.stability) || summaries.len() >= plan.max_windows.max(1) {
            break;
        }
    }
    let cpu = (cpu_time().saturating_sub(cpu0)).as_secs_f64() / wall0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    sem.close();
    workers.abort_all();
    if let Some(h) = scheduler {
        let handles = tokio::task::spawn_blocking(move || h.join())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        handles.iter().for_each(|h| h.abort());
    }
    let after = scrape_text(t).await.map(|s| scrape::counters(&s, &t.model));
    let server = before.zip(after).and_then(|(b, a)| scrape::split(&b, &a));
    Ok(summarise(
        load,
        plan,
        summaries,
        kept,
        server,
        scrape::mean_gpu(&gpus),
        cpu,
        t.client_threads,
    ))
}

#[allow(clippy::too_many_arguments)]
fn summarise(
    load: Load,
    plan: &WindowPlan,
    windows: Vec<WindowSummary>,
    kept: VecDeque<(Window, Duration)>,
    server: Option<ServerSplit>,
    gpu: Option<GpuSample>,
    cpu: f64,
    threads: usize,
) -> StepResult {
    let mut all = Window::default();
    let mut secs = 0.0;
    for (w, d) in &kept {
        all.merge(w);
        secs += d.as_secs_f64();
    }
    let stable = is_stable(&windows, plan.stability);
    let throughput = all.ok as f64 / secs.max(1e-9);
    let lag = matches!(load, Load::Rate { .. }).then(|| percentiles(&all.send_lag).p99_us);
    let mut warnings = Vec::new();
    if !stable {
        warnings.push(format!(
            "not stable within {} windows (last 3 not within ±{:.0}%): treat as indicative",
            windows.len(),
            plan.stability * 100.0
        ));
    }
    let cores = threads.min(std::thread::available_parallelism().map_or(1, |n| n.get())) as f64;
    if cpu >= 0.8 * cores {
        warnings.push(format!(
            "client CPU {:.0}% of {cores:.0} core(s): the client may be the bottleneck, so this \
             throughput is a lower bound on the server's",
            cpu * 100.0
        ));
    }
    if let Load::Rate { rate, .. } = load {
        let sent = (all.ok + all.error_count()) as f64 / secs.max(1e-9);
        if sent < 0.95 * rate || lag.unwrap_or(0.0) > LATE_SEND_US {
            warnings.push(format!(
                "client fell behind the schedule ({sent:.0} of {rate:.0} req/s completed, send lag \
                 p99 {:.1} ms): the server is saturated or the client is the bottleneck",
                lag.unwrap_or(0.0) / 1000.0
            ));
        }
    }
    StepResult {
        load,
        throughput,
        latency: percentiles(&all.latency),
        ok: all.ok,
        errors: all.errors,
        windows,
        stable,
        send_lag_p99_us: lag,
        server,
        gpu,
        client_cpu_cores: cpu,
        warnings,
    }
}
