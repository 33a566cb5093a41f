//! `#[repr(C)]` mirrors of the VXLAN monitor's map ABI in `c/weir_vx_abi.h`.
//!
//! The const asserts below and the `_Static_assert`s in the header pin the
//! same sizes and offsets, so changing one side alone fails the build.
//!
//! # Maps (pinned by name under `<bpf_root>/maps`)
//!
//! ```text
//! weir_vx_flows   LRU hash      VxFlowKey -> VxFlowCounters   131072 entries
//! weir_vx_vni     per-CPU hash  u32 VNI   -> VniCounters      1024 entries, not preallocated
//! weir_vx_iface   per-CPU hash  u32 ifindex -> IfaceCounters  256 entries, not preallocated
//! weir_vx_stats   per-CPU array of u64, VxStatIndex slots     32 slots
//! weir_vx_events  ring buffer of VxFlowEvent (one per new flow)  256 KiB
//! ```

use std::{
    mem::{offset_of, size_of},
    net::IpAddr,
};

use crate::abi::{ip_from, ip_to};

/// Pinned map name: per-flow counters (LRU hash, node-wide).
pub const FLOWS_MAP: &str = "weir_vx_flows";
/// Pinned map name: per-VNI counters (per-CPU hash keyed by the VNI).
pub const VNI_MAP: &str = "weir_vx_vni";
/// Pinned map name: per-underlay-interface counters (per-CPU hash keyed by ifindex).
pub const IFACE_MAP: &str = "weir_vx_iface";
/// Pinned map name: per-CPU counters of the monitor itself ([`VxStatIndex`]).
pub const STATS_MAP: &str = "weir_vx_stats";
/// Pinned map name: ring buffer of [`VxFlowEvent`]s, one per new flow.
pub const EVENTS_MAP: &str = "weir_vx_events";

/// Capacity of [`FLOWS_MAP`]; beyond it the LRU evicts the least recently used flows.
pub const FLOWS_MAX_ENTRIES: u32 = 131_072;
/// Capacity of [`VNI_MAP`].
pub const VNI_MAX_ENTRIES: u32 = 1024;
/// Capacity of [`IFACE_MAP`].
pub const IFACE_MAX_ENTRIES: u32 = 256;
/// Size in bytes of [`EVENTS_MAP`].
pub const EVENTS_BYTES: u32 = 256 * 1024;
/// Number of slots in [`STATS_MAP`]; [`VxStatIndex`] uses the first few.
pub const STATS_SLOTS: u32 = 32;
/// The kernel's and flannel's default VXLAN UDP port (IANA's is 4789).
pub const DEFAULT_PORT: u16 = 8472;

/// Which way a VXLAN packet crossed the underlay device.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VxDirection {
    /// tc egress: this node encapsulated the packet and sends it.
    Encap = 0,
    /// tc ingress: the packet arrived for this node to decapsulate.
    Decap = 1,
}

impl VxDirection {
    /// Decodes the `direction` byte of a [`VxFlowKey`].
    pub fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(Self::Encap),
            1 => Some(Self::Decap),
            _ => None,
        }
    }
}

