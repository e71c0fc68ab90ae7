//! Per-principal request rates (`governor`): one keyed limiter per distinct limit, keyed by the
//! principal's name. Idle keys are forgotten now and then so that many token subjects cannot grow
//! the map without bound.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::{Principal, RateLimit};

/// Checks between two sweeps of idle keys.
const SWEEP_EVERY: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allow,
    /// Over the limit: the client may retry after this long.
    Deny {
        retry_after: Duration,
    },
}

#[derive(Default)]
pub struct RateLimiters {
    /// Short sections, no await: looks up (or creates) the limiter of one limit.
    by_limit: Mutex<HashMap<RateLimit, Arc<DefaultKeyedRateLimiter<String>>>>,
    checks: AtomicU64,
}

fn quota(r: RateLimit) -> Quota {
    let burst = NonZeroU32::new(r.burst.max(1)).expect("max(1). This is a bug.");
    Quota::with_period(Duration::from_secs_f64(1.0 / r.per_second))
        .expect("per_second > 0 gives a period > 0. This is a bug.")
        .allow_burst(burst)
}

impl RateLimiters {
    pub fn check(&self, p: &Principal) -> RateDecision {
        if p.rate.is_unlimited() {
            return RateDecision::Allow;
        }
        let limiter = {
            let mut map = self.by_limit.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(p.rate)
                .or_insert_with(|| Arc::new(RateLimiter::keyed(quota(p.rate))))
                .clone()
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
        }
        match limiter.check_key(&p.name) {
            Ok(()) => RateDecision::Allow,
            Err(not_until) => RateDecision::Deny {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(name: &str, per_second: f64, burst: u32) -> Principal {
        Principal {
            name: name.into(),
            scopes: vec![],
            rate: RateLimit { per_second, burst },
        }
    }

    #[test]
    fn burst_is_allowed_then_denied_with_a_retry_time_per_principal() {
        let r = RateLimiters::default();
        let a = principal("a", 1.0, 3);
        for _ in 0..3 {
            assert_eq!(r.check(&a), RateDecision::Allow);
        }
        match r.check(&a) {
            RateDecision::Deny { retry_after } => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1))
            }
            RateDecision::Allow => panic!("the 4th request within a second must be denied"),
        }
        // Another principal with the same limit has its own bucket.
        assert_eq!(r.check(&principal("b", 1.0, 3)), RateDecision::Allow);
        // Unlimited is never denied.
        let u = principal("u", 0.0, 0);
        assert!((0..1000).all(|_| r.check(&u) == RateDecision::Allow));
    }
}
