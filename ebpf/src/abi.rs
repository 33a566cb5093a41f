//! `#[repr(C)]` mirrors of the map ABI in `c/weir_abi.h`.
//!
//! The const asserts below and the `_Static_assert`s in the header pin the
//! same sizes and offsets, so changing one side alone fails the build.

use std::{
    mem::{offset_of, size_of},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// Pinned map name: per-flow counters (LRU hash, node-wide).
pub const FLOWS_MAP: &str = "weir_flows";
/// Pinned map name: per-pod mode (hash, node-wide), written by the agent.
pub const POD_CONFIG_MAP: &str = "weir_pod_config";
/// Pinned map name: per-CPU counters of the data path itself.
pub const STATS_MAP: &str = "weir_stats";
/// Pinned map name: ring buffer of [`FlowEvent`]s, one per new flow.
pub const FLOW_EVENTS_MAP: &str = "weir_flow_events";

/// Capacity of [`FLOWS_MAP`]; beyond it the LRU evicts the least recently used flows.
pub const FLOWS_MAX_ENTRIES: u32 = 131_072;
/// Capacity of [`POD_CONFIG_MAP`].
pub const POD_CONFIG_MAX_ENTRIES: u32 = 65_536;
/// Size in bytes of [`FLOW_EVENTS_MAP`].
pub const FLOW_EVENTS_BYTES: u32 = 256 * 1024;
/// Number of slots in [`STATS_MAP`]; [`StatIndex`] uses the first few.
pub const STATS_SLOTS: u32 = 16;

/// Which way a frame crossed the split.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Sent by the pod (seen on `wi-<if>` ingress).
    FromPod = 0,
    /// Towards the pod (seen on `wx-<if>` ingress).
    ToPod = 1,
}

impl Direction {
    /// Decodes the `direction` byte of a [`FlowKey`].
    pub fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(Self::FromPod),
            1 => Some(Self::ToPod),
            _ => None,
        }
    }
}

/// What the data path does for a pod (the value of [`PodConfig::mode`]).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PodMode {
    /// Forward only. Also what a pod without a config entry gets.
    #[default]
    PassThrough = 0,
    /// Forward and count every frame into [`FLOWS_MAP`].
    Count = 1,
}

impl PodMode {
    /// Decodes [`PodConfig::mode`].
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::PassThrough),
            1 => Some(Self::Count),
            _ => None,
        }
    }
}

/// Slots of [`STATS_MAP`] (C: `enum weir_stat`). Append only.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatIndex {
    /// Flows created in [`FLOWS_MAP`].
    NewFlows = 0,
    /// Flow creations that failed for a reason other than a lost race.
    FlowUpdateFailed = 1,
    /// New-flow events dropped because the ring buffer was full.
    EventsLost = 2,
    /// Non-IP frames (ARP, LLDP, ...) of counted pods; they are not flows.
    NonIpPackets = 3,
    /// Frames of counted pods that could not be parsed (truncated, bogus headers).
    ParseErrors = 4,
    /// Frames redirected across the split (every frame of every pod).
    Redirects = 5,
    /// Frames of pods in [`PodMode::PassThrough`].
    PassthroughPackets = 6,
}

impl StatIndex {
    /// All indices in slot order.
    pub const ALL: [StatIndex; 7] = [
        Self::NewFlows,
        Self::FlowUpdateFailed,
        Self::EventsLost,
        Self::NonIpPackets,
        Self::ParseErrors,
        Self::Redirects,
        Self::PassthroughPackets,
    ];
}

/// Key of [`FLOWS_MAP`] (C: `struct flow_key`). All padding is zero, or
/// lookups from userspace would miss the entries the programs made.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// The pod's id, given by the CNI plugin at attach time.
    pub pod_id: u32,
    /// [`Direction`] as a byte.
    pub direction: u8,
    /// 4 or 6.
    pub family: u8,
    /// IP protocol number (`IPPROTO_*`).
    pub proto: u8,
    /// Zero.
    pub pad: u8,
    /// Source address; IPv4 in the first 4 bytes, the rest zero.
    pub src: [u8; 16],
    /// Destination address; IPv4 in the first 4 bytes, the rest zero.
    pub dst: [u8; 16],
    /// TCP/UDP source port (host order); ICMP type; 0 for non-first fragments and other protocols.
    pub sport: u16,
    /// TCP/UDP destination port (host order); ICMP code; 0 for non-first fragments and other protocols.
    pub dport: u16,
    /// Zero.
    pub pad2: u32,
}

impl FlowKey {
    /// The [`Direction`], or `None` for a byte this version does not know.
    pub fn direction(&self) -> Option<Direction> {
        Direction::from_raw(self.direction)
    }

    /// Source address. Keys with a family other than 4 read as IPv6.
    pub fn src_ip(&self) -> IpAddr {
        ip_from(self.family, &self.src)
    }

