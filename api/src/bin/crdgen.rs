//! Writes weir's CRD manifests (`crds/<plural>.weir.dev.yaml`, and the same
//! files in the Helm chart's `charts/weir/crds/`) from the Rust types in
//! `weir_api`, or with `--check` only compares them and fails
//! naming each stale file (CI runs that).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use weir_api as crd;

/// Generate (or check) weir's CRD manifests.
#[derive(Parser)]
#[command(name = "crdgen")]
struct Cli {
    /// Compare instead of writing: exit 1 naming each file that differs
    /// from what the types generate.
    #[arg(long)]
    check: bool,
    /// A directory of the manifests; repeatable (default: the workspace's
    /// crds/ and charts/weir/crds/).
    #[arg(long)]
    dir: Vec<PathBuf>,
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    let dirs = if cli.dir.is_empty() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("api/ is in the workspace");
        vec![workspace.join("crds"), workspace.join("charts/weir/crds")]
    } else {
        cli.dir
    };
    let manifests = crd::manifests();
    if cli.check {
        let stale: Vec<String> = dirs
            .iter()
            .flat_map(|dir| manifests.iter().map(move |m| dir.join(&m.file_name)))
            .zip(manifests.iter().cycle())
            .filter_map(|(path, m)| {
                describe_difference(&path, &m.yaml).map(|why| format!("{}: {why}", path.display()))
            })
            .collect();
        if stale.is_empty() {
            for dir in &dirs {
                eprintln!(
                    "crdgen: {} CRD manifests in {} are up to date",
                    manifests.len(),
                    dir.display()
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        for s in &stale {
            eprintln!("crdgen: STALE {s}");
        }
        eprintln!("crdgen: regenerate with: cargo run -p weir-api --bin crdgen");
        return Ok(ExitCode::FAILURE);
    }
    for dir in &dirs {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for m in &manifests {
            let path = dir.join(&m.file_name);
            if std::fs::read_to_string(&path).ok().as_deref() == Some(m.yaml.as_str()) {
                eprintln!("crdgen: {} unchanged", path.display());
                continue;
            }
            std::fs::write(&path, &m.yaml)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("crdgen: wrote {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Why the file at `path` is not `want`, or None when it is.
fn describe_difference(path: &Path, want: &str) -> Option<String> {
    let have = match std::fs::read_to_string(path) {
        Ok(have) => have,
        Err(e) => return Some(format!("cannot read it ({e})")),
    };
    if have == want {
        return None;
    }
    let (mut h, mut w) = (have.lines(), want.lines());
    let mut line = 1;
    loop {
        match (h.next(), w.next()) {
            (Some(a), Some(b)) if a == b => line += 1,
            (None, None) => {
                return Some("differs from the generated manifest in line endings".to_owned());
            }
            (a, b) => {
                return Some(format!(
                    "differs from the generated manifest at line {line}: has {:?}, generated {:?}",
                    a.unwrap_or("<end of file>"),
                    b.unwrap_or("<end of file>")
                ));
            }
        }
    }
}
