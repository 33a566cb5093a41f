//! The local multi-node cluster (`e2e/cluster/cluster.sh`) from a test:
//! brought up under a name of the test's own, driven with the real kubectl
//! and helm, taken down on drop (and by the next `up` after a killed run).
//! `WEIR_CLUSTER_KEEP=1` leaves it up for a look (`cluster.sh env` prints
//! its KUBECONFIG).

use std::ffi::OsStr;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::controlplane::{Tools, kubernetes_version};

/// The repository's root (this crate lives in `e2e/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e has a parent")
        .to_path_buf()
}

#[derive(Debug)]
pub struct Cluster {
    name: String,
    nodes: usize,
    api_port: u16,
    dir: PathBuf,
    tools: Tools,
}

impl Cluster {
    /// Brings up `nodes` worker nodes under `name` (namespaces `<name>-cp`,
    /// `<name>-node-N`), the API relayed to host `127.0.0.1:api_port`.
    pub fn up(name: &str, nodes: usize, api_port: u16) -> Result<Cluster> {
        let tools = Tools::locate()?;
        tools.helm()?;
        let dir = PathBuf::from("/var/lib/weir-cluster").join(name);
        let cluster = Cluster {
            name: name.to_owned(),
            nodes,
            api_port,
            dir,
            tools,
        };
        let started = Instant::now();
        let out = cluster.script(&["up"]).output()?;
        if !out.status.success() {
            bail!(
                "cluster.sh up failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        eprintln!("cluster {name}: up in {:.0?}", started.elapsed());
        Ok(cluster)
    }

    fn script(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("e2e/cluster/cluster.sh"))
            .args(args)
            .env("WEIR_CLUSTER_NAME", &self.name)
            .env("WEIR_CLUSTER_NODES", self.nodes.to_string())
            .env("WEIR_CLUSTER_API_PORT", self.api_port.to_string())
            .env_remove("WEIR_CLUSTER_DIR")
            .stdin(Stdio::null());
        cmd
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's name, e.g. `weirt-node-1` (1-based).
    pub fn node(&self, i: usize) -> String {
        format!("{}-node-{i}", self.name)
    }

    /// The node's own directories as the host sees them: `node_root(1)`
    /// joined with `etc/cni/net.d` is node 1's `/etc/cni/net.d`.
    pub fn node_root(&self, i: usize) -> PathBuf {
        self.dir.join("nodes").join(self.node(i))
    }

    /// The node's file at `path` (absolute, as the node sees it).
    pub fn node_path(&self, i: usize, path: &str) -> PathBuf {
        self.node_root(i).join(path.trim_start_matches('/'))
    }

    /// The node's underlay address (its InternalIP).
    pub fn node_ip(&self, i: usize) -> String {
        format!("10.200.0.1{i}")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Runs `args` inside node `i`'s network, mount and UTS namespaces.
    pub fn node_exec(&self, i: usize, args: &[&str]) -> Result<String> {
        let mut all = vec!["node".to_owned(), i.to_string()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = self.script(&all).output()?;
        checked("cluster.sh node", &all, out)
    }

    /// Imports OCI archives into every node's containerd.
    pub fn import(&self, archives: &[&Path]) -> Result<()> {
        let mut args = vec!["import".to_owned()];
        args.extend(archives.iter().map(|a| a.display().to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.script(&args).output()?;
        checked("cluster.sh", &args, out).map(drop)
    }

    pub fn kubectl_command(&self) -> Command {
        self.tools.kubectl_command(&self.kubeconfig(), &self.dir)
    }

    /// kubectl `args`; its stdout, or an error with its stderr.
    pub fn kubectl<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let out = self.kubectl_command().args(&args).output()?;
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let shown: Vec<&str> = shown.iter().map(String::as_str).collect();
        checked("kubectl", &shown, out)
    }

    /// kubectl `args` whatever its exit status.
    pub fn kubectl_output(&self, args: &[&str]) -> Result<Output> {
        Ok(self.kubectl_command().args(args).output()?)
    }

    /// kubectl `args ... -o json`, parsed.
    pub fn kubectl_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.kubectl(&all)?;
        serde_json::from_str(&text).with_context(|| format!("kubectl {all:?} printed no JSON"))
    }

    /// `kubectl apply --server-side -f -` of `manifests`.
    pub fn apply(&self, manifests: &str) -> Result<String> {
        let out = self.apply_output(manifests)?;
        checked("kubectl", &["apply", "-f", "-"], out)
    }

    /// kubectl `args` with `stdin` as its input; its stdout, or an error.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Result<String> {
        checked("kubectl", args, self.stdin_output(args, stdin)?)
    }

    /// [`apply`](Self::apply) whatever its exit status (to see refusals).
    pub fn apply_output(&self, manifests: &str) -> Result<Output> {
        self.stdin_output(
            &[
                "apply",
                "--server-side",
                "--field-manager=weir-tests",
                "-f",
                "-",
            ],
            manifests,
        )
    }

    fn stdin_output(&self, args: &[&str], stdin: &str) -> Result<Output> {
        let mut child = self
            .kubectl_command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(stdin.as_bytes())?;
        Ok(child.wait_with_output()?)
    }

    /// helm `args` against this cluster; its stdout, or an error.
    pub fn helm(&self, args: &[&str]) -> Result<String> {
        let home = self.dir.join("helm-home");
        std::fs::create_dir_all(&home)?;
        let out = Command::new(self.tools.helm()?)
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .stdin(Stdio::null())
            .output()?;
        checked("helm", args, out)
    }

    /// The end of one of the cluster's logs, e.g. `weirt-node-1/kubelet.log`.
    pub fn log_tail(&self, log: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.logs().join(log)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The Kubernetes release the nodes run.
    pub fn kubernetes_version(&self) -> &'static str {
        kubernetes_version()
    }

    /// Waits until `check` gives `Some`, polling; fails with `what` and the
    /// last error after `timeout`.
    pub fn wait<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut() -> Result<Option<T>>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match check() {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => last = "not yet".into(),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what}; last: {last}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os("WEIR_CLUSTER_KEEP").is_some_and(|v| v == "1") {
            eprintln!(
                "cluster {}: kept (WEIR_CLUSTER_KEEP=1): export KUBECONFIG={}; take it down with \
                 WEIR_CLUSTER_NAME={} bash e2e/cluster/cluster.sh down",
                self.name,
                self.kubeconfig().display(),
                self.name
            );
            return;
        }
        match self.script(&["down"]).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "cluster {}: down failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("cluster {}: down failed: {e}", self.name),
        }
    }
}

fn checked(tool: &str, args: &[&str], out: Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "{tool} {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
