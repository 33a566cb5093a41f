//! weir's operator: the node agent's local view of what the CNI plugin's
//! programs counted. The cluster controller and CRD types join here as the
//! operator grows.

pub mod node_flows;
