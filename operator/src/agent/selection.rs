//! Which local pods the CaptureProfiles select, and what that means for the
//! data path.
//!
//! A pod is selected when a valid profile of its namespace (one that
//! [`CaptureProfileSpec::check`] accepts) selects it with `podSelector`.
//! Selected pods count ([`PodMode::Count`]); every other pod weir split on
//! this node passes through uncounted (its config entry is removed).
//!
//! When several profiles select one pod, the first by name owns the pod's
//! conversations: its filters decide what is published and its PodFlows
//! carry them. (The CaptureProfile type's doc allows a conversation to be
//! published under each profile that wants it; that would multiply the
//! writes by the number of overlapping profiles, so the agent does not do
//! it. Rename a profile to change which one wins.)

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::core::{Selector, SelectorExt};
use weir_ebpf::abi::PodMode;
use weir_ebpf::maps::NodeMaps;
use weir_node_state::AttachmentRecord;

use weir_api::{CaptureProfile, Protocol};

/// An address block of `peerCIDRs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Self> {
        if !weir_api::capture_profile::is_cidr(text) {
            return None;
        }
        let (addr, len) = text.split_once('/')?;
        Some(Self {
            addr: addr.parse().ok()?,
            len: len.parse().ok()?,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        fn bits(ip: IpAddr) -> (u128, u8) {
            match ip {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        }
        let ((net, width), (ip, ip_width)) = (bits(self.addr), bits(ip));
        if width != ip_width {
            return false;
        }
        let shift = u32::from(width - self.len);
        shift >= u32::from(width) || (net >> shift) == (ip >> shift)
    }
}

/// What a valid profile asks for, ready to apply to conversations.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub namespace: String,
    pub profile: String,
    pub protocols: Vec<Protocol>,
    pub ports: Vec<i32>,
    pub peers: Vec<Cidr>,
    pub flush_interval: Duration,
    pub max_pod_flows: i32,
    /// `status.activeFlows` as the controller last reported it (for the cap).
    pub active_flows: Option<i32>,
}

impl Rule {
    /// The rule and selector of a profile, or `None` when the profile is not
    /// valid (the controller reports why in its `Ready` condition).
    pub fn from_profile(profile: &CaptureProfile) -> Option<(Rule, Selector)> {
        let spec = &profile.spec;
        spec.check().ok()?;
        let selector = Selector::try_from(spec.pod_selector.clone()).ok()?;
        let peers: Option<Vec<Cidr>> = spec.peer_cidrs.iter().map(|c| Cidr::parse(c)).collect();
        let rule = Rule {
            namespace: profile.metadata.namespace.clone()?,
            profile: profile.metadata.name.clone()?,
            protocols: spec.protocols.clone(),
            ports: spec.ports.clone(),
            peers: peers?,
            flush_interval: spec.flush_interval()?,
            max_pod_flows: spec.max_pod_flows,
            active_flows: profile.status.as_ref().and_then(|s| s.active_flows),
        };
        Some((rule, selector))
    }

    /// Whether a conversation of the selected pod is published: its protocol
    /// is listed (or none are), its destination port is listed (or none are;
    /// a conversation without ports — ICMP — passes a port list only when
    /// `protocols` names its protocol), and the other end is in one of the
    /// peer CIDRs (or none are given).
    pub fn admits(&self, protocol: Protocol, destination_port: Option<u16>, peer: IpAddr) -> bool {
        if !self.protocols.is_empty() && !self.protocols.contains(&protocol) {
            return false;
        }
        if !self.ports.is_empty() {
            match destination_port {
                Some(port) => {
                    if !self.ports.contains(&i32::from(port)) {
                        return false;
                    }
                }
                None => {
                    if !self.protocols.contains(&protocol) {
                        return false;
                    }
                }
            }
        }
        self.peers.is_empty() || self.peers.iter().any(|c| c.contains(peer))
    }
}

/// A local pod as selection needs it.
pub struct LocalPod<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// Which rule owns each selected local pod (by namespace and name).
#[derive(Debug, Default, Clone)]
pub struct Selection {
    by_pod: HashMap<(String, String), Arc<Rule>>,
}

impl Selection {
    /// Evaluates every valid profile against the local pods; per pod, the
    /// first selecting profile by name wins.
    pub fn compute<'a>(
        profiles: &[Arc<CaptureProfile>],
        pods: impl IntoIterator<Item = LocalPod<'a>>,
    ) -> Self {
        let mut rules: HashMap<&str, Vec<(Arc<Rule>, Selector)>> = HashMap::new();
        for profile in profiles {
            if let (Some(ns), Some((rule, selector))) = (
                profile.metadata.namespace.as_deref(),
                Rule::from_profile(profile),
            ) {
                rules
                    .entry(ns)
                    .or_default()
                    .push((Arc::new(rule), selector));
            }
        }
        for list in rules.values_mut() {
            list.sort_by(|a, b| a.0.profile.cmp(&b.0.profile));
        }
        let mut by_pod = HashMap::new();
        for pod in pods {
            let Some(list) = rules.get(pod.namespace) else {
                continue;
            };
            if let Some((rule, _)) = list
                .iter()
                .find(|(_, selector)| selector.matches(pod.labels))
            {
                by_pod.insert(
                    (pod.namespace.to_owned(), pod.name.to_owned()),
                    rule.clone(),
                );
            }
        }
        Self { by_pod }
    }

    /// The rules of the selected pods, once per pod (a profile's rule
    /// repeats for every pod it owns).
    pub fn rules(&self) -> impl Iterator<Item = &Arc<Rule>> {
        self.by_pod.values()
    }

    pub fn rule(&self, namespace: &str, pod: &str) -> Option<&Arc<Rule>> {
        self.by_pod.get(&(namespace.to_owned(), pod.to_owned()))
    }

    pub fn len(&self) -> usize {
        self.by_pod.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pod.is_empty()
    }

    /// Whether this node-state record (a pod weir split) is selected.
    pub fn selects(&self, record: &AttachmentRecord) -> bool {
        match (&record.pod.namespace, &record.pod.name) {
            (Some(ns), Some(name)) => self.rule(ns, name).is_some(),
            _ => false,
        }
    }
}

