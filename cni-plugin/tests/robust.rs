//! A pod never loses its network because of weir: DEL without state, ADD
//! killed at every step, attachments that must not touch each other, and
//! input that must be refused. Each pod is made by the real reference
//! plugins (bridge + host-local, driven by cnitool as a runtime would), then
//! weir is run on it the way the runtime runs the chain's last plugin.
//!
//! `WEIR_PLUGIN_UNDER_TEST` runs these tests against another build of the
//! plugin (an older one, to see them fail before a fix).
//!
//! Needs root, bpffs and the tools of scripts/bootstrap.sh: without them each
//! test fails and says what is missing.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use weir_cni::split::Step;
use weir_e2e::chain::{ChainSpec, CniCall, Node};
use weir_e2e::host;
use weir_e2e::netns::Netns;
use weir_node_state::StateStore;

fn weir() -> PathBuf {
    std::env::var_os("WEIR_PLUGIN_UNDER_TEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_weir")))
}

/// A node with one pod that bridge + host-local configured (no weir in the
/// conflist), and what that pod looked like before weir.
struct Lab {
    node: Node,
    pod: Netns,
    prev: Value,
    before: Vec<String>,
    bpf_root: PathBuf,
}

struct LabSpec<'a> {
    tag: &'a str,
    subnet: &'a str,
    v6: Option<&'a str>,
    /// No IPv6 duplicate address detection in the pod (a restored link's
    /// link-local address is then usable at once, and no test waits).
    no_dad: bool,
}

fn lab(spec: &LabSpec<'_>) -> Result<Lab> {
    host::require_privileged_host();
    let mut chain = ChainSpec::new("1.0.0", spec.subnet);
    chain.with_weir = false;
    chain.subnet_v6 = spec.v6.map(str::to_owned);
    let node = Node::new(spec.tag, &chain, &weir())?;
    let pod = Netns::create(&format!("{}-a", spec.tag))?;
    if spec.no_dad {
        pod.exec(&["sysctl", "-qw", "net.ipv6.conf.default.dad_transmits=0"])?;
        pod.exec(&["sysctl", "-qw", "net.ipv6.conf.all.dad_transmits=0"])?;
    }
    let prev = node.add(&pod, "eth0", "shop", "a")?.ok()?.json()?;
    settle(&pod)?;
    let before = pod_state(&pod)?;
    let bpf_root = node.bpf_root.clone();
    Ok(Lab {
        node,
        pod,
        prev,
        before,
        bpf_root,
    })
}

impl Lab {
    fn netns(&self) -> String {
        self.pod.path().display().to_string()
    }

