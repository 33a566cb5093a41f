/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Map ABI of the flannel VXLAN monitor (vxlan_monitor.bpf.c), mirrored by
 * ebpf/src/vxlan_abi.rs. As in weir_abi.h, every layout change is made on
 * both sides; the _Static_asserts here and the const asserts in Rust pin the
 * sizes and offsets so a one-sided change fails the build.
 *
 * The structs have no implicit padding at all (every byte is a named field),
 * so keys built by the program and by userspace compare equal byte for byte.
 */
#ifndef WEIR_VX_ABI_H
#define WEIR_VX_ABI_H

#include <linux/types.h>

/* Map capacities. The pins under <bpf_root>/maps are named after the map
 * variables in vxlan_monitor.bpf.c (weir_vx_flows, weir_vx_vni, ...). */
#define WEIR_VX_FLOWS_MAX_ENTRIES 131072
#define WEIR_VX_VNI_MAX_ENTRIES 1024
#define WEIR_VX_IFACE_MAX_ENTRIES 256
#define WEIR_VX_EVENTS_BYTES (256 * 1024)

/* The kernel's (and flannel's) default VXLAN UDP port; IANA's is 4789. */
#define WEIR_VX_DEFAULT_PORT 8472

enum weir_vx_direction {
	/* tc egress of the underlay: this node encapsulated and sends */
	WEIR_VX_DIR_ENCAP = 0,
	/* tc ingress of the underlay: arrived for this node to decapsulate */
	WEIR_VX_DIR_DECAP = 1,
};

/* Indices into the per-CPU weir_vx_stats array. Append only. The stats count
 * program runs (a GSO super-packet once); the flow, VNI and interface
 * counters count wire packets. */
enum weir_vx_stat {
	/* flows created in weir_vx_flows */
	WEIR_VX_STAT_NEW_FLOWS = 0,
	/* flow creations that failed other than by a lost race (map full...) */
	WEIR_VX_STAT_FLOW_UPDATE_FAILED = 1,
	/* new-flow events dropped: ring buffer full */
	WEIR_VX_STAT_EVENTS_LOST = 2,
	/* per-VNI entry could not be created */
	WEIR_VX_STAT_VNI_UPDATE_FAILED = 3,
	/* per-interface entry could not be created */
	WEIR_VX_STAT_IFACE_UPDATE_FAILED = 4,
	/* outer frame is neither IPv4 nor IPv6 (ARP, LLDP, ...) */
	WEIR_VX_STAT_NON_IP = 5,
	/* outer IP packet that is not UDP */
	WEIR_VX_STAT_NON_UDP = 6,
	/* outer UDP to a destination port other than VXLAN_PORT */
	WEIR_VX_STAT_OTHER_UDP_PORT = 7,
	/* UDP to VXLAN_PORT whose VXLAN header lacks the I flag (0x08) */
	WEIR_VX_STAT_BAD_VXLAN_FLAGS = 8,
	/* outer IPv4/IPv6 fragments (first or not): not parsed */
	WEIR_VX_STAT_OUTER_FRAGMENTS = 9,
	/* cut before the end of the VXLAN header */
	WEIR_VX_STAT_TRUNCATED_OUTER = 10,
	/* outer IP header with a bad version / IHL, or too many IPv6 ext headers */
	WEIR_VX_STAT_BAD_OUTER_HEADER = 11,
	/* packets with a valid VXLAN header (counted per VNI and interface) */
	WEIR_VX_STAT_VXLAN_PACKETS = 12,
	/* VXLAN packets whose inner frame is not IPv4/IPv6: no flow */
	WEIR_VX_STAT_INNER_NON_IP = 13,
	/* VXLAN packets cut inside the inner headers: no flow */
	WEIR_VX_STAT_TRUNCATED_INNER = 14,
	/* VXLAN packets with a bad inner IP / TCP header: no flow */
	WEIR_VX_STAT_BAD_INNER_HEADER = 15,
	/* inner non-first fragments: counted in a flow without ports */
	WEIR_VX_STAT_INNER_FRAGMENTS = 16,
	WEIR_VX_STAT_SLOTS = 32,
};

