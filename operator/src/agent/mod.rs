//! The node agent (`weir-operator agent run`): reads what the CNI plugin's
//! split programs and flannel's VXLAN monitor counted, joins the two, names
//! the peers, and serves it as Prometheus metrics and JSON.
//!
//! Counters live in pinned maps, so the agent holds no state worth losing: a
//! restart (or `kill -9`) picks up the same totals.

pub mod authz;
pub mod join;
pub mod kube_agent;
pub mod lock;
pub mod metrics;
pub mod overlay;
pub mod peers;
pub mod pressure;
pub mod reading;
pub mod run;
pub mod selection;
pub mod server;
pub mod stream;
pub mod table;
pub mod totals;
pub mod uninstall;
pub mod vxlan_discovery;
pub mod writer;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error("node state: {0}")]
    State(#[from] weir_node_state::StateError),
    #[error("eBPF: {0}")]
    Ebpf(#[from] weir_ebpf::Error),
    #[error("Kubernetes: {0}")]
    Kube(#[from] kube_agent::StartError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
