//! `kubectl weir graph`: flows aggregated by workload into a graph, the
//! busiest edges kept and the rest summarised per namespace pair, rendered
//! as DOT (laid out by Graphviz), Mermaid, SVG or one HTML page.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::model::{Flow, Inventory, Workload, human_bytes, human_count, human_rate};

/// A node of the graph: a workload, an address, or the "other" node that
/// stands for the summarised rest of a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GraphNode {
    Workload(Workload),
    /// The summarised rest of a namespace (`None`: addresses outside).
    Other(Option<String>),
    /// What is left when even the per-namespace-pair summaries are too
    /// many: one node, one self edge.
    Rest,
}

impl GraphNode {
    pub fn id(&self) -> String {
        match self {
            GraphNode::Workload(w) => w.id(),
            GraphNode::Other(Some(ns)) => format!("{ns}/(other)"),
            GraphNode::Other(None) => "(other addresses)".into(),
            GraphNode::Rest => "(everything else)".into(),
        }
    }

    pub fn label(&self) -> String {
        match self {
            GraphNode::Workload(w) => w.label(),
            GraphNode::Other(_) => "(other)".into(),
            GraphNode::Rest => "(everything else)".into(),
        }
    }

    /// The namespace cluster the node is drawn in; `None`: outside.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            GraphNode::Workload(w) => w.namespace().filter(|ns| !ns.is_empty()),
            GraphNode::Other(ns) => ns.as_deref(),
            GraphNode::Rest => None,
        }
    }
}

/// An edge: every flow from one workload to another, summed.
#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    pub from: GraphNode,
    pub to: GraphNode,
    pub bytes: u64,
    pub packets: u64,
    /// Bytes per second: the sum of the flows' rates.
    pub rate: f64,
    pub flows: usize,
    /// VNIs of the flows that crossed the overlay.
    pub vnis: BTreeSet<i64>,
    pub cross_node: bool,
    pub loss_packets: u64,
    /// `TCP/8080`, `ICMP`, ...
    pub services: BTreeSet<String>,
}

impl Edge {
    fn new(from: GraphNode, to: GraphNode) -> Edge {
        Edge {
            from,
            to,
            bytes: 0,
            packets: 0,
            rate: 0.0,
            flows: 0,
            vnis: BTreeSet::new(),
            cross_node: false,
            loss_packets: 0,
            services: BTreeSet::new(),
        }
    }

    fn add_flow(&mut self, f: &Flow) {
        self.bytes = self.bytes.saturating_add(f.bytes);
        self.packets = self.packets.saturating_add(f.packets);
        self.rate += f.rate();
        self.flows += 1;
        if let Some(v) = f.vni {
            self.vnis.insert(v);
        }
        self.cross_node |= f.cross_node();
        self.loss_packets = self.loss_packets.saturating_add(f.loss_packets);
        let service = match f.port {
            Some(p) => format!("{}/{p}", f.protocol),
            None => f.protocol.clone(),
        };
        if self.services.len() < 4 {
            self.services.insert(service);
        }
    }

    fn merge(&mut self, e: &Edge) {
        self.bytes = self.bytes.saturating_add(e.bytes);
        self.packets = self.packets.saturating_add(e.packets);
        self.rate += e.rate;
        self.flows += e.flows;
        self.vnis.extend(e.vnis.iter().copied());
        self.cross_node |= e.cross_node;
        self.loss_packets = self.loss_packets.saturating_add(e.loss_packets);
    }

    /// The label drawn on the edge: bytes, rate, VNI (cross-node), loss.
    pub fn label(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "{} · {}",
            human_bytes(self.bytes as f64),
            human_rate(self.rate)
        )];
        if self.cross_node && !self.vnis.is_empty() {
            let vnis: Vec<String> = self.vnis.iter().map(|v| v.to_string()).collect();
            lines.push(format!("VNI {}", vnis.join(",")));
        }
        if self.loss_packets > 0 {
            lines.push(format!(
                "lost {} pkts",
                human_count(self.loss_packets as f64)
            ));
        }
        if self.is_other() {
            lines.push(format!("{} flows", self.flows));
        }
        lines
    }

    pub fn is_other(&self) -> bool {
        matches!(self.from, GraphNode::Other(_) | GraphNode::Rest)
            || matches!(self.to, GraphNode::Other(_) | GraphNode::Rest)
    }
}

/// The graph: edges (busiest first, the summarised ones last) and what was
/// summarised.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    pub edges: Vec<Edge>,
    /// Flows read, workload edges before the cut.
    pub flows: usize,
    pub workload_edges: usize,
}

