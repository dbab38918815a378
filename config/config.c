/*
 * config: YAML loader, validator, printer and reference generator, all driven by the schema
 * tables in schema.c.
 *
 * The whole file is parsed with libyaml's document API (input capped at SG__CFG_MAX_INPUT), then
 * walk_section() visits one schema table against one mapping node: each key is looked up in the
 * table (unknown keys get an edit-distance suggestion), duplicates are caught with a per-field
 * "seen" slot (so a hostile file with many keys costs O(keys x fields), never O(keys^2)), scalar
 * values go through ${VAR} substitution and then a typed converter, and fields left unset get
 * their default, which is stored as text in the table and goes through the same converter (so
 * the documented default is exactly what is applied). Recursion follows the schema, not the
 * document, so YAML aliases (even cyclic ones) cannot make the walk deeper or longer than the
 * schema and the list caps allow.
 *
 * Every problem is collected (up to SG__CFG_MAX_ERRORS, then counted), sorted by position and
 * written to the caller's error buffer as whole "file:line:col: key: message" lines (line and
 * column 1-based, from libyaml marks; lines that do not fit are dropped, never cut). On any
 * error the partly filled struct is freed and zeroed, so callers never see half a config.
 */
#include "config/schema.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "common/common.h"

#define SG__CFG_MAX_INPUT (1024 * 1024)    /* config files are small; bounds libyaml's memory */
#define SG__CFG_MAX_SECRET_FILE (64 * 1024)
#define SG__CFG_MAX_VALUE (64 * 1024)      /* a scalar after ${VAR} substitution */
#define SG__CFG_MAX_ERRORS 50
#define SG__CFG_MAX_FIELDS 64              /* per table; checked by the unit test via the walk */
#define SG__CFG_PATH 256

typedef struct {
    size_t line, column;
    int seq;
    char *text; /* the whole line, with its newline */
} cfg_msg_t;

struct sg__cfg_ctx {
    const char *file;
    yaml_document_t *doc;
    char *err;
    size_t errlen;
    int nerr;
    cfg_msg_t msgs[SG__CFG_MAX_ERRORS];
    size_t nmsgs;
    int quiet; /* > 0 inside a section that was not a mapping: no "missing key" cascade */
};
typedef sg__cfg_ctx_t ctx_t;

static void walk_section(ctx_t *c, const sg__field_t *fields, void *base, yaml_node_t *map,
                         yaml_mark_t pos, const char *path);
static void free_section(const sg__field_t *fields, void *base);
static void print_section(FILE *f, const sg__field_t *fields, const void *base, int indent);
static void flush_errors(ctx_t *c);

/* ---- public ---------------------------------------------------------------------------------- */

static int load(const sg__field_t *root, void *out, size_t outsize, const char *name,
                const char *data, size_t len, char *err, size_t errlen)
{
    yaml_parser_t parser;
    yaml_document_t doc, doc2;
    ctx_t c = {.file = name, .doc = &doc, .err = err, .errlen = errlen};
    yaml_mark_t start = {0};
    int ret = SG_EINVAL;

    memset(out, 0, outsize);
    if (err && errlen)
        err[0] = '\0';
    if (len > SG__CFG_MAX_INPUT) {
        sg__cfg_error(&c, start, "", "file too large (%zu bytes, max %d)", len, SG__CFG_MAX_INPUT);
        flush_errors(&c);
        return SG_ETOOBIG;
    }
    if (!yaml_parser_initialize(&parser))
        return SG_ENOMEM;
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
    if (!yaml_parser_load(&parser, &doc)) {
        yaml_mark_t m = parser.problem_mark;
        if (parser.error == YAML_READER_ERROR) {
            /* reader errors carry a byte offset, not a mark */
            m.line = m.column = 0;
            for (size_t i = 0; i < parser.problem_offset && i < len; i++) {
                if (data[i] == '\n') {
                    m.line++;
                    m.column = 0;
                } else {
                    m.column++;
                }
            }
        }
        sg__cfg_error(&c, m, "", "syntax error: %s%s%s", parser.problem ? parser.problem : "?",
                      parser.context ? " " : "", parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        flush_errors(&c);
        return SG_EINVAL;
    }
    yaml_node_t *rootn = yaml_document_get_root_node(&doc);
    if (rootn) {
        /* a second document would be silently ignored: refuse it instead */
        if (!yaml_parser_load(&parser, &doc2)) {
            sg__cfg_error(&c, parser.problem_mark, "", "syntax error: %s",
                          parser.problem ? parser.problem : "?");
        } else {
            yaml_node_t *r2 = yaml_document_get_root_node(&doc2);
            if (r2)
                sg__cfg_error(&c, r2->start_mark, "", "only one YAML document is allowed");
            yaml_document_delete(&doc2);
        }
        start = rootn->start_mark;
    }
    walk_section(&c, root, out, rootn, start, "");
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    flush_errors(&c);
    if (c.nerr == 0)
        return 0;
    free_section(root, out);
    memset(out, 0, outsize);
    return ret;
}

static int load_file(const sg__field_t *root, void *out, size_t outsize, const char *path,
                     char *err, size_t errlen)
{
    char *data = NULL;
    size_t len = 0;
    int ret = sg__cfg_read_file(path, SG__CFG_MAX_INPUT, &data, &len);
    if (ret != 0) {
        memset(out, 0, outsize);
        if (err && errlen)
            snprintf(err, errlen, "%s: cannot read: %s\n", path,
                     ret == SG_ETOOBIG ? "file too large" : strerror(errno ? errno : EIO));
        return ret;
    }
    ret = load(root, out, outsize, path, data, len, err, errlen);
    free(data);
    return ret;
}

int sg_config_load_gateway(const char *path, sg_gateway_config_t *out, char *err, size_t errlen)
{
    return load_file(sg__cfg_gateway_schema, out, sizeof(*out), path, err, errlen);
}

int sg_config_load_node(const char *path, sg_node_config_t *out, char *err, size_t errlen)
{
    return load_file(sg__cfg_node_schema, out, sizeof(*out), path, err, errlen);
}

int sg_config_load_gateway_buffer(const char *name, const char *data, size_t len,
                                  sg_gateway_config_t *out, char *err, size_t errlen)
{
    return load(sg__cfg_gateway_schema, out, sizeof(*out), name, data, len, err, errlen);
}

int sg_config_load_node_buffer(const char *name, const char *data, size_t len,
                               sg_node_config_t *out, char *err, size_t errlen)
{
    return load(sg__cfg_node_schema, out, sizeof(*out), name, data, len, err, errlen);
}

void sg_config_free_gateway(sg_gateway_config_t *cfg)
{
    if (!cfg)
        return;
    free_section(sg__cfg_gateway_schema, cfg);
    memset(cfg, 0, sizeof(*cfg));
}

void sg_config_free_node(sg_node_config_t *cfg)
{
    if (!cfg)
        return;
    free_section(sg__cfg_node_schema, cfg);
    memset(cfg, 0, sizeof(*cfg));
}

void sg_config_print_gateway(FILE *f, const sg_gateway_config_t *cfg)
{
    print_section(f, sg__cfg_gateway_schema, cfg, 0);
}

void sg_config_print_node(FILE *f, const sg_node_config_t *cfg)
{
    print_section(f, sg__cfg_node_schema, cfg, 0);
}

int sg_config_parse_size(const char *s, size_t *out)
{
    static const struct {
        const char *unit;
        uint64_t mult;
    } units[] = {
        {"", 1},
        {"b", 1},
        {"k", 1024ull},
        {"kb", 1000ull},
        {"kib", 1024ull},
        {"m", 1024ull * 1024},
        {"mb", 1000ull * 1000},
        {"mib", 1024ull * 1024},
        {"g", 1024ull * 1024 * 1024},
        {"gb", 1000ull * 1000 * 1000},
        {"gib", 1024ull * 1024 * 1024},
        {"t", 1024ull * 1024 * 1024 * 1024},
        {"tb", 1000ull * 1000 * 1000 * 1000},
        {"tib", 1024ull * 1024 * 1024 * 1024},
    };
    uint64_t v = 0;
    const char *p = s;

    if (!s || !isdigit((unsigned char)*p))
        return SG_EINVAL;
    for (; isdigit((unsigned char)*p); p++) {
        if (v > (UINT64_MAX - 9) / 10)
            return SG_EINVAL;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    while (*p == ' ')
        p++;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcasecmp(p, units[i].unit) != 0)
            continue;
        if (v != 0 && units[i].mult > UINT64_MAX / v)
            return SG_EINVAL;
        if (v * units[i].mult > SIZE_MAX)
            return SG_EINVAL;
        *out = (size_t)(v * units[i].mult);
        return 0;
    }
    return SG_EINVAL;
}

