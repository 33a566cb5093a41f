//! The veth split inside the pod's namespace, and its undo.
//!
//! Before: `eth0` (veth, peer on the host bridge) holds the pod's IPs.
//! After:  `wx-eth0` is that same device renamed (its peer still on the
//! bridge); a new pair `eth0` <-> `wi-eth0` carries the pod's MAC, MTU,
//! per-interface sysctls, addresses and routes; tc programs on `wx-eth0` and
//! `wi-eth0` ingress move frames between the halves and count them.
//!
//! Crash consistency: the caller's journal holds the original interface's
//! exact configuration before the first change ([`Hooks::journal`]). The new
//! pair is then prepared completely while the pod keeps working on its
//! original `eth0` (under the temporary name `wt-eth0`: MAC, MTU, sysctls,
//! addresses; the stubs loaded), and only then swapped in: rename the
//! original away, rename the new device in, routes (the pod has its default
//! route again), attach the stubs, original's half up — a handful of netlink
//! requests and nothing else. Whatever moment a
//! process dies at, [`undo`] puts the namespace back from the journal and
//! what it finds in the namespace; the same function rolls back a failed
//! step, undoes a split on DEL, and repairs orphans for GC and the agent.
//!
//! The split's own halves are silent: IPv6 is disabled on `wx-` and `wi-`
//! before they come up, so they send no router solicitations, MLD reports or
//! neighbour solicitations of their own; only the pod's `eth0` speaks.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use rtnetlink::Handle;
use tracing::{debug, warn};
use weir_ebpf::{AttachMode, BpfRoot, SplitParams};

use crate::iface::{self, Link, Snapshot};
use crate::sysctl;
use weir_node_state::OriginalLink;

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

/// The steps of a split, in order. Named so a test can fail right after any
/// one of them (`faultInjection.failAt`) or stop the process there
/// (`faultInjection.pauseAt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Outside the namespace: the intent and the original interface are
    /// recorded in node state (phase `adding`).
    Journal,
    /// The new pair `wt-<if>`/`wi-<if>`, with the original's MAC and MTU.
    CreatePair,
    /// The new device takes the original's per-interface sysctls; `wi-`
    /// gets IPv6 disabled.
    CopySysctls,
    /// `wi-<if>` up.
    LinkUp,
    /// The pod's addresses on the new device (still down, still `wt-`).
    PrepareAddresses,
    /// The stubs loaded and verified (the node program too, on first use).
    Load,
    /// The swap starts: the original becomes `wx-<if>` (down).
    Rename,
    /// `wx-<if>` gives up its IPv4 addresses and gets IPv6 disabled.
    ReleaseOriginal,
    /// The new device becomes `<if>` and comes up.
    RenameNew,
    /// The routes through the new `<if>`.
    MoveRoutes,
    /// The stubs on `wx-` and `wi-` ingress.
    Attach,
    /// `wx-<if>` up: the swap is over.
    OuterUp,
    /// Outside the namespace: the record rewritten as complete.
    WriteState,
}

impl Step {
    pub const ALL: [Step; 13] = [
        Step::Journal,
        Step::CreatePair,
        Step::CopySysctls,
        Step::LinkUp,
        Step::PrepareAddresses,
        Step::Load,
        Step::Rename,
        Step::ReleaseOriginal,
        Step::RenameNew,
        Step::MoveRoutes,
        Step::Attach,
        Step::OuterUp,
        Step::WriteState,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Journal => "journal",
            Step::CreatePair => "create-pair",
            Step::CopySysctls => "copy-sysctls",
            Step::LinkUp => "link-up",
            Step::PrepareAddresses => "prepare-addresses",
            Step::Load => "load",
            Step::Rename => "rename",
            Step::ReleaseOriginal => "release-original",
            Step::Attach => "attach",
            Step::RenameNew => "rename-new",
            Step::MoveRoutes => "move-routes",
            Step::OuterUp => "outer-up",
            Step::WriteState => "write-state",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Step {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Step::ALL
            .into_iter()
            .find(|step| step.name() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Step::ALL.iter().map(|s| s.name()).collect();
                format!("unknown step {s:?}; known steps: {}", known.join(", "))
            })
    }
}

