//! A condition that may repeat thousands of times a second (the table
//! full, events about unknown legs, a failing accept), counted and logged
//! at most once per [`REPEAT_LOG_EVERY`]: an operator sees it and its rate,
//! and the log never floods.

use std::time::{Duration, Instant};

/// How often a repeated condition is logged: once per interval, with a
/// count.
pub const REPEAT_LOG_EVERY: Duration = Duration::from_secs(10);

/// One repeated condition's counts.
#[derive(Debug, Default)]
pub struct Repeated {
    total: u64,
    since_report: u64,
    reported: Option<Instant>,
}

impl Repeated {
    /// Counts one more; when a report is due, returns how many since the
    /// last report and in all.
    pub fn count(&mut self) -> Option<(u64, u64)> {
        self.total += 1;
        self.since_report += 1;
        if self
            .reported
            .is_some_and(|at| at.elapsed() < REPEAT_LOG_EVERY)
        {
            return None;
        }
        let since = std::mem::take(&mut self.since_report);
        self.reported = Some(Instant::now());
        Some((since, self.total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_reported_then_once_per_interval() {
        let mut repeated = Repeated::default();
        assert_eq!(repeated.count(), Some((1, 1)));
        assert_eq!(repeated.count(), None);
        assert_eq!(repeated.count(), None);
        repeated.reported = Some(Instant::now() - REPEAT_LOG_EVERY);
        assert_eq!(
            repeated.count(),
            Some((3, 4)),
            "the count since the last report"
        );
    }
}