/* ---- errors ---------------------------------------------------------------------------------- */

void sg__cfg_error(ctx_t *c, yaml_mark_t m, const char *path, const char *fmt, ...)
{
    char body[400], line[512];
    va_list ap;

    c->nerr++;
    if (!c->err || c->errlen == 0 || c->nmsgs >= SG__CFG_MAX_ERRORS)
        return;
    va_start(ap, fmt);
    vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    snprintf(line, sizeof(line), "%s:%zu:%zu: %s%s%s\n", c->file, (size_t)m.line + 1,
             (size_t)m.column + 1, path, path[0] ? ": " : "", body);
    cfg_msg_t *msg = &c->msgs[c->nmsgs];
    if (!(msg->text = strdup(line)))
        return;
    msg->line = m.line;
    msg->column = m.column;
    msg->seq = c->nerr;
    c->nmsgs++;
}

static int msg_cmp(const void *a, const void *b)
{
    const cfg_msg_t *x = a, *y = b;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    if (x->column != y->column)
        return x->column < y->column ? -1 : 1;
    return x->seq - y->seq;
}

/* Writes the collected messages in file order, whole lines only, into the caller's buffer. */
static void flush_errors(ctx_t *c)
{
    size_t used = 0;
    qsort(c->msgs, c->nmsgs, sizeof(c->msgs[0]), msg_cmp);
    for (size_t i = 0; i < c->nmsgs; i++) {
        size_t n = strlen(c->msgs[i].text);
        if (used + n < c->errlen) {
            memcpy(c->err + used, c->msgs[i].text, n + 1);
            used += n;
        } else {
            used = c->errlen; /* stop at the first line that does not fit */
        }
        free(c->msgs[i].text);
    }
    if (c->err && c->nerr > (int)c->nmsgs && used + 1 < c->errlen)
        snprintf(c->err + used, c->errlen - used, "%s: %d more errors not shown\n", c->file,
                 c->nerr - (int)c->nmsgs);
    c->nmsgs = 0;
}

