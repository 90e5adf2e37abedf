//! Exponential backoff with optional jitter.
//!
//! The delay before retry `n` (0 for the first retry) is `min(initial × multiplierⁿ, max)`.
//! With [`Jitter::UpperHalf`] the delay is then a random point in the upper half of that value,
//! so that many clients cut off at the same moment (agents after a server restart) do not come
//! back in lock-step, while each still waits at least half the nominal time.

use std::time::Duration;

use rand::Rng;

/// How a [`Backoff`] spreads its delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly the nominal delay: for waits that a user reads about in the docs ("1 s, 2 s, 4 s").
    None,
    /// A uniformly random delay between half the nominal delay and the nominal delay.
    UpperHalf,
}

/// An exponential backoff schedule (module doc).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: Jitter,
}

impl Backoff {
    /// Doubling from `initial` up to `max`, without jitter. A `max` below `initial` is raised
    /// to `initial`. `const` so that a caller can name its schedule as a constant.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: if max.as_nanos() < initial.as_nanos() {
                initial
            } else {
                max
            },
            multiplier: 2.0,
            jitter: Jitter::None,
        }
    }

    /// Grows by `multiplier` per retry instead of doubling; a value below 1 or not finite
    /// means 1 (a constant delay).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() && multiplier >= 1.0 {
            multiplier
        } else {
            1.0
        };
        self
    }

    /// Spreads the delays as `jitter` says.
    pub const fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The nominal (unjittered) delay before retry `n`, 0-based.
    pub fn nominal(&self, n: u32) -> Duration {
        if self.initial.is_zero() {
            return Duration::ZERO;
        }
        let exp = i32::try_from(n).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            return self.max;
        }
        Duration::from_secs_f64(secs)
    }

    /// The delay to wait before retry `n`, 0-based.
    pub fn delay(&self, n: u32) -> Duration {
        let d = self.nominal(n);
        match self.jitter {
            Jitter::None => d,
            Jitter::UpperHalf => {
                let hi = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
                Duration::from_nanos(rand::rng().random_range(hi / 2..=hi))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_up_to_the_cap() {
        let b = Backoff::new(S, 60 * S);
        let got: Vec<_> = (0..8).map(|n| b.delay(n)).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60].map(Duration::from_secs));
        assert_eq!(b.delay(u32::MAX), 60 * S);
    }

    #[test]
    fn multiplier_and_zero_initial() {
        let b = Backoff::new(Duration::from_millis(100), S).multiplier(1.5);
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(225));
        assert_eq!(b.delay(10), S);
        let flat = Backoff::new(S, 10 * S).multiplier(f64::NAN);
        assert_eq!(flat.delay(5), S);
        assert_eq!(Backoff::new(Duration::ZERO, S).delay(3), Duration::ZERO);
        assert_eq!(Backoff::new(2 * S, S).delay(0), 2 * S);
    }

    #[test]
    fn upper_half_jitter_stays_in_range_and_varies() {
        let b = Backoff::new(Duration::from_millis(500), 30 * S).jitter(Jitter::UpperHalf);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let d = b.delay(3);
            assert!(d >= 2 * S && d <= 4 * S, "{d:?}");
            seen.insert(d);
        }
        assert!(
            seen.len() > 10,
            "jitter gave {} distinct delays",
            seen.len()
        );
        for _ in 0..50 {
            assert!(b.delay(30) >= 15 * S && b.delay(30) <= 30 * S);
        }
    }
}
