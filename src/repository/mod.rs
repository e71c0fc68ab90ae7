//! The model repository (Triton-like): `models/<name>/config.toml` plus numbered version folders.
//! Loads a model's selected versions (weights, queue, workers, warm-up), unloads them, and answers
//! lookups by name/version and readiness. A model that fails to load never stops the others.

pub mod placement;
mod text;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use crate::batcher::{Queue, SubmitOptions};
use crate::cache::{self, RedisLevel, VersionCache};
use crate::device::{self, DeviceId, DeviceInfo};
use crate::model::{self, LoadOptions, Model, ModelError};
use crate::spec::{ConfigError, ModelConfig};
use crate::telemetry::{Metrics, ModelMetrics};
use crate::tensor::{DataType, Tensor, TensorData};
use crate::worker::{self, WorkerSpec};
pub use placement::PlacementError;
pub use text::{TextError, TextModel, TextRun};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ModelState {
    Loading,
    Ready,
    Unavailable,
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
    /// Set when the config enables `[monitoring]`: the version's model-quality monitor (live
    /// traffic only; `api::infer::tap`).
    pub monitor: Option<Arc<crate::monitor::Monitor>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl LoadedVersion {
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
    versions: BTreeMap<u64, Arc<LoadedVersion>>,
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
            metrics,
            models: RwLock::new(BTreeMap::new()),
            admin: tokio::sync::Mutex::new(()),
            fingerprints: Mutex::new(BTreeMap::new()),
            cache_redis: None,
        }
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

    /// (Re)loads a model: new versions are loaded and warmed up before they replace the old ones.
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
        self.write()
            .entry(name.into())
            .and_modify(|e| {
                e.state = if e.versions.is_empty() {
                    ModelState::Loading
                } else {
                    e.state
                }
            })
            .or_insert(ModelEntry {
                state: ModelState::Loading,
                reason: String::new(),
                versions: BTreeMap::new(),
            });
        let loaded = self.load_versions(name, &dir).await;
        let old = {
            let mut models = self.write();
            let entry = models
                .get_mut(name)
                .expect("entry inserted above. This is a bug.");
            match &loaded {
                Ok(new) => {
                    entry.state = ModelState::Ready;
                    entry.reason.clear();
                    std::mem::replace(&mut entry.versions, new.clone())
                }
                Err(e) => {
                    if entry.versions.is_empty() {
                        entry.state = ModelState::Unavailable;
                    }
                    entry.reason = e.to_string();
                    BTreeMap::new()
                }
            }
        };
        self.export_readiness(name, &dir, &loaded, &old);
        stop_all(old.into_values().collect()).await;
        loaded.map(|v| {
            tracing::info!(model = name, versions = ?v.keys().collect::<Vec<_>>(), "model ready");
        })
    }

    /// `ferrite_model_ready`: 1 for the versions now serving, 0 for selected versions that failed
    /// with nothing else serving; series of versions no longer present or replaced are dropped.
    fn export_readiness(
        &self,
        name: &str,
        dir: &Path,
        loaded: &Result<BTreeMap<u64, Arc<LoadedVersion>>, RepoError>,
        replaced: &BTreeMap<u64, Arc<LoadedVersion>>,
    ) {
        let m = &self.metrics;
        let present = present_versions(dir);
        match loaded {
            Ok(new) => {
                for v in present.iter().chain(replaced.keys()) {
                    if !new.contains_key(v) {
                        m.forget_model_version(name, *v);
                    }
                }
                new.keys().for_each(|v| m.set_model_ready(name, *v, true));
            }
            Err(_) => {
                let serving = self
                    .read()
                    .get(name)
                    .is_some_and(|e| !e.versions.is_empty());
                if !serving {
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
    ) -> Result<BTreeMap<u64, Arc<LoadedVersion>>, RepoError> {
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
        let mut versions = BTreeMap::new();
        for v in selected {
            match self.start_version(name, v, dir, &config, &placement).await {
                Ok(lv) => {
                    versions.insert(v, lv);
                }
                Err(e) => {
                    stop_all(versions.into_values().collect()).await;
                    return Err(e);
                }
            }
        }
        Ok(versions)
    }

    async fn start_version(
        &self,
        name: &str,
        version: u64,
        dir: &Path,
        config: &Arc<ModelConfig>,
        placement: &[(DeviceId, usize)],
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
        // A model that takes text says so; its version tokenizes before enqueue.
        let text = match models.first().and_then(|(_, _, m)| m.text_input()) {
            Some(spec) => Some(TextModel::load(name, config, &spec).map_err(load_err)?),
            None => None,
        };
        let cache = match config.response_cache.enable {
            true => Some(
                self.version_cache(name, version, &vdir, config, placement)
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
        placement: &[(DeviceId, usize)],
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
        let precision = precision_path(config, placement);
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

    /// The version to run: the given one or the newest loaded.
    pub fn get(&self, name: &str, version: Option<u64>) -> Result<Arc<LoadedVersion>, RepoError> {
        let models = self.read();
        let entry = models
            .get(name)
            .ok_or_else(|| RepoError::ModelNotFound(name.into()))?;
        let found = match version {
            Some(v) => entry.versions.get(&v),
            None => entry.versions.values().next_back(),
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
                    out.extend(e.versions.keys().map(|v| IndexEntry {
                        name: name.clone(),
                        version: Some(v.to_string()),
                        state: e.state,
                        reason: e.reason.clone(),
                    }))
                }
                Some(e) => out.push(IndexEntry {
                    name,
                    version: None,
                    state: e.state,
                    reason: e.reason.clone(),
                }),
                None => out.push(IndexEntry {
                    name,
                    version: None,
                    state: ModelState::Unavailable,
                    reason: "not loaded".into(),
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
/// baseline) and the quantization applied at load. A CPU with a different path never shares
/// entries.
fn precision_path(config: &ModelConfig, placement: &[(DeviceId, usize)]) -> String {
    let mut devices: Vec<String> = placement
        .iter()
        .map(|(d, _)| match d {
            DeviceId::Cpu => format!("cpu-{}", cpu_simd_level()),
            DeviceId::Gpu(_) => "cuda".to_string(),
        })
        .collect();
    devices.sort();
    devices.dedup();
    let quant = config.quantization.map_or("as-stored", |q| q.suffix());
    format!("{}:{quant}", devices.join("+"))
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

async fn stop_all(versions: Vec<Arc<LoadedVersion>>) {
    if versions.is_empty() {
        return;
    }
    let _ =
        tokio::task::spawn_blocking(move || versions.iter().for_each(|v| v.stop_blocking())).await;
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
            let texts = vec!["Ferrite warms up this model.".to_string(); rows];
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
        DataType::Bytes => TensorData::Bytes(vec![Vec::new(); n]),
    }
}
