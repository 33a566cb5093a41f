//! Reading and writing one interface's configuration through rtnetlink:
//! its link state, addresses and routes, captured so they can be moved to
//! another device or put back exactly as they were.

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::{Ipv4Addr, Ipv6Addr};

const RT_TABLE_LOCAL: u32 = 255;

/// A netlink operation that failed, with the object it was about.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct NetlinkError {
    pub what: String,
    #[source]
    pub source: rtnetlink::Error,
}

impl NetlinkError {
    fn new(what: impl Into<String>, source: rtnetlink::Error) -> Self {
        Self {
            what: what.into(),
            source,
        }
    }

    /// The errno the kernel answered with, if it answered with one.
    pub fn errno(&self) -> Option<i32> {
        errno_of(&self.source)
    }
}

pub type Result<T> = std::result::Result<T, NetlinkError>;

fn errno_of(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

/// The identity and state of a link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub up: bool,
    pub kind: Option<InfoKind>,
    /// For a veth: the peer's ifindex (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// Set when the peer lives in another namespace.
    pub peer_netns_id: Option<i32>,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: Vec::new(),
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            kind: None,
            peer_index: None,
            peer_netns_id: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Address(mac) => link.mac = mac.clone(),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Link(peer) => link.peer_index = Some(*peer),
                LinkAttribute::LinkNetNsId(id) => link.peer_netns_id = Some(*id),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    pub fn is_veth(&self) -> bool {
        self.kind == Some(InfoKind::Veth)
    }

    pub fn kind_name(&self) -> String {
        match &self.kind {
            Some(kind) => kind.to_string(),
            None => "unknown (no link kind reported)".into(),
        }
    }
}

/// Everything weir moves from one device to another and puts back on undo.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub link: Link,
    pub addresses: Vec<AddressMessage>,
    pub routes: Vec<RouteMessage>,
}

pub async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<Link>> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(Link::from_message(&msg))),
        Ok(None) => Ok(None),
        Err(err) if errno_of(&err) == Some(libc::ENODEV) => Ok(None),
        Err(err) => Err(NetlinkError::new(format!("look up link {name}"), err)),
    }
}

pub async fn link_by_index(handle: &Handle, index: u32) -> Result<Option<Link>> {
    let mut links = handle.link().get().match_index(index).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(Link::from_message(&msg))),
        Ok(None) => Ok(None),
        Err(err) if errno_of(&err) == Some(libc::ENODEV) => Ok(None),
        Err(err) => Err(NetlinkError::new(format!("look up link #{index}"), err)),
    }
}

pub async fn capture(handle: &Handle, link: Link) -> Result<Snapshot> {
    let addresses = addresses_of(handle, link.index).await?;
    let routes = routes_via(handle, link.index).await?;
    Ok(Snapshot {
        link,
        addresses,
        routes,
    })
}

/// Addresses the pod was given; IPv6 link-local ones are left out because the
/// kernel derives them from the MAC, which the new device keeps.
async fn addresses_of(handle: &Handle, index: u32) -> Result<Vec<AddressMessage>> {
    let all: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetlinkError::new(format!("list addresses of link #{index}"), e))?;
    Ok(all.into_iter().filter(|a| !is_ipv6_link_local(a)).collect())
}

fn is_ipv6_link_local(addr: &AddressMessage) -> bool {
    addr.attributes.iter().any(|attr| match attr {
        AddressAttribute::Address(std::net::IpAddr::V6(ip)) => ip.is_unicast_link_local(),
        _ => false,
    })
}

/// Routes that leave through the device, except those the kernel makes by
/// itself (connected and local routes come back when the addresses do).
async fn routes_via(handle: &Handle, index: u32) -> Result<Vec<RouteMessage>> {
    let mut routes = Vec::new();
    for dump in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let family = dump.header.address_family;
        let found: Vec<RouteMessage> = handle
            .route()
            .get(dump)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::new(format!("list {family:?} routes"), e))?;
        routes.extend(found.into_iter().filter(|r| {
            route_oif(r) == Some(index)
                && r.header.protocol != RouteProtocol::Kernel
                && route_table(r) != RT_TABLE_LOCAL
                && !r.header.flags.contains(RouteFlags::Cloned)
        }));
    }
    // Routes through a gateway need the gateway's own route first.
    routes.sort_by_key(|r| u8::from(r.header.scope) == 0);
    Ok(routes)
}

