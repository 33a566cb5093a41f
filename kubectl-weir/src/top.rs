//! `kubectl weir top`: the top talkers among the PodFlows, by pod,
//! workload, namespace or node pair, sorted by bytes, packets or rate.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::model::{Flow, Inventory, human_bytes, human_count, human_rate};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    Pod,
    Workload,
    Namespace,
    NodePair,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    Bytes,
    Packets,
    Rate,
}

/// One talker: a key (a pod, a workload, a namespace, a node pair) and
/// what it sent and received, summed over its flows.
#[derive(Debug, Clone, PartialEq)]
pub struct Talker {
    pub key: String,
    pub bytes: u64,
    pub packets: u64,
    /// Bytes per second: over the refresh interval when there is a previous
    /// snapshot, else over the flows' lifetimes.
    pub rate: f64,
    pub flows: usize,
}

fn end_key(end: &crate::model::End) -> String {
    match (&end.namespace, &end.pod) {
        (Some(ns), Some(p)) => format!("{ns}/{p}"),
        (None, Some(p)) => p.clone(),
        _ => end.ip.clone(),
    }
}

/// The keys a flow counts for: both ends (a conversation counts for its
/// source and its destination), or the one node pair.
fn keys(f: &Flow, by: By, inv: &Inventory) -> Vec<String> {
    match by {
        By::Pod => vec![end_key(&f.source), end_key(&f.destination)],
        By::Workload => vec![
            inv.workload(&f.source).id(),
            inv.workload(&f.destination).id(),
        ],
        By::Namespace => [&f.source, &f.destination]
            .iter()
            .map(|e| {
                e.namespace
                    .clone()
                    .unwrap_or_else(|| "(outside)".to_owned())
            })
            .collect(),
        By::NodePair => vec![format!(
            "{} → {}",
            f.source.node.as_deref().unwrap_or("?"),
            f.destination.node.as_deref().unwrap_or("?")
        )],
    }
}

/// Sums `flows` into talkers. `previous` (flow name → bytes a refresh
/// ago) and `interval` turn the rate into bytes per second over the
/// interval; without them the rate is over the flows' lifetimes. `window`
/// (seconds, with `now`) keeps only flows seen within it.
pub fn talkers(
    flows: &[Flow],
    inv: &Inventory,
    by: By,
    previous: Option<(&HashMap<String, u64>, f64)>,
    window: Option<(f64, f64)>,
) -> Vec<Talker> {
    let mut out: HashMap<String, Talker> = HashMap::new();
    for f in flows {
        if let Some((now, window)) = window
            && f.last_seen.is_none_or(|l| l < now - window)
        {
            continue;
        }
        let rate = match previous {
            Some((prev, interval)) => {
                let before = prev
                    .get(&format!("{}/{}", f.namespace, f.name))
                    .copied()
                    .unwrap_or(0);
                f.bytes.saturating_sub(before) as f64 / interval.max(1e-3)
            }
            None => f.rate(),
        };
        let mut ks = keys(f, by, inv);
        ks.dedup();
        for k in ks {
            let t = out.entry(k.clone()).or_insert(Talker {
                key: k,
                bytes: 0,
                packets: 0,
                rate: 0.0,
                flows: 0,
            });
            t.bytes = t.bytes.saturating_add(f.bytes);
            t.packets = t.packets.saturating_add(f.packets);
            t.rate += rate;
            t.flows += 1;
        }
    }
    out.into_values().collect()
}

/// The `n` busiest talkers by `sort` (ties by key).
pub fn top_n(mut talkers: Vec<Talker>, sort: SortBy, n: usize) -> Vec<Talker> {
    talkers.sort_by(|a, b| {
        let ord = match sort {
            SortBy::Bytes => b.bytes.cmp(&a.bytes),
            SortBy::Packets => b.packets.cmp(&a.packets),
            SortBy::Rate => b.rate.total_cmp(&a.rate),
        };
        ord.then_with(|| a.key.cmp(&b.key))
    });
    if n > 0 {
        talkers.truncate(n);
    }
    talkers
}

/// Snapshot of the flows' byte counts, for the next refresh's rates.
pub fn snapshot(flows: &[Flow]) -> HashMap<String, u64> {
    flows
        .iter()
        .map(|f| (format!("{}/{}", f.namespace, f.name), f.bytes))
        .collect()
}

