//! The repository's rollout actions on a model's `RolloutState` (pure decisions in
//! `crate::rollout`): routing a request that names no version (split, sticky key, shadow), the
//! admin changes (routing, promote, rollback; each checked, recorded with its principal and
//! persisted), the status page, and the guard's periodic check of canaries.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{LoadedVersion, ModelEntry, RepoError, Repository};
use crate::rollout::guard::{self, Snapshot};
use crate::rollout::routing::{bucket_of_key, bucket_of_seq};
use crate::rollout::{CompareKind, RolloutState, ShadowSpec, Split, Verdict, WindowStats};

/// Salts of the keyless routing sequence and of the shadow draw (independent of each other).
const ROUTE_SALT: u64 = 0x5eed_0001;
const SHADOW_SALT: u64 = 0x5eed_0002;

/// A mirrored copy of a routed request.
pub struct ShadowPlan {
    pub candidate: Arc<LoadedVersion>,
    pub compare: CompareKind,
}

/// Where a request that named no version goes.
pub struct Routed {
    pub lv: Arc<LoadedVersion>,
    pub shadow: Option<ShadowPlan>,
}

/// A routing change through the admin API (`PUT .../routing`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingChange {
    /// Weights per version ("1": 90, "2": 10); absent: unchanged.
    #[serde(default)]
    pub weights: Option<BTreeMap<String, u32>>,
    /// A shadow spec, or `null` to stop shadowing; absent: unchanged.
    #[serde(default, with = "serde_with_null")]
    pub shadow: Option<Option<ShadowSpec>>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
mod serde_with_null {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// `GET /v2/models/{m}/rollout`.
#[derive(Debug, Serialize)]
pub struct RolloutStatus {
    pub model: String,
    /// Shares of unnamed requests in percent, per version (the effective split).
    pub effective: BTreeMap<String, f64>,
    pub live_version: Option<String>,
    pub rollout: RolloutState,
    pub versions: Vec<VersionStatus>,
    pub guard: Option<crate::rollout::GuardConfig>,
    pub compare: CompareKind,
    pub shadow: Option<ShadowSummary>,
    /// Live changes and automatic rollbacks apply to this replica only; `config.toml` is shared.
    pub scope: &'static str,
}

#[derive(Debug, Serialize)]
pub struct VersionStatus {
    pub version: String,
    pub state: super::ModelState,
    pub forced: bool,
    pub validation: super::GateReport,
    pub meta: crate::spec::VersionMeta,
}

/// What the shadow comparisons of the current candidate show (from the metrics).
#[derive(Debug, Serialize)]
pub struct ShadowSummary {
    pub candidate: String,
    pub compared_rows: u64,
    pub mean_agreement: Option<f64>,
    pub compared: u64,
    pub dropped: u64,
    pub failed: u64,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn conflict(model: &str, message: String) -> RepoError {
    RepoError::Conflict {
        model: model.into(),
        message,
    }
}

impl Repository {
    /// The version that serves a request naming none (the split; `key` makes it sticky) and,
    /// when the model shadows, a copy to mirror.
    pub fn route(&self, name: &str, key: Option<&[u8]>) -> Result<Routed, RepoError> {
        let models = self.read();
        let Some(entry) = models.get(name) else {
            return Err(RepoError::ModelNotFound(name.into()));
        };
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let bucket = key.map_or_else(|| bucket_of_seq(n, ROUTE_SALT), bucket_of_key);
        let picked = entry
            .rollout
            .split
            .pick(bucket)
            .and_then(|v| entry.versions.get(&v))
            .filter(|lv| lv.servable())
            .or_else(|| entry.default_version());
        let Some(lv) = picked.cloned() else {
            drop(models);
            return self.get(name, None).map(|lv| Routed { lv, shadow: None });
        };
        let shadow = entry.rollout.shadow.as_ref().and_then(|s| {
            let draw = bucket_of_seq(n, SHADOW_SALT) as f64;
            let chosen = draw < s.percent / 100.0 * crate::rollout::BUCKETS as f64;
            (chosen && s.version != lv.version)
                .then(|| entry.versions.get(&s.version))
                .flatten()
                .map(|c| ShadowPlan {
                    candidate: c.clone(),
                    compare: entry.compare,
                })
        });
        Ok(Routed { lv, shadow })
    }