/* Copies s for quoting in a message: at most 40 bytes, non-printables as '?'. */
static const char *shown(const char *s, char *buf, size_t cap)
{
    size_t i = 0;
    for (; s[i] && i + 4 < cap && i < 40; i++)
        buf[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    if (s[i] && i + 4 <= cap) {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = '\0';
    return buf;
}

/* ---- helpers --------------------------------------------------------------------------------- */

int sg__cfg_read_file(const char *path, size_t max, char **out, size_t *outlen)
{
    struct stat st;
    char *buf = NULL;
    size_t len = 0;
    int ret = SG_EIO;
    /* O_NONBLOCK: a FIFO given as a secret file must not hang start-up */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);

    if (fd < 0)
        return SG_EIO;
    if (fstat(fd, &st) != 0)
        goto done;
    if (!S_ISREG(st.st_mode)) {
        errno = EINVAL;
        goto done;
    }
    if ((uint64_t)st.st_size > max) {
        ret = SG_ETOOBIG;
        goto done;
    }
    buf = malloc(max + 1 < (size_t)st.st_size + 1 ? max + 1 : (size_t)st.st_size + 1);
    if (!buf) {
        ret = SG_ENOMEM;
        goto done;
    }
    for (;;) {
        if (len >= (size_t)st.st_size)
            break; /* the file may have grown since fstat: read what we sized for */
        ssize_t n = read(fd, buf + len, (size_t)st.st_size - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto done;
        if (n == 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    *out = buf;
    *outlen = len;
    buf = NULL;
    ret = 0;
    errno = 0;
done:
    free(buf);
    int saved = errno;
    close(fd);
    errno = saved;
    return ret;
}

static bool is_null_scalar(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *v = (const char *)n->data.scalar.value;
    return n->data.scalar.length == 0 || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 ||
           strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0;
}

static const char *node_kind(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_MAPPING_NODE:
        return "a mapping";
    case YAML_SEQUENCE_NODE:
        return "a list";
    default:
        return "a scalar";
    }
}

/* Appends n bytes to a growing buffer capped at SG__CFG_MAX_VALUE; false when over the cap. */
static bool buf_add(char **b, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > SG__CFG_MAX_VALUE)
        return false;
    if (*len + n + 1 > *cap) {
        size_t nc = (*len + n + 1) * 2;
        char *nb = realloc(*b, nc);
        if (!nb)
            return false;
        *b = nb;
        *cap = nc;
    }
    memcpy(*b + *len, s, n);
    *len += n;
    (*b)[*len] = '\0';
    return true;
}

/* ${VAR}, ${VAR:-default} and $$ in a scalar value. Returns a malloc'd string, or NULL after
 * reporting the problem (at the exact column for single-line plain scalars). */
static char *substitute(ctx_t *c, const yaml_node_t *n, const char *path)
{
    const char *s = (const char *)n->data.scalar.value;
    size_t slen = n->data.scalar.length, len = 0, cap = 0;
    char *out = NULL;
    bool exact = n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
                 n->start_mark.line == n->end_mark.line;

    if (memchr(s, '\0', slen)) {
        /* "\0" escapes would silently cut every C string downstream */
        sg__cfg_error(c, n->start_mark, path, "value contains a NUL character");
        return NULL;
    }
    if (!buf_add(&out, &len, &cap, "", 0)) {
        sg__cfg_error(c, n->start_mark, path, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < slen;) {
        yaml_mark_t m = n->start_mark;
        if (exact)
            m.column += i;
        if (s[i] != '$' || i + 1 >= slen || (s[i + 1] != '$' && s[i + 1] != '{')) {
            size_t j = i + 1;
            while (j < slen && s[j] != '$')
                j++;
            if (!buf_add(&out, &len, &cap, s + i, j - i))
                goto toolong;
            i = j;
            continue;
        }
        if (s[i + 1] == '$') {
            if (!buf_add(&out, &len, &cap, "$", 1))
                goto toolong;
            i += 2;
            continue;
        }
        /* ${NAME} or ${NAME:-default} */
        size_t j = i + 2, name0 = j;
        while (j < slen && (isalnum((unsigned char)s[j]) || s[j] == '_'))
            j++;
        size_t namelen = j - name0;
        if (namelen == 0 || namelen > 255 || isdigit((unsigned char)s[name0]) || j >= slen ||
            (s[j] != '}' && !(s[j] == ':' && j + 1 < slen && s[j + 1] == '-'))) {
            sg__cfg_error(c, m, path,
                          "bad variable reference (use ${NAME}, ${NAME:-default} or $$ for a "
                          "literal $)");
            goto fail;
        }
        char name[256];
        memcpy(name, s + name0, namelen);
        name[namelen] = '\0';
        const char *val = getenv(name);
        if (s[j] == '}') {
            if (!val) {
                sg__cfg_error(c, m, path, "environment variable %s is not set", name);
                goto fail;
            }
            j++;
        } else {
            size_t d0 = j + 2, d = d0;
            while (d < slen && s[d] != '}')
                d++;
            if (d >= slen) {
                sg__cfg_error(c, m, path, "unterminated ${ in value");
                goto fail;
            }
            if (!val || !*val) {
                if (!buf_add(&out, &len, &cap, s + d0, d - d0))
                    goto toolong;
                val = NULL;
            }
            j = d + 1;
        }
        if (val && !buf_add(&out, &len, &cap, val, strlen(val)))
            goto toolong;
        i = j;
    }
    return out;
toolong:
    sg__cfg_error(c, n->start_mark, path, "value too long after substitution (max %d bytes)",
                  SG__CFG_MAX_VALUE - 1);
fail:
    free(out);
    return NULL;
}

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[65];
    if (la > 64 || lb > 64)
        return 99;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

static void child_path(char *out, const char *path, const char *name)
{
    if (path[0])
        snprintf(out, SG__CFG_PATH, "%s.%s", path, name);
    else
        snprintf(out, SG__CFG_PATH, "%s", name);
}

static void *at(void *base, size_t off)
{
    return (char *)base + off;
}

static const void *cat(const void *base, size_t off)
{
    return (const char *)base + off;
}

/* ---- scalar conversion ----------------------------------------------------------------------- */

static const char *type_word(sg__ftype_t t)
{
    switch (t) {
    case SG__T_INT:
        return "an integer";
    case SG__T_DBL:
        return "a number";
    case SG__T_BOOL:
        return "a boolean (true or false)";
    case SG__T_SIZE:
        return "a size (e.g. 512, 64KiB, 10MB, 1GiB)";
    case SG__T_ENUM:
    case SG__T_STR:
        return "a string";
    case SG__T_SECTION:
    case SG__T_STRMAP:
        return "a mapping";
    default:
        return "a list";
    }
}

static void enum_list(const sg__field_t *fd, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; fd->enums[i]; i++) {
        int n = snprintf(buf + used, cap - used, "%s%s", i ? ", " : "", fd->enums[i]);
        if (n < 0 || (size_t)n >= cap - used)
            break;
        used += (size_t)n;
    }
}

static void fmt_num(char *buf, size_t cap, double v)
{
    snprintf(buf, cap, "%.15g", v);
}

/* Converts the text s (already substituted) into the field at base+fd->off. Returns false after
 * reporting at m. An empty string for an optional string field means "unset". */
static bool set_scalar(ctx_t *c, const sg__field_t *fd, void *base, const char *s, yaml_mark_t m,
                       const char *path)
{
    char sh[64], lo[40], hi[40];
    fmt_num(lo, sizeof(lo), fd->min);
    fmt_num(hi, sizeof(hi), fd->max);
    switch (fd->type) {
    case SG__T_STR:
    case SG__T_ENUM: {
        if (!*s) {
            if (fd->flags & SG__F_REQUIRED) {
                sg__cfg_error(c, m, path, "must not be empty");
                return false;
            }
            return true;
        }
        if (fd->type == SG__T_ENUM) {
            size_t i = 0;
            while (fd->enums[i] && strcmp(fd->enums[i], s) != 0)
                i++;
            if (!fd->enums[i]) {
                char allowed[256];
                enum_list(fd, allowed, sizeof(allowed));
                sg__cfg_error(c, m, path, "invalid value \"%s\" (allowed: %s)",
                              shown(s, sh, sizeof(sh)), allowed);
                return false;
            }
        }
        if (fd->min > 0 && strlen(s) < (size_t)fd->min) {
            sg__cfg_error(c, m, path, "too short (%zu characters, at least %s required)",
                          strlen(s), lo);
            return false;
        }
        if (fd->check) {
            const char *why = fd->check(s);
            if (why) {
                sg__cfg_error(c, m, path, "invalid value \"%s\": %s",
                              (fd->flags & SG__F_SECRET) ? "********" : shown(s, sh, sizeof(sh)),
                              why);
                return false;
            }
        }
        char *dup = strdup(s);
        if (!dup) {
            sg__cfg_error(c, m, path, "out of memory");
            return false;
        }
        *(char **)at(base, fd->off) = dup;
        return true;
    }
    case SG__T_INT: {
        char *end;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (!*s || isspace((unsigned char)*s) || *end || errno == ERANGE) {
            sg__cfg_error(c, m, path, "expected an integer, got \"%s\"", shown(s, sh, sizeof(sh)));
            return false;
        }
        if ((double)v < fd->min || (double)v > fd->max) {
            sg__cfg_error(c, m, path, "value %lld out of range %s..%s", v, lo, hi);
            return false;
        }
        *(int *)at(base, fd->off) = (int)v;
        return true;
    }
    case SG__T_DBL: {
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        if (!*s || isspace((unsigned char)*s) || *end || errno == ERANGE || !isfinite(v)) {
            sg__cfg_error(c, m, path, "expected a number, got \"%s\"", shown(s, sh, sizeof(sh)));
            return false;
        }
        if (v < fd->min || v > fd->max) {
            sg__cfg_error(c, m, path, "value %s out of range %s..%s", shown(s, sh, sizeof(sh)),
                          lo, hi);
            return false;
        }
        *(double *)at(base, fd->off) = v;
        return true;
    }
    case SG__T_BOOL: {
        static const char *const yes[] = {"true", "yes", "on"}, *const no[] = {"false", "no", "off"};
        for (int i = 0; i < 3; i++) {
            if (strcasecmp(s, yes[i]) == 0 || strcasecmp(s, no[i]) == 0) {
                *(bool *)at(base, fd->off) = strcasecmp(s, yes[i]) == 0;
                return true;
            }
        }
        sg__cfg_error(c, m, path, "expected a boolean (true or false), got \"%s\"",
                      shown(s, sh, sizeof(sh)));
        return false;
    }
    case SG__T_SIZE: {
        size_t v;
        if (sg_config_parse_size(s, &v) != 0) {
            sg__cfg_error(c, m, path, "expected a size (e.g. 512, 64KiB, 10MB, 1GiB), got \"%s\"",
                          shown(s, sh, sizeof(sh)));
            return false;
        }
        if ((double)v < fd->min || (double)v > fd->max) {
            sg__cfg_error(c, m, path, "value %zu out of range %s..%s bytes", v, lo, hi);
            return false;
        }
        *(size_t *)at(base, fd->off) = v;
        return true;
    }
    default:
        return false;
    }
}

/* A scalar node into a field: null check, substitution, conversion. */
static void set_from_node(ctx_t *c, const sg__field_t *fd, void *base, yaml_node_t *n,
                          const char *path)
{
    if (n->type != YAML_SCALAR_NODE) {
        sg__cfg_error(c, n->start_mark, path, "expected %s, got %s", type_word(fd->type),
                      node_kind(n));
        return;
    }
    char *s = substitute(c, n, path);
    if (!s)
        return;
    set_scalar(c, fd, base, s, n->start_mark, path);
    /* secrets may sit in this buffer: wipe before free */
    if (fd->flags & SG__F_SECRET)
        explicit_bzero(s, strlen(s));
    free(s);
}

static void set_from_file(ctx_t *c, const sg__field_t *fd, void *base, yaml_node_t *n,
                          const char *path)
{
    char sh[64];
    if (n->type != YAML_SCALAR_NODE) {
        sg__cfg_error(c, n->start_mark, path, "expected a file path, got %s", node_kind(n));
        return;
    }
    char *p = substitute(c, n, path);
    if (!p)
        return;
    char *data = NULL;
    size_t len = 0;
    int r = sg__cfg_read_file(p, SG__CFG_MAX_SECRET_FILE, &data, &len);
    if (r != 0) {
        sg__cfg_error(c, n->start_mark, path, "cannot read \"%s\": %s", shown(p, sh, sizeof(sh)),
                      r == SG_ETOOBIG ? "file too large (max 64 KiB)"
                                      : strerror(errno ? errno : EIO));
        free(p);
        return;
    }
    free(p);
    if (len > 0 && data[len - 1] == '\n')
        data[--len] = '\0';
    if (len > 0 && data[len - 1] == '\r')
        data[--len] = '\0';
    if (memchr(data, '\0', len))
        sg__cfg_error(c, n->start_mark, path, "file contains a NUL byte");
    else
        set_scalar(c, fd, base, data, n->start_mark, path);
    explicit_bzero(data, len);
    free(data);
}

/* ---- lists and maps -------------------------------------------------------------------------- */

static void walk_list(ctx_t *c, const sg__field_t *fd, void *base, yaml_node_t *n,
                      const char *path)
{
    size_t *count = at(base, fd->count_off);
    if (n->type != YAML_SEQUENCE_NODE) {
        sg__cfg_error(c, n->start_mark, path, "expected a list, got %s", node_kind(n));
        return;
    }
    size_t nitems = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    if (fd->type == SG__T_STRLIST && nitems > 0) {
        /* entries past the cap are reported, never stored */
        char **arr = calloc(nitems < fd->max_items ? nitems : fd->max_items, sizeof(char *));
        if (!arr) {
            sg__cfg_error(c, n->start_mark, path, "out of memory");
            return;
        }
        *(char ***)at(base, fd->off) = arr;
    }
    for (size_t i = 0; i < nitems; i++) {
        yaml_node_t *item = yaml_document_get_node(c->doc, n->data.sequence.items.start[i]);
        char ipath[SG__CFG_PATH];
        snprintf(ipath, sizeof(ipath), "%s[%zu]", path, i);
        if (!item)
            continue;
        if (i >= fd->max_items) {
            sg__cfg_error(c, item->start_mark, ipath, "too many entries (max %zu)",
                          fd->max_items);
            return;
        }
        if (fd->type == SG__T_LIST) {
            void *elem = at(base, fd->off + i * fd->elem_size);
            (*count)++;
            walk_section(c, fd->sub, elem, item, item->start_mark, ipath);
            continue;
        }
        /* list of strings */
        char **arr = *(char ***)at(base, fd->off);
        if (item->type != YAML_SCALAR_NODE || is_null_scalar(item)) {
            sg__cfg_error(c, item->start_mark, ipath, "expected a string, got %s",
                          is_null_scalar(item) ? "null" : node_kind(item));
            continue;
        }
        char *s = substitute(c, item, ipath);
        if (!s)
            continue;
        sg__field_t one = {.name = fd->name, .type = SG__T_STR, .off = 0, .check = fd->check,
                           .flags = SG__F_REQUIRED};
        char *slot = NULL;
        if (set_scalar(c, &one, &slot, s, item->start_mark, ipath))
            arr[(*count)++] = slot;
        free(s);
    }
    if (nitems < (size_t)fd->min)
        sg__cfg_error(c, n->start_mark, path, "at least %zu entr%s required", (size_t)fd->min,
                      fd->min == 1 ? "y" : "ies");
}

static void walk_strmap(ctx_t *c, const sg__field_t *fd, void *base, yaml_node_t *n,
                        const char *path)
{
    sg_config_kv_t *kv = at(base, fd->off);
    size_t *count = at(base, fd->count_off);
    char sh[64];
    if (n->type != YAML_MAPPING_NODE) {
        sg__cfg_error(c, n->start_mark, path, "expected a mapping, got %s", node_kind(n));
        return;
    }
    size_t npairs = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    for (size_t i = 0; i < npairs; i++) {
        yaml_node_pair_t *p = &n->data.mapping.pairs.start[i];
        yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(c->doc, p->value);
        if (!k || !v)
            continue;
        if (k->type != YAML_SCALAR_NODE) {
            sg__cfg_error(c, k->start_mark, path, "keys must be strings, got %s", node_kind(k));
            continue;
        }
        const char *key = (const char *)k->data.scalar.value;
        char kpath[SG__CFG_PATH];
        child_path(kpath, path, key);
        if (i >= fd->max_items) {
            sg__cfg_error(c, k->start_mark, kpath, "too many entries (max %zu)", fd->max_items);
            return;
        }
        const char *why = fd->check ? fd->check(key) : NULL;
        if (why || strlen(key) != k->data.scalar.length) {
            sg__cfg_error(c, k->start_mark, kpath, "invalid key \"%s\": %s",
                          shown(key, sh, sizeof(sh)), why ? why : "contains a NUL byte");
            continue;
        }
        /* bounded by max_items, so the quadratic scan is at most 32x32 */
        bool dup = false;
        for (size_t j = 0; j < *count; j++)
            dup = dup || strcmp(kv[j].key, key) == 0;
        if (dup) {
            sg__cfg_error(c, k->start_mark, kpath, "duplicate key '%s'", shown(key, sh, sizeof(sh)));
            continue;
        }
        if (v->type != YAML_SCALAR_NODE) {
            sg__cfg_error(c, v->start_mark, kpath, "expected a string, got %s", node_kind(v));
            continue;
        }
        char *val = substitute(c, v, kpath);
        if (!val)
            continue;
        char *kd = strdup(key);
        if (!kd) {
            free(val);
            sg__cfg_error(c, k->start_mark, kpath, "out of memory");
            continue;
        }
        kv[*count].key = kd;
        kv[*count].value = val;
        (*count)++;
    }
}

/* ---- sections -------------------------------------------------------------------------------- */

/* Finds the field named key (or, for a secret, key "<name>_file"); *is_file says which. */
static const sg__field_t *lookup(const sg__field_t *fields, const char *key, size_t keylen,
                                 bool *is_file)
{
    *is_file = false;
    for (const sg__field_t *fd = fields; fd->name; fd++) {
        size_t nl = strlen(fd->name);
        if (nl == keylen && memcmp(fd->name, key, nl) == 0)
            return fd;
        if ((fd->flags & SG__F_SECRET) && keylen == nl + 5 && memcmp(fd->name, key, nl) == 0 &&
            memcmp(key + nl, "_file", 5) == 0) {
            *is_file = true;
            return fd;
        }
    }
    return NULL;
}

static void suggest(const sg__field_t *fields, const char *key, char *out, size_t cap)
{
    size_t best = 3, kl = strlen(key);
    char cand[80];
    out[0] = '\0';
    if (kl > 5 && strcmp(key + kl - 5, "_file") == 0) {
        for (const sg__field_t *fd = fields; fd->name; fd++) {
            if (strlen(fd->name) == kl - 5 && strncmp(fd->name, key, kl - 5) == 0) {
                snprintf(out, cap, " ('%s' is not a secret: give its value directly)", fd->name);
                return;
            }
        }
    }
    for (const sg__field_t *fd = fields; fd->name; fd++) {
        for (int v = 0; v < 2; v++) {
            if (v == 1 && !(fd->flags & SG__F_SECRET))
                break;
            snprintf(cand, sizeof(cand), "%s%s", fd->name, v ? "_file" : "");
            size_t d = edit_distance(key, cand);
            /* a 1-2 letter key is "close" to everything: require the distance to be smaller */
            if (d < best && d < strlen(key)) {
                best = d;
                snprintf(out, cap, " (did you mean '%s'?)", cand);
            }
        }
    }
}

yaml_node_t *sg__cfg_find(ctx_t *c, yaml_node_t *map, const char *key)
{
    if (!map || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
        if (k && k->type == YAML_SCALAR_NODE && strcmp((const char *)k->data.scalar.value, key) == 0)
            return yaml_document_get_node(c->doc, p->value);
    }
    return NULL;
}

yaml_node_t *sg__cfg_item(ctx_t *c, yaml_node_t *seq, size_t i)
{
    if (!seq || seq->type != YAML_SEQUENCE_NODE ||
        i >= (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start))
        return NULL;
    return yaml_document_get_node(c->doc, seq->data.sequence.items.start[i]);
}

static void walk_section(ctx_t *c, const sg__field_t *fields, void *base, yaml_node_t *map,
                         yaml_mark_t pos, const char *path)
{
    yaml_node_t *val[SG__CFG_MAX_FIELDS] = {0}, *fileval[SG__CFG_MAX_FIELDS] = {0};
    char sh[64], sug[128], fpath[SG__CFG_PATH];
    bool typed_ok = true;

    if (map && is_null_scalar(map)) {
        map = NULL; /* "section:" with nothing after it: all defaults */
    } else if (map && map->type != YAML_MAPPING_NODE) {
        sg__cfg_error(c, map->start_mark, path[0] ? path : "(top level)",
                      "expected a mapping, got %s", node_kind(map));
        map = NULL;
        typed_ok = false; /* a "missing key" cascade would only add noise */
        c->quiet++;
    }
    if (map) {
        pos = map->start_mark;
        for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
             p++) {
            yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
            yaml_node_t *v = yaml_document_get_node(c->doc, p->value);
            if (!k || !v)
                continue;
            if (k->type != YAML_SCALAR_NODE) {
                sg__cfg_error(c, k->start_mark, path[0] ? path : "(top level)",
                              "keys must be strings, got %s", node_kind(k));
                continue;
            }
            const char *key = (const char *)k->data.scalar.value;
            bool is_file;
            const sg__field_t *fd = lookup(fields, key, k->data.scalar.length, &is_file);
            child_path(fpath, path, shown(key, sh, sizeof(sh)));
            if (!fd) {
                suggest(fields, key, sug, sizeof(sug));
                sg__cfg_error(c, k->start_mark, fpath, "unknown key%s", sug);
                continue;
            }
            size_t idx = (size_t)(fd - fields);
            yaml_node_t **slot = is_file ? &fileval[idx] : &val[idx];
            if (*slot) {
                yaml_mark_t first = (*slot)->start_mark;
                sg__cfg_error(c, k->start_mark, fpath, "duplicate key (first given at line %zu)",
                              (size_t)first.line + 1);
                continue;
            }
            if ((is_file && val[idx]) || (!is_file && fileval[idx])) {
                sg__cfg_error(c, k->start_mark, fpath,
                              "give either '%s' or '%s_file', not both", fd->name, fd->name);
                continue;
            }
            *slot = v;
        }
    }
    for (const sg__field_t *fd = fields; fd->name; fd++) {
        size_t idx = (size_t)(fd - fields);
        yaml_node_t *v = val[idx];
        child_path(fpath, path, fd->name);
        if (fileval[idx]) {
            char fp[SG__CFG_PATH];
            snprintf(fp, sizeof(fp), "%s_file", fpath);
            set_from_file(c, fd, base, fileval[idx], fp);
            continue;
        }
        if (v && is_null_scalar(v) && fd->type != SG__T_SECTION)
            v = NULL;
        switch (fd->type) {
        case SG__T_SECTION:
            walk_section(c, fd->sub, at(base, fd->off), v, v ? v->start_mark : pos, fpath);
            continue;
        case SG__T_LIST:
        case SG__T_STRLIST:
            if (v)
                walk_list(c, fd, base, v, fpath);
            else if (!c->quiet && fd->min > 0)
                sg__cfg_error(c, pos, fpath, "missing required key (at least %zu entr%s)",
                              (size_t)fd->min, fd->min == 1 ? "y" : "ies");
            continue;
        case SG__T_STRMAP:
            if (v)
                walk_strmap(c, fd, base, v, fpath);
            continue;
        default:
            break;
        }
        if (v) {
            set_from_node(c, fd, base, v, fpath);
        } else if (fd->def) {
            yaml_mark_t none = {0};
            /* the table's own defaults: a failure here is a schema bug the unit tests catch */
            set_scalar(c, fd, base, fd->def, none, fpath);
        } else if (!c->quiet && (fd->flags & SG__F_REQUIRED)) {
            sg__cfg_error(c, pos, fpath, "missing required key");
        }
    }
    if (!typed_ok)
        c->quiet--;
    /* the table's terminator carries the section's cross-field checks */
    const sg__field_t *end = fields;
    while (end->name)
        end++;
    if (end->post)
        end->post(c, base, map, pos, path);
}

static void free_section(const sg__field_t *fields, void *base)
{
    for (const sg__field_t *fd = fields; fd->name; fd++) {
        switch (fd->type) {
        case SG__T_STR:
        case SG__T_ENUM: {
            char **p = at(base, fd->off);
            if (*p && (fd->flags & SG__F_SECRET))
                explicit_bzero(*p, strlen(*p));
            free(*p);
            *p = NULL;
            break;
        }
        case SG__T_SECTION:
            free_section(fd->sub, at(base, fd->off));
            break;
        case SG__T_LIST: {
            size_t *n = at(base, fd->count_off);
            for (size_t i = 0; i < *n; i++)
                free_section(fd->sub, at(base, fd->off + i * fd->elem_size));
            *n = 0;
            break;
        }
        case SG__T_STRLIST: {
            char ***arr = at(base, fd->off);
            size_t *n = at(base, fd->count_off);
            for (size_t i = 0; *arr && i < *n; i++)
                free((*arr)[i]);
            free(*arr);
            *arr = NULL;
            *n = 0;
            break;
        }
        case SG__T_STRMAP: {
            sg_config_kv_t *kv = at(base, fd->off);
            size_t *n = at(base, fd->count_off);
            for (size_t i = 0; i < *n; i++) {
                free(kv[i].key);
                free(kv[i].value);
                kv[i].key = kv[i].value = NULL;
            }
            *n = 0;
            break;
        }
        default:
            break;
        }
    }
}

/* ---- printing -------------------------------------------------------------------------------- */

static void print_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f)
            fprintf(f, "\\x%02x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static void print_section(FILE *f, const sg__field_t *fields, const void *base, int indent)
{
    for (const sg__field_t *fd = fields; fd->name; fd++) {
        /* list items: the first key of an entry carries the "- " (indent already counts it) */
        fprintf(f, "%*s%s:", indent, "", fd->name);
        const void *p = cat(base, fd->off);
        switch (fd->type) {
        case SG__T_STR:
        case SG__T_ENUM: {
            const char *s = *(char *const *)p;
            if (!s)
                fputs(" null\n", f);
            else if (fd->flags & SG__F_SECRET)
                fputs(" \"********\"\n", f);
            else {
                fputc(' ', f);
                print_str(f, s);
                fputc('\n', f);
            }
            break;
        }
        case SG__T_INT:
            fprintf(f, " %d\n", *(const int *)p);
            break;
        case SG__T_DBL:
            fprintf(f, " %.15g\n", *(const double *)p);
            break;
        case SG__T_BOOL:
            fprintf(f, " %s\n", *(const bool *)p ? "true" : "false");
            break;
        case SG__T_SIZE:
            fprintf(f, " %zu\n", *(const size_t *)p);
            break;
        case SG__T_SECTION:
            fputc('\n', f);
            print_section(f, fd->sub, p, indent + 2);
            break;
        case SG__T_LIST: {
            size_t n = *(const size_t *)cat(base, fd->count_off);
            fputs(n ? "\n" : " []\n", f);
            for (size_t i = 0; i < n; i++) {
                fprintf(f, "%*s- ", indent + 2, "");
                /* print the entry at indent+4, dropping the first line's leading spaces */
                char *buf = NULL;
                size_t len = 0;
                FILE *m = open_memstream(&buf, &len);
                if (!m)
                    break;
                print_section(m, fd->sub, cat(base, fd->off + i * fd->elem_size), indent + 4);
                fclose(m);
                fputs(buf + (len > (size_t)indent + 4 ? (size_t)indent + 4 : 0), f);
                free(buf);
            }
            break;
        }
        case SG__T_STRLIST: {
            char *const *arr = *(char *const *const *)p;
            size_t n = *(const size_t *)cat(base, fd->count_off);
            fputs(n ? "\n" : " []\n", f);
            for (size_t i = 0; i < n; i++) {
                fprintf(f, "%*s- ", indent + 2, "");
                print_str(f, arr[i]);
                fputc('\n', f);
            }
            break;
        }
        case SG__T_STRMAP: {
            const sg_config_kv_t *kv = p;
            size_t n = *(const size_t *)cat(base, fd->count_off);
            fputs(n ? "\n" : " {}\n", f);
            for (size_t i = 0; i < n; i++) {
                fprintf(f, "%*s", indent + 2, "");
                print_str(f, kv[i].key);
                fputs(": ", f);
                print_str(f, kv[i].value);
                fputc('\n', f);
            }
            break;
        }
        }
    }
}

/* ---- reference ------------------------------------------------------------------------------- */

static void md_cell(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '|')
            fputs("\\|", f);
        else
            fputc(*s, f);
    }
}

