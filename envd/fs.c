/*
 * The filesystem service (the filesystem.Filesystem methods): Stat, ListDir, MakeDir, Move, Remove and
 * the WatchDir server stream.
 *
 * Every path is resolved as the calling user sees it (relative paths and "~" from the user's
 * home) and every call that touches a path runs with the loop thread's filesystem identity
 * switched to the user (sg__as_user), so the kernel checks the user's permissions and anything
 * created belongs to the user. These are metadata calls on a local disk, done inline on the
 * loop; ListDir and Remove walks are bounded (FS_WALK_MAX entries).
 *
 * WatchDir owns an inotify descriptor watched with uv_poll; a recursive watch adds a watch for
 * every subfolder at start and for every folder created later (bounded by FS_WATCH_MAX). Event
 * names are paths relative to the watched folder. The watcher lives exactly as long as its
 * stream: the stream's detach callback closes it.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include "common/common.h"
#include "envd/internal.h"

#define FS_WALK_MAX 100000
#define FS_WATCH_MAX 8192

typedef struct {
    sg__server_t *srv;
    sg__stream_t *st;
    int fd;
    uv_poll_t poll;
    bool recursive;
    struct { int wd; char *rel; } *w;
    size_t nw, capw;
    sg__user_t user;
    uint32_t upload_cookie; /* of the last rename away from an upload's temporary file */
    char root[4096];
} watcher_t;

/* ---- entries --------------------------------------------------------------------------------- */

int sg__fs_entry(const char *path, const sg__idmap_t *ids, json_t **out)
{
    struct stat ls, ts;
    if (lstat(path, &ls) != 0)
        return -errno;
    char target[PATH_MAX];
    const char *tgt = NULL;
    const struct stat *st = &ls;
    sg_envd_ftype_t type = S_ISDIR(ls.st_mode) ? SG_ENVD_FT_DIRECTORY : SG_ENVD_FT_FILE;
    if (S_ISLNK(ls.st_mode)) {
        /* E2B reports the fully resolved absolute target; a dangling link keeps its text. */
        if (realpath(path, target) != NULL) {
            tgt = target;
        } else {
            ssize_t n = readlink(path, target, sizeof(target) - 1);
            if (n >= 0) {
                target[n] = '\0';
                tgt = target;
            }
        }
        type = SG_ENVD_FT_SYMLINK;
        if (stat(path, &ts) == 0) {
            st = &ts;
            type = S_ISDIR(ts.st_mode) ? SG_ENVD_FT_DIRECTORY : SG_ENVD_FT_FILE;
        }
    }
    char ub[16], gb[16];
    const char *slash = strrchr(path, '/');
    sg_envd_entry_t e = {
        .name = slash && slash[1] ? slash + 1 : path,
        .path = path,
        .type = type,
        .size = (int64_t)st->st_size,
        .mode = st->st_mode,
        .owner = sg__idmap_user(ids, st->st_uid, ub),
        .group = sg__idmap_group(ids, st->st_gid, gb),
        .mtime_sec = st->st_mtim.tv_sec,
        .mtime_nsec = st->st_mtim.tv_nsec,
        .symlink_target = tgt,
    };
    *out = sg_envd_entry_json(&e);
    return *out ? 0 : -ENOMEM;
}

static int path_arg(h2o_req_t *req, const sg__user_t *u, json_t *body, const char *field,
                    char *out, size_t cap)
{
    json_t *p = sg_envd_field(body, field, NULL);
    if (!json_is_string(p) || strlen(json_string_value(p)) != json_string_length(p) ||
        sg_envd_resolve_path(json_string_value(p), u->home, out, cap) != 0) {
        char msg[128];
        snprintf(msg, sizeof(msg), "%s must be a non-empty path", field);
        sg__rpc_fail(req, false, SG_ENVD_INVALID_ARGUMENT, msg);
        return -1;
    }
    return 0;
}

static void fail_errno(h2o_req_t *req, bool streaming, int err, const char *what, const char *path)
{
    char msg[4400];
    if (err == ENOENT)
        snprintf(msg, sizeof(msg), "%s: no such file or directory: %s", what, path);
    else
        snprintf(msg, sizeof(msg), "%s %s: %s", what, path, strerror(err));
    sg__rpc_fail(req, streaming, sg_envd_code_from_errno(err), msg);
}

