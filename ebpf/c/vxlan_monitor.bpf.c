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
#include <linux/errno.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

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

/* Bounds the IPv6 extension header walk so the verifier can prove it ends. */
#define VX_IPV6_MAX_EXT_HDRS 8

#define VXLAN_HLEN 8
#define VXLAN_FLAG_I 0x08
#define UDP_HLEN 8
#define TCP_FLAGS_OFFSET 13
#define IPV4_MF_AND_OFFSET 0x3fff
#define IPV4_OFFSET_MASK 0x1fff
#define IPV6_FRAG_OFFSET_MASK 0xfff8
#define IPV6_FRAG_MF 0x0001

/* What the parsers found. */
enum vx_parse {
	VX_OK = 0,
	VX_TRUNCATED,
	VX_BAD_HEADER,
	VX_NON_IP,
	VX_NON_UDP,
	VX_OTHER_PORT,
	VX_BAD_FLAGS,
	VX_FRAGMENT,
};

/* Fragment header findings of the IPv6 walk. */
#define VX_FRAG_ANY 1      /* a real fragment (offset or M set) */
#define VX_FRAG_NONFIRST 2 /* offset != 0: no upper-layer header here */

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
	__u64 *v = bpf_map_lookup_elem(&weir_vx_stats, &idx);

	/* Per-CPU slot and tc runs with migration disabled: no atomic needed. */
	if (v)
		*v += 1;
}

/* Ethernet header plus at most one VLAN tag at *off; leaves *off at L3. */
static __always_inline int parse_eth(struct __sk_buff *skb, __u32 *off,
				     __be16 *proto)
{
	if (bpf_skb_load_bytes(skb, *off + offsetof(struct ethhdr, h_proto),
			       proto, sizeof(*proto)))
		return VX_TRUNCATED;
	*off += ETH_HLEN;
	if (*proto == bpf_htons(ETH_P_8021Q) ||
	    *proto == bpf_htons(ETH_P_8021AD)) {
		/* TCI (2 bytes), then the encapsulated ethertype */
		if (bpf_skb_load_bytes(skb, *off + 2, proto, sizeof(*proto)))
			return VX_TRUNCATED;
		*off += 4;
	}
	return VX_OK;
}

struct ipv6_opt_hdr_prefix {
	__u8 nexthdr;
	__u8 hdrlen;
};

struct ipv6_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 identification;
};

/*
 * Walks the IPv6 extension headers starting with *nh at *off. Stops at the
 * first header that is not an extension header (left in *nh, *off at it), or
 * right after the fragment header of a non-first fragment, whose payload is
 * not a header. *frag gets VX_FRAG_* bits.
 */
static __always_inline int ipv6_walk(struct __sk_buff *skb, __u32 *off,
				     __u8 *nh, __u32 *frag)
{
	*frag = 0;
	for (int i = 0; i < VX_IPV6_MAX_EXT_HDRS; i++) {
		switch (*nh) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS: {
			struct ipv6_opt_hdr_prefix opt;

			if (bpf_skb_load_bytes(skb, *off, &opt, sizeof(opt)))
				return VX_TRUNCATED;
			*nh = opt.nexthdr;
			*off += ((__u32)opt.hdrlen + 1) * 8;
			break;
		}
		case IPPROTO_AH: {
			struct ipv6_opt_hdr_prefix opt;

			if (bpf_skb_load_bytes(skb, *off, &opt, sizeof(opt)))
				return VX_TRUNCATED;
			*nh = opt.nexthdr;
			*off += ((__u32)opt.hdrlen + 2) * 4;
			break;
		}
		case IPPROTO_FRAGMENT: {
			struct ipv6_frag_hdr fh;

			if (bpf_skb_load_bytes(skb, *off, &fh, sizeof(fh)))
				return VX_TRUNCATED;
			*nh = fh.nexthdr;
			*off += sizeof(fh);
			__u16 fo = bpf_ntohs(fh.frag_off);
			if (fo & (IPV6_FRAG_OFFSET_MASK | IPV6_FRAG_MF))
				*frag |= VX_FRAG_ANY;
			if (fo & IPV6_FRAG_OFFSET_MASK) {
				*frag |= VX_FRAG_NONFIRST;
				return VX_OK;
			}
			/* an atomic fragment (RFC 6946) is a whole packet */
			break;
		}
		default:
			return VX_OK;
		}
	}
	/* A chain longer than the bound cannot be classified honestly. */
	return VX_BAD_HEADER;
}

/* Outer headers up to and including the VXLAN header. */
static __always_inline int parse_outer(struct __sk_buff *skb,
				       struct vx_parsed *p)
{
	__be16 proto;
	__u32 off = 0;
	__u8 l4;
	int rc = parse_eth(skb, &off, &proto);

	if (rc)
		return rc;

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr iph;

