//! The CNI commands: each validates what it needs from the request, does its
//! work in the pod's namespace, and answers with what stdout must carry.

use std::collections::HashSet;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{info, warn};
use weir_ebpf::maps::NodeMaps;
use weir_ebpf::{AttachMode, BpfRoot};

use crate::cni::{self, CniError, Command, FailurePolicy, NetConf, Request, output};
use crate::netns::{self, NetnsError};
use crate::split::{self, Names, SplitOutcome, SplitRequest, Step};
use weir_node_state::{AttachmentRecord, PodIdentity, StateStore};

/// What the process prints on stdout and exits with.
pub struct Answer {
    pub stdout: String,
    pub exit_code: i32,
}

impl Answer {
    fn ok(stdout: String) -> Self {
        Self {
            stdout,
            exit_code: 0,
        }
    }

    fn silent() -> Self {
        Self::ok(String::new())
    }

    pub fn error(err: &CniError, version: Option<cni::CniVersion>) -> Self {
        Self {
            stdout: output::error(err, version),
            exit_code: 1,
        }
    }
}

pub fn handle(req: &Request) -> Answer {
    let result = match req.command {
        Command::Version => return Answer::ok(output::version(req.version)),
        Command::Add => add(req),
        Command::Del => del(req).map(|()| Answer::silent()),
        Command::Check => check(req).map(|()| Answer::silent()),
        Command::Status => status(req).map(|()| Answer::silent()),
        Command::Gc => gc(req).map(|()| Answer::silent()),
    };
    result.unwrap_or_else(|err| {
        warn!(command = %req.command, code = err.code(), "{err}");
        Answer::error(&err, Some(req.version))
    })
}

fn bpf_root(conf: &NetConf) -> BpfRoot {
    BpfRoot::new(&conf.bpf_root)
}

fn netns_error(err: NetnsError) -> CniError {
    match err {
        NetnsError::Missing { .. } => CniError::unknown_container(err.to_string()),
        other => CniError::netns_failed(other.to_string()),
    }
}

fn fault_step(conf: &NetConf) -> Option<Step> {
    conf.fault_injection.as_ref().map(|f| f.fail_at)
}

fn add(req: &Request) -> cni::Result<Answer> {
    let conf = req.config()?;
    let prev = req.prev_result()?;
    let ifname = req.env.ifname()?;
    let container_id = req.env.container_id()?;
    let netns_path = req.env.netns()?;
    let fail_after = fault_step(conf);
    let pass_through = Answer::ok(output::add_result(prev, req.version));

    let Some(names) = Names::for_ifname(ifname) else {
        eprintln!(
            "weir: passing {ifname} through unsplit: the name is too long for the wx-/wi- prefixes (15 bytes max)"
        );
        return Ok(pass_through);
    };
    let store = StateStore::new(&conf.state_dir, &conf.name);
    let root = bpf_root(conf);
    let attachment = weir_ebpf::attachment_id(container_id, ifname);

    if let Some(existing) = store.load(container_id, ifname).map_err(state_error)? {
        // A repeated ADD converges: an intact split is kept as it is.
        if verify_in(
            netns_path,
            &names,
            &root,
            &attachment,
            existing.pod_id,
            None,
        )
        .is_ok()
        {
            info!(container_id, ifname, "ADD repeated; split already in place");
            return Ok(pass_through);
        }
        store.remove(container_id, ifname).map_err(state_error)?;
    }

    let pod_id = store.allocate_pod_id().map_err(state_error)?;
    let split_req = OwnedSplitRequest {
        names: names.clone(),
        root: root.clone(),
        attachment: attachment.clone(),
        pod_id,
        attach_mode: conf.attach_mode,
        fail_after,
    };
    let outcome = netns::run_in(netns_path, move |handle| async move {
        split::split(&handle, &split_req.borrow()).await
    })
    .map_err(netns_error)?;

    let done = match outcome {
        Ok(SplitOutcome::Split(done)) => done,
        Ok(SplitOutcome::PassThrough(reason)) => {
            eprintln!("weir: passing {ifname} through unsplit: {reason}");
            info!(container_id, ifname, "pass-through: {reason}");
            return Ok(pass_through);
        }
        Err(err) => return on_split_failure(conf, err, pass_through),
    };

    let record = AttachmentRecord {
        network: conf.name.clone(),
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
        netns: netns_path.display().to_string(),
        pod: pod_identity(req),
        pod_id,
        mac: split::format_mac(&done.mac),
        ips: prev
            .pod_ips(ifname)
            .iter()
            .map(|ip| ip.address.to_string())
            .collect(),
        attach_mode: done.attach_mode,
        pod_ifindex: done.pod_ifindex,
        outer_ifindex: done.outer_ifindex,
        inner_ifindex: done.inner_ifindex,
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let saved = if fail_after == Some(Step::WriteState) {
        Err(format!("fault injected after step {}", Step::WriteState))
    } else {
        store.save(&record).map_err(|e| e.to_string())
    };
    if let Err(cause) = saved {
        let _ = store.remove(container_id, ifname);
        let restore_failures = match undo_in(
            netns_path,
            &names,
            &root,
            &attachment,
            Some(done.attach_mode),
        ) {
            Ok(()) => Vec::new(),
            Err(e) => vec![e],
        };
        let err = split::SplitError {
            ifname: ifname.to_string(),
            step: Step::WriteState,
            cause,
            restore_failures,
        };
        return on_split_failure(conf, err, pass_through);
    }
    info!(container_id, ifname, pod_id, mode = %done.attach_mode, "split in place");
    Ok(pass_through)
}

/// The split request owns its parts so it can move onto the netns thread.
struct OwnedSplitRequest {
    names: Names,
    root: BpfRoot,
    attachment: String,
    pod_id: u32,
    attach_mode: AttachMode,
    fail_after: Option<Step>,
}

impl OwnedSplitRequest {
    fn borrow(&self) -> SplitRequest<'_> {
        SplitRequest {
            names: &self.names,
            bpf_root: &self.root,
            attachment_id: &self.attachment,
            pod_id: self.pod_id,
            attach_mode: self.attach_mode,
            fail_after: self.fail_after,
        }
    }
}

