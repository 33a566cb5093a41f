//! The controller's main loop: elect, and while leading run the
//! CaptureProfile controller and the orphan sweep; stop both the moment the
//! lease is lost, and wait to lead again. Every replica serves its metrics
//! ([`super::metrics`]) when `metrics_listen` is set.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt as _;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{Controller, watcher};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::leader::LeaderElector;
use super::metrics::{self, ControllerMetrics, Deletion, KIND_SWEEP};
use super::profile::{self, Context};
use super::{Config, Error, REPORTING_CONTROLLER, Result, lifecycle};
use weir_api::CaptureProfile;

/// Runs the controller until SIGTERM or SIGINT.
pub async fn run(client: kube::Client, config: Config) -> Result<()> {
    config.lease.validate()?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("signal received: shutting down");
        let _ = shutdown_tx.send(true);
    });
    run_until(client, config, shutdown).await
}

/// Runs the controller until `shutdown` turns true.
pub async fn run_until(
    client: kube::Client,
    config: Config,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    config.lease.validate()?;
    info!(identity = %config.lease.identity, lease = %format!("{}/{}", config.lease.namespace, config.lease.name), "weir controller starting");
    let metrics = Arc::new(ControllerMetrics::new());
    // Ready while this replica leads and its CaptureProfile cache is synced
    // and the first orphan sweep ran: then it really reconciles.
    let ready = crate::http::Readiness::waiting("the lease");
    let server = match config.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Listen { addr, source })?;
            info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving /metrics");
            Some(tokio::spawn(metrics::serve(
                listener,
                metrics.clone(),
                ready.clone(),
            )))
        }
        None => None,
    };
    let (leading_tx, mut leading) = watch::channel(false);
    let elector = LeaderElector::new(client.clone(), config.lease.clone());
    let election = tokio::spawn(elector.run(leading_tx, shutdown.clone()));
    let leader_gauge = {
        let (metrics, mut leading) = (metrics.clone(), leading.clone());
        tokio::spawn(async move {
            loop {
                metrics.set_leader(*leading.borrow_and_update());
                if leading.changed().await.is_err() {
                    metrics.set_leader(false);
                    break;
                }
            }
        })
    };

    loop {
        tokio::select! {
            r = leading.wait_for(|l| *l) => if r.is_err() { break },
            _ = shutdown.wait_for(|s| *s) => break,
        }
        info!("leading: reconciling CaptureProfiles");
        ready.set(Err(
            "the CaptureProfile cache and the first orphan sweep".into()
        ));
        tokio::select! {
            _ = lead(client.clone(), &config, metrics.clone(), &ready) => warn!("the controller stopped by itself"),
            _ = leading.wait_for(|l| !*l) => warn!("lost the lease: stopped reconciling"),
            _ = shutdown.wait_for(|s| *s) => break,
        }
        ready.set(Err("the lease".into()));
        metrics.clear_firing();
    }
    // The election releases the lease once it sees the shutdown.
    let _ = election.await;
    let _ = leader_gauge.await;
    if let Some(server) = server {
        server.abort();
    }
    info!("weir controller stopped");
    Ok(())
}

/// What the leader does: the CaptureProfile controller and the sweep.
async fn lead(
    client: kube::Client,
    config: &Config,
    metrics: Arc<ControllerMetrics>,
    ready: &crate::http::Readiness,
) {
    let reporter = Reporter {
        controller: REPORTING_CONTROLLER.into(),
        instance: Some(config.lease.identity.clone()),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        Recorder::new(client.clone(), reporter),
        config.error_requeue,
        config.map_pressure_window,
        config.alert_events_per_minute,
        metrics.clone(),
    ));
    let profiles: Api<CaptureProfile> = Api::all(client.clone());
    let controller = Controller::new(profiles, watcher::Config::default().any_semantic());
    let store = controller.store();
    let controller = controller
        .run(profile::reconcile, profile::error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(profile = %obj, "reconciled"),
                // A profile deleted between the trigger and the run.
                Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                    tracing::debug!(profile = %obj, "gone before its reconcile")
                }
                Err(e) => warn!(error = %e, "reconcile failed"),
            }
        });
    let sweep = async {
        // The reconciles run on the cache; the sweep starts once it is filled.
        if store.wait_until_ready().await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval(config.orphan_sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let started = Instant::now();
            let swept = lifecycle::sweep_orphans(&client).await;
            metrics.reconciled(KIND_SWEEP, started.elapsed(), swept.is_ok());
            let reached = swept.is_ok();
            match swept {
                Ok(0) => {}
                Ok(n) => {
                    metrics.deleted(Deletion::Orphaned, n as u64);
                    info!(deleted = n, "swept PodFlows of deleted CaptureProfiles")
                }
                Err(e) => error!(error = %e, "sweeping orphaned PodFlows failed"),
            }
            // Ready after the first sweep that reached the API server.
            if reached {
                ready.set(Ok(()));
            }
        }
    };
    tokio::join!(controller, sweep);
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
