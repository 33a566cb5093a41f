//! Reading PodFlows, pods and ReplicaSets from the cluster (or from a file
//! of `kubectl get -o json` output), with errors a user can act on.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use weir_api::{CaptureProfile, PodFlow};

use crate::model::{Flow, Inventory};

/// Where flows are read from.
#[derive(Debug, Clone)]
pub enum Scope {
    Namespace(String),
    All,
}

/// How to reach the cluster: kubectl's flags that the plugin honours.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Access {
    /// Path to the kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, global = true, env = "KUBECONFIG", hide_env_values = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace (default: the context's).
    #[arg(short = 'n', long = "namespace", global = true)]
    pub namespace: Option<String>,
    /// All namespaces.
    #[arg(short = 'A', long = "all-namespaces", global = true)]
    pub all_namespaces: bool,
}

/// A client for the cluster, or what is wrong with the access.
pub async fn client(access: &Access) -> Result<(Client, String)> {
    let (client, namespace, _) = client_and_token(access).await?;
    Ok((client, namespace))
}

/// [`client`], and the kubeconfig user's bearer token when it has one.
pub async fn client_and_token(access: &Access) -> Result<(Client, String, Option<String>)> {
    let options = KubeConfigOptions {
        context: access.context.clone(),
        ..Default::default()
    };
    let config = match &access.kubeconfig {
        Some(path) => {
            // KUBECONFIG may list several files; kube reads the first.
            let first = path
                .to_str()
                .and_then(|s| s.split(':').find(|p| !p.is_empty()))
                .map(PathBuf::from)
                .unwrap_or_else(|| path.clone());
            let kc = Kubeconfig::read_from(&first).map_err(|e| {
                anyhow!(
                    "no cluster access: cannot read kubeconfig {}: {e}",
                    first.display()
                )
            })?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| anyhow!("no cluster access: kubeconfig {}: {e}", first.display()))?
        }
        None if access.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| anyhow!("no cluster access: {e}"))?,
        None => Config::infer().await.map_err(|e| {
            anyhow!("no cluster access: no kubeconfig found and not running in a pod ({e}); set KUBECONFIG or --kubeconfig")
        })?,
    };
    let mut config = config;
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(60));
    let namespace = config.default_namespace.clone();
    let url = config.cluster_url.to_string();
    let token = {
        use secrecy::ExposeSecret as _;
        match (&config.auth_info.token, &config.auth_info.token_file) {
            (Some(t), _) => Some(t.expose_secret().to_owned()),
            (None, Some(file)) => std::fs::read_to_string(file)
                .ok()
                .map(|t| t.trim().to_owned()),
            _ => None,
        }
    };
    let client = Client::try_from(config)
        .map_err(|e| anyhow!("no cluster access: cannot build a client for {url}: {e}"))?;
    Ok((client, namespace, token))
}

/// Turns a kube error into a message the user can act on.
pub fn explain(err: kube::Error, what: &str) -> anyhow::Error {
    match &err {
        kube::Error::Api(status) => match status.code {
            401 => anyhow!(
                "the API server refused your credentials while {what} (401 Unauthorized): log in again or check the kubeconfig's user"
            ),
            403 => anyhow!(
                "not allowed while {what} (403 Forbidden): {}; ask for RBAC that allows it",
                status.message
            ),
            _ => anyhow!(
                "{what}: {} ({} {})",
                status.message,
                status.code,
                status.reason
            ),
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => anyhow!(
            "no cluster access: cannot reach the API server while {what}: {}; check the kubeconfig (KUBECONFIG, --kubeconfig, --context) and that the cluster is up",
            chain(&err)
        ),
        kube::Error::InferConfig(_) | kube::Error::Auth(_) => {
            anyhow!("no cluster access while {what}: {}", chain(&err))
        }
        _ => anyhow!("{what}: {}", chain(&err)),
    }
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let m = e.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        source = e.source();
    }
    s
}

fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 404)
}

/// The message for a cluster without weir's CRDs.
pub const CRDS_MISSING: &str = "weir's CRDs are not installed in this cluster (the podflows.weir.dev resource is unknown): helm install weir charts/weir -n weir-system --create-namespace";

/// Flows and the inventory to name their workloads.
pub struct Snapshot {
    pub flows: Vec<Flow>,
    pub inventory: Inventory,
    pub warnings: Vec<String>,
}

