/*
 * The runc runtime behind sg__runtime_t: every operation is one `runc --root <root> ...` child
 * spawned with uv_spawn, completing in its exit callback, so the loop never waits for runc.
 *
 * Owns: the in-flight child list (pids the agent's reaper must leave to libuv). The container's
 * init, which runc leaves behind when `runc create` exits, becomes the agent's child (the agent
 * is a subreaper) and is reaped by the agent's SIGCHLD sweep, not here.
 * stats(), probe(), limit() and set_hostname() are synchronous: stats reads a few cgroup files,
 * probe runs at start-up before the loop does, limit and set_hostname run on the thread pool.
 */
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <jansson.h>
#include "common/common.h"
#include "node/internal.h"

typedef struct op {
    uv_process_t proc;
    struct op *next, *prev;
    char **args;  /* owned copy while queued */
    int out_fd;
    struct runc *rc;
    sg__rt_cb cb;
    void *data;
    const char *what;
    int64_t exit_status;
    int term_signal;
} op_t;

typedef struct runc {
    sg__runtime_t super;
    uv_loop_t *loop;
    char *path;
    char *root;
    int devnull;
    op_t *ops;               /* running */
    /* waiting for a slot, FIFO each, linked through next: [0] starts (a client waits on them),
     * [1] teardown (nobody waits; it must not delay a start), [2] background starts (the warm
     * pool: only when nothing else waits) */
    op_t *queue[3], *queue_tail[3];
    int running, max_running;
} runc_t;

static void start_queued(runc_t *rc);

static void on_op_closed(uv_handle_t *h)
{
    op_t *o = h->data;
    runc_t *rc = o->rc;
    if (o->prev)
        o->prev->next = o->next;
    else
        rc->ops = o->next;
    if (o->next)
        o->next->prev = o->prev;
    char msg[96];
    int status = 0;
    if (o->exit_status != 0 || o->term_signal != 0) {
        snprintf(msg, sizeof(msg), "runc %s failed (exit %lld, signal %d)", o->what,
                 (long long)o->exit_status, o->term_signal);
        status = SG_EIO;
    }
    rc->running--;
    o->cb(o->data, status, status ? msg : NULL);
    free(o);
    start_queued(rc);
}

static void on_op_exit(uv_process_t *p, int64_t exit_status, int term_signal)
{
    op_t *o = p->data;
    o->exit_status = exit_status;
    o->term_signal = term_signal;
    uv_close((uv_handle_t *)p, on_op_closed);
}

static void free_args(char **args)
{
    if (args == NULL)
        return;
    for (char **a = args; *a; a++)
        free(*a);
    free(args);
}

/* Spawns a queued op; on failure its callback runs with an error (we are already async here). */
static void do_spawn(runc_t *rc, op_t *o)
{
    uv_stdio_container_t stdio[3] = {
        {.flags = UV_INHERIT_FD, .data.fd = rc->devnull},
        {.flags = UV_INHERIT_FD, .data.fd = o->out_fd},
        {.flags = UV_INHERIT_FD, .data.fd = o->out_fd},
    };
    uv_process_options_t opt = {
        .exit_cb = on_op_exit,
        .file = rc->path,
        .args = o->args,
        .stdio_count = 3,
        .stdio = stdio,
    };
    o->proc.data = o;
    int r = uv_spawn(rc->loop, &o->proc, &opt);
    free_args(o->args);
    o->args = NULL;
    o->next = rc->ops;
    o->prev = NULL;
    if (rc->ops)
        rc->ops->prev = o;
    rc->ops = o;
    rc->running++;
    if (r != 0) {
        sg_log(SG_LOG_ERROR, "runc spawn failed", SG_LS("op", o->what), SG_LS("err", uv_strerror(r)));
        o->exit_status = 127; /* reported through on_op_closed like any failed run */
        uv_close((uv_handle_t *)&o->proc, on_op_closed);
    }
}

static void start_queued(runc_t *rc)
{
    while (rc->running < rc->max_running) {
        int q = rc->queue[0] != NULL ? 0 : rc->queue[1] != NULL ? 1 : 2;
        op_t *o = rc->queue[q];
        if (o == NULL)
            return;
        rc->queue[q] = o->next;
        if (rc->queue[q] == NULL)
            rc->queue_tail[q] = NULL;
        do_spawn(rc, o);
    }
}

/* runc is a Go program costing ~50 ms of CPU per start on this machine kind: run at most one
 * per CPU at a time. With more, every start shares the CPUs and all of a burst finish late;
 * first-come first-served finishes most of them much sooner (same total work). Teardown waits
 * behind starts. */
