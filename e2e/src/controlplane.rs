//! A real Kubernetes control plane for tests: etcd and kube-apiserver,
//! built from their Go modules by `scripts/controlplane-tools.sh` (at the
//! versions in `scripts/k8s-tools/versions.env`), started on loopback with
//! free ports, fresh certificates and a temporary directory.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let cp = weir_e2e::controlplane::ControlPlane::start()?;
//! cp.kubectl_ok(["apply", "--server-side", "-f", "crds/"])?;
//! let client = cp.client().await?;
//! # let _ = client; Ok(()) }
//! ```
//!
//! [`ControlPlane::start`] gives a control plane of one's own, stopped and
//! removed on drop; [`ControlPlane::shared`] one per test process, started on
//! first use and stopped at exit (its processes also die with the process if
//! it is killed).
//!
//! What runs: etcd (client and peer URLs on 127.0.0.1, `--unsafe-no-fsync`:
//! the data is thrown away), kube-apiserver on `https://127.0.0.1:<port>`
//! with RBAC authorization, client certificates signed by a fresh CA
//! (the admin's in `system:masters`) and a service-account signing key. No
//! scheduler or nodes: objects are stored and validated, nothing reconciles
//! them. [`ControlPlane::start_with_gc`] (and [`ControlPlane::shared_with_gc`])
//! add kube-controller-manager running only its garbage collector
//! (`--controllers=garbagecollector`), so ownerReferences are honoured: the
//! dependents of a deleted object are deleted, as in a real cluster.
//!
//! `helm` (built by the same script) is found the same way:
//! [`Tools::helm`].
//!
//! The binaries are found in `$WEIR_K8S_BIN_DIR`, else in
//! `$WEIR_TOOLS/k8s/<kubernetes version>/` (WEIR_TOOLS defaults to
//! `/var/cache/weir/tools`). When they are missing, starting fails with what
//! to run: tests that need a control plane fail, they are never skipped.
//! `WEIR_CONTROLPLANE_KEEP=1` keeps the directory (certificates, kubeconfig,
//! logs) after the stop, for a look at the logs.

use std::ffi::OsStr;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// `scripts/k8s-tools/versions.env`, the one place the versions are pinned.
const VERSIONS_ENV: &str = include_str!("../../scripts/k8s-tools/versions.env");

/// How long kube-apiserver may take to become ready (2 busy cores are slow).
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Start attempts: ports are picked free, but another process may take one
/// before etcd or kube-apiserver binds it.
const START_ATTEMPTS: usize = 3;

fn pinned(name: &str) -> &'static str {
    VERSIONS_ENV
        .lines()
        .filter_map(|l| l.trim().strip_prefix(name)?.strip_prefix('='))
        .map(str::trim)
        .next()
        .unwrap_or_else(|| panic!("scripts/k8s-tools/versions.env sets no {name}"))
}

/// The Kubernetes release the control plane runs (e.g. `v1.37.1`).
pub fn kubernetes_version() -> &'static str {
    pinned("KUBERNETES_VERSION")
}

/// The etcd release the control plane runs (e.g. `v3.6.16`).
pub fn etcd_version() -> &'static str {
    pinned("ETCD_VERSION")
}

/// Where the binaries are (etcd, kube-apiserver and kubectl are required;
/// kube-controller-manager and helm only by what uses them).
#[derive(Debug, Clone)]
pub struct Tools {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kubectl: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub helm: PathBuf,
}

