//! The veth split inside the pod's namespace, and its undo.
//!
//! Before: `eth0` (veth, peer on the host bridge) holds the pod's IPs.
//! After:  `wx-eth0` is that same device renamed (its peer still on the
//! bridge); a new pair `eth0` <-> `wi-eth0` carries the pod's MAC, MTU,
//! per-interface sysctls, addresses and routes; tc programs on `wx-eth0` and
//! `wi-eth0` ingress move frames between the halves and count them.
//!
//! Every step is recorded in [`Progress`] so that a failure anywhere puts the
//! namespace back exactly as it was found.

use std::fmt;
use std::str::FromStr;

use rtnetlink::Handle;
use tracing::debug;
use weir_ebpf::{AttachMode, BpfRoot, SplitParams};

use crate::iface::{self, Link, Snapshot};
use crate::sysctl;

/// The three interface names of one split, derived from CNI_IFNAME so a pod
/// with several interfaces gets one split per interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub pod: String,
    pub outer: String,
    pub inner: String,
}

impl Names {
    /// `None` when the prefixed names would exceed the kernel's 15 bytes.
    pub fn for_ifname(ifname: &str) -> Option<Self> {
        let outer = format!("wx-{ifname}");
        (outer.len() <= 15).then(|| Self {
            pod: ifname.to_string(),
            outer,
            inner: format!("wi-{ifname}"),
        })
    }
}

/// The steps of a split, in order. Named so a test can fail right after any
/// one of them through the network config's `faultInjection.failAt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Rename,
    CreatePair,
    /// The new device takes the original's per-interface sysctls.
    CopySysctls,
    LinkUp,
    Attach,
    MoveAddresses,
    MoveRoutes,
    /// Outside the namespace: writing the node state record.
    WriteState,
}