		if (bpf_skb_load_bytes(skb, off, &iph, sizeof(iph)))
			return VX_TRUNCATED;
		/* version/ihl by hand: the uapi bitfield order is endian-specific */
		__u8 vihl = *(__u8 *)&iph;
		__u32 ihl = (vihl & 0x0f) * 4;
		if ((vihl >> 4) != 4 || ihl < sizeof(iph))
			return VX_BAD_HEADER;
		if (bpf_ntohs(iph.frag_off) & IPV4_MF_AND_OFFSET)
			return VX_FRAGMENT;
		p->key.outer_family = 4;
		__builtin_memcpy(p->key.outer_src, &iph.saddr, 4);
		__builtin_memcpy(p->key.outer_dst, &iph.daddr, 4);
		l4 = iph.protocol;
		off += ihl;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		__u32 frag;

		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)))
			return VX_TRUNCATED;
		if ((*(__u8 *)&ip6 >> 4) != 6)
			return VX_BAD_HEADER;
		p->key.outer_family = 6;
		__builtin_memcpy(p->key.outer_src, &ip6.saddr, 16);
		__builtin_memcpy(p->key.outer_dst, &ip6.daddr, 16);
		l4 = ip6.nexthdr;
		off += sizeof(ip6);
		rc = ipv6_walk(skb, &off, &l4, &frag);
		if (rc)
			return rc;
		if (frag)
			return VX_FRAGMENT;
	} else {
		return VX_NON_IP;
	}

	if (l4 != IPPROTO_UDP)
		return VX_NON_UDP;

	__u8 uh[UDP_HLEN];
	if (bpf_skb_load_bytes(skb, off, uh, sizeof(uh)))
		return VX_TRUNCATED;
	__u16 dport = ((__u16)uh[2] << 8) | uh[3];
	if (dport != VXLAN_PORT)
		return VX_OTHER_PORT;
	off += UDP_HLEN;

	__u8 vx[VXLAN_HLEN];
	if (bpf_skb_load_bytes(skb, off, vx, sizeof(vx)))
		return VX_TRUNCATED;
	if (!(vx[0] & VXLAN_FLAG_I))
		return VX_BAD_FLAGS;
	p->key.vni = ((__u32)vx[4] << 16) | ((__u32)vx[5] << 8) | vx[6];
	off += VXLAN_HLEN;

	p->off = off;
	return VX_OK;
}

/* Inner L4 at off: ports (or ICMP type/code), TCP flags and header end. */
static __always_inline int parse_inner_l4(struct __sk_buff *skb,
					  struct vx_parsed *p, __u32 off)
{
	switch (p->key.inner_proto) {
	case IPPROTO_TCP: {
		/* ports .. flags: the first 14 bytes of the TCP header */
		__u8 th[14];

		if (bpf_skb_load_bytes(skb, off, th, sizeof(th)))
			return VX_TRUNCATED;
		__u32 doff = (th[12] >> 4) * 4;
		if (doff < 20)
			return VX_BAD_HEADER;
		p->key.inner_sport = ((__u16)th[0] << 8) | th[1];
		p->key.inner_dport = ((__u16)th[2] << 8) | th[3];
		p->tcp_flags = th[TCP_FLAGS_OFFSET];
		p->off = off + doff;
		return VX_OK;
	}
	case IPPROTO_UDP: {
		__u8 uh[UDP_HLEN];

		if (bpf_skb_load_bytes(skb, off, uh, sizeof(uh)))
			return VX_TRUNCATED;
		p->key.inner_sport = ((__u16)uh[0] << 8) | uh[1];
		p->key.inner_dport = ((__u16)uh[2] << 8) | uh[3];
		p->off = off + UDP_HLEN;
		return VX_OK;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		/* ICMP in IPv6 or ICMPv6 in IPv4 is not ICMP: no type/code. */
		if ((p->key.inner_proto == IPPROTO_ICMP) !=
		    (p->key.inner_family == 4))
			return VX_OK;
		__u8 ih[2];

		if (bpf_skb_load_bytes(skb, off, ih, sizeof(ih)))
			return VX_TRUNCATED;
		p->key.inner_sport = ih[0];
		p->key.inner_dport = ih[1];
		return VX_OK;
	}
	default:
		return VX_OK;
	}
}

/* Inner Ethernet, IP and L4 headers, starting at p->off. */
static __always_inline int parse_inner(struct __sk_buff *skb,
				       struct vx_parsed *p)
{
	__be16 proto;
	__u32 off = p->off;
	int first = 1;
	int rc = parse_eth(skb, &off, &proto);

	if (rc)
		return rc;
	p->off = off;

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr iph;

