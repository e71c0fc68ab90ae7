//! Server settings: command-line flags > `FERRITE_*` environment variables > a TOML file
//! (`--config`) > defaults. This is the only place defaults live.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_MODEL_REPOSITORY: &str = "models";
pub const DEFAULT_HOST: &str = "0.0.0.0";
pub const DEFAULT_HTTP_PORT: u16 = 8000;
pub const DEFAULT_METRICS_PORT: u16 = 8002;
/// gRPC (KServe v2 / Triton `GRPCInferenceService`, grpc.health.v1): Triton's port.
pub const DEFAULT_GRPC_PORT: u16 = 8001;
/// Largest gRPC message, received or sent, in bytes (tonic's own default is 4 MiB).
pub const DEFAULT_GRPC_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
pub const DEFAULT_EXIT_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_BODY_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_HTTP2_MAX_STREAMS: u32 = 256;
/// An HTTP/2 connection with no open stream for this long is closed (GOAWAY); nginx's
/// `keepalive_timeout` is 75 s, gRPC clients reconnect on their own.
pub const DEFAULT_HTTP2_IDLE_TIMEOUT_SECS: u64 = 120;
/// Threads one CPU forward pass may use. 1 by default: parallelism comes from model instances and
/// batching, and candle's per-op thread pool only adds contention for small models.
pub const DEFAULT_INTRA_OP_THREADS: usize = 1;
/// How often the telemetry thread samples GPUs (NVML) and the host [ms]; Triton's flag name.
pub const DEFAULT_METRICS_INTERVAL_MS: u64 = 1000;
/// How often `--model-control poll` rescans the repository [s] (Triton's default).
pub const DEFAULT_REPOSITORY_POLL_SECS: u64 = 15;
/// Longest wait for one Redis cache lookup or fill [ms]; past it the request is served uncached.
pub const DEFAULT_CACHE_REDIS_TIMEOUT_MS: u64 = 20;

/// Who may change which models are loaded (Triton's `--model-control-mode`). In every mode all
/// models in the repository load at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelControl {
    /// Management routes (load, unload; later routing, promote, rollback) answer 403.
    #[default]
    None,
    /// Management routes are enabled (behind the `admin` scope when `[auth]` is configured).
    Explicit,
    /// The repository folder is rescanned every `--repository-poll-secs` and is the source of
    /// truth: load/unload answer 403; routing, promote and rollback are enabled.
    Poll,
}

impl ModelControl {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelControl::None => "none",
            ModelControl::Explicit => "explicit",
            ModelControl::Poll => "poll",
        }
    }
}

