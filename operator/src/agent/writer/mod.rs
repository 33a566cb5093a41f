//! Publishing what this node counted as PodFlows.
//!
//! ## From flows to conversations ([`conversations`])
//!
//! The join gives one [`PodFlowView`] per direction per 5-tuple of a local
//! pod. A PodFlow is one conversation: source pod, destination (pod or
//! address) and destination port, protocol — the client's ephemeral port is
//! not part of it, so every 5-tuple of one client pod to one server port is
//! summed into one PodFlow.
//!
//! - The two directions of a 5-tuple are paired (for ICMP by addresses
//!   only: echo request and reply differ in type). The direction whose first
//!   packet came first is the initiator: its sender is the source. A
//!   direction seen alone is the initiator. So a local pod's egress flow
//!   makes the pod the source, unless the peer spoke first (the pod is a
//!   server and this is its reply).
//! - `forward` is source → destination, `reverse` the other way, as this
//!   node counted them; the VXLAN leg sums encap and decap of both
//!   directions, with the outer addresses of the forward direction.
//! - A conversation opened by an address that is not a known pod (a client
//!   outside the cluster) has that address as its source; the local pod it
//!   reached owns the PodFlow.
//! - An end that is only an address (not a pod weir knows: not listed yet,
//!   or not a pod) but that the VXLAN overlay carried still gets its node,
//!   from the outer address (the remote VTEP) through the Nodes' addresses
//!   ([`NodeNames`]): the outer destination of what this node encapsulated,
//!   the outer source of what it decapsulated.
//! - The selecting rule's filters apply (protocol, destination port, the
//!   peer's address), see [`Rule::admits`].
//! - When both ends are local pods selected by the same profile, both pods'
//!   views describe the same packets and name the same PodFlow; the source
//!   pod's view is published, never the sum.
//! - Owner: the source pod when it is in the PodFlow's namespace and its uid
//!   is known, else the selected local pod (always in that namespace: an
//!   owner in another namespace is invalid for the garbage collector, which
//!   would delete the PodFlow).
//!
//! ## Writing ([`spawn`])
//!
//! The collection loop hands every round's conversations to the writer task
//! through a `watch` channel (only the newest set is kept, the loop never
//! waits). The writer applies, per PodFlow, the spec with labels and owner
//! (once, server-side apply as `weir-agent/<node>`), then the node's own
//! observer entry on the status subresource, and only when that entry
//! differs from the last one written, at most once per profile
//! `flushInterval`. Every request takes a token from a bucket of `qps`
//! tokens per second (burst `qps`), so the node never exceeds its rate.
//! When there is more to write than the rate allows, new conversations go
//! first, then the ones whose last write is oldest; nothing is lost, the
//! refresh period of each PodFlow stretches to (dirty PodFlows / qps).
//! Transient failures (API server down, 5xx, 429) back off (0.5 s doubling
//! to 8 s); the values written afterwards are the newest absolute counters,
//! read from pinned maps, so totals are exact once the server is back.
//!
//! A spec apply the API server refuses as invalid (422) usually means the
//! PodFlow exists with a spec this node would now write differently (the
//! spec is immutable; e.g. the destination's node, learned from the overlay,
//! was not known when another node created it): the writer then checks the
//! object exists and publishes its observer entry on it.
//!
//! The same task publishes this node's map-pressure entries of the
//! CaptureProfiles ([`super::pressure`], `status.nodes`, applied to the
//! profile's status subresource as `weir-agent/<node>`, never forced), from
//! the same request budget and before PodFlows (they are few and rare).
//!
//! ## The backlog ([`WriterStats`], exported as agent metrics)
//!
//! `pending` PodFlows have counters newer than their last write; `due` of
//! them have waited their `flushInterval` and wait for the request budget;
//! `oldest_pending` is when the oldest unpublished change was handed over.
//! Within the budget, no change waits much longer than `flushInterval`
//! plus a collection interval; an age far beyond that means the budget
//! cannot keep up (the refresh period stretches to due PodFlows / qps).
//! PodFlows held by the cap and those paused after a refusal are not in it.

mod conversations;
mod rate;
mod schedule;
mod stats;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::pressure::ProfileLoss;
use weir_api::pod_flow::agent_field_manager;
use weir_api::{CaptureProfile, NodeLoss, PodFlow};