/// What the caller does at the split's journal point and after each step.
pub trait Hooks: Send + Sync {
    /// Records the intent and `original` durably; runs before any change.
    fn journal(&self, original: &Original) -> Result<(), String>;
    /// Runs after each step; an error fails the split at that step.
    fn after(&self, step: Step) -> Result<(), String>;
}

/// What the split needs besides the netlink handle.
pub struct SplitRequest<'a> {
    pub names: &'a Names,
    pub bpf_root: &'a BpfRoot,
    pub attachment_id: &'a str,
    pub pod_id: u32,
    pub attach_mode: AttachMode,
    pub hooks: &'a dyn Hooks,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub pod_ifindex: u32,
    pub outer_ifindex: u32,
    pub inner_ifindex: u32,
    pub attach_mode: AttachMode,
    pub mac: Vec<u8>,
    /// How long the swap took: from the original leaving to its half up
    /// again (the only time the pod has no working interface).
    pub swap: Duration,
}

#[derive(Debug)]
pub enum SplitOutcome {
    Split(Split),
    /// The interface cannot be split safely; nothing was changed.
    PassThrough(String),
    /// There is no such interface in the namespace; nothing was changed.
    Missing(String),
}

#[derive(Debug, thiserror::Error)]
#[error("split of {ifname} failed at step {step}: {cause}{}", restore_note(.restore_failures))]
pub struct SplitError {
    pub ifname: String,
    pub step: Step,
    pub cause: String,
    /// Empty when the namespace was put back exactly.
    pub restore_failures: Vec<String>,
}