/// `ferrite serve` flags; each also reads `FERRITE_<FLAG>` and the TOML file key `<flag>`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys as the flags, with '_' for '-').
    #[arg(long, env = "FERRITE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Model repository folder [default: models]
    #[arg(long, env = "FERRITE_MODEL_REPOSITORY")]
    pub model_repository: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0]
    #[arg(long, env = "FERRITE_HOST")]
    pub host: Option<IpAddr>,
    /// HTTP port for the inference APIs; 0 picks a free port [default: 8000]
    #[arg(long, env = "FERRITE_HTTP_PORT")]
    pub http_port: Option<u16>,
    /// Port for Prometheus /metrics; 0 picks a free port [default: 8002]
    #[arg(long, env = "FERRITE_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// gRPC port (KServe v2 / Triton GRPCInferenceService, grpc.health.v1); 0 picks a free port
    /// [default: 8001]
    #[arg(long, env = "FERRITE_GRPC_PORT")]
    pub grpc_port: Option<u16>,
    /// Largest gRPC message received or sent, in bytes [default: 67108864]
    #[arg(long, env = "FERRITE_GRPC_MAX_MESSAGE_BYTES")]
    pub grpc_max_message_bytes: Option<usize>,
    /// Log format [default: text]
    #[arg(long, env = "FERRITE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Longest time to drain in-flight requests on SIGTERM [default: 30]
    #[arg(long, env = "FERRITE_EXIT_TIMEOUT_SECS")]
    pub exit_timeout_secs: Option<u64>,
    /// Largest accepted request body in bytes [default: 67108864]
    #[arg(long, env = "FERRITE_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// GPUs to use: all, none, or ordinals like 0,1 [default: all]
    #[arg(long, env = "FERRITE_GPUS")]
    pub gpus: Option<String>,
    /// Threads one CPU forward pass may use (candle's pool; RAYON_NUM_THREADS wins if set) [default: 1]
    #[arg(long, env = "FERRITE_INTRA_OP_THREADS")]
    pub intra_op_threads: Option<usize>,
    /// GPU (NVML) and CPU metrics sampling interval in milliseconds [default: 1000]
    #[arg(long, env = "FERRITE_METRICS_INTERVAL_MS")]
    pub metrics_interval_ms: Option<u64>,
    /// Who may load and unload models: none (management routes answer 403), explicit (enabled;
    /// admin scope when [auth] is configured) or poll (the folder is the source of truth)
    /// [default: none]
    #[arg(long, env = "FERRITE_MODEL_CONTROL", value_enum)]
    pub model_control: Option<ModelControl>,
    /// With --model-control poll: seconds between repository rescans [default: 15]
    #[arg(long, env = "FERRITE_REPOSITORY_POLL_SECS")]
    pub repository_poll_secs: Option<u64>,
    /// Folder where live routing changes (routing, promote, rollback, automatic rollbacks) are
    /// persisted and read back at restart [default: none, live changes last until restart]
    #[arg(long, env = "FERRITE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// One info line per request (request id, principal, route, model, version, status, sizes,
    /// duration, a keyed hash of the body; never payloads) [default: true]
    #[arg(long, env = "FERRITE_ACCESS_LOG", action = clap::ArgAction::Set)]
    pub access_log: Option<bool>,
    /// PEM certificate chain (leaf first) for TLS on the HTTP port; needs --tls-key.
    /// Reloaded on SIGHUP [default: none, plain HTTP]
    #[arg(long, env = "FERRITE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for --tls-cert [default: none]
    #[arg(long, env = "FERRITE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) for mutual TLS: clients must present a certificate signed by one of
    /// them, or the handshake is refused [default: none, no client certificates]
    #[arg(long, env = "FERRITE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Seconds a client has to send a request's headers (and the TLS handshake); on HTTP/1.1 also
    /// the longest wait for the next request on a kept-alive connection [default: 10]
    #[arg(long, env = "FERRITE_HEADER_READ_TIMEOUT_SECS")]
    pub header_read_timeout_secs: Option<u64>,
    /// Seconds a client has to send a whole request body once the headers are in (408 after)
    /// [default: 60]
    #[arg(long, env = "FERRITE_BODY_TIMEOUT_SECS")]
    pub body_timeout_secs: Option<u64>,
    /// Open connections per port; beyond it a new connection gets a 503 (plain HTTP) or is closed
    /// at once (TLS) [default: 10000, lowered to fit the open-file limit]
    #[arg(long, env = "FERRITE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Concurrent HTTP/2 streams per connection [default: 256]
    #[arg(long, env = "FERRITE_HTTP2_MAX_STREAMS")]
    pub http2_max_streams: Option<u32>,
    /// Seconds an HTTP/2 connection (gRPC included) may stay open with no stream before it is
    /// closed with GOAWAY [default: 120]
    #[arg(long, env = "FERRITE_HTTP2_IDLE_TIMEOUT_SECS")]
    pub http2_idle_timeout_secs: Option<u64>,
    /// Request-body bytes read or served at once, all requests together; beyond it a body waits
    /// up to 1 s, then gets 503 [default: an eighth of the machine's memory, at least twice
    /// --max-body-bytes]
    #[arg(long, env = "FERRITE_MAX_INFLIGHT_BYTES")]
    pub max_inflight_bytes: Option<usize>,
    /// Shared Redis level of the response cache for models with [response_cache] enabled:
    /// redis://[user:password@]host:port[/db] or rediss:// (TLS) [default: none, in-process only]
    #[arg(long, env = "FERRITE_CACHE_REDIS_URL")]
    pub cache_redis_url: Option<String>,
    /// Longest wait for one Redis cache lookup or fill, in milliseconds [default: 20]
    #[arg(long, env = "FERRITE_CACHE_REDIS_TIMEOUT_MS")]
    pub cache_redis_timeout_ms: Option<u64>,
    /// PEM CA certificate(s) to verify a rediss:// server with, instead of the system roots
    /// [default: none]
    #[arg(long, env = "FERRITE_CACHE_REDIS_CA")]
    pub cache_redis_ca: Option<PathBuf>,
    /// Folder where bulk jobs (`POST /v2/models/{m}/jobs`) keep their state, inputs and results;
    /// unfinished jobs there resume at start [default: none, the jobs API is off]
    #[arg(long, env = "FERRITE_JOBS_STATE_DIR")]
    pub jobs_state_dir: Option<PathBuf>,
    /// Folder a job may name its input in (`input_path`, resolved inside it) [default: none,
    /// uploads only]
    #[arg(long, env = "FERRITE_JOBS_INPUT_DIR")]
    pub jobs_input_dir: Option<PathBuf>,
    /// Largest uploaded job input, in bytes (not --max-body-bytes: it streams to disk)
    /// [default: 1073741824]
    #[arg(long, env = "FERRITE_JOBS_MAX_UPLOAD_BYTES")]
    pub jobs_max_upload_bytes: Option<u64>,
    /// Seconds a finished job's results are kept [default: 604800, a week]
    #[arg(long, env = "FERRITE_JOBS_RETENTION_SECS")]
    pub jobs_retention_secs: Option<u64>,
    /// Jobs running at once; more wait in order [default: 2]
    #[arg(long, env = "FERRITE_JOBS_MAX_RUNNING")]
    pub jobs_max_running: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    model_repository: Option<PathBuf>,
    host: Option<IpAddr>,
    http_port: Option<u16>,
    metrics_port: Option<u16>,
    grpc_port: Option<u16>,
    grpc_max_message_bytes: Option<usize>,
    log_format: Option<LogFormat>,
    exit_timeout_secs: Option<u64>,
    max_body_bytes: Option<usize>,
    gpus: Option<String>,
    intra_op_threads: Option<usize>,
    metrics_interval_ms: Option<u64>,
    model_control: Option<ModelControl>,
    repository_poll_secs: Option<u64>,
    state_dir: Option<PathBuf>,
    access_log: Option<bool>,
    /// Access control (`[auth]`): API keys, JWT, client certificates, rate limits.
    auth: Option<crate::auth::AuthConfig>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    header_read_timeout_secs: Option<u64>,
    body_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    http2_max_streams: Option<u32>,
    http2_idle_timeout_secs: Option<u64>,
    max_inflight_bytes: Option<usize>,
    cache_redis_url: Option<String>,
    cache_redis_timeout_ms: Option<u64>,
    cache_redis_ca: Option<PathBuf>,
    jobs_state_dir: Option<PathBuf>,
    jobs_input_dir: Option<PathBuf>,
    jobs_max_upload_bytes: Option<u64>,
    jobs_retention_secs: Option<u64>,
    jobs_max_running: Option<usize>,
}

