//! `kubectl weir observe`: the agents' live streams (`/flows/stream`), not a
//! PodFlow watch. The plugin finds the agent pods (label
//! `app.kubernetes.io/component=agent` in the agents' namespace) and reaches
//! each one through the API server (a port-forward, as `kubectl
//! port-forward` does: it works wherever `kubectl` does) or, with `--via
//! direct`, at its address (the agents run on the host network). It sends
//! the user's bearer token, which the agent reviews with the API server: a
//! user sees only the namespaces where they may `get pods`. Each line is one
//! flow update (delta and totals); lost updates are shown; an agent that
//! cannot be reached is named.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader,
};

use crate::model::{human_bytes, human_count};

/// An agent to stream from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub namespace: String,
    pub pod: String,
    pub node: String,
    /// `host:port`.
    pub address: String,
    /// The port of its `/flows/stream`.
    pub port: u16,
}

/// How the plugin reaches the agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// A port-forward through the API server (needs `get` and `create` on
    /// the agent pods' `pods/portforward`: the websocket upgrade is a GET).
    PortForward,
    /// The agents' addresses (from inside the cluster network).
    Direct,
}

/// A byte stream to an agent.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

fn agent_name(agent: &Agent) -> String {
    format!(
        "agent {} on node {} ({})",
        agent.pod, agent.node, agent.address
    )
}

/// Opens a connection to `agent`'s stream port.
pub async fn dial(
    agent: &Agent,
    via: Via,
    client: &kube::Client,
    timeout: Duration,
) -> Result<Box<dyn Conn>> {
    let name = || agent_name(agent);
    match via {
        Via::Direct => {
            let stream =
                tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&agent.address))
                    .await
                    .map_err(|_| {
                        anyhow!("{} unreachable: no connection within {timeout:?}", name())
                    })?
                    .map_err(|e| anyhow!("{} unreachable: {e}", name()))?;
            Ok(Box::new(stream))
        }
        Via::PortForward => {
            let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
                kube::Api::namespaced(client.clone(), &agent.namespace);
            let mut forwarder = tokio::time::timeout(timeout, pods.portforward(&agent.pod, &[agent.port]))
                .await
                .map_err(|_| anyhow!("{}: no port-forward through the API server within {timeout:?}", name()))?
                .map_err(|e| match &e {
                    kube::Error::Api(s) if s.code == 403 => anyhow!(
                        "{}: you may not port-forward to it ({}); ask for `get` and `create` on `pods/portforward` in namespace {}, or run from inside the cluster with --via direct",
                        name(), s.message, agent.namespace
                    ),
                    _ => anyhow!("{}: port-forward through the API server failed: {e}", name()),
                })?;
            let stream = forwarder
                .take_stream(agent.port)
                .ok_or_else(|| anyhow!("{}: the port-forward has no stream", name()))?;
            // The forwarder's task runs on its own; it ends with the stream.
            drop(forwarder);
            Ok(Box::new(stream))
        }
    }
}

/// What the user asked to see.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `None`: all namespaces.
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub from_pod: Option<String>,
    pub to_pod: Option<String>,
    /// IP protocol number.
    pub protocol: Option<u64>,
    pub port: Option<u64>,
    /// Only updates from collections at most this old (ms since the epoch).
    pub since_ms: Option<u64>,
}

/// The IP protocol number of a name (`tcp`, `udp`, `icmp`, `icmpv6`, a number).
pub fn protocol_number(name: &str) -> Result<u64, String> {
    match name.to_ascii_lowercase().as_str() {
        "tcp" => Ok(6),
        "udp" => Ok(17),
        "icmp" => Ok(1),
        "icmpv6" => Ok(58),
        "sctp" => Ok(132),
        n => n.parse().map_err(|_| {
            format!("{name:?}: a protocol is tcp, udp, icmp, icmpv6, sctp or a number")
        }),
    }
}

fn protocol_name(n: u64) -> String {
    match n {
        6 => "TCP".into(),
        17 => "UDP".into(),
        1 => "ICMP".into(),
        58 => "ICMPv6".into(),
        132 => "SCTP".into(),
        n => format!("IP/{n}"),
    }
}

/// `name` matches a pod given as `pod` or `namespace/pod`.
fn pod_matches(want: &str, namespace: Option<&str>, pod: Option<&str>) -> bool {
    let Some(pod) = pod else { return false };
    match want.split_once('/') {
        Some((ns, p)) => Some(ns) == namespace && p == pod,
        None => want == pod,
    }
}

