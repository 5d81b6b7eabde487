// SPDX-License-Identifier: GPL-2.0
/*
 * tc clsact ingress programs of the interceptor node daemon's eBPF datapath.
 * Compiled at run time by BCC (interceptor/node/datapath/ebpf.py). What it
 * must do is the datapath contract (interceptor/node/datapath/contract.py),
 * the same as the nft datapath's; this file is the kernel half only.
 * "169.254.169.254:80" below stands for the configured metadata address and
 * port (METADATA_ADDR_HOST, METADATA_PORT).
 *
 * `tap_ingress` runs on every managed tap, per frame coming from a guest:
 *   ARP request for 169.254.169.254   enabled tap -> rewritten into a reply
 *                                     and sent back out of the same tap;
 *                                     otherwise dropped (fail closed).
 *   ARP reply to the tap's own MAC    enabled tap -> readdressed to 01:80:c2:00:00:02
 *                                     (see "Bridged taps" below).
 *   TCP to 169.254.169.254:80         enabled tap -> handed to the tap's own
 *                                     listener (bpf_sk_assign) with the tap's
 *                                     mark and readdressed to 01:80:c2:00:00:02, or
 *                                     answered with a RST if the tap has no
 *                                     listener (daemon killed: fail fast);
 *                                     refused tap -> answered
 *                                     with a RST forged here and sent straight
 *                                     back out, so the guest fails at once.
 *   anything else to 169.254.169.254  dropped (other ports, UDP, ICMP,
 *                                     fragments, malformed headers, VLAN).
 *   IPv4/IPv6 the node would deliver  host input filter (see host_input
 *   to itself                         below): dropped unless ICMP/ICMPv6
 *                                     (ND included), a reply on a connection
 *                                     the host opened, or to an allowed port;
 *                                     on a bridged tap judged as entering on
 *                                     its bridge, and only for frames the
 *                                     bridge passes up to the node.
 *   everything else                   TC_ACT_OK, untouched (forwarded).
 *
 * Bridged taps (a tap enslaved to a Linux bridge): tc ingress runs before
 * the bridge's rx handler, but once it returns TC_ACT_OK the bridge takes the
 * frame. Tested on 6.x: left addressed as the guest sent it, a steered
 * segment is flooded to the other ports (the ARP reply's MAC) or passed up
 * on the bridge (the gateway's MAC), where the stack does not deliver it to
 * the socket assigned here; and the guest's answer to the host's ARP on the
 * tap updates the bridge's neighbour, not the tap's, so no SYN-ACK leaves.
 * Frames to the IEEE 802.1D link-local group address 01:80:c2:00:00:02 are
 * passed back by br_handle_frame as received on the port itself, so steered
 * segments and ARP replies to the tap's own MAC are readdressed to it, as
 * the nft datapath does (datapath/bridge.py has the whole story); the IP
 * layer then sees iif = the tap. The stack's own lookup would then find the
 * tap's listener without bpf_sk_assign (tested), but the assignment stays:
 * it is what lets the program refuse (RST) when the tap has no listener, instead of
 * a wildcard host service on :80 getting the guest's SYN. Readdressing
 * changes nothing on a tap that is no bridge port (the stack goes by
 * pkt_type, set to HOST here), so it is done on every enabled tap: a tap
 * enslaved between two syncs is served at once, never flooded.
 *
 * Only UAPI headers are used: BCC compiles against generic distribution
 * headers that may be older than the running kernel. Everything is read with
 * bpf_skb_load_bytes, so non-linear skbs need no pulling for ordinary traffic.
 *
 * Every frame the program lets pass from a tap carries GUEST_MARK_TAG in the
 * mark's high byte (steered ones MARK_TAG | ifindex): the eBPF datapath's
 * guard (ebpf_guard.py) drops what comes from a managed name without it, a
 * tap the program is not attached to yet.
 *
 * Compile-time parameters (BCC cflags, EbpfConfig.cflags):
 *   PIN_DIR             string literal, bpffs directory holding the pinned maps.
 *   METADATA_ADDR_HOST  the metadata address, host byte order (e.g. 0xa9fea9feu).
 *   METADATA_PORT       its TCP port.
 *   MD6_COUNT           how many IPv6 metadata addresses (0: no IPv6 service);
 *   MD6_A0..3, MD6_B0..3  the first and second one, 32-bit words in host
 *                       byte order (B = A when there is one).
 *
 * IPv6 (MD6_COUNT > 0) mirrors IPv4 per tap: a neighbour solicitation for a
 * metadata address is answered with an advertisement (the ARP reply's MAC)
 * on an enabled tap (any tap with arp_when_refused) and dropped otherwise;
 * TCP to it is assigned to the tap's listener of that address, refused with
 * a RST on a refused tap; anything else to it is dropped. Guests' neighbour
 * advertisements to the tap's MAC are readdressed as ARP replies are.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_arp.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/if_packet.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/tcp.h>

#if !defined(PIN_DIR) || !defined(METADATA_ADDR_HOST) || !defined(METADATA_PORT)
#error "PIN_DIR, METADATA_ADDR_HOST and METADATA_PORT must be defined by the loader"
#endif

#ifndef MD6_COUNT
#define MD6_COUNT 0
#endif

/* The metadata address, network byte order. */
#define METADATA_ADDR bpf_htonl(METADATA_ADDR_HOST)
#define MAX_TAPS 16384
/* base.py: MARK_MASK, and nft_ruleset.py: GUEST_MARK_TAG. */
#define MARK_MASK 0xFF000000u
#define GUEST_MARK_TAG 0x4E000000u

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#define MAX_ALLOWED_PORTS 1024
#define IPV6_EXT_MAX 4      /* extension headers walked before giving up */

#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF
#define IP_DF 0x4000

/* Value of `enabled`: presence means "steer this tap to its listener". */
struct steer_target {
    __u32 mark;        /* skb->mark for steered packets (policy routing) */
};

/* Value of `stats`, per CPU (ebpf.py reads the fields by name). */
struct tap_stats {
    __u64 steered;      /* TCP segments handed to the tap's socket */
    __u64 refused;      /* TCP to :80 refused (RST sent or dropped) */
    __u64 arp_replies;  /* ARP requests for the metadata address answered */
    __u64 syn_limited;  /* SYNs dropped by the per-tap token bucket */
    __u64 malformed;    /* truncated/odd headers or fragments to the address */
    __u64 no_listener;  /* enabled tap but no socket of ours: dropped */
    __u64 dropped;      /* other traffic to the address (UDP, ICMP, ports) */
    __u64 arp_refused;  /* ARP for the metadata address on a refused tap */
    __u64 host_input;   /* to the node itself, not allowed: dropped */
};

