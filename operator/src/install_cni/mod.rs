//! `weir-operator install-cni`: puts weir into the node's CNI chain and
//! keeps it there; takes it out again on uninstall.
//!
//! Run by the agent DaemonSet as a container of its own, with the node's
//! CNI bin dir and conf dir mounted (hostPath). It:
//!
//! 1. copies the `weir` binary of the image into the bin dir, atomically
//!    (temp file in the same dir, fsync, mode 0755, rename), and only when
//!    the installed one differs by content;
//! 2. finds the primary conflist the way containerd does ([`conflist`])
//!    and writes weir's own (`00-weir.conflist` unless the primary sorts
//!    before that name) = the primary's list with weir's entry last,
//!    atomically, only when the content differs;
//! 3. keeps both in step: inotify on both dirs plus a resync timer
//!    (`--resync-interval`); a primary that turns invalid (flannel's
//!    `cp` truncates before it writes) removes weir's conflist only after
//!    `--invalid-primary-grace`;
//! 4. on SIGTERM asks the API server whether the DaemonSet is still there
//!    ([`uninstall`]) and removes its files only if not; `--uninstall`
//!    removes them at once.
//!
//! Readiness: after a sync that leaves weir in the node's chain (its
//! conflist written, or the primary already runs weir) and the binary in
//! place, it writes `--ready-file` (one line saying what it chains onto);
//! when that stops being true, and on exit, it removes the file.
//! `install-cni --ready-check` (for an exec probe: the image has no shell)
//! exits 0 and prints the line when the file exists, else exits 1.
//!
//! Logs go to stderr (plain text unless stderr is a terminal); stdout is
//! unused except by `--ready-check`.

pub mod conflist;
pub mod files;
pub mod uninstall;
pub mod watch;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use conflist::{Outcome, WeirSettings};
use files::{BinaryChange, BinaryInstaller};
use uninstall::{DaemonSetLookup, TermAction};

/// `weir-operator install-cni` flags. Every one also reads the named
/// environment variable, so the chart can pass its values as env.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The weir CNI binary to install (the one in this image).
    #[arg(long, env = "WEIR_CNI_BINARY", default_value = "/usr/local/bin/weir")]
    pub cni_binary: PathBuf,
    /// The node's CNI bin dir, as mounted in this container.
    #[arg(long, env = "WEIR_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The node's CNI conf dir, as mounted in this container.
    #[arg(long, env = "WEIR_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// The file name of weir's conflist; it must sort before the primary's
    /// (when it does not, a name that does is chosen and logged).
    #[arg(long, env = "WEIR_CONFLIST_NAME", default_value = "00-weir.conflist",
          value_parser = parse_conflist_name)]
    pub conflist_name: String,
    /// weir's `failurePolicy`: Ignore (a pod weir cannot split starts
    /// unobserved) or Fail (it does not start).
    #[arg(long, env = "WEIR_FAILURE_POLICY", default_value = "Ignore",
          value_parser = ["Ignore", "Fail"])]
    pub failure_policy: String,
    /// weir's `logLevel`.
    #[arg(long, env = "WEIR_CNI_LOG_LEVEL", default_value = "info",
          value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub cni_log_level: String,
    /// weir's `logFile` (a node path); empty or unset: none (the plugin
    /// logs to its stderr, which the runtime keeps in its own log).
    #[arg(long, env = "WEIR_CNI_LOG_FILE")]
    pub cni_log_file: Option<String>,
    /// weir's `attach` mode: tc (clsact + cls_bpf, any kernel) or tcx
    /// (kernel >= 6.6).
    #[arg(long, env = "WEIR_ATTACH", default_value = "tc", value_parser = ["tc", "tcx"])]
    pub attach: String,
    /// weir's `stateDir` (a node path).
    #[arg(long, env = "WEIR_STATE_DIR", default_value = "/var/lib/weir")]
    pub state_dir: String,
    /// weir's `bpfRoot` (a node path).
    #[arg(long, env = "WEIR_BPF_ROOT", default_value = "/sys/fs/bpf/weir")]
    pub bpf_root: String,
    /// The agent DaemonSet whose existence on SIGTERM means a restart (its
    /// absence: an uninstall). Unset: SIGTERM never uninstalls.
    #[arg(long, env = "WEIR_DAEMONSET_NAME")]
    pub daemonset_name: Option<String>,
    /// The DaemonSet's namespace (the pod's own).
    #[arg(long, env = "POD_NAMESPACE")]
    pub daemonset_namespace: Option<String>,
    /// Kubeconfig for the API server; without it, the in-cluster
    /// configuration when KUBERNETES_SERVICE_HOST is set.
    #[arg(long, env = "WEIR_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// How long the SIGTERM lookup of the DaemonSet may take, retries
    /// included (keep it well below the pod's termination grace period).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub term_api_timeout: Duration,
    /// Written after a sync that leaves weir in the chain; removed when
    /// not. Empty: none.
    #[arg(long, env = "WEIR_READY_FILE", default_value = "/tmp/weir-cni-ready")]
    pub ready_file: PathBuf,
    /// Full resync period, besides inotify's events.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub resync_interval: Duration,
    /// How long the primary must stay invalid or absent before weir's
    /// conflist is removed (a primary being rewritten in place is briefly
    /// empty).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub invalid_primary_grace: Duration,
    /// Remove weir's conflist and binary (only files this installer
    /// writes) and exit.
    #[arg(long)]
    pub uninstall: bool,
    /// Exit 0 and print the ready line when --ready-file exists, else exit
    /// 1: a readiness probe for an image without a shell.
    #[arg(long, conflicts_with = "uninstall")]
    pub ready_check: bool,
    /// This installer's log level (overridden by RUST_LOG).
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

