/*
 * Files over plain HTTP: GET /files streams a file out, POST /files writes one or several files
 * (multipart/form-data, or a raw body with optional gzip content-encoding).
 *
 * Both open their file on the loop thread as the user (sg__as_user), so the kernel checks the
 * user's permissions and new files belong to the user; the bytes then move in 256 KB chunks
 * through libuv's thread pool (uv_fs_read / uv_fs_write on the open descriptor), one chunk in
 * flight at a time, so memory use does not depend on the file size and the loop never waits on
 * the disk.
 *
 * Uploads are atomic: each file is written to a temporary file beside its target and renamed
 * over it only when complete; any failure (or the client vanishing) unlinks the temporary file.
 * h2o buffers the whole request body before envd sees it (bounded by --max-body-mb, 413 past
 * it), so a chunk is copied (or inflated) from that buffer into the job's own buffer before it
 * is handed to the pool: a write in flight never points into a request that may be disposed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/stat.h>
#include <zlib.h>
#include "common/common.h"
#include "envd/internal.h"

#define FILES_CHUNK (256u << 10)
#define FILES_MAX_PARTS 1000

/* ---- download -------------------------------------------------------------------------------- */

typedef struct download download_t;
typedef struct {
    download_t *d;
} download_token_t;

struct download {
    h2o_generator_t gen;
    h2o_req_t *req; /* NULL once disposed */
    uv_loop_t *loop;
    uv_fs_t fsreq;
    int fd;
    bool reading;
    int64_t left, offset;
    char buf[FILES_CHUNK];
};

static void download_free(download_t *d)
{
    if (d->fd >= 0)
        close(d->fd);
    free(d);
}

static void download_next(download_t *d);

static void on_download_read(uv_fs_t *fr)
{
    download_t *d = fr->data;
    ssize_t n = fr->result;
    uv_fs_req_cleanup(fr);
    d->reading = false;
    if (d->req == NULL) {
        download_free(d);
        return;
    }
    if (n <= 0) {
        /* the file shrank (or failed) under us: end the body where it stands */
        h2o_send(d->req, NULL, 0, H2O_SEND_STATE_ERROR);
        return;
    }
    if (n > d->left)
        n = (ssize_t)d->left;
    d->left -= n;
    d->offset += n;
    h2o_iovec_t b = h2o_iovec_init(d->buf, (size_t)n);
    h2o_send(d->req, &b, 1, d->left == 0 ? H2O_SEND_STATE_FINAL : H2O_SEND_STATE_IN_PROGRESS);
}

static void download_next(download_t *d)
{
    size_t want = d->left < (int64_t)FILES_CHUNK ? (size_t)d->left : FILES_CHUNK;
    uv_buf_t b = uv_buf_init(d->buf, (unsigned)want);
    d->fsreq.data = d;
    d->reading = true;
    if (uv_fs_read(d->loop, &d->fsreq, d->fd, &b, 1, d->offset, on_download_read) != 0) {
        d->reading = false;
        h2o_send(d->req, NULL, 0, H2O_SEND_STATE_ERROR);
    }
}

static void on_download_proceed(h2o_generator_t *g, h2o_req_t *req)
{
    download_t *d = (download_t *)g;
    if (d->left > 0 && !d->reading)
        download_next(d);
}

static void on_download_stop(h2o_generator_t *g, h2o_req_t *req)
{
}

static void on_download_dispose(void *p)
{
    download_t *d = ((download_token_t *)p)->d;
    d->req = NULL;
    if (!d->reading)
        download_free(d);
}