    /// Applies an admin routing change: every version named with a weight must be loaded and
    /// servable (or forced), and so must the shadow's version be loaded.
    pub fn set_routing(
        &self,
        name: &str,
        change: RoutingChange,
        principal: &str,
    ) -> Result<RolloutStatus, RepoError> {
        {
            let mut models = self.write();
            let entry = models
                .get_mut(name)
                .ok_or_else(|| RepoError::ModelNotFound(name.into()))?;
            let split = match &change.weights {
                None => entry.rollout.split.clone(),
                Some(w) => {
                    let mut split = Split::default();
                    for (k, &weight) in w {
                        let v: u64 = k.parse().map_err(|_| {
                            conflict(name, format!("'{k}' is not a version number"))
                        })?;
                        let lv = entry.versions.get(&v).ok_or_else(|| {
                            conflict(
                                name,
                                format!(
                                    "version {v} is not loaded (loaded: {:?}); keep it with version_policy",
                                    entry.versions.keys().collect::<Vec<_>>()
                                ),
                            )
                        })?;
                        if weight > 0 && !lv.servable() {
                            return Err(conflict(
                                name,
                                format!(
                                    "version {v} {}: promote it with force to route to it",
                                    lv.gate().summary()
                                ),
                            ));
                        }
                        split.weights.insert(v, weight);
                    }
                    if split.is_empty() {
                        return Err(conflict(name, "the weights add up to 0".into()));
                    }
                    split
                }
            };
            let shadow = match change.shadow {
                None => entry.rollout.shadow.clone(),
                Some(None) => None,
                Some(Some(s)) => {
                    if !(0.0..=100.0).contains(&s.percent) {
                        return Err(conflict(
                            name,
                            format!("shadow percent {} is not in 0..=100", s.percent),
                        ));
                    }
                    if !entry.versions.contains_key(&s.version) {
                        return Err(conflict(
                            name,
                            format!("shadow version {} is not loaded", s.version),
                        ));
                    }
                    Some(s)
                }
            };
            entry
                .rollout
                .change(split, shadow, principal, "routing", now_unix());
        }
        self.after_change(name);
        self.rollout_status(name)
    }

    /// All unnamed traffic to `version`; refused when its gate failed unless `force` (which
    /// then marks it servable). A shadow of that version stops.
    pub fn promote(
        &self,
        name: &str,
        version: u64,
        force: bool,
        principal: &str,
    ) -> Result<RolloutStatus, RepoError> {
        {
            let mut models = self.write();
            let entry = models
                .get_mut(name)
                .ok_or_else(|| RepoError::ModelNotFound(name.into()))?;
            let lv = entry
                .versions
                .get(&version)
                .ok_or_else(|| conflict(name, format!("version {version} is not loaded")))?;
            if !lv.servable() {
                if !force {
                    return Err(conflict(
                        name,
                        format!(
                            "version {version} {}; add \"force\": true to promote it anyway",
                            lv.gate().summary()
                        ),
                    ));
                }
                tracing::warn!(
                    model = name,
                    version,
                    principal,
                    "promoting a version that failed validation (forced)"
                );
                lv.forced.store(true, Ordering::Relaxed);
                lv.servable.store(true, Ordering::Relaxed);
            }
            let shadow = entry
                .rollout
                .shadow
                .clone()
                .filter(|s| s.version != version);
            entry.rollout.change(
                Split::only(version),
                shadow,
                principal,
                "promote",
                now_unix(),
            );
        }
        self.after_change(name);
        self.rollout_status(name)
    }