struct vx_flow_key {
	__u8 outer_src[16];  /* IPv4 in the first 4 bytes, the rest zero */
	__u8 outer_dst[16];
	__u8 inner_src[16];
	__u8 inner_dst[16];
	__u32 vni;           /* 24 bits */
	__u32 ifindex;       /* underlay device; unique only in the node's netns */
	__u16 inner_sport;   /* host order; ICMP type; 0 without ports */
	__u16 inner_dport;   /* host order; ICMP code; 0 without ports */
	__u8 outer_family;   /* 4 or 6 */
	__u8 inner_family;   /* 4 or 6 */
	__u8 inner_proto;    /* IPPROTO_* */
	__u8 direction;      /* enum weir_vx_direction */
};

struct vx_flow_counters {
	__u64 packets;       /* wire packets, both directions of this key */
	__u64 bytes;         /* wire bytes of the outer frames */
	__u64 first_seen_ns; /* CLOCK_BOOTTIME */
	__u64 last_seen_ns;  /* CLOCK_BOOTTIME */
	__u64 encap_packets; /* direction ENCAP only */
	__u64 encap_bytes;
	__u64 decap_packets; /* direction DECAP only */
	__u64 decap_bytes;
	__u32 tcp_flags;     /* OR of every inner TCP flag byte seen */
	__u32 pad;
};

/* Value of weir_vx_vni (per CPU), keyed by the VNI (__u32). */
struct vx_vni_counters {
	__u64 encap_packets;
	__u64 encap_bytes;
	__u64 decap_packets;
	__u64 decap_bytes;
};

/* Value of weir_vx_iface (per CPU), keyed by the underlay ifindex (__u32). */
struct vx_iface_counters {
	__u64 encap_packets;
	__u64 encap_bytes;
	__u64 decap_packets;
	__u64 decap_bytes;
	/* wire packets that were not (parsable) VXLAN to VXLAN_PORT */
	__u64 other_egress_packets;
	__u64 other_ingress_packets;
};

struct vx_flow_event {
	struct vx_flow_key key;
	__u64 ts_ns; /* CLOCK_BOOTTIME */
};

_Static_assert(sizeof(struct vx_flow_key) == 80, "vx_flow_key size");
_Static_assert(__builtin_offsetof(struct vx_flow_key, outer_dst) == 16, "vx_flow_key.outer_dst");
_Static_assert(__builtin_offsetof(struct vx_flow_key, inner_src) == 32, "vx_flow_key.inner_src");
_Static_assert(__builtin_offsetof(struct vx_flow_key, inner_dst) == 48, "vx_flow_key.inner_dst");
_Static_assert(__builtin_offsetof(struct vx_flow_key, vni) == 64, "vx_flow_key.vni");
_Static_assert(__builtin_offsetof(struct vx_flow_key, ifindex) == 68, "vx_flow_key.ifindex");
_Static_assert(__builtin_offsetof(struct vx_flow_key, inner_sport) == 72, "vx_flow_key.inner_sport");
_Static_assert(__builtin_offsetof(struct vx_flow_key, inner_dport) == 74, "vx_flow_key.inner_dport");
_Static_assert(__builtin_offsetof(struct vx_flow_key, outer_family) == 76, "vx_flow_key.outer_family");
_Static_assert(__builtin_offsetof(struct vx_flow_key, inner_family) == 77, "vx_flow_key.inner_family");
_Static_assert(__builtin_offsetof(struct vx_flow_key, inner_proto) == 78, "vx_flow_key.inner_proto");
_Static_assert(__builtin_offsetof(struct vx_flow_key, direction) == 79, "vx_flow_key.direction");
_Static_assert(sizeof(struct vx_flow_counters) == 72, "vx_flow_counters size");
_Static_assert(__builtin_offsetof(struct vx_flow_counters, encap_packets) == 32, "vx_flow_counters.encap_packets");
_Static_assert(__builtin_offsetof(struct vx_flow_counters, decap_packets) == 48, "vx_flow_counters.decap_packets");
_Static_assert(__builtin_offsetof(struct vx_flow_counters, tcp_flags) == 64, "vx_flow_counters.tcp_flags");
_Static_assert(sizeof(struct vx_vni_counters) == 32, "vx_vni_counters size");
_Static_assert(sizeof(struct vx_iface_counters) == 48, "vx_iface_counters size");
_Static_assert(__builtin_offsetof(struct vx_iface_counters, other_egress_packets) == 32, "vx_iface_counters.other_egress_packets");
_Static_assert(sizeof(struct vx_flow_event) == 88, "vx_flow_event size");
_Static_assert(__builtin_offsetof(struct vx_flow_event, ts_ns) == 80, "vx_flow_event.ts_ns");

#endif /* WEIR_VX_ABI_H */
