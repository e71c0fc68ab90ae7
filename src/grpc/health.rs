//! `grpc.health.v1.Health` (Kubernetes gRPC probes, grpc_health_probe): the server and the
//! inference service are SERVING once the HTTP readiness would say 200 (accepting, every model
//! that could load loaded), NOT_SERVING while starting or draining. `Watch` sends the status,
//! then each change (checked every `WATCH_PERIOD`), until the client goes away.

use std::pin::Pin;
use std::time::Duration;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::api::AppState;
use crate::protocol::grpc::health::health_check_response::ServingStatus;
use crate::protocol::grpc::health::{health_server, HealthCheckRequest, HealthCheckResponse};

const WATCH_PERIOD: Duration = Duration::from_millis(500);

/// The services a probe may name ("" = the whole server).
const SERVICES: [&str; 2] = ["", "inference.GRPCInferenceService"];

pub struct Health {
    state: AppState,
}

impl Health {
    pub fn new(state: AppState) -> Health {
        Health { state }
    }
}

fn serving(s: &AppState) -> ServingStatus {
    if s.is_accepting() && s.repo.all_ready() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

fn answer(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

type HealthStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl health_server::Health for Health {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        if !SERVICES.contains(&service.as_str()) {
            return Err(Status::not_found(format!("unknown service '{service}'")));
        }
        Ok(Response::new(answer(serving(&self.state))))
    }

    type WatchStream = HealthStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthStream>, Status> {
        let service = request.into_inner().service;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut last = None;
            let mut tick = tokio::time::interval(WATCH_PERIOD);
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tick.tick() => {}
                }
                let now = if SERVICES.contains(&service.as_str()) {
                    serving(&state)
                } else {
                    ServingStatus::ServiceUnknown
                };
                if last != Some(now) {
                    last = Some(now);
                    if tx.send(Ok(answer(now))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