    fn conf(&self, extra: Value) -> Value {
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": self.node.network,
            "type": "weir",
            "stateDir": self.node.state_dir,
            "bpfRoot": self.bpf_root,
            "prevResult": self.prev,
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            conf[k] = v.clone();
        }
        conf
    }

    fn call(
        &self,
        command: &str,
        cid: &str,
        ifname: &str,
        netns: &str,
        conf: &Value,
    ) -> Result<(CniCall, i32)> {
        self.node.invoke(
            &weir(),
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", cid),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", ifname),
                ("CNI_PATH", "/nonexistent"),
            ],
            &conf.to_string(),
        )
    }

    fn ok(&self, command: &str, cid: &str, extra: Value) -> Result<CniCall> {
        let (call, exit) = self.call(command, cid, "eth0", &self.netns(), &self.conf(extra))?;
        ensure!(exit == 0, "{command} {cid} failed ({exit}): {call:?}");
        Ok(call)
    }

    fn gateway(&self) -> Result<std::net::IpAddr> {
        Node::gateway_v4(&self.prev)
    }

    /// The pod is exactly as the plugins before weir left it, and works.
    fn assert_restored(&self, when: &str) -> Result<()> {
        settle(&self.pod)?;
        let now = pod_state(&self.pod)?;
        if now != self.before {
            bail!(
                "{when}: the pod is not as before weir\nbefore: {:#?}\nnow:    {now:#?}",
                self.before
            );
        }
        weir_e2e::chain::ping(&self.pod, self.gateway()?, 1)
            .with_context(|| format!("{when}: the pod cannot reach its gateway"))
    }

    fn store(&self) -> StateStore {
        StateStore::new(&self.node.state_dir, &self.node.network)
    }

    /// No record, journal, temporary file or lock of any attachment left.
    fn assert_no_state(&self, when: &str) -> Result<()> {
        let dir = self.store().network_dir().to_path_buf();
        let left: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        ensure!(left.is_empty(), "{when}: node state left: {left:?}");
        let pins: Vec<String> = std::fs::read_dir(self.bpf_root.join("links"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        ensure!(pins.is_empty(), "{when}: pins left: {pins:?}");
        Ok(())
    }
}

/// Waits (polling, 10 s at most) until no address of the pod is tentative.
fn settle(ns: &Netns) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ns.exec(&["ip", "-j", "addr", "show"])?;
        if !out.contains("\"tentative\":true") {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "addresses still tentative: {out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Links (name, kind, MAC, MTU, up), every address with its flags and
/// lifetimes as `ip -d addr` reports them, routes, and every ingress tc
/// filter: what a pod would see.
fn pod_state(ns: &Netns) -> Result<Vec<String>> {
    let mut lines = ns.links()?;
    let json: Value = serde_json::from_str(&ns.exec(&["ip", "-j", "-d", "addr", "show"])?)?;
    for link in json.as_array().into_iter().flatten() {
        let dev = link["ifname"].as_str().unwrap_or("?");
        for addr in link["addr_info"].as_array().into_iter().flatten() {
            let mut flags: Vec<String> = addr
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, v)| **v == Value::Bool(true))
                .map(|(k, _)| k.clone())
                .collect();
            flags.sort();
            lines.push(format!(
                "addr {dev} {}/{} {} [{}] valid {} preferred {}",
                addr["local"].as_str().unwrap_or("?"),
                addr["prefixlen"],
                addr["scope"].as_str().unwrap_or("?"),
                flags.join(" "),
                addr["valid_life_time"],
                addr["preferred_life_time"],
            ));
        }
    }
    lines.extend(ns.routes()?);
    for dev in link_names(ns)? {
        for line in ns
            .exec(&["tc", "filter", "show", "dev", &dev, "ingress"])
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            lines.push(format!("tc {dev} {}", line.trim()));
        }
    }
    Ok(lines)
}

fn link_names(ns: &Netns) -> Result<Vec<String>> {
    Ok(ns
        .links()?
        .iter()
        .filter_map(|l| l.split(' ').next().map(str::to_owned))
        .collect())
}

fn filters_on(ns: &Netns, dev: &str) -> Result<String> {
    ns.exec(&["tc", "filter", "show", "dev", dev, "ingress"])
}

/// One ADD that stops at `step` (faultInjection.pauseAt) and is killed
/// there with SIGKILL, as a runtime kills a plugin whose context expired.
fn add_killed_at(lab: &Lab, cid: &str, step: Step) -> Result<()> {
    add_killed_at_with(lab, cid, step, json!({}))
}

