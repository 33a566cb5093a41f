//! The controller's summary of a PodFlow: what the observers (one per node)
//! wrote, added up into totals, first/last seen and the VXLAN leg with its
//! loss. Arithmetic over the API types, kept apart from their schema.

use crate::pod_flow::{Observer, PodFlowSpec, PodFlowStatus, Totals, VxlanCounters};

impl PodFlowStatus {
    /// The summary of `observers` for the conversation `spec` (the result's
    /// `observers` is empty: the summary's writer does not own them).
    pub fn summarize(spec: &PodFlowSpec, observers: &[Observer]) -> PodFlowStatus {
        if observers.is_empty() {
            return PodFlowStatus::default();
        }
        let on = |node: &str| observers.iter().find(|o| o.node == node);
        let src = spec.source.node.as_deref().and_then(on);
        let dst = spec.destination.node.as_deref().and_then(on);
        let main = src.or(dst).or_else(|| {
            observers.iter().max_by_key(|o| {
                (
                    o.forward.packets.saturating_add(o.reverse.packets),
                    std::cmp::Reverse(&o.node),
                )
            })
        });
        let totals = main
            .map(|o| Totals {
                forward: o.forward,
                reverse: o.reverse,
            })
            .unwrap_or_default();
        let both = totals.forward.add(totals.reverse);

        let vxlan = {
            let seen: Vec<&VxlanCounters> =
                observers.iter().filter_map(|o| o.vxlan.as_ref()).collect();
            if seen.is_empty() {
                None
            } else {
                let ids = src
                    .and_then(|o| o.vxlan.as_ref())
                    .or_else(|| dst.and_then(|o| o.vxlan.as_ref()))
                    .unwrap_or(seen[0]);
                let sum = |f: fn(&VxlanCounters) -> i64| {
                    seen.iter().fold(0i64, |a, v| a.saturating_add(f(v)))
                };
                let loss = match (
                    src.and_then(|o| o.vxlan.as_ref()),
                    dst.and_then(|o| o.vxlan.as_ref()),
                ) {
                    (Some(s), Some(d)) if !std::ptr::eq(s, d) => Some(
                        (s.encap_packets - d.decap_packets)
                            .max(0)
                            .saturating_add((d.encap_packets - s.decap_packets).max(0)),
                    ),
                    _ => None,
                };
                Some(VxlanCounters {
                    vni: ids.vni,
                    outer_source: ids.outer_source.clone(),
                    outer_destination: ids.outer_destination.clone(),
                    encap_packets: sum(|v| v.encap_packets),
                    encap_bytes: sum(|v| v.encap_bytes),
                    decap_packets: sum(|v| v.decap_packets),
                    decap_bytes: sum(|v| v.decap_bytes),
                    loss_packets: loss,
                })
            }
        };

        PodFlowStatus {
            totals: Some(totals),
            packets: Some(both.packets),
            bytes: Some(both.bytes),
            first_seen: observers.iter().filter_map(|o| o.first_seen.clone()).min(),
            last_seen: observers.iter().filter_map(|o| o.last_seen.clone()).max(),
            vxlan,
            tcp: main.and_then(|o| o.tcp),
            conditions: Vec::new(),
            observers: Vec::new(),
        }
    }
}