static int spawn_op(runc_t *rc, const char *what, int q, char **args, int out_fd, sg__rt_cb cb,
                    void *data)
{
    op_t *o = calloc(1, sizeof(*o));
    size_t n = 0;
    while (args[n])
        n++;
    char **copy = o ? calloc(n + 1, sizeof(char *)) : NULL;
    if (copy == NULL) {
        free(o);
        return SG_ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        if ((copy[i] = strdup(args[i])) == NULL) {
            free_args(copy);
            free(o);
            return SG_ENOMEM;
        }
    o->rc = rc;
    o->cb = cb;
    o->data = data;
    o->what = what;
    o->args = copy;
    o->out_fd = out_fd;
    if (rc->queue_tail[q])
        rc->queue_tail[q]->next = o;
    else
        rc->queue[q] = o;
    rc->queue_tail[q] = o;
    /* Never inside the call: the spawn itself may run now, but its callback only on exit. */
    start_queued(rc);
    return 0;
}

static int rc_create(sg__runtime_t *rt, const char *id, const char *bundle, const char *pidfile,
                     int log_fd, bool background, sg__rt_cb cb, void *data)
{
    runc_t *rc = (runc_t *)rt;
    char *args[] = {rc->path, "--root", rc->root, "create", "--bundle", (char *)bundle,
                    "--pid-file", (char *)pidfile, (char *)id, NULL};
    return spawn_op(rc, "create", background ? 2 : 0, args, log_fd >= 0 ? log_fd : rc->devnull, cb,
                    data);
}

static int rc_run(sg__runtime_t *rt, const char *id, const char *bundle, const char *pidfile,
                  int log_fd, bool background, sg__rt_cb cb, void *data)
{
    runc_t *rc = (runc_t *)rt;
    char *args[] = {rc->path, "--root", rc->root, "run", "--detach", "--bundle", (char *)bundle,
                    "--pid-file", (char *)pidfile, (char *)id, NULL};
    return spawn_op(rc, "run", background ? 2 : 0, args, log_fd >= 0 ? log_fd : rc->devnull, cb,
                    data);
}

static int rc_start(sg__runtime_t *rt, const char *id, sg__rt_cb cb, void *data)
{
    runc_t *rc = (runc_t *)rt;
    char *args[] = {rc->path, "--root", rc->root, "start", (char *)id, NULL};
    return spawn_op(rc, "start", 0, args, rc->devnull, cb, data);
}

static int rc_kill(sg__runtime_t *rt, const char *id, int sig, sg__rt_cb cb, void *data)
{
    runc_t *rc = (runc_t *)rt;
    char s[16];
    snprintf(s, sizeof(s), "%d", sig);
    char *args[] = {rc->path, "--root", rc->root, "kill", (char *)id, s, NULL};
    return spawn_op(rc, "kill", 1, args, rc->devnull, cb, data);
}

static int rc_delete(sg__runtime_t *rt, const char *id, sg__rt_cb cb, void *data)
{
    runc_t *rc = (runc_t *)rt;
    char *args[] = {rc->path, "--root", rc->root, "delete", "--force", (char *)id, NULL};
    return spawn_op(rc, "delete", 1, args, rc->devnull, cb, data);
}

static int read_u64(const char *path, uint64_t *out)
{
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return SG_ENOTFOUND;
    unsigned long long v = 0;
    int ok = fscanf(f, "%llu", &v) == 1;
    fclose(f);
    if (!ok)
        return SG_EIO;
    *out = v;
    return 0;
}

static int rc_stats(sg__runtime_t *rt, const char *cgroup, sg__rt_stats_t *out)
{
    char p[512];
    memset(out, 0, sizeof(*out));
    snprintf(p, sizeof(p), "/sys/fs/cgroup/memory%s/memory.usage_in_bytes", cgroup);
    if (access("/sys/fs/cgroup/memory", F_OK) == 0) { /* cgroup v1 (hybrid on this machine kind) */
        int r = read_u64(p, &out->mem_bytes);
        if (r != 0)
            return r;
        snprintf(p, sizeof(p), "/sys/fs/cgroup/memory%s/memory.limit_in_bytes", cgroup);
        read_u64(p, &out->mem_limit);
        snprintf(p, sizeof(p), "/sys/fs/cgroup/cpuacct%s/cpuacct.usage", cgroup);
        read_u64(p, &out->cpu_ns);
        return 0;
    }
    snprintf(p, sizeof(p), "/sys/fs/cgroup%s/memory.current", cgroup);
    int r = read_u64(p, &out->mem_bytes);
    if (r != 0)
        return r;
    snprintf(p, sizeof(p), "/sys/fs/cgroup%s/memory.max", cgroup);
    read_u64(p, &out->mem_limit);
    snprintf(p, sizeof(p), "/sys/fs/cgroup%s/cpu.stat", cgroup);
    FILE *f = fopen(p, "re");
    if (f != NULL) {
        unsigned long long usec;
        if (fscanf(f, "usage_usec %llu", &usec) == 1)
            out->cpu_ns = usec * 1000;
        fclose(f);
    }
    return 0;
}

static int rc_probe(sg__runtime_t *rt, const char *id, int *pid)
{
    runc_t *rc = (runc_t *)rt;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        return SG_EIO;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_adddup2(&fa, rc->devnull, 2);
    char *args[] = {rc->path, "--root", rc->root, "state", (char *)id, NULL};
    pid_t child;
    extern char **environ;
    int r = posix_spawn(&child, rc->path, &fa, NULL, args, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (r != 0) {
        close(fds[0]);
        return SG_EIO;
    }
    char buf[8192];
    size_t n = 0;
    ssize_t k;
    while (n < sizeof(buf) - 1 && ((k = read(fds[0], buf + n, sizeof(buf) - 1 - n)) > 0 ||
                                   (k < 0 && errno == EINTR)))
        if (k > 0)
            n += (size_t)k;
    buf[n] = '\0';
    close(fds[0]);
    int st;
    while (waitpid(child, &st, 0) < 0 && errno == EINTR)
        ;
    json_t *o = json_loads(buf, 0, NULL);
    int ret = 0;
    if (o != NULL) {
        const char *status = json_string_value(json_object_get(o, "status"));
        if (status && (strcmp(status, "running") == 0 || strcmp(status, "created") == 0)) {
            *pid = (int)json_integer_value(json_object_get(o, "pid"));
            ret = strcmp(status, "running") == 0 ? 1 : 2;
        }
        json_decref(o);
    }
    return ret;
}

static int write_str(const char *path, const char *v)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return SG_EIO;
    ssize_t w = write(fd, v, strlen(v));
    close(fd);
    return w == (ssize_t)strlen(v) ? 0 : SG_EIO;
}

/* The cgroup files runc wrote at create, rewritten directly: `runc update` would cost a Go
 * process start (~50 ms) for three small writes. runc's state.json keeps the create-time sizes;
 * nothing reads them back (runc delete and kill don't). */
static int rc_limit(sg__runtime_t *rt, const char *cgroup, int vcpu, int memory_mb)
{
    bool v1 = access("/sys/fs/cgroup/memory", F_OK) == 0; /* hybrid on this machine kind */
    char p[512], cpu[32], mem[32];
    snprintf(cpu, sizeof(cpu), v1 ? "%d" : "%d 100000", vcpu * 100000);
    snprintf(mem, sizeof(mem), "%lld", (long long)memory_mb * 1024 * 1024);
    snprintf(p, sizeof(p), v1 ? "/sys/fs/cgroup/cpu%s/cpu.cfs_quota_us" : "/sys/fs/cgroup%s/cpu.max",
             cgroup);
    if (write_str(p, cpu) != 0)
        return SG_EIO;
    snprintf(p, sizeof(p),
             v1 ? "/sys/fs/cgroup/memory%s/memory.limit_in_bytes" : "/sys/fs/cgroup%s/memory.max",
             cgroup);
    return write_str(p, mem);
}

/* Names a running container's host from outside, through its init's UTS namespace: the
 * container's own capabilities forbid sethostname inside. This thread's own namespace is restored
 * before returning. */
static int rc_set_hostname(sg__runtime_t *rt, int pid, const char *hostname)
{
    char p[64];
    int ret = SG_EIO;
    snprintf(p, sizeof(p), "/proc/%d/ns/uts", pid);
    int theirs = open(p, O_RDONLY | O_CLOEXEC);
    int mine = open("/proc/thread-self/ns/uts", O_RDONLY | O_CLOEXEC);
    if (theirs >= 0 && mine >= 0 && setns(theirs, CLONE_NEWUTS) == 0) {
        if (sethostname(hostname, strlen(hostname)) == 0)
            ret = 0;
        if (setns(mine, CLONE_NEWUTS) != 0) {
            /* A pool thread left in a sandbox's UTS namespace would be harmless but wrong. */
            sg_log(SG_LOG_ERROR, "cannot return to the agent's UTS namespace",
                   SG_LS("err", strerror(errno)));
        }
    }
    if (theirs >= 0)
        close(theirs);
    if (mine >= 0)
        close(mine);
    return ret;
}

static bool rc_owns_pid(sg__runtime_t *rt, int pid)
{
    for (op_t *o = ((runc_t *)rt)->ops; o; o = o->next)
        if (o->proc.pid == pid)
            return true;
    return false;
}

sg__runtime_t *sg__runtime_runc_new(uv_loop_t *loop, const char *runc_path, const char *root)
{
    runc_t *rc = calloc(1, sizeof(*rc));
    if (rc == NULL)
        return NULL;
    rc->super = (sg__runtime_t){
        .name = "runc",
        .create = rc_create,
        .start = rc_start,
        .limit = rc_limit,
        .set_hostname = rc_set_hostname,
        .run = rc_run,
        .kill = rc_kill,
        .delete = rc_delete,
        .stats = rc_stats,
        .probe = rc_probe,
        .owns_pid = rc_owns_pid,
    };
    rc->loop = loop;
    rc->path = strdup(runc_path);
    rc->root = strdup(root);
    rc->devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    rc->max_running = cpus > 0 ? (int)cpus : 1;
    if (rc->path == NULL || rc->root == NULL || rc->devnull < 0) {
        sg__runtime_free(&rc->super);
        return NULL;
    }
    return &rc->super;
}

void sg__runtime_free(sg__runtime_t *rt)
{
    if (rt == NULL)
        return;
    runc_t *rc = (runc_t *)rt;
    free(rc->path);
    free(rc->root);
    if (rc->devnull >= 0)
        close(rc->devnull);
    free(rc);
}
