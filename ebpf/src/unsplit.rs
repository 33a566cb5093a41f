//! Undoing a pod interface's split from node state and what the pod's
//! namespace holds: the one function behind the CNI plugin's rollback of a
//! failed step, DEL, a retried ADD and GC, and behind the node agent's
//! repair of ADDs that died half-way ([`crate::repair`]). It lives here, not
//! in the plugin, so the agent needs no plugin crate.
//!
//! Must run on a thread inside the pod's network namespace
//! ([`crate::netns::run_in`]).

use rtnetlink::Handle;
use tracing::{debug, warn};
use weir_node_state::OriginalLink;

use crate::iface::{self, Link, Snapshot};
use crate::{AttachMode, BpfRoot};

/// The per-interface sysctl tree.
const PROC_SYS_NET: &str = "/proc/sys/net";

/// The interface names of one split, derived from CNI_IFNAME so a pod with
/// several interfaces gets one split per interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub pod: String,
    pub outer: String,
    pub inner: String,
    /// The new pod-side device's name until the swap.
    pub temp: String,
}

impl Names {
    /// `None` when the prefixed names would exceed the kernel's 15 bytes.
    pub fn for_ifname(ifname: &str) -> Option<Self> {
        let outer = format!("wx-{ifname}");
        (outer.len() <= 15).then(|| Self {
            pod: ifname.to_string(),
            outer,
            inner: format!("wi-{ifname}"),
            temp: format!("wt-{ifname}"),
        })
    }
}

/// The pod's original interface as ADD found it.
#[derive(Debug, Clone)]
pub struct Original {
    pub snapshot: Snapshot,
    /// `net.ipv6.conf.<if>.disable_ipv6`, when the kernel has IPv6.
    pub disable_ipv6: Option<String>,
}

impl Original {
    pub fn to_record(&self) -> OriginalLink {
        OriginalLink {
            ifindex: self.snapshot.link.index,
            name: self.snapshot.link.name.clone(),
            up: self.snapshot.link.up,
            disable_ipv6: self.disable_ipv6.clone(),
            addresses: self
                .snapshot
                .addresses
                .iter()
                .map(iface::encode_message)
                .collect(),
            routes: self
                .snapshot
                .routes
                .iter()
                .map(iface::encode_message)
                .collect(),
        }
    }

    /// `None` when a stored message does not decode (then DEL falls back to
    /// what the namespace holds).
    pub fn from_record(r: &OriginalLink, mac: &str) -> Option<Self> {
        let addresses = r
            .addresses
            .iter()
            .map(|a| iface::decode_address(a))
            .collect::<Option<Vec<_>>>()?;
        let routes = r
            .routes
            .iter()
            .map(|a| iface::decode_route(a))
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            snapshot: Snapshot {
                link: Link {
                    index: r.ifindex,
                    name: r.name.clone(),
                    mac: parse_mac(mac).unwrap_or_default(),
                    mtu: 0,
                    up: r.up,
                    kind: None,
                    peer_index: None,
                    peer_netns_id: None,
                },
                addresses,
                routes,
            },
            disable_ipv6: r.disable_ipv6.clone(),
        })
    }
}

/// The sysctl that silences a split half.
pub const DISABLE_IPV6: &str = "disable_ipv6";

fn ipv6_conf(dev: &str, name: &str) -> std::path::PathBuf {
    std::path::Path::new(PROC_SYS_NET)
        .join("ipv6/conf")
        .join(dev)
        .join(name)
}

/// A per-device IPv6 setting; `None` without IPv6 in the kernel.
pub fn read_ipv6_conf(dev: &str, name: &str) -> Option<String> {
    std::fs::read_to_string(ipv6_conf(dev, name))
        .ok()
        .map(|s| s.trim().to_string())
}

