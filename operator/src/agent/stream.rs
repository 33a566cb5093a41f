//! The live stream of flow updates (`GET /flows/stream`): after every
//! collection, each flow whose counters grew becomes one JSON line with the
//! flow as `/flows` serves it (its totals; docs/flow.schema.json), the
//! growth since the previous collection (`delta`), the node and a sequence
//! number. The first collection a client sees gives every flow (its delta
//! is what it had when streaming began).
//!
//! Each client has a bounded queue of collections ([`QUEUE`]); a client
//! that falls behind loses the oldest ones and is told how many in a line
//! `{"lostUpdates": N, ...}` — counted, never silent. Nothing is computed
//! while no client listens.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::broadcast;

use super::join::{FlowDirection, PodFlowView};

/// Collections a client may fall behind before it loses the oldest.
pub const QUEUE: usize = 16;

/// One flow update, rendered once for every client.
#[derive(Debug, Clone)]
pub struct Update {
    /// The flow's pod's namespace, for per-client authorisation.
    pub namespace: Option<String>,
    /// The JSON line (with its newline).
    pub line: Arc<str>,
}

/// The updates of one collection.
pub type Batch = Arc<Vec<Update>>;

type FlowId = (u32, FlowDirection, u8, IpAddr, u16, IpAddr, u16);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Line<'a> {
    node: &'a str,
    seq: u64,
    /// Milliseconds since the Unix epoch of the collection.
    time_ms: u64,
    delta: Delta,
    flow: &'a PodFlowView,
}

#[derive(Serialize)]
struct Delta {
    packets: u64,
    bytes: u64,
}

/// The fan-out of flow updates to streaming clients.
pub struct Hub {
    node: String,
    tx: broadcast::Sender<Batch>,
    previous: Mutex<HashMap<FlowId, (u64, u64)>>,
    seq: AtomicU64,
}

impl Hub {
    pub fn new(node: &str) -> Hub {
        let (tx, _) = broadcast::channel(QUEUE);
        Hub {
            node: node.to_owned(),
            tx,
            previous: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
        }
    }

    /// Whether any client listens (else nothing needs computing).
    pub fn listening(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// How many clients listen.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Batch> {
        self.tx.subscribe()
    }

    /// Publishes the flows that grew since the previous collection.
    pub fn publish(&self, views: &[PodFlowView]) {
        let mut previous = self.previous.lock().expect("stream lock");
        if !self.listening() {
            previous.clear();
            return;
        }
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut next = HashMap::with_capacity(views.len());
        let mut batch = Vec::new();
        for v in views {
            let id: FlowId = (
                v.pod_id,
                v.direction,
                v.protocol,
                v.source,
                v.source_port,
                v.destination,
                v.destination_port,
            );
            let (p0, b0) = previous.get(&id).copied().unwrap_or((0, 0));
            next.insert(id, (v.packets, v.bytes));
            // A flow that restarted from zero (evicted, re-created) grew by
            // all it has now.
            let (dp, db) = if v.packets >= p0 && v.bytes >= b0 {
                (v.packets - p0, v.bytes - b0)
            } else {
                (v.packets, v.bytes)
            };
            if dp == 0 && db == 0 {
                continue;
            }
            let line = Line {
                node: &self.node,
                seq: self.seq.fetch_add(1, Ordering::Relaxed),
                time_ms,
                delta: Delta {
                    packets: dp,
                    bytes: db,
                },
                flow: v,
            };
            let mut text = serde_json::to_string(&line).expect("a flow line serializes");
            text.push('\n');
            batch.push(Update {
                namespace: v.namespace.clone(),
                line: Arc::from(text),
            });
        }
        *previous = next;
        if !batch.is_empty() {
            // No receiver left between the check and here: nothing to do.
            let _ = self.tx.send(Arc::new(batch));
        }
    }
}

/// The line telling a client how many collections it lost.
pub fn lost_line(node: &str, lost: u64, total_lost: u64) -> String {
    format!(
        "{}\n",
        serde_json::json!({ "node": node, "lostUpdates": lost, "lostUpdatesTotal": total_lost })
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(pod_id: u32, packets: u64) -> PodFlowView {
        PodFlowView {
            pod_id,
            namespace: Some("a".into()),
            pod: "web".into(),
            direction: FlowDirection::Egress,
            protocol: 6,
            source: "10.0.0.1".parse().unwrap(),
            source_port: 1,
            destination: "10.0.0.2".parse().unwrap(),
            destination_port: 80,
            packets,
            bytes: packets * 100,
            first_seen_ns: 0,
            last_seen_ns: 0,
            tcp_flags: 0,
            peer: None,
            overlay: None,
        }
    }

    fn lines(batch: &Batch) -> Vec<serde_json::Value> {
        batch
            .iter()
            .map(|u| serde_json::from_str(u.line.trim_end()).unwrap())
            .collect()
    }

    #[test]
    fn deltas_totals_and_lost_updates() {
        let hub = Hub::new("n1");
        hub.publish(&[view(1, 5)]);
        let mut rx = hub.subscribe();
        hub.publish(&[view(1, 5), view(2, 1)]);
        let first = lines(&rx.try_recv().unwrap());
        // The first collection a client sees: every flow, delta = what it had.
        assert_eq!(first.len(), 2);
        assert_eq!(first[0]["delta"]["packets"], 5);
        assert_eq!(first[0]["flow"]["packets"], 5);
        assert_eq!(first[0]["node"], "n1");
        hub.publish(&[view(1, 8), view(2, 1)]);
        let second = lines(&rx.try_recv().unwrap());
        assert_eq!(second.len(), 1, "only flows that grew");
        assert_eq!(second[0]["delta"]["packets"], 3);
        assert_eq!(second[0]["delta"]["bytes"], 300);
        assert_eq!(second[0]["flow"]["packets"], 8);
        assert!(second[0]["seq"].as_u64() > first[1]["seq"].as_u64());
        // A slow client loses the oldest collections and learns how many.
        for i in 0..(QUEUE as u64 + 3) {
            hub.publish(&[view(1, 9 + i)]);
        }
        match rx.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => assert_eq!(n, 3),
            other => panic!("{other:?}"),
        }
        assert!(rx.try_recv().is_ok());
        drop(rx);
        hub.publish(&[view(1, 100)]);
        assert!(
            hub.previous.lock().unwrap().is_empty(),
            "nothing kept without clients"
        );
        assert_eq!(
            lost_line("n1", 3, 3),
            "{\"lostUpdates\":3,\"lostUpdatesTotal\":3,\"node\":\"n1\"}\n"
        );
    }
}
