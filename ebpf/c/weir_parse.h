/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Packet header parsers shared by split.bpf.c and vxlan_monitor.bpf.c (the
 * VXLAN monitor runs them twice: on the outer and on the inner frame).
 *
 * Everything is static __always_inline: BPF-to-BPF calls would cost the
 * verifier more than the copies do, and the callers' constant arguments
 * (walk mode, offsets) fold away. The parsers write straight into the
 * caller's flow key and report what they found as an enum weir_parse; each
 * program maps that to its own stats.
 */
#ifndef WEIR_PARSE_H
#define WEIR_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

/* Bounds the IPv6 extension header walk so the verifier can prove it ends. */
#define WEIR_IPV6_MAX_EXT_HDRS 8

#define WEIR_UDP_HLEN 8
#define WEIR_TCP_FLAGS_OFFSET 13
#define WEIR_IPV4_MF_AND_OFFSET 0x3fff
#define WEIR_IPV4_OFFSET_MASK 0x1fff
#define WEIR_IPV6_FRAG_OFFSET_MASK 0xfff8
#define WEIR_IPV6_FRAG_MF 0x0001

/* What a parser found. Programs with more outcomes continue the numbering
 * after WEIR_PARSE_NON_IP. */
enum weir_parse {
	WEIR_PARSE_OK = 0,
	/* a header runs past the end of the packet */
	WEIR_PARSE_TRUNCATED = 1,
	/* bad IP version / IHL, TCP data offset < 5, ext header chain too long */
	WEIR_PARSE_BAD_HEADER = 2,
	/* the ethertype is neither IPv4 nor IPv6 */
	WEIR_PARSE_NON_IP = 3,
};

/* Fragment findings of weir_parse_ip (bits). */
#define WEIR_FRAG_ANY 1      /* a real fragment (offset or MF set) */
#define WEIR_FRAG_NONFIRST 2 /* offset != 0: no upper-layer header here */

/* What the IPv6 walk does at the fragment header of a non-first fragment. */
enum weir_ipv6_walk {
	/* Stop right after it: what follows is payload, not a header. */
	WEIR_WALK_STOP_AT_NONFIRST = 0,
	/* Keep walking with its next-header value: reads payload bytes as a
	 * header when that value names an extension header. No program uses
	 * it; kept only as the explicit alternative. */
	WEIR_WALK_THROUGH_NONFIRST = 1,
};

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

/* Offsets past this are read through the helper: the bound lets the verifier
 * prove a direct read stays inside the packet range it tracks. */
#define WEIR_DIRECT_READ_MAX_OFF 4096

/*
 * Copies len (a constant) bytes at off into to. Headers almost always sit in
 * the skb's linear part, and reading them there directly costs a fraction
 * of a bpf_skb_load_bytes() call (prog-probe: ~30 % of the counting path);
 * a header that reaches into the paged part, or lies beyond the bound,
 * takes the helper, which reads either. The bytes are the same both ways.
 * Returns 0, or the helper's error.
 *
 * The alignment hint makes clang copy in words instead of byte by byte (an
 * IP header sits 2 bytes off a word in the frame). Misaligned packet loads
 * are what the verifier allows on hosts with efficient unaligned access
 * (x86-64, arm64); elsewhere loading fails with the verifier's reason,
 * never a program that reads wrong bytes.
 */
static __always_inline long weir_load(struct __sk_buff *skb, __u32 off,
				      void *to, __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (off <= WEIR_DIRECT_READ_MAX_OFF) {
		void *at = data + off;

		if (at + len <= data_end) {
			__builtin_memcpy(to, __builtin_assume_aligned(at, 4),
					 len);
			return 0;
		}
	}
	return bpf_skb_load_bytes(skb, off, to, len);
}

/* Ethernet header plus at most one 802.1Q/802.1ad tag at *off; leaves *off
 * at L3 and the (inner) ethertype in *proto. */