/// Reads the PodFlows of `scope`, and the pods and ReplicaSets of the
/// namespaces they name. When there are none, says why: no
/// CaptureProfile there, or the profiles have not seen traffic yet.
pub async fn read(client: &Client, scope: &Scope) -> Result<Snapshot> {
    let (flows_api, where_): (Api<PodFlow>, String) = match scope {
        Scope::Namespace(ns) => (
            Api::namespaced(client.clone(), ns),
            format!("namespace {ns}"),
        ),
        Scope::All => (Api::all(client.clone()), "any namespace".into()),
    };
    let list = match flows_api.list(&ListParams::default()).await {
        Ok(l) => l,
        Err(e) if is_not_found(&e) => return Err(anyhow!(CRDS_MISSING)),
        Err(e) => return Err(explain(e, &format!("listing PodFlows in {where_}"))),
    };
    if list.items.is_empty() {
        let profiles_api: Api<CaptureProfile> = match scope {
            Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
            Scope::All => Api::all(client.clone()),
        };
        let profiles = match profiles_api.list(&ListParams::default().limit(1)).await {
            Ok(l) => l,
            Err(e) if is_not_found(&e) => return Err(anyhow!(CRDS_MISSING)),
            Err(e) => return Err(explain(e, &format!("listing CaptureProfiles in {where_}"))),
        };
        if profiles.items.is_empty() {
            let hint = match scope {
                Scope::Namespace(ns) => format!(
                    "kubectl apply -n {ns} -f <a CaptureProfile selecting the pods to observe>, or look at another namespace (-n NS, -A)"
                ),
                Scope::All => {
                    "kubectl apply -f <a CaptureProfile selecting the pods to observe>".into()
                }
            };
            return Err(anyhow!(
                "no CaptureProfile in {where_}: weir observes no pods there; {hint}"
            ));
        }
    }
    let flows: Vec<Flow> = list.items.iter().map(Flow::from_podflow).collect();
    let mut warnings = Vec::new();
    let inventory = inventory(client, scope, &flows, &mut warnings).await;
    Ok(Snapshot {
        flows,
        inventory,
        warnings,
    })
}

/// Pods and ReplicaSets of the namespaces the flows name. Without the
/// right to list them the graph falls back to pods (a warning says so).
async fn inventory(
    client: &Client,
    scope: &Scope,
    flows: &[Flow],
    warnings: &mut Vec<String>,
) -> Inventory {
    let mut inv = Inventory::default();
    let namespaces: Vec<Option<String>> = match scope {
        Scope::All => vec![None],
        Scope::Namespace(_) => flows
            .iter()
            .flat_map(|f| [&f.source.namespace, &f.destination.namespace])
            .flatten()
            .cloned()
            .collect::<BTreeSet<String>>()
            .into_iter()
            .map(Some)
            .collect(),
    };
    for ns in namespaces {
        let (pods, rss): (Api<Pod>, Api<ReplicaSet>) = match &ns {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
        let where_ = ns
            .as_deref()
            .map_or("all namespaces".to_owned(), |n| format!("namespace {n}"));
        // Only the metadata is needed (owner references).
        match pods.list_metadata(&ListParams::default()).await {
            Ok(list) => {
                for p in list.items {
                    inv.add_pod(&Pod {
                        metadata: p.metadata,
                        ..Default::default()
                    });
                }
            }
            Err(e) => warnings.push(format!(
                "{:#}; pods there are drawn as pods, not workloads",
                explain(e, &format!("listing pods in {where_}"))
            )),
        }
        match rss.list_metadata(&ListParams::default()).await {
            Ok(list) => {
                for r in list.items {
                    inv.add_replicaset(&ReplicaSet {
                        metadata: r.metadata,
                        ..Default::default()
                    });
                }
            }
            Err(e) => warnings.push(format!(
                "{:#}; Deployments there are drawn as ReplicaSets",
                explain(e, &format!("listing ReplicaSets in {where_}"))
            )),
        }
    }
    inv
}

/// Reads a `kubectl get podflows,pods,replicasets -o json` List (or any
/// List or single object of those kinds) from a file, `-` for stdin.
pub fn read_file(path: &Path, scope: &Scope) -> Result<Snapshot> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let items = match value.get("items").and_then(|i| i.as_array()) {
        Some(items) => items.clone(),
        None => vec![value],
    };
    let mut flows = Vec::new();
    let mut inv = Inventory::default();
    for item in items {
        let kind = item
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        match kind.as_str() {
            "PodFlow" => {
                let pf: PodFlow = serde_json::from_value(item).context("a PodFlow in the file")?;
                let f = Flow::from_podflow(&pf);
                if let Scope::Namespace(ns) = scope
                    && &f.namespace != ns
                {
                    continue;
                }
                flows.push(f);
            }
            "Pod" => inv.add_pod(&serde_json::from_value(item).context("a Pod in the file")?),
            "ReplicaSet" => inv
                .add_replicaset(&serde_json::from_value(item).context("a ReplicaSet in the file")?),
            _ => {}
        }
    }
    Ok(Snapshot {
        flows,
        inventory: inv,
        warnings: Vec::new(),
    })
}