/* Value of `syn_bucket`: GCRA state ("theoretical arrival time"). */
struct syn_bucket {
    __u64 tat_ns;
};

/* Value of `config[0]`, written by the loader. */
struct dp_config {
    __u8 arp_mac[6];         /* MAC the ARP replies give for 169.254.169.254 */
    __u8 arp_when_refused;   /* 1: answer ARP on refused taps too */
    __u8 pad;
    __u32 pad2;
    __u64 syn_interval_ns;   /* 1e9 / SYN rate; 0 = no limit */
    __u64 syn_burst;         /* bucket depth in SYNs */
};

BPF_TABLE_PINNED("hash", __u32, struct steer_target, enabled, MAX_TAPS,
                 PIN_DIR "/enabled", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("percpu_hash", __u32, struct tap_stats, stats, MAX_TAPS,
                 PIN_DIR "/stats", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", __u32, struct syn_bucket, syn_bucket, MAX_TAPS,
                 PIN_DIR "/syn_bucket", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("array", __u32, struct dp_config, config, 1, PIN_DIR "/config");
/* Value of `bridge_ports`: the bridge a tap is enslaved to. */
struct bridge_port {
    __u32 bridge_ifindex;    /* the IP layer's input device for what it passes up */
    __u8 bridge_mac[6];      /* unicast frames to it are passed up to the node */
    __u16 pad;
};

/* Taps that are ports of a Linux bridge (ifindex -> their bridge): see
 * "bridge ports" at the host input filter below. */
BPF_TABLE_PINNED("hash", __u32, struct bridge_port, bridge_ports, MAX_TAPS,
                 PIN_DIR "/bridge_ports", BPF_F_NO_PREALLOC);
/* Ports the node serves its guests (DHCP, DNS ...): key allow_key(), value 1. */
BPF_TABLE_PINNED("hash", __u32, __u8, host_allow, MAX_ALLOWED_PORTS, PIN_DIR "/host_allow",
                 BPF_F_NO_PREALLOC);

/* ARP header for Ethernet/IPv4, as on the wire (28 bytes). */
struct arp_eth_ipv4 {
    __be16 htype;
    __be16 ptype;
    __u8 hlen;
    __u8 plen;
    __be16 op;
    __u8 sha[6];
    __be32 spa;
    __u8 tha[6];
    __be32 tpa;
} __attribute__((packed));

/* A complete RST frame, written over the start of the offending segment. */
struct rst_frame {
    struct ethhdr eth;
    struct iphdr ip;
    struct tcphdr tcp;
} __attribute__((packed));

/* Pseudo header for the TCP checksum of a 20-byte segment. */
struct pseudo_hdr {
    __be32 saddr;
    __be32 daddr;
    __u8 zero;
    __u8 proto;
    __be16 len;
};

static __always_inline struct tap_stats *stats_for(__u32 ifindex)
{
    struct tap_stats *st = stats.lookup(&ifindex);
    if (st)
        return st;
    struct tap_stats zero = {};
    stats.update(&ifindex, &zero);
    return stats.lookup(&ifindex);
}

#define COUNT(st, field)        \
    do {                        \
        if (st)                 \
            (st)->field += 1;   \
    } while (0)

static __always_inline __u16 fold_csum(__u64 sum)
{
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (__u16)~sum;
}

static __always_inline int answer_arp(struct __sk_buff *skb, struct ethhdr *eth,
                                      struct arp_eth_ipv4 *arp, const __u8 *mac)
{
    struct ethhdr out_eth = {};
    struct arp_eth_ipv4 out = {};

    __builtin_memcpy(out_eth.h_dest, eth->h_source, ETH_ALEN);
    __builtin_memcpy(out_eth.h_source, mac, ETH_ALEN);
    out_eth.h_proto = bpf_htons(ETH_P_ARP);

    out.htype = bpf_htons(ARPHRD_ETHER);
    out.ptype = bpf_htons(ETH_P_IP);
    out.hlen = ETH_ALEN;
    out.plen = 4;
    out.op = bpf_htons(ARPOP_REPLY);
    __builtin_memcpy(out.sha, mac, ETH_ALEN);
    out.spa = METADATA_ADDR;
    __builtin_memcpy(out.tha, arp->sha, ETH_ALEN);
    out.tpa = arp->spa;

    if (bpf_skb_store_bytes(skb, 0, &out_eth, sizeof(out_eth), 0) < 0)
        return TC_ACT_SHOT;
    if (bpf_skb_store_bytes(skb, sizeof(out_eth), &out, sizeof(out), 0) < 0)
        return TC_ACT_SHOT;
    return bpf_redirect(skb->ifindex, 0);
}

/* Readdress the frame to the IEEE 802.1D "slow protocols" group address,
 * which a bridge hands back to the port's own stack (bridge.py: BYPASS_MAC).
 * (A local array: BCC has no global read-only data.) */
static __always_inline int set_bypass_dst(struct __sk_buff *skb)
{
    __u8 mac[ETH_ALEN] = {0x01, 0x80, 0xc2, 0x00, 0x00, 0x02};
    return bpf_skb_store_bytes(skb, 0, mac, ETH_ALEN, 0);
}

/* An ARP reply addressed to the tap's own MAC on an enabled tap: the answer
 * to the neighbour resolution the host does on the tap for its replies to the
 * guest. Readdressed so a bridge hands it to the tap, whose neighbour entry
 * would otherwise stay incomplete (and the SYN-ACK never leave). */
static __always_inline int arp_reply_to_tap(struct __sk_buff *skb, struct arp_eth_ipv4 *arp)
{
    __u32 ifindex = skb->ifindex;
    if (skb->pkt_type != PACKET_HOST || skb->vlan_present ||
        arp->op != bpf_htons(ARPOP_REPLY) || arp->ptype != bpf_htons(ETH_P_IP) ||
        !enabled.lookup(&ifindex))
        return TC_ACT_OK;
    if (set_bypass_dst(skb) < 0)
        return TC_ACT_SHOT;
    return TC_ACT_OK;
}

/* Whether a tap gets an answer for a metadata address (ARP and ND alike):
 * the config holding the MAC to answer with, or NULL (counted) when the tap
 * is refused and refused taps get none. */
static __always_inline struct dp_config *neighbour_config(__u32 ifindex, struct tap_stats *st)
{
    __u32 zero = 0;
    struct dp_config *cfg = config.lookup(&zero);
    if (!cfg)
        return NULL;
    if (!enabled.lookup(&ifindex) && !cfg->arp_when_refused) {
        COUNT(st, arp_refused);
        return NULL;
    }
    COUNT(st, arp_replies);
    return cfg;
}

static __always_inline int handle_arp(struct __sk_buff *skb, struct ethhdr *eth)
{
    struct arp_eth_ipv4 arp;
    __u32 ifindex = skb->ifindex;

    if (bpf_skb_load_bytes(skb, sizeof(*eth), &arp, sizeof(arp)) < 0)
        return TC_ACT_OK;  /* too short to be an Ethernet/IPv4 ARP: not ours */
    if (arp.tpa != METADATA_ADDR && arp.spa != METADATA_ADDR)
        return arp_reply_to_tap(skb, &arp);

    struct tap_stats *st = stats_for(ifindex);
    /* A guest claiming the address itself, a tagged frame, an odd
     * hardware/protocol type, or a reply: never passed to the host. */
    if (arp.spa == METADATA_ADDR || skb->vlan_present ||
        arp.htype != bpf_htons(ARPHRD_ETHER) || arp.ptype != bpf_htons(ETH_P_IP) ||
        arp.hlen != ETH_ALEN || arp.plen != 4 || arp.op != bpf_htons(ARPOP_REQUEST)) {
        COUNT(st, malformed);
        return TC_ACT_SHOT;
    }

    struct dp_config *cfg = neighbour_config(ifindex, st);
    return cfg ? answer_arp(skb, eth, &arp, cfg->arp_mac) : TC_ACT_SHOT;
}

/* The Ethernet header of a frame sent back to where `eth` came from. */
static __always_inline void reply_eth(struct ethhdr *out, struct ethhdr *eth, __u16 proto)
{
    __builtin_memcpy(out->h_dest, eth->h_source, ETH_ALEN);
    __builtin_memcpy(out->h_source, eth->h_dest, ETH_ALEN);
    out->h_proto = bpf_htons(proto);
}

/* The TCP header of the RST answering `tcp` (carrying `seg_len` bytes of
 * data): RFC 9293 3.10.7.1, for IPv4 and IPv6 alike. */
static __always_inline void rst_for(struct tcphdr *t, struct tcphdr *tcp, __u32 seg_len)
{
    t->source = tcp->dest;
    t->dest = tcp->source;
    t->doff = 5;
    t->rst = 1;
    if (tcp->ack) {
        t->seq = tcp->ack_seq;
    } else {
        t->ack = 1;
        t->ack_seq = bpf_htonl(bpf_ntohl(tcp->seq) + seg_len + tcp->syn + tcp->fin);
    }
}

/* Turn the segment in place into the RST a closed port would send (RFC 9293
 * 3.10.7.1) and send it straight back out of the tap: no routing involved,
 * so it reaches guests with overlapping or unrouted addresses. */
static __always_inline int send_rst(struct __sk_buff *skb, struct ethhdr *eth,
                                    struct iphdr *ip, struct tcphdr *tcp)
{
    struct rst_frame f = {};
    __u32 seg_len = bpf_ntohs(ip->tot_len) - ip->ihl * 4 - tcp->doff * 4;

    if (tcp->rst)
        return TC_ACT_SHOT;

    reply_eth(&f.eth, eth, ETH_P_IP);

    f.ip.version = 4;
    f.ip.ihl = 5;
    f.ip.tot_len = bpf_htons(sizeof(struct iphdr) + sizeof(struct tcphdr));
    f.ip.frag_off = bpf_htons(IP_DF);
    f.ip.ttl = 64;
    f.ip.protocol = IPPROTO_TCP;
    f.ip.saddr = ip->daddr;
    f.ip.daddr = ip->saddr;

    /* Built aligned, then copied: f is packed, and the verifier refuses a
     * misaligned 4-byte store to the stack. */
    struct tcphdr t = {};
    rst_for(&t, tcp, seg_len);
    __builtin_memcpy(&f.tcp, &t, sizeof(t));

    __s64 sum = bpf_csum_diff(0, 0, (__be32 *)&f.ip, sizeof(f.ip), 0);
    if (sum < 0)
        return TC_ACT_SHOT;
    f.ip.check = fold_csum(sum);

    struct pseudo_hdr ph = {
        .saddr = f.ip.saddr,
        .daddr = f.ip.daddr,
        .proto = IPPROTO_TCP,
        .len = bpf_htons(sizeof(struct tcphdr)),
    };
    sum = bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
    if (sum < 0)
        return TC_ACT_SHOT;
    sum = bpf_csum_diff(0, 0, (__be32 *)&f.tcp, sizeof(f.tcp), sum);
    if (sum < 0)
        return TC_ACT_SHOT;
    f.tcp.check = fold_csum(sum);

    if (bpf_skb_change_tail(skb, sizeof(f), 0) < 0)
        return TC_ACT_SHOT;
    if (bpf_skb_store_bytes(skb, 0, &f, sizeof(f), 0) < 0)
        return TC_ACT_SHOT;
    return bpf_redirect(skb->ifindex, 0);
}

#if MD6_COUNT > 0
/* Replace the frame with `head` then `tail` and send it back out of the tap. */
static __always_inline int send_back(struct __sk_buff *skb, void *head, __u32 head_len,
                                     void *tail, __u32 tail_len)
{
    if (bpf_skb_change_tail(skb, head_len + tail_len, 0) < 0)
        return TC_ACT_SHOT;
    if (bpf_skb_store_bytes(skb, 0, head, head_len, 0) < 0 ||
        bpf_skb_store_bytes(skb, head_len, tail, tail_len, 0) < 0)
        return TC_ACT_SHOT;
    return bpf_redirect(skb->ifindex, 0);
}

/* Which IPv6 metadata address `a` (4 words, network order) is: 1, 2 or 0. */
static __always_inline int is_md6(const __be32 *a)
{
    if (a[0] == bpf_htonl(MD6_A0) && a[1] == bpf_htonl(MD6_A1) &&
        a[2] == bpf_htonl(MD6_A2) && a[3] == bpf_htonl(MD6_A3))
        return 1;
    if (a[0] == bpf_htonl(MD6_B0) && a[1] == bpf_htonl(MD6_B1) &&
        a[2] == bpf_htonl(MD6_B2) && a[3] == bpf_htonl(MD6_B3))
        return 2;
    return 0;
}

/* IPv6 pseudo header (RFC 8200 8.1). */
struct pseudo_hdr6 {
    __be32 saddr[4];
    __be32 daddr[4];
    __be32 len;
    __u8 zero[3];
    __u8 nexthdr;
};

static __always_inline __s64 csum6(struct pseudo_hdr6 *ph, __be32 *l4, __u32 len)
{
    __s64 sum = bpf_csum_diff(0, 0, (__be32 *)ph, sizeof(*ph), 0);
    if (sum < 0)
        return sum;
    return bpf_csum_diff(0, 0, l4, len, sum);
}

/* Neighbour solicitation / advertisement, up to the target (RFC 4861 4.3). */
struct nd_msg6 {
    __u8 type;
    __u8 code;
    __be16 check;
    __be32 flags;
    __be32 target[4];
};

struct nd_adv6 {
    struct nd_msg6 msg;
    __u8 opt_type;   /* 2: target link-layer address */
    __u8 opt_len;    /* 1: 8 bytes */
    __u8 opt_mac[6];
};

struct eth_ip6 {
    struct ethhdr eth;
    struct ipv6hdr ip6;
} __attribute__((packed));

#define ND_NOT_OURS (-1)
#define ND_SOLICIT 135
#define ND_ADVERT 136

/* Rewrite the solicitation into the advertisement (Solicited + Override,
 * the ARP reply's MAC) and send it straight back out of the tap. */
static __always_inline int answer_ns(struct __sk_buff *skb, struct ethhdr *eth,
                                     struct ipv6hdr *ip6, struct nd_msg6 *ns, const __u8 *mac)
{
    struct eth_ip6 h = {};
    struct nd_adv6 na = {};

    __builtin_memcpy(h.eth.h_dest, eth->h_source, ETH_ALEN);
    __builtin_memcpy(h.eth.h_source, mac, ETH_ALEN);
    h.eth.h_proto = bpf_htons(ETH_P_IPV6);
    h.ip6.version = 6;
    h.ip6.payload_len = bpf_htons(sizeof(na));
    h.ip6.nexthdr = IPPROTO_ICMPV6;
    h.ip6.hop_limit = 255;
    __builtin_memcpy(&h.ip6.saddr, ns->target, 16);
    h.ip6.daddr = ip6->saddr;

    na.msg.type = ND_ADVERT;
    na.msg.flags = bpf_htonl(0x60000000);
    __builtin_memcpy(na.msg.target, ns->target, 16);
    na.opt_type = 2;
    na.opt_len = 1;
    __builtin_memcpy(na.opt_mac, mac, ETH_ALEN);

    struct pseudo_hdr6 ph = {.len = bpf_htonl(sizeof(na)), .nexthdr = IPPROTO_ICMPV6};
    __builtin_memcpy(ph.saddr, ns->target, 16);
    __builtin_memcpy(ph.daddr, &ip6->saddr, 16);
    __s64 sum = csum6(&ph, (__be32 *)&na, sizeof(na));
    if (sum < 0)
        return TC_ACT_SHOT;
    na.msg.check = fold_csum(sum);

    return send_back(skb, &h, sizeof(h), &na, sizeof(na));
}

/* Neighbour discovery that concerns us: a solicitation for a metadata
 * address (answered, or dropped on a refused tap, as ARP), a guest's
 * advertisement for one (a guest claiming the address: dropped), and a
 * guest's advertisement to the tap's own MAC on an enabled tap (readdressed,
 * as arp_reply_to_tap). ND_NOT_OURS for everything else. */
static __always_inline int handle_nd(struct __sk_buff *skb, struct ethhdr *eth,
                                     struct ipv6hdr *ip6)
{
    struct nd_msg6 nd;
    __u32 ifindex = skb->ifindex;
    if (bpf_skb_load_bytes(skb, sizeof(*eth) + sizeof(*ip6), &nd, sizeof(nd)) < 0)
        return ND_NOT_OURS;
    if (nd.type != ND_SOLICIT && nd.type != ND_ADVERT)
        return ND_NOT_OURS;
    int ours = is_md6(nd.target);
    if (nd.type == ND_ADVERT && !ours) {
        if (skb->pkt_type != PACKET_HOST || skb->vlan_present || !enabled.lookup(&ifindex))
            return ND_NOT_OURS;
        return set_bypass_dst(skb) < 0 ? TC_ACT_SHOT : TC_ACT_OK;
    }
    if (!ours)
        return ND_NOT_OURS;
    struct tap_stats *st = stats_for(ifindex);
    __be32 *src = ip6->saddr.in6_u.u6_addr32;
    if (nd.type == ND_ADVERT || skb->vlan_present || nd.code != 0 ||
        ip6->hop_limit != 255 || !(src[0] | src[1] | src[2] | src[3])) {
        COUNT(st, malformed);  /* a claim, or duplicate address detection of ours */
        return TC_ACT_SHOT;
    }
    struct dp_config *cfg = neighbour_config(ifindex, st);
    return cfg ? answer_ns(skb, eth, ip6, &nd, cfg->arp_mac) : TC_ACT_SHOT;
}

struct rst6_frame {
    struct ethhdr eth;
    struct ipv6hdr ip6;
} __attribute__((packed));

/* send_rst for IPv6. */
static __always_inline int send_rst6(struct __sk_buff *skb, struct ethhdr *eth,
                                     struct ipv6hdr *ip6, struct tcphdr *tcp)
{
    struct rst6_frame f = {};
    struct tcphdr t = {};
    __u32 seg_len = bpf_ntohs(ip6->payload_len) - tcp->doff * 4;

    if (tcp->rst)
        return TC_ACT_SHOT;
    reply_eth(&f.eth, eth, ETH_P_IPV6);
    f.ip6.version = 6;
    f.ip6.payload_len = bpf_htons(sizeof(t));
    f.ip6.nexthdr = IPPROTO_TCP;
    f.ip6.hop_limit = 64;
    f.ip6.saddr = ip6->daddr;
    f.ip6.daddr = ip6->saddr;

    rst_for(&t, tcp, seg_len);
    struct pseudo_hdr6 ph = {.len = bpf_htonl(sizeof(t)), .nexthdr = IPPROTO_TCP};
    __builtin_memcpy(ph.saddr, &f.ip6.saddr, 16);
    __builtin_memcpy(ph.daddr, &f.ip6.daddr, 16);
    __s64 sum = csum6(&ph, (__be32 *)&t, sizeof(t));
    if (sum < 0)
        return TC_ACT_SHOT;
    t.check = fold_csum(sum);

    return send_back(skb, &f, sizeof(f), &t, sizeof(t));
}
#endif

/* GCRA token bucket: true if this SYN may pass. Lock-free; concurrent SYNs
 * on two CPUs may both pass, which only makes the limit slightly loose. */
static __always_inline int syn_allowed(__u32 ifindex, struct dp_config *cfg)
{
    __u64 interval = cfg->syn_interval_ns;
    if (!interval)
        return 1;
    __u64 now = bpf_ktime_get_ns();
    struct syn_bucket *b = syn_bucket.lookup(&ifindex);
    if (!b) {
        struct syn_bucket fresh = {.tat_ns = now};
        syn_bucket.update(&ifindex, &fresh);
        b = syn_bucket.lookup(&ifindex);
        if (!b)
            return 1;
    }
    __u64 tat = b->tat_ns > now ? b->tat_ns : now;
    __u64 next = tat + interval;
    if (next - now > interval * cfg->syn_burst)
        return 0;
    b->tat_ns = next;
    return 1;
}

/* Is `sk` one of ours: bound to the metadata address and port on this very
 * device (so a wildcard listener of some host service never counts)? For
 * IPv6, the tap's listener of one of the IPv6 metadata addresses
 * (listeners.py opens one per address). */
static __always_inline int own_socket(struct bpf_sock *sk, __u32 ifindex, int v6)
{
    if (sk->src_port != METADATA_PORT || sk->bound_dev_if != ifindex)
        return 0;
#if MD6_COUNT > 0
    if (v6) {
        __be32 a[4] = {sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3]};
        return is_md6(a);
    }
#endif
    return !v6 && sk->src_ip4 == METADATA_ADDR;
}

/* Is there a listener of ours on this device? Looked up with source port 0,
 * which no connected socket has, so only listeners can match. `len` is
 * sizeof(tuple->ipv4) or sizeof(tuple->ipv6). */
static __always_inline int own_listener(struct __sk_buff *skb, struct bpf_sock_tuple *tuple,
                                        __u32 len, int v6)
{
    struct bpf_sock_tuple probe = *tuple;
    if (v6)
        probe.ipv6.sport = 0;
    else
        probe.ipv4.sport = 0;
    struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &probe, len, BPF_F_CURRENT_NETNS, 0);
    if (!sk)
        return 0;
    int ours = sk->state == BPF_TCP_LISTEN && own_socket(sk, skb->ifindex, v6);
    bpf_sk_release(sk);
    return ours;
}