    /// Back to the routing before the last change (live, promote or automatic rollback).
    pub fn rollback(&self, name: &str, principal: &str) -> Result<RolloutStatus, RepoError> {
        {
            let mut models = self.write();
            let entry = models
                .get_mut(name)
                .ok_or_else(|| RepoError::ModelNotFound(name.into()))?;
            entry
                .rollout
                .rollback(principal, now_unix())
                .map_err(|m| conflict(name, m))?;
            let loaded: Vec<u64> = entry.versions.keys().copied().collect();
            entry.rollout.retain_loaded(&loaded);
        }
        self.after_change(name);
        self.rollout_status(name)
    }

    fn after_change(&self, name: &str) {
        self.persist(name);
        self.export_weights(name);
    }

    pub fn rollout_status(&self, name: &str) -> Result<RolloutStatus, RepoError> {
        let models = self.read();
        let e = models
            .get(name)
            .ok_or_else(|| RepoError::ModelNotFound(name.into()))?;
        let shadow = e.rollout.shadow.as_ref().and_then(|s| {
            let live = e.primary()?.version.to_string();
            Some(self.shadow_summary(name, &live, &s.version.to_string()))
        });
        Ok(RolloutStatus {
            model: name.into(),
            effective: effective_split(e).percents(),
            live_version: e.primary().map(|lv| lv.version.to_string()),
            rollout: e.rollout.clone(),
            versions: e
                .versions
                .values()
                .map(|lv| VersionStatus {
                    version: lv.version.to_string(),
                    state: lv.state(),
                    forced: lv.forced(),
                    validation: lv.gate(),
                    meta: lv.meta.clone(),
                })
                .collect(),
            guard: e.guard.clone(),
            compare: e.compare,
            shadow,
            scope: "this replica (config.toml is shared by every replica that reads it)",
        })
    }

    fn shadow_summary(&self, model: &str, live: &str, candidate: &str) -> ShadowSummary {
        let m = &self.rollout_metrics;
        let h = m
            .shadow_agreement
            .with_label_values(&[model, live, candidate]);
        let count = |o: &str| {
            m.shadow_requests
                .with_label_values(&[model, candidate, o])
                .get()
        };
        let rows = h.get_sample_count();
        ShadowSummary {
            candidate: candidate.into(),
            compared_rows: rows,
            mean_agreement: (rows > 0).then(|| h.get_sample_sum() / rows as f64),
            compared: count("compared"),
            dropped: count("dropped"),
            failed: count("failed"),
        }
    }

    /// The rollout metrics (shadow comparisons are recorded by the API's shadow runner).
    pub fn rollout_metrics(&self) -> &crate::telemetry::rollout::RolloutMetrics {
        &self.rollout_metrics
    }

    /// `ferrite_routing_weight_percent` of every loaded version.
    pub(super) fn export_weights(&self, name: &str) {
        let models = self.read();
        let Some(e) = models.get(name) else { return };
        let shares = effective_split(e).percents();
        for v in e.versions.keys() {
            let v = v.to_string();
            let share = shares.get(&v).copied().unwrap_or(0.0);
            self.rollout_metrics
                .weight
                .with_label_values(&[name, &v])
                .set(share.round() as i64);
        }
    }

    fn state_file(&self, name: &str) -> Option<std::path::PathBuf> {
        self.state_dir
            .as_ref()
            .map(|d| d.join(format!("{name}.rollout.json")))
    }

    /// Writes the model's rollout state under `--state-dir` (atomically: temp file + rename).
    /// A failure is logged; the live state still applies until restart.
    pub(super) fn persist(&self, name: &str) {
        let Some(file) = self.state_file(name) else {
            return;
        };
        let Some(state) = self.read().get(name).map(|e| e.rollout.clone()) else {
            return;
        };
        let write = || -> std::io::Result<()> {
            if let Some(d) = file.parent() {
                std::fs::create_dir_all(d)?;
            }
            let tmp = file.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&state)?)?;
            std::fs::rename(&tmp, &file)
        };
        if let Err(e) = write() {
            tracing::error!(model = name, file = %file.display(), error = %e, "cannot persist the routing state; it applies until restart");
        }
    }

