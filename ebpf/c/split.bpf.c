// SPDX-License-Identifier: Apache-2.0
/*
 * The veth split: two tc ingress programs inside the pod netns that move every
 * frame between the original pod device (wx-<if>) and the new pair (wi-<if>
 * <-> <if>), counting it on the way when the pod is in Count mode.
 *
 * Forwarding is the contract; counting is best effort. Whatever the parser or
 * the maps do, the frame is redirected.
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

#include "weir_abi.h"

/* Only non-GPL-only helpers are used, so the project's licence is declared. */
char LICENSE[] SEC("license") = "Apache-2.0";

/*
 * Per-instance values, written by the loader before the object is loaded.
 * ifindexes are only unique within one netns, so they can never live in a
 * node-wide map.
 */
volatile const __u32 POD_ID = 0;
volatile const __u32 WX_IFINDEX = 0;
volatile const __u32 WI_IFINDEX = 0;

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEIR_FLOWS_MAX_ENTRIES);
	__type(key, struct flow_key);
	__type(value, struct flow_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_POD_CONFIG_MAX_ENTRIES);
	__type(key, __u32);
	__type(value, struct pod_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_pod_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_STAT_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, WEIR_FLOW_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_flow_events SEC(".maps");

/* Bounds the IPv6 extension header walk so the verifier can prove it ends. */
#define WEIR_IPV6_MAX_EXT_HDRS 8

#define IPV4_FRAG_OFFSET_MASK 0x1fff
#define IPV6_FRAG_OFFSET_MASK 0xfff8
#define TCP_FLAGS_OFFSET 13

enum parse_result {
	PARSE_FLOW = 0,
	PARSE_NON_IP = 1,
	PARSE_ERROR = 2,
};

struct parsed {
	struct flow_key key;
	/* L2 + L3 + L4 header bytes, repeated in every GSO segment. */
	__u32 hdr_len;
	__u32 tcp_flags;
};

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&weir_stats, &idx);

	/* Per-CPU slot and tc runs with migration disabled: no atomic needed. */
	if (v)
		*v += 1;
}

static __always_inline int parse_l4(struct __sk_buff *skb, struct parsed *p,
				    __u32 off, int first_fragment)
{
	p->hdr_len = off;
	if (!first_fragment)
		return PARSE_FLOW;

	switch (p->key.proto) {
	case IPPROTO_TCP: {
		/* ports .. flags: the first 14 bytes of the TCP header */
		__u8 th[14];

		if (bpf_skb_load_bytes(skb, off, th, sizeof(th)))
			return PARSE_ERROR;
		__u32 doff = (th[12] >> 4) * 4;
		if (doff < 20)
			return PARSE_ERROR;
		p->key.sport = ((__u16)th[0] << 8) | th[1];
		p->key.dport = ((__u16)th[2] << 8) | th[3];
		p->tcp_flags = th[TCP_FLAGS_OFFSET];
		p->hdr_len = off + doff;
		return PARSE_FLOW;
	}
	case IPPROTO_UDP: {
		__u8 uh[4];

		if (bpf_skb_load_bytes(skb, off, uh, sizeof(uh)))
			return PARSE_ERROR;
		p->key.sport = ((__u16)uh[0] << 8) | uh[1];
		p->key.dport = ((__u16)uh[2] << 8) | uh[3];
		p->hdr_len = off + 8;
		return PARSE_FLOW;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		/* ICMP in IPv6 or ICMPv6 in IPv4 is not ICMP: no type/code. */
		if ((p->key.proto == IPPROTO_ICMP) != (p->key.family == 4))
			return PARSE_FLOW;
		__u8 ih[2];

		if (bpf_skb_load_bytes(skb, off, ih, sizeof(ih)))
			return PARSE_ERROR;
		p->key.sport = ih[0];
		p->key.dport = ih[1];
		return PARSE_FLOW;
	}
	default:
		return PARSE_FLOW;
	}
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, struct parsed *p,
				      __u32 off)
{
	struct iphdr iph;

	if (bpf_skb_load_bytes(skb, off, &iph, sizeof(iph)))
		return PARSE_ERROR;
	/* version/ihl read by hand: the uapi bitfield order is endian-specific */
	__u8 vihl = *(__u8 *)&iph;
	__u32 ihl = (vihl & 0x0f) * 4;
	if ((vihl >> 4) != 4 || ihl < sizeof(iph))
		return PARSE_ERROR;

	p->key.family = 4;
	p->key.proto = iph.protocol;
	__builtin_memcpy(p->key.src, &iph.saddr, 4);
	__builtin_memcpy(p->key.dst, &iph.daddr, 4);

	int first = (bpf_ntohs(iph.frag_off) & IPV4_FRAG_OFFSET_MASK) == 0;
	return parse_l4(skb, p, off + ihl, first);
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

static __always_inline int parse_ipv6(struct __sk_buff *skb, struct parsed *p,
				      __u32 off)
{
	struct ipv6hdr ip6;

	if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)))
		return PARSE_ERROR;
	if ((*(__u8 *)&ip6 >> 4) != 6)
		return PARSE_ERROR;

	p->key.family = 6;
	__builtin_memcpy(p->key.src, &ip6.saddr, 16);
	__builtin_memcpy(p->key.dst, &ip6.daddr, 16);

	__u8 nh = ip6.nexthdr;
	int first = 1;
	off += sizeof(ip6);

	for (int i = 0; i < WEIR_IPV6_MAX_EXT_HDRS; i++) {
		if (nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING ||
		    nh == IPPROTO_DSTOPTS) {
			struct ipv6_opt_hdr_prefix opt;

			if (bpf_skb_load_bytes(skb, off, &opt, sizeof(opt)))
				return PARSE_ERROR;
			nh = opt.nexthdr;
			off += ((__u32)opt.hdrlen + 1) * 8;
		} else if (nh == IPPROTO_AH) {
			struct ipv6_opt_hdr_prefix opt;

			if (bpf_skb_load_bytes(skb, off, &opt, sizeof(opt)))
				return PARSE_ERROR;
			nh = opt.nexthdr;
			off += ((__u32)opt.hdrlen + 2) * 4;
		} else if (nh == IPPROTO_FRAGMENT) {
			struct ipv6_frag_hdr fh;

			if (bpf_skb_load_bytes(skb, off, &fh, sizeof(fh)))
				return PARSE_ERROR;
			nh = fh.nexthdr;
			if (bpf_ntohs(fh.frag_off) & IPV6_FRAG_OFFSET_MASK)
				first = 0;
			off += sizeof(fh);
		} else {
			p->key.proto = nh;
			return parse_l4(skb, p, off, first);
		}
	}
	/* A chain longer than the bound cannot be classified honestly. */
	return PARSE_ERROR;
}