static void human_size(char *buf, size_t cap, double v)
{
    static const char *const u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (i < 4 && v >= 1024 && fmod(v, 1024) == 0) {
        v /= 1024;
        i++;
    }
    snprintf(buf, cap, "%.0f %s", v, u[i]);
}

static void md_section(FILE *f, const sg__field_t *fields, const char *path)
{
    static const char *const tname[] = {
        [SG__T_STR] = "string",         [SG__T_INT] = "integer",
        [SG__T_DBL] = "number",         [SG__T_BOOL] = "boolean",
        [SG__T_SIZE] = "size",          [SG__T_ENUM] = "enum",
        [SG__T_SECTION] = "section",    [SG__T_LIST] = "list of sections",
        [SG__T_STRLIST] = "list of strings", [SG__T_STRMAP] = "map of strings",
    };
    char kpath[SG__CFG_PATH], lo[40], hi[40];
    for (const sg__field_t *fd = fields; fd->name; fd++) {
        child_path(kpath, path, fd->name);
        if (fd->type == SG__T_LIST)
            strncat(kpath, "[]", sizeof(kpath) - strlen(kpath) - 1);
        fprintf(f, "| `%s` | %s | ", kpath, tname[fd->type]);
        /* default */
        if (fd->def)
            fprintf(f, "`%s`", fd->def);
        else if (fd->flags & SG__F_REQUIRED)
            fputs("*required*", f);
        else if (fd->type == SG__T_SECTION)
            fputs("", f);
        else if (fd->type == SG__T_LIST || fd->type == SG__T_STRLIST || fd->type == SG__T_STRMAP)
            fputs(fd->min > 0 ? "*required*" : "empty", f);
        else
            fputs("unset", f);
        fputs(" | ", f);
        /* range / allowed */
        fmt_num(lo, sizeof(lo), fd->min);
        fmt_num(hi, sizeof(hi), fd->max);
        switch (fd->type) {
        case SG__T_INT:
        case SG__T_DBL:
            fprintf(f, "%s..%s", lo, hi);
            break;
        case SG__T_SIZE:
            human_size(lo, sizeof(lo), fd->min);
            human_size(hi, sizeof(hi), fd->max);
            fprintf(f, "%s..%s", lo, hi);
            break;
        case SG__T_ENUM:
            for (size_t i = 0; fd->enums[i]; i++)
                fprintf(f, "%s`%s`", i ? ", " : "", fd->enums[i]);
            break;
        case SG__T_STR:
            if (fd->min > 0)
                fprintf(f, "at least %s characters", lo);
            break;
        case SG__T_LIST:
        case SG__T_STRLIST:
        case SG__T_STRMAP:
            fprintf(f, "%s%zu entries", fd->min > 0 ? "1.." : "at most ", fd->max_items);
            break;
        default:
            break;
        }
        fprintf(f, " | %s | ", (fd->flags & SG__F_SECRET) ? "yes" : "");
        md_cell(f, fd->doc);
        if (fd->flags & SG__F_SECRET)
            fprintf(f, " May be given as `%s_file: PATH` instead.", fd->name);
        fputs(" |\n", f);
        if (fd->type == SG__T_SECTION || fd->type == SG__T_LIST)
            md_section(f, fd->sub, kpath);
    }
}