fn route_oif(route: &RouteMessage) -> Option<u32> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

/// Renames a link; the kernel refuses to rename a link that is up, so it is
/// brought down in the same request.
pub async fn rename_down(handle: &Handle, index: u32, name: &str) -> Result<()> {
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .down()
                .name(name.to_string())
                .build(),
        )
        .execute()
        .await
        .map_err(|e| NetlinkError::new(format!("rename link #{index} to {name}"), e))
}

/// Renames a link that is down and sets its up state, in one request (the
/// kernel renames before it changes the flags).
pub async fn rename_set_up(handle: &Handle, index: u32, name: &str, up: bool) -> Result<()> {
    let msg = LinkUnspec::new_with_index(index).name(name.to_string());
    let msg = if up { msg.up() } else { msg.down() };
    handle
        .link()
        .set(msg.build())
        .execute()
        .await
        .map_err(|e| NetlinkError::new(format!("rename link #{index} to {name} (up={up})"), e))
}

pub async fn set_up(handle: &Handle, index: u32, up: bool) -> Result<()> {
    let msg = LinkUnspec::new_with_index(index);
    let msg = if up { msg.up() } else { msg.down() };
    handle
        .link()
        .set(msg.build())
        .execute()
        .await
        .map_err(|e| NetlinkError::new(format!("set link #{index} up={up}"), e))
}

/// Creates a veth pair in the current namespace: `name` carries `mac`.
pub async fn create_veth(
    handle: &Handle,
    name: &str,
    peer: &str,
    mac: &[u8],
    mtu: u32,
) -> Result<()> {
    let mut msg = LinkVeth::new(name, peer)
        .mtu(mtu)
        .address(mac.to_vec())
        .build();
    // The peer inherits the MTU only if asked; a split must not change it.
    for attr in msg.attributes.iter_mut() {
        if let LinkAttribute::LinkInfo(infos) = attr {
            for info in infos.iter_mut() {
                if let LinkInfo::Data(netlink_packet_route::link::InfoData::Veth(
                    netlink_packet_route::link::InfoVeth::Peer(peer_msg),
                )) = info
                {
                    peer_msg.attributes.push(LinkAttribute::Mtu(mtu));
                }
            }
        }
    }
    handle
        .link()
        .add(msg)
        .execute()
        .await
        .map_err(|e| NetlinkError::new(format!("create veth pair {name}/{peer}"), e))
}

pub async fn delete_link(handle: &Handle, index: u32) -> Result<()> {
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(err) if errno_of(&err) == Some(libc::ENODEV) => Ok(()),
        Err(err) => Err(NetlinkError::new(format!("delete link #{index}"), err)),
    }
}

/// Adds `addresses` to link `index`; already present ones are fine, so a
/// retried step converges. IPv6 addresses get `nodad`: they already passed
/// duplicate detection on the original link. For putting addresses back on
/// the original link, use [`restore_addresses`].
pub async fn add_addresses(
    handle: &Handle,
    index: u32,
    addresses: &[AddressMessage],
) -> Result<()> {
    add_addresses_with(handle, index, addresses, true).await
}

/// Puts `addresses` back on link `index` with exactly the flags they had.
pub async fn restore_addresses(
    handle: &Handle,
    index: u32,
    addresses: &[AddressMessage],
) -> Result<()> {
    add_addresses_with(handle, index, addresses, false).await
}

