//! The server's bulk jobs: each job is a folder under the jobs state folder (`--jobs-state-dir`)
//! holding `job.json` (who owns it, what it runs, its state), the uploaded input if any, the
//! checkpoint and parts while it runs, and `result.jsonl` / `result.rejects.jsonl` once done. At
//! most `max_running` jobs run at once (the rest wait, in order); each runs `run::run` on a blocking
//! thread, so file I/O never lands on the async I/O threads. A restart finds unfinished jobs on
//! disk and resumes them from their checkpoints; finished jobs are deleted `retention` after they
//! end. Jobs belong to the principal that made them: others get "no such job".
//!
//! No HTTP here: `api/jobs.rs` maps requests and `ManagerError` onto it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};

use super::run::{self, Progress, RunOptions};
use super::{Engine, InputSpec, JobsError};
use crate::repository::Repository;
use crate::telemetry::Metrics;

/// The jobs settings (`--jobs-*` flags), from `config`.
pub use crate::config::JobsSettings as JobsConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl JobState {
    /// As in `job.json` and the `state` label of `ferrite_jobs`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }

    pub fn finished(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Canceled
        )
    }
}

/// `job.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    /// The principal's name (`None` without `[auth]`).
    pub owner: Option<String>,
    pub model: String,
    pub version: Option<u64>,
    pub input: PathBuf,
    /// The input was uploaded into the job's folder (deleted when the job succeeds).
    pub uploaded: bool,
    pub input_spec: InputSpec,
    pub truncate: bool,
    pub created_unix: u64,
    pub finished_unix: Option<u64>,
    pub state: JobState,
    pub error: Option<String>,
    pub records: u64,
    pub rows: u64,
    pub rejected: u64,
}

/// A job to create (`Manager::create`).
pub struct NewJob {
    /// From `Manager::new_job_dir`.
    pub id: String,
    pub owner: Option<String>,
    pub model: String,
    pub version: Option<u64>,
    pub input: PathBuf,
    /// The input was uploaded into the job's folder.
    pub uploaded: bool,
    pub input_spec: InputSpec,
    pub truncate: bool,
}

/// What a client sees of a job (`GET /v2/jobs/{id}`).
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: String,
    pub model: String,
    pub state: JobState,
    pub records_done: u64,
    pub rows_done: u64,
    pub rows_failed: u64,
    /// Records per second in this run.
    pub rate: f64,
    pub eta_seconds: Option<f64>,
    pub created_unix: u64,
    pub finished_unix: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("bulk jobs are off: start the server with --jobs-state-dir")]
    Off,
    #[error("no job '{0}'")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

struct Handle {
    record: Mutex<JobRecord>,
    progress: Arc<Progress>,
    cancel: watch::Sender<bool>,
    /// Turns true when the job stops running (finished, canceled, or paused for a restart).
    stopped: watch::Sender<bool>,
    started: Mutex<Option<Instant>>,
}

