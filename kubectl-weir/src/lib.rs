//! `kubectl weir`: a kubectl plugin that shows what weir observes.
//!
//! - `graph`: who talks to whom, from PodFlows, aggregated by workload and
//!   grouped by namespace, as SVG (laid out by Graphviz), DOT, Mermaid or one
//!   self-contained HTML page.
//! - `top`: the top talkers among the PodFlows, refreshing like `top`.
//!
//! The computations ([`model`], [`graph`], [`top`]) take plain values, so
//! they are tested without a cluster; [`cluster`] reads them from one.

pub mod cluster;
#[doc(hidden)]
pub mod fixture;
pub mod graph;
pub mod model;
pub mod top;