async fn add_addresses_with(
    handle: &Handle,
    index: u32,
    addresses: &[AddressMessage],
    nodad: bool,
) -> Result<()> {
    for original in addresses {
        let msg = retarget_address(original, index, nodad);
        let describe = describe_address(&msg);
        let mut req = handle
            .address()
            .add(index, std::net::Ipv4Addr::UNSPECIFIED.into(), 0);
        *req.message_mut() = msg;
        req.replace().execute().await.map_err(|e| {
            NetlinkError::new(format!("add address {describe} to link #{index}"), e)
        })?;
    }
    Ok(())
}

/// Removes `addresses` from the link they were captured on; already absent
/// ones are fine (IPv6 addresses vanish by themselves when a link goes down).
pub async fn remove_addresses(handle: &Handle, addresses: &[AddressMessage]) -> Result<()> {
    for addr in addresses {
        // The kernel matches a label too, and the label followed the rename.
        let mut addr = addr.clone();
        addr.attributes
            .retain(|a| matches!(a, AddressAttribute::Address(_) | AddressAttribute::Local(_)));
        match handle.address().del(addr.clone()).execute().await {
            Ok(()) => {}
            Err(err)
                if matches!(
                    errno_of(&err),
                    Some(libc::EADDRNOTAVAIL | libc::ENODEV | libc::ENOENT)
                ) => {}
            Err(err) => {
                return Err(NetlinkError::new(
                    format!("remove address {}", describe_address(&addr)),
                    err,
                ));
            }
        }
    }
    Ok(())
}

fn retarget_address(original: &AddressMessage, index: u32, nodad: bool) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header = original.header.clone();
    msg.header.index = index;
    let v6 = original.header.family == AddressFamily::Inet6;
    let mut flags = AddressFlags::Permanent;
    for attr in &original.attributes {
        match attr {
            AddressAttribute::Address(_)
            | AddressAttribute::Local(_)
            | AddressAttribute::Broadcast(_)
            | AddressAttribute::Anycast(_)
            | AddressAttribute::RoutePriority(_) => msg.attributes.push(attr.clone()),
            AddressAttribute::Flags(f) => {
                flags = *f
                    & (AddressFlags::Noprefixroute
                        | AddressFlags::Managetempaddr
                        | AddressFlags::Permanent
                        | AddressFlags::Nodad
                        | AddressFlags::Secondary)
            }
            _ => {}
        }
    }
    // The address already passed duplicate detection on the original link.
    if v6 && nodad {
        flags |= AddressFlags::Nodad;
    }
    msg.attributes.push(AddressAttribute::Flags(flags));
    msg
}

/// A netlink message as hex, to keep it in node state exactly as the kernel
/// gave it.
pub fn encode_message<M: netlink_packet_core::Emitable>(msg: &M) -> String {
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.emit(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

pub fn decode_address(text: &str) -> Option<AddressMessage> {
    use netlink_packet_core::Parseable;
    AddressMessage::parse(decode_hex(text)?.as_slice()).ok()
}

pub fn decode_route(text: &str) -> Option<RouteMessage> {
    use netlink_packet_core::Parseable;
    RouteMessage::parse(decode_hex(text)?.as_slice()).ok()
}

pub fn describe_address(addr: &AddressMessage) -> String {
    let ip = addr.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    match ip {
        Some(ip) => format!("{ip}/{}", addr.header.prefix_len),
        None => format!("(unnamed)/{}", addr.header.prefix_len),
    }
}

/// Adds `routes` through link `index`, replacing equal ones so a retried step
/// converges.
pub async fn add_routes(handle: &Handle, index: u32, routes: &[RouteMessage]) -> Result<()> {
    for original in routes {
        let msg = retarget_route(original, index);
        let describe = describe_route(&msg);
        handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|e| NetlinkError::new(format!("add route {describe} via link #{index}"), e))?;
    }
    Ok(())
}

fn retarget_route(original: &RouteMessage, index: u32) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header = RouteHeader {
        flags: original.header.flags & RouteFlags::Onlink,
        ..original.header.clone()
    };
    for attr in &original.attributes {
        match attr {
            RouteAttribute::Oif(_) => msg.attributes.push(RouteAttribute::Oif(index)),
            RouteAttribute::Destination(_)
            | RouteAttribute::Source(_)
            | RouteAttribute::Gateway(_)
            | RouteAttribute::PrefSource(_)
            | RouteAttribute::Via(_)
            | RouteAttribute::Priority(_)
            | RouteAttribute::Table(_)
            | RouteAttribute::Metrics(_)
            | RouteAttribute::Preference(_)
            | RouteAttribute::Realm(_)
            | RouteAttribute::EncapType(_)
            | RouteAttribute::Encap(_) => msg.attributes.push(attr.clone()),
            _ => {}
        }
    }
    msg
}