		if (bpf_skb_load_bytes(skb, off, &iph, sizeof(iph)))
			return VX_TRUNCATED;
		__u8 vihl = *(__u8 *)&iph;
		__u32 ihl = (vihl & 0x0f) * 4;
		if ((vihl >> 4) != 4 || ihl < sizeof(iph))
			return VX_BAD_HEADER;
		p->key.inner_family = 4;
		p->key.inner_proto = iph.protocol;
		__builtin_memcpy(p->key.inner_src, &iph.saddr, 4);
		__builtin_memcpy(p->key.inner_dst, &iph.daddr, 4);
		first = (bpf_ntohs(iph.frag_off) & IPV4_OFFSET_MASK) == 0;
		off += ihl;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		__u32 frag;
		__u8 nh;

		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)))
			return VX_TRUNCATED;
		if ((*(__u8 *)&ip6 >> 4) != 6)
			return VX_BAD_HEADER;
		p->key.inner_family = 6;
		__builtin_memcpy(p->key.inner_src, &ip6.saddr, 16);
		__builtin_memcpy(p->key.inner_dst, &ip6.daddr, 16);
		nh = ip6.nexthdr;
		off += sizeof(ip6);
		rc = ipv6_walk(skb, &off, &nh, &frag);
		if (rc)
			return rc;
		p->key.inner_proto = nh;
		first = !(frag & VX_FRAG_NONFIRST);
	} else {
		return VX_NON_IP;
	}

	p->off = off;
	if (!first) {
		/* no upper-layer header in this packet: a flow without ports */
		p->inner_nonfirst_fragment = 1;
		return VX_OK;
	}
	return parse_inner_l4(skb, p, off);
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

/* Per-interface counters; vxlan = 0 counts an "other" packet (no bytes). */
static __always_inline void iface_add(__u32 ifindex, __u8 dir, int vxlan,
				      __u64 packets, __u64 bytes)
{
	struct vx_iface_counters *c =
		bpf_map_lookup_elem(&weir_vx_iface, &ifindex);

	if (!c) {
		struct vx_iface_counters zero;

		__builtin_memset(&zero, 0, sizeof(zero));
		long err = bpf_map_update_elem(&weir_vx_iface, &ifindex, &zero,
					       BPF_NOEXIST);
		/* -EEXIST: another CPU created it first; add to that one */
		if (err && err != -EEXIST) {
			stat_inc(WEIR_VX_STAT_IFACE_UPDATE_FAILED);
			return;
		}
		c = bpf_map_lookup_elem(&weir_vx_iface, &ifindex);
		if (!c) {
			stat_inc(WEIR_VX_STAT_IFACE_UPDATE_FAILED);
			return;
		}
	}
	/* this CPU's copy: plain adds */
	if (!vxlan) {
		if (dir == WEIR_VX_DIR_ENCAP)
			c->other_egress_packets += packets;
		else
			c->other_ingress_packets += packets;
	} else if (dir == WEIR_VX_DIR_ENCAP) {
		c->encap_packets += packets;
		c->encap_bytes += bytes;
	} else {
		c->decap_packets += packets;
		c->decap_bytes += bytes;
	}
}

static __always_inline void vni_add(__u32 vni, __u8 dir, __u64 packets,
				    __u64 bytes)
{
	struct vx_vni_counters *c = bpf_map_lookup_elem(&weir_vx_vni, &vni);

	if (!c) {
		struct vx_vni_counters zero;

		__builtin_memset(&zero, 0, sizeof(zero));
		long err = bpf_map_update_elem(&weir_vx_vni, &vni, &zero,
					       BPF_NOEXIST);
		if (err && err != -EEXIST) {
			stat_inc(WEIR_VX_STAT_VNI_UPDATE_FAILED);
			return;
		}
		c = bpf_map_lookup_elem(&weir_vx_vni, &vni);
		if (!c) {
			stat_inc(WEIR_VX_STAT_VNI_UPDATE_FAILED);
			return;
		}
	}
	if (dir == WEIR_VX_DIR_ENCAP) {
		c->encap_packets += packets;
		c->encap_bytes += bytes;
	} else {
		c->decap_packets += packets;
		c->decap_bytes += bytes;
	}
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

	if (c) {
		flow_add_to(c, dir, packets, bytes, now, p->tcp_flags);
		return;
	}

	struct vx_flow_counters init;

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

	long err = bpf_map_update_elem(&weir_vx_flows, &p->key, &init, BPF_NOEXIST);
	if (err == 0) {
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
	if (err == -EEXIST) {
		/* another CPU created it between our lookup and update */
		c = bpf_map_lookup_elem(&weir_vx_flows, &p->key);
		if (c) {
			flow_add_to(c, dir, packets, bytes, now, p->tcp_flags);
			return;
		}
	}
	stat_inc(WEIR_VX_STAT_FLOW_UPDATE_FAILED);
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
		__u64 segs = skb->gso_segs;

		stat_inc(outer_stat(rc));
		iface_add(ifindex, dir, 0, segs ? segs : 1, 0);
		return;
	}

	int inner = parse_inner(skb, &p);

	/* Wire packets and bytes, see the top of the file. p.off is the
	 * header length every segment repeats. A GSO packet from an untrusted
	 * source (virtio, tap: SKB_GSO_DODGY) may carry gso_segs 0 with a
	 * gso_size; its segment count is then derived from the payload. */
	__u32 len = skb->len;
	__u32 hdr = p.off;
	__u64 segs = skb->gso_segs;
	__u32 gso_size = skb->gso_size;
	if (segs == 0 && gso_size && len > hdr)
		segs = ((__u64)(len - hdr) + gso_size - 1) / gso_size;
	if (segs == 0)
		segs = 1;
	__u64 bytes = (__u64)len + (segs - 1) * (__u64)hdr;

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
