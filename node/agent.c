/*
 * The node agent's core: the sandbox table, the create and delete state machines, rediscovery
 * after a restart, end-of-life expiry, node usage sampling and the child reaper.
 *
 * A sandbox's files live in <state_dir>/sandboxes/<cid>/ (cid = its container's name: the sandbox
 * id, or w-<hex> when it came from the warm pool): meta.json (what the create request set;
 * rewritten atomically), config.json + rootfs/ (the OCI bundle; rootfs is an overlay of the
 * template over upper/ and work/), init.pid, console.log. meta.json exists before any other
 * resource is taken, so a restart finds everything an interrupted create left behind and the
 * address allocation survives restarts (rebuilt from the meta files).
 *
 * Create: folders/meta/upper files/overlay/config.json on the thread pool -> runtime run (create
 * + start in one runc process) -> veth into the new netns (netlink) -> egress set (nft, only with
 * internet) -> poll envd GET /health -> 201. Any failure deletes what was taken.
 *
 * Warm pool: runc and envd's own start cost ~100 ms of a create here, so per warm template the
 * agent keeps up to warm_pool containers running ahead (same steps; envd started with
 * --await-init and a per-container key, answering only /health and /init), refilled on the tick
 * through the runtime's background queue. A create that finds one claims it: meta.json and host
 * files written into its mounted root, cgroup limits and host name set (thread pool) -> egress
 * set -> envd POST /init with the request's env vars and token -> 201. Nothing of a request is in
 * a container before its claim, so pool entries are interchangeable; they are not sandboxes (not
 * listed, not
 * counted), and an agent restart removes them and builds new ones. Delete:
 * runtime delete -> veth -> egress set -> unmount and remove files on the thread pool -> free
 * the address. The agent is a child subreaper: container inits left by `runc create` become its
 * children; a SIGCHLD sweep reaps every zombie child that is not a libuv process handle's.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>
#include "common/common.h"
#include "node/internal.h"
#include "node/node.h"

#define HEALTH_TIMEOUT_MS 20000
#define TICK_MS 250
#define WARM_INFLIGHT 2       /* pool containers being created at once (runc runs one per CPU) */
#define WARM_RETRY_MS 5000    /* pause after a pool container failed, so a broken template idles */

typedef struct sg__create_op {
    sg__node_t *n;
    sg__sbx_t *s;
    sg__create_done_cb cb;
    void *data;
    uint64_t t0, t_prep, t_created, t_net, t_started; /* phase ends, for the start-up log line */
    uv_timer_t timer;
    uv_tcp_t tcp;
    uv_connect_t conn;
    uv_write_t wr;
    char rbuf[16];
    size_t rlen;
    bool healthy;
    int delay_ms;
    int log_fd;
    /* file preparation on the thread pool */
    uv_work_t work;
    char *config; /* config.json text, built on the loop (jansson objects stay on one thread) */
    char *boot;   /* boot file text (env vars, envd token): wiped and freed once written */
    bool warm;    /* filling the warm pool: nobody waits, no boot file; ends once envd answers */
    bool claimed; /* took a warm container: its envd runs and waits for POST /init */
    char *hreq;   /* the request sent to envd instead of GET /health (POST /init), wiped */
    bool answered; /* envd sent a status line */
    const char *why;
    int prep_status;
} create_op_t;

static void sbx_delete_step(sg__sbx_t *s);
static void create_fail(create_op_t *op, int status, const char *msg);
static void health_try(create_op_t *op);

/* ---- small helpers -------------------------------------------------------------------------- */

static char *path_join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *p = malloc(la + lb + 2);
    if (p) {
        memcpy(p, a, la);
        p[la] = '/';
        memcpy(p + la + 1, b, lb + 1);
    }
    return p;
}

static int mkdir_p(const char *path, mode_t mode)
{
    char buf[4096];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, mode) != 0 && errno != EEXIST)
                return SG_EIO;
            *p = '/';
        }
    }
    return mkdir(buf, mode) != 0 && errno != EEXIST ? SG_EIO : 0;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    if (flag == FTW_DP)
        rmdir(p);
    else
        unlink(p);
    return 0;
}

static void rm_rf(const char *path) { nftw(path, rm_entry, 32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT); }

static bool pid_alive(int pid)
{
    if (pid <= 0)
        return false;
    char p[64], buf[256];
    snprintf(p, sizeof(p), "/proc/%d/stat", pid);
    FILE *f = fopen(p, "re");
    if (f == NULL)
        return false;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *rp = strrchr(buf, ')');
    return rp != NULL && rp[1] == ' ' && rp[2] != 'Z' && rp[2] != 'X';
}

static int write_meta(sg__sbx_t *s)
{
    json_t *o = json_pack("{s:s,s:s,s:b,s:s,s:s,s:i,s:i,s:i,s:I,s:I,s:b,s:s,s:s}", "sandboxID",
                          s->id, "containerID", s->cid, "warm", s->warm,
                          "teamID", s->team, "templateID", s->tmpl, "vcpu", s->vcpu, "memoryMB",
                          s->memory_mb, "diskMB", s->disk_mb, "startedAtMs",
                          (json_int_t)s->started_ms, "endAtMs", (json_int_t)s->end_ms, "internet",
                          s->internet, "address", s->addr, "veth", s->veth);
    char *tmp = path_join(s->dir, "meta.json.tmp"), *dst = path_join(s->dir, "meta.json");
    int ret = SG_EIO;
    if (o && tmp && dst && json_dump_file(o, tmp, JSON_COMPACT) == 0 && rename(tmp, dst) == 0)
        ret = 0;
    json_decref(o);
    free(tmp);
    free(dst);
    return ret;
}

sg__sbx_t *sg__node_find(sg__node_t *n, const char *id, size_t len)
{
    for (sg__sbx_t *s = n->sandboxes; s; s = s->next)
        if (strlen(s->id) == len && memcmp(s->id, id, len) == 0)
            return s->state == SBX_DELETING || s->delete_requested ? NULL : s;
    return NULL;
}

static sg__sbx_t *find_any(sg__node_t *n, const char *id)
{
    for (sg__sbx_t *s = n->sandboxes; s; s = s->next)
        if (strcmp(s->id, id) == 0)
            return s;
    return NULL;
}

void sg__node_alloc(const sg__node_t *n, int *vcpu, int *mem, int *count)
{
    *vcpu = *mem = *count = 0;
    for (sg__sbx_t *s = n->sandboxes; s; s = s->next) {
        /* A deleting sandbox still holds its resources until its teardown finishes. */
        *vcpu += s->vcpu;
        *mem += s->memory_mb;
        (*count)++;
    }
}

/* docs/node-api.md knows "running" and "stopped" only: a sandbox still starting is listed as
 * running (its create request is in flight, so the gateway must not reconcile it away). */
static const char *state_name(sg__sbx_state_t st)
{
    return st == SBX_RUNNING || st == SBX_CREATING ? "running" : "stopped";
}