static const char *content_type_of(const char *path)
{
    static const struct {
        const char *ext, *type;
    } types[] = {
        {".txt", "text/plain; charset=utf-8"}, {".md", "text/markdown; charset=utf-8"},
        {".html", "text/html; charset=utf-8"}, {".htm", "text/html; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},   {".csv", "text/csv; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"}, {".mjs", "text/javascript; charset=utf-8"},
        {".json", "application/json"},         {".xml", "text/xml; charset=utf-8"},
        {".py", "text/x-python; charset=utf-8"}, {".sh", "text/x-sh; charset=utf-8"},
        {".png", "image/png"},                 {".jpg", "image/jpeg"},
        {".jpeg", "image/jpeg"},               {".gif", "image/gif"},
        {".svg", "image/svg+xml"},             {".webp", "image/webp"},
        {".pdf", "application/pdf"},           {".zip", "application/zip"},
        {".gz", "application/gzip"},           {".tar", "application/x-tar"},
        {".wasm", "application/wasm"},
    };
    const char *dot = strrchr(path, '.');
    const char *slash = strrchr(path, '/');
    if (dot != NULL && (slash == NULL || dot > slash))
        for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
            if (strcasecmp(dot, types[i].ext) == 0)
                return types[i].type;
    return "application/octet-stream";
}

static int file_status(int err)
{
    switch (err) {
    case ENOENT: return 404;
    case EACCES: case EPERM: case EROFS: return 403;
    case ENOSPC: case EDQUOT: return 507;
    case EISDIR: case ENOTDIR: case EINVAL: case ENAMETOOLONG: case ELOOP: return 400;
    }
    return 500;
}

static void files_fail(h2o_req_t *req, int err, const char *what, const char *path)
{
    char msg[4400];
    if (err == ENOENT)
        snprintf(msg, sizeof(msg), "path '%s' does not exist", path);
    else
        snprintf(msg, sizeof(msg), "%s '%s': %s", what, path, strerror(err));
    sg_http_error(req, file_status(err), msg);
}

void sg__files_get(sg__server_t *srv, h2o_req_t *req, const sg__user_t *u)
{
    char path[4096];
    char *q = sg__query_param(req, "path");
    if (q == NULL || sg_envd_resolve_path(q, u->home, path, sizeof(path)) != 0) {
        sg_http_error(req, 400, "the path query parameter is required");
        return;
    }
    sg__as_user(u);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    int err = errno;
    sg__as_root();
    if (fd < 0) {
        files_fail(req, err, "cannot open", path);
        return;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        sg_http_error(req, 400, S_ISDIR(sb.st_mode) ? "path is a directory"
                                                    : "path is not a regular file");
        return;
    }
    req->res.status = 200;
    req->res.reason = "OK";
    req->res.content_length = (size_t)sb.st_size;
    const char *ct = content_type_of(path);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, ct, strlen(ct));
    const char *slash = strrchr(path, '/');
    char *disp = h2o_mem_alloc_pool(&req->pool, strlen(path) + 64);
    int dl = sprintf(disp, "inline; filename=\"");
    for (const char *c = slash + 1; *c; c++)
        if (*c != '"' && *c != '\\' && (unsigned char)*c >= 0x20)
            disp[dl++] = *c;
    dl += sprintf(disp + dl, "\"");
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_DISPOSITION, NULL, disp,
                   (size_t)dl);
    if (sb.st_size == 0) {
        close(fd);
        h2o_send_inline(req, "", 0);
        return;
    }
    download_t *d = malloc(sizeof(*d));
    download_token_t *tok = d ? h2o_mem_alloc_shared(&req->pool, sizeof(*tok),
                                                     on_download_dispose)
                              : NULL;
    if (tok == NULL) {
        free(d);
        close(fd);
        sg_http_error(req, 500, "out of memory");
        return;
    }
    memset(d, 0, offsetof(download_t, buf));
    tok->d = d;
    d->req = req;
    d->loop = srv->loop;
    d->fd = fd;
    d->left = sb.st_size;
    d->gen.proceed = on_download_proceed;
    d->gen.stop = on_download_stop;
    h2o_start_response(req, &d->gen);
    download_next(d);
}

/* ---- upload ---------------------------------------------------------------------------------- */

typedef struct {
    char path[4096];
    const uint8_t *data; /* into the request body: only touched while req is alive */
    size_t len;
} upload_file_t;