    /// Destination address. Keys with a family other than 4 read as IPv6.
    pub fn dst_ip(&self) -> IpAddr {
        ip_from(self.family, &self.dst)
    }

    /// Stores an address the way the programs do (IPv4 in the first 4 bytes)
    /// and sets `family` to match; `src` decides the family.
    pub fn set_addrs(&mut self, src: IpAddr, dst: IpAddr) {
        let (family, s) = ip_to(src);
        let (_, d) = ip_to(dst);
        self.family = family;
        self.src = s;
        self.dst = d;
    }
}

/// An address as the programs store it in a key: IPv4 (`family` 4) in the
/// first 4 bytes, anything else read as IPv6. Shared with [`crate::vxlan_abi`].
pub(crate) fn ip_from(family: u8, raw: &[u8; 16]) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*raw))
    }
}

/// The family byte and 16 address bytes the programs would store for `ip`.
pub(crate) fn ip_to(ip: IpAddr) -> (u8, [u8; 16]) {
    let mut raw = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            raw[..4].copy_from_slice(&v4.octets());
            (4, raw)
        }
        IpAddr::V6(v6) => (6, v6.octets()),
    }
}

/// Value of [`FLOWS_MAP`] (C: `struct flow_counters`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowCounters {
    /// Wire packets (a GSO super-packet counts as its segments).
    pub packets: u64,
    /// Wire bytes including the Ethernet header of every segment.
    pub bytes: u64,
    /// `CLOCK_BOOTTIME` nanoseconds of the first frame.
    pub first_seen_ns: u64,
    /// `CLOCK_BOOTTIME` nanoseconds of the latest frame, at tick resolution
    /// (the kernel's coarse clock: up to a tick behind, never before
    /// `first_seen_ns`).
    pub last_seen_ns: u64,
    /// OR of every TCP flag byte seen (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, ...).
    pub tcp_flags: u32,
    /// Zero.
    pub pad: u32,
}

/// Value of [`POD_CONFIG_MAP`] (C: `struct pod_config`); the key is the pod id.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PodConfig {
    /// [`PodMode`] as a number.
    pub mode: u32,
    /// Zero.
    pub reserved: u32,
}

/// Record of [`FLOW_EVENTS_MAP`] (C: `struct flow_event`), emitted once per new flow.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowEvent {
    /// The new flow.
    pub key: FlowKey,
    /// `CLOCK_BOOTTIME` nanoseconds when it was created.
    pub ts_ns: u64,
}

// SAFETY: plain `#[repr(C)]` data of integers and byte arrays with every
// padding byte spelled out as a field, so any bit pattern is valid and no
// uninitialised byte is ever copied to the kernel.
unsafe impl aya::Pod for FlowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowCounters {}
// SAFETY: as above.
unsafe impl aya::Pod for PodConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowEvent {}

const _: () = {
    assert!(size_of::<FlowKey>() == 48);
    assert!(offset_of!(FlowKey, direction) == 4);
    assert!(offset_of!(FlowKey, src) == 8);
    assert!(offset_of!(FlowKey, dst) == 24);
    assert!(offset_of!(FlowKey, sport) == 40);
    assert!(offset_of!(FlowKey, dport) == 42);
    assert!(offset_of!(FlowKey, pad2) == 44);
    assert!(size_of::<FlowCounters>() == 40);
    assert!(offset_of!(FlowCounters, tcp_flags) == 32);
    assert!(size_of::<PodConfig>() == 8);
    assert!(size_of::<FlowEvent>() == 56);
    assert!(offset_of!(FlowEvent, ts_ns) == 48);
    assert!(StatIndex::ALL.len() as u32 <= STATS_SLOTS);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        let mut k = FlowKey::default();
        k.set_addrs("10.1.2.3".parse().unwrap(), "10.1.2.4".parse().unwrap());
        assert_eq!(k.family, 4);
        assert_eq!(&k.src[4..], &[0u8; 12]);
        assert_eq!(k.src_ip(), "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!(k.dst_ip(), "10.1.2.4".parse::<IpAddr>().unwrap());
        k.set_addrs("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        assert_eq!(k.family, 6);
        assert_eq!(k.src_ip(), "fd00::1".parse::<IpAddr>().unwrap());
        assert_eq!(k.dst_ip(), "fd00::2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn enums_decode() {
        assert_eq!(Direction::from_raw(1), Some(Direction::ToPod));
        assert_eq!(Direction::from_raw(2), None);
        assert_eq!(PodMode::from_raw(1), Some(PodMode::Count));
        assert_eq!(PodMode::from_raw(7), None);
        for (i, s) in StatIndex::ALL.iter().enumerate() {
            assert_eq!(*s as u32, i as u32);
        }
    }
}