impl Filter {
    /// Whether a flow update line passes.
    pub fn passes(&self, line: &Value) -> bool {
        let flow = &line["flow"];
        let ns = flow["namespace"].as_str();
        let pod = flow["pod"].as_str();
        let egress = flow["direction"] == "egress";
        let peer_ns = flow["peer"]["namespace"].as_str();
        let peer_pod = flow["peer"]["pod"].as_str();
        if let Some(want) = &self.namespace
            && ns != Some(want.as_str())
        {
            return false;
        }
        if let Some(p) = &self.pod
            && !pod_matches(p, ns, pod)
        {
            return false;
        }
        // The source is the pod for egress, the peer for ingress.
        if let Some(p) = &self.from_pod {
            let (sns, spod) = if egress {
                (ns, pod)
            } else {
                (peer_ns, peer_pod)
            };
            if !pod_matches(p, sns, spod) {
                return false;
            }
        }
        if let Some(p) = &self.to_pod {
            let (dns, dpod) = if egress {
                (peer_ns, peer_pod)
            } else {
                (ns, pod)
            };
            if !pod_matches(p, dns, dpod) {
                return false;
            }
        }
        if let Some(proto) = self.protocol
            && flow["protocol"].as_u64() != Some(proto)
        {
            return false;
        }
        if let Some(port) = self.port
            && flow["sourcePort"].as_u64() != Some(port)
            && flow["destinationPort"].as_u64() != Some(port)
        {
            return false;
        }
        if let Some(since) = self.since_ms
            && line["timeMs"].as_u64().is_some_and(|t| t < since)
        {
            return false;
        }
        true
    }
}

/// The table header.
pub const TABLE_HEADER: &str = "TIME          NODE            POD                             DIR  PROTO   SOURCE                  DESTINATION             +PKTS    +BYTES     PKTS       BYTES      VNI";

fn endpoint(ip: &Value, port: &Value, proto: u64) -> String {
    let ip = ip.as_str().unwrap_or("?");
    if matches!(proto, 6 | 17 | 132) {
        if ip.contains(':') {
            format!("[{ip}]:{}", port)
        } else {
            format!("{ip}:{}", port)
        }
    } else {
        ip.to_owned()
    }
}