static void reply_entry(h2o_req_t *req, const char *path)
{
    sg__idmap_t ids;
    sg__idmap_load(&ids);
    json_t *e = NULL;
    int r = sg__fs_entry(path, &ids, &e);
    sg__idmap_free(&ids);
    if (r != 0) {
        fail_errno(req, false, -r, "stat", path);
        return;
    }
    sg__rpc_reply(req, json_pack("{s:o}", "entry", e));
}

/* mkdir -p as the current fs identity; returns 0 or -errno. */
static int mkdir_p(const char *path, bool *created)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s", path);
    size_t len = strlen(tmp);
    *created = false;
    for (size_t i = 1; i <= len; i++) {
        if (tmp[i] != '/' && tmp[i] != '\0')
            continue;
        char c = tmp[i];
        tmp[i] = '\0';
        if (mkdir(tmp, 0755) == 0) {
            if (i == len)
                *created = true;
        } else if (errno != EEXIST) {
            return -errno;
        } else {
            struct stat sb;
            if (stat(tmp, &sb) != 0)
                return -errno;
            if (!S_ISDIR(sb.st_mode))
                return -ENOTDIR;
        }
        tmp[i] = c;
    }
    return 0;
}

int sg__fs_mkdir_parents(const char *file)
{
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", file);
    char *slash = strrchr(dir, '/');
    if (slash == NULL || slash == dir)
        return 0;
    *slash = '\0';
    bool created;
    return mkdir_p(dir, &created);
}

/* ---- unary RPCs ------------------------------------------------------------------------------ */

static void rpc_stat(h2o_req_t *req, const sg__user_t *u, json_t *body)
{
    char path[4096];
    if (path_arg(req, u, body, "path", path, sizeof(path)) != 0)
        return;
    sg__as_user(u);
    reply_entry(req, path);
    sg__as_root();
}

static void rpc_mkdir(h2o_req_t *req, const sg__user_t *u, json_t *body)
{
    char path[4096];
    if (path_arg(req, u, body, "path", path, sizeof(path)) != 0)
        return;
    sg__as_user(u);
    bool created = false;
    int r = mkdir_p(path, &created);
    if (r != 0)
        fail_errno(req, false, -r, "cannot create directory", path);
    else if (!created)
        sg__rpc_fail(req, false, SG_ENVD_ALREADY_EXISTS, "directory already exists");
    else
        reply_entry(req, path);
    sg__as_root();
}

static void rpc_move(h2o_req_t *req, const sg__user_t *u, json_t *body)
{
    char src[4096], dst[4096];
    if (path_arg(req, u, body, "source", src, sizeof(src)) != 0 ||
        path_arg(req, u, body, "destination", dst, sizeof(dst)) != 0)
        return;
    sg__as_user(u);
    struct stat sb;
    int r = 0;
    if (lstat(src, &sb) != 0)
        r = -errno;
    if (r == 0)
        r = sg__fs_mkdir_parents(dst);
    if (r == 0 && rename(src, dst) != 0)
        r = -errno;
    if (r != 0)
        fail_errno(req, false, -r, "cannot move", src);
    else
        reply_entry(req, dst);
    sg__as_root();
}

static int walk_count;

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    if (++walk_count > FS_WALK_MAX)
        return E2BIG;
    int r = (flag == FTW_DP) ? rmdir(p) : unlink(p);
    return r == 0 ? 0 : errno;
}

