//! The agent's main loop: lock, attach, then collect on an interval until
//! SIGTERM. Pins stay when it stops, so the counting never does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};
use weir_ebpf::BpfRoot;

use super::lock::AgentLock;
use super::metrics::{self, MetricsSnapshot, Shared};
use super::overlay;
use super::peers::FilePeers;
use super::reading::{self, NodeReading};
use super::server::{self, Endpoints};
use super::table::FlowTable;
use super::totals::Totals;
use super::{Error, Result};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub state_dir: PathBuf,
    pub bpf_root: PathBuf,
    pub interval: Duration,
    pub listen: SocketAddr,
    pub peers_file: Option<PathBuf>,
    pub max_series: usize,
    pub watch_vxlan: bool,
    /// The API server, when there is one: profiles select the pods that
    /// count, and PodFlows are written. Without it, peers come from the file
    /// only and pod modes are left as they are.
    pub kube: Option<super::kube_agent::KubeSettings>,
    /// With the API server: serve `/flows` only to callers it authenticates,
    /// and only their namespaces' flows (false: open to anyone who reaches
    /// the port).
    pub flows_auth: bool,
    /// The agent's DaemonSet `(namespace, name)`: when it is gone on
    /// SIGTERM, this is `helm uninstall` and the node is cleaned.
    pub daemonset: Option<(String, String)>,
}

