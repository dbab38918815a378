/*
 * uvwrite: libuv's uv_write, interposed for libh2o's calls.
 *
 * libh2o 2.2.5 (libuv flavour) ignores uv_write's return value: its do_write assumes the write
 * callback always runs. libuv (1.44 here) returns UV_EPIPE at once, with no callback, on a
 * stream whose read failed: a read error (ECONNRESET from a client that reset the connection)
 * clears the stream's writable flag. h2o answers that read error by closing the connection, and
 * for TLS the close first writes a close_notify and waits for that write's callback: it never
 * comes, and the connection (fd, SSL state, request memory, its per-address count) stays for
 * good. edge-tls.test.mjs: 39 of 40 TLS clients resetting after their answer stayed open.
 *
 * The executable's uv_write takes precedence over libuv's for every library linked into it
 * (ELF symbol interposition). A write refused at once is completed from a check handle of the
 * calling thread's loop with the refusal's status (the check phase runs after the poll phase of
 * the same iteration and before any close callback, and h2o writes only from timers and I/O
 * callbacks, so the stream is still alive): exactly what libuv does for a write that fails later.
 * Writes from this executable's own code keep libuv's contract (a refusal is returned), which
 * the callers already handle; only a refusal is ever redirected.
 */
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <uv.h>

typedef int (*write_fn)(uv_write_t *, uv_stream_t *, const uv_buf_t[], unsigned int, uv_write_cb);

typedef struct deferred {
    struct deferred *next;
    uv_write_t *req;
    uv_write_cb cb;
    int status;
} deferred_t;

/* per thread: each worker thread runs one loop */
static _Thread_local struct {
    uv_check_t check;
    uv_loop_t *loop; /* the loop `check` belongs to; NULL until a first refusal */
    deferred_t *head, **tail;
} tl;

static void on_check(uv_check_t *h)
{
    /* completions may refuse further writes: those are appended and run in this same pass */
    while (tl.head != NULL) {
        deferred_t *d = tl.head;
        if ((tl.head = d->next) == NULL)
            tl.tail = &tl.head;
        uv_write_t *req = d->req;
        uv_write_cb cb = d->cb;
        int status = uv_is_closing((uv_handle_t *)req->handle) ? UV_ECANCELED : d->status;
        free(d);
        cb(req, status);
    }
    uv_check_stop(h);
}

/* Is the caller outside this executable (a library's code)? Asked only on a refusal. */
static int called_from_library(void *ret)
{
    Dl_info self, caller;
    if (dladdr((void *)called_from_library, &self) == 0 || dladdr(ret, &caller) == 0)
        return 0;
    return caller.dli_fbase != self.dli_fbase;
}

int uv_write(uv_write_t *req, uv_stream_t *handle, const uv_buf_t bufs[], unsigned int nbufs,
             uv_write_cb cb)
{
    static _Atomic(write_fn) real;
    write_fn f = atomic_load_explicit(&real, memory_order_acquire);
    if (f == NULL) {
        f = (write_fn)dlsym(RTLD_NEXT, "uv_write");
        if (f == NULL)
            abort(); /* libuv is linked: cannot happen */
        atomic_store_explicit(&real, f, memory_order_release);
    }
    int r = f(req, handle, bufs, nbufs, cb);
    if (r == 0 || cb == NULL || !called_from_library(__builtin_return_address(0)))
        return r;
    if (tl.loop == NULL) {
        if (uv_check_init(handle->loop, &tl.check) != 0)
            return r;
        uv_unref((uv_handle_t *)&tl.check); /* never what keeps a loop running */
        tl.loop = handle->loop;
        tl.tail = &tl.head;
    }
    deferred_t *d = malloc(sizeof(*d));
    if (tl.loop != handle->loop || d == NULL) {
        free(d);
        return r;
    }
    req->handle = handle;
    req->cb = cb;
    *d = (deferred_t){.req = req, .cb = cb, .status = r};
    *tl.tail = d;
    tl.tail = &d->next;
    uv_check_start(&tl.check, on_check);
    return 0;
}
