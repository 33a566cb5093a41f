//! The agent against the API server: what it watches, and the round that
//! turns the watched state into data-path modes and PodFlows.
//!
//! ## Watches (kube-runtime watchers, resumed with backoff after errors)
//!
//! - this node's pods (`spec.nodeName=<node>`), whole objects in a
//!   reflector store: their labels decide the selection;
//! - CaptureProfiles of all namespaces, in a reflector store;
//! - Nodes, reduced to name → InternalIP/ExternalIP ([`NodeIndex`]): an
//!   outer (underlay) VXLAN address names the node behind it, so a PodFlow
//!   whose other end is only an address (a pod not listed yet, or not a
//!   pod) still names the node the overlay carried it to or from;
//! - pods of the whole cluster that may hold an IP (phase not Succeeded or
//!   Failed), reduced as they arrive to IP → namespace, name, uid, node
//!   ([`PodIndex`]); host-network pods are left out (their IP is the
//!   node's). Only the reduced entry is kept: about 150–250 bytes per pod
//!   (strings of namespace, name, uid, one shared node name, one or two
//!   IPs, two hash map slots), so 100 000 pods take some 25 MB. Decoding
//!   goes through whole Pod objects one at a time (pages of 500 on a
//!   relist), which bounds the transient memory to a page.
//!
//! Nothing is applied to the data path before the local pods and profiles
//! are listed once: an agent restart must not stop counting for a moment.
//!
//! ## The round
//!
//! On every change of the local pods or profiles, and every collection
//! round: selection → data path ([`selection::apply`]). Every collection
//! round, once the cluster's pods and the Nodes are listed (a PodFlow's
//! spec is immutable: publishing before would name peers only by address):
//! the joined views → conversations → the writer
//! ([`writer::conversations`], [`writer::spawn`]), and the node's map
//! pressure → the selecting profiles' `status.nodes` entries
//! ([`pressure::Ledger`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;
use tracing::{debug, info, warn};
use weir_ebpf::BpfRoot;
use weir_ebpf::maps::NodeMaps;
use weir_node_state::AttachmentRecord;

use super::join::PodFlowView;
use super::peers::{Peer, PeerDirectory};
use super::pressure::{self, NodePressure};
use super::reading::NodeReading;
use super::selection::{self, LocalPod, Selection};
use super::writer::{self, Clock, NodeNames, PodUids, WriterHandle};
use weir_api::CaptureProfile;

/// Where the agent's Kubernetes configuration comes from.
#[derive(Debug, Clone)]
pub enum KubeSource {
    Kubeconfig(PathBuf),
    InCluster,
}

#[derive(Debug, Clone)]
pub struct KubeSettings {
    pub source: KubeSource,
    /// Upper bound on this node's PodFlow requests per second.
    pub api_qps: f64,
}

/// Why the agent could not start talking to the API server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("in-cluster configuration: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error(transparent)]
    Rate(#[from] writer::InvalidRate),
}

pub async fn client(source: &KubeSource) -> Result<Client, StartError> {
    let config = match source {
        KubeSource::Kubeconfig(path) => {
            let in_file = |source| StartError::Kubeconfig {
                path: path.clone(),
                source,
            };
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(in_file)?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(in_file)?
        }
        KubeSource::InCluster => kube::Config::incluster()?,
    };
    Ok(Client::try_from(config)?)
}

/// A pod of the cluster, reduced to what naming a peer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEntry {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: Arc<str>,
    pub ips: Vec<IpAddr>,
}

/// IP → pod, for every pod of the cluster that holds an IP of its own.
#[derive(Debug, Default)]
pub struct PodIndex {
    by_key: HashMap<(String, String), PodEntry>,
    by_ip: HashMap<IpAddr, (String, String)>,
    nodes: HashMap<String, Arc<str>>,
}

