/*
 * The process service (the process.Process methods): starts processes as a user, streams their output to
 * any number of attached streams, and takes input, signals and PTY resizes.
 *
 * A process (sg__proc_t) is owned by the server's list from fork until it has exited AND its
 * output descriptors reached EOF (or a 2 s grace after exit ran out: a background grandchild may
 * hold the pipe forever); then every attached stream gets the end event and the object is freed
 * once its libuv handles are closed. Streams come and go independently: a client disconnect
 * only detaches its stream, never signals the process.
 *
 * Backpressure: output is read only while every attached stream holds less than
 * SG__STREAM_HIGH unsent bytes; reading resumes when they drain below SG__STREAM_LOW. With no
 * stream attached output is read and dropped, so a background process never blocks on a full
 * pipe. Stdin writes are queued on the loop, bounded per process.
 *
 * Children are forked from the loop thread (fork + exec, no blocking wait for exec): the child
 * starts a new session, gets its pipes or PTY slave as 0/1/2, closes every other descriptor,
 * takes the user's groups, gid and uid, cwd and umask 022, resets signal dispositions, and
 * execs. An exec failure shows as exit status 127 with the reason on stderr, as a shell does.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>
#include <grp.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include "common/common.h"
#include "envd/internal.h"

#define PROC_READ_CHUNK (32u << 10)
#define PROC_STDIN_MAX (4u << 20)
#define PROC_EXIT_GRACE_MS 2000
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct sg__proc {
    sg__server_t *srv;
    sg__proc_t *next;
    pid_t pid;
    char *tag;
    json_t *config;
    bool pty;
    int master_fd;
    uv_pipe_t out[2];   /* [0] stdout or the PTY master, [1] stderr */
    bool out_open[2];
    uv_pipe_t in;
    bool in_open, in_closing;
    size_t in_queued;
    bool exited, finished, paused, grace_started;
    int wstatus;
    uv_timer_t grace;
    int handles;
    sg__stream_t *subs;
};

typedef struct {
    uv_write_t w;
    sg__proc_t *proc;
    size_t len;
    uint8_t data[];
} input_write_t;

static void proc_maybe_finish(sg__proc_t *p);
static void proc_resume(sg__proc_t *p);

/* ---- lifetime -------------------------------------------------------------------------------- */

static void proc_unlink(sg__proc_t *p)
{
    for (sg__proc_t **pp = &p->srv->procs; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            p->srv->nprocs--;
            return;
        }
    }
}

static void on_proc_handle_close(uv_handle_t *h)
{
    sg__proc_t *p = h->data;
    if (--p->handles == 0) {
        json_decref(p->config);
        free(p->tag);
        free(p);
    }
}

static void close_handle(sg__proc_t *p, uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, on_proc_handle_close);
}

static void on_sub_detach(sg__stream_t *st)
{
    sg__proc_t *p = st->owner;
    for (sg__stream_t **pp = &p->subs; *pp; pp = &(*pp)->next) {
        if (*pp == st) {
            *pp = st->next;
            break;
        }
    }
    st->next = NULL;
    /* one fewer reader may be what held the output back */
    if (p->paused) {
        bool busy = false;
        for (sg__stream_t *s = p->subs; s; s = s->next)
            busy |= sg__stream_backlog(s) >= SG__STREAM_LOW;
        if (!busy)
            proc_resume(p);
    }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    buf->base = malloc(PROC_READ_CHUNK);
    buf->len = buf->base ? PROC_READ_CHUNK : 0;
}

static void proc_resume(sg__proc_t *p)
{
    if (!p->paused)
        return;
    p->paused = false;
    for (int i = 0; i < 2; i++)
        if (p->out_open[i])
            uv_read_start((uv_stream_t *)&p->out[i], on_alloc, on_read);
}

static void proc_pause(sg__proc_t *p)
{
    if (p->paused)
        return;
    p->paused = true;
    for (int i = 0; i < 2; i++)
        if (p->out_open[i])
            uv_read_stop((uv_stream_t *)&p->out[i]);
}

static void on_sub_drain(sg__stream_t *st)
{
    sg__proc_t *p = st->owner;
    if (!p->paused)
        return;
    for (sg__stream_t *s = p->subs; s; s = s->next)
        if (sg__stream_backlog(s) >= SG__STREAM_LOW)
            return;
    proc_resume(p);
}

