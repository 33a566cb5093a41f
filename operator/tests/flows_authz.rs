//! Who may read the agent's `/flows`: the agent's real HTTP endpoint, with
//! a flow table holding flows of pods in two namespaces, reviewing callers
//! with a real API server (etcd + kube-apiserver from the control plane
//! harness; its service-account tokens come from the TokenRequest API).
//! No token or a bad one: 401; a ServiceAccount without RBAC: 403; one that
//! may `get pods` in namespace a: only a's flows; one that may in every
//! namespace: all of them. `/metrics` stays open.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use weir_e2e::controlplane::ControlPlane;
use weir_ebpf::abi::{Direction, FlowCounters, FlowKey};
use weir_node_state::AttachmentRecord;
use weir_operator::agent::authz::FlowAuthz;
use weir_operator::agent::reading::FlowSink as _;
use weir_operator::agent::server::{self, Endpoints};
use weir_operator::agent::table::FlowTable;

fn record(pod_id: u32, namespace: &str, pod: &str) -> AttachmentRecord {
    weir_e2e::fixtures::attachment_record(pod_id, Some(namespace), pod)
}

fn key(pod_id: u32, dport: u16) -> FlowKey {
    let mut k = FlowKey {
        pod_id,
        direction: Direction::FromPod as u8,
        proto: 6,
        sport: 40000,
        dport,
        ..Default::default()
    };
    let src: IpAddr = format!("10.244.0.{pod_id}").parse().unwrap();
    k.set_addrs(src, "192.0.2.1".parse().unwrap());
    k
}

/// Pods a/web (2 flows) and b/db (1 flow).
fn table() -> FlowTable {
    let mut table = FlowTable::new("node-1");
    let directory: std::collections::HashMap<IpAddr, weir_operator::agent::peers::Peer> =
        Default::default();
    let mut round = table.round(&directory);
    round.records(&[record(1, "a", "web"), record(2, "b", "db")]);
    let c = FlowCounters {
        packets: 3,
        bytes: 300,
        ..Default::default()
    };
    round.pod_flow(&key(1, 80), &c);
    round.pod_flow(&key(1, 443), &c);
    round.pod_flow(&key(2, 5432), &c);
    round.finish(None, true);
    table
}

async fn get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: agent\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn namespaces(body: &str) -> Vec<String> {
    let flows: Vec<Value> = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    flows
        .iter()
        .map(|f| f["namespace"].as_str().unwrap_or("<none>").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_are_served_only_to_authenticated_callers_and_only_their_namespaces() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.expect("a client for the control plane");
    for ns in ["a", "b"] {
        weir_e2e::objects::create_namespace_for_pods(&client, ns)
            .await
            .unwrap();
    }
    for sa in ["reader", "nobody", "ops"] {
        cp.kubectl_ok(["create", "serviceaccount", sa, "-n", "a"])
            .unwrap();
    }
    cp.apply(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: pod-reader, namespace: a}\nrules: [{apiGroups: [''], resources: [pods], verbs: [get]}]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: all-pod-reader}\nrules: [{apiGroups: [''], resources: [pods], verbs: [get]}]\n",
    )
    .unwrap();
    let rb: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "reader", "namespace": "a"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "a"}]
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), "a")
        .create(&PostParams::default(), &rb)
        .await
        .unwrap();
    let crb: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "ops-reads-all-pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "all-pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "ops", "namespace": "a"}]
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &crb)
        .await
        .unwrap();
    let token = |sa: &str| {
        cp.kubectl_ok(["create", "token", sa, "-n", "a"])
            .unwrap()
            .trim()
            .to_owned()
    };
    let (reader, nobody, ops) = (token("reader"), token("nobody"), token("ops"));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hub = Arc::new(weir_operator::agent::stream::Hub::new("node-1"));
    let views = table().views();
    let endpoints = Arc::new(Endpoints {
        registry: Default::default(),
        flows: Arc::new(Mutex::new(table())),
        authz: Some(Arc::new(FlowAuthz::new(client.clone()))),
        stream: hub.clone(),
        node: "node-1".into(),
    });
    tokio::spawn(server::serve(
        listener,
        endpoints,
        weir_operator::http::Readiness::waiting("a test"),
    ));

    let (status, body) = get(addr, "/flows", None).await;
    assert_eq!(status, 401, "no token: {body}");
    let (status, body) = get(addr, "/flows", Some("not-a-token")).await;
    assert_eq!(status, 401, "a bad token: {body}");
    let (status, body) = get(addr, "/flows", Some(&nobody)).await;
    assert_eq!(status, 403, "a ServiceAccount without RBAC: {body}");
    let (status, body) = get(addr, "/flows", Some(&reader)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        namespaces(&body),
        ["a", "a"],
        "get pods in a: a's flows only"
    );
    let (status, body) = get(addr, "/flows", Some(&ops)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        namespaces(&body),
        ["a", "a", "b"],
        "get pods everywhere: every flow"
    );
    // Cached answers give the same (a second round within the TTL).
    let (status, body) = get(addr, "/flows", Some(&reader)).await;
    assert_eq!(
        (status, namespaces(&body)),
        (200, vec!["a".to_owned(), "a".to_owned()])
    );
    // /metrics stays open.
    let (status, _) = get(addr, "/metrics", None).await;
    assert_eq!(status, 200);

    // The live stream is reviewed the same way ...
    let (status, body) = get(addr, "/flows/stream", None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = get(addr, "/flows/stream", Some(&nobody)).await;
    assert_eq!(status, 403, "{body}");
    // ... and a reader in a gets a's updates only, as JSON lines with
    // deltas and totals.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET /flows/stream HTTP/1.0\r\nAuthorization: Bearer {reader}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut reader_side = tokio::io::BufReader::new(stream);
    use tokio::io::AsyncBufReadExt as _;
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader_side.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(head.contains("application/x-ndjson"), "{head}");
    weir_e2e::wait::eventually(
        std::time::Duration::from_secs(10),
        "the stream subscribes",
        || {
            let listening = hub.listening();
            async move { anyhow::Ok(listening.then_some(())) }
        },
    )
    .await
    .unwrap();
    let published = std::time::Instant::now();
    hub.publish(&views);
    async fn next_line(r: &mut tokio::io::BufReader<tokio::net::TcpStream>) -> Value {
        use tokio::io::AsyncBufReadExt as _;
        let mut line = String::new();
        tokio::time::timeout(std::time::Duration::from_secs(10), r.read_line(&mut line))
            .await
            .expect("a stream line within 10 s")
            .unwrap();
        serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }
    let mut lines = Vec::new();
    for _ in 0..2 {
        lines.push(next_line(&mut reader_side).await);
    }
    // Then the end of that collection (b's flow was not sent).
    assert_eq!(next_line(&mut reader_side).await["endOfCollection"], true);
    eprintln!("publish → line at the client: {:?}", published.elapsed());
    for l in &lines {
        assert_eq!(l["flow"]["namespace"], "a", "{l}");
        assert_eq!(l["node"], "node-1");
        assert_eq!(l["delta"]["packets"], 3, "{l}");
        assert_eq!(l["flow"]["packets"], 3, "{l}");
    }
    // The next collection: deltas against the previous one.
    let mut grown = views.clone();
    for v in &mut grown {
        v.packets += 1;
        v.bytes += 100;
    }
    hub.publish(&grown);
    let next = next_line(&mut reader_side).await;
    assert_eq!(
        (
            next["flow"]["namespace"].as_str(),
            next["delta"]["packets"].as_u64(),
            next["flow"]["packets"].as_u64()
        ),
        (Some("a"), Some(1), Some(4)),
        "{next}"
    );
}
