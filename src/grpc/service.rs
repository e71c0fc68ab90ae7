//! `inference.GRPCInferenceService`: each RPC decodes (`protocol::grpc`), runs on the shared
//! paths (`api::infer`, `api::stats`, `api::repository::act`) and encodes; errors go through
//! `status::status_of`. The client's deadline (`grpc-timeout`) bounds a unary inference: past it
//! the answer is DEADLINE_EXCEEDED and the queued job is dropped, as it is when the client goes
//! away (the RPC's future is dropped with it). `ModelStreamInfer` runs the requests of one stream
//! concurrently (at most `STREAM_IN_FLIGHT`), answers each with its id as it finishes, and answers
//! an error in its own message without closing the stream.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::status::status_of;
use crate::api::infer::{self, parse_version};
use crate::api::{kserve_v2, repository, stats, ApiError, AppState};
use crate::auth::Principal;
use crate::batcher::SubmitOptions;
use crate::protocol::grpc::{self as proto, pb};
use crate::telemetry::metrics::{ModelStatistics, StatDuration};

/// Requests of one stream that may run at once; past it the stream is read no further until one
/// finishes (HTTP/2 flow control then holds the client back).
const STREAM_IN_FLIGHT: usize = 1024;
/// Answers of one stream waiting to be sent.
const STREAM_BUFFER: usize = 64;

pub struct Inference {
    state: AppState,
}

impl Inference {
    pub fn new(state: AppState) -> Inference {
        Inference { state }
    }
}

fn version_of(model: &str, v: &str) -> Result<Option<u64>, ApiError> {
    if v.is_empty() {
        Ok(None)
    } else {
        parse_version(model, v).map(Some)
    }
}

/// The model named in a message, when the caller may use it.
fn allowed<T>(req: &Request<T>, model: &str) -> Result<(), Status> {
    crate::api::auth::check_model(
        req.extensions()
            .get::<std::sync::Arc<Principal>>()
            .map(|p| p.as_ref()),
        model,
    )
    .map_err(status_of)
}

/// One inference, start to end: the same steps as the HTTP KServe door.
async fn infer_one(
    s: &AppState,
    principal: Option<&Principal>,
    req: pb::ModelInferRequest,
    routing_key: Option<String>,
) -> Result<pb::ModelInferResponse, ApiError> {
    crate::api::auth::check_model(principal, &req.model_name)?;
    let version = version_of(&req.model_name, &req.model_version)?;
    let (lv, shadow) = match version {
        Some(_) => (s.repo.get(&req.model_name, version)?, None),
        None => {
            let key = routing_key.as_ref().map(|k| k.as_bytes());
            let r = s.repo.route(&req.model_name, key)?;
            (r.lv, r.shadow)
        }
    };
    let req = proto::decode_infer(req).map_err(|e| infer::invalid(&lv, e))?;
    let picked = infer::select_outputs(&lv, &req).map_err(|e| infer::invalid(&lv, e))?;
    let opts = SubmitOptions {
        priority: req.priority,
        timeout: req.timeout_us.map(Duration::from_micros),
        ..SubmitOptions::default()
    };
    // The response cache is not consulted on the gRPC door yet (issue 19 follow-up).
    let shadow = shadow.and_then(|p| Some((p, infer::shadow_input(&lv, &req.inputs)?)));
    let mut done = infer::run(s, &lv, req.inputs, opts, None).await?;
    infer::mirror(s, &lv, shadow, || {
        crate::api::shadow::LiveOutput::of_tensors(&done.output.outputs)
    });
    let outputs = infer::pick_outputs(&lv, &picked, &done.output.outputs)?;
    infer::tap(&lv, done.sample.take(), req.id.as_deref());
    Ok(proto::encode_infer(
        &lv.name,
        lv.version,
        req.id.as_deref(),
        &outputs,
    ))
}