static __always_inline int weir_parse_eth(struct __sk_buff *skb, __u32 *off,
					  __be16 *proto)
{
	if (weir_load(skb, *off + offsetof(struct ethhdr, h_proto), proto,
		      sizeof(*proto)))
		return WEIR_PARSE_TRUNCATED;
	*off += ETH_HLEN;
	if (*proto == bpf_htons(ETH_P_8021Q) ||
	    *proto == bpf_htons(ETH_P_8021AD)) {
		/* TCI (2 bytes), then the encapsulated ethertype */
		if (weir_load(skb, *off + 2, proto, sizeof(*proto)))
			return WEIR_PARSE_TRUNCATED;
		*off += 4;
	}
	return WEIR_PARSE_OK;
}

/*
 * Walks the IPv6 extension headers starting with *nh at *off. Stops at the
 * first header that is not an extension header (left in *nh, *off at it),
 * or, in WEIR_WALK_STOP_AT_NONFIRST mode, right after the fragment header of
 * a non-first fragment. *frag gets WEIR_FRAG_* bits.
 */
static __always_inline int weir_ipv6_walk(struct __sk_buff *skb, __u32 *off,
					  __u8 *nh, __u32 *frag, int mode)
{
	*frag = 0;
	for (int i = 0; i < WEIR_IPV6_MAX_EXT_HDRS; i++) {
		switch (*nh) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS: {
			struct ipv6_opt_hdr_prefix opt;

			if (weir_load(skb, *off, &opt, sizeof(opt)))
				return WEIR_PARSE_TRUNCATED;
			*nh = opt.nexthdr;
			*off += ((__u32)opt.hdrlen + 1) * 8;
			break;
		}
		case IPPROTO_AH: {
			struct ipv6_opt_hdr_prefix opt;

			if (weir_load(skb, *off, &opt, sizeof(opt)))
				return WEIR_PARSE_TRUNCATED;
			*nh = opt.nexthdr;
			*off += ((__u32)opt.hdrlen + 2) * 4;
			break;
		}
		case IPPROTO_FRAGMENT: {
			struct ipv6_frag_hdr fh;

			if (weir_load(skb, *off, &fh, sizeof(fh)))
				return WEIR_PARSE_TRUNCATED;
			*nh = fh.nexthdr;
			*off += sizeof(fh);
			__u16 fo = bpf_ntohs(fh.frag_off);
			if (fo & (WEIR_IPV6_FRAG_OFFSET_MASK | WEIR_IPV6_FRAG_MF))
				*frag |= WEIR_FRAG_ANY;
			if (fo & WEIR_IPV6_FRAG_OFFSET_MASK) {
				*frag |= WEIR_FRAG_NONFIRST;
				if (mode == WEIR_WALK_STOP_AT_NONFIRST)
					return WEIR_PARSE_OK;
			}
			/* an atomic fragment (RFC 6946) is a whole packet */
			break;
		}
		default:
			return WEIR_PARSE_OK;
		}
	}
	/* A chain longer than the bound cannot be classified honestly. */
	return WEIR_PARSE_BAD_HEADER;
}

/*
 * The IPv4 or IPv6 header (ethertype `proto`) at *off, IPv6 extension
 * headers included. Stores the family (4, 6) and the addresses (IPv4 in the
 * first 4 bytes of src/dst, which must be 16 bytes and are left alone
 * beyond that), the upper-layer protocol in *l4 and WEIR_FRAG_* bits in
 * *frag, and leaves *off at the upper-layer header. On failure *off and the
 * outputs hold whatever was parsed so far (l4 and frag at least 0).
 */