fn add_killed_at_with(lab: &Lab, cid: &str, step: Step, extra: Value) -> Result<()> {
    let fifo = lab.node.work_dir.join(format!("pause-{cid}-{step}.fifo"));
    let _ = std::fs::remove_file(&fifo);
    let c = std::ffi::CString::new(fifo.to_str().context("fifo path")?)?;
    // SAFETY: mkfifo with a valid NUL-terminated path.
    let made = unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0;
    ensure!(
        made,
        "mkfifo {}: {}",
        fifo.display(),
        std::io::Error::last_os_error()
    );
    // A non-blocking reader exists before the plugin opens the FIFO, so the
    // plugin's open for writing returns at once.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)?;
    let mut conf = lab.conf(json!({
        "faultInjection": { "pauseAt": step.name(), "pauseFifo": fifo }
    }));
    for (k, v) in extra.as_object().into_iter().flatten() {
        conf[k] = v.clone();
    }
    let netns = lab.netns();
    let mut cmd = lab
        .node
        .ns
        .command(&[weir().to_str().context("weir path")?]);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs([
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", cid),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/nonexistent"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child: Child = cmd.spawn()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(conf.to_string().as_bytes())?;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = String::new();
    loop {
        let mut buf = [0u8; 64];
        match reader.read(&mut buf) {
            Ok(n) if n > 0 => {
                got.push_str(&String::from_utf8_lossy(&buf[..n]));
                if got.ends_with('\n') {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(status) = child.try_wait()? {
            let out = child.wait_with_output()?;
            bail!(
                "ADD ended ({status}) before pausing at {step}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ensure!(Instant::now() < deadline, "ADD never reached {step}");
        std::thread::sleep(Duration::from_millis(2));
    }
    ensure!(
        got.trim() == step.name(),
        "paused at {got:?}, expected {step}"
    );
    // nsenter execs the plugin: its pid is the plugin's.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait()?;
    let _ = std::fs::remove_file(&fifo);
    Ok(())
}

/// Issue 14, bug 2: ADD killed after every step. CHECK reports the
/// half-split pod; DEL restores it exactly (names, MAC, addresses with their
/// flags, routes, up state, no filter); a retried ADD after a kill succeeds
/// without a DEL; GC and the agent's repair put back a pod whose runtime
/// never called DEL.
#[test]
fn add_killed_at_every_step_is_recoverable() -> Result<()> {
    let lab = lab(&LabSpec {
        tag: "wkill",
        subnet: "10.245.1.0/24",
        v6: Some("fd00:245:1::/64"),
        no_dad: true,
    })?;
    for step in Step::ALL {
        let when = format!("killed after {step}");
        add_killed_at(&lab, "kill-del", step)?;
        let (call, exit) = lab.call(
            "CHECK",
            "kill-del",
            "eth0",
            &lab.netns(),
            &lab.conf(json!({})),
        )?;
        if step == Step::WriteState {
            // the record was complete before the kill: an intact split
            ensure!(exit == 0, "{when}: CHECK of a complete split: {call:?}");
        } else {
            ensure!(exit != 0, "{when}: CHECK passed a half-split pod: {call:?}");
        }
        lab.ok("DEL", "kill-del", json!({}))?;
        lab.assert_restored(&format!("{when}, then DEL"))?;
        lab.assert_no_state(&format!("{when}, then DEL"))?;

        add_killed_at(&lab, "kill-retry", step)?;
        lab.ok("ADD", "kill-retry", json!({}))?;
        lab.ok("CHECK", "kill-retry", json!({}))?;
        weir_e2e::chain::ping(&lab.pod, lab.gateway()?, 1)
            .with_context(|| format!("{when}, ADD retried: no network"))?;
        lab.ok("DEL", "kill-retry", json!({}))?;
        lab.assert_restored(&format!("{when}, ADD retried, DEL"))?;
        lab.assert_no_state(&format!("{when}, ADD retried, DEL"))?;
    }

    // CHECK without any record still sees a half-split pod (its devices).
    add_killed_at(&lab, "kill-norecord", Step::RenameNew)?;
    let dir = lab.store().network_dir().to_path_buf();
    let journal = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .context("no journal")?;
    let kept = std::fs::read(&journal)?;
    std::fs::remove_file(&journal)?;
    let (call, exit) = lab.call(
        "CHECK",
        "kill-norecord",
        "eth0",
        &lab.netns(),
        &lab.conf(json!({})),
    )?;
    ensure!(
        exit != 0 && call.stdout.contains("half-split"),
        "CHECK without a record: {call:?}"
    );
    std::fs::write(&journal, kept)?;
    lab.ok("DEL", "kill-norecord", json!({}))?;
    lab.assert_restored("killed, record hidden for CHECK, then DEL")?;
    lab.assert_no_state("killed, record hidden for CHECK, then DEL")?;

    // TCX links: a link the killed process held only by its fd is gone
    // with it; pinned ones are detached by DEL.
    for step in Step::ALL {
        let when = format!("tcx, killed after {step}");
        add_killed_at_with(&lab, "kill-tcx", step, json!({ "attach": "tcx" }))?;
        lab.ok("DEL", "kill-tcx", json!({ "attach": "tcx" }))?;
        lab.assert_restored(&format!("{when}, then DEL"))?;
        lab.assert_no_state(&format!("{when}, then DEL"))?;
    }

    // GC repairs an orphan even while the runtime still lists it (a runtime
    // that restarted may list what it never finished).
    for step in [
        Step::CreatePair,
        Step::Rename,
        Step::Attach,
        Step::RenameNew,
    ] {
        add_killed_at(&lab, "kill-gc", step)?;
        let conf = lab.conf(json!({
            "cniVersion": "1.1.0",
            "cni.dev/valid-attachments": [{"containerID": "kill-gc", "ifname": "eth0"}],
        }));
        let (call, exit) = lab.node.invoke(
            &weir(),
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")],
            &conf.to_string(),
        )?;
        ensure!(exit == 0, "GC: {call:?}");
        lab.assert_restored(&format!("killed after {step}, then GC"))?;
        lab.assert_no_state(&format!("killed after {step}, then GC"))?;
    }

    // The node agent's repair at start: the library function it calls
    // (weir-ebpf, so the agent needs no plugin crate).
    for step in [Step::ReleaseOriginal, Step::MoveRoutes] {
        add_killed_at(&lab, "kill-agent", step)?;
        let repaired = weir_ebpf::repair::repair_orphans(&lab.node.state_dir, &lab.bpf_root);
        ensure!(
            repaired.failures.is_empty() && repaired.attachments.len() == 1,
            "{repaired:?}"
        );
        lab.assert_restored(&format!("killed after {step}, then the agent's repair"))?;
        lab.assert_no_state(&format!("killed after {step}, then the agent's repair"))?;
    }
    Ok(())
}

/// Issue 14, bug 1: DEL with the record gone, unreadable, or the pins gone
/// (bpfRoot removed, its bpffs unmounted) undoes the split from what the
/// namespace holds: no stub is left on the restored eth0.
#[test]
fn del_without_usable_state_leaves_no_stub() -> Result<()> {
    let mut lab = lab(&LabSpec {
        tag: "wnost",
        subnet: "10.245.2.0/24",
        v6: None,
        no_dad: true,
    })?;
    // A bpffs of its own, so the test can unmount it.
    let mnt = PathBuf::from("/sys/fs/bpf/weir-test-wnost-mnt");
    let _ = std::process::Command::new("umount").arg(&mnt).output();
    let _ = std::fs::remove_dir_all(&mnt);
    std::fs::create_dir_all(&mnt)?;
    weir_e2e::netns::run(std::process::Command::new("mount").args([
        "-t",
        "bpf",
        "bpf",
        mnt.to_str().unwrap(),
    ]))?;
    let shared_root = lab.bpf_root.clone();
    type Break<'a> = (&'a str, Box<dyn Fn(&Lab) -> Result<()> + 'a>);
    let cases: Vec<Break> = vec![
        (
            "stateDir wiped",
            Box::new(|lab: &Lab| Ok(std::fs::remove_dir_all(&lab.node.state_dir)?)),
        ),
        (
            "record overwritten with broken JSON",
            Box::new(|lab: &Lab| {
                let dir = lab.store().network_dir().to_path_buf();
                for e in std::fs::read_dir(&dir)?.flatten() {
                    if e.path().extension().is_some_and(|x| x == "json") {
                        std::fs::write(e.path(), b"{\"broken")?;
                    }
                }
                Ok(())
            }),
        ),
        (
            "bpfRoot removed",
            Box::new(|lab: &Lab| Ok(std::fs::remove_dir_all(&lab.bpf_root)?)),
        ),
        (
            "bpffs unmounted",
            Box::new(|_: &Lab| {
                weir_e2e::netns::run(std::process::Command::new("umount").arg(&mnt)).map(drop)
            }),
        ),
    ];
    for (what, break_it) in &cases {
        lab.bpf_root = if *what == "bpffs unmounted" {
            mnt.join("weir")
        } else {
            shared_root.clone()
        };
        lab.ok("ADD", "nostate", json!({}))?;
        ensure!(
            filters_on(&lab.pod, "wx-eth0")?.contains("weir_wx"),
            "{what}: the split has its stub"
        );
        break_it(&lab)?;
        lab.ok("DEL", "nostate", json!({}))?;
        let left = filters_on(&lab.pod, "eth0")?;
        ensure!(
            left.trim().is_empty(),
            "{what}: DEL left a filter on the restored eth0: {left}"
        );
        lab.assert_restored(&format!("{what}, then DEL"))?;
        let _ = std::fs::remove_dir_all(&lab.node.state_dir);
    }
    let _ = std::process::Command::new("umount").arg(&mnt).output();
    let _ = std::fs::remove_dir_all(&mnt);
    Ok(())
}

/// Issue 14, bugs 3 and 4: container ids that differ only where a lossy
/// name scheme would merge them, or after 200 equal bytes, get their own
/// attachments; a DEL naming another container touches nothing of a split.
#[test]
fn attachments_never_collide_and_del_touches_only_its_own() -> Result<()> {
    let a = lab(&LabSpec {
        tag: "wcola",
        subnet: "10.245.3.0/24",
        v6: None,
        no_dad: true,
    })?;
    let pod_b = Netns::create("wcola-b")?;
    let prev_b = a.node.add(&pod_b, "eth0", "shop", "b")?.ok()?.json()?;
    let b_netns = pod_b.path().display().to_string();
    let conf_b = {
        let mut c = a.conf(json!({}));
        c["prevResult"] = prev_b;
        c
    };
    let long = "7".repeat(200);
    for (first, second) in [
        ("a.dup1".to_string(), "a_dup1".to_string()),
        (format!("{long}a"), format!("{long}b")),
    ] {
        a.ok("ADD", &first, json!({}))?;
        let (call, exit) = a.call("ADD", &second, "eth0", &b_netns, &conf_b)?;
        ensure!(exit == 0, "{call:?}");
        a.ok("CHECK", &first, json!({}))
            .with_context(|| format!("CHECK of {first} after {second}'s ADD"))?;
        // Bug 4: a DEL with a container id that is not the split's.
        let state = pod_state(&a.pod)?;
        a.ok("DEL", "someone-else", json!({}))?;
        ensure!(
            pod_state(&a.pod)? == state,
            "DEL of another container changed {first}'s pod"
        );
        a.ok("CHECK", &first, json!({}))
            .context("CHECK after a DEL naming another container")?;
        a.ok("DEL", &first, json!({}))?;
        a.assert_restored(&format!("{first} deleted"))?;
        let (call, exit) = a.call("CHECK", &second, "eth0", &b_netns, &conf_b)?;
        ensure!(exit == 0, "{second} broken by {first}'s DEL: {call:?}");
        let (call, exit) = a.call("DEL", &second, "eth0", &b_netns, &conf_b)?;
        ensure!(exit == 0, "{call:?}");
        a.assert_no_state("both deleted")?;
    }
    Ok(())
}

fn hostile_lab(tag: &str, subnet: &str) -> Result<Lab> {
    lab(&LabSpec {
        tag,
        subnet,
        v6: None,
        no_dad: true,
    })
}

/// Issue 14, bug 5: CNI_NETNS naming the plugin's own namespace (the
/// node's), by either name, is refused with code 4 and the node untouched.
#[test]
fn own_network_namespace_is_refused() -> Result<()> {
    let lab = hostile_lab("whost5", "10.245.4.0/24")?;
    let node_links = lab.node.ns.links()?;
    for own in [
        lab.node.ns.path().display().to_string(),
        "/proc/self/ns/net".into(),
    ] {
        let (call, exit) = lab.call("ADD", "own", "eth0", &own, &lab.conf(json!({})))?;
        ensure!(exit != 0, "ADD into {own} must be refused: {call:?}");
        let err = call.json()?;
        ensure!(err["code"] == 4, "{own}: {err}");
        ensure!(
            err["msg"]
                .as_str()
                .unwrap_or("")
                .contains("own network namespace"),
            "{err}"
        );
    }
    ensure!(
        lab.node.ns.links()? == node_links,
        "the node's links changed"
    );
    lab.assert_no_state("after refusing the node's namespace")
}

/// Issue 14, bug 6: a prevResult address without a prefix length is code 7.
#[test]
fn prev_result_address_without_prefix_is_refused() -> Result<()> {
    let lab = hostile_lab("whost6", "10.245.8.0/24")?;
    for bad in ["10.0.0.2", "1.2.3.4", "fd00::2"] {
        let mut prev = lab.prev.clone();
        prev["ips"][0]["address"] = json!(bad);
        let (call, exit) = lab.call(
            "ADD",
            "noprefix",
            "eth0",
            &lab.netns(),
            &lab.conf(json!({ "prevResult": prev })),
        )?;
        ensure!(exit != 0 && call.json()?["code"] == 7, "{bad}: {call:?}");
    }
    lab.assert_restored("after refused prevResults")?;
    lab.assert_no_state("after refused prevResults")
}

/// Issue 14, bug 7: prevResult's sandbox interface is not CNI_IFNAME, or
/// the namespace lacks CNI_IFNAME. Fail: an error naming the interface;
/// Ignore: prevResult passes through; either way nothing changes.
#[test]
fn interface_missing_from_result_or_namespace_is_an_error() -> Result<()> {
    let lab = hostile_lab("whost7", "10.245.9.0/24")?;
    let renamed_to = |name: &str| {
        let mut prev = lab.prev.clone();
        for iface in prev["interfaces"].as_array_mut().unwrap() {
            if iface["sandbox"].as_str().is_some_and(|s| !s.is_empty()) {
                iface["name"] = json!(name);
            }
        }
        prev
    };
    let (renamed, lacking) = (renamed_to("net1"), renamed_to("eth1"));
    for (prev, ifname, code) in [(&renamed, "eth0", 7), (&lacking, "eth1", 100)] {
        let (call, exit) = lab.call(
            "ADD",
            "mismatch",
            ifname,
            &lab.netns(),
            &lab.conf(json!({ "prevResult": prev })),
        )?;
        ensure!(exit != 0, "{ifname}: must fail: {call:?}");
        let err = call.json()?;
        ensure!(err["code"] == code, "{ifname}: {err}");
        ensure!(err["msg"].as_str().unwrap_or("").contains(ifname), "{err}");
        let (call, exit) = lab.call(
            "ADD",
            "mismatch",
            ifname,
            &lab.netns(),
            &lab.conf(json!({ "prevResult": prev, "failurePolicy": "Ignore" })),
        )?;
        ensure!(exit == 0, "{ifname} Ignore: {call:?}");
        let mut want = (*prev).clone();
        want["cniVersion"] = json!("1.0.0");
        ensure!(call.json()? == want, "Ignore passes prevResult through");
        lab.assert_restored(&format!("refused ADD for {ifname}"))?;
        lab.assert_no_state(&format!("refused ADD for {ifname}"))?;
    }
    Ok(())
}

/// Issue 14, bug 8: network names outside the spec are code 7 and never
/// become paths.
#[test]
fn bad_network_names_are_refused() -> Result<()> {
    let lab = hostile_lab("whost8", "10.245.10.0/24")?;
    for name in ["..", ".", "-x", "a/b"] {
        let (call, exit) = lab.call(
            "ADD",
            "netname",
            "eth0",
            &lab.netns(),
            &lab.conf(json!({ "name": name })),
        )?;
        ensure!(exit != 0 && call.json()?["code"] == 7, "{name:?}: {call:?}");
    }
    let stray: Vec<_> = walk(&lab.node.state_dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    ensure!(stray.is_empty(), "records written: {stray:?}");
    lab.assert_restored("after refused network names")
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Issue 14, bug 9: a rollback and a DEL give the pod back its IPv6
/// addresses with exactly their flags (no `nodad` added).
#[test]
fn ipv6_address_flags_survive_rollback_and_del() -> Result<()> {
    let lab = lab(&LabSpec {
        tag: "wflag",
        subnet: "10.245.5.0/24",
        v6: Some("fd00:245:5::/64"),
        no_dad: false,
    })?;
    ensure!(
        lab.before.iter().any(|l| l.contains("fd00:245:5::")),
        "{:?}",
        lab.before
    );
    let (call, exit) = lab.call(
        "ADD",
        "flags",
        "eth0",
        &lab.netns(),
        &lab.conf(json!({ "faultInjection": { "failAt": "move-routes" } })),
    )?;
    ensure!(exit != 0, "{call:?}");
    lab.assert_restored("after a rollback")?;
    lab.ok("ADD", "flags", json!({}))?;
    lab.ok("DEL", "flags", json!({}))?;
    lab.assert_restored("after ADD and DEL")
}

fn snmp6(ns: &Netns, dev: &str) -> Result<std::collections::HashMap<String, u64>> {
    let text = ns.exec(&["cat", &format!("/proc/net/dev_snmp6/{dev}")])?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
        })
        .collect())
}

/// Issue 14, bug 10: the split's halves send no IPv6 of their own (router
/// solicitations, MLD reports, neighbour solicitations): by the time the
/// pod's eth0 has sent its router solicitation, wx-eth0 and wi-eth0 have
/// sent nothing at all.
#[test]
fn split_halves_are_silent() -> Result<()> {
    let lab = lab(&LabSpec {
        tag: "wquiet",
        subnet: "10.245.6.0/24",
        v6: Some("fd00:245:6::/64"),
        no_dad: false,
    })?;
    lab.ok("ADD", "quiet", json!({}))?;
    // wx-eth0 is the pod's original eth0: what it sent as the pod's
    // interface before the split stays in its counters.
    let wx_at_split = snmp6(&lab.pod, "wx-eth0")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let eth0 = snmp6(&lab.pod, "eth0")?;
        if eth0.get("Icmp6OutRouterSolicits").copied().unwrap_or(0) >= 1 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the pod's eth0 never sent a router solicitation: {eth0:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for dev in ["wx-eth0", "wi-eth0"] {
        let counters = snmp6(&lab.pod, dev).unwrap_or_default();
        let sent: Vec<_> = counters
            .iter()
            .filter(|(k, v)| {
                let before = if dev == "wx-eth0" {
                    wx_at_split.get(*k).copied().unwrap_or(0)
                } else {
                    0
                };
                k.contains("Out") && **v > before
            })
            .collect();
        ensure!(sent.is_empty(), "{dev} sent IPv6 of its own: {sent:?}");
        let addrs = lab.pod.exec(&["ip", "-6", "addr", "show", "dev", dev])?;
        ensure!(
            !addrs.contains("inet6"),
            "{dev} has IPv6 addresses: {addrs}"
        );
    }
    weir_e2e::chain::ping(&lab.pod, lab.gateway()?, 1)?;
    lab.ok("DEL", "quiet", json!({}))?;
    lab.assert_restored("after DEL")
}

/// Issue 14 (bug 2's leftovers): a temporary record file of a killed write
/// is removed by DEL, and by GC for any attachment nobody works on.
#[test]
fn stale_temporary_records_are_removed() -> Result<()> {
    let lab = lab(&LabSpec {
        tag: "wtmp",
        subnet: "10.245.7.0/24",
        v6: None,
        no_dad: true,
    })?;
    let dir = lab.store().network_dir().to_path_buf();
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("tmpcid:eth0.json.tmp"), b"{\"half")?;
    std::fs::write(dir.join("other:eth0.json.tmp"), b"{\"half")?;
    lab.ok("DEL", "tmpcid", json!({}))?;
    ensure!(
        !dir.join("tmpcid:eth0.json.tmp").exists(),
        "DEL left its .tmp"
    );
    let conf = lab.conf(json!({ "cniVersion": "1.1.0" }));
    let (call, exit) = lab.node.invoke(
        &weir(),
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")],
        &conf.to_string(),
    )?;
    ensure!(exit == 0, "{call:?}");
    lab.assert_no_state("after GC")
}

/// One kernel event from `ip -t monitor`: seconds of the day and the line.
#[derive(Debug, Clone)]
struct Event {
    at: f64,
    line: String,
}

/// Kernel route and link events of `ns` while `work` runs, with the
/// kernel's own timestamps (`ip -t monitor`). Marker routes added before and
/// after make sure the monitor saw everything in between.
fn monitored(ns: &Netns, work: impl FnOnce() -> Result<()>) -> Result<Vec<Event>> {
    use std::io::BufRead;
    use std::sync::{Arc, Mutex};
    let mut child = ns
        .command(&["ip", "-t", "monitor", "link", "route"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let out = child.stdout.take().context("monitor stdout")?;
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };
    // Repeated until seen: the monitor subscribes some time after it starts.
    let marker = |name: &str| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            ns.exec(&["ip", "route", "add", "blackhole", name])?;
            ns.exec(&["ip", "route", "del", "blackhole", name])?;
            let tried = Instant::now();
            while tried.elapsed() < Duration::from_millis(200) {
                if lines.lock().unwrap().iter().any(|l| l.contains(name)) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            ensure!(Instant::now() < deadline, "the monitor never saw {name}");
        }
    };
    marker("192.0.2.1")?;
    let worked = work();
    let closed = marker("192.0.2.2");
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    worked?;
    closed?;
    let lines = lines.lock().unwrap().clone();
    let mut events = Vec::new();
    let mut at = None;
    for line in lines {
        if let Some(ts) = line.strip_prefix("Timestamp: ") {
            // "Mon Dec  7 19:30:01 2026 123456 usec"
            let parts: Vec<&str> = ts.split_whitespace().collect();
            let hms: Vec<f64> = parts
                .get(3)
                .map(|t| t.split(':').filter_map(|x| x.parse().ok()).collect())
                .unwrap_or_default();
            let usec: f64 = parts.get(5).and_then(|u| u.parse().ok()).unwrap_or(0.0);
            if hms.len() == 3 {
                at = Some(hms[0] * 3600.0 + hms[1] * 60.0 + hms[2] + usec / 1e6);
            }
        } else if let Some(at) = at {
            events.push(Event { at, line });
        }
    }
    Ok(events)
}

/// Issue 14, bug 2's figure: how long a pod is without a working default
/// route during ADD, from the kernel's own event timestamps: from the
/// original eth0 leaving (renamed wx-eth0, down) to the default route
/// through the new eth0, and to wx-eth0 up (inbound works again). Only the
/// swap may be inside that window: no address is added to the new eth0 and
/// no device is created in it. Prints the figures (BENCHMARKS.md).
#[test]
fn default_route_gap_is_only_the_swap() -> Result<()> {
    let lab = lab(&LabSpec {
        tag: "wgap",
        subnet: "10.245.11.0/24",
        v6: None,
        no_dad: true,
    })?;
    let (mut route_gaps, mut link_gaps) = (Vec::new(), Vec::new());
    let mut violations = Vec::new();
    for round in 0..20 {
        let events = monitored(&lab.pod, || lab.ok("ADD", "gap", json!({})).map(drop))?;
        let at = |what: &str, pred: &dyn Fn(&str) -> bool| -> Result<usize> {
            events
                .iter()
                .position(|e| pred(&e.line))
                .with_context(|| format!("round {round}: no event {what}: {events:#?}"))
        };
        // (ip monitor names devices from its own cache: a route through the
        // renamed device may still read "dev wt-eth0")
        let gone = at("original renamed", &|l| l.contains(": wx-eth0"))?;
        let after = |from: usize, what: &str, pred: &dyn Fn(&str) -> bool| -> Result<usize> {
            events[from..]
                .iter()
                .position(|e| pred(&e.line))
                .map(|i| i + from)
                .with_context(|| format!("round {round}: no event {what}: {events:#?}"))
        };
        let route = after(gone, "default route", &|l| l.starts_with("default via"))?;
        let down = after(gone, "wx-eth0 down", &|l| {
            l.contains(": wx-eth0") && l.contains("state DOWN")
        })?;
        let up = after(down, "wx-eth0 up", &|l| {
            l.contains(": wx-eth0") && l.contains("state UP")
        })?;
        let end = route.max(up);
        // Preparation (an address for the new eth0, a device created) happened
        // before the swap, not inside it.
        let prepared_inside: Vec<_> = events[gone..=end]
            .iter()
            .filter(|e| {
                (e.line.starts_with("local 10.") && !e.line.starts_with("Deleted"))
                    || e.line.contains("wi-eth0@NONE")
            })
            .collect();
        if !prepared_inside.is_empty() {
            violations.push(format!("round {round}: {prepared_inside:?}"));
        }
        route_gaps.push((events[route].at - events[gone].at) * 1e3);
        link_gaps.push((events[end].at - events[gone].at) * 1e3);
        lab.ok("DEL", "gap", json!({}))?;
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (r_med, r_max) = stats(&mut route_gaps);
    let (l_med, l_max) = stats(&mut link_gaps);
    println!(
        "ADD gap over {} rounds: no default route median {r_med:.3} ms, max {r_max:.3} ms; \
         until wx-eth0 is up again median {l_med:.3} ms, max {l_max:.3} ms",
        route_gaps.len()
    );
    ensure!(
        violations.is_empty(),
        "preparation inside the swap: {violations:#?}"
    );
    lab.assert_restored("after the rounds")
}
