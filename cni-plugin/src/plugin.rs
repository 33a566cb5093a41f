//! The CNI commands: each validates what it needs from the request, does its
//! work in the pod's namespace, and answers with what stdout must carry.

use std::collections::HashSet;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{info, warn};
use weir_ebpf::BpfRoot;

use crate::cni::{self, CniError, Command, FailurePolicy, NetConf, Request, output};
use crate::netns::{self, NetnsError};
use crate::repair;
use crate::split::{self, Names, SplitOutcome, SplitRequest, Step};
use weir_node_state::{AttachmentRecord, Phase, PodIdentity, StateStore};

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

/// The test-only hooks of `faultInjection`: fail after a step, or stop there.
#[derive(Debug, Clone, Default)]
struct Faults {
    fail_at: Option<Step>,
    pause_at: Option<Step>,
    pause_fifo: Option<std::path::PathBuf>,
}

fn faults(conf: &NetConf) -> cni::Result<Faults> {
    // (the steps were checked when the config was read)
    Ok(conf
        .fault_injection
        .as_ref()
        .map(|f| Faults {
            fail_at: f.fail_at,
            pause_at: f.pause_at,
            pause_fifo: f.pause_fifo.clone(),
        })
        .unwrap_or_default())
}

impl Faults {
    fn after(&self, step: Step) -> Result<(), String> {
        if self.pause_at == Some(step)
            && let Some(fifo) = &self.pause_fifo
        {
            // Opening a FIFO for writing blocks until the test reads it: the
            // test then knows exactly where this process is, and kills it.
            if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(fifo) {
                use std::io::Write;
                let _ = writeln!(f, "{step}");
            }
            loop {
                std::thread::park();
            }
        }
        if self.fail_at == Some(step) {
            return Err(format!("fault injected after step {step}"));
        }
        Ok(())
    }
}

/// ADD's hooks: the journal is the attachment's record in phase `adding`.
struct AddHooks {
    state_dir: std::path::PathBuf,
    network: String,
    record: AttachmentRecord,
    faults: Faults,
}

impl split::Hooks for AddHooks {
    fn journal(&self, original: &split::Original) -> Result<(), String> {
        let mut record = self.record.clone();
        record.mac = split::format_mac(&original.snapshot.link.mac);
        record.original = Some(original.to_record());
        StateStore::new(&self.state_dir, &self.network)
            .save(&record)
            .map_err(|e| format!("writing the journal: {e}"))
    }

    fn after(&self, step: Step) -> Result<(), String> {
        self.faults.after(step)
    }
}

/// The network namespace weir runs in is the node's: never split it.
fn refuse_own_netns(netns_path: &Path) -> cni::Result<()> {
    if netns::is_own(netns_path) {
        return Err(CniError::invalid_env(format!(
            "CNI_NETNS {} is weir's own network namespace (the node's), not a pod's",
            netns_path.display()
        ))
        .with_details("weir refuses to split the interfaces of the namespace it runs in"));
    }
    Ok(())
}

/// A failure that `failurePolicy: Ignore` turns into passing prevResult
/// through (the pod is as the plugins before weir left it).
fn by_policy(conf: &NetConf, err: CniError, pass_through: Answer) -> cni::Result<Answer> {
    if conf.failure_policy == FailurePolicy::Ignore {
        eprintln!("weir: {err}; failurePolicy Ignore: passing prevResult through");
        warn!("{err}; failurePolicy Ignore: passing prevResult through");
        return Ok(pass_through);
    }
    Err(err)
}