/// Slots of [`STATS_MAP`] (C: `enum weir_vx_stat`). Append only. They count
/// program runs (a GSO super-packet once), not wire packets.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VxStatIndex {
    /// Flows created in [`FLOWS_MAP`].
    NewFlows = 0,
    /// Flow creations that failed for a reason other than a lost race.
    FlowUpdateFailed = 1,
    /// New-flow events dropped because the ring buffer was full.
    EventsLost = 2,
    /// Per-VNI entries that could not be created ([`VNI_MAP`] full).
    VniUpdateFailed = 3,
    /// Per-interface entries that could not be created ([`IFACE_MAP`] full).
    IfaceUpdateFailed = 4,
    /// Outer frames that are neither IPv4 nor IPv6.
    NonIp = 5,
    /// Outer IP packets that are not UDP.
    NonUdp = 6,
    /// Outer UDP to a destination port other than the attachment's VXLAN port.
    OtherUdpPort = 7,
    /// UDP to the VXLAN port whose VXLAN header lacks the I flag.
    BadVxlanFlags = 8,
    /// Outer IPv4/IPv6 fragments: not parsed.
    OuterFragments = 9,
    /// Frames cut before the end of the VXLAN header.
    TruncatedOuter = 10,
    /// Outer IP headers with a bad version or IHL, or too many IPv6 extension headers.
    BadOuterHeader = 11,
    /// Packets with a valid VXLAN header (the per-VNI and per-interface VXLAN counters).
    VxlanPackets = 12,
    /// VXLAN packets whose inner frame is not IPv4/IPv6 (no flow).
    InnerNonIp = 13,
    /// VXLAN packets cut inside the inner headers (no flow).
    TruncatedInner = 14,
    /// VXLAN packets with a bad inner IP or TCP header (no flow).
    BadInnerHeader = 15,
    /// Inner non-first fragments, counted in flows without ports.
    InnerFragments = 16,
}

impl VxStatIndex {
    /// All indices in slot order.
    pub const ALL: [VxStatIndex; 17] = [
        Self::NewFlows,
        Self::FlowUpdateFailed,
        Self::EventsLost,
        Self::VniUpdateFailed,
        Self::IfaceUpdateFailed,
        Self::NonIp,
        Self::NonUdp,
        Self::OtherUdpPort,
        Self::BadVxlanFlags,
        Self::OuterFragments,
        Self::TruncatedOuter,
        Self::BadOuterHeader,
        Self::VxlanPackets,
        Self::InnerNonIp,
        Self::TruncatedInner,
        Self::BadInnerHeader,
        Self::InnerFragments,
    ];
}

/// Key of [`FLOWS_MAP`] (C: `struct vx_flow_key`). It has no implicit
/// padding: every byte is a field, zero where unused.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VxFlowKey {
    /// Outer (node/VTEP) source; IPv4 in the first 4 bytes, the rest zero.
    pub outer_src: [u8; 16],
    /// Outer (node/VTEP) destination.
    pub outer_dst: [u8; 16],
    /// Inner (pod) source.
    pub inner_src: [u8; 16],
    /// Inner (pod) destination.
    pub inner_dst: [u8; 16],
    /// VXLAN network identifier (24 bits).
    pub vni: u32,
    /// ifindex of the underlay device. Only unique within the node's netns.
    pub ifindex: u32,
    /// Inner TCP/UDP source port (host order); ICMP type; 0 without ports.
    pub inner_sport: u16,
    /// Inner TCP/UDP destination port (host order); ICMP code; 0 without ports.
    pub inner_dport: u16,
    /// 4 or 6.
    pub outer_family: u8,
    /// 4 or 6.
    pub inner_family: u8,
    /// Inner IP protocol number (`IPPROTO_*`).
    pub inner_proto: u8,
    /// [`VxDirection`] as a byte.
    pub direction: u8,
}

impl VxFlowKey {
    /// The [`VxDirection`], or `None` for a byte this version does not know.
    pub fn direction(&self) -> Option<VxDirection> {
        VxDirection::from_raw(self.direction)
    }

    /// Outer source address (a family other than 4 reads as IPv6).
    pub fn outer_src_ip(&self) -> IpAddr {
        ip_from(self.outer_family, &self.outer_src)
    }

    /// Outer destination address.
    pub fn outer_dst_ip(&self) -> IpAddr {
        ip_from(self.outer_family, &self.outer_dst)
    }

    /// Inner source address.
    pub fn inner_src_ip(&self) -> IpAddr {
        ip_from(self.inner_family, &self.inner_src)
    }

    /// Inner destination address.
    pub fn inner_dst_ip(&self) -> IpAddr {
        ip_from(self.inner_family, &self.inner_dst)
    }

    /// Stores the outer addresses the way the programs do and sets
    /// `outer_family`; `src` decides the family.
    pub fn set_outer(&mut self, src: IpAddr, dst: IpAddr) {
        let (family, s) = ip_to(src);
        self.outer_family = family;
        self.outer_src = s;
        self.outer_dst = ip_to(dst).1;
    }

