//! The grace timer: how long contexts stay valid while the engine is away.

use std::time::Duration;
use tokio::time::{Instant, sleep_until};

/// Armed at a disconnection, disarmed when a resync completes; expiry purges
/// every context.
#[derive(Debug, Default)]
pub struct GraceTimer {
    deadline: Option<Instant>,
}

impl GraceTimer {
    /// Starts the timer unless it already runs: a link that flaps during a
    /// resync does not push the deadline out.
    pub fn arm(&mut self, grace: Duration) {
        if self.deadline.is_none() {
            self.deadline = Some(Instant::now() + grace);
        }
    }

    pub fn disarm(&mut self) {
        self.deadline = None;
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Completes at the deadline; never, when disarmed.
    pub async fn expired(&self) {
        match self.deadline {
            Some(deadline) => sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::task::Poll;

    fn fired(timer: &GraceTimer) -> bool {
        let mut expired = pin!(timer.expired());
        let waker = std::task::Waker::noop();
        matches!(
            expired
                .as_mut()
                .poll(&mut std::task::Context::from_waker(waker)),
            Poll::Ready(())
        )
    }

    #[tokio::test(start_paused = true)]
    async fn fires_at_the_deadline_not_before() {
        let mut timer = GraceTimer::default();
        timer.arm(Duration::from_secs(10));
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(!fired(&timer));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(fired(&timer));
    }

    #[tokio::test(start_paused = true)]
    async fn re_arming_keeps_the_first_deadline_and_disarm_stops_it() {
        let mut timer = GraceTimer::default();
        timer.arm(Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(6)).await;
        timer.arm(Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(fired(&timer), "a flap does not extend the grace time");
        timer.disarm();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(!fired(&timer), "a disarmed timer never fires");
    }

    #[tokio::test(start_paused = true)]
    async fn an_expiry_wakes_a_waiting_select() {
        let mut timer = GraceTimer::default();
        timer.arm(Duration::from_secs(10));
        let started = Instant::now();
        tokio::select! {
            _ = timer.expired() => {}
            _ = tokio::time::sleep(Duration::from_secs(11)) => panic!("the timer did not fire"),
        }
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }
}
