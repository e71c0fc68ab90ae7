//! Load shapes: the range of steps a sweep walks (`1:64:x2`, `10:100:10`) and the open-loop arrival
//! schedule (constant or Poisson). Pure and seeded: no clocks here, only offsets from a start.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Exp};

use super::LoadgenError;

/// How a range moves from one step to the next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Add this much (perf_analyzer's `start:end:step`).
    Add(f64),
    /// Multiply by this much (`start:end:x2`, the default when the step is left out).
    Mul(f64),
}

/// `start:end[:step]`; a step written `xK` multiplies, a plain number adds; no step doubles.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RangeSpec {
    pub start: f64,
    pub end: f64,
    pub step: Step,
}

impl std::str::FromStr for RangeSpec {
    type Err = LoadgenError;

    fn from_str(s: &str) -> Result<RangeSpec, LoadgenError> {
        let bad = |why: &str| LoadgenError::Args(format!("range '{s}': {why}"));
        let num = |t: &str| t.trim().parse::<f64>().map_err(|_| bad("not a number"));
        let parts: Vec<&str> = s.split(':').collect();
        let (start, end, step) = match parts.as_slice() {
            [a] => (num(a)?, num(a)?, Step::Mul(2.0)),
            [a, b] => (num(a)?, num(b)?, Step::Mul(2.0)),
            [a, b, c] => {
                let step = match c.trim().strip_prefix(['x', '*']) {
                    Some(k) => Step::Mul(num(k)?),
                    None => Step::Add(num(c)?),
                };
                (num(a)?, num(b)?, step)
            }
            _ => return Err(bad("expected start:end[:step]")),
        };
        if !(start > 0.0 && end >= start) {
            return Err(bad("need 0 < start <= end"));
        }
        match step {
            Step::Add(d) if d <= 0.0 => return Err(bad("step must be positive")),
            Step::Mul(k) if k <= 1.0 => return Err(bad("multiplier must be above 1")),
            _ => {}
        }
        Ok(RangeSpec { start, end, step })
    }
}

impl RangeSpec {
    /// Every step value from start to end inclusive (a tiny epsilon absorbs float rounding).
    pub fn values(&self) -> Vec<f64> {
        let mut out = Vec::new();
        let mut v = self.start;
        while v <= self.end * (1.0 + 1e-9) && out.len() < 10_000 {
            out.push(v);
            v = match self.step {
                Step::Add(d) => v + d,
                Step::Mul(k) => v * k,
            };
        }
        out
    }
}

/// Open-loop arrival process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// Evenly spaced sends, 1/rate apart.
    Constant,
    /// Exponential gaps with mean 1/rate (a Poisson process).
    Poisson,
}

/// Scheduled send times as offsets from the step's start; an endless iterator.
pub struct Schedule {
    rate: f64,
    exp: Option<Exp<f64>>,
    rng: StdRng,
    n: u64,
    t: f64,
}

impl Schedule {
    pub fn new(rate: f64, arrivals: Arrivals, seed: u64) -> Result<Schedule, LoadgenError> {
        if !(rate > 0.0 && rate.is_finite()) {
            return Err(LoadgenError::Args(format!(
                "request rate must be positive, got {rate}"
            )));
        }
        let exp = match arrivals {
            Arrivals::Constant => None,
            Arrivals::Poisson => {
                Some(Exp::new(rate).expect("a positive finite rate is valid. This is a bug."))
            }
        };
        Ok(Schedule {
            rate,
            exp,
            rng: StdRng::seed_from_u64(seed),
            n: 0,
            t: 0.0,
        })
    }
}

impl Iterator for Schedule {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let at = match &self.exp {
            // n / rate, not a running sum, so rounding does not drift over long steps
            None => self.n as f64 / self.rate,
            Some(exp) => {
                let at = self.t;
                self.t += exp.sample(&mut self.rng);
                at
            }
        };
        self.n += 1;
        Some(Duration::from_secs_f64(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_plain_step_adds_like_perf_analyzer() {
        let r: RangeSpec = "1:9:4".parse().unwrap();
        assert_eq!(r.values(), vec![1.0, 5.0, 9.0]);
    }

    #[test]
    fn range_without_step_doubles() {
        let r: RangeSpec = "1:64".parse().unwrap();
        assert_eq!(r.values(), vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]);
        let r: RangeSpec = "2:20:x3".parse().unwrap();
        assert_eq!(r.values(), vec![2.0, 6.0, 18.0]);
    }

    #[test]
    fn range_single_value_one_step() {
        assert_eq!("8".parse::<RangeSpec>().unwrap().values(), vec![8.0]);
    }

    #[test]
    fn range_bad_input_rejected() {
        for s in ["0:4", "4:2", "1:4:0", "1:4:x1", "a:b", "1:2:3:4"] {
            assert!(s.parse::<RangeSpec>().is_err(), "{s}");
        }
    }

    #[test]
    fn schedule_constant_evenly_spaced() {
        let s: Vec<Duration> = Schedule::new(4.0, Arrivals::Constant, 0)
            .unwrap()
            .take(5)
            .collect();
        let ms: Vec<u128> = s.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![0, 250, 500, 750, 1000]);
    }

    #[test]
    fn schedule_poisson_gaps_exponential_with_rate_mean() {
        let rate = 1000.0;
        let n = 200_000;
        let t: Vec<f64> = Schedule::new(rate, Arrivals::Poisson, 7)
            .unwrap()
            .take(n + 1)
            .map(|d| d.as_secs_f64())
            .collect();
        let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<f64>() / n as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n as f64;
        // exponential: mean 1/rate, coefficient of variation 1
        assert!((mean * rate - 1.0).abs() < 0.01, "mean gap {mean}");
        assert!(
            (var.sqrt() / mean - 1.0).abs() < 0.02,
            "cv {}",
            var.sqrt() / mean
        );
        // Poisson counts: arrivals per 10 ms slot have mean = variance = 10
        let slots = (t[n] / 0.01) as usize;
        let mut counts = vec![0f64; slots];
        for &x in &t {
            if let Some(c) = counts.get_mut((x / 0.01) as usize) {
                *c += 1.0;
            }
        }
        let m = counts.iter().sum::<f64>() / slots as f64;
        let v = counts.iter().map(|c| (c - m).powi(2)).sum::<f64>() / slots as f64;
        assert!(
            (m - 10.0).abs() < 0.2 && (v / m - 1.0).abs() < 0.05,
            "mean {m} var {v}"
        );
    }

    #[test]
    fn schedule_same_seed_same_times() {
        let a: Vec<_> = Schedule::new(50.0, Arrivals::Poisson, 3)
            .unwrap()
            .take(10)
            .collect();
        let b: Vec<_> = Schedule::new(50.0, Arrivals::Poisson, 3)
            .unwrap()
            .take(10)
            .collect();
        assert_eq!(a, b);
    }
}
