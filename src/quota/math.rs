//! The arithmetic of limits, as pure functions of `now` (unix milliseconds): the token
//! bucket, the UTC windows (minute, day, month) and the `x-ratelimit-reset-*` format.
//! Nothing here reads a clock; tests pass time in.

use std::cell::Cell;

use chrono::{DateTime, Datelike, NaiveDate, Utc};

pub const MINUTE_MS: i64 = 60_000;
pub const DAY_MS: i64 = 86_400_000;

/// A counting window, aligned in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Minute,
    Day,
    Month,
}

impl Window {
    /// The `window_kind` stored in `usage_counters`.
    pub fn name(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Day => "day",
            Window::Month => "month",
        }
    }

    /// Start of the window holding `now_ms`.
    pub fn start(self, now_ms: i64) -> i64 {
        match self {
            Window::Minute => now_ms.div_euclid(MINUTE_MS) * MINUTE_MS,
            Window::Day => now_ms.div_euclid(DAY_MS) * DAY_MS,
            Window::Month => month(now_ms).0,
        }
    }

    /// End (exclusive) of the window holding `now_ms`: the next window's start.
    pub fn end(self, now_ms: i64) -> i64 {
        match self {
            Window::Minute => self.start(now_ms) + MINUTE_MS,
            Window::Day => self.start(now_ms) + DAY_MS,
            Window::Month => month(now_ms).1,
        }
    }

    /// Milliseconds from `now_ms` to the window's end (at least 1).
    pub fn remaining_ms(self, now_ms: i64) -> i64 {
        (self.end(now_ms) - now_ms).max(1)
    }
}

/// The calendar month holding `now_ms`, as (start, end) in unix ms. Every request asks
/// (for each subject's month window), so each thread keeps the last answer and does the
/// calendar arithmetic only when `now_ms` leaves it.
fn month(now_ms: i64) -> (i64, i64) {
    thread_local! {
        static LAST: Cell<(i64, i64)> = const { Cell::new((0, 0)) };
    }
    LAST.with(|last| {
        let (start, end) = last.get();
        if (start..end).contains(&now_ms) {
            return (start, end);
        }
        let date = utc(now_ms).date_naive();
        let (y, m) = if date.month() == 12 {
            (date.year() + 1, 1)
        } else {
            (date.year(), date.month() + 1)
        };
        let bounds = (month_start(date.year(), date.month()), month_start(y, m));
        last.set(bounds);
        bounds
    })
}

fn utc(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn month_start(year: i32, month: u32) -> i64 {
    NaiveDate::from_ymd_opt(year, month, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or(0)
}

/// Requests and tokens counted in one window; `start` says which.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCount {
    pub start: i64,
    pub requests: u64,
    pub tokens: u64,
}

impl WindowCount {
    /// Moves to the window holding `now_ms`, forgetting counts of an older one.
    pub fn roll(&mut self, window: Window, now_ms: i64) {
        let start = window.start(now_ms);
        if start != self.start {
            *self = WindowCount {
                start,
                requests: 0,
                tokens: 0,
            };
        }
    }
}

/// A token bucket: holds at most `burst` requests and refills at `rate` per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    pub tokens: f64,
    pub updated_ms: i64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(burst: u64, now_ms: i64) -> TokenBucket {
        TokenBucket {
            tokens: burst as f64,
            updated_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: i64, rate: f64, burst: u64) {
        let elapsed = (now_ms - self.updated_ms).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(burst as f64);
        self.updated_ms = self.updated_ms.max(now_ms);
    }

    /// Takes one request, or says in how many milliseconds one will be available.
    /// `rate <= 0` means no limit.
    pub fn take(&mut self, now_ms: i64, rate: f64, burst: u64) -> Result<(), i64> {
        if rate <= 0.0 {
            return Ok(());
        }
        let burst = burst.max(1);
        self.refill(now_ms, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / rate) * 1000.0).ceil().max(1.0) as i64)
        }
    }

    /// Gives back a request taken by a request that was refused further on.
    pub fn refund(&mut self, burst: u64) {
        self.tokens = (self.tokens + 1.0).min(burst.max(1) as f64);
    }

    /// Requests available now (for headers and the admin API).
    pub fn available(&self, now_ms: i64, rate: f64, burst: u64) -> f64 {
        let mut b = *self;
        b.refill(now_ms, rate, burst.max(1));
        b.tokens
    }
}

