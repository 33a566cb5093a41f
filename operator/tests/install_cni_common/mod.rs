//! What the install-cni tests share: a node's CNI dirs in a temp dir, the
//! installer process, polling waits, the observer of half-written files.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const FLANNEL: &str = r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
pub const FLANNEL_BW: &str = r#"{"name":"cbr0","cniVersion":"1.0.0","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}},{"type":"bandwidth","capabilities":{"bandwidth":true}}]}"#;
pub const WEIR_FILE: &str = "00-weir.conflist";
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A node's directories in a temp dir, and the image's binary.
pub struct Node {
    pub root: PathBuf,
    pub conf: PathBuf,
    pub bin: PathBuf,
    pub source: PathBuf,
    pub ready: PathBuf,
}

impl Node {
    pub fn new(tag: &str) -> Node {
        static N: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "weir-install-cni-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        let node = Node {
            conf: root.join("etc/cni/net.d"),
            bin: root.join("opt/cni/bin"),
            source: root.join("image/weir"),
            ready: root.join("ready"),
            root,
        };
        fs::create_dir_all(&node.conf).unwrap();
        fs::create_dir_all(&node.bin).unwrap();
        fs::create_dir_all(node.source.parent().unwrap()).unwrap();
        // 4 MiB that differ everywhere: a copy caught half-way would show.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let bytes: Vec<u8> = (0..4 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fs::write(&node.source, &bytes).unwrap();
        fs::set_permissions(&node.source, fs::Permissions::from_mode(0o755)).unwrap();
        // Another plugin already in the bin dir, which must stay.
        fs::write(node.bin.join("flannel"), b"flannel").unwrap();
        node
    }

    pub fn command(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir-operator"));
        cmd.arg("install-cni")
            .arg("--cni-binary")
            .arg(&self.source)
            .arg("--cni-bin-dir")
            .arg(&self.bin)
            .arg("--cni-conf-dir")
            .arg(&self.conf)
            .arg("--ready-file")
            .arg(&self.ready)
            .args(extra)
            .env_remove("RUST_LOG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("WEIR_KUBECONFIG")
            .env_remove("WEIR_DAEMONSET_NAME")
            .env_remove("POD_NAMESPACE")
            .env_remove("WEIR_CNI_LOG_FILE")
            .stdin(Stdio::null());
        cmd
    }

    /// Starts an installer; its stderr goes to a file of its own.
    pub fn start(&self, extra: &[&str]) -> Installer {
        static N: AtomicU32 = AtomicU32::new(0);
        let log = self.root.join(format!(
            "installer-{}.log",
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let child = self
            .command(extra)
            .stdout(fs::File::create(log.with_extension("stdout")).unwrap())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("start weir-operator install-cni");
        Installer {
            child: Some(child),
            log,
        }
    }

    pub fn write_primary(&self, name: &str, text: &str) {
        // In place, like flannel's `cp -f`: truncate, then write.
        let mut f = fs::File::create(self.conf.join(name)).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    pub fn weir_file(&self) -> Option<Value> {
        self.read_json(WEIR_FILE)
    }

    pub fn read_json(&self, name: &str) -> Option<Value> {
        let bytes = fs::read(self.conf.join(name)).ok()?;
        Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{name} is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&bytes)
            )
        }))
    }

    pub fn conf_names(&self) -> BTreeSet<String> {
        names(&self.conf)
    }

    pub fn binary_ok(&self) -> bool {
        let installed = self.bin.join("weir");
        fs::read(&installed).ok() == fs::read(&self.source).ok()
            && fs::metadata(&installed).is_ok_and(|m| m.permissions().mode() & 0o777 == 0o755)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// The test's own edits of files the observer reads: whole, by rename.
pub fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(".test-edit");
    fs::write(&tmp, bytes).unwrap();
    fs::rename(&tmp, path).unwrap();
}

pub fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub struct Installer {
    child: Option<Child>,
    log: PathBuf,
}

impl Installer {
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log reader, apart from the installer (which stays usable).
    pub fn logger(&self) -> impl Fn() -> String + 'static {
        let path = self.log.clone();
        move || fs::read_to_string(&path).unwrap_or_default()
    }

    pub fn wait_log(&self, text: &str) {
        wait_for(
            &format!("the log to say {text:?}"),
            || self.log().contains(text),
            || self.log(),
        );
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// SIGTERM, and the exit status within the deadline.
    pub fn term(&mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGTERM) }, 0);
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > DEADLINE {
                let _ = child.kill();
                panic!("installer did not exit after SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("installer exited ({status}); log:\n{}", self.log());
        }
    }
}