/* Hand the segment to the socket of its 4-tuple on this device: the
 * established (or request) socket, else the listener. Returns 0 when the
 * stack will deliver it to a socket of ours, -1 to drop.
 *
 * A TIME-WAIT socket of the same 4-tuple needs care, whoever's it is (one
 * of a host service that served this address before, one of ours): for a
 * SYN the stack itself ends it and looks up the listener again
 * (tcp_timewait_state_process: "TCP_TW_SYN"), as nft's tproxy does. So a
 * SYN that meets one passes unassigned, if and only if our listener is there
 * to be found (else a wildcard host service could be); any other segment
 * for a TIME-WAIT socket that is not ours is dropped, as by nft. Assigning
 * someone else's TIME-WAIT socket, or dropping the SYN, would leave the
 * guest retrying that port until the socket expires. */
static __always_inline int assign_tuple(struct __sk_buff *skb, struct bpf_sock_tuple *tuple,
                                        __u32 len, int v6, struct tcphdr *tcp)
{
    struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, tuple, len, BPF_F_CURRENT_NETNS, 0);
    if (!sk)
        return -1;
    if (sk->state == BPF_TCP_TIME_WAIT) {
        bpf_sk_release(sk);
        if (tcp->syn && !tcp->ack && !tcp->rst)
            return own_listener(skb, tuple, len, v6) ? 0 : -1;
        return -1;
    }
    int ours = own_socket(sk, skb->ifindex, v6);
    /* Should the assignment itself fail, the stack's own lookup finds the
     * same socket: it is the most specific match for this device. */
    if (ours)
        bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);
    return ours ? 0 : -1;
}