impl Step {
    pub const ALL: [Step; 8] = [
        Step::Rename,
        Step::CreatePair,
        Step::CopySysctls,
        Step::LinkUp,
        Step::Attach,
        Step::MoveAddresses,
        Step::MoveRoutes,
        Step::WriteState,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Rename => "rename",
            Step::CreatePair => "create-pair",
            Step::CopySysctls => "copy-sysctls",
            Step::LinkUp => "link-up",
            Step::Attach => "attach",
            Step::MoveAddresses => "move-addresses",
            Step::MoveRoutes => "move-routes",
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

/// What the split needs besides the netlink handle.
pub struct SplitRequest<'a> {
    pub names: &'a Names,
    pub bpf_root: &'a BpfRoot,
    pub attachment_id: &'a str,
    pub pod_id: u32,
    pub attach_mode: AttachMode,
    pub fail_after: Option<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub pod_ifindex: u32,
    pub outer_ifindex: u32,
    pub inner_ifindex: u32,
    pub attach_mode: AttachMode,
    pub mac: Vec<u8>,
}

#[derive(Debug)]
pub enum SplitOutcome {
    Split(Split),
    /// The interface cannot be split safely; nothing was changed.
    PassThrough(String),
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

/// The step a split stopped at, and why.
#[derive(Debug)]
struct StepFailed {
    step: Step,
    cause: String,
}

#[derive(Default)]
struct Progress {
    renamed: bool,
    pair_created: bool,
    attach_mode: Option<AttachMode>,
}

pub async fn split(handle: &Handle, req: &SplitRequest<'_>) -> Result<SplitOutcome, SplitError> {
    let names = req.names;
    let lookup_failed = |cause: String| SplitError {
        ifname: names.pod.clone(),
        step: Step::Rename,
        cause,
        restore_failures: Vec::new(),
    };
    let Some(original) = iface::link_by_name(handle, &names.pod)
        .await
        .map_err(|e| lookup_failed(e.to_string()))?
    else {
        return Ok(SplitOutcome::PassThrough(format!(
            "no interface {} in the pod namespace",
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
    for taken in [&names.outer, &names.inner] {
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

    let mut progress = Progress::default();
    match run_steps(handle, req, &snapshot, &mut progress).await {
        Ok(split) => Ok(SplitOutcome::Split(split)),
        Err(StepFailed { step, cause }) => {
            let restore_failures = restore(handle, req, &snapshot, &progress).await;
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
    snap: &Snapshot,
    progress: &mut Progress,
) -> Result<Split, StepFailed> {
    let names = req.names;
    let original = &snap.link;
    let fault = |step: Step| -> Result<(), StepFailed> {
        if req.fail_after == Some(step) {
            Err(StepFailed {
                step,
                cause: format!("fault injected after step {step}"),
            })
        } else {
            Ok(())
        }
    };
    let at = |step: Step| {
        move |e: iface::NetlinkError| StepFailed {
            step,
            cause: e.to_string(),
        }
    };

    iface::rename_down(handle, original.index, &names.outer)
        .await
        .map_err(at(Step::Rename))?;
    progress.renamed = true;
    fault(Step::Rename)?;

    iface::create_veth(
        handle,
        &names.pod,
        &names.inner,
        &original.mac,
        original.mtu,
    )
    .await
    .map_err(at(Step::CreatePair))?;
    progress.pair_created = true;
    let pod = require_link(handle, &names.pod)
        .await
        .map_err(at_msg(Step::CreatePair))?;
    let inner = require_link(handle, &names.inner)
        .await
        .map_err(at_msg(Step::CreatePair))?;
    fault(Step::CreatePair)?;

    // Before the link comes up and the addresses arrive: settings such as
    // disable_ipv6, addr_gen_mode, accept_dad or accept_ra decide what the
    // kernel does at those moments. Blocking file I/O is right here: this
    // thread is the one inside the pod's namespace.
    let started = std::time::Instant::now();
    let copied = sysctl::copy_settings(
        std::path::Path::new(sysctl::PROC_SYS_NET),
        &names.outer,
        &names.pod,
    )
    .map_err(|e| StepFailed {
        step: Step::CopySysctls,
        cause: e.to_string(),
    })?;
    for c in &copied {
        debug!(
            "sysctl net.{}.{}.{}.{}: {} -> {} (from {})",
            c.family,
            c.table,
            names.pod,
            c.name,
            c.was.as_deref().unwrap_or("?"),
            c.value,
            names.outer
        );
    }
    debug!(
        copied = copied.len(),
        micros = started.elapsed().as_micros() as u64,
        "per-interface sysctls compared and copied"
    );
    fault(Step::CopySysctls)?;

    iface::set_up(handle, original.index, true)
        .await
        .map_err(at(Step::LinkUp))?;
    iface::set_up(handle, inner.index, true)
        .await
        .map_err(at(Step::LinkUp))?;
    iface::set_up(handle, pod.index, original.up)
        .await
        .map_err(at(Step::LinkUp))?;
    fault(Step::LinkUp)?;

    let params = SplitParams {
        pod_id: req.pod_id,
        wx_ifindex: original.index,
        wi_ifindex: inner.index,
        outbound_via_peer: original.peer_netns_id.is_some(),
    };
    let mode = weir_ebpf::split::attach(req.bpf_root, req.attachment_id, &params, req.attach_mode)
        .map_err(|e| StepFailed {
            step: Step::Attach,
            cause: e.to_string(),
        })?;
    progress.attach_mode = Some(mode);
    fault(Step::Attach)?;

    iface::remove_addresses(handle, &snap.addresses)
        .await
        .map_err(at(Step::MoveAddresses))?;
    iface::add_addresses(handle, pod.index, &snap.addresses)
        .await
        .map_err(at(Step::MoveAddresses))?;
    fault(Step::MoveAddresses)?;

    iface::add_routes(handle, pod.index, &snap.routes)
        .await
        .map_err(at(Step::MoveRoutes))?;
    fault(Step::MoveRoutes)?;

    Ok(Split {
        pod_ifindex: pod.index,
        outer_ifindex: original.index,
        inner_ifindex: inner.index,
        attach_mode: mode,
        mac: original.mac.clone(),
    })
}

fn at_msg(step: Step) -> impl Fn(String) -> StepFailed {
    move |cause| StepFailed { step, cause }
}

async fn require_link(handle: &Handle, name: &str) -> Result<Link, String> {
    match iface::link_by_name(handle, name).await {
        Ok(Some(link)) => Ok(link),
        Ok(None) => Err(format!("{name} vanished right after it was created")),
        Err(e) => Err(e.to_string()),
    }
}

/// Puts the namespace back as `snap` describes it. Keeps going after a failed
/// action so one problem does not leave the rest undone; returns what failed.
async fn restore(
    handle: &Handle,
    req: &SplitRequest<'_>,
    snap: &Snapshot,
    progress: &Progress,
) -> Vec<String> {
    let names = req.names;
    let original = &snap.link;
    let mut failures = Vec::new();
    if let Some(mode) = progress.attach_mode
        && let Err(e) = weir_ebpf::split::detach(req.bpf_root, req.attachment_id, mode)
    {
        failures.push(format!("detach programs: {e}"));
    }
    if progress.pair_created {
        match iface::link_by_name(handle, &names.pod).await {
            Ok(Some(pod)) if pod.index != original.index => {
                if let Err(e) = iface::delete_link(handle, pod.index).await {
                    failures.push(e.to_string());
                }
            }
            Ok(_) => {}
            Err(e) => failures.push(e.to_string()),
        }
    }
    if progress.renamed
        && let Err(e) = iface::rename_down(handle, original.index, &original.name).await
    {
        failures.push(e.to_string());
    }
    failures.extend(reapply(handle, original.index, snap).await);
    failures
}

/// Gives link `index` the addresses, routes and up state of `snap`.
async fn reapply(handle: &Handle, index: u32, snap: &Snapshot) -> Vec<String> {
    let mut failures = Vec::new();
    if let Err(e) = iface::add_addresses(handle, index, &snap.addresses).await {
        failures.push(e.to_string());
    }
    if let Err(e) = iface::set_up(handle, index, snap.link.up).await {
        failures.push(e.to_string());
    }
    if snap.link.up
        && let Err(e) = iface::add_routes(handle, index, &snap.routes).await
    {
        failures.push(e.to_string());
    }
    failures
}

/// Undoes a split for DEL so the plugins before weir find the interface they
/// created under its own name, with its addresses (bridge's DEL reads them to
/// tear down masquerading). Missing pieces are not errors: DEL is idempotent.
pub async fn unsplit(
    handle: &Handle,
    names: &Names,
    bpf_root: &BpfRoot,
    attachment_id: &str,
    mode: Option<AttachMode>,
) -> Result<bool, String> {
    if let Some(mode) = mode {
        weir_ebpf::split::detach(bpf_root, attachment_id, mode)
            .map_err(|e| format!("detach programs: {e}"))?;
    }
    let Some(outer) = iface::link_by_name(handle, &names.outer)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(false);
    };
    let pod = iface::link_by_name(handle, &names.pod)
        .await
        .map_err(|e| e.to_string())?;
    let moved = match pod {
        Some(pod) if pod.index != outer.index => {
            let snap = iface::capture(handle, pod.clone())
                .await
                .map_err(|e| e.to_string())?;
            iface::delete_link(handle, pod.index)
                .await
                .map_err(|e| e.to_string())?;
            Some(snap)
        }
        _ => None,
    };
    // The inner end goes with the pod end; this covers a pair left half-made.
    if let Some(inner) = iface::link_by_name(handle, &names.inner)
        .await
        .map_err(|e| e.to_string())?
    {
        iface::delete_link(handle, inner.index)
            .await
            .map_err(|e| e.to_string())?;
    }
    iface::rename_down(handle, outer.index, &names.pod)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(snap) = moved {
        let failures = reapply(handle, outer.index, &snap).await;
        if !failures.is_empty() {
            return Err(failures.join("; "));
        }
    } else {
        iface::set_up(handle, outer.index, true)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(true)
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