static void rpc_remove(h2o_req_t *req, const sg__user_t *u, json_t *body)
{
    char path[4096];
    if (path_arg(req, u, body, "path", path, sizeof(path)) != 0)
        return;
    if (strcmp(path, "/") == 0) {
        sg__rpc_fail(req, false, SG_ENVD_INVALID_ARGUMENT, "refusing to remove /");
        return;
    }
    sg__as_user(u);
    struct stat sb;
    int r = 0;
    if (lstat(path, &sb) != 0)
        r = errno == ENOENT ? 0 : errno; /* E2B: removing what is not there succeeds */
    else if (S_ISDIR(sb.st_mode)) {
        walk_count = 0;
        r = nftw(path, rm_one, 32, FTW_DEPTH | FTW_PHYS);
        if (r < 0)
            r = errno;
    } else if (unlink(path) != 0)
        r = errno;
    if (r == E2BIG)
        sg__rpc_fail(req, false, SG_ENVD_RESOURCE_EXHAUSTED, "too many entries to remove at once");
    else if (r != 0)
        fail_errno(req, false, r, "cannot remove", path);
    else
        sg__rpc_reply(req, NULL);
    sg__as_root();
}

/* scandir's filter: skips "." and "..", and stops taking names past the walk's bound (names
 * listed plus names held by the folders being walked), so the names in memory never exceed
 * FS_WALK_MAX however the tree is shaped (list_walk then reports E2BIG). Loop thread only. */
static size_t list_taken, list_room, list_held;

static int list_keep(const struct dirent *de)
{
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
        return 0;
    return list_taken++ < list_room;
}

static int list_byname(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

/* Entries come in byte order of their names, each folder followed by its contents, as E2B lists
 * them (clients index into the list). */
static int list_walk(const char *dir, unsigned depth, unsigned max_depth, const sg__idmap_t *ids,
                     json_t *out)
{
    struct dirent **names;
    if (depth == 1)
        list_held = 0;
    list_taken = 0;
    list_room = FS_WALK_MAX - json_array_size(out) - list_held;
    int count = scandir(dir, &names, list_keep, list_byname);
    if (count < 0)
        return -errno;
    int r = list_taken > list_room ? -E2BIG : 0;
    list_held += (size_t)count;
    size_t consumed = 0;
    for (int i = 0; i < count && r == 0; i++) {
        const struct dirent *de = names[i];
        list_held--;
        consumed++;
        if (json_array_size(out) >= FS_WALK_MAX) {
            r = -E2BIG;
            break;
        }
        char p[4096];
        int n = snprintf(p, sizeof(p), "%s%s%s", dir, strcmp(dir, "/") ? "/" : "", de->d_name);
        if (n < 0 || (size_t)n >= sizeof(p))
            continue;
        json_t *e;
        if (sg__fs_entry(p, ids, &e) != 0)
            continue; /* vanished meanwhile */
        json_array_append_new(out, e);
        struct stat sb;
        if (depth < max_depth && lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) {
            int rr = list_walk(p, depth + 1, max_depth, ids, out);
            if (rr == -E2BIG) {
                r = rr;
                break;
            }
        }
    }
    list_held -= (size_t)count - consumed; /* stopped early: the rest is dropped unlisted */
    for (int k = 0; k < count; k++)
        free(names[k]);
    free(names);
    return r;
}

static void rpc_listdir(h2o_req_t *req, const sg__user_t *u, json_t *body)
{
    char path[4096];
    if (path_arg(req, u, body, "path", path, sizeof(path)) != 0)
        return;
    json_t *dv = sg_envd_field(body, "depth", NULL);
    json_int_t depth = json_is_integer(dv) ? json_integer_value(dv) : 1;
    if (dv != NULL && !json_is_integer(dv)) {
        sg__rpc_fail(req, false, SG_ENVD_INVALID_ARGUMENT, "depth must be an integer");
        return;
    }
    if (depth < 1)
        depth = 1;
    if (depth > 64)
        depth = 64;
    sg__as_user(u);
    struct stat sb;
    if (stat(path, &sb) != 0) {
        fail_errno(req, false, errno, "cannot list", path);
    } else if (!S_ISDIR(sb.st_mode)) {
        sg__rpc_fail(req, false, SG_ENVD_INVALID_ARGUMENT, "path is not a directory");
    } else {
        sg__idmap_t ids;
        sg__idmap_load(&ids);
        json_t *entries = json_array();
        int r = list_walk(path, 1, (unsigned)depth, &ids, entries);
        sg__idmap_free(&ids);
        if (r == -E2BIG) {
            json_decref(entries);
            sg__rpc_fail(req, false, SG_ENVD_RESOURCE_EXHAUSTED,
                         "too many entries: list a smaller depth");
        } else if (r != 0) {
            json_decref(entries);
            fail_errno(req, false, -r, "cannot list", path);
        } else {
            sg__rpc_reply(req, json_pack("{s:o}", "entries", entries));
        }
    }
    sg__as_root();
}

/* ---- WatchDir -------------------------------------------------------------------------------- */

static int watch_add(watcher_t *w, const char *abs, const char *rel)
{
    if (w->nw >= FS_WATCH_MAX)
        return -E2BIG;
    /* inotify itself runs as root: the user's access was checked on the root folder */
    int wd = inotify_add_watch(w->fd, abs,
                               IN_CREATE | IN_DELETE | IN_MODIFY | IN_MOVED_FROM | IN_MOVED_TO |
                                   IN_ATTRIB | IN_ONLYDIR | IN_DONT_FOLLOW);
    if (wd < 0)
        return -errno;
    for (size_t i = 0; i < w->nw; i++)
        if (w->w[i].wd == wd)
            return 0;
    if (w->nw == w->capw) {
        size_t cap = w->capw ? w->capw * 2 : 16;
        void *n = realloc(w->w, cap * sizeof(*w->w));
        if (n == NULL)
            return -ENOMEM;
        w->w = n;
        w->capw = cap;
    }
    w->w[w->nw].wd = wd;
    w->w[w->nw].rel = strdup(rel);
    w->nw++;
    if (!w->recursive)
        return 0;
    DIR *d = opendir(abs);
    if (d == NULL)
        return 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_type != DT_DIR || strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char a[4096], r[4096];
        snprintf(a, sizeof(a), "%s/%s", abs, de->d_name);
        snprintf(r, sizeof(r), "%s%s%s", rel, *rel ? "/" : "", de->d_name);
        if (watch_add(w, a, r) == -E2BIG)
            break;
    }
    closedir(d);
    return 0;
}

