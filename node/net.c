/*
 * The node's sandbox network: one bridge per node (config `bridge`, first address of
 * `network_cidr`), one veth pair per sandbox whose inner end is created directly inside the
 * container's network namespace (made by runc) as eth0, and one nftables table per node.
 *
 * All link and address work is rtnetlink from C (a handful of syscalls, no `ip` processes): the
 * inner end is configured through a netlink socket opened inside the sandbox's namespace (setns
 * there and back on this thread; a netlink socket stays bound to the namespace it was made in).
 * When a container dies its namespace goes, taking the veth pair with it, so detach is only a
 * safety net. Isolation lives in nftables (installed at start, atomically replacing this node's
 * tables): bridged traffic between sandboxes is dropped in a bridge-family table; the node itself
 * accepts nothing a sandbox opens; forwarding denies the node CIDR, the protected addresses and
 * 169.254.169.254, and allows egress (with masquerade) only for addresses in the `internet` set.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/neighbour.h>
#include <linux/veth.h>
#include <pthread.h>
#include <sched.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <nftables/libnftables.h>
#include "common/common.h"
#include "node/internal.h"

typedef struct {
    struct nlmsghdr h;
    char buf[1024];
} nlreq_t;

static int nl_open(void)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0)
        return -errno;
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

static void nl_init(nlreq_t *r, int type, int flags, const void *body, size_t blen)
{
    memset(r, 0, sizeof(*r));
    r->h.nlmsg_len = NLMSG_LENGTH(blen);
    r->h.nlmsg_type = type;
    r->h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    memcpy(NLMSG_DATA(&r->h), body, blen);
}

static struct rtattr *nl_attr(nlreq_t *r, int type, const void *data, size_t len)
{
    struct rtattr *a = (struct rtattr *)((char *)&r->h + NLMSG_ALIGN(r->h.nlmsg_len));
    a->rta_type = type;
    a->rta_len = RTA_LENGTH(len);
    if (len)
        memcpy(RTA_DATA(a), data, len);
    r->h.nlmsg_len = NLMSG_ALIGN(r->h.nlmsg_len) + RTA_ALIGN(a->rta_len);
    return a;
}

static void nl_nest_end(nlreq_t *r, struct rtattr *a)
{
    a->rta_len = (unsigned short)((char *)&r->h + r->h.nlmsg_len - (char *)a);
}

/* Sends one request and waits for its ack: a kernel round trip, microseconds. Returns 0 or -errno. */
static int nl_talk(int fd, nlreq_t *r)
{
    static uint32_t seq;
    r->h.nlmsg_seq = ++seq;
    if (send(fd, &r->h, r->h.nlmsg_len, 0) < 0)
        return -errno;
    char buf[4096];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n);
             h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_seq != r->h.nlmsg_seq)
                continue;
            if (h->nlmsg_type == NLMSG_ERROR)
                return ((struct nlmsgerr *)NLMSG_DATA(h))->error;
        }
    }
}

static int link_up(int fd, int ifindex, int master)
{
    nlreq_t r;
    struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC, .ifi_index = ifindex, .ifi_change = IFF_UP,
                            .ifi_flags = IFF_UP};
    nl_init(&r, RTM_NEWLINK, 0, &ifi, sizeof(ifi));
    if (master > 0)
        nl_attr(&r, IFLA_MASTER, &master, sizeof(master));
    return nl_talk(fd, &r);
}

static int addr_add(int fd, int ifindex, uint32_t addr_host, int prefix)
{
    nlreq_t r;
    struct ifaddrmsg ifa = {.ifa_family = AF_INET, .ifa_prefixlen = (unsigned char)prefix,
                            .ifa_index = (unsigned)ifindex};
    nl_init(&r, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &ifa, sizeof(ifa));
    uint32_t a = htonl(addr_host);
    nl_attr(&r, IFA_LOCAL, &a, 4);
    nl_attr(&r, IFA_ADDRESS, &a, 4);
    int e = nl_talk(fd, &r);
    return e == -EEXIST ? 0 : e;
}

static int route_default(int fd, int ifindex, uint32_t gw_host)
{
    nlreq_t r;
    struct rtmsg rt = {.rtm_family = AF_INET, .rtm_table = RT_TABLE_MAIN,
                       .rtm_protocol = RTPROT_BOOT, .rtm_scope = RT_SCOPE_UNIVERSE,
                       .rtm_type = RTN_UNICAST};
    nl_init(&r, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &rt, sizeof(rt));
    uint32_t gw = htonl(gw_host);
    nl_attr(&r, RTA_GATEWAY, &gw, 4);
    nl_attr(&r, RTA_OIF, &ifindex, 4);
    int e = nl_talk(fd, &r);
    return e == -EEXIST ? 0 : e;
}

