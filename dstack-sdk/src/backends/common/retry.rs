//! Exponential back-off with jitter, and a retry loop driven by an error classifier.
//!
//! Every cloud call goes through [`retry`]: the backend classifies its error (throttling such
//! as HTTP 429 or EC2 `RequestLimitExceeded`, 5xx, transport failures → retry; everything else
//! → stop) and the loop sleeps `initial × multiplierⁿ` (capped at `max_delay`, jittered into
//! its upper half) between attempts, at most `max_attempts` attempts in all.

use std::future::Future;
use std::time::Duration;

/// A back-off policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The delay before the first retry.
    pub initial: Duration,
    /// The growth factor per retry.
    pub multiplier: f64,
    /// The largest delay.
    pub max_delay: Duration,
    /// Attempts in all (the first call included); 1 means no retries.
    pub max_attempts: u32,
    /// Randomise each delay into `[delay/2, delay]` so that clients do not retry in lockstep.
    pub jitter: bool,
}

impl Default for Backoff {
    /// 0.5 s, ×2, at most 20 s, 6 attempts, jittered: 0.5, 1, 2, 4, 8 s (~15 s in all).
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            multiplier: 2.0,
            max_delay: Duration::from_secs(20),
            max_attempts: 6,
            jitter: true,
        }
    }
}

impl Backoff {
    /// No retries.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// A fast policy for tests: `initial` delay, ×2, `max_attempts`, no jitter.
    pub fn fast(initial: Duration, max_attempts: u32) -> Self {
        Self {
            initial,
            multiplier: 2.0,
            max_delay: initial * 64,
            max_attempts,
            jitter: false,
        }
    }

    /// The un-jittered delay before retry number `retry` (0 = the first retry).
    pub fn base_delay(&self, retry: u32) -> Duration {
        let factor = self.multiplier.max(1.0).powi(retry.min(64) as i32);
        let secs = (self.initial.as_secs_f64() * factor).min(self.max_delay.as_secs_f64());
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// The delays between attempts, un-jittered (`max_attempts - 1` of them).
    pub fn schedule(&self) -> Vec<Duration> {
        (0..self.max_attempts.saturating_sub(1))
            .map(|i| self.base_delay(i))
            .collect()
    }

    /// The delay to sleep before retry number `retry`, jittered when enabled.
    pub fn delay(&self, retry: u32) -> Duration {
        let d = self.base_delay(retry);
        if !self.jitter {
            return d;
        }
        // Equal jitter: half fixed, half random.
        let r = (uuid::Uuid::new_v4().as_u128() % 10_000) as f64 / 10_000.0;
        d.mul_f64(0.5 + 0.5 * r)
    }
}

/// What to do after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Give up and return the error.
    Stop,
    /// Retry after the policy's delay.
    Retry,
    /// Retry after the server's hint (e.g. `Retry-After`), capped at the policy's `max_delay`.
    RetryAfter(Duration),
}

/// Runs `op` until it succeeds, `classify` says stop, or the attempts are spent.
pub async fn retry<T, E, Fut>(
    policy: &Backoff,
    what: &str,
    classify: impl Fn(&E) -> RetryDecision,
    mut op: impl FnMut() -> Fut,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let err = match op().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let decision = classify(&err);
        if decision == RetryDecision::Stop || attempt >= policy.max_attempts.max(1) {
            return Err(err);
        }
        let delay = match decision {
            RetryDecision::RetryAfter(d) => d.min(policy.max_delay),
            _ => policy.delay(attempt - 1),
        };
        tracing::warn!(
            call = what,
            attempt,
            delay_ms = delay.as_millis() as u64,
            error = %err,
            "retrying after a transient error"
        );
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn default_schedule() {
        let b = Backoff::default();
        let s: Vec<u128> = b.schedule().iter().map(Duration::as_millis).collect();
        assert_eq!(s, [500, 1000, 2000, 4000, 8000]);
        let capped = Backoff {
            max_attempts: 9,
            ..b
        };
        assert_eq!(
            capped.schedule().last().copied(),
            Some(Duration::from_secs(20))
        );
        for i in 0..5 {
            let d = b.delay(i);
            assert!(d <= b.base_delay(i) && d >= b.base_delay(i) / 2, "{d:?}");
        }
        assert!(Backoff::none().schedule().is_empty());
    }

    #[tokio::test]
    async fn retries_until_success_and_stops_on_fatal() {
        let calls = AtomicU32::new(0);
        let policy = Backoff::fast(Duration::from_millis(1), 5);
        let r: Result<u32, String> = retry(
            &policy,
            "t",
            |_| RetryDecision::Retry,
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n < 3 {
                    Err(format!("busy {n}"))
                } else {
                    Ok(n)
                }
            },
        )
        .await;
        assert_eq!(r, Ok(3));

        calls.store(0, Ordering::SeqCst);
        let r: Result<u32, String> = retry(
            &policy,
            "t",
            |e: &String| {
                if e == "fatal" {
                    RetryDecision::Stop
                } else {
                    RetryDecision::Retry
                }
            },
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("fatal".to_string())
            },
        )
        .await;
        assert_eq!(r, Err("fatal".to_string()));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        calls.store(0, Ordering::SeqCst);
        let r: Result<u32, String> = retry(
            &policy,
            "t",
            |_| RetryDecision::RetryAfter(Duration::from_millis(1)),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("throttled".to_string())
            },
        )
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }
}
