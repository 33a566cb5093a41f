//! weir's operator: the CRD types (`crd`), and the node agent's local view
//! of what the CNI plugin's programs counted (`node_flows`). The cluster
//! controller joins here as the operator grows.

pub mod agent;
pub mod controller;
pub mod crd;
pub mod http;
pub mod install_cni;
pub mod node_flows;