/// A failed split whose undo worked leaves the pod as the plugins before weir
/// made it: with `failurePolicy: Ignore` that pod is fine to run unobserved.
/// A failed undo is always an error, whatever the policy.
fn on_split_failure(
    conf: &NetConf,
    err: split::SplitError,
    pass_through: Answer,
) -> cni::Result<Answer> {
    if !err.restore_failures.is_empty() {
        return Err(CniError::rollback_failed(err.to_string()));
    }
    if conf.failure_policy == FailurePolicy::Ignore {
        eprintln!("weir: {err}; failurePolicy Ignore: passing prevResult through");
        warn!("{err}; failurePolicy Ignore: passing prevResult through");
        return Ok(pass_through);
    }
    Err(match err.step {
        Step::Attach => CniError::ebpf_attach_failed(err.to_string()),
        Step::WriteState => CniError::state_failed(err.to_string()),
        _ => CniError::split_failed(err.to_string()),
    })
}

fn pod_identity(req: &Request) -> PodIdentity {
    let args = &req.env.args;
    PodIdentity {
        namespace: args.pod_namespace.clone(),
        name: args.pod_name.clone(),
        uid: args.pod_uid.clone(),
        infra_container_id: args.pod_infra_container_id.clone(),
    }
}

fn state_error(err: weir_node_state::StateError) -> CniError {
    CniError::state_failed(err.to_string())
}

