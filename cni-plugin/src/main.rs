//! `weir`: invoked by the container runtime with CNI_* variables and the
//! network config on stdin; answers on stdout and with its exit code.

use std::io::{Read, Write};

use weir_cni::cni::{CniError, CniVersion, Request, env};
use weir_cni::logging;
use weir_cni::plugin::{self, Answer};

fn main() {
    let mut stdin = Vec::new();
    let answer = match std::io::stdin().read_to_end(&mut stdin) {
        Err(e) => Answer::error(&CniError::io(format!("reading stdin: {e}")), None),
        Ok(_) => match Request::parse(env::process_getter, &stdin) {
            Err(err) => {
                logging::init(Default::default(), None);
                tracing::warn!(code = err.code(), "{err}");
                Answer::error(&err, CniVersion::sniff(&stdin))
            }
            Ok(req) => {
                match &req.config {
                    Some(conf) => logging::init(conf.log_level, conf.log_file.as_deref()),
                    None => logging::init(Default::default(), None),
                }
                tracing::debug!(command = %req.command, "request");
                plugin::handle(&req)
            }
        },
    };
    let mut stdout = std::io::stdout().lock();
    if !answer.stdout.is_empty() {
        let _ = writeln!(stdout, "{}", answer.stdout);
    }
    let _ = stdout.flush();
    std::process::exit(answer.exit_code);
}
