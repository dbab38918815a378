/*
 * sandgate-envd: entry point. Parses the command line, takes the access token and the request's
 * environment from the token or boot file (then unlinks it so user processes can never read
 * it), builds the default environment of started processes from envd's own (minus SANDGATE_*
 * variables), and runs the loop.
 *
 * envd may be PID 1 of the sandbox's PID namespace: it reaps every child on SIGCHLD (orphans
 * included; elsewhere it makes itself a child subreaper so orphans still come to it), and exits
 * cleanly on SIGTERM/SIGINT after killing the process groups it started.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <jansson.h>
#include "common/common.h"
#include "envd/internal.h"

extern char **environ;

static void usage(FILE *out)
{
    fprintf(out, "usage: sandgate-envd [--port 49983] [--token-file PATH] [--boot-file PATH]\n"
                 "                     [--await-init] [--listen ADDR]\n"
                 "                     [--max-body-mb 1024] [--request-timeout-s 600]\n"
                 "                     [--max-procs 1024] [--max-streams 1024]\n"
                 "                     [--log-level info] [--version]\n");
}

static char *read_token(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return NULL;
    char buf[4097];
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0 || n == (ssize_t)sizeof(buf) - 1)
        return NULL;
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        n--;
    if (n == 0)
        return NULL;
    buf[n] = '\0';
    if (unlink(path) != 0 && errno != ENOENT)
        sg_log(SG_LOG_WARN, "cannot unlink the token file", SG_LS("path", path),
               SG_LS("error", strerror(errno)));
    return strdup(buf);
}

/* The boot file: {"env":{"K":"V",...},"token":"..."|null}, written by the node agent when the
 * sandbox is claimed (a pre-created container's environment is fixed before the request is
 * known). Its env becomes envd's own, so it is the default of every started process; the file is
 * unlinked once read so user processes never see the token. 0 or -1 (logged). */
static int read_boot(const char *path, char **token)
{
    json_error_t jerr;
    json_t *o = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (o == NULL || !json_is_object(o)) {
        sg_log(SG_LOG_ERROR, "cannot read the boot file", SG_LS("path", path),
               SG_LS("error", o ? "not an object" : jerr.text));
        json_decref(o);
        return -1;
    }
    if (unlink(path) != 0 && errno != ENOENT)
        sg_log(SG_LOG_WARN, "cannot unlink the boot file", SG_LS("path", path),
               SG_LS("error", strerror(errno)));
    int ret = 0;
    const char *k;
    json_t *v, *tok = json_object_get(o, "token");
    json_object_foreach(json_object_get(o, "env"), k, v) {
        if (!json_is_string(v) || k[0] == '\0' || strchr(k, '=') != NULL ||
            setenv(k, json_string_value(v), 1) != 0) {
            sg_log(SG_LOG_ERROR, "bad variable in the boot file", SG_LS("name", k));
            ret = -1;
        }
    }
    if (json_is_string(tok) && json_string_length(tok) > 0) {
        *token = strdup(json_string_value(tok));
        if (*token == NULL)
            ret = -1;
    } else if (tok != NULL && !json_is_null(tok)) {
        sg_log(SG_LOG_ERROR, "bad token in the boot file", SG_LS("path", path));
        ret = -1;
    }
    json_decref(o);
    return ret;
}

char **sg__envd_child_env(void)
{
    size_t n = 0;
    for (char **e = environ; *e; e++)
        n++;
    char **out = calloc(n + 1, sizeof(*out));
    if (out == NULL)
        return NULL;
    size_t o = 0;
    for (char **e = environ; *e; e++)
        if (strncmp(*e, "SANDGATE_", 9) != 0)
            out[o++] = strdup(*e);
    return out;
}

static void on_sigchld(uv_signal_t *h, int sig)
{
    sg__proc_reap(h->data);
}

static void on_sigterm(uv_signal_t *h, int sig)
{
    sg__server_t *srv = h->data;
    sg_log(SG_LOG_INFO, "envd stopping", SG_LI("signal", sig));
    srv->stopping = true;
    sg__proc_kill_all(srv);
    uv_stop(srv->loop);
}

static bool parse_uint(const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *s == '\0' || *end != '\0' || v > max || s[0] == '-')
        return false;
    *out = v;
    return true;
}