static __always_inline int assign_own_socket(struct __sk_buff *skb, struct iphdr *ip,
                                             struct tcphdr *tcp)
{
    struct bpf_sock_tuple tuple = {};
    tuple.ipv4.saddr = ip->saddr;
    tuple.ipv4.daddr = ip->daddr;
    tuple.ipv4.sport = tcp->source;
    tuple.ipv4.dport = tcp->dest;
    return assign_tuple(skb, &tuple, sizeof(tuple.ipv4), 0, tcp);
}

#if MD6_COUNT > 0
static __always_inline int assign_own_socket6(struct __sk_buff *skb, struct ipv6hdr *ip6,
                                              struct tcphdr *tcp)
{
    struct bpf_sock_tuple tuple = {};
    __builtin_memcpy(tuple.ipv6.saddr, &ip6->saddr, 16);
    __builtin_memcpy(tuple.ipv6.daddr, &ip6->daddr, 16);
    tuple.ipv6.sport = tcp->source;
    tuple.ipv6.dport = tcp->dest;
    return assign_tuple(skb, &tuple, sizeof(tuple.ipv6), 1, tcp);
}
#endif

/* Steer a segment from an enabled tap to the tap's own socket (`assigned`:
 * what assign_own_socket[6] said), routed or bridged alike: readdressed to
 * 01:80:c2:00:00:02, a bridge passes it back as received on the tap (see
 * the top of this file). */
