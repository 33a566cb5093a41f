//! `graph` at the size the issue names: 1,000 pods × 10 peers (10,000
//! PodFlows over 10 namespaces, 100 Deployments), read from a `kubectl get
//! -o json` file, laid out by Graphviz. Checks that the picture stays
//! readable (the busiest edges plus one "(other)" edge per namespace pair)
//! and prints time and output size (BENCHMARKS.md takes its figures from
//! the release build of this test). Needs Graphviz `dot`.

use std::process::Command;
use std::time::Instant;

use kubectl_weir::fixture::Fixture;

#[test]
fn graph_of_1000_pods_times_10_peers_stays_readable() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("kubectl-weir-scale");
    std::fs::create_dir_all(&dir).unwrap();
    let fx = Fixture::scale(1000, 10, 10);
    assert_eq!(fx.pods.len(), 1000);
    assert_eq!(fx.podflows.len(), 10_000);
    let input = dir.join("cluster.json");
    std::fs::write(&input, fx.to_list_json().to_string()).unwrap();
    let input_size = std::fs::metadata(&input).unwrap().len();

    for (format, top) in [
        ("dot", "40"),
        ("svg", "40"),
        ("html", "40"),
        ("mermaid", "40"),
    ] {
        let out = dir.join(format!("graph-top{top}.{format}"));
        let started = Instant::now();
        let run = Command::new(env!("CARGO_BIN_EXE_kubectl-weir"))
            .args(["graph", "-A", "-o", format, "--top", top, "--from-file"])
            .arg(&input)
            .arg("--out")
            .arg(&out)
            .output()
            .expect("running kubectl-weir");
        let elapsed = started.elapsed();
        assert!(
            run.status.success(),
            "graph -o {format} failed: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let size = std::fs::metadata(&out).unwrap().len();
        eprintln!(
            "graph -A -o {format} --top {top}: 1000 pods x 10 peers ({input_size} bytes of JSON in): {:.2} s, {size} bytes out",
            elapsed.as_secs_f64()
        );
        if format == "dot" {
            let text = std::fs::read_to_string(&out).unwrap();
            let edges = text.lines().filter(|l| l.contains(" -> ")).count();
            let others = text
                .lines()
                .filter(|l| l.contains(" -> ") && l.contains(" other\""))
                .count();
            // 40 edges, one (other) loop per namespace, at most 10
            // cross-namespace summaries and one "(everything else)".
            assert!(
                edges > 40 && edges <= 40 + 11 + 10 + 1,
                "{edges} edges drawn"
            );
            assert_eq!(edges - others, 40, "{others} summary edges among {edges}");
            // Workloads, not pods: no pod name is drawn.
            assert!(
                !text.contains("-00000\""),
                "pods drawn instead of workloads"
            );
        }
        assert!(size < 300_000, "graph -o {format} is {size} bytes");
    }
}
