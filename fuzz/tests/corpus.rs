//! Every seed and every kept crash runs once (fast): a fixed bug stays fixed.

use std::path::Path;

#[test]
fn corpus_and_regressions_run_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
            .collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            let run = std::panic::catch_unwind(|| weir_fuzz::run_one(&data));
            assert!(run.is_ok(), "{} panics", f.display());
            n += 1;
        }
    }
    assert!(n >= 20, "only {n} inputs: the seeds are missing");
}