static __always_inline int steer(struct __sk_buff *skb, int assigned, struct ethhdr *eth,
                                 struct iphdr *ip, struct ipv6hdr *ip6, struct tcphdr *tcp,
                                 struct steer_target *tgt, struct tap_stats *st)
{
    if (assigned < 0) {
        COUNT(st, no_listener);
        /* No socket on this tap (daemon killed, or its listener closed): the
         * RST the stack would send for a closed port, straight back out, so
         * the guest fails at once instead of retransmitting into nothing. A
         * listener handed over across a restart (listeners.py) still exists,
         * so restarts never get here. */
#if MD6_COUNT > 0
        if (ip6)
            return send_rst6(skb, eth, ip6, tcp);
#endif
        if (!ip || ip->ihl * 4 != sizeof(*ip))
            return TC_ACT_SHOT;
        return send_rst(skb, eth, ip, tcp);
    }
    if (set_bypass_dst(skb) < 0)
        return TC_ACT_SHOT;
    /* The mark makes the metadata address local (policy routing, routing.py). */
    skb->mark = tgt->mark;
    /* The ARP reply gave a MAC that is not the device's: without this the
     * stack drops the frame as PACKET_OTHERHOST. */
    bpf_skb_change_type(skb, PACKET_HOST);
    COUNT(st, steered);
    return TC_ACT_OK;
}