pub fn describe_route(route: &RouteMessage) -> String {
    let mut dst = String::from("default");
    let mut via = String::new();
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Destination(d) => {
                dst = format!("{d:?}/{}", route.header.destination_prefix_length)
            }
            RouteAttribute::Gateway(g) => via = format!(" via {g:?}"),
            _ => {}
        }
    }
    format!("{dst}{via}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::route::RouteAddress;

    #[test]
    fn retargeted_route_points_at_new_link_and_drops_kernel_only_attributes() {
        let mut original = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::new(10, 1, 0, 0), 16)
            .gateway(Ipv4Addr::new(10, 244, 1, 1))
            .output_interface(7)
            .build();
        original.header.flags = RouteFlags::Onlink | RouteFlags::Linkdown;
        original.attributes.push(RouteAttribute::Expires(10));
        let moved = retarget_route(&original, 42);
        assert_eq!(route_oif(&moved), Some(42));
        assert_eq!(moved.header.flags, RouteFlags::Onlink);
        assert!(
            !moved
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Expires(_)))
        );
        assert!(moved.attributes.iter().any(
            |a| matches!(a, RouteAttribute::Gateway(RouteAddress::Inet(g)) if *g == Ipv4Addr::new(10, 244, 1, 1))
        ));
        assert_eq!(
            describe_route(&moved),
            "Inet(10.1.0.0)/16 via Inet(10.244.1.1)"
        );
    }

    #[test]
    fn messages_survive_hex_round_trip() {
        let mut addr = AddressMessage::default();
        addr.header.family = AddressFamily::Inet6;
        addr.header.prefix_len = 64;
        addr.header.index = 3;
        addr.attributes
            .push(AddressAttribute::Address("fd00::5".parse().unwrap()));
        addr.attributes
            .push(AddressAttribute::Flags(AddressFlags::Noprefixroute));
        assert_eq!(decode_address(&encode_message(&addr)), Some(addr));
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(Ipv4Addr::new(10, 244, 1, 1))
            .output_interface(7)
            .build();
        assert_eq!(decode_route(&encode_message(&route)), Some(route));
        assert_eq!(decode_address("zz"), None);
        assert_eq!(decode_address("0"), None);
    }

    #[test]
    fn retargeted_ipv6_address_skips_duplicate_detection_and_keeps_prefix() {
        let mut original = AddressMessage::default();
        original.header.family = AddressFamily::Inet6;
        original.header.prefix_len = 64;
        original.header.index = 3;
        original
            .attributes
            .push(AddressAttribute::Address("fd00::5".parse().unwrap()));
        original
            .attributes
            .push(AddressAttribute::Label("eth0".into()));
        let restored = retarget_address(&original, 9, false);
        assert!(
            restored
                .attributes
                .contains(&AddressAttribute::Flags(AddressFlags::Permanent))
        );
        let moved = retarget_address(&original, 9, true);
        assert_eq!(moved.header.index, 9);
        assert_eq!(moved.header.prefix_len, 64);
        assert!(
            !moved
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Label(_)))
        );
        let flags = moved.attributes.iter().find_map(|a| match a {
            AddressAttribute::Flags(f) => Some(*f),
            _ => None,
        });
        assert_eq!(flags, Some(AddressFlags::Permanent | AddressFlags::Nodad));
        assert_eq!(describe_address(&moved), "fd00::5/64");
    }
}
