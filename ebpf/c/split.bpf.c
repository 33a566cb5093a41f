// SPDX-License-Identifier: Apache-2.0
/*
 * The veth split: the program that moves every frame between the original pod
 * device (wx-<if>) and the new pair (wi-<if> <-> <if>) inside the pod netns,
 * counting it on the way when the pod is in Count mode.
 *
 * It is loaded and verified once per node. Each pod interface gets two tiny
 * entry stubs (ebpf/src/stub.rs) on wx-<if> and wi-<if> ingress, which put
 * the pod id, the redirect target and the direction into skb->cb and
 * tail-call this program through the weir_split_jump slot. A pod ADD then
 * never pays for this program's verification.
 *
 * Forwarding is the contract; counting is best effort. Whatever the parser or
 * the maps do, the frame is redirected.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "weir_abi.h"
#include "weir_count.h"
#include "weir_parse.h"

/* Only non-GPL-only helpers are used, so the project's licence is declared. */
char LICENSE[] SEC("license") = "Apache-2.0";

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

/*
 * First/last seen are CLOCK_BOOTTIME ns, as the agent reads them.
 *
 * first_seen is read precisely, once per flow: the agent tells who opened a
 * conversation by whose flow came first, and a reply follows its request by
 * microseconds.
 *
 * last_seen only says when a flow was last active, so it comes from the
 * coarse monotonic clock, a memory read at tick resolution (1-10 ms),
 * instead of a clocksource read per frame (~20 ns on a KVM guest,
 * bench/prog-probe). Boot time is monotonic time plus the time spent
 * suspended, which changes only across a suspend: that difference is taken
 * with every precise read and added to each coarse one. Before a program's
 * first new flow it is 0, exact on a node that never suspended.
 */
static volatile __u64 boot_minus_mono_ns;

static __always_inline __u64 coarse_boot_ns(void)
{
	return bpf_ktime_get_coarse_ns() + boot_minus_mono_ns;
}

static __always_inline __u64 precise_boot_ns(void)
{
	__u64 boot = bpf_ktime_get_boot_ns();

	boot_minus_mono_ns = boot - bpf_ktime_get_ns();
	return boot;
}

static __always_inline void stat_inc(__u32 idx)
{
	weir_stat_inc(&weir_stats, idx);
}

static __always_inline int parse(struct __sk_buff *skb, struct parsed *p)
{
	__be16 proto;
	__u32 off = 0;
	__u32 frag = 0;

	if (weir_parse_eth(skb, &off, &proto))
		return PARSE_ERROR;
	int rc = weir_parse_ip(skb, proto, &off, &p->key.family, p->key.src,
			       p->key.dst, &p->key.proto, &frag,
			       WEIR_WALK_STOP_AT_NONFIRST);
	if (rc == WEIR_PARSE_NON_IP)
		return PARSE_NON_IP;
	if (rc != WEIR_PARSE_OK)
		return PARSE_ERROR;

	p->hdr_len = off;
	/* a non-first fragment has no upper-layer header: a flow without ports */
	if (frag & WEIR_FRAG_NONFIRST)
		return PARSE_FLOW;
	rc = weir_parse_l4(skb, &off, p->key.family, p->key.proto,
			   &p->key.sport, &p->key.dport, &p->tcp_flags,
			   WEIR_UDP_NEED_PORTS);
	if (rc != WEIR_PARSE_OK)
		return PARSE_ERROR;
	p->hdr_len = off;
	return PARSE_FLOW;
}

static __always_inline void add_to(struct flow_counters *c, __u64 packets,
				   __u64 bytes, __u64 now, __u32 tcp_flags)
{
	__sync_fetch_and_add(&c->packets, packets);
	__sync_fetch_and_add(&c->bytes, bytes);
	/* The coarse clock lags the precise first_seen by up to a tick, and
	 * moves once a tick: store only what moves last_seen forward. Racing
	 * CPUs store nearly equal times; any of them is a fine answer. */
	if (now > c->last_seen_ns)
		c->last_seen_ns = now;
	/* A flow's flags are soon all seen: skip the locked OR when it would
	 * change nothing (a racing OR only adds bits). */
	if (tcp_flags & ~c->tcp_flags)
		__sync_fetch_and_or(&c->tcp_flags, tcp_flags);
}

static __always_inline void account(struct __sk_buff *skb, __u32 pod_id,
				    __u8 direction)
{
	struct parsed p;

	__builtin_memset(&p, 0, sizeof(p));
	p.key.pod_id = pod_id;
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
	__u64 packets = weir_wire_packets(skb, p.hdr_len, WEIR_GSO_ZERO_DERIVE);
	__u64 bytes = weir_wire_bytes(skb->len, packets, p.hdr_len);
	__u64 now = coarse_boot_ns();

	struct flow_counters *c = bpf_map_lookup_elem(&weir_flows, &p.key);
	if (!c) {
		now = precise_boot_ns();
		struct flow_counters init = {
			.packets = packets,
			.bytes = bytes,
			.first_seen_ns = now,
			.last_seen_ns = now,
			.tcp_flags = p.tcp_flags,
		};
		int inserted;

		c = weir_insert_after_miss(&weir_flows, &p.key, &init, &inserted);
		if (!c) {
			if (!inserted) {
				stat_inc(WEIR_STAT_FLOW_UPDATE_FAILED);
				return;
			}
			stat_inc(WEIR_STAT_NEW_FLOWS);
			struct flow_event ev;

			__builtin_memset(&ev, 0, sizeof(ev));
			ev.key = p.key;
			ev.ts_ns = now;
			if (bpf_ringbuf_output(&weir_flow_events, &ev, sizeof(ev), 0))
				stat_inc(WEIR_STAT_EVENTS_LOST);
			return;
		}
		/* another CPU created it between our lookup and update */
	}
	add_to(c, packets, bytes, now, p.tcp_flags);
}

/* Reached only by tail call from an attachment's entry stub. */
SEC("classifier")
int weir_split(struct __sk_buff *skb)
{
	__u32 pod_id = skb->cb[WEIR_CB_POD_ID];
	__u32 target_ifindex = skb->cb[WEIR_CB_TARGET_IFINDEX];
	__u8 direction = skb->cb[WEIR_CB_DIRECTION] == WEIR_DIR_TO_POD ?
				 WEIR_DIR_TO_POD :
				 WEIR_DIR_FROM_POD;
	struct pod_config *cfg = bpf_map_lookup_elem(&weir_pod_config, &pod_id);

	/* No entry means no CaptureProfile selected the pod: forward only. */
	if (cfg && cfg->mode == WEIR_MODE_COUNT)
		account(skb, pod_id, direction);
	else
		stat_inc(WEIR_STAT_PASSTHROUGH_PACKETS);

	stat_inc(WEIR_STAT_REDIRECTS);
	/* Towards the pod: egress of wi- arrives at the new eth0, in this netns,
	 * so a plain redirect. From the pod the stub may ask for the peer of
	 * wx- (the host's veth, in another netns): the frame then enters the
	 * host's ingress at once instead of through wx-'s transmit and another
	 * pass through the backlog queue, as if the split were not there. */
	if (skb->cb[WEIR_CB_VIA_PEER])
		return bpf_redirect_peer(target_ifindex, 0);
	return bpf_redirect(target_ifindex, 0);
}
