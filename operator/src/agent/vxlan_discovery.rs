//! Finds flannel's VXLAN devices, and the underlay devices to attach the
//! monitor to, from the kernel over rtnetlink (never by parsing `ip` output).
//!
//! A flannel VXLAN device is a link of kind `vxlan` named `flannel.<N>`
//! (IPv4) or `flannel-v6.<N>` (IPv6), where flanneld puts the VNI in `<N>`.
//! Everything else is read from the device itself, never assumed:
//!
//! - VNI: `IFLA_VXLAN_ID`;
//! - UDP port: `IFLA_VXLAN_PORT` (the kernel always reports it; 8472, its
//!   default, only if an old kernel left it out);
//! - local VTEP address: `IFLA_VXLAN_LOCAL` / `IFLA_VXLAN_LOCAL6`;
//! - underlay, in this order ([`UnderlaySource`]):
//!   1. `IFLA_VXLAN_LINK` (flanneld always sets it: `dev <iface>`);
//!   2. without it, the device that holds the local VTEP address. That is
//!      the device of the local-table route to the address; a route *lookup*
//!      of one's own address answers `lo`, which is not where VXLAN packets
//!      go, so the address owner is used instead;
//!   3. without a local address either, the device of the main table's
//!      default route of the device's family, which is the interface flanneld
//!      itself picks when not told one.
//!
//! Everything happens in the netns of the calling thread (the node's netns
//! for the agent).

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::TryStreamExt;
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage},
    route::{RouteAttribute, RouteHeader, RouteMessage, RouteType},
};
use rtnetlink::{Handle, RouteMessageBuilder};

use weir_ebpf::{vxlan::VxlanParams, vxlan_abi};

/// A netlink request (or setting one up) failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct Error {
    /// The operation.
    pub what: String,
    /// The cause.
    pub source: io::Error,
}

pub type Result<T> = std::result::Result<T, Error>;

/// One flannel VXLAN device as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlannelVxlan {
    /// `flannel.<N>` or `flannel-v6.<N>`.
    pub name: String,
    /// Its ifindex.
    pub ifindex: u32,
    /// `IFLA_VXLAN_ID`.
    pub vni: u32,
    /// `IFLA_VXLAN_PORT` (host order).
    pub port: u16,
    /// `IFLA_VXLAN_LOCAL` or `IFLA_VXLAN_LOCAL6`.
    pub local: Option<IpAddr>,
    /// The device its encapsulated packets leave through, when one was found.
    pub underlay: Option<Underlay>,
}

impl FlannelVxlan {
    /// The monitor parameters for this device's traffic.
    pub fn params(&self) -> VxlanParams {
        VxlanParams { port: self.port }
    }

    /// True for `flannel-v6.<N>`.
    pub fn is_ipv6(&self) -> bool {
        self.name.starts_with("flannel-v6.")
    }
}

/// The device a flannel VXLAN device sends through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    /// ifindex in this netns.
    pub ifindex: u32,
    /// Its name.
    pub name: String,
    /// How it was found.
    pub source: UnderlaySource,
}

/// How the underlay of a VXLAN device was determined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnderlaySource {
    /// The device's `IFLA_VXLAN_LINK`.
    VxlanLink,
    /// The device holding the local VTEP address.
    LocalAddress,
    /// The device of the default route of the VXLAN device's family.
    DefaultRoute,
}

