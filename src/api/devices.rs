//! `GET /v2/devices`: every device in use, its kind and memory, the model instances placed on it and
//! its latest telemetry sample (host CPU/memory for the CPU, NVML for a GPU). Read-only.

use axum::extract::State;
use axum::Json;
use serde::Serialize;

#[allow(unused_imports)]
use super::openapi::*;
use super::AppState;
use crate::device::{DeviceId, DeviceInfo};
use crate::repository::InstancePlacement;
use crate::telemetry::Snapshot;

/// One device in the report.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    /// `cpu`, `gpu0`, ...
    pub id: String,
    #[serde(flatten)]
    pub info: DeviceInfo,
    pub memory_used_bytes: Option<u64>,
    pub instances: Vec<InstancePlacement>,
    /// Latest sample for this device (`null` until one exists, or without NVML for a GPU).
    pub telemetry: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DevicesResponse {
    pub devices: Vec<DeviceReport>,
    /// Milliseconds since the Unix epoch of the telemetry sample.
    pub sampled_at_unix_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_telemetry_error: Option<String>,
}

/// Joins devices, placements and the latest sample. GPUs are matched to NVML readings by UUID
/// where discovery knows it, else by CUDA ordinal.
pub fn report(
    devices: &[DeviceInfo],
    placements: &[InstancePlacement],
    snap: &Snapshot,
) -> DevicesResponse {
    let devices = devices
        .iter()
        .map(|d| {
            let mut info = d.clone();
            let (telemetry, used) = match d.id {
                DeviceId::Cpu => {
                    info.memory_total_bytes = snap.cpu.as_ref().map(|c| c.memory_total_bytes);
                    let used = snap.cpu.as_ref().map(|c| c.memory_used_bytes);
                    (snap.cpu.as_ref().and_then(to_json), used)
                }
                DeviceId::Gpu(i) => {
                    let g = snap.gpus.iter().find(|g| match &d.uuid {
                        Some(u) => g.uuid == *u,
                        None => g.ordinal == i,
                    });
                    (g.and_then(to_json), g.and_then(|g| g.memory_used_bytes))
                }
            };
            DeviceReport {
                id: d.id.to_string(),
                info,
                memory_used_bytes: used,
                instances: placements
                    .iter()
                    .filter(|p| p.device == d.id)
                    .cloned()
                    .collect(),
                telemetry,
            }
        })
        .collect();
    DevicesResponse {
        devices,
        sampled_at_unix_ms: snap.unix_ms,
        gpu_telemetry_error: snap.gpu_error.clone(),
    }
}

fn to_json<T: Serialize>(v: &T) -> Option<serde_json::Value> {
    serde_json::to_value(v).ok()
}

#[utoipa::path(
    get,
    path = "/v2/devices",
    tag = "kserve-v2",
    responses((status = 200, description = "Devices, their instances and latest readings", body = AnyJson), KServeErrors)
)]
pub async fn devices(State(s): State<AppState>) -> Json<DevicesResponse> {
    let snap = s.telemetry.latest();
    Json(report(s.repo.devices(), &s.repo.placements(), &snap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::gpu::{GpuSource, SimulatedSource};

    fn gpu(i: usize, uuid: &str) -> DeviceInfo {
        DeviceInfo {
            id: DeviceId::Gpu(i),
            name: "H100".into(),
            kind: "gpu",
            uuid: Some(uuid.into()),
            compute_capability: Some("9.0".into()),
            memory_total_bytes: Some(80 << 30),
        }
    }

    #[test]
    fn report_matches_gpu_by_uuid_and_lists_instances() {
        let mut sim = SimulatedSource::new(2);
        let snap = Snapshot {
            unix_ms: 1,
            cpu: None,
            gpus: sim.sample().unwrap(),
            gpu_error: None,
        };
        let devices = [DeviceInfo::cpu("cpu".into()), gpu(0, &snap.gpus[1].uuid)];
        let placements = [InstancePlacement {
            model: "m".into(),
            version: "1".into(),
            device: DeviceId::Gpu(0),
            count: 2,
        }];
        let r = report(&devices, &placements, &snap);
        let v = serde_json::to_value(&r).unwrap();
        let g = &v["devices"][1];
        assert_eq!(g["id"], "gpu0");
        assert_eq!(g["kind"], "gpu");
        assert_eq!(g["telemetry"]["uuid"], snap.gpus[1].uuid.as_str());
        assert_eq!(g["memory_used_bytes"], 20u64 << 30);
        assert_eq!(g["instances"][0]["count"], 2);
        assert_eq!(v["devices"][0]["instances"].as_array().unwrap().len(), 0);
        assert!(v["devices"][0]["telemetry"].is_null());
    }
}