    /// Stores the inner addresses and sets `inner_family`; `src` decides the family.
    pub fn set_inner(&mut self, src: IpAddr, dst: IpAddr) {
        let (family, s) = ip_to(src);
        self.inner_family = family;
        self.inner_src = s;
        self.inner_dst = ip_to(dst).1;
    }
}

/// Value of [`FLOWS_MAP`] (C: `struct vx_flow_counters`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VxFlowCounters {
    /// Wire packets (a GSO/GRO super-packet counts as its segments).
    pub packets: u64,
    /// Wire bytes of the outer frames, Ethernet header included, headers
    /// counted once per segment.
    pub bytes: u64,
    /// `CLOCK_BOOTTIME` nanoseconds of the first packet.
    pub first_seen_ns: u64,
    /// `CLOCK_BOOTTIME` nanoseconds of the latest packet.
    pub last_seen_ns: u64,
    /// Packets sent (encapsulated) by this node; equals `packets` for [`VxDirection::Encap`] keys.
    pub encap_packets: u64,
    /// Bytes sent (encapsulated) by this node.
    pub encap_bytes: u64,
    /// Packets received (to decapsulate); equals `packets` for [`VxDirection::Decap`] keys.
    pub decap_packets: u64,
    /// Bytes received (to decapsulate).
    pub decap_bytes: u64,
    /// OR of every inner TCP flag byte seen (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, ...).
    pub tcp_flags: u32,
    /// Zero.
    pub pad: u32,
}

/// Value of [`VNI_MAP`] (C: `struct vx_vni_counters`), one per CPU; the
/// key is the VNI. [`crate::vxlan::VxlanMaps`] returns the sum over CPUs.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VniCounters {
    /// Wire packets encapsulated and sent.
    pub encap_packets: u64,
    /// Wire bytes encapsulated and sent (outer frames).
    pub encap_bytes: u64,
    /// Wire packets received to decapsulate.
    pub decap_packets: u64,
    /// Wire bytes received to decapsulate (outer frames).
    pub decap_bytes: u64,
}

impl VniCounters {
    /// Adds `o` field by field (wrapping, like the kernel's counters).
    pub fn add(&mut self, o: &Self) {
        self.encap_packets = self.encap_packets.wrapping_add(o.encap_packets);
        self.encap_bytes = self.encap_bytes.wrapping_add(o.encap_bytes);
        self.decap_packets = self.decap_packets.wrapping_add(o.decap_packets);
        self.decap_bytes = self.decap_bytes.wrapping_add(o.decap_bytes);
    }
}

/// Value of [`IFACE_MAP`] (C: `struct vx_iface_counters`), one per CPU; the
/// key is the underlay ifindex. [`crate::vxlan::VxlanMaps`] returns the sum.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IfaceCounters {
    /// VXLAN wire packets sent (tc egress).
    pub encap_packets: u64,
    /// VXLAN wire bytes sent.
    pub encap_bytes: u64,
    /// VXLAN wire packets received (tc ingress).
    pub decap_packets: u64,
    /// VXLAN wire bytes received.
    pub decap_bytes: u64,
    /// Other wire packets sent on the device (not VXLAN to the port, or unparsable).
    pub other_egress_packets: u64,
    /// Other wire packets received on the device.
    pub other_ingress_packets: u64,
}

impl IfaceCounters {
    /// Adds `o` field by field (wrapping).
    pub fn add(&mut self, o: &Self) {
        self.encap_packets = self.encap_packets.wrapping_add(o.encap_packets);
        self.encap_bytes = self.encap_bytes.wrapping_add(o.encap_bytes);
        self.decap_packets = self.decap_packets.wrapping_add(o.decap_packets);
        self.decap_bytes = self.decap_bytes.wrapping_add(o.decap_bytes);
        self.other_egress_packets = self
            .other_egress_packets
            .wrapping_add(o.other_egress_packets);
        self.other_ingress_packets = self
            .other_ingress_packets
            .wrapping_add(o.other_ingress_packets);
    }
}

