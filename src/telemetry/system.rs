//! Host CPU and memory readings from `/proc` (Linux): CPU utilisation (0–1, like Triton's
//! `nv_cpu_utilization`), host memory total/used and this process's resident set size. Parsing is
//! pure and tested; reading is a few small files per sample. Knows nothing of metrics or HTTP.

use std::path::PathBuf;

/// Cumulative CPU time counters from the first line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTimes {
    pub idle: u64,
    pub total: u64,
}

/// One reading of the host.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CpuSample {
    /// Busy fraction of all CPUs since the previous sample (the first one: since boot), 0–1.
    pub utilization: f64,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub process_resident_bytes: u64,
}

/// Parses the aggregate `cpu ` line of `/proc/stat`. Guest time is already inside user time.
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        idle,
        total: v.iter().sum(),
    })
}

/// Busy fraction between two readings, clamped to 0–1; 0 when no time passed.
pub fn utilization(prev: CpuTimes, now: CpuTimes) -> f64 {
    let total = now.total.saturating_sub(prev.total);
    if total == 0 {
        return 0.0;
    }
    let idle = now.idle.saturating_sub(prev.idle).min(total);
    (total - idle) as f64 / total as f64
}

/// `(total, used)` bytes from `/proc/meminfo`: used = MemTotal - MemAvailable.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let total = kib_field(text, "MemTotal:")?;
    let avail = kib_field(text, "MemAvailable:")?;
    Some((total, total.saturating_sub(avail)))
}