typedef struct upload upload_t;
typedef struct {
    upload_t *up;
} upload_token_t;

struct upload {
    h2o_req_t *req;
    uv_loop_t *loop;
    uv_fs_t fsreq;
    sg__user_t user;
    upload_file_t *files;
    size_t nfiles, cur;
    bool gzip, writing, zinit;
    z_stream z;
    int fd;
    char tmp[4200];
    size_t consumed;   /* input bytes of the current file taken so far */
    int64_t offset;    /* output bytes written so far */
    size_t chunk_len;
    json_t *result;
    const char *step;    /* what failed, for the error message */
    upload_token_t *tok; /* the request pool's back-pointer to this job, or NULL */
    char buf[FILES_CHUNK];
};

static void upload_free(upload_t *up)
{
    if (up->tok)
        up->tok->up = NULL;
    if (up->fd >= 0) {
        close(up->fd);
        unlink(up->tmp);
    }
    if (up->zinit)
        inflateEnd(&up->z);
    json_decref(up->result);
    free(up->files);
    free(up);
}

static void upload_fail(upload_t *up, int err, const char *what, const char *path)
{
    if (up->req) {
        char msg[4400];
        snprintf(msg, sizeof(msg), "%s '%s': %s", up->step ? up->step : what, path,
                 strerror(err));
        sg_http_error(up->req, file_status(err), msg);
    }
    upload_free(up);
}

static void upload_step(upload_t *up);

static void on_upload_dispose(void *p)
{
    upload_t *up = ((upload_token_t *)p)->up;
    if (up == NULL)
        return;
    up->req = NULL;
    up->tok = NULL;
    if (!up->writing)
        upload_free(up);
}


bool sg__files_is_upload_tmp(const char *name)
{
    size_t n = strlen(name), tag = strlen(SG__UPLOAD_TMP_TAG);
    return name[0] == '.' && n > 1 + tag + 6 &&
           memcmp(name + n - 6 - tag, SG__UPLOAD_TMP_TAG, tag) == 0;
}

static int upload_open(upload_t *up)
{
    upload_file_t *f = &up->files[up->cur];
    sg__as_user(&up->user);
    up->step = "cannot create the folders of";
    int r = sg__fs_mkdir_parents(f->path);
    struct stat sb;
    if (r == 0 && stat(f->path, &sb) == 0 && S_ISDIR(sb.st_mode))
        r = -EISDIR;
    if (r == 0) {
        up->step = "cannot create a temporary file beside";
        const char *slash = strrchr(f->path, '/');
        snprintf(up->tmp, sizeof(up->tmp), "%.*s/.%s" SG__UPLOAD_TMP_TAG "XXXXXX",
                 (int)(slash - f->path), f->path, slash + 1);
        up->fd = mkostemp(up->tmp, O_CLOEXEC);
        if (up->fd < 0)
            r = -errno;
        else
            fchmod(up->fd, 0644);
    }
    sg__as_root();
    up->offset = 0;
    up->consumed = 0;
    if (r == 0)
        up->step = "cannot write";
    if (r == 0 && up->gzip) {
        memset(&up->z, 0, sizeof(up->z));
        if (inflateInit2(&up->z, 15 + 32) != Z_OK)
            return -ENOMEM;
        up->zinit = true;
    }
    return r;
}

static int upload_commit(upload_t *up)
{
    upload_file_t *f = &up->files[up->cur];
    int r = 0;
    sg__as_user(&up->user);
    if (close(up->fd) != 0)
        r = -errno;
    up->fd = -1;
    up->step = "cannot rename the upload onto";
    if (r == 0 && rename(up->tmp, f->path) != 0)
        r = -errno;
    if (r != 0)
        unlink(up->tmp);
    sg__as_root();
    if (up->zinit) {
        inflateEnd(&up->z);
        up->zinit = false;
    }
    if (r == 0) {
        const char *slash = strrchr(f->path, '/');
        json_array_append_new(up->result, json_pack("{s:s,s:s,s:s}", "name", slash + 1, "type",
                                                    "file", "path", f->path));
    }
    return r;
}