impl PodIndex {
    /// The reduced entry of a pod, or `None` when it holds no IP of its own.
    pub fn reduce(&mut self, pod: &Pod) -> Option<PodEntry> {
        let spec = pod.spec.as_ref()?;
        if spec.host_network == Some(true) {
            return None;
        }
        let node = spec.node_name.as_deref()?;
        let status = pod.status.as_ref()?;
        let mut ips: Vec<IpAddr> = status
            .pod_ips
            .iter()
            .flatten()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if ips.is_empty() {
            ips.extend(
                status
                    .pod_ip
                    .as_deref()
                    .and_then(|ip| ip.parse::<IpAddr>().ok()),
            );
        }
        if ips.is_empty() {
            return None;
        }
        let node = self
            .nodes
            .entry(node.to_owned())
            .or_insert_with(|| Arc::from(node))
            .clone();
        Some(PodEntry {
            namespace: pod.metadata.namespace.clone()?,
            name: pod.metadata.name.clone()?,
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            node,
            ips,
        })
    }

    pub fn apply(&mut self, pod: &Pod) {
        let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
            return;
        };
        match self.reduce(pod) {
            Some(entry) => self.insert(entry),
            None => self.remove(ns, name),
        }
    }

    pub fn insert(&mut self, entry: PodEntry) {
        let key = (entry.namespace.clone(), entry.name.clone());
        self.remove(&key.0, &key.1);
        for ip in &entry.ips {
            self.by_ip.insert(*ip, key.clone());
        }
        self.by_key.insert(key, entry);
    }

    pub fn remove(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        if let Some(old) = self.by_key.remove(&key) {
            for ip in old.ips {
                // An IP already taken over by a newer pod stays with it.
                if self.by_ip.get(&ip) == Some(&key) {
                    self.by_ip.remove(&ip);
                }
            }
        }
    }

    pub fn lookup(&self, ip: IpAddr) -> Option<&PodEntry> {
        self.by_ip.get(&ip).and_then(|k| self.by_key.get(k))
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

impl PeerDirectory for PodIndex {
    fn lookup(&self, ip: IpAddr) -> Option<Peer> {
        PodIndex::lookup(self, ip).map(|e| Peer {
            namespace: e.namespace.clone(),
            pod: e.name.clone(),
            node: e.node.to_string(),
        })
    }
}

impl PodUids for PodIndex {
    fn uid(&self, namespace: &str, pod: &str) -> Option<String> {
        self.by_key
            .get(&(namespace.to_owned(), pod.to_owned()))
            .map(|e| e.uid.clone())
            .filter(|u| !u.is_empty())
    }
}

/// An in-memory index of one kind of object, kept by [`spawn_index`].
trait Index<K>: Default + Send + Sync + 'static {
    /// What it indexes, for logs.
    const WHAT: &'static str;
    fn apply_object(&mut self, object: &K);
    fn delete_object(&mut self, object: &K);
    fn size(&self) -> usize;
}

impl Index<Pod> for PodIndex {
    const WHAT: &'static str = "cluster pods";
    fn apply_object(&mut self, pod: &Pod) {
        self.apply(pod);
    }
    fn delete_object(&mut self, pod: &Pod) {
        if let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) {
            self.remove(ns, name);
        }
    }
    fn size(&self) -> usize {
        self.len()
    }
}

impl Index<Node> for NodeIndex {
    const WHAT: &'static str = "nodes";
    fn apply_object(&mut self, node: &Node) {
        self.apply(node);
    }
    fn delete_object(&mut self, node: &Node) {
        if let Some(name) = &node.metadata.name {
            self.remove(name);
        }
    }
    fn size(&self) -> usize {
        self.by_name.len()
    }
}

/// Keeps `index` equal to what `api` lists and watches: a relist builds a
/// fresh index and swaps it in whole (so objects deleted while the watch was
/// down go), events in between update it in place. `synced` turns true at
/// the first complete list.
fn spawn_index<K, I>(
    api: Api<K>,
    config: watcher::Config,
    index: Arc<RwLock<I>>,
    synced: Arc<AtomicBool>,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    I: Index<K>,
{
    let stream = watcher(api, config).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut fresh: Option<I> = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => fresh = Some(I::default()),
                Ok(Event::InitApply(object)) => {
                    fresh.get_or_insert_with(I::default).apply_object(&object)
                }
                Ok(Event::InitDone) => {
                    let listed = fresh.take().unwrap_or_default();
                    info!(count = listed.size(), "{}: listed", I::WHAT);
                    *index.write().expect("index lock") = listed;
                    synced.store(true, Ordering::Relaxed);
                }
                Ok(Event::Apply(object)) => {
                    index.write().expect("index lock").apply_object(&object)
                }
                Ok(Event::Delete(object)) => {
                    index.write().expect("index lock").delete_object(&object)
                }
                Err(e) => warn!("{} watch: {e}", I::WHAT),
            }
        }
    });
}

