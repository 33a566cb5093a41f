//! A node (a network namespace with the bridge the reference plugins make)
//! and its CNI chain — bridge + host-local, any extra plugins (e.g.
//! `tuning`), then `weir` — driven by the real `cnitool` the way a container
//! runtime drives it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use weir_ebpf::BpfRoot;
use weir_ebpf::abi::PodMode;
use weir_ebpf::maps::NodeMaps;

use crate::host;
use crate::netns::Netns;

/// Every CNI version weir supports.
pub const CNI_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

#[derive(Clone)]
pub struct ChainSpec {
    pub cni_version: String,
    pub subnet_v4: String,
    pub subnet_v6: Option<String>,
    /// Whether `weir` is in the chain at all (the unsplit baseline for
    /// comparisons).
    pub with_weir: bool,
    /// Extra keys for weir's entry (failurePolicy, faultInjection, ...).
    pub weir_options: Value,
    /// Conflist entries placed after bridge and before weir, as written
    /// (e.g. `{"type": "tuning", ...}`); their binaries come from the
    /// reference plugins' directory.
    pub before_weir: Vec<Value>,
}

impl ChainSpec {
    pub fn new(cni_version: &str, subnet_v4: &str) -> Self {
        Self {
            cni_version: cni_version.to_string(),
            subnet_v4: subnet_v4.to_string(),
            subnet_v6: None,
            with_weir: true,
            weir_options: json!({}),
            before_weir: Vec::new(),
        }
    }
}

/// The result of one cnitool call.
#[derive(Debug)]
pub struct CniCall {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CniCall {
    pub fn ok(self) -> Result<Self> {
        if !self.success {
            bail!("cnitool failed: {}{}", self.stderr, self.stdout);
        }
        Ok(self)
    }

    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| format!("not JSON: {:?}", self.stdout))
    }
}

pub struct Node {
    pub ns: Netns,
    pub network: String,
    pub work_dir: PathBuf,
    pub state_dir: PathBuf,
    pub bpf_root: PathBuf,
    conf_dir: PathBuf,
    cni_path: String,
    spec_version: String,
}

impl Node {
    /// Makes a node namespace `<tag>-node` and writes its conflist. `weir` is
    /// the plugin binary under test. State, IPAM data and bpffs pins live in
    /// places named after `tag`, so tests run side by side.
    pub fn new(tag: &str, spec: &ChainSpec, weir: &Path) -> Result<Self> {
        let ns = Netns::create(&format!("{tag}-node"))?;
        let work_dir = std::env::temp_dir().join(format!("weir-test-{tag}"));
        let _ = fs::remove_dir_all(&work_dir);
        let conf_dir = work_dir.join("net.d");
        fs::create_dir_all(&conf_dir)?;
        let bpf_root = PathBuf::from(format!("/sys/fs/bpf/weir-test-{tag}"));
        let _ = fs::remove_dir_all(&bpf_root);
        let plugin_dir = work_dir.join("bin");
        fs::create_dir_all(&plugin_dir)?;
        let weir = weir
            .canonicalize()
            .with_context(|| format!("plugin binary {}", weir.display()))?;
        std::os::unix::fs::symlink(weir, plugin_dir.join("weir"))?;
        let node = Self {
            ns,
            network: format!("weir-{tag}"),
            state_dir: work_dir.join("state"),
            bpf_root,
            conf_dir,
            cni_path: format!(
                "{}:{}",
                plugin_dir.display(),
                host::reference_plugins().display()
            ),
            spec_version: spec.cni_version.clone(),
            work_dir,
        };
        node.write_conflist(spec)?;
        Ok(node)
    }