    /// The persisted rollout state of a model, if any (an unreadable file is logged and ignored).
    pub(super) fn persisted(&self, name: &str) -> Option<RolloutState> {
        let file = self.state_file(name)?;
        let bytes = std::fs::read(&file).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(model = name, file = %file.display(), error = %e, "ignoring an unreadable routing state");
                None
            }
        }
    }

    /// One guard pass: every model with a `[routing.guard]` and a canary compares the canary's
    /// window with the live version's; a breach takes the canary out of the split.
    pub fn guard_tick(&self, memory: &mut GuardMemory, now: Instant) {
        let watched: Vec<(
            String,
            crate::rollout::GuardConfig,
            Vec<Arc<LoadedVersion>>,
            u64,
        )> = {
            let models = self.read();
            models
                .iter()
                .filter_map(|(name, e)| {
                    let g = e.guard.clone()?;
                    let live = e.rollout.split.primary()?;
                    let canaries = e.rollout.split.canaries();
                    if canaries.is_empty() {
                        return None;
                    }
                    let lvs = std::iter::once(live)
                        .chain(canaries)
                        .filter_map(|v| e.versions.get(&v).cloned())
                        .collect();
                    Some((name.clone(), g, lvs, live))
                })
                .collect()
        };
        memory.retain(|(m, _), _| watched.iter().any(|(n, ..)| n == m));
        for (name, cfg, lvs, live) in watched {
            let window = Duration::from_secs(cfg.window_secs);
            let mut stats = HashMap::new();
            for lv in &lvs {
                let (ok, errors, buckets) = lv.metrics.request_totals();
                let snap = Snapshot {
                    ok,
                    errors,
                    bounds: buckets.iter().map(|b| b.0).collect(),
                    cumulative: buckets.iter().map(|b| b.1).collect(),
                };
                let ring = memory.entry((name.clone(), lv.version)).or_default();
                ring.push_back((now, snap.clone()));
                while ring
                    .front()
                    .is_some_and(|(t, _)| now.duration_since(*t) > window)
                {
                    ring.pop_front();
                }
                let oldest = &ring.front().expect("pushed above. This is a bug.").1;
                stats.insert(lv.version, WindowStats::between(oldest, &snap));
            }
            let Some(live_stats) = stats.get(&live).cloned() else {
                continue;
            };
            for (v, s) in &stats {
                if *v == live {
                    continue;
                }
                if let Verdict::Breach(reason) = guard::decide(&live_stats, s, &cfg) {
                    self.take_out(&name, *v, &reason);
                    memory.remove(&(name.clone(), *v));
                }
            }
        }
    }

    fn take_out(&self, name: &str, version: u64, reason: &str) {
        {
            let mut models = self.write();
            let Some(e) = models.get_mut(name) else {
                return;
            };
            e.rollout.take_out(version, reason, now_unix());
        }
        tracing::warn!(target: "audit", model = name, version, reason, action = "auto-rollback", "canary taken out of the split by the guard");
        self.rollout_metrics
            .rollbacks
            .with_label_values(&[name, &version.to_string()])
            .inc();
        self.after_change(name);
    }
}

/// The guard's memory between passes: per (model, version), snapshots over the window.
pub type GuardMemory = HashMap<(String, u64), VecDeque<(Instant, Snapshot)>>;

/// The split unnamed requests follow now: the configured one over servable versions, else all
/// to the default version.
fn effective_split(e: &ModelEntry) -> Split {
    let mut s = e.rollout.split.clone();
    s.weights
        .retain(|v, _| e.versions.get(v).is_some_and(|lv| lv.servable()));
    if s.is_empty() {
        match e.default_version() {
            Some(lv) => Split::only(lv.version),
            None => Split::default(),
        }
    } else {
        s
    }
}