fn parse_conflist_name(text: &str) -> Result<String, String> {
    if text.contains('/') || !text.ends_with(".conflist") || text.starts_with('.') {
        return Err(format!(
            "{text:?}: a file name ending in .conflist, not hidden, without '/'"
        ));
    }
    Ok(text.to_owned())
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 5s or 500ms"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return Err(format!("{text:?}: unit must be ms, s or m")),
    };
    if d.is_zero() {
        return Err(format!("{text:?}: must be positive"));
    }
    Ok(d)
}

/// Runs the subcommand.
pub fn main(args: Args) -> Result<()> {
    if args.ready_check {
        return ready_check(&args.ready_file);
    }
    init_tracing(&args.log_level);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut installer = Installer::new(&args);
    if args.uninstall {
        return installer.uninstall();
    }
    runtime.block_on(run(installer, args))
}

fn ready_check(ready_file: &Path) -> Result<()> {
    match std::fs::read_to_string(ready_file) {
        Ok(line) => {
            print!("{line}");
            Ok(())
        }
        Err(e) => bail!(
            "not ready ({}: {e}): install-cni has not synced yet, or weir is not in this node's CNI chain; its log says why",
            ready_file.display()
        ),
    }
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// The installer's state between syncs.
pub struct Installer {
    conf_dir: PathBuf,
    conflist_name: String,
    settings: WeirSettings,
    binary: BinaryInstaller,
    ready_file: Option<PathBuf>,
    grace: Duration,
    /// What this process last wrote (name, content).
    last_written: Option<(String, Vec<u8>)>,
    /// The last outcome logged, to log each change once.
    last_logged: Option<String>,
    /// Since when there has been no valid primary.
    invalid_since: Option<Instant>,
    ready: Option<bool>,
    errors_now: Vec<String>,
    last_errors: Vec<String>,
}

/// What a sync asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncResult {
    /// Sync again by then (a grace period running out).
    pub wake_at: Option<Instant>,
    pub ready: bool,
}

impl Installer {
    pub fn new(args: &Args) -> Installer {
        Installer {
            conf_dir: args.cni_conf_dir.clone(),
            conflist_name: args.conflist_name.clone(),
            settings: WeirSettings {
                failure_policy: args.failure_policy.clone(),
                log_level: args.cni_log_level.clone(),
                log_file: args.cni_log_file.clone().filter(|f| !f.is_empty()),
                attach: args.attach.clone(),
                state_dir: args.state_dir.clone(),
                bpf_root: args.bpf_root.clone(),
            },
            binary: BinaryInstaller::new(args.cni_binary.clone(), args.cni_bin_dir.clone()),
            ready_file: Some(args.ready_file.clone()).filter(|p| !p.as_os_str().is_empty()),
            grace: args.invalid_primary_grace,
            last_written: None,
            last_logged: None,
            invalid_since: None,
            ready: None,
            errors_now: Vec::new(),
            last_errors: Vec::new(),
        }
    }

    fn dir(&self) -> String {
        self.conf_dir.display().to_string()
    }

    /// Brings the bin dir and the conf dir in line once.
    pub fn sync(&mut self, now: Instant) -> SyncResult {
        let result = self.sync_inner(now);
        // Each error once while it lasts (a resync every few seconds would
        // repeat it); repeats at debug.
        let errors = std::mem::take(&mut self.errors_now);
        for e in &errors {
            if self.last_errors.contains(e) {
                debug!("still: {e}");
            } else {
                error!("{e}");
            }
        }
        self.last_errors = errors;
        self.set_ready(result.ready);
        result
    }

