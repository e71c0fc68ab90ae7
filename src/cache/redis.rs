//! The shared Redis level: one multiplexed connection for the whole server, lookups with a
//! millisecond timeout (MGET: one round trip per request), fills through a bounded channel to a
//! writer task (pipelined SET .. PX ttl), and a reconnect task with backoff. Redis down, slow or
//! full never fails or stalls a request: the operation times out or errs, is counted in
//! `ferrite_cache_backend_errors_total{backend="redis"}`, and the request is served uncached. While
//! the connection is down (circuit open) lookups skip Redis without waiting. The URL's password
//! never reaches a log line or a metric (`redacted`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prometheus::IntCounter;
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, Notify};

use super::breaker::{backoff, Breaker, Outcome};
use super::key::Key;
pub use crate::config::{redacted, RedisSettings};

/// Fills waiting for the writer task; when full, a fill is dropped and counted.
const FILL_QUEUE: usize = 4096;
/// Most fills in one pipeline.
const FILL_BATCH: usize = 128;

struct Fill {
    key: Key,
    value: Bytes,
    ttl: Duration,
}

/// The Redis level, shared by every cached model version.
pub struct RedisLevel {
    /// `None` while disconnected (circuit open). Short sections, no await.
    conn: Mutex<Option<MultiplexedConnection>>,
    breaker: Mutex<Breaker>,
    reconnect: Arc<Notify>,
    fills: mpsc::Sender<Fill>,
    timeout: Duration,
    errors: IntCounter,
    where_: String,
}

fn redis_key(k: Key) -> String {
    format!("ferrite:c1:{k:032x}")
}

fn outcome(e: &redis::RedisError) -> Outcome {
    if e.is_timeout() {
        Outcome::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
        Outcome::Broken
    } else {
        Outcome::Refused
    }
}