pub use conversations::{
    Clock, Conversations, DesiredFlow, NodeNames, PodUids, conversations, spec_patch,
};
pub use rate::{InvalidRate, TokenBucket};
use schedule::Entry;
use stats::unix_ms;
pub use stats::{WriterCollector, WriterStats};

/// The collection loop's end of the writer.
#[derive(Clone)]
pub struct WriterHandle {
    tx: Arc<watch::Sender<Arc<Vec<DesiredFlow>>>>,
    losses: Arc<watch::Sender<Arc<Vec<ProfileLoss>>>>,
    pub stats: Arc<WriterStats>,
}

impl WriterHandle {
    /// Hands over this round's conversations; never waits.
    pub fn publish(&self, flows: Vec<DesiredFlow>) {
        self.tx.send_replace(Arc::new(flows));
    }

    /// Hands over this round's map-pressure entries; never waits.
    pub fn publish_losses(&self, losses: Vec<ProfileLoss>) {
        self.losses.send_if_modified(|current| {
            if current.as_slice() == losses.as_slice() {
                false
            } else {
                *current = Arc::new(losses);
                true
            }
        });
    }
}

/// Starts the writer task for `node`, at most `qps` requests per second.
pub fn spawn(client: Client, node: &str, qps: f64) -> Result<WriterHandle, InvalidRate> {
    let bucket = TokenBucket::new(qps)?;
    let (tx, rx) = watch::channel(Arc::new(Vec::new()));
    let (losses_tx, losses_rx) = watch::channel(Arc::new(Vec::new()));
    let stats = Arc::new(WriterStats::default());
    let writer = Writer {
        client,
        manager: agent_field_manager(node),
        entries: HashMap::new(),
        losses: HashMap::new(),
        bucket,
        stats: stats.clone(),
    };
    tokio::spawn(writer.run(rx, losses_rx));
    Ok(WriterHandle {
        tx: Arc::new(tx),
        losses: Arc::new(losses_tx),
        stats,
    })
}

/// A CaptureProfile's map-pressure entry of this node.
struct LossEntry {
    desired: ProfileLoss,
    written: Option<NodeLoss>,
    last_write: Option<Instant>,
    blocked_until: Option<Instant>,
}

struct Writer {
    client: Client,
    manager: String,
    entries: HashMap<(String, String), Entry>,
    /// By (namespace, profile).
    losses: HashMap<(String, String), LossEntry>,
    bucket: TokenBucket,
    stats: Arc<WriterStats>,
}

enum Failure {
    /// The server is unreachable or overloaded: back off, then retry.
    Transient,
    /// The object is gone (deleted by the controller): create it again.
    Gone,
    /// The server refuses this object: leave it for a while.
    Refused,
}

fn classify(e: &kube::Error) -> Failure {
    match e {
        kube::Error::Api(s) if s.code == 404 => Failure::Gone,
        kube::Error::Api(s) if s.code == 429 || s.code >= 500 => Failure::Transient,
        kube::Error::Api(_) => Failure::Refused,
        _ => Failure::Transient,
    }
}

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(8);
const REFUSED_PAUSE: Duration = Duration::from_secs(300);

impl Writer {
    fn merge(&mut self, flows: &[DesiredFlow], now: Instant) {
        schedule::merge(&mut self.entries, flows, now);
        self.count_dirty();
    }

    fn count_dirty(&self) {
        self.stats
            .dirty
            .store(schedule::dirty(&self.entries), Ordering::Relaxed);
    }

    /// The next PodFlow to write now, else when the next one is due; keeps
    /// the backlog gauges.
    fn next(&self, now: Instant) -> (Option<(String, String)>, Option<Instant>) {
        let next = schedule::next(&self.entries, now);
        let b = &next.backlog;
        self.stats
            .held_by_cap
            .store(b.held_by_cap, Ordering::Relaxed);
        self.stats.due.store(b.due, Ordering::Relaxed);
        self.stats.pending.store(b.pending, Ordering::Relaxed);
        let oldest_ms = b.oldest_dirty.map_or(0, |o| {
            unix_ms(std::time::SystemTime::now() - now.saturating_duration_since(o))
        });
        self.stats
            .oldest_pending_unix_ms
            .store(oldest_ms, Ordering::Relaxed);
        (next.key, next.wake)
    }

