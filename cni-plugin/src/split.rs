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
use tracing::debug;
use weir_ebpf::{AttachMode, BpfRoot, SplitParams};

use crate::iface::{self, Link};
use crate::sysctl;
pub use weir_ebpf::unsplit::{
    DISABLE_IPV6, Names, Original, format_mac, parse_mac, read_ipv6_conf, silence, split_devices,
    undo,
};

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