/// The request's routing key (`x-ferrite-routing-key` metadata), as on the HTTP doors.
fn routing_key(meta: &tonic::metadata::MetadataMap) -> Option<String> {
    meta.get(crate::api::infer::ROUTING_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The `grpc-timeout` header (an integer of at most 8 digits and a unit: H M S m u n).
fn client_deadline(meta: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn duration(d: StatDuration) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration {
        count: d.count,
        ns: d.ns,
    })
}

fn statistics_pb(m: ModelStatistics) -> pb::ModelStatistics {
    let i = m.inference_stats;
    pb::ModelStatistics {
        name: m.name,
        version: m.version,
        last_inference: m.last_inference,
        inference_count: m.inference_count,
        execution_count: m.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: duration(i.success),
            fail: duration(i.fail),
            queue: duration(i.queue),
            compute_input: duration(i.compute_input),
            compute_infer: duration(i.compute_infer),
            compute_output: duration(i.compute_output),
            cache_hit: duration(i.cache_hit),
            cache_miss: duration(i.cache_miss),
        }),
        batch_stats: m
            .batch_stats
            .into_iter()
            .map(|b| pb::InferBatchStatistics {
                batch_size: b.batch_size,
                compute_input: duration(b.compute_input),
                compute_infer: duration(b.compute_infer),
                compute_output: duration(b.compute_output),
            })
            .collect(),
        memory_usage: Vec::new(),
    }
}