static __always_inline int weir_parse_ip(struct __sk_buff *skb, __be16 proto,
					 __u32 *off, __u8 *family, __u8 *src,
					 __u8 *dst, __u8 *l4, __u32 *frag,
					 int walk_mode)
{
	/* defined on every path: the compiler may merge error paths with
	 * reads of them, which the verifier refuses when uninitialised */
	*frag = 0;
	*l4 = 0;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr iph;

		if (weir_load(skb, *off, &iph, sizeof(iph)))
			return WEIR_PARSE_TRUNCATED;
		/* version/ihl by hand: the uapi bitfield order is endian-specific */
		__u8 vihl = *(__u8 *)&iph;
		__u32 ihl = (vihl & 0x0f) * 4;
		if ((vihl >> 4) != 4 || ihl < sizeof(iph))
			return WEIR_PARSE_BAD_HEADER;
		*family = 4;
		*l4 = iph.protocol;
		__builtin_memcpy(src, &iph.saddr, 4);
		__builtin_memcpy(dst, &iph.daddr, 4);
		__u16 fo = bpf_ntohs(iph.frag_off);
		if (fo & WEIR_IPV4_MF_AND_OFFSET)
			*frag |= WEIR_FRAG_ANY;
		if (fo & WEIR_IPV4_OFFSET_MASK)
			*frag |= WEIR_FRAG_NONFIRST;
		*off += ihl;
		return WEIR_PARSE_OK;
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (weir_load(skb, *off, &ip6, sizeof(ip6)))
			return WEIR_PARSE_TRUNCATED;
		if ((*(__u8 *)&ip6 >> 4) != 6)
			return WEIR_PARSE_BAD_HEADER;
		*family = 6;
		__builtin_memcpy(src, &ip6.saddr, 16);
		__builtin_memcpy(dst, &ip6.daddr, 16);
		*l4 = ip6.nexthdr;
		*off += sizeof(ip6);
		return weir_ipv6_walk(skb, off, l4, frag, walk_mode);
	}
	return WEIR_PARSE_NON_IP;
}

/* How much of a UDP header weir_parse_l4 needs in the packet. */
enum weir_udp_need {
	/* the ports (4 bytes): what the split program has always read */
	WEIR_UDP_NEED_PORTS = 4,
	/* the whole header (8 bytes): the VXLAN monitor's inner frames */
	WEIR_UDP_NEED_HEADER = WEIR_UDP_HLEN,
};

/*
 * The upper-layer header at *off of protocol `proto` in an IP packet of
 * `family`: TCP/UDP ports (host order) or ICMP/ICMPv6 type and code into
 * *sport / *dport, the TCP flag byte into *tcp_flags. *off is moved past a
 * TCP or UDP header; it stays put for ICMP and other protocols (their
 * header length is not parsed) and on failure. udp_need (enum
 * weir_udp_need, a constant) is how many UDP header bytes must be there.
 */
static __always_inline int weir_parse_l4(struct __sk_buff *skb, __u32 *off,
					 __u8 family, __u8 proto, __u16 *sport,
					 __u16 *dport, __u32 *tcp_flags,
					 int udp_need)
{
	switch (proto) {
	case IPPROTO_TCP: {
		/* ports .. flags: the first 14 bytes of the TCP header */
		__u8 th[14];

		if (weir_load(skb, *off, th, sizeof(th)))
			return WEIR_PARSE_TRUNCATED;
		__u32 doff = (th[12] >> 4) * 4;
		if (doff < 20)
			return WEIR_PARSE_BAD_HEADER;
		*sport = ((__u16)th[0] << 8) | th[1];
		*dport = ((__u16)th[2] << 8) | th[3];
		*tcp_flags = th[WEIR_TCP_FLAGS_OFFSET];
		*off += doff;
		return WEIR_PARSE_OK;
	}
	case IPPROTO_UDP: {
		__u8 uh[WEIR_UDP_HLEN];

		if (weir_load(skb, *off, uh,
			      udp_need == WEIR_UDP_NEED_PORTS ? 4 : sizeof(uh)))
			return WEIR_PARSE_TRUNCATED;
		*sport = ((__u16)uh[0] << 8) | uh[1];
		*dport = ((__u16)uh[2] << 8) | uh[3];
		*off += WEIR_UDP_HLEN;
		return WEIR_PARSE_OK;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		/* ICMP in IPv6 or ICMPv6 in IPv4 is not ICMP: no type/code. */
		if ((proto == IPPROTO_ICMP) != (family == 4))
			return WEIR_PARSE_OK;
		__u8 ih[2];

		if (weir_load(skb, *off, ih, sizeof(ih)))
			return WEIR_PARSE_TRUNCATED;
		*sport = ih[0];
		*dport = ih[1];
		return WEIR_PARSE_OK;
	}
	default:
		return WEIR_PARSE_OK;
	}
}

#endif /* WEIR_PARSE_H */