/* Permanent ARP entries both ways: the first SYN to a new sandbox must not wait for ARP (whose
 * first request can be lost while the veth comes up, costing a 1 s retransmit). */
static int neigh_set(int fd, int type, int ifindex, uint32_t addr_host, const uint8_t mac[6])
{
    nlreq_t r;
    struct ndmsg nd = {.ndm_family = AF_INET, .ndm_ifindex = ifindex, .ndm_state = NUD_PERMANENT};
    nl_init(&r, type, type == RTM_NEWNEIGH ? NLM_F_CREATE | NLM_F_REPLACE : 0, &nd, sizeof(nd));
    uint32_t a = htonl(addr_host);
    nl_attr(&r, NDA_DST, &a, 4);
    if (mac != NULL)
        nl_attr(&r, NDA_LLADDR, mac, 6);
    return nl_talk(fd, &r);
}

/* Locally administered MACs: sandboxes 02:00:<IPv4>, the bridge 02:01:<hash of the node id>. */
static void sandbox_mac(uint32_t addr_host, uint8_t mac[6])
{
    mac[0] = 0x02;
    mac[1] = 0x00;
    mac[2] = (uint8_t)(addr_host >> 24);
    mac[3] = (uint8_t)(addr_host >> 16);
    mac[4] = (uint8_t)(addr_host >> 8);
    mac[5] = (uint8_t)addr_host;
}

static void bridge_mac(const char *node_id, uint8_t mac[6])
{
    uint8_t h[32];
    sg_sha256(node_id, strlen(node_id), h);
    mac[0] = 0x02;
    mac[1] = 0x01;
    memcpy(mac + 2, h, 4);
}

static int link_set_mac(int fd, int ifindex, const uint8_t mac[6])
{
    nlreq_t r;
    struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC, .ifi_index = ifindex};
    nl_init(&r, RTM_NEWLINK, 0, &ifi, sizeof(ifi));
    nl_attr(&r, IFLA_ADDRESS, mac, 6);
    return nl_talk(fd, &r);
}

static int link_del(int fd, const char *name)
{
    nlreq_t r;
    struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
    nl_init(&r, RTM_DELLINK, 0, &ifi, sizeof(ifi));
    nl_attr(&r, IFLA_IFNAME, name, strlen(name) + 1);
    return nl_talk(fd, &r);
}

static int run_sync(char *const argv[])
{
    pid_t pid;
    extern char **environ;
    if (posix_spawnp(&pid, argv[0], NULL, NULL, argv, environ) != 0)
        return SG_EIO;
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return SG_EIO;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : SG_EIO;
}

static int valid_cidr4(const char *s, char *out, size_t cap)
{
    char buf[64];
    snprintf(buf, sizeof(buf), "%s", s);
    char *slash = strchr(buf, '/');
    int pl = 32;
    if (slash) {
        *slash = '\0';
        char *end;
        long v = strtol(slash + 1, &end, 10);
        if (*end || v < 0 || v > 32 || slash[1] == '\0')
            return SG_EINVAL;
        pl = (int)v;
    }
    struct in_addr a;
    if (inet_pton(AF_INET, buf, &a) != 1)
        return SG_EINVAL;
    uint32_t h = ntohl(a.s_addr);
    if (pl < 32)
        h &= pl == 0 ? 0 : 0xffffffffu << (32 - pl);
    a.s_addr = htonl(h);
    char d[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &a, d, sizeof(d));
    snprintf(out, cap, "%s/%d", d, pl);
    return 0;
}