impl Tools {
    /// Finds the binaries, or says which are missing and how to build them.
    pub fn locate() -> Result<Tools> {
        let dir = match std::env::var_os("WEIR_K8S_BIN_DIR") {
            Some(d) => PathBuf::from(d),
            None => {
                let tools = std::env::var_os("WEIR_TOOLS")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| "/var/cache/weir/tools".into());
                tools.join("k8s").join(kubernetes_version())
            }
        };
        Self::in_dir(&dir)
    }

    /// The binaries in `dir`, or which are missing and how to build them.
    pub fn in_dir(dir: &Path) -> Result<Tools> {
        let tools = Tools {
            etcd: dir.join("etcd"),
            kube_apiserver: dir.join("kube-apiserver"),
            kubectl: dir.join("kubectl"),
            kube_controller_manager: dir.join("kube-controller-manager"),
            helm: dir.join("helm"),
        };
        tools.require(&[&tools.etcd, &tools.kube_apiserver, &tools.kubectl])?;
        Ok(tools)
    }

    /// `kubectl` with `kubeconfig` and a discovery cache of its own under
    /// `dir`, no `KUBECONFIG` from the environment, to add arguments to.
    pub fn kubectl_command(&self, kubeconfig: &Path, dir: &Path) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!(
                "--cache-dir={}",
                dir.join("kubectl-cache").display()
            ))
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null());
        cmd
    }

    /// kube-controller-manager, or what to run to build it.
    pub fn kube_controller_manager(&self) -> Result<&Path> {
        self.require(&[&self.kube_controller_manager])?;
        Ok(&self.kube_controller_manager)
    }

    /// helm, or what to run to build it.
    pub fn helm(&self) -> Result<&Path> {
        self.require(&[&self.helm])?;
        Ok(&self.helm)
    }

    fn require(&self, paths: &[&PathBuf]) -> Result<()> {
        let missing: Vec<String> = paths
            .iter()
            .filter(|p| !is_executable(p))
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            bail!(
                "control plane tools missing: {} (etcd {}, Kubernetes {}); build them with `bash scripts/controlplane-tools.sh` \
                 (scripts/bootstrap.sh runs it), or point WEIR_K8S_BIN_DIR at a directory holding etcd, kube-apiserver and kubectl",
                missing.join(", "),
                etcd_version(),
                kubernetes_version()
            );
        }
        Ok(())
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A running etcd + kube-apiserver, and a kubeconfig for its admin.
pub struct ControlPlane {
    dir: PathBuf,
    tools: Tools,
    server: String,
    kubeconfig: PathBuf,
    /// kube-apiserver first: it is stopped before etcd.
    children: Mutex<Vec<(&'static str, Child)>>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server", &self.server)
            .field("dir", &self.dir)
            .finish()
    }
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver and waits until the API server is
    /// ready (`/readyz`). Blocking; takes some seconds.
    pub fn start() -> Result<ControlPlane> {
        Self::start_inner(false, false)
    }

    /// [`start`](Self::start), plus kube-controller-manager running only the
    /// garbage collector (it deletes the dependents of deleted owners; it
    /// notices a new CRD's kind within its 30 s discovery resync).
    pub fn start_with_gc() -> Result<ControlPlane> {
        Self::start_inner(false, true)
    }

