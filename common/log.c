/*
 * Structured logging: one line per event, in logfmt or JSON.
 *
 * A line is built in a stack buffer and written with one fwrite on an unbuffered-per-line stream
 * (a loop thread may batch whole lines: sg_log_batch_start), so concurrent threads never
 * interleave within a line. Lines longer than the buffer are cut
 * (marked with "...") rather than split. The level/format/stream are set once at start-up.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/time.h>
#include "common/common.h"

#define SG_LOG_LINE_MAX 4096

static sg_log_level_t log_level = SG_LOG_INFO;
static sg_log_format_t log_format = SG_LOG_LOGFMT;
static FILE *log_out;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void sg_log_setup(sg_log_level_t level, sg_log_format_t format, FILE *out)
{
    log_level = level;
    log_format = format;
    log_out = out;
}

int sg_log_level_parse(const char *s, sg_log_level_t *out)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0) {
            *out = (sg_log_level_t)i;
            return 0;
        }
    return SG_EINVAL;
}

int sg_log_format_parse(const char *s, sg_log_format_t *out)
{
    if (strcmp(s, "logfmt") == 0)
        *out = SG_LOG_LOGFMT;
    else if (strcmp(s, "json") == 0)
        *out = SG_LOG_JSON;
    else
        return SG_EINVAL;
    return 0;
}

bool sg_log_enabled(sg_log_level_t level)
{
    return level >= log_level;
}

typedef struct {
    char *p;
    size_t len, cap; /* cap excludes the room kept for the final "\n\0" */
    bool cut;
} linebuf_t;

static void put(linebuf_t *b, const char *s, size_t n)
{
    if (b->len + n > b->cap) {
        n = b->cap - b->len;
        b->cut = true;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void putc_(linebuf_t *b, char c)
{
    put(b, &c, 1);
}

static void put_json_str(linebuf_t *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    putc_(b, '"');
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        switch (*c) {
        case '"': put(b, "\\\"", 2); break;
        case '\\': put(b, "\\\\", 2); break;
        case '\n': put(b, "\\n", 2); break;
        case '\r': put(b, "\\r", 2); break;
        case '\t': put(b, "\\t", 2); break;
        default:
            if (*c < 0x20) {
                char u[6] = {'\\', 'u', '0', '0', hex[*c >> 4], hex[*c & 15]};
                put(b, u, 6);
            } else {
                putc_(b, (char)*c);
            }
        }
    }
    putc_(b, '"');
}

static bool logfmt_needs_quotes(const char *s)
{
    if (*s == '\0')
        return true;
    for (const unsigned char *c = (const unsigned char *)s; *c; c++)
        if (*c <= ' ' || *c == '"' || *c == '=' || *c == '\\' || *c == 0x7f)
            return true;
    return false;
}

static void put_logfmt_str(linebuf_t *b, const char *s)
{
    if (!logfmt_needs_quotes(s)) {
        put(b, s, strlen(s));
        return;
    }
    put_json_str(b, s); /* logfmt quoting uses the same escapes */
}

static void put_value(linebuf_t *b, sg_log_format_t fmt, const sg_log_field_t *f)
{
    char num[64];
    int n;
    switch (f->type) {
    case SG_LF_STR:
        if (fmt == SG_LOG_JSON)
            put_json_str(b, f->s ? f->s : "");
        else
            put_logfmt_str(b, f->s ? f->s : "");
        return;
    case SG_LF_INT:
        n = snprintf(num, sizeof(num), "%lld", f->i);
        break;
    case SG_LF_DBL:
        n = snprintf(num, sizeof(num), "%.3f", f->d);
        break;
    default:
        n = 0;
    }
    put(b, num, (size_t)n);
}

size_t sg_log_format_line(char *buf, size_t cap, sg_log_format_t fmt, long long ts_ms,
                          sg_log_level_t level, const char *msg, const sg_log_field_t *fields,
                          size_t n)
{
    char ts[32];
    if (cap < 8)
        return 0;
    linebuf_t b = {.p = buf, .len = 0, .cap = cap - 5}; /* room for "...\n\0" */
    sg_format_rfc3339(ts_ms, ts, sizeof(ts));
    if (fmt == SG_LOG_JSON) {
        put(&b, "{\"ts\":\"", 7);
        put(&b, ts, strlen(ts));
        put(&b, "\",\"level\":\"", 11);
        put(&b, level_names[level], strlen(level_names[level]));
        put(&b, "\",\"msg\":", 8);
        put_json_str(&b, msg);
        for (size_t i = 0; i < n; i++) {
            putc_(&b, ',');
            put_json_str(&b, fields[i].key);
            putc_(&b, ':');
            put_value(&b, fmt, &fields[i]);
        }
        putc_(&b, '}');
    } else {
        put(&b, "ts=", 3);
        put(&b, ts, strlen(ts));
        put(&b, " level=", 7);
        put(&b, level_names[level], strlen(level_names[level]));
        put(&b, " msg=", 5);
        put_logfmt_str(&b, msg);
        for (size_t i = 0; i < n; i++) {
            putc_(&b, ' ');
            put(&b, fields[i].key, strlen(fields[i].key));
            putc_(&b, '=');
            put_value(&b, fmt, &fields[i]);
        }
    }
    if (b.cut) {
        memcpy(buf + b.len, "...", 3);
        b.len += 3;
    }
    buf[b.len++] = '\n';
    buf[b.len] = '\0';
    return b.len;
}

#define SG_LOG_BATCH_CAP (64 * 1024)

static _Thread_local struct {
    char *buf; /* NULL: not batching */
    size_t len;
} batch;

static void write_out(const char *bytes, size_t len)
{
    FILE *out = log_out ? log_out : stderr;
    fwrite(bytes, 1, len, out);
    fflush(out);
}

int sg_log_batch_start(void)
{
    if (batch.buf == NULL && (batch.buf = malloc(SG_LOG_BATCH_CAP)) == NULL)
        return SG_ENOMEM;
    batch.len = 0;
    return 0;
}

void sg_log_batch_flush(void)
{
    if (batch.len != 0)
        write_out(batch.buf, batch.len);
    batch.len = 0;
}

void sg_log_batch_stop(void)
{
    sg_log_batch_flush();
    free(batch.buf);
    batch.buf = NULL;
}

void sg_log_fields(sg_log_level_t level, const char *msg, const sg_log_field_t *fields, size_t n)
{
    char line[SG_LOG_LINE_MAX];
    if (level < log_level)
        return;
    size_t len = sg_log_format_line(line, sizeof(line), log_format, sg_now_ms(), level, msg,
                                    fields, n);
    if (batch.buf == NULL) {
        write_out(line, len);
        return;
    }
    if (batch.len + len > SG_LOG_BATCH_CAP)
        sg_log_batch_flush();
    memcpy(batch.buf + batch.len, line, len);
    batch.len += len;
}

long long sg_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t sg_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void sg_format_rfc3339(long long ms, char *out, size_t cap)
{
    time_t sec = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}