/* ---- host input filter ---------------------------------------------------
 *
 * Guests must not reach services of the node through it, on any address the
 * node owns (the tap's, other interfaces', loopback, broadcast, multicast),
 * except what the nft datapath's input chain lets through as well: ICMP and
 * ICMPv6 (so ND works), replies on connections the host opened, and the
 * configured UDP/TCP ports. "Would the node deliver this to itself?" is
 * answered by the kernel's own routing decision, bpf_fib_lookup with the tap
 * as ingress device and the full rule set (not BPF_FIB_LOOKUP_DIRECT, which
 * reads the main table only and so misses the local one): a fixed cost per
 * packet, whatever the number of taps. Its answers, checked on 6.18:
 *   NOT_FWDED     a local or broadcast route, no route at all, and (IPv6)
 *                 any link-local or multicast source or destination;
 *   FWD_DISABLED  forwarding is off on the tap: only local delivery remains;
 *   anything else the stack forwards the packet or drops it itself.
 * Both "not forwarded" answers are treated as host input: either the node
 * takes the packet, or the stack would drop it anyway (for "no route" the
 * guest then misses the ICMP unreachable the node would send). IPv4 limited
 * broadcast and multicast are delivered locally without being a route the
 * lookup reports, so they are host input by address.
 *
 * Bridge ports: a frame the program lets go is the bridge's. The bridge
 * passes up to the node (IP input device: the bridge) a unicast frame to a
 * local FDB entry, the bridge's own MAC or a port's (pkt_type HOST here when
 * it is this tap's MAC; the bridge sets HOST for its own MAC after us, and
 * the IP layer drops the other ports' as OTHERHOST), and a copy of every
 * broadcast and multicast frame, which it floods to the other ports too.
 * Unicast to any other MAC is a neighbour's (another guest's) and is left
 * alone, whatever its IP destination: forwarding may be off on the bridge,
 * or the guests' addresses unknown to the node. For the others the lookup is
 * made as if the packet came in on the bridge, so the bridge's addresses and
 * every other local one are found as on a routed tap. Not allowed: unicast is
 * dropped; broadcast and multicast are made PACKET_OTHERHOST, which the
 * bridge still floods to the other ports (it goes by the address) but the IP
 * layer drops for the node, so guests on one bridge still hear each other's
 * DHCP, ARP-less discovery and the like.
 */

#define ALLOW_KEY(proto, port) (((__u32)(proto) << 16) | (port))
#define TCP_FLAG_SYN_BYTE 0x02  /* in byte 13 of the TCP header */
#define TCP_FLAG_ACK_BYTE 0x10

static __always_inline int fib_says_host(struct __sk_buff *skb, struct bpf_fib_lookup *p,
                                         __u32 ifindex)
{
    p->ifindex = ifindex;
    long rc = bpf_fib_lookup(skb, p, sizeof(*p), 0);
    if (rc < 0)
        return 1;  /* cannot tell: fail closed */
    return rc == BPF_FIB_LKUP_RET_NOT_FWDED || rc == BPF_FIB_LKUP_RET_FWD_DISABLED;
}

static __always_inline int port_allowed(__u8 proto, __be16 dport)
{
    __u32 key = ALLOW_KEY(proto, bpf_ntohs(dport));
    return host_allow.lookup(&key) != 0;
}

/* A reply on a connection the host opened (or one a guest opened to an
 * allowed port): a TCP socket of this exact 4-tuple that is not a listener,
 * or a UDP socket connected to the sender. A pure SYN never qualifies: no
 * reply is one, and a SYN that meets a TIME-WAIT socket may open a new
 * connection to a listener. */
static __always_inline int host_connection(struct __sk_buff *skb, __u8 proto, __u32 l4off,
                                           struct bpf_sock_tuple *tuple, __u32 len)
{
    if (proto == IPPROTO_TCP) {
        __u8 flags;
        if (bpf_skb_load_bytes(skb, l4off + 13, &flags, sizeof(flags)) < 0 ||
            (flags & (TCP_FLAG_SYN_BYTE | TCP_FLAG_ACK_BYTE)) == TCP_FLAG_SYN_BYTE)
            return 0;
        struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, tuple, len, BPF_F_CURRENT_NETNS, 0);
        if (!sk)
            return 0;
        int established = sk->state != BPF_TCP_LISTEN;
        bpf_sk_release(sk);
        return established;
    }
    struct bpf_sock *sk = bpf_sk_lookup_udp(skb, tuple, len, BPF_F_CURRENT_NETNS, 0);
    if (!sk)
        return 0;
    int connected = sk->dst_port != 0;
    bpf_sk_release(sk);
    return connected;
}

/* Verdict for a packet the node would deliver to itself. `l4off` is where
 * the transport header starts; `tuple` has the addresses filled in; `group`:
 * a bridge port's broadcast/multicast frame (see "Bridge ports" above). */