static void on_watch_poll_close(uv_handle_t *h)
{
    watcher_t *w = h->data;
    for (size_t i = 0; i < w->nw; i++)
        free(w->w[i].rel);
    free(w->w);
    close(w->fd);
    free(w);
}

static void on_watch_detach(sg__stream_t *st)
{
    watcher_t *w = st->owner;
    w->st = NULL;
    uv_poll_stop(&w->poll);
    uv_close((uv_handle_t *)&w->poll, on_watch_poll_close);
}

static void on_watch_events(uv_poll_t *h, int status, int events)
{
    watcher_t *w = h->data;
    char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    if (w->st == NULL)
        return;
    for (int rounds = 0; rounds < 16; rounds++) {
        ssize_t n = read(w->fd, buf, sizeof(buf));
        if (n <= 0)
            return;
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            p += sizeof(*ev) + ev->len;
            const char *rel = NULL;
            for (size_t i = 0; i < w->nw; i++)
                if (w->w[i].wd == ev->wd)
                    rel = w->w[i].rel;
            if (rel == NULL || ev->len == 0)
                continue;
            /* An upload writes a temporary file beside its target and renames it over the
             * target (files.c), where E2B writes in place and watchers wait for a write to the
             * target: the temporary file stays hidden and its rename onto the target shows as
             * a create then a write of the target. */
            if (sg__files_is_upload_tmp(ev->name)) {
                if (ev->mask & IN_MOVED_FROM)
                    w->upload_cookie = ev->cookie;
                continue;
            }
            bool uploaded = (ev->mask & IN_MOVED_TO) && ev->cookie != 0 &&
                            ev->cookie == w->upload_cookie;
            if (uploaded)
                w->upload_cookie = 0;
            char name[4096];
            snprintf(name, sizeof(name), "%s%s%s", rel, *rel ? "/" : "", ev->name);
            sg_envd_evtype_t type;
            if (ev->mask & (IN_CREATE | IN_MOVED_TO))
                type = SG_ENVD_EV_CREATE;
            else if (ev->mask & IN_MODIFY)
                type = SG_ENVD_EV_WRITE;
            else if (ev->mask & IN_DELETE)
                type = SG_ENVD_EV_REMOVE;
            else if (ev->mask & IN_MOVED_FROM)
                type = SG_ENVD_EV_RENAME;
            else if (ev->mask & IN_ATTRIB)
                type = SG_ENVD_EV_CHMOD;
            else
                continue;
            if (w->recursive && (ev->mask & IN_ISDIR) && type == SG_ENVD_EV_CREATE) {
                char a[8192];
                snprintf(a, sizeof(a), "%s/%s", w->root, name);
                watch_add(w, a, name);
            }
            sg__stream_send(w->st, sg_envd_watch_event(name, type));
            if (w->st == NULL)
                return;
            if (uploaded) {
                sg__stream_send(w->st, sg_envd_watch_event(name, SG_ENVD_EV_WRITE));
                if (w->st == NULL)
                    return;
            }
        }
    }
}