    fn fail(&mut self, error: String) {
        self.errors_now.push(error);
    }

    fn sync_inner(&mut self, now: Instant) -> SyncResult {
        let not_ready = SyncResult {
            wake_at: None,
            ready: false,
        };
        // The binary first: a conflist naming weir without the binary
        // fails every pod, whatever the failurePolicy.
        let binary_missing = match self.binary.ensure() {
            Ok(BinaryChange::Unchanged) => None,
            Ok(BinaryChange::Installed { why, sha256 }) => {
                info!(
                    "installed {} (sha256 {sha256}) from {}: {why}",
                    self.binary.target().display(),
                    self.binary.source.display()
                );
                None
            }
            Err(e) => {
                self.fail(format!(
                    "cannot install {} from {}: {e}",
                    self.binary.target().display(),
                    self.binary.source.display()
                ));
                (!self.binary.target().exists())
                    .then(|| format!("weir's binary is not installed: {e}"))
            }
        };
        let files = match conflist::read_dir(&self.conf_dir) {
            Ok(files) => files,
            Err(e) => {
                self.fail(format!("cannot read {}: {e}", self.dir()));
                return not_ready;
            }
        };
        let mut plan = conflist::plan(&files, &self.conflist_name, &self.settings, &self.dir());
        if let Some(why) = binary_missing {
            plan.outcome = Outcome::NoPrimary { reason: why };
            if let Some((name, _)) = plan.write.take() {
                plan.remove.push(name);
            }
        }
        let mut ok = true;
        let mut wake_at = None;
        match &plan.outcome {
            Outcome::NoPrimary { .. } => {
                let since = *self.invalid_since.get_or_insert(now);
                let existing: Vec<&String> = plan
                    .remove
                    .iter()
                    .filter(|n| files.iter().any(|f| &&f.name == n))
                    .collect();
                if !existing.is_empty() && now < since + self.grace {
                    debug!(
                        "no valid primary for {:?} so far; removing weir's conflist if it lasts {:?}",
                        now - since,
                        self.grace
                    );
                    wake_at = Some(since + self.grace);
                    plan.remove.clear();
                }
            }
            _ => self.invalid_since = None,
        }
        let summary = match &plan.outcome {
            Outcome::Chained {
                primary,
                target,
                renamed,
                summary,
            } => {
                if *renamed {
                    format!(
                        "weir chained onto {primary} in {target} ({summary}); {primary} sorts before {}, so weir's conflist is named {target}",
                        self.conflist_name
                    )
                } else {
                    format!("weir chained onto {primary} in {target} ({summary})")
                }
            }
            Outcome::AlreadyChained { primary } => format!(
                "{}/{primary} already runs weir: leaving it alone, writing no conflist of weir's",
                self.dir()
            ),
            Outcome::NoPrimary { reason } => {
                format!("{reason}; weir's conflist is not written")
            }
        };
        if let Some((name, content)) = &plan.write {
            let existing = files.iter().find(|f| &f.name == name);
            let current = existing.and_then(|f| f.content.as_ref().ok());
            if current != Some(content) {
                let why = self.rewrite_reason(name, current, &plan.outcome);
                match files::write_atomic(&self.conf_dir, name, content, 0o644) {
                    Ok(()) => {
                        info!("wrote {}/{name}: {summary}; why: {why}", self.dir());
                        self.last_written = Some((name.clone(), content.clone()));
                        // Said just now.
                        self.last_logged = Some(summary.clone());
                    }
                    Err(e) => {
                        self.fail(format!("cannot write {}/{name}: {e}", self.dir()));
                        ok = false;
                    }
                }
            } else if self.last_written.is_none() {
                self.last_written = Some((name.clone(), content.clone()));
            }
        }
        for name in &plan.remove {
            match files::remove(&self.conf_dir, name) {
                Ok(true) => info!(
                    "removed weir's {}/{name}: {}",
                    self.dir(),
                    match &plan.outcome {
                        Outcome::Chained { target, .. } =>
                            format!("stale (weir's conflist is now {target})"),
                        Outcome::AlreadyChained { primary } =>
                            format!("{primary} already runs weir"),
                        Outcome::NoPrimary { reason } => reason.clone(),
                    }
                ),
                Ok(false) => {}
                Err(e) => {
                    self.fail(format!("cannot remove {}/{name}: {e}", self.dir()));
                    ok = false;
                }
            }
        }
        if self.last_logged.as_ref() != Some(&summary) {
            match &plan.outcome {
                Outcome::NoPrimary { .. } => warn!("{summary}"),
                _ => info!("{summary}"),
            }
            self.last_logged = Some(summary);
        }
        SyncResult {
            wake_at,
            ready: ok && plan.outcome.is_ready(),
        }
    }

