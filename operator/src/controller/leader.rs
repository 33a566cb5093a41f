//! Leader election with a `coordination.k8s.io/v1` Lease, the way
//! client-go's leaderelection does it:
//!
//! - a candidate reads the Lease; it takes it when nobody holds it, or when
//!   the holder's record has not changed for the record's
//!   `leaseDurationSeconds` as measured on the candidate's own clock (so
//!   clock skew between replicas does not matter);
//! - taking and renewing are `replace` calls carrying the resourceVersion
//!   that was read: of two candidates racing, one gets 409 Conflict;
//! - the leader renews every `retry_period`; when it has not renewed for
//!   `renew_deadline` (< `lease_duration`) it stops leading, before anyone
//!   else may take over;
//! - on shutdown the leader releases the Lease (empty holder), so a
//!   successor need not wait for it to expire.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{Error, Result, is_conflict};

/// Where the Lease is and how it is held.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// The Lease's namespace (the controller's own).
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// Who we are (the pod's name, else the hostname).
    pub identity: String,
    /// How long a holder's claim lasts without renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Checks that the timings make sense (client-go's rules).
    pub fn validate(&self) -> Result<()> {
        if self.identity.is_empty() {
            return Err(Error::Invalid(
                "the leader election identity is empty".into(),
            ));
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(Error::Invalid(format!(
                "lease duration ({:?}) must be greater than the renew deadline ({:?})",
                self.lease_duration, self.renew_deadline
            )));
        }
        if self.renew_deadline <= self.retry_period {
            return Err(Error::Invalid(format!(
                "renew deadline ({:?}) must be greater than the retry period ({:?})",
                self.renew_deadline, self.retry_period
            )));
        }
        if self.lease_duration.as_secs() < 1 {
            return Err(Error::Invalid("lease duration must be at least 1s".into()));
        }
        Ok(())
    }
}

/// Acquires, renews and releases the Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The last record seen and when (our clock) it was first seen.
    observed: Option<(LeaseSpec, Instant)>,
}

impl LeaderElector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    /// One attempt: `Ok(true)` when we hold the Lease afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let now = MicroTime(Timestamp::now());
        let duration = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(current) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let record = current.spec.clone().unwrap_or_default();
        let first_seen = match &self.observed {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((record.clone(), at));
                at
            }
        };
        let holder = record.holder_identity.as_deref().filter(|h| !h.is_empty());
        let ours = holder == Some(self.config.identity.as_str());
        if let Some(other) = holder.filter(|_| !ours) {
            let held_for = record
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs)
                .unwrap_or(self.config.lease_duration);
            if first_seen.elapsed() < held_for {
                debug!(holder = other, "the lease is held");
                return Ok(false);
            }
            info!(previous = other, "the lease expired: taking it over");
        }
        let mut lease = current;
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(duration),
            acquire_time: if ours {
                record.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(
                record.lease_transitions.unwrap_or(0) + i32::from(!ours && holder.is_some()),
            ),
            ..record
        });
        // `lease` carries the resourceVersion we read: a concurrent change
        // makes this a 409 Conflict.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.observed = Some((written.spec.unwrap_or_default(), Instant::now()));
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the Lease up if we hold it (empty holder, 1s duration).
    pub async fn release(&mut self) -> Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        let now = MicroTime(Timestamp::now());
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now.clone());
        spec.acquire_time = Some(now);
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await?;
        info!(lease = %self.config.name, "released the lease");
        Ok(())
    }

    /// Runs the election until `shutdown` turns true, publishing whether we
    /// lead on `leading`; releases the Lease at the end if we hold it.
    pub async fn run(mut self, leading: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        let mut last_renew: Option<Instant> = None;
        loop {
            let attempt =
                tokio::time::timeout(self.config.renew_deadline, self.try_acquire_or_renew()).await;
            let is_leader = *leading.borrow();
            match attempt {
                Ok(Ok(true)) => {
                    last_renew = Some(Instant::now());
                    if !is_leader {
                        info!(identity = %self.config.identity, lease = %self.config.name, "acquired the lease: leading");
                        let _ = leading.send(true);
                    }
                }
                Ok(Ok(false)) => {
                    if is_leader {
                        warn!(identity = %self.config.identity, "the lease was taken by another replica: stop leading");
                        let _ = leading.send(false);
                    }
                }
                Ok(Err(e)) => warn!(error = %e, "acquiring or renewing the lease failed"),
                Err(_) => warn!("acquiring or renewing the lease timed out"),
            }
            if *leading.borrow()
                && last_renew.is_none_or(|t| t.elapsed() >= self.config.renew_deadline)
            {
                warn!(deadline = ?self.config.renew_deadline, "could not renew the lease in time: stop leading");
                let _ = leading.send(false);
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.retry_period) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        if *leading.borrow() {
            let _ = leading.send(false);
            if let Err(e) = self.release().await {
                warn!(error = %e, "releasing the lease failed (it expires by itself)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LeaseConfig {
        LeaseConfig {
            namespace: "weir-system".into(),
            name: "weir-controller".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    #[test]
    fn timings_are_checked() {
        assert!(config().validate().is_ok());
        let mut c = config();
        c.renew_deadline = c.lease_duration;
        assert!(c.validate().is_err());
        let mut c = config();
        c.retry_period = c.renew_deadline;
        assert!(c.validate().is_err());
        let mut c = config();
        c.identity.clear();
        assert!(c.validate().is_err());
    }
}
