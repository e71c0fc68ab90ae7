//! The model repository (Triton-like): `models/<name>/config.toml` plus numbered version folders.
//! Loads a model's selected versions (weights, queue, workers, warm-up), unloads them, and answers
//! lookups by name/version and readiness. A model that fails to load never stops the others.
//! Reloads keep unchanged versions running and swap changed ones without failing a request;
//! each new version passes its validation gate (`gate.rs`) before requests are routed to it, and
//! a model's rollout state (split, shadow, guard; `rollout.rs`) decides which version serves a
//! request that names none.

pub mod gate;
pub mod placement;
mod rollout;
mod text;

/// The rollout types the API speaks.
pub mod rollout_api {
    pub use super::rollout::{
        GuardMemory, RolloutStatus, RoutingChange, ShadowSummary, VersionStatus,
    };
}

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use crate::batcher::{Queue, SubmitOptions};
use crate::cache::{self, RedisLevel, VersionCache};
use crate::device::{self, DeviceId, DeviceInfo};
use crate::model::{self, LoadOptions, Model, ModelError};
use crate::rollout::{CompareKind, GuardConfig, RolloutState};
use crate::spec::{ConfigError, ModelConfig, VersionMeta};
use crate::telemetry::rollout::RolloutMetrics;
use crate::telemetry::{Metrics, ModelMetrics};
use crate::tensor::{BytesData, DataType, Tensor, TensorData, Texts};
use crate::worker::{self, WorkerSpec};
pub use gate::GateReport;
pub use placement::PlacementError;
pub use rollout::{Routed, ShadowPlan};
pub use text::{TextError, TextModel, TextRun};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ModelState {
    Loading,
    Ready,
    Unavailable,
    /// Loaded, but its validation gate failed: never routed to (a version state).
    #[serde(rename = "FAILED_VALIDATION")]
    FailedValidation,
}

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("unknown model '{0}'")]
    ModelNotFound(String),
    #[error("model '{model}' has no version {version} loaded (loaded: {loaded:?})")]
    VersionNotFound {
        model: String,
        version: u64,
        loaded: Vec<u64>,
    },
    #[error("model '{model}' is not ready ({state:?}{})", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    NotReady {
        model: String,
        state: ModelState,
        reason: String,
    },
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("model '{model}': {message}")]
    Load { model: String, message: String },
    /// A rollout action that cannot apply now (unknown or failed version, nothing to roll back).
    #[error("model '{model}': {message}")]
    Conflict { model: String, message: String },
}

/// The class labels file in a model folder (one label per line, by class index).
pub const LABELS_FILE: &str = "labels.txt";

/// One loaded version: its queue, metrics and worker threads.
pub struct LoadedVersion {
    pub name: String,
    pub version: u64,
    pub config: Arc<ModelConfig>,
    pub queue: Queue,
    pub metrics: ModelMetrics,
    pub placement: Vec<(DeviceId, usize)>,
    /// Set for models that take text: tokenization happens before enqueue.
    pub text: Option<TextModel>,
    /// Set when the config enables `[response_cache]`: this version's entries (a new version
    /// gets a new one, with a new fingerprint).
    pub cache: Option<Arc<VersionCache>>,
    /// Class labels from the model folder's `labels.txt` (classification extension), by index.
    pub labels: Option<Arc<Vec<String>>>,
    /// The version folder's `version.toml`.
    pub meta: VersionMeta,
    /// What the linear layers run in on each of its devices (`Model::precision`), distinct and
    /// sorted: "f32", "bf16-amx", "q8", ...
    pub precision: Vec<&'static str>,
    /// The validation gate's figures (set once, right after warm-up).
    gate: Mutex<GateReport>,
    /// Requests may be routed here: the gate passed (or there is none), or a forced promotion.
    servable: AtomicBool,
    forced: AtomicBool,
    /// Hash of the version folder's files and the effective config (a reload with the same stamp
    /// keeps this version running).
    stamp: u64,
    /// Shadow copies in flight on this version (a full semaphore drops new ones).
    pub shadow_slots: Arc<tokio::sync::Semaphore>,
    /// Set when the config enables `[monitoring]`: the version's model-quality monitor (live
    /// traffic only; `api::infer::tap`).
    pub monitor: Option<Arc<crate::monitor::Monitor>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl LoadedVersion {
    /// Whether requests that name no version may be routed here.
    pub fn servable(&self) -> bool {
        self.servable.load(Ordering::Relaxed)
    }

    pub fn gate(&self) -> GateReport {
        self.gate.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn forced(&self) -> bool {
        self.forced.load(Ordering::Relaxed)
    }

    /// This version's state in the index: READY, or FAILED_VALIDATION until forced.
    pub fn state(&self) -> ModelState {
        if self.servable() {
            ModelState::Ready
        } else {
            ModelState::FailedValidation
        }
    }

    fn set_gate(&self, report: GateReport) {
        self.servable.store(report.passed, Ordering::Relaxed);
        *self.gate.lock().unwrap_or_else(|e| e.into_inner()) = report;
    }

    /// Closes the queue (queued requests are still served) and joins the workers. Blocking.
    fn stop_blocking(&self) {
        self.queue.close();
        let handles = std::mem::take(
            &mut *self
                .workers
                .lock()
                .expect("worker list lock poisoned. This is a bug."),
        );
        for h in handles {
            let _ = h.join();
        }
    }
}

#[derive(Clone)]
struct ModelEntry {
    state: ModelState,
    reason: String,
    /// Every loaded version, including those whose gate failed.
    versions: BTreeMap<u64, Arc<LoadedVersion>>,
    /// Selected versions that failed to load (bad checksum, corrupt weights, ...): why.
    failed: BTreeMap<u64, String>,
    rollout: RolloutState,
    guard: Option<GuardConfig>,
    compare: CompareKind,
    /// Whether `rollout` was set up from the config or a persisted state yet.
    rollout_ready: bool,
}

impl ModelEntry {
    fn new(state: ModelState) -> ModelEntry {
        ModelEntry {
            state,
            reason: String::new(),
            versions: BTreeMap::new(),
            failed: BTreeMap::new(),
            rollout: RolloutState::from_config(Default::default(), None, 0),
            guard: None,
            compare: CompareKind::MaxAbsDiff,
            rollout_ready: false,
        }
    }

    /// The newest servable version: where unnamed requests go without a split.
    fn default_version(&self) -> Option<&Arc<LoadedVersion>> {
        self.versions.values().rev().find(|lv| lv.servable())
    }

    /// The version the split gives most weight (when servable), else the default.
    fn primary(&self) -> Option<&Arc<LoadedVersion>> {
        self.rollout
            .split
            .primary()
            .and_then(|v| self.versions.get(&v))
            .filter(|lv| lv.servable())
            .or_else(|| self.default_version())
    }

    fn any_servable(&self) -> bool {
        self.versions.values().any(|lv| lv.servable())
    }
}

/// Instances of one model version on one device (for `GET /v2/devices`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstancePlacement {
    pub model: String,
    pub version: String,
    #[serde(skip)]
    pub device: DeviceId,
    pub count: usize,
}

/// One row of the repository index.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IndexEntry {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub state: ModelState,
    pub reason: String,
    /// The version's gate figures (versions only, when a gate is configured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<GateReport>,
}