impl Drop for Installer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `done` every 20 ms until it holds, or panics after [`DEADLINE`]
/// with `context()`.
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > DEADLINE {
            panic!(
                "timed out waiting for {what}; installer log:\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads weir's conflist and the installed binary in a tight loop, and
/// keeps every distinct state seen; a read of a half-written file fails
/// the test at [`Observer::finish`].
pub struct Observer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    bad: Arc<Mutex<Vec<String>>>,
    seen: Arc<Mutex<BTreeSet<String>>>,
    reads: Arc<AtomicU32>,
}

impl Observer {
    pub fn start(node: &Node) -> Observer {
        let stop = Arc::new(AtomicBool::new(false));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let reads = Arc::new(AtomicU32::new(0));
        let (conf, bin) = (node.conf.join(WEIR_FILE), node.bin.join("weir"));
        let source = fs::read(&node.source).unwrap();
        let thread = {
            let (stop, bad, seen, reads) = (stop.clone(), bad.clone(), seen.clone(), reads.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let n = reads.fetch_add(1, Ordering::Relaxed);
                    match fs::read(&conf) {
                        Ok(bytes) => match check_conflist(&bytes) {
                            Ok(()) => {
                                seen.lock()
                                    .unwrap()
                                    .insert(String::from_utf8_lossy(&bytes).into_owned());
                            }
                            // The test's own edits are allowed to be seen.
                            Err(e) if is_test_edit(&bytes) => {
                                let _ = e;
                            }
                            Err(e) => bad.lock().unwrap().push(format!(
                                "{WEIR_FILE}: {e}: {:?}",
                                String::from_utf8_lossy(&bytes)
                            )),
                        },
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            seen.lock().unwrap().insert("(absent)".into());
                        }
                        Err(e) => bad.lock().unwrap().push(format!("{WEIR_FILE}: {e}")),
                    }
                    // The binary (4 MiB) less often than the conflist.
                    if n % 8 == 0
                        && let Ok(bytes) = fs::read(&bin)
                        && bytes != source
                        && bytes != FOREIGN_BINARY
                    {
                        bad.lock().unwrap().push(format!(
                            "weir binary seen with {} bytes, not the source's",
                            bytes.len()
                        ));
                    }
                }
            })
        };
        Observer {
            stop,
            thread: Some(thread),
            bad,
            seen,
            reads,
        }
    }

    pub fn saw_absent(&self) -> bool {
        self.seen.lock().unwrap().contains("(absent)")
    }

    pub fn finish(mut self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let bad = self.bad.lock().unwrap();
        assert!(
            bad.is_empty(),
            "half or broken states seen:\n{}",
            bad.join("\n")
        );
        assert!(self.reads.load(Ordering::Relaxed) > 20);
        self.seen.lock().unwrap().clone()
    }
}

pub const FOREIGN_BINARY: &[u8] = b"#!/bin/sh\necho not weir\n";
pub const TEST_EDIT_KEY: &str = "edited-by-test";

pub fn is_test_edit(bytes: &[u8]) -> bool {
    String::from_utf8_lossy(bytes).contains(TEST_EDIT_KEY)
}

/// A whole conflist of weir's: JSON, the marker, weir last.
pub fn check_conflist(bytes: &[u8]) -> Result<(), String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if v["weir.dev/generated"] != true {
        return Err("no weir.dev/generated marker".into());
    }
    let plugins = v["plugins"].as_array().ok_or("no plugins")?;
    if plugins.len() < 2 || plugins.last().unwrap()["type"] != "weir" {
        return Err("weir is not last".into());
    }
    Ok(())
}

pub fn types(list: &Value) -> Vec<String> {
    list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_owned())
        .collect()
}

/// What weir's conflist must be for `primary` (with the test's settings).
pub fn expected(primary: &str, primary_file: &str) -> Value {
    let mut list: Value = serde_json::from_str(primary).unwrap();
    list["plugins"].as_array_mut().unwrap().push(json!({
        "type": "weir",
        "failurePolicy": "Ignore",
        "logLevel": "debug",
        "attach": "tcx",
        "stateDir": "/var/lib/weir",
        "bpfRoot": "/sys/fs/bpf/weir",
    }));
    list["weir.dev/generated"] = true.into();
    list["weir.dev/primary"] = primary_file.into();
    list
}

pub const SETTINGS: [&str; 4] = ["--cni-log-level", "debug", "--attach", "tcx"];

pub fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a: Vec<&str> = SETTINGS.to_vec();
    a.extend_from_slice(extra);
    a
}