json_t *sg__sbx_json(const sg__sbx_t *s)
{
    return json_pack("{s:s,s:s,s:s,s:s,s:s,s:I,s:I,s:i,s:i,s:i}", "sandboxID", s->id, "teamID",
                     s->team, "templateID", s->tmpl, "address", s->addr, "state",
                     state_name(s->state), "startedAtMs", (json_int_t)s->started_ms, "endAtMs",
                     (json_int_t)s->end_ms, "vcpu", s->vcpu, "memoryMB", s->memory_mb, "diskMB",
                     s->disk_mb);
}

static json_t *templates_json(sg__node_t *n)
{
    json_t *a = json_array();
    DIR *d = opendir(n->templates_dir);
    if (d == NULL)
        return a;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!sg__valid_template_id(e->d_name, strlen(e->d_name)))
            continue;
        char p[4096];
        struct stat st;
        snprintf(p, sizeof(p), "%s/%s/rootfs", n->templates_dir, e->d_name);
        if (stat(p, &st) == 0 && S_ISDIR(st.st_mode))
            json_array_append_new(a, json_string(e->d_name));
    }
    closedir(d);
    return a;
}

json_t *sg__node_info_json(sg__node_t *n)
{
    int v, m, c;
    sg__node_alloc(n, &v, &m, &c);
    json_t *labels = json_object();
    for (size_t i = 0; i < n->cfg->nlabels; i++)
        json_object_set_new(labels, n->cfg->labels[i].key, json_string(n->cfg->labels[i].value));
    int ready = 0, starting = 0;
    for (sg__sbx_t *s = n->warm; s; s = s->next) {
        ready += s->state == SBX_WARM;
        starting += s->state == SBX_WARMING;
    }
    return json_pack("{s:s,s:s,s:{s:i,s:i,s:i},s:{s:i,s:i,s:i},s:{s:f,s:i},s:o,s:o,s:s,s:s,s:{s:i,s:i}}",
                     "nodeID", n->cfg->id, "status", n->draining ? "draining" : "ready",
                     "capacity", "vcpu", n->cap_vcpu, "memoryMB", n->cap_mem_mb, "sandboxes",
                     n->cap_sandboxes, "allocated", "vcpu", v, "memoryMB", m, "sandboxes", c,
                     "usage", "cpuPct", n->usage_cpu_pct, "memUsedMB", (int)n->usage_mem_mb,
                     "templates", templates_json(n), "labels", labels, "agentVersion",
                     SG_NODE_VERSION, "envdVersion", n->envd_version, "warmPool", "ready", ready,
                     "starting", starting);
}

/* ---- create ----------------------------------------------------------------------------------- */

static void link_sbx(sg__node_t *n, sg__sbx_t *s, bool warm)
{
    s->warm = warm;
    if (warm) {
        s->next = n->warm;
        n->warm = s;
    } else {
        s->next = n->sandboxes;
        n->sandboxes = s;
        n->nsandboxes++;
    }
}

static void unlink_sbx(sg__node_t *n, sg__sbx_t *s)
{
    for (sg__sbx_t **pp = s->warm ? &n->warm : &n->sandboxes; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    if (!s->warm)
        n->nsandboxes--;
}

/* A sandbox (warm = false) or warm pool entry (true) whose container and folder are named cid. */
static sg__sbx_t *sbx_new(sg__node_t *n, const char *id, const char *cid, bool warm)
{
    sg__sbx_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    char sub[128];
    snprintf(sub, sizeof(sub), "sandboxes/%s", cid);
    s->dir = path_join(n->state_dir, sub);
    if (s->dir == NULL) {
        free(s);
        return NULL;
    }
    s->node = n;
    snprintf(s->id, sizeof(s->id), "%s", id);
    snprintf(s->cid, sizeof(s->cid), "%s", cid);
    link_sbx(n, s, warm);
    return s;
}

static void set_addr(sg__node_t *n, sg__sbx_t *s, uint32_t idx)
{
    s->addr_idx = idx;
    struct in_addr a = {.s_addr = htonl(sg__addrpool_addr(&n->pool, idx))};
    inet_ntop(AF_INET, &a, s->addr, sizeof(s->addr));
    snprintf(s->veth, sizeof(s->veth), "sgv%x", idx);
}

static int mount_rootfs(sg__node_t *n, sg__sbx_t *s) /* thread pool */
{
    char lower[4096], upper[4096], work[4096], root[4096], opts[12400];
    snprintf(lower, sizeof(lower), "%s/%s/rootfs", n->templates_dir, s->tmpl);
    snprintf(upper, sizeof(upper), "%s/upper", s->dir);
    snprintf(work, sizeof(work), "%s/work", s->dir);
    snprintf(root, sizeof(root), "%s/rootfs", s->dir);
    if (strpbrk(lower, ",:") || strpbrk(s->dir, ",:")) /* would split the mount options */
        return SG_EINVAL;
    snprintf(opts, sizeof(opts), "lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work);
    if (mount("overlay", root, "overlay", MS_NODEV, opts) != 0) {
        sg_log(SG_LOG_ERROR, "overlay mount failed", SG_LS("sandbox", s->id),
               SG_LS("err", strerror(errno)));
        return SG_EIO;
    }
    s->mounted = true;
    return 0;
}

static void on_op_timer_closed(uv_handle_t *h) { free(h->data); }

static void create_finish(create_op_t *op, int status, json_t *body)
{
    if (op->s != NULL)
        op->s->op = NULL;
    if (op->hreq != NULL) {
        explicit_bzero(op->hreq, strlen(op->hreq));
        free(op->hreq);
        op->hreq = NULL;
    }
    if (op->cb != NULL) {
        op->cb(op->data, status, body); /* takes body */
    } else {
        json_decref(body);
    }
    if (op->log_fd >= 0)
        close(op->log_fd);
    uv_close((uv_handle_t *)&op->timer, on_op_timer_closed);
}

static void create_fail(create_op_t *op, int status, const char *msg)
{
    sg__sbx_t *s = op->s;
    /* The runtime's own words (it writes to console.log) go into the log before the files go. */
    char tail[512] = "", p[4096];
    snprintf(p, sizeof(p), "%s/console.log", s->dir);
    FILE *f = fopen(p, "re");
    if (f != NULL) {
        if (fseek(f, -(long)(sizeof(tail) - 1), SEEK_END) != 0)
            rewind(f);
        size_t k = fread(tail, 1, sizeof(tail) - 1, f);
        tail[k] = '\0';
        fclose(f);
    }
    sg_log(SG_LOG_ERROR, op->warm ? "warm container create failed" : "sandbox create failed",
           SG_LS("sandbox", s->id), SG_LS("err", msg), SG_LS("console", tail));
    if (op->warm)
        s->node->warm_retry_ms = sg_now_ms() + WARM_RETRY_MS;
    json_t *body = json_pack("{s:i,s:s}", "code", status, "message", msg);
    create_finish(op, status, body);
    s->state = SBX_STOPPED;
    sg__sbx_delete(s->node, s);
}

static void on_health_retry(uv_timer_t *t) { health_try(t->data); }
static void on_health_attempt_timeout(uv_timer_t *t);

static void on_health_closed(uv_handle_t *h)
{
    create_op_t *op = h->data;
    uv_timer_stop(&op->timer);
    if (op->healthy) {
        sg__sbx_t *s = op->s;
        if (s->delete_requested) {
            create_fail(op, 500, "sandbox deleted while starting");
            return;
        }
        if (op->warm) {
            s->state = SBX_WARM;
            sg_log(SG_LOG_DEBUG, "warm container ready", SG_LS("container", s->cid),
                   SG_LS("template", s->tmpl), SG_LD("ms", (double)(sg_mono_ns() - op->t0) / 1e6));
            create_finish(op, 0, NULL);
            return;
        }
        s->state = SBX_RUNNING;
        sg_log(SG_LOG_INFO, "sandbox started", SG_LS("sandbox", s->id), SG_LS("address", s->addr),
               SG_LD("ms", (double)(sg_mono_ns() - op->t0) / 1e6),
               SG_LD("prep_ms", (double)(op->t_prep - op->t0) / 1e6),
               SG_LD("create_ms", (double)(op->t_created - op->t_prep) / 1e6),
               SG_LD("net_ms", (double)(op->t_net - op->t_created) / 1e6),
               SG_LD("start_ms", (double)(op->t_started - op->t_net) / 1e6),
               SG_LD("health_ms", (double)(sg_mono_ns() - op->t_started) / 1e6));
        json_t *body = json_pack("{s:s,s:s,s:s,s:I}", "sandboxID", s->id, "address", s->addr,
                                 "envdVersion", s->node->envd_version, "startedAtMs",
                                 (json_int_t)s->started_ms);
        create_finish(op, 201, body);
        return;
    }
    if (op->s->delete_requested) {
        create_fail(op, 500, "sandbox deleted while starting");
        return;
    }
    if (op->claimed && op->answered) { /* POST /init is not repeated: envd said no */
        create_fail(op, 500, "envd refused its initialisation");
        return;
    }
    if ((sg_mono_ns() - op->t0) / 1000000 > HEALTH_TIMEOUT_MS) {
        create_fail(op, 500, "envd did not answer GET /health in time");
        return;
    }
    if (!pid_alive(op->s->pid)) {
        create_fail(op, 500, "envd exited during start (see the sandbox's console.log)");
        return;
    }
    uv_timer_start(&op->timer, on_health_retry, (uint64_t)op->delay_ms, 0);
    if (op->delay_ms < 20)
        op->delay_ms *= 2;
}

static void on_health_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    create_op_t *op = h->data;
    *b = uv_buf_init(op->rbuf + op->rlen, (unsigned)(sizeof(op->rbuf) - 1 - op->rlen));
}

static void on_health_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    create_op_t *op = st->data;
    if (nread > 0)
        op->rlen += (size_t)nread;
    if (nread < 0 || op->rlen >= 12) {
        op->rbuf[op->rlen] = '\0';
        op->answered = op->rlen >= 12 && strncmp(op->rbuf, "HTTP/1.", 7) == 0;
        op->healthy = op->answered && op->rbuf[9] == '2';
        uv_read_stop(st);
        if (!uv_is_closing((uv_handle_t *)st))
            uv_close((uv_handle_t *)st, on_health_closed);
    }
}

