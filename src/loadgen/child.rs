//! One `ferrite serve` child process per server config, for `ferrite capacity`: the model's folder
//! is copied into a temporary repository, its `config.toml` edited (max batch size, instance
//! count), and the server started on free loopback ports. Restarting per config is slower than
//! hot-reloading but leaves nothing behind: every config starts from a fresh process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::client::HttpClient;
use super::LoadgenError;

/// Settings a capacity sweep varies; `None` keeps the model's own value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServerConfig {
    pub max_batch_size: Option<usize>,
    pub instances: Option<usize>,
}

impl std::fmt::Display for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.max_batch_size, self.instances) {
            (None, None) => f.write_str("as configured"),
            (b, i) => {
                let show =
                    |v: Option<usize>| v.map_or("as configured".to_string(), |v| v.to_string());
                write!(f, "max_batch_size {}, instances {}", show(b), show(i))
            }
        }
    }
}

/// Every combination of the listed values (an empty list keeps the model's value).
pub fn grid(batch_sizes: &[usize], instances: &[usize]) -> Vec<ServerConfig> {
    let opt = |v: &[usize]| -> Vec<Option<usize>> {
        if v.is_empty() {
            vec![None]
        } else {
            v.iter().copied().map(Some).collect()
        }
    };
    opt(batch_sizes)
        .into_iter()
        .flat_map(|b| {
            opt(instances).into_iter().map(move |i| ServerConfig {
                max_batch_size: b,
                instances: i,
            })
        })
        .collect()
}

/// The model's `config.toml` with `cfg` applied. Preferred batch sizes above the new maximum are
/// dropped (the server rejects them). Comments are not kept.
pub fn edit_config(text: &str, cfg: &ServerConfig) -> Result<String, LoadgenError> {
    let bad = |m: String| LoadgenError::Child(format!("config.toml: {m}"));
    let mut t: toml::Table = text.parse().map_err(|e| bad(format!("{e}")))?;
    if let Some(b) = cfg.max_batch_size {
        t.insert("max_batch_size".into(), toml::Value::Integer(b as i64));
        if let Some(toml::Value::Table(db)) = t.get_mut("dynamic_batching") {
            if let Some(toml::Value::Array(p)) = db.get_mut("preferred_batch_sizes") {
                p.retain(|v| v.as_integer().is_some_and(|v| v as usize <= b.max(1)));
            }
        }
    }
    if let Some(n) = cfg.instances {
        let mut group = toml::Table::new();
        if let Some(toml::Value::Array(groups)) = t.get("instance_group") {
            if let Some(toml::Value::Table(g)) = groups.first() {
                group = g.clone();
            }
        }
        group.insert("count".into(), toml::Value::Integer(n as i64));
        t.insert(
            "instance_group".into(),
            toml::Value::Array(vec![toml::Value::Table(group)]),
        );
    }
    toml::to_string(&t).map_err(|e| bad(e.to_string()))
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), LoadgenError> {
    std::fs::create_dir_all(to).map_err(|e| LoadgenError::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| LoadgenError::io(from, e))? {
        let entry = entry.map_err(|e| LoadgenError::io(from, e))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(|e| LoadgenError::io(&src, e))?;
        }
    }
    Ok(())
}

fn free_port() -> Result<u16, LoadgenError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| LoadgenError::io("127.0.0.1:0", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| LoadgenError::io("127.0.0.1:0", e))
}

/// A running child server; killed and reaped on drop.
pub struct ChildServer {
    proc: Child,
    pub url: String,
    pub metrics_url: String,
    dir: tempfile::TempDir,
}

impl ChildServer {
    /// Starts `exe serve` on a copy of `repo/model` edited by `cfg`, and waits until it is ready.
    pub async fn start(
        exe: &Path,
        repo: &Path,
        model: &str,
        cfg: &ServerConfig,
    ) -> Result<ChildServer, LoadgenError> {
        let dir = tempfile::tempdir().map_err(|e| LoadgenError::io("tempdir", e))?;
        let (src, dst) = (repo.join(model), dir.path().join("models").join(model));
        copy_dir(&src, &dst)?;
        let cfg_path = dst.join("config.toml");
        let text =
            std::fs::read_to_string(&cfg_path).map_err(|e| LoadgenError::io(&cfg_path, e))?;
        std::fs::write(&cfg_path, edit_config(&text, cfg)?)
            .map_err(|e| LoadgenError::io(&cfg_path, e))?;
        let (http, metrics, grpc) = (free_port()?, free_port()?, free_port()?);
        let log: PathBuf = dir.path().join("serve.log");
        let log_file = std::fs::File::create(&log).map_err(|e| LoadgenError::io(&log, e))?;
        let proc = Command::new(exe)
            .args([
                "serve",
                "--host",
                "127.0.0.1",
                "--http-port",
                &http.to_string(),
            ])
            .args(["--metrics-port", &metrics.to_string()])
            .args(["--grpc-port", &grpc.to_string(), "--model-repository"])
            .arg(dir.path().join("models"))
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| LoadgenError::io(exe, e))?;
        let mut child = ChildServer {
            proc,
            url: format!("http://127.0.0.1:{http}"),
            metrics_url: format!("http://127.0.0.1:{metrics}/metrics"),
            dir,
        };
        child.wait_ready(Duration::from_secs(60)).await?;
        Ok(child)
    }

    async fn wait_ready(&mut self, limit: Duration) -> Result<(), LoadgenError> {
        let client = HttpClient::new(&self.url)?;
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.proc.try_wait() {
                let log =
                    std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default();
                return Err(LoadgenError::Child(format!(
                    "exited with {status} before ready:\n{log}"
                )));
            }
            if client.get_text("/v2/health/ready").await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(LoadgenError::Child(format!("not ready after {limit:?}")))
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"architecture = "mlp"
max_batch_size = 64
[dynamic_batching]
preferred_batch_sizes = [16, 32]
[[instance_group]]
count = 2
kind = "auto"
"#;

    #[test]
    fn edit_config_sets_batch_and_instances_and_trims_preferred() {
        let cfg = ServerConfig {
            max_batch_size: Some(16),
            instances: Some(1),
        };
        let t: toml::Table = edit_config(CFG, &cfg).unwrap().parse().unwrap();
        assert_eq!(t["max_batch_size"].as_integer(), Some(16));
        assert_eq!(
            t["dynamic_batching"]["preferred_batch_sizes"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let g = &t["instance_group"].as_array().unwrap()[0];
        assert_eq!(
            (g["count"].as_integer(), g["kind"].as_str()),
            (Some(1), Some("auto"))
        );
    }

    #[test]
    fn edit_config_none_keeps_values() {
        let t: toml::Table = edit_config(CFG, &ServerConfig::default())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(t["max_batch_size"].as_integer(), Some(64));
        assert_eq!(
            t["instance_group"].as_array().unwrap()[0]["count"].as_integer(),
            Some(2)
        );
    }

    #[test]
    fn grid_is_cartesian_product() {
        assert_eq!(grid(&[1, 8], &[1, 2]).len(), 4);
        assert_eq!(grid(&[], &[]), vec![ServerConfig::default()]);
        assert_eq!(
            grid(&[4], &[])[0].to_string(),
            "max_batch_size 4, instances as configured"
        );
    }
}