impl Handle {
    fn record(&self) -> std::sync::MutexGuard<'_, JobRecord> {
        // Short sections only (no await); a panic inside leaves a whole record.
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Manager {
    cfg: JobsConfig,
    repo: Arc<Repository>,
    /// Short sections only, never across an await.
    jobs: Mutex<BTreeMap<String, Arc<Handle>>>,
    slots: Arc<Semaphore>,
    /// `ferrite_jobs{model,state}`: every known job counted once, under its state.
    by_state: prometheus::IntGaugeVec,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Job ids are UUIDs: nothing else may name a job folder.
fn valid_id(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok()
}

impl Manager {
    /// The manager; nothing runs until `resume`. `metrics`: the server's (for `ferrite_jobs`).
    pub fn new(cfg: JobsConfig, repo: Arc<Repository>, metrics: &Metrics) -> Arc<Manager> {
        Arc::new(Manager {
            slots: Arc::new(Semaphore::new(cfg.max_running.max(1))),
            cfg,
            repo,
            jobs: Mutex::new(BTreeMap::new()),
            by_state: metrics.jobs_by_state(),
        })
    }

    /// Moves a job to `to`, keeping `ferrite_jobs` in step.
    fn set_state(&self, r: &mut JobRecord, to: JobState) {
        self.by_state
            .with_label_values(&[r.model.as_str(), r.state.as_str()])
            .dec();
        self.by_state
            .with_label_values(&[r.model.as_str(), to.as_str()])
            .inc();
        r.state = to;
    }

    /// Opens the state folder (when configured), deletes expired jobs, resumes unfinished ones and
    /// starts the retention sweep. Call from within the tokio runtime, once the repository is
    /// loaded.
    pub fn resume(self: &Arc<Self>) -> std::io::Result<()> {
        let m = self;
        let Some(dir) = m.cfg.state_dir.clone() else {
            return Ok(());
        };
        std::fs::create_dir_all(&dir)?;
        let mut found: Vec<JobRecord> = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !valid_id(name) {
                continue;
            }
            match std::fs::read(path.join("job.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<JobRecord>(&b).ok())
            {
                Some(r) => found.push(r),
                None => tracing::warn!(
                    job = name,
                    "job folder without a readable job.json; left alone"
                ),
            }
        }
        found.sort_by_key(|r| r.created_unix);
        for r in found {
            let resume = !r.state.finished();
            let id = r.id.clone();
            let h = m.insert(r);
            if resume {
                tracing::info!(job = %id, "resuming job after restart");
                m.clone().spawn(h);
            }
        }
        m.sweep();
        let weak = Arc::downgrade(m);
        let every = m
            .cfg
            .retention
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(m) => m.sweep(),
                    None => return,
                }
            }
        });
        Ok(())
    }

    pub fn config(&self) -> &JobsConfig {
        &self.cfg
    }

    fn state_dir(&self) -> Result<&Path, ManagerError> {
        self.cfg.state_dir.as_deref().ok_or(ManagerError::Off)
    }

    fn insert(&self, r: JobRecord) -> Arc<Handle> {
        let id = r.id.clone();
        self.by_state
            .with_label_values(&[r.model.as_str(), r.state.as_str()])
            .inc();
        let h = Arc::new(Handle {
            stopped: watch::channel(r.state.finished()).0,
            record: Mutex::new(r),
            progress: Arc::new(Progress::default()),
            cancel: watch::channel(false).0,
            started: Mutex::new(None),
        });
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, h.clone());
        h
    }

    /// A new job id and the folder for it (created), where an upload is written before `create`.
    pub fn new_job_dir(&self) -> Result<(String, PathBuf), ManagerError> {
        let id = uuid::Uuid::new_v4().to_string();
        let dir = self.state_dir()?.join(&id);
        std::fs::create_dir_all(&dir)?;
        Ok((id, dir))
    }

    /// Resolves a client's `input_path` inside the configured input folder (no way out of it:
    /// `..`, absolute paths and symbolic links are resolved first, then checked).
    pub fn resolve_input(&self, requested: &str) -> Result<PathBuf, ManagerError> {
        let Some(root) = &self.cfg.input_dir else {
            return Err(ManagerError::BadRequest(
                "input_path is off: the server has no --jobs-input-dir; upload the input instead"
                    .into(),
            ));
        };
        let outside = || {
            ManagerError::BadRequest(format!(
                "input_path '{}' is not a file inside the jobs input folder",
                crate::protocol::kserve_v2::cap(requested)
            ))
        };
        let root = root.canonicalize()?;
        let path = root.join(requested).canonicalize().map_err(|_| outside())?;
        if !path.starts_with(&root) || !path.is_file() {
            return Err(outside());
        }
        Ok(path)
    }

    /// Registers and starts a job (its input already in place).
    pub fn create(self: &Arc<Self>, job: NewJob) -> Result<JobView, ManagerError> {
        let record = JobRecord {
            id: job.id,
            owner: job.owner,
            model: job.model,
            version: job.version,
            input: job.input,
            uploaded: job.uploaded,
            input_spec: job.input_spec,
            truncate: job.truncate,
            created_unix: now_unix(),
            finished_unix: None,
            state: JobState::Queued,
            error: None,
            records: 0,
            rows: 0,
            rejected: 0,
        };
        self.persist(&record)?;
        let h = self.insert(record);
        self.clone().spawn(h.clone());
        Ok(view(&h))
    }

    fn job_dir(&self, id: &str) -> Result<PathBuf, ManagerError> {
        Ok(self.state_dir()?.join(id))
    }

    fn persist(&self, r: &JobRecord) -> Result<(), ManagerError> {
        let dir = self.job_dir(&r.id)?;
        let tmp = dir.join("job.json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, dir.join("job.json"))?;
        Ok(())
    }

    /// The job, if it exists and `caller` owns it (others learn nothing about it).
    fn find(&self, id: &str, caller: Option<&str>) -> Result<Arc<Handle>, ManagerError> {
        self.state_dir()?;
        let h = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| ManagerError::NotFound(id.into()))?;
        if h.record().owner.as_deref() != caller {
            return Err(ManagerError::NotFound(id.into()));
        }
        Ok(h)
    }

    pub fn get(&self, id: &str, caller: Option<&str>) -> Result<JobView, ManagerError> {
        let h = self.find(id, caller)?;
        Ok(view(&h))
    }

    /// The result file of a finished job: `rejects` picks the rejects file.
    pub fn result(
        &self,
        id: &str,
        caller: Option<&str>,
        rejects: bool,
    ) -> Result<PathBuf, ManagerError> {
        let h = self.find(id, caller)?;
        let state = h.record().state;
        if state != JobState::Succeeded {
            return Err(ManagerError::Conflict(format!(
                "job '{id}' is {}; its result is there once it has succeeded",
                serde_json::to_value(state).map_or_else(|_| "-".into(), |v| v.to_string())
            )));
        }
        let out = self.job_dir(id)?.join("result.jsonl");
        Ok(if rejects {
            run::rejects_path(&out)
        } else {
            out
        })
    }

    /// Cancels a job and waits (at most `wait`) until it has stopped running.
    pub async fn cancel(
        &self,
        id: &str,
        caller: Option<&str>,
        wait: Duration,
    ) -> Result<JobView, ManagerError> {
        let h = self.find(id, caller)?;
        h.cancel.send_replace(true);
        let mut stopped = h.stopped.subscribe();
        let _ = tokio::time::timeout(wait, stopped.wait_for(|s| *s)).await;
        Ok(view(&h))
    }

    /// Waits (at most `wait`) until no job is running: called at shutdown once the models have
    /// stopped, so that each running job has recorded that it paused (it resumes at the next
    /// start).
    pub async fn wait_stopped(&self, wait: Duration) {
        let handles: Vec<Arc<Handle>> = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|h| h.record().state == JobState::Running)
            .cloned()
            .collect();
        let all = futures::future::join_all(handles.iter().map(|h| async move {
            let mut stopped = h.stopped.subscribe();
            let _ = stopped.wait_for(|s| *s).await;
        }));
        let _ = tokio::time::timeout(wait, all).await;
    }

    /// Deletes finished jobs older than the retention.
    fn sweep(&self) {
        let now = now_unix();
        let expired: Vec<String> = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, h)| expired(&h.record(), self.cfg.retention, now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            let gone = self
                .jobs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            if let Some(h) = gone {
                let r = h.record();
                self.by_state
                    .with_label_values(&[r.model.as_str(), r.state.as_str()])
                    .dec();
            }
            if let Ok(dir) = self.job_dir(&id) {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(job = %id, error = %e, "cannot delete an expired job");
                } else {
                    tracing::info!(job = %id, "expired job deleted (retention)");
                }
            }
        }
    }

    /// Runs a job when a slot is free; records how it ended.
    fn spawn(self: Arc<Self>, h: Arc<Handle>) {
        tokio::spawn(async move {
            let mut cancel = h.cancel.subscribe();
            let permit = tokio::select! {
                p = self.slots.clone().acquire_owned() => p.ok(),
                _ = cancel.wait_for(|c| *c) => None,
            };
            let outcome = match permit {
                None => Err(JobsError::Canceled),
                Some(_permit) => self.execute(&h).await,
            };
            self.conclude(&h, outcome);
        });
    }

    async fn execute(&self, h: &Arc<Handle>) -> Result<run::Summary, JobsError> {
        let rec = h.record().clone();
        let lv = self
            .repo
            .get(&rec.model, rec.version)
            .map_err(|e| JobsError::Unavailable(e.to_string()))?;
        let engine = Engine::new(lv, rec.truncate)?;
        let dir = self
            .job_dir(&rec.id)
            .map_err(|e| JobsError::Unsupported(e.to_string()))?;
        let opts = RunOptions {
            input: rec.input.clone(),
            output: dir.join("result.jsonl"),
            input_spec: rec.input_spec.clone(),
            part_records: 10_000,
            truncate: rec.truncate,
            restart: false,
        };
        {
            let mut r = h.record();
            self.set_state(&mut r, JobState::Running);
            let _ = self.persist(&r);
        }
        *h.started.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let (progress, cancel) = (h.progress.clone(), h.cancel.subscribe());
        tokio::task::spawn_blocking(move || {
            futures::executor::block_on(run::run(&engine, &opts, &progress, cancel))
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "a job thread panicked. This is a bug.");
            Err(JobsError::Unsupported("internal error".into()))
        })
    }

    fn conclude(&self, h: &Handle, outcome: Result<run::Summary, JobsError>) {
        let mut r = h.record();
        let p = &h.progress;
        r.records = p.records.load(Ordering::Relaxed);
        r.rows = p.rows.load(Ordering::Relaxed);
        r.rejected = p.rejected.load(Ordering::Relaxed);
        let to = match outcome {
            Ok(s) => {
                (r.records, r.rows, r.rejected) = (s.records, s.rows, s.rejected);
                if r.uploaded {
                    let _ = std::fs::remove_file(&r.input);
                }
                tracing::info!(job = %r.id, rows = s.rows, rejected = s.rejected, "job succeeded");
                JobState::Succeeded
            }
            Err(JobsError::Canceled) => {
                tracing::info!(job = %r.id, "job canceled");
                JobState::Canceled
            }
            Err(JobsError::Unavailable(e)) if !*h.cancel.borrow() => {
                // The model went away (unload, shutdown): resumed when the server starts again.
                tracing::warn!(job = %r.id, error = %e, "job paused: the model is not serving");
                JobState::Queued
            }
            Err(e @ (JobsError::Unsupported(_) | JobsError::Checkpoint(_))) => {
                r.error = Some(e.to_string());
                JobState::Failed
            }
            Err(e) => {
                tracing::error!(job = %r.id, error = %e, "job failed");
                r.error = Some("internal error (the server log has the detail)".into());
                JobState::Failed
            }
        };
        self.set_state(&mut r, to);
        if r.state.finished() {
            r.finished_unix = Some(now_unix());
        }
        if let Err(e) = self.persist(&r) {
            tracing::error!(job = %r.id, error = %e, "cannot write job.json");
        }
        drop(r);
        h.stopped.send_replace(true);
    }
}