/// Bulk jobs (`--jobs-*`).
#[derive(Debug, Clone, PartialEq)]
pub struct JobsSettings {
    /// Where jobs live; `None`: the jobs API is off.
    pub state_dir: Option<PathBuf>,
    /// The folder a job may name its input in (`input_path`); `None`: uploads only.
    pub input_dir: Option<PathBuf>,
    /// Largest uploaded input.
    pub max_upload_bytes: u64,
    /// How long a finished job's results are kept.
    pub retention: Duration,
    /// Jobs running at once.
    pub max_running: usize,
}

pub const DEFAULT_JOBS_MAX_UPLOAD_BYTES: u64 = 1 << 30;
pub const DEFAULT_JOBS_RETENTION_SECS: u64 = 7 * 24 * 3600;
pub const DEFAULT_JOBS_MAX_RUNNING: usize = 2;

impl Default for JobsSettings {
    fn default() -> Self {
        JobsSettings {
            state_dir: None,
            input_dir: None,
            max_upload_bytes: DEFAULT_JOBS_MAX_UPLOAD_BYTES,
            retention: Duration::from_secs(DEFAULT_JOBS_RETENTION_SECS),
            max_running: DEFAULT_JOBS_MAX_RUNNING,
        }
    }
}

/// Limits on each port's connections (`net::serve`) and on reading a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Headers (and TLS handshake) must arrive within this; on HTTP/1.1 also the keep-alive idle
    /// limit (hyper measures the two as one).
    pub header_read_timeout: Duration,
    /// A whole request body must arrive within this once the headers are in.
    pub body_timeout: Duration,
    /// Open connections per port.
    pub max_connections: usize,
    pub http2_max_streams: u32,
    /// An HTTP/2 connection with no open stream for this long is closed (GOAWAY).
    pub http2_idle_timeout: Duration,
    /// Request-body bytes being read or served at once, all requests together.
    pub max_inflight_bytes: usize,
}