    /// [`shared`](Self::shared), with the garbage collector
    /// ([`start_with_gc`](Self::start_with_gc)). A test process uses
    /// either this or `shared`.
    pub fn shared_with_gc() -> &'static ControlPlane {
        static SHARED: OnceLock<std::result::Result<ControlPlane, String>> = OnceLock::new();
        extern "C" fn stop_shared() {
            if let Some(Ok(cp)) = SHARED.get() {
                cp.stop();
            }
        }
        Self::shared_in(&SHARED, stop_shared, true)
    }

    /// One control plane for the whole test process, started on first use.
    /// Its processes are started by a thread that lives as long as the
    /// process and are bound to it (`PR_SET_PDEATHSIG`), and an exit handler
    /// stops them and removes the directory. Panics (with the reason) when
    /// it cannot start; every later call panics with the same reason.
    pub fn shared() -> &'static ControlPlane {
        static SHARED: OnceLock<std::result::Result<ControlPlane, String>> = OnceLock::new();
        extern "C" fn stop_shared() {
            if let Some(Ok(cp)) = SHARED.get() {
                cp.stop();
            }
        }
        Self::shared_in(&SHARED, stop_shared, false)
    }

    fn shared_in(
        shared: &'static OnceLock<std::result::Result<ControlPlane, String>>,
        stop_shared: extern "C" fn(),
        gc: bool,
    ) -> &'static ControlPlane {
        let shared = shared.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new().name("weir-controlplane".into()).spawn(move || {
                let started = ControlPlane::start_inner(true, gc);
                let ok = started.is_ok();
                let _ = tx.send(started);
                if ok {
                    // The children die with this thread (PR_SET_PDEATHSIG):
                    // keep it for the life of the process.
                    loop {
                        std::thread::park();
                    }
                }
            });
            let started = match spawned {
                Ok(_) => rx.recv().unwrap_or_else(|_| Err(anyhow!("the control plane thread died"))),
                Err(e) => Err(anyhow!("spawning the control plane thread: {e}")),
            };
            // SAFETY: registers a plain function with no arguments.
            if started.is_ok() && unsafe { libc::atexit(stop_shared) } != 0 {
                eprintln!("controlplane: atexit failed: the shared control plane's directory stays after exit");
            }
            started.map_err(|e| format!("{e:#}"))
        });
        match shared {
            Ok(cp) => cp,
            Err(e) => panic!("the shared control plane could not start: {e}"),
        }
    }

    fn start_inner(bind_to_thread: bool, gc: bool) -> Result<ControlPlane> {
        let tools = Tools::locate()?;
        if gc {
            tools.kube_controller_manager()?;
        }
        let mut last = None;
        for attempt in 1..=START_ATTEMPTS {
            match Self::try_start(&tools, bind_to_thread, gc) {
                Ok(cp) => return Ok(cp),
                Err(StartError::PortTaken(e)) if attempt < START_ATTEMPTS => {
                    eprintln!(
                        "controlplane: attempt {attempt}: a port was taken ({e:#}); again with other ports"
                    );
                    last = Some(e);
                }
                Err(StartError::PortTaken(e) | StartError::Other(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("control plane did not start")))
    }

    fn try_start(
        tools: &Tools,
        bind_to_thread: bool,
        gc: bool,
    ) -> std::result::Result<ControlPlane, StartError> {
        let dir = make_temp_dir().map_err(StartError::Other)?;
        let mut cp = ControlPlane {
            dir: dir.clone(),
            tools: tools.clone(),
            server: String::new(),
            kubeconfig: dir.join("kubeconfig"),
            children: Mutex::new(Vec::new()),
        };
        // From here on, dropping `cp` stops what was started and removes `dir`.
        let [etcd_client, etcd_peer, secure] = free_ports().map_err(StartError::Other)?;
        cp.server = format!("https://127.0.0.1:{secure}");
        let pki = write_pki(&dir.join("pki")).map_err(StartError::Other)?;
        cp.write_kubeconfig(&pki).map_err(StartError::Other)?;

        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let etcd_data = dir.join("etcd");
        let etcd = cp.spawn(
            "etcd",
            &tools.etcd,
            &[
                "--name=weir".into(),
                format!("--data-dir={}", etcd_data.display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=weir={peer_url}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
            bind_to_thread,
        );
        cp.push_child("etcd", etcd.map_err(StartError::Other)?);

        let apiserver = cp.spawn(
            "kube-apiserver",
            &tools.kube_apiserver,
            &[
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={secure}"),
                format!("--tls-cert-file={}", pki.serving_cert.display()),
                format!("--tls-private-key-file={}", pki.serving_key.display()),
                format!("--client-ca-file={}", pki.ca_cert.display()),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={}", pki.sa_public.display()),
                format!(
                    "--service-account-signing-key-file={}",
                    pki.sa_private.display()
                ),
                "--authorization-mode=RBAC".into(),
                "--service-cluster-ip-range=10.96.0.0/24".into(),
                // No node runs here: nothing to publish the `kubernetes`
                // service's endpoints for.
                "--endpoint-reconciler-type=none".into(),
                "--allow-privileged=true".into(),
                "--profiling=false".into(),
                format!("--cert-dir={}", dir.join("apiserver-certs").display()),
                "--v=1".into(),
            ],
            bind_to_thread,
        );
        cp.push_child("kube-apiserver", apiserver.map_err(StartError::Other)?);
        cp.wait_ready()?;
        if gc {
            cp.start_garbage_collector(&pki, bind_to_thread)?;
        }
        Ok(cp)
    }

    /// kube-controller-manager with only the garbage collector, as the
    /// admin (its own kubeconfig), without serving anything.
    fn start_garbage_collector(
        &self,
        pki: &Pki,
        bind_to_thread: bool,
    ) -> std::result::Result<(), StartError> {
        let kubeconfig = self.dir.join("kube-controller-manager.kubeconfig");
        write_private(
            &kubeconfig,
            kubeconfig_json(&self.server, pki, "kube-controller-manager")?.as_bytes(),
        )?;
        let kcm = self.spawn(
            "kube-controller-manager",
            &self.tools.kube_controller_manager,
            &[
                format!("--kubeconfig={}", kubeconfig.display()),
                "--controllers=garbagecollector".into(),
                "--use-service-account-credentials=false".into(),
                "--leader-elect=false".into(),
                // No HTTPS endpoint: nothing here scrapes or probes it.
                "--secure-port=0".into(),
                "--concurrent-gc-syncs=5".into(),
                "--v=1".into(),
            ],
            bind_to_thread,
        )?;
        self.push_child("kube-controller-manager", kcm);
        // It exits at once on a bad flag or kubeconfig: say so here.
        std::thread::sleep(Duration::from_millis(1500));
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((name, child)) = children
            .iter_mut()
            .find(|(n, _)| *n == "kube-controller-manager")
            && let Ok(Some(status)) = child.try_wait()
        {
            return Err(StartError::Other(anyhow!(
                "{name} exited ({status}); end of {name}.log:\n{}",
                log_tail(&self.log_path(name), 30)
            )));
        }
        Ok(())
    }

    fn push_child(&self, name: &'static str, child: Child) {
        // The last started goes first: kube-controller-manager, then
        // kube-apiserver are stopped before etcd.
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(0, (name, child));
    }

    fn spawn(
        &self,
        name: &str,
        bin: &Path,
        args: &[String],
        bind_to_thread: bool,
    ) -> Result<Child> {
        let log = std::fs::File::create(self.log_path(name))
            .with_context(|| format!("creating {name}.log"))?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env_remove("KUBECONFIG")
            .env_remove("ETCDCTL_API");
        // Own process group: a terminal's Ctrl-C goes to the test, which
        // then stops these itself.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        if bind_to_thread {
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.spawn()
            .with_context(|| format!("starting {}", bin.display()))
    }

    /// Waits for `/readyz`, failing early (with the log's end) when a
    /// process exits.
    fn wait_ready(&self) -> std::result::Result<(), StartError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last;
        loop {
            {
                let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
                for (name, child) in children.iter_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        let tail = log_tail(&self.log_path(name), 30);
                        let err = anyhow!(
                            "{name} exited ({status}) before the API server was ready; end of {name}.log:\n{tail}"
                        );
                        return Err(if tail.contains("address already in use") {
                            StartError::PortTaken(err)
                        } else {
                            StartError::Other(err)
                        });
                    }
                }
            }
            match self.kubectl(["get", "--raw", "/readyz"]) {
                Ok(out)
                    if out.status.success()
                        && String::from_utf8_lossy(&out.stdout).trim() == "ok" =>
                {
                    return Ok(());
                }
                Ok(out) => last = String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                Err(e) => return Err(StartError::Other(e)),
            }
            if Instant::now() > deadline {
                return Err(StartError::Other(anyhow!(
                    "kube-apiserver not ready after {READY_TIMEOUT:?} (last: {last}); end of kube-apiserver.log:\n{}",
                    log_tail(&self.log_path("kube-apiserver"), 30)
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn write_kubeconfig(&self, pki: &Pki) -> Result<()> {
        write_private(
            &self.kubeconfig,
            kubeconfig_json(&self.server, pki, "default")?.as_bytes(),
        )
    }

    /// Writes a kubeconfig (into the control plane's directory) that acts as
    /// `user` — e.g. `system:serviceaccount:weir-system:weir-controller` —
    /// by impersonation (the admin's certificate with `as:`), so the API
    /// server authorizes every request with that user's RBAC. Returns its
    /// path.
    pub fn impersonating_kubeconfig(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let text = std::fs::read_to_string(&self.kubeconfig)?;
        let mut config: serde_json::Value = serde_json::from_str(&text)?;
        let auth = &mut config["users"][0]["user"];
        auth["as"] = user.into();
        if !groups.is_empty() {
            auth["as-groups"] = groups.iter().map(|g| serde_json::Value::from(*g)).collect();
        }
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = self.dir.join(format!(
            "kubeconfig-as-{}",
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        write_private(&path, serde_json::to_string_pretty(&config)?.as_bytes())?;
        Ok(path)
    }

    /// The admin's kubeconfig (client certificate in `system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// The control plane's directory (pki/, etcd/, logs, kubeconfig).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log of `etcd`, `kube-apiserver` or `kube-controller-manager`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// The binaries in use.
    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    /// A `kubectl` command against this control plane (`--kubeconfig` set,
    /// a private discovery cache), to add arguments to and run.
    pub fn kubectl_command(&self) -> Command {
        self.tools.kubectl_command(&self.kubeconfig, &self.dir)
    }

    /// Runs kubectl with `args`; the output whatever the exit status.
    pub fn kubectl<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.kubectl_command();
        cmd.args(args);
        cmd.output()
            .with_context(|| format!("running {}", self.tools.kubectl.display()))
    }

    /// Runs kubectl with `args` and `stdin` as its input (`-f -`); the
    /// output whatever the exit status.
    pub fn kubectl_stdin<I, S>(&self, args: I, stdin: &str) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.kubectl_command();
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("running {}", self.tools.kubectl.display()))?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(stdin.as_bytes())?;
        Ok(child.wait_with_output()?)
    }

    /// Runs kubectl with `args`; its stdout when it succeeds, else an error
    /// with the command and its stderr.
    pub fn kubectl_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let out = self.kubectl(&args)?;
        checked(&args, out)
    }

    /// [`kubectl_stdin`](Self::kubectl_stdin), failing like [`kubectl_ok`](Self::kubectl_ok).
    pub fn kubectl_stdin_ok<I, S>(&self, args: I, stdin: &str) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let out = self.kubectl_stdin(&args, stdin)?;
        checked(&args, out)
    }

    /// `kubectl apply --server-side` of `manifests` (YAML or JSON), as the
    /// tests' field manager.
    pub fn apply(&self, manifests: &str) -> Result<String> {
        self.kubectl_stdin_ok(
            [
                "apply",
                "--server-side",
                "--field-manager=weir-tests",
                "-f",
                "-",
            ],
            manifests,
        )
    }

    /// `kubectl apply --server-side` of the files at `path` (a file or a
    /// directory), as the tests' field manager.
    pub fn apply_path(&self, path: &Path) -> Result<String> {
        let mut args: Vec<std::ffi::OsString> =
            ["apply", "--server-side", "--field-manager=weir-tests", "-f"]
                .map(Into::into)
                .into();
        args.push(path.into());
        self.kubectl_ok(args)
    }

    /// Waits (up to 60 s) for the CustomResourceDefinitions `crds` (e.g.
    /// `podflows.weir.dev`) to be Established.
    pub fn wait_established(&self, crds: &[&str]) -> Result<String> {
        let mut args = vec![
            "wait".to_owned(),
            "--for=condition=Established".into(),
            "--timeout=60s".into(),
        ];
        args.extend(crds.iter().map(|c| format!("crd/{c}")));
        self.kubectl_ok(args)
    }

    /// A `helm` command with its cache, config and data homes in the
    /// control plane's directory and no `KUBECONFIG`, to add arguments to
    /// and run.
    pub fn helm_command(&self) -> Result<Command> {
        let home = self.dir.join("helm-home");
        std::fs::create_dir_all(&home)?;
        let mut cmd = Command::new(self.tools.helm()?);
        cmd.env_remove("KUBECONFIG")
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .stdin(Stdio::null());
        Ok(cmd)
    }

    /// Runs helm with `args`; its stdout when it succeeds, else an error
    /// with the command and its output.
    pub fn helm_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.helm_command()?.args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "helm {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The chart at `chart` rendered with its CRDs (`helm template
    /// --include-crds` into `namespace`, which is created) and applied, its
    /// `crds` waited for until Established. Nothing runs its workloads.
    pub fn install_chart(&self, chart: &Path, namespace: &str, crds: &[&str]) -> Result<()> {
        let rendered = self.helm_ok(&[
            "template",
            "weir",
            &chart.to_string_lossy(),
            "--namespace",
            namespace,
            "--include-crds",
        ])?;
        self.kubectl_ok(["create", "namespace", namespace])?;
        self.apply(&rendered)?;
        self.wait_established(crds)?;
        Ok(())
    }

    /// The sum of the API server's `apiserver_request_total` series whose
    /// labels include every one of `labels` (e.g. `resource="podflows"`).
    pub fn apiserver_requests(&self, labels: &[&str]) -> Result<f64> {
        let metrics = self.kubectl_ok(["get", "--raw", "/metrics"])?;
        Ok(metrics
            .lines()
            .filter(|l| {
                l.starts_with("apiserver_request_total{") && labels.iter().all(|m| l.contains(m))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// A client for the admin, from the kubeconfig. Needs a tokio runtime.
    pub async fn client(&self) -> Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Stops kube-apiserver, then etcd (SIGTERM, SIGKILL after 10 s), and
    /// removes the directory unless WEIR_CONTROLPLANE_KEEP=1. Idempotent;
    /// drop calls it.
    pub fn stop(&self) {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for (_, child) in children.iter_mut() {
            stop_child(child);
        }
        children.clear();
        if std::env::var_os("WEIR_CONTROLPLANE_KEEP").is_some_and(|v| v == "1") {
            eprintln!("controlplane: kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Process ids of (kube-controller-manager,) kube-apiserver and etcd
    /// (for tests of the harness).
    pub fn pids(&self) -> Vec<u32> {
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, c)| c.id())
            .collect()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

enum StartError {
    /// Another process took a port we picked: worth another try.
    PortTaken(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        StartError::Other(e)
    }
}

/// The admin's kubeconfig (JSON is YAML: kubectl and kube-rs read it).
fn kubeconfig_json(server: &str, pki: &Pki, namespace: &str) -> Result<String> {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "weir-test", "cluster": {
            "server": server,
            "certificate-authority": pki.ca_cert,
        }}],
        "users": [{ "name": "weir-test-admin", "user": {
            "client-certificate": pki.admin_cert,
            "client-key": pki.admin_key,
        }}],
        "contexts": [{ "name": "weir-test", "context": {
            "cluster": "weir-test",
            "user": "weir-test-admin",
            "namespace": namespace,
        }}],
        "current-context": "weir-test",
    });
    Ok(serde_json::to_string_pretty(&config)?)
}

fn checked<S: AsRef<OsStr>>(args: &[S], out: Output) -> Result<String> {
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    bail!(
        "kubectl {} failed ({}): {}",
        shown.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: signalling a child we spawned and have not reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn make_temp_dir() -> Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "weir-controlplane-{}-{}-{nanos:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// Three distinct free loopback ports (all bound at once, so distinct).
fn free_ports() -> Result<[u16; 3]> {
    let listeners = [
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
    ];
    let mut ports = [0u16; 3];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr()?.port();
    }
    Ok(ports)
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}

/// The files of the control plane's PKI.
struct Pki {
    ca_cert: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    admin_cert: PathBuf,
    admin_key: PathBuf,
    sa_private: PathBuf,
    sa_public: PathBuf,
}

/// A CA; the API server's serving certificate (127.0.0.1, localhost and the
/// in-cluster names); the admin's client certificate (O=system:masters); a
/// service-account signing key. ECDSA P-256 throughout.
fn write_pki(dir: &Path) -> Result<Pki> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    std::fs::create_dir(dir)?;
    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        admin_cert: dir.join("admin.crt"),
        admin_key: dir.join("admin.key"),
        sa_private: dir.join("sa.key"),
        sa_public: dir.join("sa.pub"),
    };

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "weir-test-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    write_private(&pki.ca_cert, ca_cert.pem().as_bytes())?;
    let issuer = Issuer::new(ca, &ca_key);

    let serving_key = KeyPair::generate()?;
    let mut serving = CertificateParams::new(
        [
            "127.0.0.1",
            "localhost",
            "10.96.0.1",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        .map(String::from)
        .to_vec(),
    )?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    write_private(
        &pki.serving_cert,
        serving.signed_by(&serving_key, &issuer)?.pem().as_bytes(),
    )?;
    write_private(&pki.serving_key, serving_key.serialize_pem().as_bytes())?;

    let admin_key = KeyPair::generate()?;
    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin
        .distinguished_name
        .push(DnType::CommonName, "weir-test-admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    write_private(
        &pki.admin_cert,
        admin.signed_by(&admin_key, &issuer)?.pem().as_bytes(),
    )?;
    write_private(&pki.admin_key, admin_key.serialize_pem().as_bytes())?;

    let sa_key = KeyPair::generate()?;
    write_private(&pki.sa_private, sa_key.serialize_pem().as_bytes())?;
    write_private(&pki.sa_public, sa_key.public_key_pem().as_bytes())?;
    Ok(pki)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_versions_env() {
        assert!(
            kubernetes_version().starts_with("v1."),
            "{}",
            kubernetes_version()
        );
        assert!(etcd_version().starts_with("v3."), "{}", etcd_version());
    }

    #[test]
    fn optional_tools_are_required_by_what_uses_them() {
        let dir = std::env::temp_dir().join(format!("weir-some-k8s-tools-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for bin in ["etcd", "kube-apiserver", "kubectl"] {
            std::fs::write(dir.join(bin), "").unwrap();
            std::fs::set_permissions(
                dir.join(bin),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .unwrap();
        }
        let tools = Tools::in_dir(&dir).expect("the three required tools are there");
        let kcm = format!("{:#}", tools.kube_controller_manager().unwrap_err());
        let helm = format!("{:#}", tools.helm().unwrap_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            kcm.contains("kube-controller-manager")
                && kcm.contains("scripts/controlplane-tools.sh"),
            "{kcm}"
        );
        assert!(
            helm.contains("helm") && helm.contains("scripts/controlplane-tools.sh"),
            "{helm}"
        );
    }

    #[test]
    fn missing_tools_are_named_with_the_fix() {
        let dir = std::env::temp_dir().join(format!("weir-no-k8s-tools-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("etcd"), "").unwrap(); // present but not executable
        let err = format!("{:#}", Tools::in_dir(&dir).unwrap_err());
        std::fs::remove_dir_all(&dir).unwrap();
        for part in [
            "control plane tools missing",
            "etcd",
            "kube-apiserver",
            "kubectl",
            "scripts/controlplane-tools.sh",
            kubernetes_version(),
        ] {
            assert!(err.contains(part), "{part:?} not in: {err}");
        }
    }
}