impl RedisLevel {
    /// Starts the reconnect and writer tasks (on the current tokio runtime); the first connection
    /// is made in the background, so a Redis that is down at start delays nothing.
    pub fn spawn(settings: &RedisSettings, errors: IntCounter) -> Result<Arc<RedisLevel>, String> {
        let client = match &settings.ca {
            Some(ca) => {
                let pem = std::fs::read(ca)
                    .map_err(|e| format!("cannot read '{}': {e}", ca.display()))?;
                redis::Client::build_with_tls(
                    settings.url.as_str(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
            None => redis::Client::open(settings.url.as_str()),
        }
        // The error text can hold the URL: say only what kind it was.
        .map_err(|e| format!("invalid Redis URL ({:?})", e.kind()))?;
        let (tx, rx) = mpsc::channel(FILL_QUEUE);
        let level = Arc::new(RedisLevel {
            conn: Mutex::new(None),
            breaker: Mutex::new(Breaker::default()),
            reconnect: Arc::new(Notify::new()),
            fills: tx,
            timeout: settings.timeout,
            errors,
            where_: redacted(&settings.url),
        });
        tokio::spawn(reconnect_task(
            Arc::downgrade(&level),
            level.reconnect.clone(),
            client,
        ));
        tokio::spawn(writer_task(Arc::downgrade(&level), rx));
        level.reconnect.notify_one();
        Ok(level)
    }

    fn connection(&self) -> Option<MultiplexedConnection> {
        self.conn
            .lock()
            .expect("redis connection lock poisoned. This is a bug.")
            .clone()
    }

    /// Whether a connection is up (the circuit is closed).
    pub fn is_connected(&self) -> bool {
        self.connection().is_some()
    }

    /// Counts a failed operation and, when the breaker says so, drops the connection and wakes
    /// the reconnect task.
    fn failed(&self, o: Outcome, what: &str, detail: &str) {
        self.errors.inc();
        let trip = self
            .breaker
            .lock()
            .expect("breaker lock poisoned. This is a bug.")
            .record(o);
        tracing::debug!(redis = %self.where_, ?o, what, detail, "redis cache operation failed");
        if trip {
            let was = self
                .conn
                .lock()
                .expect("redis connection lock poisoned. This is a bug.")
                .take();
            if was.is_some() {
                tracing::warn!(redis = %self.where_, ?o, "redis cache disconnected; serving uncached while reconnecting");
                self.reconnect.notify_one();
            }
        }
    }

    fn succeeded(&self) {
        self.breaker
            .lock()
            .expect("breaker lock poisoned. This is a bug.")
            .record(Outcome::Ok);
    }

    /// The values of `keys` (None: absent, or Redis unavailable), in one round trip.
    pub async fn get_many(&self, keys: &[Key]) -> Vec<Option<Bytes>> {
        let none = || vec![None; keys.len()];
        let Some(mut conn) = self.connection() else {
            return none();
        };
        let mut cmd = redis::cmd("MGET");
        keys.iter().for_each(|&k| {
            cmd.arg(redis_key(k));
        });
        let q = cmd.query_async::<Vec<Option<Vec<u8>>>>(&mut conn);
        match tokio::time::timeout(self.timeout, q).await {
            Ok(Ok(v)) if v.len() == keys.len() => {
                self.succeeded();
                v.into_iter().map(|o| o.map(Bytes::from)).collect()
            }
            Ok(Ok(_)) => {
                self.failed(Outcome::Refused, "get", "MGET answered the wrong count");
                none()
            }
            Ok(Err(e)) => {
                self.failed(outcome(&e), "get", &format!("{:?}", e.kind()));
                none()
            }
            Err(_) => {
                self.failed(Outcome::Timeout, "get", "timed out");
                none()
            }
        }
    }

    /// Queues fills for the writer task; never waits. Skipped while disconnected; counted when the
    /// queue is full (Redis is too slow for the fill rate).
    pub fn put_many(&self, entries: Vec<(Key, Bytes)>, ttl: Duration) {
        if !self.is_connected() {
            return;
        }
        for (key, value) in entries {
            if self.fills.try_send(Fill { key, value, ttl }).is_err() {
                self.errors.inc();
            }
        }
    }
}

async fn reconnect_task(
    level: std::sync::Weak<RedisLevel>,
    wake: Arc<Notify>,
    client: redis::Client,
) {
    loop {
        if level.strong_count() == 0 {
            return;
        }
        wake.notified().await;
        let mut attempt = 0u32;
        loop {
            let Some(l) = level.upgrade() else { return };
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(l.timeout.max(Duration::from_millis(500))))
                .set_response_timeout(Some(l.timeout));
            match client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(c) => {
                    *l.conn
                        .lock()
                        .expect("redis connection lock poisoned. This is a bug.") = Some(c);
                    tracing::info!(redis = %l.where_, "redis cache connected");
                    break;
                }
                Err(e) => {
                    l.errors.inc();
                    if attempt == 0 {
                        tracing::warn!(redis = %l.where_, kind = ?e.kind(), "cannot connect to the redis cache; retrying with backoff");
                    }
                }
            }
            drop(l);
            tokio::time::sleep(backoff(attempt)).await;
            attempt = attempt.saturating_add(1);
        }
    }
}

async fn writer_task(level: std::sync::Weak<RedisLevel>, mut rx: mpsc::Receiver<Fill>) {
    let mut batch = Vec::with_capacity(FILL_BATCH);
    while rx.recv_many(&mut batch, FILL_BATCH).await > 0 {
        let Some(l) = level.upgrade() else { return };
        let Some(mut conn) = l.connection() else {
            batch.clear();
            continue;
        };
        let mut pipe = redis::pipe();
        for f in batch.drain(..) {
            let ms = u64::try_from(f.ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            pipe.cmd("SET")
                .arg(redis_key(f.key))
                .arg(f.value.as_ref())
                .arg("PX")
                .arg(ms)
                .ignore();
        }
        match tokio::time::timeout(l.timeout, pipe.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => l.succeeded(),
            Ok(Err(e)) => l.failed(outcome(&e), "fill", &format!("{:?}", e.kind())),
            Err(_) => l.failed(Outcome::Timeout, "fill", "timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_hides_user_and_password() {
        assert_eq!(
            redacted("rediss://user:s3cret@cache.example:6380/2"),
            "rediss://***@cache.example:6380/2"
        );
        assert_eq!(redacted("redis://:p@ss@h:1"), "redis://***@h:1");
        assert_eq!(redacted("redis://h:6379"), "redis://h:6379");
        let s = RedisSettings {
            url: "redis://:hunter2@h:1".into(),
            timeout: Duration::from_millis(5),
            ca: None,
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