static void rpc_watch(sg__server_t *srv, h2o_req_t *req, const sg__user_t *u, json_t *body)
{
    char path[4096];
    json_t *p = sg_envd_field(body, "path", NULL);
    if (!json_is_string(p) || sg_envd_resolve_path(json_string_value(p), u->home, path,
                                                   sizeof(path)) != 0) {
        sg__rpc_fail(req, true, SG_ENVD_INVALID_ARGUMENT, "path must be a non-empty path");
        return;
    }
    sg__as_user(u);
    struct stat sb;
    int r = stat(path, &sb) == 0 ? 0 : errno;
    if (r == 0 && S_ISDIR(sb.st_mode) && access(path, R_OK | X_OK) != 0)
        r = errno;
    sg__as_root();
    if (r != 0) {
        fail_errno(req, true, r, "cannot watch", path);
        return;
    }
    if (!S_ISDIR(sb.st_mode)) {
        sg__rpc_fail(req, true, SG_ENVD_INVALID_ARGUMENT, "path is not a directory");
        return;
    }
    watcher_t *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        sg__rpc_fail(req, true, SG_ENVD_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    w->srv = srv;
    w->user = *u;
    w->recursive = json_is_true(sg_envd_field(body, "recursive", NULL));
    snprintf(w->root, sizeof(w->root), "%s", path);
    w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (w->fd < 0 || (r = watch_add(w, path, "")) != 0) {
        int e = w->fd < 0 ? errno : -r;
        if (w->fd >= 0)
            close(w->fd);
        for (size_t i = 0; i < w->nw; i++)
            free(w->w[i].rel);
        free(w->w);
        free(w);
        fail_errno(req, true, e, "cannot watch", path);
        return;
    }
    sg__stream_t *st = sg__stream_open(srv, req, w, on_watch_detach, NULL, true);
    if (st == NULL) {
        close(w->fd);
        for (size_t i = 0; i < w->nw; i++)
            free(w->w[i].rel);
        free(w->w);
        free(w);
        return;
    }
    w->st = st;
    uv_poll_init(srv->loop, &w->poll, w->fd);
    w->poll.data = w;
    uv_poll_start(&w->poll, UV_READABLE, on_watch_events);
    sg__stream_send(st, json_pack("{s:{}}", "start"));
}

void sg__fs_rpc(sg__server_t *srv, h2o_req_t *req, const sg__user_t *user, const char *method,
                json_t *body, bool streaming)
{
    if (strcmp(method, "WatchDir") == 0)
        rpc_watch(srv, req, user, body);
    else if (streaming)
        sg__rpc_fail(req, true, SG_ENVD_UNIMPLEMENTED, "not a streaming method");
    else if (strcmp(method, "Stat") == 0)
        rpc_stat(req, user, body);
    else if (strcmp(method, "ListDir") == 0)
        rpc_listdir(req, user, body);
    else if (strcmp(method, "MakeDir") == 0)
        rpc_mkdir(req, user, body);
    else if (strcmp(method, "Move") == 0)
        rpc_move(req, user, body);
    else if (strcmp(method, "Remove") == 0)
        rpc_remove(req, user, body);
    else
        sg__rpc_fail(req, false, SG_ENVD_UNIMPLEMENTED, "unknown method");
}
