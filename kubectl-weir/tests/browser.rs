//! `kubectl weir graph` in a real browser: the HTML page and the SVG that
//! Graphviz laid out are loaded by headless Chromium (Debian's `chromium`)
//! from file:// URLs; the rendered DOM must hold the expected workloads and
//! edges, and a screenshot is left under target/kubectl-weir/ as an
//! artefact. Needs `dot` (graphviz) and `chromium`: scripts/bootstrap.sh
//! installs both; without them the test fails and says so.

use std::path::{Path, PathBuf};
use std::process::Command;

use kubectl_weir::fixture::{Fixture, podflow};

fn artefacts() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp; artefacts go next to it.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("kubectl-weir");
    std::fs::create_dir_all(&dir).expect("creating target/kubectl-weir");
    dir
}

fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: this test needs Debian's {package} (bash scripts/bootstrap.sh installs it)"
    );
}

/// shop: web (Deployment, 2 pods on node-a) → db (Deployment, node-b) over
/// the overlay with 5 packets lost; web → an address outside; pay: api →
/// shop's web.
fn small_cluster() -> Fixture {
    let mut fx = Fixture::default();
    let web = fx.deployment("shop", "web", 2, &["node-a"], 0x01_0000);
    let db = fx.deployment("shop", "db", 1, &["node-b"], 0x01_0100);
    let api = fx.deployment("pay", "api", 1, &["node-a"], 0x02_0000);
    fx.podflows.push(podflow(
        &web[0],
        Some(&db[0]),
        "",
        5432,
        40_000_000,
        100,
        Some(1),
        5,
    ));
    fx.podflows.push(podflow(
        &web[1],
        Some(&db[0]),
        "",
        5432,
        20_000_000,
        100,
        Some(1),
        0,
    ));
    fx.podflows.push(podflow(
        &web[0],
        None,
        "198.51.100.7",
        443,
        1_500_000,
        30,
        None,
        0,
    ));
    fx.podflows.push(podflow(
        &api[0],
        Some(&web[1]),
        "",
        8080,
        300_000,
        10,
        None,
        0,
    ));
    fx
}

fn kubectl_weir(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-weir"))
        .args(args)
        .output()
        .expect("running kubectl-weir");
    assert!(
        out.status.success(),
        "kubectl-weir {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn chromium(args: &[&str], page: &Path, user_data: &Path) -> std::process::Output {
    let url = format!("file://{}", page.display());
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", user_data.display()))
        .args(args)
        .arg(&url)
        .output()
        .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium {args:?} {url} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn graph_html_and_svg_render_in_headless_chromium_with_the_workloads_and_edges() {
    require("dot", "graphviz");
    require("chromium", "chromium");
    let dir = artefacts();
    let input = dir.join("small-cluster.json");
    std::fs::write(&input, small_cluster().to_list_json().to_string()).unwrap();
    let html = dir.join("graph.html");
    let svg = dir.join("graph.svg");
    let input_s = input.to_str().unwrap();
    kubectl_weir(&[
        "graph",
        "-A",
        "-o",
        "html",
        "--from-file",
        input_s,
        "--out",
        html.to_str().unwrap(),
    ]);
    kubectl_weir(&[
        "graph",
        "-A",
        "--from-file",
        input_s,
        "--out",
        svg.to_str().unwrap(),
    ]);

    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http"),
        "the page fetches nothing"
    );

    let profile = tempdir();
    let dom = String::from_utf8(chromium(&["--dump-dom"], &html, &profile).stdout).unwrap();
    // The browser parsed the inline SVG: Graphviz's groups are in the DOM.
    for id in [
        "node:shop/Deployment/web",
        "node:shop/Deployment/db",
        "node:pay/Deployment/api",
        "node:198.51.100.7",
        "edge:shop/Deployment/web-&gt;shop/Deployment/db",
        "edge:pay/Deployment/api-&gt;shop/Deployment/web",
        "edge:shop/Deployment/web-&gt;198.51.100.7",
    ] {
        assert!(
            dom.contains(&format!("id=\"{id}\"")),
            "the rendered DOM lacks id={id}:\n{dom}"
        );
    }
    // The lossy overlay edge is marked and labelled (bytes, rate, VNI, loss).
    assert!(
        dom.contains("class=\"edge flow cross-node loss\""),
        "no lossy edge in the DOM:\n{dom}"
    );
    assert!(dom.contains("57.2 MiB · 585.9 KiB/s"), "{dom}");
    assert!(
        dom.contains("VNI 1") && dom.contains("lost 5 pkts"),
        "{dom}"
    );
    // Namespaces are clusters.
    assert!(
        dom.contains("id=\"ns-shop\"") && dom.contains("id=\"ns-pay\""),
        "{dom}"
    );
    // The table.
    assert!(
        dom.contains("<tr class=\"loss\"><td>shop/Deployment/web</td><td>shop/Deployment/db</td>"),
        "{dom}"
    );

    // The SVG alone, as a document.
    let svg_dom = String::from_utf8(chromium(&["--dump-dom"], &svg, &profile).stdout).unwrap();
    assert!(svg_dom.contains("<svg"), "{svg_dom}");
    assert!(
        svg_dom.contains("deploy/web") && svg_dom.contains("deploy/db"),
        "{svg_dom}"
    );

    // The screenshot, as an artefact.
    let png = dir.join("graph.png");
    let _ = std::fs::remove_file(&png);
    chromium(
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,900",
        ],
        &html,
        &profile,
    );
    let bytes = std::fs::read(&png).expect("chromium wrote no screenshot");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is not a PNG"
    );
    assert!(
        bytes.len() > 10_000,
        "the screenshot is suspiciously small ({} bytes)",
        bytes.len()
    );
    eprintln!("screenshot: {}", png.display());
    let _ = std::fs::remove_dir_all(&profile);
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("kubectl-weir-chromium-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
