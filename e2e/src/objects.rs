//! API objects a test makes where no kubelet or controller manager would:
//! a namespace with its default service account, Nodes with addresses, and
//! running Pods with the IPs the CNI chain gave them.

use std::net::IpAddr;

use anyhow::Result;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

/// Namespace `name`.
pub async fn create_namespace(client: &kube::Client, name: &str) -> Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

/// Namespace `name` and its `default` service account (no controller
/// manager makes it here, and pods need it; one that is there already is
/// fine).
pub async fn create_namespace_for_pods(client: &kube::Client, name: &str) -> Result<()> {
    create_namespace(client, name).await?;
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("default".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<ServiceAccount>::namespaced(client.clone(), name)
        .create(&PostParams::default(), &sa)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Node `name` with `addresses` (`(type, address)`, e.g. `("InternalIP",
/// "192.168.100.1")`) in its status.
pub async fn create_node(
    client: &kube::Client,
    name: &str,
    addresses: &[(&str, &str)],
) -> Result<()> {
    let nodes = Api::<Node>::all(client.clone());
    let node: Node = serde_json::from_value(json!({ "metadata": { "name": name } }))?;
    nodes.create(&PostParams::default(), &node).await?;
    let addresses: Vec<_> = addresses
        .iter()
        .map(|(type_, address)| json!({ "type": type_, "address": address }))
        .collect();
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "addresses": addresses } })),
        )
        .await?;
    Ok(())
}

/// Pod `name` in `namespace`, labelled `app: <name>`, on `node`, Running
/// with `ip`.
pub async fn create_running_pod(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    node: &str,
    ip: IpAddr,
) -> Result<()> {
    let api = Api::<Pod>::namespaced(client.clone(), namespace);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "app": name } },
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "containers": [{ "name": "main", "image": "example.invalid/none" }],
        },
    }))?;
    api.create(&PostParams::default(), &pod).await?;
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "phase": "Running", "podIP": ip.to_string(), "podIPs": [{ "ip": ip.to_string() }] } })),
    )
    .await?;
    Ok(())
}
