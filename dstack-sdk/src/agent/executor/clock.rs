//! The per-job event clock: millisecond Unix timestamps that strictly increase, so that
//! `pull?timestamp=T` ("everything newer than T") never skips or repeats an event, even when
//! many events happen within one millisecond or the wall clock steps back.

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A strictly increasing millisecond clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MonotonicClock {
    last: i64,
}

impl MonotonicClock {
    /// A clock that continues after `last` (the newest timestamp already handed out; 0 for a
    /// fresh job). A restarted agent passes the newest persisted timestamp.
    pub fn starting_after(last: i64) -> Self {
        Self { last }
    }

    /// The next timestamp: the current time, or one more than the last one if the clock has
    /// not moved on.
    pub fn tick(&mut self) -> i64 {
        self.tick_at(now_ms())
    }

    /// [`Self::tick`] with an explicit current time (for tests).
    pub fn tick_at(&mut self, now: i64) -> i64 {
        self.last = now.max(self.last + 1);
        self.last
    }

    /// The newest timestamp handed out (the pull response's `last_updated`).
    pub fn latest(&self) -> i64 {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictly_increasing() {
        let mut c = MonotonicClock::starting_after(0);
        assert_eq!(c.tick_at(1000), 1000);
        assert_eq!(c.tick_at(1000), 1001);
        assert_eq!(c.tick_at(999), 1002);
        assert_eq!(c.tick_at(5000), 5000);
        assert_eq!(c.latest(), 5000);
        let mut restarted = MonotonicClock::starting_after(c.latest());
        assert_eq!(restarted.tick_at(4000), 5001);
        assert!(MonotonicClock::default().tick() > 1_600_000_000_000);
    }
}
