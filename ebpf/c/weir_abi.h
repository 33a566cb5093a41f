/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Map ABI shared between the eBPF programs and userspace (mirrored by
 * ebpf/src/abi.rs). Every layout change must be made on both sides; the
 * _Static_asserts here and the const asserts in Rust pin the sizes and offsets
 * so a one-sided change fails the build instead of corrupting map data.
 */
#ifndef WEIR_ABI_H
#define WEIR_ABI_H

#include <linux/types.h>

/* Map capacities. The pins under <bpf_root>/maps are named after the map
 * variables in split.bpf.c (weir_flows, weir_pod_config, ...). */
#define WEIR_FLOWS_MAX_ENTRIES 131072
#define WEIR_POD_CONFIG_MAX_ENTRIES 65536
#define WEIR_FLOW_EVENTS_BYTES (256 * 1024)

enum weir_direction {
	WEIR_DIR_FROM_POD = 0,
	WEIR_DIR_TO_POD = 1,
};

enum weir_pod_mode {
	WEIR_MODE_PASSTHROUGH = 0,
	WEIR_MODE_COUNT = 1,
};

/* Indices into the per-CPU weir_stats array. Append only: userspace reads
 * them by index, and old agents must keep reading the right counters. */
enum weir_stat {
	WEIR_STAT_NEW_FLOWS = 0,
	WEIR_STAT_FLOW_UPDATE_FAILED = 1,
	WEIR_STAT_EVENTS_LOST = 2,
	WEIR_STAT_NON_IP_PACKETS = 3,
	WEIR_STAT_PARSE_ERRORS = 4,
	WEIR_STAT_REDIRECTS = 5,
	WEIR_STAT_PASSTHROUGH_PACKETS = 6,
	WEIR_STAT_SLOTS = 16,
};

/*
 * What each attachment's entry stub (ebpf/src/stub.rs, a few instructions
 * loaded per pod interface) leaves in skb->cb before it tail-calls weir_split,
 * the program loaded once per node. ifindexes are only unique per netns, so
 * they travel with the packet instead of living in a node-wide map.
 */
enum weir_cb_slot {
	WEIR_CB_POD_ID = 0,
	WEIR_CB_TARGET_IFINDEX = 1,
	WEIR_CB_DIRECTION = 2, /* enum weir_direction */
	WEIR_CB_VIA_PEER = 3,  /* 1: bpf_redirect_peer() to the target's peer */
};

struct flow_key {
	__u32 pod_id;
	__u8 direction; /* enum weir_direction */
	__u8 family;    /* 4, 6; 0 is never stored (non-IP is not a flow) */
	__u8 proto;     /* IPPROTO_* */
	__u8 pad;
	__u8 src[16];   /* IPv4 uses the first 4 bytes, the rest stays zero */
	__u8 dst[16];
	__u16 sport;    /* host byte order; ICMP: type */
	__u16 dport;    /* host byte order; ICMP: code */
	__u32 pad2;
};

struct flow_counters {
	__u64 packets;
	__u64 bytes;
	__u64 first_seen_ns; /* CLOCK_BOOTTIME */
	__u64 last_seen_ns;  /* CLOCK_BOOTTIME, at tick resolution */
	__u32 tcp_flags;     /* OR of every TCP flag byte seen */
	__u32 pad;
};

struct pod_config {
	__u32 mode; /* enum weir_pod_mode */
	__u32 reserved;
};

struct flow_event {
	struct flow_key key;
	__u64 ts_ns; /* CLOCK_BOOTTIME */
};

_Static_assert(sizeof(struct flow_key) == 48, "flow_key size");
_Static_assert(__builtin_offsetof(struct flow_key, direction) == 4, "flow_key.direction");
_Static_assert(__builtin_offsetof(struct flow_key, src) == 8, "flow_key.src");
_Static_assert(__builtin_offsetof(struct flow_key, dst) == 24, "flow_key.dst");
_Static_assert(__builtin_offsetof(struct flow_key, sport) == 40, "flow_key.sport");
_Static_assert(__builtin_offsetof(struct flow_key, dport) == 42, "flow_key.dport");
_Static_assert(__builtin_offsetof(struct flow_key, pad2) == 44, "flow_key.pad2");
_Static_assert(sizeof(struct flow_counters) == 40, "flow_counters size");
_Static_assert(__builtin_offsetof(struct flow_counters, tcp_flags) == 32, "flow_counters.tcp_flags");
_Static_assert(sizeof(struct pod_config) == 8, "pod_config size");
_Static_assert(sizeof(struct flow_event) == 56, "flow_event size");
_Static_assert(__builtin_offsetof(struct flow_event, ts_ns) == 48, "flow_event.ts_ns");

#endif /* WEIR_ABI_H */
