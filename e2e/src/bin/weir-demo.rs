//! `make demo`: one node in network namespaces, three pods chained through
//! the real reference plugins and weir, real traffic between them, and the
//! flows weir counted — printed by the operator's own inspection command.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use weir_e2e::chain::{ChainSpec, Node};
use weir_e2e::netns::Netns;
use weir_e2e::{host, traffic};

struct Pod {
    name: &'static str,
    ns: Netns,
    ip: IpAddr,
}

fn main() -> Result<()> {
    let release = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: weir-demo <dir with weir and weir-operator>")?,
    );
    let weir = release.join("weir");
    let operator = release.join("weir-operator");
    host::require_privileged_host();
    for bin in [&weir, &operator] {
        if !bin.exists() {
            bail!(
                "{} is missing; build it first (make demo does)",
                bin.display()
            );
        }
    }

    step("a node with a bridge: bridge + host-local, then weir, in one conflist (CNI 1.1.0)");
    let node = Node::new("wdemo", &ChainSpec::new("1.1.0", "10.244.0.0/24"), &weir)?;
    let mut pods = Vec::new();
    for name in ["frontend", "cart", "db"] {
        let ns = Netns::create(&format!("wdemo-{name}"))?;
        let result = node.add(&ns, "eth0", "shop", name)?.ok()?.json()?;
        let ip = Node::pod_ipv4(&result)?;
        println!(
            "  shop/{name:<9} {ip:<12} interfaces: {}",
            ns.links()?
                .iter()
                .filter(|l| !l.starts_with("lo "))
                .map(|l| l.split(' ').next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        pods.push(Pod { name, ns, ip });
    }

    step("observe the shop pods (what a CaptureProfile selecting them does)");
    for pod in &pods {
        operator_cmd(
            &operator,
            &node,
            &["observe", &format!("shop/{}", pod.name)],
        )?;
    }

    step("real traffic");
    let (frontend, cart, db) = (&pods[0], &pods[1], &pods[2]);
    weir_e2e::chain::ping(&frontend.ns, cart.ip, 5)?;
    println!("  frontend -> cart   ping x5");
    traffic::tcp_send(&frontend.ns, &cart.ns, cart.ip, 8080, 20 << 20)?;
    println!("  frontend -> cart   TCP 8080, 20 MiB");
    traffic::udp_echo(&cart.ns, &db.ns, db.ip, 5432, 200, 512)?;
    println!("  cart     -> db     UDP 5432, 200 x 512 B echoed");

    step(
        "the flows weir counted on this node (weir-operator agent dump --protocol tcp --protocol udp --protocol icmp)",
    );
    let table = operator_cmd(
        &operator,
        &node,
        &[
            "dump",
            "--protocol",
            "tcp",
            "--protocol",
            "udp",
            "--protocol",
            "icmp",
        ],
    )?;
    print!("{table}");
    println!(
        "  (the kernel's own IPv6 neighbour discovery and MLD are counted too: drop the --protocol filters to see them)"
    );

    step("clean up: CNI DEL restores each pod's own eth0, then the namespaces go");
    for pod in &pods {
        node.del(&pod.ns.path(), "eth0")?.ok()?;
    }
    println!("  done; re-run with `make demo`");
    Ok(())
}

fn step(text: &str) {
    println!("\n== {text}");
}

fn operator_cmd(operator: &Path, node: &Node, args: &[&str]) -> Result<String> {
    let out = Command::new(operator)
        .arg("agent")
        .args(&args[..1])
        .arg("--state-dir")
        .arg(&node.state_dir)
        .arg("--bpf-root")
        .arg(&node.bpf_root)
        .args(&args[1..])
        .output()?;
    if !out.status.success() {
        bail!(
            "weir-operator {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
