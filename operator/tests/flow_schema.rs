//! One JSON schema for a flow: `docs/flow.schema.json` is generated from the
//! type the agent serves on `/flows` and `agent dump -o json` prints
//! (`PodFlowView`), must be up to date, and what `/flows` renders from its
//! table is exactly that type's JSON, flow by flow.
//!
//! Regenerate the file: `WEIR_UPDATE_FLOW_SCHEMA=1 cargo test -p weir-operator --test flow_schema`.

use std::net::IpAddr;
use std::path::Path;

use serde_json::Value;
use weir_ebpf::abi::{Direction, FlowCounters, FlowKey};
use weir_node_state::AttachmentRecord;
use weir_operator::agent::join::flow_schema;
use weir_operator::agent::reading::FlowSink as _;
use weir_operator::agent::table::FlowTable;

#[test]
fn docs_flow_schema_is_generated_from_the_served_type() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/flow.schema.json");
    let generated = format!(
        "{}\n",
        serde_json::to_string_pretty(&flow_schema()).unwrap()
    );
    if std::env::var_os("WEIR_UPDATE_FLOW_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{} is stale: WEIR_UPDATE_FLOW_SCHEMA=1 cargo test -p weir-operator --test flow_schema",
        path.display()
    );
}

fn record(pod_id: u32, namespace: Option<&str>, pod: &str) -> AttachmentRecord {
    weir_e2e::fixtures::attachment_record(pod_id, namespace, pod)
}

#[test]
fn flows_endpoint_json_is_the_schema_type_flow_by_flow() {
    let mut table = FlowTable::new("node-1");
    let directory: std::collections::HashMap<IpAddr, weir_operator::agent::peers::Peer> =
        Default::default();
    let mut round = table.round(&directory);
    round.records(&[record(1, Some("a"), "web"), record(2, None, "podman-pod")]);
    for (pod_id, dport, direction) in [(1, 80, Direction::FromPod), (2, 53, Direction::ToPod)] {
        let mut k = FlowKey {
            pod_id,
            direction: direction as u8,
            proto: 17,
            sport: 40000,
            dport,
            ..Default::default()
        };
        k.set_addrs(
            format!("10.244.0.{pod_id}").parse().unwrap(),
            "10.244.0.9".parse().unwrap(),
        );
        round.pod_flow(
            &k,
            &FlowCounters {
                packets: 2,
                bytes: 200,
                ..Default::default()
            },
        );
    }
    round.finish(None, true);

    let mut served = Vec::new();
    table.write_json(&mut served).unwrap();
    let served: Value = serde_json::from_slice(&served).unwrap();
    let typed = serde_json::to_value(table.views()).unwrap();
    assert_eq!(served, typed, "/flows renders exactly the schema's type");

    let schema = flow_schema();
    let properties = schema["properties"].as_object().expect("properties");
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for flow in served.as_array().unwrap() {
        let flow = flow.as_object().unwrap();
        for key in flow.keys() {
            assert!(properties.contains_key(key), "{key} is not in the schema");
        }
        for key in &required {
            assert!(
                flow.contains_key(*key),
                "a flow lacks required {key}: {flow:?}"
            );
        }
    }
    let podman = served
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["pod"] == "podman-pod")
        .expect("the pod recorded without a namespace is served");
    assert!(podman["namespace"].is_null(), "{served}");
}

#[test]
fn pods_recorded_without_a_namespace_name_each_other_as_peers() {
    let mut table = FlowTable::new("node-1");
    let directory: std::collections::HashMap<IpAddr, weir_operator::agent::peers::Peer> =
        Default::default();
    let mut round = table.round(&directory);
    round.records(&[record(1, None, "left"), record(2, None, "right")]);
    let mut k = FlowKey {
        pod_id: 1,
        direction: Direction::FromPod as u8,
        proto: 6,
        sport: 40000,
        dport: 80,
        ..Default::default()
    };
    k.set_addrs("10.244.0.1".parse().unwrap(), "10.244.0.2".parse().unwrap());
    round.pod_flow(
        &k,
        &FlowCounters {
            packets: 1,
            bytes: 60,
            ..Default::default()
        },
    );
    round.finish(None, true);
    let views = table.views();
    let peer = views[0]
        .peer
        .as_ref()
        .expect("the other podman pod is named");
    assert_eq!((peer.namespace.as_str(), peer.pod.as_str()), ("", "right"));
}