/// `flannel.<digits>` or `flannel-v6.<digits>`.
pub fn is_flannel_vxlan_name(name: &str) -> bool {
    let n = name
        .strip_prefix("flannel-v6.")
        .or_else(|| name.strip_prefix("flannel."));
    matches!(n, Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn nl_err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |e| {
        let source = match &e {
            rtnetlink::Error::NetlinkError(msg) => match msg.code {
                Some(code) => io::Error::from_raw_os_error(-code.get()),
                None => io::Error::other(e.to_string()),
            },
            _ => io::Error::other(e.to_string()),
        };
        Error { what, source }
    }
}

/// The flannel VXLAN devices of the netns `handle` talks to, sorted by name.
pub async fn discover_with(handle: &Handle) -> Result<Vec<FlannelVxlan>> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl_err("listing links"))?;
    let names: HashMap<u32, String> = links
        .iter()
        .filter_map(|l| link_name(l).map(|n| (l.header.index, n.to_owned())))
        .collect();

    let mut found = Vec::new();
    for link in &links {
        let Some(name) = link_name(link) else {
            continue;
        };
        if !is_flannel_vxlan_name(name) {
            continue;
        }
        let Some(vx) = vxlan_info(link) else { continue };
        let mut dev = FlannelVxlan {
            name: name.to_owned(),
            ifindex: link.header.index,
            vni: 0,
            port: vxlan_abi::DEFAULT_PORT,
            local: None,
            underlay: None,
        };
        let mut link_index = 0;
        for attr in vx {
            match attr {
                InfoVxlan::Id(id) => dev.vni = *id,
                InfoVxlan::Port(p) => dev.port = *p,
                InfoVxlan::Local(a) => dev.local = Some(IpAddr::V4(*a)),
                InfoVxlan::Local6(a) => dev.local = Some(IpAddr::V6(*a)),
                InfoVxlan::Link(i) => link_index = *i,
                _ => {}
            }
        }
        dev.underlay = match names.get(&link_index) {
            Some(n) if link_index != 0 && !link_in_other_netns(link) => Some(Underlay {
                ifindex: link_index,
                name: n.clone(),
                source: UnderlaySource::VxlanLink,
            }),
            _ => None,
        };
        if dev.underlay.is_none()
            && let Some(local) = dev.local
        {
            dev.underlay = address_owner(handle, local)
                .await?
                .and_then(|i| underlay(&names, i, UnderlaySource::LocalAddress));
        }
        if dev.underlay.is_none() {
            let v6 = dev.local.map(|a| a.is_ipv6()).unwrap_or(dev.is_ipv6());
            dev.underlay = default_route_oif(handle, v6)
                .await?
                .and_then(|i| underlay(&names, i, UnderlaySource::DefaultRoute));
        }
        found.push(dev);
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// [`discover_with`] on a connection of its own, in the netns of the
/// calling thread. Runs its own single-threaded runtime on a helper thread
/// (which shares the caller's netns), so it may be called from inside or
/// outside an async runtime.
pub fn discover() -> Result<Vec<FlannelVxlan>> {
    // A thread made without CLONE_NEWNET shares the namespaces of the thread
    // that made it (not those of the process's main thread), so the helper,
    // and the socket it opens, are in the caller's netns.
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| Error {
                    what: "starting a tokio runtime for rtnetlink".into(),
                    source: e,
                })?;
            rt.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| Error {
                    what: "opening an rtnetlink socket".into(),
                    source: e,
                })?;
                let task = tokio::spawn(conn);
                let res = discover_with(&handle).await;
                task.abort();
                res
            })
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// `IFLA_LINK_NETNSID` set: the device's links refer to another netns.
fn link_in_other_netns(l: &LinkMessage) -> bool {
    l.attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::LinkNetNsId(_)))
}

fn vxlan_info(l: &LinkMessage) -> Option<&Vec<InfoVxlan>> {
    let infos = l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(i) => Some(i),
        _ => None,
    })?;
    if !infos
        .iter()
        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)))
    {
        return None;
    }
    infos.iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::Vxlan(v)) => Some(v),
        _ => None,
    })
}

fn underlay(
    names: &HashMap<u32, String>,
    ifindex: u32,
    source: UnderlaySource,
) -> Option<Underlay> {
    names.get(&ifindex).map(|n| Underlay {
        ifindex,
        name: n.clone(),
        source,
    })
}

async fn address_owner(handle: &Handle, addr: IpAddr) -> Result<Option<u32>> {
    let addrs: Vec<AddressMessage> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl_err("listing addresses"))?;
    Ok(addrs
        .iter()
        .find(|m| {
            m.attributes.iter().any(|a| {
                matches!(a, AddressAttribute::Local(ip) | AddressAttribute::Address(ip) if *ip == addr)
            })
        })
        .map(|m| m.header.index))
}

async fn default_route_oif(handle: &Handle, v6: bool) -> Result<Option<u32>> {
    let dump = if v6 {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    };
    let routes: Vec<RouteMessage> = handle
        .route()
        .get(dump)
        .execute()
        .try_collect()
        .await
        .map_err(nl_err("listing routes"))?;
    Ok(routes
        .iter()
        .filter(|r| {
            r.header.destination_prefix_length == 0
                && r.header.kind == RouteType::Unicast
                && route_table(r) == u32::from(RouteHeader::RT_TABLE_MAIN)
        })
        .find_map(|r| {
            r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                RouteAttribute::MultiPath(hops) => hops.first().map(|h| h.interface_index),
                _ => None,
            })
        }))
}

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannel_names() {
        for ok in ["flannel.1", "flannel.4096", "flannel-v6.1", "flannel-v6.77"] {
            assert!(is_flannel_vxlan_name(ok), "{ok}");
        }
        for bad in [
            "flannel",
            "flannel.",
            "flannel.x",
            "flannel.1a",
            "flannel-v6.",
            "flannel-v4.1",
            "xflannel.1",
            "cni0",
            "flannel_1",
        ] {
            assert!(!is_flannel_vxlan_name(bad), "{bad}");
        }
    }
}