/// The table `top` prints.
pub fn render(talkers: &[Talker], by: By) -> String {
    let head = match by {
        By::Pod => "POD",
        By::Workload => "WORKLOAD",
        By::Namespace => "NAMESPACE",
        By::NodePair => "NODES",
    };
    let width = talkers
        .iter()
        .map(|t| t.key.chars().count())
        .max()
        .unwrap_or(0)
        .max(head.len());
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{head:<width$}  {:>10}  {:>12}  {:>8}  {:>5}",
        "BYTES", "RATE", "PACKETS", "FLOWS"
    );
    for t in talkers {
        let _ = writeln!(
            s,
            "{:<width$}  {:>10}  {:>12}  {:>8}  {:>5}",
            t.key,
            human_bytes(t.bytes as f64),
            human_rate(t.rate),
            human_count(t.packets as f64),
            t.flows
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::End;

    fn flow(name: &str, src: (&str, &str, &str), dst: (&str, &str, &str), bytes: u64) -> Flow {
        let end = |(ns, pod, node): (&str, &str, &str)| End {
            namespace: Some(ns.into()),
            pod: Some(pod.into()),
            ip: "10.0.0.1".into(),
            node: Some(node.into()),
        };
        Flow {
            namespace: src.0.into(),
            name: name.into(),
            source: end(src),
            destination: end(dst),
            protocol: "TCP".into(),
            port: Some(80),
            packets: bytes / 10,
            bytes,
            first_seen: Some(0.0),
            last_seen: Some(100.0),
            vni: None,
            loss_packets: 0,
        }
    }

    #[test]
    fn talkers_by_pod_namespace_and_node_pair() {
        let flows = vec![
            flow("f1", ("a", "web", "n1"), ("b", "db", "n2"), 1000),
            flow("f2", ("a", "web", "n1"), ("a", "cache", "n1"), 500),
            flow("f3", ("b", "db", "n2"), ("b", "db", "n2"), 7),
        ];
        let inv = Inventory::default();
        let top = top_n(talkers(&flows, &inv, By::Pod, None, None), SortBy::Bytes, 2);
        assert_eq!(top[0].key, "a/web");
        assert_eq!(top[0].bytes, 1500);
        assert_eq!(top[0].flows, 2);
        assert_eq!(top[1].key, "b/db");
        assert_eq!(top[1].bytes, 1007, "a self-flow counts once");
        let ns = top_n(
            talkers(&flows, &inv, By::Namespace, None, None),
            SortBy::Bytes,
            0,
        );
        assert_eq!(
            ns.iter()
                .map(|t| (t.key.as_str(), t.bytes))
                .collect::<Vec<_>>(),
            [("a", 1500), ("b", 1007)]
        );
        let pairs = top_n(
            talkers(&flows, &inv, By::NodePair, None, None),
            SortBy::Packets,
            0,
        );
        assert_eq!(pairs[0].key, "n1 → n2");
        assert_eq!(pairs[0].packets, 100);
        let table = render(&pairs, By::NodePair);
        assert!(table.starts_with("NODES"), "{table}");
        assert!(table.contains("n1 → n2"), "{table}");
    }

    #[test]
    fn rate_over_the_refresh_interval_and_window() {
        let flows = vec![
            flow("f1", ("a", "web", "n1"), ("b", "db", "n2"), 3000),
            flow("f2", ("a", "x", "n1"), ("b", "y", "n2"), 100_000),
        ];
        let mut prev = HashMap::new();
        prev.insert("a/f1".to_string(), 1000u64);
        prev.insert("a/f2".to_string(), 100_000u64);
        let t = top_n(
            talkers(
                &flows,
                &Inventory::default(),
                By::Pod,
                Some((&prev, 2.0)),
                None,
            ),
            SortBy::Rate,
            1,
        );
        assert_eq!(t[0].key, "a/web");
        assert!((t[0].rate - 1000.0).abs() < 1e-9);
        // Window: only flows seen within the last 10 s of now=200 (none).
        assert!(
            talkers(
                &flows,
                &Inventory::default(),
                By::Pod,
                None,
                Some((200.0, 10.0))
            )
            .is_empty()
        );
        assert_eq!(
            talkers(
                &flows,
                &Inventory::default(),
                By::Pod,
                None,
                Some((105.0, 10.0))
            )
            .len(),
            4
        );
    }
}