static void on_health_written(uv_write_t *w, int status)
{
    create_op_t *op = w->data;
    if (status != 0 && !uv_is_closing((uv_handle_t *)&op->tcp))
        uv_close((uv_handle_t *)&op->tcp, on_health_closed);
}

static void on_health_connect(uv_connect_t *c, int status)
{
    create_op_t *op = c->data;
    if (status != 0) {
        if (!uv_is_closing((uv_handle_t *)&op->tcp))
            uv_close((uv_handle_t *)&op->tcp, on_health_closed);
        return;
    }
    uv_timer_start(&op->timer, on_health_attempt_timeout, 2000, 0); /* connected: allow for a busy envd */
    static const char req[] = "GET /health HTTP/1.1\r\nHost: sandbox\r\nConnection: close\r\n\r\n";
    uv_buf_t b = op->hreq ? uv_buf_init(op->hreq, (unsigned)strlen(op->hreq))
                          : uv_buf_init((char *)req, sizeof(req) - 1);
    op->wr.data = op;
    if (uv_write(&op->wr, (uv_stream_t *)&op->tcp, &b, 1, on_health_written) != 0 ||
        uv_read_start((uv_stream_t *)&op->tcp, on_health_alloc, on_health_read) != 0) {
        if (!uv_is_closing((uv_handle_t *)&op->tcp))
            uv_close((uv_handle_t *)&op->tcp, on_health_closed);
    }
}

/* A SYN sent while the new veth was still coming up is lost and TCP would retry only after a
 * second: give each attempt 50 ms, then start over. */
static void on_health_attempt_timeout(uv_timer_t *t)
{
    create_op_t *op = t->data;
    if (!uv_is_closing((uv_handle_t *)&op->tcp)) {
        uv_read_stop((uv_stream_t *)&op->tcp);
        uv_close((uv_handle_t *)&op->tcp, on_health_closed);
    }
}

static void health_try(create_op_t *op)
{
    struct sockaddr_in sa;
    uv_ip4_addr(op->s->addr, SG_ENVD_PORT, &sa);
    op->rlen = 0;
    op->healthy = op->answered = false;
    uv_tcp_init(op->n->loop, &op->tcp);
    op->tcp.data = op;
    op->conn.data = op;
    if (uv_tcp_connect(&op->conn, &op->tcp, (struct sockaddr *)&sa, on_health_connect) != 0) {
        uv_close((uv_handle_t *)&op->tcp, on_health_closed);
        return;
    }
    uv_timer_start(&op->timer, on_health_attempt_timeout, 50, 0);
}

static void on_rt_started(void *data, int status, const char *err)
{
    create_op_t *op = data;
    if (status != 0) {
        create_fail(op, 500, err);
        return;
    }
    op->t_started = sg_mono_ns();
    op->delay_ms = 1;
    health_try(op);
}

/* After the network: start the first process, or (runtime `run`) it is already running. */
static void after_net(create_op_t *op)
{
    if (op->s->delete_requested) {
        create_fail(op, 500, "sandbox deleted while starting");
        return;
    }
    if (op->claimed || op->n->rt->run != NULL) {
        op->t_started = sg_mono_ns();
        op->delay_ms = 1;
        health_try(op);
        return;
    }
    if (op->n->rt->start(op->n->rt, op->s->id, on_rt_started, op) != 0)
        create_fail(op, 500, "runtime start failed");
}

static void on_nft_added(void *data, int status, const char *err)
{
    create_op_t *op = data;
    if (status != 0) {
        create_fail(op, 500, "cannot allow egress for the sandbox (nft)");
        return;
    }
    op->s->nft_added = true;
    after_net(op);
}

