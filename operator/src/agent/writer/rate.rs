//! The writer's request budget: a token bucket.

use std::time::Duration;

use tokio::time::Instant;

/// `rate` tokens per second, at most `rate` (at least 1) saved up.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

/// A request rate that is not a positive, finite number.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("the request rate must be a positive number of requests per second, not {0}")]
pub struct InvalidRate(pub f64);

impl TokenBucket {
    pub fn new(rate: f64) -> Result<Self, InvalidRate> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(InvalidRate(rate));
        }
        let burst = rate.max(1.0);
        Ok(Self {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        })
    }

    pub async fn take(&mut self) {
        loop {
            let now = Instant::now();
            self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate)
                .min(self.burst);
            self.last = now;
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                return;
            }
            tokio::time::sleep(Duration::from_secs_f64((1.0 - self.tokens) / self.rate)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_that_is_not_positive_is_an_error() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(TokenBucket::new(bad).is_err(), "{bad}");
        }
        assert!(TokenBucket::new(0.5).is_ok());
    }

    // Paused time: the clock only moves when every task sleeps, by exactly
    // what they asked, so the rate is measured without a loaded machine's
    // scheduling noise.
    #[tokio::test(start_paused = true)]
    async fn the_token_bucket_holds_the_rate() {
        let mut bucket = TokenBucket::new(50.0).unwrap();
        let start = Instant::now();
        for _ in 0..60 {
            bucket.take().await;
        }
        // 50 from the burst, then 10 at 50/s.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(190) && took <= Duration::from_millis(400),
            "{took:?}"
        );
    }
}