pub struct Repository {
    root: PathBuf,
    devices: Vec<DeviceInfo>,
    metrics: Arc<Metrics>,
    /// Short read/write sections only, never across an await.
    models: RwLock<BTreeMap<String, ModelEntry>>,
    /// Serialises load/unload so that two reloads of one model cannot interleave.
    admin: tokio::sync::Mutex<()>,
    /// What each model folder looked like when it was last loaded (`poll_once` reloads on a
    /// change). Short sections, no await.
    fingerprints: Mutex<BTreeMap<String, Fingerprint>>,
    /// The shared Redis level of every cached version (`--cache-redis-url`).
    cache_redis: Option<Arc<RedisLevel>>,
    /// Where live routing changes are persisted (`--state-dir`); none: until restart.
    state_dir: Option<PathBuf>,
    /// Keyless requests routed so far (their routing sequence).
    seq: AtomicU64,
    rollout_metrics: RolloutMetrics,
}

/// A model folder's config file and version folders' files: (path, length, modified time).
type Fingerprint = Vec<(PathBuf, u64, Option<std::time::SystemTime>)>;

fn fingerprint(dir: &Path) -> Fingerprint {
    let mut out = Vec::new();
    let mut add = |p: PathBuf| {
        if let Ok(m) = std::fs::metadata(&p) {
            out.push((p, m.len(), m.modified().ok()));
        }
    };
    add(dir.join("config.toml"));
    for v in present_versions(dir) {
        let vdir = dir.join(v.to_string());
        add(vdir.clone());
        let mut files: Vec<PathBuf> = std::fs::read_dir(&vdir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        files.into_iter().for_each(&mut add);
    }
    out
}

/// Numbered version folders present in a model folder, ascending.
pub fn present_versions(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// Every model folder (one holding a `config.toml`) under `root`, sorted by name.
pub fn model_names(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("config.toml").is_file())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .collect();
    names.sort();
    names
}

impl Repository {
    pub fn new(root: PathBuf, devices: Vec<DeviceInfo>, metrics: Arc<Metrics>) -> Repository {
        Repository {
            root,
            devices,
            models: RwLock::new(BTreeMap::new()),
            admin: tokio::sync::Mutex::new(()),
            fingerprints: Mutex::new(BTreeMap::new()),
            cache_redis: None,
            state_dir: None,
            seq: AtomicU64::new(0),
            rollout_metrics: RolloutMetrics::new(metrics.registry()),
            metrics,
        }
    }

    /// Live routing changes are persisted under `dir` and read back at the next load.
    pub fn with_state_dir(mut self, dir: Option<PathBuf>) -> Repository {
        self.state_dir = dir;
        self
    }

    /// Versions whose config enables `[response_cache]` use `redis` as their shared level.
    pub fn with_cache_redis(mut self, redis: Option<Arc<RedisLevel>>) -> Repository {
        self.cache_redis = redis;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ModelEntry>> {
        self.models
            .read()
            .expect("model table lock poisoned. This is a bug.")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ModelEntry>> {
        self.models
            .write()
            .expect("model table lock poisoned. This is a bug.")
    }

    /// Loads every model in the repository; failures are logged and leave the model UNAVAILABLE.
    pub async fn load_all(&self) {
        for name in model_names(&self.root) {
            if let Err(e) = self.load(&name).await {
                tracing::error!(model = %name, error = %e, "model failed to load; the others still serve");
            }
        }
    }

    /// (Re)loads a model. Versions whose folder and effective config are unchanged keep running;
    /// new or changed ones are loaded, warmed up and gated before they replace the old ones, and
    /// the old ones drain (in-flight requests finish on them) before their workers exit. A
    /// version that fails to load or to pass its gate never takes traffic from a serving one.
    pub async fn load(&self, name: &str) -> Result<(), RepoError> {
        let _admin = self.admin.lock().await;
        let dir = self.root.join(name);
        if name.contains(['/', '\\']) || name.starts_with('.') || !dir.join("config.toml").is_file()
        {
            return Err(RepoError::ModelNotFound(name.into()));
        }
        self.fingerprints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.into(), fingerprint(&dir));
        let current = {
            let mut models = self.write();
            let e = models
                .entry(name.into())
                .or_insert_with(|| ModelEntry::new(ModelState::Loading));
            if e.versions.is_empty() {
                e.state = ModelState::Loading;
            }
            e.versions.clone()
        };
        let loaded = self.load_versions(name, &dir, &current).await;
        let old = {
            let mut models = self.write();
            let entry = models
                .get_mut(name)
                .expect("entry inserted above. This is a bug.");
            match &loaded {
                Ok(out) => self.apply(name, entry, out),
                Err(e) => {
                    if entry.versions.is_empty() {
                        entry.state = ModelState::Unavailable;
                    }
                    entry.reason = e.to_string();
                    Vec::new()
                }
            }
        };
        self.export_readiness(name, &dir, loaded.as_ref().map(|o| &o.versions), &old);
        self.persist(name);
        self.export_weights(name);
        retire(old);
        let out = loaded?;
        let (serving, why) = self
            .read()
            .get(name)
            .map(|e| (e.any_servable(), e.reason.clone()))
            .unwrap_or_default();
        if !why.is_empty() {
            let tail = if serving {
                " (the serving versions keep serving)"
            } else {
                ""
            };
            return Err(RepoError::Load {
                model: name.into(),
                message: format!("{why}{tail}"),
            });
        }
        tracing::info!(model = name, versions = ?out.versions.keys().collect::<Vec<_>>(), "model ready");
        Ok(())
    }

    /// Installs a load's outcome in the model's entry; returns the versions to retire.
    fn apply(
        &self,
        name: &str,
        entry: &mut ModelEntry,
        out: &LoadOutcome,
    ) -> Vec<Arc<LoadedVersion>> {
        let new_servable = out.versions.values().any(|lv| lv.servable());
        let mut next = out.versions.clone();
        if !new_servable {
            // Nothing new may serve: the versions serving now stay (beyond the version policy).
            for (v, lv) in &entry.versions {
                if lv.servable() {
                    next.entry(*v).or_insert_with(|| lv.clone());
                }
            }
        }
        let old = std::mem::replace(&mut entry.versions, next);
        let retired = old
            .into_iter()
            .filter(|(v, lv)| !entry.versions.get(v).is_some_and(|n| Arc::ptr_eq(n, lv)))
            .map(|(_, lv)| lv)
            .collect();
        entry.failed = out.failed.clone();
        let mut problems: Vec<String> = out
            .failed
            .iter()
            .map(|(v, e)| format!("version {v}: {e}"))
            .collect();
        problems.extend(
            out.versions
                .values()
                .filter(|lv| !lv.servable())
                .map(|lv| format!("version {}: {}", lv.version, lv.gate().summary())),
        );
        entry.reason = problems.join("; ");
        entry.state = if entry.any_servable() {
            ModelState::Ready
        } else {
            ModelState::Unavailable
        };
        let routing = &out.config.routing;
        let hash = routing.hash();
        if !entry.rollout_ready {
            entry.rollout = self
                .persisted(name)
                .filter(|p| p.config_hash == hash)
                .unwrap_or_else(|| {
                    RolloutState::from_config(routing.split(), routing.shadow.clone(), hash)
                });
            entry.rollout_ready = true;
        } else if entry.rollout.config_hash != hash {
            tracing::info!(
                model = name,
                "[routing] changed in config.toml: it replaces the live routing"
            );
            entry.rollout =
                RolloutState::from_config(routing.split(), routing.shadow.clone(), hash);
        }
        let loaded: Vec<u64> = entry.versions.keys().copied().collect();
        entry.rollout.retain_loaded(&loaded);
        entry.guard = routing.guard.clone();
        entry.compare = routing.compare.unwrap_or(if out.text {
            CompareKind::Cosine
        } else if out.labels {
            CompareKind::Argmax
        } else {
            CompareKind::MaxAbsDiff
        });
        retired
    }

    /// `ferrite_model_ready`: 1 for the versions now serving, 0 for selected versions that failed
    /// with nothing else serving; series of versions no longer present or replaced are dropped.
    fn export_readiness(
        &self,
        name: &str,
        dir: &Path,
        loaded: Result<&BTreeMap<u64, Arc<LoadedVersion>>, &RepoError>,
        replaced: &[Arc<LoadedVersion>],
    ) {
        let m = &self.metrics;
        let present = present_versions(dir);
        let now: BTreeMap<u64, bool> = self
            .read()
            .get(name)
            .map(|e| {
                e.versions
                    .iter()
                    .map(|(v, lv)| (*v, lv.servable()))
                    .collect()
            })
            .unwrap_or_default();
        match loaded {
            Ok(map) => {
                for (v, lv) in map {
                    m.set_model_precision(name, *v, &lv.precision);
                }
                for v in present.iter().chain(replaced.iter().map(|lv| &lv.version)) {
                    if !now.contains_key(v) {
                        m.forget_model_version(name, *v);
                    }
                }
                for (v, ok) in &now {
                    m.set_model_ready(name, *v, *ok);
                    self.rollout_metrics
                        .gate_passed
                        .with_label_values(&[name, &v.to_string()])
                        .set(i64::from(*ok));
                }
            }
            Err(_) => {
                if now.is_empty() {
                    let selected = ModelConfig::load(dir)
                        .map(|c| c.version_policy.select(&present))
                        .unwrap_or(present);
                    selected
                        .iter()
                        .for_each(|v| m.set_model_ready(name, *v, false));
                }
            }
        }
    }

    async fn load_versions(
        &self,
        name: &str,
        dir: &Path,
        current: &BTreeMap<u64, Arc<LoadedVersion>>,
    ) -> Result<LoadOutcome, RepoError> {
        let config = Arc::new(ModelConfig::load(dir)?);
        let present = present_versions(dir);
        let selected = config.version_policy.select(&present);
        let load_err = |message: String| RepoError::Load {
            model: name.into(),
            message,
        };
        if selected.is_empty() {
            return Err(load_err(format!(
                "no version folder matches version_policy {:?} (present: {present:?})",
                config.version_policy
            )));
        }
        let placement = placement::place(&config.instance_group, &self.devices)
            .map_err(|e: PlacementError| load_err(e.to_string()))?;
        let mut out = LoadOutcome {
            versions: BTreeMap::new(),
            failed: BTreeMap::new(),
            text: false,
            labels: dir.join(LABELS_FILE).is_file(),
            config: config.clone(),
        };
        // The version serving now: what `compare_to = "live"` gates against.
        // With nothing serving yet (a first load), the first version that passes becomes the
        // reference for the later ones.
        let mut live = {
            let models = self.read();
            models.get(name).and_then(|e| e.primary().cloned())
        };
        for v in selected {
            let vdir = dir.join(v.to_string());
            let prepared = VersionMeta::load(&vdir)
                .map_err(|e| e.to_string())
                .map(|meta| (effective_config(&config, &meta), meta));
            let (vconfig, meta) = match prepared {
                Ok(p) => p,
                Err(e) => {
                    out.failed.insert(v, e);
                    continue;
                }
            };
            let stamp = version_stamp(&vdir, &vconfig);
            if let Some(lv) = current.get(&v).filter(|lv| lv.stamp == stamp) {
                out.text |= lv.text.is_some();
                out.versions.insert(v, lv.clone());
                continue;
            }
            if let Err(e) = verify_weights(&vdir, &meta).await {
                tracing::error!(model = name, version = v, error = %e, "version refused");
                out.failed.insert(v, e);
                continue;
            }
            let started = self
                .start_version(name, v, dir, &Arc::new(vconfig), &placement, (meta, stamp))
                .await;
            match started {
                Ok(lv) => {
                    let reference = live.as_ref().filter(|l| l.version != v);
                    let report = gate::run(&lv, dir, reference.map(|l| l.as_ref())).await;
                    if report.configured {
                        match report.passed {
                            true => {
                                tracing::info!(model = name, version = v, report = ?report, "validation passed")
                            }
                            false => {
                                tracing::warn!(model = name, version = v, failures = ?report.failures, "validation failed: the version is loaded but never routed to")
                            }
                        }
                    }
                    lv.set_gate(report);
                    if live.is_none() && lv.servable() {
                        live = Some(lv.clone());
                    }
                    out.text |= lv.text.is_some();
                    out.versions.insert(v, lv);
                }
                Err(e) => {
                    tracing::error!(model = name, version = v, error = %e, "version failed to load");
                    out.failed.insert(v, e.to_string());
                }
            }
        }
        if out.versions.is_empty() {
            let why: Vec<String> = out
                .failed
                .iter()
                .map(|(v, e)| format!("version {v}: {e}"))
                .collect();
            return Err(load_err(why.join("; ")));
        }
        Ok(out)
    }

    async fn start_version(
        &self,
        name: &str,
        version: u64,
        dir: &Path,
        config: &Arc<ModelConfig>,
        placement: &[(DeviceId, usize)],
        (meta, stamp): (VersionMeta, u64),
    ) -> Result<Arc<LoadedVersion>, RepoError> {
        let metrics = self.metrics.for_model(name, version);
        let load_err = |message: String| RepoError::Load {
            model: name.into(),
            message: format!("version {version}: {message}"),
        };
        let vdir = dir.join(version.to_string());
        // The weights on every device first: nothing runs until all of them loaded.
        let mut models = Vec::with_capacity(placement.len());
        for &(dev, count) in placement {
            let m = load_on(config, &vdir, dev).await.map_err(load_err)?;
            // Instances on one GPU share its cuBLAS handle: their computes take turns.
            let m = if matches!(dev, DeviceId::Gpu(_)) && count > 1 {
                Arc::new(model::SerialCompute::new(m)) as Arc<dyn Model>
            } else {
                m
            };
            models.push((dev, count, m));
        }
        let mut precision: Vec<&'static str> = models
            .iter()
            .map(|(_, _, m)| m.precision().as_str())
            .collect();
        precision.sort_unstable();
        precision.dedup();
        // A model that takes text says so; its version tokenizes before enqueue.
        let text = match models.first().and_then(|(_, _, m)| m.text_input()) {
            Some(spec) => Some(TextModel::load(name, config, &spec).map_err(load_err)?),
            None => None,
        };
        let cache = match config.response_cache.enable {
            true => Some(
                self.version_cache(name, version, &vdir, config, (placement, &precision))
                    .await?,
            ),
            false => None,
        };
        let labels = match std::fs::read_to_string(dir.join(LABELS_FILE)) {
            Ok(text) => Some(Arc::new(
                text.lines().map(|l| l.trim_end().to_string()).collect(),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(load_err(format!("{LABELS_FILE}: {e}"))),
        };
        let monitor = match config.monitoring.enable {
            true => Some(
                crate::monitor::Monitor::spawn(crate::monitor::MonitorSpec {
                    model: name,
                    version,
                    config,
                    version_dir: &vdir,
                    text: text.is_some(),
                    metrics: self.metrics.for_monitor(name, version),
                })
                .map_err(|e| load_err(format!("cannot start the monitor thread: {e}")))?,
            ),
            false => None,
        };
        let queue = Queue::spawn(name, placement::batch_config(config), metrics.queue())
            .map_err(|e| load_err(format!("cannot start the queue thread: {e}")))?;
        let lv = Arc::new(LoadedVersion {
            name: name.into(),
            version,
            config: config.clone(),
            queue: queue.clone(),
            metrics: metrics.clone(),
            placement: placement.to_vec(),
            text,
            cache,
            labels,
            meta,
            precision,
            gate: Mutex::new(GateReport::not_configured()),
            servable: AtomicBool::new(false),
            forced: AtomicBool::new(false),
            stamp,
            shadow_slots: Arc::new(tokio::sync::Semaphore::new(
                (config.dynamic_batching.max_queue_size / 4).clamp(1, 1024),
            )),
            monitor,
            workers: Mutex::new(Vec::new()),
        });
        for (dev, count, m) in models {
            for index in 0..count {
                let spec = WorkerSpec {
                    model: name.into(),
                    version,
                    device: dev,
                    index,
                };
                let prefetch = placement::prefetch_on(config, dev);
                let started =
                    worker::spawn(spec, m.clone(), queue.clone(), metrics.clone(), prefetch);
                match started {
                    Ok(h) => lv
                        .workers
                        .lock()
                        .expect("worker list lock poisoned. This is a bug.")
                        .push(h),
                    Err(e) => {
                        stop_all(vec![lv]).await;
                        return Err(load_err(format!("cannot start worker thread: {e}")));
                    }
                }
            }
        }
        if let Err(e) = warm_up(&lv).await {
            stop_all(vec![lv]).await;
            return Err(load_err(format!("warm-up failed: {e}")));
        }
        Ok(lv)
    }

    /// The response cache of a version: its fingerprint hashes the weights' files (blocking,
    /// off the async threads) with the config and the precision path it runs.
    async fn version_cache(
        &self,
        name: &str,
        version: u64,
        vdir: &Path,
        config: &Arc<ModelConfig>,
        (placement, paths): (&[(DeviceId, usize)], &[&str]),
    ) -> Result<Arc<VersionCache>, RepoError> {
        let dir = vdir.to_path_buf();
        let weights = tokio::task::spawn_blocking(move || cache::key::hash_weights(&dir))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|e| RepoError::Load {
                model: name.into(),
                message: format!(
                    "version {version}: cannot hash the weights for the response cache: {e}"
                ),
            })?;
        let precision = precision_path(placement, paths);
        let fp = cache::Fingerprint::new(name, version, weights, config, &precision);
        tracing::info!(
            model = name,
            version,
            precision = %precision,
            ttl_secs = config.response_cache.ttl_secs,
            max_bytes = config.response_cache.max_bytes,
            shared = config.response_cache.shared,
            redis = self.cache_redis.is_some(),
            "response cache on"
        );
        Ok(Arc::new(VersionCache::new(
            &config.response_cache,
            fp,
            self.cache_redis.clone(),
            self.metrics.for_cache(name, version),
        )))
    }

    /// `--model-control poll`: one rescan of the repository folder, the source of truth. Model
    /// folders that are new or whose config or version folders changed are (re)loaded (a failed
    /// load keeps the serving versions); models whose folder is gone are unloaded.
    pub async fn poll_once(&self) {
        let names = model_names(&self.root);
        for name in &names {
            let now = fingerprint(&self.root.join(name));
            let known = self
                .fingerprints
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .cloned();
            if known.as_ref() != Some(&now) {
                tracing::info!(model = %name, "repository poll: model folder changed, loading");
                if let Err(e) = self.load(name).await {
                    tracing::error!(model = %name, error = %e, "repository poll: load failed; the serving versions keep serving");
                }
            }
        }
        let gone: Vec<String> = self
            .read()
            .iter()
            .filter(|(n, e)| !names.contains(n) && !e.versions.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            tracing::info!(model = %name, "repository poll: model folder removed, unloading");
            self.fingerprints
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&name);
            let _ = self.unload(&name).await;
        }
    }

    /// Unloads every version of a model; queued requests are still answered first.
    pub async fn unload(&self, name: &str) -> Result<(), RepoError> {
        let _admin = self.admin.lock().await;
        let old = {
            let mut models = self.write();
            let entry = models
                .get_mut(name)
                .ok_or_else(|| RepoError::ModelNotFound(name.into()))?;
            entry.state = ModelState::Unavailable;
            entry.reason = "unloaded".into();
            std::mem::take(&mut entry.versions)
        };
        old.keys()
            .for_each(|v| self.metrics.set_model_ready(name, *v, false));
        stop_all(old.into_values().collect()).await;
        tracing::info!(model = name, "model unloaded");
        Ok(())
    }

    /// The version to run: the given one (refused while its gate failed), or the live one (the
    /// split's primary, else the newest servable). Inference doors use `route` instead, which
    /// applies the split.
    pub fn get(&self, name: &str, version: Option<u64>) -> Result<Arc<LoadedVersion>, RepoError> {
        let lv = self.version_any(name, version)?;
        if version.is_some() && !lv.servable() {
            return Err(RepoError::NotReady {
                model: name.into(),
                state: ModelState::FailedValidation,
                reason: format!("version {}: {}", lv.version, lv.gate().summary()),
            });
        }
        Ok(lv)
    }

    /// Like `get`, but a given version is returned even when its gate failed (metadata, status).
    pub fn version_any(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<Arc<LoadedVersion>, RepoError> {
        let models = self.read();
        let entry = models
            .get(name)
            .ok_or_else(|| RepoError::ModelNotFound(name.into()))?;
        let found = match version {
            Some(v) => entry.versions.get(&v),
            None => entry.primary(),
        };
        match (found, version) {
            (Some(lv), _) => Ok(lv.clone()),
            (None, Some(v)) if !entry.versions.is_empty() => Err(RepoError::VersionNotFound {
                model: name.into(),
                version: v,
                loaded: entry.versions.keys().copied().collect(),
            }),
            (None, _) => Err(RepoError::NotReady {
                model: name.into(),
                state: entry.state,
                reason: entry.reason.clone(),
            }),
        }
    }

    /// The config of a model, from a loaded version or else from disk.
    pub fn config(&self, name: &str) -> Result<Arc<ModelConfig>, RepoError> {
        match self.get(name, None) {
            Ok(lv) => Ok(lv.config.clone()),
            Err(RepoError::NotReady { .. }) => {
                Ok(Arc::new(ModelConfig::load(&self.root.join(name))?))
            }
            Err(e) => Err(e),
        }
    }

    /// The primary version of the first model by name that has a ready version and whose primary
    /// passes `pred`, from the model table alone: the embedding doors ask this on every request
    /// that names no model, so it must not list the repository folder as `index` does.
    pub fn first_ready(&self, pred: impl Fn(&LoadedVersion) -> bool) -> Option<Arc<LoadedVersion>> {
        self.read()
            .values()
            .filter(|e| e.state != ModelState::Loading)
            .filter(|e| {
                e.versions
                    .values()
                    .any(|lv| lv.state() == ModelState::Ready)
            })
            .filter_map(ModelEntry::primary)
            .find(|lv| pred(lv))
            .cloned()
    }

    /// True when every model that loaded successfully is ready (none is mid-load).
    pub fn all_ready(&self) -> bool {
        self.read().values().all(|e| e.state != ModelState::Loading)
    }

    /// Every model folder and every loaded version, with states (the repository index).
    pub fn index(&self) -> Vec<IndexEntry> {
        let models = self.read();
        let mut out = Vec::new();
        for name in model_names(&self.root) {
            match models.get(&name) {
                Some(e) if !e.versions.is_empty() => {
                    out.extend(e.versions.values().map(|lv| {
                        let gate = lv.gate();
                        IndexEntry {
                            name: name.clone(),
                            version: Some(lv.version.to_string()),
                            state: if e.state == ModelState::Loading {
                                e.state
                            } else {
                                lv.state()
                            },
                            reason: if gate.configured && !lv.servable() {
                                gate.summary()
                            } else {
                                String::new()
                            },
                            validation: gate.configured.then_some(gate),
                        }
                    }));
                    out.extend(e.failed.iter().map(|(v, why)| IndexEntry {
                        name: name.clone(),
                        version: Some(v.to_string()),
                        state: ModelState::Unavailable,
                        reason: why.clone(),
                        validation: None,
                    }));
                }
                Some(e) => out.push(IndexEntry {
                    name,
                    version: None,
                    state: e.state,
                    reason: e.reason.clone(),
                    validation: None,
                }),
                None => out.push(IndexEntry {
                    name,
                    version: None,
                    state: ModelState::Unavailable,
                    reason: "not loaded".into(),
                    validation: None,
                }),
            }
        }
        out
    }

    /// Where every loaded version's instances run.
    pub fn placements(&self) -> Vec<InstancePlacement> {
        let models = self.read();
        let mut out = Vec::new();
        for lv in models.values().flat_map(|e| e.versions.values()) {
            out.extend(
                lv.placement
                    .iter()
                    .map(|&(device, count)| InstancePlacement {
                        model: lv.name.clone(),
                        version: lv.version.to_string(),
                        device,
                        count,
                    }),
            );
        }
        out
    }

    /// Stops every model (server shutdown).
    pub async fn shutdown(&self) {
        let all: Vec<Arc<LoadedVersion>> = {
            let mut models = self.write();
            models
                .values_mut()
                .flat_map(|e| std::mem::take(&mut e.versions).into_values())
                .collect()
        };
        stop_all(all).await;
    }
}

/// Loads a version's weights onto one device, on the blocking pool.
async fn load_on(
    config: &Arc<ModelConfig>,
    vdir: &Path,
    dev: DeviceId,
) -> Result<Arc<dyn Model>, String> {
    let (cfg, vdir) = (config.clone(), vdir.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let device = device::candle_device(dev).map_err(ModelError::from)?;
        // On a GPU the uploads and load-time conversions run asynchronously on this thread's
        // stream, and the workers read the weights from their own streams: wait for them here
        // (a no-op on the CPU).
        let options = LoadOptions::from_config(&cfg);
        let m = model::load(cfg.architecture, &options, &vdir, &device).and_then(|m| {
            device.synchronize()?;
            Ok(m)
        });
        // Loading reads the whole checkpoint and converts it, freeing about as much as it keeps
        // (f32 MiniLM: 215 -> 125 MB RSS when ready once released).
        worker::release_thread_memory();
        m
    })
    .await
    .map_err(|e| format!("loader panicked: {e}"))?
    .map_err(|e: ModelError| e.to_string())
}

/// The precision path a version runs, for its cache fingerprint: the devices, the CPU's SIMD
/// level (candle's and our kernels' dispatch differ in rounding between AVX-512, AVX2 and
/// baseline) and what the linear layers run in as loaded (`Model::precision`: f32, bf16 with
/// its kernel, q8, q4). A CPU with a different path never shares entries.
fn precision_path(placement: &[(DeviceId, usize)], paths: &[&str]) -> String {
    let mut devices: Vec<String> = placement
        .iter()
        .map(|(d, _)| match d {
            DeviceId::Cpu => format!("cpu-{}", cpu_simd_level()),
            DeviceId::Gpu(_) => "cuda".to_string(),
        })
        .collect();
    devices.sort();
    devices.dedup();
    format!("{}:{}", devices.join("+"), paths.join("+"))
}

fn cpu_simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "avx2";
        }
        "x86-64"
    }
    #[cfg(not(target_arch = "x86_64"))]
    std::env::consts::ARCH
}