static void on_rt_created(void *data, int status, const char *err)
{
    create_op_t *op = data;
    sg__sbx_t *s = op->s;
    sg__node_t *n = op->n;
    if (status != 0) {
        create_fail(op, 500, err);
        return;
    }
    op->t_created = sg_mono_ns();
    char *pf = path_join(s->dir, "init.pid");
    FILE *f = pf ? fopen(pf, "re") : NULL;
    free(pf);
    int pid = 0;
    if (f == NULL || fscanf(f, "%d", &pid) != 1 || pid <= 0) {
        if (f)
            fclose(f);
        create_fail(op, 500, "runtime wrote no pid file");
        return;
    }
    fclose(f);
    s->pid = pid;
    if (s->delete_requested) {
        create_fail(op, 500, "sandbox deleted while starting");
        return;
    }
    if (sg__net_attach(n, s, pid) != 0) {
        create_fail(op, 500, "sandbox network setup failed");
        return;
    }
    op->t_net = sg_mono_ns();
    if (s->internet) {
        if (sg__net_set_internet(n, s, true, on_nft_added, op) != 0)
            create_fail(op, 500, "cannot allow egress for the sandbox (nft)");
        return;
    }
    after_net(op);
}

static void wipe_boot(create_op_t *op)
{
    if (op->boot != NULL) {
        explicit_bzero(op->boot, strlen(op->boot));
        free(op->boot);
        op->boot = NULL;
    }
}

/* Thread pool: the sandbox's folders, meta.json, upper-layer files, overlay mount, config.json and
 * console.log (local file system work kept off the loop). Touches only s's immutable fields. */
