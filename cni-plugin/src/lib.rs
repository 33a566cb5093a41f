//! weir's chained CNI plugin as a library: the binary in main.rs is a thin
//! shell around [`plugin::handle`], and the node agent reads the
//! node state it writes ([`weir_node_state`]).

pub mod cni;
pub mod iface;
pub mod logging;
pub mod netns;
pub mod plugin;
pub mod repair;
pub mod split;
pub mod sysctl;