    fn rewrite_reason(&self, name: &str, current: Option<&Vec<u8>>, outcome: &Outcome) -> String {
        let primary = match outcome {
            Outcome::Chained { primary, .. } => primary.as_str(),
            _ => "the primary",
        };
        match (current, &self.last_written) {
            (None, None) => "it did not exist".into(),
            (None, Some(_)) => "it was removed".into(),
            (Some(cur), Some((last_name, last))) if last_name == name && cur == last => {
                format!("{primary} changed")
            }
            (Some(_), Some((last_name, _))) if last_name == name => {
                "it was edited outside the installer".into()
            }
            (Some(cur), _) if conflist::is_generated(cur) => format!(
                "it was made from another primary or other settings than {primary} and this installer's"
            ),
            (Some(_), _) => "it was damaged (not JSON)".into(),
        }
    }

    fn set_ready(&mut self, ready: bool) {
        let Some(path) = &self.ready_file else {
            return;
        };
        let line = self.last_logged.clone().unwrap_or_default();
        let result = if ready {
            let dir = path.parent().unwrap_or(Path::new("."));
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("ready");
            let current = std::fs::read_to_string(path).ok();
            if current.as_deref() == Some(&format!("{line}\n")) {
                Ok(())
            } else {
                files::write_atomic(dir, name, format!("{line}\n").as_bytes(), 0o644)
            }
        } else {
            std::fs::remove_file(path).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
        };
        if let Err(e) = result {
            error!("cannot update the ready file {}: {e}", path.display());
        }
        if self.ready != Some(ready) {
            debug!("ready: {ready}");
            self.ready = Some(ready);
        }
    }

    /// Removes weir's conflists (files with the generated marker only),
    /// then, after a moment for the runtime to reload, the binary if it is
    /// this image's. The binary stays while another conflist still runs
    /// weir.
    pub fn uninstall(&mut self) -> Result<()> {
        self.set_ready(false);
        let dir = self.dir();
        let files = conflist::read_dir(&self.conf_dir).with_context(|| format!("reading {dir}"))?;
        let mut removed = 0;
        let mut failed = Vec::new();
        let mut still_running = None;
        for f in &files {
            let Ok(bytes) = &f.content else { continue };
            if conflist::is_generated(bytes) {
                match files::remove(&self.conf_dir, &f.name) {
                    Ok(_) => {
                        info!("uninstall: removed {dir}/{}", f.name);
                        removed += 1;
                    }
                    Err(e) => failed.push(format!("{dir}/{}: {e}", f.name)),
                }
            } else if conflist::parse_primary(&f.name, bytes).is_ok_and(|p| p.has_weir()) {
                still_running = Some(f.name.clone());
            }
        }
        files::remove_stale_temps(&self.conf_dir);
        let binary = self.binary.target();
        if let Some(other) = still_running {
            warn!(
                "uninstall: leaving {}: {dir}/{other} (not weir's) still runs weir",
                binary.display()
            );
        } else {
            if removed > 0 {
                // A pod whose ADD started with weir's conflist still needs
                // the binary for a moment.
                std::thread::sleep(Duration::from_secs(1));
            }
            match self.binary.remove_if_ours() {
                Ok(None) => info!("uninstall: {} is gone", binary.display()),
                Ok(Some(why)) => warn!("uninstall: leaving {}: {why}", binary.display()),
                Err(e) => failed.push(format!("{}: {e}", binary.display())),
            }
        }
        files::remove_stale_temps(&self.binary.bin_dir);
        if !failed.is_empty() {
            bail!("uninstall: cannot remove {}", failed.join("; "));
        }
        Ok(())
    }
}