/// Node addresses (InternalIP, ExternalIP) → node name.
#[derive(Debug, Default)]
pub struct NodeIndex {
    by_ip: HashMap<IpAddr, String>,
    by_name: HashMap<String, Vec<IpAddr>>,
}

impl NodeIndex {
    pub fn apply(&mut self, node: &Node) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        self.remove(&name);
        let ips: Vec<IpAddr> = node
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        for ip in &ips {
            self.by_ip.insert(*ip, name.clone());
        }
        self.by_name.insert(name, ips);
    }

    pub fn remove(&mut self, name: &str) {
        for ip in self.by_name.remove(name).into_iter().flatten() {
            if self.by_ip.get(&ip).is_some_and(|n| n == name) {
                self.by_ip.remove(&ip);
            }
        }
    }

    /// The node whose address an outer VXLAN header carries.
    pub fn node_of(&self, ip: IpAddr) -> Option<&str> {
        self.by_ip.get(&ip).map(String::as_str)
    }
}

impl NodeNames for NodeIndex {
    fn node_of(&self, ip: IpAddr) -> Option<String> {
        NodeIndex::node_of(self, ip).map(str::to_owned)
    }
}

/// Everything the agent watches.
pub struct ClusterView {
    pub local_pods: Store<Pod>,
    pub profiles: Store<CaptureProfile>,
    pub pods: Arc<RwLock<PodIndex>>,
    pub nodes: Arc<RwLock<NodeIndex>>,
    /// Signalled on every change of the local pods or the profiles.
    pub changed: Arc<Notify>,
    local_synced: Arc<AtomicBool>,
    profiles_synced: Arc<AtomicBool>,
    pods_synced: Arc<AtomicBool>,
    nodes_synced: Arc<AtomicBool>,
}

fn watch_config() -> watcher::Config {
    // From the API server's watch cache, not a quorum read of etcd.
    watcher::Config::default().any_semantic()
}

fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    changed: Arc<Notify>,
    synced: Arc<AtomicBool>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, config)).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::InitDone) => {
                    if !synced.swap(true, Ordering::Relaxed) {
                        info!("{what}: listed");
                    }
                    changed.notify_one();
                }
                Ok(Event::Init | Event::InitApply(_)) => {}
                Ok(Event::Apply(_) | Event::Delete(_)) => changed.notify_one(),
                Err(e) => warn!("{what} watch: {e}"),
            }
        }
    });
    store
}

impl ClusterView {
    pub fn start(client: &Client, node: &str) -> Self {
        let changed = Arc::new(Notify::new());
        let (local_synced, profiles_synced, pods_synced, nodes_synced): (
            Arc<AtomicBool>,
            Arc<AtomicBool>,
            Arc<AtomicBool>,
            Arc<AtomicBool>,
        ) = Default::default();
        let local_pods = spawn_reflector(
            Api::<Pod>::all(client.clone()),
            watch_config().fields(&format!("spec.nodeName={node}")),
            "local pods",
            changed.clone(),
            Arc::clone(&local_synced),
        );
        let profiles = spawn_reflector(
            Api::<CaptureProfile>::all(client.clone()),
            watch_config(),
            "CaptureProfiles",
            changed.clone(),
            Arc::clone(&profiles_synced),
        );
        let pods = Arc::new(RwLock::new(PodIndex::default()));
        let nodes = Arc::new(RwLock::new(NodeIndex::default()));
        spawn_index(
            Api::<Pod>::all(client.clone()),
            watch_config()
                .fields("status.phase!=Succeeded,status.phase!=Failed")
                .page_size(500),
            pods.clone(),
            Arc::clone(&pods_synced),
        );
        spawn_index(
            Api::<Node>::all(client.clone()),
            watch_config(),
            nodes.clone(),
            Arc::clone(&nodes_synced),
        );
        Self {
            local_pods,
            profiles,
            pods,
            nodes,
            changed,
            local_synced,
            profiles_synced,
            pods_synced,
            nodes_synced,
        }
    }