fn add(req: &Request) -> cni::Result<Answer> {
    let conf = req.config()?;
    let prev = req.prev_result()?;
    let ifname = req.env.ifname()?;
    let container_id = req.env.container_id()?;
    let netns_path = req.env.netns()?;
    let faults = faults(conf)?;
    refuse_own_netns(netns_path)?;
    let pass_through = Answer::ok(output::add_result(prev, req.version));

    let Some(names) = Names::for_ifname(ifname) else {
        eprintln!(
            "weir: passing {ifname} through unsplit: the name is too long for the wx-/wi- prefixes (15 bytes max)"
        );
        return Ok(pass_through);
    };
    if prev.sandbox_interface(ifname).is_none() {
        let listed: Vec<String> = prev
            .interfaces
            .iter()
            .filter(|i| i.in_sandbox())
            .map(|i| i.name.clone())
            .collect();
        let err = CniError::invalid_config(format!(
            "prevResult has no sandbox interface {ifname} (CNI_IFNAME)"
        ))
        .with_details(format!(
            "its sandbox interfaces: [{}]; weir splits the interface the chain made for CNI_IFNAME",
            listed.join(", ")
        ));
        return by_policy(conf, err, pass_through);
    }
    let store = StateStore::new(&conf.state_dir, &conf.name);
    let root = bpf_root(conf);
    let attachment = weir_ebpf::attachment_id(container_id, ifname);
    let lock = store
        .lock(container_id, ifname, true)
        .map_err(state_error)?
        .ok_or_else(|| CniError::state_failed("attachment lock not taken"))?;

    match store.load(container_id, ifname) {
        Ok(Some(existing)) => {
            // A repeated ADD converges: an intact split is kept as it is.
            let existing_id = repair::attachment_of(&existing);
            if existing.phase == Phase::Split
                && verify_in(
                    netns_path,
                    &names,
                    &root,
                    &existing_id,
                    existing.pod_id,
                    None,
                )
                .is_ok()
            {
                info!(container_id, ifname, "ADD repeated; split already in place");
                return Ok(pass_through);
            }
            // Half-made (an ADD that died) or broken: put the pod back first.
            repair::release(
                &store,
                &root,
                container_id,
                ifname,
                Some(&existing),
                Some(netns_path),
            )
            .map_err(CniError::rollback_failed)?;
        }
        Ok(None) => {}
        Err(e) => {
            warn!("ADD: {e}; undoing what the namespace holds first");
            repair::release(&store, &root, container_id, ifname, None, Some(netns_path))
                .map_err(CniError::rollback_failed)?;
        }
    }

    let pod_id = store.allocate_pod_id().map_err(state_error)?;
    let journal = AttachmentRecord {
        phase: Phase::Adding,
        network: conf.name.clone(),
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
        netns: netns_path.display().to_string(),
        pod: pod_identity(req),
        pod_id,
        mac: String::new(),
        ips: prev
            .pod_ips(ifname)
            .iter()
            .map(|ip| ip.address.to_string())
            .collect(),
        attach_mode: conf.attach_mode,
        pod_ifindex: 0,
        outer_ifindex: 0,
        inner_ifindex: 0,
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        attachment_id: Some(attachment.clone()),
        original: None,
    };
    let hooks = AddHooks {
        state_dir: conf.state_dir.clone(),
        network: conf.name.clone(),
        record: journal,
        faults: faults.clone(),
    };
    let (split_names, split_root, split_id, mode) = (
        names.clone(),
        root.clone(),
        attachment.clone(),
        conf.attach_mode,
    );
    let outcome = netns::run_in(netns_path, move |handle| async move {
        let req = SplitRequest {
            names: &split_names,
            bpf_root: &split_root,
            attachment_id: &split_id,
            pod_id,
            attach_mode: mode,
            hooks: &hooks,
        };
        split::split(&handle, &req).await
    })
    .map_err(netns_error)?;

    let done = match outcome {
        Ok(SplitOutcome::Split(done)) => done,
        Ok(SplitOutcome::PassThrough(reason)) => {
            eprintln!("weir: passing {ifname} through unsplit: {reason}");
            info!(container_id, ifname, "pass-through: {reason}");
            lock.remove();
            return Ok(pass_through);
        }
        Ok(SplitOutcome::Missing(reason)) => {
            lock.remove();
            return by_policy(
                conf,
                CniError::split_failed(format!("cannot split {ifname}: {reason}")),
                pass_through,
            );
        }
        Err(err) => {
            if err.restore_failures.is_empty() {
                let _ = store.remove(container_id, ifname);
                lock.remove();
            }
            // else the journal stays: DEL, GC or the agent finish the undo
            return on_split_failure(conf, err, pass_through);
        }
    };

    let mut record = match store.load(container_id, ifname) {
        Ok(Some(r)) => r,
        other => {
            return Err(CniError::state_failed(format!(
                "the journal of {container_id}:{ifname} vanished during ADD: {other:?}"
            )));
        }
    };
    record.phase = Phase::Split;
    record.attach_mode = done.attach_mode;
    record.pod_ifindex = done.pod_ifindex;
    record.outer_ifindex = done.outer_ifindex;
    record.inner_ifindex = done.inner_ifindex;
    let saved = store
        .save(&record)
        .map_err(|e| e.to_string())
        .and_then(|()| faults.after(Step::WriteState));
    if let Err(cause) = saved {
        let original = record
            .original
            .as_ref()
            .and_then(|o| split::Original::from_record(o, &record.mac));
        let restore_failures =
            match repair::undo_in(netns_path, &names, original, &root, &attachment) {
                Ok(()) => {
                    let _ = store.remove(container_id, ifname);
                    Vec::new()
                }
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
    info!(
        container_id,
        ifname,
        pod_id,
        mode = %done.attach_mode,
        swap_micros = done.swap.as_micros() as u64,
        "split in place"
    );
    Ok(pass_through)
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
    let code = match err.step {
        Step::Load | Step::Attach => CniError::ebpf_attach_failed(err.to_string()),
        Step::Journal | Step::WriteState => CniError::state_failed(err.to_string()),
        _ => CniError::split_failed(err.to_string()),
    };
    by_policy(conf, code, pass_through)
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

/// Another attachment's record (any network on this node) for the same
/// namespace and interface: a DEL naming another container must not touch it.
fn claimed_by_other(
    state_dir: &Path,
    netns_path: &Path,
    ifname: &str,
    container_id: &str,
) -> Option<String> {
    let stores = StateStore::all_networks(state_dir).ok()?;
    stores.iter().find_map(|store| {
        store.list_lenient().0.into_iter().find_map(|r| {
            (r.ifname == ifname
                && r.container_id != container_id
                && netns::same(Path::new(&r.netns), netns_path))
            .then_some(r.container_id)
        })
    })
}

/// DEL runs before the earlier plugins' DEL: it hands them back the interface
/// they made, under its own name. Everything it removes may already be gone,
/// and its record may be gone or unreadable: then it undoes the split from
/// what the namespace holds (devices, tc filters of weir's stubs).
fn del(req: &Request) -> cni::Result<()> {
    let conf = req.config()?;
    if let Some(ignored) = &conf.prev_result_ignored {
        warn!("DEL: ignoring unusable prevResult: {ignored}");
    }
    let ifname = req.env.ifname()?;
    let container_id = req.env.container_id()?;
    let store = StateStore::new(&conf.state_dir, &conf.name);
    let lock = store.lock(container_id, ifname, true).ok().flatten();
    let (record, unreadable) = match store.load(container_id, ifname) {
        Ok(record) => (record, false),
        Err(e) => {
            warn!("DEL: {e}; cleaning up without it");
            (None, true)
        }
    };
    let netns_path = req.env.netns().ok().filter(|p| {
        let own = netns::is_own(p);
        if own {
            warn!(netns = %p.display(), "DEL: CNI_NETNS is weir's own namespace; not touching it");
        }
        !own
    });
    if record.is_none()
        && !unreadable
        && let Some(path) = netns_path
        && let Some(owner) = claimed_by_other(&conf.state_dir, path, ifname, container_id)
    {
        info!(
            container_id,
            ifname,
            "DEL: {ifname} in {} is split for container {owner}; nothing of it touched",
            path.display()
        );
        let _ = weir_ebpf::split::remove_pins(
            &bpf_root(conf),
            &weir_ebpf::attachment_id(container_id, ifname),
        );
        let _ = store.remove(container_id, ifname);
        if let Some(lock) = lock {
            lock.remove();
        }
        return Ok(());
    }
    repair::release(
        &store,
        &bpf_root(conf),
        container_id,
        ifname,
        record.as_ref(),
        netns_path,
    )
    .map_err(CniError::split_failed)?;
    if let Some(lock) = lock {
        lock.remove();
    }
    Ok(())
}

fn check(req: &Request) -> cni::Result<()> {
    let conf = req.config()?;
    let prev = req.prev_result()?;
    let ifname = req.env.ifname()?;
    let container_id = req.env.container_id()?;
    let netns_path = req.env.netns()?;
    refuse_own_netns(netns_path)?;
    let Some(names) = Names::for_ifname(ifname) else {
        return Ok(());
    };
    let store = StateStore::new(&conf.state_dir, &conf.name);
    let root = bpf_root(conf);
    let Some(record) = store.load(container_id, ifname).map_err(state_error)? else {
        return check_unsplit(conf, netns_path, &names);
    };
    if record.phase == Phase::Adding {
        let running = matches!(store.lock(container_id, ifname, false), Ok(None));
        let what = if running {
            "its ADD is still running"
        } else {
            "its ADD died half-way; DEL, GC or the node agent puts the pod back"
        };
        return Err(CniError::split_failed(format!(
            "{ifname} is half-split: {what}"
        )));
    }
    let mac = prev
        .sandbox_interface(ifname)
        .and_then(|(_, iface)| iface.mac_bytes())
        .map(|m| m.to_vec());
    verify_in(
        netns_path,
        &names,
        &root,
        &repair::attachment_of(&record),
        record.pod_id,
        mac,
    )
}

/// Without a record weir either passed the interface through on purpose
/// (not a veth) or lost its split; devices of a split without a record are
/// a half-split pod.
fn check_unsplit(conf: &NetConf, netns_path: &Path, names: &Names) -> cni::Result<()> {
    let (pod, probe) = (names.pod.clone(), names.clone());
    let (link, leftovers) = netns::run_in(netns_path, move |handle| async move {
        let link = crate::iface::link_by_name(&handle, &pod)
            .await
            .map_err(|e| e.to_string());
        let leftovers = split::split_devices(&handle, &probe).await;
        (link, leftovers)
    })
    .map_err(netns_error)?;
    let leftovers = leftovers.map_err(CniError::split_failed)?;
    if !leftovers.is_empty() {
        return Err(CniError::split_failed(format!(
            "{} is half-split: {} exist but weir has no record of a split",
            names.pod,
            leftovers.join(", ")
        )));
    }
    if conf.failure_policy == FailurePolicy::Ignore {
        return Ok(());
    }
    match link.map_err(CniError::split_failed)? {
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

/// GC first repairs pods whose ADD died half-way, then releases every
/// attachment of this network the runtime no longer knows, then the node
/// programs of older weir builds that no pod calls any more. A released
/// pod's namespace may still exist, so the split is undone first: a pod the
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
    let mut repaired = repair::Repaired::default();
    repair::repair_store(&store, &root, &mut repaired);
    let mut failures = repaired.failures;
    let (records, unreadable) = store.list_lenient();
    for record in records {
        if record.phase == Phase::Adding
            || valid.contains(&(record.container_id.clone(), record.ifname.clone()))
        {
            continue;
        }
        let Ok(Some(lock)) = store.lock(&record.container_id, &record.ifname, false) else {
            continue;
        };
        info!(container_id = %record.container_id, ifname = %record.ifname, "GC: releasing stale attachment");
        match repair::release(
            &store,
            &root,
            &record.container_id,
            &record.ifname,
            Some(&record),
            Some(Path::new(&record.netns)),
        ) {
            Ok(()) => lock.remove(),
            Err(e) => failures.push(format!("{}: {e}", record.record_name())),
        }
    }
    for err in unreadable {
        warn!("GC: {err}; removing the unreadable record");
        if let weir_node_state::StateError::Corrupt { path, .. } = &err {
            let _ = std::fs::remove_file(path);
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
