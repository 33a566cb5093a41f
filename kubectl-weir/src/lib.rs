//! `kubectl weir`: a kubectl plugin that shows what weir observes.
//!
//! - `graph`: who talks to whom, from PodFlows, aggregated by workload and
//!   grouped by namespace, as SVG (laid out by Graphviz), DOT, Mermaid or one
//!   self-contained HTML page.
//! - `top`: the top talkers among the PodFlows, refreshing like `top`.
//! - `observe`: the agents' live streams of flow updates, authorised by the
//!   user's own RBAC.
//!
//! The computations ([`model`], [`graph`], [`top`]) take plain values, so
//! they are tested without a cluster; [`cluster`] reads them from one.

pub mod cluster;
#[doc(hidden)]
pub mod fixture;
pub mod graph;
pub mod model;
pub mod observe;
pub mod top;