    fn merge_losses(&mut self, losses: &[ProfileLoss]) {
        let mut present = HashSet::with_capacity(losses.len());
        for loss in losses {
            let key = (loss.namespace.clone(), loss.profile.clone());
            present.insert(key.clone());
            self.losses
                .entry(key)
                .and_modify(|e| e.desired = loss.clone())
                .or_insert_with(|| LossEntry {
                    desired: loss.clone(),
                    written: None,
                    last_write: None,
                    blocked_until: None,
                });
        }
        // No longer reported: keep what still has to be written.
        self.losses
            .retain(|k, e| present.contains(k) || e.written.as_ref() != Some(&e.desired.entry));
    }

    /// The map-pressure entry to write now, else when the next one is due.
    fn next_loss(&self, now: Instant) -> (Option<(String, String)>, Option<Instant>) {
        let mut best: Option<(Instant, &(String, String))> = None;
        let mut wake: Option<Instant> = None;
        for (key, e) in &self.losses {
            if e.written.as_ref() == Some(&e.desired.entry) {
                continue;
            }
            let due = match (e.blocked_until, e.last_write) {
                (Some(b), _) if b > now => b,
                (_, Some(last)) => last + e.desired.interval,
                _ => now,
            };
            if due > now {
                wake = Some(wake.map_or(due, |w| w.min(due)));
            } else if best.as_ref().is_none_or(|(d, _)| due < *d) {
                best = Some((due, key));
            }
        }
        (best.map(|(_, k)| k.clone()), wake)
    }

    async fn write_loss(&mut self, key: &(String, String)) -> Result<(), Failure> {
        let Some(entry) = self.losses.get(key) else {
            return Ok(());
        };
        let desired = entry.desired.entry.clone();
        let api: Api<CaptureProfile> = Api::namespaced(self.client.clone(), &key.0);
        let body = CaptureProfile::node_loss_patch(&key.1, &desired);
        self.bucket.take().await;
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let result = api
            .patch_status(
                &key.1,
                &PatchParams::apply(&self.manager),
                &Patch::Apply(&body),
            )
            .await;
        if let Err(e) = result {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            let failure = classify(&e);
            match failure {
                Failure::Transient => {
                    debug!(profile = %format!("{}/{}", key.0, key.1), "map-pressure entry apply failed, backing off: {e}")
                }
                Failure::Gone => {
                    debug!(profile = %format!("{}/{}", key.0, key.1), "profile gone: its map-pressure entry is dropped")
                }
                Failure::Refused => {
                    warn!(profile = %format!("{}/{}", key.0, key.1), "map-pressure entry apply refused, retrying in 5m: {e}")
                }
            }
            return Err(failure);
        }
        self.stats.loss_applies.fetch_add(1, Ordering::Relaxed);
        info!(
            profile = %format!("{}/{}", key.0, key.1),
            lost_samples = desired.lost_samples,
            failed_updates = desired.failed_updates,
            lru_evictions = desired.lru_evictions,
            "map pressure reported"
        );
        if let Some(e) = self.losses.get_mut(key) {
            e.written = Some(desired);
            e.last_write = Some(Instant::now());
            e.blocked_until = None;
        }
        Ok(())
    }

