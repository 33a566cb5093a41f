//! Which alert Events go out: one per conversation and alert per the
//! profile's `eventInterval`, and at most a budget per namespace per
//! minute (a token bucket), so a storm of alerts is counted, not sent. An
//! alert just raised may spend the whole budget; a reminder of one still
//! raised only the half above it, so reminders never starve new alerts.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Why an Event did or did not go out (the `outcome` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// The same alert about the same conversation went out within the
    /// event interval.
    TooSoon,
    /// The namespace spent its budget for now.
    NamespaceBudget,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Send => "sent",
            Verdict::TooSoon => "within_interval",
            Verdict::NamespaceBudget => "namespace_budget",
        }
    }
}

/// One namespace's token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// See the module documentation.
#[derive(Debug)]
pub struct EventGate {
    per_minute: f64,
    /// (namespace, PodFlow, alert) → when its last Event went out.
    last: HashMap<(String, String, &'static str), Instant>,
    buckets: HashMap<String, Bucket>,
    pruned_at: Option<Instant>,
}

/// Entries older than this are forgotten (longer than any event interval).
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600 + 60);

impl EventGate {
    /// A gate letting `per_minute` Events out per namespace and minute
    /// (bursts up to that many).
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: f64::from(per_minute.max(1)),
            last: HashMap::new(),
            buckets: HashMap::new(),
            pruned_at: None,
        }
    }

    /// Whether an Event about `alert` on `flow` may go out now (`raised`:
    /// the alert was just raised, else a reminder); a `Send` spends the
    /// namespace's budget and starts the interval.
    pub fn admit(
        &mut self,
        namespace: &str,
        flow: &str,
        alert: &'static str,
        raised: bool,
        interval: Duration,
        now: Instant,
    ) -> Verdict {
        let key = (namespace.to_owned(), flow.to_owned(), alert);
        if self
            .last
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < interval)
        {
            return Verdict::TooSoon;
        }
        let per_minute = self.per_minute;
        let bucket = self.buckets.entry(namespace.to_owned()).or_insert(Bucket {
            tokens: per_minute,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * per_minute / 60.0;
        bucket.tokens = (bucket.tokens + refill).min(per_minute);
        bucket.at = now;
        let reserve = if raised { 0.0 } else { per_minute / 2.0 };
        if bucket.tokens < 1.0 + reserve {
            return Verdict::NamespaceBudget;
        }
        bucket.tokens -= 1.0;
        self.last.insert(key, now);
        // At most once a minute: forget what no interval can still hold.
        if self
            .pruned_at
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
        {
            self.pruned_at = Some(now);
            self.last
                .retain(|_, t| now.duration_since(*t) < FORGET_AFTER);
            self.buckets
                .retain(|_, b| now.duration_since(b.at) < Duration::from_secs(120));
        }
        Verdict::Send
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_interval_and_a_budget_per_namespace() {
        let t0 = Instant::now();
        let min = Duration::from_secs(60);
        let mut gate = EventGate::new(3);
        assert_eq!(
            gate.admit("a", "f1", "NewPeer", true, min, t0),
            Verdict::Send
        );
        assert_eq!(
            gate.admit("a", "f1", "NewPeer", true, min, t0),
            Verdict::TooSoon
        );
        assert_eq!(
            gate.admit("a", "f1", "RateSpike", true, min, t0),
            Verdict::Send
        );
        assert_eq!(
            gate.admit("a", "f2", "NewPeer", true, min, t0),
            Verdict::Send
        );
        assert_eq!(
            gate.admit("a", "f3", "NewPeer", true, min, t0),
            Verdict::NamespaceBudget
        );
        // Another namespace has its own budget.
        assert_eq!(
            gate.admit("b", "f3", "NewPeer", true, min, t0),
            Verdict::Send
        );
        // 20 s refill one token of a; the interval of f1 runs a minute.
        let later = t0 + Duration::from_secs(20);
        assert_eq!(
            gate.admit("a", "f3", "NewPeer", true, min, later),
            Verdict::Send
        );
        assert_eq!(
            gate.admit("a", "f1", "NewPeer", true, min, later),
            Verdict::TooSoon
        );
        let much_later = t0 + Duration::from_secs(61);
        assert_eq!(
            gate.admit("a", "f1", "NewPeer", true, min, much_later),
            Verdict::Send
        );
    }
}