void sg_config_reference_markdown(FILE *f)
{
    fputs("# Configuration reference\n"
          "\n"
          "<!-- Generated from the schema tables in config/schema.c by\n"
          "     sg_config_reference_markdown(); tests/unit/test_config.c fails when this file\n"
          "     differs from the generated text. Regenerate with:\n"
          "     SG_REGEN_DOCS=1 build/tests/test_config -->\n"
          "\n"
          "Both programs read one YAML file. Annotated examples covering every key:\n"
          "`deploy/gateway.example.yaml` and `deploy/node.example.yaml`.\n"
          "\n"
          "Rules that apply to every key:\n"
          "\n"
          "- Unknown keys, duplicate keys, wrong types, out-of-range values and missing required\n"
          "  keys are all reported (every problem, not just the first) as\n"
          "  `file:line:column: key.path: message`, and the program refuses to start.\n"
          "- Scalar values may use `${VAR}` (error when `VAR` is not set) and `${VAR:-default}`\n"
          "  (default when `VAR` is unset or empty) environment substitution; `$$` is a literal\n"
          "  `$`.\n"
          "- A key marked secret may instead be given as `<key>_file: PATH`: the file's contents,\n"
          "  without one trailing newline, are the value. Giving both forms is an error. Relative\n"
          "  paths are relative to the working directory.\n"
          "- An empty value (`key:`, `key: ~`, or an empty string) of an optional key means\n"
          "  \"unset\": the default applies. Required keys must not be empty.\n"
          "- Sizes are bytes, or a number with a unit: `KB`/`MB`/`GB`/`TB` are powers of 1000,\n"
          "  `K`/`M`/`G`/`T` and `KiB`/`MiB`/`GiB`/`TiB` powers of 1024 (units are\n"
          "  case-insensitive).\n"
          "- `key[]` is a list of sections: each entry is a mapping with the keys below it.\n"
          "\n"
          "## Gateway\n"
          "\n"
          "| Key | Type | Default | Range / allowed | Secret | Description |\n"
          "|---|---|---|---|---|---|\n",
          f);
    md_section(f, sg__cfg_gateway_schema, "");
    fputs("\n"
          "## Node agent\n"
          "\n"
          "| Key | Type | Default | Range / allowed | Secret | Description |\n"
          "|---|---|---|---|---|---|\n",
          f);
    md_section(f, sg__cfg_node_schema, "");
}
