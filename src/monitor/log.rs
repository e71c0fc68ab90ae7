//! The prediction log (opt-in per model: `[monitoring] log_dir`): one JSON line per live request in
//! `<log_dir>/<model>-<version>.jsonl` with the request id, time, version, rows, an output summary
//! (the predicted classes of a classifier, else the output width) and an xxh3-64 hash of the inputs;
//! inputs and outputs themselves only with `log_payloads = true`. The file is rotated past
//! `log_max_bytes` or `log_max_age_secs` (renamed with its start time), and only the newest
//! `log_max_files` rotated files are kept, so disk use stays under about
//! `(log_max_files + 1) x log_max_bytes`. Written by the monitor thread: a write that fails (disk
//! full, permissions) is counted by the caller and logged once; it never fails a request.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use serde_json::json;

use super::Sample;
use crate::spec::Monitoring;
use crate::tensor::TensorData;

pub struct PredictionLog {
    dir: PathBuf,
    stem: String,
    version: u64,
    max_bytes: u64,
    max_age: std::time::Duration,
    max_files: usize,
    payloads: bool,
    file: Option<(BufWriter<File>, u64, Instant)>,
    warned: bool,
}

impl PredictionLog {
    /// `None` unless `log_dir` is set.
    pub fn open(cfg: &Monitoring, model: &str, version: u64) -> Option<PredictionLog> {
        let dir = PathBuf::from(cfg.log_dir.as_ref()?);
        Some(PredictionLog {
            dir,
            stem: format!("{model}-{version}"),
            version,
            max_bytes: cfg.log_max_bytes,
            max_age: std::time::Duration::from_secs(cfg.log_max_age_secs),
            max_files: cfg.log_max_files,
            payloads: cfg.log_payloads,
            file: None,
            warned: false,
        })
    }

    fn current(&self) -> PathBuf {
        self.dir.join(format!("{}.jsonl", self.stem))
    }

    /// Writes one record; `Err` is counted by the caller (the first one is logged here).
    pub fn write(&mut self, s: &Sample, classes: Option<&[u32]>) -> std::io::Result<()> {
        let line = self.record(s, classes);
        let r = self.append(line.as_bytes());
        if let Err(e) = &r {
            if !self.warned {
                self.warned = true;
                tracing::error!(dir = %self.dir.display(), error = %e, "prediction log write failed; requests are still served (further failures are only counted)");
            }
            self.file = None;
        }
        r
    }

    fn record(&self, s: &Sample, classes: Option<&[u32]>) -> String {
        let ms =
            s.at.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
        let mut bytes = Vec::new();
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for t in s.inputs.iter().flatten() {
            bytes.clear();
            crate::protocol::kserve_v2::data_to_bytes(&t.data, &mut bytes);
            h.update(t.name.as_bytes());
            h.update(&bytes);
        }
        let mut rec = json!({
            "time_ms": ms,
            "id": s.id.as_deref(),
            "version": self.version,
            "rows": s.rows,
        });
        if s.inputs.is_some() {
            rec["input_xxh3"] = json!(format!("{:016x}", h.digest()));
        }
        match classes {
            Some(c) => rec["classes"] = json!(c),
            None => {
                rec["output_values"] = json!(s.outputs.as_ref().map_or(0, Vec::len));
            }
        }
        if self.payloads {
            let inputs: Vec<_> = s
                .inputs
                .iter()
                .flatten()
                .map(|t| {
                    let data = match &t.data {
                        TensorData::F32(v) => json!(v),
                        TensorData::I64(v) => json!(v),
                        TensorData::I32(v) => json!(v),
                        other => json!(format!("{} values", other.len())),
                    };
                    json!({"name": t.name, "shape": t.shape, "data": data})
                })
                .collect();
            rec["inputs"] = json!(inputs);
            rec["outputs"] = json!(s.outputs);
        }
        let mut line = rec.to_string();
        line.push('\n');
        line
    }

    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        let rotate = self.file.as_ref().is_some_and(|(_, n, t)| {
            *n + line.len() as u64 > self.max_bytes || t.elapsed() >= self.max_age
        });
        if rotate {
            if let Some((mut w, _, _)) = self.file.take() {
                w.flush()?;
            }
            self.rotate()?;
        }
        if self.file.is_none() {
            std::fs::create_dir_all(&self.dir)?;
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.current())?;
            let len = f.metadata()?.len();
            self.file = Some((BufWriter::new(f), len, Instant::now()));
        }
        let (w, n, _) = self.file.as_mut().expect("opened above. This is a bug.");
        w.write_all(line)?;
        // One line per request at most a period late is not worth a lost tail: flush each line
        // (the thread is off the request path).
        w.flush()?;
        *n += line.len() as u64;
        Ok(())
    }

    /// Renames the current file with its rotation time and deletes rotated files beyond the limit.
    fn rotate(&self) -> std::io::Result<()> {
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let to = self.dir.join(format!("{}.{ms:013}.jsonl", self.stem));
        std::fs::rename(self.current(), to)?;
        let prefix = format!("{}.", self.stem);
        let mut old: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".jsonl"))
            })
            .collect();
        old.sort();
        while old.len() > self.max_files {
            std::fs::remove_file(old.remove(0))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    fn sample(i: usize) -> Sample {
        Sample {
            id: Some(format!("req-{i}").into()),
            rows: 1,
            inputs: Some(vec![Tensor::new(
                "x",
                vec![1, 2],
                TensorData::F32(vec![i as f32, 1.0]),
            )]),
            tokens: None,
            outputs: Some(vec![0.1, 0.9]),
            drift: true,
            at: SystemTime::now(),
        }
    }

    #[test]
    fn log_rotates_by_size_and_keeps_at_most_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Monitoring {
            log_dir: Some(dir.path().display().to_string()),
            log_max_bytes: 4096,
            log_max_files: 2,
            ..Monitoring::default()
        };
        let mut log = PredictionLog::open(&cfg, "m", 1).unwrap();
        for i in 0..300 {
            log.write(&sample(i), Some(&[1])).unwrap();
        }
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(files.len(), 3, "current + 2 rotated");
        let total: u64 = files.iter().map(|f| f.metadata().unwrap().len()).sum();
        assert!(total <= 3 * 4096, "{total}");
        let current = std::fs::read_to_string(dir.path().join("m-1.jsonl")).unwrap();
        let last: serde_json::Value =
            serde_json::from_str(current.lines().last().unwrap()).unwrap();
        assert_eq!(last["id"], "req-299");
        assert_eq!(last["classes"], json!([1]));
        assert!(last["input_xxh3"].is_string());
        assert!(last.get("inputs").is_none(), "no payloads unless asked");
    }

    #[test]
    fn unwritable_log_dir_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        let cfg = Monitoring {
            log_dir: Some(file.display().to_string()),
            ..Monitoring::default()
        };
        let mut log = PredictionLog::open(&cfg, "m", 1).unwrap();
        assert!(log.write(&sample(0), None).is_err());
        assert!(log.write(&sample(1), None).is_err());
    }
}