static void on_upload_written(uv_fs_t *fr)
{
    upload_t *up = fr->data;
    ssize_t n = fr->result;
    uv_fs_req_cleanup(fr);
    up->writing = false;
    if (up->req == NULL) {
        upload_free(up);
        return;
    }
    if (n < 0) {
        upload_fail(up, (int)-n, "cannot write", up->files[up->cur].path);
        return;
    }
    if ((size_t)n < up->chunk_len) {
        /* short write: move the rest to the front and write it again */
        memmove(up->buf, up->buf + n, up->chunk_len - (size_t)n);
    }
    up->chunk_len -= (size_t)n;
    up->offset += n;
    upload_step(up);
}

/* Fills up->buf with the next output bytes of the current file; returns 0, or -errno. */
static int upload_fill(upload_t *up, bool *eof)
{
    upload_file_t *f = &up->files[up->cur];
    *eof = false;
    if (!up->gzip) {
        size_t n = f->len - up->consumed;
        if (n > FILES_CHUNK)
            n = FILES_CHUNK;
        memcpy(up->buf, f->data + up->consumed, n);
        up->consumed += n;
        up->chunk_len = n;
        *eof = n == 0;
        return 0;
    }
    up->z.next_in = (Bytef *)(f->data + up->consumed);
    up->z.avail_in = (uInt)((f->len - up->consumed) > (1u << 30) ? (1u << 30)
                                                                 : f->len - up->consumed);
    up->z.next_out = (Bytef *)up->buf;
    up->z.avail_out = FILES_CHUNK;
    uInt before = up->z.avail_in;
    int zr = inflate(&up->z, Z_NO_FLUSH);
    up->consumed += before - up->z.avail_in;
    up->chunk_len = FILES_CHUNK - up->z.avail_out;
    if (zr == Z_STREAM_END) {
        if (up->chunk_len == 0)
            *eof = true;
        return 0;
    }
    if (zr != Z_OK && !(zr == Z_BUF_ERROR && up->chunk_len > 0))
        return -EINVAL;
    if (up->chunk_len == 0 && up->consumed >= f->len)
        return -EINVAL; /* truncated gzip stream */
    return 0;
}

static void upload_step(upload_t *up)
{
    for (;;) {
        if (up->cur >= up->nfiles) {
            h2o_req_t *req = up->req;
            json_t *res = up->result;
            up->result = NULL;
            upload_free(up);
            sg_http_json(req, 200, res);
            return;
        }
        if (up->fd < 0) {
            int r = upload_open(up);
            if (r != 0) {
                upload_fail(up, -r, "cannot write", up->files[up->cur].path);
                return;
            }
        }
        if (up->chunk_len == 0) {
            bool eof;
            int r = upload_fill(up, &eof);
            if (r != 0) {
                sg_http_error(up->req, 400, "the body is not valid gzip");
                    upload_free(up);
                return;
            }
            if (eof) {
                r = upload_commit(up);
                if (r != 0) {
                    upload_fail(up, -r, "cannot write", up->files[up->cur].path);
                    return;
                }
                up->cur++;
                continue;
            }
            if (up->chunk_len == 0)
                continue; /* inflate consumed input without output yet */
        }
        uv_buf_t b = uv_buf_init(up->buf, (unsigned)up->chunk_len);
        up->fsreq.data = up;
        up->writing = true;
        int r = uv_fs_write(up->loop, &up->fsreq, up->fd, &b, 1, up->offset, on_upload_written);
        if (r != 0) {
            up->writing = false;
            upload_fail(up, -r, "cannot write", up->files[up->cur].path);
        }
        return;
    }
}