/// Longest a retired version waits for the requests that hold it before its queue closes.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Closes versions' queues (queued work is still served) and joins their workers, on the
/// blocking pool. With `drain`, each version first waits (up to `DRAIN_LIMIT`) until every request
/// that picked it has let go (an in-flight request holds its version), so a swap fails no request.
/// Unload and shutdown close at once: a bulk job holding a version must see it go.
async fn stop_versions(versions: Vec<Arc<LoadedVersion>>, drain: bool) {
    if versions.is_empty() {
        return;
    }
    let _ = tokio::task::spawn_blocking(move || {
        let until = std::time::Instant::now() + DRAIN_LIMIT;
        for v in &versions {
            // Ours is the one reference left when the version is idle.
            while drain && Arc::strong_count(v) > 1 && std::time::Instant::now() < until {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            v.stop_blocking();
        }
    })
    .await;
}

async fn stop_all(versions: Vec<Arc<LoadedVersion>>) {
    stop_versions(versions, false).await
}

/// Replaced versions drain in the background: a reload returns at once.
fn retire(versions: Vec<Arc<LoadedVersion>>) {
    if !versions.is_empty() {
        tokio::spawn(stop_versions(versions, true));
    }
}

/// What loading a model's selected versions gave.
struct LoadOutcome {
    versions: BTreeMap<u64, Arc<LoadedVersion>>,
    failed: BTreeMap<u64, String>,
    /// The model takes text / has class labels (the shadow comparison's default).
    text: bool,
    labels: bool,
    config: Arc<ModelConfig>,
}

/// The model's config with a version's `[parameters]` overrides.
fn effective_config(config: &ModelConfig, meta: &VersionMeta) -> ModelConfig {
    let mut c = config.clone();
    for (k, v) in &meta.parameters {
        c.parameters.insert(k.clone(), v.clone());
    }
    c
}

/// Hash of a version folder's files (path, size, mtime) and its effective config without
/// `[routing]` (a routing change reloads nothing).
fn version_stamp(vdir: &Path, config: &ModelConfig) -> u64 {
    let mut c = config.clone();
    c.routing = Default::default();
    let mut files: Vec<(PathBuf, u64, Option<std::time::SystemTime>)> = std::fs::read_dir(vdir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((e.path(), m.len(), m.modified().ok()))
        })
        .collect();
    files.sort();
    let text = format!(
        "{files:?}|{}",
        serde_json::to_string(&c).unwrap_or_default()
    );
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

/// Checks `model.safetensors` against `version.toml`'s `weights_sha256` (when given), off the
/// async threads.
async fn verify_weights(vdir: &Path, meta: &VersionMeta) -> Result<(), String> {
    let Some(want) = meta.weights_sha256.clone() else {
        return Ok(());
    };
    let file = vdir.join("model.safetensors");
    let got = tokio::task::spawn_blocking(move || -> Result<String, String> {
        use sha2::Digest;
        use std::io::Read;
        let mut f = std::fs::File::open(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    })
    .await
    .map_err(|e| e.to_string())??;
    if got.eq_ignore_ascii_case(&want) {
        Ok(())
    } else {
        Err(format!(
            "model.safetensors has SHA-256 {got} but version.toml says weights_sha256 = {want}: refusing to load it"
        ))
    }
}

/// One forward pass per warm-up batch size, through the queue and workers (text models: through the
/// tokenizer too), with zero inputs or a short sentence.
async fn warm_up(lv: &LoadedVersion) -> Result<(), String> {
    let (config, queue) = (&lv.config, &lv.queue);
    let opts = SubmitOptions {
        warmup: true,
        ..SubmitOptions::default()
    };
    for rows in config.warmup_batch_sizes() {
        if let Some(text) = &lv.text {
            let texts: Texts = std::iter::repeat_n("Ferrite warms up this model.", rows).collect();
            text.run(queue, texts, true, opts.clone())
                .await
                .map_err(|e| e.to_string())?;
            continue;
        }
        let inputs = config
            .inputs
            .iter()
            .map(|s| {
                let shape = s.concrete_shape(1);
                let shape: Vec<usize> = if config.max_batch_size > 0 {
                    std::iter::once(rows)
                        .chain(shape[1..].iter().copied())
                        .collect()
                } else {
                    shape
                };
                let n = shape.iter().product();
                Tensor::new(s.name.clone(), shape, zeros(s.datatype, n))
            })
            .collect();
        queue
            .submit(inputs, rows, opts.clone())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn zeros(dt: DataType, n: usize) -> TensorData {
    match dt {
        DataType::Bool => TensorData::Bool(vec![false; n]),
        DataType::U8 => TensorData::U8(vec![0; n]),
        DataType::U16 => TensorData::U16(vec![0; n]),
        DataType::U32 => TensorData::U32(vec![0; n]),
        DataType::U64 => TensorData::U64(vec![0; n]),
        DataType::I8 => TensorData::I8(vec![0; n]),
        DataType::I16 => TensorData::I16(vec![0; n]),
        DataType::I32 => TensorData::I32(vec![0; n]),
        DataType::I64 => TensorData::I64(vec![0; n]),
        DataType::F16 => TensorData::F16(vec![half::f16::ZERO; n]),
        DataType::BF16 => TensorData::BF16(vec![half::bf16::ZERO; n]),
        DataType::F32 => TensorData::F32(vec![0.0; n]),
        DataType::F64 => TensorData::F64(vec![0.0; n]),
        DataType::Bytes => TensorData::Bytes(BytesData::empty_elements(n)),
    }
}

impl Repository {
    /// `ferrite validate`: loads `version` of `name` in this process (weights checksum, warm-up),
    /// runs its gate (against the live version when `compare_to = "live"`: the config's routing
    /// primary, else the newest other version present) and stops it again.
    pub async fn validate_offline(
        &self,
        name: &str,
        version: u64,
    ) -> Result<GateReport, RepoError> {
        let dir = self.root.join(name);
        if !dir.join("config.toml").is_file() {
            return Err(RepoError::ModelNotFound(name.into()));
        }
        let config = Arc::new(ModelConfig::load(&dir)?);
        let load_err = |message: String| RepoError::Load {
            model: name.into(),
            message,
        };
        let placement = placement::place(&config.instance_group, &self.devices)
            .map_err(|e: PlacementError| load_err(e.to_string()))?;
        let start = |v: u64| {
            let (dir, config, placement) = (dir.clone(), config.clone(), placement.clone());
            async move {
                let vdir = dir.join(v.to_string());
                if !vdir.is_dir() {
                    return Err(load_err(format!(
                        "version {v}: no folder {}",
                        vdir.display()
                    )));
                }
                let meta = VersionMeta::load(&vdir)?;
                let vconfig = effective_config(&config, &meta);
                verify_weights(&vdir, &meta)
                    .await
                    .map_err(|e| load_err(format!("version {v}: {e}")))?;
                let stamp = version_stamp(&vdir, &vconfig);
                self.start_version(name, v, &dir, &Arc::new(vconfig), &placement, (meta, stamp))
                    .await
            }
        };
        let candidate = start(version).await?;
        let compare_live = config
            .validation
            .as_ref()
            .is_some_and(|v| v.compare_to == crate::spec::CompareTo::Live);
        let live_version = config
            .routing
            .split()
            .primary()
            .filter(|&v| v != version)
            .or_else(|| {
                present_versions(&dir)
                    .into_iter()
                    .rev()
                    .find(|&v| v != version)
            });
        let live = match (compare_live, live_version) {
            (true, Some(v)) => Some(start(v).await?),
            _ => None,
        };
        let report = gate::run(&candidate, &dir, live.as_deref()).await;
        stop_all(std::iter::once(candidate).chain(live).collect()).await;
        Ok(report)
    }
}
