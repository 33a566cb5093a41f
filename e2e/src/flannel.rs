//! Two nodes joined the way flannel's VXLAN backend joins them: an underlay
//! link between the node namespaces, and on each node a `flannel.<VNI>`
//! device programmed as flanneld programs it — the device with the node's
//! subnet's network address, an onlink route per remote subnet via the remote
//! device's address, and permanent neighbour and FDB entries instead of
//! learning.

use anyhow::{Context, Result};

use crate::netns::Netns;

pub struct FlannelNode<'a> {
    pub ns: &'a Netns,
    /// The node's underlay address (the VTEP), e.g. 192.168.100.1.
    pub underlay_ip: &'a str,
    /// The node's pod subnet, e.g. 10.245.0.0/24.
    pub pod_subnet: &'a str,
}

pub const VNI: u32 = 1;
pub const PORT: u16 = 8472;

/// Links `a` and `b` with a veth underlay (`eth0` on both ends, /24) and the
/// flannel VXLAN devices; returns the underlay device name.
pub fn connect(a: &FlannelNode, b: &FlannelNode) -> Result<&'static str> {
    let peer_path = b.ns.path();
    a.ns.exec(&[
        "ip",
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0-peer",
    ])?;
    a.ns.exec(&[
        "ip",
        "link",
        "set",
        "eth0-peer",
        "netns",
        peer_path.to_str().context("netns path")?,
        "name",
        "eth0",
    ])?;
    for node in [a, b] {
        node.ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", node.underlay_ip),
            "dev",
            "eth0",
        ])?;
        node.ns.exec(&["ip", "link", "set", "eth0", "up"])?;
        node.ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let vni = VNI.to_string();
        let port = PORT.to_string();
        node.ns.exec(&[
            "ip",
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            &vni,
            "local",
            node.underlay_ip,
            "dev",
            "eth0",
            "dstport",
            &port,
            "nolearning",
        ])?;
        node.ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/32", network_address(node.pod_subnet)),
            "dev",
            "flannel.1",
        ])?;
        node.ns.exec(&["ip", "link", "set", "flannel.1", "up"])?;
    }
    for (local, remote) in [(a, b), (b, a)] {
        let remote_mac = mac_of(remote.ns, "flannel.1")?;
        let remote_vtep = network_address(remote.pod_subnet);
        local.ns.exec(&[
            "ip",
            "route",
            "add",
            remote.pod_subnet,
            "via",
            &remote_vtep,
            "dev",
            "flannel.1",
            "onlink",
        ])?;
        local.ns.exec(&[
            "ip",
            "neigh",
            "add",
            &remote_vtep,
            "lladdr",
            &remote_mac,
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ])?;
        local.ns.exec(&[
            "bridge",
            "fdb",
            "append",
            &remote_mac,
            "dev",
            "flannel.1",
            "dst",
            remote.underlay_ip,
        ])?;
    }
    Ok("eth0")
}

fn network_address(subnet: &str) -> String {
    subnet.split('/').next().unwrap_or(subnet).to_string()
}

fn mac_of(ns: &Netns, dev: &str) -> Result<String> {
    let json: serde_json::Value =
        serde_json::from_str(&ns.exec(&["ip", "-j", "link", "show", dev])?)?;
    Ok(json[0]["address"].as_str().context("no MAC")?.to_string())
}