static void prep_work(uv_work_t *w)
{
    create_op_t *op = w->data;
    sg__sbx_t *s = op->s;
    char p[4096];
    op->prep_status = SG_EIO;
    op->why = "cannot prepare the sandbox's files";
    if (mkdir_p(s->dir, 0700) != 0 || write_meta(s) != 0)
        return;
    snprintf(p, sizeof(p), "%s/upper", s->dir);
    if ((mkdir(p, 0755) != 0 && errno != EEXIST) || sg__oci_write_files(s, p, op->boot) != 0)
        return;
    snprintf(p, sizeof(p), "%s/work", s->dir);
    if (mkdir(p, 0700) != 0 && errno != EEXIST)
        return;
    snprintf(p, sizeof(p), "%s/rootfs", s->dir);
    if (mkdir(p, 0755) != 0 && errno != EEXIST)
        return;
    op->why = "cannot mount the sandbox's root filesystem";
    if (mount_rootfs(op->n, s) != 0)
        return;
    op->why = "cannot write the OCI bundle";
    snprintf(p, sizeof(p), "%s/config.json", s->dir);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    size_t len = strlen(op->config);
    bool ok = fd >= 0 && write(fd, op->config, len) == (ssize_t)len;
    if (fd >= 0)
        close(fd);
    if (!ok)
        return;
    snprintf(p, sizeof(p), "%s/console.log", s->dir);
    op->log_fd = open(p, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    op->prep_status = 0;
}

static void prep_done(uv_work_t *w, int status)
{
    create_op_t *op = w->data;
    sg__sbx_t *s = op->s;
    sg__node_t *n = op->n;
    wipe_boot(op);
    free(op->config);
    op->config = NULL;
    if (status != 0 || op->prep_status != 0) {
        create_fail(op, 500, status != 0 ? "sandbox preparation canceled" : op->why);
        return;
    }
    if (s->delete_requested) {
        create_fail(op, 500, "sandbox deleted while starting");
        return;
    }
    char pidfile[4096];
    snprintf(pidfile, sizeof(pidfile), "%s/init.pid", s->dir);
    op->t_prep = sg_mono_ns();
    int r = n->rt->run != NULL
                ? n->rt->run(n->rt, s->cid, s->dir, pidfile, op->log_fd, op->warm, on_rt_created, op)
                : n->rt->create(n->rt, s->cid, s->dir, pidfile, op->log_fd, op->warm, on_rt_created,
                                op);
    if (r != 0)
        create_fail(op, 500, "runtime create failed");
}

/* Thread pool: a warm container becomes the sandbox: meta.json, host files into its mounted root,
 * its limits and host name (envd's POST /init follows, on the loop). Touches only s's immutable
 * fields. */
static void claim_work(uv_work_t *w)
{
    create_op_t *op = w->data;
    sg__sbx_t *s = op->s;
    sg__runtime_t *rt = op->n->rt;
    char p[4096], cg[256];
    op->prep_status = SG_EIO;
    op->why = "cannot prepare the sandbox's files";
    snprintf(p, sizeof(p), "%s/rootfs", s->dir);
    if (write_meta(s) != 0 || sg__oci_write_files(s, p, NULL) != 0)
        return;
    op->why = "cannot set the sandbox's limits";
    snprintf(cg, sizeof(cg), "%s/%s", op->n->cgroup_parent, s->cid);
    if (rt->limit(rt, cg, s->vcpu, s->memory_mb) != 0)
        return;
    op->why = "cannot set the sandbox's host name";
    if (rt->set_hostname(rt, s->pid, s->id) != 0)
        return;
    op->prep_status = 0;
}

static void claim_done(uv_work_t *w, int status)
{
    create_op_t *op = w->data;
    wipe_boot(op);
    if (status != 0 || op->prep_status != 0) {
        create_fail(op, 500, status != 0 ? "sandbox preparation canceled" : op->why);
        return;
    }
    if (op->s->delete_requested) {
        create_fail(op, 500, "sandbox deleted while starting");
        return;
    }
    op->t_prep = op->t_created = op->t_net = sg_mono_ns();
    if (op->s->internet) {
        if (sg__net_set_internet(op->n, op->s, true, on_nft_added, op) != 0)
            create_fail(op, 500, "cannot allow egress for the sandbox (nft)");
        return;
    }
    after_net(op);
}

/* A ready warm container of template tmpl whose init still waits, or NULL. Dead ones are
 * removed on the way. */
static sg__sbx_t *warm_take(sg__node_t *n, const char *tmpl)
{
    for (sg__sbx_t *s = n->warm, *next; s; s = next) {
        next = s->next;
        if (s->state != SBX_WARM || strcmp(s->tmpl, tmpl) != 0)
            continue;
        if (!pid_alive(s->pid)) {
            sg_log(SG_LOG_WARN, "warm container died; removing", SG_LS("container", s->cid));
            s->state = SBX_STOPPED;
            sg__sbx_delete(n, s);
            continue;
        }
        unlink_sbx(n, s);
        link_sbx(n, s, false);
        return s;
    }
    return NULL;
}

static create_op_t *op_new(sg__node_t *n, sg__sbx_t *s, sg__create_done_cb cb, void *data)
{
    create_op_t *op = calloc(1, sizeof(*op));
    if (op == NULL)
        return NULL;
    op->n = n;
    op->s = s;
    op->cb = cb;
    op->data = data;
    op->t0 = sg_mono_ns();
    op->log_fd = -1;
    op->work.data = op;
    uv_timer_init(n->loop, &op->timer);
    op->timer.data = op;
    s->op = op;
    return op;
}

/* The op could not be queued: undo it and take the sandbox down. */
static void op_abort(create_op_t *op)
{
    sg__node_t *n = op->n;
    sg__sbx_t *s = op->s;
    free(op->config);
    wipe_boot(op);
    s->op = NULL;
    uv_close((uv_handle_t *)&op->timer, on_op_timer_closed);
    s->state = SBX_STOPPED;
    sg__sbx_delete(n, s);
}

int sg__sbx_create(sg__node_t *n, sg__create_req_t *req, sg__create_done_cb cb, void *data,
                   int *status, char *err, size_t errlen)
{
    if (find_any(n, req->id) != NULL) {
        *status = 409;
        snprintf(err, errlen, "sandbox \"%s\" already exists on this node", req->id);
        return SG_EEXISTS;
    }
    int v, m, c;
    sg__node_alloc(n, &v, &m, &c);
    const char *room = n->draining                           ? "node is draining"
                       : c + 1 > n->cap_sandboxes            ? "no sandbox slots left"
                       : v + req->vcpu > n->cap_vcpu         ? "not enough vCPU"
                       : m + req->memory_mb > n->cap_mem_mb ? "not enough memory"
                                                             : NULL;
    if (room != NULL) {
        *status = 429;
        snprintf(err, errlen, "node has no room: %s", room);
        return SG_ENOROOM;
    }
    *status = 500;
    snprintf(err, errlen, "cannot prepare the sandbox");
    sg__sbx_t *s = n->rt->set_hostname != NULL ? warm_take(n, req->tmpl) : NULL;
    /* The request's env vars and envd token: a boot file for a new container, POST /init for
     * a warm one (its envd already runs). */
    json_t *boot = s ? json_pack("{s:O?,s:s?}", "envVars", req->env, "accessToken", req->token)
                     : json_pack("{s:O?,s:s?}", "env", req->env, "token", req->token);
    char *boot_text = boot ? json_dumps(boot, JSON_COMPACT) : NULL;
    json_decref(boot);
    if (s != NULL && boot_text != NULL) {
        static const char head[] = "POST /init HTTP/1.1\r\nHost: sandbox\r\nConnection: close\r\n"
                                   "Content-Type: application/json\r\nX-Sandgate-Init-Key: %s\r\n"
                                   "Content-Length: %zu\r\n\r\n%s";
        size_t blen = strlen(boot_text), cap = sizeof(head) + sizeof(s->init_key) + 24 + blen;
        char *init = malloc(cap);
        if (init != NULL)
            snprintf(init, cap, head, s->init_key, blen, boot_text);
        explicit_bzero(boot_text, blen);
        free(boot_text);
        boot_text = init;
    }
    if (boot_text == NULL) {
        if (s != NULL) { /* back to the pool's head: it is still good */
            unlink_sbx(n, s);
            link_sbx(n, s, true);
        }
        return SG_ENOMEM;
    }
    if (s == NULL) {
        char tp[4096];
        struct stat st;
        snprintf(tp, sizeof(tp), "%s/%s/rootfs", n->templates_dir, req->tmpl);
        if (stat(tp, &st) != 0 || !S_ISDIR(st.st_mode)) {
            *status = 404;
            snprintf(err, errlen, "template \"%s\" not found on this node", req->tmpl);
            free(boot_text);
            return SG_ENOTFOUND;
        }
        int idx = sg__addrpool_alloc(&n->pool);
        if (idx < 0) {
            *status = 429;
            snprintf(err, errlen, "node has no room: no sandbox addresses left");
            free(boot_text);
            return SG_ENOROOM;
        }
        s = sbx_new(n, req->id, req->id, false);
        if (s == NULL) {
            sg__addrpool_release(&n->pool, (uint32_t)idx);
            free(boot_text);
            return SG_ENOMEM;
        }
        set_addr(n, s, (uint32_t)idx);
    } else {
        snprintf(s->id, sizeof(s->id), "%s", req->id);
    }
    bool claimed = s->state == SBX_WARM;
    snprintf(s->team, sizeof(s->team), "%s", req->team);
    snprintf(s->tmpl, sizeof(s->tmpl), "%s", req->tmpl);
    s->vcpu = req->vcpu;
    s->memory_mb = req->memory_mb;
    s->disk_mb = req->disk_mb;
    s->end_ms = req->end_ms;
    s->started_ms = sg_now_ms();
    s->internet = req->internet;
    s->state = SBX_CREATING;
    create_op_t *op = op_new(n, s, cb, data);
    if (op == NULL) {
        free(boot_text);
        s->state = SBX_STOPPED;
        sg__sbx_delete(n, s);
        return SG_ENOMEM;
    }
    if (claimed)
        op->hreq = boot_text;
    else
        op->boot = boot_text;
    op->claimed = claimed;
    if (!claimed) {
        json_t *cfg = sg__oci_config(n, s);
        op->config = cfg ? json_dumps(cfg, JSON_COMPACT) : NULL;
        json_decref(cfg);
    }
    if ((!claimed && op->config == NULL) ||
        uv_queue_work(n->loop, &op->work, claimed ? claim_work : prep_work,
                      claimed ? claim_done : prep_done) != 0) {
        op_abort(op);
        return SG_EIO;
    }
    return 0;
}

/* ---- warm pool ---------------------------------------------------------------------------- */

static int warm_create(sg__node_t *n, const char *tmpl)
{
    uint8_t r[6];
    char cid[2 + 2 * sizeof(r) + 1] = "w-";
    uint8_t key[16];
    if (sg_rand_bytes(r, sizeof(r)) != 0 || sg_rand_bytes(key, sizeof(key)) != 0)
        return SG_EIO;
    sg_hex_encode(r, sizeof(r), cid + 2);
    int idx = sg__addrpool_alloc(&n->pool);
    if (idx < 0)
        return SG_ENOROOM;
    sg__sbx_t *s = sbx_new(n, cid, cid, true);
    if (s == NULL) {
        sg__addrpool_release(&n->pool, (uint32_t)idx);
        return SG_ENOMEM;
    }
    set_addr(n, s, (uint32_t)idx);
    sg_hex_encode(key, sizeof(key), s->init_key);
    snprintf(s->tmpl, sizeof(s->tmpl), "%s", tmpl);
    /* Sizes until the claim sets the request's; end far away (the tick never expires these). */
    s->vcpu = 1;
    s->memory_mb = 512;
    s->end_ms = INT64_MAX / 2;
    s->state = SBX_WARMING;
    create_op_t *op = op_new(n, s, NULL, NULL);
    if (op == NULL) {
        s->state = SBX_STOPPED;
        sg__sbx_delete(n, s);
        return SG_ENOMEM;
    }
    op->warm = true;
    json_t *cfg = sg__oci_config(n, s);
    op->config = cfg ? json_dumps(cfg, JSON_COMPACT) : NULL;
    json_decref(cfg);
    if (op->config == NULL || uv_queue_work(n->loop, &op->work, prep_work, prep_done) != 0) {
        op_abort(op);
        return SG_EIO;
    }
    return 0;
}

/* On the tick: tops the pool up, a few containers at a time, in the runtime's background queue
 * (behind any start someone waits for and any teardown). */
static void warm_fill(sg__node_t *n)
{
    const sg_node_config_t *cfg = n->cfg;
    if (n->rt->set_hostname == NULL || cfg->warm_pool <= 0 || n->draining ||
        sg_now_ms() < n->warm_retry_ms)
        return;
    int inflight = 0;
    for (sg__sbx_t *s = n->warm; s; s = s->next)
        inflight += s->state == SBX_WARMING;
    static const char *const dflt[] = {"base"};
    const char *const *tmpls = cfg->nwarm_templates ? (const char *const *)cfg->warm_templates : dflt;
    size_t ntmpl = cfg->nwarm_templates ? cfg->nwarm_templates : 1;
    for (size_t i = 0; i < ntmpl && inflight < WARM_INFLIGHT; i++) {
        if (!sg__valid_template_id(tmpls[i], strlen(tmpls[i])))
            continue;
        int have = 0;
        for (sg__sbx_t *s = n->warm; s; s = s->next)
            have += (s->state == SBX_WARMING || s->state == SBX_WARM) &&
                    strcmp(s->tmpl, tmpls[i]) == 0;
        if (have >= cfg->warm_pool)
            continue;
        char tp[4096];
        struct stat st;
        snprintf(tp, sizeof(tp), "%s/%s/rootfs", n->templates_dir, tmpls[i]);
        if (stat(tp, &st) != 0 || !S_ISDIR(st.st_mode))
            continue;
        for (; have < cfg->warm_pool && inflight < WARM_INFLIGHT; have++, inflight++)
            if (warm_create(n, tmpls[i]) != 0) {
                n->warm_retry_ms = sg_now_ms() + WARM_RETRY_MS;
                return;
            }
    }
}

/* ---- delete ----------------------------------------------------------------------------------- */

typedef struct {
    uv_work_t w;
    sg__sbx_t *s;
} rm_work_t;

static void rm_files(uv_work_t *w)
{
    sg__sbx_t *s = ((rm_work_t *)w)->s;
    char p[4096];
    snprintf(p, sizeof(p), "%s/rootfs", s->dir);
    /* After an agent restart in a fresh mount namespace the overlay may be mounted only inside
     * the (now dead) container: EINVAL just means there is nothing to unmount here. */
    if (umount2(p, MNT_DETACH) != 0 && errno != EINVAL && errno != ENOENT)
        sg_log(SG_LOG_WARN, "unmount failed", SG_LS("sandbox", s->id), SG_LS("err", strerror(errno)));
    rm_rf(s->dir);
}

static void sbx_free(sg__sbx_t *s)
{
    sg__node_t *n = s->node;
    unlink_sbx(n, s);
    if (s->addr[0])
        sg__addrpool_release(&n->pool, s->addr_idx);
    free(s->dir);
    free(s);
}

static void on_rm_done(uv_work_t *w, int status)
{
    sg__sbx_t *s = ((rm_work_t *)w)->s;
    free(w);
    sg_log(SG_LOG_INFO, "sandbox deleted", SG_LS("sandbox", s->id));
    sbx_free(s);
}

static void on_nft_removed(void *data, int status, const char *err)
{
    sg__sbx_t *s = data;
    if (status != 0)
        sg_log(SG_LOG_WARN, "egress set removal failed", SG_LS("sandbox", s->id));
    s->nft_added = false;
    sbx_delete_step(s);
}

static void sbx_delete_step(sg__sbx_t *s)
{
    sg__node_t *n = s->node;
    sg__net_detach(n, s);
    if (s->nft_added) {
        s->nft_added = false;
        if (sg__net_set_internet(n, s, false, on_nft_removed, s) == 0)
            return;
    }
    rm_work_t *w = calloc(1, sizeof(*w));
    if (w == NULL || (w->s = s, uv_queue_work(n->loop, &w->w, rm_files, on_rm_done)) != 0) {
        free(w);
        rm_work_t tmp = {.s = s};
        rm_files(&tmp.w);
        sbx_free(s);
    }
}

static void on_rt_deleted(void *data, int status, const char *err)
{
    sg__sbx_t *s = data;
    if (status != 0)
        sg_log(SG_LOG_DEBUG, "runtime delete failed (container may never have existed)",
               SG_LS("sandbox", s->id));
    sbx_delete_step(s);
}

int sg__sbx_delete(sg__node_t *n, sg__sbx_t *s)
{
    if (s->state == SBX_DELETING)
        return 0;
    if (s->op != NULL) { /* the create state machine aborts at its next step */
        s->delete_requested = true;
        return 0;
    }
    s->state = SBX_DELETING;
    if (n->rt->delete(n->rt, s->cid, on_rt_deleted, s) != 0)
        sbx_delete_step(s);
    return 0;
}

int sg__sbx_update_end(sg__node_t *n, sg__sbx_t *s, long long end_ms)
{
    s->end_ms = end_ms;
    return write_meta(s);
}

/* ---- metrics ---------------------------------------------------------------------------------- */

static uint64_t du_total;
static size_t du_count;
static int du_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    if (flag == FTW_F)
        du_total += (uint64_t)st->st_blocks * 512;
    /* Bounded work on the loop: stop counting past 100k entries (the figure is then a floor). */
    return ++du_count > 100000 ? 1 : 0;
}

