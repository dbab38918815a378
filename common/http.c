/*
 * The HTTP response helpers shared by the gateway, the node agent and envd.
 *
 * Every error reply in sandgate goes through sg_http_error(), so the body shape
 * {"code":N,"message":"..."} (what the E2B SDK parses) is defined in one place. Bodies are
 * allocated from the request's pool and so live exactly as long as the response.
 */
#include <malloc.h>
#include <string.h>
#include <h2o.h>
#include <jansson.h>
#include "common/common.h"

const char *sg_http_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    }
    return "";
}

void sg_http_json(h2o_req_t *req, int status, json_t *body)
{
    req->res.status = status;
    req->res.reason = sg_http_reason(status);
    if (body == NULL) {
        h2o_send_inline(req, "", 0);
        return;
    }
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("application/json"));
    size_t len = json_dumpb(body, NULL, 0, JSON_COMPACT);
    char *buf = h2o_mem_alloc_pool(&req->pool, len + 1);
    json_dumpb(body, buf, len, JSON_COMPACT);
    json_decref(body);
    h2o_send_inline(req, buf, len);
}

void sg_http_error(h2o_req_t *req, int status, const char *message)
{
    sg_http_json(req, status, json_pack("{s:i,s:s}", "code", status, "message", message));
}

/* glibc gives the top of a heap back to the kernel once 128 KiB of it is free (M_TRIM_THRESHOLD's
 * default). A proxy frees and allocates the same buffers on every response (h2o's TLS records,
 * 16 KiB each, its socket buffers, ours), so each trim made the next response fault its pages in
 * again: the edge bench's 1 MiB TLS responses cost the gateway 4x the CPU (8.7 vs 1.9 ms each,
 * bench/edge_bench.mjs). Up to 32 MiB of free heap is kept per arena instead. Setting it also
 * fixes the mmap threshold at 128 KiB (glibc stops adapting both), which measured no worse. */
void sg_http_tune_malloc(void)
{
    mallopt(M_TRIM_THRESHOLD, 32 * 1024 * 1024);
}

uv_tcp_t *sg_http_accept_conn(uv_stream_t *listener, size_t size, uv_close_cb close_cb)
{
    uv_tcp_t *conn = h2o_mem_alloc(size);
    memset(conn, 0, size);
    uv_tcp_init(listener->loop, conn);
    if (uv_accept(listener, (uv_stream_t *)conn) != 0) {
        uv_close((uv_handle_t *)conn, close_cb);
        return NULL;
    }
    uv_tcp_nodelay(conn, 1); /* small responses (API JSON, Connect frames) must not wait */
    return conn;
}

void sg_http_serve(uv_tcp_t *conn, h2o_accept_ctx_t *actx, uv_close_cb close_cb)
{
    h2o_accept(actx, h2o_uv_socket_create((uv_stream_t *)conn, close_cb));
}

void sg_http_accept(uv_stream_t *listener, h2o_accept_ctx_t *actx)
{
    uv_tcp_t *conn = sg_http_accept_conn(listener, sizeof(*conn), (uv_close_cb)free);
    if (conn != NULL)
        sg_http_serve(conn, actx, (uv_close_cb)free);
}

const char *sg_http_header(h2o_req_t *req, const char *name, size_t *len)
{
    size_t nlen = strlen(name);
    for (size_t i = 0; i < req->headers.size; i++) {
        h2o_header_t *h = &req->headers.entries[i];
        if (h->name->len == nlen && memcmp(h->name->base, name, nlen) == 0) {
            *len = h->value.len;
            return h->value.base;
        }
    }
    return NULL;
}