    async fn run(
        mut self,
        mut rx: watch::Receiver<Arc<Vec<DesiredFlow>>>,
        mut losses_rx: watch::Receiver<Arc<Vec<ProfileLoss>>>,
    ) {
        let mut backoff = BACKOFF_START;
        let mut last_report = Instant::now();
        // `changed()` marks the value it waited for as seen: remember it.
        let mut fresh = false;
        let mut fresh_losses = false;
        loop {
            if fresh || rx.has_changed().unwrap_or(false) {
                fresh = false;
                let flows = rx.borrow_and_update().clone();
                self.merge(&flows, Instant::now());
            }
            if fresh_losses || losses_rx.has_changed().unwrap_or(false) {
                fresh_losses = false;
                let losses = losses_rx.borrow_and_update().clone();
                self.merge_losses(&losses);
            }
            let now = Instant::now();
            let (loss, loss_wake) = self.next_loss(now);
            if let Some(key) = loss {
                match self.write_loss(&key).await {
                    Ok(()) => backoff = BACKOFF_START,
                    Err(Failure::Transient) => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                    Err(Failure::Gone) => {
                        self.losses.remove(&key);
                    }
                    Err(Failure::Refused) => {
                        if let Some(e) = self.losses.get_mut(&key) {
                            e.blocked_until = Some(Instant::now() + REFUSED_PAUSE);
                        }
                    }
                }
                continue;
            }
            let (next, wake) = self.next(now);
            let wake = match (wake, loss_wake) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let Some(key) = next else {
                let sleep = async {
                    match wake {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    changed = rx.changed() => match changed {
                        Ok(()) => fresh = true,
                        Err(_) => return,
                    },
                    changed = losses_rx.changed() => match changed {
                        Ok(()) => fresh_losses = true,
                        Err(_) => return,
                    },
                    _ = sleep => {}
                }
                continue;
            };
            match self.write(&key).await {
                Ok(()) => backoff = BACKOFF_START,
                Err(Failure::Transient) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(Failure::Gone) => {
                    if let Some(e) = self.entries.get_mut(&key) {
                        e.spec_applied = false;
                    }
                }
                Err(Failure::Refused) => {
                    if let Some(e) = self.entries.get_mut(&key) {
                        e.blocked_until = Some(Instant::now() + REFUSED_PAUSE);
                    }
                }
            }
            self.count_dirty();
            if last_report.elapsed() >= Duration::from_secs(60) {
                last_report = Instant::now();
                let s = &self.stats;
                info!(
                    requests = WriterStats::get(&s.requests),
                    failures = WriterStats::get(&s.failures),
                    dirty = WriterStats::get(&s.dirty),
                    podflows = self.entries.len(),
                    "PodFlow writer"
                );
            }
        }
    }

    async fn write(&mut self, key: &(String, String)) -> Result<(), Failure> {
        let api: Api<PodFlow> = Api::namespaced(self.client.clone(), &key.0);
        let params = PatchParams::apply(&self.manager);
        let Some(entry) = self.entries.get(key) else {
            return Ok(());
        };
        if !entry.spec_applied {
            let body = spec_patch(&entry.desired);
            self.bucket.take().await;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            match api.patch(&key.1, &params, &Patch::Apply(&body)).await {
                Ok(_) => {
                    self.stats.spec_applies.fetch_add(1, Ordering::Relaxed);
                }
                // Invalid: most likely the object exists with a spec this
                // node would now write differently (it is immutable).
                Err(kube::Error::Api(s)) if s.code == 422 => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    self.bucket.take().await;
                    self.stats.requests.fetch_add(1, Ordering::Relaxed);
                    match api.get_opt(&key.1).await {
                        Ok(Some(_)) => {
                            debug!(podflow = %format!("{}/{}", key.0, key.1), "the PodFlow exists with another spec ({}): publishing on it", s.message)
                        }
                        Ok(None) => {
                            warn!(podflow = %format!("{}/{}", key.0, key.1), "spec apply refused, retrying in 5m: {}", s.message);
                            return Err(Failure::Refused);
                        }
                        Err(e) => return Err(self.failed(key, "spec", &e)),
                    }
                }
                Err(e) => return Err(self.failed(key, "spec", &e)),
            }
            if let Some(entry) = self.entries.get_mut(key) {
                entry.spec_applied = true;
            }
        }
        // The newest counters this writer has, taken right before the request.
        let Some(entry) = self.entries.get(key) else {
            return Ok(());
        };
        let observer = entry.desired.observer.clone();
        let body = PodFlow::observer_patch(&key.1, &observer);
        self.bucket.take().await;
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = api
            .patch_status(&key.1, &params, &Patch::Apply(&body))
            .await
        {
            return Err(self.failed(key, "status", &e));
        }
        self.stats.status_applies.fetch_add(1, Ordering::Relaxed);
        debug!(podflow = %format!("{}/{}", key.0, key.1), packets = observer.forward.packets + observer.reverse.packets, "observer entry written");
        if let Some(entry) = self.entries.get_mut(key) {
            entry.last_write = Some(Instant::now());
            entry.blocked_until = None;
            if entry.desired.observer == observer {
                entry.dirty_since = None;
            }
            entry.written = Some(observer);
        }
        Ok(())
    }

