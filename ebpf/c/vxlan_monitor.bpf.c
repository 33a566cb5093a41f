// SPDX-License-Identifier: Apache-2.0
/*
 * The flannel VXLAN monitor: two tc programs on the UNDERLAY device that
 * flannel's VXLAN device (flannel.<VNI>, flannel-v6.<VNI>) sends through.
 *
 *   weir_vx_egress   tc egress   encapsulated packets this node sends
 *   weir_vx_ingress  tc ingress  encapsulated packets arriving for this node
 *
 * Observation only: every packet continues unchanged. Both programs always
 * return TC_ACT_UNSPEC, which is the same value (-1) as TCX_NEXT. With TCX,
 * TCX_NEXT hands the packet to the next program of the hook (and then to any
 * classic clsact filters); at the end of the chain it means "pass". TC_ACT_OK
 * would be wrong here: for TCX it is TCX_PASS, a final verdict that skips
 * every later program and clsact filter. Under a classic clsact `cls_bpf`
 * filter in direct-action mode TC_ACT_UNSPEC also means "continue with the
 * next filter", so the programs are neutral under both attach APIs.
 *
 * Parsed: outer Ethernet (+ one 802.1Q/802.1ad tag) -> IPv4 (with options)
 * or IPv6 (bounded extension header walk) -> UDP to VXLAN_PORT -> VXLAN
 * (I flag required) -> inner Ethernet (+ one tag) -> IPv4/IPv6 -> TCP/UDP
 * ports, ICMP/ICMPv6 type/code. Outer fragments are not parsed (counted).
 *
 * What is counted where:
 *   - weir_vx_iface (per underlay ifindex): every packet the program sees,
 *     as VXLAN encap/decap packets+bytes or as "other" packets;
 *   - weir_vx_vni (per VNI) and the VXLAN_PACKETS stat: every packet with a
 *     valid VXLAN header, whether or not the inner frame parses;
 *   - weir_vx_flows: VXLAN packets whose inner headers parse to a flow;
 *   - weir_vx_stats: why a packet did not make it further.
 *
 * Wire accounting (packets/bytes) follows the split program: a GSO/GRO
 * super-packet is gso_segs frames on the wire, each carrying its own copy of
 * the headers. For an encapsulated super-packet (skb->encapsulation,
 * SKB_GSO_UDP_TUNNEL*) the headers repeated in every segment are the outer
 * Ethernet/IP/UDP/VXLAN headers AND the inner Ethernet/IP/L4 headers, so the
 * per-segment header length used is everything up to the end of the inner
 * L4 header. The same expression is right for non-GSO packets (segs = 1).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "weir_count.h"
#include "weir_parse.h"
#include "weir_vx_abi.h"

/* Only non-GPL-only helpers are used, so the project's licence is declared. */
char LICENSE[] SEC("license") = "Apache-2.0";

/* The VXLAN UDP destination port of this attachment, written by the loader
 * (read from the flannel device: IFLA_VXLAN_PORT). */