impl ConnectionLimits {
    pub const DEFAULT: ConnectionLimits = ConnectionLimits {
        header_read_timeout: Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT_SECS),
        body_timeout: Duration::from_secs(DEFAULT_BODY_TIMEOUT_SECS),
        max_connections: DEFAULT_MAX_CONNECTIONS,
        http2_max_streams: DEFAULT_HTTP2_MAX_STREAMS,
        http2_idle_timeout: Duration::from_secs(DEFAULT_HTTP2_IDLE_TIMEOUT_SECS),
        max_inflight_bytes: 2 * DEFAULT_MAX_BODY_BYTES,
    };
}

/// The default in-flight budget: an eighth of physical memory, and room for two maximum bodies.
fn default_max_inflight_bytes(max_body_bytes: usize) -> usize {
    // SAFETY: sysconf reads two system constants.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let memory = if pages > 0 && page > 0 {
        (pages as usize).saturating_mul(page as usize)
    } else {
        0
    };
    (memory / 8).max(max_body_bytes.saturating_mul(2))
}

/// The default connection cap: `DEFAULT_MAX_CONNECTIONS`, or less where the open-file limit is
/// lower, leaving room for model files, the metrics port and logs (so accept never hits EMFILE
/// because of connections alone).
fn default_max_connections() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    if !ok || lim.rlim_cur == libc::RLIM_INFINITY {
        return DEFAULT_MAX_CONNECTIONS;
    }
    let room = (lim.rlim_cur as usize).saturating_sub(256) / 2;
    DEFAULT_MAX_CONNECTIONS.min(room.max(16))
}

/// Resolved settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub model_repository: PathBuf,
    pub host: IpAddr,
    pub http_port: u16,
    pub metrics_port: u16,
    pub grpc_port: u16,
    pub grpc_max_message_bytes: usize,
    pub log_format: LogFormat,
    pub exit_timeout: Duration,
    pub max_body_bytes: usize,
    pub gpus: GpuSelection,
    pub intra_op_threads: usize,
    pub metrics_interval: Duration,
    pub model_control: ModelControl,
    pub repository_poll: Duration,
    /// Where live routing state is persisted; `None`: until restart.
    pub state_dir: Option<PathBuf>,
    pub access_log: bool,
    /// `[auth]` from the settings file; `None`: unauthenticated (local use).
    pub auth: Option<crate::auth::AuthConfig>,
    /// The settings file, re-read for `[auth]` on SIGHUP and when it changes.
    pub config_file: Option<PathBuf>,
    /// TLS on the HTTP port; `None`: plain HTTP. The metrics port stays plain HTTP.
    pub tls: Option<TlsSettings>,
    pub limits: ConnectionLimits,
    /// The response cache's shared Redis level; `None`: in-process only.
    pub cache_redis: Option<RedisSettings>,
    pub jobs: JobsSettings,
}