pub async fn run(config: AgentConfig) -> Result<()> {
    let _lock = AgentLock::acquire(&config.state_dir.join("agent.lock"))?;
    let root = BpfRoot::new(&config.bpf_root);
    // A pod whose CNI ADD was killed half-way (its runtime's timeout) and
    // whose runtime never called DEL gets its own interface back. Blocking
    // netlink and file work, once, before serving.
    let (state_dir, bpf_root) = (config.state_dir.clone(), config.bpf_root.clone());
    match tokio::task::spawn_blocking(move || {
        weir_ebpf::repair::repair_orphans(&state_dir, &bpf_root)
    })
    .await
    {
        Ok(repaired) => {
            for a in &repaired.attachments {
                info!(attachment = %a, "repaired a pod whose CNI ADD died half-way");
            }
            for f in &repaired.failures {
                warn!("repairing half-split pods: {f}");
            }
        }
        Err(e) => warn!("repairing half-split pods: {e}"),
    }
    // An agent starts after every upgrade: the moment older builds' node
    // programs may have lost their last pod (each one unpinned is logged).
    if let Err(e) = weir_ebpf::node_program::remove_unused_builds(&root) {
        warn!(error = %e, "could not check older builds' node programs");
    }
    let shared: Shared = Arc::new(Mutex::new(MetricsSnapshot::default()));
    let flows = Arc::new(Mutex::new(FlowTable::new(&config.node_name)));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Io {
            what: format!("listen on {}", config.listen),
            source,
        })?;
    info!(node = %config.node_name, listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "weir agent started");
    let kube = match &config.kube {
        Some(settings) => {
            Some(super::kube_agent::KubeAgent::start(settings, &config.node_name).await?)
        }
        None => None,
    };
    let mut registry = metrics::registry(shared.clone());
    if let Some(k) = &kube {
        // The PodFlow writer's backlog.
        k.register_metrics(&mut registry);
    }
    let authz = match &kube {
        Some(k) if config.flows_auth => {
            Some(Arc::new(super::authz::FlowAuthz::new(k.client.clone())))
        }
        _ => None,
    };
    let hub = Arc::new(super::stream::Hub::new(&config.node_name));
    let endpoints = Arc::new(Endpoints {
        registry,
        flows: flows.clone(),
        authz,
        stream: hub.clone(),
        node: config.node_name.clone(),
    });
    let ready = crate::http::Readiness::waiting("the first collection");
    tokio::spawn(server::serve(listener, endpoints, ready.clone()));

    let mut peers = config.peers_file.as_deref().map(FilePeers::new);
    let mut totals = Totals::new(config.max_series);
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| Error::Io {
            what: "install SIGTERM handler".into(),
            source,
        })?;
    let mut terminated = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = async { match &kube { Some(k) => k.view.changed.notified().await, None => std::future::pending().await } } => {
                // Pods or profiles changed: the data path follows at once.
                if let (Some(k), Ok(records)) = (&kube, weir_node_state::StateStore::list_all(&config.state_dir)) {
                    k.apply_selection(&records, &root);
                }
                continue;
            }
            _ = sigterm.recv() => {
                terminated = true;
                break;
            }
            _ = tokio::signal::ctrl_c() => break,
        }
        let names = if config.watch_vxlan {
            overlay::ensure_attached(&root)
        } else {
            Default::default()
        };
        if let Some(warning) = peers.as_mut().and_then(FilePeers::refresh) {
            warn!("{warning}");
        }
        let no_peers = std::collections::HashMap::new();
        let file_directory: &dyn super::peers::PeerDirectory = match &peers {
            Some(p) => p,
            None => &no_peers,
        };
        let kube_directory = kube.as_ref().map(|k| super::kube_agent::KubePeers {
            pods: &k.view.pods,
            fallback: Some(file_directory),
        });
        let directory: &dyn super::peers::PeerDirectory = match &kube_directory {
            Some(d) => d,
            None => file_directory,
        };
        // The maps stream into the table, which is updated in place; the
        // lock only keeps `/flows` from reading it half-updated.
        let mut table = flows.lock().expect("flows lock");
        let mut round = table.round(directory);
        let read = reading::read_into(&config.state_dir, &root, &mut round);
        round.finish(Some(&mut totals), read.is_ok());
        match read {
            Ok(reading) => {
                if kube.is_some() || hub.listening() {
                    // The PodFlow writer and the live stream take owned
                    // views; they live for this round only.
                    let views = table.views();
                    drop(table);
                    hub.publish(&views);
                    if let Some(k) = &kube {
                        k.round(&reading, &root, &views);
                    }
                } else {
                    drop(table);
                    hub.publish(&[]);
                }
                publish(&shared, &reading, &totals, &names);
                ready.set(match &kube {
                    Some(k) if !k.view.selection_ready() => {
                        Err("the pod and CaptureProfile caches to sync".into())
                    }
                    _ => Ok(()),
                });
            }
            Err(e) => {
                drop(table);
                warn!("collection failed: {e}");
                shared.lock().expect("metrics lock").collection_errors += 1;
            }
        }
    }
    if terminated && let (Some(k), Some((namespace, name))) = (&kube, &config.daemonset) {
        use crate::install_cni::uninstall::{TermAction, decide, lookup};
        let found = lookup(&k.client, namespace, name, Duration::from_secs(10)).await;
        let (action, why) = decide(&found);
        if action == TermAction::Uninstall {
            info!("SIGTERM: {why}: uninstall, cleaning the node");
            super::uninstall::clean_node(
                &config.bpf_root,
                &config.state_dir,
                &k.view.local_pod_names(),
            );
            return Ok(());
        }
        info!("SIGTERM: {why}");
    }
    info!("SIGTERM: stopping; pinned programs and maps stay, counting goes on");
    Ok(())
}

fn publish(
    shared: &Shared,
    reading: &NodeReading,
    totals: &Totals,
    names: &overlay::UnderlayNames,
) {
    let mut s = shared.lock().expect("metrics lock");
    let collections = s.collections + 1;
    let errors = s.collection_errors;
    *s = MetricsSnapshot {
        pod_series: totals
            .series()
            .iter()
            .map(|(k, c)| (k.clone(), *c))
            .collect(),
        collection_seconds: reading.took.as_secs_f64(),
        collections,
        collection_errors: errors,
        ..Default::default()
    };
    if let Some(pods) = &reading.pods {
        s.active_pod_flows = pods.live_flows;
        s.map_pressure
            .push(("pod_flows", "update_failed", pods.stats.flow_update_failed));
        s.map_pressure.push((
            "pod_flows",
            "lru_evicted",
            pods.stats.lru_evictions(pods.live_flows, 0),
        ));
        s.events_lost.push(("pods", pods.stats.events_lost));
    }
    if let Some(overlay) = &reading.overlay {
        overlay::fill_metrics(&mut s, overlay, names);
    }
}
