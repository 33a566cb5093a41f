//! Compiles the eBPF C programs in `c/*.bpf.c` with clang into `OUT_DIR`, where
//! `src/lib.rs` embeds them. The Rust toolchain here cannot target BPF, so C
//! and clang it is.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let c_dir = manifest_dir.join("c");
    let clang = env::var("WEIR_CLANG").unwrap_or_else(|_| "clang".to_owned());
    println!("cargo:rerun-if-env-changed=WEIR_CLANG");
    println!("cargo:rerun-if-changed={}", c_dir.display());

    let mut sources = Vec::new();
    for entry in
        std::fs::read_dir(&c_dir).with_context(|| format!("reading {}", c_dir.display()))?
    {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".c") || name.ends_with(".h") {
            println!("cargo:rerun-if-changed={}", path.display());
        }
        if name.ends_with(".bpf.c") {
            sources.push(path);
        }
    }
    sources.sort();
    if sources.is_empty() {
        bail!("no eBPF sources (*.bpf.c) found in {}", c_dir.display());
    }

    check_clang(&clang)?;
    let includes = include_dirs(&c_dir);

    for src in &sources {
        let stem = src
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".bpf.c"))
            .context("source name")?;
        let out = out_dir.join(format!("{stem}.bpf.o"));
        let mut cmd = Command::new(&clang);
        cmd.args([
            "-target", "bpf", "-g", "-O2", "-mcpu=v3", "-Wall", "-Werror",
        ]);
        for dir in &includes {
            cmd.arg("-I").arg(dir);
        }
        cmd.arg("-c").arg(src).arg("-o").arg(&out);
        let output = cmd
            .output()
            .with_context(|| format!("running {clang} for {}", src.display()))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let hint = if stderr.contains("file not found") {
                "\n(missing headers: run scripts/bootstrap.sh, which installs libbpf-dev and the linux uapi headers)"
            } else {
                ""
            };
            bail!(
                "clang failed to compile {} ({}):\n{}{}{hint}",
                src.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                stderr,
            );
        }
    }
    Ok(())
}

fn check_clang(clang: &str) -> Result<()> {
    match Command::new(clang).arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => bail!(
            "`{clang} --version` failed ({}); weir-ebpf needs clang with the BPF target: \
             run scripts/bootstrap.sh (installs clang, llvm, libbpf-dev, bpftool)",
            out.status
        ),
        Err(e) => bail!(
            "cannot run `{clang}` ({e}); weir-ebpf compiles its eBPF programs with clang: \
             run scripts/bootstrap.sh (installs clang, llvm, libbpf-dev, bpftool), \
             or point WEIR_CLANG at a clang binary"
        ),
    }
}

/// The BPF target has no sysroot: the uapi headers come from the host, and
/// `asm/types.h` lives in Debian's multiarch directory for the build host.
fn include_dirs(c_dir: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![c_dir.to_path_buf()];
    // HOST, not TARGET: the headers installed on this machine are the host's,
    // and the BPF object is the same whichever target links it.
    let host = env::var("HOST").unwrap_or_default();
    let arch = host.split('-').next().unwrap_or_default();
    let multiarch = match arch {
        "x86_64" => Some("x86_64-linux-gnu"),
        "aarch64" => Some("aarch64-linux-gnu"),
        "riscv64gc" | "riscv64" => Some("riscv64-linux-gnu"),
        "powerpc64le" => Some("powerpc64le-linux-gnu"),
        "s390x" => Some("s390x-linux-gnu"),
        _ => None,
    };
    if let Some(m) = multiarch {
        let dir = Path::new("/usr/include").join(m);
        if dir.is_dir() {
            dirs.push(dir);
        }
    }
    dirs
}
