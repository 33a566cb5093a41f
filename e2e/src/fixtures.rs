//! Values the tests of several crates build alike.

use weir_node_state::{AttachmentRecord, PodIdentity};

/// A split pod's node-state record: pod `pod_id` at `10.244.0.<pod_id>`,
/// `namespace` absent as podman records it.
pub fn attachment_record(pod_id: u32, namespace: Option<&str>, pod: &str) -> AttachmentRecord {
    AttachmentRecord {
        network: "cbr0".into(),
        container_id: format!("c{pod_id}"),
        ifname: "eth0".into(),
        netns: "/run/netns/x".into(),
        pod: PodIdentity {
            namespace: namespace.map(Into::into),
            name: Some(pod.into()),
            uid: None,
            infra_container_id: None,
        },
        pod_id,
        mac: "aa:bb:cc:dd:ee:ff".into(),
        ips: vec![format!("10.244.0.{pod_id}/24")],
        attach_mode: Default::default(),
        pod_ifindex: 4,
        outer_ifindex: 2,
        inner_ifindex: 3,
        created_unix: 1,
        phase: Default::default(),
        attachment_id: None,
        original: None,
    }
}