static void close_output(sg__proc_t *p, int i)
{
    if (!p->out_open[i])
        return;
    p->out_open[i] = false;
    uv_read_stop((uv_stream_t *)&p->out[i]);
    /* for a PTY the master is also the input side: closing it ends input too */
    close_handle(p, (uv_handle_t *)&p->out[i]);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    sg__proc_t *p = s->data;
    int idx = (s == (uv_stream_t *)&p->out[0]) ? 0 : 1;
    if (nread > 0) {
        sg_envd_out_t kind = p->pty ? SG_ENVD_OUT_PTY : idx == 0 ? SG_ENVD_OUT_STDOUT
                                                                 : SG_ENVD_OUT_STDERR;
        bool full = false;
        for (sg__stream_t *st = p->subs; st; st = st->next) {
            sg__stream_send(st, sg_envd_event_data(kind, (uint8_t *)buf->base, (size_t)nread));
            full |= sg__stream_backlog(st) > SG__STREAM_HIGH;
        }
        if (full)
            proc_pause(p);
    }
    free(buf->base);
    if (nread < 0) {
        /* UV_EOF for pipes; a PTY master reports EIO once the last slave descriptor closed */
        close_output(p, idx);
        proc_maybe_finish(p);
    }
}

/* The Start request's connect-timeout-ms bounds the process itself, as in E2B: past it the
 * process group is killed (the stream ends with deadline_exceeded on its own timer). */
static void on_proc_deadline(uv_timer_t *t)
{
    sg__proc_t *p = t->data;
    if (!p->exited && kill(-p->pid, SIGKILL) != 0)
        kill(p->pid, SIGKILL);
}

static void on_grace(uv_timer_t *t)
{
    sg__proc_t *p = t->data;
    close_output(p, 0);
    close_output(p, 1);
    proc_maybe_finish(p);
}

static void proc_maybe_finish(sg__proc_t *p)
{
    if (p->finished || !p->exited)
        return;
    if (p->out_open[0] || p->out_open[1]) {
        if (!p->grace_started) { /* replaces a pending deadline: the process is gone */
            p->grace_started = true;
            uv_timer_start(&p->grace, on_grace, PROC_EXIT_GRACE_MS, 0);
        }
        return;
    }
    p->finished = true;
    proc_unlink(p);
    while (p->subs) {
        sg__stream_t *st = p->subs;
        p->subs = st->next;
        st->next = NULL;
        sg__stream_send(st, sg_envd_event_end(p->wstatus, NULL));
        sg__stream_end(st, 0, NULL);
    }
    if (p->in_open && !p->in_closing) {
        p->in_closing = true;
        close_handle(p, (uv_handle_t *)&p->in);
    }
    close_handle(p, (uv_handle_t *)&p->grace);
}

void sg__proc_reap(sg__server_t *srv)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (sg__proc_t *p = srv->procs; p; p = p->next) {
            if (p->pid == pid && !p->exited) {
                p->exited = true;
                p->wstatus = status;
                proc_maybe_finish(p);
                break;
            }
        }
        /* not ours: an orphan reparented to envd, now reaped */
    }
}

void sg__proc_kill_all(sg__server_t *srv)
{
    for (sg__proc_t *p = srv->procs; p; p = p->next)
        if (!p->exited && kill(-p->pid, SIGKILL) != 0)
            kill(p->pid, SIGKILL);
}

/* ---- spawning -------------------------------------------------------------------------------- */

static char *env_entry(const char *k, const char *v)
{
    size_t n = strlen(k) + strlen(v) + 2;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%s=%s", k, v);
    return s;
}

static void env_set(char **env, size_t *n, const char *k, const char *v)
{
    size_t kl = strlen(k);
    char *e = env_entry(k, v);
    if (e == NULL)
        return;
    for (size_t i = 0; i < *n; i++) {
        if (strncmp(env[i], k, kl) == 0 && env[i][kl] == '=') {
            free(env[i]);
            env[i] = e;
            return;
        }
    }
    env[(*n)++] = e;
}

static void env_free(char **env)
{
    if (env == NULL)
        return;
    for (char **e = env; *e; e++)
        free(*e);
    free(env);
}