    /// The `(namespace, name)` of the pods that run on this node now.
    pub fn local_pod_names(&self) -> std::collections::HashSet<(String, String)> {
        self.local_pods
            .state()
            .iter()
            .filter_map(|p| Some((p.metadata.namespace.clone()?, p.metadata.name.clone()?)))
            .collect()
    }

    /// Whether the local pods and the profiles have been listed.
    pub fn selection_ready(&self) -> bool {
        self.local_synced.load(Ordering::Relaxed) && self.profiles_synced.load(Ordering::Relaxed)
    }

    /// Whether the cluster's pods and the Nodes have been listed (peers and
    /// the nodes behind the overlay can be named).
    pub fn peers_ready(&self) -> bool {
        self.pods_synced.load(Ordering::Relaxed) && self.nodes_synced.load(Ordering::Relaxed)
    }

    pub fn selection(&self) -> Selection {
        let pods = self.local_pods.state();
        let profiles = self.profiles.state();
        Selection::compute(
            &profiles,
            pods.iter()
                .filter(|p| p.spec.as_ref().and_then(|s| s.host_network) != Some(true))
                .filter_map(|p| {
                    Some(LocalPod {
                        namespace: p.metadata.namespace.as_deref()?,
                        name: p.metadata.name.as_deref()?,
                        labels: p.metadata.labels.as_ref().unwrap_or(&EMPTY_LABELS),
                    })
                }),
        )
    }
}

static EMPTY_LABELS: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();

/// Cluster pods as peers, behind the index's lock (taken per lookup).
pub struct KubePeers<'a> {
    pub pods: &'a RwLock<PodIndex>,
    pub fallback: Option<&'a dyn PeerDirectory>,
}

impl PeerDirectory for KubePeers<'_> {
    fn lookup(&self, ip: IpAddr) -> Option<Peer> {
        let found = PeerDirectory::lookup(&*self.pods.read().expect("pod index lock"), ip);
        found.or_else(|| self.fallback.and_then(|f| f.lookup(ip)))
    }
}

/// The agent's Kubernetes side: the watches and the PodFlow writer.
pub struct KubeAgent {
    pub view: ClusterView,
    /// For the uninstall check on SIGTERM, and for reviewing who reads
    /// `/flows`.
    pub client: kube::Client,
    pub writer: WriterHandle,
    node: String,
    clock: Clock,
    last_selected: std::sync::Mutex<Option<usize>>,
    losses: std::sync::Mutex<pressure::Ledger>,
}

impl KubeAgent {
    pub async fn start(settings: &KubeSettings, node: &str) -> Result<Self, StartError> {
        let client = client(&settings.source).await?;
        let view = ClusterView::start(&client, node);
        let writer = writer::spawn(client.clone(), node, settings.api_qps)?;
        info!(
            node,
            api_qps = settings.api_qps,
            "watching the API server; PodFlows are written as {}",
            weir_api::pod_flow::agent_field_manager(node)
        );
        Ok(Self {
            view,
            client,
            writer,
            node: node.to_owned(),
            clock: Clock::now(),
            last_selected: Default::default(),
            losses: Default::default(),
        })
    }

