/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Counting helpers shared by split.bpf.c and vxlan_monitor.bpf.c: per-CPU
 * stats slots, wire packet/byte accounting of (GSO) packets, and the slow
 * half of the lookup-or-create of a map entry. All static __always_inline;
 * the map arguments are the programs' own map variables, so every call
 * still loads a constant map pointer.
 */
#ifndef WEIR_COUNT_H
#define WEIR_COUNT_H

#include <linux/bpf.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>

/* Adds one to slot idx of a per-CPU array of __u64. */
static __always_inline void weir_stat_inc(void *stats, __u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(stats, &idx);

	/* Per-CPU slot and tc runs with migration disabled: no atomic needed. */
	if (v)
		*v += 1;
}

/* How weir_wire_packets treats a GSO packet with gso_segs 0. */
enum weir_gso_zero {
	/* one packet: for per-run stats, which count program runs */
	WEIR_GSO_ZERO_IS_ONE = 0,
	/* derive the count from gso_size when set (SKB_GSO_DODGY from virtio
	 * or tap may carry gso_segs 0): wire counts of both programs */
	WEIR_GSO_ZERO_DERIVE = 1,
};

/*
 * Wire packets of skb: a GSO/GRO super-packet is gso_segs frames on the
 * wire, each repeating the first hdr_len bytes (its headers). Never 0.
 */
static __always_inline __u64 weir_wire_packets(struct __sk_buff *skb,
					       __u32 hdr_len, int gso_zero)
{
	__u64 segs = skb->gso_segs;

	if (gso_zero == WEIR_GSO_ZERO_DERIVE) {
		__u32 len = skb->len;
		__u32 gso_size = skb->gso_size;

		if (segs == 0 && gso_size && len > hdr_len)
			segs = ((__u64)(len - hdr_len) + gso_size - 1) / gso_size;
	}
	if (segs == 0)
		segs = 1;
	return segs;
}

/* Wire bytes of a packet of len bytes sent as `packets` segments that each
 * carry their own copy of its hdr_len header bytes. */
static __always_inline __u64 weir_wire_bytes(__u32 len, __u64 packets,
					     __u32 hdr_len)
{
	return (__u64)len + (packets - 1) * (__u64)hdr_len;
}

/*
 * The slow half of lookup-or-create, after the caller's lookup of key
 * missed: inserts *init unless an entry exists (BPF_NOEXIST). Returns the
 * entry another CPU created between that lookup and now (add to it), or
 * NULL; then *inserted tells whether *init went in (it already holds what
 * the caller meant to add) or the map refused it (full, no memory).
 */
static __always_inline void *weir_insert_after_miss(void *map, const void *key,
						    const void *init,
						    int *inserted)
{
	long err = bpf_map_update_elem(map, key, init, BPF_NOEXIST);

	*inserted = err == 0;
	if (err == -EEXIST)
		return bpf_map_lookup_elem(map, key);
	return NULL;
}

/* The same for an entry that starts as *init and is then added to like any
 * other (per-CPU counters): the entry now in the map, whoever created it,
 * or NULL when it cannot be created. */
static __always_inline void *weir_create_after_miss(void *map, const void *key,
						    const void *init)
{
	int inserted;
	void *c = weir_insert_after_miss(map, key, init, &inserted);

	if (inserted)
		c = bpf_map_lookup_elem(map, key);
	return c;
}

#endif /* WEIR_COUNT_H */
