//! Logs go to the config's `logFile` or to stderr; never to stdout, which
//! carries the CNI result.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

use crate::cni::LogLevel;

/// Installs the process-wide subscriber. `WEIR_LOG` (an EnvFilter) overrides
/// the config's level. A log file that cannot be opened falls back to stderr
/// rather than failing the pod's networking.
pub fn init(level: LogLevel, file: Option<&Path>) {
    let filter =
        EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| EnvFilter::new(level.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    let opened = file.map(|path| {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        OpenOptions::new().create(true).append(true).open(path)
    });
    match opened {
        Some(Ok(file)) => {
            let _ = builder.with_writer(Mutex::new(file)).try_init();
        }
        Some(Err(e)) => {
            let _ = builder.with_writer(std::io::stderr).try_init();
            tracing::warn!("cannot open log file: {e}; logging to stderr");
        }
        None => {
            let _ = builder.with_writer(std::io::stderr).try_init();
        }
    }
}