static int nft_install(sg__node_t *n)
{
    const sg_node_config_t *c = n->cfg;
    char path[4096];
    snprintf(path, sizeof(path), "%s/nftables.rules", n->state_dir);
    FILE *f = fopen(path, "we");
    if (f == NULL)
        return SG_EIO;
    char net[64], a[INET_ADDRSTRLEN];
    struct in_addr ia = {.s_addr = htonl(n->pool.base)};
    inet_ntop(AF_INET, &ia, a, sizeof(a));
    snprintf(net, sizeof(net), "%s/%u", a, n->pool.prefix);
    const char *br = c->bridge, *t = n->nft_table;
    fprintf(f, "table inet %s {}\ndelete table inet %s\n", t, t);
    fprintf(f, "table inet %s {\n", t);
    fprintf(f, "  set internet { type ipv4_addr; }\n");
    fprintf(f, "  set protected { type ipv4_addr; flags interval; auto-merge; elements = { "
               "169.254.169.254/32");
    for (size_t i = 0; i < c->nprotected; i++) {
        char cidr[64];
        if (valid_cidr4(c->protected_addresses[i], cidr, sizeof(cidr)) == 0)
            fprintf(f, ", %s", cidr);
        else
            sg_log(SG_LOG_WARN, "protected address is not an IPv4 CIDR; sandboxes get no IPv6, "
                                "so it is unreachable anyway",
                   SG_LS("address", c->protected_addresses[i]));
    }
    fprintf(f, " }; }\n");
    fprintf(f, "  chain input { type filter hook input priority 0; policy accept;\n"
               "    iifname \"%s\" ct state established,related accept\n"
               "    iifname \"%s\" drop\n  }\n", br, br);
    fprintf(f, "  chain forward { type filter hook forward priority 0; policy accept;\n"
               "    oifname \"%s\" ct state established,related accept\n"
               "    oifname \"%s\" drop\n"
               "    iifname \"%s\" meta nfproto ipv6 drop\n"
               "    iifname \"%s\" ip daddr @protected drop\n"
               "    iifname \"%s\" ip daddr %s drop\n"
               "    iifname \"%s\" ip saddr @internet accept\n"
               "    iifname \"%s\" drop\n  }\n", br, br, br, br, br, net, br, br);
    fprintf(f, "  chain postrouting { type nat hook postrouting priority 100; policy accept;\n"
               "    ip saddr @internet oifname != \"%s\" masquerade\n  }\n}\n", br);
    fprintf(f, "table bridge %s {}\ndelete table bridge %s\n", t, t);
    fprintf(f, "table bridge %s {\n  chain forward { type filter hook forward priority 0; "
               "policy accept;\n    iifname \"sgv*\" oifname \"sgv*\" drop\n  }\n}\n", t);
    /* Rediscovered sandboxes keep their egress after an agent restart. */
    bool any = false;
    for (sg__sbx_t *s = n->sandboxes; s; s = s->next)
        if (s->internet) {
            if (!any)
                fprintf(f, "add element inet %s internet { ", t);
            fprintf(f, "%s%s", any ? ", " : "", s->addr);
            any = true;
        }
    if (any)
        fprintf(f, " }\n");
    fclose(f);
    char *argv[] = {"nft", "-f", path, NULL};
    return run_sync(argv);
}

int sg__net_setup(sg__node_t *n)
{
    const sg_node_config_t *c = n->cfg;
    int fd = nl_open();
    if (fd < 0)
        return SG_EIO;
    int ret = SG_EIO;
    if (strlen(c->bridge) >= IFNAMSIZ) {
        sg_log(SG_LOG_ERROR, "bridge name too long", SG_LS("bridge", c->bridge));
        goto done;
    }
    nlreq_t r;
    struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
    nl_init(&r, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &ifi, sizeof(ifi));
    nl_attr(&r, IFLA_IFNAME, c->bridge, strlen(c->bridge) + 1);
    struct rtattr *li = nl_attr(&r, IFLA_LINKINFO, NULL, 0);
    nl_attr(&r, IFLA_INFO_KIND, "bridge", 6);
    nl_nest_end(&r, li);
    int e = nl_talk(fd, &r);
    if (e != 0 && e != -EEXIST) {
        sg_log(SG_LOG_ERROR, "bridge create failed", SG_LS("err", strerror(-e)));
        goto done;
    }
    int idx = (int)if_nametoindex(c->bridge);
    n->bridge_addr = sg__addrpool_addr(&n->pool, 1);
    uint8_t bmac[6];
    bridge_mac(c->id, bmac);
    if (idx == 0 || (e = link_set_mac(fd, idx, bmac)) != 0 ||
        (e = addr_add(fd, idx, n->bridge_addr, (int)n->pool.prefix)) != 0 ||
        (e = link_up(fd, idx, 0)) != 0) {
        sg_log(SG_LOG_ERROR, "bridge setup failed", SG_LS("err", strerror(e ? -e : errno)));
        goto done;
    }
    FILE *f = fopen("/proc/sys/net/ipv4/ip_forward", "we");
    if (f == NULL || fputs("1", f) < 0 || fclose(f) != 0) {
        sg_log(SG_LOG_ERROR, "cannot enable ip_forward", SG_LS("err", strerror(errno)));
        goto done;
    }
    if (nft_install(n) != 0) {
        sg_log(SG_LOG_ERROR, "nftables ruleset failed (nft -f)", SG_LS("table", n->nft_table));
        goto done;
    }
    ret = 0;
done:
    close(fd);
    return ret;
}

