//! The AFL++ target: one input on stdin, a panic aborts (what AFL counts as
//! a crash). Built with coverage instrumentation by scripts/fuzz.sh.

use std::io::Read;

fn main() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("{info}");
        std::process::abort();
    }));
    let mut data = Vec::new();
    if std::io::stdin().read_to_end(&mut data).is_ok() {
        weir_fuzz::run_one(&data);
    }
}