impl Graph {
    /// Aggregates `flows` by workload and keeps the `top` busiest edges (by
    /// bytes); the rest becomes one edge per (source namespace, destination
    /// namespace) between their "(other)" nodes. `top == 0` keeps all.
    pub fn build(flows: &[Flow], inventory: &Inventory, top: usize) -> Graph {
        let mut by_pair: HashMap<(Workload, Workload), Edge> = HashMap::new();
        let mut cache: HashMap<&crate::model::End, Workload> = HashMap::new();
        for f in flows {
            let from = cache
                .entry(&f.source)
                .or_insert_with(|| inventory.workload(&f.source))
                .clone();
            let to = cache
                .entry(&f.destination)
                .or_insert_with(|| inventory.workload(&f.destination))
                .clone();
            by_pair
                .entry((from.clone(), to.clone()))
                .or_insert_with(|| Edge::new(GraphNode::Workload(from), GraphNode::Workload(to)))
                .add_flow(f);
        }
        let workload_edges = by_pair.len();
        let mut edges: Vec<Edge> = by_pair.into_values().collect();
        // Busiest first; ties by name, so the output is stable.
        edges.sort_by(|a, b| {
            b.bytes
                .cmp(&a.bytes)
                .then_with(|| a.from.cmp(&b.from))
                .then_with(|| a.to.cmp(&b.to))
        });
        if top > 0 && edges.len() > top {
            let rest = edges.split_off(top);
            let mut others: BTreeMap<(Option<String>, Option<String>), Edge> = BTreeMap::new();
            for e in &rest {
                let from_ns = e.from.namespace().map(str::to_owned);
                let to_ns = e.to.namespace().map(str::to_owned);
                others
                    .entry((from_ns.clone(), to_ns.clone()))
                    .or_insert_with(|| {
                        Edge::new(GraphNode::Other(from_ns), GraphNode::Other(to_ns))
                    })
                    .merge(e);
            }
            let mut others: Vec<Edge> = others.into_values().collect();
            others.sort_by(|a, b| {
                b.bytes
                    .cmp(&a.bytes)
                    .then_with(|| a.from.cmp(&b.from))
                    .then_with(|| a.to.cmp(&b.to))
            });
            // Within a namespace the summary is a loop on its (other) node;
            // across namespaces at most `max_other` pairs are drawn, the rest
            // is one edge on "(everything else)".
            let max_other = (top / 4).max(10);
            let (inner, cross): (Vec<Edge>, Vec<Edge>) =
                others.into_iter().partition(|e| e.from == e.to);
            edges.extend(inner);
            let mut cross = cross.into_iter();
            edges.extend(cross.by_ref().take(max_other));
            let mut rest = Edge::new(GraphNode::Rest, GraphNode::Rest);
            for e in cross {
                rest.merge(&e);
            }
            if rest.flows > 0 {
                edges.push(rest);
            }
        }
        Graph {
            edges,
            flows: flows.len(),
            workload_edges,
        }
    }

    /// The nodes of the kept edges, by namespace (`None`: addresses).
    pub fn nodes_by_namespace(&self) -> BTreeMap<Option<String>, BTreeSet<GraphNode>> {
        let mut out: BTreeMap<Option<String>, BTreeSet<GraphNode>> = BTreeMap::new();
        for e in &self.edges {
            for n in [&e.from, &e.to] {
                out.entry(n.namespace().map(str::to_owned))
                    .or_default()
                    .insert(n.clone());
            }
        }
        out
    }