/// A duration in OpenAI's `x-ratelimit-reset-*` format: `250ms`, `1s`, `6m0s`, `2h3m4s`.
/// Whole seconds are rounded up, so a client that waits that long is past the reset.
pub fn format_reset(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = (ms + 999) / 1000;
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// Seconds for `Retry-After` (rounded up, at least 1).
pub fn retry_after_secs(ms: i64) -> u64 {
    (ms.max(1) as u64).div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-23T13:45:30.250Z
    const NOW: i64 = 1_795_441_530_250;

    #[test]
    fn windows_are_utc_aligned() {
        assert_eq!(Window::Minute.start(NOW), 1_795_441_500_000);
        assert_eq!(Window::Minute.end(NOW), 1_795_441_560_000);
        // 2026-11-23T00:00:00Z and 2026-11-24T00:00:00Z
        assert_eq!(Window::Day.start(NOW), 1_795_392_000_000);
        assert_eq!(Window::Day.end(NOW), 1_795_478_400_000);
        // 2026-11-01T00:00:00Z and 2026-12-01T00:00:00Z
        assert_eq!(Window::Month.start(NOW), 1_793_491_200_000);
        assert_eq!(Window::Month.end(NOW), 1_796_083_200_000);
        assert_eq!(Window::Day.remaining_ms(NOW), 36_869_750);
    }

    #[test]
    fn december_rolls_into_january_and_boundaries_belong_to_the_new_window() {
        // 2026-12-31T23:59:59.999Z
        let last = 1_798_761_599_999;
        assert_eq!(Window::Month.end(last), 1_798_761_600_000);
        assert_eq!(Window::Month.start(last + 1), last + 1);
        assert_eq!(Window::Day.start(last + 1), last + 1);
        assert_eq!(Window::Minute.remaining_ms(last), 1);
    }

    #[test]
    fn the_remembered_month_follows_time_both_ways() {
        // 2026-12-31T23:59:59.999Z, then the next millisecond, then back.
        let last = 1_798_761_599_999;
        let december = (1_796_083_200_000, 1_798_761_600_000);
        let january = (1_798_761_600_000, 1_801_440_000_000);
        for (now, want) in [
            (last, december),
            (last, december),
            (last + 1, january),
            (last, december),
            (december.0, december),
            (december.0 - 1, (1_793_491_200_000, december.0)),
        ] {
            assert_eq!(
                (Window::Month.start(now), Window::Month.end(now)),
                want,
                "{now}"
            );
        }
    }

    #[test]
    fn counts_reset_when_the_window_moves() {
        let mut c = WindowCount::default();
        c.roll(Window::Day, NOW);
        c.requests = 5;
        c.tokens = 50;
        c.roll(Window::Day, NOW + 1000);
        assert_eq!((c.requests, c.tokens), (5, 50));
        c.roll(Window::Day, Window::Day.end(NOW));
        assert_eq!((c.requests, c.tokens), (0, 0));
        assert_eq!(c.start, Window::Day.end(NOW));
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let (rate, burst) = (2.0, 3);
        let mut b = TokenBucket::full(burst, NOW);
        for _ in 0..3 {
            assert_eq!(b.take(NOW, rate, burst), Ok(()));
        }
        // Empty: one request comes back in 1/rate s.
        assert_eq!(b.take(NOW, rate, burst), Err(500));
        assert_eq!(b.take(NOW + 250, rate, burst), Err(250));
        assert_eq!(b.take(NOW + 500, rate, burst), Ok(()));
        // A long pause refills only up to the burst.
        let later = NOW + 60_000;
        for _ in 0..3 {
            assert_eq!(b.take(later, rate, burst), Ok(()));
        }
        assert!(b.take(later, rate, burst).is_err());
        b.refund(burst);
        assert_eq!(b.take(later, rate, burst), Ok(()));
    }

    #[test]
    fn bucket_ignores_time_going_backwards_and_zero_rate_is_unlimited() {
        let mut b = TokenBucket::full(1, NOW);
        assert_eq!(b.take(NOW, 1.0, 1), Ok(()));
        assert!(b.take(NOW - 10_000, 1.0, 1).is_err());
        assert_eq!(b.take(NOW + 1000, 1.0, 1), Ok(()));
        let mut open = TokenBucket::full(0, NOW);
        for _ in 0..1000 {
            assert_eq!(open.take(NOW, 0.0, 0), Ok(()));
        }
    }

    #[test]
    fn reset_format_matches_openai() {
        assert_eq!(format_reset(20), "20ms");
        assert_eq!(format_reset(1000), "1s");
        assert_eq!(format_reset(1001), "2s");
        assert_eq!(format_reset(360_000), "6m0s");
        assert_eq!(format_reset(7_384_000), "2h3m4s");
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(2500), 3);
    }
}