static __always_inline int parse(struct __sk_buff *skb, struct parsed *p)
{
	__be16 proto;
	__u32 off = ETH_HLEN;

	if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &proto,
			       sizeof(proto)))
		return PARSE_ERROR;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		/* TCI (2 bytes), then the encapsulated ethertype */
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 2, &proto, sizeof(proto)))
			return PARSE_ERROR;
		off += 4;
	}

	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(skb, p, off);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(skb, p, off);
	return PARSE_NON_IP;
}

static __always_inline void add_to(struct flow_counters *c, __u64 packets,
				   __u64 bytes, __u64 now, __u32 tcp_flags)
{
	__sync_fetch_and_add(&c->packets, packets);
	__sync_fetch_and_add(&c->bytes, bytes);
	/* Racing CPUs store nearly equal times; any of them is a fine answer. */
	c->last_seen_ns = now;
	if (tcp_flags)
		__sync_fetch_and_or(&c->tcp_flags, tcp_flags);
}

static __always_inline void account(struct __sk_buff *skb, __u8 direction)
{
	struct parsed p;

	__builtin_memset(&p, 0, sizeof(p));
	p.key.pod_id = POD_ID;
	p.key.direction = direction;

	int res = parse(skb, &p);
	if (res == PARSE_NON_IP) {
		stat_inc(WEIR_STAT_NON_IP_PACKETS);
		return;
	}
	if (res != PARSE_FLOW) {
		stat_inc(WEIR_STAT_PARSE_ERRORS);
		return;
	}

	/* Count what goes on the wire: a GSO super-packet is gso_segs frames,
	 * each carrying its own copy of the headers. */
	__u64 packets = skb->gso_segs;
	if (packets == 0)
		packets = 1;
	__u64 bytes = skb->len + (packets - 1) * p.hdr_len;
	__u64 now = bpf_ktime_get_boot_ns();

	struct flow_counters *c = bpf_map_lookup_elem(&weir_flows, &p.key);
	if (c) {
		add_to(c, packets, bytes, now, p.tcp_flags);
		return;
	}

	struct flow_counters init = {
		.packets = packets,
		.bytes = bytes,
		.first_seen_ns = now,
		.last_seen_ns = now,
		.tcp_flags = p.tcp_flags,
	};
	long err = bpf_map_update_elem(&weir_flows, &p.key, &init, BPF_NOEXIST);
	if (err == 0) {
		stat_inc(WEIR_STAT_NEW_FLOWS);
		struct flow_event ev;

		__builtin_memset(&ev, 0, sizeof(ev));
		ev.key = p.key;
		ev.ts_ns = now;
		if (bpf_ringbuf_output(&weir_flow_events, &ev, sizeof(ev), 0))
			stat_inc(WEIR_STAT_EVENTS_LOST);
		return;
	}
	if (err == -EEXIST) {
		/* another CPU created it between our lookup and update */
		c = bpf_map_lookup_elem(&weir_flows, &p.key);
		if (c) {
			add_to(c, packets, bytes, now, p.tcp_flags);
			return;
		}
	}
	stat_inc(WEIR_STAT_FLOW_UPDATE_FAILED);
}

static __always_inline int split(struct __sk_buff *skb, __u8 direction,
				 __u32 target_ifindex)
{
	__u32 pod_id = POD_ID;
	struct pod_config *cfg = bpf_map_lookup_elem(&weir_pod_config, &pod_id);

	/* No entry means no CaptureProfile selected the pod: forward only. */
	if (cfg && cfg->mode == WEIR_MODE_COUNT)
		account(skb, direction);
	else
		stat_inc(WEIR_STAT_PASSTHROUGH_PACKETS);

	stat_inc(WEIR_STAT_REDIRECTS);
	/* Both halves live in the pod netns, so plain redirect (not _peer):
	 * egress of wi- arrives at the new eth0, egress of wx- goes to the host. */
	return bpf_redirect(target_ifindex, 0);
}

/* On wx-<if> ingress: frames from the network, towards the pod. */
SEC("classifier")
int weir_split_outer(struct __sk_buff *skb)
{
	return split(skb, WEIR_DIR_TO_POD, WI_IFINDEX);
}

/* On wi-<if> ingress: frames the pod sent, towards the network. */
SEC("classifier")
int weir_split_inner(struct __sk_buff *skb)
{
	return split(skb, WEIR_DIR_FROM_POD, WX_IFINDEX);
}