/* The child's environment: envd's own, then the user's login variables, then the request's. */
static char **build_env(sg__server_t *srv, const sg__user_t *u, const sg_envd_start_t *s)
{
    size_t base = 0;
    for (char **e = srv->env; *e; e++)
        base++;
    size_t extra = 6 + (s->envs ? json_object_size(s->envs) : 0);
    char **env = calloc(base + extra + 1, sizeof(*env));
    if (env == NULL)
        return NULL;
    size_t n = 0;
    for (char **e = srv->env; *e; e++)
        if ((env[n] = strdup(*e)) != NULL)
            n++;
    const char *path = NULL;
    for (char **e = srv->env; *e; e++)
        if (strncmp(*e, "PATH=", 5) == 0)
            path = *e + 5;
    env_set(env, &n, "HOME", u->home);
    env_set(env, &n, "USER", u->name);
    env_set(env, &n, "LOGNAME", u->name);
    env_set(env, &n, "SHELL", u->shell);
    env_set(env, &n, "PATH", path ? path : DEFAULT_PATH);
    if (s->pty) {
        bool has_term = false;
        for (size_t i = 0; i < n; i++)
            has_term |= strncmp(env[i], "TERM=", 5) == 0;
        if (!has_term)
            env_set(env, &n, "TERM", "xterm-256color");
    }
    if (s->envs) {
        const char *k;
        json_t *v;
        json_object_foreach(s->envs, k, v) env_set(env, &n, k, json_string_value(v));
    }
    env[n] = NULL;
    return env;
}

static const char *env_get(char **env, const char *k)
{
    size_t kl = strlen(k);
    for (char **e = env; *e; e++)
        if (strncmp(*e, k, kl) == 0 && (*e)[kl] == '=')
            return *e + kl + 1;
    return NULL;
}

static void child_fail(const char *what, const char *arg)
{
    char msg[512];
    int n = snprintf(msg, sizeof(msg), "sandgate-envd: %s %s: %s\n", what, arg, strerror(errno));
    if (n > 0 && write(2, msg, (size_t)(n < (int)sizeof(msg) ? n : (int)sizeof(msg) - 1)) < 0) {
    }
    _exit(127);
}

