//! Host CPU and memory readings from `/proc` (Linux): CPU utilisation (0–1, like Triton's
//! `nv_cpu_utilization`), host memory total/used and this process's resident set size. Parsing is
//! pure and tested; reading is a few small files per sample. Knows nothing of metrics or HTTP.

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
#[derive(Debug, Default)]
pub struct CpuReader {
    prev: CpuTimes,
}

impl CpuReader {
    /// One sample; `None` where `/proc` cannot be read (not Linux).
    pub fn sample(&mut self) -> Option<CpuSample> {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let now = parse_proc_stat(&read("/proc/stat")?)?;
        let (memory_total_bytes, memory_used_bytes) = parse_meminfo(&read("/proc/meminfo")?)?;
        let process_resident_bytes = read("/proc/self/status")
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

    #[test]
    fn cpu_reader_on_linux_gives_sane_values() {
        let mut r = CpuReader::default();
        let Some(s) = r.sample() else { return };
        assert!((0.0..=1.0).contains(&s.utilization));
        assert!(s.memory_used_bytes <= s.memory_total_bytes);
        assert!(s.process_resident_bytes > 0);
    }
}