    /// Adds the writer's backlog to the agent's metrics.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(writer::WriterCollector(self.writer.stats.clone())));
    }

    /// Selection → data path. Does nothing until the local pods and the
    /// profiles were listed, or before the first pod's maps are pinned.
    pub fn apply_selection(
        &self,
        records: &[AttachmentRecord],
        root: &BpfRoot,
    ) -> Option<Selection> {
        if !self.view.selection_ready() {
            return None;
        }
        let selection = self.view.selection();
        match NodeMaps::open(root) {
            Ok(mut maps) => match selection::apply(&selection, records, &mut maps) {
                Ok(applied) => {
                    if applied.started + applied.stopped > 0 {
                        info!(
                            counting = applied.counting,
                            started = applied.started,
                            stopped = applied.stopped,
                            "pod selection applied"
                        );
                    }
                }
                Err(e) => warn!("applying the pod selection: {e}"),
            },
            Err(weir_ebpf::Error::MapsNotPinned { .. }) => {}
            Err(e) => warn!("applying the pod selection: {e}"),
        }
        let mut last = self.last_selected.lock().expect("selection lock");
        if *last != Some(selection.len()) {
            debug!(
                selected = selection.len(),
                "local pods selected by CaptureProfiles"
            );
            *last = Some(selection.len());
        }
        Some(selection)
    }

    /// One collection round: selection, then the conversations and the map
    /// pressure to write.
    pub fn round(&self, reading: &NodeReading, root: &BpfRoot, views: &[PodFlowView]) {
        let Some(selection) = self.apply_selection(&reading.records, root) else {
            return;
        };
        if !self.view.peers_ready() {
            debug!("waiting for the cluster's pods and Nodes to be listed before publishing");
            return;
        }
        let conversations = {
            let pods = self.view.pods.read().expect("pod index lock");
            let nodes = self.view.nodes.read().expect("node index lock");
            writer::conversations(views, &self.node, &selection, &*pods, &*nodes, &self.clock)
        };
        self.writer.publish(conversations.flows);
        self.writer
            .publish_losses(self.losses_of(&selection, NodePressure::of(reading)));
    }

    /// The map-pressure entries of the profiles that select pods here.
    fn losses_of(&self, selection: &Selection, now: NodePressure) -> Vec<pressure::ProfileLoss> {
        let profiles = self.view.profiles.state();
        let selecting: std::collections::HashSet<(&str, &str)> = selection
            .rules()
            .map(|r| (r.namespace.as_str(), r.profile.as_str()))
            .collect();
        let mut ledger = self.losses.lock().expect("losses lock");
        let out = ledger.round(
            &self.node,
            profiles.iter().filter_map(|p| {
                let key = (
                    p.metadata.namespace.as_deref()?,
                    p.metadata.name.as_deref()?,
                );
                let interval = p.spec.flush_interval()?;
                selecting.contains(&key).then_some((&**p, interval))
            }),
            now,
        );
        ledger.retain(
            &profiles
                .iter()
                .filter_map(|p| p.metadata.uid.clone())
                .collect(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus, PodIP, PodSpec, PodStatus};
    use kube::api::ObjectMeta;

    use super::*;

    fn pod(ns: &str, name: &str, node: &str, ips: &[&str], host: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                host_network: Some(host),
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ips: Some(ips.iter().map(|ip| PodIP { ip: (*ip).into() }).collect()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn pod_index_names_ips_and_survives_ip_reuse() {
        let mut index = PodIndex::default();
        index.apply(&pod(
            "shop",
            "db-0",
            "node-b",
            &["10.244.1.7", "fd00::7"],
            false,
        ));
        index.apply(&pod(
            "kube-system",
            "proxy",
            "node-b",
            &["192.168.0.2"],
            true,
        ));
        let ip = "10.244.1.7".parse().unwrap();
        assert_eq!(index.lookup(ip).unwrap().name, "db-0");
        assert_eq!(
            index
                .lookup("fd00::7".parse().unwrap())
                .unwrap()
                .node
                .as_ref(),
            "node-b"
        );
        assert!(
            index.lookup("192.168.0.2".parse().unwrap()).is_none(),
            "host-network pods are not peers"
        );
        assert_eq!(
            PodUids::uid(&index, "shop", "db-0").as_deref(),
            Some("uid-db-0")
        );
        // A new pod takes the IP before the old one's delete arrives.
        index.apply(&pod("shop", "db-1", "node-c", &["10.244.1.7"], false));
        index.remove("shop", "db-0");
        assert_eq!(index.lookup(ip).unwrap().name, "db-1");
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn node_index_maps_outer_addresses() {
        let mut nodes = NodeIndex::default();
        nodes.apply(&Node {
            metadata: ObjectMeta {
                name: Some("node-a".into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "192.168.100.1".into(),
                    },
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: "node-a".into(),
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            nodes.node_of("192.168.100.1".parse().unwrap()),
            Some("node-a")
        );
        nodes.remove("node-a");
        assert_eq!(nodes.node_of("192.168.100.1".parse().unwrap()), None);
    }
}