/* Runs in the forked child: never returns. Only async-signal-safe-ish calls. */
static void child_exec(const sg__user_t *u, const char *cwd, const char *cmd, char *const argv[],
                       char **envp, int in_fd, int out_fd, int err_fd, const char *slave)
{
    sigset_t none;
    sigemptyset(&none);
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            signal(sig, SIG_DFL);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setsid();
    if (slave != NULL) {
        int s = open(slave, O_RDWR);
        if (s < 0)
            child_fail("open pty", slave);
        ioctl(s, TIOCSCTTY, 0);
        in_fd = out_fd = err_fd = s;
    }
    if (dup2(in_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0)
        _exit(127);
    close_range(3, ~0U, 0);
    if (setgroups((size_t)u->ngroups, u->groups) != 0 || setgid(u->gid) != 0 ||
        setuid(u->uid) != 0)
        child_fail("switch to user", u->name);
    if (chdir(cwd) != 0)
        child_fail("chdir", cwd);
    umask(022);
    if (strchr(cmd, '/') != NULL) {
        execve(cmd, argv, envp);
        child_fail("exec", cmd);
    }
    const char *path = env_get(envp, "PATH");
    if (path == NULL)
        path = DEFAULT_PATH;
    char full[4096];
    int saved = ENOENT;
    while (*path) {
        const char *c = strchr(path, ':');
        size_t l = c ? (size_t)(c - path) : strlen(path);
        int n = snprintf(full, sizeof(full), "%.*s/%s", (int)l, l ? path : ".", cmd);
        if (n > 0 && (size_t)n < sizeof(full)) {
            execve(full, argv, envp);
            if (errno != ENOENT && errno != ENOTDIR)
                saved = errno;
        }
        path += l;
        if (*path == ':')
            path++;
    }
    errno = saved;
    child_fail("exec", cmd);
}

static json_t *config_json(const sg_envd_start_t *s, const char *cwd)
{
    json_t *args = json_array();
    for (size_t i = 0; i < s->nargs; i++)
        json_array_append_new(args, json_string(s->args[i]));
    return json_pack("{s:s,s:o,s:o,s:s}", "cmd", s->cmd, "args", args, "envs",
                     s->envs ? json_deep_copy(s->envs) : json_object(), "cwd", cwd);
}

static void pipes_close(int *fds, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* Forks the process described by s; on success returns it (linked into srv) with *err unset. */
static sg__proc_t *proc_spawn(sg__server_t *srv, const sg__user_t *u, const sg_envd_start_t *s,
                              sg_envd_code_t *code, char *err, size_t cap)
{
    char cwd[4096];
    sg__proc_t *p = NULL;
    char **env = NULL;
    char **argv = NULL;
    int fds[6] = {-1, -1, -1, -1, -1, -1}; /* in[2], out[2], err[2] */
    int master = -1, devnull = -1;
    char slave[128] = "";

    if (srv->nprocs >= srv->max_procs) {
        *code = SG_ENVD_RESOURCE_EXHAUSTED;
        snprintf(err, cap, "too many processes (limit %u)", srv->max_procs);
        return NULL;
    }
    if (sg_envd_resolve_path(s->cwd ? s->cwd : u->home, u->home, cwd, sizeof(cwd)) != 0) {
        *code = SG_ENVD_INVALID_ARGUMENT;
        snprintf(err, cap, "invalid cwd");
        return NULL;
    }
    struct stat sb;
    sg__as_user(u);
    int sr = stat(cwd, &sb), serr = errno;
    sg__as_root();
    if (sr != 0 || !S_ISDIR(sb.st_mode)) {
        *code = SG_ENVD_INVALID_ARGUMENT;
        snprintf(err, cap, "cwd '%.300s' is not an accessible directory: %s", cwd,
                 sr != 0 ? strerror(serr) : "not a directory");
        return NULL;
    }
    if (s->tag) {
        for (sg__proc_t *q = srv->procs; q; q = q->next) {
            if (q->tag && strcmp(q->tag, s->tag) == 0 && !q->exited) {
                *code = SG_ENVD_ALREADY_EXISTS;
                snprintf(err, cap, "a process with tag '%s' is already running", s->tag);
                return NULL;
            }
        }
    }
    *code = SG_ENVD_INTERNAL;
    p = calloc(1, sizeof(*p));
    env = build_env(srv, u, s);
    argv = calloc(s->nargs + 2, sizeof(*argv));
    if (p == NULL || env == NULL || argv == NULL) {
        snprintf(err, cap, "out of memory");
        goto fail;
    }
    argv[0] = (char *)s->cmd;
    for (size_t i = 0; i < s->nargs; i++)
        argv[i + 1] = (char *)s->args[i];
    p->srv = srv;
    p->pty = s->pty;
    p->master_fd = -1;
    p->config = config_json(s, cwd);
    p->tag = s->tag ? strdup(s->tag) : NULL;
    if (s->pty) {
        master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0 ||
            ptsname_r(master, slave, sizeof(slave)) != 0) {
            snprintf(err, cap, "cannot open a pseudo-terminal: %s", strerror(errno));
            goto fail;
        }
        struct winsize ws = {.ws_row = (unsigned short)s->rows, .ws_col = (unsigned short)s->cols};
        ioctl(master, TIOCSWINSZ, &ws);
    } else {
        if ((s->stdin_open && pipe2(fds, O_CLOEXEC) != 0) || pipe2(fds + 2, O_CLOEXEC) != 0 ||
            pipe2(fds + 4, O_CLOEXEC) != 0) {
            snprintf(err, cap, "cannot create pipes: %s", strerror(errno));
            goto fail;
        }
        if (!s->stdin_open && (devnull = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
            snprintf(err, cap, "cannot open /dev/null: %s", strerror(errno));
            goto fail;
        }
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, cap, "fork: %s", strerror(errno));
        goto fail;
    }
    if (pid == 0)
        child_exec(u, cwd, s->cmd, argv, env, s->stdin_open ? fds[0] : devnull, fds[3], fds[5],
                   s->pty ? slave : NULL);
    /* parent */
    p->pid = pid;
    env_free(env);
    free(argv);
    if (devnull >= 0)
        close(devnull);
    uv_timer_init(srv->loop, &p->grace);
    p->grace.data = p;
    p->handles = 1;
    if (s->pty) {
        p->master_fd = master;
        uv_pipe_init(srv->loop, &p->out[0], 0);
        uv_pipe_open(&p->out[0], master);
        p->out[0].data = p;
        p->out_open[0] = true;
        p->handles++;
    } else {
        close(fds[3]);
        close(fds[5]);
        int rd[2] = {fds[2], fds[4]};
        for (int i = 0; i < 2; i++) {
            uv_pipe_init(srv->loop, &p->out[i], 0);
            uv_pipe_open(&p->out[i], rd[i]);
            p->out[i].data = p;
            p->out_open[i] = true;
            p->handles++;
        }
        if (s->stdin_open) {
            close(fds[0]);
            uv_pipe_init(srv->loop, &p->in, 0);
            uv_pipe_open(&p->in, fds[1]);
            p->in.data = p;
            p->in_open = true;
            p->handles++;
        }
    }
    for (int i = 0; i < 2; i++)
        if (p->out_open[i])
            uv_read_start((uv_stream_t *)&p->out[i], on_alloc, on_read);
    p->next = srv->procs;
    srv->procs = p;
    srv->nprocs++;
    sg_log(SG_LOG_DEBUG, "process started", SG_LI("pid", pid), SG_LS("cmd", s->cmd),
           SG_LS("user", u->name));
    return p;
fail:
    pipes_close(fds, 6);
    if (master >= 0)
        close(master);
    if (devnull >= 0)
        close(devnull);
    env_free(env);
    free(argv);
    if (p) {
        json_decref(p->config);
        free(p->tag);
        free(p);
    }
    return NULL;
}

/* ---- RPCs ------------------------------------------------------------------------------------ */

static sg__proc_t *find_proc(sg__server_t *srv, const json_t *body, const char *field)
{
    uint32_t pid;
    const char *tag;
    if (sg_envd_parse_selector(sg_envd_field(body, field, NULL), &pid, &tag) != 0)
        return NULL;
    for (sg__proc_t *p = srv->procs; p; p = p->next) {
        if (p->finished)
            continue;
        if ((pid && (uint32_t)p->pid == pid) || (tag && p->tag && strcmp(p->tag, tag) == 0))
            return p;
    }
    return NULL;
}

static bool selector_valid(const json_t *body)
{
    uint32_t pid;
    const char *tag;
    return sg_envd_parse_selector(sg_envd_field(body, "process", NULL), &pid, &tag) == 0;
}

static void attach(sg__proc_t *p, sg__stream_t *st)
{
    st->next = p->subs;
    p->subs = st;
    sg__stream_send(st, sg_envd_event_start((uint32_t)p->pid));
}

static void rpc_start(sg__server_t *srv, h2o_req_t *req, const sg__user_t *u, json_t *body,
                      bool streaming)
{
    sg_envd_start_t *s = malloc(sizeof(*s));
    char err[512];
    if (s == NULL) {
        sg__rpc_fail(req, streaming, SG_ENVD_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    if (sg_envd_parse_start(body, s, err, sizeof(err)) != 0) {
        sg__rpc_fail(req, streaming, SG_ENVD_INVALID_ARGUMENT, err);
        free(s);
        return;
    }
    sg_envd_code_t code;
    if (srv->nstreams >= srv->max_streams) {
        sg__rpc_fail(req, streaming, SG_ENVD_RESOURCE_EXHAUSTED, "too many open streams");
        free(s);
        return;
    }
    sg__proc_t *p = proc_spawn(srv, u, s, &code, err, sizeof(err));
    free(s);
    if (p == NULL) {
        sg__rpc_fail(req, streaming, code, err);
        return;
    }
    size_t hl;
    const char *h = sg_http_header(req, "connect-timeout-ms", &hl);
    uint64_t ms = 0;
    for (size_t i = 0; h && i < hl && i < 12 && h[i] >= '0' && h[i] <= '9'; i++)
        ms = ms * 10 + (uint64_t)(h[i] - '0');
    if (ms > 0) /* the grace timer is idle until exit: it serves as the deadline until then */
        uv_timer_start(&p->grace, on_proc_deadline, ms, 0);
    sg__stream_t *st = sg__stream_open(srv, req, p, on_sub_detach, on_sub_drain, false);
    if (st != NULL)
        attach(p, st);
}

static void rpc_connect(sg__server_t *srv, h2o_req_t *req, json_t *body, bool streaming)
{
    if (!selector_valid(body)) {
        sg__rpc_fail(req, streaming, SG_ENVD_INVALID_ARGUMENT, "process selector is required");
        return;
    }
    sg__proc_t *p = find_proc(srv, body, "process");
    if (p == NULL) {
        sg__rpc_fail(req, streaming, SG_ENVD_NOT_FOUND, "process not found");
        return;
    }
    sg__stream_t *st = sg__stream_open(srv, req, p, on_sub_detach, on_sub_drain, false);
    if (st != NULL)
        attach(p, st);
}

static void rpc_list(sg__server_t *srv, h2o_req_t *req)
{
    json_t *list = json_array();
    for (sg__proc_t *p = srv->procs; p; p = p->next) {
        if (p->finished)
            continue;
        json_t *info = json_pack("{s:O,s:I}", "config", p->config, "pid", (json_int_t)p->pid);
        if (info && p->tag)
            json_object_set_new(info, "tag", json_string(p->tag));
        json_array_append_new(list, info);
    }
    sg__rpc_reply(req, json_pack("{s:o}", "processes", list));
}

static void on_input_written(uv_write_t *w, int status)
{
    input_write_t *iw = (input_write_t *)w;
    iw->proc->in_queued -= iw->len;
    free(iw);
}

static void on_stdin_shutdown(uv_shutdown_t *sh, int status)
{
    sg__proc_t *p = sh->handle->data;
    free(sh);
    close_handle(p, (uv_handle_t *)&p->in);
}

static void rpc_send_input(sg__server_t *srv, h2o_req_t *req, json_t *body)
{
    if (!selector_valid(body)) {
        sg__rpc_fail(req, false, SG_ENVD_INVALID_ARGUMENT, "process selector is required");
        return;
    }
    sg__proc_t *p = find_proc(srv, body, "process");
    if (p == NULL) {
        sg__rpc_fail(req, false, SG_ENVD_NOT_FOUND, "process not found");
        return;
    }
    json_t *input = sg_envd_field(body, "input", NULL);
    json_t *data = sg_envd_field(input, "stdin", NULL);
    bool to_pty = false;
    if (data == NULL) {
        data = sg_envd_field(input, "pty", NULL);
        to_pty = data != NULL;
    }
    if (!json_is_string(data)) {
        sg__rpc_fail(req, false, SG_ENVD_INVALID_ARGUMENT, "input.stdin or input.pty is required");
        return;
    }
    uv_stream_t *target = NULL;
    if (to_pty && p->pty && p->out_open[0])
        target = (uv_stream_t *)&p->out[0];
    else if (!to_pty && !p->pty && p->in_open && !p->in_closing)
        target = (uv_stream_t *)&p->in;
    else if (!to_pty && p->pty && p->out_open[0])
        target = (uv_stream_t *)&p->out[0]; /* stdin of a PTY process is the terminal */
    if (target == NULL) {
        sg__rpc_fail(req, false, SG_ENVD_FAILED_PRECONDITION,
                     to_pty ? "the process has no pseudo-terminal"
                            : "the process's stdin is not open");
        return;
    }
    size_t enc = json_string_length(data);
    if (p->in_queued + enc / 4 * 3 > PROC_STDIN_MAX) {
        sg__rpc_fail(req, false, SG_ENVD_RESOURCE_EXHAUSTED,
                     "too much input queued for the process");
        return;
    }
    input_write_t *iw = malloc(sizeof(*iw) + enc / 4 * 3 + 3);
    if (iw == NULL) {
        sg__rpc_fail(req, false, SG_ENVD_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    ssize_t n = sg_envd_b64_decode(json_string_value(data), enc, iw->data);
    if (n < 0) {
        free(iw);
        sg__rpc_fail(req, false, SG_ENVD_INVALID_ARGUMENT, "input is not valid base64");
        return;
    }
    if (n == 0) {
        free(iw);
        sg__rpc_reply(req, NULL);
        return;
    }
    iw->proc = p;
    iw->len = (size_t)n;
    uv_buf_t b = uv_buf_init((char *)iw->data, (unsigned)n);
    if (uv_write(&iw->w, target, &b, 1, on_input_written) != 0) {
        free(iw);
        sg__rpc_fail(req, false, SG_ENVD_FAILED_PRECONDITION, "cannot write to the process");
        return;
    }
    p->in_queued += (size_t)n;
    sg__rpc_reply(req, NULL);
}

static void rpc_close_stdin(sg__server_t *srv, h2o_req_t *req, json_t *body)
{
    if (!selector_valid(body)) {
        sg__rpc_fail(req, false, SG_ENVD_INVALID_ARGUMENT, "process selector is required");
        return;
    }
    sg__proc_t *p = find_proc(srv, body, "process");
    if (p == NULL) {
        sg__rpc_fail(req, false, SG_ENVD_NOT_FOUND, "process not found");
        return;
    }
    if (p->pty) {
        sg__rpc_fail(req, false, SG_ENVD_FAILED_PRECONDITION,
                     "closeStdin does not apply to a PTY process: send Ctrl+D instead");
        return;
    }
    if (p->in_open && !p->in_closing) {
        p->in_closing = true;
        uv_shutdown_t *sh = malloc(sizeof(*sh));
        if (sh == NULL || uv_shutdown(sh, (uv_stream_t *)&p->in, on_stdin_shutdown) != 0) {
            free(sh);
            close_handle(p, (uv_handle_t *)&p->in);
        }
    }
    sg__rpc_reply(req, NULL);
}

static void rpc_signal(sg__server_t *srv, h2o_req_t *req, json_t *body)
{
    int sig;
    if (!selector_valid(body) ||
        sg_envd_parse_signal(sg_envd_field(body, "signal", NULL), &sig) != 0) {
        sg__rpc_fail(req, false, SG_ENVD_INVALID_ARGUMENT,
                     "process selector and signal (SIGNAL_SIGTERM or SIGNAL_SIGKILL) are required");
        return;
    }
    sg__proc_t *p = find_proc(srv, body, "process");
    if (p == NULL || p->exited) {
        sg__rpc_fail(req, false, SG_ENVD_NOT_FOUND, "process not found");
        return;
    }
    /* the process leads its own session: signal the whole group so children go too */
    if (kill(-p->pid, sig) != 0 && kill(p->pid, sig) != 0) {
        sg__rpc_fail(req, false, sg_envd_code_from_errno(errno), strerror(errno));
        return;
    }
    sg__rpc_reply(req, NULL);
}

static void rpc_update(sg__server_t *srv, h2o_req_t *req, json_t *body)
{
    if (!selector_valid(body)) {
        sg__rpc_fail(req, false, SG_ENVD_INVALID_ARGUMENT, "process selector is required");
        return;
    }
    sg__proc_t *p = find_proc(srv, body, "process");
    if (p == NULL) {
        sg__rpc_fail(req, false, SG_ENVD_NOT_FOUND, "process not found");
        return;
    }
    json_t *pty = sg_envd_field(body, "pty", NULL);
    if (pty == NULL) {
        sg__rpc_reply(req, NULL);
        return;
    }
    json_t *size = sg_envd_field(pty, "size", NULL);
    json_t *c = sg_envd_field(size, "cols", NULL), *r = sg_envd_field(size, "rows", NULL);
    if (!json_is_integer(c) || !json_is_integer(r) || json_integer_value(c) <= 0 ||
        json_integer_value(c) > 65535 || json_integer_value(r) <= 0 ||
        json_integer_value(r) > 65535) {
        sg__rpc_fail(req, false, SG_ENVD_INVALID_ARGUMENT,
                     "pty.size.cols and rows must be integers in 1..65535");
        return;
    }
    if (!p->pty || !p->out_open[0]) {
        sg__rpc_fail(req, false, SG_ENVD_FAILED_PRECONDITION, "the process has no pseudo-terminal");
        return;
    }
    struct winsize ws = {.ws_row = (unsigned short)json_integer_value(r),
                         .ws_col = (unsigned short)json_integer_value(c)};
    if (ioctl(p->master_fd, TIOCSWINSZ, &ws) != 0) {
        sg__rpc_fail(req, false, SG_ENVD_INTERNAL, strerror(errno));
        return;
    }
    sg__rpc_reply(req, NULL);
}

void sg__proc_rpc(sg__server_t *srv, h2o_req_t *req, const sg__user_t *user, const char *method,
                  json_t *body, bool streaming)
{
    if (strcmp(method, "Start") == 0)
        rpc_start(srv, req, user, body, streaming);
    else if (strcmp(method, "Connect") == 0)
        rpc_connect(srv, req, body, streaming);
    else if (streaming)
        sg__rpc_fail(req, true, SG_ENVD_UNIMPLEMENTED, "not a streaming method");
    else if (strcmp(method, "List") == 0)
        rpc_list(srv, req);
    else if (strcmp(method, "SendInput") == 0)
        rpc_send_input(srv, req, body);
    else if (strcmp(method, "CloseStdin") == 0)
        rpc_close_stdin(srv, req, body);
    else if (strcmp(method, "SendSignal") == 0)
        rpc_signal(srv, req, body);
    else if (strcmp(method, "Update") == 0)
        rpc_update(srv, req, body);
    else
        sg__rpc_fail(req, false, SG_ENVD_UNIMPLEMENTED, "unknown method");
}