/// What [`apply`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub counting: usize,
    pub started: usize,
    pub stopped: usize,
}

/// Puts the selection into the data path: counting for the selected pods'
/// records, pass-through (no config entry) for the others. Only entries that
/// differ are written.
pub fn apply(
    selection: &Selection,
    records: &[AttachmentRecord],
    maps: &mut NodeMaps,
) -> weir_ebpf::Result<Applied> {
    let mut applied = Applied::default();
    for record in records {
        let want = selection.selects(record);
        let now = maps.pod_mode(record.pod_id)?;
        if want {
            applied.counting += 1;
            if now != PodMode::Count {
                maps.set_pod_mode(record.pod_id, PodMode::Count)?;
                applied.started += 1;
            }
        } else if now != PodMode::PassThrough {
            maps.clear_pod_mode(record.pod_id)?;
            applied.stopped += 1;
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    use kube::api::ObjectMeta;

    use super::*;
    use weir_api::CaptureProfileSpec;

    fn profile(
        ns: &str,
        name: &str,
        app: Option<&str>,
        edit: impl FnOnce(&mut CaptureProfileSpec),
    ) -> Arc<CaptureProfile> {
        let mut spec = CaptureProfileSpec::selecting(LabelSelector {
            match_labels: app.map(|a| [("app".to_owned(), a.to_owned())].into()),
            ..Default::default()
        });
        edit(&mut spec);
        Arc::new(CaptureProfile {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec,
            status: None,
        })
    }

    fn labels(app: &str) -> BTreeMap<String, String> {
        [("app".to_owned(), app.to_owned())].into()
    }

    #[test]
    fn first_valid_profile_by_name_of_the_pods_namespace_wins() {
        let (web, db) = (labels("web"), labels("db"));
        let profiles = vec![
            profile("shop", "zeta", None, |_| {}),
            profile("shop", "alpha", Some("web"), |s| {
                s.protocols = vec![Protocol::Tcp]
            }),
            profile("shop", "aaa-invalid", None, |s| s.max_pod_flows = 0),
            profile("other", "all", None, |_| {}),
            profile("shop", "exprs", None, |s| {
                s.pod_selector.match_expressions = Some(vec![LabelSelectorRequirement {
                    key: "app".into(),
                    operator: "NotIn".into(),
                    values: Some(vec!["db".into()]),
                }]);
            }),
        ];
        let pods = [
            LocalPod {
                namespace: "shop",
                name: "web-1",
                labels: &web,
            },
            LocalPod {
                namespace: "shop",
                name: "db-0",
                labels: &db,
            },
            LocalPod {
                namespace: "idle",
                name: "x",
                labels: &web,
            },
        ];
        let s = Selection::compute(&profiles, pods);
        assert_eq!(s.rule("shop", "web-1").unwrap().profile, "alpha");
        assert_eq!(
            s.rule("shop", "db-0").unwrap().profile,
            "zeta",
            "exprs does not select db; the invalid one is ignored"
        );
        assert!(s.rule("idle", "x").is_none(), "no profile in its namespace");
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn filters_follow_the_profile() {
        let (p, _) = Rule::from_profile(&profile("shop", "p", None, |s| {
            s.protocols = vec![Protocol::Udp, Protocol::Icmp];
            s.ports = vec![53];
            s.peer_cidrs = vec!["10.244.0.0/16".into(), "fd00::/8".into()];
        }))
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(p.admits(Protocol::Udp, Some(53), ip("10.244.3.4")));
        assert!(
            !p.admits(Protocol::Tcp, Some(53), ip("10.244.3.4")),
            "protocol"
        );
        assert!(!p.admits(Protocol::Udp, Some(54), ip("10.244.3.4")), "port");
        assert!(!p.admits(Protocol::Udp, Some(53), ip("10.245.0.1")), "peer");
        assert!(
            p.admits(Protocol::Icmp, None, ip("fd00::1")),
            "ICMP is listed, so the port list does not apply"
        );
        let (all, _) = Rule::from_profile(&profile("shop", "p", None, |_| {})).unwrap();
        assert!(all.admits(Protocol::IcmpV6, None, ip("1.1.1.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("10.1.2.3/32").unwrap().contains(ip("10.1.2.3")));
        assert!(!Cidr::parse("10.1.2.3/32").unwrap().contains(ip("10.1.2.4")));
        assert!(
            !Cidr::parse("::/0").unwrap().contains(ip("10.1.2.4")),
            "families do not mix"
        );
    }
}
