//! The checkpoint beside a job's output parts: what the job is (input, model, settings) and which
//! parts are done, each with the input records it covers. Written whole to a temporary file, synced
//! and renamed into place after each part's files are on disk, so a kill at any instant leaves
//! either the old or the new checkpoint; a part file not listed is an orphan and is redone.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::input::InputSpec;
use super::output::OutputFormat;

/// What must match for a run to continue another's parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub input_len: u64,
    /// Modification time of the input, in nanoseconds since the epoch (0 when unknown).
    pub input_modified_ns: u128,
    pub model: String,
    pub version: u64,
    pub input: InputSpec,
    pub output: OutputFormat,
    pub part_records: u64,
    pub truncate: bool,
}

impl Identity {
    pub fn input_stamp(path: &Path) -> std::io::Result<(u64, u128)> {
        let m = std::fs::metadata(path)?;
        let modified = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok((m.len(), modified))
    }
}

/// One finished part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartDone {
    /// Input records it covers (rows written + rejected).
    pub records: u64,
    pub rows: u64,
    pub rejected: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub identity: Identity,
    pub parts: Vec<PartDone>,
}

impl Checkpoint {
    pub fn new(identity: Identity) -> Checkpoint {
        Checkpoint {
            identity,
            parts: Vec::new(),
        }
    }

    pub fn records(&self) -> u64 {
        self.parts.iter().map(|p| p.records).sum()
    }

    pub fn rows(&self) -> u64 {
        self.parts.iter().map(|p| p.rows).sum()
    }

    pub fn rejected(&self) -> u64 {
        self.parts.iter().map(|p| p.rejected).sum()
    }

    /// The checkpoint in `dir`, if any.
    pub fn load(dir: &Path) -> std::io::Result<Option<Checkpoint>> {
        match std::fs::read(path(dir)) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the checkpoint in `dir` atomically (temporary file, sync, rename, sync the folder).
    pub fn store(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join("checkpoint.json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path(dir))?;
        std::fs::File::open(dir)?.sync_all()
    }
}

fn path(dir: &Path) -> PathBuf {
    dir.join("checkpoint.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_then_load_round_trips_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), None);
        let mut c = Checkpoint::new(Identity {
            input_len: 10,
            input_modified_ns: 5,
            model: "m".into(),
            version: 1,
            input: InputSpec::default(),
            output: OutputFormat::Parquet,
            part_records: 100,
            truncate: true,
        });
        c.store(dir.path()).unwrap();
        c.parts.push(PartDone {
            records: 100,
            rows: 98,
            rejected: 2,
        });
        c.store(dir.path()).unwrap();
        let back = Checkpoint::load(dir.path()).unwrap().unwrap();
        assert_eq!(back, c);
        assert_eq!((back.records(), back.rows(), back.rejected()), (100, 98, 2));
        assert!(!dir.path().join("checkpoint.json.tmp").exists());
    }
}