static __always_inline int host_verdict(struct __sk_buff *skb, __u8 proto, __u32 l4off,
                                        __u32 l4end, struct bpf_sock_tuple *tuple,
                                        __u32 tuple_len, __be16 *sport, __be16 *dport,
                                        int group)
{
    if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6)
        return TC_ACT_OK;
    if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
        __be16 ports[2];
        if (l4off + sizeof(ports) <= l4end &&
            bpf_skb_load_bytes(skb, l4off, ports, sizeof(ports)) == 0) {
            if (port_allowed(proto, ports[1]))
                return TC_ACT_OK;
            *sport = ports[0];
            *dport = ports[1];
            if (host_connection(skb, proto, l4off, tuple, tuple_len))
                return TC_ACT_OK;
        }
    }
    struct tap_stats *st = stats_for(skb->ifindex);
    COUNT(st, host_input);
    if (group)  /* the node's copy only: the other ports still get theirs */
        return bpf_skb_change_type(skb, PACKET_OTHERHOST) < 0 ? TC_ACT_SHOT : TC_ACT_OK;
    return TC_ACT_SHOT;
}

/* Where the IP layer would take this frame in, for the FIB lookup: the tap,
 * its bridge, or 0 when the frame never reaches the node's IP layer (a
 * bridge port's unicast to another station). *group is set for a bridge
 * port's broadcast/multicast frame. One hash lookup per frame. */
static __always_inline __u32 input_device(struct __sk_buff *skb, int *group)
{
    __u32 ifindex = skb->ifindex;
    *group = 0;
    struct bridge_port *bp = bridge_ports.lookup(&ifindex);
    if (!bp)
        return ifindex;
    if (skb->pkt_type == PACKET_BROADCAST || skb->pkt_type == PACKET_MULTICAST) {
        *group = 1;
        return bp->bridge_ifindex;
    }
    if (skb->pkt_type == PACKET_HOST)  /* this tap's MAC: a local FDB entry */
        return bp->bridge_ifindex;
    __u8 dst[ETH_ALEN];
    if (bpf_skb_load_bytes(skb, 0, dst, ETH_ALEN) < 0)
        return 0;
    /* (no memcmp: it would be a library call) */
    __u8 diff = 0;
#pragma unroll
    for (int i = 0; i < ETH_ALEN; i++)
        diff |= dst[i] ^ bp->bridge_mac[i];
    return diff ? 0 : bp->bridge_ifindex;
}

static __always_inline int ipv4_host_input(struct __sk_buff *skb, struct iphdr *ip)
{
    __u32 ihl = ip->ihl * 4;
    if (ip->version != 4 || ihl < sizeof(*ip) || bpf_ntohs(ip->tot_len) < ihl)
        return TC_ACT_OK;  /* the stack drops a bad header itself */
    /* A later fragment reaches no socket without its first fragment, which
     * is judged here like a whole datagram. */
    if (ip->frag_off & bpf_htons(IP_OFFSET))
        return TC_ACT_OK;
    int group;
    __u32 input = input_device(skb, &group);
    if (!input)
        return TC_ACT_OK;

    __u32 daddr = bpf_ntohl(ip->daddr);
    int host = daddr == 0xFFFFFFFFu || (daddr & 0xF0000000u) == 0xE0000000u ||
               (daddr & 0xFF000000u) == 0;
    if (!host) {
        struct bpf_fib_lookup p = {};
        p.family = AF_INET;
        p.tos = ip->tos;
        p.l4_protocol = ip->protocol;
        p.ipv4_src = ip->saddr;
        p.ipv4_dst = ip->daddr;
        host = fib_says_host(skb, &p, input);
    }
    if (!host)
        return TC_ACT_OK;

    struct bpf_sock_tuple tuple = {};
    tuple.ipv4.saddr = ip->saddr;
    tuple.ipv4.daddr = ip->daddr;
    return host_verdict(skb, ip->protocol, sizeof(struct ethhdr) + (ihl & 0x3f),
                        sizeof(struct ethhdr) + bpf_ntohs(ip->tot_len), &tuple,
                        sizeof(tuple.ipv4), &tuple.ipv4.sport, &tuple.ipv4.dport, group);
}

/* A TCP segment to a metadata address, header checked, either family: the
 * tap's steering target, or NULL when it is not to be steered, with
 * *refuse set when the tap is refused (the caller answers with a RST) and
 * clear when it is dropped (another port, or a SYN over the tap's rate). */
static __always_inline struct steer_target *admit_tcp(__u32 ifindex, struct tcphdr *tcp,
                                                      struct tap_stats *st, int *refuse)
{
    *refuse = 0;
    if (tcp->dest != bpf_htons(METADATA_PORT)) {
        COUNT(st, dropped);
        return NULL;
    }
    struct steer_target *tgt = enabled.lookup(&ifindex);
    if (!tgt) {
        COUNT(st, refused);
        *refuse = 1;
        return NULL;
    }
    if (tcp->syn && !tcp->ack) {
        __u32 zero = 0;
        struct dp_config *cfg = config.lookup(&zero);
        if (cfg && !syn_allowed(ifindex, cfg)) {
            COUNT(st, syn_limited);
            return NULL;
        }
    }
    return tgt;
}

/* IPv6 extension header, as far as skipping it needs. */
struct ipv6_ext {
    __u8 nexthdr;
    __u8 len;        /* in 8-octet units, not counting the first 8 */
    __be16 frag_off; /* fragment header only: offset << 3 | flags */
};

#if MD6_COUNT > 0
/* TCP to an IPv6 metadata address, as handle_ipv4 past its address test.
 * Extension headers (fragments included) are not walked: such a request is
 * dropped, as are fragments in IPv4. */
static __always_inline int handle_metadata6(struct __sk_buff *skb, struct ethhdr *eth,
                                            struct ipv6hdr *ip6)
{
    __u32 ifindex = skb->ifindex;
    struct tap_stats *st = stats_for(ifindex);
    if (skb->vlan_present || ip6->nexthdr != IPPROTO_TCP) {
        COUNT(st, dropped);
        return TC_ACT_SHOT;
    }
    struct tcphdr tcp;
    if (bpf_skb_load_bytes(skb, sizeof(*eth) + sizeof(*ip6), &tcp, sizeof(tcp)) < 0 ||
        tcp.doff < 5 || bpf_ntohs(ip6->payload_len) < tcp.doff * 4) {
        COUNT(st, malformed);
        return TC_ACT_SHOT;
    }
    int refuse;
    struct steer_target *tgt = admit_tcp(ifindex, &tcp, st, &refuse);
    if (!tgt)
        return refuse ? send_rst6(skb, eth, ip6, &tcp) : TC_ACT_SHOT;
    return steer(skb, assign_own_socket6(skb, ip6, &tcp), eth, NULL, ip6, &tcp, tgt, st);
}
#endif