/// Resident set size in bytes from `/proc/self/status` (`VmRSS`).
pub fn parse_status_rss(text: &str) -> Option<u64> {
    kib_field(text, "VmRSS:")
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// Reads `/proc` and keeps the previous CPU counters for the next utilisation figure.
#[derive(Debug)]
pub struct CpuReader {
    prev: CpuTimes,
    /// `/proc`, or a folder shaped like it (tests).
    proc_dir: PathBuf,
}

impl Default for CpuReader {
    fn default() -> Self {
        CpuReader::at("/proc")
    }
}

impl CpuReader {
    /// A reader of `stat`, `meminfo` and `self/status` under `proc_dir`.
    pub fn at(proc_dir: impl Into<PathBuf>) -> CpuReader {
        CpuReader {
            prev: CpuTimes::default(),
            proc_dir: proc_dir.into(),
        }
    }

    /// One sample; `None` where `stat` or `meminfo` cannot be read or parsed (not Linux).
    pub fn sample(&mut self) -> Option<CpuSample> {
        let read = |p: &str| std::fs::read_to_string(self.proc_dir.join(p)).ok();
        let now = parse_proc_stat(&read("stat")?)?;
        let (memory_total_bytes, memory_used_bytes) = parse_meminfo(&read("meminfo")?)?;
        let process_resident_bytes = read("self/status")
            .and_then(|s| parse_status_rss(&s))
            .unwrap_or(0);
        let utilization = utilization(self.prev, now);
        self.prev = now;
        Some(CpuSample {
            utilization,
            memory_total_bytes,
            memory_used_bytes,
            process_resident_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 5 50 800 40 3 2 0 7 0\ncpu0 50 2 25 400 20 1 1 0 0 0\n";

    #[test]
    fn parse_proc_stat_sums_first_eight_fields() {
        let t = parse_proc_stat(STAT).unwrap();
        assert_eq!(t.idle, 840);
        assert_eq!(t.total, 1000);
    }

    #[test]
    fn utilization_between_samples_is_busy_fraction() {
        let a = CpuTimes {
            idle: 800,
            total: 1000,
        };
        let b = CpuTimes {
            idle: 950,
            total: 1200,
        };
        assert!((utilization(a, b) - 0.25).abs() < 1e-12);
        assert_eq!(utilization(b, b), 0.0);
        assert_eq!(utilization(CpuTimes::default(), a), 0.2);
    }

    #[test]
    fn parse_meminfo_used_is_total_minus_available() {
        let m = "MemTotal:       16000 kB\nMemFree:  1000 kB\nMemAvailable:    4000 kB\n";
        assert_eq!(parse_meminfo(m), Some((16000 * 1024, 12000 * 1024)));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn parse_status_rss_reads_vmrss() {
        let s = "Name:\tferrite\nVmRSS:\t   2048 kB\n";
        assert_eq!(parse_status_rss(s), Some(2048 * 1024));
    }

    /// A `/proc`-shaped folder with the given `stat` cpu line and meminfo (kB).
    fn fake_proc(dir: &std::path::Path, cpu: &str, total_kb: u64, avail_kb: u64) {
        std::fs::create_dir_all(dir.join("self")).unwrap();
        std::fs::write(dir.join("stat"), format!("cpu  {cpu}\ncpu0 {cpu}\n")).unwrap();
        let mem = format!("MemTotal: {total_kb} kB\nMemFree: 1 kB\nMemAvailable: {avail_kb} kB\n");
        std::fs::write(dir.join("meminfo"), mem).unwrap();
        std::fs::write(
            dir.join("self/status"),
            "Name:\tferrite\nVmRSS:\t  4096 kB\n",
        )
        .unwrap();
    }

    fn exported(m: &crate::telemetry::Metrics, name: &str) -> Option<f64> {
        let text = m.encode();
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))?;
        Some(v.parse().unwrap())
    }

    /// What the server exports from two host readings: utilisation over the interval between them
    /// (not since boot), used memory as total minus available, and this process's RSS.
    #[test]
    fn host_gauges_follow_proc_between_samples() {
        let dir = tempfile::tempdir().unwrap();
        let m = crate::telemetry::Metrics::new();
        let mut r = CpuReader::at(dir.path());
        // user nice system idle iowait ...: 200 busy of 1000 since boot
        fake_proc(dir.path(), "100 50 50 700 100 0 0 0", 16_000, 4_000);
        m.record_cpu(&r.sample().unwrap());
        assert_eq!(exported(&m, "nv_cpu_utilization"), Some(0.2));
        assert_eq!(
            exported(&m, "nv_cpu_memory_total_bytes"),
            Some(16_000.0 * 1024.0)
        );
        assert_eq!(
            exported(&m, "nv_cpu_memory_used_bytes"),
            Some(12_000.0 * 1024.0)
        );
        assert_eq!(
            exported(&m, "ferrite_process_resident_memory_bytes"),
            Some(4096.0 * 1024.0)
        );
        // 400 more ticks, 300 of them busy: 0.75 for this interval (since boot it would be 0.357)
        fake_proc(dir.path(), "300 100 100 750 150 0 0 0", 16_000, 10_000);
        m.record_cpu(&r.sample().unwrap());
        assert_eq!(exported(&m, "nv_cpu_utilization"), Some(0.75));
        assert_eq!(
            exported(&m, "nv_cpu_memory_used_bytes"),
            Some(6_000.0 * 1024.0)
        );
    }

    /// Where `/proc` cannot be read there is no host sample (and so no host gauges), not zeros.
    #[test]
    fn cpu_reader_without_proc_gives_no_sample() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(CpuReader::at(dir.path()).sample(), None);
    }

    /// The real `/proc` of this (Linux) host parses: the server's default reader gets a sample.
    #[cfg(target_os = "linux")]
    #[test]
    fn cpu_reader_on_linux_reads_proc() {
        let s = CpuReader::default()
            .sample()
            .expect("/proc is readable on Linux");
        assert!((0.0..=1.0).contains(&s.utilization), "{s:?}");
        assert!(s.memory_used_bytes <= s.memory_total_bytes, "{s:?}");
        assert!(
            s.memory_total_bytes > 0 && s.process_resident_bytes > 0,
            "{s:?}"
        );
    }
}
