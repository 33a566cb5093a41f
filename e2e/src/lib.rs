//! weir's test harness: network namespaces made by the test, the real CNI
//! chain driven by the real `cnitool`, and traffic with known sizes whose
//! counts can be checked exactly. Shared by the integration tests, the
//! benchmarks and `make demo`.

pub mod agent;
pub mod bpf_stats;
pub mod chain;
pub mod cluster;
pub mod controlplane;
pub mod fixtures;
pub mod flannel;
pub mod host;
pub mod netns;
pub mod objects;
pub mod relay;
pub mod report;
pub mod traffic;
pub mod wait;