    /// Graphviz DOT: one cluster per namespace, addresses outside; edges
    /// labelled; cross-node edges dashed with their VNI, red and thick when
    /// the overlay lost packets. Ids and classes survive into the SVG
    /// (`<g id=… class=…>`), so the picture can be checked and styled.
    pub fn to_dot(&self) -> String {
        let mut s = String::new();
        s.push_str("digraph weir {\n");
        s.push_str("  graph [rankdir=LR, fontname=\"Helvetica\", fontsize=12, nodesep=0.3, ranksep=1.0, label=\"weir: who talks to whom\", labelloc=t];\n");
        s.push_str("  node [shape=box, style=\"rounded,filled\", fillcolor=\"#eef4fb\", color=\"#4a78b0\", fontname=\"Helvetica\", fontsize=11];\n");
        s.push_str("  edge [fontname=\"Helvetica\", fontsize=9, color=\"#555555\"];\n");
        let mut node_ids: HashMap<GraphNode, String> = HashMap::new();
        for (i, (ns, nodes)) in self.nodes_by_namespace().iter().enumerate() {
            let indent = if ns.is_some() { "    " } else { "  " };
            if let Some(ns) = ns {
                let _ = writeln!(
                    s,
                    "  subgraph cluster_{i} {{\n    id={};\n    label={};\n    style=\"rounded\"; color=\"#999999\"; fontsize=13;",
                    dot_str(&format!("ns-{ns}")),
                    dot_str(ns)
                );
            }
            for n in nodes {
                let id = format!("n{}", node_ids.len());
                let (shape, fill, class) = match n {
                    GraphNode::Workload(Workload::Address(_)) => ("ellipse", "#f4f4f4", "address"),
                    GraphNode::Workload(Workload::Pod { .. }) => ("box", "#eef4fb", "pod"),
                    GraphNode::Workload(_) => ("box", "#dcebfa", "workload"),
                    GraphNode::Other(_) | GraphNode::Rest => ("note", "#ffffff", "other"),
                };
                let _ = writeln!(
                    s,
                    "{indent}{id} [id={}, label={}, tooltip={}, shape={shape}, fillcolor=\"{fill}\", class=\"{class}\"];",
                    dot_str(&format!("node:{}", n.id())),
                    dot_str(&n.label()),
                    dot_str(&n.id()),
                );
                node_ids.insert(n.clone(), id);
            }
            if ns.is_some() {
                s.push_str("  }\n");
            }
        }
        for e in &self.edges {
            let mut attrs = vec![
                format!(
                    "id={}",
                    dot_str(&format!("edge:{}->{}", e.from.id(), e.to.id()))
                ),
                format!("label={}", dot_str(&e.label().join("\n"))),
                format!(
                    "tooltip={}",
                    dot_str(&format!(
                        "{} → {}: {} flows, {} packets ({})",
                        e.from.id(),
                        e.to.id(),
                        e.flows,
                        e.packets,
                        e.services.iter().cloned().collect::<Vec<_>>().join(" ")
                    ))
                ),
            ];
            let mut class = vec!["flow"];
            if e.cross_node {
                attrs.push("style=dashed".into());
                class.push("cross-node");
            }
            if e.loss_packets > 0 {
                attrs.push("color=\"#d62728\", fontcolor=\"#d62728\", penwidth=2.5".into());
                class.push("loss");
            } else if e.cross_node {
                attrs.push("color=\"#1f77b4\"".into());
            }
            if e.is_other() {
                attrs.push("color=\"#aaaaaa\", fontcolor=\"#777777\"".into());
                class.push("other");
            }
            attrs.push(format!("class=\"{}\"", class.join(" ")));
            let _ = writeln!(
                s,
                "  {} -> {} [{}];",
                node_ids[&e.from],
                node_ids[&e.to],
                attrs.join(", ")
            );
        }
        s.push_str("}\n");
        s
    }

    /// Mermaid `flowchart LR`: a subgraph per namespace; lossy edges red.
    pub fn to_mermaid(&self) -> String {
        let mut s = String::from("flowchart LR\n");
        let mut node_ids: HashMap<GraphNode, String> = HashMap::new();
        for (i, (ns, nodes)) in self.nodes_by_namespace().iter().enumerate() {
            let indent = if ns.is_some() { "    " } else { "  " };
            if let Some(ns) = ns {
                let _ = writeln!(s, "  subgraph ns{i}[\"{}\"]", mermaid_str(ns));
            }
            for n in nodes {
                let id = format!("n{}", node_ids.len());
                let label = mermaid_str(&n.label());
                match n {
                    GraphNode::Workload(Workload::Address(_)) => {
                        let _ = writeln!(s, "{indent}{id}([\"{label}\"])");
                    }
                    _ => {
                        let _ = writeln!(s, "{indent}{id}[\"{label}\"]");
                    }
                }
                node_ids.insert(n.clone(), id);
            }
            if ns.is_some() {
                s.push_str("  end\n");
            }
        }
        let mut styles = String::new();
        for (i, e) in self.edges.iter().enumerate() {
            let arrow = if e.cross_node { "-.->" } else { "-->" };
            let _ = writeln!(
                s,
                "  {} {arrow}|\"{}\"| {}",
                node_ids[&e.from],
                mermaid_str(&e.label().join("<br/>")),
                node_ids[&e.to]
            );
            if e.loss_packets > 0 {
                let _ = writeln!(styles, "  linkStyle {i} stroke:#d62728,stroke-width:3px");
            }
        }
        s.push_str(&styles);
        s
    }

