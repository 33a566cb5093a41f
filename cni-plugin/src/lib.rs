//! weir's chained CNI plugin as a library: the binary in main.rs is a thin
//! shell around [`plugin::handle`], and the node agent reads the
//! node state it writes ([`weir_node_state`]).

pub mod cni;
pub mod logging;
pub mod plugin;
pub mod split;
// Netlink, namespaces and the undo live in weir-ebpf, where the node agent
// reaches them too; these paths stay as they were.
pub use weir_ebpf::{iface, netns, repair};
pub mod sysctl;