    fn failed(&mut self, key: &(String, String), what: &str, e: &kube::Error) -> Failure {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        let failure = classify(e);
        match failure {
            Failure::Transient => {
                debug!(podflow = %format!("{}/{}", key.0, key.1), "{what} apply failed, backing off: {e}")
            }
            Failure::Gone => {
                debug!(podflow = %format!("{}/{}", key.0, key.1), "PodFlow is gone; creating it again")
            }
            Failure::Refused => {
                warn!(podflow = %format!("{}/{}", key.0, key.1), "{what} apply refused, retrying in 5m: {e}")
            }
        }
        failure
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use kube::api::ObjectMeta;

    use super::*;
    use crate::agent::join::{FlowDirection, OverlayLeg, PodFlowView};
    use crate::agent::peers::Peer;
    use crate::agent::selection::LocalPod;
    use crate::agent::selection::Selection;
    use std::net::IpAddr;
    use weir_api::{CaptureProfile, CaptureProfileSpec};
    use weir_api::{DirectionCounters, Protocol};

    #[allow(clippy::too_many_arguments)]
    fn view(
        pod: &str,
        egress: bool,
        src: (&str, u16),
        dst: (&str, u16),
        packets: u64,
        first: u64,
        peer: Option<Peer>,
    ) -> PodFlowView {
        PodFlowView {
            pod_id: if pod == "web" { 1 } else { 2 },
            namespace: Some("shop".into()),
            pod: pod.into(),
            direction: if egress {
                FlowDirection::Egress
            } else {
                FlowDirection::Ingress
            },
            protocol: 17,
            source: src.0.parse().unwrap(),
            source_port: src.1,
            destination: dst.0.parse().unwrap(),
            destination_port: dst.1,
            packets,
            bytes: packets * 100,
            first_seen_ns: first,
            last_seen_ns: first + 1_000_000_000,
            tcp_flags: 0,
            peer,
            overlay: None,
        }
    }

    fn peer(ns: &str, pod: &str, node: &str) -> Option<Peer> {
        Some(Peer {
            namespace: ns.into(),
            pod: pod.into(),
            node: node.into(),
        })
    }

    fn selection(pods: &[&str], edit: impl FnOnce(&mut CaptureProfileSpec)) -> Selection {
        let mut spec = CaptureProfileSpec::selecting(LabelSelector::default());
        edit(&mut spec);
        let profile = Arc::new(CaptureProfile {
            metadata: ObjectMeta {
                name: Some("all".into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            spec,
            status: None,
        });
        let labels = BTreeMap::new();
        Selection::compute(
            &[profile],
            pods.iter().map(|p| LocalPod {
                namespace: "shop",
                name: p,
                labels: &labels,
            }),
        )
    }

    fn uids() -> HashMap<(String, String), String> {
        ["web", "db", "api"]
            .into_iter()
            .map(|p| (("shop".to_owned(), p.to_owned()), format!("uid-{p}")))
            .collect()
    }

    const WEB: &str = "10.244.0.3";
    const DB: &str = "10.244.1.7";

    #[test]
    fn client_egress_and_reply_make_one_podflow_summed_over_client_ports() {
        let views = vec![
            view(
                "web",
                true,
                (WEB, 4000),
                (DB, 53),
                10,
                100,
                peer("shop", "db", "node-b"),
            ),
            view(
                "web",
                false,
                (DB, 53),
                (WEB, 4000),
                9,
                200,
                peer("shop", "db", "node-b"),
            ),
            view(
                "web",
                true,
                (WEB, 4001),
                (DB, 53),
                5,
                50,
                peer("shop", "db", "node-b"),
            ),
        ];
        let c = conversations(
            &views,
            "node-a",
            &selection(&["web"], |_| {}),
            &uids(),
            &(),
            &Clock::at(0),
        );
        assert_eq!(c.flows.len(), 1, "{c:#?}");
        let f = &c.flows[0];
        assert_eq!(
            (
                f.spec.source.display.as_str(),
                f.spec.destination.display.as_str()
            ),
            ("shop/web", "shop/db")
        );
        assert_eq!(f.spec.destination.port, Some(53));
        assert_eq!(f.spec.destination.node.as_deref(), Some("node-b"));
        assert_eq!(
            f.observer.forward,
            DirectionCounters {
                packets: 15,
                bytes: 1500
            }
        );
        assert_eq!(
            f.observer.reverse,
            DirectionCounters {
                packets: 9,
                bytes: 900
            }
        );
        assert_eq!(f.observer.first_seen, Clock::at(0).time(50));
        assert_eq!(f.owner.as_ref().unwrap().uid, "uid-web");
        assert_eq!(f.owner.as_ref().unwrap().controller, Some(false));
        assert_eq!(f.name, f.spec.object_name());
    }

    #[test]
    fn tcp_connections_and_those_reset_are_counted_per_conversation() {
        let tcp = |mut v: PodFlowView, flags: u32| {
            v.protocol = 6;
            v.tcp_flags = flags;
            v
        };
        let db = || peer("shop", "db", "node-b");
        let views = vec![
            // Port 4000: a clean connection, both ways.
            tcp(view("web", true, (WEB, 4000), (DB, 80), 5, 100, db()), 0x12),
            tcp(
                view("web", false, (DB, 80), (WEB, 4000), 5, 150, db()),
                0x11,
            ),
            // Port 4001: reset by the server; port 4002: by the client.
            tcp(view("web", true, (WEB, 4001), (DB, 80), 1, 100, db()), 0x02),
            tcp(
                view("web", false, (DB, 80), (WEB, 4001), 1, 150, db()),
                0x14,
            ),
            tcp(view("web", true, (WEB, 4002), (DB, 80), 2, 100, db()), 0x04),
        ];
        let c = conversations(
            &views,
            "node-a",
            &selection(&["web"], |_| {}),
            &uids(),
            &(),
            &Clock::at(0),
        );
        assert_eq!(c.flows.len(), 1, "{c:#?}");
        assert_eq!(
            c.flows[0].observer.tcp,
            Some(weir_api::TcpConnections {
                connections: 3,
                resets: 2
            })
        );
        // UDP conversations carry none.
        let udp = conversations(
            &[view("web", true, (WEB, 4000), (DB, 53), 1, 1, db())],
            "node-a",
            &selection(&["web"], |_| {}),
            &uids(),
            &(),
            &Clock::at(0),
        );
        assert_eq!(udp.flows[0].observer.tcp, None);
    }

    #[test]
    fn a_server_pods_reply_names_the_client_as_source_and_outsiders_by_address() {
        let views = vec![
            view(
                "db",
                false,
                (WEB, 4000),
                (DB, 53),
                10,
                100,
                peer("front", "web", "node-a"),
            ),
            view(
                "db",
                true,
                (DB, 53),
                (WEB, 4000),
                10,
                200,
                peer("front", "web", "node-a"),
            ),
            view("db", false, ("1.2.3.4", 5555), (DB, 53), 3, 10, None),
        ];
        let c = conversations(
            &views,
            "node-b",
            &selection(&["db"], |_| {}),
            &uids(),
            &(),
            &Clock::at(0),
        );
        assert_eq!(c.flows.len(), 2);
        let outsider = c
            .flows
            .iter()
            .find(|f| f.spec.source.pod.is_none())
            .expect("the outsider's conversation");
        assert_eq!(
            (
                outsider.spec.source.display.as_str(),
                outsider.spec.destination.display.as_str()
            ),
            ("1.2.3.4", "shop/db")
        );
        assert_eq!(outsider.owner.as_ref().unwrap().uid, "uid-db");
        assert!(outsider.name.starts_with("db-"), "{}", outsider.name);
        let f = c
            .flows
            .iter()
            .find(|f| f.spec.source.pod.is_some())
            .unwrap();
        assert_eq!(
            (
                f.spec.source.display.as_str(),
                f.spec.source.node.as_deref()
            ),
            ("front/web", Some("node-a"))
        );
        assert_eq!(f.spec.destination.port, Some(53));
        assert_eq!(f.observer.forward.packets, 10);
        assert_eq!(f.observer.node, "node-b");
        assert_eq!(
            f.owner.as_ref().unwrap().uid,
            "uid-db",
            "the source is in another namespace: the local pod owns it"
        );
    }

    #[test]
    fn both_ends_local_publish_the_source_side_once_and_filters_apply() {
        let views = vec![
            view(
                "web",
                true,
                (WEB, 4000),
                (DB, 53),
                10,
                100,
                peer("shop", "db", "node-a"),
            ),
            view(
                "web",
                false,
                (DB, 53),
                (WEB, 4000),
                10,
                200,
                peer("shop", "db", "node-a"),
            ),
            view(
                "db",
                false,
                (WEB, 4000),
                (DB, 53),
                10,
                100,
                peer("shop", "web", "node-a"),
            ),
            view(
                "db",
                true,
                (DB, 53),
                (WEB, 4000),
                10,
                200,
                peer("shop", "web", "node-a"),
            ),
        ];
        let c = conversations(
            &views,
            "node-a",
            &selection(&["web", "db"], |_| {}),
            &uids(),
            &(),
            &Clock::at(0),
        );
        assert_eq!(c.flows.len(), 1, "{c:#?}");
        assert_eq!(
            c.flows[0].observer.forward.packets, 10,
            "not summed over both pods' views"
        );
        let tcp_only = conversations(
            &views,
            "node-a",
            &selection(&["web", "db"], |s| s.protocols = vec![Protocol::Tcp]),
            &uids(),
            &(),
            &Clock::at(0),
        );
        assert!(tcp_only.flows.is_empty());
        assert!(tcp_only.filtered > 0);
    }

    #[test]
    fn an_unknown_peer_behind_the_overlay_is_named_by_its_node() {
        let leg = |encap: bool| OverlayLeg {
            vni: 1,
            outer_source: (if encap {
                "192.168.100.1"
            } else {
                "192.168.100.2"
            })
            .parse()
            .unwrap(),
            outer_destination: (if encap {
                "192.168.100.2"
            } else {
                "192.168.100.1"
            })
            .parse()
            .unwrap(),
            encap_packets: if encap { 10 } else { 0 },
            encap_bytes: if encap { 1500 } else { 0 },
            decap_packets: if encap { 0 } else { 9 },
            decap_bytes: if encap { 0 } else { 1350 },
        };
        const GHOST: &str = "10.244.9.9";
        let mut out = view("web", true, (WEB, 4000), (GHOST, 53), 10, 100, None);
        out.overlay = Some(leg(true));
        let mut back = view("web", false, (GHOST, 53), (WEB, 4000), 9, 200, None);
        back.overlay = Some(leg(false));
        // A client behind the overlay that weir does not know opens one to db.
        let mut inbound = view("db", false, (GHOST, 7000), (DB, 80), 4, 50, None);
        inbound.overlay = Some(leg(false));
        let views = vec![out, back, inbound];
        let nodes: HashMap<IpAddr, String> = [
            ("192.168.100.1".parse().unwrap(), "node-a".to_owned()),
            ("192.168.100.2".parse().unwrap(), "node-b".to_owned()),
        ]
        .into();
        let sel = selection(&["web", "db"], |_| {});
        let c = conversations(&views, "node-a", &sel, &uids(), &nodes, &Clock::at(0));
        assert_eq!(c.flows.len(), 2, "{c:#?}");
        let to_ghost = c
            .flows
            .iter()
            .find(|f| f.spec.source.pod.is_some())
            .unwrap();
        assert_eq!(to_ghost.spec.destination.display, GHOST);
        assert_eq!(to_ghost.spec.destination.pod, None);
        assert_eq!(
            to_ghost.spec.destination.node.as_deref(),
            Some("node-b"),
            "named by the outer destination it was encapsulated to"
        );
        let vx = to_ghost.observer.vxlan.as_ref().unwrap();
        assert_eq!((vx.encap_packets, vx.decap_packets), (10, 9));
        let from_ghost = c
            .flows
            .iter()
            .find(|f| f.spec.source.pod.is_none())
            .unwrap();
        assert_eq!(from_ghost.spec.source.display, GHOST);
        assert_eq!(
            from_ghost.spec.source.node.as_deref(),
            Some("node-b"),
            "named by the outer source it was decapsulated from"
        );
        assert_eq!(from_ghost.spec.destination.node.as_deref(), Some("node-a"));
        // Without the Nodes' addresses, only the address is known; the name
        // of the object does not depend on the node.
        let bare = conversations(&views, "node-a", &sel, &uids(), &(), &Clock::at(0));
        let bare_to_ghost = bare
            .flows
            .iter()
            .find(|f| f.spec.source.pod.is_some())
            .unwrap();
        assert_eq!(bare_to_ghost.spec.destination.node, None);
        assert_eq!(bare_to_ghost.name, to_ghost.name);
    }

    #[test]
    fn the_clock_is_stable_to_the_second() {
        let clock = Clock::at(1_700_000_000_000_000_000);
        assert_eq!(clock.time(0), None);
        assert_eq!(clock.time(1_500_000_000), clock.time(1_900_000_000));
        assert_eq!(
            clock.time(1_500_000_000).unwrap().0.as_second(),
            1_700_000_001
        );
    }

    fn idle_writer() -> Writer {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        Writer {
            client: Client::try_from(config).unwrap(),
            manager: agent_field_manager("node-a"),
            entries: HashMap::new(),
            losses: HashMap::new(),
            bucket: TokenBucket::new(5.0).unwrap(),
            stats: Arc::new(WriterStats::default()),
        }
    }

    #[tokio::test]
    async fn the_backlog_counts_due_entries_and_the_oldest_unpublished_change() {
        let mut w = idle_writer();
        let views = vec![
            view("web", true, (WEB, 4000), (DB, 53), 10, 100, None),
            view("web", true, (WEB, 4000), (DB, 54), 10, 100, None),
        ];
        let sel = selection(&["web"], |s| s.flush_interval = "10s".into());
        let flows = conversations(&views, "node-a", &sel, &uids(), &(), &Clock::at(0)).flows;
        assert_eq!(flows.len(), 2);
        let t0 = Instant::now();
        w.merge(&flows, t0);
        let (next, _) = w.next(t0);
        assert!(next.is_some());
        assert_eq!(WriterStats::get(&w.stats.due), 2, "new: due at once");
        assert_eq!(WriterStats::get(&w.stats.dirty), 2);
        // One of them written at t0, then changed at t1: not due before t0 + 10 s.
        let first = (flows[0].namespace.clone(), flows[0].name.clone());
        {
            let e = w.entries.get_mut(&first).unwrap();
            e.spec_applied = true;
            e.written = Some(e.desired.observer.clone());
            e.last_write = Some(t0);
            e.dirty_since = None;
        }
        let mut changed = flows.clone();
        changed[0].observer.forward.packets += 1;
        let t1 = t0 + Duration::from_secs(2);
        w.merge(&changed, t1);
        let (next, wake) = w.next(t1);
        assert_eq!(
            next,
            Some((flows[1].namespace.clone(), flows[1].name.clone()))
        );
        assert_eq!(wake, Some(t0 + Duration::from_secs(10)));
        assert_eq!(WriterStats::get(&w.stats.due), 1);
        assert_eq!(WriterStats::get(&w.stats.dirty), 2);
        // The oldest unpublished change is the never-written one, from t0.
        let age = w.stats.oldest_pending_age();
        assert!(
            age >= Duration::from_secs(2) && age < Duration::from_secs(4),
            "{age:?}"
        );
        // Held by the cap: not part of the backlog.
        for e in w.entries.values_mut() {
            e.desired.max_pod_flows = 1;
        }
        let second = (flows[1].namespace.clone(), flows[1].name.clone());
        let (next, _) = w.next(t1);
        assert_ne!(next, Some(second), "the cap holds the new conversation");
        assert_eq!(WriterStats::get(&w.stats.held_by_cap), 1);
        assert_eq!(WriterStats::get(&w.stats.due), 0);
        let text = {
            let mut registry = prometheus_client::registry::Registry::default();
            registry.register_collector(Box::new(WriterCollector(w.stats.clone())));
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
            out
        };
        for line in [
            "weir_podflow_writer_pending 1",
            "weir_podflow_writer_due 0",
            "weir_podflow_writer_held_by_cap 1",
            "weir_podflow_writer_requests_total 0",
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
        // Written at t0 and changed at t1: its change is the oldest pending now.
        let oldest = text
            .lines()
            .find_map(|l| l.strip_prefix("weir_podflow_writer_oldest_pending_seconds "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap();
        assert!((0.0..2.0).contains(&oldest), "{text}");
    }

    // Paused time: the clock only moves when every task sleeps, by exactly
    // what they asked, so the rate is measured without a loaded machine's
    // scheduling noise.
}