    /// The edges as an HTML table (for the page).
    fn html_table(&self) -> String {
        let mut s = String::from(
            "<table id=\"edges\">\n<thead><tr><th>from</th><th>to</th><th>bytes</th><th>rate</th><th>packets</th><th>flows</th><th>VNI</th><th>overlay loss</th><th>services</th></tr></thead>\n<tbody>\n",
        );
        for e in &self.edges {
            let class = if e.loss_packets > 0 {
                " class=\"loss\""
            } else {
                ""
            };
            let vnis: Vec<String> = e.vnis.iter().map(|v| v.to_string()).collect();
            let _ = writeln!(
                s,
                "<tr{class}><td>{}</td><td>{}</td><td data-bytes=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                html_escape(&e.from.id()),
                html_escape(&e.to.id()),
                e.bytes,
                human_bytes(e.bytes as f64),
                human_rate(e.rate),
                e.packets,
                e.flows,
                vnis.join(","),
                e.loss_packets,
                html_escape(&e.services.iter().cloned().collect::<Vec<_>>().join(" ")),
            );
        }
        s.push_str("</tbody>\n</table>\n");
        s
    }

    /// One self-contained page: the SVG inline and the edge table; nothing
    /// is fetched.
    pub fn to_html(&self, svg: &str, title: &str) -> String {
        // Graphviz's SVG starts with an XML prolog and a DOCTYPE: inline SVG
        // in HTML wants only the <svg> element.
        let svg = svg.find("<svg").map(|i| &svg[i..]).unwrap_or(svg);
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n<style>\nbody{{font-family:Helvetica,Arial,sans-serif;margin:1em;color:#222}}\n#graph svg{{max-width:100%;height:auto}}\ntable{{border-collapse:collapse;font-size:12px;margin-top:1em}}\nth,td{{border:1px solid #ccc;padding:2px 6px;text-align:left}}\ntr.loss td{{color:#d62728;font-weight:bold}}\n</style>\n</head>\n<body>\n<h1>{title}</h1>\n<p id=\"summary\">{} flows, {} workload edges, {} drawn{}.</p>\n<div id=\"graph\">\n{svg}\n</div>\n{}</body>\n</html>\n",
            self.flows,
            self.workload_edges,
            self.edges.len(),
            if self.edges.iter().any(Edge::is_other) {
                " (the rest summarised as (other) per namespace pair)"
            } else {
                ""
            },
            self.html_table(),
            title = html_escape(title),
        )
    }
}

/// Lays out DOT with Graphviz (`dot -Tsvg`).
pub fn render_svg(dot: &str) -> Result<String> {
    let dot_bin = std::env::var("WEIR_DOT").unwrap_or_else(|_| "dot".into());
    let mut child = Command::new(&dot_bin)
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run Graphviz `{dot_bin}` ({e}): install Graphviz (Debian: apt-get install graphviz), or use -o dot / -o mermaid"
            )
        })?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = dot.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().context("waiting for Graphviz")?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writing to Graphviz panicked"))?
        .context("writing the graph to Graphviz")?;
    if !out.status.success() {
        bail!(
            "Graphviz `{dot_bin} -Tsvg` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).context("Graphviz wrote non-UTF-8 SVG")
}

/// A DOT double-quoted string.
fn dot_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text inside a Mermaid `"…"` label (quotes as entities).
fn mermaid_str(s: &str) -> String {
    s.replace('"', "#quot;")
}

pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::End;
    use crate::model::tests::{owner, pod, rs};

    fn end(ns: &str, pod: &str, node: &str) -> End {
        End {
            namespace: Some(ns.into()),
            pod: Some(pod.into()),
            ip: "10.244.0.1".into(),
            node: Some(node.into()),
        }
    }

    fn flow(src: End, dst: End, bytes: u64, vni: Option<i64>, loss: u64) -> Flow {
        Flow {
            namespace: src.namespace.clone().unwrap_or_default(),
            name: "f".into(),
            source: src,
            destination: dst,
            protocol: "TCP".into(),
            port: Some(8080),
            packets: bytes / 100,
            bytes,
            first_seen: Some(1000.0),
            last_seen: Some(1010.0),
            vni,
            loss_packets: loss,
        }
    }

    fn inventory() -> Inventory {
        Inventory::new(
            &[
                pod("shop", "web-1", Some(owner("ReplicaSet", "web-5f"))),
                pod("shop", "web-2", Some(owner("ReplicaSet", "web-5f"))),
                pod("shop", "db-0", Some(owner("StatefulSet", "db"))),
            ],
            &[rs("shop", "web-5f", Some(owner("Deployment", "web")))],
        )
    }

    #[test]
    fn flows_of_one_workload_become_one_edge_with_summed_bytes_and_rate() {
        let flows = vec![
            flow(
                end("shop", "web-1", "n1"),
                end("shop", "db-0", "n2"),
                1000,
                Some(1),
                0,
            ),
            flow(
                end("shop", "web-2", "n1"),
                end("shop", "db-0", "n2"),
                3000,
                Some(1),
                7,
            ),
        ];
        let g = Graph::build(&flows, &inventory(), 10);
        assert_eq!(g.edges.len(), 1);
        let e = &g.edges[0];
        assert_eq!(e.from.id(), "shop/Deployment/web");
        assert_eq!(e.to.id(), "shop/StatefulSet/db");
        assert_eq!(e.bytes, 4000);
        assert_eq!(e.flows, 2);
        assert!((e.rate - 400.0).abs() < 1e-9, "{}", e.rate);
        assert!(e.cross_node);
        assert_eq!(e.loss_packets, 7);
        assert_eq!(e.label(), vec!["3.9 KiB · 400 B/s", "VNI 1", "lost 7 pkts"]);
    }

    #[test]
    fn top_n_keeps_the_busiest_and_summarises_the_rest_per_namespace_pair() {
        let mut flows = Vec::new();
        for i in 0..20u64 {
            flows.push(flow(
                end("a", &format!("p{i}"), "n1"),
                end("b", &format!("q{i}"), "n1"),
                1000 + i,
                None,
                0,
            ));
        }
        flows.push(flow(end("a", "x", "n1"), end("c", "y", "n1"), 5, None, 0));
        let g = Graph::build(&flows, &Inventory::default(), 5);
        assert_eq!(g.workload_edges, 21);
        assert_eq!(g.edges.len(), 5 + 2);
        assert_eq!(g.edges[0].bytes, 1019);
        assert_eq!(g.edges[4].bytes, 1015);
        let others: Vec<&Edge> = g.edges.iter().filter(|e| e.is_other()).collect();
        assert_eq!(others.len(), 2);
        assert_eq!(others[0].from.id(), "a/(other)");
        assert_eq!(others[0].to.id(), "b/(other)");
        assert_eq!(others[0].flows, 15);
        assert_eq!(others[0].bytes, (1000..1015).sum::<u64>());
        assert_eq!(others[1].to.id(), "c/(other)");
        // Everything is accounted for.
        let total: u64 = g.edges.iter().map(|e| e.bytes).sum();
        assert_eq!(total, flows.iter().map(|f| f.bytes).sum::<u64>());
    }

    #[test]
    fn dot_groups_by_namespace_and_marks_loss() {
        let flows = vec![
            flow(
                end("shop", "web-1", "n1"),
                end("shop", "db-0", "n2"),
                1000,
                Some(1),
                3,
            ),
            Flow {
                destination: End {
                    namespace: None,
                    pod: None,
                    ip: "93.184.216.34".into(),
                    node: None,
                },
                ..flow(end("shop", "web-1", "n1"), end("x", "y", "n1"), 10, None, 0)
            },
        ];
        let g = Graph::build(&flows, &inventory(), 0);
        let dot = g.to_dot();
        assert!(dot.contains("subgraph cluster_"), "{dot}");
        assert!(dot.contains("label=\"shop\""), "{dot}");
        assert!(dot.contains("label=\"deploy/web\""), "{dot}");
        assert!(dot.contains("label=\"sts/db\""), "{dot}");
        assert!(dot.contains("id=\"node:93.184.216.34\""), "{dot}");
        assert!(dot.contains("class=\"flow cross-node loss\""), "{dot}");
        assert!(dot.contains("VNI 1\\nlost 3 pkts"), "{dot}");
        let mermaid = g.to_mermaid();
        assert!(mermaid.starts_with("flowchart LR\n"));
        assert!(mermaid.contains("subgraph ns1[\"shop\"]"), "{mermaid}");
        assert!(mermaid.contains("-.->"), "{mermaid}");
        assert!(mermaid.contains("linkStyle 0 stroke:#d62728"), "{mermaid}");
        let html = g.to_html("<?xml version=\"1.0\"?>\n<svg><g/></svg>", "t <1>");
        assert!(
            html.contains("<div id=\"graph\">\n<svg><g/></svg>"),
            "{html}"
        );
        assert!(!html.contains("<?xml"));
        assert!(html.contains("<title>t &lt;1&gt;</title>"));
        assert!(
            html.contains("<tr class=\"loss\"><td>shop/Deployment/web</td>"),
            "{html}"
        );
        assert!(!html.contains("http://") || !html.contains("src=\"http"));
    }

    #[test]
    fn escaping() {
        assert_eq!(dot_str("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
        assert_eq!(
            html_escape("<a href='x'>&"),
            "&lt;a href=&#39;x&#39;&gt;&amp;"
        );
    }
}