fn restore_note(failures: &[String]) -> String {
    if failures.is_empty() {
        "; the pod's interface was restored".into()
    } else {
        format!("; RESTORE INCOMPLETE: {}", failures.join("; "))
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

const DISABLE_IPV6: &str = "disable_ipv6";

fn ipv6_conf(dev: &str, name: &str) -> std::path::PathBuf {
    std::path::Path::new(sysctl::PROC_SYS_NET)
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
fn silence(dev: &str) -> Result<(), String> {
    write_ipv6_conf(dev, DISABLE_IPV6, "1")
}

pub async fn split(handle: &Handle, req: &SplitRequest<'_>) -> Result<SplitOutcome, SplitError> {
    let names = req.names;
    let failed_before_change = |step: Step, cause: String| SplitError {
        ifname: names.pod.clone(),
        step,
        cause,
        restore_failures: Vec::new(),
    };
    let lookup_failed = |cause: String| failed_before_change(Step::Journal, cause);
    let Some(original) = iface::link_by_name(handle, &names.pod)
        .await
        .map_err(|e| lookup_failed(e.to_string()))?
    else {
        return Ok(SplitOutcome::Missing(format!(
            "there is no interface {} in the pod's network namespace",
            names.pod
        )));
    };
    if !original.is_veth() {
        return Ok(SplitOutcome::PassThrough(format!(
            "{} is a {} device, not a veth; weir only splits veth interfaces",
            names.pod,
            original.kind_name()
        )));
    }
    for taken in [&names.outer, &names.inner, &names.temp] {
        if iface::link_by_name(handle, taken)
            .await
            .map_err(|e| lookup_failed(e.to_string()))?
            .is_some()
        {
            return Ok(SplitOutcome::PassThrough(format!(
                "{taken} already exists in the pod namespace; refusing to touch an interface weir did not create"
            )));
        }
    }
    let snapshot = iface::capture(handle, original)
        .await
        .map_err(|e| lookup_failed(e.to_string()))?;
    let original = Original {
        disable_ipv6: read_ipv6_conf(&names.pod, DISABLE_IPV6),
        snapshot,
    };
    req.hooks
        .journal(&original)
        .map_err(|e| failed_before_change(Step::Journal, e))?;
    if let Err(cause) = req.hooks.after(Step::Journal) {
        return Err(failed_before_change(Step::Journal, cause));
    }

    match run_steps(handle, req, &original).await {
        Ok(split) => Ok(SplitOutcome::Split(split)),
        Err((step, cause)) => {
            let restore_failures = undo(
                handle,
                names,
                Some(&original),
                req.bpf_root,
                req.attachment_id,
            )
            .await;
            Err(SplitError {
                ifname: names.pod.clone(),
                step,
                cause,
                restore_failures,
            })
        }
    }
}

async fn run_steps(
    handle: &Handle,
    req: &SplitRequest<'_>,
    orig: &Original,
) -> Result<Split, (Step, String)> {
    let names = req.names;
    let snap = &orig.snapshot;
    let original = &snap.link;
    let after = |step: Step| req.hooks.after(step).map_err(|cause| (step, cause));
    let at = |step: Step| move |e: iface::NetlinkError| (step, e.to_string());

    iface::create_veth(
        handle,
        &names.temp,
        &names.inner,
        &original.mac,
        original.mtu,
    )
    .await
    .map_err(at(Step::CreatePair))?;
    let pod = require_link(handle, &names.temp)
        .await
        .map_err(at_msg(Step::CreatePair))?;
    let inner = require_link(handle, &names.inner)
        .await
        .map_err(at_msg(Step::CreatePair))?;
    after(Step::CreatePair)?;

    // Before the link comes up and the addresses arrive: settings such as
    // disable_ipv6, addr_gen_mode, accept_dad or accept_ra decide what the
    // kernel does at those moments. Blocking file I/O is right here: this
    // thread is the one inside the pod's namespace.
    let started = Instant::now();
    let copied = sysctl::copy_settings(
        std::path::Path::new(sysctl::PROC_SYS_NET),
        &names.pod,
        &names.temp,
    )
    .map_err(|e| (Step::CopySysctls, e.to_string()))?;
    for c in &copied {
        debug!(
            "sysctl net.{}.{}.{}.{}: {} -> {} (from {})",
            c.family,
            c.table,
            names.temp,
            c.name,
            c.was.as_deref().unwrap_or("?"),
            c.value,
            names.pod
        );
    }
    silence(&names.inner).map_err(|e| (Step::CopySysctls, e))?;
    debug!(
        copied = copied.len(),
        micros = started.elapsed().as_micros() as u64,
        "per-interface sysctls compared and copied"
    );
    after(Step::CopySysctls)?;

    iface::set_up(handle, inner.index, true)
        .await
        .map_err(at(Step::LinkUp))?;
    after(Step::LinkUp)?;

    iface::add_addresses(handle, pod.index, &snap.addresses)
        .await
        .map_err(at(Step::PrepareAddresses))?;
    after(Step::PrepareAddresses)?;

    let params = SplitParams {
        pod_id: req.pod_id,
        wx_ifindex: original.index,
        wi_ifindex: inner.index,
        outbound_via_peer: original.peer_netns_id.is_some(),
    };
    let stubs =
        weir_ebpf::split::load(req.bpf_root, &params).map_err(|e| (Step::Load, e.to_string()))?;
    after(Step::Load)?;

    // The swap: nothing in here but the netlink requests (and one sysctl
    // write) that replace the pod's interface.
    let swap_started = Instant::now();
    iface::rename_down(handle, original.index, &names.outer)
        .await
        .map_err(at(Step::Rename))?;
    after(Step::Rename)?;

    iface::remove_addresses(handle, &snap.addresses)
        .await
        .map_err(at(Step::ReleaseOriginal))?;
    silence(&names.outer).map_err(|e| (Step::ReleaseOriginal, e))?;
    after(Step::ReleaseOriginal)?;

    iface::rename_set_up(handle, pod.index, &names.pod, original.up)
        .await
        .map_err(at(Step::RenameNew))?;
    after(Step::RenameNew)?;

    if original.up {
        iface::add_routes(handle, pod.index, &snap.routes)
            .await
            .map_err(at(Step::MoveRoutes))?;
    }
    after(Step::MoveRoutes)?;

    // The pod has its default route again; inbound frames wait for wx- up.
    let mode = weir_ebpf::split::attach_loaded(
        req.bpf_root,
        req.attachment_id,
        &stubs,
        &params,
        req.attach_mode,
    )
    .map_err(|e| (Step::Attach, e.to_string()))?;
    after(Step::Attach)?;

    iface::set_up(handle, original.index, true)
        .await
        .map_err(at(Step::OuterUp))?;
    let swap = swap_started.elapsed();
    after(Step::OuterUp)?;

    Ok(Split {
        pod_ifindex: pod.index,
        outer_ifindex: original.index,
        inner_ifindex: inner.index,
        attach_mode: mode,
        mac: original.mac.clone(),
        swap,
    })
}

fn at_msg(step: Step) -> impl Fn(String) -> (Step, String) {
    move |msg| (step, msg)
}

async fn require_link(handle: &Handle, name: &str) -> Result<Link, String> {
    match iface::link_by_name(handle, name).await {
        Ok(Some(link)) => Ok(link),
        Ok(None) => Err(format!("{name} vanished right after it was created")),
        Err(e) => Err(e.to_string()),
    }
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
    if let Err(e) = weir_ebpf::split::detach(bpf_root, attachment_id, AttachMode::Netlink) {
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
        if let Err(e) = weir_ebpf::split::delete_stub_filters(ifindex) {
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
    if let Err(e) = weir_ebpf::split::remove_pins(bpf_root, attachment_id) {
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

/// What CHECK verifies: the three devices are there and wired as weir left
/// them, and the programs are attached to the right ifindexes.
pub async fn verify(
    handle: &Handle,
    names: &Names,
    bpf_root: &BpfRoot,
    attachment_id: &str,
    pod_id: u32,
    expected_mac: Option<&[u8]>,
) -> Result<(), String> {
    let get = |name: &str| {
        let name = name.to_string();
        async move {
            match iface::link_by_name(handle, &name).await {
                Ok(Some(link)) => Ok(link),
                Ok(None) => Err(format!("{name} is missing")),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    let outer = get(&names.outer).await?;
    let inner = get(&names.inner).await?;
    let pod = get(&names.pod).await?;
    for link in [&outer, &inner, &pod] {
        if !link.is_veth() {
            return Err(format!(
                "{} is a {} device, expected veth",
                link.name,
                link.kind_name()
            ));
        }
    }
    if pod.peer_index != Some(inner.index) || inner.peer_index != Some(pod.index) {
        return Err(format!(
            "{} and {} are not each other's peers",
            names.pod, names.inner
        ));
    }
    if let Some(mac) = expected_mac
        && pod.mac != mac
    {
        return Err(format!(
            "{} has MAC {}, expected {}",
            names.pod,
            format_mac(&pod.mac),
            format_mac(mac)
        ));
    }
    if !(outer.up && inner.up) {
        return Err(format!("{} or {} is down", names.outer, names.inner));
    }
    let params = SplitParams {
        pod_id,
        wx_ifindex: outer.index,
        wi_ifindex: inner.index,
        outbound_via_peer: outer.peer_netns_id.is_some(),
    };
    weir_ebpf::split::verify(bpf_root, attachment_id, &params).map_err(|e| e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_ifname_and_respect_kernel_limit() {
        let n = Names::for_ifname("eth0").unwrap();
        assert_eq!(
            (n.pod.as_str(), n.outer.as_str(), n.inner.as_str()),
            ("eth0", "wx-eth0", "wi-eth0")
        );
        assert!(Names::for_ifname("net1234567890").is_none());
        assert_eq!(
            Names::for_ifname("abcdefghijkl").unwrap().outer,
            "wx-abcdefghijkl"
        );
    }

    #[test]
    fn steps_round_trip_and_unknown_step_lists_known_ones() {
        for step in Step::ALL {
            assert_eq!(step.name().parse::<Step>().unwrap(), step);
        }
        let err = "bogus".parse::<Step>().unwrap_err();
        assert!(err.contains("move-routes"), "{err}");
    }

    #[test]
    fn mac_text_round_trips() {
        let mac = parse_mac("0a:58:0A:f4:00:05").unwrap();
        assert_eq!(format_mac(&mac), "0a:58:0a:f4:00:05");
        assert!(parse_mac("0a:58").is_none());
        assert!(parse_mac("zz:58:0a:f4:00:05").is_none());
    }
}
