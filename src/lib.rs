//! Ferrite: a high-throughput model inference server. See ARCHITECTURE.md for the data path:
//! api -> protocol -> batcher -> worker -> model, with telemetry beside it.

pub mod api;
pub mod auth;
pub mod batcher;
pub mod cache;
pub mod cli;
pub mod config;
pub mod device;
pub mod grpc;
pub mod jobs;
pub mod loadgen;
pub mod model;
pub mod monitor;
pub mod net;
pub mod ops;
pub mod preprocess;
pub mod profile;
pub mod protocol;
pub mod quant;
pub mod quantize;
pub mod repository;
pub mod rollout;
pub mod server;
pub mod shutdown;
pub mod spec;
pub mod telemetry;
pub mod tensor;
pub mod worker;
