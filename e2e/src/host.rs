//! What the privileged tests need from the machine, checked up front so a
//! missing piece fails the test with its reason instead of a confusing error.

use std::path::{Path, PathBuf};

/// Where scripts/bootstrap.sh installs the Go-built CNI tools.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("WEIR_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/weir/tools"))
}

pub fn cnitool() -> PathBuf {
    tools_dir().join("bin/cnitool")
}

pub fn reference_plugins() -> PathBuf {
    tools_dir().join("cni")
}

/// The CNI plugin binary `weir`, which cargo builds next to the binary
/// `bin` (e.g. a test's `CARGO_BIN_EXE_weir-operator`); panics saying how to
/// build it when it is missing.
pub fn weir_plugin_beside(bin: &str) -> PathBuf {
    let path = Path::new(bin).with_file_name("weir");
    assert!(
        path.exists(),
        "{} is missing: build the plugin first (cargo build -p weir-cni)",
        path.display()
    );
    path
}

/// Panics with every missing requirement listed. Tests call this first: on a
/// machine that cannot run them they fail loudly, never pass silently.
pub fn require_privileged_host() {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push(
            "root (netns, veth and eBPF need CAP_SYS_ADMIN/CAP_NET_ADMIN/CAP_BPF)".to_string(),
        );
    }
    if !is_bpffs(Path::new("/sys/fs/bpf")) {
        missing.push("bpffs at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)".to_string());
    }
    for tool in [
        cnitool(),
        reference_plugins().join("bridge"),
        reference_plugins().join("host-local"),
    ] {
        if !tool.exists() {
            missing.push(format!("{} (run scripts/bootstrap.sh)", tool.display()));
        }
    }
    for cmd in ["ip", "nsenter"] {
        if which(cmd).is_none() {
            missing.push(format!("the `{cmd}` command (run scripts/bootstrap.sh)"));
        }
    }
    assert!(
        missing.is_empty(),
        "this test needs a privileged Linux host; missing: {}",
        missing.join("; ")
    );
}

pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

pub fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(cmd))
            .find(|candidate| candidate.is_file())
    })
}