/// Record of [`EVENTS_MAP`] (C: `struct vx_flow_event`), emitted once per new flow.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VxFlowEvent {
    /// The new flow.
    pub key: VxFlowKey,
    /// `CLOCK_BOOTTIME` nanoseconds when it was created.
    pub ts_ns: u64,
}

// SAFETY: plain `#[repr(C)]` data of integers and byte arrays without
// implicit padding (asserted below), so any bit pattern is valid and no
// uninitialised byte is ever copied to the kernel.
unsafe impl aya::Pod for VxFlowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for VxFlowCounters {}
// SAFETY: as above.
unsafe impl aya::Pod for VniCounters {}
// SAFETY: as above.
unsafe impl aya::Pod for IfaceCounters {}
// SAFETY: as above.
unsafe impl aya::Pod for VxFlowEvent {}

const _: () = {
    assert!(size_of::<VxFlowKey>() == 80);
    assert!(offset_of!(VxFlowKey, outer_dst) == 16);
    assert!(offset_of!(VxFlowKey, inner_src) == 32);
    assert!(offset_of!(VxFlowKey, inner_dst) == 48);
    assert!(offset_of!(VxFlowKey, vni) == 64);
    assert!(offset_of!(VxFlowKey, ifindex) == 68);
    assert!(offset_of!(VxFlowKey, inner_sport) == 72);
    assert!(offset_of!(VxFlowKey, inner_dport) == 74);
    assert!(offset_of!(VxFlowKey, outer_family) == 76);
    assert!(offset_of!(VxFlowKey, inner_family) == 77);
    assert!(offset_of!(VxFlowKey, inner_proto) == 78);
    assert!(offset_of!(VxFlowKey, direction) == 79);
    assert!(size_of::<VxFlowCounters>() == 72);
    assert!(offset_of!(VxFlowCounters, encap_packets) == 32);
    assert!(offset_of!(VxFlowCounters, decap_packets) == 48);
    assert!(offset_of!(VxFlowCounters, tcp_flags) == 64);
    assert!(size_of::<VniCounters>() == 32);
    assert!(size_of::<IfaceCounters>() == 48);
    assert!(offset_of!(IfaceCounters, other_egress_packets) == 32);
    assert!(size_of::<VxFlowEvent>() == 88);
    assert!(offset_of!(VxFlowEvent, ts_ns) == 80);
    assert!(VxStatIndex::ALL.len() as u32 <= STATS_SLOTS);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        let mut k = VxFlowKey::default();
        k.set_outer("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        k.set_inner("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        assert_eq!((k.outer_family, k.inner_family), (4, 6));
        assert_eq!(&k.outer_src[4..], &[0u8; 12]);
        assert_eq!(k.outer_src_ip(), "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(k.outer_dst_ip(), "192.0.2.2".parse::<IpAddr>().unwrap());
        assert_eq!(k.inner_src_ip(), "fd00::1".parse::<IpAddr>().unwrap());
        assert_eq!(k.inner_dst_ip(), "fd00::2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn enums_decode() {
        assert_eq!(VxDirection::from_raw(0), Some(VxDirection::Encap));
        assert_eq!(VxDirection::from_raw(1), Some(VxDirection::Decap));
        assert_eq!(VxDirection::from_raw(2), None);
        for (i, s) in VxStatIndex::ALL.iter().enumerate() {
            assert_eq!(*s as u32, i as u32);
        }
    }

    #[test]
    fn counters_sum() {
        let mut a = IfaceCounters {
            encap_packets: 1,
            other_ingress_packets: 2,
            ..Default::default()
        };
        a.add(&IfaceCounters {
            encap_packets: 3,
            decap_bytes: 4,
            ..Default::default()
        });
        assert_eq!(
            (a.encap_packets, a.decap_bytes, a.other_ingress_packets),
            (4, 4, 2)
        );
        let mut v = VniCounters::default();
        v.add(&VniCounters {
            decap_packets: 5,
            ..Default::default()
        });
        assert_eq!(v.decap_packets, 5);
    }
}