static __always_inline int handle_ipv6(struct __sk_buff *skb, struct ethhdr *eth)
{
    struct ipv6hdr ip6;
    if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr), &ip6, sizeof(ip6)) < 0 ||
        ip6.version != 6)
        return TC_ACT_OK;  /* the stack drops it itself */
#if MD6_COUNT > 0
    if (ip6.nexthdr == IPPROTO_ICMPV6) {
        int nd = handle_nd(skb, eth, &ip6);
        if (nd != ND_NOT_OURS)
            return nd;
    }
    if (is_md6(ip6.daddr.in6_u.u6_addr32))
        return handle_metadata6(skb, eth, &ip6);
#endif
    int group;
    __u32 input = input_device(skb, &group);
    if (!input)
        return TC_ACT_OK;

    struct bpf_fib_lookup p = {};
    p.family = AF_INET6;
    p.l4_protocol = ip6.nexthdr;
    __builtin_memcpy(p.ipv6_src, &ip6.saddr, sizeof(p.ipv6_src));
    __builtin_memcpy(p.ipv6_dst, &ip6.daddr, sizeof(p.ipv6_dst));
    if (!fib_says_host(skb, &p, input))
        return TC_ACT_OK;

    __u8 proto = ip6.nexthdr;
    __u32 off = sizeof(struct ethhdr) + sizeof(ip6);
    __u32 end = off + bpf_ntohs(ip6.payload_len);
#pragma unroll
    for (int i = 0; i < IPV6_EXT_MAX; i++) {
        if (proto != IPPROTO_HOPOPTS && proto != IPPROTO_ROUTING &&
            proto != IPPROTO_DSTOPTS && proto != IPPROTO_FRAGMENT)
            break;
        struct ipv6_ext ext;
        if (bpf_skb_load_bytes(skb, off, &ext, sizeof(ext)) < 0)
            break;  /* truncated: judged (and dropped) below */
        if (proto == IPPROTO_FRAGMENT) {
            if (ext.frag_off & bpf_htons(0xFFF8))
                return TC_ACT_OK;  /* a later fragment: see ipv4_host_input */
            off += 8;
        } else {
            off += (ext.len + 1) * 8;
        }
        proto = ext.nexthdr;
    }

    struct bpf_sock_tuple tuple = {};
    __builtin_memcpy(tuple.ipv6.saddr, &ip6.saddr, sizeof(tuple.ipv6.saddr));
    __builtin_memcpy(tuple.ipv6.daddr, &ip6.daddr, sizeof(tuple.ipv6.daddr));
    return host_verdict(skb, proto, off, end, &tuple, sizeof(tuple.ipv6),
                        &tuple.ipv6.sport, &tuple.ipv6.dport, group);
}

static __always_inline int handle_ipv4(struct __sk_buff *skb, struct ethhdr *eth)
{
    struct iphdr ip;
    __u32 ifindex = skb->ifindex;

    if (bpf_skb_load_bytes(skb, sizeof(*eth), &ip, sizeof(ip)) < 0) {
        /* Cannot even see the destination: the stack would drop it too. */
        struct tap_stats *st = stats_for(ifindex);
        COUNT(st, malformed);
        return TC_ACT_SHOT;
    }
    if (ip.daddr != METADATA_ADDR)
        return ipv4_host_input(skb, &ip);

    struct tap_stats *st = stats_for(ifindex);
    if (skb->vlan_present) {
        COUNT(st, dropped);
        return TC_ACT_SHOT;
    }
    __u32 ihl = ip.ihl * 4;
    if (ip.version != 4 || ihl < sizeof(ip) || bpf_ntohs(ip.tot_len) < ihl) {
        COUNT(st, malformed);
        return TC_ACT_SHOT;
    }
    /* Metadata requests are tiny: any fragment is malformed or hostile. */
    if (ip.frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
        COUNT(st, malformed);
        return TC_ACT_SHOT;
    }
    if (ip.protocol != IPPROTO_TCP) {
        COUNT(st, dropped);
        return TC_ACT_SHOT;
    }

    struct tcphdr tcp;
    /* ihl is at most 60: constant-bounded offset for the verifier. */
    if (bpf_skb_load_bytes(skb, sizeof(*eth) + (ihl & 0x3f), &tcp, sizeof(tcp)) < 0 ||
        tcp.doff < 5 || bpf_ntohs(ip.tot_len) < ihl + tcp.doff * 4) {
        COUNT(st, malformed);
        return TC_ACT_SHOT;
    }
    int refuse;
    struct steer_target *tgt = admit_tcp(ifindex, &tcp, st, &refuse);
    if (!tgt) {
        /* A RST needs a plain header to rewrite; with IP options, drop. */
        if (refuse && ihl == sizeof(ip))
            return send_rst(skb, eth, &ip, &tcp);
        return TC_ACT_SHOT;
    }
    return steer(skb, assign_own_socket(skb, &ip, &tcp), eth, &ip, NULL, &tcp, tgt, st);
}

int tap_ingress(struct __sk_buff *skb)
{
    struct ethhdr eth;

    /* Seen by the program (ebpf_guard.py); an operator's low bits are kept.
     * (The barrier keeps clang from narrowing this to a one-byte store,
     * which the verifier refuses on the context.) */
    __u32 mark = (skb->mark & ~MARK_MASK) | GUEST_MARK_TAG;
    asm volatile("" : "+r"(mark));
    skb->mark = mark;

    if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
        return TC_ACT_OK;  /* runt: not addressed to anything we own */
    if (eth.h_proto == bpf_htons(ETH_P_ARP))
        return handle_arp(skb, &eth);
    if (eth.h_proto == bpf_htons(ETH_P_IP))
        return handle_ipv4(skb, &eth);
    if (eth.h_proto == bpf_htons(ETH_P_IPV6))
        return handle_ipv6(skb, &eth);
    return TC_ACT_OK;
}