/// A finished job whose retention has run out at `now` (seconds since the epoch); unfinished
/// jobs never expire.
fn expired(r: &JobRecord, retention: Duration, now: u64) -> bool {
    r.state.finished()
        && r.finished_unix
            .is_some_and(|f| f.saturating_add(retention.as_secs()) <= now)
}

fn view(h: &Handle) -> JobView {
    let r = h.record().clone();
    let p = &h.progress;
    let running = r.state == JobState::Running;
    let started = *h.started.lock().unwrap_or_else(|e| e.into_inner());
    let (rate, eta) = match (running, started) {
        (true, Some(s)) => run::rate_and_eta(p, s),
        _ => (0.0, None),
    };
    let live = |a: &std::sync::atomic::AtomicU64, stored: u64| {
        if running {
            a.load(Ordering::Relaxed)
        } else {
            stored
        }
    };
    JobView {
        id: r.id.clone(),
        model: r.model.clone(),
        state: r.state,
        records_done: live(&p.records, r.records),
        rows_done: live(&p.rows, r.rows),
        rows_failed: live(&p.rejected, r.rejected),
        rate,
        eta_seconds: eta,
        created_unix: r.created_unix,
        finished_unix: r.finished_unix,
        error: r.error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(input_dir: Option<PathBuf>) -> Arc<Manager> {
        let metrics = Arc::new(Metrics::new());
        let repo = Arc::new(Repository::new(
            PathBuf::from("."),
            Vec::new(),
            metrics.clone(),
        ));
        let cfg = JobsConfig {
            input_dir,
            ..JobsConfig::default()
        };
        Manager::new(cfg, repo, &metrics)
    }

    #[test]
    fn resolve_input_stays_inside_the_input_folder() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("sub")).unwrap();
        std::fs::write(root.path().join("sub/a.jsonl"), "x").unwrap();
        std::fs::write(outside.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link"))
            .unwrap();
        let m = manager(Some(root.path().to_path_buf()));
        let ok = m.resolve_input("sub/../sub/a.jsonl").unwrap();
        assert_eq!(ok, root.path().canonicalize().unwrap().join("sub/a.jsonl"));
        let secret = outside.path().join("secret");
        for bad in [
            "../secret",
            secret.to_str().unwrap(),
            "link",
            "sub",
            "missing",
            "",
        ] {
            assert!(
                matches!(m.resolve_input(bad), Err(ManagerError::BadRequest(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            manager(None).resolve_input("sub/a.jsonl"),
            Err(ManagerError::BadRequest(_))
        ));
    }

    fn record(state: JobState, finished_unix: Option<u64>) -> JobRecord {
        JobRecord {
            id: uuid::Uuid::new_v4().to_string(),
            owner: None,
            model: "m".into(),
            version: None,
            input: PathBuf::from("in.jsonl"),
            uploaded: true,
            input_spec: InputSpec::default(),
            truncate: true,
            created_unix: 100,
            finished_unix,
            state,
            error: None,
            records: 0,
            rows: 0,
            rejected: 0,
        }
    }

    #[test]
    fn expired_only_finished_jobs_past_their_retention() {
        let day = Duration::from_secs(86_400);
        for state in [JobState::Succeeded, JobState::Failed, JobState::Canceled] {
            let r = record(state, Some(1_000));
            assert!(!expired(&r, day, 1_000 + 86_399), "{state:?} kept a day");
            assert!(
                expired(&r, day, 1_000 + 86_400),
                "{state:?} gone after a day"
            );
        }
        for state in [JobState::Queued, JobState::Running] {
            assert!(!expired(&record(state, None), Duration::ZERO, u64::MAX));
        }
        assert!(!expired(
            &record(JobState::Succeeded, Some(u64::MAX)),
            day,
            u64::MAX - 1
        ));
    }

    #[test]
    fn jobs_gauge_follows_each_job_through_its_states() {
        let metrics = Metrics::new();
        let m = {
            let repo = Arc::new(Repository::new(
                PathBuf::from("."),
                Vec::new(),
                Arc::new(Metrics::new()),
            ));
            Manager::new(JobsConfig::default(), repo, &metrics)
        };
        let gauge = |state: &str| {
            metrics
                .jobs_by_state()
                .with_label_values(&["m", state])
                .get()
        };
        let h = m.insert(record(JobState::Queued, None));
        m.insert(record(JobState::Succeeded, Some(1)));
        assert_eq!((gauge("queued"), gauge("succeeded")), (1, 1));
        m.set_state(&mut h.record(), JobState::Running);
        assert_eq!((gauge("queued"), gauge("running")), (0, 1));
        m.set_state(&mut h.record(), JobState::Canceled);
        assert_eq!((gauge("running"), gauge("canceled")), (0, 1));
        // The retention sweep forgets the long-finished one (finished at 1 s past the epoch).
        m.sweep();
        assert_eq!((gauge("succeeded"), gauge("canceled")), (0, 1));
    }

    #[test]
    fn jobs_api_off_without_a_state_dir_and_ids_are_uuids() {
        let m = manager(None);
        assert!(matches!(m.new_job_dir(), Err(ManagerError::Off)));
        assert!(matches!(m.get("x", None), Err(ManagerError::Off)));
        assert!(valid_id(&uuid::Uuid::new_v4().to_string()));
        assert!(!valid_id("../etc"));
    }
}