/// One table line for an update (or a lost-updates notice).
pub fn table_line(line: &Value) -> Option<String> {
    if let Some(lost) = line["lostUpdates"].as_u64() {
        return Some(format!(
            "!! {}: {lost} collections of updates lost (this client was too slow; {} in all)",
            line["node"].as_str().unwrap_or("?"),
            line["lostUpdatesTotal"].as_u64().unwrap_or(lost)
        ));
    }
    let flow = line.get("flow")?;
    let proto = flow["protocol"].as_u64().unwrap_or(0);
    let time = line["timeMs"]
        .as_u64()
        .and_then(|ms| k8s_openapi::jiff::Timestamp::from_millisecond(ms as i64).ok())
        .map(|t| t.strftime("%H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| "-".into());
    let pod = match flow["namespace"].as_str() {
        Some(ns) => format!("{ns}/{}", flow["pod"].as_str().unwrap_or("?")),
        None => flow["pod"].as_str().unwrap_or("?").to_owned(),
    };
    let vni = flow["overlay"]["vni"]
        .as_u64()
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into());
    Some(format!(
        "{time:<13} {:<15} {pod:<31} {:<4} {:<7} {:<23} {:<23} {:<8} {:<10} {:<10} {:<10} {vni}",
        line["node"].as_str().unwrap_or("?"),
        if flow["direction"] == "egress" {
            "out"
        } else {
            "in"
        },
        protocol_name(proto),
        endpoint(&flow["source"], &flow["sourcePort"], proto),
        endpoint(&flow["destination"], &flow["destinationPort"], proto),
        human_count(line["delta"]["packets"].as_f64().unwrap_or(0.0)),
        human_bytes(line["delta"]["bytes"].as_f64().unwrap_or(0.0)),
        human_count(flow["packets"].as_f64().unwrap_or(0.0)),
        human_bytes(flow["bytes"].as_f64().unwrap_or(0.0)),
    ))
}

/// Opens `agent`'s stream with `token` over `stream`; the reader is past
/// the head.
pub async fn connect(
    stream: Box<dyn Conn>,
    agent: &Agent,
    token: &str,
    timeout: Duration,
) -> Result<BufReader<Box<dyn Conn>>> {
    let name = || agent_name(agent);
    let mut stream = stream;
    stream
        .write_all(
            format!(
                "GET /flows/stream HTTP/1.0\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nAccept: application/x-ndjson\r\n\r\n",
                agent.address
            )
            .as_bytes(),
        )
        .await
        .with_context(name)?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    tokio::time::timeout(timeout, reader.read_line(&mut status_line))
        .await
        .map_err(|_| anyhow!("{} did not answer within {timeout:?}", name()))?
        .with_context(name)?;
    if status_line.is_empty() {
        bail!(
            "{}: the connection closed before the agent answered (through a port-forward: the node could not reach the agent's port {}; is the agent running and listening there?)",
            name(),
            agent.port
        );
    }
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("{} answered {status_line:?}, not HTTP", name()))?;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).await.with_context(name)?;
        if header == "\r\n" || header.is_empty() {
            break;
        }
    }
    if status != 200 {
        let mut body = String::new();
        let _ = tokio::time::timeout(timeout, reader.read_to_string(&mut body)).await;
        let body = body.trim();
        match status {
            401 => bail!(
                "{}: your token was refused (401 {body}); observe needs a bearer token the API server accepts (--token, or a kubeconfig user with a token)",
                name()
            ),
            403 => bail!(
                "{}: you may not get pods in any namespace whose flows this node holds (403)",
                name()
            ),
            404 => bail!(
                "{}: no /flows/stream (404): the agent is older than this plugin",
                name()
            ),
            s => bail!("{}: {s} {body}", name()),
        }
    }
    Ok(reader)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(ns: &str, pod: &str, direction: &str, peer: Option<(&str, &str)>) -> Value {
        json!({
            "node": "n1", "seq": 1, "timeMs": 1_800_000_000_000u64,
            "delta": {"packets": 2, "bytes": 2048},
            "flow": {
                "namespace": ns, "pod": pod, "direction": direction, "protocol": 6,
                "source": "10.0.0.1", "sourcePort": 40000, "destination": "10.0.0.2", "destinationPort": 8080,
                "packets": 10, "bytes": 10240,
                "peer": peer.map(|(n, p)| json!({"namespace": n, "pod": p, "node": "n2"})),
                "overlay": {"vni": 1}
            }
        })
    }

    #[test]
    fn filters() {
        let out = line("shop", "web", "egress", Some(("shop", "db")));
        let inn = line("shop", "db", "ingress", Some(("shop", "web")));
        let f = |f: Filter| (f.passes(&out), f.passes(&inn));
        assert_eq!(f(Filter::default()), (true, true));
        assert_eq!(
            f(Filter {
                namespace: Some("pay".into()),
                ..Default::default()
            }),
            (false, false)
        );
        assert_eq!(
            f(Filter {
                pod: Some("shop/web".into()),
                ..Default::default()
            }),
            (true, false)
        );
        assert_eq!(
            f(Filter {
                from_pod: Some("web".into()),
                ..Default::default()
            }),
            (true, true)
        );
        assert_eq!(
            f(Filter {
                to_pod: Some("shop/db".into()),
                ..Default::default()
            }),
            (true, true)
        );
        assert_eq!(
            f(Filter {
                to_pod: Some("web".into()),
                ..Default::default()
            }),
            (false, false)
        );
        assert_eq!(
            f(Filter {
                protocol: Some(17),
                ..Default::default()
            }),
            (false, false)
        );
        assert_eq!(
            f(Filter {
                port: Some(8080),
                ..Default::default()
            }),
            (true, true)
        );
        assert_eq!(
            f(Filter {
                since_ms: Some(1_900_000_000_000),
                ..Default::default()
            }),
            (false, false)
        );
        assert_eq!(protocol_number("TCP"), Ok(6));
        assert!(protocol_number("foo").is_err());
    }

    #[test]
    fn table_lines() {
        let t = table_line(&line("shop", "web", "egress", None)).unwrap();
        assert!(t.contains("shop/web"), "{t}");
        assert!(
            t.contains("10.0.0.1:40000") && t.contains("10.0.0.2:8080"),
            "{t}"
        );
        assert!(t.contains("2.0 KiB") && t.contains("10.0 KiB"), "{t}");
        assert!(t.ends_with(" 1"), "VNI last: {t}");
        let lost =
            table_line(&json!({"node": "n1", "lostUpdates": 3, "lostUpdatesTotal": 5})).unwrap();
        assert!(
            lost.contains("3 collections of updates lost") && lost.contains("5 in all"),
            "{lost}"
        );
        assert!(table_line(&json!({"node": "n1", "endOfCollection": true})).is_none());
    }
}