type InferStream = Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::grpc_inference_service_server::GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let ready = self.state.is_accepting() && self.state.repo.all_ready();
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        allowed(&request, &request.get_ref().name)?;
        let r = request.into_inner();
        let version = version_of(&r.name, &r.version).map_err(status_of)?;
        let ready = self.state.repo.get(&r.name, version).is_ok();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "ferrite".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: kserve_v2::EXTENSIONS
                .iter()
                .map(|e| e.to_string())
                .collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        allowed(&request, &request.get_ref().name)?;
        let r = request.into_inner();
        let version = version_of(&r.name, &r.version).map_err(status_of)?;
        let lv = self
            .state
            .repo
            .get(&r.name, version)
            .map_err(|e| status_of(e.into()))?;
        let versions = match version {
            Some(v) => vec![v.to_string()],
            None => self
                .state
                .repo
                .index()
                .into_iter()
                .filter(|e| e.name == r.name)
                .filter_map(|e| e.version)
                .collect(),
        };
        let tensors = |v: &[crate::spec::TensorSpec]| {
            v.iter()
                .map(|s| pb::model_metadata_response::TensorMetadata {
                    name: s.name.clone(),
                    datatype: s.datatype.as_str().into(),
                    shape: s.dims.clone(),
                })
                .collect()
        };
        let c = &lv.config;
        Ok(Response::new(pb::ModelMetadataResponse {
            name: lv.name.clone(),
            versions,
            platform: format!("ferrite_{}", c.architecture),
            inputs: tensors(&c.inputs),
            outputs: tensors(&c.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let deadline = client_deadline(request.metadata());
        let principal = request
            .extensions()
            .get::<std::sync::Arc<Principal>>()
            .cloned();
        let key = routing_key(request.metadata());
        let run = infer_one(&self.state, principal.as_deref(), request.into_inner(), key);
        let result = match deadline {
            None => run.await,
            Some(d) => match tokio::time::timeout(d, run).await {
                Ok(r) => r,
                // Dropping `run` dropped the queued job.
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "the client's deadline of {d:?} passed before the inference finished"
                    )))
                }
            },
        };
        let r = result.map_err(status_of)?;
        let version = r
            .model_version
            .parse::<tonic::metadata::MetadataValue<_>>()
            .ok();
        let mut resp = Response::new(r);
        if let Some(v) = version {
            resp.metadata_mut()
                .insert(crate::api::infer::VERSION_HEADER, v);
        }
        Ok(resp)
    }

    type ModelStreamInferStream = InferStream;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<InferStream>, Status> {
        let principal = request
            .extensions()
            .get::<std::sync::Arc<Principal>>()
            .cloned();
        // The stream's routing key (metadata), for every request on it.
        let key = routing_key(request.metadata());
        let inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        tokio::spawn(run_stream(self.state.clone(), principal, key, inbound, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        allowed(&request, &request.get_ref().name)?;
        let config =
            infer::triton_config(&self.state, &request.get_ref().name).map_err(status_of)?;
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(config),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let principal = request
            .extensions()
            .get::<std::sync::Arc<Principal>>()
            .cloned();
        let r = request.into_inner();
        let version = if r.name.is_empty() {
            None
        } else {
            version_of(&r.name, &r.version).map_err(status_of)?
        };
        let all = stats::collect(&self.state, principal.as_deref(), Some(&r.name), version)
            .map_err(status_of)?;
        Ok(Response::new(pb::ModelStatisticsResponse {
            model_stats: all.into_iter().map(statistics_pb).collect(),
        }))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let only_ready = request.get_ref().ready;
        let models = self
            .state
            .repo
            .index()
            .into_iter()
            .filter(|e| !only_ready || e.state == crate::repository::ModelState::Ready)
            .map(|e| pb::repository_index_response::ModelIndex {
                state: serde_json::to_value(e.state)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                name: e.name,
                version: e.version.unwrap_or_default(),
                reason: e.reason,
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let principal = request
            .extensions()
            .get::<std::sync::Arc<Principal>>()
            .cloned();
        let r = request.into_inner();
        refuse_parameters(&r.parameters)?;
        repository::act(&self.state, principal.as_deref(), "load", &r.model_name)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let principal = request
            .extensions()
            .get::<std::sync::Arc<Principal>>()
            .cloned();
        let r = request.into_inner();
        repository::act(&self.state, principal.as_deref(), "unload", &r.model_name)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

/// Load parameters (a config override, files) are not supported: refused, never ignored.
fn refuse_parameters(p: &HashMap<String, pb::ModelRepositoryParameter>) -> Result<(), Status> {
    match p.keys().next() {
        None => Ok(()),
        Some(k) => Err(Status::invalid_argument(format!(
            "load parameter '{k}' is not supported: models load from their folder as they are"
        ))),
    }
}

/// One stream: reads requests, runs them concurrently, sends each answer (or its error) with the
/// request's id. Ends when the client has closed its side and every answer is sent; a client that
/// goes away (or resets the stream) drops every request still queued.
async fn run_stream(
    state: AppState,
    principal: Option<std::sync::Arc<Principal>>,
    key: Option<String>,
    mut inbound: Streaming<pb::ModelInferRequest>,
    tx: tokio::sync::mpsc::Sender<Result<pb::ModelStreamInferResponse, Status>>,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut reading = true;
    loop {
        tokio::select! {
            msg = inbound.message(), if reading && in_flight.len() < STREAM_IN_FLIGHT => match msg {
                Ok(Some(req)) => {
                    let (state, principal, key) = (state.clone(), principal.clone(), key.clone());
                    in_flight.push(async move {
                        let (id, model, version) =
                            (req.id.clone(), req.model_name.clone(), req.model_version.clone());
                        match infer_one(&state, principal.as_deref(), req, key).await {
                            Ok(r) => pb::ModelStreamInferResponse {
                                error_message: String::new(),
                                infer_response: Some(r),
                            },
                            Err(e) => pb::ModelStreamInferResponse {
                                error_message: e.message().to_string(),
                                infer_response: Some(pb::ModelInferResponse {
                                    model_name: model,
                                    model_version: version,
                                    id,
                                    ..Default::default()
                                }),
                            },
                        }
                    });
                }
                Ok(None) => reading = false,
                // The client reset the stream or sent garbage: nobody is left to answer.
                Err(_) => return,
            },
            Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
            _ = tx.closed() => return,
        }
        if !reading && in_flight.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_parses_every_unit() {
        let mut m = tonic::metadata::MetadataMap::new();
        for (v, d) in [
            ("2S", Duration::from_secs(2)),
            ("150m", Duration::from_millis(150)),
            ("7u", Duration::from_micros(7)),
            ("1H", Duration::from_secs(3600)),
        ] {
            m.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(client_deadline(&m), Some(d), "{v}");
        }
        m.insert("grpc-timeout", "10x".parse().unwrap());
        assert_eq!(client_deadline(&m), None);
    }
}
