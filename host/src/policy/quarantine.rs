//! The health of one plugin: consecutive failures and quarantine backoff.
//!
//! A plugin that fails `threshold` calls in a row is benched for `base`, then
//! given one call on probation; each further failure doubles the bench, up to
//! `max`. One successful call clears everything. Pure logic over `Instant`s,
//! so it is unit-tested without waiting.

use std::time::{Duration, Instant};

/// Quarantine settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuarantinePolicy {
    /// Consecutive failures before the first quarantine.
    pub threshold: u32,
    /// The first quarantine's length.
    pub base: Duration,
    /// The longest quarantine.
    pub max: Duration,
}

impl Default for QuarantinePolicy {
    fn default() -> Self {
        QuarantinePolicy {
            threshold: 3,
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

/// The failure record of one plugin.
#[derive(Debug, Clone, Default)]
pub struct Health {
    consecutive_failures: u32,
    quarantines_in_a_row: u32,
    until: Option<Instant>,
}

impl Health {
    /// Whether the plugin is benched at `now`.
    pub fn quarantined_at(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    /// Records a failure; returns the quarantine length if it starts one.
    pub fn record_failure(&mut self, now: Instant, policy: &QuarantinePolicy) -> Option<Duration> {
        self.consecutive_failures += 1;
        if self.consecutive_failures < policy.threshold {
            return None;
        }
        let exponent = self.quarantines_in_a_row.min(20);
        let length = policy.base.saturating_mul(1 << exponent).min(policy.max);
        self.quarantines_in_a_row += 1;
        self.until = Some(now + length);
        Some(length)
    }

    /// Records a success: the plugin is healthy again.
    pub fn record_success(&mut self) {
        *self = Health::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: QuarantinePolicy = QuarantinePolicy {
        threshold: 3,
        base: Duration::from_secs(1),
        max: Duration::from_secs(5),
    };

    #[test]
    fn quarantine_starts_at_the_threshold_and_backs_off_exponentially() {
        let t0 = Instant::now();
        let mut health = Health::default();
        assert_eq!(health.record_failure(t0, &POLICY), None);
        assert_eq!(health.record_failure(t0, &POLICY), None);
        assert_eq!(
            health.record_failure(t0, &POLICY),
            Some(Duration::from_secs(1))
        );
        assert!(health.quarantined_at(t0));
        let after = t0 + Duration::from_secs(1);
        assert!(!health.quarantined_at(after), "probation after the bench");
        assert_eq!(
            health.record_failure(after, &POLICY),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            health.record_failure(after, &POLICY),
            Some(Duration::from_secs(4))
        );
        assert_eq!(
            health.record_failure(after, &POLICY),
            Some(Duration::from_secs(5)),
            "capped"
        );
    }

    #[test]
    fn one_success_clears_the_record() {
        let t0 = Instant::now();
        let mut health = Health::default();
        for _ in 0..3 {
            health.record_failure(t0, &POLICY);
        }
        health.record_success();
        assert!(!health.quarantined_at(t0));
        assert_eq!(health.record_failure(t0, &POLICY), None);
    }
}
