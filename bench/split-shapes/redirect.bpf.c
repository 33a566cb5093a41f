// SPDX-License-Identifier: GPL-2.0
/* The smallest split program: redirect every frame to TARGET (an ifindex),
 * or to TARGET's veth peer with -DPEER. No parsing, no maps: what the split's
 * shape costs without any of weir's work. Built per attachment by
 * bench/split-shapes/run.sh, which knows the ifindex. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int redirect(struct __sk_buff *skb)
{
#ifdef PEER
	return bpf_redirect_peer(TARGET, 0);
#else
	return bpf_redirect(TARGET, 0);
#endif
}

char LICENSE[] SEC("license") = "GPL";