int sg__sbx_metrics(sg__node_t *n, sg__sbx_t *s, json_t **out)
{
    char cg[256];
    snprintf(cg, sizeof(cg), "%s/%s", n->cgroup_parent, s->cid);
    sg__rt_stats_t st;
    if (n->rt->stats(n->rt, cg, &st) != 0)
        memset(&st, 0, sizeof(st));
    uint64_t now = sg_mono_ns();
    if (s->last_sample_ns != 0 && now > s->last_sample_ns && st.cpu_ns >= s->last_cpu_ns)
        s->cpu_pct = (double)(st.cpu_ns - s->last_cpu_ns) / (double)(now - s->last_sample_ns) /
                     s->vcpu * 100.0;
    s->last_sample_ns = now;
    s->last_cpu_ns = st.cpu_ns;
    char up[4096];
    snprintf(up, sizeof(up), "%s/upper", s->dir);
    du_total = 0;
    du_count = 0;
    nftw(up, du_entry, 16, FTW_PHYS | FTW_MOUNT);
    uint64_t disk_total = (uint64_t)s->disk_mb * 1024 * 1024;
    if (disk_total == 0) {
        struct statvfs sv;
        if (statvfs(n->state_dir, &sv) == 0)
            disk_total = (uint64_t)sv.f_blocks * sv.f_frsize;
    }
    uint64_t mem_total = (uint64_t)s->memory_mb * 1024 * 1024;
    *out = json_pack("{s:I,s:f,s:i,s:I,s:I,s:I,s:I}", "timestampMs", (json_int_t)sg_now_ms(),
                     "cpuUsedPct", s->cpu_pct, "cpuCount", s->vcpu, "memUsed",
                     (json_int_t)st.mem_bytes, "memTotal", (json_int_t)mem_total, "diskUsed",
                     (json_int_t)du_total, "diskTotal", (json_int_t)disk_total);
    return *out ? 0 : SG_ENOMEM;
}

/* ---- rediscovery ---------------------------------------------------------------------------- */