volatile const __u16 VXLAN_PORT = WEIR_VX_DEFAULT_PORT;

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEIR_VX_FLOWS_MAX_ENTRIES);
	__type(key, struct vx_flow_key);
	__type(value, struct vx_flow_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_vx_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, WEIR_VX_VNI_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct vx_vni_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_vx_vni SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, WEIR_VX_IFACE_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct vx_iface_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_vx_iface SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_VX_STAT_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_vx_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, WEIR_VX_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_vx_events SEC(".maps");

/* TC_ACT_UNSPEC is TCX_NEXT (the uapi headers here may predate TCX). */
#define VX_CONTINUE TC_ACT_UNSPEC
_Static_assert(TC_ACT_UNSPEC == -1, "TC_ACT_UNSPEC must equal TCX_NEXT (-1)");

#define VXLAN_HLEN 8
#define VXLAN_FLAG_I 0x08

/* What the parsers found: the shared outcomes, then the outer frame's own. */
enum vx_parse {
	VX_OK = WEIR_PARSE_OK,
	VX_TRUNCATED = WEIR_PARSE_TRUNCATED,
	VX_BAD_HEADER = WEIR_PARSE_BAD_HEADER,
	VX_NON_IP = WEIR_PARSE_NON_IP,
	VX_NON_UDP,
	VX_OTHER_PORT,
	VX_BAD_FLAGS,
	VX_FRAGMENT,
};

struct vx_parsed {
	struct vx_flow_key key;
	/* Offset reached; once parsing ends, the header bytes that every GSO
	 * segment repeats (outer L2..VXLAN + inner L2..L4). */
	__u32 off;
	__u32 tcp_flags;
	__u32 inner_nonfirst_fragment;
};

static __always_inline void stat_inc(__u32 idx)
{
	weir_stat_inc(&weir_vx_stats, idx);
}

/* Outer headers up to and including the VXLAN header. */
static __always_inline int parse_outer(struct __sk_buff *skb,
				       struct vx_parsed *p)
{
	__be16 proto;
	__u32 off = 0;
	__u32 frag = 0;
	__u8 l4 = 0;
	int rc = weir_parse_eth(skb, &off, &proto);

	if (rc)
		return rc;
	rc = weir_parse_ip(skb, proto, &off, &p->key.outer_family,
			   p->key.outer_src, p->key.outer_dst, &l4, &frag,
			   WEIR_WALK_STOP_AT_NONFIRST);
	if (rc)
		return rc;
	if (frag)
		return VX_FRAGMENT;
	if (l4 != IPPROTO_UDP)
		return VX_NON_UDP;

	__u8 uh[WEIR_UDP_HLEN];
	if (weir_load(skb, off, uh, sizeof(uh)))
		return VX_TRUNCATED;
	__u16 dport = ((__u16)uh[2] << 8) | uh[3];
	if (dport != VXLAN_PORT)
		return VX_OTHER_PORT;
	off += WEIR_UDP_HLEN;

	__u8 vx[VXLAN_HLEN];
	if (weir_load(skb, off, vx, sizeof(vx)))
		return VX_TRUNCATED;
	if (!(vx[0] & VXLAN_FLAG_I))
		return VX_BAD_FLAGS;
	p->key.vni = ((__u32)vx[4] << 16) | ((__u32)vx[5] << 8) | vx[6];
	off += VXLAN_HLEN;

	p->off = off;
	return VX_OK;
}

/* Inner Ethernet, IP and L4 headers, starting at p->off. p->off ends at the
 * last header parsed completely, so that the wire byte count holds even
 * when the inner frame does not parse. */
static __always_inline int parse_inner(struct __sk_buff *skb,
				       struct vx_parsed *p)
{
	__be16 proto;
	__u32 off = p->off;
	__u32 frag = 0;
	int rc = weir_parse_eth(skb, &off, &proto);

	if (rc)
		return rc;
	p->off = off;
	rc = weir_parse_ip(skb, proto, &off, &p->key.inner_family,
			   p->key.inner_src, p->key.inner_dst,
			   &p->key.inner_proto, &frag,
			   WEIR_WALK_STOP_AT_NONFIRST);
	if (rc)
		return rc;
	p->off = off;
	if (frag & WEIR_FRAG_NONFIRST) {
		/* no upper-layer header in this packet: a flow without ports */
		p->inner_nonfirst_fragment = 1;
		return VX_OK;
	}
	return weir_parse_l4(skb, &p->off, p->key.inner_family,
			     p->key.inner_proto, &p->key.inner_sport,
			     &p->key.inner_dport, &p->tcp_flags,
			     WEIR_UDP_NEED_HEADER);
}

static __always_inline __u32 outer_stat(int rc)
{
	switch (rc) {
	case VX_NON_IP:
		return WEIR_VX_STAT_NON_IP;
	case VX_NON_UDP:
		return WEIR_VX_STAT_NON_UDP;
	case VX_OTHER_PORT:
		return WEIR_VX_STAT_OTHER_UDP_PORT;
	case VX_BAD_FLAGS:
		return WEIR_VX_STAT_BAD_VXLAN_FLAGS;
	case VX_FRAGMENT:
		return WEIR_VX_STAT_OUTER_FRAGMENTS;
	case VX_TRUNCATED:
		return WEIR_VX_STAT_TRUNCATED_OUTER;
	default:
		return WEIR_VX_STAT_BAD_OUTER_HEADER;
	}
}

static __always_inline __u32 inner_stat(int rc)
{
	switch (rc) {
	case VX_NON_IP:
		return WEIR_VX_STAT_INNER_NON_IP;
	case VX_TRUNCATED:
		return WEIR_VX_STAT_TRUNCATED_INNER;
	default:
		return WEIR_VX_STAT_BAD_INNER_HEADER;
	}
}

/* The encap/decap packet and byte counters that both per-CPU values
 * (struct vx_vni_counters, struct vx_iface_counters) begin with. */
_Static_assert(__builtin_offsetof(struct vx_iface_counters, encap_packets) ==
	       __builtin_offsetof(struct vx_vni_counters, encap_packets) &&
	       __builtin_offsetof(struct vx_iface_counters, encap_bytes) ==
	       __builtin_offsetof(struct vx_vni_counters, encap_bytes) &&
	       __builtin_offsetof(struct vx_iface_counters, decap_packets) ==
	       __builtin_offsetof(struct vx_vni_counters, decap_packets) &&
	       __builtin_offsetof(struct vx_iface_counters, decap_bytes) ==
	       __builtin_offsetof(struct vx_vni_counters, decap_bytes),
	       "vx_iface_counters begins with the vx_vni_counters fields");

/* This CPU's counters under *key in weir_vx_vni or weir_vx_iface, created
 * zeroed on first use; NULL (counted in fail_stat) when that fails. */
static __always_inline void *percpu_counters(void *map, __u32 *key,
					     __u32 fail_stat)
{
	void *c = bpf_map_lookup_elem(map, key);

	if (c)
		return c;
	/* the larger value type: the map reads only its own value size */
	struct vx_iface_counters zero;

	__builtin_memset(&zero, 0, sizeof(zero));
	/* -EEXIST: another CPU created it first; add to that one */
	c = weir_create_after_miss(map, key, &zero);
	if (!c)
		stat_inc(fail_stat);
	return c;
}

/* this CPU's copy: plain adds */
static __always_inline void dir_add(struct vx_vni_counters *c, __u8 dir,
				    __u64 packets, __u64 bytes)
{
	if (dir == WEIR_VX_DIR_ENCAP) {
		c->encap_packets += packets;
		c->encap_bytes += bytes;
	} else {
		c->decap_packets += packets;
		c->decap_bytes += bytes;
	}
}

/* Per-interface counters; vxlan = 0 counts an "other" packet (no bytes). */
static __always_inline void iface_add(__u32 ifindex, __u8 dir, int vxlan,
				      __u64 packets, __u64 bytes)
{
	struct vx_iface_counters *c = percpu_counters(
		&weir_vx_iface, &ifindex, WEIR_VX_STAT_IFACE_UPDATE_FAILED);

	if (!c)
		return;
	if (vxlan)
		dir_add((struct vx_vni_counters *)c, dir, packets, bytes);
	else if (dir == WEIR_VX_DIR_ENCAP)
		c->other_egress_packets += packets;
	else
		c->other_ingress_packets += packets;
}

static __always_inline void vni_add(__u32 vni, __u8 dir, __u64 packets,
				    __u64 bytes)
{
	struct vx_vni_counters *c = percpu_counters(
		&weir_vx_vni, &vni, WEIR_VX_STAT_VNI_UPDATE_FAILED);

	if (c)
		dir_add(c, dir, packets, bytes);
}

static __always_inline void flow_add_to(struct vx_flow_counters *c, __u8 dir,
					__u64 packets, __u64 bytes, __u64 now,
					__u32 tcp_flags)
{
	__sync_fetch_and_add(&c->packets, packets);
	__sync_fetch_and_add(&c->bytes, bytes);
	if (dir == WEIR_VX_DIR_ENCAP) {
		__sync_fetch_and_add(&c->encap_packets, packets);
		__sync_fetch_and_add(&c->encap_bytes, bytes);
	} else {
		__sync_fetch_and_add(&c->decap_packets, packets);
		__sync_fetch_and_add(&c->decap_bytes, bytes);
	}
	/* Racing CPUs store nearly equal times; any of them is a fine answer. */
	c->last_seen_ns = now;
	if (tcp_flags)
		__sync_fetch_and_or(&c->tcp_flags, tcp_flags);
}

static __always_inline void flow_add(struct vx_parsed *p, __u8 dir,
				     __u64 packets, __u64 bytes)
{
	__u64 now = bpf_ktime_get_boot_ns();
	struct vx_flow_counters *c = bpf_map_lookup_elem(&weir_vx_flows, &p->key);

	if (!c) {
		struct vx_flow_counters init;
		int inserted;

		__builtin_memset(&init, 0, sizeof(init));
		init.packets = packets;
		init.bytes = bytes;
		init.first_seen_ns = now;
		init.last_seen_ns = now;
		if (dir == WEIR_VX_DIR_ENCAP) {
			init.encap_packets = packets;
			init.encap_bytes = bytes;
		} else {
			init.decap_packets = packets;
			init.decap_bytes = bytes;
		}
		init.tcp_flags = p->tcp_flags;

		c = weir_insert_after_miss(&weir_vx_flows, &p->key, &init,
					   &inserted);
		if (!c) {
			if (!inserted) {
				stat_inc(WEIR_VX_STAT_FLOW_UPDATE_FAILED);
				return;
			}
			stat_inc(WEIR_VX_STAT_NEW_FLOWS);
			struct vx_flow_event *ev =
				bpf_ringbuf_reserve(&weir_vx_events, sizeof(*ev), 0);
			if (!ev) {
				stat_inc(WEIR_VX_STAT_EVENTS_LOST);
				return;
			}
			__builtin_memcpy(&ev->key, &p->key, sizeof(ev->key));
			ev->ts_ns = now;
			bpf_ringbuf_submit(ev, 0);
			return;
		}
		/* another CPU created it between our lookup and update */
	}
	flow_add_to(c, dir, packets, bytes, now, p->tcp_flags);
}

static __always_inline void monitor(struct __sk_buff *skb, __u8 dir)
{
	struct vx_parsed p;
	__u32 ifindex = skb->ifindex;

	__builtin_memset(&p, 0, sizeof(p));
	p.key.direction = dir;
	p.key.ifindex = ifindex;

	int rc = parse_outer(skb, &p);
	if (rc != VX_OK) {
		stat_inc(outer_stat(rc));
		iface_add(ifindex, dir, 0,
			  weir_wire_packets(skb, 0, WEIR_GSO_ZERO_IS_ONE), 0);
		return;
	}

	int inner = parse_inner(skb, &p);

	/* Wire packets and bytes, see the top of the file. p.off is the
	 * header length every segment repeats. A GSO packet from an untrusted
	 * source (virtio, tap: SKB_GSO_DODGY) may carry gso_segs 0 with a
	 * gso_size; its segment count is then derived from the payload. */
	__u64 segs = weir_wire_packets(skb, p.off, WEIR_GSO_ZERO_DERIVE);
	__u64 bytes = weir_wire_bytes(skb->len, segs, p.off);

	stat_inc(WEIR_VX_STAT_VXLAN_PACKETS);
	vni_add(p.key.vni, dir, segs, bytes);
	iface_add(ifindex, dir, 1, segs, bytes);

	if (inner != VX_OK) {
		stat_inc(inner_stat(inner));
		return;
	}
	if (p.inner_nonfirst_fragment)
		stat_inc(WEIR_VX_STAT_INNER_FRAGMENTS);
	flow_add(&p, dir, segs, bytes);
}

/* tc ingress of the underlay: VXLAN packets arriving to be decapsulated. */
SEC("classifier")
int weir_vx_ingress(struct __sk_buff *skb)
{
	monitor(skb, WEIR_VX_DIR_DECAP);
	return VX_CONTINUE;
}

/* tc egress of the underlay: VXLAN packets this node encapsulated. */
SEC("classifier")
int weir_vx_egress(struct __sk_buff *skb)
{
	monitor(skb, WEIR_VX_DIR_ENCAP);
	return VX_CONTINUE;
}