fn undo_in(
    netns_path: &Path,
    names: &Names,
    root: &BpfRoot,
    attachment: &str,
    mode: Option<AttachMode>,
) -> Result<(), String> {
    let (names, root, attachment) = (names.clone(), root.clone(), attachment.to_string());
    let undone = netns::run_in(netns_path, move |handle| async move {
        split::unsplit(&handle, &names, &root, &attachment, mode).await
    });
    match undone {
        Ok(result) => result.map(|_| ()),
        // The namespace is gone, and with it everything weir made inside.
        Err(NetnsError::Missing { .. }) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

fn verify_in(
    netns_path: &Path,
    names: &Names,
    root: &BpfRoot,
    attachment: &str,
    pod_id: u32,
    mac: Option<Vec<u8>>,
) -> Result<(), CniError> {
    let (names, root, attachment) = (names.clone(), root.clone(), attachment.to_string());
    netns::run_in(netns_path, move |handle| async move {
        split::verify(&handle, &names, &root, &attachment, pod_id, mac.as_deref()).await
    })
    .map_err(netns_error)?
    .map_err(|e| CniError::split_failed(format!("weir's split is not intact: {e}")))
}

/// DEL runs before the earlier plugins' DEL: it hands them back the interface
/// they made, under its own name. Everything it removes may already be gone.
fn del(req: &Request) -> cni::Result<()> {
    let conf = req.config()?;
    if let Some(ignored) = &conf.prev_result_ignored {
        warn!("DEL: ignoring unusable prevResult: {ignored}");
    }
    let ifname = req.env.ifname()?;
    let container_id = req.env.container_id()?;
    let Some(names) = Names::for_ifname(ifname) else {
        return Ok(());
    };
    let store = StateStore::new(&conf.state_dir, &conf.name);
    let record = match store.load(container_id, ifname) {
        Ok(record) => record,
        Err(e) => {
            warn!("DEL: {e}; cleaning up without it");
            None
        }
    };
    let root = bpf_root(conf);
    let attachment = weir_ebpf::attachment_id(container_id, ifname);
    let mode = record.as_ref().map(|r| r.attach_mode);
    release(
        &store,
        &root,
        &attachment,
        container_id,
        ifname,
        record.as_ref(),
        req.env.netns().ok(),
        &names,
        mode,
    )
}

/// Removes one attachment: undoes the split if its namespace still exists,
/// then unpins the programs, drops the pod's data-path config and the record.
#[allow(clippy::too_many_arguments)]
fn release(
    store: &StateStore,
    root: &BpfRoot,
    attachment: &str,
    container_id: &str,
    ifname: &str,
    record: Option<&AttachmentRecord>,
    netns_path: Option<&Path>,
    names: &Names,
    mode: Option<AttachMode>,
) -> cni::Result<()> {
    if let Some(path) = netns_path.filter(|p| netns::exists(p)) {
        undo_in(path, names, root, attachment, mode)
            .map_err(|e| CniError::split_failed(format!("undoing the split of {ifname}: {e}")))?;
    }
    weir_ebpf::split::remove_pins(root, attachment)
        .map_err(|e| CniError::state_failed(format!("removing pins of {attachment}: {e}")))?;
    if let Some(record) = record {
        // Without pinned maps there is no config to drop. The pod's flows
        // stay for the agent's last read.
        if let Ok(mut maps) = NodeMaps::open(root) {
            maps.clear_pod_mode(record.pod_id)
                .map_err(|e| CniError::state_failed(e.to_string()))?;
        }
    }
    store.remove(container_id, ifname).map_err(state_error)
}

fn check(req: &Request) -> cni::Result<()> {
    let conf = req.config()?;
    let prev = req.prev_result()?;
    let ifname = req.env.ifname()?;
    let container_id = req.env.container_id()?;
    let netns_path = req.env.netns()?;
    let Some(names) = Names::for_ifname(ifname) else {
        return Ok(());
    };
    let store = StateStore::new(&conf.state_dir, &conf.name);
    let root = bpf_root(conf);
    let attachment = weir_ebpf::attachment_id(container_id, ifname);
    let Some(record) = store.load(container_id, ifname).map_err(state_error)? else {
        return check_unsplit(conf, netns_path, &names);
    };
    let mac = prev
        .sandbox_interface(ifname)
        .and_then(|(_, iface)| iface.mac_bytes())
        .map(|m| m.to_vec());
    verify_in(netns_path, &names, &root, &attachment, record.pod_id, mac)
}

/// Without a record weir either passed the interface through on purpose
/// (not a veth) or lost its split.
fn check_unsplit(conf: &NetConf, netns_path: &Path, names: &Names) -> cni::Result<()> {
    if conf.failure_policy == FailurePolicy::Ignore {
        return Ok(());
    }
    let pod = names.pod.clone();
    let link = netns::run_in(netns_path, move |handle| async move {
        crate::iface::link_by_name(&handle, &pod).await
    })
    .map_err(netns_error)?
    .map_err(|e| CniError::split_failed(e.to_string()))?;
    match link {
        Some(link) if link.is_veth() => Err(CniError::split_failed(format!(
            "{} is a veth but weir has no split of it (no state record)",
            names.pod
        ))),
        _ => Ok(()),
    }
}

fn status(req: &Request) -> cni::Result<()> {
    let conf = req.config()?;
    weir_ebpf::probe(&bpf_root(conf)).map_err(|e| {
        CniError::plugin_not_available(format!("weir cannot attach its programs: {e}"))
    })?;
    let probe = conf.state_dir.join(".status-probe");
    std::fs::create_dir_all(&conf.state_dir)
        .and_then(|()| std::fs::write(&probe, b"ok"))
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| {
            CniError::plugin_not_available(format!(
                "state directory {} is not writable: {e}",
                conf.state_dir.display()
            ))
        })
}

/// GC releases every attachment of this network the runtime no longer knows,
/// then the node programs of older weir builds that no pod calls any more.
/// Its namespace may still exist, so the split is undone first: a pod the
/// runtime forgot keeps the networking the earlier plugins gave it.
fn gc(req: &Request) -> cni::Result<()> {
    let conf = req.config()?;
    let valid: HashSet<(String, String)> = conf
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let store = StateStore::new(&conf.state_dir, &conf.name);
    let root = bpf_root(conf);
    let mut failures = Vec::new();
    for record in store.list().map_err(state_error)? {
        if valid.contains(&(record.container_id.clone(), record.ifname.clone())) {
            continue;
        }
        let Some(names) = Names::for_ifname(&record.ifname) else {
            continue;
        };
        let attachment = weir_ebpf::attachment_id(&record.container_id, &record.ifname);
        let mode = Some(record.attach_mode);
        info!(container_id = %record.container_id, ifname = %record.ifname, "GC: releasing stale attachment");
        if let Err(e) = release(
            &store,
            &root,
            &attachment,
            &record.container_id,
            &record.ifname,
            Some(&record),
            Some(Path::new(&record.netns)),
            &names,
            mode,
        ) {
            failures.push(format!("{}: {e}", record.record_name()));
        }
    }
    // (each build it unpins is logged by the function itself)
    if let Err(e) = weir_ebpf::node_program::remove_unused_builds(&root) {
        failures.push(format!("older builds' node programs: {e}"));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CniError::state_failed(format!(
            "GC could not release: {}",
            failures.join("; ")
        )))
    }
}