/// Where the API server is, if anywhere.
async fn kube_config(args: &Args) -> Option<Result<kube::Config, String>> {
    if let Some(path) = &args.kubeconfig {
        let config = match kube::config::Kubeconfig::read_from(path) {
            Ok(kc) => kube::Config::from_custom_kubeconfig(
                kc,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(|e| format!("kubeconfig {}: {e}", path.display())),
            Err(e) => Err(format!("kubeconfig {}: {e}", path.display())),
        };
        return Some(config);
    }
    std::env::var_os("KUBERNETES_SERVICE_HOST")
        .map(|_| kube::Config::incluster().map_err(|e| format!("in-cluster configuration: {e}")))
}

/// The DaemonSet lookup, as far as it is configured.
struct DaemonSetRef {
    client: kube::Client,
    namespace: String,
    name: String,
}

impl DaemonSetRef {
    async fn from_args(args: &Args) -> Result<DaemonSetRef, String> {
        let name = args
            .daemonset_name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or("no DaemonSet named (--daemonset-name / WEIR_DAEMONSET_NAME)")?;
        let namespace = args
            .daemonset_namespace
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or("no DaemonSet namespace (--daemonset-namespace / POD_NAMESPACE)")?;
        let config = kube_config(args)
            .await
            .ok_or("no API server (neither --kubeconfig nor KUBERNETES_SERVICE_HOST)")??;
        let client =
            kube::Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))?;
        Ok(DaemonSetRef {
            client,
            namespace,
            name,
        })
    }

    async fn lookup(&self, budget: Duration) -> DaemonSetLookup {
        uninstall::lookup(&self.client, &self.namespace, &self.name, budget).await
    }
}

async fn run(mut installer: Installer, args: Args) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    info!(
        "install-cni: {} -> {}, conf dir {}, weir's conflist {}",
        args.cni_binary.display(),
        args.cni_bin_dir.display(),
        args.cni_conf_dir.display(),
        args.conflist_name
    );
    for dir in [&args.cni_conf_dir, &args.cni_bin_dir] {
        for stale in files::remove_stale_temps(dir) {
            info!(
                "removed a temporary file an earlier installer left: {}",
                stale.display()
            );
        }
    }

    let daemonset = DaemonSetRef::from_args(&args).await;
    match &daemonset {
        Ok(ds) => {
            // Say now whether a SIGTERM would be read right.
            let (client, namespace, name) =
                (ds.client.clone(), ds.namespace.clone(), ds.name.clone());
            tokio::spawn(async move {
                let found =
                    uninstall::lookup(&client, &namespace, &name, Duration::from_secs(10)).await;
                match found {
                    DaemonSetLookup::Exists => info!(
                        "on SIGTERM weir's files stay while DaemonSet {namespace}/{name} exists"
                    ),
                    DaemonSetLookup::Gone | DaemonSetLookup::BeingDeleted => error!(
                        "DaemonSet {namespace}/{name}: {found:?}; check WEIR_DAEMONSET_NAME and POD_NAMESPACE: a SIGTERM now uninstalls weir from this node"
                    ),
                    DaemonSetLookup::AccessRevoked(e) => error!(
                        "cannot read DaemonSet {namespace}/{name} ({e}); grant this pod `get` on daemonsets: as it is, every SIGTERM uninstalls weir from this node"
                    ),
                    other => warn!("DaemonSet {namespace}/{name}: {other:?}"),
                }
            });
        }
        Err(e) => info!("SIGTERM will not uninstall: {e}"),
    }

    let mut watch = match watch::DirWatch::new() {
        Ok(mut w) => {
            w.watch(&args.cni_conf_dir, None);
            w.watch(&args.cni_bin_dir, Some(files::BINARY_NAME));
            Some(w)
        }
        Err(e) => {
            warn!("no inotify ({e}); polling every {:?}", args.resync_interval);
            None
        }
    };

    let quiet = Duration::from_millis(50);
    loop {
        let result = installer.sync(Instant::now());
        if let Some(w) = watch.as_mut() {
            for (dir, e) in w.ensure() {
                debug!("not watching {} yet: {e}", dir.display());
            }
        }
        let mut wake = Instant::now() + args.resync_interval;
        if let Some(at) = result.wake_at {
            wake = wake.min(at);
        }
        let changed = async {
            match watch.as_mut() {
                Some(w) => w.changed(quiet).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            names = changed => debug!("changed: {names:?}"),
            _ = tokio::time::sleep_until(wake) => {}
            _ = sigterm.recv() => {
                info!("SIGTERM");
                break;
            }
            _ = sigint.recv() => {
                info!("SIGINT");
                break;
            }
        }
    }

    let lookup = match &daemonset {
        Ok(ds) => ds.lookup(args.term_api_timeout).await,
        Err(e) => DaemonSetLookup::NotConfigured(e.clone()),
    };
    let (action, reason) = uninstall::decide(&lookup);
    match action {
        TermAction::Uninstall => {
            info!("uninstalling weir from this node: {reason}");
            installer.uninstall()?;
        }
        TermAction::Keep => {
            info!("leaving weir's conflist and binary in place: {reason}");
            installer.set_ready(false);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_names_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_conflist_name("00-weir.conflist").is_ok());
        assert!(parse_conflist_name("00-weir.conf").is_err());
        assert!(parse_conflist_name("a/00-weir.conflist").is_err());
        assert!(parse_conflist_name(".00-weir.conflist").is_err());
    }
}