    /// weir's pod id for the pod in `pod`, from its node state record.
    pub fn pod_id(&self, pod: &Netns) -> Result<u32> {
        let dir = self.state_dir.join("networks").join(&self.network);
        let want = pod.path().display().to_string();
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            // Records only: their locks (`.lock`) sit beside them.
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let record: Value = serde_json::from_slice(&fs::read(&path)?)?;
            if record["netns"] == want.as_str() {
                return record["podId"]
                    .as_u64()
                    .map(|id| id as u32)
                    .context("record without podId");
            }
        }
        bail!("no weir state record for {want}")
    }

    /// The mode (pass-through, counting) of pod `pod_id` in this node's maps.
    pub fn pod_mode(&self, pod_id: u32) -> Result<PodMode> {
        Ok(NodeMaps::open(&BpfRoot::new(&self.bpf_root))?.pod_mode(pod_id)?)
    }

    /// Sets the mode of pod `pod_id` in this node's maps.
    pub fn set_pod_mode(&self, pod_id: u32, mode: PodMode) -> Result<()> {
        NodeMaps::open(&BpfRoot::new(&self.bpf_root))?.set_pod_mode(pod_id, mode)?;
        Ok(())
    }

    /// Rewrites the conflist, e.g. to inject a fault for the next ADD.
    pub fn write_conflist(&self, spec: &ChainSpec) -> Result<()> {
        let mut ranges = vec![json!([{ "subnet": spec.subnet_v4 }])];
        let mut routes = vec![json!({ "dst": "0.0.0.0/0" })];
        if let Some(v6) = &spec.subnet_v6 {
            ranges.push(json!([{ "subnet": v6 }]));
            routes.push(json!({ "dst": "::/0" }));
        }
        let mut plugins = vec![json!({
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": ranges,
                "routes": routes,
                "dataDir": self.work_dir.join("ipam"),
            }
        })];
        plugins.extend(spec.before_weir.iter().cloned());
        if spec.with_weir {
            let mut weir = json!({
                "type": "weir",
                "stateDir": self.state_dir,
                "bpfRoot": self.bpf_root,
                "logFile": self.work_dir.join("weir.log"),
                "logLevel": "debug",
            });
            if let (Some(weir), Some(extra)) = (weir.as_object_mut(), spec.weir_options.as_object())
            {
                for (k, v) in extra {
                    weir.insert(k.clone(), v.clone());
                }
            }
            plugins.push(weir);
        }
        let conflist = json!({
            "cniVersion": spec.cni_version,
            "name": self.network,
            "plugins": plugins,
        });
        fs::write(
            self.conf_dir.join("10-weir.conflist"),
            serde_json::to_vec_pretty(&conflist)?,
        )?;
        Ok(())
    }

    pub fn cni_version(&self) -> &str {
        &self.spec_version
    }

    /// Runs `cnitool <verb> <network> <netns>` inside the node namespace.
    pub fn cnitool(
        &self,
        verb: &str,
        pod_netns: &Path,
        ifname: &str,
        cni_args: &str,
    ) -> Result<CniCall> {
        let mut cmd = self
            .ns
            .command(&[host::cnitool().to_str().context("tool path")?]);
        cmd.args([verb, &self.network])
            .arg(pod_netns)
            .env("NETCONFPATH", &self.conf_dir)
            .env("CNI_PATH", &self.cni_path)
            .env("CNI_IFNAME", ifname);
        if cni_args.is_empty() {
            cmd.env_remove("CNI_ARGS");
        } else {
            cmd.env("CNI_ARGS", cni_args);
        }
        let out = cmd.output().context("spawn cnitool")?;
        Ok(CniCall {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// ADD for a Kubernetes-like pod `namespace/name` on interface `ifname`.
    pub fn add(
        &self,
        pod: &Netns,
        ifname: &str,
        k8s_namespace: &str,
        k8s_name: &str,
    ) -> Result<CniCall> {
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={k8s_namespace};K8S_POD_NAME={k8s_name};K8S_POD_UID=uid-{k8s_name}"
        );
        self.cnitool("add", &pod.path(), ifname, &args)
    }

    pub fn del(&self, pod_netns: &Path, ifname: &str) -> Result<CniCall> {
        self.cnitool("del", pod_netns, ifname, "")
    }

    pub fn check(&self, pod: &Netns, ifname: &str) -> Result<CniCall> {
        self.cnitool("check", &pod.path(), ifname, "")
    }

    /// The IPv4 address (without prefix) the ADD result gave the pod.
    pub fn pod_ipv4(result: &Value) -> Result<std::net::IpAddr> {
        for ip in result["ips"].as_array().into_iter().flatten() {
            let addr = ip["address"].as_str().unwrap_or_default();
            if let Some((ip, _)) = addr.split_once('/')
                && let Ok(v4 @ std::net::IpAddr::V4(_)) = ip.parse()
            {
                return Ok(v4);
            }
        }
        bail!("no IPv4 address in result {result}")
    }

    /// The IPv4 gateway the IPAM result gave the pod (the bridge's address).
    pub fn gateway_v4(result: &Value) -> Result<std::net::IpAddr> {
        for ip in result["ips"].as_array().into_iter().flatten() {
            if let Some(Ok(v4 @ std::net::IpAddr::V4(_))) = ip["gateway"].as_str().map(str::parse) {
                return Ok(v4);
            }
        }
        bail!("no IPv4 gateway in result {result}")
    }

    /// weir's own entry of the conflist as the runtime hands it to weir, with
    /// `prevResult` when given.
    pub fn weir_conf(&self, prev_result: Option<&Value>, extra: Value) -> String {
        let mut conf = json!({
            "cniVersion": self.spec_version,
            "name": self.network,
            "type": "weir",
            "stateDir": self.state_dir,
            "bpfRoot": self.bpf_root,
        });
        if let Some(prev) = prev_result {
            conf["prevResult"] = prev.clone();
        }
        for (k, v) in extra.as_object().into_iter().flatten() {
            conf[k] = v.clone();
        }
        conf.to_string()
    }

    /// Runs the plugin binary directly with a hand-made request, for verbs
    /// and arguments cnitool cannot express (GC with valid attachments, bad
    /// input). Returns the call and the exit code.
    pub fn invoke(&self, weir: &Path, env: &[(&str, &str)], stdin: &str) -> Result<(CniCall, i32)> {
        use std::io::Write;
        let mut cmd = self.ns.command(&[weir.to_str().context("weir path")?]);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(stdin.as_bytes())?;
        let out = child.wait_with_output()?;
        Ok((
            CniCall {
                success: out.status.success(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            },
            out.status.code().unwrap_or(-1),
        ))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.bpf_root);
        let _ = fs::remove_dir_all(&self.work_dir);
    }
}

/// Command that runs in a pod namespace; convenience for tests and the demo.
pub fn ping(from: &Netns, to: std::net::IpAddr, count: u32) -> Result<()> {
    let mut cmd: Command = from.command(&[
        "ping",
        "-c",
        &count.to_string(),
        "-i",
        "0.05",
        "-W",
        "2",
        &to.to_string(),
    ]);
    crate::netns::run(&mut cmd).map(|_| ())
}
