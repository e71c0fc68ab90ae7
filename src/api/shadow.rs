//! Shadow traffic: a copy of a routed request runs on the candidate version after the live
//! answer is made, and its output is compared with the live one (`rollout::compare`). The client
//! never waits for it; the copy never reads or fills a response cache and is not counted in the
//! candidate's request metrics (only in `ferrite_shadow_*`). When the candidate already has its
//! share of shadow copies in flight, or its queue is full, the copy is dropped and counted.

use std::sync::Arc;

use crate::batcher::{JobError, SubmitOptions};
use crate::repository::{LoadedVersion, ShadowPlan};
use crate::rollout::compare;
use crate::telemetry::rollout::RolloutMetrics;
use crate::tensor::{Tensor, TensorData, Texts};

/// What the candidate runs.
pub enum ShadowInput {
    Tensors { inputs: Vec<Tensor>, rows: usize },
    Texts(Texts),
}

/// The live answer to compare with: the first output, flattened, and its row width.
pub struct LiveOutput {
    pub values: Vec<f32>,
    pub width: usize,
}

impl LiveOutput {
    /// From a tensor response's first output (FP32 only; others are not compared).
    pub fn of_tensors(outputs: &[Tensor]) -> Option<LiveOutput> {
        let t = outputs.first()?;
        let TensorData::F32(v) = &t.data else {
            return None;
        };
        let rows = t.shape.first().copied().unwrap_or(1).max(1);
        Some(LiveOutput {
            values: v.clone(),
            width: v.len() / rows,
        })
    }

    pub fn of_vectors(vectors: &[Vec<f32>]) -> LiveOutput {
        LiveOutput {
            width: vectors.first().map_or(0, Vec::len),
            values: vectors.iter().flatten().copied().collect(),
        }
    }
}

/// Starts the shadow copy (or counts it dropped). Returns at once.
pub fn spawn(
    metrics: &RolloutMetrics,
    live: &LoadedVersion,
    plan: ShadowPlan,
    input: ShadowInput,
    out: LiveOutput,
) {
    let model = live.name.clone();
    let (lv, cv) = (live.version.to_string(), plan.candidate.version.to_string());
    let count = {
        let m = metrics.clone();
        let (model, cv) = (model.clone(), cv.clone());
        move |outcome: &str| {
            m.shadow_requests
                .with_label_values(&[&model, &cv, outcome])
                .inc()
        }
    };
    let Ok(permit) = plan.candidate.shadow_slots.clone().try_acquire_owned() else {
        count("dropped");
        return;
    };
    let metrics = metrics.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let c: Arc<LoadedVersion> = plan.candidate;
        // The lowest priority level: live work on the candidate (a canary share) goes first.
        let opts = SubmitOptions {
            priority: c.config.dynamic_batching.priority_levels.max(1),
            warmup: true,
            ..SubmitOptions::default()
        };
        let got = match input {
            ShadowInput::Tensors { inputs, rows } => c
                .queue
                .submit(inputs, rows, opts)
                .await
                .map(|o| LiveOutput::of_tensors(&o.outputs)),
            ShadowInput::Texts(texts) => match &c.text {
                None => Ok(None),
                Some(t) => t.run(&c.queue, texts, true, opts).await.map_or_else(
                    |e| match e {
                        crate::repository::TextError::Job(j) => Err(j),
                        other => Err(JobError::Model {
                            model: String::new(),
                            message: other.to_string(),
                        }),
                    },
                    |run| {
                        let v: Vec<Vec<f32>> = run
                            .outputs
                            .into_iter()
                            .filter_map(|o| match o.into_iter().next().map(|t| t.data) {
                                Some(TensorData::F32(v)) => Some(normalized(v, t.normalize)),
                                _ => None,
                            })
                            .collect();
                        Ok(Some(LiveOutput::of_vectors(&v)))
                    },
                ),
            },
        };
        match got {
            Ok(Some(cand)) if cand.width == out.width => {
                let h = metrics
                    .shadow_agreement
                    .with_label_values(&[&model, &lv, &cv]);
                compare::per_row(plan.compare, &out.values, &cand.values, out.width)
                    .into_iter()
                    .for_each(|x| h.observe(x));
                count("compared");
            }
            Err(JobError::QueueFull { .. } | JobError::QueueTime { .. }) => count("dropped"),
            Ok(_) => count("failed"),
            Err(e) => {
                tracing::debug!(model = %model, candidate = %cv, error = %e, "shadow copy failed");
                count("failed")
            }
        }
    });
}

fn normalized(v: Vec<f32>, on: bool) -> Vec<f32> {
    if on {
        super::infer::l2_normalized(v)
    } else {
        v
    }
}