static void rediscover(sg__node_t *n)
{
    char sd[4096];
    snprintf(sd, sizeof(sd), "%s/sandboxes", n->state_dir);
    DIR *d = opendir(sd);
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        /* Folder names are sandbox ids or warm containers' w-<hex> (never a sandbox id: no '-'). */
        const char *name = e->d_name;
        bool wname = strncmp(name, "w-", 2) == 0 && sg__valid_sandbox_id(name + 2, strlen(name + 2));
        if (!wname && !sg__valid_sandbox_id(name, strlen(name)))
            continue;
        char mp[4096 + 300];
        snprintf(mp, sizeof(mp), "%s/%s/meta.json", sd, name);
        json_t *m = json_load_file(mp, 0, NULL);
        const char *id = json_string_value(json_object_get(m, "sandboxID"));
        bool warm = json_is_true(json_object_get(m, "warm")) || (wname && m == NULL);
        if (id == NULL || !sg__valid_sandbox_id(id, strlen(id)) || warm)
            id = name;
        sg__sbx_t *s = sbx_new(n, id, name, warm);
        if (s == NULL) {
            json_decref(m);
            break;
        }
        const char *addr = json_string_value(json_object_get(m, "address"));
        int idx = addr ? sg__addrpool_index(&n->pool, addr) : -1;
        if (idx >= 0 && sg__addrpool_take(&n->pool, (uint32_t)idx) == 0)
            set_addr(n, s, (uint32_t)idx);
        const char *str;
        if ((str = json_string_value(json_object_get(m, "teamID"))))
            snprintf(s->team, sizeof(s->team), "%s", str);
        if ((str = json_string_value(json_object_get(m, "templateID"))))
            snprintf(s->tmpl, sizeof(s->tmpl), "%s", str);
        s->vcpu = (int)json_integer_value(json_object_get(m, "vcpu"));
        s->memory_mb = (int)json_integer_value(json_object_get(m, "memoryMB"));
        s->disk_mb = (int)json_integer_value(json_object_get(m, "diskMB"));
        s->started_ms = json_integer_value(json_object_get(m, "startedAtMs"));
        s->end_ms = json_integer_value(json_object_get(m, "endAtMs"));
        s->internet = json_is_true(json_object_get(m, "internet"));
        json_decref(m);
        int pid = 0;
        /* created-but-not-started is an interrupted create or claim, and any warm container
         * goes: the new pool is built from scratch. */
        int alive = warm ? 0 : n->rt->probe(n->rt, s->cid, &pid);
        if (alive == 1 && s->addr[0] && pid_alive(pid)) {
            s->pid = pid;
            s->state = SBX_RUNNING;
            s->nft_added = s->internet; /* nft_install re-adds the egress set from the list */
            sg_log(SG_LOG_INFO, "sandbox rediscovered", SG_LS("sandbox", s->id),
                   SG_LS("address", s->addr), SG_LI("pid", pid));
        } else {
            /* Interrupted create or a dead container: take it down once the loop runs. */
            s->state = SBX_STOPPED;
            s->internet = false;
            sg_log(SG_LOG_INFO, "stale sandbox found; removing", SG_LS("sandbox", s->id));
        }
    }
    closedir(d);
}

/* ---- loop: tick, signals, reaper ------------------------------------------------------------- */

static void sample_usage(sg__node_t *n)
{
    FILE *f = fopen("/proc/stat", "re");
    if (f != NULL) {
        unsigned long long v[8] = {0};
        if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]) == 8) {
            uint64_t total = 0, idle = v[3] + v[4];
            for (int i = 0; i < 8; i++)
                total += v[i];
            if (n->last_cpu_total && total > n->last_cpu_total)
                n->usage_cpu_pct = 100.0 * (1.0 - (double)(idle - n->last_cpu_idle) /
                                                      (double)(total - n->last_cpu_total));
            n->last_cpu_total = total;
            n->last_cpu_idle = idle;
        }
        fclose(f);
    }
    f = fopen("/proc/meminfo", "re");
    if (f != NULL) {
        char line[256];
        long total = 0, avail = 0;
        while (fgets(line, sizeof(line), f)) {
            sscanf(line, "MemTotal: %ld kB", &total);
            sscanf(line, "MemAvailable: %ld kB", &avail);
        }
        fclose(f);
        n->usage_mem_mb = (total - avail) / 1024;
    }
}

static void on_tick(uv_timer_t *t)
{
    sg__node_t *n = t->data;
    static unsigned ticks;
    long long now = sg_now_ms();
    for (sg__sbx_t *s = n->sandboxes, *next; s; s = next) {
        next = s->next;
        if (s->state == SBX_RUNNING && !pid_alive(s->pid)) {
            sg_log(SG_LOG_WARN, "sandbox stopped (its envd exited)", SG_LS("sandbox", s->id));
            s->state = SBX_STOPPED;
        }
        if ((s->state == SBX_RUNNING || s->state == SBX_STOPPED) &&
            now > s->end_ms + n->cfg->sandbox_grace_ms) {
            sg_log(SG_LOG_INFO, "sandbox past its end time; killing", SG_LS("sandbox", s->id));
            sg__sbx_delete(n, s);
        }
    }
    if (ticks++ % (1000 / TICK_MS) == 0)
        sample_usage(n);
    warm_fill(n);
}

static void walk_pid(uv_handle_t *h, void *arg)
{
    int *pid = arg;
    if (h->type == UV_PROCESS && ((uv_process_t *)h)->pid == *pid)
        *pid = 0;
}

static void on_sigchld(uv_signal_t *sig, int signum)
{
    /* Children listed by the kernel; libuv's own process handles are left to libuv. */
    char p[64];
    snprintf(p, sizeof(p), "/proc/self/task/%d/children", (int)getpid());
    FILE *f = fopen(p, "re");
    if (f == NULL)
        return;
    int pid;
    while (fscanf(f, "%d", &pid) == 1) {
        int check = pid;
        uv_walk(sig->loop, walk_pid, &check);
        if (check != 0) {
            int st;
            waitpid(pid, &st, WNOHANG);
        }
    }
    fclose(f);
}

static void on_stop_signal(uv_signal_t *sig, int signum)
{
    sg_log(SG_LOG_INFO, "stopping (sandboxes keep running)", SG_LI("signal", signum));
    uv_stop(sig->loop);
}

static void close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* ---- start-up ------------------------------------------------------------------------------- */

static char *abs_path(const char *p)
{
    char *r = realpath(p, NULL);
    return r ? r : strdup(p);
}

static int detect_capacity(sg__node_t *n)
{
    const sg_node_config_t *c = n->cfg;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    long mem_mb = (long)(sysconf(_SC_PHYS_PAGES) / 1024 * sysconf(_SC_PAGESIZE) / 1024);
    n->cap_vcpu = c->capacity.vcpu > 0 ? c->capacity.vcpu : (int)cpus - c->capacity.reserve_vcpu;
    n->cap_mem_mb = c->capacity.memory_mb > 0 ? c->capacity.memory_mb
                                              : (int)mem_mb - c->capacity.reserve_memory_mb;
    n->cap_sandboxes = c->capacity.max_sandboxes;
    if (n->cap_vcpu < 1 || n->cap_mem_mb < 64)
        return SG_EINVAL;
    return 0;
}

