//! The Redis level's circuit breaker, pure: when to give up on a connection (a broken connection at
//! once; timeouts after a few in a row, so one slow reply does not reconnect) and how long to wait
//! between reconnection attempts (exponential, capped). The I/O that follows its decisions is in
//! `cache::redis`; this is tested without sockets.

use std::time::Duration;

/// Timeouts in a row that open the circuit.
pub const TRIP_AFTER_TIMEOUTS: u32 = 3;
pub const FIRST_BACKOFF: Duration = Duration::from_millis(50);
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How one operation went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// No answer within the timeout.
    Timeout,
    /// The connection is gone (reset, closed, refused).
    Broken,
    /// The server answered with an error (full with `noeviction`, wrong type, ...): the connection
    /// is fine.
    Refused,
}

/// Counts consecutive timeouts on the current connection.
#[derive(Debug, Default)]
pub struct Breaker {
    timeouts_in_row: u32,
}

impl Breaker {
    /// Records an outcome; true when the connection should be dropped (circuit opens: requests go
    /// uncached until a reconnection succeeds).
    pub fn record(&mut self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Ok | Outcome::Refused => {
                self.timeouts_in_row = 0;
                false
            }
            Outcome::Timeout => {
                self.timeouts_in_row += 1;
                if self.timeouts_in_row >= TRIP_AFTER_TIMEOUTS {
                    self.timeouts_in_row = 0;
                    true
                } else {
                    false
                }
            }
            Outcome::Broken => {
                self.timeouts_in_row = 0;
                true
            }
        }
    }
}

/// The wait before reconnection attempt `attempt` (0-based): 50 ms doubling, at most 2 s.
pub fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_trips_at_once_on_broken_and_after_three_timeouts_in_row() {
        let mut b = Breaker::default();
        assert!(b.record(Outcome::Broken));
        assert!(!b.record(Outcome::Timeout));
        assert!(!b.record(Outcome::Timeout));
        assert!(!b.record(Outcome::Ok), "a success resets the count");
        assert!(!b.record(Outcome::Timeout));
        assert!(!b.record(Outcome::Timeout));
        assert!(b.record(Outcome::Timeout));
        assert!(!b.record(Outcome::Timeout), "counting starts again");
        assert!(!b.record(Outcome::Refused));
        assert!(!b.record(Outcome::Refused), "server errors never trip");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(0), Duration::from_millis(50));
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(6), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