void sg__files_post(sg__server_t *srv, h2o_req_t *req, const sg__user_t *u)
{
    char *qpath = sg__query_param(req, "path");
    size_t ctlen = 0;
    const char *ct = sg_http_header(req, "content-type", &ctlen);
    const char *b;
    size_t blen;
    upload_t *up = calloc(1, sizeof(*up));
    if (up == NULL) {
        sg_http_error(req, 500, "out of memory");
        return;
    }
    up->fd = -1;
    up->loop = srv->loop;
    up->user = *u;
    up->result = json_array();
    const uint8_t *body = (const uint8_t *)req->entity.base;
    size_t len = req->entity.base ? req->entity.len : 0;
    if (ct != NULL && sg_envd_multipart_boundary(ct, ctlen, &b, &blen) == 0) {
        sg_envd_part_t *parts = malloc(sizeof(*parts) * 64);
        size_t nparts = 0;
        int r = parts ? sg_envd_multipart_parse(body, len, b, blen, parts, 64, &nparts) : SG_ENOMEM;
        if (r == SG_ETOOBIG) {
            /* many files: parse again with room for FILES_MAX_PARTS */
            free(parts);
            parts = malloc(sizeof(*parts) * FILES_MAX_PARTS);
            r = parts ? sg_envd_multipart_parse(body, len, b, blen, parts, FILES_MAX_PARTS,
                                                &nparts)
                      : SG_ENOMEM;
        }
        if (r != 0) {
            free(parts);
            upload_free(up);
            sg_http_error(req, r == SG_ETOOBIG ? 413 : 400,
                          r == SG_ETOOBIG ? "too many parts in the multipart body"
                                          : "malformed multipart body");
            return;
        }
        up->files = calloc(nparts ? nparts : 1, sizeof(*up->files));
        for (size_t i = 0; up->files && i < nparts; i++) {
            if (parts[i].name_len != 4 || memcmp(parts[i].name, "file", 4) != 0)
                continue;
            const char *target = qpath ? qpath : parts[i].filename;
            upload_file_t *f = &up->files[up->nfiles];
            if (*target == '\0' || sg_envd_resolve_path(target, u->home, f->path,
                                                        sizeof(f->path)) != 0 ||
                strcmp(f->path, "/") == 0) {
                free(parts);
                upload_free(up);
                sg_http_error(req, 400, "each file part needs a path (the path query parameter "
                                        "or the part's filename)");
                return;
            }
            f->data = parts[i].data;
            f->len = parts[i].len;
            up->nfiles++;
        }
        free(parts);
        if (up->files == NULL || up->nfiles == 0 || (qpath && up->nfiles > 1)) {
            upload_free(up);
            sg_http_error(req, 400, up->nfiles > 1 ? "several files need no path parameter"
                                                   : "no part named 'file' in the body");
            return;
        }
    } else {
        /* a raw body (application/octet-stream): the path parameter names the file */
        up->files = calloc(1, sizeof(*up->files));
        if (up->files == NULL || qpath == NULL ||
            sg_envd_resolve_path(qpath, u->home, up->files[0].path,
                                 sizeof(up->files[0].path)) != 0 ||
            strcmp(up->files[0].path, "/") == 0) {
            upload_free(up);
            sg_http_error(req, 400, "the path query parameter is required");
            return;
        }
        up->files[0].data = body;
        up->files[0].len = len;
        up->nfiles = 1;
        size_t elen;
        const char *enc = sg_http_header(req, "content-encoding", &elen);
        if (enc != NULL && elen == 4 && strncasecmp(enc, "gzip", 4) == 0)
            up->gzip = true;
        else if (enc != NULL && !(elen == 8 && strncasecmp(enc, "identity", 8) == 0)) {
            upload_free(up);
            sg_http_error(req, 415, "unsupported content-encoding (gzip or identity)");
            return;
        }
    }
    upload_token_t *tok = h2o_mem_alloc_shared(&req->pool, sizeof(*tok), on_upload_dispose);
    tok->up = up;
    up->tok = tok;
    up->req = req;
    upload_step(up);
}