void sg__net_teardown(sg__node_t *n) { (void)n; }

int sg__net_attach(sg__node_t *n, sg__sbx_t *s, int pid)
{
    int fd = nl_open(), nsfd = -1, self = -1, inner = -1, ret = SG_EIO, e = 0;
    char p[64];
    if (fd < 0)
        return SG_EIO;
    nlreq_t r;
    struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
    nl_init(&r, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &ifi, sizeof(ifi));
    nl_attr(&r, IFLA_IFNAME, s->veth, strlen(s->veth) + 1);
    struct rtattr *li = nl_attr(&r, IFLA_LINKINFO, NULL, 0);
    nl_attr(&r, IFLA_INFO_KIND, "veth", 4);
    struct rtattr *data = nl_attr(&r, IFLA_INFO_DATA, NULL, 0);
    struct rtattr *peer = nl_attr(&r, VETH_INFO_PEER, NULL, 0);
    r.h.nlmsg_len += sizeof(struct ifinfomsg); /* the peer's ifinfomsg, zeroed */
    nl_attr(&r, IFLA_IFNAME, "eth0", 5);
    uint8_t smac[6], bmac[6];
    uint32_t saddr = sg__addrpool_addr(&n->pool, s->addr_idx);
    sandbox_mac(saddr, smac);
    bridge_mac(n->cfg->id, bmac);
    nl_attr(&r, IFLA_ADDRESS, smac, 6);
    uint32_t upid = (uint32_t)pid;
    nl_attr(&r, IFLA_NET_NS_PID, &upid, 4);
    nl_nest_end(&r, peer);
    nl_nest_end(&r, data);
    nl_nest_end(&r, li);
    if ((e = nl_talk(fd, &r)) != 0)
        goto done;
    int hidx = (int)if_nametoindex(s->veth);
    int bidx = (int)if_nametoindex(n->cfg->bridge);
    if (hidx == 0 || bidx == 0 || (e = link_up(fd, hidx, bidx)) != 0 ||
        (e = neigh_set(fd, RTM_NEWNEIGH, bidx, saddr, smac)) != 0)
        goto done;

    snprintf(p, sizeof(p), "/proc/%d/ns/net", pid);
    nsfd = open(p, O_RDONLY | O_CLOEXEC);
    self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (nsfd < 0 || self < 0 || setns(nsfd, CLONE_NEWNET) != 0)
        goto done;
    inner = nl_open();
    if (setns(self, CLONE_NEWNET) != 0) {
        /* Cannot get back: every later socket would land in the sandbox. Fail hard. */
        sg_log(SG_LOG_ERROR, "setns back to the node namespace failed", SG_LS("err", strerror(errno)));
        abort();
    }
    if (inner < 0)
        goto done;
    /* Inside: lo and eth0 up, address, default route via the bridge. Index lookups by name
     * cannot be used here (if_nametoindex would ask this thread's namespace), so ask netlink. */
    struct {
        struct nlmsghdr h;
        struct ifinfomsg i;
        char a[64];
    } q;
    int eth0 = 0;
    memset(&q, 0, sizeof(q));
    q.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg));
    q.h.nlmsg_type = RTM_GETLINK;
    q.h.nlmsg_flags = NLM_F_REQUEST;
    q.h.nlmsg_seq = 1;
    struct rtattr *na = (struct rtattr *)((char *)&q + NLMSG_ALIGN(q.h.nlmsg_len));
    na->rta_type = IFLA_IFNAME;
    na->rta_len = RTA_LENGTH(5);
    memcpy(RTA_DATA(na), "eth0", 5);
    q.h.nlmsg_len = NLMSG_ALIGN(q.h.nlmsg_len) + RTA_ALIGN(na->rta_len);
    if (send(inner, &q, q.h.nlmsg_len, 0) < 0)
        goto done;
    char buf[4096];
    ssize_t k = recv(inner, buf, sizeof(buf), 0);
    for (struct nlmsghdr *h = (struct nlmsghdr *)buf; k > 0 && NLMSG_OK(h, (size_t)k);
         h = NLMSG_NEXT(h, k))
        if (h->nlmsg_type == RTM_NEWLINK)
            eth0 = ((struct ifinfomsg *)NLMSG_DATA(h))->ifi_index;
    if (eth0 == 0)
        goto done;
    if ((e = link_up(inner, 1, 0)) != 0 ||
        (e = addr_add(inner, eth0, sg__addrpool_addr(&n->pool, s->addr_idx), (int)n->pool.prefix)) !=
            0 ||
        (e = link_up(inner, eth0, 0)) != 0 || (e = route_default(inner, eth0, n->bridge_addr)) != 0 ||
        (e = neigh_set(inner, RTM_NEWNEIGH, eth0, n->bridge_addr, bmac)) != 0)
        goto done;
    ret = 0;