fn write_ipv6_conf(dev: &str, name: &str, value: &str) -> Result<(), String> {
    let path = ipv6_conf(dev, name);
    if !path.exists() {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(|e| format!("writing {value} to {}: {e}", path.display()))
}

/// No IPv6 of its own on a split half: no link-local address, no RS, MLD or
/// NS. (IPv4 is silent already: the halves have no IPv4 address.)
pub fn silence(dev: &str) -> Result<(), String> {
    write_ipv6_conf(dev, DISABLE_IPV6, "1")
}

/// Puts the namespace back as the pod had it before weir: from `original`
/// (the journal) when there is one, else from what the namespace holds
/// (the split's own `<if>` carries the pod's addresses and routes). Used
/// for every undo: a failed step, DEL, a retried ADD, GC and the agent's
/// repair of an ADD that died. Removes weir's stubs from the devices by
/// program name too, so it works without pins. Keeps going after a failed
/// action; returns what failed. Missing pieces are not failures.
pub async fn undo(
    handle: &Handle,
    names: &Names,
    original: Option<&Original>,
    bpf_root: &BpfRoot,
    attachment_id: &str,
) -> Vec<String> {
    let mut failures = Vec::new();
    let mut fail = |what: String| failures.push(what);
    // Pinned programs and links first (TCX links live in their pins) ...
    if let Err(e) = crate::split::detach(bpf_root, attachment_id, AttachMode::Netlink) {
        debug!("detaching by pins: {e}; removing weir's filters by name");
    }
    let lookup = |name: String| async move { iface::link_by_name(handle, &name).await };
    let orig_link = match original {
        Some(o) => match iface::link_by_index(handle, o.snapshot.link.index).await {
            Ok(Some(l))
                if l.is_veth()
                    && (o.snapshot.link.mac.is_empty() || l.mac == o.snapshot.link.mac) =>
            {
                Some(l)
            }
            Ok(_) => None,
            Err(e) => {
                fail(e.to_string());
                None
            }
        },
        None => match lookup(names.outer.clone()).await {
            Ok(l) => l.filter(Link::is_veth),
            Err(e) => {
                fail(e.to_string());
                None
            }
        },
    };
    let inner = match lookup(names.inner.clone()).await {
        Ok(l) => l.filter(Link::is_veth),
        Err(e) => {
            fail(e.to_string());
            None
        }
    };
    // ... then any stub still hooked on a device (no pins: bpffs unmounted,
    // bpfRoot removed, or a build that pinned elsewhere).
    let mut hooked: Vec<u32> = orig_link.iter().map(|l| l.index).collect();
    hooked.extend(inner.iter().map(|l| l.index));
    if let Ok(Some(l)) = lookup(names.pod.clone()).await {
        hooked.push(l.index);
    }
    for ifindex in hooked {
        if let Err(e) = crate::split::delete_stub_filters(ifindex) {
            fail(format!(
                "removing weir's tc filters from ifindex {ifindex}: {e}"
            ));
        }
    }

    // The new pod-side device (named <if> after the swap, wt-<if> before).
    let mut fallback: Option<Original> = None;
    let mut touched = false;
    for name in [&names.pod, &names.temp] {
        let link = match lookup(name.clone()).await {
            Ok(Some(l)) if l.is_veth() => l,
            Ok(_) => continue,
            Err(e) => {
                fail(e.to_string());
                continue;
            }
        };
        let ours = orig_link.as_ref().is_some_and(|o| o.index != link.index)
            || inner
                .as_ref()
                .is_some_and(|i| link.peer_index == Some(i.index) && link.peer_netns_id.is_none());
        if !ours {
            continue;
        }
        if original.is_none() && name == &names.pod {
            match iface::capture(handle, link.clone()).await {
                Ok(snapshot) => {
                    fallback = Some(Original {
                        disable_ipv6: read_ipv6_conf(&link.name, DISABLE_IPV6),
                        snapshot,
                    })
                }
                Err(e) => fail(e.to_string()),
            }
        }
        if let Err(e) = iface::delete_link(handle, link.index).await {
            fail(e.to_string());
        }
        touched = true;
    }
    if let Some(inner) = &inner {
        if let Err(e) = iface::delete_link(handle, inner.index).await {
            fail(e.to_string());
        }
        touched = true;
    }

    if let Some(orig) = &orig_link {
        if orig.name != names.pod {
            touched = true;
            if let Err(e) = iface::rename_down(handle, orig.index, &names.pod).await {
                fail(e.to_string());
            }
        }
        let source = original.or(fallback.as_ref());
        let disable = source
            .and_then(|o| o.disable_ipv6.clone())
            .unwrap_or_else(|| "0".into());
        if (touched || original.is_some())
            && read_ipv6_conf(&names.pod, DISABLE_IPV6).is_some_and(|v| v != disable)
            && let Err(e) = write_ipv6_conf(&names.pod, DISABLE_IPV6, &disable)
        {
            fail(e);
        }
        match source {
            Some(o) if touched || original.is_some() => {
                let snap = &o.snapshot;
                if let Err(e) = iface::restore_addresses(handle, orig.index, &snap.addresses).await
                {
                    fail(e.to_string());
                }
                let up = if original.is_some() {
                    snap.link.up
                } else {
                    true
                };
                if let Err(e) = iface::set_up(handle, orig.index, up).await {
                    fail(e.to_string());
                }
                if up && let Err(e) = iface::add_routes(handle, orig.index, &snap.routes).await {
                    fail(e.to_string());
                }
            }
            _ if touched => {
                if let Err(e) = iface::set_up(handle, orig.index, true).await {
                    fail(e.to_string());
                }
            }
            _ => {}
        }
    } else if original.is_some() && touched {
        warn!(
            "the pod's original {} is gone; removed weir's devices only",
            names.pod
        );
    }
    if let Err(e) = crate::split::remove_pins(bpf_root, attachment_id) {
        debug!("removing pins of {attachment_id}: {e}");
    }
    failures
}

/// Whether the namespace holds any device of a split of `names` (complete or
/// half-made): what CHECK reports when no record explains it.
pub async fn split_devices(handle: &Handle, names: &Names) -> Result<Vec<String>, String> {
    let mut found = Vec::new();
    for name in [&names.outer, &names.inner, &names.temp] {
        if iface::link_by_name(handle, name)
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            found.push(name.clone());
        }
    }
    Ok(found)
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(text: &str) -> Option<Vec<u8>> {
    let bytes: Option<Vec<u8>> = text
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect();
    bytes.filter(|b| b.len() == 6)
}
