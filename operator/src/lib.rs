//! weir's operator: the cluster controller (`controller`), the node agent
//! (`agent`), and the agent's local view of what the CNI plugin's programs
//! counted (`node_flows`). The CRD types are in `weir_api`, the node-state
//! records the plugin writes in `weir_node_state`.

pub mod agent;
pub mod controller;
pub mod http;
pub mod install_cni;
pub mod node_flows;