int main(int argc, char **argv)
{
    static sg__server_t srv;
    const char *token_file = NULL, *boot_file = NULL, *host = "0.0.0.0";
    unsigned long port = SG_ENVD_DEFAULT_PORT, max_body_mb = 1024, req_timeout_s = 600, v;
    sg_log_level_t level = SG_LOG_INFO;
    srv.max_procs = 1024;
    srv.max_streams = 1024;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--version") == 0) {
            printf("%s\n", SG_ENVD_VERSION);
            return 0;
        } else if (strcmp(a, "--await-init") == 0) {
            /* Started ahead of its sandbox (the node's warm pool): env vars and token arrive in
             * POST /init, authenticated by the key the node put in SANDGATE_INIT_KEY. */
            const char *key = getenv("SANDGATE_INIT_KEY");
            if (key == NULL || strlen(key) < 16) {
                fprintf(stderr, "sandgate-envd: --await-init needs SANDGATE_INIT_KEY (16+ chars)\n");
                return 2;
            }
            srv.init_key = strdup(key);
            continue;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (val == NULL) {
            usage(stderr);
            return 2;
        } else if (strcmp(a, "--port") == 0 && parse_uint(val, 65535, &port) && port > 0) {
        } else if (strcmp(a, "--token-file") == 0) {
            token_file = val;
        } else if (strcmp(a, "--boot-file") == 0) {
            boot_file = val;
        } else if (strcmp(a, "--listen") == 0) {
            host = val;
        } else if (strcmp(a, "--max-body-mb") == 0 && parse_uint(val, 1 << 20, &max_body_mb) &&
                   max_body_mb > 0) {
        } else if (strcmp(a, "--request-timeout-s") == 0 &&
                   parse_uint(val, 7 * 24 * 3600, &req_timeout_s) && req_timeout_s > 0) {
        } else if (strcmp(a, "--max-procs") == 0 && parse_uint(val, 1 << 20, &v) && v > 0) {
            srv.max_procs = (unsigned)v;
        } else if (strcmp(a, "--max-streams") == 0 && parse_uint(val, 1 << 20, &v) && v > 0) {
            srv.max_streams = (unsigned)v;
        } else if (strcmp(a, "--log-level") == 0 && sg_log_level_parse(val, &level) == 0) {
        } else {
            fprintf(stderr, "sandgate-envd: bad option %s %s\n", a, val);
            usage(stderr);
            return 2;
        }
        i++;
    }
    sg_log_setup(level, SG_LOG_LOGFMT, stderr);
    srv.max_body = (size_t)max_body_mb << 20;
    srv.req_timeout_ms = (uint64_t)req_timeout_s * 1000;
    if (token_file != NULL) {
        srv.token = read_token(token_file);
        if (srv.token == NULL) {
            sg_log(SG_LOG_ERROR, "cannot read the access token", SG_LS("path", token_file));
            return 1;
        }
    }
    if (boot_file != NULL && read_boot(boot_file, &srv.token) != 0)
        return 1;
    srv.env = sg__envd_child_env();
    if (srv.env == NULL)
        return 1;
    /* files and folders envd creates for users: 0644 / 0755, as E2B sandboxes have */
    umask(022);
    /* not PID 1 (tests, or a runtime with its own init): still inherit orphans to reap them */
    if (getpid() != 1)
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);

    srv.loop = uv_default_loop();
    uv_signal_init(srv.loop, &srv.sigchld);
    uv_signal_init(srv.loop, &srv.sigterm);
    uv_signal_init(srv.loop, &srv.sigint);
    srv.sigchld.data = srv.sigterm.data = srv.sigint.data = &srv;
    uv_signal_start(&srv.sigchld, on_sigchld, SIGCHLD);
    uv_signal_start(&srv.sigterm, on_sigterm, SIGTERM);
    uv_signal_start(&srv.sigint, on_sigterm, SIGINT);
    if (sg__server_listen(&srv, host, (int)port) != 0)
        return 1;
    sg_log(SG_LOG_INFO, "envd listening", SG_LS("addr", host), SG_LI("port", port),
           SG_LS("version", SG_ENVD_VERSION), SG_LI("secure", srv.token != NULL));
    sg__proc_reap(&srv); /* children that exited before the handler was installed */
    uv_run(srv.loop, UV_RUN_DEFAULT);
    /* Exit without tearing the loop down: h2o owns connection handles it must close itself,
     * and the kernel reclaims everything. Children were SIGKILLed; reap what already died
     * (as PID 1, the namespace's end takes care of the rest). */
    sg__proc_reap(&srv);
    sg_log_msg(SG_LOG_INFO, "envd stopped");
    return 0;
}