done:
    if (ret != 0)
        sg_log(SG_LOG_ERROR, "sandbox network setup failed", SG_LS("sandbox", s->id),
               SG_LS("err", strerror(e ? -e : errno)));
    if (inner >= 0)
        close(inner);
    if (nsfd >= 0)
        close(nsfd);
    if (self >= 0)
        close(self);
    close(fd);
    return ret;
}

void sg__net_detach(sg__node_t *n, sg__sbx_t *s)
{
    int fd = nl_open();
    if (fd < 0)
        return;
    int e = link_del(fd, s->veth);
    if (e != 0 && e != -ENODEV)
        sg_log(SG_LOG_WARN, "veth delete failed", SG_LS("veth", s->veth), SG_LS("err", strerror(-e)));
    int bidx = (int)if_nametoindex(n->cfg->bridge);
    if (bidx > 0 && s->addr[0])
        neigh_set(fd, RTM_DELNEIGH, bidx, sg__addrpool_addr(&n->pool, s->addr_idx), NULL);
    close(fd);
}

/* ---- the egress set: libnftables on the thread pool ---------------------------------------------
 * A create with internet access (E2B's default) adds the sandbox's address to the set: spawning
 * `nft` cost 100+ ms of a start under load, a netlink transaction in process costs about 1 ms.
 * One context for the process: libnftables contexts are not thread-safe, so pool threads take
 * turns. */

static pthread_mutex_t nft_mu = PTHREAD_MUTEX_INITIALIZER;
static struct nft_ctx *nft_ctx;

typedef struct {
    uv_work_t w;
    sg__rt_cb cb;
    void *data;
    char cmd[192];
    char err[160];
    int status;
} nftop_t;

static void nft_work(uv_work_t *w)
{
    nftop_t *o = w->data;
    pthread_mutex_lock(&nft_mu);
    if (nft_ctx == NULL && (nft_ctx = nft_ctx_new(NFT_CTX_DEFAULT)) != NULL) {
        nft_ctx_buffer_output(nft_ctx);
        nft_ctx_buffer_error(nft_ctx);
    }
    o->status = nft_ctx ? nft_run_cmd_from_buffer(nft_ctx, o->cmd) : -1;
    if (o->status != 0) {
        const char *e = nft_ctx ? nft_ctx_get_error_buffer(nft_ctx) : "no libnftables context";
        snprintf(o->err, sizeof(o->err), "%s", e ? e : "");
    }
    pthread_mutex_unlock(&nft_mu);
}

static void nft_done(uv_work_t *w, int status)
{
    nftop_t *o = w->data;
    bool ok = status == 0 && o->status == 0;
    if (!ok)
        sg_log(SG_LOG_WARN, "egress set change failed", SG_LS("cmd", o->cmd), SG_LS("err", o->err));
    o->cb(o->data, ok ? 0 : SG_EIO, ok ? NULL : "nft failed");
    free(o);
}

int sg__net_set_internet(sg__node_t *n, sg__sbx_t *s, bool on, sg__rt_cb cb, void *data)
{
    nftop_t *o = calloc(1, sizeof(*o));
    if (o == NULL)
        return SG_ENOMEM;
    o->cb = cb;
    o->data = data;
    o->w.data = o;
    snprintf(o->cmd, sizeof(o->cmd), "%s element inet %s internet { %s }", on ? "add" : "delete",
             n->nft_table, s->addr);
    if (uv_queue_work(n->loop, &o->w, nft_work, nft_done) != 0) {
        free(o);
        return SG_EIO;
    }
    return 0;
}