/// How to reach Redis (`--cache-redis-url`, `--cache-redis-timeout-ms`, `--cache-redis-ca`).
#[derive(Clone, PartialEq)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` or `rediss://` (TLS).
    pub url: String,
    /// Longest wait for one lookup or fill.
    pub timeout: Duration,
    /// PEM CA certificate(s) for `rediss://` instead of the system roots.
    pub ca: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redacted(&self.url))
            .field("timeout", &self.timeout)
            .field("ca", &self.ca)
            .finish()
    }
}

/// The URL without its user and password (`rediss://***@host:6380/0`): what logs may show.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// The files TLS is built from; read at start and again on every SIGHUP.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Mutual TLS: client certificates are verified against these CA certificates.
    pub client_ca: Option<PathBuf>,
}

impl TlsSettings {
    /// Both halves given, or none; a client CA only with a certificate and key.
    fn resolve(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> Result<Option<TlsSettings>, SettingsError> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(TlsSettings {
                cert,
                key,
                client_ca,
            })),
            (None, None) if client_ca.is_none() => Ok(None),
            (None, None) => Err(SettingsError::Invalid {
                field: "tls_client_ca",
                message: "needs tls_cert and tls_key (mutual TLS is TLS)".into(),
            }),
            (Some(_), None) => Err(SettingsError::Invalid {
                field: "tls_key",
                message: "tls_cert is set, so a key is needed too".into(),
            }),
            (None, Some(_)) => Err(SettingsError::Invalid {
                field: "tls_cert",
                message: "tls_key is set, so a certificate is needed too".into(),
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("setting `{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

impl Settings {
    /// Merges flags/env (already merged by clap), the TOML file, then defaults; validates.
    pub fn resolve(args: &ServeArgs) -> Result<Settings, SettingsError> {
        let file = match &args.config {
            None => FileSettings::default(),
            Some(path) => read_file(path)?,
        };
        let gpus = args
            .gpus
            .clone()
            .or(file.gpus)
            .unwrap_or_else(|| "all".into());
        let s = Settings {
            model_control: args
                .model_control
                .or(file.model_control)
                .unwrap_or_default(),
            repository_poll: Duration::from_secs(
                args.repository_poll_secs
                    .or(file.repository_poll_secs)
                    .unwrap_or(DEFAULT_REPOSITORY_POLL_SECS),
            ),
            state_dir: args.state_dir.clone().or(file.state_dir),
            access_log: args.access_log.or(file.access_log).unwrap_or(true),
            jobs: JobsSettings {
                state_dir: args.jobs_state_dir.clone().or(file.jobs_state_dir),
                input_dir: args.jobs_input_dir.clone().or(file.jobs_input_dir),
                max_upload_bytes: args
                    .jobs_max_upload_bytes
                    .or(file.jobs_max_upload_bytes)
                    .unwrap_or(DEFAULT_JOBS_MAX_UPLOAD_BYTES),
                retention: Duration::from_secs(
                    args.jobs_retention_secs
                        .or(file.jobs_retention_secs)
                        .unwrap_or(DEFAULT_JOBS_RETENTION_SECS),
                ),
                max_running: args
                    .jobs_max_running
                    .or(file.jobs_max_running)
                    .unwrap_or(DEFAULT_JOBS_MAX_RUNNING),
            },
            auth: file.auth,
            config_file: args.config.clone(),
            model_repository: args
                .model_repository
                .clone()
                .or(file.model_repository)
                .unwrap_or_else(|| DEFAULT_MODEL_REPOSITORY.into()),
            host: args
                .host
                .or(file.host)
                .unwrap_or_else(|| DEFAULT_HOST.parse().expect("valid default. This is a bug.")),
            http_port: args
                .http_port
                .or(file.http_port)
                .unwrap_or(DEFAULT_HTTP_PORT),
            metrics_port: args
                .metrics_port
                .or(file.metrics_port)
                .unwrap_or(DEFAULT_METRICS_PORT),
            grpc_port: args
                .grpc_port
                .or(file.grpc_port)
                .unwrap_or(DEFAULT_GRPC_PORT),
            grpc_max_message_bytes: args
                .grpc_max_message_bytes
                .or(file.grpc_max_message_bytes)
                .unwrap_or(DEFAULT_GRPC_MAX_MESSAGE_BYTES),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            exit_timeout: Duration::from_secs(
                args.exit_timeout_secs
                    .or(file.exit_timeout_secs)
                    .unwrap_or(DEFAULT_EXIT_TIMEOUT_SECS),
            ),
            max_body_bytes: args
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(DEFAULT_MAX_BODY_BYTES),
            intra_op_threads: args
                .intra_op_threads
                .or(file.intra_op_threads)
                .unwrap_or(DEFAULT_INTRA_OP_THREADS),
            metrics_interval: Duration::from_millis(
                args.metrics_interval_ms
                    .or(file.metrics_interval_ms)
                    .unwrap_or(DEFAULT_METRICS_INTERVAL_MS),
            ),
            gpus: gpus.parse().map_err(|message| SettingsError::Invalid {
                field: "gpus",
                message,
            })?,
            tls: TlsSettings::resolve(
                args.tls_cert.clone().or(file.tls_cert),
                args.tls_key.clone().or(file.tls_key),
                args.tls_client_ca.clone().or(file.tls_client_ca),
            )?,
            limits: ConnectionLimits {
                header_read_timeout: Duration::from_secs(
                    args.header_read_timeout_secs
                        .or(file.header_read_timeout_secs)
                        .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT_SECS),
                ),
                body_timeout: Duration::from_secs(
                    args.body_timeout_secs
                        .or(file.body_timeout_secs)
                        .unwrap_or(DEFAULT_BODY_TIMEOUT_SECS),
                ),
                max_connections: args
                    .max_connections
                    .or(file.max_connections)
                    .unwrap_or_else(default_max_connections),
                http2_max_streams: args
                    .http2_max_streams
                    .or(file.http2_max_streams)
                    .unwrap_or(DEFAULT_HTTP2_MAX_STREAMS),
                http2_idle_timeout: Duration::from_secs(
                    args.http2_idle_timeout_secs
                        .or(file.http2_idle_timeout_secs)
                        .unwrap_or(DEFAULT_HTTP2_IDLE_TIMEOUT_SECS),
                ),
                max_inflight_bytes: args
                    .max_inflight_bytes
                    .or(file.max_inflight_bytes)
                    .unwrap_or_else(|| {
                        default_max_inflight_bytes(
                            args.max_body_bytes
                                .or(file.max_body_bytes)
                                .unwrap_or(DEFAULT_MAX_BODY_BYTES),
                        )
                    }),
            },
            cache_redis: args
                .cache_redis_url
                .clone()
                .or(file.cache_redis_url)
                .map(|url| RedisSettings {
                    url,
                    timeout: Duration::from_millis(
                        args.cache_redis_timeout_ms
                            .or(file.cache_redis_timeout_ms)
                            .unwrap_or(DEFAULT_CACHE_REDIS_TIMEOUT_MS),
                    ),
                    ca: args.cache_redis_ca.clone().or(file.cache_redis_ca),
                }),
        };
        s.validate()?;
        Ok(s)
    }

    /// Every default, serving `model_repository` (tests and tools override fields).
    pub fn with_defaults(model_repository: PathBuf) -> Settings {
        Settings {
            model_repository,
            host: DEFAULT_HOST.parse().expect("valid default. This is a bug."),
            http_port: DEFAULT_HTTP_PORT,
            metrics_port: DEFAULT_METRICS_PORT,
            grpc_port: DEFAULT_GRPC_PORT,
            grpc_max_message_bytes: DEFAULT_GRPC_MAX_MESSAGE_BYTES,
            log_format: LogFormat::default(),
            exit_timeout: Duration::from_secs(DEFAULT_EXIT_TIMEOUT_SECS),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            gpus: GpuSelection::All,
            intra_op_threads: DEFAULT_INTRA_OP_THREADS,
            metrics_interval: Duration::from_millis(DEFAULT_METRICS_INTERVAL_MS),
            model_control: ModelControl::default(),
            repository_poll: Duration::from_secs(DEFAULT_REPOSITORY_POLL_SECS),
            state_dir: None,
            access_log: true,
            auth: None,
            config_file: None,
            tls: None,
            limits: ConnectionLimits::DEFAULT,
            cache_redis: None,
            jobs: JobsSettings::default(),
        }
    }

    /// Re-reads `[auth]` from the settings file (for a reload).
    pub fn reload_auth(
        path: &std::path::Path,
    ) -> Result<Option<crate::auth::AuthConfig>, SettingsError> {
        Ok(read_file(path)?.auth)
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        if let Some(a) = &self.auth {
            a.validate().map_err(|message| SettingsError::Invalid {
                field: "auth",
                message,
            })?;
        }
        if self.jobs.max_running == 0 || self.jobs.max_upload_bytes == 0 {
            return Err(SettingsError::Invalid {
                field: "jobs_max_running / jobs_max_upload_bytes",
                message: "expected at least 1".into(),
            });
        }
        if let Some(d) = &self.jobs.input_dir {
            if !d.is_dir() {
                return Err(SettingsError::Invalid {
                    field: "jobs_input_dir",
                    message: format!("{} is not a folder", d.display()),
                });
            }
        }
        if self.repository_poll.is_zero() {
            return Err(SettingsError::Invalid {
                field: "repository_poll_secs",
                message: "expected at least 1".into(),
            });
        }
        if !self.model_repository.is_dir() {
            return Err(SettingsError::Invalid {
                field: "model_repository",
                message: format!("'{}' is not a folder", self.model_repository.display()),
            });
        }
        if self.http_port != 0 && self.http_port == self.metrics_port {
            return Err(SettingsError::Invalid {
                field: "metrics_port",
                message: format!("must differ from http_port ({})", self.http_port),
            });
        }
        if self.grpc_port != 0
            && (self.grpc_port == self.http_port || self.grpc_port == self.metrics_port)
        {
            return Err(SettingsError::Invalid {
                field: "grpc_port",
                message: format!(
                    "must differ from http_port ({}) and metrics_port ({})",
                    self.http_port, self.metrics_port
                ),
            });
        }
        if self.grpc_max_message_bytes == 0 {
            return Err(SettingsError::Invalid {
                field: "grpc_max_message_bytes",
                message: "expected at least 1".into(),
            });
        }
        if self.intra_op_threads == 0 {
            return Err(SettingsError::Invalid {
                field: "intra_op_threads",
                message: "expected at least 1".into(),
            });
        }
        if self.metrics_interval < Duration::from_millis(10) {
            return Err(SettingsError::Invalid {
                field: "metrics_interval_ms",
                message: "expected at least 10".into(),
            });
        }
        let l = &self.limits;
        for (field, zero) in [
            ("header_read_timeout_secs", l.header_read_timeout.is_zero()),
            ("body_timeout_secs", l.body_timeout.is_zero()),
            ("max_connections", l.max_connections == 0),
            ("http2_max_streams", l.http2_max_streams == 0),
            ("http2_idle_timeout_secs", l.http2_idle_timeout.is_zero()),
        ] {
            if zero {
                return Err(SettingsError::Invalid {
                    field,
                    message: "expected at least 1".into(),
                });
            }
        }
        if l.max_inflight_bytes < self.max_body_bytes {
            return Err(SettingsError::Invalid {
                field: "max_inflight_bytes",
                message: format!(
                    "must be at least max_body_bytes ({}), or a largest body could never be read",
                    self.max_body_bytes
                ),
            });
        }
        if let Some(r) = &self.cache_redis {
            if !(r.url.starts_with("redis://") || r.url.starts_with("rediss://")) {
                return Err(SettingsError::Invalid {
                    field: "cache_redis_url",
                    message: format!(
                        "expected redis://host:port or rediss://host:port, got '{}'",
                        redacted(&r.url)
                    ),
                });
            }
            if r.timeout.is_zero() {
                return Err(SettingsError::Invalid {
                    field: "cache_redis_timeout_ms",
                    message: "expected at least 1".into(),
                });
            }
        }
        if self.max_body_bytes == 0 {
            return Err(SettingsError::Invalid {
                field: "max_body_bytes",
                message: "expected at least 1".into(),
            });
        }
        Ok(())
    }
}

fn read_file(path: &std::path::Path) -> Result<FileSettings, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|e| SettingsError::File {
        file: path.display().to_string(),
        message: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| SettingsError::File {
        file: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Log format: human-readable text or one JSON object per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Which GPUs the operator allows (`--gpus`): all visible ones, none, or a list of ordinals.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GpuSelection {
    #[default]
    All,
    None,
    List(Vec<usize>),
}

impl std::str::FromStr for GpuSelection {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "all" | "" => Ok(GpuSelection::All),
            "none" => Ok(GpuSelection::None),
            list => list
                .split(',')
                .map(|p| {
                    p.trim().parse::<usize>().map_err(|_| {
                        format!("'{p}' is not a GPU ordinal (expected all, none or e.g. 0,1)")
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(GpuSelection::List),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_flag_beats_file_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.toml");
        std::fs::write(
            &file,
            "http_port = 9000\nmetrics_port = 9002\nexit_timeout_secs = 5\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file),
            model_repository: Some(dir.path().into()),
            http_port: Some(7000),
            ..ServeArgs::default()
        };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.http_port, 7000);
        assert_eq!(s.metrics_port, 9002);
        assert_eq!(s.exit_timeout, Duration::from_secs(5));
        assert_eq!(s.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    }

    #[test]
    fn resolve_unknown_file_key_is_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.toml");
        std::fs::write(&file, "http_prot = 1\n").unwrap();
        let args = ServeArgs {
            config: Some(file),
            model_repository: Some(dir.path().into()),
            ..ServeArgs::default()
        };
        let e = Settings::resolve(&args).unwrap_err().to_string();
        assert!(e.contains("http_prot"), "{e}");
    }

    #[test]
    fn resolve_missing_repository_is_error() {
        let args = ServeArgs {
            model_repository: Some("/nonexistent/ferrite".into()),
            ..ServeArgs::default()
        };
        let e = Settings::resolve(&args).unwrap_err().to_string();
        assert!(e.contains("model_repository"), "{e}");
    }

    #[test]
    fn resolve_tls_from_flags_and_file_halves_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.toml");
        std::fs::write(&file, "tls_key = \"/k.pem\"\ntls_client_ca = \"/ca.pem\"\n").unwrap();
        let mut args = ServeArgs {
            config: Some(file),
            model_repository: Some(dir.path().into()),
            tls_cert: Some("/c.pem".into()),
            ..ServeArgs::default()
        };
        let tls = Settings::resolve(&args).unwrap().tls.unwrap();
        assert_eq!(tls.cert, PathBuf::from("/c.pem"));
        assert_eq!(tls.key, PathBuf::from("/k.pem"));
        assert_eq!(tls.client_ca, Some(PathBuf::from("/ca.pem")));
        args.config = None;
        let e = Settings::resolve(&args).unwrap_err().to_string();
        assert!(e.contains("tls_key"), "{e}");
        args.tls_cert = None;
        args.tls_client_ca = Some("/ca.pem".into());
        let e = Settings::resolve(&args).unwrap_err().to_string();
        assert!(e.contains("tls_client_ca"), "{e}");
        args.tls_client_ca = None;
        assert_eq!(Settings::resolve(&args).unwrap().tls, None);
    }

    #[test]
    fn gpu_selection_parses_lists() {
        assert_eq!("0,2".parse(), Ok(GpuSelection::List(vec![0, 2])));
        assert_eq!("none".parse(), Ok(GpuSelection::None));
        assert!("x".parse::<GpuSelection>().is_err());
    }
}