static int envd_version(sg__node_t *n)
{
    char cmd[4200];
    snprintf(cmd, sizeof(cmd), "%s/sandgate-envd", n->envd_path);
    if (access(cmd, X_OK) != 0) {
        sg_log(SG_LOG_ERROR, "envd not found or not executable", SG_LS("path", cmd));
        return SG_ENOTFOUND;
    }
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        return SG_EIO;
    /* The bundle's binary names /opt/sandgate/lib/ld-linux... as its interpreter (its path in a
     * sandbox); on the host it runs through the bundled loader with the bundled libraries. */
    char loader[4200], libdir[4200];
    snprintf(loader, sizeof(loader), "%s/lib/ld-linux-x86-64.so.2", n->envd_path);
    snprintf(libdir, sizeof(libdir), "%s/lib", n->envd_path);
    bool bundled = access(loader, X_OK) == 0;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        if (bundled)
            execl(loader, loader, "--library-path", libdir, cmd, "--version", (char *)NULL);
        else
            execl(cmd, cmd, "--version", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    char buf[256];
    ssize_t k, len = 0;
    while (len < (ssize_t)sizeof(buf) - 1 &&
           (k = read(fds[0], buf + len, sizeof(buf) - 1 - (size_t)len)) > 0)
        len += k;
    close(fds[0]);
    int st = 0;
    if (pid > 0)
        waitpid(pid, &st, 0);
    buf[len] = '\0';
    /* Accept "0.5.7" or "sandgate-envd 0.5.7": keep the last word of the first line. */
    buf[strcspn(buf, "\r\n")] = '\0';
    char *v = strrchr(buf, ' ');
    v = v ? v + 1 : buf;
    if (pid <= 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0 || *v == '\0') {
        sg_log(SG_LOG_ERROR, "envd --version failed", SG_LS("path", cmd));
        return SG_EIO;
    }
    snprintf(n->envd_version, sizeof(n->envd_version), "%.63s", v);
    return 0;
}

int sg_node_run(const sg_node_config_t *cfg)
{
    sg__node_t node = {.cfg = cfg}, *n = &node;
    int ret = SG_EIO;
    uv_loop_t loop;
    uv_loop_init(&loop);
    n->loop = &loop;
    /* Orphans (container inits left by `runc create`) reparent to us, not to PID 1. */
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);
    /* Proxied connections need descriptors, and runc can only give sandboxes a file limit up to
     * the one it inherits from here. */
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max; /* raising the hard limit needs CAP_SYS_RESOURCE: do not try */
    setrlimit(RLIMIT_NOFILE, &rl);

    n->state_dir = abs_path(cfg->state_dir);
    n->templates_dir = abs_path(cfg->templates_dir);
    n->envd_path = abs_path(cfg->envd_path);
    snprintf(n->nft_table, sizeof(n->nft_table), "sgnode_");
    for (const char *p = cfg->id; *p && strlen(n->nft_table) < 60; p++) {
        size_t l = strlen(n->nft_table);
        n->nft_table[l] = (*p == '.' || *p == '-') ? '_' : *p;
        n->nft_table[l + 1] = '\0';
    }
    snprintf(n->cgroup_parent, sizeof(n->cgroup_parent), "/sandgate/%s", cfg->id);
    char sub[4096], runc_root[4096];
    snprintf(sub, sizeof(sub), "%s/sandboxes", n->state_dir);
    snprintf(runc_root, sizeof(runc_root), "%s/runc", n->state_dir);
    if (mkdir_p(sub, 0700) != 0 || mkdir_p(runc_root, 0700) != 0) {
        sg_log(SG_LOG_ERROR, "cannot create the state folder", SG_LS("path", n->state_dir));
        goto done;
    }
    if (detect_capacity(n) != 0) {
        sg_log(SG_LOG_ERROR, "no capacity left after reserves");
        goto done;
    }
    if (envd_version(n) != 0)
        goto done;
    if (sg__addrpool_init(&n->pool, cfg->network_cidr) != 0) {
        sg_log(SG_LOG_ERROR, "network_cidr must be an IPv4 CIDR /8../29",
               SG_LS("network_cidr", cfg->network_cidr));
        goto done;
    }
    const char *rt_path = cfg->runtime_path && *cfg->runtime_path ? cfg->runtime_path : "runc";
    char found[4096];
    if (strchr(rt_path, '/') == NULL) { /* uv_spawn does PATH lookup, but log the real one */
        snprintf(found, sizeof(found), "/usr/sbin/%s", rt_path);
        if (access(found, X_OK) != 0)
            snprintf(found, sizeof(found), "/usr/bin/%s", rt_path);
        rt_path = found;
    }
    if (cfg->runtime && strcmp(cfg->runtime, "runc") != 0 && strcmp(cfg->runtime, "crun") != 0) {
        sg_log(SG_LOG_ERROR, "unknown runtime", SG_LS("runtime", cfg->runtime));
        goto done;
    }
    /* crun takes the same command line as runc for every operation used here. */
    n->rt = sg__runtime_runc_new(&loop, rt_path, runc_root);
    if (n->rt == NULL)
        goto done;
    rediscover(n);
    if (sg__net_setup(n) != 0)
        goto done;
    if (sg__api_start(n) != 0 || sg__proxy_start(n) != 0)
        goto done;
    if (sg__registry_start(n) != 0)
        goto done;
    for (sg__sbx_t *s = n->sandboxes, *next; s; s = next) {
        next = s->next;
        if (s->state == SBX_STOPPED)
            sg__sbx_delete(n, s);
    }
    for (sg__sbx_t *s = n->warm, *next; s; s = next) { /* the previous agent's pool */
        next = s->next;
        sg__sbx_delete(n, s);
    }
    uv_timer_init(&loop, &n->tick);
    n->tick.data = n;
    uv_timer_start(&n->tick, on_tick, TICK_MS, TICK_MS);
    uv_signal_init(&loop, &n->sigterm);
    uv_signal_init(&loop, &n->sigint);
    uv_signal_init(&loop, &n->sigchld);
    uv_signal_start(&n->sigterm, on_stop_signal, SIGTERM);
    uv_signal_start(&n->sigint, on_stop_signal, SIGINT);
    uv_signal_start(&n->sigchld, on_sigchld, SIGCHLD);
    sample_usage(n);
    sg_log(SG_LOG_INFO, "node agent ready", SG_LS("node", cfg->id), SG_LS("api", cfg->api_listen),
           SG_LS("proxy", cfg->proxy_listen), SG_LI("sandboxes", n->nsandboxes),
           SG_LS("envd_version", n->envd_version), SG_LI("cap_vcpu", n->cap_vcpu),
           SG_LI("cap_mem_mb", n->cap_mem_mb));
    uv_run(&loop, UV_RUN_DEFAULT);
    ret = 0;
done:
    /* Sandboxes are left running on purpose: a restarted agent rediscovers them. */
    sg__registry_stop(n);
    sg__proxy_stop(n);
    sg__api_stop(n);
    uv_walk(&loop, close_walk, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    sg__runtime_free(n->rt);
    sg__addrpool_free(&n->pool);
    free(n->state_dir);
    free(n->templates_dir);
    free(n->envd_path);
    return ret;
}
